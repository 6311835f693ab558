"""The official DiffBIR weight files as data: where each comes from, where it goes, what it is.

Every file the official code (v1, v2, v2.1) downloads is listed once, with its URL as written
in the official code (spec sections B.2, C.2 and D), the ComfyUI model folder it belongs in,
the checkpoint kind `detect.detect` reports for it and the DiffBIR version it belongs to where
the file itself tells (ControlNets by name, the zero-terminal-SNR SD, the v1 full files).

No sizes are listed, and a SHA-256 only where one is known together with where it was obtained
(``sha256`` and ``sha256_source``; none today: the official repositories publish none, and this catalogue
copies no hash it cannot trace to the file's publisher). ``download`` records the SHA-256 of the first
download in a lock file instead.

Folders are relative to ComfyUI's `models` folder: `checkpoints` for the SD bases (loaded by
ComfyUI's own checkpoint loader), `diffbir` for the DiffBIR files (listed by Load DiffBIR
Models), `facedetection` for facexlib's detectors (listed by Face Detect & Align). Load DiffBIR
Models also lists stage-1 files from `upscale_models` and ControlNets from `controlnet`, Face
Detect & Align detectors from `diffbir` (shown with the folder as prefix), so those count as
alternative places. ``LOADERS`` says, per loader node type, which folder a file widget's value is
read from; ``embed`` writes workflows' ``models`` metadata from it and the entries here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"
DIFFBIR = "diffbir"
UPSCALE_MODELS = "upscale_models"
CONTROLNET = "controlnet"
FACEDETECTION = "facedetection"  # the folder other ComfyUI face packs keep facexlib's detectors in

_HF_V1 = "https://huggingface.co/lxq007/DiffBIR/resolve/main/"
_HF_V2 = "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/"
_KAIR = "https://github.com/cszn/KAIR/releases/download/v1.0/"
_SD21 = "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/"
_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/"

# Widget value meaning "no file" in Load DiffBIR Models.
NONE_VALUES = ("", "none")


@dataclass(frozen=True)
class WeightFile:
    name: str  # official file name (also the name it gets on disk)
    url: str  # official download URL
    folder: str  # ComfyUI model folder it belongs in
    kind: str  # what detect.detect reports for it
    version: str | None  # DiffBIR version detect reports (None where the file cannot tell)
    used_by: tuple[str, ...]  # DiffBIR versions whose official pipelines use it
    description: str
    alt_folders: tuple[str, ...] = ()  # other folders the nodes also look in
    sha256: str | None = None  # the file's SHA-256 where it is known (never guessed), lower-case hex
    sha256_source: str | None = None  # where that SHA-256 was obtained (required with sha256)

    def target(self, models_dir: str | os.PathLike) -> Path:
        """Where a download of this file is written: models_dir/folder/name."""
        return Path(models_dir) / self.folder / self.name

    def find(self, models_dir: str | os.PathLike) -> Path | None:
        """The file on disk in its folder or an alternative folder, or None."""
        for folder in (self.folder, *self.alt_folders):
            path = Path(models_dir) / folder / self.name
            if path.is_file():
                return path
        return None


_STAGE1_ALT = (UPSCALE_MODELS,)
_CONTROLNET_ALT = (CONTROLNET,)

_FILES = (
    WeightFile(
        "v2-1_512-ema-pruned.ckpt", _SD21 + "v2-1_512-ema-pruned.ckpt", CHECKPOINTS, "sd21", None, ("v1", "v2"),
        "Stable Diffusion 2.1-base (eps prediction): the SD model of DiffBIR v1 and v2.",
    ),
    WeightFile(
        "sd2.1-base-zsnr-laionaes5.ckpt", _HF_V2 + "sd2.1-base-zsnr-laionaes5.ckpt", CHECKPOINTS, "sd21", "v2.1",
        ("v2.1",),
        "SD 2.1-base fine-tuned with zero-terminal SNR and v-prediction: the SD model of DiffBIR v2.1.",
    ),
    WeightFile(
        "DiffBIR_v2.1.pt", _HF_V2 + "DiffBIR_v2.1.pt", DIFFBIR, "controlnet", "v2.1", ("v2.1",),
        "DiffBIR v2.1 IRControlNet (all tasks; pairs with sd2.1-base-zsnr-laionaes5.ckpt).", _CONTROLNET_ALT,
    ),
    WeightFile(
        "v2.pth", _HF_V2 + "v2.pth", DIFFBIR, "controlnet", "v2", ("v2",),
        "DiffBIR v2 IRControlNet (all tasks; pairs with v2-1_512-ema-pruned.ckpt).", _CONTROLNET_ALT,
    ),
    WeightFile(
        "v1_general.pth", _HF_V2 + "v1_general.pth", DIFFBIR, "controlnet", "v1", ("v1",),
        "DiffBIR v1 LAControlNet for general images (the ControlNet of general_full_v1.ckpt).", _CONTROLNET_ALT,
    ),
    WeightFile(
        "v1_face.pth", _HF_V2 + "v1_face.pth", DIFFBIR, "controlnet", "v1", ("v1",),
        "DiffBIR v1 LAControlNet for aligned faces (the ControlNet of face_full_v1.ckpt).", _CONTROLNET_ALT,
    ),
    WeightFile(
        "realesrgan_s4_swinir_100k.pth", _HF_V2 + "realesrgan_s4_swinir_100k.pth", DIFFBIR, "swinir", None, ("v2.1",),
        "Stage-1 SwinIR trained with Real-ESRGAN degradation: v2.1 super-resolution, denoising, face background.",
        _STAGE1_ALT,
    ),
    WeightFile(
        "general_swinir_v1.ckpt", _HF_V1 + "general_swinir_v1.ckpt", DIFFBIR, "swinir", None, ("v1",),
        "Stage-1 SwinIR for general images (DiffBIR v1 super-resolution and denoising).", _STAGE1_ALT,
    ),
    WeightFile(
        "face_swinir_v1.ckpt", _HF_V1 + "face_swinir_v1.ckpt", DIFFBIR, "swinir", None, ("v1", "v2", "v2.1"),
        "Stage-1 SwinIR for aligned faces (DifFace's; face restoration in v1, v2 and v2.1).", _STAGE1_ALT,
    ),
    WeightFile(
        "codeformer_swinir.ckpt", _HF_V2 + "codeformer_swinir.ckpt", DIFFBIR, "swinir", None, (),
        "Stage-1 SwinIR with CodeFormer degradation, used to train stage 2 (training and custom runs only).",
        _STAGE1_ALT,
    ),
    WeightFile(
        "BSRNet.pth", _KAIR + "BSRNet.pth", DIFFBIR, "bsrnet", None, ("v2",),
        "Stage-1 BSRNet (KAIR RRDBNet x4): DiffBIR v2 super-resolution and face background.", _STAGE1_ALT,
    ),
    WeightFile(
        "scunet_color_real_psnr.pth", _KAIR + "scunet_color_real_psnr.pth", DIFFBIR, "scunet", None, ("v2",),
        "Stage-1 SCUNet (PSNR model, KAIR): DiffBIR v2 denoising.", _STAGE1_ALT,
    ),
    WeightFile(
        "general_full_v1.ckpt", _HF_V1 + "general_full_v1.ckpt", DIFFBIR, "diffbir_v1_full", "v1", ("v1",),
        "DiffBIR v1 general, all in one file: stage-1 SwinIR + LAControlNet + SD 2.1 (superseded by the split files).",
    ),
    WeightFile(
        "face_full_v1.ckpt", _HF_V1 + "face_full_v1.ckpt", DIFFBIR, "diffbir_v1_full", "v1", ("v1",),
        "DiffBIR v1 faces, all in one file: stage-1 SwinIR + LAControlNet + SD 2.1 (superseded by the split files).",
    ),
    WeightFile(
        "detection_Resnet50_Final.pth", _FACEXLIB + "detection_Resnet50_Final.pth", FACEDETECTION, "retinaface", None,
        ("v2", "v2.1"),
        "RetinaFace ResNet-50 face detector (facexlib's retinaface_resnet50): finds faces for the unaligned-face task.",
        (DIFFBIR,),
    ),
    WeightFile(
        "detection_mobilenet0.25_Final.pth", _FACEXLIB + "detection_mobilenet0.25_Final.pth", FACEDETECTION,
        "retinaface", None, (),
        "RetinaFace MobileNet-0.25 face detector (facexlib's retinaface_mobile0.25): smaller and faster, less exact.",
        (DIFFBIR,),
    ),
)

CATALOGUE: dict[str, WeightFile] = {f.name: f for f in _FILES}

# Every models folder a catalogue file goes in or is also looked for in, derived from the catalogue (the one list):
# what `setup` and the in-process host create, so that a user sees where each file goes before downloading.
MODEL_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(f for e in _FILES for f in (e.folder, *e.alt_folders)))


def make_model_folders(models_dir: str | os.PathLike) -> list[Path]:
    """Create ``models_dir/<folder>`` for every folder of MODEL_FOLDERS; the folders, in that order."""
    folders = [Path(models_dir) / name for name in MODEL_FOLDERS]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


# Model file suffixes (what ComfyUI's folder_paths.supported_pt_extensions lists; a widget value ending in one
# names a model file).
MODEL_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


@dataclass(frozen=True)
class LoaderFolders:
    """Where a loader node reads the files its widgets name.

    A bare value (``x.pth``, or ``sub/x.pth`` in a subfolder) is a file of `folder`; a value that starts with
    one of `prefixed` and ``/`` (``upscale_models/x.pth``) is a file of that folder, listed with its name
    as prefix.
    """

    folder: str
    prefixed: tuple[str, ...] = ()

    def folder_of(self, value: str) -> str:
        """The models folder a widget value of this loader is read from."""
        value = value.replace("\\", "/")
        for folder in self.prefixed:
            if value.startswith(folder + "/"):
                return folder
        return self.folder


# Loader node type -> where its file widgets' values are read from. Kept in step with the nodes by
# tests/test_workflows.py (a probe file in each folder must appear in the node's list in the real host).
LOADERS: dict[str, LoaderFolders] = {
    "CheckpointLoaderSimple": LoaderFolders(CHECKPOINTS),
    "DiffBIRLoadModels": LoaderFolders(DIFFBIR, (UPSCALE_MODELS, CONTROLNET)),
    "DiffBIRFaceDetectAlign": LoaderFolders(FACEDETECTION, (DIFFBIR,)),
    "UpscaleModelLoader": LoaderFolders(UPSCALE_MODELS),
    "ControlNetLoader": LoaderFolders(CONTROLNET),
}


def file_name(value: str) -> str:
    """The bare file name of a loader widget value ('upscale_models/sub/x.pth' -> 'x.pth')."""
    return value.replace("\\", "/").rsplit("/", 1)[-1]


def lookup(value: str) -> WeightFile | None:
    """The catalogue entry for a file name or loader widget value, or None if it is not official.

    The entry gives the official URL (``url``), the models subfolder a download goes to (``folder``), the
    other folders the nodes also look in (``alt_folders``) and the SHA-256 where known (``sha256``, with
    ``sha256_source`` saying where it was obtained; None otherwise).
    """
    return CATALOGUE.get(file_name(value))


def is_model_file(value: str) -> bool:
    """Whether a widget value names a model file (by its suffix)."""
    return isinstance(value, str) and value.strip().lower().endswith(MODEL_SUFFIXES)


def _names(values: Iterable[str | None]) -> list[str]:
    seen: list[str] = []
    for value in values:
        if value is None or not isinstance(value, str) or value.strip().lower() in NONE_VALUES:
            continue
        name = file_name(value.strip())
        if name not in seen:
            seen.append(name)
    return seen


def unknown_files(values: Iterable[str | None]) -> list[str]:
    """File names among the widget values that are not official files (e.g. converted ones)."""
    return [n for n in _names(values) if n not in CATALOGUE]


def files_needed(values: Iterable[str | None], strict: bool = False) -> list[WeightFile]:
    """The official files that a workflow's loader widget values name, in first-seen order.

    `values` are the file widgets of the loaders (Load DiffBIR Models' stage1_name and
    controlnet_name, the checkpoint loader's ckpt_name), with or without a folder prefix;
    'none' and empty values are skipped, duplicates counted once. Names that are not official
    files cannot be downloaded: they are skipped, or with `strict` raise ValueError listing them.
    """
    values = list(values)
    if strict:
        unknown = unknown_files(values)
        if unknown:
            raise ValueError(
                "not an official DiffBIR file, so it cannot be downloaded: " + ", ".join(unknown)
                + f" (official files: {', '.join(CATALOGUE)})"
            )
    return [CATALOGUE[n] for n in _names(values) if n in CATALOGUE]
