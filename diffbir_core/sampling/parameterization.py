"""One conversion between a DDPM model's output (eps or v at a VP latent) and a k-diffusion x0-denoiser D(x, sigma).

A DDPM-trained SD model predicts eps or v of the VP latent x_t = sqrt(ac) x0 + sqrt(1 - ac) eps; k-diffusion
solvers (and ComfyUI's sampling) work with the VE latent x = x_t sqrt(1 + sigma^2), sigma = sqrt((1 - ac) / ac), and
the denoised estimate D. Both directions live here, for every engine:

* `edm_coefficients`: D = model(x c_in, t) c_out + x c_skip, the official EDM wrapping of the v2.1 code (used by
  `edm.EDMDenoiser` around the DiffBIR Sampler's host model function and the reference denoiser alike);
* `output_from_denoised`: eps = (x - D) / sigma and v = (eps - sigma D) / sqrt(1 + sigma^2), the way back from a
  denoiser to the model output that the DDPM-family samplers read (used by the DiffBIR Sampler, whose model calls
  are answered by ComfyUI's guided model, `nodes/host/model_function.py`, and by the KSAMPLER adapter
  `ksampler.X0ToV`). Exact for any parameterisation of the model behind D, and finite at a zero-terminal-SNR
  t = 999 as long as sigma is (ComfyUI keeps it ~4.5e3 there), where eps itself is undefined.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PARAMETERIZATIONS = ("eps", "v")


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r} (one of {', '.join(PARAMETERIZATIONS)})")


def edm_coefficients(sigma: torch.Tensor, parameterization: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of D(x, sigma) = model(x c_in, t) c_out + x c_skip, each shaped like `sigma`:
    eps: c_skip 1, c_out -sigma; v: c_skip 1 / (sigma^2 + 1), c_out -sigma / sqrt(sigma^2 + 1);
    c_in 1 / sqrt(sigma^2 + 1) for both."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        c_skip, c_out = torch.ones_like(sigma), -sigma
    else:
        c_skip, c_out = 1.0 / (sigma**2 + 1.0), -sigma / (sigma**2 + 1.0) ** 0.5
    return c_skip, c_out, 1.0 / (sigma**2 + 1.0) ** 0.5


def output_from_denoised(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                         sigma: torch.Tensor, parameterization: str) -> torch.Tensor:
    """The model output (eps or v) at the VP latent x and noise level sigma (one per batch item), from an
    x0-denoiser `denoise(x_ve, sigma) -> D` called on the VE latent x_ve = x sqrt(1 + sigma^2)."""
    check_parameterization(parameterization)
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    c = torch.sqrt(1.0 + s**2)
    x_ve = x * c
    denoised = denoise(x_ve, sigma)
    eps = (x_ve - denoised) / s
    if parameterization == "eps":
        return eps
    return (eps - s * denoised) / c
