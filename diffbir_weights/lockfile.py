"""The weights lock file: the SHA-256 and size of each official file as first downloaded.

``models/diffbir-weights.lock.json`` = ``{"version": 1, "files": {name: {official URL: {"sha256", "size",
"recorded"}}}}``. The official repositories publish no hashes, so the first download is the reference that
later downloads and ``download --verify`` checks are held to. Written atomically; re-read before each write so
entries another process added are kept.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path

LOCK_FILE_NAME = "diffbir-weights.lock.json"
CHUNK_SIZE = 1 << 20


class LockFileError(RuntimeError):
    """The lock file cannot be read; the message says to fix or delete it."""


def default_lock_file(models_dir: str | os.PathLike) -> Path:
    """The lock file of a ComfyUI models folder: models/diffbir-weights.lock.json."""
    return Path(models_dir) / LOCK_FILE_NAME


def sha256_file(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


class WeightsLock:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> dict:
        if not self.path.is_file():
            return {"version": 1, "files": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise LockFileError(
                f"the weights lock file '{self.path}' cannot be read ({err}); fix or delete it "
                "(it only records the SHA-256 of downloaded files)."
            ) from err
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise LockFileError(f"the weights lock file '{self.path}' is not in the expected format; fix or delete it.")
        return data

    def get(self, name: str, url: str) -> dict | None:
        entry = self._read()["files"].get(name, {}).get(url)
        return dict(entry) if isinstance(entry, dict) else None

    def disagreement(self, name: str, url: str, digest: str, size: int) -> dict | None:
        """The recorded entry if it disagrees with (digest, size), else None (also when nothing is recorded)."""
        entry = self.get(name, url)
        if entry is None or (entry.get("sha256") == digest and entry.get("size") == size):
            return None
        return entry

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
