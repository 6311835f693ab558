"""Building blocks shared by the stage-2 networks (SD 2.1 UNet, IRControlNet, VAE, CLIP text tower).

Module and parameter names follow the official LDM/DiffBIR code so that checkpoints load with
`load_state_dict(strict=True)`; e.g. `in_layers.0` below is the key a checkpoint uses for the
first GroupNorm of a ResBlock, which is why layers sit in index-addressed `nn.Sequential`s.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps, LDM layout: [cos | sin]."""
    half = dim // 2
    # The frequencies are computed on the CPU and then moved, as the official code does: exp() on
    # another device can differ in the last bit, which t up to 999 amplifies to ~1e-4 in the args.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(timesteps.device)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_module(module):
    # Zero-initialised outputs make a freshly built residual branch / zero conv an identity /
    # no-op; the official code relies on it when it initialises a ControlNet from the UNet.
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back, so fp16/bf16 activations keep their statistics."""

    def forward(self, x):
        # Affine params are upcast too, so a model cast wholesale with .half() still runs; for
        # float32 params (DiffBIR's fp16 mode keeps these norms in float32) .float() is free.
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def normalization(channels):
    return GroupNorm32(32, channels)


def attention(q, k, v, heads, causal=False):
    """Multi-head scaled dot-product attention on token-major tensors.

    q: (B, Nq, heads * d), k/v: (B, Nk, heads * d) -> (B, Nq, heads * d); the softmax scale is
    d ** -0.5 as in every official attention of these models.
    """
    b, nq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return out.transpose(1, 2).reshape(b, nq, inner)


def _onednn_linear_op():
    try:
        return torch.ops.mkldnn._linear_pointwise  # oneDNN's GEMM, as torch's own CPU compiler (inductor) calls it
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return None


_ONEDNN_LINEAR = _onednn_linear_op()


def compiling() -> bool:
    """Whether torch.compile is tracing this call. The per-call shortcuts below (oneDNN's linear op, the cfg
    pair's shared prefix, the kept text k/v) decide on tensor values or on weights outside the graph; traced,
    each would break the graph and recompile it for every batch size it sees (measured: the compiled step
    slower than eager). So a traced call takes the plain path, and the compiler fuses and packs it instead."""
    return torch.compiler.is_compiling()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same function) whose float32 CPU inference runs on oneDNN's GEMM.

    torch's float32 CPU matmuls go to its BLAS (MKL), which on AMD CPUs takes a slower code path: measured on
    one Zen core, 86 GFLOP/s for MKL against ~200 for oneDNN, which torch already uses for every convolution
    and for bf16 matmuls. The linear layers are ~40 % of a step's time, so they are worth routing. Results
    differ from F.linear only in the summation order (a few ulps). Anything else (CUDA, half precision,
    autograd, a torch without oneDNN) takes the plain F.linear.
    """

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, on oneDNN's GEMM where that is the faster float32 CPU kernel (see Linear)."""
    if (_ONEDNN_LINEAR is not None and not compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.device.type == "cpu" and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def pair_shares_prefix(n_context: int, *tensors) -> bool:
    """Whether a batch of `n_context` prompts is a cfg pair sharing everything else: every tensor's batch
    is two equal halves ([a; a]; a 0-d tensor counts as shared).

    The two halves of such a batch (cond and uncond) differ only in the text context, so everything before
    the first cross-attention gives the same values for both and is computed once, for the first half;
    `repeat_to_batch` widens it where the context enters. At 512 that prefix (input conv, first ResBlock,
    first self-attention, in the UNet and in the ControlNet) is 3.9 % of a cfg step's FLOPs."""
    if n_context < 2 or n_context % 2 or compiling():
        return False
    for t in tensors:
        if t.ndim == 0:
            continue
        if t.shape[0] != n_context or not torch.equal(t[: n_context // 2], t[n_context // 2:]):
            return False
    return True


def pair_prefix_inputs(n_context: int, *tensors) -> tuple:
    """The inputs a network's shared prefix runs on: the first halves when the batch is a cfg pair
    (`pair_shares_prefix`; 0-d tensors as they are), else the tensors unchanged."""
    if not pair_shares_prefix(n_context, *tensors):
        return tensors
    return tuple(t if t.ndim == 0 else t[: t.shape[0] // 2] for t in tensors)


def repeat_to_batch(t: torch.Tensor, n: int) -> torch.Tensor:
    """t repeated to batch n where it holds the shared half of a pair (batch n / 2); else t unchanged."""
    if t.shape[0] >= n:
        return t
    return t.repeat(n // t.shape[0], *([1] * (t.ndim - 1)))


class TimestepBlock(nn.Module):
    """Marker for children of TimestepEmbedSequential that take the timestep embedding."""


class TimestepEmbedSequential(nn.Sequential):
    """One UNet block: hands the timestep embedding to ResBlocks and the text context to transformers."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    """LDM ResBlock without scale-shift norm or up/down resampling (the SD 2.1 variant)."""

    def __init__(self, channels, emb_channels, out_channels=None, dropout=0.0):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        # In-place adds reuse the fresh conv outputs; no backward needs those buffers.
        # emb is the shared half's after a shared pair prefix has been widened (pair_shares_prefix).
        h += repeat_to_batch(self.emb_layers(emb).to(h.dtype), h.shape[0])[:, :, None, None]
        h = self.out_layers(h)
        h += self.skip_connection(x)
        return h


class Downsample(nn.Module):
    """UNet downsampling: a stride-2 3x3 conv with symmetric padding."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv; the UNet and the VAE decoder use the same layer."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Attention of image tokens over themselves (context None) or over the text context.

    The text context of a run is the same at every step (one prompt pair), so its key/value projections are
    kept (see `_context_kv`) instead of being recomputed by every model call.
    """

    # Contexts whose k/v are kept: cond, uncond and their batched pair cover every sampler path
    # (batched cfg, two forwards, cfg 1); a further one pushes out the oldest.
    CONTEXT_CACHE_SIZE = 4

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.clear_context_cache()

    def clear_context_cache(self):
        self._kv_entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (context copy, k, v)
        self._kv_weights: tuple = ()

    def _weights_key(self) -> tuple:
        # The tensors themselves (compared by identity: a reload or patch that replaces them), where their
        # storage is (an in-place .data swap, e.g. .to()) and their version counters (an in-place copy_).
        # ComfyUI's lowvram weight_function lists are part of the weight a cast layer computes with.
        key = []
        for layer in (self.to_k, self.to_v):
            w = layer.weight
            key += [w, w.data_ptr(), _version(w), w.dtype, w.device, getattr(layer, "weight_function", None)]
        return tuple(key)

    def _context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """to_k(context), to_v(context), reused while the context holds the same values and the weights stay."""
        if compiling() or (torch.is_grad_enabled() and (context.requires_grad or self.to_k.weight.requires_grad)):
            return self.to_k(context), self.to_v(context)  # an autograd graph (or a traced one) must see them
        key = self._weights_key()
        if not _same_key(key, self._kv_weights):
            self._kv_entries, self._kv_weights = [], key
        for cached, k, v in self._kv_entries:
            # Compared by value: the samplers build the batched context anew at every call.
            if (cached.shape == context.shape and cached.dtype == context.dtype and cached.device == context.device
                    and torch.equal(cached, context)):
                return k, v
        k, v = self.to_k(context), self.to_v(context)
        self._kv_entries = [(context.detach().clone(), k, v)] + self._kv_entries[: self.CONTEXT_CACHE_SIZE - 1]
        return k, v

    def forward(self, x, context=None):
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:
            k, v = self._context_kv(context)
        out = attention(self.to_q(x), k, v, self.heads)
        return self.to_out(out)


def _version(t: torch.Tensor):
    """The in-place version counter; None for inference-mode tensors, which have none (ComfyUI loads weights
    under inference mode: their in-place changes are caught by the per-run clearing, see nodes/control.py)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _same_key(a: tuple, b: tuple) -> bool:
    """Tensors compare by identity, everything else by value."""
    return len(a) == len(b) and all(
        x is y or (not torch.is_tensor(x) and not torch.is_tensor(y) and x == y) for x, y in zip(a, b))


def clear_context_caches(model: nn.Module) -> None:
    """Drop every kept text-context k/v of `model` (a new run; memory back before the model is offloaded)."""
    for module in model.modules():
        # By method, not class: diffbir_core may be imported twice (inside the node package and top-level).
        if callable(getattr(module, "clear_context_cache", None)):
            module.clear_context_cache()


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), Linear(inner_dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the text context, gated feed-forward."""

    def __init__(self, dim, n_heads, d_head, context_dim, dropout=0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        if context is not None:  # the shared half of a cfg pair (pair_shares_prefix) meets the two prompts
            x = repeat_to_batch(x, context.shape[0])
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, linear in/out projections (use_linear=True)."""

    def __init__(self, in_channels, n_heads, d_head, depth=1, context_dim=None, dropout=0.0):
        super().__init__()
        inner_dim = n_heads * d_head
        # Plain GroupNorm with eps 1e-6 here (not GroupNorm32): the official transformer norm is
        # a different layer from the ResBlock norms, and DiffBIR's fp16 mode casts it to fp16.
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = zero_module(Linear(inner_dim, in_channels))

    def forward(self, x, context=None):
        c, h, w = x.shape[1:]
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        # Made contiguous as the official block does: the reshape above can stay a strided view,
        # and later convs / GroupNorms reduce in a different order on such a layout (last-bit
        # differences that long samplers amplify).
        # The blocks may have widened a shared pair prefix (pair_shares_prefix): the batch is the tokens'.
        out = self.proj_out(tokens).transpose(1, 2).reshape(tokens.shape[0], c, h, w).contiguous()
        return out + repeat_to_batch(x, out.shape[0])
