"""Random checkpoints in an official layout, cheap enough for full-size manifests.

All tensors are views of one seeded random pool, so a 1.7 B-parameter layout costs the
memory of its largest tensor, and `torch.save` writes the shared storage once. The
values are random; only the layout (keys, shapes) matters to detection and loading.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

MANIFESTS = Path(__file__).parent / "manifests"


def manifest_shapes(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / name).read_text())["keys"]


def random_state_dict(shapes: dict[str, list[int]], seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    largest = max(math.prod(s) for s in shapes.values())
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(largest, generator=gen).to(dtype)
    return {k: pool[: math.prod(s)].view(s) for k, s in shapes.items()}


def write_pickle(sd: dict, path: Path, wrap: bool = False, module_prefix: bool = False) -> Path:
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    torch.save({"state_dict": sd, "global_step": 1} if wrap else sd, path)
    return path
