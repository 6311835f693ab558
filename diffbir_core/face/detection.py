"""Finding faces with a RetinaFace network and choosing which ones to restore.

Official (DiffBIR `unaligned_bfr_loop.py` -> `FaceRestoreHelper.get_face_landmarks_5(resize=640,
eye_dist_threshold=5)` -> facexlib `RetinaFace.detect_faces(conf_threshold=0.8, nms_threshold=0.4,
use_origin_size=True)`):

* the image (already upscaled by the task's `upscale`) is scaled so that its short edge is at least 640
  pixels (only ever up, bilinear), fed as BGR 0..255 minus (104, 117, 123);
* priors and decoding as in `priors`; boxes and points scaled by the network input size and back by the
  resize factor; faces scoring above 0.8 are sorted by score and go through NMS at IoU 0.4;
* faces whose eyes are closer than 5 pixels are dropped (side views and tiny faces).

Deliberate differences, all in the direction of what facexlib itself does: the network gets BGR (DiffBIR
passes RGB arrays into this BGR code), and the eye distance is measured between the two eyes (DiffBIR's
copy indexes the wrong coordinates: ``bbox[6] - bbox[8], bbox[7] - bbox[9]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .priors import decode_boxes, decode_landmarks, nms, prior_boxes

SCORE_THRESHOLD = 0.8
NMS_THRESHOLD = 0.4
DETECT_SHORT_EDGE = 640
MIN_EYE_DISTANCE = 5.0
BGR_MEAN = (104.0, 117.0, 123.0)
ORDERS = ("score", "largest", "center")  # "largest" + max_faces 1 is facexlib's only_keep_largest
# max_faces 0 ("all") keeps at most this many per photo: every kept face becomes a crop that the rest of the graph
# restores (a 512 px crop is 3 MB per IMAGE copy, and a restore holds several copies), and a detector that reports
# more than this (random weights, or a threshold set far too low) would otherwise fill the memory for hours. The
# widget's own maximum is the same number.
MAX_FACES = 256


@dataclass
class Detections:
    """Faces found in one image, in image pixels: boxes (K, 4) x1 y1 x2 y2, scores (K,), landmarks (K, 5, 2)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: torch.Tensor) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    @staticmethod
    def empty() -> "Detections":
        return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))


def network_input(image: torch.Tensor, short_edge: int = DETECT_SHORT_EDGE) -> tuple[torch.Tensor, float]:
    """The detector input (1, 3, h, w) for an RGB image (3, H, W) in [0, 1], and the resize factor used."""
    h, w = image.shape[-2:]
    scale = max(1.0, short_edge / min(h, w))
    x = image.unsqueeze(0).float() * 255.0
    if scale > 1:
        x = F.interpolate(x, size=(int(h * scale), int(w * scale)), mode="bilinear", align_corners=False)
    mean = torch.tensor(BGR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.flip(1) - mean, scale


def decode(loc: torch.Tensor, conf: torch.Tensor, landm: torch.Tensor, input_hw: tuple[int, int]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's raw outputs ((P, 4), (P, 2), (P, 10)) -> boxes, scores, landmarks in input pixels."""
    h, w = input_hw
    priors = prior_boxes(h, w).to(loc.device)
    if priors.shape[0] != loc.shape[0]:
        raise ValueError(f"RetinaFace gave {loc.shape[0]} predictions for a {w} x {h} input, the priors "
                         f"expect {priors.shape[0]}: not a RetinaFace with the official strides")
    size = torch.tensor([w, h], dtype=torch.float32, device=loc.device)
    boxes = decode_boxes(loc.float(), priors) * size.repeat(2)
    points = decode_landmarks(landm.float(), priors) * size
    return boxes, conf[:, 1].float(), points


@torch.no_grad()
def detect_faces(net: torch.nn.Module, image: torch.Tensor, score_threshold: float = SCORE_THRESHOLD,
                 nms_threshold: float = NMS_THRESHOLD, short_edge: int = DETECT_SHORT_EDGE) -> Detections:
    """Faces in one RGB image (3, H, W), sorted by score, in the image's pixel coordinates (on the CPU)."""
    param = next(net.parameters())
    x, scale = network_input(image.to(param.device), short_edge)
    loc, conf, landm = net(x.to(param.dtype))
    boxes, scores, points = decode(loc[0], conf[0], landm[0], tuple(x.shape[-2:]))
    keep = scores > score_threshold
    boxes, scores, points = boxes[keep].cpu(), scores[keep].cpu(), points[keep].cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    dets = Detections(boxes[order], scores[order], points[order])
    dets = dets.take(nms(dets.boxes, dets.scores, nms_threshold))
    return Detections(dets.boxes / scale, dets.scores, dets.landmarks / scale)


def eye_distance(landmarks: torch.Tensor) -> torch.Tensor:
    return (landmarks[..., 0, :] - landmarks[..., 1, :]).norm(dim=-1)


@dataclass
class Selection:
    faces: Detections
    too_small: list[float] = field(default_factory=list)  # eye distances of the faces skipped as too small
    over_limit: int = 0  # faces left out by max_faces


def select_faces(dets: Detections, image_hw: tuple[int, int], min_eye_distance: float = MIN_EYE_DISTANCE,
                 order: str = "score", max_faces: int = 0) -> Selection:
    """Drop faces with eyes closer than `min_eye_distance`, sort by `order`, keep the first `max_faces` (0 = all,
    up to `MAX_FACES`).

    "largest" ranks by the box area clipped to the image, "center" by the distance of the box centre to the
    image centre (facexlib's get_largest_face / get_center_face).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    dist = eye_distance(dets.landmarks)
    small = dist < min_eye_distance
    too_small = [round(float(d), 1) for d in dist[small]]
    dets = dets.take(~small)
    h, w = image_hw
    if order == "largest" and len(dets):
        b = dets.boxes
        area = (b[:, 2].clamp(0, w) - b[:, 0].clamp(0, w)) * (b[:, 3].clamp(0, h) - b[:, 1].clamp(0, h))
        dets = dets.take(torch.argsort(area, descending=True, stable=True))
    elif order == "center" and len(dets):
        centre = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
        dist_c = (centre - torch.tensor([w / 2, h / 2])).norm(dim=-1)
        dets = dets.take(torch.argsort(dist_c, stable=True))
    limit = max_faces if max_faces > 0 else MAX_FACES
    over = max(0, len(dets) - limit)
    if over:
        dets = dets.take(torch.arange(limit))
    return Selection(dets, too_small, over)
