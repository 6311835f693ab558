"""DiffBIR sampling in plain torch: the official samplers, their grids, noise, CFG scale, start point and guidance.

Everything here serves both stage-2 engines: the DiffBIR Sampler node (ComfyUI's UNet + our ControlNet, answering
the samplers' model calls through `nodes/host/model_function.py`) and the reference engine (`diffbir_core.reference`:
our own UNet, the official pipeline, the golden replay).

Modules, one concept each:
  noise       injectable noise sources (seeded CPU generator, recorded replay, Brownian tree)
  options     the official sampler settings and which sampler reads which
  plans       SamplerPlan: one run's grid and tables, computed once, and a sampler's check of a given plan
  cfg         the official rescaled CFG scale of one model call
  parameterization  eps / v model output <-> x0-denoiser D(x, sigma): the one conversion
  start       the start latent and the condition's noise augmentation, in the official draw order
  spaced      respaced ancestral DDPM (v1/v2/v2.1)
  ddim        DDIM, eta 0 (v2.1)
  dpm_solver  DPM-Solver++ multistep order 2 over the clipped discrete VP schedule (v2.1)
  k_solvers   the eleven k-diffusion solvers over an x0-denoiser (ComfyUI KSAMPLER signature)
  edm         EDM grid and the eps/v -> x0 denoiser wrapping of the k-diffusion solvers
  registry    SAMPLERS: all fourteen names behind one signature, and each one's plan (make_plan, grid)
  guidance    restoration guidance (MSE / weighted MSE, latent / rgb, v1 / v2 update rules), refused with tiles
  ksampler    adapters to ComfyUI's KSAMPLER function signature

The names below are the public API a host (the ComfyUI nodes) builds a stage-2 run from.
"""

from .cfg import rescaled_cfg, rescales_any_cfg
from .guidance import LOSSES, SPACES, RestorationGuidance, check_untiled
from .k_solvers import SOLVERS
from .ksampler import ksampler_function
from .noise import (NOISE_MODES, FrameNoise, GeneratorNoise, GlobalNoise, NoiseSource, RecordedNoise, batch_noise,
                    frame_seed)
from .options import OFFICIAL_DEFAULTS
from .start import ALL_START_POINTS, BETTER_START, START_POINTS, start_latent
from .plans import SamplerPlan
from .registry import DDPM_FAMILY, EDM_FAMILY, SAMPLER_NAMES, SAMPLERS, get_sampler, grid, make_plan, sample

__all__ = [
    "ALL_START_POINTS",
    "BETTER_START",
    "DDPM_FAMILY",
    "EDM_FAMILY",
    "LOSSES",
    "NOISE_MODES",
    "OFFICIAL_DEFAULTS",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SOLVERS",
    "SPACES",
    "START_POINTS",
    "FrameNoise",
    "GeneratorNoise",
    "GlobalNoise",
    "NoiseSource",
    "RecordedNoise",
    "RestorationGuidance",
    "SamplerPlan",
    "batch_noise",
    "check_untiled",
    "frame_seed",
    "get_sampler",
    "grid",
    "ksampler_function",
    "make_plan",
    "rescaled_cfg",
    "rescales_any_cfg",
    "sample",
    "start_latent",
]
