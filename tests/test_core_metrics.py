"""PSNR / SSIM (diffbir_core.degrade.metrics) against scikit-image; the Compare node: test_nodes_compare.py."""

import math

import numpy as np
import pytest
import torch

from sample_images import image_pair as _pair
from sample_images import skimage_ssim as _sk_ssim

from diffbir_core.degrade import apply, draw_params, make_rng, metrics


skm = pytest.importorskip("skimage.metrics")


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
