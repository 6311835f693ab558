"""Weights mirrors: ``DIFFBIR_WEIGHTS_MIRROR`` (the CLI's ``--mirror URL``) replaces the official scheme and host.

``URL`` applies to every host, ``HOST=URL[,HOST=URL]`` per host; the path is kept, so
``https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/v2.pth`` becomes ``URL/lxq007/DiffBIR-v2/resolve/main/v2.pth``.
"""

from __future__ import annotations

import os
import urllib.parse

MIRROR_ENV = "DIFFBIR_WEIGHTS_MIRROR"


class MirrorError(ValueError):
    """A mirror setting that is not an http(s) URL."""


def mirror_map(spec: str | None = None) -> dict[str, str]:
    """'URL' (every host) or 'HOST=URL,HOST=URL' -> {host or '*': base URL}; None reads $DIFFBIR_WEIGHTS_MIRROR."""
    spec = os.environ.get(MIRROR_ENV) if spec is None else spec
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        key, base = ("*", part)
        if "=" in part and not part.lower().startswith(("http://", "https://")):
            key, base = (s.strip() for s in part.split("=", 1))
        if urllib.parse.urlsplit(base).scheme.lower() not in ("http", "https") or not key:
            raise MirrorError(f"the weights mirror {part!r} is not an http(s) URL: give e.g. "
                              "https://mirror.example/ or huggingface.co=https://hf-mirror.com (--mirror or "
                              f"${MIRROR_ENV})")
        out[key.lower()] = base
    return out


def mirror_url(url: str, mirrors: dict[str, str]) -> str:
    """The official URL with its scheme and host replaced by the mirror's base URL (path kept)."""
    parts = urllib.parse.urlsplit(url)
    base = mirrors.get((parts.hostname or "").lower()) or mirrors.get("*")
    return base.rstrip("/") + parts.path if base else url
