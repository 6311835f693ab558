"""RetinaFace prior boxes, decoding and non-maximum suppression (facexlib `retinaface_utils`, both networks).

Priors: for each of the three feature levels (strides 8, 16, 32; ``ceil(size / stride)`` cells), for each
cell row i and column j, for each of the level's two anchor sizes s: centre ``((j + 0.5) * stride / W,
(i + 0.5) * stride / H)`` and size ``(s / W, s / H)``, all relative to the network input. This is the order
in which the heads emit their predictions (NHWC flattening, anchors last), level after level.

Decoding with the variances (0.1, 0.2):

    centre = prior_centre + loc[:2] * 0.1 * prior_size;  size = prior_size * exp(loc[2:] * 0.2)
    box    = (centre - size / 2, centre + size / 2)
    point  = prior_centre + landm[2k:2k + 2] * 0.1 * prior_size          (k = 0..4)
"""

from __future__ import annotations

import math

import torch

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)


def feature_sizes(h: int, w: int, steps=STEPS) -> list[tuple[int, int]]:
    return [(math.ceil(h / s), math.ceil(w / s)) for s in steps]


def prior_boxes(h: int, w: int, min_sizes=MIN_SIZES, steps=STEPS) -> torch.Tensor:
    """(P, 4) priors (cx, cy, w, h), relative to an (h, w) network input, float32 (unclipped, as officially)."""
    levels = []
    for (fh, fw), step, sizes in zip(feature_sizes(h, w, steps), steps, min_sizes):
        cy = ((torch.arange(fh, dtype=torch.float64) + 0.5) * step / h).view(fh, 1, 1).expand(fh, fw, len(sizes))
        cx = ((torch.arange(fw, dtype=torch.float64) + 0.5) * step / w).view(1, fw, 1).expand(fh, fw, len(sizes))
        s = torch.tensor(sizes, dtype=torch.float64).view(1, 1, -1).expand(fh, fw, len(sizes))
        levels.append(torch.stack([cx, cy, s / w, s / h], -1).reshape(-1, 4))
    return torch.cat(levels).float()


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """(..., P, 4) regression -> (x1, y1, x2, y2) relative to the input size."""
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], -1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """(..., P, 10) regression -> five (x, y) points (..., P, 5, 2) relative to the input size."""
    pts = pre.unflatten(-1, (5, 2))
    return priors[..., None, :2] + pts * variances[0] * priors[..., None, 2:]


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].double()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[i + 1:, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[i + 1:, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        iou = inter / (area[i] + area[i + 1:] - inter)
        suppressed[i + 1:] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, by decreasing score (torchvision's `nms` where it imports, as officially)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    try:
        from torchvision.ops import nms as tv_nms
    except Exception:  # torchvision missing or built for another torch: same maths, in plain torch
        return _greedy_nms(boxes.cpu(), scores.cpu(), iou_threshold)
    return tv_nms(boxes.float(), scores.float(), iou_threshold).cpu()
