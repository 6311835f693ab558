"""The alignment record between Face Detect & Align and Face Paste Back, and the two steps around it.

`align_faces` cuts the aligned crops of a batch of photos and returns a `FaceAlignment` with everything
paste-back needs: per face the photo it came from, the image -> crop matrix, box, score and landmarks, and
for the batch the photo size, the size before the upscale and the crop size. `paste_back` checks that the
restored crops and the restored background belong to that record and pastes each face into its photo.

A batch with no face at all still yields one grey crop (downstream restorers cannot run on an empty
batch); the record marks it as a placeholder and paste-back ignores it, returning the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .align import CROP_BORDER_RGB, compose_affine, crop_face, face_template, invert_affine, resize_matrix
from .align import similarity_transform
from .detection import Detections
from .paste import OFFICIAL_EROSION, OFFICIAL_FEATHER, paste_faces


class FaceInputError(ValueError):
    """Inputs that do not belong together; the message names the input and the fix."""


@dataclass(frozen=True)
class FaceAlignment:
    source_size: tuple[int, int]  # (H, W) of the photos the crops were cut from (input x upscale)
    input_size: tuple[int, int]  # (H, W) of the photos before the upscale
    batch_size: int
    face_size: int
    image_index: tuple[int, ...]  # per face: which photo of the batch
    matrices: torch.Tensor  # (N, 2, 3) float64, photo pixels -> crop pixels
    boxes: torch.Tensor  # (N, 4) x1 y1 x2 y2 in photo pixels
    scores: torch.Tensor  # (N,)
    landmarks: torch.Tensor  # (N, 5, 2) in photo pixels
    placeholder: bool = False  # True: no face anywhere, the crop batch holds one grey stand-in

    @property
    def num_faces(self) -> int:
        return len(self.image_index)

    @property
    def num_crops(self) -> int:
        return 1 if self.placeholder else self.num_faces

    def inverse(self) -> torch.Tensor:
        return invert_affine(self.matrices)


def align_faces(images: torch.Tensor, detections: list[Detections], face_size: int,
                input_size: tuple[int, int] | None = None, on_face=None) -> tuple[torch.Tensor, FaceAlignment]:
    """Crops (N, 3, S, S) of the faces `detections[b]` found in `images` (B, 3, H, W), and their record.
    `on_face(done, total)` is called before each crop (the host's progress and Cancel)."""
    b, c, h, w = images.shape
    if len(detections) != b:
        raise ValueError(f"{len(detections)} detection lists for {b} images")
    template = face_template(face_size)
    crops, index, matrices, boxes, scores, points = [], [], [], [], [], []
    total = sum(len(dets) for dets in detections)
    for i, dets in enumerate(detections):
        for k in range(len(dets)):
            if on_face is not None:
                on_face(len(crops), total)
            m = similarity_transform(dets.landmarks[k], template)
            crops.append(crop_face(images[i], m, face_size))
            index.append(i)
            matrices.append(m)
            boxes.append(dets.boxes[k].float())
            scores.append(dets.scores[k].float())
            points.append(dets.landmarks[k].float())
    placeholder = not crops
    if placeholder:
        grey = torch.tensor(CROP_BORDER_RGB[:c], dtype=images.dtype, device=images.device).view(c, 1, 1)
        out = grey.expand(1, c, face_size, face_size).clone()
        matrices_t, boxes_t, scores_t, points_t = (torch.zeros(0, 2, 3, dtype=torch.float64), torch.zeros(0, 4),
                                                   torch.zeros(0), torch.zeros(0, 5, 2))
    else:
        out = torch.stack(crops)
        matrices_t, boxes_t, scores_t, points_t = (torch.stack(matrices), torch.stack(boxes), torch.stack(scores),
                                                   torch.stack(points))
    record = FaceAlignment((h, w), tuple(input_size or (h, w)), b, face_size, tuple(index), matrices_t, boxes_t,
                           scores_t, points_t, placeholder)
    return out, record


def check_inputs(background: torch.Tensor, faces: torch.Tensor, alignment: FaceAlignment) -> None:
    """Raise FaceInputError unless `background` (B, C, H, W) and `faces` (N, C, h, w) belong to `alignment`."""
    if not isinstance(alignment, FaceAlignment):
        raise FaceInputError(f"alignment: expected the FACE_ALIGNMENT output of DiffBIR Face Detect & Align, got "
                             f"{type(alignment).__name__}")
    bb, _, bh, bw = background.shape
    sh, sw = alignment.source_size
    if bb != alignment.batch_size:
        raise FaceInputError(
            f"background: a batch of {bb} image(s), but the alignment was made on {alignment.batch_size}: connect "
            "the background restored from the same photos that went into DiffBIR Face Detect & Align.")
    if (bh, bw) != (sh, sw):
        ih, iw = alignment.input_size
        raise FaceInputError(
            f"background: {bw} x {bh} pixels, but the faces were aligned on {sw} x {sh} (the {iw} x {ih} input "
            "upscaled in Face Detect & Align): the alignment comes from another image size. Restore the background "
            "from the same photo at the same upscale (e.g. Stage1's upscale equal to Face Detect & Align's, then "
            f"resize to {sw} x {sh}), or re-run Face Detect & Align on this image.")
    if faces.shape[0] != alignment.num_crops:
        what = "1 grey placeholder crop (no face was found)" if alignment.placeholder else \
            f"{alignment.num_faces} face crop(s)"
        raise FaceInputError(
            f"faces: a batch of {faces.shape[0]} image(s), but the alignment holds {what}: connect the restored "
            "crops of this same DiffBIR Face Detect & Align, one result per crop, in the same order (a restorer "
            "that returns several results per crop must be reduced to one).")


def paste_back(background: torch.Tensor, faces: torch.Tensor, alignment: FaceAlignment,
               erosion: float = OFFICIAL_EROSION, feather: float = OFFICIAL_FEATHER
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (B, C, H, W), faces-only images, masks (B, H, W)) with every restored face pasted into its photo.

    Restored crops may have another size than the aligned ones (an upscaling face restorer): their matrices are
    rescaled so that they land on the same place.
    """
    check_inputs(background, faces, alignment)
    images, faces_only, masks = [], [], []
    inverse = alignment.inverse()
    if not alignment.placeholder and tuple(faces.shape[-2:]) != (alignment.face_size,) * 2:
        back = resize_matrix(tuple(faces.shape[-2:]), (alignment.face_size,) * 2)
        inverse = compose_affine(inverse, back.expand(len(inverse), 2, 3))
    for b in range(background.shape[0]):
        sel = [k for k, i in enumerate(alignment.image_index) if i == b]
        result = paste_faces(background[b], [faces[k] for k in sel], inverse[sel], erosion, feather)
        images.append(result.image)
        faces_only.append(result.faces_only)
        masks.append(result.mask)
    return torch.stack(images), torch.stack(faces_only), torch.stack(masks)
