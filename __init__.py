"""comfyui-diffbir: DiffBIR blind image restoration as ComfyUI nodes (a V3 extension).

ComfyUI imports this file as the extension's entry point and calls ``comfy_entrypoint``. Outside ComfyUI (pytest,
a plain ``import``) the node classes cannot load because they subclass ComfyUI types, so nothing is registered
instead of failing: ``diffbir_core`` is usable on its own.

One import root: the pack's folder is appended to ``sys.path`` and every module imports ``diffbir_core`` (and
``diffbir_weights``) by that top-level name, as the command line and the tests do, so each class has one identity
in a process. Appended, not prepended: the pack's ``nodes/`` must never shadow ComfyUI's own ``nodes.py`` (the
node classes are imported relatively, as this package's ``nodes``).
"""

import importlib.util
import logging
import os
import sys

WEB_DIRECTORY = "./web"  # help pages: web/docs/<node id>.md, served at /extensions/<pack folder>/docs/

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

__all__ = ["WEB_DIRECTORY"]

if importlib.util.find_spec("comfy_api") is not None and __package__:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__.append("comfy_entrypoint")
else:
    logging.getLogger(__name__).debug("comfyui-diffbir: ComfyUI not found, no nodes registered")
