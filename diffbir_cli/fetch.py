"""The one way the command line gets official weight files into a models folder.

``fetch_weights(entries, models)`` finds each catalogue entry (in its folder or an alternative one, or as the
running ComfyUI finds it), optionally checks present files against the lock file, and downloads the missing
ones (from a mirror when asked), going on after a failed file so that one run reports every file that failed,
each with its official URL and folder. Offline it downloads nothing and lists every missing file instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from . import download as dl
from .lockfile import LockFileError, default_lock_file
from .mirrors import mirror_url
from .progress import TextProgress
from .weights import CATALOGUE, WeightFile


class MissingWeightsError(RuntimeError):
    """Files are missing and downloading is not allowed (offline); the message lists each with URL and folder."""


class FetchError(RuntimeError):
    """Some files could not be downloaded; the message lists each with its official URL and folder."""


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


def _where(entry: WeightFile, models_dir: Path) -> str:
    also = (" (or " + ", ".join(str(models_dir / a) for a in entry.alt_folders) + ")") if entry.alt_folders else ""
    return f"{models_dir / entry.folder}{also}"


def missing_files_message(files: Iterable[WeightFile | str], models_dir: str | os.PathLike,
                          found: Callable[[WeightFile], Path | None] | None = None) -> str:
    """For --offline: exactly which files to put where ('' when none is missing)."""
    models_dir = Path(models_dir)
    found = found or (lambda e: e.find(models_dir))
    missing = [e for e in entries_of(files) if found(e) is None]
    if not missing:
        return ""
    lines = [
        (f"{len(missing)} model file{'s are' if len(missing) > 1 else ' is'} missing and nothing is downloaded "
         "offline. Download each from its URL and put it in the folder shown:")
    ]
    for e in missing:
        lines += [f"  {e.name}  - {e.description}", f"      from {e.url}", f"      into {_where(e, models_dir)}"]
    return "\n".join(lines)


def _failed_message(failed: list[WeightFile], total: int, models_dir: Path) -> str:
    """The summary: one line per failed file with its official URL and its own folder (files go to different
    folders: the SD checkpoints to checkpoints, the face detector to facedetection, the rest to diffbir)."""
    each = "each by hand into the folder shown on its line" if len(failed) > 1 else "it by hand into that folder"
    lines = [f"{len(failed)} of {total} weight files failed (see the messages above). Download {each} and run "
             "again (--offline then checks the files without the network), or download from a mirror with "
             "--mirror URL:"]
    lines += [f"  {e.name} from {e.url} into {_where(e, models_dir)}" for e in failed]
    return "\n".join(lines)


def fetch_weights(files: Iterable[WeightFile | str], models_dir: str | os.PathLike, *,
                  found: Callable[[WeightFile], Path | None] | None = None, offline: bool = False,
                  mirrors: dict[str, str] | None = None, verify_present: bool = False,
                  timeout: float = 30.0, retries: int = 3) -> dict[str, Path]:
    """Paths of the files, downloading those that ``found(entry)`` (default: in models_dir) does not find.

    offline: download nothing; MissingWeightsError listing every missing file. verify_present: check files
    already there against the lock file (SHA-256; recorded when new). A failed file is reported on stderr and
    the others are still fetched; FetchError at the end names every file that failed.
    """
    models_dir = Path(models_dir)
    found = found or (lambda e: e.find(models_dir))
    entries = entries_of(files)
    paths = {e.name: p for e in entries if (p := found(e)) is not None}
    missing = [e for e in entries if e.name not in paths]
    if offline and missing:
        raise MissingWeightsError(missing_files_message(missing, models_dir, found))
    lock = default_lock_file(models_dir)
    failed = []

    def check(entry: WeightFile) -> None:
        path = paths[entry.name]
        state = dl.verify(path, entry.url, lock)
        note = "matches the lock file" if state == "matched" else "recorded in the lock file"
        _say(f"{entry.name}: present in {path.parent}, SHA-256 {note}")

    def get(entry: WeightFile) -> None:
        url = mirror_url(entry.url, mirrors or {})
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
