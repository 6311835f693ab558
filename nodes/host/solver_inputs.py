"""The inputs that pick an official sampler and its settings: shared by DiffBIR Sampler and DiffBIR Sampler Select."""

from __future__ import annotations

from comfy_api.latest import io

from diffbir_core.sampling import EDM_FAMILY, OFFICIAL_DEFAULTS, SAMPLER_NAMES, SOLVERS

from .schema import ADVANCED

DEFAULT_SAMPLER = "edm_dpm++_3m_sde"  # official v2.1 CLI: edm_dpm++_3m_sde, 10 steps, cfg 6
SETTING_NAMES = ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order")


def sampler_name_input() -> io.Combo.Input:
    return io.Combo.Input(
        "sampler_name", options=list(SAMPLER_NAMES), default=DEFAULT_SAMPLER,
        tooltip="The official DiffBIR sampler, on its own official timestep grid. v2.1 default: edm_dpm++_3m_sde "
                "(10 steps, cfg 6). Paper (v2) recipe: spaced (50 steps, cfg 4). spaced/ddim/dpm++_m2 are the "
                "DDPM-family samplers; edm_* are the k-diffusion solvers on DiffBIR's EDM grid.")


def setting_inputs(optional: bool, advanced: bool) -> list[io.Input]:
    """The official EDM extras (s_churn, s_tmin, s_tmax, s_noise, eta, order), in that order."""
    flags = {"optional": optional, **(ADVANCED if advanced else {})}
    d = OFFICIAL_DEFAULTS
    return [
        io.Float.Input("s_churn", default=d["s_churn"], min=0.0, max=100.0, step=0.01,
                       tooltip="edm_euler / edm_heun / edm_dpm_2: churn (official default 0).", **flags),
        io.Float.Input("s_tmin", default=d["s_tmin"], min=0.0, max=10000.0, step=0.01,
                       tooltip="Churn applies for s_tmin <= sigma <= s_tmax (official 0).", **flags),
        io.Float.Input("s_tmax", default=d["s_tmax"], min=0.0, max=100000.0, step=0.01,
                       tooltip="See s_tmin (official 300).", **flags),
        io.Float.Input("s_noise", default=d["s_noise"], min=0.0, max=100.0, step=0.01,
                       tooltip="Noise multiplier of the churn, ancestral and SDE edm_* samplers (official 1).", **flags),
        io.Float.Input("eta", default=d["eta"], min=0.0, max=100.0, step=0.01,
                       tooltip="Ancestral / SDE edm_* samplers: amount of fresh noise (official 1; 0 makes them "
                               "deterministic).", **flags),
        io.Int.Input("order", default=d["order"], min=1, max=4,
                     tooltip="edm_lms: order of the linear multistep (official 1).", **flags),
    ]


def check_sampler_name(node: str, sampler_name: str) -> None:
    if sampler_name not in SAMPLER_NAMES:
        raise ValueError(f"{node}: unknown sampler_name {sampler_name!r}; choose one of {', '.join(SAMPLER_NAMES)}.")


def solver_settings(node: str, given: dict) -> dict:
    """All six official settings from a node's values of SETTING_NAMES: the official default for any not given,
    `order` as an int; a name that is not a setting is refused (TypeError naming the node)."""
    unknown = set(given) - set(SETTING_NAMES)
    if unknown:
        raise TypeError(f"{node}: unknown input(s) {sorted(unknown)}")
    values = {**OFFICIAL_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    values["order"] = int(values["order"])
    return values


def settings_for(sampler_name: str, settings: dict) -> dict:
    """The subset of `settings` (see `solver_settings`) that `sampler_name` reads (edm_* only)."""
    if sampler_name not in EDM_FAMILY:
        return {}
    reads = SOLVERS[sampler_name[len("edm_"):]][1]
    return {k: settings[k] for k in SETTING_NAMES if k in reads}
