"""diffbir_core: DiffBIR in plain torch (no ComfyUI imports).

Modules, one concept each:
  checkpoint  safe reading/writing of checkpoint files
  detect      what a state dict is (signature table), v1 full-checkpoint split
  loader      build + strictly load a network from a file
  convert     `python -m diffbir_core.convert` official file -> safetensors
  schedule    betas, zero-terminal SNR, timestep grids of the official samplers
  tiling      tile grids and gaussian blending weights
  colorfix    wavelet / AdaIN colour correction
  stage1      the official stage-1 pre/post-processing per pipeline, tiled runner
  sampling/   the official samplers over a denoiser, CFG, tiled diffusion and VAE, guidance, apply_cldm
  degrade/    the official training degradations (CodeFormer, Real-ESRGAN), PSNR/SSIM
  golden      `python -m diffbir_core.golden` replay of official golden files
  arch/       the networks: stage 1 (SwinIR, BSRNet, SCUNet) and stage 2 (UNet, ControlNet, VAE, CLIP text)
"""

__version__ = "0.1.0"
