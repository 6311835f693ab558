"""Transparency kept: diffbir_core.alpha and the DiffBIR Keep Alpha node.

* The core: an alpha plane comes back unchanged at the same size and bilinear otherwise; Load Image's MASK of an
  8-bit alpha gives back exactly the alpha it read (plain 1 - mask would be one level low for 95 of 256 levels
  after Save Image's truncation).
* The node in a real restore: the v2.1 workflow with the tiny models, Load Image's MASK -> DiffBIR Keep Alpha ->
  Save Image, on a transparent icon: the PNG written keeps its alpha exactly at upscale 1 and resized at 4; an
  opaque input stays an RGB PNG.
"""

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_host import saved_images
from test_workflows import for_test, tiny_files  # noqa: F401 - fixtures

from diffbir_core.alpha import alpha_from_mask, is_opaque, join_alpha, resize_alpha

REPO = Path(__file__).resolve().parent.parent
W, H = 48, 40


def icon_alpha() -> np.ndarray:
    """An icon's 8-bit alpha: transparent border, opaque disc, every level 0..255 along a soft ramp."""
    y, x = np.mgrid[0:H, 0:W]
    disc = np.clip((14.0 - np.hypot(x - W / 2, y - H / 2)) * 40, 0, 255)
    ramp = np.arange(W * H).reshape(H, W) % 256
    alpha = np.where(y < 4, ramp, disc)  # the top rows hold every level
    alpha[:, :2] = 0
    return alpha.astype(np.uint8)


def test_resize_alpha_is_exact_at_the_same_size_and_bilinear_otherwise():
    alpha = torch.from_numpy(icon_alpha()).float() / 255
    assert torch.equal(resize_alpha(alpha, (H, W)), alpha)
    up = resize_alpha(alpha[None], (H * 4, W * 4))
    assert up.shape == (1, H * 4, W * 4) and 0 <= up.min() and up.max() <= 1
    stock = torch.nn.functional.interpolate(alpha[None, None], size=(H * 4, W * 4), mode="bilinear")[0]
    torch.testing.assert_close(up, stock)  # the filter of ComfyUI's Join Image with Alpha
    down = resize_alpha(alpha, (H // 2, W // 2))
    assert down.shape == (H // 2, W // 2) and down[H // 4, 0] == 0  # the transparent border stays transparent
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        resize_alpha(alpha[None, None], (4, 4))


def test_a_load_image_mask_gives_back_the_alpha_it_read():
    levels = torch.arange(256, dtype=torch.float32) / 255.0
    mask = 1.0 - levels  # as Load Image computes it
    alpha = alpha_from_mask(mask)
    assert torch.equal(alpha, levels)
    saved = np.clip(255.0 * alpha.numpy(), 0, 255).astype(np.uint8)  # Save Image's conversion
    assert np.array_equal(saved, np.arange(256))
    assert is_opaque(alpha_from_mask(torch.zeros(64, 64))) and not is_opaque(alpha)
    rgba = join_alpha(torch.rand(2, 8, 8, 3), alpha_from_mask(torch.zeros(1, 4, 4)))
    assert rgba.shape == (2, 8, 8, 4) and bool((rgba[..., 3] == 1).all())


@pytest.fixture(scope="module")
def pngs(comfy_host):
    import folder_paths
    from PIL import Image

    rgb = (torch.rand(H, W, 3, generator=torch.Generator().manual_seed(5)) * 255).round().byte().numpy()
    alpha = icon_alpha()
    folder = Path(folder_paths.get_input_directory())
    folder.mkdir(parents=True, exist_ok=True)
    names = {"rgba": f"alpha_{uuid.uuid4().hex[:8]}.png", "rgb": f"opaque_{uuid.uuid4().hex[:8]}.png"}
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / names["rgba"])
    Image.fromarray(rgb, "RGB").save(folder / names["rgb"])
    yield names, alpha
    for name in names.values():
        (folder / name).unlink(missing_ok=True)


def restore_keeping_alpha(comfy_host, png: str, upscale: float, prefix: str):
    """The v2.1 x4 workflow (tiny models) with Load Image's MASK -> DiffBIR Keep Alpha -> Save Image."""
    from PIL import Image

    workflow = json.loads((REPO / "workflows" / "diffbir_v2.1_sr_x4.json").read_text(encoding="utf-8"))
    prompt = for_test(comfy_host.workflow_to_api(workflow), png)
    load = next(i for i, n in prompt.items() if n["class_type"] == "LoadImage")
    save = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
    for node in prompt.values():
        if node["class_type"] == "DiffBIRStage1Restore":
            node["inputs"]["upscale"] = upscale
    prompt["alpha"] = {"class_type": "DiffBIRKeepAlpha",
                       "inputs": {"image": prompt[save]["inputs"]["images"], "mask": [load, 1]}}
    prompt[save]["inputs"].update(images=["alpha", 0], filename_prefix=prefix)
    comfy_host.run(prompt)
    (name,) = saved_images(comfy_host, prefix)
    return Image.open(comfy_host.output_dir / name)


@pytest.mark.usefixtures("one_thread")
def test_a_transparent_icon_stays_transparent_through_a_restore(comfy_host, tiny_files, pngs):  # noqa: F811
    names, alpha = pngs
    same = restore_keeping_alpha(comfy_host, names["rgba"], 1.0, f"alpha1_{uuid.uuid4().hex[:6]}")
    assert same.mode == "RGBA" and same.size == (W, H)
    assert np.array_equal(np.array(same.getchannel("A")), alpha)  # exactly, at upscale 1

    big = restore_keeping_alpha(comfy_host, names["rgba"], 4.0, f"alpha4_{uuid.uuid4().hex[:6]}")
    assert big.mode == "RGBA" and big.size == (W * 4, H * 4)
    expected = resize_alpha(torch.from_numpy(alpha).float() / 255, (H * 4, W * 4)).numpy()
    saved = np.array(big.getchannel("A")).astype(np.float32)
    assert np.abs(saved - np.floor(255 * expected)).max() <= 1  # Save Image truncates to 8 bits
    assert saved[20:, :6].max() == 0 and saved.max() == 255  # transparent border (below the ramp), opaque disc

    opaque = restore_keeping_alpha(comfy_host, names["rgb"], 1.0, f"opaque_{uuid.uuid4().hex[:6]}")
    assert opaque.mode == "RGB" and opaque.size == (W, H)  # no needless alpha channel
