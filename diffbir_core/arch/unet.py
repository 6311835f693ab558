"""The SD 2.1 denoising UNet, with DiffBIR's additive control injection into its skip connections."""

import torch
from torch import nn

from .ldm_blocks import (
    Downsample,
    Linear,
    ResBlock,
    SpatialTransformer,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    pair_prefix_inputs,
    repeat_to_batch,
    timestep_embedding,
    zero_module,
)

# configs/inference/cldm.yaml (unet_cfg) of DiffBIR v2/v2.1; the same UNet as SD 2.1-base.
OFFICIAL_CONFIG = {
    "use_checkpoint": True,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 1024,
    "legacy": False,
}

# Options of the official constructor that no DiffBIR/SD 2.1 config changes. A config that sets one
# to another value describes a different network, so it is refused rather than silently ignored.
_FIXED_OPTIONS = {
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "conv_resample": True,
    "dims": 2,
    "num_classes": None,
    "use_fp16": False,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "use_new_attention_order": False,
    "n_embed": None,
    "disable_self_attentions": None,
    "num_attention_blocks": None,
    "disable_middle_self_attn": False,
}
# Training/bookkeeping options with no effect on the computed function.
_IGNORED_OPTIONS = {"image_size", "use_checkpoint", "num_heads_upsample"}


def _check_options(options):
    for name, value in options.items():
        if name in _IGNORED_OPTIONS:
            continue
        if name not in _FIXED_OPTIONS:
            raise TypeError(f"unexpected UNet option {name!r}")
        if value != _FIXED_OPTIONS[name]:
            raise NotImplementedError(f"UNet option {name}={value!r} is not supported")


def apply_control_scales(control, control_scales):
    """control[i] * control_scales[i]; None leaves the controls as they are (all scales 1)."""
    if control_scales is None:
        return list(control)
    if len(control_scales) != len(control):
        raise ValueError(f"{len(control_scales)} control scales for {len(control)} controls")
    return [c * s for c, s in zip(control, control_scales)]


class UNetEncoder(nn.Module):
    """Time embedding, input blocks and middle block: the part the UNet and the ControlNet share.

    `first_conv_channels` differs between the two: the ControlNet's first conv also reads the
    condition latent.
    """

    def __init__(
        self,
        first_conv_channels,
        model_channels,
        num_res_blocks,
        attention_resolutions,
        dropout=0.0,
        channel_mult=(1, 2, 4, 8),
        num_heads=-1,
        num_head_channels=-1,
        transformer_depth=1,
        context_dim=None,
        legacy=True,
        **options,
    ):
        super().__init__()
        _check_options(options)
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels has to be set")
        if context_dim is None:
            raise ValueError("the spatial transformers need context_dim")
        self.model_channels = model_channels
        self.channel_mult = list(channel_mult)
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(self.channel_mult)
        self.num_res_blocks = list(num_res_blocks)
        self.attention_resolutions = list(attention_resolutions)
        self.dropout = dropout
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.transformer_depth = transformer_depth
        self.context_dim = context_dim
        self.legacy = legacy

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            Linear(time_embed_dim, time_embed_dim),
        )

        ch = model_channels
        blocks = [TimestepEmbedSequential(nn.Conv2d(first_conv_channels, ch, 3, padding=1))]
        # Output channels of every input block: the UNet's skip connections and the ControlNet's
        # zero convs are sized from it.
        self.input_block_channels = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks[level]):
                layers = [ResBlock(ch, time_embed_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(self._transformer(ch))
                blocks.append(TimestepEmbedSequential(*layers))
                self.input_block_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch)))
                self.input_block_channels.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.bottom_ds = ds

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, ch, dropout),
            self._transformer(ch),
            ResBlock(ch, time_embed_dim, ch, dropout),
        )
        self.bottom_channels = ch

    def _transformer(self, ch):
        if self.num_head_channels == -1:
            heads = self.num_heads
            dim_head = ch // heads
        else:
            heads = ch // self.num_head_channels
            dim_head = self.num_head_channels
        if self.legacy:
            dim_head = ch // heads
        return SpatialTransformer(ch, heads, dim_head, self.transformer_depth, self.context_dim, self.dropout)

    def embed_timesteps(self, timesteps):
        t_emb = timestep_embedding(timesteps, self.model_channels)
        return self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))

    @property
    def block_dtype(self):
        # The blocks may run in half precision while the time embedding stays in float32
        # (DiffBIR's fp16 mode); inputs are cast to the blocks' dtype like the official forward.
        # Blocks whose weights are stored in another dtype than they compute in (8-bit storage, cast per
        # call by the host) say so in `compute_dtype`.
        return getattr(self, "compute_dtype", None) or self.input_blocks[0][0].weight.dtype


class UNetModel(UNetEncoder):
    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions, **kwargs):
        super().__init__(in_channels, model_channels, num_res_blocks, attention_resolutions, **kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        time_embed_dim = model_channels * 4
        skip_channels = list(self.input_block_channels)
        ch = self.bottom_channels
        ds = self.bottom_ds
        blocks = []
        for level in reversed(range(len(self.channel_mult))):
            level_ch = model_channels * self.channel_mult[level]
            for i in range(self.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), time_embed_dim, level_ch, self.dropout)]
                ch = level_ch
                if ds in self.attention_resolutions:
                    layers.append(self._transformer(ch))
                if level and i == self.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    def forward(self, x, timesteps, context, control=None, control_scales=None, only_mid_control=False):
        """Predict the noise (or v) of the noisy latent x.

        control: the ControlNet's 13 outputs, one per input block and then the middle block.
        control[i] is added to the skip connection of input block i and the last one to the
        middle-block output, each first multiplied by control_scales[i] when scales are given.
        only_mid_control keeps only the middle-block control.
        """
        dtype = self.block_dtype
        n = x.shape[0]
        x, timesteps = pair_prefix_inputs(context.shape[0], x, timesteps)  # a cfg pair: its shared part once
        emb = self.embed_timesteps(timesteps).to(dtype)
        context = context.to(dtype)
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        # At the caller's batch from here on (a shared pair prefix is widened by the first cross-attention;
        # this covers a network without one).
        h = repeat_to_batch(self.middle_block(h, emb, context), n)

        if control is not None:
            if len(control) != len(self.input_blocks) + 1:
                raise ValueError(f"expected {len(self.input_blocks) + 1} control tensors, got {len(control)}")
            control = apply_control_scales(control, control_scales)
            h = h + control[-1]
            if only_mid_control:
                control = None

        for block in self.output_blocks:
            skip = repeat_to_batch(skips.pop(), n)
            if control is not None:
                # After the pop, len(skips) is the index of the input block this skip came from.
                skip = skip + control[len(skips)]
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h.to(x.dtype))


def build(config=None):
    return UNetModel(**(OFFICIAL_CONFIG if config is None else config))
