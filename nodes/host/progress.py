"""What a running node tells the user: a line of text under the node, and a progress bar that honours Cancel."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils

log = logging.getLogger("comfyui-diffbir")


def report(node: str, text: str) -> None:
    """`text` in the console and as the running node's text in the UI."""
    log.info("%s: %s", node, text)
    _show(text)


def warn(node: str, text: str) -> None:
    """`text` as a console warning and as the running node's text in the UI (a user who never reads the console
    still sees it)."""
    log.warning("%s", text)
    _show(text)


def _show(text: str) -> None:
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        context = get_executing_context()
        if context is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)
    except (ImportError, AttributeError):  # an older ComfyUI: the console line is the report
        pass


def tile_progress():
    """on_tile(i, n) for the core's tile loops: Cancel is checked before each tile; a progress bar of n tiles."""
    state = {}

    def on_tile(i: int, n: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(n)
        if i:
            state["bar"].update_absolute(i, n)

    return on_tile
