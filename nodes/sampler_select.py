"""DiffBIR Sampler Select: one of DiffBIR's official samplers as a SAMPLER for the stock custom-sampling nodes."""

from __future__ import annotations

from comfy_api.latest import io

from .host import schema
from .host.ksamplers import official_ksampler
from .host.solver_inputs import (check_sampler_name, sampler_name_input, setting_inputs, settings_for,
                                 solver_settings)

NODE = "DiffBIR Sampler Select"


class DiffBIRSamplerSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRSamplerSelect",
            display_name=NODE,
            category=schema.SAMPLING,
            search_aliases=["diffbir sampler", "ksampler select", "sampler custom", "edm sampler"],
            description=(
                "One of DiffBIR's official samplers as a SAMPLER for the stock SamplerCustom / SamplerCustomAdvanced. "
                "They use the scheduler's sigmas: the edm_* solvers step on them (not on DiffBIR's EDM grid), spaced, "
                "ddim and dpm++_m2 run their own official grid with as many steps as the sigmas have. For the "
                "official grids use the DiffBIR Sampler node. (The same samplers appear as diffbir_* in the stock "
                "sampler lists, with the official default settings.)"),
            inputs=[sampler_name_input(), *setting_inputs(optional=False, advanced=False)],
            outputs=[io.Sampler.Output("sampler", display_name="sampler",
                                       tooltip="The sampler, for SamplerCustom's 'sampler' input.")],
        )

    @classmethod
    def execute(cls, sampler_name, s_churn, s_tmin, s_tmax, s_noise, eta, order) -> io.NodeOutput:
        check_sampler_name(NODE, sampler_name)
        settings = settings_for(sampler_name, solver_settings(NODE, {
            "s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise, "eta": eta, "order": order}))
        return io.NodeOutput(official_ksampler(sampler_name, **settings))
