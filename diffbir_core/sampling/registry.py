"""All fourteen samplers under their official names, behind one signature.

    z0 = SAMPLERS[name](denoise_fn, x_T, diffusion, steps, noise, callback=None, guidance=None, **options)

* `denoise_fn(x, t)`: the model output (eps or v, per `diffusion.parameterization`) for the
  noisy latent x at model timestep t, a (batch,) tensor; CFG, control strength and tiling are
  the function's business (`denoiser.CLDMDenoiser`).
* `x_T`: the start latent at unit variance (pure noise, or q_sample(c_img, 999) for start
  point "cond"); the EDM samplers scale it by sqrt(1 + sigma_0^2) themselves.
* `diffusion`: `schedule.DiffusionSchedule` (betas + parameterization); `steps`: int. Each
  sampler derives its own official grid from these (schedules are data: `diffbir_core.schedule`).
* `noise`: a `noise.NoiseSource`; `callback(dict)` once per step with at least x, i, denoised;
  `guidance`: an optional `guidance.RestorationGuidance`.
* `grid(name, diffusion, steps)`: the model timesteps the sampler evaluates, one per step,
  noisiest first (fractional for dpm++_m2); hosts that run the sampler on their own machinery
  map these to their noise levels.
* `options`: the official settings s_churn, s_tmin, s_tmax, s_noise, eta, order (defaults are
  the official CLI defaults 0, 0, 300, 1, 1, 1); each sampler reads its own subset.
"""

from __future__ import annotations

from . import ddim, dpm_solver, edm, spaced
from .k_solvers import SOLVERS

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
_GRIDS = {"spaced": spaced.grid, "ddim": ddim.grid, "dpm++_m2": dpm_solver.grid,
          **{name: edm.grid for name in EDM_FAMILY}}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; supported: {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]


def sample(name: str, denoise_fn, x_T, diffusion, steps: int, noise, callback=None, guidance=None, **options):
    return get_sampler(name)(denoise_fn, x_T, diffusion, steps, noise, callback=callback, guidance=guidance, **options)


def grid(name: str, diffusion, steps: int) -> list[float]:
    """The official model timesteps of sampler `name` for `steps` steps (see the module doc)."""
    get_sampler(name)
    return _GRIDS[name](diffusion, steps)
