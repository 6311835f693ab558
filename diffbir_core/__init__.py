"""diffbir_core: DiffBIR in plain torch (no ComfyUI imports).

Modules, one concept each:
  checkpoint  safe reading/writing of checkpoint files
  detect      what a state dict is (signature table), v1 full-checkpoint split
  loader      build + strictly load a network from a file
  convert     `python -m diffbir_core.convert` official file -> safetensors
  schedule    betas, zero-terminal SNR, timestep grids of the official samplers
  tiling      tile grids and gaussian blending weights
  colorfix    wavelet / AdaIN colour correction
  golden      `python -m diffbir_core.golden` replay of official golden files
  arch/       the networks: stage 1 (SwinIR, BSRNet, SCUNet) and stage 2 (UNet, ControlNet, VAE, CLIP text)
"""

__version__ = "0.1.0"
