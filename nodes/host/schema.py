"""V3 schema helpers: the pack's category tree and the schema features the running ComfyUI may lack.

ComfyUI 0.3.75 (the oldest host we support) has ``comfy_api.latest`` but neither ``io.Schema.search_aliases`` nor
the ``advanced`` flag of inputs (newer hosts: the frontend folds advanced inputs away until the user opens
them). Both are detected here once; node modules pass them through ``schema()`` and ``ADVANCED`` and read the
same on every host.
"""

from __future__ import annotations

import dataclasses
import inspect

from comfy_api.latest import io

ROOT = "DiffBIR"
# One tree under DiffBIR, named by what the nodes do, in ComfyUI's lower-case style.
LOADERS = f"{ROOT}/loaders"
STAGE1 = f"{ROOT}/stage1"
CONDITIONING = f"{ROOT}/conditioning"
SAMPLING = f"{ROOT}/sampling"
LATENT = f"{ROOT}/latent"
IMAGE = f"{ROOT}/image"
FACES = f"{ROOT}/faces"
TESTING = f"{ROOT}/testing"

_SCHEMA_FIELDS = frozenset(f.name for f in dataclasses.fields(io.Schema))
SUPPORTS_SEARCH_ALIASES = "search_aliases" in _SCHEMA_FIELDS
SUPPORTS_ADVANCED = "advanced" in inspect.signature(io.Input.__init__).parameters

# Keyword arguments marking an input as advanced (expert settings folded away), or nothing on older hosts.
ADVANCED: dict = {"advanced": True} if SUPPORTS_ADVANCED else {}


def schema(**fields) -> io.Schema:
    """``io.Schema(**fields)`` without the fields this ComfyUI does not know (e.g. search_aliases on 0.3.75)."""
    return io.Schema(**{name: value for name, value in fields.items() if name in _SCHEMA_FIELDS})
