"""diffbir_core.detect and the architecture registry (diffbir_core.arch.ARCHITECTURES) it reads.

Each network is one `Architecture` record; these tests hold every record to what the rest of the core relies on,
so that adding an architecture stays a one-record change: its official network, built on the meta device, is
detected as its own kind by its signatures, its config read back from those weights builds the same layout, and
a record that a slot takes names itself in the messages. (The official files' layouts: test_core_loader.py.)
"""

import json
from pathlib import Path

import pytest
import torch

from diffbir_core import detect as D
from diffbir_core.arch import ARCHITECTURES, architecture
from diffbir_core.loader import WrongCheckpointError, expect_kind


GOLDEN = Path(__file__).resolve().parent / "golden"


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_every_architecture_round_trips_its_official_network(kind):
    arch = architecture(kind)
    module = arch.network_module()
    assert isinstance(module.OFFICIAL_CONFIG, dict)
    with torch.device("meta"):
        model = arch.build(None)  # the official configuration
        sd = model.state_dict()
        rebuilt = arch.build(arch.config(sd, None))
    assert _shapes(rebuilt) == _shapes(model)
    if arch.signatures:
        det = D.detect(sd)
        assert (det.kind, det.loadable) == (kind, arch.loadable)
        assert det.looks_like in {s.looks_like for s in arch.signatures}


def test_the_tables_detect_reads_come_from_the_records():
    loadable = {k for k, a in ARCHITECTURES.items() if a.loadable}
    assert loadable == {"controlnet", "swinir", "bsrnet", "scunet", "retinaface"}
    assert set(D.STAGE1_KINDS) == {k for k, a in ARCHITECTURES.items() if a.slot == "stage 1"}
    assert {k: D.KIND_NAMES[k] for k in loadable} == {k: ARCHITECTURES[k].name for k in loadable}
    assert set(D.KIND_NAMES) == loadable | {"diffbir_v1_full", "sd21"}
    in_table = [(kind, sig) for kind, sig, _ in D.SIGNATURES if kind in ARCHITECTURES]
    assert in_table == [(a.kind, s) for a in ARCHITECTURES.values() for s in a.signatures]
    assert D.SIGNATURES[0][0] == "diffbir_v1_full"  # a container of parts is tried before its parts


def test_a_file_in_the_wrong_slot_is_sent_to_its_records_slot():
    for kind, arch in ARCHITECTURES.items():
        if not arch.loadable:
            continue
        det = D.Detection(kind, arch.signatures[0].looks_like, True)
        other = "controlnet" if arch.slot != "ControlNet" else "swinir"
        with pytest.raises(WrongCheckpointError, match=f"Pick it in the {arch.slot} slot instead"):
            expect_kind(det, [other], "file.pth", "test")


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="no network architecture 'retinafce'; known: controlnet, swinir"):
        architecture("retinafce")


@pytest.mark.parametrize("kind", [k for k, a in ARCHITECTURES.items() if a.memory_format is not None])
def test_loaded_weights_are_kept_in_the_records_memory_format(kind):
    """build_network applies the record's memory format after the strict assign-load (which leaves the file's
    contiguous tensors in place): every 4-D weight of a loaded network is in it."""
    from safetensors.torch import load_file

    from diffbir_core.loader import build_network

    sd = {k[2:]: v for k, v in load_file(str(GOLDEN / f"{kind}.safetensors")).items() if k.startswith("w.")}
    config = json.loads((GOLDEN / f"{kind}.json").read_text())["config"]
    assert all(v.is_contiguous() for v in sd.values())
    model, _ = build_network(kind, sd, kind, config=config)
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=ARCHITECTURES[kind].memory_format) for p in weights)
