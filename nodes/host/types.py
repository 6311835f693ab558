"""Types that travel between the DiffBIR nodes.

DIFFBIR_STAGE1 carries a stage-1 restorer wrapped in a ComfyUI ModelPatcher (so ComfyUI
loads and offloads it like its own models) plus what the preprocessing needs to know.
The ControlNet travels as ComfyUI's own CONTROL_NET type (a ControlBase subclass), so
the stock nodes accept it.

FACE_ALIGNMENT carries `diffbir_core.face.alignment.FaceAlignment` from DiffBIR Face Detect & Align
to DiffBIR Face Paste Back: per face its photo, affine matrix, box, score and landmarks, plus the
photo size, so that the crops can be restored by any nodes in between and pasted back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

STAGE1_TYPE = "DIFFBIR_STAGE1"
FACE_ALIGNMENT_TYPE = "FACE_ALIGNMENT"
Stage1IO = io.Custom(STAGE1_TYPE)  # V3 socket types: Stage1IO.Input(...), Stage1IO.Output(...)
FaceAlignmentIO = io.Custom(FACE_ALIGNMENT_TYPE)


@dataclass
class Stage1Model:
    patcher: Any  # comfy.model_patcher.ModelPatcher around the nn.Module
    kind: str  # "swinir" | "bsrnet" | "scunet" | "upscale_model" (a spandrel model from the stock loader)
    version: str | None  # DiffBIR version the file belongs to, when known
    scale: int  # output / input size of the network (4 for BSRNet)
    size_multiple: int  # H and W must be a multiple of this before the forward (64 for SwinIR)
    name: str  # file name, for messages
