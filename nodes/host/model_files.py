"""The model folders the DiffBIR loaders list, and how a widget value becomes a file path.

``models/diffbir`` (registered here through folder_paths, so extra_model_paths.yaml entries named ``diffbir`` are
honoured) holds every DiffBIR file; the loaders also list, prefixed with the folder name, ComfyUI's own
``upscale_models`` (stage 1) and ``controlnet`` (ControlNet) folders, and the face detector lives in
``models/facedetection`` (ComfyUI's conventional folder for facexlib detectors, shared with other face packs),
with ``models/diffbir`` files offered prefixed.
"""

from __future__ import annotations

import os

import folder_paths

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


def choices(extra_folder: str) -> list[str]:
    """'none', the diffbir files, then '<extra_folder>/<file>' for the host folder's files (deduplicated)."""
    own = files(FOLDER)
    seen = set(own)
    extra = []
    for name in files(extra_folder):
        label = f"{extra_folder}/{name}"
        if label not in seen:
            seen.add(label)
            extra.append(label)
    return [NONE] + own + extra


def resolve(name: str, extra_folder: str) -> str | None:
    """Full path of a loader's widget value (None for 'none'): models/diffbir, or '<extra_folder>/<file>'."""
    if not name or name == NONE:
        return None
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None and name.startswith(extra_folder + "/"):
        path = folder_paths.get_full_path(extra_folder, name[len(extra_folder) + 1:])
    if path is None:
        raise FileNotFoundError(
            f"DiffBIR: model file '{name}' not found in models/{FOLDER} or models/{extra_folder} (moved or "
            "deleted?). Refresh the node list (press R) and pick an existing file.")
    return path


def detector_choices(default: str) -> list[str]:
    """models/facedetection files, then models/diffbir ones as 'diffbir/<file>'; the official `default` always
    listed first, so that a shipped workflow validates and its missing file gets a message saying where to get it."""
    names = files(FACE_FOLDER) + [f"{FOLDER}/{n}" for n in files(FOLDER)]
    if default not in names and f"{FOLDER}/{default}" not in names:
        names.insert(0, default)
    return names


def resolve_detector(name: str, get_it: str) -> str:
    """Full path of a detector widget value; FileNotFoundError naming the folders and `get_it` (where to get it)."""
    path = folder_paths.get_full_path(FACE_FOLDER, name)
    if path is None and name.startswith(FOLDER + "/"):
        path = folder_paths.get_full_path(FOLDER, name[len(FOLDER) + 1:])
    if path is None:
        raise FileNotFoundError(f"detector_name: '{name}' is not in models/{FACE_FOLDER} or models/{FOLDER}. "
                                + get_it)
    return path


def unlisted_error(input_name: str, value, options: list[str], folders: str) -> str | None:
    """Why a file widget's value cannot be used (not among `options`), or None; for a loader's validate_inputs.

    ComfyUI 0.3.75 does not check V3 combo values itself (newer hosts do, but skip inputs that validate_inputs
    names), so the loaders check their file inputs here, on every host, with the stock wording and the fix."""
    if value is None or value in options:
        return None
    return (f"Value not in list: {input_name}: '{value}' is not in {folders}: put the file there and refresh the "
            "node list (press R), or pick a listed file")


register_model_folders()
