"""RetinaFace: the official key layout, loading through the safe loader, and detection decoded through the
official prior-box maths.

The reference below is a plain re-implementation of facexlib's `retinaface_utils` formulas (PriorBox with its
nested loops, decode, decode_landm, threshold, sort, greedy NMS) and of `RetinaFace.detect_faces`'
preprocessing, written independently of `diffbir_core.face` and checked against it on the raw outputs of a
random-weight network.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from diffbir_core import detect as detect_mod
from diffbir_core import loader
from diffbir_core.arch import retinaface
from diffbir_core.face import detection, priors
from tiny_models import tiny_retinaface_state_dict, write_tiny_retinaface, write_tiny_stage1

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mobilenet():
    net = retinaface.build({"backbone": retinaface.MOBILENET})
    net.load_state_dict(tiny_retinaface_state_dict("mobilenet0.25"))
    return net.eval()


# ------------------------------------------------------------------------------------------------ layout


def test_resnet50_body_is_torchvision_resnet50_key_for_key():
    torchvision = pytest.importorskip("torchvision")  # part of the test environment (.ci/run installs it)
    with torch.device("meta"):
        ours = retinaface.build().state_dict()
        tv = torchvision.models.resnet50().state_dict()
    want = {f"body.{k}": tuple(v.shape) for k, v in tv.items() if not k.startswith("fc.")}
    got = {k: tuple(v.shape) for k, v in ours.items() if k.startswith("body.")}
    assert got == want
    # facexlib's heads and necks for the 256-wide ResNet-50 file
    assert tuple(ours["fpn.output1.0.weight"].shape) == (256, 512, 1, 1)
    assert tuple(ours["fpn.output3.0.weight"].shape) == (256, 2048, 1, 1)
    assert tuple(ours["ssh1.conv7x7_3.0.weight"].shape) == (64, 64, 3, 3)
    assert tuple(ours["ClassHead.2.conv1x1.weight"].shape) == (4, 256, 1, 1)
    assert tuple(ours["BboxHead.0.conv1x1.weight"].shape) == (8, 256, 1, 1)
    assert tuple(ours["LandmarkHead.1.conv1x1.weight"].shape) == (20, 256, 1, 1)
    assert sum(v.numel() for k, v in ours.items() if "num_batches" not in k and "running" not in k) == 27_293_600


def test_mobilenet_layout():
    sd = retinaface.build({"backbone": retinaface.MOBILENET}).state_dict()
    assert tuple(sd["body.stage1.0.0.weight"].shape) == (8, 3, 3, 3)
    assert tuple(sd["body.stage1.1.0.weight"].shape) == (8, 1, 3, 3)  # depthwise
    assert tuple(sd["body.stage1.1.3.weight"].shape) == (16, 8, 1, 1)  # pointwise
    assert tuple(sd["body.stage3.1.3.weight"].shape) == (256, 256, 1, 1)
    assert tuple(sd["fpn.output1.0.weight"].shape) == (64, 64, 1, 1)
    assert tuple(sd["fpn.merge2.0.weight"].shape) == (64, 64, 3, 3)
    assert tuple(sd["LandmarkHead.2.conv1x1.weight"].shape) == (20, 64, 1, 1)
    assert not any(k.startswith(("body.fc", "body.avg")) for k in sd)  # IntermediateLayerGetter drops them
    assert sum(v.numel() for k, v in sd.items() if "num_batches" not in k and "running" not in k) == 426_608


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_config_is_read_back_from_the_weights(backbone):
    sd = tiny_retinaface_state_dict(backbone)
    config = retinaface.config_from_state_dict(sd)
    assert retinaface.build(config).state_dict().keys() == sd.keys()
    assert detect_mod.detect(sd).kind == "retinaface"


def test_loaded_through_the_safe_loader_like_the_official_file(tmp_path):
    """DataParallel prefix and no BatchNorm counters (older torch) are accepted, as facexlib accepts them."""
    sd = {f"module.{k}": v for k, v in tiny_retinaface_state_dict("mobilenet0.25").items()
          if not k.endswith("num_batches_tracked")}
    path = tmp_path / "detection_mobilenet0.25_Final.pth"
    torch.save(sd, path)
    net = loader.load_network(path, ("retinaface",), "face detector")
    assert net.kind == "retinaface" and net.config["backbone"] == "mobilenet0.25"
    x = torch.randn(1, 3, 64, 48)
    loc, conf, landm = net.model(x)
    p = priors.prior_boxes(64, 48).shape[0]
    assert loc.shape == (1, p, 4) and conf.shape == (1, p, 2) and landm.shape == (1, p, 10)
    assert torch.allclose(conf.sum(-1), torch.ones(1, p))


def test_a_stage1_file_in_the_detector_slot_is_refused(tmp_path):
    path = write_tiny_stage1(tmp_path / "face_swinir_v1.safetensors", "swinir")
    with pytest.raises(loader.WrongCheckpointError, match=r"'face_swinir_v1.safetensors' looks like a DiffBIR "
                                                          r"stage-1 SwinIR.*face detector slot expects a "
                                                          r"RetinaFace face detector \(detection_Resnet50"):
        loader.load_network(path, ("retinaface",), "face detector")


# ------------------------------------------------------------------------------------------------ reference maths


def ref_priors(h: int, w: int) -> np.ndarray:
    """facexlib PriorBox.forward, loop for loop."""
    anchors = []
    for k, step in enumerate((8, 16, 32)):
        f = (math.ceil(h / step), math.ceil(w / step))
        for i, j in itertools.product(range(f[0]), range(f[1])):
            for min_size in ((16, 32), (64, 128), (256, 512))[k]:
                anchors += [(j + 0.5) * step / w, (i + 0.5) * step / h, min_size / w, min_size / h]
    return np.array(anchors, dtype=np.float32).reshape(-1, 4)


def ref_decode(loc, pri, landm, var=(0.1, 0.2)):
    boxes = np.concatenate([pri[:, :2] + loc[:, :2] * var[0] * pri[:, 2:], pri[:, 2:] * np.exp(loc[:, 2:] * var[1])], 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    pts = np.concatenate([pri[:, :2] + landm[:, 2 * k:2 * k + 2] * var[0] * pri[:, 2:] for k in range(5)], 1)
    return boxes, pts


def ref_nms(dets: np.ndarray, thresh: float) -> list[int]:
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= thresh]
    return keep


def test_priors_match_the_official_loops():
    for h, w in ((64, 48), (70, 91), (640, 853)):
        ours = priors.prior_boxes(h, w).numpy()
        ref = ref_priors(h, w)
        assert ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)


def test_random_weight_detections_decode_like_facexlib(mobilenet):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(3, 150, 200, generator=g)  # short edge 150 < 640: scaled up 640 / 150 for detection
    x, scale = detection.network_input(image)
    assert scale == pytest.approx(640 / 150) and tuple(x.shape[-2:]) == (640, 853)
    # the official preprocessing: BGR, 0..255, minus (104, 117, 123)
    up = torch.nn.functional.interpolate(image[None] * 255, size=(640, 853), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x[0, 0], up[0, 2] - 104.0)
    torch.testing.assert_close(x[0, 2], up[0, 0] - 123.0)

    with torch.no_grad():
        loc, conf, landm = (t[0].double().numpy() for t in mobilenet(x))
    pri = ref_priors(640, 853).astype(np.float64)
    boxes, pts = ref_decode(loc, pri, landm)
    boxes *= np.array([853, 640, 853, 640])
    pts *= np.tile([853, 640], 5)
    scores = conf[:, 1]
    threshold = float(np.quantile(scores, 0.995))  # random weights: keep the top half percent
    inds = np.where(scores > threshold)[0]
    boxes, pts, scores = boxes[inds], pts[inds], scores[inds]
    order = scores.argsort(kind="stable")[::-1]
    boxes, pts, scores = boxes[order], pts[order], scores[order]
    keep = ref_nms(np.hstack([boxes, scores[:, None]]), 0.4)
    want_boxes, want_pts, want_scores = boxes[keep] / scale, pts[keep] / scale, scores[keep]
    assert 5 < len(keep) < len(inds)  # NMS did remove overlapping boxes

    got = detection.detect_faces(mobilenet, image, score_threshold=threshold)
    assert len(got) == len(keep)
    np.testing.assert_allclose(got.scores.numpy(), want_scores, atol=1e-5)
    np.testing.assert_allclose(got.boxes.numpy(), want_boxes, atol=2e-3, rtol=1e-5)
    np.testing.assert_allclose(got.landmarks.reshape(-1, 10).numpy(), want_pts, atol=2e-3, rtol=1e-5)


def test_nms_fallback_equals_torchvision():
    g = torch.Generator().manual_seed(9)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 30], 1)
    scores = torch.rand(300, generator=g)
    ref = ref_nms(torch.cat([boxes, scores[:, None]], 1).double().numpy(), 0.4)
    assert priors._greedy_nms(boxes, scores, 0.4).tolist() == ref
    assert priors.nms(boxes, scores, 0.4).tolist() == ref


# ------------------------------------------------------------------------------------------------ choosing faces


def _dets(boxes, eyes):
    """Detections with given boxes and (left eye, right eye) x positions at y = 0."""
    lm = torch.zeros(len(boxes), 5, 2)
    for k, (lx, rx) in enumerate(eyes):
        lm[k, 0, 0], lm[k, 1, 0] = lx, rx
    return detection.Detections(torch.tensor(boxes, dtype=torch.float32), torch.linspace(0.99, 0.9, len(boxes)), lm)


def test_tiny_faces_are_skipped_and_reported():
    dets = _dets([[0, 0, 10, 10], [20, 20, 80, 90], [5, 5, 9, 9]], [(0, 3.0), (30, 60), (1, 6.5)])
    sel = detection.select_faces(dets, (100, 100), min_eye_distance=5.0)
    assert len(sel.faces) == 2 and sel.too_small == [3.0]
    assert sel.faces.boxes[1].tolist() == [5, 5, 9, 9]


def test_order_and_limit():
    dets = _dets([[0, 0, 10, 10], [40, 40, 60, 60], [-50, 0, 30, 30]], [(0, 10)] * 3)
    hw = (100, 100)
    assert detection.select_faces(dets, hw, order="score").faces.boxes[:, 0].tolist() == [0, 40, -50]
    # largest counts the part inside the photo: 30 x 30 > 20 x 20 > 10 x 10
    largest = detection.select_faces(dets, hw, order="largest", max_faces=1)
    assert largest.faces.boxes[:, 0].tolist() == [-50] and largest.over_limit == 2
    assert detection.select_faces(dets, hw, order="center").faces.boxes[:, 0].tolist() == [40, 0, -50]
    with pytest.raises(ValueError, match="order must be one of score, largest, center"):
        detection.select_faces(dets, hw, order="biggest")
