"""The model function of the core samplers, answered by ComfyUI's guided model (used by the DiffBIR Sampler).

The core samplers ask for the model output (eps or v) of the noisy VP latent x at a model timestep t.
``HostModelFunction`` answers by calling a stock ``comfy.samplers.CFGGuider`` at the MODEL's sigma s of t:
ComfyUI's ``sampling_function`` -> ``calc_cond_batch`` (cond and uncond batched, ``DiffBIRControl.get_control``
computing the 13 controls, ``BaseModel.apply_model`` with the controls added to the UNet) -> CFG on the denoised
estimate D, converted back with the same sigma by the core's one conversion
(``diffbir_core.sampling.parameterization.output_from_denoised``): ``eps = (x sqrt(1+s^2) - D) / s``,
``v = (eps - s D) / sqrt(1+s^2)``. The UNet sees exactly x and t (the host's ``calculate_input`` undoes the scaling, its
``timestep(s)`` gives t back), CFG on D equals the official CFG on eps/v (the map is affine), and for the
zero-terminal-SNR v2.1 MODEL ComfyUI keeps s(999) finite (~4.5e3), so the conversion is defined where eps is
not. Fractional timesteps (dpm++_m2's grid) reach the UNet and the ControlNet unrounded through a
transformer_options key (``control.MODEL_TIMESTEP_KEY``) and a DIFFUSION_MODEL wrapper.

Tiled diffusion: each call is split into latent tiles by the core's one tiled model call
(``diffbir_core.tiling.tiled_model_call``, which the reference denoiser uses too); each tile is one guider call
whose transformer_options carry the tile window (``control.TILE_KEY``), so the control crops its condition
latent to the tile; outputs are blended with the official gaussian weights.
"""

from __future__ import annotations

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import torch

from diffbir_core.sampling.cfg import rescaled_cfg
from diffbir_core.sampling.parameterization import output_from_denoised
from diffbir_core.tiling import tiled_model_call

from .control import MODEL_TIMESTEP_KEY, TILE_KEY
from .model_sampling import host_sigma

EXACT_T_WRAPPER = "diffbir_exact_timestep"


def _exact_timestep(executor, x, timesteps, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: the UNet gets the DiffBIR Sampler's exact timestep (host sigmas round it)."""
    options = args[3] if len(args) > 3 else kwargs.get("transformer_options")
    exact = (options or {}).get(MODEL_TIMESTEP_KEY)
    if exact is not None and torch.is_tensor(timesteps):
        timesteps = torch.full_like(timesteps, float(exact))
    return executor(x, timesteps, *args, **kwargs)


def add_exact_timestep_wrapper(model_options: dict) -> None:
    """Install the exact-timestep wrapper in a run's own model_options (CFGGuider.inner_sample's copy)."""
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                 EXACT_T_WRAPPER, _exact_timestep, model_options,
                                                 is_model_options=True)


# ComfyUI's attentions for a CPU without PyTorch attention enabled (its default there): chunked bmm + softmax.
# torch's SDPA (its CPU flash kernel) computes the same attention without materialising the score matrix and
# is faster: at 512 a cfg step of the host UNet + our control takes 1.35x as long with ComfyUI's default CPU
# attention as with SDPA (benchmarks/README.md, issue 16).
_SLOW_CPU_ATTENTIONS = ("attention_sub_quad", "attention_split", "attention_basic")


def _sdpa_on_cpu(func, *args, **kwargs):
    """transformer_options["optimized_attention_override"] of the DiffBIR Sampler's CPU runs: ComfyUI's slow CPU
    attentions become its own PyTorch attention (same arguments); any other choice is kept."""
    import comfy.ldm.modules.attention as host_attention

    if getattr(func, "__name__", "") in _SLOW_CPU_ATTENTIONS:
        return host_attention.attention_pytorch(*args, **kwargs)
    return func(*args, **kwargs)


def _host_has_attention_override() -> bool:
    """Whether this ComfyUI routes its attention through transformer_options["optimized_attention_override"]."""
    import comfy.ldm.modules.attention as host_attention

    return hasattr(host_attention, "wrap_attn") and hasattr(host_attention, "attention_pytorch")


def use_sdpa_on_cpu(transformer_options: dict, device: torch.device) -> None:
    """On the CPU, ComfyUI's PyTorch attention for this call, unless something else (an attention node, the
    user) already set an override."""
    if (device.type == "cpu" and "optimized_attention_override" not in transformer_options
            and _host_has_attention_override()):
        transformer_options["optimized_attention_override"] = _sdpa_on_cpu


class HostModelFunction:
    """``denoise_fn(x, t) -> eps or v`` for the diffbir_core samplers, computed by ComfyUI's guided model.

    x is the VP latent at model timestep t (a (batch,) tensor); the result is the CFG-combined model output in
    `parameterization` (see the module doc for the conversion). With `tiles = (tile, stride)` in latent pixels each
    call is split into tiles, the condition latent cropped per tile by the control, outputs gaussian-blended.
    """

    def __init__(self, guider, model_sampling, parameterization: str, *, cfg: float, rescale_cfg: bool,
                 rescale_any_cfg: bool, tiles, model_options: dict, seed):
        self.guider = guider
        self.model_sampling = model_sampling
        self.parameterization = parameterization
        self.cfg = float(cfg)
        self.rescale_cfg = bool(rescale_cfg)
        self.rescale_any_cfg = rescale_any_cfg
        self.tiles = tiles
        self.model_options = model_options
        self.seed = seed

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        t_value = float(t.reshape(-1)[0])
        scale = rescaled_cfg(self.cfg, t if t.is_floating_point() else int(t_value), self.rescale_cfg,
                             self.rescale_any_cfg)
        self.guider.set_cfg(float(scale))
        sigma = host_sigma(self.model_sampling, t_value).to(x.device)
        if self.tiles is None:
            return self._call(x, sigma, t_value, None)
        return tiled_model_call(lambda x_tile, window: self._call(x_tile, sigma, t_value, window), x, *self.tiles)

    def _call(self, x, sigma, t_value, window):
        comfy.model_management.throw_exception_if_processing_interrupted()
        options = dict(self.model_options)
        transformer_options = dict(options.get("transformer_options", {}))
        transformer_options[MODEL_TIMESTEP_KEY] = t_value
        if window is not None:
            transformer_options[TILE_KEY] = window
        use_sdpa_on_cpu(transformer_options, x.device)
        options["transformer_options"] = transformer_options

        def denoise(x_host, sigmas):
            return self.guider(x_host, sigmas, model_options=options, seed=self.seed).float()

        return output_from_denoised(denoise, x, sigma.expand(x.shape[0]), self.parameterization)


class OfficialRun(comfy.samplers.Sampler):
    """The Sampler CFGGuider.sample() runs: hands the guider to `run(guider, extra_args, callback, noise)`."""

    def __init__(self, run):
        self.run = run

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        return self.run(model_wrap, extra_args, callback, noise)
