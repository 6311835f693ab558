"""Degradation pipelines (diffbir_core.degrade); the Degrade node is tested in test_nodes_degrade.py.

Statistical checks run draw_params over many seeds (cheap); full applications use small images.
"""

import io
import json
import math
import os
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from sample_images import smooth_image as _image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from diffbir_core.degrade import (
    PRESET_NAMES,
    PRESETS,
    apply,
    degrade_batch,
    draw_params,
    make_rng,
    params_to_json,
    parse_range,
)
from diffbir_core.degrade import jpeg as djpeg
from diffbir_core.degrade import kernels as K
from diffbir_core.degrade import noise as dnoise
from diffbir_core.degrade.filtering import filter2d, pad_reflect101
from diffbir_core.degrade.usm import cv2_gaussian_1d, usm_sharpen


N_SEEDS = 800  # draws only; ~0.5 ms each


@pytest.fixture(scope="module")
def draws():
    return {p: [draw_params(p, make_rng(s)) for s in range(N_SEEDS)] for p in ("general", "face", "realesrgan")}


def _band(count, n, p, k=4.5):
    """Binomial tolerance band: |count/n - p| within k standard deviations."""
    sd = math.sqrt(p * (1 - p) / n)
    return abs(count / n - p) <= k * sd + 1e-12


# ------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_same_seed_bit_identical_different_seeds_differ(preset):
    img = _image()[None]
    lq1, hq1, p1 = degrade_batch(img, preset, 7)
    lq2, hq2, p2 = degrade_batch(img, preset, 7)
    assert torch.equal(lq1, lq2) and torch.equal(hq1, hq2) and p1 == p2
    lq3, _, p3 = degrade_batch(img, preset, 8)
    assert p3 != p1 and not torch.equal(lq1, lq3)
    assert lq1.shape == hq1.shape == img.shape and lq1.dtype == torch.float32
    assert float(lq1.min()) >= 0 and float(lq1.max()) <= 1


def test_params_are_json_and_exact():
    for preset in PRESET_NAMES:
        p = draw_params(preset, make_rng(3))
        assert json.loads(params_to_json(p)) == p
        assert json.loads(json.dumps(p)) == p


# ------------------------------------------------------------------ statistics of the draws


@pytest.mark.parametrize("preset", ["general", "face"])
def test_codeformer_draws_in_ranges_and_probabilities(draws, preset):
    r = PRESETS[preset]["ranges"]
    ps = draws[preset]
    types = Counter(p["kernel"]["type"] for p in ps)
    assert set(types) == {"iso", "aniso"} and _band(types["iso"], len(ps), 0.5)
    for p in ps:
        k = p["kernel"]
        assert k["size"] == 41
        assert r["blur_sigma"][0] <= k["sigma_x"] <= r["blur_sigma"][1]
        assert r["blur_sigma"][0] <= k["sigma_y"] <= r["blur_sigma"][1]
        assert -math.pi <= k["theta"] <= math.pi
        if k["type"] == "iso":
            assert k["sigma_y"] == k["sigma_x"] and k["theta"] == 0
        assert r["downsample"][0] <= p["downsample"] <= r["downsample"][1]
        assert p["noise"]["type"] == "gaussian" and not p["noise"]["gray"]
        assert r["noise_sigma"][0] <= p["noise"]["sigma"] <= r["noise_sigma"][1]
        assert r["jpeg_quality"][0] <= p["jpeg_quality"] < r["jpeg_quality"][1]
    # uniform draws: the means sit near the middle of the ranges
    for key, vals in (("downsample", [p["downsample"] for p in ps]), ("noise_sigma", [p["noise"]["sigma"] for p in ps])):
        lo, hi = r[key]
        assert abs(np.mean(vals) - (lo + hi) / 2) < 4.5 * (hi - lo) / math.sqrt(12 * len(vals))


def test_realesrgan_draws_in_ranges(draws):
    r = PRESETS["realesrgan"]["ranges"]
    for p in draws["realesrgan"]:
        s1, s2 = p["stage1"], p["stage2"]
        for k, sig, bg, bp in ((s1["kernel"], "blur_sigma", "betag", "betap"), (s2["kernel"], "blur_sigma2", "betag2", "betap2")):
            assert k["size"] in range(7, 22, 2)
            if k["type"] == "sinc":
                lo = math.pi / 3 if k["size"] < 13 else math.pi / 5
                assert lo <= k["omega_c"] <= math.pi
                continue
            assert r[sig][0] <= k["sigma_x"] <= r[sig][1] and r[sig][0] <= k["sigma_y"] <= r[sig][1]
            if k["type"].startswith("generalized"):
                assert r[bg][0] <= k["beta"] <= r[bg][1]
            if k["type"].startswith("plateau"):
                assert r[bp][0] <= k["beta"] <= r[bp][1]
        for s, rs, ns, pss, jq in ((s1, "resize_scale", "noise_sigma", "poisson_scale", "jpeg_quality"), (s2, "resize_scale2", "noise_sigma2", "poisson_scale2", "jpeg_quality2")):
            rz = s["resize"]
            assert rz["mode"] in ("area", "bilinear", "bicubic")
            if rz["updown"] == "up":
                assert 1 <= rz["scale"] <= r[rs][1]
            elif rz["updown"] == "down":
                assert r[rs][0] <= rz["scale"] <= 1
            else:
                assert rz["scale"] == 1
            n = s["noise"]
            if n["type"] == "gaussian":
                assert r[ns][0] <= n["sigma"] <= r[ns][1]
            else:
                assert r[pss][0] <= n["scale"] <= r[pss][1]
            assert r[jq][0] <= s["jpeg_quality"] <= r[jq][1]
        assert s2["scale"] == 4.0
        sk = s2["sinc_kernel"]
        if sk is not None:
            assert sk["type"] == "sinc" and math.pi / 3 <= sk["omega_c"] <= math.pi and sk["size"] in range(7, 22, 2)


def test_realesrgan_choice_probabilities(draws):
    ps = draws["realesrgan"]
    n = len(ps)
    kernels = [p["stage1"]["kernel"]["type"] for p in ps] + [p["stage2"]["kernel"]["type"] for p in ps]
    kc = Counter(kernels)
    expected = {"sinc": 0.1}
    expected.update({name: 0.9 * prob for name, prob in PRESETS["realesrgan"]["settings"]["kernels"]})
    assert set(kc) <= set(expected)
    for name, prob in expected.items():
        assert _band(kc[name], 2 * n, prob), (name, kc[name] / (2 * n), prob)
    sizes = Counter(p["stage1"]["kernel"]["size"] for p in ps)
    for s in range(7, 22, 2):
        assert _band(sizes[s], n, 1 / 8)
    for stage, probs in (("stage1", (0.2, 0.7, 0.1)), ("stage2", (0.3, 0.4, 0.3))):
        ud = Counter(p[stage]["resize"]["updown"] for p in ps)
        for name, prob in zip(("up", "down", "keep"), probs):
            assert _band(ud[name], n, prob), (stage, name)
        modes = Counter(p[stage]["resize"]["mode"] for p in ps)
        for m in ("area", "bilinear", "bicubic"):
            assert _band(modes[m], n, 1 / 3)
        noise = [p[stage]["noise"] for p in ps]
        assert _band(sum(x["type"] == "gaussian" for x in noise), n, 0.5)
        assert _band(sum(x["gray"] for x in noise), n, 0.4)
    assert _band(sum(p["stage2"]["blur"] for p in ps), n, 0.8)
    assert _band(sum(p["stage2"]["sinc_kernel"] is not None for p in ps), n, 0.8)
    assert _band(sum(p["stage2"]["sinc_then_jpeg"] for p in ps), n, 0.5)
    assert _band(Counter(p["stage2"]["final_resize_mode"] for p in ps)["bicubic"], n, 1 / 3)
    # plateau beta: half the draws are exactly 1 (U(1, 1)), as in BasicSR with betap [1, 2]
    betas = [k["beta"] for p in ps for k in (p["stage1"]["kernel"], p["stage2"]["kernel"]) if k["type"].startswith("plateau")]
    assert _band(sum(b == 1.0 for b in betas), len(betas), 0.5)


# ------------------------------------------------------------------ kernels


def test_every_blur_kernel_sums_to_one(draws):
    specs = [p["kernel"] for p in draws["general"][:150]]
    for p in draws["realesrgan"][:250]:
        specs += [p["stage1"]["kernel"], p["stage2"]["kernel"]]
        if p["stage2"]["sinc_kernel"] is not None:
            specs.append(p["stage2"]["sinc_kernel"])
    seen = set()
    for spec in specs:
        k = K.make_kernel(spec)
        seen.add(spec["type"])
        assert k.shape == (spec["size"], spec["size"]) and np.all(np.isfinite(k))
        assert abs(k.sum() - 1.0) < 1e-9
        if spec["type"] != "sinc":
            assert k.min() >= 0
        c = spec["size"] // 2
        assert k[c, c] == k.max() or spec["type"] == "sinc"
    assert seen == set(K.KERNEL_TYPES)


def test_gaussian_kernel_formulas():
    g = np.exp(-0.5 * (np.arange(-20, 21) / 3.0) ** 2)
    np.testing.assert_allclose(K.gaussian_kernel(41, 3.0, 3.0, 0.0), np.outer(g, g) / np.outer(g, g).sum(), atol=1e-15)
    # axis-aligned anisotropic: sigma_x acts along columns (x), sigma_y along rows (y)
    gx, gy = np.exp(-0.5 * (np.arange(-10, 11) / 4.0) ** 2), np.exp(-0.5 * (np.arange(-10, 11) / 1.5) ** 2)
    ref = np.outer(gy, gx)
    np.testing.assert_allclose(K.gaussian_kernel(21, 4.0, 1.5, 0.0), ref / ref.sum(), atol=1e-15)
    # a quarter turn swaps the axes
    np.testing.assert_allclose(K.gaussian_kernel(21, 4.0, 1.5, math.pi / 2), (ref / ref.sum()).T, atol=1e-12)
    # beta = 1 generalized Gaussian is the Gaussian
    np.testing.assert_allclose(K.generalized_gaussian_kernel(21, 2.0, 1.0, 0.3, 1.0), K.gaussian_kernel(21, 2.0, 1.0, 0.3), atol=1e-15)


def test_sinc_kernel_matches_scipy_bessel():
    special = pytest.importorskip("scipy.special")
    x = np.linspace(0, 50, 2001)
    np.testing.assert_allclose(K.bessel_j1(x), special.j1(x), atol=1e-13)
    for size, omega in ((7, 1.1), (21, math.pi / 5), (15, math.pi)):
        ax = np.arange(size) - (size - 1) / 2
        r = np.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = omega * special.j1(omega * r) / (2 * np.pi * r)
        ref[size // 2, size // 2] = omega**2 / (4 * np.pi)
        np.testing.assert_allclose(K.sinc_kernel(size, omega), ref / ref.sum(), atol=1e-13)


def test_filter2d_is_cv2_filter2d_reflect101():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((3, 13, 17)))
    k = rng.random((5, 5))
    pad = np.pad(img.numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")  # numpy 'reflect' == REFLECT_101
    ref = np.zeros_like(img.numpy())
    for dy in range(5):
        for dx in range(5):
            ref += k[dy, dx] * pad[:, dy : dy + 13, dx : dx + 17]
    np.testing.assert_allclose(filter2d(img, k).numpy(), ref, atol=1e-12)
    # padding wider than the image mirrors repeatedly (numpy 'reflect' does the same)
    small = torch.from_numpy(rng.random((1, 4, 5)))
    np.testing.assert_array_equal(pad_reflect101(small, 9).numpy(), np.pad(small.numpy(), ((0, 0), (9, 9), (9, 9)), mode="reflect"))


# ------------------------------------------------------------------ noise, JPEG, USM


@pytest.mark.parametrize("preset", ["general", "face", "realesrgan"])
def test_gaussian_noise_std_matches_drawn_sigma(preset):
    flat = torch.full((1, 3, 96, 96), 0.5)
    checked = 0
    for seed in range(60):
        p = draw_params(preset, make_rng(seed))
        specs = [p["noise"]] if "noise" in p else [p["stage1"]["noise"], p["stage2"]["noise"]]
        for spec in specs:
            if spec["type"] != "gaussian" or spec["sigma"] < 0.5:
                continue
            out = dnoise.add_noise(flat, spec)
            measured = float((out - flat).std()) * 255
            assert abs(measured / spec["sigma"] - 1) < 0.10, (spec, measured)
            if spec["gray"]:
                assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
            checked += 1
        if checked >= 8:
            break
    assert checked >= 8


def test_poisson_noise_std_matches_scale():
    levels = torch.arange(256, dtype=torch.float32) / 255
    img = levels.repeat(3, 96, 1)[None]  # 256 distinct values -> vals = 256
    for scale, gray in ((0.5, False), (2.0, False), (1.0, True)):
        noise = dnoise.poisson_noise(img, scale, gray, seed=5)
        src = img if not gray else (0.2989 * img[:, :1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])
        expected = scale * math.sqrt(float(torch.round(src * 255).mean()) / 255 / 256)
        assert abs(float(noise.std()) / expected - 1) < 0.10


def test_jpeg_file_size_falls_with_quality():
    arr = djpeg.to_uint8(_image(128, 128).numpy())
    sizes = [len(djpeg.encode(arr, q)) for q in (100, 95, 80, 60, 40, 20, 5)]
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes
    from PIL import JpegImagePlugin

    with Image.open(io.BytesIO(djpeg.encode(arr, 75))) as im:
        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0, the cv2 default


def test_usm_kernel_and_flat_image():
    g = cv2_gaussian_1d(51)
    ref = np.exp(-((np.arange(51) - 25) ** 2) / (2 * 8.0**2))  # sigma = 0.3*((51-1)/2-1)+0.8 = 8
    np.testing.assert_allclose(g, ref / ref.sum(), atol=1e-15)
    flat = torch.full((1, 3, 40, 40), 0.3)
    assert torch.allclose(usm_sharpen(flat), flat, atol=1e-6)
    edge = torch.zeros(1, 3, 40, 40)
    edge[..., 20:] = 0.8
    sharp = usm_sharpen(edge)
    assert float(sharp[..., 21].mean()) > 0.8 and float(sharp[..., 18].mean()) >= 0  # overshoot at the edge


# ------------------------------------------------------------------ outputs and options


def test_outputs_align_and_quantisation():
    img = _image(40, 72)
    lq, hq = apply(img, draw_params("realesrgan", make_rng(2)))
    assert lq.shape == hq.shape == img.shape and torch.equal(hq, img)
    assert torch.equal(torch.round(lq * 255) / 255, lq)  # official final round to 8 bit
    lq, hq = apply(img, draw_params("realesrgan_v2.1", make_rng(2)))
    assert lq.shape == hq.shape and not torch.equal(hq, img)  # HQ is USM-sharpened
    lq, hq = apply(img, draw_params("general", make_rng(2), sharpen_hq=True))
    assert not torch.equal(hq, img)
    lq, hq = apply(_image(80, 64), draw_params("face", make_rng(2), hq_size=32))
    assert lq.shape == hq.shape == (32, 32, 3)


def test_tiny_and_extreme_inputs_work():
    img = _image(16, 16)
    for preset in PRESET_NAMES:
        for seed in range(6):
            lq, hq = apply(img, draw_params(preset, make_rng(seed)))
            assert lq.shape == hq.shape == img.shape and torch.isfinite(lq).all()
    lq, _ = apply(img, draw_params("general", make_rng(0), {"downsample": "12", "blur_sigma": "12"}))
    assert lq.shape == img.shape
    with pytest.raises(ValueError, match="image: .*16x16"):
        apply(_image(8, 20), draw_params("general", make_rng(0)))


def test_overrides_apply():
    for s in range(40):
        p = draw_params("general", make_rng(s), {"blur_sigma": "2-3", "jpeg_quality": "50", "downsample": ""})
        assert 2 <= p["kernel"]["sigma_x"] <= 3 and p["jpeg_quality"] == 50 and 1 <= p["downsample"] <= 12
        assert p["ranges"]["blur_sigma"] == [2.0, 3.0]
        q = draw_params("realesrgan", make_rng(s), {"stage2_scale": "2", "noise_sigma2": "[3, 4]"})
        assert q["stage2"]["scale"] == 2.0
        if q["stage2"]["noise"]["type"] == "gaussian":
            assert 3 <= q["stage2"]["noise"]["sigma"] <= 4
    assert parse_range("0.5 to 2", "blur_sigma") == (0.5, 2.0) and parse_range(" ", "blur_sigma") is None


def test_core_and_nodes_do_not_import_comfy():
    core = os.path.join(ROOT, "diffbir_core", "degrade")
    files = [os.path.join(core, f) for f in os.listdir(core) if f.endswith(".py")]
    pat = re.compile(r"^\s*(from|import)\s+(comfy|folder_paths|nodes|server|execution)\b", re.M)
    for path in files:
        with open(path, encoding="utf-8") as fh:
            assert not pat.search(fh.read()), path
    # The two V3 node modules over it take from ComfyUI only the node API and (Degrade) the Cancel check.
    allowed = ("from comfy_api.latest import io", "import comfy.model_management as mm")
    for name in ("degrade.py", "compare.py"):
        with open(os.path.join(ROOT, "nodes", name), encoding="utf-8") as fh:
            top = [ln for ln in fh.read().splitlines() if ln.startswith(("import ", "from "))]
        host = [ln for ln in top if "comfy" in ln or "folder_paths" in ln]
        assert host and set(host) <= set(allowed), (name, host)

