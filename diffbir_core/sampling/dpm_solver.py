"""dpm++_m2: DPM-Solver++ multistep, order 2, time-uniform grid, over DPM-Solver's discrete VP schedule.

As the official sampler (LuChengTHU's `dpm_solver_pytorch` with `NoiseScheduleVP("discrete")`,
`algorithm_type="dpmsolver++"`, `method="multistep"`, `order=2`, `skip_type="time_uniform"`,
`lower_order_final=True`, the library's default t range [1/N, 1]):

* log(alpha_n) = 0.5 * cumsum(log(1 - beta)) in float32, and the table is clipped where the
  half-log-SNR falls below -5.1 (for the zero-terminal-SNR v2.1 schedule this drops the last
  14 entries); the remaining N entries are placed at t = (n + 1) / N, so the time grid is
  STRETCHED over what remains: the model receives `(t - 1/N) * 1000` (fractional, ~999 at t=1)
  while alpha/sigma come from the clipped, stretched table at t, i.e. the timestep the model
  sees and the table entry used for the noise level can differ;
* the model output is converted to eps with that table (v: `alpha_t v + sigma_t x`) and to
  x0 = (x - sigma_t eps) / alpha_t; first step first-order, then second-order multistep,
  the last step first-order again when steps < 10; no random draws.

The schedule and time grid of a run are its `plans.SamplerPlan` (`plan_dpmpp_m2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..schedule import DiffusionSchedule
from .guidance import posterior_c1
from .options import split_options
from .plans import SamplerPlan, plan_for

CLIPPED_LAMBDA = -5.1
ORDER = 2


class DiscreteVPSchedule:
    """DPM-Solver's `NoiseScheduleVP("discrete", betas)` (float32, clipped, stretched)."""

    def __init__(self, betas: np.ndarray, clipped_lambda: float = CLIPPED_LAMBDA):
        betas = torch.tensor(betas, dtype=torch.float32)
        log_alphas = 0.5 * torch.log(1 - betas).cumsum(dim=0)
        log_sigmas = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))
        lambs = log_alphas - log_sigmas
        drop = int(torch.searchsorted(torch.flip(lambs, [0]), torch.tensor([clipped_lambda]))[0])
        if drop > 0:
            log_alphas = log_alphas[:-drop]
        self.dropped = drop
        self.log_alpha_array = log_alphas
        self.total_N = log_alphas.shape[0]
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1)[1:]
        self.T = 1.0

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation of log(alpha) over the stretched grid (extrapolated outside)."""
        xp, yp = self.t_array.to(t.device), self.log_alpha_array.to(t.device)
        t = t.reshape(-1)
        k = (torch.searchsorted(xp, t) - 1).clamp(0, xp.shape[0] - 2)
        x0, x1, y0, y1 = xp[k], xp[k + 1], yp[k], yp[k + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def marginal_alpha(self, t):
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        lmc = self.marginal_log_mean_coeff(t)
        return lmc - 0.5 * torch.log(1.0 - torch.exp(2.0 * lmc))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous t in [1/N, 1] -> the model's timestep input, (t - 1/N) * 1000."""
        return (t - 1.0 / self.total_N) * 1000.0

    def time_steps(self, steps: int, device=None) -> torch.Tensor:
        return torch.linspace(self.T, 1.0 / self.total_N, steps + 1).to(device)


def _check_steps(steps) -> int:
    steps = int(steps)
    if steps < ORDER:
        raise ValueError(f"dpm++_m2 needs at least {ORDER} steps (got {steps})")
    return steps


@dataclass(frozen=True)
class DPMSolverTables:
    """The plan tables of dpm++_m2: the clipped, stretched schedule and the continuous times t_0 = 1 > ... > t_steps
    = 1/N (CPU, float32)."""

    schedule: DiscreteVPSchedule
    times: torch.Tensor  # (steps + 1,)


def plan_dpmpp_m2(diffusion: DiffusionSchedule, steps: int) -> SamplerPlan:
    """The continuous time grid; the (fractional) model timesteps dpm++_m2 evaluates, one per step, noisiest first."""
    steps = _check_steps(steps)
    ns = DiscreteVPSchedule(diffusion.betas)
    times = ns.time_steps(steps)
    return SamplerPlan("dpm++_m2", diffusion, steps, tuple(float(t) for t in ns.model_time(times)[:steps]),
                       DPMSolverTables(ns, times))


def sample_dpmpp_m2(denoise_fn, x_T: torch.Tensor, diffusion: DiffusionSchedule, steps: int, noise, callback=None,
                    guidance=None, plan: SamplerPlan | None = None, **options) -> torch.Tensor:
    split_options("dpm++_m2", options, ())
    plan = plan_for("dpm++_m2", diffusion, steps, plan, plan_dpmpp_m2)
    steps, ns = plan.steps, plan.tables.schedule
    timesteps = plan.tables.times.to(x_T.device)
    param = diffusion.parameterization

    def data_prediction(x, step):
        t = timesteps[step]
        t_batch = t.expand(x.shape[0])
        t_in = ns.model_time(t_batch)
        shape = (-1, *([1] * (x.ndim - 1)))

        def to_eps(out):
            if param != "v":
                return out
            return ns.marginal_alpha(t_batch).view(shape) * out + ns.marginal_std(t_batch).view(shape) * x

        parts = getattr(denoise_fn, "cfg_parts", None)
        if parts is None:
            eps = to_eps(denoise_fn(x, t_in))
        else:  # CFG on eps, each branch converted first, as the official model wrapper does
            out_cond, out_uncond, scale = parts(x, t_in)
            eps = to_eps(out_cond)
            if out_uncond is not None:
                eps_uncond = to_eps(out_uncond)
                eps = eps_uncond + scale * (eps - eps_uncond)
        alpha_t, sigma_t = ns.marginal_alpha(t), ns.marginal_std(t)
        x0 = (x - sigma_t * eps) / alpha_t
        model_t = float(t_in[0])
        if guidance is not None and guidance.active(model_t):
            # data_prediction runs for steps 0 .. steps-1, so a next grid time always exists
            c1 = posterior_c1(alpha_t**2, ns.marginal_alpha(timesteps[step + 1]) ** 2)
            x0 = guidance(x0, model_t, c1, noise)
        if callback is not None:
            callback({"x": x, "i": step, "t": model_t, "denoised": x0})
        return x0

    def first_update(x, s, t, model_s):
        lambda_s, lambda_t = ns.marginal_lambda(s), ns.marginal_lambda(t)
        h = lambda_t - lambda_s
        sigma_s, sigma_t = ns.marginal_std(s), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        return sigma_t / sigma_s * x - alpha_t * torch.expm1(-h) * model_s

    def second_update(x, models, times, t):
        m1, m0 = models
        t1, t0 = times
        lambda_1, lambda_0, lambda_t = ns.marginal_lambda(t1), ns.marginal_lambda(t0), ns.marginal_lambda(t)
        sigma_0, sigma_t = ns.marginal_std(t0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h_0, h = lambda_0 - lambda_1, lambda_t - lambda_0
        d1 = (1.0 / (h_0 / h)) * (m0 - m1)
        phi_1 = torch.expm1(-h)
        return (sigma_t / sigma_0) * x - (alpha_t * phi_1) * m0 - 0.5 * (alpha_t * phi_1) * d1

    x = x_T
    times = [timesteps[0]]
    models = [data_prediction(x, 0)]
    # step 1: first order (the multistep warm-up)
    x = first_update(x, times[-1], timesteps[1], models[-1])
    times.append(timesteps[1])
    models.append(data_prediction(x, 1))
    for step in range(ORDER, steps + 1):
        t = timesteps[step]
        step_order = min(ORDER, steps + 1 - step) if steps < 10 else ORDER
        if step_order == 1:
            x = first_update(x, times[-1], t, models[-1])
        else:
            x = second_update(x, models, times, t)
        times = [times[1], t]
        models = [models[1], models[1]]
        if step < steps:
            models[-1] = data_prediction(x, step)
    return x
