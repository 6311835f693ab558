"""What a sampling step reuses instead of recomputing: the text context's k/v in every cross-attention, and
the uncond half of a cfg pair whose uncond equals its cond. Each must give the uncached result and must be
dropped when its inputs change (new prompt, weights changed in place or replaced, a new run)."""

from pathlib import Path

import pytest
import torch

from diffbir_core import golden
from diffbir_core.arch.ldm_blocks import CrossAttention, attention, clear_context_caches
from diffbir_core.sampling.denoiser import CLDMDenoiser, Condition

GOLDEN = Path(__file__).resolve().parent / "golden"


class Calls:
    """Counts the forward calls of a layer."""

    def __init__(self, layer):
        self.n = 0
        layer.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


def fresh(attn, x, context):
    """The attention computed from scratch with the layer's current weights."""
    out = attention(attn.to_q(x), attn.to_k(context), attn.to_v(context), attn.heads)
    return attn.to_out(out)


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return CrossAttention(16, context_dim=12, heads=2, dim_head=8).eval()


def test_same_prompt_reuses_kv_new_prompt_recomputes(attn):
    x, ctx = torch.randn(2, 10, 16), torch.randn(2, 7, 12)
    calls = Calls(attn.to_k)
    with torch.no_grad():
        first = attn(x, ctx)
        again = attn(x, ctx.clone())  # equal values in a new tensor: what a sampler builds at every call
        assert calls.n == 1 and torch.equal(first, again)
        other = torch.randn(2, 7, 12)
        assert torch.equal(attn(x, other), fresh(attn, x, other)) and calls.n == 3  # the cache's + fresh()'s
        # cond and uncond alternating (two forwards per step) both stay cached
        attn(x, ctx), attn(x, other)
        assert calls.n == 3
        # a context changed in place is a new prompt
        ctx.add_(1.0)
        assert torch.equal(attn(x, ctx), fresh(attn, x, ctx)) and calls.n == 5


def test_weights_changed_in_place_or_replaced_recompute(attn):
    x, ctx = torch.randn(1, 10, 16), torch.randn(1, 7, 12)
    with torch.no_grad():
        before = attn(x, ctx)
        attn.to_k.weight.mul_(2.0)  # in place (load_state_dict copies this way)
        changed = attn(x, ctx)
        assert not torch.equal(changed, before) and torch.equal(changed, fresh(attn, x, ctx))
        sd = {k: v * 0.5 for k, v in attn.state_dict().items()}
        attn.load_state_dict(sd, assign=True)  # replaced parameters
        assert torch.equal(attn(x, ctx), fresh(attn, x, ctx))
        attn.to_v.weight.data = attn.to_v.weight.data * 3.0  # storage swapped (as .to() does)
        assert torch.equal(attn(x, ctx), fresh(attn, x, ctx))
        attn.to(torch.float64)
        assert torch.equal(attn(x.double(), ctx.double()), fresh(attn, x.double(), ctx.double()))


def test_no_cache_where_autograd_needs_the_graph(attn):
    x, ctx = torch.randn(1, 10, 16), torch.randn(1, 7, 12, requires_grad=True)
    attn(x, ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert attn._kv_entries == []


def test_clear_context_caches_and_new_denoiser_start_empty():
    nets = golden._stage2_nets(golden.load_golden(GOLDEN / "sample_spaced5_v21_cfg1.json"))
    g = torch.Generator().manual_seed(0)
    c_img, (pos, neg) = torch.randn(1, 4, 16, 16, generator=g), torch.randn(2, 1, 77, 32, generator=g)
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    layers = [m for n, m in nets.unet.named_modules() if n.endswith("attn2")]  # the cross-attentions
    with torch.no_grad():
        CLDMDenoiser(nets.controlnet, nets.unet, Condition(pos, c_img), Condition(neg, c_img), 4.0)(x, t)
        assert layers and all(m._kv_entries for m in layers)
        # weights edited through .data (no version bump, same storage): a new run still sees them
        kept = {n: p.clone() for n, p in nets.unet.named_parameters() if "attn2.to_k" in n}
        for n, p in nets.unet.named_parameters():
            if "attn2.to_k" in n:
                p.data.mul_(1.5)
        den = CLDMDenoiser(nets.controlnet, nets.unet, Condition(pos, c_img), Condition(neg, c_img), 4.0)
        assert not any(m._kv_entries for m in layers)
        out = den(x, t)
        clear_context_caches(nets.unet)
        clear_context_caches(nets.controlnet)
        ref = CLDMDenoiser(nets.controlnet, nets.unet, Condition(pos, c_img), Condition(neg, c_img), 4.0)(x, t)
        assert torch.equal(out, ref)
        for n, p in nets.unet.named_parameters():
            if n in kept:
                p.data.copy_(kept[n])


def test_uncond_equal_to_cond_runs_once_with_the_same_result():
    nets = golden._stage2_nets(golden.load_golden(GOLDEN / "sample_spaced5_v21_cfg1.json"))
    g = torch.Generator().manual_seed(1)
    c_img, pos = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 32, generator=g)
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([700])
    with torch.no_grad():
        same = CLDMDenoiser(nets.controlnet, nets.unet, Condition(pos, c_img), Condition(pos.clone(), c_img), 4.0)
        out = same(x, t)
        assert same.uncond_is_cond and same.forwards == 1 and same.batch_sizes == [1]
        both = CLDMDenoiser(nets.controlnet, nets.unet, Condition(pos, c_img), Condition(pos, c_img), 4.0,
                            batch_cfg=False)
        both.uncond_is_cond = False  # the two forwards the skip saves
        assert torch.equal(out, both(x, t)) and both.forwards == 2
        # any difference, in the text or in the condition latent, runs the pair
        for uncond in (Condition(pos + 1e-3, c_img), Condition(pos, c_img + 1e-3)):
            den = CLDMDenoiser(nets.controlnet, nets.unet, Condition(pos, c_img), uncond, 4.0)
            den(x, t)
            assert not den.uncond_is_cond and den.batch_sizes == [2]
