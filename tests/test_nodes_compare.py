"""The DiffBIR Compare node (nodes/compare.py) as the real host loaded it: PSNR / SSIM per batch against
scikit-image, clear errors, and its contract. The metrics themselves: test_core_metrics.py."""

import math

import numpy as np
import pytest
import torch
from comfy_host import node_module
from sample_images import image_pair as _pair
from sample_images import skimage_ssim as _sk_ssim

from diffbir_core.degrade import metrics

skm = pytest.importorskip("skimage.metrics")


@pytest.fixture(scope="module")
def node(comfy_host):
    return comfy_host.node_classes["DiffBIRCompare"]()


def test_compare_node_outputs_and_batches(comfy_host, node):
    a, b = _pair(48, 40, 0.05, 6)
    c, _ = _pair(48, 40, 0.2, 7)
    ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
    p, s, report = node.execute(ta[None], tb[None])
    assert isinstance(p, float) and isinstance(s, float)
    assert p == pytest.approx(skm.peak_signal_noise_ratio(b.astype(np.float64), a.astype(np.float64), data_range=1.0), abs=1e-3)
    assert s == pytest.approx(_sk_ssim(a, b), abs=1e-3)
    assert "PSNR" in report and "SSIM" in report and "LPIPS" in report
    # batch of 2 against a broadcast reference
    p2, s2, report2 = node.execute(torch.stack([ta, tc]), tb[None])
    per = [metrics.psnr(ta, tb), metrics.psnr(tc, tb)]
    assert p2 == pytest.approx(sum(per) / 2, abs=1e-9)
    assert s2 == pytest.approx((metrics.ssim(ta, tb) + metrics.ssim(tc, tb)) / 2, abs=1e-9)
    assert "[0]" in report2 and "[1]" in report2
    p3, s3, report3 = node.execute(tb[None], tb[None])
    assert p3 == math.inf and s3 == pytest.approx(1.0) and "inf" in report3


def test_compare_node_errors_and_contract(comfy_host, node):
    with pytest.raises(ValueError, match="image_a and image_b must have the same size"):
        node.execute(torch.zeros(1, 32, 32, 3), torch.zeros(1, 32, 30, 3))
    with pytest.raises(ValueError, match="image_a has 2 images and image_b 3"):
        node.execute(torch.zeros(2, 32, 32, 3), torch.zeros(3, 32, 32, 3))
    with pytest.raises(ValueError, match="at least 11x11"):
        node.execute(torch.zeros(1, 8, 32, 3), torch.zeros(1, 8, 32, 3))
    module = node_module(comfy_host, "compare")
    DiffBIRCompare = module.DiffBIRCompare
    assert comfy_host.node_classes["DiffBIRCompare"] is DiffBIRCompare
    assert comfy_host.m.nodes.NODE_DISPLAY_NAME_MAPPINGS["DiffBIRCompare"] == "DiffBIR Compare"
    spec = DiffBIRCompare.INPUT_TYPES()
    for name, (_, opts) in spec["required"].items():
        assert opts.get("tooltip"), name
    assert tuple(DiffBIRCompare.RETURN_TYPES) == ("FLOAT", "FLOAT", "STRING")
    assert tuple(DiffBIRCompare.RETURN_NAMES) == ("psnr", "ssim", "report")
    assert DiffBIRCompare.CATEGORY == "DiffBIR/testing" and len(DiffBIRCompare.OUTPUT_TOOLTIPS) == 3
    assert "LPIPS" in DiffBIRCompare.DESCRIPTION
