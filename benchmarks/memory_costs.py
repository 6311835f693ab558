"""Re-measure the memory planner's cost table (`diffbir_core.memory.COSTS`): working memory per tile pixel.

For each stage (stage 1 SwinIR, VAE encode, diffusion = IRControlNet + UNet on the cfg pair, VAE decode) and
each square size, one fresh child process builds the network at its official (real-size) configuration with
seeded random weights, then measures one call. The diffusion is what users run (``--diffusion host``, default):
ComfyUI's SD 2.1 UNet as Load Checkpoint builds it with our IRControlNet through ``DiffBIRControl``, one batched
cfg-pair call as ComfyUI's ``calc_cond_batch`` makes it, with the attention the DiffBIR Sampler gives the UNet
(``nodes/host/model_function.use_sdpa_on_cpu``: PyTorch SDPA on the CPU); ``--diffusion reference`` measures the
reference engine's own UNet (``diffbir_core.reference``) instead.

* CPU: the kernel's peak RSS of the process is reset (``/proc/self/clear_refs`` = 5) after the weights are
  built, and the working memory is the peak RSS during the call minus the RSS just before it;
* CUDA: ``torch.cuda.max_memory_allocated`` during the call minus ``memory_allocated`` before it.

The two sizes give the exact fit ``bytes = fixed + per_pixel * n + per_pixel2 * n^2`` (n = pixels of the image the
stage works on): quadratic through the origin where the cost per pixel grows with the size (attention), else
linear with a fixed part. The
result is printed as the Python table to paste into ``diffbir_core/memory.py`` and as a markdown table.
``--check SIZE`` additionally runs each stage at SIZE and prints the planner's prediction (without its safety
margin) beside the measurement.

Run from the repository root: ``python benchmarks/memory_costs.py [--stages vae_decode,vae_encode,stage1]
[--sizes 256,512] [--check 384] [--threads 1] [--device cuda --dtype fp16]``. The diffusion stage builds the
full-size UNet and ControlNet (about 5 GB of fp32 weights, 7 GB of RAM in all): run it alone.
"""

from __future__ import annotations

import argparse
import sys

import _common as C
import torch

TITLE = "memory planner cost table (working memory per pixel)"
STAGES = ("stage1", "vae_encode", "diffusion", "vae_decode")
CONTEXT_TOKENS, CONTEXT_DIM = 77, 1024  # OpenCLIP ViT-H text context of SD 2.1


def _call(stage: str, size: int, device, dtype, engine: str = "host"):
    """(the measured call, the networks kept alive) for one stage at one size; `engine` picks the diffusion's
    networks (see the module doc)."""
    g = torch.Generator().manual_seed(0)
    if stage == "stage1":
        net = C.our_network("swinir", seed=1, device=device, dtype=dtype)
        x = torch.rand(1, 3, size, size, generator=g).to(device, dtype)
        return (lambda: net(x)), net
    if stage in ("vae_encode", "vae_decode"):
        vae = C.our_network("vae", seed=2, device=device, dtype=dtype)
        if stage == "vae_encode":
            x = torch.rand(1, 3, size, size, generator=g).to(device, dtype) * 2 - 1
            return (lambda: vae.encode(x).mode()), vae
        z = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device, dtype)
        return (lambda: vae.decode(z)), vae
    if engine == "reference":
        from diffbir_core.reference.denoiser import CLDMDenoiser, Condition

        unet = C.our_network("unet", seed=0, device=device, dtype=dtype)
        cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
        ctx = torch.randn(2, CONTEXT_TOKENS, CONTEXT_DIM, generator=g).to(device, dtype)
        c_img = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device, dtype)
        x = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device, dtype)
        den = CLDMDenoiser(cn, unet, Condition(ctx[:1], c_img), Condition(ctx[1:], c_img), cfg_scale=4.0)
        t = torch.full((1,), 500, dtype=torch.long, device=device)
        return (lambda: den(x, t)), (unet, cn)
    # host: ComfyUI's SD 2.1 UNet (as Load Checkpoint builds it) with our ControlNet through DiffBIRControl, one
    # batched cfg-pair call as calc_cond_batch makes it, with the attention the DiffBIR Sampler picks on this device
    C.import_host(device)
    model_function = C.extension_module("nodes.host.model_function")
    base = C.host_base_model(device, dtype, seed=0)
    cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
    ctx = torch.randn(2, CONTEXT_TOKENS, CONTEXT_DIM, generator=g).to(device, dtype)
    c_img = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
    call = C.host_controlled_model(base, cn, c_img, size, dtype)
    sigma = base.model_sampling.sigma(torch.tensor([500.0])).to(device)
    x = (torch.randn(1, 4, size // 8, size // 8, generator=g) * (sigma.cpu() ** 2 + 1).sqrt()).to(device)
    options = {}
    model_function.use_sdpa_on_cpu(options, device)
    x2, sigma2 = torch.cat([x, x]), torch.cat([sigma, sigma])
    return (lambda: call(x2, sigma2, ctx, options)), (base, cn)


def child(args) -> None:
    device, dtype = C.setup(args)
    stage, size = args.child.split(":")
    size = int(size)
    fn, keep = _call(stage, size, device, dtype, args.diffusion)
    with torch.no_grad():
        if device.type == "cuda":
            C.sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fn()
            C.sync(device)
            work = torch.cuda.max_memory_allocated(device) - before
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM: the weights' build peak must not count
            except OSError:
                C.log("cannot reset the peak RSS (/proc/self/clear_refs): the figure includes the build peak")
            before = C.current_rss_mb() * 2**20
            fn()
            work = C.peak_rss_mb() * 2**20 - before
    del keep
    C.emit_result({"stage": stage, "size": size, "work_bytes": work})


def fit(points: dict[int, float]) -> tuple[float, float, float]:
    """(fixed, per_pixel, per_pixel2) through two (pixels, bytes) points: quadratic through the origin where the
    cost grows faster than linearly (attention), else linear with a fixed part (buffers of any size)."""
    (n1, b1), (n2, b2) = sorted(points.items())[:2]
    c = (b2 / n2 - b1 / n1) / (n2 - n1)
    if c > 0:
        return 0.0, b1 / n1 - c * n1, c
    slope = (b2 - b1) / (n2 - n1)
    return b1 - slope * n1, slope, 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(ap, repeats=1)
    ap.add_argument("--stages", default="stage1,vae_encode,vae_decode", help=f"comma list of {', '.join(STAGES)}")
    ap.add_argument("--sizes", default="256,512", help="two square sizes in pixels (multiples of 64)")
    ap.add_argument("--check", type=int, default=0, help="also measure this size and compare with the fit")
    ap.add_argument("--diffusion", default="host", choices=["host", "reference"],
                    help="host: ComfyUI's UNet + our ControlNet, what the DiffBIR Sampler runs (default); reference: "
                         "the reference engine's own UNet (diffbir_core.reference)")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    device, dtype = C.setup(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) != 2:
        ap.error("--sizes takes two sizes")
    rows, table = [], []
    from diffbir_core import memory

    for stage in args.stages.split(","):
        if stage not in STAGES:
            ap.error(f"unknown stage {stage!r}")
        points = {}
        for size in sizes + ([args.check] if args.check else []):
            C.log(f"{stage} at {size} px")
            res = C.run_child(__file__, C.child_argv(args, f"{stage}:{size}", ["--diffusion", args.diffusion]))
            points[size * size] = res["work_bytes"]
            rows.append(C.row(f"{stage} {size}x{size}: working memory, MiB", f"{res['work_bytes'] / 2**20:.0f}",
                              note=f"{res['work_bytes'] / (size * size):.0f} bytes/pixel; process peak RSS "
                                   f"{res['peak_rss_mb']:.0f} MiB"))
        fit_points = {n: b for n, b in points.items() if n in (sizes[0] ** 2, sizes[1] ** 2)}
        fixed, per_pixel, per_pixel2 = fit(fit_points)
        table.append(f'    "{stage}": StageCost(fixed={fixed:.4g}, per_pixel={per_pixel:.1f}, per_pixel2={per_pixel2:.4g}, '
                     'measured=...),')
        if args.check:
            n = args.check**2
            predicted = memory.StageCost(fixed, per_pixel, per_pixel2, "").bytes(n)
            shipped = memory.COSTS[stage].bytes(n, C.DTYPES[args.dtype].itemsize)
            measured = points[n]
            rows.append(C.row(f"{stage} {args.check}x{args.check}: fit prediction / measured, MiB",
                              f"{predicted / 2**20:.0f}", f"{measured / 2**20:.0f}", f"{predicted / measured:.3f}",
                              target="within 25%", met=abs(predicted / measured - 1) <= 0.25,
                              note=f"shipped table predicts {shipped / 2**20:.0f} MiB"))
    C.print_table(TITLE, rows, C.machine_line(device, dtype) + f"; fit through {sizes[0]} and {sizes[1]} px")
    print("\nCOSTS table (diffbir_core/memory.py):")
    print("\n".join(table))
    C.write_json(args.json, TITLE, C.machine_line(device, dtype), rows)


if __name__ == "__main__":
    sys.exit(main())
