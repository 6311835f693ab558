"""DiffBIR Face Detect & Align and DiffBIR Face Paste Back in the real host.

The detector file is a random-weight RetinaFace MobileNet-0.25 in the official layout (tests/tiny_models.py),
loaded by the node from models/facedetection. Random weights cannot decide where faces are, so tests that need
faces at known places replace the node's `detect_faces` with a double returning known landmarks; everything
else (loading, upscale, selection, alignment, paste-back, messages) is the real code. The network itself runs
through the node in `test_real_detector_runs_through_the_node` and is checked against facexlib's formulas in
tests/test_core_face_detection.py.
"""

from __future__ import annotations

import importlib
import math
import re

import comfy_host as ch
import numpy as np
import pytest
import torch

from diffbir_core.face import align
from diffbir_core.face.detection import Detections
from tiny_models import write_tiny_retinaface, write_tiny_stage1

pytestmark = pytest.mark.usefixtures("one_thread")

DETECT, PASTE = "DiffBIRFaceDetectAlign", "DiffBIRFacePasteBack"
DETECTOR = "tiny_detection_mobilenet0.25.pth"
RESNET_DETECTOR = "tiny_detection_resnet50.pth"
FACE = 64


@pytest.fixture(scope="module")
def detector(comfy_host, comfy_models_dir):
    folder = comfy_models_dir / "facedetection"
    folder.mkdir(exist_ok=True)
    write_tiny_retinaface(folder / DETECTOR)
    write_tiny_retinaface(folder / RESNET_DETECTOR, "resnet50")
    write_tiny_stage1(folder / "not_a_detector.safetensors", "swinir")
    comfy_host.refresh_models()
    return DETECTOR


def _module(comfy_host):
    return importlib.import_module(comfy_host.node_classes[DETECT].__module__)


def _detect(comfy_host, image, detector=DETECTOR, upscale=1.0, score=0.8, min_eye=5.0, order="score", max_faces=0,
            face_size=FACE):
    return comfy_host.node_classes[DETECT]().execute(image, detector, upscale, score, min_eye, order, max_faces,
                                                   face_size)


def _paste(comfy_host, background, faces, alignment, erosion=0.1, feather=0.1):
    return comfy_host.node_classes[PASTE]().execute(background, faces, alignment, erosion, feather)


def _landmarks(theta: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    t = math.radians(theta)
    m = torch.tensor([[scale * math.cos(t), -scale * math.sin(t), tx], [scale * math.sin(t), scale * math.cos(t), ty]],
                     dtype=torch.float64)
    return align.apply_affine(m, align.face_template(FACE)).float()


@pytest.fixture
def fake_faces(comfy_host, monkeypatch):
    """Replace the detector's decision: photo k of each run gets the faces in `plan[k]` (landmark sets, in the
    coordinates of the photo the detector sees) and records the size it was given."""
    plan, seen = [], []

    def fake(net, image, score_threshold, *args, **kwargs):
        assert isinstance(net, torch.nn.Module)  # the real detector file was loaded for it
        seen.append(tuple(image.shape[-2:]))
        faces = plan[(len(seen) - 1) % len(plan)]
        if not faces:
            return Detections.empty()
        lm = torch.stack(faces)
        boxes = torch.cat([lm.min(1).values - 10, lm.max(1).values + 10], 1)
        return Detections(boxes, torch.linspace(0.99, 0.9, len(faces)), lm)

    monkeypatch.setattr(_module(comfy_host), "detect_faces", fake)
    return plan, seen


def _photos(b, h, w, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ detection


def test_real_detector_runs_through_the_node(comfy_host, detector):
    photo = _photos(1, 60, 80)
    # random weights: scores 0.4..0.8 and landmarks close together, so no eye-distance limit, at most 3 faces
    faces, record, info = _detect(comfy_host, photo, score=0.7, min_eye=0.0, max_faces=3)
    assert record.num_faces == 3 and faces.shape == (3, FACE, FACE, 3) and "left out" in info
    assert "RetinaFace mobilenet0.25 (0.43 M parameters)" in info and "image 1: 3 faces (scores 0.7" in info
    assert record.source_size == (60, 80) and record.matrices.shape == (record.num_faces, 2, 3)


def test_a_detector_reporting_thousands_of_faces_finishes_with_a_readable_report(comfy_host, detector):
    """The unaligned-face workflow tried with the tests' tiny random resnet50 detector: on a 128 x 96 photo at
    upscale 2 it reports ~3000 "faces" at the default settings. max_faces 0 keeps at most MAX_FACES per photo
    (each is a crop the graph restores), and the report gives the counts, then the first few."""
    from diffbir_core.face.detection import MAX_FACES

    faces, record, info = _detect(comfy_host, _photos(1, 96, 128, seed=4), detector=RESNET_DETECTOR, upscale=2.0)
    assert record.num_faces == MAX_FACES and faces.shape == (MAX_FACES, FACE, FACE, 3)
    lines = info.splitlines()
    counts = re.fullmatch(r"(\d+) faces in 1 of 1 photo, (\d+) tiny faces skipped, (\d+) more left out \(at most "
                          rf"{MAX_FACES} per photo with max_faces 0\)", lines[1])
    assert counts and int(counts[1]) == MAX_FACES and int(counts[3]) > 1000, lines[1]
    assert lines[2].startswith(f"image 1: {MAX_FACES} faces (scores ") and f"({MAX_FACES - 5} more)" in lines[2]
    assert "raise score_threshold" in lines[-1]
    assert len(info) < 1200 and max(len(line) for line in lines) < 400, info


def test_no_face_passes_the_photo_through_and_says_so(comfy_host, detector):
    photo = _photos(2, 40, 56, seed=1)
    faces, record, info = _detect(comfy_host, photo, score=1.0)  # no score exceeds 1
    assert record.placeholder and record.num_faces == 0 and faces.shape == (1, FACE, FACE, 3)
    assert "image 1: no face found" in info and "image 2: no face found" in info
    assert "returns its background unchanged" in info
    image, faces_only, mask, text = _paste(comfy_host, photo, faces, record)
    assert torch.equal(image.cpu(), photo) and float(mask.abs().max()) == 0.0 and float(faces_only.abs().max()) == 0
    assert text == "image 1: no face, background unchanged\nimage 2: no face, background unchanged"


def test_several_faces_in_a_batch_with_tiny_and_border_faces(comfy_host, detector, fake_faces):
    plan, seen = fake_faces
    h, w, upscale = 50, 60, 2.0  # the detector sees 100 x 120
    big = _landmarks(10.0, 0.7, 10.0, 5.0)
    other = _landmarks(-30.0, 0.5, 60.0, 50.0)
    tiny = _landmarks(0.0, 0.05, 80.0, 10.0)  # eyes 0.8 px apart
    border = _landmarks(0.0, 0.8, -20.0, 40.0)  # a third outside the left edge
    plan += [[big, other, tiny], [border]]
    photos = _photos(2, h, w, seed=2)
    faces, record, info = _detect(comfy_host, photos, upscale=upscale)
    assert seen == [(100, 120), (100, 120)]
    assert record.image_index == (0, 0, 1) and faces.shape == (3, FACE, FACE, 3)
    assert record.source_size == (100, 120) and record.input_size == (50, 60)
    assert "image 1: 2 faces" in info and "skipped 1 tiny face (eye distance 0.8 px < min_eye_distance 5" in info
    assert "image 2: 1 face" in info
    # the crops are the faces: aligning the upscaled photo by the same landmarks gives the same pixels
    torch.testing.assert_close(record.landmarks[2], border)

    background = _photos(2, 100, 120, seed=3)
    restored = torch.ones_like(faces)
    image, faces_only, mask, text = _paste(comfy_host, background, restored, record)
    assert text == "image 1: pasted 2 faces\nimage 2: pasted 1 face"
    outside = mask == 0
    assert torch.equal(image.cpu()[outside], background[outside])  # bit-identical outside every mask
    assert float(mask[1, 55:80, 0].min()) > 0.99 and torch.allclose(image[1, 55:80, 0], torch.ones(25, 3))
    assert float(mask[0].max()) == pytest.approx(1.0) and 0.05 < float(outside[0].float().mean()) < 0.95


def test_largest_face_only(comfy_host, detector, fake_faces):
    plan, _ = fake_faces
    plan += [[_landmarks(0.0, 0.4, 5.0, 5.0), _landmarks(0.0, 0.8, 40.0, 30.0)]]
    faces, record, info = _detect(comfy_host, _photos(1, 100, 100), order="largest", max_faces=1)
    assert record.num_faces == 1 and record.landmarks[0, 0, 0] > 40
    assert "left out 1 more (max_faces)" in info


# ------------------------------------------------------------------------------------------------ bad inputs


def test_a_non_detector_file_is_refused_naming_the_input_and_the_fix(comfy_host, detector):
    with pytest.raises(ValueError, match=r"^detector_name: 'not_a_detector.safetensors' looks like a DiffBIR "
                                         r"stage-1 SwinIR.*face detector slot expects a RetinaFace.*"
                                         r"detection_Resnet50_Final.pth.*models/facedetection"):
        _detect(comfy_host, _photos(1, 32, 32), detector="not_a_detector.safetensors")
    with pytest.raises(FileNotFoundError, match=r"^detector_name: model file 'missing.pth' not found in "
                                                r"models/facedetection or models/diffbir .*official file of this slot, "
                                                r"which the node downloads when it runs: detection_Resnet50_Final.pth, "
                                                r"detection_mobilenet0.25_Final.pth\.$"):
        _detect(comfy_host, _photos(1, 32, 32), detector="missing.pth")


def test_mismatched_crops_and_sizes_are_refused(comfy_host, detector, fake_faces):
    plan, _ = fake_faces
    plan += [[_landmarks(0.0, 0.5, 10.0, 10.0)]]
    photo = _photos(1, 60, 60)
    faces, record, _ = _detect(comfy_host, photo, upscale=2.0)
    with pytest.raises(ValueError, match=r"^faces: a batch of 2 image\(s\), but the alignment holds 1 face crop"):
        _paste(comfy_host, torch.zeros(1, 120, 120, 3), torch.cat([faces, faces]), record)
    with pytest.raises(ValueError, match=r"^background: 60 x 60 pixels, but the faces were aligned on 120 x 120 "
                                         r"\(the 60 x 60 input upscaled.*another image size.*same upscale"):
        _paste(comfy_host, photo, faces, record)
    with pytest.raises(ValueError, match=r"^background: a batch of 2 image\(s\), but the alignment was made on 1"):
        _paste(comfy_host, torch.zeros(2, 120, 120, 3), faces, record)
    with pytest.raises(TypeError, match=r"^alignment: expected the alignment output of DiffBIR Face Detect"):
        _paste(comfy_host, photo, faces, "alignment")


def test_nodes_run_in_a_prompt(comfy_host, detector, fake_faces):
    """Detect -> (crops as they are) -> Paste Back through ComfyUI's executor, FACE_ALIGNMENT between nodes."""
    import folder_paths
    from PIL import Image

    plan, _ = fake_faces
    plan += [[_landmarks(15.0, 0.4, 10.0, 10.0)]]  # a 26-pixel face at the top left
    arr = (_photos(1, 48, 64, seed=5)[0] * 255).round().byte().numpy()
    name = "diffbir_face_prompt.png"
    path = folder_paths.get_input_directory() + "/" + name
    Image.fromarray(arr).save(path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": DETECT, "inputs": {"image": ["1", 0], "detector_name": DETECTOR, "upscale": 1.0,
                                               "score_threshold": 0.8, "min_eye_distance": 5.0, "order": "score",
                                               "max_faces": 0, "face_size": FACE}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": PASTE, "inputs": {"background": ["1", 0], "faces": ["3", 0], "alignment": ["2", 1],
                                              "erosion": 0.1, "feather": 0.1}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "diffbir_face_prompt"}},
    }
    outputs = comfy_host.run(prompt)
    (saved,) = outputs["5"]["images"]
    with Image.open(comfy_host.output_dir / saved["subfolder"] / saved["filename"]) as img:
        assert img.size == (64, 48)
        out = torch.from_numpy(np.array(img.convert("RGB"))).float() / 255
    src = torch.from_numpy(arr).float() / 255
    assert float((out - src).abs().max()) > 0.3  # the inverted face was pasted in
    assert float((out[:, -16:] - src[:, -16:]).abs().max()) == 0.0  # the right part is far from the face
    bad = dict(prompt)
    bad["4"] = {**prompt["4"], "inputs": {**prompt["4"]["inputs"], "background": ["3", 0]}}
    with pytest.raises(ch.PromptExecutionError, match=r"background: a batch of 1 image\(s\)|background: 64 x 64"):
        comfy_host.run(bad)
