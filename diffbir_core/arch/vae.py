"""The SD 2.1 KL autoencoder (first stage): images in [-1, 1] <-> 4-channel latents at 1/8 size."""

import torch
import torch.nn.functional as F
from torch import nn

from ..schedule import LATENT_SCALE
from .ldm_blocks import Upsample

OFFICIAL_CONFIG = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}


def _norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class DiagonalGaussianDistribution:
    """The encoder posterior N(mean, exp(logvar)), logvar clamped to [-30, 20] as in LDM."""

    def __init__(self, parameters):
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self):
        return self.mean

    def sample(self, noise=None, generator=None):
        """mean + std * noise; `noise` replays a recorded draw instead of drawing a new one."""
        if noise is None:
            # The official code draws on the CPU generator and then moves the noise, so seeded
            # runs only agree with it when the draw is made the same way.
            noise = torch.randn(self.mean.shape, generator=generator)
        return self.mean + self.std * noise.to(self.mean.device)


def vae_encode(vae, image: torch.Tensor, sample: bool = False, noise=None, scale: float = LATENT_SCALE) -> torch.Tensor:
    """image in [-1, 1] -> scaled latent of any VAE whose `encode` returns the posterior (ours, or the nodes' view of
    ComfyUI's): the posterior mode, or a sample drawing one `noise.randn_like`, times the latent scale."""
    post = vae.encode(image)
    z = post.sample(noise=noise.randn_like(post.mean)) if sample else post.mode()
    return z * scale


class VAEResBlock(nn.Module):
    """The autoencoder's residual block: no timestep input, `nin_shortcut` when channels change."""

    def __init__(self, in_channels, out_channels, dropout=0.0):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        h += self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h


def _swish(x):
    # Written as x * sigmoid(x) like the official VAE, not F.silu: the fused kernel rounds
    # differently in the last bit, and parity with the official encoder should be exact.
    return x * torch.sigmoid(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, channels):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        # Contiguous (B, HW, C) tensors, as the official SDP block passes them: CPU SDPA picks its
        # kernel by layout, and a strided view gives results that differ in the last bits, which
        # long EDM runs amplify into visible differences.
        q, k, v = (proj(n).flatten(2).transpose(1, 2).contiguous() for proj in (self.q, self.k, self.v))
        # Back to NCHW as a permuted view (no copy), as the official block does: the 1x1 conv then
        # keeps that memory layout, and the following GroupNorm reduces in the same order.
        out = F.scaled_dot_product_attention(q, k, v).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv after padding only the bottom and right edge, as the official encoder does."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _check_ddconfig(double_z, resamp_with_conv):
    if not double_z:
        raise NotImplementedError("the KL autoencoder needs double_z=True")
    if not resamp_with_conv:
        raise NotImplementedError("resamp_with_conv=False is not supported")


def _mid_block(channels, dropout):
    mid = nn.Module()
    mid.block_1 = VAEResBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = VAEResBlock(channels, channels, dropout)
    return mid


def _run_mid(mid, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    # `out_ch` belongs to the shared ddconfig and is the decoder's; accepted here and unused.
    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                 double_z=True, dropout=0.0, resamp_with_conv=True, out_ch=None):
        super().__init__()
        _check_ddconfig(double_z, resamp_with_conv)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        res = resolution
        block_in = ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            down = nn.Module()
            down.block = nn.ModuleList()
            down.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(VAEResBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = _mid_block(block_in, dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    # `in_channels` and `double_z` belong to the shared ddconfig and are the encoder's.
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels,
                 dropout=0.0, resamp_with_conv=True, in_channels=None, double_z=True):
        super().__init__()
        _check_ddconfig(double_z, resamp_with_conv)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid_block(block_in, dropout)
        # Built from the lowest resolution up but stored in ascending order (up.0 is the
        # full-resolution level), which is what the checkpoint keys index.
        up_levels = []
        for level in reversed(range(len(ch_mult))):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                up.block.append(VAEResBlock(block_in, ch * ch_mult[level], dropout))
                block_in = ch * ch_mult[level]
                if res in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            up_levels.insert(0, up)
        self.up = nn.ModuleList(up_levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = _run_mid(self.mid, self.conv_in(z))
        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, embed_dim, ddconfig):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim

    def encode(self, x):
        """x: image in [-1, 1] -> posterior over the (unscaled) latent."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        """z: unscaled latent (the diffusion latent divided by the scale factor) -> image in ~[-1, 1]."""
        return self.decoder(self.post_quant_conv(z))


def build(config=None):
    return AutoencoderKL(**(OFFICIAL_CONFIG if config is None else config))
