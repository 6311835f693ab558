"""Import the extension's node modules the way ComfyUI does, without a ComfyUI.

ComfyUI imports the repository root as a package, so node modules reach the core with
relative imports (`from ..diffbir_core import ...`). Tests that need a node module but
not the host get it here: the package and its `nodes` subpackage are registered without
running their `__init__` (which would import every node, some of which need ComfyUI).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_diffbir_under_test"


def _package(name: str, path: Path) -> None:
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        mod.__package__ = name
        sys.modules[name] = mod


def node_module(name: str):
    _package(PACKAGE, REPO)
    _package(f"{PACKAGE}.nodes", REPO / "nodes")
    return importlib.import_module(f"{PACKAGE}.nodes.{name}")
