"""What a sampling step reuses instead of recomputing: the text context's k/v in every cross-attention, the
uncond half of a cfg pair whose uncond equals its cond, and the part of a cfg pair before the first
cross-attention (the same for cond and uncond). Each must give the uncached result and must be dropped when
its inputs change (new prompt, weights changed in place or replaced, a new run, halves that differ)."""

from pathlib import Path

import pytest
import torch

from diffbir_core.reference import golden
from diffbir_core.arch import ldm_blocks
from diffbir_core.arch.ldm_blocks import CrossAttention, attention, clear_context_caches
from diffbir_core.reference.denoiser import CLDMDenoiser, Condition

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


class Batches:
    """The batch size each call of a layer saw."""

    def __init__(self, layer):
        self.seen = []
        layer.register_forward_hook(lambda _m, args, _out: self.seen.append(args[0].shape[0]))


def _first_transformer(net):
    return next(m for m in net.modules() if isinstance(m, ldm_blocks.BasicTransformerBlock))


@pytest.mark.parametrize("half", [1, 2])
def test_cfg_pair_runs_its_shared_prefix_once_with_the_two_forward_result(half):
    """cond and uncond share x, t and the condition latent: up to the first cross-attention the pair is one
    computation. The batched pair must match the official two forwards (one per prompt) within the golden
    single-forward tolerance, and the prefix layers must have run at half the batch."""
    nets = golden._stage2_nets(golden.load_golden(GOLDEN / "sample_spaced5_v21_cfg1.json"))
    cn, unet = nets.controlnet, nets.unet
    g = torch.Generator().manual_seed(2)
    x, hint = torch.randn(half, 4, 16, 16, generator=g), torch.randn(half, 4, 16, 16, generator=g)
    pos, neg = torch.randn(2, half, 77, 32, generator=g)
    t = torch.full((half,), 600)
    seen = {name: Batches(layer) for name, layer in (
        ("cn_in", cn.input_blocks[0][0]), ("unet_in", unet.input_blocks[0][0]),
        ("cn_self", _first_transformer(cn).attn1), ("cn_cross", _first_transformer(cn).attn2),
        ("unet_self", _first_transformer(unet).attn1), ("unet_cross", _first_transformer(unet).attn2))}
    with torch.no_grad():
        pair = (torch.cat([x, x]), torch.cat([hint, hint]), torch.cat([t, t]), torch.cat([pos, neg]))
        control = cn(*pair)
        out = unet(pair[0], pair[2], pair[3], control=control)
        assert {k: v.seen for k, v in seen.items()} == {
            "cn_in": [half], "unet_in": [half], "cn_self": [half], "unet_self": [half],
            "cn_cross": [2 * half], "unet_cross": [2 * half]}
        assert all(c.shape[0] == 2 * half for c in control) and out.shape[0] == 2 * half
        for i, ctx in enumerate((pos, neg)):  # the official step: one forward per prompt
            ref_control = cn(x, hint, t, ctx)
            ref = unet(x, t, ctx, control=ref_control)
            got = out[i * half:(i + 1) * half]
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
            for c, rc in zip(control, ref_control):
                torch.testing.assert_close(c[i * half:(i + 1) * half], rc, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("differs", ["x", "hint", "t"])
def test_pair_halves_that_differ_run_whole(differs):
    """A batch whose halves differ in anything but the context is not a cfg pair: nothing is shared."""
    nets = golden._stage2_nets(golden.load_golden(GOLDEN / "sample_spaced5_v21_cfg1.json"))
    cn, unet = nets.controlnet, nets.unet
    g = torch.Generator().manual_seed(3)
    x, hint = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 77, 32, generator=g)
    xs, hints, ts = [x, x], [hint, hint], [torch.tensor([600]), torch.tensor([600])]
    {"x": xs, "hint": hints, "t": ts}[differs][1] = {"x": x + 1e-3, "hint": hint + 1e-3, "t": torch.tensor([599])}[differs]
    seen_cn, seen_unet = Batches(cn.input_blocks[0][0]), Batches(unet.input_blocks[0][0])
    with torch.no_grad():
        X, T = torch.cat(xs), torch.cat(ts)
        control = cn(X, torch.cat(hints), T, ctx)
        out = unet(X, T, ctx, control=control)
        assert seen_cn.seen == [2]  # the ControlNet reads the hint; the UNet does not
        assert seen_unet.seen == [1 if differs == "hint" else 2]
        for i in range(2):
            ref = unet(xs[i], ts[i], ctx[i:i + 1], control=cn(xs[i], hints[i], ts[i], ctx[i:i + 1]))
            torch.testing.assert_close(out[i:i + 1], ref, atol=1e-4, rtol=1e-4)


def test_pair_shares_prefix_only_for_even_batches_with_equal_halves():
    a = torch.randn(1, 3)
    assert ldm_blocks.pair_shares_prefix(2, torch.cat([a, a]), torch.tensor(5))
    assert ldm_blocks.pair_shares_prefix(4, torch.cat([a, -a, a, -a]))
    assert not ldm_blocks.pair_shares_prefix(4, torch.cat([a, a, -a, -a]))  # halves [a, a] and [-a, -a]
    assert not ldm_blocks.pair_shares_prefix(1, a)
    assert not ldm_blocks.pair_shares_prefix(3, torch.cat([a, a, a]))
    assert not ldm_blocks.pair_shares_prefix(2, a)  # a batch other than the context's
    half = torch.randn(2, 3)
    x, t = ldm_blocks.pair_prefix_inputs(4, torch.cat([half, half]), torch.tensor(5))
    assert torch.equal(x, half) and int(t) == 5
    whole = torch.randn(4, 3)
    assert ldm_blocks.pair_prefix_inputs(4, whole)[0] is whole
    assert torch.equal(ldm_blocks.repeat_to_batch(half, 4), torch.cat([half, half]))
    assert ldm_blocks.repeat_to_batch(half, 2) is half


def test_networks_compile_as_whole_graphs_of_the_plain_path(monkeypatch):
    """torch.compile traces each network as one graph (fullgraph=True raises at any graph break): the
    shortcuts that decide on values outside the graph (oneDNN's linear op, the shared cfg-pair prefix, the
    kept text k/v) step aside while traced (`ldm_blocks.compiling`). The graph computes the plain path: equal
    to an eager run with the shortcuts off, within the single-forward tolerance of the default eager run, and
    it keeps nothing between calls."""
    nets = golden._stage2_nets(golden.load_golden(GOLDEN / "sample_spaced5_v21_cfg1.json"))
    cn, unet = nets.controlnet, nets.unet
    g = torch.Generator().manual_seed(4)
    x, hint = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    pair = (torch.cat([x, x]), torch.cat([hint, hint]), torch.tensor([600, 600]), torch.randn(2, 77, 32, generator=g))
    cross = [m for net in (cn, unet) for n, m in net.named_modules() if n.endswith("attn2")]

    def step(control_net, denoiser):
        return denoiser(pair[0], pair[2], pair[3], control=control_net(*pair))

    with torch.no_grad():
        default = step(cn, unet)
        with monkeypatch.context() as m:
            m.setattr(ldm_blocks, "compiling", lambda: True)
            plain = step(cn, unet)
        clear_context_caches(cn)
        clear_context_caches(unet)
        torch._dynamo.reset()
        try:
            traced = step(torch.compile(cn, fullgraph=True, backend="eager"),
                          torch.compile(unet, fullgraph=True, backend="eager"))
        finally:
            torch._dynamo.reset()
    assert torch.equal(traced, plain)
    torch.testing.assert_close(traced, default, atol=1e-4, rtol=1e-4)
    assert cross and not any(m._kv_entries for m in cross)
