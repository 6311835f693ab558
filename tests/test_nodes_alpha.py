"""Transparency kept: diffbir_core.alpha and the DiffBIR Keep Alpha node.

* The core: an alpha plane comes back unchanged at the same size and bilinear otherwise; Load Image's MASK of an
  8-bit alpha gives back exactly the alpha it read (plain 1 - mask would be one level low for 95 of 256 levels
  after Save Image's truncation).
* The command line on the shipped v2.1 workflow (Load Image's MASK -> DiffBIR Keep Alpha -> Save Image) with the
  tiny models, on a transparent icon: the PNG written keeps its alpha exactly at upscale 1 and resized at 4; an
  opaque input stays an RGB PNG.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_workflows import tiny_files  # noqa: F401 - fixtures

from diffbir_core.alpha import alpha_from_mask, is_opaque, join_alpha, resize_alpha

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


def write_pngs(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """A transparent icon (RGBA PNG) and an opaque photo (RGB PNG) of W x H, and the icon's alpha."""
    from PIL import Image

    rgb = (torch.rand(H, W, 3, generator=torch.Generator().manual_seed(5)) * 255).round().byte().numpy()
    alpha = icon_alpha()
    icon, photo = folder / "icon.png", folder / "photo.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(icon)
    Image.fromarray(rgb, "RGB").save(photo)
    return icon, photo, alpha


def cli_restore(comfy_host, models: dict, image: Path, out: Path, upscale: int):
    """`python -m diffbir_cli restore IMAGE` with the default workflow (v2.1-sr, which carries Load Image's MASK
    -> DiffBIR Keep Alpha -> Save Image), tiny models, 1 step, in this process on the booted host."""
    from diffbir_cli import cli as cli_mod
    from PIL import Image

    argv = ["restore", str(image), "--out", str(out), "--steps", "1", "--upscale", str(upscale), "--offline",
            "--models", str(comfy_host.models_dir)]
    for key, value in models.items():
        argv += ["--set", f"{key}={value}"]
    assert cli_mod.main(argv) == 0
    return Image.open(out / f"{image.stem}.png")


@pytest.mark.usefixtures("one_thread")
def test_the_cli_keeps_a_transparent_icon_transparent(tmp_path, comfy_host, tiny_files):  # noqa: F811
    from test_workflows import TINY_CHECKPOINT, tiny_name

    models = {"2.stage1_name": tiny_name("realesrgan_s4_swinir_100k.pth"),
              "2.controlnet_name": tiny_name("DiffBIR_v2.1.pt"), "Load Checkpoint.ckpt_name": TINY_CHECKPOINT,
              "DiffBIRStage1Restore.min_short_edge": "64"}
    icon, photo, alpha = write_pngs(tmp_path)
    same = cli_restore(comfy_host, models, icon, tmp_path / "x1", 1)
    assert same.mode == "RGBA" and same.size == (W, H)
    assert np.array_equal(np.array(same.getchannel("A")), alpha)  # exactly, at upscale 1

    big = cli_restore(comfy_host, models, icon, tmp_path / "x4", 4)
    assert big.mode == "RGBA" and big.size == (W * 4, H * 4)
    expected = resize_alpha(torch.from_numpy(alpha).float() / 255, (H * 4, W * 4)).numpy()
    saved = np.array(big.getchannel("A")).astype(np.float32)
    assert np.abs(saved - np.floor(255 * expected)).max() <= 1  # Save Image truncates to 8 bits
    assert saved[20:, :6].max() == 0 and saved.max() == 255  # transparent border (below the ramp), opaque disc

    opaque = cli_restore(comfy_host, models, photo, tmp_path / "rgb", 1)
    assert opaque.mode == "RGB" and opaque.size == (W, H)  # no needless alpha channel
