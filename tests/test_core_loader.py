"""Every official checkpoint layout is detected as its kind and loads strictly.

Random checkpoints are written in each manifest's layout (bare, wrapped in `state_dict`,
with DataParallel `module.` prefixes) and read back through our own loaders.
"""

import pytest
import torch

from diffbir_core.checkpoint import read_checkpoint
from diffbir_core.detect import detect, split_v1_full
from diffbir_core.loader import WrongCheckpointError, load_network
from diffbir_core.reference.sd_parts import load_sd_parts
from random_checkpoints import manifest_shapes, random_state_dict, write_pickle

NETWORK_MANIFESTS = {
    "stage1_swinir.json": ("swinir", "general_swinir_v1.ckpt"),
    "stage1_bsrnet.json": ("bsrnet", "BSRNet.pth"),
    "stage1_scunet.json": ("scunet", "scunet_color_real_psnr.pth"),
    "controlnet_v2_v2.1_v1converted.json": ("controlnet", "DiffBIR_v2.1.pt"),
}
VARIANTS = {"bare": {}, "state_dict": {"wrap": True}, "module": {"module_prefix": True},
            "state_dict+module": {"wrap": True, "module_prefix": True}}


def _assert_same_layout(model: torch.nn.Module, shapes: dict, prefix: str = ""):
    own = {prefix + k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v for k, v in shapes.items() if k.startswith(prefix)}
    assert own.keys() == expected.keys()
    assert own == expected


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("manifest", NETWORK_MANIFESTS)
def test_network_layouts_detect_and_load(manifest, variant, tmp_path):
    kind, file_name = NETWORK_MANIFESTS[manifest]
    shapes = manifest_shapes(manifest)
    path = write_pickle(random_state_dict(shapes), tmp_path / file_name, **VARIANTS[variant])
    sd, meta = read_checkpoint(path)
    det = detect(sd, path.name, meta)
    assert det.kind == kind and det.loadable
    loaded = load_network(path, [kind], slot="test")
    assert loaded.kind == kind
    _assert_same_layout(loaded.model, shapes)


def test_controlnet_version_from_official_names(tmp_path):
    sd = random_state_dict(manifest_shapes("controlnet_v2_v2.1_v1converted.json"))
    for name, version in {"v2.pth": "v2", "DiffBIR_v2.1.pt": "v2.1", "v1_general.pth": "v1", "v1_face.pth": "v1",
                          "my_controlnet.pth": None}.items():
        assert detect(sd, name).version == version, name


@pytest.mark.parametrize("variant", ["state_dict", "state_dict+module"])
def test_sd21_layout_detects_and_its_parts_load(variant, tmp_path):
    shapes = manifest_shapes("sd21_base_keys_read.json")
    path = write_pickle(random_state_dict(shapes), tmp_path / "v2-1_512-ema-pruned.ckpt", **VARIANTS[variant])
    sd, meta = read_checkpoint(path)
    det = detect(sd, path.name, meta)
    assert det.kind == "sd21" and det.version is None
    assert detect(sd, "sd2.1-base-zsnr-laionaes5.ckpt").version == "v2.1"
    parts = load_sd_parts(sd, path.name)
    for kind, prefix in (("unet", "model.diffusion_model."), ("vae", "first_stage_model."), ("clip_text", "cond_stage_model.")):
        own = {prefix + k: list(v.shape) for k, v in parts[kind].state_dict().items()}
        assert own == {k: v for k, v in shapes.items() if k.startswith(prefix)}


def test_v1_full_checkpoint_detects_splits_and_loads(tmp_path):
    shapes = manifest_shapes("v1_general_full_v1_ckpt_DERIVED.json")
    path = write_pickle(random_state_dict(shapes), tmp_path / "general_full_v1.ckpt", wrap=True)
    sd, meta = read_checkpoint(path)
    det = detect(sd, path.name, meta)
    assert det.kind == "diffbir_v1_full" and det.version == "v1"
    parts = split_v1_full(sd)
    assert set(parts) == {"controlnet", "stage1", "sd"}  # this layout carries no cond_encoder copy
    # Asking for a ControlNet yields the ControlNet; stage 1 and the SD parts come along.
    loaded = load_network(path, ["controlnet"], slot="ControlNet")
    assert loaded.kind == "controlnet" and set(loaded.extras) == {"stage1", "sd"}
    _assert_same_layout(loaded.model, {k[len("control_model."):]: v for k, v in shapes.items() if k.startswith("control_model.")})
    stage1 = load_network(path, ["swinir", "bsrnet", "scunet"], slot="stage 1")
    assert stage1.kind == "swinir"
    sd_parts = load_sd_parts(loaded.extras["sd"], path.name)
    assert set(sd_parts) == {"unet", "vae", "clip_text"}


@pytest.mark.parametrize(
    "manifest, slot_kinds, slot",
    [
        ("sd21_base_keys_read.json", ["controlnet"], "ControlNet"),
        ("controlnet_v2_v2.1_v1converted.json", ["swinir", "bsrnet", "scunet"], "stage 1"),
        ("stage1_swinir.json", ["controlnet"], "ControlNet"),
    ],
)
def test_wrong_file_in_slot_names_file_kind_and_slot(manifest, slot_kinds, slot, tmp_path):
    path = write_pickle(random_state_dict(manifest_shapes(manifest)), tmp_path / "picked.ckpt", wrap=True)
    with pytest.raises(WrongCheckpointError) as err:
        load_network(path, slot_kinds, slot=slot)
    msg = str(err.value)
    assert "picked.ckpt" in msg and "looks like" in msg and f"the {slot} slot expects" in msg


def test_unrelated_safetensors_is_described(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "unrelated.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, str(path))
    with pytest.raises(WrongCheckpointError, match=r"unrecognised model \(2 tensors; top-level names: encoder, head\)"):
        load_network(path, ["controlnet"], slot="ControlNet")


def test_strict_load_lists_missing_and_unexpected(tmp_path):
    shapes = manifest_shapes("stage1_bsrnet.json")
    sd = random_state_dict(shapes)
    del sd["conv_last.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["HRconv.weight"] = torch.zeros(1, 1, 3, 3)
    path = write_pickle(sd, tmp_path / "BSRNet.pth")
    with pytest.raises(Exception) as err:
        load_network(path, ["bsrnet"], slot="stage 1")
    msg = str(err.value)
    assert "missing: conv_last.bias" in msg and "unexpected: extra.weight" in msg and "HRconv.weight (file (1, 1, 3, 3)" in msg
