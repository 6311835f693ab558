"""The official solvers as ComfyUI KSAMPLERs: the stock sampler lists and the DiffBIR Sampler Select node's SAMPLER.

The solvers are registered as ``diffbir_<name>`` (``++`` -> ``pp``) for the stock KSamplerSelect / SamplerCustom /
KSampler and returned by "DiffBIR Sampler Select". As KSAMPLERs they get ComfyUI's sigmas: the solver maths and
the noise order (the sampler's draws continue the seeded CPU stream after the stock initial noise, as officially
one stream) are the official ones; the EDM solvers run on the host's sigmas instead of the official EDM grid, and
spaced / ddim / dpm++_m2 run their own official grid for len(sigmas) - 1 steps (only the step count is taken from
the sigmas; they refuse to start part-way, e.g. denoise < 1). The official grids come from the DiffBIR Sampler
node. The pack registers them when ComfyUI loads it (the extension's node list), never on import.
"""

from __future__ import annotations

import logging

import comfy.samplers
import torch

from diffbir_core.sampling import DDPM_FAMILY, SAMPLER_NAMES, GeneratorNoise, NoiseSource, ksampler_function

from .model_sampling import host_diffusion, model_sampling_kind

log = logging.getLogger("comfyui-diffbir")


def ksampler_name(official: str) -> str:
    """The ComfyUI sampler name of an official sampler: edm_dpm++_3m_sde -> diffbir_edm_dpmpp_3m_sde."""
    return "diffbir_" + official.replace("++", "pp")


KSAMPLER_NAMES = {ksampler_name(name): name for name in SAMPLER_NAMES}


def _model_patcher_of(model):
    """The ModelPatcher behind the model a KSAMPLER function gets (KSamplerX0Inpaint -> CFGGuider)."""
    for _ in range(4):
        patcher = getattr(model, "model_patcher", None)
        if patcher is not None:
            return patcher
        model = getattr(model, "inner_model", None)
        if model is None:
            break
    raise ValueError("DiffBIR KSAMPLER: cannot find the MODEL behind the sampler's model function")


def _continuing_stream(seed, x: torch.Tensor) -> NoiseSource | None:
    """The seeded CPU stream after the host's initial noise: stock noise is the first randn(shape) of that seed."""
    if seed is None:
        return None
    source = GeneratorNoise(int(seed))
    source.randn(x.shape)
    return source


def make_ksampler_function(official: str, **settings):
    """The KSAMPLER function for `official` (see the module doc for what it preserves)."""
    core = ksampler_function(official, **settings)
    ddpm = official in DDPM_FAMILY

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra_args = {} if extra_args is None else extra_args
        options.setdefault("noise", _continuing_stream(extra_args.get("seed"), x))
        if ddpm:
            patcher = _model_patcher_of(model)
            ms = patcher.get_model_object("model_sampling")
            if float(sigmas[0]) < float(ms.sigma_max) * (1 - 1e-5):
                raise ValueError(
                    f"{ksampler_name(official)} always runs its full official grid from pure noise; it cannot "
                    "start part-way (denoise < 1, start_at_step > 0). Use a full schedule, or an edm sampler.")
            prediction, zsnr = model_sampling_kind(patcher)
            if prediction not in ("eps", "v"):
                raise ValueError(f"{ksampler_name(official)} needs a discrete eps- or v-prediction SD MODEL.")
            options["alphas_cumprod"] = host_diffusion(ms, prediction, zsnr).alphas_cumprod
        return core(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)

    sample.__name__ = f"sample_{ksampler_name(official)}"
    sample.__doc__ = f"DiffBIR's official {official} as a ComfyUI KSAMPLER function."
    return sample


def official_ksampler(official: str, **settings) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running DiffBIR's `official` sampler (settings: the official EDM extras)."""
    return comfy.samplers.KSAMPLER(make_ksampler_function(official, **settings))


def register_ksamplers() -> list[str]:
    """Add the diffbir_* samplers to ComfyUI's sampler lists (KSampler, KSamplerSelect); returns the new names.

    ComfyUI resolves a sampler name as ``comfy.k_diffusion.sampling.sample_<name>`` (``comfy.samplers.ksampler``)
    and lists ``comfy.samplers.KSAMPLER_NAMES`` / ``SAMPLER_NAMES`` (``KSampler.SAMPLERS`` is the same list), so a
    function is added there under that name and the names are appended in place. Idempotent; names already
    taken are left alone. Each uses the official default settings (the Select node exposes them).
    """
    import comfy.k_diffusion.sampling as k_sampling

    added = []
    for name, official in KSAMPLER_NAMES.items():
        attr = f"sample_{name}"
        if getattr(k_sampling, attr, None) is None:
            setattr(k_sampling, attr, make_ksampler_function(official))
        for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
            if name not in names:
                names.append(name)
                added.append(name)
    return sorted(set(added))


def register_ksamplers_or_warn() -> list[str]:
    """`register_ksamplers`, or a warning when this ComfyUI's sampler lists are not where they used to be (the
    nodes still work; only the stock lists miss our names)."""
    try:
        return register_ksamplers()
    except (AttributeError, ImportError, TypeError) as err:
        log.warning("DiffBIR: could not add the diffbir_* samplers to ComfyUI's sampler lists (%s); use the "
                    "'DiffBIR Sampler Select' node instead.", err)
        return []
