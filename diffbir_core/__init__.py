"""diffbir_core: DiffBIR in plain torch (no ComfyUI imports).

Modules, one concept each:
  checkpoint  safe reading/writing of checkpoint files
  detect      what a state dict is (signature table), v1 full-checkpoint split
  loader      build + strictly load a network from a file
  convert     `python -m diffbir_core.convert` official file -> safetensors
  schedule    betas, zero-terminal SNR, timestep grids of the official samplers
  tiling      tile grids, gaussian blending weights, the one tile loop (stage 1, VAE, tiled model calls)
  padding     bottom/right padding and the condition image's pad rule
  colorfix    wavelet / AdaIN colour correction
  stage1      the official stage-1 pre/post-processing per pipeline, tiled runner
  sampling/   the official samplers over a model function, CFG scale, eps/v <-> x0 conversion, start point,
              guidance: shared by the DiffBIR Sampler node and the reference engine
  reference/  the reference engine: the official stage 2 over our own UNet/ControlNet/VAE (apply_cldm) and
              `python -m diffbir_core.reference.golden`, the replay of official golden files
  degrade/    the official training degradations (CodeFormer, Real-ESRGAN), PSNR/SSIM
  arch/       the networks: stage 1 (SwinIR, BSRNet, SCUNet) and stage 2 (UNet, ControlNet, VAE, CLIP text)
"""

__version__ = "0.1.0"
