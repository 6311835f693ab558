"""One cfg sampling step: ours against the official step, side by side (same weights, one process, interleaved).

* official: ``_official_step.OfficialStep``, a frozen per-op reference of DiffBIR's ``ControlLDM`` step: cond and
  uncond as two separate forwards, each the ControlNet forward then the controlled UNet, then CFG;
* ours (``--path core``, default): ``diffbir_core``'s ``CLDMDenoiser`` over our IRControlNet and UNet, as every
  sampler of the DiffBIR Sampler node calls it (``denoise_fn(x, t)``), with whatever it caches per run;
  ``--path host``: ComfyUI's SD 2.1 UNet (``BaseModel.apply_model``, cfg pair batched as ``calc_cond_batch``
  does) with our ``DiffBIRControl`` (nodes/control.py), the official step then using the host UNet's weights.

Both use the same random full-size weights (the official step reads the very tensors our networks were loaded
from, in their file layout) and the same inputs; the largest difference of the two outputs is printed. The two
alternate round by round (order reversed each round) and the ratio ours / official is taken per round.

FLOPs of one step (for ours a second step, after the first filled its per-run caches) are counted with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, SDPA and oneDNN linears; norms and
elementwise ops are not counted), and the achieved fraction is FLOPs / seconds / peak, where the peak
is this machine's measured dense matmul rate in the same dtype and thread count (best of a few 2048^3 matmuls).

``--compile`` (core path) runs our two networks through ``torch.compile`` (inductor; on the CPU with its
``freezing``, the weights being constants of an inference run): the first step, which compiles, is timed and
printed on its own (compile seconds = first step - a steady step); the FLOPs are those of the plain path the
compiled graph holds (no shared cfg-pair prefix, no kept text k/v: see ``ldm_blocks.compiling``).

``--config small`` builds a 0.3-width network (model_channels 96) for quick runs; the default is the real SD 2.1
size (7 GB of RAM at 512, tens of seconds per official step on one thread: keep ``--repeats`` small).

Run from the repository root, e.g. ``python benchmarks/step_bench.py --threads 1 --clock cpu --sizes 256,512``.
"""

from __future__ import annotations

import argparse
import math
import sys
from unittest import mock

import _common as C
import torch
from _official_step import OfficialStep
from torch.utils.flop_counter import FlopCounterMode

TITLE = "one cfg step: ours / official DiffBIR step (two forwards)"
SMALL = {"model_channels": 96, "num_head_channels": 32}  # 0.3 of SD 2.1's width (GroupNorm needs 32 | channels)


def _configs(name: str) -> tuple[dict | None, dict | None, int]:
    """(ControlNet config, UNet config, head channels); None = the official config."""
    from diffbir_core.arch import controlnet, unet

    if name == "full":
        return None, None, unet.OFFICIAL_CONFIG["num_head_channels"]
    return {**controlnet.OFFICIAL_CONFIG, **SMALL}, {**unet.OFFICIAL_CONFIG, **SMALL}, SMALL["num_head_channels"]


# ----------------------------------------------------------------------------------------- FLOPs, peak


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and P V of an attention (b, h, n, d): torch's counter has no formula for the CPU flash kernel."""
    b, h, nq, d = query_shape
    nk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * nq * nk * (d + dv)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's linear (diffbir_core's float32 CPU Linear): 2 M K N, as torch counts aten.addmm."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _flop_counter() -> FlopCounterMode:
    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_flops
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn) -> int:
    with _flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device, dtype, n: int = 2048, tries: int = 5) -> float:
    """FLOP/s of the best of `tries` n x n x n matmuls (the machine's dense peak as torch reaches it).

    On the CPU both of torch's GEMMs are tried: its BLAS (torch.mm; MKL) and oneDNN (the GEMM of its
    convolutions), since one can be far slower than the other (MKL on AMD: less than half of oneDNN)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    kernels = [lambda: torch.mm(a, b)]
    if device.type == "cpu" and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = float("inf")
    for kernel in kernels:
        kernel()
        best = min(best, *(C.timed(kernel, device) for _ in range(tries)))
    return 2 * n**3 / best


# ----------------------------------------------------------------------------------------- the two steps


def _inputs(size: int, context_dim: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = size // 8
    x = torch.randn(1, 4, h, h, generator=g)  # VP-space noisy latent x_t
    c_img = torch.randn(1, 4, h, h, generator=g)  # condition latent
    pos, neg = torch.randn(2, 1, 77, context_dim, generator=g)  # encoded prompts
    return [v.to(device) for v in (x, c_img, pos, neg)]


def _core_steps(args, size, device, dtype):
    from diffbir_core.reference.denoiser import CLDMDenoiser, Condition

    cn_cfg, unet_cfg, head = _configs(args.config)
    cn = C.our_network("controlnet", seed=1, config=cn_cfg, device=device, dtype=dtype)
    unet = C.our_network("unet", seed=0, config=unet_cfg, device=device, dtype=dtype)
    # The official step reads the same tensors in the file layout (a copy only where ours changed the layout).
    official = OfficialStep({k: v.contiguous() for k, v in cn.state_dict().items()},
                            {k: v.contiguous() for k, v in unet.state_dict().items()}, head)
    x, c_img, pos, neg = _inputs(size, unet.context_dim, device)
    x, c_img, pos, neg = (v.to(dtype) for v in (x, c_img, pos, neg))
    t = torch.tensor([args.timestep], device=device)
    den = CLDMDenoiser(cn, unet, Condition(pos, c_img), Condition(neg, c_img), cfg_scale=args.cfg)

    def ours():
        with torch.no_grad():
            return den(x, t)

    def ref():
        with torch.no_grad():
            return official(x, t, (pos, c_img), (neg, c_img), args.cfg)

    ours.networks = (cn, unet)
    return ours, ref, lambda out: out


def _compile(ours, device) -> tuple[float, int]:
    """Compiles our networks' forwards; (seconds of the first, compiling step minus a steady one, FLOPs of the
    plain path the graph holds)."""
    from diffbir_core.arch import ldm_blocks

    with mock.patch.object(ldm_blocks, "compiling", lambda: True):  # what the traced graph computes
        flops = count_flops(ours)
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    for net in ours.networks:
        net.forward = torch.compile(net.forward)
    C.log("compiling (the first step)")
    # Wall seconds: inductor compiles its C++/Triton kernels in worker processes, outside this one's CPU time.
    first = C.timed(ours, device, wall=True)
    steady = min(C.timed(ours, device, wall=True) for _ in range(2))
    return first - steady, flops


def _host_steps(args, size, device, dtype):
    C.import_host(device, args.host_attention)
    if args.config != "full":
        raise SystemExit("--path host builds ComfyUI's SD 2.1 UNet at its real size: use --config full")
    base = C.host_base_model(device, dtype, seed=0)
    cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
    official = OfficialStep({k: v.contiguous() for k, v in cn.state_dict().items()},
                            {k: v.contiguous() for k, v in base.diffusion_model.state_dict().items()}, 64)
    ms = base.model_sampling
    x_vp, c_img, pos, neg = _inputs(size, 1024, device)
    sigma = ms.sigma(torch.tensor([float(args.timestep)])).to(device)
    x_ve = x_vp * (sigma**2 + 1).sqrt()  # ComfyUI's sampler-space latent of the same x_t
    t = ms.timestep(sigma).round().long()
    controlled = C.host_controlled_model(base, cn, c_img, size, dtype)
    x2, sigma2, ctx = torch.cat([x_ve, x_ve]), torch.cat([sigma, sigma]), torch.cat([pos, neg]).to(dtype)

    def ours():  # what calc_cond_batch runs for a batched cfg pair carrying our control, then CFG
        with torch.no_grad():
            out = controlled(x2, sigma2, ctx, {})
            cond, uncond = out.chunk(2)
            return uncond + args.cfg * (cond - uncond)

    def ref():
        with torch.no_grad():
            return official(x_vp.to(dtype), t, (pos.to(dtype), c_img.to(dtype)), (neg.to(dtype), c_img.to(dtype)),
                            args.cfg)

    # The host returns the denoised latent, the official step the model output (eps or v): compare alike.
    return ours, ref, lambda out: ms.calculate_denoised(sigma, out.float(), x_ve)


def child_step(args, size: int) -> dict:
    device, dtype = C.setup(args)
    peak = matmul_peak(device, dtype)
    C.log(f"matmul peak {peak / 1e9:.1f} GFLOP/s; building the networks")
    ours, ref, ref_as_ours = (_host_steps if args.path == "host" else _core_steps)(args, size, device, dtype)
    C.log("warm-up and counting FLOPs")
    flops_ref = count_flops(ref)  # also its warm-up (first-call allocations, oneDNN primitive creation)
    ours()  # fills what ours keeps per run (text k/v): the counted step is a steady-state one, as steps 2..N
    flops_ours = count_flops(ours)
    compile_s = None
    if args.compile:
        compile_s, flops_ours = _compile(ours, device)
    C.log("comparing outputs")
    a, b = ours().float(), ref_as_ours(ref()).float()
    times = C.interleaved({"official": ref, "ours": ours}, args.repeats, device, warmup=False,
                          label=f"step {size}")
    # Measured again after the steps, the better of the two kept: on a shared core one short measurement can
    # catch a slow moment (seen: 82-124 GFLOP/s on one machine in one day), and the fraction is against peak.
    peak = max(peak, matmul_peak(device, dtype))
    return {"times": times, "flops_ref": flops_ref, "flops_ours": flops_ours, "peak": peak, "compile_s": compile_s,
            "max_abs": float((a - b).abs().max()), "max_ref": float(b.abs().max()),
            "rss_before_mb": C.current_rss_mb(), "cuda_peak_mb": C.cuda_peak_mb(device)}


# ----------------------------------------------------------------------------------------- table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=3)
    ap.add_argument("--sizes", default="256,512", help="comma-separated square image sizes (multiples of 64)")
    ap.add_argument("--config", default="full", choices=["full", "small"], help="network size (see above)")
    ap.add_argument("--path", default="core", choices=["core", "host"], help="how our step is run (see above)")
    ap.add_argument("--cfg", type=float, default=4.0, help="cfg scale (> 1: the pair is run)")
    ap.add_argument("--timestep", type=int, default=500, help="model timestep of the step")
    ap.add_argument("--host-attention", default="default", choices=["default", "sdpa"])
    ap.add_argument("--target", type=float, default=0.5, help="target ratio ours / official")
    ap.add_argument("--compile", action="store_true", help="our networks through torch.compile (core path; see above)")
    args = ap.parse_args()
    if args.compile and args.path != "core":
        ap.error("--compile compiles our two networks: it needs --path core")
    if args.child:
        C.emit_result(child_step(args, int(args.child.split(":")[1])))
        return 0

    device, dtype = C.setup(args)
    header = (C.machine_line(device, dtype) + f"; {args.config} size, path {args.path}"
              + (" (ours torch.compile'd)" if args.compile else "") + f", cfg {args.cfg:g}, t {args.timestep}")
    extra = ["--repeats", str(args.repeats), "--config", args.config, "--path", args.path, "--cfg", str(args.cfg),
             "--timestep", str(args.timestep), "--host-attention", args.host_attention] + (["--compile"] * args.compile)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        C.log(f"step {size}x{size}: child")
        res = C.run_child(__file__, C.child_argv(args, f"step:{size}", extra))
        t = res["times"]
        per_round = C.ratios(t["ours"], t["official"])
        ratio = C.stat(per_round)
        rows.append(C.row(
            f"step {size}x{size} (latent {size // 8}), s: ours / official", C.stat(t["ours"]), C.stat(t["official"]),
            ratio, f"ratio <= {args.target:g}", ratio["median"] <= args.target,
            note="per round " + ", ".join(f"{r:.3f}" for r in per_round)
                 + f"; max |ours - official| {res['max_abs']:.2e} (max |official| {res['max_ref']:.3g})"))
        # A sampler iteration is one such step (the cfg pair), so its rate is the "it/s" of a progress bar.
        rows.append(C.row(f"step {size}x{size}, it/s: ours / official",
                          f"{1 / C.stat(t['ours'])['median']:.3g}", f"{1 / C.stat(t['official'])['median']:.3g}"))
        if res["compile_s"] is not None:
            rows.append(C.row(f"step {size}x{size}, ours: torch.compile seconds (first step - a steady step, wall)",
                              f"{res['compile_s']:.1f}"))
        peak = res["peak"]
        for who, flops, secs in (("ours", res["flops_ours"], t["ours"]), ("official", res["flops_ref"], t["official"])):
            med = C.stat(secs)["median"]
            rows.append(C.row(f"step {size}x{size}, {who}: GFLOP per step / achieved GFLOP/s / fraction of peak",
                              f"{flops / 1e9:.1f}", f"{flops / med / 1e9:.1f} GFLOP/s",
                              f"{flops / med / peak:.2f}",
                              note=f"measured matmul peak {peak / 1e9:.1f} GFLOP/s" if who == "ours" else ""))
        rows.append(C.row(f"step {size}x{size} peak RSS, MiB (baseline: RSS after the steps)", f"{res['peak_rss_mb']:.0f}",
                          f"{res['rss_before_mb']:.0f}"))
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
