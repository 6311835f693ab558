"""Completing a partial architecture config with the official values."""

from __future__ import annotations


def complete_config(arch: str, config: dict | None, official: dict, optional: dict | None = None) -> dict:
    """Official values overridden by `config`; unknown names are an error, not silently ignored,
    so a typo in a config cannot build a different network than the one intended."""
    config = dict(config or {})
    optional = optional or {}
    unknown = set(config) - set(official) - set(optional)
    if unknown:
        raise ValueError(f"{arch}: unknown config keys {sorted(unknown)}")
    return {**official, **optional, **config}
