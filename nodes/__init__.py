"""ComfyUI adapters over diffbir_core: one small module per capability.

Each module listed in _NODE_MODULES exports NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS; they are merged here.
"""

import importlib

_NODE_MODULES = ["degrade", "compare", "stage1", "colorfix", "model_loading", "lacontrolnet", "sampler", "ksamplers", "vae",
                 "face"]

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _name in _NODE_MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
