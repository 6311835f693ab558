"""DiffBIR's stage-1 SCUNet (``diffbir.model.SCUNet``, KAIR's Swin-Conv-UNet), built on spandrel's SCUNet.

spandrel's network and key names are the official ones (head_dim 32 and window 8 are fixed in both). The one
difference is the input padding: the official forward replicate-pads bottom/right to a multiple of 64 and
crops back, spandrel reflect-pads. That changes every output pixel near the border (max error 5.4 at 72x80),
so our subclass overrides spandrel's ``check_image_size`` hook with the official replicate padding; spandrel's
forward then runs on the official padded input and crops exactly as the official code does.

Returned module (attributes documented for callers):
  * ``forward(x)``: NCHW float in [0, 1] -> same size.
  * ``scale``: 1.
  * ``size_multiple``: 1 (forward pads to 64 internally).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spandrel.architectures.SCUNet import SCUNet as _SpandrelSCUNet
from spandrel.architectures.SCUNet.__arch.SCUNet import WMSA as _SpandrelWMSA
from torch import nn

from ..padding import pad_to_multiple
from .config import complete_config
from .spandrel_compat import LinspaceOnCPU

# configs/inference/scunet.yaml (DiffBIR v2 BID, scunet_color_real_psnr.pth).
OFFICIAL_CONFIG: dict = {"in_nc": 3, "config": [4, 4, 4, 4, 4, 4, 4], "dim": 64}

# Official constructor arguments that the DiffBIR config leaves at their defaults. input_resolution is not
# stored in the weights: it only turns 'SW' blocks into 'W' at stages whose resolution (input_resolution / 2^k)
# is <= the window (8), which never happens with the default 256.
_OPTIONAL_ARGS = {"drop_path_rate": 0.0, "input_resolution": 256}

_HEAD_DIM = 32  # fixed in the official class (and spandrel's)
_WINDOW = 8



class WMSA(_SpandrelWMSA):
    """spandrel's (= the official) window attention with the same parameters, computed by torch SDPA: the
    relative position embedding (and the shifted-window mask, as -inf) is the float ``attn_mask`` of one fused
    SDPA call instead of an einsum, a softmax and a second einsum. Outputs agree with spandrel's to float
    rounding."""

    def forward(self, x):
        ws, heads, d = self.window_size, self.n_heads, self.head_dim
        if self.type != "W":
            x = torch.roll(x, shifts=(-(ws // 2), -(ws // 2)), dims=(1, 2))
        b, h, w, c = x.shape
        nh, nw = h // ws, w // ws
        # b (w1 p1) (w2 p2) c -> b (w1 w2) (p1 p2) c
        x = x.view(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, ws * ws, c)
        # b nw np (three h d) -> (three h) (b nw) np d
        qkv = self.embedding_layer(x).view(b * nh * nw, ws * ws, 3 * heads, d).permute(2, 0, 1, 3)
        q, k, v = qkv.chunk(3, dim=0)
        bias = self.relative_embedding().unsqueeze(1)  # heads, 1, np, np
        if self.type != "W":
            mask = self.generate_mask(nh, nw, ws, shift=ws // 2)[0]  # 1, windows, np, np (True = masked)
            bias = bias.masked_fill(mask, float("-inf"))  # heads, windows, np, np
            bias = bias.unsqueeze(1).expand(-1, b, -1, -1, -1).reshape(heads, b * nh * nw, ws * ws, ws * ws)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        # heads (b nw) np d -> b nw np (heads d)
        out = self.linear(out.view(heads, b, nh * nw, ws * ws, d).permute(1, 2, 3, 0, 4).reshape(b, nh * nw, ws * ws, c))
        # b (w1 w2) (p1 p2) c -> b (w1 p1) (w2 p2) c
        out = out.view(b, nh, nw, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)
        if self.type != "W":
            out = torch.roll(out, shifts=(ws // 2, ws // 2), dims=(1, 2))
        return out


class SCUNet(_SpandrelSCUNet):
    scale = 1
    size_multiple = 1

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        # Official: nn.ReplicationPad2d((0, pad_right, 0, pad_bottom)) to a multiple of 64 (the UNet halves the
        # size three times and windows are 8). spandrel's forward crops back to the input size afterwards.
        return pad_to_multiple(x, 64, mode="replicate")


def build(config: dict | None = None) -> nn.Module:
    """Build the network for ``config`` (official argument names; missing keys take OFFICIAL_CONFIG values,
    None means OFFICIAL_CONFIG). The module is in eval mode with random weights: load a state dict next."""
    cfg = complete_config("SCUNet", config, OFFICIAL_CONFIG, _OPTIONAL_ARGS)
    if len(cfg["config"]) != 7:
        raise ValueError("SCUNet: config must list 7 stage depths")
    with LinspaceOnCPU():
        net = SCUNet(
            in_nc=cfg["in_nc"],
            config=list(cfg["config"]),
            dim=cfg["dim"],
            drop_path_rate=cfg["drop_path_rate"],
            input_resolution=cfg["input_resolution"],
        )
    for module in net.modules():
        if type(module) is _SpandrelWMSA:
            module.__class__ = WMSA  # same parameters, attention through SDPA
    return net.eval()


def _count(sd, prefix: str) -> int:
    """Number of entries of an nn.Sequential stored under ``prefix.{i}.``."""
    idx = {int(k[len(prefix) + 1 :].split(".", 1)[0]) for k in sd if k.startswith(prefix + ".")}
    return max(idx) + 1 if idx else 0


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Infer the official hyper-parameters from the keys/shapes of an unwrapped SCUNet state dict.

    input_resolution and drop_path_rate are not stored in the weights and keep their official defaults."""
    head = sd["m_head.0.weight"]
    dim = head.shape[0]
    # Down stages end with their strided conv, up stages start with their transposed conv: one extra entry.
    config = [
        _count(sd, "m_down1") - 1,
        _count(sd, "m_down2") - 1,
        _count(sd, "m_down3") - 1,
        _count(sd, "m_body"),
        _count(sd, "m_up3") - 1,
        _count(sd, "m_up2") - 1,
        _count(sd, "m_up1") - 1,
    ]
    # relative_position_params is (heads, 2*window-1, 2*window-1); check the fixed head_dim/window match.
    for k, v in sd.items():
        if k.endswith("trans_block.msa.relative_position_params"):
            trans_dim = sd[k.replace("relative_position_params", "linear.weight")].shape[0]
            if v.shape[1] != 2 * _WINDOW - 1 or v.shape[0] * _HEAD_DIM != trans_dim:
                raise ValueError(f"SCUNet: {k} {tuple(v.shape)} needs head_dim/window other than 32/8")
            break
    return {"in_nc": head.shape[1], "config": config, "dim": dim}
