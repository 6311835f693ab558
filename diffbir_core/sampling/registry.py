"""All fourteen samplers under their official names, behind one signature.

    z0 = SAMPLERS[name](denoise_fn, x_T, diffusion, steps, noise, callback=None, guidance=None, plan=None,
                        **options)

* `denoise_fn(x, t)`: the model output (eps or v, per `diffusion.parameterization`) for the
  noisy latent x at model timestep t, a (batch,) tensor; CFG, control strength and tiling are
  the function's business (`denoiser.CLDMDenoiser`).
* `x_T`: the start latent at unit variance (pure noise, or q_sample(c_img, 999) for start
  point "cond"); the EDM samplers scale it by sqrt(1 + sigma_0^2) themselves.
* `diffusion`: `schedule.DiffusionSchedule` (betas + parameterization); `steps`: int. Each
  sampler runs on its official grid and tables for these (schedules are data: `diffbir_core.schedule`):
  the `plan` given, or one it makes itself when `plan` is None.
* `noise`: a `noise.NoiseSource`; `callback(dict)` once per step with at least x, i, denoised;
  `guidance`: an optional `guidance.RestorationGuidance`.
* `make_plan(name, diffusion, steps)`: the run's `plans.SamplerPlan`, computed once: `timesteps`,
  the model timesteps the sampler evaluates, one per step, noisiest first (fractional for
  dpm++_m2), which hosts that run the sampler on their own machinery map to their noise levels,
  and the sampler's own tables. Pass it as `plan=`; a sampler refuses a plan made for another
  sampler, diffusion or step count. `grid(name, diffusion, steps)` is `make_plan(...).timesteps`.
* `options`: the official settings s_churn, s_tmin, s_tmax, s_noise, eta, order (defaults are
  the official CLI defaults 0, 0, 300, 1, 1, 1); each sampler reads its own subset.
"""

from __future__ import annotations

import functools

from . import ddim, dpm_solver, edm, spaced
from .k_solvers import SOLVERS
from .plans import SamplerPlan

SAMPLERS = {
    "spaced": spaced.sample_spaced,
    "ddim": ddim.sample_ddim,
    "dpm++_m2": dpm_solver.sample_dpmpp_m2,
    **{f"edm_{kind}": edm.make_edm_sampler(kind) for kind in SOLVERS},
}
SAMPLER_NAMES = tuple(SAMPLERS)
DDPM_FAMILY = ("spaced", "ddim", "dpm++_m2")
EDM_FAMILY = tuple(n for n in SAMPLER_NAMES if n.startswith("edm_"))
BROWNIAN_SAMPLERS = ("edm_dpm++_sde", "edm_dpm++_2m_sde", "edm_dpm++_3m_sde")
_PLANS = {"spaced": spaced.plan_spaced, "ddim": ddim.plan_ddim, "dpm++_m2": dpm_solver.plan_dpmpp_m2,
          **{name: functools.partial(edm.plan_edm, name) for name in EDM_FAMILY}}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; supported: {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]


def sample(name: str, denoise_fn, x_T, diffusion, steps: int, noise, callback=None, guidance=None, plan=None,
           **options):
    return get_sampler(name)(denoise_fn, x_T, diffusion, steps, noise, callback=callback, guidance=guidance,
                             plan=plan, **options)


def make_plan(name: str, diffusion, steps: int) -> SamplerPlan:
    """The sampling plan of sampler `name` for `steps` steps: its official grid and tables (see the module doc)."""
    get_sampler(name)
    return _PLANS[name](diffusion, steps)


def grid(name: str, diffusion, steps: int) -> list[float]:
    """The official model timesteps of sampler `name` for `steps` steps (see the module doc)."""
    return list(make_plan(name, diffusion, steps).timesteps)
