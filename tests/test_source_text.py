"""Source text: every .py file of the pack is plain ASCII or precomposed characters.

Combining marks (e.g. U+0302 in "x" + "\\u0302" + "0") render differently per editor, break
byte-wise searches and stop the registry's checks of a published pack; write them spelled out
("x0_hat") or as a precomposed character instead.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", "__pycache__", ".venv", "build"}


def combining_marks(text: str) -> list[tuple[int, int, str]]:
    """(line, column, character name) of every combining mark in `text` (1-based positions)."""
    found = []
    for line_no, line in enumerate(text.splitlines(), 1):
        for col, char in enumerate(line, 1):
            if unicodedata.combining(char):
                found.append((line_no, col, unicodedata.name(char, f"U+{ord(char):04X}")))
    return found


def python_sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts))


def test_checker_finds_a_combining_mark():
    assert combining_marks("plain x0 and precomposed \u00e2\n") == []
    assert combining_marks("ok\nthe estimate x\u03020\n") == [(2, 15, "COMBINING CIRCUMFLEX ACCENT")]


def test_no_combining_characters_in_python_sources():
    sources = python_sources()
    assert len(sources) > 20, "the scan must see the pack's modules"
    assert ROOT / "diffbir_core" / "sampling" / "guidance.py" in sources
    offenders = {
        str(path.relative_to(ROOT)): marks
        for path in sources
        if (marks := combining_marks(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"combining characters (spell them out or use precomposed ones): {offenders}"
