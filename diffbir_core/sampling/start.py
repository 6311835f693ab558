"""The start point of a stage-2 run and the noise augmentation of its condition latent, shared by both engines.

Drawn from the run's noise source in the official order (`start_latent`): the DiffBIR Sampler calls it before the
sampler's own draws, and so does the reference pipeline (`reference/pipeline.py`). Reference spec C.4-C.5 (main:
`--start_point_type`, `--noise_aug`) and B.5 (v2.0.0 `--better_start`).
"""

from __future__ import annotations

import torch

from .. import colorfix
from ..schedule import DiffusionSchedule
from .noise import NoiseSource


def q_sample(diffusion: DiffusionSchedule, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """sqrt(ac_t) x0 + sqrt(1 - ac_t) noise with float32 coefficients (the official buffers)."""
    ac = diffusion.alphas_cumprod
    a = torch.tensor(ac[t] ** 0.5, dtype=torch.float32, device=x0.device)
    b = torch.tensor((1.0 - ac[t]) ** 0.5, dtype=torch.float32, device=x0.device)
    return a * x0 + b * noise


START_POINTS = ("noise", "cond")  # the main code's --start_point_type
BETTER_START = "better_start"  # v2.0.0's --better_start (`better_start_latent`); a host may offer it with the others
ALL_START_POINTS = START_POINTS + (BETTER_START,)


def check_start(diffusion: DiffusionSchedule, start_point_type: str, noise_aug: int,
                 allowed: tuple[str, ...] = START_POINTS) -> int:
    if start_point_type not in allowed:
        raise ValueError(f"start_point_type must be one of {', '.join(map(repr, allowed))}, got {start_point_type!r}")
    noise_aug = int(noise_aug)
    if not 0 <= noise_aug < len(diffusion.betas):
        raise ValueError(f"noise_aug must be in [0, {len(diffusion.betas) - 1}], got {noise_aug}")
    return noise_aug


def better_start_latent(diffusion: DiffusionSchedule, clean01: torch.Tensor, encode, noise: NoiseSource
                        ) -> torch.Tensor:
    """v2.0.0 `--better_start`: x_T = q_sample(encode(low frequencies of the stage-1 image), last timestep), the
    low frequencies (`colorfix.wavelet_decomposition`) encoded **in [0, 1]** as officially (the VAE expects
    [-1, 1]: an official quirk, kept) and sampled from the posterior. Two draws: the posterior sample's (inside
    `encode(image, sample=True, noise=noise)`, which returns the scaled latent), then the diffusion's. Under
    zero-terminal SNR this is pure noise."""
    _, low = colorfix.wavelet_decomposition(clean01)
    x0 = encode(low, sample=True, noise=noise)
    return q_sample(diffusion, x0, len(diffusion.betas) - 1, noise.randn(x0.shape, x0.device, x0.dtype))


def start_latent(diffusion: DiffusionSchedule, c_img: torch.Tensor, start_point_type: str, noise_aug: int,
                 noise: NoiseSource, clean01: torch.Tensor | None = None, encode=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, the condition latent the model sees), drawn from `noise` in the official order.

    x_T has the shape of `c_img` (the latent to sample): "noise" is the first draw itself, "cond" diffuses
    c_img to the last timestep with it (pure noise under zero-terminal SNR), "better_start" is
    `better_start_latent` of `clean01` (the stage-1 image in [0, 1] at 8 x the latent size) through `encode`
    (two draws). With noise_aug > 0 the next draw diffuses c_img to timestep noise_aug (officially shared by the
    unconditional branch); otherwise c_img is returned unchanged. Every later draw (the sampler's) follows these.
    """
    noise_aug = check_start(diffusion, start_point_type, noise_aug, ALL_START_POINTS)
    if start_point_type == BETTER_START:
        if clean01 is None or encode is None:
            raise ValueError("start point better_start needs the stage-1 image and a VAE encode")
        x_T = better_start_latent(diffusion, clean01, encode, noise)
        if x_T.shape != c_img.shape:
            raise ValueError(f"better_start: the stage-1 image encodes to {tuple(x_T.shape)}, the latent to sample "
                             f"is {tuple(c_img.shape)}")
    else:
        first = noise.randn(c_img.shape, c_img.device, c_img.dtype)
        x_T = q_sample(diffusion, c_img, len(diffusion.betas) - 1, first) if start_point_type == "cond" else first
    if noise_aug > 0:
        c_img = q_sample(diffusion, c_img, noise_aug, noise.randn_like(c_img))
    return x_T, c_img
