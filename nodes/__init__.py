"""The DiffBIR nodes as one ComfyUI V3 extension.

Node classes live one floor up from the shared layer: ``nodes/*.py`` hold node classes only and import
``nodes.host`` (what every node needs from ComfyUI, written once) and ``diffbir_core``, never each other.
``NODES`` is the registration order; ``comfy_entrypoint`` (re-exported by the pack's ``__init__``) is what
ComfyUI calls.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import (alpha, colorfix, compare, degrade, face, lacontrolnet, load_models, prompt, sampler, sampler_select,
               stage1, vae_decode)
from .host.ksamplers import register_ksamplers_or_warn

NODES: list[type[io.ComfyNode]] = [
    load_models.DiffBIRLoadModels,
    stage1.DiffBIRStage1Restore,
    prompt.DiffBIRPrompt,
    lacontrolnet.DiffBIRLAControlNetApply,
    sampler.DiffBIRSampler,
    sampler_select.DiffBIRSamplerSelect,
    vae_decode.DiffBIRVAEDecode,
    colorfix.DiffBIRColorFix,
    alpha.DiffBIRKeepAlpha,
    face.DiffBIRFaceDetectAlign,
    face.DiffBIRFacePasteBack,
    degrade.DiffBIRDegrade,
    compare.DiffBIRCompare,
]


class DiffBIRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # Every host calls this once when it loads the pack: the diffbir_* solvers join ComfyUI's sampler lists here.
        register_ksamplers_or_warn()
        return list(NODES)


async def comfy_entrypoint() -> DiffBIRExtension:
    return DiffBIRExtension()
