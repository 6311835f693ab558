"""PSNR / SSIM (diffbir_core.degrade.metrics) against scikit-image, and the Compare node."""

import math
import os

import numpy as np
import pytest
import torch

from extension import node_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from diffbir_core.degrade import apply, draw_params, make_rng, metrics




compare_module = node_module("compare")
DiffBIRCompare = compare_module.DiffBIRCompare

skm = pytest.importorskip("skimage.metrics")


def _pair(h, w, noise, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a = np.stack([0.5 + 0.4 * np.sin(11 * x), 0.5 + 0.4 * np.cos(5 * y + 2 * x), x * y], -1)
    a = np.clip(a + 0.03 * rng.standard_normal(a.shape), 0, 1)
    b = np.clip(a + noise * rng.standard_normal(a.shape), 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


def _sk_ssim(a, b):
    return skm.structural_similarity(
        a.astype(np.float64), b.astype(np.float64), data_range=1.0, channel_axis=-1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )


CASES = [(64, 64, 0.01, 0), (37, 53, 0.1, 1), (11, 11, 0.05, 2), (96, 80, 0.3, 3)]


@pytest.mark.parametrize("h,w,noise,seed", CASES)
def test_psnr_ssim_match_scikit_image(h, w, noise, seed):
    a, b = _pair(h, w, noise, seed)
    ref_psnr = skm.peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0)
    assert abs(metrics.psnr(torch.from_numpy(a), torch.from_numpy(b)) - ref_psnr) < 1e-3
    assert abs(metrics.ssim(torch.from_numpy(a), torch.from_numpy(b)) - _sk_ssim(a, b)) < 1e-3
    # much tighter in fact: same formulas in float64
    assert abs(metrics.ssim(a, b) - _sk_ssim(a, b)) < 1e-9


def test_metrics_on_a_degraded_pair():
    a, _ = _pair(64, 64, 0, 4)
    lq, hq = apply(torch.from_numpy(a), draw_params("general", make_rng(1)))
    l64, h64 = lq.numpy().astype(np.float64), hq.numpy().astype(np.float64)
    assert abs(metrics.psnr(lq, hq) - skm.peak_signal_noise_ratio(h64, l64, data_range=1.0)) < 1e-3
    assert abs(metrics.ssim(lq, hq) - _sk_ssim(l64, h64)) < 1e-3


def test_identical_and_symmetric():
    a, b = _pair(32, 32, 0.05, 5)
    assert metrics.psnr(a, a) == math.inf and abs(metrics.ssim(a, a) - 1) < 1e-12
    assert metrics.psnr(a, b) == pytest.approx(metrics.psnr(b, a), abs=1e-12)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a), abs=1e-12)


def test_compare_node_outputs_and_batches():
    a, b = _pair(48, 40, 0.05, 6)
    c, _ = _pair(48, 40, 0.2, 7)
    ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
    node = DiffBIRCompare()
    p, s, report = node.compare(ta[None], tb[None])
    assert isinstance(p, float) and isinstance(s, float)
    assert p == pytest.approx(skm.peak_signal_noise_ratio(b.astype(np.float64), a.astype(np.float64), data_range=1.0), abs=1e-3)
    assert s == pytest.approx(_sk_ssim(a, b), abs=1e-3)
    assert "PSNR" in report and "SSIM" in report and "LPIPS" in report
    # batch of 2 against a broadcast reference
    p2, s2, report2 = node.compare(torch.stack([ta, tc]), tb[None])
    per = [metrics.psnr(ta, tb), metrics.psnr(tc, tb)]
    assert p2 == pytest.approx(sum(per) / 2, abs=1e-9)
    assert s2 == pytest.approx((metrics.ssim(ta, tb) + metrics.ssim(tc, tb)) / 2, abs=1e-9)
    assert "[0]" in report2 and "[1]" in report2
    p3, s3, report3 = node.compare(tb[None], tb[None])
    assert p3 == math.inf and s3 == pytest.approx(1.0) and "inf" in report3


def test_compare_node_errors_and_contract():
    node = DiffBIRCompare()
    with pytest.raises(ValueError, match="image_a and image_b must have the same size"):
        node.compare(torch.zeros(1, 32, 32, 3), torch.zeros(1, 32, 30, 3))
    with pytest.raises(ValueError, match="image_a has 2 images and image_b 3"):
        node.compare(torch.zeros(2, 32, 32, 3), torch.zeros(3, 32, 32, 3))
    with pytest.raises(ValueError, match="at least 11x11"):
        node.compare(torch.zeros(1, 8, 32, 3), torch.zeros(1, 8, 32, 3))
    assert compare_module.NODE_CLASS_MAPPINGS == {"DiffBIRCompare": DiffBIRCompare}
    assert compare_module.NODE_DISPLAY_NAME_MAPPINGS == {"DiffBIRCompare": "DiffBIR Compare"}
    spec = DiffBIRCompare.INPUT_TYPES()
    for name, (_, opts) in spec["required"].items():
        assert opts.get("tooltip"), name
    assert DiffBIRCompare.RETURN_TYPES == ("FLOAT", "FLOAT", "STRING")
    assert DiffBIRCompare.RETURN_NAMES == ("psnr", "ssim", "report")
    assert DiffBIRCompare.CATEGORY == "DiffBIR" and len(DiffBIRCompare.OUTPUT_TOOLTIPS) == 3
    assert "LPIPS" in DiffBIRCompare.DESCRIPTION
