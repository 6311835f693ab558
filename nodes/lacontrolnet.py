"""LAControlNet Apply: attach a DiffBIR ControlNet and its condition latent to the conditioning.

Shaped like the stock "Apply ControlNet (Advanced)": positive/negative in, positive/negative out, with the
ControlNet chained after any ControlNet already on the conditioning. The condition latent is computed here,
once per run (ComfyUI caches the node's outputs), as the official code does (``host.condition``). Positive and
negative share the same condition latent.

DiffBIR v2.1 was trained on a zero-terminal-SNR v-prediction SD 2.1; v1/v2 on the eps SD 2.1-base. When a
MODEL is connected, a v2.1 ControlNet returns it patched to v-prediction + zero-terminal SNR through
ComfyUI's own ModelSamplingDiscrete node code, and a sampling type that does not match the ControlNet's
version is reported as a warning naming the fix, on the console and as the node's text in the UI. Inputs are
never modified (clones and copies only).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from diffbir_core.padding import padded_size

from .host import batches, schema
from .host.condition import encode_condition
from .host.control import DiffBIRControl
from .host.images import rgb_image, widget_range_error
from .host.model_sampling import model_sampling_kind, patch_v_zsnr
from .host.progress import warn
from .host.tiled_stage import TiledStage
from .host.vae import check_sd_vae

NODE = "LAControlNet Apply"
TILES = TiledStage(NODE, "vae_encode", "vae_tile_size", "vae_tile_stride", "vae_tile_plan")


def _percent_error(start_percent, end_percent) -> str | None:
    if start_percent is not None and end_percent is not None and start_percent > end_percent:
        return (f"start_percent ({start_percent}) is after end_percent ({end_percent}), so the ControlNet would never "
                "act: set start_percent <= end_percent (official: 0 and 1)")
    return None


def _describe(prediction: str, zsnr: bool) -> str:
    name = {"eps": "eps-prediction", "v": "v-prediction", "other": "a non-SD sampling type"}[prediction]
    return name + (" with zero-terminal SNR" if zsnr else "")


def _attach(conditionings, control_net: DiffBIRControl, latent, size, strength, percent_range, image):
    """Copies of the conditionings with a copy of `control_net` (carrying the condition) chained onto each
    entry's ControlNets; one copy per previous chain, shared by positive and negative as in the stock node."""
    copies = {}
    out = []
    for conditioning in conditionings:
        items = []
        for tensor, options in conditioning:
            options = options.copy()
            previous = options.get("control", None)
            if previous not in copies:
                c_net = control_net.copy().set_condition(latent, size, strength, percent_range, image)
                c_net.set_previous_controlnet(previous)
                copies[previous] = c_net
            options["control"] = copies[previous]
            options["control_apply_to_uncond"] = False
            items.append([tensor, options])
        out.append(items)
    return out


class DiffBIRLAControlNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRLAControlNetApply",
            display_name=NODE,
            category=schema.CONDITIONING,
            search_aliases=["diffbir controlnet", "irc controlnet", "ircontrolnet", "apply controlnet", "restore"],
            description=(
                "Apply a DiffBIR ControlNet (IRControlNet / LAControlNet) to the conditioning, like the stock "
                "'Apply ControlNet (Advanced)'. The condition is the stage-1 restored image, encoded once with the "
                "SD 2.1 VAE exactly as the official code does (posterior mode x 0.18215). Sample a latent of the "
                "same size as this image (VAE Encode it, or an Empty Latent of its size). For a v2.1 ControlNet "
                "connect the MODEL too and use the MODEL output: it is switched to v-prediction with zero-terminal "
                "SNR, which v2.1 needs."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning (your prompt, may be empty)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning; it gets the same condition image."),
                io.ControlNet.Input("control_net", tooltip="The DiffBIR ControlNet from 'Load DiffBIR Models'."),
                io.Image.Input("image", tooltip="The stage-1 restored image (the condition). The sampled latent must "
                                                "have this image's size / 8. RGBA loses its alpha, grayscale is "
                                                "repeated to RGB."),
                io.Vae.Input("vae", tooltip="The SD 2.1 VAE (from the same checkpoint as the MODEL), used to encode "
                                            "the condition image."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Control strength: every control is multiplied by it (official default 1.0). "
                                       "0 disables the ControlNet."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the control starts (0 = from the first "
                                       "step, as officially).", **schema.ADVANCED),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the control stops (1 = up to the last "
                                       "step, as officially).", **schema.ADVANCED),
                io.Model.Input("model", optional=True,
                               tooltip="Optional SD 2.1 MODEL. Connected, it is checked against the ControlNet's "
                                       "version and, for v2.1, returned patched to v-prediction + zero-terminal SNR "
                                       "at the 'model' output."),
                TILES.size_input(0, "Encode the condition image in tiles of this many pixels (0 = whole image, as "
                                    "the official default; vae_tile_plan manual). Use 512 for large images: memory "
                                    "then grows with the tile, not the image. Images within one tile are encoded "
                                    "whole.", optional=True),
                TILES.stride_input("Distance between encode tiles in pixels (official: half the tile). Used when "
                                   "vae_tile_size > 0.", optional=True),
                TILES.plan_input(),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive",
                                       tooltip="The positive conditioning with the DiffBIR ControlNet attached."),
                io.Conditioning.Output("negative_out", display_name="negative",
                                       tooltip="The negative conditioning with the same ControlNet and condition (as "
                                               "the official CFG)."),
                io.Model.Output("model_out", display_name="model",
                                tooltip="The connected MODEL, for v2.1 switched to v-prediction + zero-terminal SNR; "
                                        "empty (None) when no MODEL is connected."),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent=None, end_percent=None, vae_tile_size=None, vae_tile_stride=None):
        """Shown before the run (ComfyUI then leaves the min/max check of these inputs to us)."""
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            error = widget_range_error(cls, name, value)
            if error:
                return error
        return (TILES.error(cls, vae_tile_size, vae_tile_stride) or _percent_error(start_percent, end_percent)
                or True)

    @classmethod
    def execute(cls, positive, negative, control_net, image, vae, strength, start_percent, end_percent, model=None,
                vae_tile_size=0, vae_tile_stride=256, vae_tile_plan="manual") -> io.NodeOutput:
        # check inputs
        if control_net is None:
            raise ValueError(
                f"{NODE}: 'control_net' is empty: Load DiffBIR Models has controlnet_name 'none'. Pick a DiffBIR "
                "ControlNet file there (DiffBIR_v2.1.pt, v2.pth, v1_general.pth or v1_face.pth).")
        if not isinstance(control_net, DiffBIRControl):
            raise TypeError(
                f"{NODE} needs a DiffBIR ControlNet from 'Load DiffBIR Models', got {type(control_net).__name__}. "
                "Use the stock 'Apply ControlNet' for other ControlNets.")
        error = _percent_error(start_percent, end_percent)
        if error:
            raise ValueError(f"{NODE}: {error}")
        is_auto = TILES.is_auto(vae_tile_plan)
        if not is_auto:
            TILES.check(vae_tile_size, vae_tile_stride)
        out_model = cls._model_for(control_net, model)
        if strength == 0:
            return io.NodeOutput(positive, negative, out_model)

        # the condition latent, then the conditioning that carries it
        image = rgb_image(image, "image")  # RGBA -> RGB, gray -> RGB; empty and NaN/Inf images refused
        check_sd_vae(vae, "DiffBIR")  # before the planner reads the VAE
        h, w = padded_size(*image.shape[1:3])
        def encode(tile: int, stride: int):  # a batch in chunks of as many frames as fit
            frames = batches.frames_per_chunk(NODE, TILES.stage, image.shape[0], h, w, tile, vae.device,
                                              vae.vae_dtype, [vae.patcher])
            chunks = batches.run_chunks(image.shape[0], frames, lambda _, start, stop: encode_condition(
                vae, image[start:stop], tile, stride), progress=True)
            return torch.cat([latent for latent, _ in chunks]), chunks[0][1]

        latent, size = TILES.run(encode, vae_tile_plan, vae_tile_size, vae_tile_stride, h, w, vae.device,
                                 vae.vae_dtype, [vae.patcher])
        positive, negative = _attach((positive, negative), control_net, latent, size, strength,
                                     (start_percent, end_percent), image)
        return io.NodeOutput(positive, negative, out_model)

    @staticmethod
    def _model_for(control_net: DiffBIRControl, model):
        if model is None:
            return None
        version = control_net.version
        prediction, zsnr = model_sampling_kind(model)
        have = _describe(prediction, zsnr)
        if version == "v2.1":
            if prediction == "v" and zsnr:
                return model
            warn(NODE,
                 f"DiffBIR: the v2.1 ControlNet '{control_net.name}' needs a zero-terminal-SNR v-prediction SD 2.1, but "
                 f"the MODEL samples with {have}. LAControlNet Apply's MODEL output is switched to v-prediction + "
                 "zero-terminal SNR: connect that output to the sampler, and load sd2.1-base-zsnr-laionaes5.ckpt as "
                 "the checkpoint (the plain SD 2.1-base is eps-trained and gives poor results with v2.1).")
            return patch_v_zsnr(model)
        if version in ("v1", "v2"):
            if prediction != "eps" or zsnr:
                warn(NODE,
                     f"DiffBIR: the {version} ControlNet '{control_net.name}' was trained with SD 2.1-base "
                     f"(eps-prediction), but the MODEL samples with {have}. Load v2-1_512-ema-pruned.ckpt (and no "
                     "ModelSamplingDiscrete v_prediction/zsnr patch) for this ControlNet; for the zsnr model use "
                     "DiffBIR_v2.1.pt.")
            return model
        warn(NODE,
             f"DiffBIR: the DiffBIR version of ControlNet '{control_net.name}' is unknown, so the MODEL ({have}) is "
             "passed on unchecked. Put v1/v2/v2.1 in the file name or convert it with `python -m diffbir_core.convert "
             "--version`.")
        return model
