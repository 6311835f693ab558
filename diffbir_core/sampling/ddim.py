"""ddim (v2.1): LDM DDIM with eta = 0 over the "uniform" grid shifted by +1.

Grid `range(0, 1000, 1000 // steps) + 1` (10 steps: 1, 101, ..., 901: 999 is never used),
`alphas_prev[0] = alphas_cumprod[0]` (so the last step does not land exactly on x0), v converted
to eps with `eps = sqrt(a_t) v + sqrt(1 - a_t) x`. The official pipeline fixes eta at 0 (the
--eta setting feeds only the EDM samplers) but still draws one `randn_like(x)` per step and
multiplies it by sigma = 0; the draw is kept so the noise stream matches. Note the official
grid can hold MORE steps than asked (7 steps: stride 142 gives 8 timesteps) and, for step
counts whose grid reaches t = 1000 (e.g. 3), fails; that case is refused with an error here
(`plan_ddim`: the grid and tables of a run, its `plans.SamplerPlan`).
"""

from __future__ import annotations

import torch

from ..schedule import DiffusionSchedule, ddim_tables, ddim_timesteps
from .guidance import posterior_c1
from .options import split_options
from .plans import SamplerPlan, plan_for

ETA = 0.0


def plan_ddim(diffusion: DiffusionSchedule, steps: int) -> SamplerPlan:
    """The DDIM tables; the model timesteps ddim visits, noisiest first. Refuses step counts the official code
    cannot run."""
    steps = int(steps)
    num_timesteps = len(diffusion.alphas_cumprod)
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"ddim needs 1..{num_timesteps} steps (got {steps})")
    ts = ddim_timesteps(steps, num_timesteps)
    if ts.max() >= num_timesteps:
        # e.g. 3 steps: stride 333 gives 0, 333, 666, 999 and +1 reaches t = 1000, where the
        # official code fails with an IndexError; refuse with the reason instead.
        raise ValueError(f"ddim with {steps} steps: the official uniform grid (stride {num_timesteps // steps}, +1) "
                         f"reaches t = {num_timesteps}, outside the schedule (the official code fails there); "
                         "choose another step count (e.g. 10, 20, 50)")
    tables = ddim_tables(diffusion.alphas_cumprod, steps, eta=ETA)
    return SamplerPlan("ddim", diffusion, steps, tuple(float(t) for t in tables.timesteps[::-1]), tables)


def sample_ddim(denoise_fn, x_T: torch.Tensor, diffusion: DiffusionSchedule, steps: int, noise, callback=None,
                guidance=None, plan: SamplerPlan | None = None, **options) -> torch.Tensor:
    split_options("ddim", options, ())
    tables = plan_for("ddim", diffusion, steps, plan, plan_ddim).tables
    f32 = lambda a: torch.tensor(a, dtype=torch.float32, device=x_T.device)
    alphas, alphas_prev, sigmas = f32(tables.ddim_alphas), f32(tables.ddim_alphas_prev), f32(tables.ddim_sigmas)
    sqrt_alphas, sqrt_one_minus = f32(tables.ddim_sqrt_alphas), f32(tables.ddim_sqrt_one_minus_alphas)
    x = x_T
    n = len(tables.timesteps)
    for i, step in enumerate(tables.timesteps[::-1].tolist()):
        index = n - 1 - i
        model_t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        out = denoise_fn(x, model_t)
        e_t = out if diffusion.parameterization == "eps" else sqrt_alphas[index] * out + sqrt_one_minus[index] * x
        a_t, a_prev, sigma_t = alphas[index], alphas_prev[index], sigmas[index]
        x0 = (x - sqrt_one_minus[index] * e_t) / a_t.sqrt()
        if guidance is not None and guidance.active(step):
            x0 = guidance(x0, step, posterior_c1(a_t, a_prev), noise)
            e_t = (x - a_t.sqrt() * x0) / sqrt_one_minus[index]
        if callback is not None:
            callback({"x": x, "i": i, "t": step, "denoised": x0})
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x = a_prev.sqrt() * x0 + dir_xt + sigma_t * noise.randn_like(x)
    return x
