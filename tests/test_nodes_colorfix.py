"""DiffBIR Color Fix (nodes/colorfix.py) in a real ComfyUI: its node info, and batches against the core's
colour fix (diffbir_core.colorfix, whose maths the golden runner checks against the official code)."""

import pytest
from comfy_host import combo_options
import torch

COLORFIX = "DiffBIRColorFix"


def test_node_info(comfy_host):
    """Its inputs and outputs (display name, category and tooltips: test_nodes_registry.py)."""
    info = comfy_host.node_info(COLORFIX)
    assert combo_options(info["input"]["required"]["method"]) == ["wavelet", "adain", "none"]
    assert info["input"]["required"]["method"][1]["default"] == "wavelet"
    assert info["output"] == ["IMAGE"] and set(info["input"]["required"]) == {"image", "reference", "method"}


def test_color_fix_batches(comfy_host):
    from diffbir_core.colorfix import color_fix

    node = comfy_host.node_classes[COLORFIX]()
    g = torch.Generator().manual_seed(9)
    image = torch.rand(3, 32, 48, 3, generator=g)
    ref = torch.rand(1, 16, 24, 4, generator=g)  # RGBA, other size: resized, alpha dropped
    before = image.clone()
    (out,) = node.execute(image, ref, "wavelet")
    assert out.shape == image.shape and torch.equal(image, before)
    want = color_fix(image[1:2].movedim(-1, 1), ref[..., :3].movedim(-1, 1), "wavelet").clamp(0, 1)
    torch.testing.assert_close(out[1:2].movedim(-1, 1).cpu(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(node.execute(image, ref, "none")[0].cpu(), image)
    (adain,) = node.execute(image, image.flip(0), "adain")
    assert adain.shape == image.shape
    with pytest.raises(ValueError, match=r"'reference' has 2 images but 'image' has 3"):
        node.execute(image, image[:2], "wavelet")
