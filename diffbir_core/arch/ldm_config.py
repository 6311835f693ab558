"""Infer the hyper-parameters of an LDM UNet / DiffBIR ControlNet from state-dict shapes.

The official configs are fixed (SD 2.1-base), but tests and users also load smaller
models in the same layout, so the builder reads channel counts, depth and context size
from the weights instead of assuming them. One thing is not visible in any shape: the
attention head size. It comes from the file's metadata when present (our converter
writes it) and otherwise defaults to SD 2.1's 64 channels per head.
"""

from __future__ import annotations

import json
import re

DEFAULT_NUM_HEAD_CHANNELS = 64
LATENT_CHANNELS = 4


def _shape(sd, key):
    t = sd.get(key)
    return None if t is None else tuple(t.shape)


def unet_family_config(sd: dict, prefix: str = "", controlnet: bool = False, metadata: dict | None = None) -> dict:
    """Config (official keyword names) of a UNet (`controlnet=False`) or DiffBIR ControlNet."""
    p = prefix
    first = _shape(sd, f"{p}input_blocks.0.0.weight")
    if first is None:
        raise KeyError(f"no '{p}input_blocks.0.0.weight': not a UNet-family state dict")
    model_channels, in_total = first[0], first[1]

    block_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}input_blocks\.(\d+)\.", k))})
    # Walk the encoder: a ResBlock's out channels give the level's multiplier, a block
    # with an `op` conv is a downsample that ends the level.
    channel_mult: list[int] = []
    res_per_level: list[int] = []
    attention_levels: set[int] = set()
    level_res = 0
    for i in block_ids[1:]:
        if f"{p}input_blocks.{i}.0.op.weight" in sd:
            res_per_level.append(level_res)
            level_res = 0
            continue
        out_ch = _shape(sd, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
        if level_res == 0:
            channel_mult.append(out_ch // model_channels)
        level_res += 1
        if f"{p}input_blocks.{i}.1.proj_in.weight" in sd:
            attention_levels.add(len(channel_mult) - 1)
    res_per_level.append(level_res)

    attn_key = next(
        (k for k in sd if k.startswith(f"{p}input_blocks.") and k.endswith("transformer_blocks.0.attn2.to_k.weight")),
        None,
    )
    proj_in = next((k for k in sd if k.startswith(f"{p}input_blocks.") and k.endswith(".1.proj_in.weight")), None)
    depth = 1
    if proj_in is not None:
        block_prefix = proj_in[: -len("proj_in.weight")]
        depth = len({k.split(".")[len(block_prefix.split(".")) ] for k in sd if k.startswith(block_prefix + "transformer_blocks.")})

    meta_cfg = {}
    if metadata and metadata.get("diffbir_config"):
        meta_cfg = json.loads(metadata["diffbir_config"])

    cfg = {
        "image_size": 32,
        "in_channels": LATENT_CHANNELS if controlnet else in_total,
        "model_channels": model_channels,
        "attention_resolutions": sorted((2**lvl for lvl in attention_levels), reverse=True),
        "num_res_blocks": res_per_level[0],
        "channel_mult": channel_mult,
        "num_head_channels": meta_cfg.get("num_head_channels", DEFAULT_NUM_HEAD_CHANNELS),
        "use_spatial_transformer": attn_key is not None,
        "use_linear_in_transformer": proj_in is not None and len(_shape(sd, proj_in)) == 2,
        "transformer_depth": depth,
        "context_dim": _shape(sd, attn_key)[1] if attn_key else None,
        "legacy": False,
    }
    if controlnet:
        # The first conv sees cat(noisy latent, condition latent); the split is 4 + rest.
        cfg["hint_channels"] = in_total - LATENT_CHANNELS
    else:
        cfg["out_channels"] = _shape(sd, f"{p}out.2.weight")[0]
    return cfg


def vae_config(sd: dict, prefix: str = "") -> dict:
    """AutoencoderKL config ({embed_dim, ddconfig}) read from shapes."""
    p = prefix
    ch = _shape(sd, f"{p}encoder.conv_in.weight")[0]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}encoder\.down\.(\d+)\.", k))})
    ch_mult = [_shape(sd, f"{p}encoder.down.{i}.block.0.conv2.weight")[0] // ch for i in levels]
    num_res = len({k.split(".")[len(p.split(".")) + 3] for k in sd if k.startswith(f"{p}encoder.down.0.block.")})
    z2 = _shape(sd, f"{p}encoder.conv_out.weight")[0]
    return {
        "embed_dim": _shape(sd, f"{p}quant_conv.weight")[0] // 2,
        "ddconfig": {
            "double_z": True,
            "z_channels": z2 // 2,
            "resolution": 256,
            "in_channels": _shape(sd, f"{p}encoder.conv_in.weight")[1],
            "out_ch": _shape(sd, f"{p}decoder.conv_out.weight")[0],
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": num_res,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    }


def clip_text_config(sd: dict, prefix: str = "") -> dict:
    """OpenCLIP text-tower config read from shapes (heads assume 64 channels each, as ViT-H)."""
    p = f"{prefix}model."
    vocab, width = _shape(sd, f"{p}token_embedding.weight")
    layers = len({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}transformer\.resblocks\.(\d+)\.", k))})
    return {
        "context_length": _shape(sd, f"{p}positional_embedding")[0],
        "vocab_size": vocab,
        "width": width,
        "heads": max(1, width // 64),
        "layers": layers,
        "embed_dim": _shape(sd, f"{p}text_projection")[1],
    }
