"""DiffBIR Face Detect & Align and DiffBIR Face Paste Back: the official unaligned-face task as two nodes.

Detect & Align finds faces with RetinaFace (facexlib's files, from ``models/facedetection`` or, prefixed,
``models/diffbir``; an official one that is not installed is downloaded on first use, ``host.downloads``), cuts
each one out aligned to the 512 x 512 FFHQ template and hands the crops plus a FACE_ALIGNMENT record to whatever
restores them; Paste Back puts the restored crops into the restored background through the inverse affine with the
official soft mask. All maths is in ``diffbir_core.face``;
the detector is loaded the ComfyUI way (``host.loaders``, ``host.model_cache``), and this module words the report.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from diffbir_core import stage1 as stage1_core
from diffbir_core.face import detection as detection_core
from diffbir_core.face import paste as paste_core
from diffbir_core.face.align import FACE_SIZE
from diffbir_core.face.alignment import FaceAlignment, align_faces, paste_back
from diffbir_core.face.detection import detect_faces, select_faces

from .host import model_cache, schema
from .host.downloads import obtain
from .host.images import rgb_image
from .host.loaders import DETECTORS, load_detector
from .host.model_files import DETECTOR_FILE, FACE_FOLDER, FOLDER
from .host.types import FaceAlignmentIO

log = logging.getLogger("comfyui-diffbir")

DEFAULT_UPSCALE = 2.0  # the official README's unaligned-face example (--upscale 2)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


FIRST_FEW = 5  # faces (and photos) the report details; the rest are counted, so any number stays readable


def _first_few(values, fmt="{:.2f}") -> str:
    """The first FIRST_FEW values, then how many more: '0.99, 0.98, ... (1790 more)'."""
    shown = ", ".join(fmt.format(v) for v in values[:FIRST_FEW])
    more = len(values) - FIRST_FEW
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def _report(selections, detector_info: str, upscale: float, size: tuple[int, int], min_eye: float,
            threshold: float, max_faces: int) -> str:
    """Counts first (all photos), then one line per photo for the first few photos, each naming its first few
    faces: a line's length does not grow with the number of faces, nor the report's with the number of photos."""
    total = sum(len(s.faces) for s in selections)
    skipped = sum(len(s.too_small) for s in selections)
    over = sum(s.over_limit for s in selections)
    with_faces = sum(1 for s in selections if len(s.faces))
    counts = f"{_plural(total, 'face')} in {with_faces} of {_plural(len(selections), 'photo')}"
    if skipped:
        counts += f", {_plural(skipped, 'tiny face')} skipped"
    if over:
        limit = (f"max_faces {max_faces}" if max_faces else
                 f"at most {detection_core.MAX_FACES} per photo with max_faces 0")
        counts += f", {over} more left out ({limit})"
    lines = [f"{detector_info}; photos upscaled x{upscale:g} to {size[1]} x {size[0]}", counts]
    for i, sel in enumerate(selections[:FIRST_FEW], 1):
        n = len(sel.faces)
        if n:
            scores = _first_few(sel.faces.scores.tolist())
            eyes = _first_few(detection_core.eye_distance(sel.faces.landmarks).tolist(), "{:.0f}")
            line = f"image {i}: {_plural(n, 'face')} (scores {scores}; eye distance {eyes} px)"
        else:
            line = (f"image {i}: no face found (score threshold {threshold:g}): DiffBIR Face Paste Back returns "
                    "its background unchanged for this image")
        if sel.too_small:
            line += (f"; skipped {_plural(len(sel.too_small), 'tiny face')} (eye distance "
                     f"{_first_few(sel.too_small, '{:g}')} px < min_eye_distance {min_eye:g}: raise the upscale or "
                     "lower min_eye_distance to restore them)")
        if sel.over_limit:
            line += f"; left out {sel.over_limit} more (max_faces)"
        lines.append(line)
    if len(selections) > FIRST_FEW:
        lines.append(f"... {len(selections) - FIRST_FEW} more photos")
    if over and not max_faces:
        lines.append(f"so many faces usually means a score_threshold too low (or a detector with random weights): "
                     f"raise score_threshold, or set max_faces to restore fewer")
    if total == 0:
        lines.append("no face in any image: the faces output holds one grey placeholder crop so that the graph runs")
    return "\n".join(lines)


class DiffBIRFaceDetectAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        detectors = DETECTOR_FILE.choices()  # only files that are there: the frontend counts a listed one installed
        return schema.schema(
            node_id="DiffBIRFaceDetectAlign",
            display_name="DiffBIR Face Detect & Align",
            category=schema.FACES,
            search_aliases=["face", "face detect", "retinaface", "face restore", "face fix", "align faces"],
            description=(
                "Finds the faces in whole photos (RetinaFace, as DiffBIR's unaligned-face task) and cuts each one out "
                "aligned to the 512 x 512 FFHQ template by its five landmarks (eyes, nose, mouth corners). Restore "
                "the crops with any face restorer (officially: Stage1 with face_swinir_v1.ckpt at upscale 1, then "
                "the DiffBIR ControlNet), restore the whole photo as usual for the background, and join them with "
                "DiffBIR Face Paste Back. The photo is first upscaled by 'upscale' (bicubic, as officially); the "
                "background must have that size too."),
            inputs=[
                io.Image.Input("image", tooltip="The whole photo(s), low quality, at their original size."),
                io.Combo.Input("detector_name", options=detectors,
                               default=DETECTORS[0] if DETECTORS[0] in detectors else None,
                               tooltip=f"RetinaFace file: {DETECTORS[0]} (official, best) or {DETECTORS[1]} "
                                       f"(faster), from models/{FACE_FOLDER} or (prefixed) models/{FOLDER}. The list "
                                       "shows the files that are there; a workflow naming an official one that is "
                                       f"not installed gets it downloaded into models/{FACE_FOLDER} when the node "
                                       "runs (DIFFBIR_OFFLINE=1 turns that off)."),
                io.Float.Input("upscale", default=DEFAULT_UPSCALE, min=1.0, max=8.0, step=0.05,
                               tooltip="The photo is enlarged by this (bicubic, official --upscale) before faces are "
                                       "found and cut out: use the same upscale as the background restore, which "
                                       "Paste Back requires to be (input x upscale) in size."),
                io.Float.Input("score_threshold", default=detection_core.SCORE_THRESHOLD, min=0.01, max=1.0,
                               step=0.01, tooltip="Detector confidence a face needs (official 0.8). Lower it to "
                                                  "catch blurry faces, raise it against false ones.",
                               **schema.ADVANCED),
                io.Float.Input("min_eye_distance", default=detection_core.MIN_EYE_DISTANCE, min=0.0, max=1000.0,
                               step=0.5, tooltip="Faces whose eyes are closer than this many pixels (in the upscaled "
                                                 "photo) are skipped as too small or seen from the side (official "
                                                 "5); the info output lists them.", **schema.ADVANCED),
                io.Combo.Input("order", options=list(detection_core.ORDERS), default="score",
                               tooltip="Order of the faces in the crop batch: score (official), largest first, or "
                                       "nearest to the centre first. With max_faces 1: only the best, largest or "
                                       "central face."),
                io.Int.Input("max_faces", default=0, min=0, max=detection_core.MAX_FACES,
                             tooltip="Keep at most this many faces per photo, in 'order' (0 = all, up to "
                                     f"{detection_core.MAX_FACES}: every face is a crop the graph restores)."),
                io.Int.Input("face_size", default=FACE_SIZE, min=64, max=2048, step=8,
                             tooltip="Side of the aligned crops; 512 is what DiffBIR's face models were trained on "
                                     "(the template is scaled with it).", **schema.ADVANCED),
            ],
            outputs=[
                io.Image.Output("faces", display_name="faces",
                                tooltip="The aligned face crops (face_size x face_size), all faces of all photos as "
                                        "one batch, in the order of the alignment. When no photo has a face: one "
                                        "grey placeholder crop (Paste Back then returns the background)."),
                FaceAlignmentIO.Output("alignment", display_name="alignment",
                                       tooltip="Where each crop came from (photo, affine matrix, box, landmarks, "
                                               "photo size): connect it to DiffBIR Face Paste Back."),
                io.String.Output("info", display_name="info",
                                 tooltip="What was found per photo: faces with scores and eye distances, tiny faces "
                                         "skipped, or that no face was found."),
            ],
        )

    @classmethod
    def validate_inputs(cls, detector_name=None):
        # A listed file, or an official detector that is not installed yet (downloaded when the node runs).
        return DETECTOR_FILE.unlisted_error(detector_name) or True

    @classmethod
    def fingerprint_inputs(cls, detector_name, **kwargs):
        # Re-run when the detector file is replaced on disk under the same name, or arrives (other inputs are in the
        # cache key).
        return repr(DETECTOR_FILE.fingerprint(detector_name))

    @classmethod
    def execute(cls, image, detector_name, upscale, score_threshold, min_eye_distance, order, max_faces,
                face_size) -> io.NodeOutput:
        if order not in detection_core.ORDERS:
            raise ValueError(f"order must be one of {', '.join(detection_core.ORDERS)}, got {order!r}")
        if not upscale >= 1.0:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        photos = rgb_image(image, "image").movedim(-1, 1).float().cpu()
        b, _, h, w = photos.shape
        size = stage1_core.upscaled_size(h, w, upscale, "v2.1")
        if size != (h, w):
            photos = stage1_core.pil_bicubic_resize(photos, size)
        path, downloaded = obtain(DETECTOR_FILE, detector_name, "DiffBIR Face Detect & Align")
        patcher, info = model_cache.cached("face detector", (model_cache.file_key(path),),
                                           lambda: load_detector(path), path)
        if downloaded:
            info = f"{downloaded}\n{info}"
        mm.load_models_gpu([patcher], force_full_load=True)
        pbar = comfy.utils.ProgressBar(b)
        selections = []
        for i in range(b):
            mm.throw_exception_if_processing_interrupted()
            found = detect_faces(patcher.model, photos[i], score_threshold)
            selections.append(select_faces(found, size, min_eye_distance, order, max_faces))
            pbar.update_absolute(i + 1, b)
        crop_bar = comfy.utils.ProgressBar(max(1, sum(len(s.faces) for s in selections)))

        def on_face(done, total):  # cutting the crops: progress and Cancel per face
            mm.throw_exception_if_processing_interrupted()
            crop_bar.update_absolute(done, total)

        crops, record = align_faces(photos, [s.faces for s in selections], face_size, input_size=(h, w),
                                    on_face=on_face)
        report = _report(selections, info, upscale, size, min_eye_distance, score_threshold, max_faces)
        log.info("DiffBIR Face Detect & Align: %s", report.replace("\n", "; "))
        return io.NodeOutput(crops.movedim(1, -1).to(mm.intermediate_device()), record, report)


class DiffBIRFacePasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRFacePasteBack",
            display_name="DiffBIR Face Paste Back",
            category=schema.FACES,
            search_aliases=["face", "paste faces", "face restore", "face fix"],
            description=(
                "Pastes restored face crops back into the restored whole photo, each through the inverse of its "
                "alignment, blended with the official soft mask (the crop square, eroded and blurred by a tenth of "
                "the face size). Pixels outside every mask are the background's, unchanged. The background must be "
                "the photo at the size Face Detect & Align worked on (input x its upscale), the faces one restored "
                "crop per detected face."),
            inputs=[
                io.Image.Input("background", tooltip="The restored whole photo(s), at Face Detect & Align's size "
                                                     "(input x upscale), e.g. Stage1 + DiffBIR Sampler at the same "
                                                     "upscale, resized to the target size."),
                io.Image.Input("faces", tooltip="The restored crops, one per crop of Face Detect & Align, in the same "
                                                "order (any square size: an upscaling face restorer is fine)."),
                FaceAlignmentIO.Input("alignment", tooltip="The alignment output of the DiffBIR Face Detect & Align "
                                                           "that made these crops."),
                io.Float.Input("erosion", default=paste_core.OFFICIAL_EROSION, min=0.0, max=0.5, step=0.01,
                               tooltip="How far the mask is pulled in from the crop's edge, as a fraction of the face "
                                       "size (official 0.1 = 2 x side // 20 pixels).", **schema.ADVANCED),
                io.Float.Input("feather", default=paste_core.OFFICIAL_FEATHER, min=0.0, max=0.5, step=0.01,
                               tooltip="Width of the soft blend at the mask's edge (Gaussian blur size), as a "
                                       "fraction of the face size (official 0.1). 0 = hard edge.", **schema.ADVANCED),
            ],
            outputs=[
                io.Image.Output("image", display_name="image",
                                tooltip="The background with every restored face pasted in."),
                io.Image.Output("faces_only", display_name="faces_only",
                                tooltip="Only the pasted faces, over black (the same blend with a black background): "
                                        "to inspect or composite them."),
                io.Mask.Output("mask", display_name="mask",
                               tooltip="Where faces were pasted: the soft masks of all faces (1 = face, 0 = "
                                       "background)."),
                io.String.Output("info", display_name="info",
                                 tooltip="How many faces were pasted into each image, and which images had none "
                                         "(returned unchanged)."),
            ],
        )

    @classmethod
    def execute(cls, background, faces, alignment, erosion, feather) -> io.NodeOutput:
        if not isinstance(alignment, FaceAlignment):
            raise TypeError(f"alignment: expected the alignment output of DiffBIR Face Detect & Align, got "
                            f"{type(alignment).__name__}")
        bg = rgb_image(background, "background").movedim(-1, 1).float().cpu()
        crops = rgb_image(faces, "faces").movedim(-1, 1).float().cpu()
        images, faces_only, masks = paste_back(bg, crops, alignment, erosion, feather)
        counts = [alignment.image_index.count(i) for i in range(alignment.batch_size)]
        lines = [f"image {i}: pasted {_plural(n, 'face')}" if n else f"image {i}: no face, background unchanged"
                 for i, n in enumerate(counts[:FIRST_FEW], 1)]
        if len(counts) > FIRST_FEW:  # a long batch (video frames) stays readable: the rest counted
            rest = counts[FIRST_FEW:]
            lines.append(f"... {len(rest)} more images: pasted {_plural(sum(rest), 'face')}, "
                         f"{sum(1 for n in rest if not n)} without a face")
        out = mm.intermediate_device()
        return io.NodeOutput(images.movedim(1, -1).to(out), faces_only.movedim(1, -1).to(out), masks.to(out),
                             "\n".join(lines))
