"""Stage 1 with a real RRDBNet x4 (Real-ESRGAN x4plus weights as a BSRNet file; tests/real_models.py) on real photos.

* the converted file is an official-layout BSRNet to our loader: detected, strictly loaded, 351 convolutions and
  16,697,987 parameters, the official config;
* the official ``bsrnet`` stage 1 on crops of five photos downscaled x4: the output size, its range, sharper than
  bicubic by a measured margin yet no sharper than the original, and consistent with its input;
* the same weights through spandrel (what ComfyUI's Load Upscale Model uses) give the same output.
"""

from __future__ import annotations

import pytest
import torch

import real_models
from real_models import measured, photo

# HR crops (top, left) of 192 x 192 pixels -> 48 x 48 inputs: a face, a face in profile with a camera, fur, a cup,
# a rocket on its gantry.
CROPS = {"astronaut": (40, 130), "camera": (70, 150), "chelsea": (30, 140), "coffee": (100, 200), "rocket": (100, 300)}
CROP, SCALE = 192, 4
# Sharpness = the mean magnitude of the luminance gradient. Bicubic x4 keeps about half of the original's; the
# network must give at least this much more than bicubic on every crop...
MIN_SHARPNESS_GAIN = 1.25
# ...but not more than the original has (plus this slack): noise or ringing would score "sharp" too.
MAX_SHARPNESS_VS_ORIGINAL = 1.15
# Consistency: the output downscaled x4 again (the same bicubic) against the input, in dB. A network that drew
# sharp detail unrelated to the input would fail it.
MIN_CONSISTENCY_PSNR = 27.0
# No clamping (official): the output overshoots [0, 1] a little at edges and on white (the coffee cup's 1.0 comes
# out at ~1.005 on a tenth of its pixels), but stays within [-0.2, 1.2], and under 1 % of the pixels are more than
# 0.05 outside [0, 1].
RANGE_SLACK, OVERSHOOT, MAX_OVERSHOOT_FRACTION = 0.2, 0.05, 0.01


@pytest.fixture(scope="module")
def bsrnet(real_bsrnet_file):
    from diffbir_core.detect import STAGE1_KINDS
    from diffbir_core.loader import load_network

    return load_network(real_bsrnet_file, STAGE1_KINDS, "stage 1")


@pytest.fixture(scope="module")
def crops():
    """(HR crops (5, 3, 192, 192), the x4-downscaled 8-bit inputs (5, 3, 48, 48))."""
    from diffbir_core import stage1

    hr = torch.stack([photo(name)[:, y:y + CROP, x:x + CROP] for name, (y, x) in CROPS.items()])
    lq = (stage1.bicubic_resize(hr, (CROP // SCALE, CROP // SCALE)).clamp(0, 1) * 255).round() / 255
    return hr, lq


@pytest.fixture(scope="module")
def restored(bsrnet, crops):
    from diffbir_core import stage1

    with torch.no_grad():
        return stage1.restore(bsrnet.model, crops[1], "bsrnet", float(SCALE), "v2", min_short_edge=0,
                              scale=bsrnet.model.scale)


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Mean magnitude of the luminance gradient (forward differences), per image of an (N, 3, H, W) batch."""
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    dx, dy = y[:, :-1, 1:] - y[:, :-1, :-1], y[:, 1:, :-1] - y[:, :-1, :-1]
    return (dx ** 2 + dy ** 2).sqrt().mean((1, 2))


def test_the_converted_file_is_an_official_bsrnet(bsrnet, real_bsrnet_file):
    from diffbir_core.arch import bsrnet as bsrnet_arch
    from diffbir_core.checkpoint import read_checkpoint

    assert bsrnet.kind == "bsrnet"
    assert bsrnet.config == bsrnet_arch.OFFICIAL_CONFIG
    sd, _ = read_checkpoint(real_bsrnet_file)
    convs = [k for k in sd if k.endswith(".weight")]
    assert len(convs) == real_models.REALESRGAN_CONVOLUTIONS
    assert sum(v.numel() for v in sd.values()) == real_models.REALESRGAN_PARAMETERS
    assert bsrnet.model.scale == SCALE


def test_stage1_on_real_crops_is_sharper_than_bicubic(restored, crops):
    from diffbir_core import stage1

    hr, lq = crops
    out = restored.image
    assert out.shape == (len(CROPS), 3, CROP, CROP)
    assert restored.plan.working_size == (CROP, CROP)
    assert torch.isfinite(out).all()
    lo, hi = float(out.min()), float(out.max())
    assert -RANGE_SLACK <= lo and hi <= 1 + RANGE_SLACK, (lo, hi)
    overshoot = ((out < -OVERSHOOT) | (out > 1 + OVERSHOOT)).flatten(1).float().mean(1)
    assert bool((overshoot <= MAX_OVERSHOOT_FRACTION).all()), dict(zip(CROPS, overshoot.tolist()))

    bicubic = stage1.bicubic_resize(lq, (CROP, CROP))
    gain = sharpness(out) / sharpness(bicubic)
    original = sharpness(hr) / sharpness(bicubic)
    back = stage1.bicubic_resize(out, lq.shape[-2:])
    consistency = 10 * torch.log10(1 / ((back - lq) ** 2).mean((1, 2, 3)))
    for i, name in enumerate(CROPS):
        measured(f"stage 1 x4 {name}: sharpness {gain[i]:.2f}x bicubic (original {original[i]:.2f}x), "
                 f"downscaled back vs input {consistency[i]:.1f} dB, range [{float(out[i].min()):.3f}, "
                 f"{float(out[i].max()):.3f}]")
    assert bool((gain >= MIN_SHARPNESS_GAIN).all()), dict(zip(CROPS, gain.tolist()))
    assert bool((gain <= original * MAX_SHARPNESS_VS_ORIGINAL).all()), dict(zip(CROPS, (gain / original).tolist()))
    assert bool((consistency >= MIN_CONSISTENCY_PSNR).all()), dict(zip(CROPS, consistency.tolist()))


def test_stage1_equals_spandrel_on_the_same_weights(bsrnet, real_bsrnet_file, crops):
    """spandrel reads the KAIR names of the file itself (its ESRGAN loader) and runs its own RRDBNet."""
    import spandrel

    from diffbir_core.checkpoint import read_checkpoint

    sd, _ = read_checkpoint(real_bsrnet_file)
    descriptor = spandrel.ModelLoader().load_from_state_dict(sd)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == SCALE
    x = crops[1][:2, :, :32, :32]  # two real 32 x 32 inputs (the comparison needs no more)
    with torch.no_grad():
        ours = bsrnet.model(x.contiguous(memory_format=torch.channels_last))
        theirs = descriptor.model.eval()(x)
    diff = float((ours - theirs).abs().max())
    measured(f"stage 1 vs spandrel ESRGAN on the same weights: max |difference| {diff:.2e}")
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
