"""Loaded networks kept between prompts: one entry per loader slot, keyed by the file's identity.

Re-running a prompt with the same file (path, mtime, size) and settings reuses the loaded network; choosing another
file, or emptying the slot, releases the previous one. ``LOAD_COUNTS`` counts the reads from disk per slot since
start-up (each read is also logged): it shows that nothing loads twice.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

log = logging.getLogger("comfyui-diffbir")

_CACHE: dict[str, tuple] = {}
LOAD_COUNTS: Counter = Counter()


def file_key(path: str | None):
    """What identifies a file's contents cheaply: (real path, mtime, size); None for no file."""
    if path is None:
        return None
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


def cached(slot: str, key, build, path: str):
    """The value of `slot` for `key`, built by `build()` (a read of `path`) when the slot holds another key."""
    hit = _CACHE.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    _CACHE.pop(slot, None)
    LOAD_COUNTS[slot] += 1
    log.info("DiffBIR: reading the %s file %s from disk (%s read #%d)", slot, os.path.basename(path), slot,
             LOAD_COUNTS[slot])
    value = build()
    _CACHE[slot] = (key, value)
    return value


def release(slot: str) -> None:
    """Forget what `slot` holds (an emptied loader input)."""
    _CACHE.pop(slot, None)
