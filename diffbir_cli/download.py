"""Download official weight files robustly: resume, size and kind checks, SHA-256 lock file.

    result = download(entry.url, entry.target(models_dir), expected_kind=entry.kind,
                       lock_file=default_lock_file(models_dir), progress=TextProgress(entry.name))

* The transfer goes to `<dest>.part`; a later call (or an automatic retry after a dropped
  connection or a timeout) resumes it with an HTTP Range request. A server that ignores the
  range (200) restarts the file from zero; 416 on a complete `.part` finishes it.
* The final size must equal what the server announced (Content-Length, or the total of
  Content-Range when resuming); otherwise the partial file is removed.
* The file must then open, safely (`checkpoint.read_checkpoint`: safetensors or a restricted
  unpickler), as the expected checkpoint kind; otherwise it is removed.
* The SHA-256 and size of the first download of a file are recorded in a JSON lock file,
  keyed by file name and URL. Later downloads (and `verify`) are compared with that record;
  a mismatch is an error and the record is kept, unless the caller asks to update it.
* Only http and https, also across redirects. Only the standard library talks to the network.

Nothing here is written under the models folder except the `.part` file, the final file and
the lock file (written atomically).
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .weights import CATALOGUE, WeightFile

LOCK_FILE_NAME = "diffbir-weights.lock.json"
USER_AGENT = "comfyui-diffbir-downloader"
CHUNK_SIZE = 1 << 20

Progress = Callable[[int, "int | None"], None]


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message says which and what to do."""


class DownloadInterrupted(DownloadError):
    """The transfer broke off and retries were used up; the `.part` file is kept for resuming."""


class SizeMismatchError(DownloadError):
    """The server delivered another number of bytes than it announced; the partial file was removed."""


class WrongKindError(DownloadError):
    """The downloaded file is not the expected checkpoint kind (or no checkpoint); it was removed."""


class HashMismatchError(DownloadError):
    """The file's SHA-256 differs from the one recorded in the lock file; the record was kept."""


class MissingWeightsError(DownloadError):
    """Files are missing and downloading is not allowed (offline)."""


@dataclass
class DownloadResult:
    path: Path
    sha256: str
    size: int
    resumed: bool  # part of the file came from an earlier, interrupted transfer
    lock: str  # "recorded" (first download), "matched", "updated" or "none" (no lock file)
    kind: str | None = None  # detected kind when a kind was expected
    version: str | None = None


def part_path(dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    return dest.with_suffix(dest.suffix + ".part")


def default_lock_file(models_dir: str | os.PathLike) -> Path:
    """The lock file of a ComfyUI models folder: models/diffbir-weights.lock.json."""
    return Path(models_dir) / LOCK_FILE_NAME


def sha256_file(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# lock file


class WeightsLock:
    """`{"version": 1, "files": {name: {url: {"sha256", "size", "recorded"}}}}`, written atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> dict:
        if not self.path.is_file():
            return {"version": 1, "files": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DownloadError(
                f"the weights lock file '{self.path}' cannot be read ({err}); fix or delete it "
                "(it only records the SHA-256 of downloaded files)."
            ) from err
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise DownloadError(f"the weights lock file '{self.path}' is not in the expected format; fix or delete it.")
        return data

    def get(self, name: str, url: str) -> dict | None:
        entry = self._read()["files"].get(name, {}).get(url)
        return dict(entry) if isinstance(entry, dict) else None

    def record(self, name: str, url: str, sha256: str, size: int) -> None:
        data = self._read()  # read just before writing: keep entries other processes added
        data["files"].setdefault(name, {})[url] = {
            "sha256": sha256,
            "size": size,
            "recorded": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _short(digest: str) -> str:
    return digest[:16] + "..."


def _compare_with_lock(lock: WeightsLock, name: str, url: str, digest: str, size: int) -> dict | None:
    """The recorded entry if it disagrees with (digest, size), else None."""
    entry = lock.get(name, url)
    if entry is None or (entry.get("sha256") == digest and entry.get("size") == size):
        return None
    return entry


# --------------------------------------------------------------------------------------
# kind check


def check_kind(path: Path, expected_kind: str | Iterable[str], display_name: str | None = None):
    """Detection of `path` if it opens (safely) as one of the expected kinds; WrongKindError otherwise."""
    from .checkpoint import CheckpointError, read_checkpoint
    from .detect import KIND_NAMES, detect

    name = display_name or path.name
    expected = (expected_kind,) if isinstance(expected_kind, str) else tuple(expected_kind)
    wanted = " or ".join(f"{KIND_NAMES.get(k, k)} [{k}]" for k in expected)
    try:
        sd, metadata = read_checkpoint(path)
    except CheckpointError as err:
        raise WrongKindError(f"'{name}' is not a usable checkpoint ({err}); expected {wanted}.") from err
    det = detect(sd, name, metadata)
    del sd
    if det.kind not in expected:
        raise WrongKindError(f"'{name}' looks like {det.looks_like} [{det.kind}], but {wanted} was expected.")
    return det


def _check_kind_of_part(part: Path, dest: Path, expected_kind) -> object:
    """Check the `.part` file under its final name (the reader picks the format by suffix),
    through a link in a hidden temporary folder, so an existing `dest` is untouched."""
    with tempfile.TemporaryDirectory(prefix=".diffbir-check-", dir=dest.parent) as tmp:
        view = Path(tmp) / dest.name
        try:
            os.link(part, view)
        except OSError:
            try:
                os.symlink(part.resolve(), view)
            except OSError:
                os.replace(part, view)  # last resort: move it there and back
                try:
                    return check_kind(view, expected_kind, dest.name)
                finally:
                    os.replace(view, part)
        return check_kind(view, expected_kind, dest.name)


# --------------------------------------------------------------------------------------
# HTTP


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL refused: {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_HttpOnlyRedirects())


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"only http and https URLs are downloaded, not '{url}'.")


class _Transient(Exception):
    """A broken transfer worth retrying (timeout, dropped connection)."""


_TRANSIENT = (TimeoutError, socket.timeout, ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)
_PERMANENT_REASONS = (ConnectionRefusedError, socket.gaierror)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """'bytes 10-99/100' -> (10, 99, 100); 'bytes */100' -> (None, None, 100); unknown parts None."""
    if not value:
        return None, None, None
    try:
        unit, _, spec = value.strip().partition(" ")
        if unit.lower() != "bytes":
            return None, None, None
        rng, _, total = spec.partition("/")
        total_n = int(total) if total.strip() not in ("", "*") else None
        if rng.strip() == "*":
            return None, None, total_n
        start, _, end = rng.partition("-")
        return int(start), int(end), total_n
    except ValueError:
        return None, None, None


def _int_header(headers, name: str) -> int | None:
    try:
        value = headers.get(name)
        return int(value) if value is not None else None
    except ValueError:
        return None


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _manual_hint(url: str, dest: Path) -> str:
    return f"Download it manually from {url} and put it in '{dest.parent}' as '{dest.name}'."


def download(
    url: str,
    dest: str | os.PathLike,
    expected_kind: str | Iterable[str] | None = None,
    lock_file: str | os.PathLike | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    *,
    retries: int = 3,
    retry_wait: float = 2.0,
    update_lock: bool = False,
    chunk_size: int = CHUNK_SIZE,
    lock_url: str | None = None,
) -> DownloadResult:
    """Download `url` to `dest` (always transfers; see `ensure_weights` to skip present files).

    expected_kind: a detect kind (or several) the file must open as; None skips the check.
    lock_file: JSON file recording sha256/size per (file name, URL); None records nothing.
    progress: called as progress(done_bytes, total_bytes or None) after every chunk.
    timeout: seconds for connecting and for each read.
    retries: automatic resumes after a dropped connection or a timeout, in a row without
        progress (an attempt that brought new bytes starts the count again; at most 10 *
        retries in all); when used up, DownloadInterrupted is raised and the `.part` file is
        kept, so calling again resumes. 0: no automatic resume.
    update_lock: accept a file whose SHA-256 differs from the lock file's record and replace
        the record (for an upstream change you know about). Without it such a file is
        discarded, an existing `dest` is left as it was, and HashMismatchError is raised.
    lock_url: the URL the lock file records the file under (default `url`). A download from a
        mirror passes the official URL, so the mirror's file is checked against the same record.
    """
    _check_url(url)
    dest = Path(dest)
    name = dest.name
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = _opener()

    announced: int | None = None  # total size as first announced by the server in this call
    resumed = False
    failures = 0  # consecutive broken attempts, the first of which may have made progress
    interruptions = 0  # all broken attempts of this call
    restarts = 0  # times the .part was discarded to start over
    hasher = hashlib.sha256()
    hashed = 0  # bytes of .part covered by `hasher`

    def refuse_size(got: int, total: int | None, why: str) -> SizeMismatchError:
        part.unlink(missing_ok=True)
        return SizeMismatchError(
            f"'{name}' from {url}: the server announced {total} bytes, but {why} ({got} bytes arrived). "
            f"The partial file was removed; try again later. If it keeps happening: {_manual_hint(url, dest)}"
        )

    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        start_have = have
        try:
            try:
                resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
            except urllib.error.HTTPError as err:
                if err.code != 416:
                    err.close()
                    raise DownloadError(
                        f"downloading '{name}' failed: HTTP {err.code} {err.reason} from {err.url or url}. "
                        + _manual_hint(url, dest)
                    ) from err
                resp = err  # 416 is a response we handle below
            except urllib.error.URLError as err:
                if isinstance(err.reason, _TRANSIENT) and not isinstance(err.reason, _PERMANENT_REASONS):
                    raise _Transient(str(err.reason)) from err
                raise DownloadError(
                    f"downloading '{name}' failed: cannot reach {url} ({err.reason}). "
                    f"Check the network connection, or: {_manual_hint(url, dest)}"
                ) from err
            except _TRANSIENT as err:
                raise _Transient(repr(err)) from err

            with resp:
                status = getattr(resp, "status", None) or resp.code
                if status == 416:
                    _, _, total = _parse_content_range(resp.headers.get("Content-Range"))
                    if announced is None:
                        announced = total
                    if total is not None and total != announced:
                        raise refuse_size(have, announced, f"it now reports {total}")
                    if have and total == have:
                        if progress:
                            progress(have, total)
                        break  # the .part was already complete
                    if have and total is not None and have > total:
                        raise refuse_size(have, total, "the partial file is larger than the whole file")
                    if have and restarts < 2:
                        part.unlink(missing_ok=True)  # unusable .part: start over
                        restarts += 1
                        hasher, hashed = hashlib.sha256(), 0
                        continue
                    raise DownloadError(
                        f"downloading '{name}' failed: the server refused the byte range (HTTP 416). "
                        + _manual_hint(url, dest)
                    )

                if status == 206:
                    start, _, total = _parse_content_range(resp.headers.get("Content-Range"))
                    if start != have:
                        if restarts >= 2:
                            raise DownloadError(
                                f"downloading '{name}' failed: the server answers byte ranges inconsistently. "
                                + _manual_hint(url, dest)
                            )
                        part.unlink(missing_ok=True)
                        restarts += 1
                        hasher, hashed = hashlib.sha256(), 0
                        continue
                    mode = "ab"
                    resumed = True
                elif status == 200:
                    length = _int_header(resp.headers, "Content-Length")
                    total = length
                    have = 0  # the server sends the whole file (also when it ignored our Range)
                    mode = "wb"
                    hasher, hashed = hashlib.sha256(), 0
                    resumed = False
                else:
                    raise DownloadError(
                        f"downloading '{name}' failed: unexpected HTTP {status} from {url}. " + _manual_hint(url, dest)
                    )

                if announced is None:
                    announced = total
                elif total is not None and total != announced:
                    raise refuse_size(
                        have, announced, f"the file changed on the server during the download (it now reports {total})"
                    )
                if total is not None and have > total:
                    raise refuse_size(have, total, "the partial file is larger than the whole file")

                if hashed != have:  # resuming a .part written by an earlier call: hash what is there
                    hasher, hashed = hashlib.sha256(), 0
                    with open(part, "rb") as f:
                        while hashed < have and (chunk := f.read(min(chunk_size, have - hashed))):
                            hasher.update(chunk)
                            hashed += len(chunk)
                done = have
                if progress:
                    progress(done, total)
                with open(part, mode) as f:
                    try:
                        while chunk := resp.read(chunk_size):
                            f.write(chunk)
                            hasher.update(chunk)
                            done += len(chunk)
                            hashed = done
                            if progress:
                                progress(done, total)
                    except (*_TRANSIENT, ssl.SSLError) as err:
                        raise _Transient(f"{type(err).__name__} after {done} bytes") from err
                if total is not None and done < total:
                    # http.client ends a short body quietly; resuming tells a dropped connection
                    # (the rest comes) from a server that announced more than it has (416 / no progress).
                    raise _Transient(f"connection closed after {done} of {total} bytes")
                if total is not None and done > total:
                    raise refuse_size(done, total, "the server sent more bytes than it announced")
                break
        except _Transient as err:
            now = part.stat().st_size if part.exists() else 0
            failures = 1 if now > start_have else failures + 1
            interruptions += 1
            if failures > retries or interruptions > 10 * retries:
                raise DownloadInterrupted(
                    f"downloading '{name}' broke off ({err}); {_fmt_size(now)} of {_fmt_size(announced)} are kept in "
                    f"'{part.name}': run the download again to resume. If it keeps failing: {_manual_hint(url, dest)}"
                ) from None
            if retry_wait:
                time.sleep(retry_wait * min(failures, 5))
            continue

    size = part.stat().st_size
    if announced is not None and size != announced:
        raise refuse_size(size, announced, "the file size differs from the announced size")
    if hashed != size:
        digest = sha256_file(part, chunk_size)
    else:
        digest = hasher.hexdigest()

    lock = WeightsLock(lock_file) if lock_file is not None else None
    lock_state = "none"
    if lock is not None:
        recorded = _compare_with_lock(lock, name, lock_url or url, digest, size)
        if recorded is not None and not update_lock:
            part.unlink(missing_ok=True)
            kept = (f"'{dest.name}' already in '{dest.parent}' was left as it was" if dest.exists()
                    else "nothing was saved")
            raise HashMismatchError(
                f"'{name}' downloaded from {url} has SHA-256 {digest} ({size} bytes), but the lock file "
                f"'{lock.path}' recorded SHA-256 {recorded.get('sha256')} ({recorded.get('size')} bytes) on "
                f"{recorded.get('recorded', 'its first download')}. Either the file changed upstream or the download "
                f"is corrupt. The new download was discarded, {kept}, and the recorded hash is unchanged. If the "
                f"upstream change is expected, remove the entry for '{name}' from the lock file (or download with "
                "update_lock) and download again."
            )
        known = lock.get(name, lock_url or url) is not None
        lock_state = "updated" if recorded is not None else ("matched" if known else "recorded")

    det = None
    if expected_kind is not None:
        try:
            det = _check_kind_of_part(part, dest, expected_kind)
        except WrongKindError as err:
            part.unlink(missing_ok=True)
            raise WrongKindError(f"{err} It was downloaded from {url} and has been removed.") from err.__cause__
    os.replace(part, dest)
    if lock is not None and lock_state in ("recorded", "updated"):
        lock.record(name, lock_url or url, digest, size)
    return DownloadResult(dest, digest, size, resumed, lock_state,
                          det.kind if det else None, det.version if det else None)


def verify(
    path: str | os.PathLike,
    url: str,
    lock_file: str | os.PathLike,
    expected_kind: str | Iterable[str] | None = None,
    record: bool = True,
) -> str:
    """Compare a file on disk with its lock record: "matched", "recorded" (no record yet, now
    written) or "unrecorded" (no record, `record` False). HashMismatchError on a mismatch
    (the record is kept); WrongKindError if it is not the expected kind (the file is kept)."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"'{path.name}' is not in '{path.parent}'. Download it from {url}.")
    lock = WeightsLock(lock_file)
    size = path.stat().st_size
    digest = sha256_file(path)
    recorded = _compare_with_lock(lock, path.name, url, digest, size)
    if recorded is not None:
        raise HashMismatchError(
            f"'{path}' has SHA-256 {digest} ({size} bytes), but the lock file '{lock.path}' recorded "
            f"SHA-256 {recorded.get('sha256')} ({recorded.get('size')} bytes) when it was downloaded from {url} "
            f"on {recorded.get('recorded', 'its first download')}. The file is corrupt or was replaced: delete it and "
            "download it again (or, if the upstream file changed on purpose, remove its entry from the lock file)."
        )
    if expected_kind is not None:
        check_kind(path, expected_kind)
    if lock.get(path.name, url) is not None:
        return "matched"
    if record:
        lock.record(path.name, url, digest, size)
        return "recorded"
    return "unrecorded"


# --------------------------------------------------------------------------------------
# several files: offline message, ensure


def _entries(files: Iterable[WeightFile | str]) -> list[WeightFile]:
    out = []
    for f in files:
        entry = f if isinstance(f, WeightFile) else CATALOGUE.get(str(f).replace("\\", "/").rsplit("/", 1)[-1])
        if entry is None:
            raise ValueError(f"'{f}' is not an official DiffBIR file (known: {', '.join(CATALOGUE)})")
        if entry not in out:
            out.append(entry)
    return out


def missing_files(files: Iterable[WeightFile | str], models_dir: str | os.PathLike) -> list[WeightFile]:
    """The files (entries or official names) found neither in their folder nor an alternative one."""
    return [e for e in _entries(files) if e.find(models_dir) is None]


def missing_files_message(files: Iterable[WeightFile | str], models_dir: str | os.PathLike) -> str:
    """For --offline: exactly which files to put where ('' when none is missing)."""
    missing = missing_files(files, models_dir)
    if not missing:
        return ""
    models_dir = Path(models_dir)
    lines = [
        (f"{len(missing)} model file{'s are' if len(missing) > 1 else ' is'} missing and nothing is downloaded "
         "offline. Download each from its URL and put it in the folder shown:")
    ]
    for e in missing:
        also = (" (or " + ", ".join(str(models_dir / a) for a in e.alt_folders) + ")") if e.alt_folders else ""
        lines += [f"  {e.name}  - {e.description}", f"      from {e.url}", f"      into {models_dir / e.folder}{also}"]
    return "\n".join(lines)


def ensure_weights(
    files: Iterable[WeightFile | str],
    models_dir: str | os.PathLike,
    *,
    offline: bool = False,
    lock_file: str | os.PathLike | None = None,
    progress_factory: Callable[[WeightFile], Progress | None] | None = None,
    timeout: float = 30.0,
    retries: int = 3,
) -> dict[str, Path]:
    """Paths of the files, downloading those not present (into models_dir/<folder>).

    Present files are used as they are (run `verify` to hash them). Offline, any missing
    file raises MissingWeightsError with `missing_files_message`. The lock file defaults to
    models_dir/diffbir-weights.lock.json.
    """
    entries = _entries(files)
    if offline:
        message = missing_files_message(entries, models_dir)
        if message:
            raise MissingWeightsError(message)
    lock_file = default_lock_file(models_dir) if lock_file is None else lock_file
    paths = {}
    for e in entries:
        found = e.find(models_dir)
        if found is None:
            progress = progress_factory(e) if progress_factory else None
            try:
                found = download(e.url, e.target(models_dir), e.kind, lock_file, progress, timeout,
                                 retries=retries).path
            finally:
                if hasattr(progress, "close"):
                    progress.close()
        paths[e.name] = found
    return paths


# --------------------------------------------------------------------------------------
# text progress bar


class TextProgress:
    """A one-line progress bar, redrawn in place at most every `interval` seconds.

    Usable as the `progress` callback; call `close()` to finish the line. Without a known
    total it shows bytes and speed only.
    """

    def __init__(self, label: str, stream=None, interval: float = 0.25, width: int = 28):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.width = width
        self._last_draw = 0.0
        self._start = time.monotonic()
        self._first: int | None = None
        self._state: tuple[int, int | None] = (0, None)
        self._drawn_len = 0

    def __call__(self, done: int, total: int | None) -> None:
        if self._first is None:
            self._first = done  # bytes resumed from an earlier transfer do not count for speed
        self._state = (done, total)
        now = time.monotonic()
        if now - self._last_draw >= self.interval or (total is not None and done >= total):
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        done, total = self._state
        elapsed = max(now - self._start, 1e-6)
        speed = f"{_fmt_size(int((done - (self._first or 0)) / elapsed))}/s"
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * self.width)
            line = (f"{self.label} {frac * 100:5.1f}% |{'#' * filled}{'.' * (self.width - filled)}| "
                    f"{_fmt_size(done)}/{_fmt_size(total)} {speed}")
        else:
            line = f"{self.label} {_fmt_size(done)} {speed}"
        pad = " " * max(self._drawn_len - len(line), 0)
        self._drawn_len = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def close(self) -> None:
        if self._first is not None:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
