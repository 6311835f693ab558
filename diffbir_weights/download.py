"""Download one weight file robustly, in three steps: request, resume, verify.

    result = download(url, entry.target(models_dir), expected_kind=entry.kind,
                      lock_file=default_lock_file(models_dir), progress=TextProgress(entry.name),
                      cancel=None)

``progress(done, total)`` is any callable (the CLI's text bar, a ComfyUI ProgressBar's ``update_absolute``);
``cancel()`` is checked before each request and after each chunk: True stops with ``DownloadCancelled``, and an
exception it raises itself (ComfyUI's ``throw_exception_if_processing_interrupted``) propagates unchanged;
either way the ``.part`` stays for the next call to resume.

* **request** (``_request``): one HTTP GET for what is still missing, with a Range header when a
  ``<dest>.part`` is there; only http and https, also across redirects; only the standard library.
* **resume** (``_receive``, ``_resume``): append the body to ``.part``; after a dropped connection or a
  timeout, request the rest again (bounded retries), keeping the ``.part`` when they are used up (or the
  caller cancels) so that the next call resumes. A server that ignores the range (200) restarts the file
  from zero; 416 on a complete ``.part`` finishes it.
* **verify** (``_verify``): the final size must equal what the server announced (Content-Length, or the
  total of Content-Range); the SHA-256 must match the lock file's record of the first download (or is
  recorded); the file must open, safely (``diffbir_core.checkpoint``, the one import of the core here), as
  the expected checkpoint kind.
  Only then is ``.part`` renamed to its final name. A failed check removes the ``.part``.

Nothing is written under the models folder except the ``.part`` file, the final file and the lock file.
Every error message names the file and, to download it by hand, its official URL and folder.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .lockfile import CHUNK_SIZE, WeightsLock, sha256_file
from .progress import fmt_size

USER_AGENT = "comfyui-diffbir-downloader"

Progress = Callable[[int, "int | None"], None]
Cancel = Callable[[], bool]


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message says which and what to do."""


class DownloadInterrupted(DownloadError):
    """The transfer broke off and retries were used up; the `.part` file is kept for resuming."""


class DownloadCancelled(DownloadInterrupted):
    """The caller's cancel() returned True; the `.part` file is kept for resuming."""


class SizeMismatchError(DownloadError):
    """The server delivered another number of bytes than it announced; the partial file was removed."""


class WrongKindError(DownloadError):
    """The downloaded file is not the expected checkpoint kind (or no checkpoint); it was removed."""


class HashMismatchError(DownloadError):
    """The file's SHA-256 differs from the one recorded in the lock file; the record was kept."""


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


def manual_hint(official_url: str, dest: Path) -> str:
    return f"Download it manually from {official_url} and put it in '{dest.parent}' as '{dest.name}'."


# --------------------------------------------------------------------------------------
# kind check (part of verify)


def _core_modules():
    """diffbir_core's checkpoint and detect modules, imported on first use (torch only when a kind is checked);
    by their top-level name, the one import root of the pack, the command line and the tests."""
    from diffbir_core import checkpoint, detect

    return checkpoint, detect


def check_kind(path: Path, expected_kind: str | Iterable[str], display_name: str | None = None):
    """Detection of `path` if it opens (safely) as one of the expected kinds; WrongKindError otherwise."""
    checkpoint, detection = _core_modules()
    name = display_name or path.name
    expected = (expected_kind,) if isinstance(expected_kind, str) else tuple(expected_kind)
    wanted = " or ".join(f"{detection.KIND_NAMES.get(k, k)} [{k}]" for k in expected)
    try:
        sd, metadata = checkpoint.read_checkpoint(path)
    except checkpoint.CheckpointError as err:
        raise WrongKindError(f"'{name}' is not a usable checkpoint ({err}); expected {wanted}.") from err
    det = detection.detect(sd, name, metadata)
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
# the state of one transfer


@dataclass
class _Transfer:
    url: str  # where the bytes come from (a mirror's URL, maybe)
    official_url: str  # what the lock file and the manual hint name
    dest: Path
    chunk_size: int
    announced: int | None = None  # total size as first announced by the server in this call
    resumed: bool = False
    restarts: int = 0  # times the .part was discarded to start over
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    hashed: int = 0  # bytes of .part covered by `hasher`
    cancel: Cancel | None = None

    @property
    def name(self) -> str:
        return self.dest.name

    @property
    def part(self) -> Path:
        return part_path(self.dest)

    def have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def hint(self) -> str:
        return manual_hint(self.official_url, self.dest)

    def check_cancel(self) -> None:
        """Stop when the caller cancels (its own exception, or DownloadCancelled); the .part stays."""
        if self.cancel is not None and self.cancel():
            have = self.have()
            raise DownloadCancelled(
                f"downloading '{self.name}' was cancelled; {fmt_size(have)} of {fmt_size(self.announced)} are "
                f"kept in '{self.part.name}': run the download again to resume. {self.hint()}")

    def failed(self, why: str) -> DownloadError:
        return DownloadError(f"downloading '{self.name}' failed: {why}. {self.hint()}")

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.restarts += 1
        self.hasher, self.hashed = hashlib.sha256(), 0

    def refuse_size(self, got: int, total: int | None, why: str) -> SizeMismatchError:
        self.part.unlink(missing_ok=True)
        return SizeMismatchError(
            f"'{self.name}' from {self.url}: the server announced {total} bytes, but {why} ({got} bytes arrived). "
            f"The partial file was removed; try again later. If it keeps happening: {self.hint()}"
        )

    def announce(self, total: int | None, have: int) -> None:
        """Hold the server to the first size it announced."""
        if self.announced is None:
            self.announced = total
        elif total is not None and total != self.announced:
            raise self.refuse_size(have, self.announced,
                                   f"the file changed on the server during the download (it now reports {total})")
        if total is not None and have > total:
            raise self.refuse_size(have, total, "the partial file is larger than the whole file")


# --------------------------------------------------------------------------------------
# step 1: request


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL refused: {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Transient(Exception):
    """A broken transfer worth retrying (timeout, dropped connection)."""


_TRANSIENT = (TimeoutError, socket.timeout, ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)
_PERMANENT_REASONS = (ConnectionRefusedError, socket.gaierror)


def _request(t: _Transfer, opener, have: int, timeout: float):
    """The response to a GET of what is missing (a 416 comes back as its response, to be read)."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return opener.open(urllib.request.Request(t.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:
            return err
        err.close()
        raise t.failed(f"HTTP {err.code} {err.reason} from {err.url or t.url}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, _TRANSIENT) and not isinstance(err.reason, _PERMANENT_REASONS):
            raise _Transient(str(err.reason)) from err
        raise DownloadError(f"downloading '{t.name}' failed: cannot reach {t.url} ({err.reason}). Check the "
                            f"network connection, or: {t.hint()}") from err
    except _TRANSIENT as err:
        raise _Transient(repr(err)) from err


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


# --------------------------------------------------------------------------------------
# step 2: resume (receive one response, retry broken ones)


def _finish_416(t: _Transfer, resp, have: int, progress: Progress | None) -> bool:
    """The server refused the range: True when the .part is already complete, False to start over."""
    _, _, total = _parse_content_range(resp.headers.get("Content-Range"))
    if t.announced is None:
        t.announced = total
    if total is not None and total != t.announced:
        raise t.refuse_size(have, t.announced, f"it now reports {total}")
    if have and total == have:
        if progress:
            progress(have, total)
        return True
    if have and total is not None and have > total:
        raise t.refuse_size(have, total, "the partial file is larger than the whole file")
    if have and t.restarts < 2:
        t.restart()  # unusable .part: start over
        return False
    raise t.failed("the server refused the byte range (HTTP 416)")


def _receive(t: _Transfer, resp, have: int, progress: Progress | None) -> bool:
    """Append one response's body to the .part; True when the file is complete, False to request again."""
    with resp:
        status = getattr(resp, "status", None) or resp.code
        if status == 416:
            return _finish_416(t, resp, have, progress)
        if status == 206:
            start, _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have:
                if t.restarts >= 2:
                    raise t.failed("the server answers byte ranges inconsistently")
                t.restart()
                return False
            mode, t.resumed = "ab", True
        elif status == 200:
            total = _int_header(resp.headers, "Content-Length")
            have, mode = 0, "wb"  # the server sends the whole file (also when it ignored our Range)
            t.hasher, t.hashed, t.resumed = hashlib.sha256(), 0, False
        else:
            raise t.failed(f"unexpected HTTP {status} from {t.url}")
        t.announce(total, have)

        if t.hashed != have:  # resuming a .part written by an earlier call: hash what is there
            t.hasher, t.hashed = hashlib.sha256(), 0
            with open(t.part, "rb") as f:
                while t.hashed < have and (chunk := f.read(min(t.chunk_size, have - t.hashed))):
                    t.hasher.update(chunk)
                    t.hashed += len(chunk)
        done = have
        if progress:
            progress(done, total)
        with open(t.part, mode) as f:
            try:
                while chunk := resp.read(t.chunk_size):
                    f.write(chunk)
                    t.hasher.update(chunk)
                    done += len(chunk)
                    t.hashed = done
                    if progress:
                        progress(done, total)
                    if t.cancel is not None and (total is None or done < total):
                        f.flush()  # what arrived is in the .part before a cancel stops the transfer
                        t.check_cancel()
            except (*_TRANSIENT, ssl.SSLError) as err:
                raise _Transient(f"{type(err).__name__} after {done} bytes") from err
        if total is not None and done < total:
            # http.client ends a short body quietly; resuming tells a dropped connection
            # (the rest comes) from a server that announced more than it has (416 / no progress).
            raise _Transient(f"connection closed after {done} of {total} bytes")
        if total is not None and done > total:
            raise t.refuse_size(done, total, "the server sent more bytes than it announced")
        return True


def _resume(t: _Transfer, progress: Progress | None, timeout: float, retries: int, retry_wait: float) -> None:
    """Request and receive until the .part is complete; DownloadInterrupted (the .part kept) when the
    transfer keeps breaking off: `retries` attempts in a row without progress, or 10 * `retries` in all."""
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    failures = 0  # consecutive broken attempts, the first of which may have made progress
    interruptions = 0
    while True:
        t.check_cancel()
        have = t.have()
        try:
            if _receive(t, _request(t, opener, have, timeout), have, progress):
                return
        except _Transient as err:
            now = t.have()
            failures = 1 if now > have else failures + 1
            interruptions += 1
            if failures > retries or interruptions > 10 * retries:
                raise DownloadInterrupted(
                    f"downloading '{t.name}' broke off ({err}); {fmt_size(now)} of {fmt_size(t.announced)} are "
                    f"kept in '{t.part.name}': run the download again to resume. If it keeps failing: {t.hint()}"
                ) from None
            if retry_wait:
                time.sleep(retry_wait * min(failures, 5))


# --------------------------------------------------------------------------------------
# step 3: verify


def _hash_mismatch(t: _Transfer, lock: WeightsLock, digest: str, size: int, recorded: dict) -> HashMismatchError:
    kept = (f"'{t.name}' already in '{t.dest.parent}' was left as it was" if t.dest.exists()
            else "nothing was saved")
    return HashMismatchError(
        f"'{t.name}' downloaded from {t.url} has SHA-256 {digest} ({size} bytes), but the lock file "
        f"'{lock.path}' recorded SHA-256 {recorded.get('sha256')} ({recorded.get('size')} bytes) on "
        f"{recorded.get('recorded', 'its first download')}. Either the file changed upstream or the download "
        f"is corrupt. The new download was discarded, {kept}, and the recorded hash is unchanged. If the "
        f"upstream change is expected, remove the entry for '{t.name}' from the lock file (or download with "
        "update_lock) and download again."
    )


def _verify(t: _Transfer, expected_kind, lock_file, update_lock: bool) -> DownloadResult:
    """Size, SHA-256 against the lock file, kind; then move the .part into place and record the hash."""
    part = t.part
    size = part.stat().st_size
    if t.announced is not None and size != t.announced:
        raise t.refuse_size(size, t.announced, "the file size differs from the announced size")
    digest = t.hasher.hexdigest() if t.hashed == size else sha256_file(part, t.chunk_size)

    lock = WeightsLock(lock_file) if lock_file is not None else None
    lock_state = "none"
    if lock is not None:
        recorded = lock.disagreement(t.name, t.official_url, digest, size)
        if recorded is not None and not update_lock:
            part.unlink(missing_ok=True)
            raise _hash_mismatch(t, lock, digest, size, recorded)
        known = lock.get(t.name, t.official_url) is not None
        lock_state = "updated" if recorded is not None else ("matched" if known else "recorded")

    det = None
    if expected_kind is not None:
        try:
            det = _check_kind_of_part(part, t.dest, expected_kind)
        except WrongKindError as err:
            part.unlink(missing_ok=True)
            raise WrongKindError(f"{err} It was downloaded from {t.url} and has been removed.") from err.__cause__
    os.replace(part, t.dest)
    if lock is not None and lock_state in ("recorded", "updated"):
        lock.record(t.name, t.official_url, digest, size)
    return DownloadResult(t.dest, digest, size, t.resumed, lock_state,
                          det.kind if det else None, det.version if det else None)


# --------------------------------------------------------------------------------------
# the three steps together


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
    official_url: str | None = None,
    cancel: Cancel | None = None,
) -> DownloadResult:
    """Download `url` to `dest` (always transfers; ``fetch.fetch_weights`` skips files already there).

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
    official_url: the URL the lock file records the file under and the manual hint names (default `url`).
        A download from a mirror passes the official URL, so the mirror's file is checked against the same
        record and the hint points at the official source.
    cancel: called before each request and after each chunk; True stops the download with
        DownloadCancelled, an exception it raises propagates; either way the `.part` is kept for resuming
        and nothing is written under the final name.
    """
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise DownloadError(f"only http and https URLs are downloaded, not '{url}'.")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    t = _Transfer(url, official_url or url, dest, chunk_size, cancel=cancel)
    _resume(t, progress, timeout, retries, retry_wait)
    return _verify(t, expected_kind, lock_file, update_lock)


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
    recorded = lock.disagreement(path.name, url, digest, size)
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
