"""DiffBIR's IRControlNet / LAControlNet as a ComfyUI CONTROL_NET (a ``comfy.controlnet.ControlBase``).

The stock samplers (KSampler, KSamplerAdvanced, SamplerCustom, ...) call ``get_control`` once per model
evaluation with the batched noisy latent (cond and uncond together), the sigmas and the batched
conditioning. We return ComfyUI's control dict, which the host UNet consumes in
``openaimodel.apply_control``:

* ``control["middle"] = [c12]``: popped after the middle block and added to its output;
* ``control["output"] = [c0, ..., c11]``: output block j pops the LAST entry and adds it to the skip
  connection it concatenates, so output block 0 gets c11 and output block j gets c(11 - j).

That is exactly DiffBIR's injection (``h + control[12]`` after the middle block, ``hs.pop() + control[11 - j]``
before each decoder block); the ``input`` list stays empty because DiffBIR never adds controls inside the
encoder. Stock ControlNets use the same layout, so chained ControlNets add up element by element.

The ControlNet sees ``cat(x_t, condition latent)`` where x_t is the VP-space noisy latent
(``model_sampling.calculate_input(sigma, x)``, as the stock ControlNet feeds its control model) and the
model timestep ``model_sampling.timestep(sigma)``; cond and uncond share the same condition latent, as in
the official code.
"""

from __future__ import annotations

import copy as _copy
import logging
import math

import comfy.controlnet
import comfy.model_management
import torch

from diffbir_core.arch.ldm_blocks import clear_context_caches

from .condition import encode_condition
from .patching import wrap_in_patcher
from .vae import latent_fits

log = logging.getLogger("comfyui-diffbir")

# transformer_options keys the DiffBIR Sampler sets for one model call (ComfyUI hands transformer_options to
# get_control). Absent, as with the stock samplers, the control behaves as it always did.
TILE_KEY = "diffbir_tile"  # (y0, y1, x0, x1): latent window of the current tile of tiled diffusion
MODEL_TIMESTEP_KEY = "diffbir_model_t"  # the exact (possibly fractional) model timestep of the call


class DiffBIRControl(comfy.controlnet.ControlBase):
    """A loaded DiffBIR ControlNet plus (after LAControlNet Apply) its condition latent and strength."""

    def __init__(self, patcher, version: str | None = None, name: str = "", dtype: torch.dtype | None = None):
        super().__init__()
        self.control_model_wrapped = patcher
        self.control_model = patcher.model if patcher is not None else None
        self.version = version
        self.name = name
        self.dtype = dtype
        self.condition_latent: torch.Tensor | None = None  # (B, 4, h, w), scaled, whole 64-padded image
        self.condition_size: tuple[int, int] | None = None  # unpadded pixel size (H, W)
        self.condition_image: torch.Tensor | None = None  # (B, H, W, C) in [0, 1]: the image encoded, if known
        self.control_scales: list[float] | None = None  # per-control multipliers (before strength)
        self.model_sampling_current = None
        self._lazy_latent = None  # encoded in get_control when the stock Apply ControlNet node was used
        self._hint_cache: dict = {}

    # -- configuration ----------------------------------------------------------------------------
    @property
    def num_controls(self) -> int:
        return len(self.control_model.input_blocks) + 1

    def set_condition(self, latent: torch.Tensor, size: tuple[int, int], strength: float = 1.0,
                      timestep_percent_range=(0.0, 1.0), image: torch.Tensor | None = None):
        self.condition_latent = latent
        self.condition_size = tuple(size)
        self.condition_image = image
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        self._hint_cache = {}
        return self

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0), vae=None, extra_concat=None,
                      **kwargs):
        """Stock "Apply ControlNet" path: keep the image and VAE; the latent is encoded at the first step.

        Arguments a newer host adds are passed on by name (they concern the base class, not our condition)."""
        super().set_cond_hint(cond_hint, strength, timestep_percent_range, vae=vae, extra_concat=extra_concat or [],
                              **kwargs)
        self.vae = vae
        self.condition_latent = None
        self.condition_size = None
        self.condition_image = None
        return self

    def set_control_scales(self, scales):
        if scales is not None:
            scales = [float(s) for s in scales]
            if len(scales) != self.num_controls:
                raise ValueError(f"{len(scales)} control scales for {self.num_controls} controls")
        self.control_scales = scales
        return self

    # -- ControlBase interface ----------------------------------------------------------------------
    def copy(self):
        c = DiffBIRControl(self.control_model_wrapped, self.version, self.name, self.dtype)
        self.copy_to(c)
        c.condition_latent = self.condition_latent
        c.condition_size = self.condition_size
        c.condition_image = self.condition_image
        c.control_scales = None if self.control_scales is None else list(self.control_scales)
        return c

    def deepclone_multigpu(self, load_device, autoregister=False):  # newer ComfyUI, multi-GPU sampling
        c = self.copy()
        model = _copy.deepcopy(self.control_model)
        c.control_model = model
        c.control_model_wrapped = wrap_in_patcher(model, load_device)
        if autoregister and hasattr(self, "multigpu_clones"):  # the registry exists since the multi-GPU hosts
            self.multigpu_clones[load_device] = c
        return c

    def get_models(self):
        out = super().get_models()
        out.append(self.control_model_wrapped)
        return out

    def pre_run(self, model, percent_to_timestep_function, *args, **kwargs):
        super().pre_run(model, percent_to_timestep_function, *args, **kwargs)
        self.model_sampling_current = model.model_sampling
        self._check_unet(getattr(model, "diffusion_model", None))
        # The ControlNet keeps the text context's k/v between the steps of a run; a run starts without any, so
        # weights patched in place since the last run (ComfyUI loads and patches before pre_run) cannot be missed.
        clear_context_caches(self.control_model)

    def _check_unet(self, unet):
        """Refuse a UNet whose skip connections do not take these controls (ComfyUI would only log them)."""
        blocks = getattr(unet, "input_blocks", None)
        channels = getattr(unet, "model_channels", None)
        if blocks is None or channels is None:
            return
        ours = self.control_model
        if len(blocks) != len(ours.input_blocks) or channels != ours.model_channels:
            raise ValueError(
                f"DiffBIR ControlNet '{self.name}' fits an SD 2.1 UNet ({len(ours.input_blocks)} input blocks, "
                f"{ours.model_channels} channels) but the MODEL's UNet has {len(blocks)} input blocks and {channels} "
                "channels. Load an SD 2.1 checkpoint (v2.1: sd2.1-base-zsnr-laionaes5.ckpt, v1/v2: "
                "v2-1_512-ema-pruned.ckpt).")

    def cleanup(self):
        self.model_sampling_current = None
        self._lazy_latent = None
        self._hint_cache = {}
        if self.control_model is not None:
            clear_context_caches(self.control_model)  # hand the memory back with the run
        super().cleanup()

    def inference_memory_requirements(self, dtype):
        # The weights are a ModelPatcher returned by get_models(), which ComfyUI budgets and loads with the
        # UNet; like the stock ControlNet we add no extra estimate of our own (only the chained ones').
        return super().inference_memory_requirements(dtype)

    # -- the condition --------------------------------------------------------------------------------
    def condition(self) -> tuple[torch.Tensor, tuple[int, int]]:
        """(condition latent of the 64-padded image, unpadded pixel size (H, W)); encodes a stock-node hint now."""
        return self._latent_and_size()

    def condition_pixels(self) -> torch.Tensor | None:
        """The stage-1 image the condition latent encodes, (B, H, W, C) in [0, 1], when the control has it."""
        if self.condition_image is not None:
            return self.condition_image
        if self.condition_latent is None and self.cond_hint_original is not None:
            return self.cond_hint_original.movedim(1, -1)  # stock Apply ControlNet keeps the image (NCHW)
        return None

    # -- the forward --------------------------------------------------------------------------------
    def _latent_and_size(self):
        if self.condition_latent is not None:
            return self.condition_latent, self.condition_size
        if self._lazy_latent is None:
            if self.cond_hint_original is None:
                raise ValueError(
                    "DiffBIR ControlNet has no condition image: connect it through 'LAControlNet Apply' "
                    "with the stage-1 image and the SD 2.1 VAE.")
            if self.vae is None:
                raise ValueError(
                    "DiffBIR ControlNet needs a VAE to encode the condition image: connect the VAE input of the "
                    "Apply ControlNet node, or use 'LAControlNet Apply'.")
            loaded = comfy.model_management.loaded_models(only_currently_used=True)
            self._lazy_latent = encode_condition(self.vae, self.cond_hint_original.movedim(1, -1))
            comfy.model_management.load_models_gpu(loaded)
        return self._lazy_latent

    def _hint_for(self, x_noisy: torch.Tensor, batched_number: int, window=None) -> torch.Tensor:
        """The condition latent for x_noisy: cropped to its size, or to `window` (a tile of tiled diffusion)."""
        h, w = x_noisy.shape[-2:]
        window = None if window is None else tuple(int(v) for v in window)
        key = (x_noisy.shape[0], h, w, batched_number, x_noisy.device, window)
        hint = self._hint_cache.get(key)
        if hint is not None:
            return hint
        latent, (img_h, img_w) = self._latent_and_size()
        if window is not None:
            y0, y1, x0, x1 = window
            if (y1 - y0, x1 - x0) != (h, w) or min(y0, x0) < 0 or y1 > latent.shape[-2] or x1 > latent.shape[-1]:
                raise ValueError(
                    f"DiffBIR ControlNet: tile window {window} does not fit a {w}x{h} tile of the condition latent "
                    f"({latent.shape[-1]}x{latent.shape[-2]}).")
            return self._batched(latent[:, :, y0:y1, x0:x1], x_noisy, batched_number, key, keep=True)
        if not (latent_fits(h, img_h) and latent_fits(w, img_w)) or h > latent.shape[-2] or w > latent.shape[-1]:
            raise ValueError(
                f"DiffBIR ControlNet: the sampler's latent is {w}x{h} ({w * 8}x{h * 8} pixels) but the condition "
                f"image given to LAControlNet Apply is {img_w}x{img_h} pixels (latent {math.ceil(img_w / 8)}x"
                f"{math.ceil(img_h / 8)}). They must match: sample the latent of the stage-1 image itself (VAE Encode "
                f"it, or an Empty Latent Image of {img_w}x{img_h}), or resize the image to {w * 8}x{h * 8} before "
                "LAControlNet Apply.")
        return self._batched(latent[:, :, :h, :w], x_noisy, batched_number, key)

    def _batched(self, hint, x_noisy, batched_number, key, keep=False):
        """`hint` spread over x_noisy's batch (cond and uncond chunks) on its device, cached under `key`."""
        images, batch = hint.shape[0], x_noisy.shape[0]
        if images == 1:
            hint = hint.expand(batch, -1, -1, -1)
        elif images != batch:
            # cond and uncond are batched together: each chunk gets the images in order (stock rule).
            hint = comfy.controlnet.broadcast_image_to(hint, batch, batched_number)
            if hint.shape[0] != batch:
                raise ValueError(
                    f"DiffBIR ControlNet: {images} condition images cannot be spread over a latent batch of "
                    f"{batch // max(1, batched_number)}; give LAControlNet Apply one image or as many as the latent "
                    "batch.")
        hint = hint.to(device=x_noisy.device, dtype=torch.float32).contiguous()
        if keep:  # tiles: one entry per window (bounded by the tile grid)
            self._hint_cache[key] = hint
        else:
            self._hint_cache = {key: hint}
        return hint

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None, *args, **kwargs):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(
                x_noisy, t, cond, batched_number, transformer_options, *args, **kwargs)

        if self.timestep_range is not None and not (self.timestep_range[1] <= t[0] <= self.timestep_range[0]):
            return control_prev  # outside start/end percent (sigmas: start is the larger)

        options = transformer_options or {}
        hint = self._hint_for(x_noisy, batched_number, options.get(TILE_KEY))
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        if context.shape[-1] != self.control_model.context_dim:
            raise ValueError(
                f"DiffBIR ControlNet '{self.name}' expects SD 2.1 text conditioning ({self.control_model.context_dim} "
                f"channels) but got {context.shape[-1]}: encode the prompts with the CLIP of the SD 2.1 checkpoint.")
        sampling = self.model_sampling_current
        timesteps = sampling.timestep(t)
        exact = options.get(MODEL_TIMESTEP_KEY)
        if exact is not None:  # the DiffBIR Sampler's fractional grids (dpm++_m2): not rounded to an integer t
            timesteps = torch.full(timesteps.shape, float(exact), device=timesteps.device)
        x_in = sampling.calculate_input(t, x_noisy)
        controls = self.control_model(x_in, hint, timesteps, context.to(x_noisy.device))
        if self.control_scales is not None:
            controls = [c * s for c, s in zip(controls, self.control_scales)]
        out = {"input": [], "middle": [controls[-1]], "output": list(controls[:-1])}
        return self.control_merge(out, control_prev, output_dtype=None)
