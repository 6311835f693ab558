"""The official sampler settings and how each sampler family reads them.

`Pipeline.apply_cldm` passes all six settings to every sampler (CLI defaults below) and each
solver reads only its own subset (spaced, ddim and dpm++_m2 read none; DDIM's eta is fixed at
0 by the official pipeline whatever --eta says). The common sampler signature accepts all six
for every sampler, ignores the ones a sampler does not read, and refuses any other keyword.
"""

from __future__ import annotations

import math

OFFICIAL_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 300.0, "s_noise": 1.0, "eta": 1.0, "order": 1}
K_DIFFUSION_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, "eta": 1.0, "order": 4}


def split_options(name: str, options: dict, reads: tuple[str, ...]) -> dict:
    """The subset of `options` that sampler `name` reads; unknown keywords raise TypeError."""
    unknown = set(options) - set(OFFICIAL_DEFAULTS)
    if unknown:
        raise TypeError(f"sampler {name!r} got unknown option(s) {sorted(unknown)}; known: {sorted(OFFICIAL_DEFAULTS)}")
    return {k: options[k] for k in reads if k in options}
