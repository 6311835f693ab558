"""Adapters between the DiffBIR samplers and ComfyUI's KSAMPLER function signature (no ComfyUI import).

ComfyUI runs a sampler function as

    sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **extra_options)

with `model(x, sigma, **extra_args)` returning the denoised x0 (CFG already applied by the
host) for x = x0 + sigma * eps at noise level sigma, `x` the start latent already scaled by
sigmas[0], and the result the final x0. The node layer wraps `ksampler_function(name)` as
`comfy.samplers.KSAMPLER(fn, extra_options={...})`.

Mapping, per family:

* edm_*: the k-diffusion solvers in `k_solvers` ARE KSAMPLER functions; `ksampler_function`
  only binds the official settings (s_churn, s_tmin, s_tmax, s_noise, eta, order) the
  solver reads. The host's sigma schedule is used as given (to reproduce DiffBIR exactly,
  pass `edm.edm_schedule(...).sigmas`; the host maps sigma to its own timestep).
* spaced / ddim / dpm++_m2 (DDPM family, written over an eps/v model at a timestep): wrapped
  by `ddpm_ksampler`. The number of steps is len(sigmas) - 1 and the sampler uses its own
  official grid for that many steps (the host's sigma values are not used, only sigmas[0] to
  undo the start scaling: x_T = x / sqrt(1 + sigmas[0]^2)). The x0-denoiser is turned into
  the v-prediction the samplers understand: for VP latent x at timestep t with
  ac = alphas_cumprod(t) (log-sigma interpolated between integer timesteps, as ComfyUI does),
  sigma = sqrt((1 - ac) / ac) clamped to the host's sigma_max, then v from D = model(x sqrt(1 + sigma^2), sigma)
  by `parameterization.output_from_denoised` (the DiffBIR Sampler's conversion too).
  The result is exact for any model parameterisation, and stays finite at a zero-terminal-SNR
  t = 999 (eps itself would be undefined there). `alphas_cumprod` (the training schedule of
  the model, 1000 values) must be passed in extra_options; the noise source defaults to a
  generator seeded with extra_args["seed"] when the host provides one.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..schedule import DiffusionSchedule
from .k_solvers import SOLVERS, _source
from .options import OFFICIAL_DEFAULTS
from .parameterization import output_from_denoised
from .registry import DDPM_FAMILY, EDM_FAMILY, get_sampler


class X0ToV:
    """denoise_fn(x_vp, t) -> v for a DDPM-family sampler, from a k-diffusion x0-denoiser (see module doc)."""

    def __init__(self, model, alphas_cumprod: np.ndarray, sigma_max: float, extra_args: dict | None = None):
        self.model = model
        self.extra_args = extra_args or {}
        with np.errstate(divide="ignore"):
            self.log_sigmas = torch.tensor(0.5 * np.log((1 - alphas_cumprod) / alphas_cumprod), dtype=torch.float32)
        self.sigma_max = float(sigma_max)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float().clamp(0, len(self.log_sigmas) - 1).cpu()
        low = t.floor().long()
        high = (low + 1).clamp(max=len(self.log_sigmas) - 1)
        w = t - low
        # where w == 0 take the table value itself: 0 * inf would be nan at a zero-terminal-SNR t = 999
        log_sigma = torch.where(w > 0, (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high], self.log_sigmas[low])
        return log_sigma.exp().clamp(max=self.sigma_max)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(torch.as_tensor(t).reshape(-1).expand(x.shape[0])).to(x.device, x.dtype)
        return output_from_denoised(lambda x_ve, s: self.model(x_ve, s, **self.extra_args), x, sigma, "v")


def ddpm_ksampler(name: str):
    """KSAMPLER-signature function running the DDPM-family sampler `name` (spaced, ddim, dpm++_m2)."""
    if name not in DDPM_FAMILY:
        raise ValueError(f"{name!r} is not one of the DDPM-family samplers {DDPM_FAMILY}")
    run = get_sampler(name)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, alphas_cumprod=None, noise=None,
               guidance=None, **options):
        if alphas_cumprod is None:
            raise ValueError(f"{name}: pass the model's training alphas_cumprod in extra_options")
        extra_args = {} if extra_args is None else extra_args
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy()
        diffusion = DiffusionSchedule.from_alphas_cumprod(ac, parameterization="v")
        sigma_max = float(sigmas[0])
        denoise_fn = X0ToV(model, diffusion.alphas_cumprod, sigma_max, extra_args)
        x_T = x / (1.0 + sigma_max**2) ** 0.5
        host_cb = None
        if callback is not None:
            def host_cb(d):
                callback({"x": d["x"], "i": d["i"], "sigma": sigmas[min(d["i"], len(sigmas) - 1)],
                          "sigma_hat": sigmas[min(d["i"], len(sigmas) - 1)], "denoised": d["denoised"]})
        return run(denoise_fn, x_T, diffusion, len(sigmas) - 1, _source(noise, extra_args), callback=host_cb,
                   guidance=guidance, **options)

    sample.__name__ = f"sample_{name.replace('+', 'p')}"
    return sample


def ksampler_function(name: str, **settings):
    """The KSAMPLER-signature function for DiffBIR sampler `name`, with official settings bound."""
    if name in EDM_FAMILY:
        solver, reads = SOLVERS[name[len("edm_"):]]
        unknown = set(settings) - set(OFFICIAL_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}")
        bound = {**{k: OFFICIAL_DEFAULTS[k] for k in reads}, **{k: v for k, v in settings.items() if k in reads}}
        return functools.partial(solver, **bound)
    if name in DDPM_FAMILY:
        return functools.partial(ddpm_ksampler(name), **settings)
    raise ValueError(f"unknown sampler {name!r}")
