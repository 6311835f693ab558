"""The one way official weight files get into a models folder, for the command line and the nodes.

* ``ensure_file(name, models_dir, progress=..., cancel=...)``: one file, for a loader node that runs with it
  missing: the path where it is, else downloaded (mirror, resume, size, kind and lock-file checks of
  ``download``), reporting progress through a callback and stopping when ``cancel()`` says so (the ``.part``
  is kept for resuming). Offline (``offline=True`` or ``DIFFBIR_OFFLINE=1``) it downloads nothing and raises
  ``MissingWeightsError`` naming the file, its folder and its URL.
* ``fetch_weights(entries, models)``: many files, for the command line: finds each catalogue entry (in its
  folder or an alternative one, or as the running ComfyUI finds it), optionally checks present files against
  the lock file, and downloads the missing ones, going on after a failed file so that one run reports every
  file that failed, each with its official URL and folder. Offline it lists every missing file instead.

``DIFFBIR_WEIGHTS_MIRROR`` is read when no mirror is given (see ``mirrors``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from . import download as dl
from .catalogue import CATALOGUE, WeightFile
from .lockfile import LockFileError, default_lock_file
from .mirrors import MIRROR_ENV, mirror_map, mirror_url
from .progress import TextProgress

log = logging.getLogger(__name__)

OFFLINE_ENV = "DIFFBIR_OFFLINE"
_TRUE = ("1", "true", "yes", "on")


class MissingWeightsError(RuntimeError):
    """Files are missing and downloading is not allowed (offline); the message lists each with URL and folder."""


class FetchError(RuntimeError):
    """Some files could not be downloaded; the message lists each with its official URL and folder."""


def offline_requested(offline: bool | None = None) -> bool:
    """`offline` when given, else whether $DIFFBIR_OFFLINE is set to 1 (true, yes, on)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def _mirrors(mirrors: dict[str, str] | str | None) -> dict[str, str]:
    """A mirror map from a map, a spec string ('URL' or 'HOST=URL,...') or None ($DIFFBIR_WEIGHTS_MIRROR)."""
    return mirrors if isinstance(mirrors, dict) else mirror_map(mirrors)


def _say(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def entries_of(files: Iterable[WeightFile | str]) -> list[WeightFile]:
    """Catalogue entries for entries or official file names (a folder prefix is ignored), each once."""
    out = []
    for f in files:
        entry = f if isinstance(f, WeightFile) else CATALOGUE.get(str(f).replace("\\", "/").rsplit("/", 1)[-1])
        if entry is None:
            raise ValueError(f"'{f}' is not an official DiffBIR file (known: {', '.join(CATALOGUE)})")
        if entry not in out:
            out.append(entry)
    return out


def _where(entry: WeightFile, models_dir: Path, dest_dir: Path | None = None) -> str:
    if dest_dir is not None:
        return str(dest_dir)
    also = (" (or " + ", ".join(str(models_dir / a) for a in entry.alt_folders) + ")") if entry.alt_folders else ""
    return f"{models_dir / entry.folder}{also}"


def missing_files_message(files: Iterable[WeightFile | str], models_dir: str | os.PathLike,
                          found: Callable[[WeightFile], Path | None] | None = None,
                          dest_dir: str | os.PathLike | None = None) -> str:
    """For offline use: exactly which files to put where ('' when none is missing).

    The folder shown is the entry's folder under models_dir (and its alternatives), or `dest_dir` when given.
    """
    models_dir = Path(models_dir)
    found = found or (lambda e: e.find(models_dir))
    missing = [e for e in entries_of(files) if found(e) is None]
    if not missing:
        return ""
    lines = [
        (f"{len(missing)} model file{'s are' if len(missing) > 1 else ' is'} missing and nothing is downloaded "
         "offline. Download each from its URL and put it in the folder shown:")
    ]
    dest = Path(dest_dir) if dest_dir is not None else None
    for e in missing:
        lines += [f"  {e.name}  - {e.description}", f"      from {e.url}",
                  f"      into {_where(e, models_dir, dest)}"]
    return "\n".join(lines)


def _failed_message(failed: list[WeightFile], total: int, models_dir: Path) -> str:
    """The summary: one line per failed file with its official URL and its own folder (files go to different
    folders: the SD checkpoints to checkpoints, the face detector to facedetection, the rest to diffbir)."""
    each = "each by hand into the folder shown on its line" if len(failed) > 1 else "it by hand into that folder"
    lines = [f"{len(failed)} of {total} weight files failed (see the messages above). Download {each} and run "
             f"again (--offline or {OFFLINE_ENV}=1 then checks the files without the network), or download from a "
             f"mirror with --mirror URL or {MIRROR_ENV}=URL:"]
    lines += [f"  {e.name} from {e.url} into {_where(e, models_dir)}" for e in failed]
    return "\n".join(lines)


def ensure_file(name: WeightFile | str, models_dir: str | os.PathLike, *,
                found: Callable[[WeightFile], Path | None] | None = None,
                dest_dir: str | os.PathLike | None = None,
                progress: dl.Progress | None = None, cancel: dl.Cancel | None = None,
                offline: bool | None = None, mirrors: dict[str, str] | str | None = None,
                lock_file: str | os.PathLike | None = None,
                timeout: float = 30.0, retries: int = 3, chunk_size: int = dl.CHUNK_SIZE) -> Path:
    """The path of one official file: where ``found(entry)`` finds it, else downloaded, checked and recorded.

    name: an official file name or loader widget value (a folder prefix is ignored), or a catalogue entry;
        ValueError for a file that is not official.
    models_dir: ComfyUI's models folder: the lock file (``diffbir-weights.lock.json``) lives there and the
        download goes to ``models_dir/<entry.folder>/<name>`` unless `dest_dir` is given.
    found: where the file already is, or None (default: the entry's folder or an alternative one under
        models_dir; a node passes its folder_paths lookup).
    progress: ``progress(done_bytes, total_bytes or None)`` after every chunk (the CLI's TextProgress; a node:
        ``lambda done, total: bar.update_absolute(done, total)`` on a ComfyUI ProgressBar).
    cancel: checked before each request and after each chunk; True raises ``DownloadCancelled``, and an
        exception it raises (ComfyUI's ``throw_exception_if_processing_interrupted``) propagates; either way the
        ``.part`` stays beside the final name and the next call resumes it.
    offline: True, or None with ``DIFFBIR_OFFLINE=1``: download nothing; a missing file raises
        ``MissingWeightsError`` naming the file, the folder to put it in and its official URL.
    mirrors: a mirror map or spec (see ``mirrors``); None reads ``DIFFBIR_WEIGHTS_MIRROR``.
    chunk_size: bytes per read, i.e. between progress reports and cancel checks (1 MiB).

    Other failures: ``download.DownloadError`` and its subclasses (interrupted with the ``.part`` kept; size,
    kind or SHA-256 refused with nothing kept), ``lockfile.LockFileError``; each message names the file and,
    to download it by hand, its official URL and folder. Nothing is ever written under the final name unless
    every check passed.
    """
    (entry,) = entries_of([name])
    models_dir = Path(models_dir)
    path = (found or (lambda e: e.find(models_dir)))(entry)
    if path is not None:
        return Path(path)
    target = Path(dest_dir) / entry.name if dest_dir is not None else entry.target(models_dir)
    if offline_requested(offline):
        raise MissingWeightsError(missing_files_message([entry], models_dir, lambda e: None, target.parent)
                                  + f"\n(downloads are off: {OFFLINE_ENV} is set or offline was asked for)")
    url = mirror_url(entry.url, _mirrors(mirrors))
    lock = Path(lock_file) if lock_file is not None else default_lock_file(models_dir)
    log.info("downloading %s from %s into %s", entry.name, url, target.parent)
    result = dl.download(url, target, entry.kind, lock, progress, timeout, retries=retries,
                         official_url=entry.url, cancel=cancel, chunk_size=chunk_size)
    log.info("%s: downloaded, %d bytes%s, opens as %s; lock file %s", entry.name, result.size,
             ", resumed" if result.resumed else "", result.kind, result.lock)
    return result.path


def fetch_weights(files: Iterable[WeightFile | str], models_dir: str | os.PathLike, *,
                  found: Callable[[WeightFile], Path | None] | None = None, offline: bool | None = None,
                  mirrors: dict[str, str] | str | None = None, verify_present: bool = False,
                  timeout: float = 30.0, retries: int = 3) -> dict[str, Path]:
    """Paths of the files, downloading those that ``found(entry)`` (default: in models_dir) does not find.

    offline: download nothing; MissingWeightsError listing every missing file (None: $DIFFBIR_OFFLINE).
    mirrors: a mirror map or spec; None reads $DIFFBIR_WEIGHTS_MIRROR. verify_present: check files already there
    against the lock file (SHA-256; recorded when new). A failed file is reported on stderr and the others are
    still fetched; FetchError at the end names every file that failed.
    """
    models_dir = Path(models_dir)
    found = found or (lambda e: e.find(models_dir))
    entries = entries_of(files)
    paths = {e.name: p for e in entries if (p := found(e)) is not None}
    missing = [e for e in entries if e.name not in paths]
    if offline_requested(offline) and missing:
        raise MissingWeightsError(missing_files_message(missing, models_dir, found))
    mirrors = _mirrors(mirrors)
    lock = default_lock_file(models_dir)
    failed = []

    def check(entry: WeightFile) -> None:
        path = paths[entry.name]
        state = dl.verify(path, entry.url, lock)
        note = "matches the lock file" if state == "matched" else "recorded in the lock file"
        _say(f"{entry.name}: present in {path.parent}, SHA-256 {note}")

    def get(entry: WeightFile) -> None:
        url = mirror_url(entry.url, mirrors)
        target = entry.target(models_dir)
        _say(f"downloading {entry.name} from {url} into {target.parent}", err=True)
        progress = TextProgress(entry.name)
        try:
            result = dl.download(url, target, entry.kind, lock, progress, timeout, retries=retries,
                                 official_url=entry.url)
        finally:
            progress.close()
        note = {"recorded": "SHA-256 recorded in the lock file", "matched": "SHA-256 matches the lock file",
                "updated": "lock file updated"}.get(result.lock, "")
        _say(f"{entry.name}: downloaded, {result.size} bytes{', resumed' if result.resumed else ''}, "
             f"opens as {result.kind}; {note}")
        paths[entry.name] = result.path

    steps = [(e, check) for e in entries if verify_present and e not in missing] + [(e, get) for e in missing]
    for entry, step in steps:
        try:
            step(entry)
        except (dl.DownloadError, LockFileError) as err:
            failed.append(entry)
            _say(f"error: {err}", err=True)
    if failed:
        raise FetchError(_failed_message(failed, len(entries), models_dir))
    return paths
