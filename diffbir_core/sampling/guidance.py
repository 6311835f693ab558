"""Restoration guidance (v1 "latent image guidance", v2.0.0 MSE / weighted-MSE guidance).

At a step with model timestep t, if `t_stop < t + 1 < t_start`, the denoised estimate x0_hat is
pulled towards the stage-1 result y = 2 * cond_img01 - 1, `repeat` times:

* loss: MSE `L = sum_b mean_chw (pred - target)^2`, or weighted MSE with the weight map
  `w = 1 - tanh(blocksum_2x2 |Sobel(gray((y + 1) / 2))|)` (flat regions ~1, edges ~0);
  `g = -scale * dL/dpred` (scale is the internal scale: v2 `--g_scale * 3000`, v1 `--g_scale`);
* space "latent": pred = x0_hat, target = `vae.encode(y).sample() * 0.18215`, re-sampled every
  repeat (one `noise.randn_like` per repeat, drawn before the step's own draw);
  space "rgb": pred = `vae.decode(x0_hat / 0.18215)`, g back-propagated through the decoder to x0_hat;
* update, rule "v2" (v2.0.0): `x0_hat += g / c1` each repeat, c1 = posterior-mean coefficient of
  x0_hat, so the DDPM posterior mean moves by exactly g; rule "v1": `x0_hat += g` (for the next
  repeat's gradient) while the mean, computed from the unguided x0_hat, moves by `0.5 * g` per
  repeat. Both are returned as one corrected x0_hat' whose posterior mean `c1 * x0_hat' + c2 * x_t`
  is the official one (v1: x0_hat' = x0_hat + 0.5 * sum(g) / c1).

Working where the official code does not:
* weighted MSE in latent space (the official weight map needs RGB and crashes on a 4-channel
  latent): the weight map is computed from the RGB target and area-averaged down to the
  latent grid, then shared by the 4 latent channels;
* odd image sides (the 2x2 block sum needs even sides): the gray image is replicate-padded to
  even sides and the map cropped back;
* any diffusion version (v1, v2, v2.1 v-prediction) and every sampler: samplers hand over their
  x0_hat (spaced: the official place; ddim / dpm++_m2: their x0 prediction, from which they
  re-derive eps; edm_*: the denoiser output D(x, sigma)) together with c1 of the DDPM posterior
  between the current and the next noise level of their grid,
  `c1 = (1 - ac_t / ac_next) * sqrt(ac_next) / (1 - ac_t)` (`posterior_c1`). For the spaced
  sampler this is the official c1; for the others it makes the same correction of x0_hat, which
  moves their next latent by about g rather than exactly g.
Guidance is not available with tiled diffusion (as officially: it needs the whole image); `check_untiled` is that
rule, for the DiffBIR Sampler and the reference pipeline alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..padding import pad_to_multiple
from ..schedule import LATENT_SCALE

_GRAY = (0.2989, 0.5870, 0.1140)
LOSSES = ("mse", "w_mse")
SPACES = ("latent", "rgb")
RULES = ("v2", "v1")


def check_untiled(guidance, tiled: bool, who: str = "", fix: str = "") -> None:
    """Refuse restoration guidance with tiled diffusion: the loss compares the whole image (v2.0.0 refuses it with
    tiled sampling, the v2.1 code never applies it). `who` prefixes the message, `fix` ends it."""
    if guidance is not None and tiled:
        raise ValueError(f"{who}restoration guidance needs the whole image and does not work with tiled diffusion "
                         f"(as officially){fix}")


def weight_map(target01: torch.Tensor) -> torch.Tensor:
    """The official WeightedMSEGuidance weight map (N, 1, H, W) of an RGB image in [0, 1]."""
    gray = torch.sum(target01 * torch.tensor(_GRAY, dtype=target01.dtype, device=target01.device).view(1, 3, 1, 1),
                     dim=1, keepdim=True)
    h, w = gray.shape[-2:]
    gray = pad_to_multiple(gray, 2, mode="replicate")
    gx = torch.tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=gray.dtype, device=gray.device)[None]
    gy = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=gray.dtype, device=gray.device)[None]
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), torch.stack((gx, gy)), stride=1)
    mag = grad.pow(2).sum(dim=1, keepdim=True).sqrt()
    n, c, hh, ww = mag.shape
    blocks = mag.view(n, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 2, 4, 3, 5).contiguous()
    block = (blocks.sum(dim=(-2, -1), keepdim=True).tanh().repeat(1, 1, 1, 1, 2, 2)
             .permute(0, 1, 2, 4, 3, 5).contiguous().view(n, c, hh, ww))
    return (1 - block)[..., :h, :w]


def mse_guidance(pred: torch.Tensor, target: torch.Tensor, scale: float, weight: torch.Tensor | None = None):
    """(g, loss): g = -scale * dL/dpred of L = sum_b mean_chw (w *) (pred - target)^2."""
    with torch.enable_grad():
        pred = pred.detach().clone().requires_grad_(True)
        err = (pred - target.detach()).pow(2)
        if weight is not None:
            err = err * weight
        loss = err.mean((1, 2, 3)).sum()
        g = -torch.autograd.grad(loss, pred)[0] * scale
    return g, loss.detach()


def posterior_c1(ac_t, ac_next):
    """Coefficient of x0 in the DDPM posterior mean between noise levels ac_t (current) and ac_next."""
    return (1 - ac_t / ac_next) * ac_next**0.5 / (1 - ac_t)


class RestorationGuidance:
    def __init__(self, vae, target01: torch.Tensor | None = None, loss: str = "w_mse", scale: float = 0.0, t_start: int = 1001,
                 t_stop: int = -1, space: str = "rgb", repeat: int = 1, rule: str = "v2",
                 latent_scale: float = LATENT_SCALE):
        for value, allowed, what in ((loss, LOSSES, "loss"), (space, SPACES, "space"), (rule, RULES, "rule")):
            if value not in allowed:
                raise ValueError(f"guidance {what} {value!r} is not one of {allowed}")
        if int(repeat) < 1:
            raise ValueError(f"guidance repeat must be >= 1, got {repeat}")
        self.vae = vae
        self.target01 = self.target = None
        if target01 is not None:
            self.set_target(target01)
        self.loss = loss
        self.scale = float(scale)
        self.t_start, self.t_stop = t_start, t_stop
        self.space = space
        self.repeat = int(repeat)
        self.rule = rule
        self.latent_scale = latent_scale
        self.losses: list[float] = []
        self._posterior = None
        self._weight = None

    @classmethod
    def official(cls, vae, target01, version: str, scale_arg: float, **kwargs) -> RestorationGuidance:
        """v2 (v2.0.0, also used for v2.1): internal scale = g_scale * 3000, x0_hat += g / c1.
        v1: internal scale = g_scale, x0_hat += g with mean += 0.5 g, default repeat 5 and MSE loss."""
        if version == "v1":
            kwargs.setdefault("repeat", 5)
            kwargs.setdefault("loss", "mse")
            return cls(vae, target01, scale=scale_arg, rule="v1", **kwargs)
        if version in ("v2", "v2.1"):
            return cls(vae, target01, scale=scale_arg * 3000, rule="v2", **kwargs)
        raise ValueError(f"unknown DiffBIR version {version!r}")

    def set_target(self, target01: torch.Tensor) -> None:
        """The stage-1 result in [0, 1] at the (padded) size the latent decodes to."""
        self.target01 = target01
        self.target = target01 * 2 - 1
        self._posterior = None
        self._weight = None

    def active(self, model_t) -> bool:
        t_now = int(float(model_t)) + 1
        return self.t_stop < t_now < self.t_start

    def _weights(self, like: torch.Tensor):
        if self.loss != "w_mse":
            return None
        if self._weight is None:
            with torch.no_grad():
                w = weight_map(self.target01.to(like.device, like.dtype))
                if self.space == "latent":
                    w = F.adaptive_avg_pool2d(w, like.shape[-2:])
            self._weight = w
        return self._weight

    def _latent_target(self, noise, like):
        if self._posterior is None:
            with torch.no_grad():
                self._posterior = self.vae.encode(self.target.to(like.device, like.dtype))
        post = self._posterior
        return post.sample(noise=noise.randn_like(post.mean)) * self.latent_scale

    def _gradient(self, x0: torch.Tensor, noise) -> torch.Tensor:
        weight = self._weights(x0)
        if self.space == "latent":
            g, loss = mse_guidance(x0, self._latent_target(noise, x0), self.scale, weight)
        else:
            with torch.enable_grad():
                x0_rg = x0.detach().clone().requires_grad_(True)
                pred = self.vae.decode(x0_rg / self.latent_scale)
                g_rgb, loss = mse_guidance(pred, self.target.to(pred), self.scale, weight)
                g = torch.autograd.grad(pred, x0_rg, grad_outputs=g_rgb)[0]
        self.losses.append(float(loss))
        return g.detach()

    def __call__(self, x0: torch.Tensor, model_t, c1, noise) -> torch.Tensor:
        """Corrected x0_hat (see the module doc); x0 unchanged outside the window."""
        if not self.active(model_t):
            return x0
        if self.target is None:
            raise RuntimeError("restoration guidance has no target: call set_target(stage1_image01) first")
        c1 = torch.as_tensor(c1, dtype=x0.dtype, device=x0.device)
        if not bool(c1 > 0):
            raise ValueError(f"guidance needs a positive posterior coefficient c1, got {float(c1)}")
        rescale = 1 / c1
        if self.rule == "v2":
            for _ in range(self.repeat):
                x0 = x0 + self._gradient(x0, noise) * rescale
            return x0
        x0_grad, shift = x0, torch.zeros_like(x0)
        for _ in range(self.repeat):
            g = self._gradient(x0_grad, noise)
            x0_grad = x0_grad + g
            shift = shift + 0.5 * g
        return x0 + shift * rescale
