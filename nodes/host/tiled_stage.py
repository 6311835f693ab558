"""A tiled stage of a node, declared once: its widgets, its validation, and one plan-run-fall-back call.

Four nodes run a tiled stage (Stage1 SwinIR Restore: stage1, LAControlNet Apply: vae_encode, DiffBIR Sampler:
diffusion, DiffBIR VAE Decode: vae_decode). Each declares a ``TiledStage`` and takes from it:

* the widgets: tile size (``TILE_STEP`` steps, 0 = off), stride and the ``auto`` / ``manual`` plan; where they
  sit among the node's inputs stays the node's choice (saved workflows store widget values by position);
* the check: the core's one tile rule (``diffbir_core.tiling.tile_settings_error``, in image pixels) plus the
  widget min/max that ComfyUI leaves to a ``validate_inputs`` naming the input; linked inputs (None at validation
  time) are skipped;
* ``settings``: the tile and stride to use, planned for ``auto`` by the core's memory planner
  (``diffbir_core.memory``) from the device's free memory (ComfyUI's ``get_free_memory``, capped by
  ``DIFFBIR_MAX_MEMORY`` when set, e.g. by ``diffbir_cli restore --max-memory 6GB``) minus the weights the stage
  still has to load; on the CPU, without such a budget, each call also stays within ``memory.CPU_CALL_BYTES``
  (RAM overshoots swap instead of raising an error the fallback could catch). The plan is logged and shown as
  the node's text in the UI;
* ``run``: ``settings`` then ``run(tile, stride)``, retried on the planner's smaller grids after an
  out-of-memory error, releasing the device cache with ComfyUI's ``soft_empty_cache``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import comfy.model_management as mm
from comfy_api.latest import io

from diffbir_core import memory
from diffbir_core.tiling import MIN_TILE, TILE_MULTIPLE, tile_settings_error

from .images import widget_range_error
from .progress import report
from .schema import ADVANCED

log = logging.getLogger("comfyui-diffbir")

TILE_PLANS = ("auto", "manual")
MAX_MEMORY_ENV = "DIFFBIR_MAX_MEMORY"
MAX_TILE = 8192
TILE_STEP = MIN_TILE  # the widget's step: every tile a multiple of 64 (what SwinIR and the UNet need anyway)
PLAN_TOOLTIP = ("auto: the memory planner picks the tile size and stride from the device's free memory (the whole "
                "image at once whenever it fits; smaller tiles after an out-of-memory error) and shows its plan. "
                "manual: use the tile size and stride as set. Prompts that leave this out run manual.")


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


@dataclass(frozen=True)
class TiledStage:
    """One tiled stage of one node (see the module doc). `node` names it in messages; `stage` is the planner's."""

    node: str
    stage: str
    size_name: str = "tile_size"
    stride_name: str = "tile_stride"
    plan_name: str = "tile_plan"

    # -- widgets ---------------------------------------------------------------------------------------------
    def size_input(self, default: int, tooltip: str, optional: bool = False, advanced: bool = True) -> io.Int.Input:
        return io.Int.Input(self.size_name, default=default, min=0, max=MAX_TILE, step=TILE_STEP, tooltip=tooltip,
                            optional=optional, **(ADVANCED if advanced else {}))

    def stride_input(self, tooltip: str, default: int = 256, optional: bool = False,
                     advanced: bool = True) -> io.Int.Input:
        return io.Int.Input(self.stride_name, default=default, min=TILE_MULTIPLE, max=MAX_TILE, step=TILE_MULTIPLE,
                            tooltip=tooltip, optional=optional, **(ADVANCED if advanced else {}))

    def plan_input(self) -> io.Combo.Input:
        return io.Combo.Input(self.plan_name, options=list(TILE_PLANS), default="auto", tooltip=PLAN_TOOLTIP,
                              optional=True)

    # -- checks ----------------------------------------------------------------------------------------------
    def error(self, node_class, size, stride) -> str | None:
        """Why the (size, stride) inputs cannot be used, or None: for the node's validate_inputs."""
        for name, value in ((self.size_name, size), (self.stride_name, stride)):
            error = widget_range_error(node_class, name, value)
            if error:
                return error
        if size is None or stride is None:
            return None
        return self._rule_error(size, stride)

    def _rule_error(self, size, stride) -> str | None:
        return tile_settings_error(int(size), int(stride), tile_name=self.size_name, stride_name=self.stride_name)

    def check(self, size: int, stride: int) -> None:
        """The same rule at run time (a direct call skips validate_inputs): ValueError naming the node."""
        error = self._rule_error(size, stride)
        if error:
            raise ValueError(f"{self.node}: {error}")

    def is_auto(self, plan: str) -> bool:
        """True for auto; refuses anything but auto / manual."""
        if plan not in TILE_PLANS:
            raise ValueError(f"{self.node}: {self.plan_name} must be 'auto' or 'manual', got {plan!r}")
        return plan == "auto"

    # -- planning and running ----------------------------------------------------------------------------------
    def settings(self, plan: str, size: int, stride: int, height: int, width: int, device, dtype,
                 patchers=()) -> tuple[int, int]:
        """(tile, stride) in image pixels: the memory planner's for `plan` auto (reported), else the inputs,
        checked. height x width is the stage's image; `patchers` the ModelPatchers it will load."""
        if not self.is_auto(plan):
            self.check(size, stride)
            return int(size), int(stride)
        planned = memory.plan_stage(self.stage, height, width, free_memory(device), dtype,
                                    weights_to_load(device, *patchers), call_limit(device))
        report(self.node, planned.describe())
        return planned.tile, planned.stride

    def run(self, run, plan: str, size: int, stride: int, height: int, width: int, device, dtype, patchers=()):
        """`run(tile, stride)` with the `settings`, retried with smaller tiles after an out-of-memory error
        (memory.run_with_fallback: the one fallback of every stage)."""
        tile, tile_stride = self.settings(plan, size, stride, height, width, device, dtype, patchers)
        return memory.run_with_fallback(self.stage, run, tile, tile_stride, height, width,
                                        release_memory=mm.soft_empty_cache,
                                        log=lambda message: log.warning("%s: %s", self.node, message))
