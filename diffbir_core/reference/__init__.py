"""The reference engine: the executable statement of the official DiffBIR algorithm, which the golden files replay.

What users run is the product path: ComfyUI's own SD 2.1 UNet (from the user's checkpoint) with our ControlNet
(`nodes/host/control.py`), driven by the DiffBIR Sampler node (`nodes/sampler.py`, model calls in
`nodes/host/model_function.py`). No node and no command-line restore calls this package. It states the official
stage 2 with our own networks (`diffbir_core.arch`: UNet, ControlNet, VAE) exactly as the official code drives
them, so that `python -m diffbir_core.reference.golden tests/golden/*.json` proves the algorithm against the official
outputs, and the goldens it derives for other samplers, tiles and options can be replayed through the nodes
(`python -m diffbir_cli golden`).

Both engines share one implementation of every piece of the algorithm outside the networks: the samplers, grids,
noise, CFG scale, start point and guidance (`diffbir_core.sampling`), the model-output conversion
(`sampling.parameterization`), the tile loops of tiled diffusion and the VAE (`diffbir_core.tiling`), the padding
rule (`diffbir_core.padding`) and the guidance/tiles rule (`sampling.guidance.check_untiled`).

Modules, one concept each:
  pipeline   apply_cldm (v2.1/main `Pipeline.apply_cldm`), run_stage2_v2 / sample_v2 (v2.0.0)
  denoiser   CLDMDenoiser: our ControlNet + UNet as the samplers' model function (CFG batch, strength, tiles)
  vae        our VAE's whole-image and tiled encode/decode (the v2.0.0 tiles)
  sd_parts   our UNet, VAE and CLIP text encoder from an SD 2.1 checkpoint
  golden     `python -m diffbir_core.reference.golden FILE.json ...`: the golden replay
"""
