"""The sampling plan of one run: a sampler's official grid and tables, computed once.

A `SamplerPlan` is data: the sampler it was made for, the diffusion and step count it was made from, the model
timesteps the sampler evaluates (one per step, noisiest first; fractional for dpm++_m2) and the sampler's own
tables (spaced: `schedule.SpacedTables`; ddim: `schedule.DDIMTables`; dpm++_m2: `dpm_solver.DPMSolverTables`;
edm_*: `edm.EDMSchedule`), all on the CPU. `registry.make_plan(name, diffusion, steps)` makes one; every sampler
takes it as `plan=` and runs on it instead of computing its own, so a host that needs the grid before the run
(ComfyUI's sigmas) and the sampler use the same one. A plan made for another sampler, diffusion or step count is
refused (`plan_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..schedule import DiffusionSchedule


@dataclass(frozen=True, eq=False)
class SamplerPlan:
    sampler: str  # the official sampler name (a key of registry.SAMPLERS)
    diffusion: DiffusionSchedule = field(repr=False)
    steps: int
    timesteps: tuple[float, ...]  # model timestep of each step, noisiest first
    tables: object = field(repr=False)  # the sampler's own tables (see the module doc)


def same_diffusion(a: DiffusionSchedule, b: DiffusionSchedule) -> bool:
    return a is b or (a.parameterization == b.parameterization and np.array_equal(a.betas, b.betas))


def plan_for(name: str, diffusion: DiffusionSchedule, steps: int, plan: SamplerPlan | None,
             make: Callable[[DiffusionSchedule, int], SamplerPlan]) -> SamplerPlan:
    """The plan sampler `name` runs on: `plan` when it was made for this sampler, diffusion and step count (else an
    error), or a new one from `make(diffusion, steps)` when `plan` is None."""
    if plan is None:
        return make(diffusion, steps)
    if not isinstance(plan, SamplerPlan):
        raise TypeError(f"{name}: plan must be a SamplerPlan (from make_plan), got {type(plan).__name__}")
    if plan.sampler != name or plan.steps != int(steps):
        raise ValueError(f"{name} with {int(steps)} steps was given the plan of {plan.sampler} with {plan.steps} "
                         f"steps; pass make_plan({name!r}, diffusion, {int(steps)}) or no plan")
    if not same_diffusion(plan.diffusion, diffusion):
        raise ValueError(f"{name}: the plan was made for another diffusion schedule than the run's (other betas or "
                         "parameterization); make the plan from the run's diffusion or pass no plan")
    return plan
