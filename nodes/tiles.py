"""Tile inputs of the DiffBIR nodes: one check for every node's VALIDATE_INPUTS and run, and the auto plan.

The rule itself is the core's (`diffbir_core.tiling.tile_settings_error`, in image pixels); this adds the
widget min/max check that ComfyUI leaves to a VALIDATE_INPUTS naming the input, and skips linked inputs
(no value at validation time).

`tile_plan` "auto" asks the core's memory planner (`diffbir_core.memory`) for the tile of a stage from the
device's free memory (ComfyUI's ``get_free_memory``, capped by ``DIFFBIR_MAX_MEMORY`` when set, e.g. by
``diffbir_cli restore --max-memory 6GB``) minus the weights the stage still has to load; on the CPU, without
such a budget, each call also stays within ``memory.CPU_CALL_BYTES`` (RAM overshoots swap instead of raising
an error the fallback could catch). The plan is logged
and shown as the node's text in the UI. Every stage retries with the next smaller tile after an
out-of-memory error, releasing the device cache with ComfyUI's ``soft_empty_cache``.
"""

from __future__ import annotations

import logging
import os

import comfy.model_management as mm

from ..diffbir_core import memory
from ..diffbir_core.tiling import MIN_VAE_TILE, tile_settings_error
from .images import widget_range_error

log = logging.getLogger(__name__)

TILE_PLANS = ("auto", "manual")
MAX_MEMORY_ENV = "DIFFBIR_MAX_MEMORY"
TILE_PLAN_INPUT = (list(TILE_PLANS), {
    "default": "auto",
    "tooltip": "auto: the memory planner picks the tile size and stride from the device's free memory (the whole "
               "image at once whenever it fits; smaller tiles after an out-of-memory error) and shows its plan. "
               "manual: use tile_size and tile_stride as set. Prompts that leave this out run manual."})


def tile_inputs_error(node_class, size_name: str, size, stride_name: str, stride,
                      minimum: int = MIN_VAE_TILE) -> str | None:
    """Why the node's (size, stride) tile inputs cannot be used, or None (for VALIDATE_INPUTS)."""
    for name, value in ((size_name, size), (stride_name, stride)):
        error = widget_range_error(node_class, name, value)
        if error:
            return error
    if size is None or stride is None:
        return None
    return tile_settings_error(int(size), int(stride), minimum=minimum, tile_name=size_name, stride_name=stride_name)


def check_tile_inputs(node: str, size: int, stride: int, size_name: str = "tile_size",
                      stride_name: str = "tile_stride", minimum: int = MIN_VAE_TILE) -> None:
    """The same rule at run time (a direct call skips VALIDATE_INPUTS): ValueError naming the node."""
    error = tile_settings_error(int(size), int(stride), minimum=minimum, tile_name=size_name, stride_name=stride_name)
    if error:
        raise ValueError(f"{node}: {error}")


def check_tile_plan(node: str, tile_plan: str) -> bool:
    """True for auto; refuses anything but auto / manual."""
    if tile_plan not in TILE_PLANS:
        raise ValueError(f"{node}: tile_plan must be 'auto' or 'manual', got {tile_plan!r}")
    return tile_plan == "auto"


def free_memory(device) -> int:
    """Bytes the planner may use on `device`: ComfyUI's free memory, capped by DIFFBIR_MAX_MEMORY."""
    free = int(mm.get_free_memory(device))
    cap = os.environ.get(MAX_MEMORY_ENV)
    if cap:
        free = min(free, memory.parse_bytes(cap))
    return free


def _on_cpu(device) -> bool:
    return getattr(device, "type", str(device)) == "cpu"


def call_limit(device) -> int | None:
    """The CPU plan's per-call limit (memory.CPU_CALL_BYTES), unless the user set a budget (--max-memory)."""
    if _on_cpu(device) and not os.environ.get(MAX_MEMORY_ENV):
        return memory.CPU_CALL_BYTES
    return None


def weights_to_load(device, *patchers) -> int:
    """Bytes of the patchers' weights not yet on `device` (on the CPU they are resident already)."""
    if _on_cpu(device):
        return 0
    total = 0
    for patcher in patchers:
        if patcher is None:
            continue
        size = int(patcher.model_size()) if hasattr(patcher, "model_size") else 0
        loaded = int(patcher.loaded_size()) if hasattr(patcher, "loaded_size") else 0
        total += max(size - loaded, 0)
    return total


def report(node: str, text: str) -> None:
    """The plan in the console and as the node's text in the UI."""
    log.info("%s: %s", node, text)
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        context = get_executing_context()
        if context is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)
    except (ImportError, AttributeError):  # an older ComfyUI: the console line is the report
        pass


def auto_plan(node: str, stage: str, height: int, width: int, device, dtype, weights: int = 0) -> memory.TilePlan:
    """The memory planner's tile for one stage of this node, reported (see the module doc)."""
    plan = memory.plan_stage(stage, height, width, free_memory(device), dtype, weights, call_limit(device))
    report(node, plan.describe())
    return plan


def with_fallback(node: str, stage: str, run, tile: int, stride: int, height: int, width: int):
    """`run(tile, stride)` retried with smaller tiles after an out-of-memory error (see memory.run_with_fallback)."""
    return memory.run_with_fallback(stage, run, int(tile), int(stride), height, width,
                                    release_memory=mm.soft_empty_cache,
                                    log=lambda message: log.warning("%s: %s", node, message))
