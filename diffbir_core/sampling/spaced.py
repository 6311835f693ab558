"""spaced: respaced ancestral DDPM (IDDPM respacing, fixed-small variance), v1 / v2 / v2.1.

The grid is `schedule.space_timesteps(1000, steps)` (includes 999 and 0); the model receives
the ORIGINAL timestep while the coefficient tables are indexed by the respaced index
(steps - 1 ... 0). Tables are float64 and cast to float32 as the official buffers are.
One `noise.randn_like(x)` per step, the last one masked (index 0), as officially drawn.
The grid and tables are the run's `plans.SamplerPlan` (`plan_spaced`).
"""

from __future__ import annotations

import torch

from ..schedule import DiffusionSchedule, predict_x0, spaced_tables
from .options import split_options
from .plans import SamplerPlan, plan_for

_TABLES = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
           "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2")


def plan_spaced(diffusion: DiffusionSchedule, steps: int) -> SamplerPlan:
    """The respaced tables; the model timesteps the spaced sampler visits, noisiest first."""
    tables = spaced_tables(diffusion.alphas_cumprod, int(steps))
    return SamplerPlan("spaced", diffusion, int(steps), tuple(float(t) for t in tables.timesteps[::-1]), tables)


def sample_spaced(denoise_fn, x_T: torch.Tensor, diffusion: DiffusionSchedule, steps: int, noise, callback=None,
                  guidance=None, plan: SamplerPlan | None = None, **options) -> torch.Tensor:
    split_options("spaced", options, ())
    tables = plan_for("spaced", diffusion, steps, plan, plan_spaced).tables
    param = diffusion.parameterization
    if param == "eps" and diffusion.zero_terminal_snr:
        raise ValueError("spaced: eps-prediction is undefined on a zero-terminal-SNR schedule (x0 = inf at t=999); "
                         "use the v-prediction (v2.1) diffusion")
    tab = {k: torch.tensor(getattr(tables, k), dtype=torch.float32, device=x_T.device) for k in _TABLES}
    x = x_T
    n = len(tables.timesteps)
    for i, step in enumerate(tables.timesteps[::-1].tolist()):
        index = n - 1 - i
        model_t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        out = denoise_fn(x, model_t)
        if param == "v":
            x0 = predict_x0(x, out, tab["sqrt_alphas_cumprod"][index], tab["sqrt_one_minus_alphas_cumprod"][index], "v")
        else:
            x0 = tab["sqrt_recip_alphas_cumprod"][index] * x - tab["sqrt_recipm1_alphas_cumprod"][index] * out
        c1 = tab["posterior_mean_coef1"][index]
        if guidance is not None:
            x0 = guidance(x0, step, c1, noise)
        if callback is not None:
            callback({"x": x, "i": i, "t": step, "denoised": x0})
        mean = c1 * x0 + tab["posterior_mean_coef2"][index] * x
        eps = noise.randn_like(x)
        mask = 1.0 if index != 0 else 0.0
        x = mean + mask * torch.sqrt(tab["posterior_variance"][index]) * eps
    return x
