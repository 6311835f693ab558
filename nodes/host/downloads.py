"""Official weight files a loader names but ComfyUI does not have: fetched on first use, on the server.

The frontend downloads only the files it trusts (Hugging Face, by file suffix); the GitHub release files (BSRNet,
SCUNet, facexlib's detectors) and every file on older frontends would otherwise have to be put in place by hand.
A loader node (Load DiffBIR Models, DiffBIR Face Detect & Align) therefore calls ``obtain`` with the value of a
file widget: a file that is there is used; an official file of the widget's slot that is not there is downloaded
through ``diffbir_weights.ensure_file`` (the one download path the command line uses too: mirror from
``DIFFBIR_WEIGHTS_MIRROR``, resume of a ``.part``, size, kind and lock-file checks, nothing under the final name
before every check passed). This module is the ComfyUI side of it:

* the destination is the folder ComfyUI reads first for the value (``folder_paths.get_folder_paths(folder)[0]``:
  ``models/diffbir``, ``models/facedetection``, or ``models/upscale_models`` for ``upscale_models/BSRNet.pth``, and
  whatever extra_model_paths.yaml made the default), and the lock file (``diffbir-weights.lock.json``) lives in
  that folder's parent, the models folder, where the command line keeps it;
* progress goes to ComfyUI's progress bar (bytes) and a line of text under the node;
* Cancel is ComfyUI's own ``throw_exception_if_processing_interrupted``, checked after every chunk: it stops the
  prompt and keeps the ``.part``, which the next run resumes;
* ``DIFFBIR_OFFLINE=1`` (an installation's switch, read at each run) downloads nothing: the node fails naming the
  file, the folder it goes in and its official URL.
"""

from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.utils
import folder_paths

from diffbir_weights import OFFLINE_ENV, MissingWeightsError, ensure_file
from diffbir_weights.mirrors import mirror_map, mirror_url
from diffbir_weights.progress import fmt_size

from .model_files import NONE, FileInput
from .progress import report


def destination(folder: str) -> str:
    """The folder a download for the folder type `folder` goes to: the one ComfyUI reads first."""
    return folder_paths.get_folder_paths(folder)[0]


def _progress(node: str, name: str):
    """progress(done, total) for ensure_file: a line under the node at the start, then ComfyUI's progress bar in
    bytes (when the server announced the size)."""
    state: dict = {}

    def progress(done: int, total: int | None) -> None:
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(total or 1)
            report(node, f"downloading {name}" + (f" ({fmt_size(total)})" if total else "")
                   + (f", resuming after {fmt_size(done)}" if done else ""))
        if total:
            state["bar"].update_absolute(done, total)

    return progress


def missing(file: FileInput, value: str) -> FileNotFoundError:
    """The error for a value that names no file there and no official file of the slot."""
    return FileNotFoundError(
        f"{file.input_name}: model file '{value}' not found in {file.folders} (moved or deleted?). Refresh the node "
        "list (press R) and pick an existing file, or an official file of this slot, which the node downloads when "
        f"it runs: {', '.join(file.official_names())}.")


def obtain(file: FileInput, value: str, node: str) -> tuple[str | None, str | None]:
    """(full path of the file the widget value names, a line saying it was downloaded or None).

    None for 'none'. A file that is there is used as it is; an official file of the slot that is not there is
    downloaded into ``destination(folder)``; anything else raises FileNotFoundError naming the folders. Download
    failures are diffbir_weights' errors (each names the file, its URL and folder); offline, MissingWeightsError.
    """
    path = file.installed(value)
    if path is not None or (file.none and value in ("", NONE)):
        return path, None
    entry = file.official(value)
    if entry is None:
        raise missing(file, value)
    folder, _ = file.split(value)
    dest_dir = destination(folder)
    models_dir = os.path.dirname(os.path.normpath(dest_dir))
    try:
        downloaded = ensure_file(entry, models_dir, found=lambda e: None, dest_dir=dest_dir,
                                 progress=_progress(node, entry.name),
                                 cancel=mm.throw_exception_if_processing_interrupted)
    except MissingWeightsError:
        raise MissingWeightsError(
            f"{file.input_name}: {entry.name} is not installed and downloads are off ({OFFLINE_ENV} is set). "
            f"Download it from {entry.url} into {dest_dir}, then run again (or unset {OFFLINE_ENV} to let the "
            "node download it).") from None
    url = mirror_url(entry.url, mirror_map())  # where ensure_file got it ($DIFFBIR_WEIGHTS_MIRROR)
    line = f"{entry.name} downloaded ({fmt_size(os.path.getsize(downloaded))}) from {url} into {dest_dir}"
    report(node, line)
    return str(downloaded), line

