"""Finding and replacing the DiffBIR control inside ComfyUI CONDITIONING lists.

A CONDITIONING is a list of [tensor, options]; options["control"] is the head of a chain of ControlNets linked
by ``previous_controlnet``. LAControlNet Apply puts a DiffBIRControl into that chain; the DiffBIR Sampler reads
its condition latent and, for noise_aug, gives the run copies whose control carries the augmented latent.
"""

from __future__ import annotations

import torch

from .control import DiffBIRControl


def _controls(control):
    while control is not None:
        yield control
        control = getattr(control, "previous_controlnet", None)


def find_control(conditioning) -> DiffBIRControl | None:
    """The first DiffBIRControl in any entry's control chain, or None."""
    for _, options in conditioning or []:
        for control in _controls(options.get("control")):
            if isinstance(control, DiffBIRControl):
                return control
    return None


def replace_condition(conditionings, latent: torch.Tensor):
    """Copies of the conditionings whose DiffBIR controls carry `latent` (shared objects stay shared)."""
    memo = {}

    def rebuild(control):
        if control is None:
            return None
        if id(control) in memo:
            return memo[id(control)]
        prev = rebuild(control.previous_controlnet)
        if isinstance(control, DiffBIRControl):
            new = control.copy().set_condition(latent, control.condition()[1], control.strength,
                                               control.timestep_percent_range, control.condition_pixels())
        elif prev is not control.previous_controlnet:
            new = control.copy()
        else:
            new = control
        if new is not control:
            new.set_previous_controlnet(prev)
        memo[id(control)] = new
        return new

    out = []
    for conditioning in conditionings:
        items = []
        for tensor, options in conditioning:
            options = options.copy()
            if "control" in options:
                options["control"] = rebuild(options["control"])
            items.append([tensor, options])
        out.append(items)
    return out
