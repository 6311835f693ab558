"""diffbir_core.stage1: the official per-pipeline sizes, PIL-bicubic emulation, padding, tiled runner, OOM retry.

No ComfyUI here. Sizes are checked against values worked out by hand from the official code (spec A.2, B.3,
C.3, H.7): v1 rounds up (ceil), v2/v2.1 down (int()), short edge < 512 -> 512, SwinIR input zero-padded to 64.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from diffbir_core import stage1 as s1
from diffbir_core.loader import build_network
from diffbir_core.tiling import gaussian_weights, sliding_windows

GOLDEN = Path(__file__).parent / "golden"


def _golden_net(name: str):
    tensors = load_file(str(GOLDEN / f"{name}.safetensors"))
    sd = {k[2:]: v for k, v in tensors.items() if k.startswith("w.")}
    config = json.loads((GOLDEN / f"{name}.json").read_text())["config"]
    net, _ = build_network(name, sd, config=config)
    return net


@pytest.fixture(scope="module")
def swinir():
    return _golden_net("swinir")


@pytest.fixture(scope="module")
def bsrnet():
    return _golden_net("bsrnet")


def _smooth(h, w, seed=0, lo=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, lo, lo + 1, generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


class _Recorder:
    """Stand-in network: nearest-neighbour x`scale`, records every input it sees."""

    def __init__(self, scale=1):
        self.scale = scale
        self.inputs = []

    def __call__(self, x):
        self.inputs.append(x.clone())
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") if self.scale != 1 else x.clone()


# ------------------------------------------------------------------------------------------------ sizes

# (pipeline, version, (h, w), upscale, min_short_edge, scale) -> (target, net input, padded, working)
SIZE_CASES = [
    # SwinIR: upscale, short edge -> 512, pad to 64
    ("swinir", "v2.1", (7, 13), 4, 512, 1, (28, 52), (512, 950), (512, 960), (512, 950)),
    ("swinir", "v2", (7, 13), 4, 512, 1, (28, 52), (512, 950), (512, 960), (512, 950)),
    ("swinir", "v1", (7, 13), 4, 512, 1, (28, 52), (512, 951), (512, 960), (512, 951)),  # ceil
    ("swinir", "v2.1", (7, 13), 2.5, 512, 1, (17, 32), (512, 963), (512, 1024), (512, 963)),  # int(17.5)
    ("swinir", "v1", (7, 13), 2.5, 512, 1, (18, 33), (512, 939), (512, 960), (512, 939)),  # ceil(17.5)
    ("swinir", "v2.1", (100, 60), 1, 512, 1, (100, 60), (853, 512), (896, 512), (853, 512)),
    ("swinir", "v1", (100, 60), 1, 512, 1, (100, 60), (854, 512), (896, 512), (854, 512)),
    ("swinir", "v2.1", (100, 60), 2, 512, 1, (200, 120), (853, 512), (896, 512), (853, 512)),
    ("swinir", "v2.1", (600, 400), 1, 512, 1, (600, 400), (768, 512), (768, 512), (768, 512)),
    ("swinir", "v2.1", (600, 400), 2, 512, 1, (1200, 800), (1200, 800), (1216, 832), (1200, 800)),
    ("swinir", "v2.1", (7, 13), 4, 0, 1, (28, 52), (28, 52), (64, 64), (28, 52)),  # min_short_edge off
    ("swinir", "v2.1", (100, 60), 2, 0, 1, (200, 120), (200, 120), (256, 128), (200, 120)),
    # BSRNet: x4 on the raw LQ, then to target (or short edge -> 512 when the target is smaller)
    ("bsrnet", "v2", (7, 13), 4, 512, 4, (28, 52), (7, 13), (7, 13), (512, 950)),
    ("bsrnet", "v2", (7, 13), 2, 512, 4, (14, 26), (7, 13), (7, 13), (512, 950)),
    ("bsrnet", "v2", (7, 13), 4, 0, 4, (28, 52), (7, 13), (7, 13), (28, 52)),
    ("bsrnet", "v2", (100, 60), 2, 0, 4, (200, 120), (100, 60), (100, 60), (200, 120)),
    ("bsrnet", "v2", (100, 60), 4, 512, 4, (400, 240), (100, 60), (100, 60), (853, 512)),
    ("bsrnet", "v2", (600, 400), 1, 512, 4, (600, 400), (600, 400), (600, 400), (768, 512)),  # from 2400x1600
    ("bsrnet", "v2", (600, 400), 2.5, 512, 4, (1500, 1000), (600, 400), (600, 400), (1500, 1000)),
    # SCUNet: upscale, network, short edge -> 512
    ("scunet", "v2", (7, 13), 1, 512, 1, (7, 13), (7, 13), (7, 13), (512, 950)),
    ("scunet", "v2", (100, 60), 2, 512, 1, (200, 120), (200, 120), (200, 120), (853, 512)),
    ("scunet", "v2", (600, 400), 1, 512, 1, (600, 400), (600, 400), (600, 400), (768, 512)),
    ("scunet", "v2", (600, 400), 2, 512, 1, (1200, 800), (1200, 800), (1200, 800), (1200, 800)),
    ("scunet", "v2", (100, 60), 4, 0, 1, (400, 240), (400, 240), (400, 240), (400, 240)),
]


@pytest.mark.parametrize("case", SIZE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2][0]}x{c[2][1]}-x{c[3]}-min{c[4]}")
def test_sizes_per_pipeline(case):
    pipeline, version, (h, w), up, mse, scale, target, net_in, padded, working = case
    p = s1.plan(h, w, pipeline, up, version, mse, scale, 64 if pipeline == "swinir" else 1)
    assert (p.target_size, p.net_input_size, p.padded_size, p.working_size) == (target, net_in, padded, working)

    net = _Recorder(scale)
    res = s1.restore(net, torch.rand(1, 3, h, w), pipeline, up, version, mse, scale,
                     64 if pipeline == "swinir" else 1)
    assert tuple(res.image.shape) == (1, 3, *working)
    assert [tuple(x.shape[-2:]) for x in net.inputs] == [padded]
    assert res.plan == p


def test_v1_auto_resize_float_ceil_is_literal():
    # v1 auto_resize: r = 512/short; ceil(x*r) per side: float error can give 513 on the short side.
    for short in range(1, 512):
        r = 512 / short
        assert s1.short_edge_size(short, 700, 512, "v1") == (math.ceil(short * r), math.ceil(700 * r))
    assert s1.short_edge_size(49, 70, 512, "v1")[0] in (512, 513)


def test_swinir_pipeline_pads_with_zeros_and_crops_back():
    net = _Recorder(1)
    x = torch.rand(1, 3, 20, 30) * 0.5 + 0.25
    res = s1.restore(net, x, "swinir", 2, "v2.1", 0, 1, 64)  # 40x60 -> padded 64x64
    seen = net.inputs[0]
    assert tuple(seen.shape[-2:]) == (64, 64)
    assert seen[..., 40:, :].abs().max() == 0 and seen[..., :, 60:].abs().max() == 0  # official zero padding
    assert tuple(res.image.shape[-2:]) == (40, 60)
    torch.testing.assert_close(res.image, seen[..., :40, :60])  # identity network: the crop is the content


def test_restore_never_mutates_its_input():
    def inplace_net(t):
        return t.mul_(2)  # a careless network working in place

    x = torch.rand(1, 3, 64, 64)
    before = x.clone()
    for pipeline in s1.PIPELINES:
        s1.restore(inplace_net, x, pipeline, 1, "v2.1", 0, 1, 1)
        assert torch.equal(x, before), pipeline


def test_restore_keeps_unclamped_network_output():
    res = s1.restore(lambda t: t * 3 - 1, torch.full((1, 3, 64, 64), 0.9), "swinir", 1, "v2.1", 0, 1, 64)
    assert res.image.max() > 1.5  # official: the stage-1 output goes to stage 2 unclamped


# ------------------------------------------------------------------------------------------------ resizing


@pytest.mark.parametrize("hw,size", [((7, 13), (28, 52)), ((100, 60), (250, 150)), ((33, 17), (50, 26)),
                                     ((60, 100), (512, 853)), ((64, 64), (64, 200)), ((120, 80), (60, 40))])
def test_pil_bicubic_emulation_matches_pillow_on_8bit_images(hw, size):
    from PIL import Image

    rng = np.random.default_rng(sum(hw))
    u8 = (rng.random((*hw, 3)) * 255).astype(np.uint8)  # noise: worst case for overshoot and clipping
    want = np.asarray(Image.fromarray(u8).resize(size[::-1], Image.BICUBIC)).astype(np.float32)
    x = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255
    got = (s1.pil_bicubic_resize(x, size)[0].permute(1, 2, 0).numpy() * 255).round()
    diff = np.abs(got - want)
    assert diff.max() <= 1, diff.max()  # PIL's fixed-point coefficients: +-1 on a few pixels
    assert (diff > 0).mean() < 0.01


def test_pil_bicubic_float_mode_is_torch_antialias():
    # The emulation's premise: torch's antialiased bicubic is PIL's BICUBIC filter (PIL float mode, no clipping).
    from PIL import Image

    a = np.random.default_rng(1).random((30, 45)).astype(np.float32)
    for size in [(70, 100), (12, 20), (70, 20)]:
        want = np.asarray(Image.fromarray(a, mode="F").resize(size[::-1], Image.BICUBIC))
        got = s1.bicubic_resize(torch.from_numpy(a)[None, None], size)[0, 0].numpy()
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_same_size_resizes_are_no_ops():
    x = torch.rand(1, 3, 10, 12)
    assert s1.pil_bicubic_resize(x, (10, 12)) is x
    assert s1.bicubic_resize(x, (10, 12)) is x


# ------------------------------------------------------------------------------------------------ tiling


def _reference_tiled(fn, x, tile, stride, scale):
    """The official make_tiled_fn (spec C.3/H.10), written out: gaussian weights of the output tile."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h * scale, w * scale)
    count = torch.zeros_like(out)
    weights = torch.tensor(gaussian_weights(tile * scale, tile * scale), dtype=torch.float32)[None, None]
    for y0, y1, x0, x1 in sliding_windows(h, w, tile, stride):
        out[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale] += fn(x[..., y0:y1, x0:x1]) * weights
        count[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale] += weights
    return out / count


@torch.no_grad()
def test_tiled_matches_official_blending_on_swinir(swinir):
    x = _smooth(128, 192)
    got = s1.run_tiled(swinir, x, 64, 32, 1, 64)
    want = _reference_tiled(swinir, x, 64, 32, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # A tile larger than the image is one pass: identical to untiled.
    assert torch.equal(s1.run_tiled(swinir, x, 512, 480, 1, 64), s1.run_tiled(swinir, x, 0, 0, 1, 64))


@torch.no_grad()
def test_tiled_matches_untiled_on_convolutional_bsrnet(bsrnet):
    x = _smooth(80, 96)
    full = s1.run_tiled(bsrnet, x, 0, 0, 4, 1)
    calls = []
    tiled = s1.run_tiled(bsrnet, x, 48, 16, 4, 1, on_tile=lambda i, n: calls.append((i, n)))
    assert tiled.shape == full.shape == (1, 3, 320, 384)
    assert (tiled - full).abs().max() < 1e-3
    n = s1.tile_count(80, 96, 48, 16)
    assert n > 1 and calls == [(i, n) for i in range(1, n + 1)]
    torch.testing.assert_close(tiled, _reference_tiled(bsrnet, x, 48, 16, 4), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_tiled_swinir_restore_end_to_end(swinir):
    # The SwinIR pipeline tiles the 64-padded image; tiles are multiples of 64, so SwinIR's window partitions
    # stay aligned with the untiled run. SwinIR's receptive field is wide (windows of 64 px at 1/8 resolution),
    # so tiled results are not equal to untiled ones, as with the official tiled cleaner.
    x = _smooth(50, 70)
    full = s1.restore(swinir, x, "swinir", 2, "v2.1", 0, 1, 64)
    tiled = s1.restore(swinir, x, "swinir", 2, "v2.1", 0, 1, 64, tile=100, stride=32)  # 100 -> 64 px tiles
    assert tiled.image.shape == full.image.shape == (1, 3, 100, 140)
    padded = F.pad(s1.pil_bicubic_resize(x, (100, 140)), (0, 52, 0, 28))  # official: pad to 128x192
    want = _reference_tiled(swinir, padded, 64, 32, 1)[..., :100, :140]
    torch.testing.assert_close(tiled.image, want, atol=1e-5, rtol=1e-5)
    assert (tiled.image - full.image).abs().mean() < 0.1


def test_tile_inputs_are_validated_with_both_values_named():
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"tile_stride \(65\) must not exceed tile_size \(64\): tiles would leave"):
        s1.run_tiled(lambda t: t, x, 64, 65)
    with pytest.raises(ValueError, match=r"tile_stride must be positive, got 0"):
        s1.run_tiled(lambda t: t, x, 32, 0)
    with pytest.raises(ValueError, match=r"tile_stride \(80\) must not exceed tile_size \(100, rounded down to 64"):
        s1.run_tiled(lambda t: t, x, 100, 80, size_multiple=64)
    with pytest.raises(ValueError, match=r">= 0"):
        s1.run_tiled(lambda t: t, x, -1, 0)


def test_tile_padding_to_size_multiple_is_cropped():
    seen = []

    def net(t):
        seen.append(tuple(t.shape[-2:]))
        assert t.shape[-2] % 16 == 0 and t.shape[-1] % 16 == 0
        return F.interpolate(t, scale_factor=2, mode="nearest")

    x = torch.rand(1, 3, 40, 50)
    out = s1.run_tiled(net, x, 0, 0, scale=2, size_multiple=16)
    assert seen == [(48, 64)] and out.shape == (1, 3, 80, 100)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=2, mode="nearest"))
    out = s1.run_tiled(net, x, 40, 24, scale=2, size_multiple=16)  # 40 -> 32-pixel tiles, no padding needed
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=2, mode="nearest"))


# ------------------------------------------------------------------------------------------------ OOM


class _OOMAbove:
    """Identity network that raises an out-of-memory error for tiles with a side above `limit`."""

    def __init__(self, limit, exc=None):
        self.limit = limit
        self.exc = exc or (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        self.sizes = []

    def __call__(self, t):
        self.sizes.append(max(t.shape[-2:]))
        if max(t.shape[-2:]) > self.limit:
            raise self.exc()
        return t * 1.0


def test_oom_retries_on_smaller_planner_grids_until_one_fits(caplog):
    x = _smooth(256, 256)
    net = _OOMAbove(64)
    ooms = []
    out = s1.run_tiled(net, x, 0, 32, min_tile=64, on_oom=lambda: ooms.append(1))
    torch.testing.assert_close(out, x)
    assert net.sizes[0] == 256 and 128 in net.sizes and max(net.sizes[net.sizes.index(128) + 1 :]) == 64
    assert len(ooms) == 3  # untiled, then the planner's 192 and 128 px grids (memory.run_with_fallback)
    assert "stage1: out of memory with untiled tiles; retrying with 192 px tiles" in caplog.text
    assert "retrying with 64 px tiles" in caplog.text

    # A RuntimeError saying "out of memory" (older torch, other backends) is retried too.
    net = _OOMAbove(128, exc=lambda: RuntimeError("HIP out of memory"))
    torch.testing.assert_close(s1.run_tiled(net, x, 256, 192, min_tile=64, on_oom=lambda: None), x)


def test_oom_at_every_size_names_the_largest_tried():
    x = torch.rand(1, 3, 256, 200)
    with pytest.raises(MemoryError, match=r"stage1 ran out of memory at every tile size tried \(untiled, 192 px, "
                                          r"128 px; smallest 128 px\)"):
        s1.run_tiled(_OOMAbove(0), x, 0, 16, on_oom=lambda: None)
    with pytest.raises(MemoryError, match=r"tried \(192 px, 128 px, 64 px; smallest 64 px\)"):
        s1.run_tiled(_OOMAbove(0), x, 192, 176, size_multiple=64, min_tile=64, on_oom=lambda: None)


def test_other_errors_are_not_retried():
    calls = []

    def bad(t):
        calls.append(1)
        raise ValueError("broken weights")

    with pytest.raises(ValueError, match="broken weights"):
        s1.run_tiled(bad, torch.rand(1, 3, 64, 64), 0, 0)
    assert calls == [1]

    class Cancelled(Exception):
        pass

    def cancel(i, n):
        raise Cancelled

    with pytest.raises(Cancelled):
        s1.run_tiled(lambda t: t, torch.rand(1, 3, 64, 64), 32, 24, on_tile=cancel)
