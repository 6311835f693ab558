"""The reference engine's model function: our ControlNet + our UNet with CFG, control strength and tiling.

The product path answers the same samplers' calls with ComfyUI's UNet and our ControlNet
(`nodes/host/model_function.HostModelFunction`); both take the guidance scale from `sampling.cfg` and tile
through `tiling.tiled_model_call`.

`CLDMDenoiser(controlnet, unet, cond, uncond, ...)` is a `denoise_fn(x, t) -> model output`
(eps or v, whatever the UNet predicts) for a noisy latent x and the model timestep t, a tensor
of shape (batch,) (integer for spaced/ddim/edm, fractional for dpm++_m2). It applies:

* control strength: `control_scales = [strength] * 13`, each ControlNet output scaled;
* classifier-free guidance `uncond + s * (cond - uncond)` with cond and uncond run as ONE batch
  (cat) through ControlNet + UNet; skipped entirely when cfg == 1 (one forward, cond only).
  `batch_cfg=False` runs them as two forwards instead, as the official spaced and EDM samplers
  do (same maths; float32 results can differ in the last bits, see pipeline.py);
  The unconditional branch differs only in the text context: it shares the condition latent
  (also its noise-augmented copy); an uncond equal to cond is not run at all (its output would be
  the cond output, and CFG of two equal outputs is that output);
* rescale_cfg: `s(t) = 1 + cfg * (1 - cos(pi * ((1000 - t) / 1000) ** 5)) / 2` with t the model
  timestep, only when cfg > 1 (the official DPM-Solver wrapper rescales whenever cfg != 1;
  `rescale_any_cfg=True` reproduces that);
* tiled diffusion: with `tiles=(tile, stride)` in latent pixels every model call (cond and
  uncond alike) is split into latent tiles, the condition latent cropped per tile, and the
  outputs blended with gaussian weights (see `tiling.tiled_model_call`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch.ldm_blocks import clear_context_caches
from ..sampling.cfg import rescaled_cfg
from ..tiling import tiled_model_call

NUM_CONTROLS = 13


@dataclass
class Condition:
    """What a model call is conditioned on: text context (B, 77, C) and condition latent (B, 4, h, w)."""

    c_txt: torch.Tensor
    c_img: torch.Tensor


class CLDMDenoiser:
    def __init__(self, controlnet, unet, cond: Condition, uncond: Condition | None = None, cfg_scale: float = 1.0,
                 strength: float = 1.0, rescale_cfg: bool = False, tiles: tuple[int, int] | None = None,
                 rescale_any_cfg: bool = False, batch_cfg: bool = True):
        self.controlnet = controlnet
        self.unet = unet
        for net in (controlnet, unet):  # a new run: no k/v of an earlier run's prompts or weights survive
            clear_context_caches(net)
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)
        self.control_scales = [float(strength)] * NUM_CONTROLS
        self.rescale_cfg = bool(rescale_cfg)
        self.rescale_any_cfg = rescale_any_cfg
        self.tiles = tiles
        self.batch_cfg = batch_cfg
        # An uncond equal to cond (e.g. both prompts empty) gives the cond output exactly, and CFG then returns
        # it unchanged (uncond + s * 0): that half of every model call is skipped.
        self.uncond_is_cond = uncond is not None and _same_condition(cond, uncond)
        self.forwards = 0  # number of ControlNet+UNet forward calls (whole image or tiled)
        self.batch_sizes: list[int] = []  # batch size of each call

    # -- one ControlLDM forward -------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, c_txt: torch.Tensor, c_img: torch.Tensor) -> torch.Tensor:
        """The official `ControlLDM.forward`, tiled when tiles are set."""
        self.forwards += 1
        self.batch_sizes.append(x.shape[0])

        def call(x_tile, window):
            c_img_tile = c_img if window is None else c_img[..., window[0]:window[1], window[2]:window[3]]
            control = self.controlnet(x_tile, c_img_tile, t, c_txt)
            return self.unet(x_tile, t, c_txt, control=control, control_scales=self.control_scales)

        if self.tiles is None:
            return call(x, None)
        return tiled_model_call(call, x, *self.tiles)

    # -- the sampler-facing functions --------------------------------------------------
    def cfg_parts(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(cond output, uncond output or None when cfg == 1, the CFG scale at t): one batched forward."""
        t = _as_batch(t, x)
        cond = self.cond
        if self.uncond is None or self.cfg_scale == 1.0:
            return self.forward(x, t, cond.c_txt, _batch(cond.c_img, x)), None, 1.0
        uncond = self.uncond
        scale = rescaled_cfg(self.cfg_scale, t if t.is_floating_point() else int(t[0]), self.rescale_cfg,
                             self.rescale_any_cfg)
        if self.uncond_is_cond:
            out = self.forward(x, t, cond.c_txt, _batch(cond.c_img, x))
            return out, out, scale
        if not self.batch_cfg:
            out_cond = self.forward(x, t, cond.c_txt, _batch(cond.c_img, x))
            return out_cond, self.forward(x, t, uncond.c_txt, _batch(uncond.c_img, x)), scale
        n = x.shape[0]
        out = self.forward(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([_batch(cond.c_txt, x), _batch(uncond.c_txt, x)]),
            torch.cat([_batch(cond.c_img, x), _batch(uncond.c_img, x)]),
        )
        return out[:n], out[n:], scale

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        out_cond, out_uncond, scale = self.cfg_parts(x, t)
        if out_uncond is None:
            return out_cond
        return out_uncond + scale * (out_cond - out_uncond)


def _same_condition(a: Condition, b: Condition) -> bool:
    return all(p.shape == q.shape and p.dtype == q.dtype and torch.equal(p, q.to(p.device))
               for p, q in ((a.c_txt, b.c_txt), (a.c_img, b.c_img)))


def _as_batch(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t


def _batch(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a batch-1 condition to the batch of x."""
    if c.shape[0] == x.shape[0]:
        return c
    if c.shape[0] == 1:
        return c.expand(x.shape[0], *c.shape[1:])
    raise ValueError(f"condition batch {c.shape[0]} does not match latent batch {x.shape[0]}")
