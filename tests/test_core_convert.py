"""`python -m diffbir_core.convert` round-trips official files to safetensors."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from diffbir_core.checkpoint import read_checkpoint
from random_checkpoints import manifest_shapes, random_state_dict, write_pickle

REPO = Path(__file__).resolve().parents[1]


def _convert(*args):
    return subprocess.run([sys.executable, "-m", "diffbir_core.convert", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_round_trip_identical_tensors(tmp_path):
    sd = {k: v.float().clone() for k, v in random_state_dict(manifest_shapes("stage1_scunet.json"), seed=3).items()}
    src = write_pickle(sd, tmp_path / "scunet_color_real_psnr.pth", wrap=True, module_prefix=True)
    out = tmp_path / "scunet.safetensors"
    proc = _convert(src, out)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "scunet" and info["tensors"] == len(sd)
    back, meta = read_checkpoint(out)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert meta["diffbir_kind"] == "scunet"


def test_fp16_and_version_metadata(tmp_path):
    sd = {k: v.float().clone() for k, v in random_state_dict(manifest_shapes("controlnet_v2_v2.1_v1converted.json")).items()}
    src = write_pickle(sd, tmp_path / "DiffBIR_v2.1.pt")
    out = tmp_path / "cn.safetensors"
    proc = _convert(src, out, "--fp16")
    assert proc.returncode == 0, proc.stderr
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["diffbir_version"] == "v2.1"
        t = f.get_tensor("input_blocks.0.0.weight")
    assert t.dtype == torch.float16 and torch.equal(t, sd["input_blocks.0.0.weight"].half())


def test_refuses_unrelated_file(tmp_path):
    src = tmp_path / "x.pth"
    torch.save({"foo.weight": torch.ones(1)}, src)
    proc = _convert(src, tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "x.pth" in proc.stderr and "unrecognised" in proc.stderr
