"""DiffBIR's IRControlNet (v2/v2.1; v1 weights re-exported in the same layout).

Unlike the original ControlNet there is no hint encoder: the first conv reads the noisy latent
concatenated with the condition latent (the VAE latent of the stage-1 restoration), so its input
has in_channels + hint_channels = 8 channels.
"""

import torch
from torch import nn

from .ldm_blocks import pair_prefix_inputs, repeat_to_batch, zero_module
from .unet import OFFICIAL_CONFIG as _UNET_CONFIG
from .unet import UNetEncoder

OFFICIAL_CONFIG = {k: v for k, v in _UNET_CONFIG.items() if k != "out_channels"}
OFFICIAL_CONFIG["hint_channels"] = 4


def _zero_conv(channels):
    # Wrapped in a Sequential only so the parameters sit under the official `.0.` key.
    return nn.Sequential(zero_module(nn.Conv2d(channels, channels, 1)))


class ControlNet(UNetEncoder):
    def __init__(self, in_channels, model_channels, hint_channels, num_res_blocks, attention_resolutions, **kwargs):
        super().__init__(in_channels + hint_channels, model_channels, num_res_blocks, attention_resolutions, **kwargs)
        self.in_channels = in_channels
        self.hint_channels = hint_channels
        self.zero_convs = nn.ModuleList(_zero_conv(ch) for ch in self.input_block_channels)
        self.middle_block_out = _zero_conv(self.bottom_channels)

    def forward(self, x, hint, timesteps, context):
        """Controls for the UNet: the zero-conv outputs of input blocks 0..11, then of the middle block.

        x: noisy latent, hint: condition latent (same spatial size).
        """
        dtype = self.block_dtype
        n = x.shape[0]
        x, hint, timesteps = pair_prefix_inputs(context.shape[0], x, hint, timesteps)  # a cfg pair: once
        emb = self.embed_timesteps(timesteps).to(dtype)
        context = context.to(dtype)
        h = torch.cat([x, hint], dim=1).to(dtype)
        control = []
        for block, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = block(h, emb, context)
            control.append(repeat_to_batch(zero_conv(h), n))  # every control at the caller's batch
        h = self.middle_block(h, emb, context)
        control.append(repeat_to_batch(self.middle_block_out(h), n))
        return control


def build(config=None):
    return ControlNet(**(OFFICIAL_CONFIG if config is None else config))
