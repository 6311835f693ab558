"""Build DiffBIR networks from checkpoint files: read safely, detect, build, load strictly.

A "slot" is what the caller needs (stage 1, ControlNet, ...). A file of another kind is
refused with an error naming the file, what it looks like and what the slot expects.
Strict loading reports missing, unexpected and mis-shaped keys by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arch import ARCHITECTURES, architecture
from .checkpoint import CheckpointError, read_checkpoint
from .detect import KIND_NAMES, Detection, detect, split_v1_full


class WrongCheckpointError(CheckpointError):
    """The file is readable but is not what this slot needs."""


def arch_module(kind: str):
    """The diffbir_core.arch module of network `kind` (its build(config) and OFFICIAL_CONFIG)."""
    return architecture(kind).network_module()


def config_from_state_dict(kind: str, sd: dict, metadata: dict | None = None) -> dict:
    """Hyper-parameters for `kind` read from the weights, as its Architecture record says (for most kinds a
    `diffbir_config` in the file's metadata wins)."""
    return architecture(kind).config(sd, metadata)


def _short_list(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], name: str) -> None:
    """load_state_dict(strict=True) with an error that lists every kind of mismatch."""
    own = model.state_dict()
    # BatchNorm step counters are not weights; files saved before torch 0.4.1 lack them and torch itself
    # fills them in on load, so do we.
    counters = {k: own[k] for k in own.keys() - sd.keys() if k.endswith(".num_batches_tracked")}
    if counters:
        sd = {**sd, **{k: torch.zeros_like(v, device="cpu") for k, v in counters.items()}}
    missing = own.keys() - sd.keys()
    unexpected = sd.keys() - own.keys()
    mismatched = [
        f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
        for k in own.keys() & sd.keys()
        if tuple(own[k].shape) != tuple(sd[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short_list(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape: {_short_list(mismatched)}")
        raise CheckpointError(f"'{name}' does not fit the network it was detected as; " + "; ".join(parts))
    model.load_state_dict(sd, strict=True, assign=any(p.is_meta for p in model.parameters()))


def build_network(kind: str, sd: dict[str, torch.Tensor], name: str = "state dict", config: dict | None = None,
                  metadata: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Build the network of `kind` sized from `sd` (or `config`) and load `sd` strictly."""
    arch = architecture(kind)
    if config is None:
        config = arch.config(sd, metadata)
    with torch.device("meta"):
        # Built on meta then loaded with assign=True: no time spent initialising weights
        # that the checkpoint overwrites, and no second copy of a large model in memory.
        model = arch.build(config)
    load_strict(model, sd, name)
    _materialise_buffers(model, arch, config)
    if arch.memory_format is not None:  # after the assign-load: the weights are the file's (contiguous) tensors
        model = model.to(memory_format=arch.memory_format)
    return model.eval().requires_grad_(False), config


def _materialise_buffers(model: torch.nn.Module, arch, config: dict) -> None:
    """Non-persistent buffers stay on meta after assign-loading; rebuild them on CPU."""
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if not meta_buffers:
        return
    fresh = arch.build(config)
    fresh_buffers = dict(fresh.named_buffers())
    for full_name in meta_buffers:
        owner_name, _, attr = full_name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner._buffers[attr] = fresh_buffers[full_name]


@dataclass
class LoadedNetwork:
    kind: str
    version: str | None
    model: torch.nn.Module
    config: dict
    name: str
    detection: Detection
    extras: dict = field(default_factory=dict)  # v1 full checkpoint: remaining parts


# What to do with a file picked in the wrong slot, by what it looks like.
_WRONG_FILE_FIXES = {
    "sd21": "Load it with ComfyUI's Load Checkpoint node; it is the SD 2.1 model, not a DiffBIR file.",
    "sd15": "DiffBIR needs SD 2.1; load an SD 2.1 checkpoint with ComfyUI's Load Checkpoint node.",
    "sdxl": "DiffBIR needs SD 2.1; load an SD 2.1 checkpoint with ComfyUI's Load Checkpoint node.",
    "controlnet_standard": "Use it with ComfyUI's Load ControlNet Model and Apply ControlNet nodes.",
    "unknown": "Check that the right file was picked and that it downloaded completely.",
}


def expect_kind(det: Detection, expected: Iterable[str], name: str, slot: str) -> None:
    expected = tuple(expected)
    if det.kind in expected:
        return
    wanted = " or ".join(KIND_NAMES.get(k, k) for k in expected)
    slot_of_file = ARCHITECTURES[det.kind].slot if det.kind in ARCHITECTURES else None
    if slot_of_file:
        fix = f"Pick it in the {slot_of_file} slot instead."
    else:
        fix = _WRONG_FILE_FIXES.get(det.kind, "")
    raise WrongCheckpointError(f"'{name}' looks like {det.looks_like}, but the {slot} slot expects {wanted}. {fix}".rstrip())


def load_network(path: str | os.PathLike, expected: Iterable[str], slot: str, config: dict | None = None) -> LoadedNetwork:
    """Read `path`, check it is one of the `expected` kinds, build and strictly load it.

    A v1 full checkpoint is accepted where a ControlNet or a stage-1 model is expected: the
    matching part is loaded and the other parts are returned in `extras`.
    """
    path = Path(path)
    sd, metadata = read_checkpoint(path)
    det = detect(sd, path.name, metadata)
    expected = tuple(expected)
    extras: dict = {}
    kind = det.kind
    if det.kind == "diffbir_v1_full" and det.kind not in expected:
        parts = split_v1_full(sd)
        part = "controlnet" if "controlnet" in expected else "stage1" if set(expected) & {"swinir"} else None
        if part is None or part not in parts:
            expect_kind(det, expected, path.name, slot)
        extras = {k: v for k, v in parts.items() if k != part}
        sd = parts[part]
        kind = "controlnet" if part == "controlnet" else "swinir"
    else:
        expect_kind(det, expected, path.name, slot)
        if kind == "controlnet" and any(k.startswith("control_model.") for k in sd):
            sd = {k[len("control_model.") :]: v for k, v in sd.items() if k.startswith("control_model.")}
    model, config = build_network(kind, sd, path.name, config, metadata)
    return LoadedNetwork(kind, det.version, model, config, path.name, det, extras)
