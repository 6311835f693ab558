"""The model folders the DiffBIR loaders list, and how a file widget's value becomes a file path.

``models/diffbir`` (registered here through folder_paths, so extra_model_paths.yaml entries named ``diffbir`` are
honoured) holds every DiffBIR file; the loaders also list, prefixed with the folder name, ComfyUI's own
``upscale_models`` (stage 1) and ``controlnet`` (ControlNet) folders, and the face detector lives in
``models/facedetection`` (ComfyUI's conventional folder for facexlib detectors, shared with other face packs),
with ``models/diffbir`` files offered prefixed.

Each loader file widget is a ``FileInput``: its list holds only files that are there (the frontend counts a listed
name as installed), and its validation also accepts the official file names of its slot (the weights catalogue),
which the node fetches when it runs (``downloads``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import folder_paths

from diffbir_core.detect import STAGE1_KINDS
from diffbir_weights import CATALOGUE, WeightFile, lookup

from . import model_cache

FOLDER = "diffbir"
FACE_FOLDER = "facedetection"
STAGE1_EXTRA_FOLDER = "upscale_models"
CONTROLNET_EXTRA_FOLDER = "controlnet"
NONE = "none"


def register_model_folder(name: str) -> None:
    """models/<name> as the folder type `name` (kept beside any paths extra_model_paths.yaml added)."""
    default = os.path.join(folder_paths.models_dir, name)
    exts = set(folder_paths.supported_pt_extensions)
    entry = folder_paths.folder_names_and_paths.get(name)
    if entry is None:
        folder_paths.folder_names_and_paths[name] = ([default], exts)
        return
    paths, old_exts = entry
    if default not in paths:
        paths.append(default)
    # A folder first created by extra_model_paths.yaml (or another pack) has no extension filter: list only
    # model files.
    folder_paths.folder_names_and_paths[name] = (paths, exts | set(old_exts))


def register_model_folders() -> None:
    for name in (FOLDER, FACE_FOLDER):
        register_model_folder(name)


def files(folder: str) -> list[str]:
    try:
        return list(folder_paths.get_filename_list(folder))
    except KeyError:  # folder type unknown to this ComfyUI
        return []


def full_path(folder: str, name: str) -> str | None:
    """Where ComfyUI finds `name` in the folder type `folder` (any of its paths), or None."""
    try:
        return folder_paths.get_full_path(folder, name)
    except KeyError:  # folder type unknown to this ComfyUI
        return None


@dataclass(frozen=True)
class FileInput:
    """A loader's file widget: bare values are files of `folder`, '<prefixed>/<file>' values files of `prefixed`
    (listed after them with that prefix); `kinds` are the checkpoint kinds its slot loads (which official files it
    accepts while they are not installed); `none` adds the value 'none' (no file) first."""

    input_name: str
    folder: str
    prefixed: str
    kinds: tuple[str, ...]
    none: bool

    @property
    def folders(self) -> str:
        """The folders the input reads, for messages: 'models/diffbir or models/upscale_models'."""
        return f"models/{self.folder} or models/{self.prefixed}"

    def choices(self) -> list[str]:
        """The files that are there: `folder`'s, then '<prefixed>/<file>' (deduplicated); 'none' first if allowed."""
        own = files(self.folder)
        seen = set(own)
        extra = []
        for name in files(self.prefixed):
            label = f"{self.prefixed}/{name}"
            if label not in seen:
                seen.add(label)
                extra.append(label)
        return ([NONE] if self.none else []) + own + extra

    def split(self, value: str) -> tuple[str, str]:
        """(folder type, name inside it) that a value is read from: the prefixed folder for '<prefixed>/x'."""
        if value.startswith(self.prefixed + "/"):
            return self.prefixed, value[len(self.prefixed) + 1:]
        return self.folder, value

    def official(self, value) -> WeightFile | None:
        """The catalogue entry when `value` is an official file of this slot, bare or with the prefix; else None."""
        if not isinstance(value, str):
            return None
        entry = lookup(value)
        if entry is None or entry.kind not in self.kinds:
            return None
        return entry if value in (entry.name, f"{self.prefixed}/{entry.name}") else None

    def official_names(self) -> list[str]:
        """The official files this slot loads (the catalogue's entries of its kinds)."""
        return [e.name for e in CATALOGUE.values() if e.kind in self.kinds]

    def installed(self, value: str) -> str | None:
        """Where ComfyUI finds the file the value names (None for 'none' or a file that is not there).

        A bare value is looked up in `folder`; a prefixed one in `folder` (a subfolder of that name) and then in
        the prefixed folder. An official file that is not where the value says but in one of the folders the
        catalogue lists for it (``WeightFile.folder``, ``alt_folders``; e.g. BSRNet.pth in models/upscale_models
        while the workflow names it bare) is that file, used in place instead of being downloaded twice."""
        if not value or value == NONE:
            return None
        path = full_path(self.folder, value)
        folder, name = self.split(value)
        if path is None and folder != self.folder:
            path = full_path(folder, name)
        entry = self.official(value)
        if path is None and entry is not None:
            for folder in (entry.folder, *entry.alt_folders):
                path = path or full_path(folder, entry.name)
        return path

    def unlisted_error(self, value) -> str | None:
        """Why the value cannot be used, or None; for the loader's validate_inputs. Listed files pass, and so do the
        official files of this slot that are not installed (the node downloads them when it runs).

        ComfyUI 0.3.75 does not check V3 combo values itself (newer hosts do, but skip inputs that validate_inputs
        names), so the loaders check their file inputs here, on every host, with the stock wording and the fix."""
        if value is None or self.official(value) is not None or value in self.choices():
            return None
        return (f"Value not in list: {self.input_name}: '{value}' is not in {self.folders}: put the file there and "
                "refresh the node list (press R), or pick a listed file")

    def fingerprint(self, value):
        """What identifies the file a value names, for the loader's fingerprint_inputs: (real path, mtime, size) of
        the file there, so that a file replaced under the same name (or arriving: a download, a copy by hand) runs
        the node again; the value itself while no file is there."""
        try:
            path = self.installed(value)
            return model_cache.file_key(path) if path else value
        except OSError:
            return value


STAGE1_FILE = FileInput("stage1_name", FOLDER, STAGE1_EXTRA_FOLDER, (*STAGE1_KINDS, "diffbir_v1_full"), none=True)
CONTROLNET_FILE = FileInput("controlnet_name", FOLDER, CONTROLNET_EXTRA_FOLDER, ("controlnet", "diffbir_v1_full"),
                            none=True)
DETECTOR_FILE = FileInput("detector_name", FACE_FOLDER, FOLDER, ("retinaface",), none=False)

register_model_folders()
