"""LAControlNet Apply: attach a DiffBIR ControlNet and its condition latent to the conditioning.

Shaped like the stock "Apply ControlNet (Advanced)": positive/negative in, positive/negative out, with the
ControlNet chained after any ControlNet already on the conditioning. The condition latent is computed here,
once per run (ComfyUI caches the node's outputs), as the official code does: VAE posterior mode of
``2 * image - 1`` times 0.18215, the image zero padded to a multiple of 64 first (the latent is cropped to
the sampler's latent size at sampling time). Positive and negative share the same condition latent.

DiffBIR v2.1 was trained on a zero-terminal-SNR v-prediction SD 2.1; v1/v2 on the eps SD 2.1-base. When a
MODEL is connected, a v2.1 ControlNet returns it patched to v-prediction + zero-terminal SNR through
ComfyUI's own ModelSamplingDiscrete node code, and a sampling type that does not match the ControlNet's
version is logged as a warning naming the fix. Inputs are never modified (clones and copies only).
"""

from __future__ import annotations

import logging

import comfy.model_sampling

from ..diffbir_core.tiling import MIN_VAE_TILE, tile_settings_error
from .control import CONDITION_PAD, DiffBIRControl, encode_condition
from .images import rgb_image, widget_range_error
from .tiles import (
    TILE_PLAN_INPUT,
    auto_plan,
    check_tile_plan,
    tile_inputs_error,
    weights_to_load,
    with_fallback,
)
from .vae import check_sd_vae

log = logging.getLogger(__name__)
NODE = "LAControlNet Apply"


def model_sampling_kind(model) -> tuple[str, bool]:
    """(prediction, zero-terminal SNR) of a MODEL's sampling: prediction is 'eps', 'v' or 'other'."""
    ms = model.get_model_object("model_sampling")
    ms_mod = comfy.model_sampling
    discrete = isinstance(ms, ms_mod.ModelSamplingDiscrete) and not isinstance(
        ms, getattr(ms_mod, "ModelSamplingDiscreteEDM", ()))
    special = tuple(c for c in (getattr(ms_mod, n, None) for n in ("EDM", "X0", "IMG_TO_IMG")) if c is not None)
    if not discrete or (special and isinstance(ms, special)):
        prediction = "other"
    elif isinstance(ms, ms_mod.V_PREDICTION):
        prediction = "v"
    elif type(ms).calculate_denoised is ms_mod.EPS.calculate_denoised:
        prediction = "eps"
    else:
        prediction = "other"  # e.g. LCM
    return prediction, bool(getattr(ms, "zsnr", False))


def patch_v_zsnr(model):
    """A clone of `model` sampling with v-prediction and zero-terminal SNR (stock ModelSamplingDiscrete)."""
    import comfy_extras.nodes_model_advanced as advanced

    node = advanced.ModelSamplingDiscrete
    if hasattr(node, "patch"):
        return node().patch(model, "v_prediction", True)[0]
    out = node.execute(model=model, sampling="v_prediction", zsnr=True)  # V3 node API
    return out.result[0] if hasattr(out, "result") else out[0]


def _percent_error(start_percent, end_percent) -> str | None:
    if start_percent is not None and end_percent is not None and start_percent > end_percent:
        return (f"start_percent ({start_percent}) is after end_percent ({end_percent}), so the ControlNet would never "
                "act: set start_percent <= end_percent (official: 0 and 1)")
    return None


def _describe(prediction: str, zsnr: bool) -> str:
    name = {"eps": "eps-prediction", "v": "v-prediction", "other": "a non-SD sampling type"}[prediction]
    return name + (" with zero-terminal SNR" if zsnr else "")


class DiffBIRLAControlNetApply:
    DESCRIPTION = (
        "Apply a DiffBIR ControlNet (IRControlNet / LAControlNet) to the conditioning, like the stock "
        "'Apply ControlNet (Advanced)'. The condition is the stage-1 restored image, encoded once with the SD 2.1 "
        "VAE exactly as the official code does (posterior mode x 0.18215). Sample a latent of the same size as this "
        "image (VAE Encode it, or an Empty Latent of its size). For a v2.1 ControlNet connect the MODEL too and use "
        "the MODEL output: it is switched to v-prediction with zero-terminal SNR, which v2.1 needs."
    )
    CATEGORY = "DiffBIR"
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "MODEL")
    RETURN_NAMES = ("positive", "negative", "model")
    OUTPUT_TOOLTIPS = (
        "The positive conditioning with the DiffBIR ControlNet attached.",
        "The negative conditioning with the same ControlNet and condition (as the official CFG).",
        "The connected MODEL, for v2.1 switched to v-prediction + zero-terminal SNR; empty (None) when no MODEL is "
        "connected.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning (your prompt, may be empty)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning; it gets the same condition image."}),
                "control_net": ("CONTROL_NET", {"tooltip": "The DiffBIR ControlNet from 'Load DiffBIR Models'."}),
                "image": ("IMAGE", {"tooltip": "The stage-1 restored image (the condition). The sampled latent must "
                                               "have this image's size / 8. RGBA loses its alpha, grayscale is "
                                               "repeated to RGB."}),
                "vae": ("VAE", {"tooltip": "The SD 2.1 VAE (from the same checkpoint as the MODEL), used to encode "
                                           "the condition image."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                       "tooltip": "Control strength: every control is multiplied by it (official "
                                                  "default 1.0). 0 disables the ControlNet."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                            "tooltip": "Fraction of the sampling at which the control starts (0 = "
                                                       "from the first step, as officially)."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                          "tooltip": "Fraction of the sampling at which the control stops (1 = up to "
                                                     "the last step, as officially)."}),
            },
            "optional": {
                "model": ("MODEL", {"tooltip": "Optional SD 2.1 MODEL. Connected, it is checked against the "
                                               "ControlNet's version and, for v2.1, returned patched to v-prediction "
                                               "+ zero-terminal SNR at the 'model' output."}),
                "vae_tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 64,
                                          "tooltip": "Encode the condition image in tiles of this many pixels (0 = "
                                                     "whole image, as the official default). Use 512 for large "
                                                     "images: memory then grows with the tile, not the image. Images "
                                                     "within one tile are encoded whole."}),
                "vae_tile_stride": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8,
                                            "tooltip": "Distance between encode tiles in pixels (official: half the "
                                                       "tile). Used when vae_tile_size > 0."}),
                "vae_tile_plan": TILE_PLAN_INPUT,
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent=None, end_percent=None, vae_tile_size=None, vae_tile_stride=None):
        """Shown before the run (ComfyUI then leaves the min/max check of these inputs to us)."""
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            error = widget_range_error(cls, name, value)
            if error:
                return error
        return (tile_inputs_error(cls, "vae_tile_size", vae_tile_size, "vae_tile_stride", vae_tile_stride)
                or _percent_error(start_percent, end_percent) or True)

    def apply(self, positive, negative, control_net, image, vae, strength, start_percent, end_percent, model=None,
              vae_tile_size=0, vae_tile_stride=256, vae_tile_plan="manual"):
        if control_net is None:
            raise ValueError(
                "LAControlNet Apply: 'control_net' is empty: Load DiffBIR Models has controlnet_name 'none'. Pick a "
                "DiffBIR ControlNet file there (DiffBIR_v2.1.pt, v2.pth, v1_general.pth or v1_face.pth).")
        if not isinstance(control_net, DiffBIRControl):
            raise TypeError(
                f"LAControlNet Apply needs a DiffBIR ControlNet from 'Load DiffBIR Models', got "
                f"{type(control_net).__name__}. Use the stock 'Apply ControlNet' for other ControlNets.")
        error = _percent_error(start_percent, end_percent) or tile_settings_error(
            int(vae_tile_size), int(vae_tile_stride), minimum=MIN_VAE_TILE, tile_name="vae_tile_size",
            stride_name="vae_tile_stride")
        if error:
            raise ValueError(f"LAControlNet Apply: {error}")
        out_model = self._model_for(control_net, model)
        if strength == 0:
            return (positive, negative, out_model)

        image = rgb_image(image, "image")  # RGBA -> RGB, gray -> RGB; empty and NaN/Inf images refused
        h, w = (side + (-side) % CONDITION_PAD for side in image.shape[1:3])  # what encode_condition encodes
        if check_tile_plan(NODE, vae_tile_plan):
            check_sd_vae(vae, "DiffBIR")  # as encode_condition does, before the planner reads the VAE
            plan = auto_plan(NODE, "vae_encode", h, w, vae.device, vae.vae_dtype,
                             weights_to_load(vae.device, vae.patcher))
            vae_tile_size, vae_tile_stride = plan.tile, plan.stride
        latent, size = with_fallback(NODE, "vae_encode",
                                     lambda tile, stride: encode_condition(vae, image, tile, stride),
                                     vae_tile_size, vae_tile_stride, h, w)
        cnets = {}
        out = []
        for conditioning in (positive, negative):
            c = []
            for t in conditioning:
                d = t[1].copy()
                prev_cnet = d.get("control", None)
                if prev_cnet in cnets:
                    c_net = cnets[prev_cnet]
                else:
                    c_net = control_net.copy().set_condition(latent, size, strength, (start_percent, end_percent), image)
                    c_net.set_previous_controlnet(prev_cnet)
                    cnets[prev_cnet] = c_net
                d["control"] = c_net
                d["control_apply_to_uncond"] = False
                c.append([t[0], d])
            out.append(c)
        return (out[0], out[1], out_model)

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
            log.warning(
                "DiffBIR: the v2.1 ControlNet '%s' needs a zero-terminal-SNR v-prediction SD 2.1, but the MODEL "
                "samples with %s. LAControlNet Apply's MODEL output is switched to v-prediction + zero-terminal SNR: "
                "connect that output to the sampler, and load sd2.1-base-zsnr-laionaes5.ckpt as the checkpoint (the "
                "plain SD 2.1-base is eps-trained and gives poor results with v2.1).", control_net.name, have)
            return patch_v_zsnr(model)
        if version in ("v1", "v2"):
            if prediction != "eps" or zsnr:
                log.warning(
                    "DiffBIR: the %s ControlNet '%s' was trained with SD 2.1-base (eps-prediction), but the MODEL "
                    "samples with %s. Load v2-1_512-ema-pruned.ckpt (and no ModelSamplingDiscrete v_prediction/zsnr "
                    "patch) for this ControlNet; for the zsnr model use DiffBIR_v2.1.pt.", version, control_net.name,
                    have)
            return model
        log.warning(
            "DiffBIR: the DiffBIR version of ControlNet '%s' is unknown, so the MODEL (%s) is passed on unchecked. "
            "Put v1/v2/v2.1 in the file name or convert it with `python -m diffbir_core.convert --version`.",
            control_net.name, have)
        return model


NODE_CLASS_MAPPINGS = {"DiffBIRLAControlNetApply": DiffBIRLAControlNetApply}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRLAControlNetApply": "LAControlNet Apply"}
