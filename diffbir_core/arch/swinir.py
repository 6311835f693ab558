"""DiffBIR's stage-1 SwinIR (``diffbir.model.SwinIR``), built on spandrel's SwinIR.

DiffBIR's variant starts with ``conv_first = Sequential(PixelUnshuffle(sf), Conv2d(3*s*s, embed_dim))`` so the
transformer runs at 1/8 resolution, and ends with three nearest-x2 + conv stages, so output size == input size.
spandrel implements the same network (its ``start_unshuffle``) and reproduces the official outputs exactly; it
only differs in the *name* of that first conv: its loader renames ``conv_first.1.*`` to ``conv_first.*``.
We rebuild the official ``Sequential`` layout around spandrel's conv so ``state_dict()`` and strict loading use
the official keys unchanged (see ``build``).

Returned module (attributes documented for callers):
  * ``forward(x)``: NCHW float in [0, 1] -> same size (official: reflect-pad to the window size, unshuffle,
    ..., crop). With ``unshuffle`` the input must be a multiple of ``size_multiple``.
  * ``scale``: output/input size ratio (1 for the official config).
  * ``size_multiple``: what H and W must be a multiple of (64 for the official config: 8x unshuffle times
    window 8; the official pipeline zero-pads to 64 before calling).
State-dict buffers ``...attn.relative_position_index`` and ``...attn_mask`` are kept (strict loading of official
files needs them). The masks are for ``img_size``; other sizes get a freshly computed mask in forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from spandrel.architectures.SwinIR import SwinIR as _SpandrelSwinIR
from spandrel.architectures.SwinIR.__arch.SwinIR import (
    WindowAttention as _SpandrelWindowAttention,
)
from torch import nn

from .config import complete_config
from .spandrel_compat import LinspaceOnCPU

# configs/inference/swinir.yaml (DiffBIR v1 general/face, v2 face, v2.1 realesrgan_s4_swinir_100k).
OFFICIAL_CONFIG: dict = {
    "img_size": 64,
    "patch_size": 1,
    "in_chans": 3,
    "embed_dim": 180,
    "depths": [6, 6, 6, 6, 6, 6, 6, 6],
    "num_heads": [6, 6, 6, 6, 6, 6, 6, 6],
    "window_size": 8,
    "mlp_ratio": 2,
    "sf": 8,
    "img_range": 1.0,
    "upsampler": "nearest+conv",
    "resi_connection": "1conv",
    "unshuffle": True,
    "unshuffle_scale": 8,
}

# Official constructor arguments that no DiffBIR config sets; accepted so their defaults can be overridden.
_OPTIONAL_ARGS = {"qkv_bias": True, "drop_path_rate": 0.1, "ape": False, "patch_norm": True}



class WindowAttention(_SpandrelWindowAttention):
    """spandrel's (= the official) window attention with the same parameters, computed by torch SDPA.

    The official ``softmax(q * scale @ k^T + bias [+ mask]) @ v`` becomes one fused SDPA call with the relative
    position bias (plus the shifted-window mask) as its float ``attn_mask``: no (windows, heads, N, N) score
    tensor is materialised in Python, and on the CPU and CUDA a fused kernel runs. Same maths; outputs agree
    with spandrel's to float rounding (~1e-6).
    """

    def forward(self, x, mask=None):
        b_, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1).unsqueeze(0)  # 1, heads, N, N
        if mask is not None:
            windows = mask.shape[0]
            # (windows, heads, N, N), repeated over the images of the batch (a view for one image).
            bias = (bias + mask.unsqueeze(1)).unsqueeze(0).expand(b_ // windows, -1, -1, -1, -1).reshape(b_, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b_, n, c)))


def build(config: dict | None = None) -> nn.Module:
    """Build the network for ``config`` (official argument names; missing keys take OFFICIAL_CONFIG values,
    None means OFFICIAL_CONFIG). The module is in eval mode with random weights: load a state dict next."""
    cfg = complete_config("SwinIR", config, OFFICIAL_CONFIG, _OPTIONAL_ARGS)
    if cfg["patch_size"] != 1:
        # SwinIR's PatchEmbed is a reshape, not a conv: patch_size only changes the mask size bookkeeping,
        # which the official code (and spandrel) never exercise with anything but 1.
        raise ValueError("SwinIR: only patch_size 1 is supported")
    unshuffle = bool(cfg["unshuffle"])
    if unshuffle and cfg["unshuffle_scale"] != cfg["sf"]:
        # Official: PixelUnshuffle(sf) followed by a conv sized for unshuffle_scale; any other pairing fails.
        raise ValueError("SwinIR: unshuffle needs unshuffle_scale == sf")
    start_unshuffle = cfg["unshuffle_scale"] if unshuffle else 1

    with LinspaceOnCPU():
        net = _SpandrelSwinIR(
            img_size=cfg["img_size"],
            patch_size=cfg["patch_size"],
            in_chans=cfg["in_chans"],
            embed_dim=cfg["embed_dim"],
            depths=list(cfg["depths"]),
            num_heads=list(cfg["num_heads"]),
            window_size=cfg["window_size"],
            mlp_ratio=cfg["mlp_ratio"],
            qkv_bias=cfg["qkv_bias"],
            drop_path_rate=cfg["drop_path_rate"],
            ape=cfg["ape"],
            patch_norm=cfg["patch_norm"],
            upscale=cfg["sf"],
            img_range=cfg["img_range"],
            upsampler=cfg["upsampler"],
            resi_connection=cfg["resi_connection"],
            start_unshuffle=start_unshuffle,
        )
    for module in net.modules():
        if type(module) is _SpandrelWindowAttention:
            module.__class__ = WindowAttention  # same parameters and buffers, attention through SDPA
    if unshuffle:
        # Official key layout is conv_first.{0: PixelUnshuffle, 1: Conv2d}. spandrel's forward already
        # unshuffles before calling conv_first, so slot 0 is an Identity: same math, official keys.
        net.conv_first = nn.Sequential(nn.Identity(), net.conv_first)
    # The RGB mean is a plain attribute (as officially), made by the legacy torch.Tensor(list) constructor,
    # which ignores a meta default device, and moved to the input with type_as() in forward: nothing to fix.
    net.scale = cfg["sf"] // start_unshuffle
    # unshuffle: the transformer sees H/s x W/s, which must be a multiple of the window; forward only pads to
    # the window size in pixels, so the caller must pad to window*s. Without unshuffle forward pads itself.
    net.size_multiple = cfg["window_size"] * start_unshuffle if unshuffle else 1
    return net.eval()  # the loader keeps its weights channels-last (the swinir record in arch/__init__.py)


def _count(sd, prefix: str) -> int:
    """Number of entries of an nn.Sequential/ModuleList stored under ``prefix.{i}.``."""
    idx = {int(k[len(prefix) + 1 :].split(".", 1)[0]) for k in sd if k.startswith(prefix + ".")}
    return max(idx) + 1 if idx else 0


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Infer the official hyper-parameters from the keys/shapes of an unwrapped SwinIR state dict.

    Not stored in the weights and taken from OFFICIAL_CONFIG: patch_size (1), img_range (1.0). img_size comes
    from the stored attention masks (nW = (img_size/window)^2); without any it falls back to 64."""
    unshuffle = "conv_first.1.weight" in sd
    first = sd["conv_first.1.weight" if unshuffle else "conv_first.weight"]
    embed_dim = first.shape[0]
    in_chans = sd["conv_last.weight"].shape[0]  # official num_out_ch == in_chans

    if "conv_up1.weight" in sd:
        upsampler = "nearest+conv"
        sf = 2 ** sum(f"conv_up{i}.weight" in sd for i in (1, 2, 3))
    elif "conv_before_upsample.0.weight" in sd or "upsample.0.weight" in sd:
        raise ValueError("SwinIR: only DiffBIR's 'nearest+conv' upsampler is supported")
    else:
        upsampler, sf = "", 1

    blk = "layers.0.residual_group.blocks.0"
    window_size = math.isqrt(sd[f"{blk}.attn.relative_position_index"].shape[0])
    num_layers = _count(sd, "layers")
    depths = [_count(sd, f"layers.{i}.residual_group.blocks") for i in range(num_layers)]
    num_heads = [
        sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]
        for i in range(num_layers)
    ]
    ratio = sd[f"{blk}.mlp.fc1.weight"].shape[0] / embed_dim
    masks = [v for k, v in sd.items() if k.endswith(".attn_mask")]
    img_size = math.isqrt(masks[0].shape[0]) * window_size if masks else OFFICIAL_CONFIG["img_size"]

    unshuffle_scale = math.isqrt(first.shape[1] // in_chans) if unshuffle else None
    cfg = {
        "img_size": img_size,
        "patch_size": OFFICIAL_CONFIG["patch_size"],
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size,
        "mlp_ratio": int(ratio) if ratio.is_integer() else ratio,
        "sf": sf,
        "img_range": OFFICIAL_CONFIG["img_range"],
        "upsampler": upsampler,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
        "unshuffle": unshuffle,
        "unshuffle_scale": unshuffle_scale,
    }
    # Constructor defaults that a file can contradict; reported only then, so official files give exactly
    # the official config.
    seen = {
        "qkv_bias": f"{blk}.attn.qkv.bias" in sd,
        "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
    }
    cfg.update({k: v for k, v in seen.items() if v != _OPTIONAL_ARGS[k]})
    return cfg
