"""What a MODEL samples with, and the official schedule behind it.

DiffBIR v2.1 needs a zero-terminal-SNR v-prediction SD 2.1, v1/v2 the eps SD 2.1-base. ComfyUI describes a MODEL's
sampling by its ``model_sampling`` object (discrete eps / v, zsnr flag, sigma table); this module reads it as
(prediction, zero-terminal SNR), patches a MODEL to v + zsnr with ComfyUI's own ModelSamplingDiscrete node code,
and gives the official training schedule (``DiffusionSchedule``) and the MODEL's sigma at a model timestep, the
bridge between the core samplers' timesteps and ComfyUI's sigmas.
"""

from __future__ import annotations

import comfy.model_sampling
import torch

from diffbir_core.schedule import DiffusionSchedule


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


def host_diffusion(model_sampling, prediction: str, zsnr: bool) -> DiffusionSchedule:
    """The official training schedule behind a MODEL's discrete sampling (see
    ``DiffusionSchedule.from_training_sigmas``): SD 2.1 MODELs name ComfyUI's scaled-linear schedule."""
    sigmas = model_sampling.sigmas.detach().double().cpu().numpy()
    n = int(getattr(model_sampling, "num_timesteps", len(sigmas)))
    start, end = getattr(model_sampling, "linear_start", None), getattr(model_sampling, "linear_end", None)
    if n != len(sigmas):  # not the table of a plain scaled-linear schedule
        start = end = None
    return DiffusionSchedule.from_training_sigmas(sigmas, prediction, zsnr, start, end)


def model_diffusion(model, node: str = "DiffBIR Sampler") -> DiffusionSchedule:
    """The schedule of a MODEL (ModelPatcher); refuses MODELs that are not discrete eps / v SD models."""
    prediction, zsnr = model_sampling_kind(model)
    if prediction not in ("eps", "v"):
        raise ValueError(
            f"{node}: the MODEL does not sample as a discrete eps- or v-prediction SD model (DiffBIR needs "
            "SD 2.1). Connect the SD 2.1 MODEL (for v2.1 the MODEL output of LAControlNet Apply) without other "
            "ModelSampling patches.")
    return host_diffusion(model.get_model_object("model_sampling"), prediction, zsnr)


def host_sigma(model_sampling, t: float) -> torch.Tensor:
    """The MODEL's sigma at model timestep t (its table at integers, its log-sigma interpolation between)."""
    if float(t).is_integer():
        return model_sampling.sigmas[int(t)].detach().float().reshape(())
    return model_sampling.sigma(torch.tensor([float(t)], dtype=torch.float32)).float().reshape(())


def host_sigmas(model_sampling, timesteps) -> torch.Tensor:
    """The MODEL's sigmas at a sampler's grid of model timesteps, then 0: the run's schedule as ComfyUI sees it."""
    return torch.stack([host_sigma(model_sampling, t) for t in timesteps] + [torch.zeros(())])
