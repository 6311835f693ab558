"""DiffBIR sampling in plain torch: the official samplers, CFG, tiling, guidance and the stage-2 pipeline.

Modules, one concept each:
  noise       injectable noise sources (seeded CPU generator, recorded replay, Brownian tree)
  options     the official sampler settings and which sampler reads which
  plans       SamplerPlan: one run's grid and tables, computed once, and a sampler's check of a given plan
  denoiser    ControlNet + UNet model function: CFG (one batch), rescale_cfg, strength, tiling
  tiled       tiled model calls and tiled VAE encode/decode (gaussian blending)
  spaced      respaced ancestral DDPM (v1/v2/v2.1)
  ddim        DDIM, eta 0 (v2.1)
  dpm_solver  DPM-Solver++ multistep order 2 over the clipped discrete VP schedule (v2.1)
  k_solvers   the eleven k-diffusion solvers over an x0-denoiser (ComfyUI KSAMPLER signature)
  edm         EDM grid and the eps/v -> x0 denoiser wrapping of the k-diffusion solvers
  registry    SAMPLERS: all fourteen names behind one signature, and each one's plan (make_plan, grid)
  guidance    restoration guidance (MSE / weighted MSE, latent / rgb, v1 / v2 update rules)
  ksampler    adapters to ComfyUI's KSAMPLER function signature
  pipeline    apply_cldm (v2.1/main Pipeline.apply_cldm), its start point, and run_stage2_v2 (v2.0.0)

The names below are the public API a host (the ComfyUI nodes) builds a stage-2 run from.
"""

from .denoiser import rescaled_cfg, rescales_any_cfg
from .guidance import LOSSES, SPACES, RestorationGuidance
from .k_solvers import SOLVERS
from .ksampler import ksampler_function
from .noise import (NOISE_MODES, FrameNoise, GeneratorNoise, GlobalNoise, NoiseSource, RecordedNoise, batch_noise,
                    frame_seed)
from .options import OFFICIAL_DEFAULTS
from .pipeline import ALL_START_POINTS, BETTER_START, START_POINTS, start_latent
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
