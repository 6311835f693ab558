"""edm_*: the k-diffusion solvers run on a DDPM-trained (eps or v) model, as DiffBIR v2.1 does.

Schedule (`schedule.edm_sigmas`): timesteps `linspace(999, 0, steps, endpoint=False)` as int,
alphas_cumprod at the first step forced to 1e-8 for every version (sigma_max = 1e4),
`sigma = sqrt((1 - ac) / ac)`, plus a final sigma = 0 (timestep 0); float32 like the official
buffers. Start: `x = x_T * sqrt(1 + sigma_0^2)`.

`EDMDenoiser` turns the model function (eps or v at a model timestep) into k-diffusion's
x0-denoiser D(x, sigma) (`parameterization.edm_coefficients`):
  eps: c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1)
  v:   c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1), c_in = 1 / sqrt(sigma^2 + 1)
  D = model(x * c_in, t) * c_out + x * c_skip, with t the timestep of the grid sigma nearest
  to sigma (the official code searches its own sampling grid, the appended 0 included, so
  sub-step sigmas such as dpm_2's midpoint are mapped to a neighbouring grid timestep).
CFG is applied on D per branch (`uncond_D + s * (cond_D - uncond_D)`) as officially, using the
model function's `cfg_parts` when it has one (the reference `CLDMDenoiser` does); cond/uncond still run as
one batch. The schedule of a run is its `plans.SamplerPlan` (`plan_edm`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..schedule import DiffusionSchedule, edm_sigmas, edm_timesteps
from .guidance import posterior_c1
from .k_solvers import SOLVERS
from .options import OFFICIAL_DEFAULTS, split_options
from .parameterization import check_parameterization, edm_coefficients
from .plans import SamplerPlan, plan_for


@dataclass(frozen=True)
class EDMSchedule:
    sigmas: torch.Tensor  # (steps + 1,) float32, descending, last 0
    timesteps: torch.Tensor  # (steps + 1,) int64, the model timestep of each sigma

    def to(self, device) -> EDMSchedule:
        return EDMSchedule(self.sigmas.to(device), self.timesteps.to(device))


def _check_steps(steps) -> int:
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"EDM samplers need at least 1 step (got {steps})")
    return steps


def edm_schedule(diffusion: DiffusionSchedule, steps: int, device=None) -> EDMSchedule:
    steps = _check_steps(steps)
    ac = diffusion.alphas_cumprod
    return EDMSchedule(
        sigmas=torch.tensor(edm_sigmas(ac, steps), dtype=torch.float32, device=device),
        timesteps=torch.tensor(edm_timesteps(steps, len(ac)), dtype=torch.long, device=device),
    )


def plan_edm(name: str, diffusion: DiffusionSchedule, steps: int) -> SamplerPlan:
    """The EDM schedule of sampler `name` (CPU); its model timesteps, one per step, noisiest first (the final sigma
    = 0 left out)."""
    sched = edm_schedule(diffusion, steps)
    return SamplerPlan(name, diffusion, int(steps), tuple(float(t) for t in sched.timesteps[:-1]), sched)


class EDMDenoiser:
    """x0-denoiser D(x, sigma) over a model function returning eps or v (see module doc)."""

    def __init__(self, denoise_fn, parameterization: str, schedule: EDMSchedule, guidance=None, noise=None):
        check_parameterization(parameterization)
        self.denoise_fn = denoise_fn
        self.parameterization = parameterization
        self.schedule = schedule
        self.guidance = guidance
        self.noise = noise

    def grid_index(self, sigma: torch.Tensor) -> torch.Tensor:
        sigmas = self.schedule.sigmas.to(sigma.device)
        return (sigma - sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in = edm_coefficients(sigma, self.parameterization)
        index = self.grid_index(sigma)
        t = self.schedule.timesteps.to(x.device)[index]
        c_in, c_out, c_skip = (c[(...,) + (None,) * (x.ndim - 1)] for c in (c_in, c_out, c_skip))
        parts = getattr(self.denoise_fn, "cfg_parts", None)
        if parts is None:
            denoised = self.denoise_fn(x * c_in, t) * c_out + x * c_skip
        else:
            out_cond, out_uncond, scale = parts(x * c_in, t)
            denoised = out_cond * c_out + x * c_skip
            if out_uncond is not None:
                d_uncond = out_uncond * c_out + x * c_skip
                denoised = d_uncond + scale * (denoised - d_uncond)
        if self.guidance is not None and self.guidance.active(int(t[0])):
            i = int(index[0])
            sigmas = self.schedule.sigmas
            s_next = sigmas[min(i + 1, len(sigmas) - 1)].to(sigma)
            c1 = posterior_c1(1.0 / (1.0 + sigma[0] ** 2), 1.0 / (1.0 + s_next**2))
            denoised = self.guidance(denoised, int(t[0]), c1, self.noise)
        return denoised


def make_edm_sampler(kind: str):
    """The common-signature sampler for `edm_<kind>` (kind: a key of k_solvers.SOLVERS)."""
    solver, reads = SOLVERS[kind]
    name = f"edm_{kind}"

    def sample(denoise_fn, x_T: torch.Tensor, diffusion: DiffusionSchedule, steps: int, noise, callback=None,
               guidance=None, plan: SamplerPlan | None = None, **options) -> torch.Tensor:
        settings = {**{k: OFFICIAL_DEFAULTS[k] for k in reads}, **split_options(name, options, reads)}
        sched = plan_for(name, diffusion, steps, plan, functools.partial(plan_edm, name)).tables.to(x_T.device)
        model = EDMDenoiser(denoise_fn, diffusion.parameterization, sched, guidance, noise)
        x = x_T * torch.sqrt(1.0 + sched.sigmas[0] ** 2.0)
        return solver(model, x, sched.sigmas, callback=callback, noise=noise, **settings)

    sample.__name__ = f"sample_{name}"
    sample.__doc__ = f"{name}: k-diffusion `{solver.__name__}` over the official EDM grid (reads {reads})."
    return sample
