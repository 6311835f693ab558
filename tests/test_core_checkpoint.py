"""Loading a checkpoint never runs code from it (more hostile payloads live in the safety suite)."""

import struct
import json
import zipfile

import pytest
import torch

from diffbir_core.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from diffbir_core.loader import load_network


class _CreatesMarker:
    """Unpickling this object would create a marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_ckpt_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "v2.ckpt"
    torch.save({"state_dict": {"input_blocks.0.0.weight": torch.zeros(1)}, "payload": _CreatesMarker(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_network(path, ["controlnet"], slot="ControlNet")
    assert not marker.exists()
    msg = str(err.value)
    assert "v2.ckpt" in msg and "never" in msg and "safetensors" in msg  # says why and how to convert


def test_raw_pickle_with_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    # A legacy (non-zip) pickle whose GLOBAL is os.system.
    payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    path.write_bytes(payload)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def test_lightning_checkpoint_objects_load_as_inert_data(tmp_path):
    """Real v1-era Lightning checkpoints carry a callback object; it must not block loading."""
    import sys
    import types

    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = 0.5

    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[mod.__name__] = mod
    try:
        path = tmp_path / "face_full_v1.ckpt"
        torch.save({"state_dict": {"a.weight": torch.ones(2)}, "callbacks": {"cb": ModelCheckpoint()}}, path)
    finally:
        for name in (mod.__name__, "pytorch_lightning.callbacks", "pytorch_lightning"):
            sys.modules.pop(name, None)
    sd, _ = read_checkpoint(path)
    assert list(sd) == ["a.weight"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "v2.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="v2.pth.*(truncated|damaged)"):
        read_checkpoint(path)


def test_safetensors_with_lying_header_is_a_clear_error(tmp_path):
    path = tmp_path / "lie.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="lie.safetensors.*not a valid safetensors"):
        read_checkpoint(path)


def test_state_dict_wrappers_and_module_prefix(tmp_path):
    for wrapper in ("state_dict", "params_ema", "params"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {"module.x.weight": torch.ones(1)}, "other": 3}, path)
        sd, _ = read_checkpoint(path)
        assert list(sd) == ["x.weight"]


# ---- hostile payloads: each is refused with a clear error and has no side effect


def _zip_pt_with_pickle(path, pickle_bytes):
    """A torch zip-format .pt whose data.pkl is the given pickle."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")


def _pickle_calling(module: str, name: str, arg: str) -> bytes:
    # Protocol-0 pickle: GLOBAL module.name, call it with one string argument.
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


HOSTILE = {
    "posix_system.ckpt": lambda p, m: p.write_bytes(_pickle_calling("os", "system", f"touch {m}")),
    "unusual_global.pth": lambda p, m: p.write_bytes(_pickle_calling("pathlib", "Path.touch", str(m))),
    "builtins_exec.pth": lambda p, m: p.write_bytes(_pickle_calling("builtins", "exec", f"open({str(m)!r}, 'w')")),
    "zip_format.pt": lambda p, m: _zip_pt_with_pickle(p, _pickle_calling("os", "system", f"touch {m}")),
    "reduce_object.ckpt": lambda p, m: torch.save({"x": _CreatesMarker(str(m))}, p),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_pickles_are_refused_without_side_effect(name, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / name
    HOSTILE[name](path, marker)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    assert name in str(err.value)


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize(
    "header, data",
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),  # offsets beyond the file
        ({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, b"\0" * 16),  # shape does not fit
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 16),  # reversed offsets
    ],
)
def test_safetensors_header_lies_are_refused(header, data, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(header, data))
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_checkpoint(path)


def test_huge_header_length_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(CheckpointError, match="huge.safetensors"):
        read_checkpoint(path)


def test_truncated_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        read_checkpoint(path)
