"""The unaligned-face workflow end to end in the real ComfyUI with the real detector and the real stage 1.

``workflows/diffbir_v2.1_unaligned_face.json`` as test_workflows.py runs it (tiny SD 2.1, tiny ControlNet, tiny face
SwinIR, 2 steps, 64-pixel face crops), except that the whole photo's stage 1 is the real RRDBNet x4 (Real-ESRGAN
x4plus as a BSRNet file) and Face Detect & Align uses the real MobileNet-0.25 RetinaFace (tests/real_models.py). The
input is ``astronaut`` downscaled x4 to 128 x 128. Stage 2 runs with random weights, so its pictures mean nothing;
what is checked is where things go:

* the detector finds one face, on the hand-marked landmarks;
* the background's stage 1 is the real network's work (sharper than bicubic, consistent with its input);
* the face is pasted back at the detected place, and every pixel outside its mask is the background's, in the
  node's output and in the saved file.
"""

from __future__ import annotations

import copy
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_host import node_output
from real_models import MARKED_LANDMARKS, measured, photo
from test_real_face import LANDMARK_TOLERANCE
from test_real_stage1 import MIN_CONSISTENCY_PSNR, MIN_SHARPNESS_GAIN, sharpness
from test_workflows import REPO, by_class, for_test, load, tiny_files  # noqa: F401 - tiny_files is a fixture

pytestmark = pytest.mark.slow  # the real RRDBNet on a 128 x 128 photo (x4) plus two tiny restorations

WORKFLOW = REPO / "workflows" / "diffbir_v2.1_unaligned_face.json"
LQ_SIZE, DOWNSCALE = 128, 4


@pytest.fixture(scope="module")
def real_files(comfy_host, comfy_models_dir, real_bsrnet_file, real_retinaface_file):
    """The two real files linked into the host's models folders for this module only."""
    links = [comfy_models_dir / "diffbir" / real_bsrnet_file.name,
             comfy_models_dir / "facedetection" / real_retinaface_file.name]
    for link, target in zip(links, (real_bsrnet_file, real_retinaface_file)):
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(target)
        except OSError:  # no symlinks here (Windows without the privilege): a copy does as well
            shutil.copyfile(target, link)
    comfy_host.refresh_models()
    yield real_bsrnet_file.name, real_retinaface_file.name
    for link in links:
        link.unlink(missing_ok=True)
    comfy_host.refresh_models()


@pytest.fixture(scope="module")
def astronaut_png(comfy_host):
    """``astronaut`` downscaled x4 (PIL bicubic on 8 bits) in the host's input folder: (file name, tensor)."""
    import folder_paths
    from PIL import Image

    from diffbir_core import stage1

    lq = stage1.pil_bicubic_resize(photo("astronaut")[None], (LQ_SIZE, LQ_SIZE))[0]
    name = f"diffbir_real_astronaut_{uuid.uuid4().hex[:8]}.png"
    path = Path(folder_paths.get_input_directory()) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((lq.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB").save(path)
    yield name, lq
    path.unlink(missing_ok=True)


def _source(api: dict, ref) -> dict:
    return api[ref[0]]


def test_unaligned_face_workflow_with_real_detector_and_stage1(comfy_host, tiny_files, real_files, astronaut_png):
    import folder_paths
    from PIL import Image

    from diffbir_core import stage1

    bsrnet_name, detector_name = real_files
    png, lq = astronaut_png
    api = for_test(copy.deepcopy(comfy_host.workflow_to_api(load(WORKFLOW))), png)
    (detect_id,) = [k for k, n in api.items() if n["class_type"] == "DiffBIRFaceDetectAlign"]
    (paste_id,) = [k for k, n in api.items() if n["class_type"] == "DiffBIRFacePasteBack"]
    (background_stage1,) = [k for k, n in api.items() if n["class_type"] == "DiffBIRStage1Restore"
                            and _source(api, n["inputs"]["image"])["class_type"] == "LoadImage"]
    api[api[background_stage1]["inputs"]["stage1"][0]]["inputs"]["stage1_name"] = bsrnet_name
    api[detect_id]["inputs"]["detector_name"] = detector_name
    upscale = api[detect_id]["inputs"]["upscale"]
    assert upscale == api[background_stage1]["inputs"]["upscale"] == 2.0  # the official example's
    size = int(LQ_SIZE * upscale)

    outputs = comfy_host.run(api)

    # one face, found by the real detector where the hand marks say (marks at 512, the detector saw 256)
    (report_node,) = by_class(api, "PreviewAny")
    report = "".join(outputs[next(k for k, n in api.items() if n is report_node)]["text"])
    assert "1 face" in report and "mobilenet0.25" in report, report
    alignment = node_output(comfy_host, detect_id, 1)
    assert alignment.num_faces == 1 and float(alignment.scores[0]) > 0.8
    to_photo = photo("astronaut").shape[-1] / size
    points = alignment.landmarks[0].double() * to_photo
    errors = [float((p - torch.tensor(m, dtype=torch.float64)).norm())
              for p, m in zip(points, MARKED_LANDMARKS["astronaut"])]
    measured(f"workflow (astronaut 128 px, upscale 2): {report.splitlines()[1]}; landmarks "
             + ", ".join(f"{e:.1f}" for e in errors) + " px from the hand marks (photo pixels)")
    assert max(errors) <= LANDMARK_TOLERANCE, errors

    # the background's stage 1 is the real network's: sharper than bicubic, and consistent with the input
    stage1_image = node_output(comfy_host, background_stage1, 0).movedim(-1, 1).float().cpu()
    assert stage1_image.shape == (1, 3, size, size)
    gain = float(sharpness(stage1_image) / sharpness(stage1.bicubic_resize(lq[None], (size, size))))
    back = stage1.bicubic_resize(stage1_image, (LQ_SIZE, LQ_SIZE))
    consistency = float(10 * torch.log10(1 / ((back - lq[None]) ** 2).mean()))
    measured(f"workflow stage 1 (real RRDBNet x4, then resized to x2): sharpness {gain:.2f}x bicubic, downscaled "
             f"back vs input {consistency:.1f} dB")
    assert gain >= MIN_SHARPNESS_GAIN and consistency >= MIN_CONSISTENCY_PSNR

    # pasted back at the detected place; outside the mask, the background untouched
    background_id = api[paste_id]["inputs"]["background"][0]
    background = node_output(comfy_host, background_id, 0).float().cpu()[0]  # (H, W, 3)
    image = node_output(comfy_host, paste_id, 0).float().cpu()[0]
    mask = node_output(comfy_host, paste_id, 2).float().cpu()[0]  # (H, W)
    assert image.shape == background.shape == (size, size, 3) and mask.shape == (size, size)
    outside, full = mask == 0, mask >= 0.999
    assert int(outside.sum()) > 0.5 * mask.numel() and int(full.sum()) > 0
    assert torch.equal(image[outside], background[outside])
    assert float((image[full] - background[full]).abs().mean()) > 0.01  # a (random-weight) face went in there
    landmarks = alignment.landmarks[0].round().long()
    assert bool((mask[landmarks[:, 1], landmarks[:, 0]] >= 0.999).all()), "the mask misses a detected landmark"
    box = alignment.boxes[0]
    centre, side = (box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max())
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    weights = mask[ys, xs]
    mask_centre = torch.stack([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    far = torch.maximum((xs.float() - centre[0]).abs(), (ys.float() - centre[1]).abs()).max()
    measured(f"workflow paste-back: mask centre {float((mask_centre - centre).norm()):.1f} px from the detected box "
             f"centre (box side {side:.0f} px), mask reaches {float(far):.0f} px from it, {int(outside.sum())} of "
             f"{mask.numel()} pixels outside the mask equal the background")
    assert float((mask_centre - centre).norm()) <= 0.25 * side
    assert float(far) <= 1.5 * side  # nothing pasted away from the face

    # the saved file is that image: outside the mask, byte for byte the background as SaveImage writes it
    (save_id,) = [k for k, n in api.items() if n["class_type"] == "SaveImage"]
    (saved,) = outputs[save_id]["images"]
    with Image.open(Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]) as img:
        saved_pixels = np.asarray(img.convert("RGB"))
    as_saved = lambda t: np.clip(255.0 * t.numpy(), 0, 255).astype(np.uint8)  # noqa: E731 - SaveImage's rounding
    assert np.array_equal(saved_pixels, as_saved(image))
    assert np.array_equal(saved_pixels[outside.numpy()], as_saved(background)[outside.numpy()])
