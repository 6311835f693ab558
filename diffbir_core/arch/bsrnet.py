"""DiffBIR's stage-1 BSRNet: KAIR/BSRGAN ``RRDBNet`` (``diffbir.model.RRDBNet``), x4 super-resolution.

Written here rather than taken from spandrel: spandrel's ESRGAN ``RRDBNet`` uses the old-arch sequential key
names (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ...) and converts KAIR/new-arch files by renaming keys in
its loader, and it hard-codes the growth channels ``gc`` to 32, so it can neither expose the official
``state_dict()`` keys nor build other ``gc`` values (the golden test config uses gc 8). The network is small
and this module mirrors the official one key for key.

Returned module (attributes documented for callers):
  * ``forward(x)``: NCHW float in [0, 1] -> ``scale`` times larger (no clamping, as officially).
  * ``scale``: 4 for the official config (2 when the file has no ``upconv2``).
  * ``size_multiple``: 1 (any size works).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import complete_config

# configs/inference/bsrnet.yaml (DiffBIR v2 BSR, BSRNet.pth).
OFFICIAL_CONFIG: dict = {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32, "sf": 4}


class ResidualDenseBlock_5C(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        # conv_k sees the block input plus all previous growth outputs (dense connections).
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        # The official init (kaiming * 0.1) is omitted: weights always come from a checkpoint.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling 0.2, as in ESRGAN


class RRDB(nn.Module):
    """Residual in Residual Dense Block."""

    def __init__(self, nf: int, gc: int = 32):
        super().__init__()
        self.RDB1 = ResidualDenseBlock_5C(nf, gc)
        self.RDB2 = ResidualDenseBlock_5C(nf, gc)
        self.RDB3 = ResidualDenseBlock_5C(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, sf: int = 4):
        super().__init__()
        if sf not in (2, 4):
            # Official forward always upsamples x2 once and a second time only for sf == 4.
            raise ValueError(f"RRDBNet: sf must be 2 or 4, got {sf}")
        self.sf = sf
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        if sf == 4:
            self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.scale = sf
        self.size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        fea = self.lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")))
        if self.sf == 4:
            fea = self.lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.HRconv(fea)))


def build(config: dict | None = None) -> nn.Module:
    """Build the network for ``config`` (official argument names; missing keys take OFFICIAL_CONFIG values,
    None means OFFICIAL_CONFIG). The module is in eval mode with random weights: load a state dict next (the
    loader keeps its weights channels-last: the bsrnet record in arch/__init__.py)."""
    return RRDBNet(**complete_config("RRDBNet", config, OFFICIAL_CONFIG)).eval()


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Infer the official hyper-parameters from the keys/shapes of an unwrapped RRDBNet state dict."""
    first = sd["conv_first.weight"]
    trunk = {int(k.split(".")[1]) for k in sd if k.startswith("RRDB_trunk.")}
    return {
        "in_nc": first.shape[1],
        "out_nc": sd["conv_last.weight"].shape[0],
        "nf": first.shape[0],
        "nb": max(trunk) + 1 if trunk else 0,
        # gc = output channels of the first dense conv; with no blocks it is unused, keep the official value.
        "gc": sd["RRDB_trunk.0.RDB1.conv1.weight"].shape[0] if trunk else OFFICIAL_CONFIG["gc"],
        "sf": 4 if "upconv2.weight" in sd else 2,
    }
