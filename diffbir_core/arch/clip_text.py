"""The OpenCLIP ViT-H/14 text tower as SD 2.1 uses it: hidden states of the penultimate block.

State-dict keys are those of the checkpoint's `cond_stage_model.` entries with that prefix removed
(`model.token_embedding.weight`, `model.transformer.resblocks.N...`). `text_projection` and
`logit_scale` are kept only so the keys match; the conditioning path never uses them.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .ldm_blocks import attention

OFFICIAL_CONFIG = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 1024,
    "heads": 16,
    "layers": 24,
    "embed_dim": 1024,
}


class CausalSelfAttention(nn.Module):
    """Parameter layout of nn.MultiheadAttention (packed in_proj, out_proj), computed with SDPA."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x):
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        # Causal: OpenCLIP's additive mask of -inf above the diagonal.
        return self.out_proj(attention(q, k, v, self.heads, causal=True))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, mlp_ratio=4):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * mlp_ratio))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(width * mlp_ratio, width))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))


class _TextModel(nn.Module):
    def __init__(self, context_length, vocab_size, width, heads, layers, embed_dim):
        super().__init__()
        self.transformer = _Transformer(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)


class OpenCLIPTextEncoder(nn.Module):
    """tokens (int64 [B, L], L <= 77, already tokenised and padded) -> context [B, L, width]."""

    def __init__(self, context_length, vocab_size, width, heads, layers, embed_dim, layer="penultimate"):
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"unknown layer {layer!r}")
        self.model = _TextModel(context_length, vocab_size, width, heads, layers, embed_dim)
        # SD 2.x was trained on the penultimate block's features (then ln_final), so the last
        # block is skipped.
        self.num_blocks_used = layers - 1 if layer == "penultimate" else layers

    def forward(self, tokens):
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding[: tokens.shape[1]]
        for block in m.transformer.resblocks[: self.num_blocks_used]:
            x = block(x)
        return m.ln_final(x)


def build(config=None):
    return OpenCLIPTextEncoder(**(OFFICIAL_CONFIG if config is None else config))
