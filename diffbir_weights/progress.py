"""A one-line text progress bar for downloads, and byte counts for people."""

from __future__ import annotations

import sys
import time


def fmt_size(n: int | float | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as pip and browsers show them); None -> '?'."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class TextProgress:
    """A one-line progress bar, redrawn in place at most every `interval` seconds.

    Usable as download's `progress` callback; call `close()` to finish the line. Without a known
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
        speed = f"{fmt_size(int((done - (self._first or 0)) / elapsed))}/s"
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * self.width)
            line = (f"{self.label} {frac * 100:5.1f}% |{'#' * filled}{'.' * (self.width - filled)}| "
                    f"{fmt_size(done)}/{fmt_size(total)} {speed}")
        else:
            line = f"{self.label} {fmt_size(done)} {speed}"
        pad = " " * max(self._drawn_len - len(line), 0)
        self._drawn_len = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def close(self) -> None:
        if self._first is not None:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
