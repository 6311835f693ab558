"""Batches of any length in a node: chunks sized by the memory planner, Cancel between chunks.

A batch's working memory grows with its frames, so a stage plans its tiles for one frame (``TiledStage``) and
then runs the batch in chunks of as many frames as fit the same budget (``diffbir_core.memory.frames_per_chunk``,
the arithmetic). This module is the host glue around it: ComfyUI's free memory and the weights still to load
(the same numbers the tile plan uses), the plan shown as the node's text when the batch is split, and Cancel
(``throw_exception_if_processing_interrupted``) checked before every chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management as mm
import comfy.utils

from diffbir_core import memory

from .progress import report
from .tiled_stage import call_limit, free_memory, weights_to_load


def frames_per_chunk(node: str, stage: str, frames: int, height: int, width: int, tile: int, device, dtype,
                     patchers=()) -> int:
    """Frames of `stage` per call on `device` for a batch of `frames` height x width images at tile side `tile`
    (0 = untiled); reported when the batch is split."""
    size = memory.frames_per_chunk(stage, height, width, tile, frames, free_memory(device), dtype,
                                   weights_to_load(device, *patchers), call_limit(device))
    if size < frames:
        report(node, f"{stage}: {frames} frames in {-(-frames // size)} chunks of up to {size}")
    return size


def run_chunks(frames: int, size: int, run: Callable[[int, int, int], object], progress: bool = False) -> list:
    """[run(index, start, stop) for each chunk of at most `size` frames], Cancel checked before each chunk; with
    `progress`, a bar over the batch's frames advanced after each chunk (for stages without a finer bar of their
    own over the whole batch)."""
    results = []
    bar = comfy.utils.ProgressBar(frames) if progress and size < frames else None
    for index, (start, stop) in enumerate(memory.chunk_ranges(frames, size)):
        mm.throw_exception_if_processing_interrupted()
        results.append(run(index, start, stop))
        if bar is not None:
            bar.update_absolute(stop, frames)
    return results
