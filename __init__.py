"""comfyui-diffbir: DiffBIR blind image restoration as ComfyUI nodes.

ComfyUI imports this file as the extension's entry point. Outside ComfyUI (pytest, a
plain `import`), the node adapters cannot load because they subclass ComfyUI types, so
the mappings stay empty instead of failing: `diffbir_core` is usable on its own.
"""

import importlib.util
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

if importlib.util.find_spec("comfy") is not None and __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
else:
    logging.getLogger(__name__).debug("comfyui-diffbir: ComfyUI not found, no nodes registered")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
