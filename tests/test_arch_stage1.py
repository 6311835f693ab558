"""Stage-1 restoration networks (diffbir_core.arch.{swinir,bsrnet,scunet}).

1. Golden parity: small seeded configs run through the official DiffBIR code (tests/golden, see its README).
   The model is built only from what the weights say (config_from_state_dict), loaded strictly, and compared
   within atol/rtol 1e-4.
2. Real configs: each official manifest (tests/manifests/stage1_*.json, keys and shapes of the released files)
   must match the state dict of a model built on the meta device, and its shapes must infer the official config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir_core.arch import bsrnet, scunet, swinir

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
MANIFESTS = HERE / "manifests"
ARCHS = {"swinir": swinir, "bsrnet": bsrnet, "scunet": scunet}
ATOL = RTOL = 1e-4

# (arch, golden input key, golden output key, expected scale)
CASES = [
    ("swinir", "in.x_128x128", "out.y_128x128", 1),  # uses the stored attn_mask (img_size 16 -> 16x16 features)
    ("swinir", "in.x_128x192", "out.y_128x192", 1),  # recomputes the mask for a non-stored size
    ("bsrnet", "in.x", "out.y", 4),  # 16x20 -> 64x80
    ("scunet", "in.x_64x64", "out.y_64x64", 1),  # no padding needed
    ("scunet", "in.x_72x80", "out.y_72x80", 1),  # official replicate-pad to 128x128, then crop
]


def _golden(name: str):
    tensors = load_file(str(GOLDEN / f"{name}.safetensors"))
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    weights = {k[2:]: v for k, v in tensors.items() if k.startswith("w.")}
    return tensors, weights, meta["config"]


@pytest.mark.parametrize("arch,in_key,out_key,scale", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_golden_parity(arch, in_key, out_key, scale):
    mod = ARCHS[arch]
    tensors, weights, golden_cfg = _golden(arch)

    cfg = mod.config_from_state_dict(weights)
    # Everything the weights determine must agree with the config the golden was made with (SCUNet's
    # input_resolution is not in the weights; it does not change this small config's blocks).
    assert cfg == {k: golden_cfg[k] for k in cfg}, cfg

    model = mod.build(cfg)
    model.load_state_dict(weights, strict=True)
    assert model.scale == scale

    x, want = tensors[in_key], tensors[out_key]
    assert x.shape[-2] % model.size_multiple == 0 and x.shape[-1] % model.size_multiple == 0
    with torch.no_grad():
        got = model(x.clone())
    assert got.shape == want.shape
    err = (got - want).abs().max().item()
    print(f"{arch} {in_key} -> {tuple(got.shape)}: max abs error {err:.3e}")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def _manifest(arch: str):
    m = json.loads((MANIFESTS / f"stage1_{arch}.json").read_text())
    return m["config"]["params"], {k: tuple(s) for k, s in m["keys"].items()}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_official_config_and_keys(arch):
    mod = ARCHS[arch]
    params, shapes = _manifest(arch)
    assert mod.OFFICIAL_CONFIG == params

    with torch.device("meta"):
        model = mod.build(None)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(shapes.keys() - ours.keys())
    unexpected = sorted(ours.keys() - shapes.keys())
    mismatched = sorted(k for k in shapes.keys() & ours.keys() if shapes[k] != ours[k])
    print(f"{arch}: {len(shapes)} manifest keys, {len(ours)} ours; missing {len(missing)}, "
          f"unexpected {len(unexpected)}, mismatched {len(mismatched)}")
    assert (missing, unexpected, mismatched) == ([], [], [])
    assert all(p.is_meta for p in model.parameters()), "build() must not allocate under a meta device"

    # Strict loading of an official-layout file works (meta tensors: shapes/keys only, assign keeps them).
    empty = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    model.load_state_dict(empty, strict=True, assign=True)

    assert mod.config_from_state_dict(empty) == params
    assert (model.scale, model.size_multiple) == {"swinir": (1, 64), "bsrnet": (4, 1), "scunet": (1, 1)}[arch]


@pytest.mark.parametrize("arch,in_key,out_key", [(c[0], c[1], c[2]) for c in CASES[::2]], ids=["swinir", "bsrnet", "scunet"])
def test_meta_build_then_assign_load(arch, in_key, out_key):
    """The cheap loader path: build on meta, then load real weights with assign=True. Nothing created at
    construction may stay on meta (e.g. SwinIR's RGB mean, a plain attribute rather than a buffer)."""
    mod = ARCHS[arch]
    tensors, weights, _ = _golden(arch)
    with torch.device("meta"):
        model = mod.build(mod.config_from_state_dict(weights))
    model.load_state_dict(weights, strict=True, assign=True)
    with torch.no_grad():
        got = model(tensors[in_key].clone())
    torch.testing.assert_close(got, tensors[out_key], atol=ATOL, rtol=RTOL)
