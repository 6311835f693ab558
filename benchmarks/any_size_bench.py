"""Any size, every setting on auto: peak memory and time of large restores against a 512 -> 512 restore.

Each restore runs in its own child process that builds every network at its official (real-size) config with
random weights (SwinIR stage 1, our SD 2.1 UNet, the IRControlNet, the VAE; as a ComfyUI session holds them),
asks the memory planner (`diffbir_core.memory.plan_restore`, CPU plan: the free RAM, each call within
CPU_CALL_BYTES, the fitting grid of least predicted time) for every stage's tiles, exactly as the nodes' tile_plan
auto does on the CPU, and restores one random image end to end with diffbir_core: ``stage1.restore`` ->
``reference.pipeline.apply_cldm`` (condition latent, sampling with the cfg pair batched, decode) -> wavelet colour
fix. Sizes: 512 is a 512 LQ at upscale 1, every larger size an LQ of a quarter of it at upscale 4 (4096: a 1024
input).

Per stage it measures the peak RSS (VmHWM, reset through /proc/self/clear_refs before the stage; the stages are
told apart by forward hooks on the stage-1 network, VAE encoder, ControlNet and VAE decoder) and compares the
working memory above the RSS before the stage with the planner's prediction (the cost table's working memory of
the planned tile plus the blend buffers, without the safety margin; the plan itself budgets 1.25x that).
Time per output pixel of each size is compared with the 512 one in the same run (CPU seconds of the child with
--threads 1 and --clock cpu, else wall seconds). It also prints the planner's fp16 plan of the largest size for a
simulated 6 GB and 12 GB GPU.

On CUDA (``--device cuda``) the memory measured is torch's allocation on the device (``max_memory_allocated``,
reset per stage) above the allocation before the stage, times are wall seconds, and the planner gets the device's
free memory with the networks loaded (``torch.cuda.mem_get_info``; no per-call limit), as the nodes' auto plan on
a GPU; ``--free GB`` plans for that much instead (e.g. a simulated 8 GB card).

Text conditioning is random (the CLIP text tower runs once per prompt and is left out). On this project's CPU a
2048 restore with one step takes about 25 CPU minutes and a 4096 one about 100; see benchmarks/README.md.

Run from the repository root: ``python benchmarks/any_size_bench.py --sizes 512,2048 --threads 1 --clock cpu``.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C
import torch

TITLE = "any size on auto: peak memory and time per pixel against a 512 -> 512 restore"
STAGE_NAMES = {"stage1": "stage 1", "vae_encode": "VAE encode", "diffusion": "diffusion", "vae_decode": "VAE decode"}
GB = 2**30


def reset_peak() -> None:
    """Start a new VmHWM measurement (Linux: writing 5 to clear_refs resets the peak RSS to the current RSS)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class StageMeter:
    """Peak memory and time of each stage; `enter(stage)` closes the running stage and opens the next. On the CPU
    the memory is the RSS (VmHWM), on CUDA torch's allocation on the device (``max_memory_allocated``, reset per
    stage; the time is then wall time after a synchronize)."""

    def __init__(self, clock: str, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.clock = time.process_time if clock == "cpu" and not self.cuda else time.perf_counter
        self.current, self.before, self.peaks, self.times, self.start = None, {}, {}, {}, 0.0

    def _now(self) -> float:
        C.sync(self.device)
        return self.clock()

    def enter(self, stage: str | None) -> None:
        if stage == self.current:
            return
        if self.current is not None:
            self.times[self.current] = self._now() - self.start
            self.peaks[self.current] = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda
                                        else C.peak_rss_mb())
        if stage is not None:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
                self.before[stage] = torch.cuda.memory_allocated(self.device) / 2**20
            else:
                reset_peak()
                self.before[stage] = C.current_rss_mb()
            self.start = self._now()
        self.current = stage

    def hook(self, module: torch.nn.Module, stage: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.enter(stage))


def child_restore(args, size: int) -> dict:
    device, dtype = C.setup(args)
    import psutil

    from diffbir_core import memory, stage1
    from diffbir_core.colorfix import color_fix_decoded
    from diffbir_core.reference.pipeline import StageTwoNets, apply_cldm
    from diffbir_core.schedule import DiffusionSchedule

    swinir = C.our_network("swinir", seed=3, device=device, dtype=dtype)
    unet = C.our_network("unet", seed=0, device=device, dtype=dtype)
    cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
    vae = C.our_network("vae", seed=2, device=device, dtype=dtype)
    rss_built = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else C.current_rss_mb()

    lq_size, upscale = (512, 1) if size <= 512 else (size // 4, 4)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, lq_size, lq_size, generator=g).to(device)
    pos = torch.randn(1, 77, 1024, generator=g).to(device, dtype)
    neg = torch.randn(1, 77, 1024, generator=g).to(device, dtype)

    # the planner's inputs, as the nodes pass them: on the CPU ComfyUI's get_free_memory is psutil's and each
    # call stays within CPU_CALL_BYTES; on CUDA it is the device's free memory (the weights already loaded)
    if device.type == "cuda":
        free = args.free * GB if args.free else torch.cuda.mem_get_info(device)[0]
        call_limit = None
    else:
        free = args.free * GB if args.free else psutil.virtual_memory().available
        call_limit = memory.CPU_CALL_BYTES
    plans = memory.plan_restore(free, (size, size), (size, size), dtype, call_limit=call_limit)
    for plan in plans.values():
        C.log(f"restore {size}: {plan.describe()}")

    meter = StageMeter(args.clock, device)
    meter.hook(vae.encoder, "vae_encode")
    meter.hook(cn, "diffusion")
    meter.hook(vae.decoder, "vae_decode")
    total0 = meter.clock()
    p1 = plans["stage1"]
    with torch.no_grad():
        meter.enter("stage1")  # the bicubic upscale before the network belongs to stage 1 (until the encoder runs)
        s1 = stage1.restore(lambda x: swinir(x.to(device, dtype)), lq, "swinir", upscale, "v2.1", scale=swinir.scale,
                            size_multiple=swinir.size_multiple, tile=p1.tile, stride=p1.stride)
        cond = s1.image.to(dtype)
        pe, pd, pdec = plans["vae_encode"], plans["diffusion"], plans["vae_decode"]
        res = apply_cldm(StageTwoNets(cn, unet, vae), cond, pos, neg, DiffusionSchedule.for_version("v2.1"),
                         args.steps, sampler=args.sampler, cfg_scale=args.cfg,
                         cldm_tiled=pd.tiled, cldm_tile_size=pd.tile or 512, cldm_tile_stride=pd.stride or 256,
                         vae_encoder_tiled=pe.tiled, vae_encoder_tile_size=pe.tile or 256,
                         vae_encoder_tile_stride=pe.stride or None,
                         vae_decoder_tiled=pdec.tiled, vae_decoder_tile_size=pdec.tile or 256,
                         vae_decoder_tile_stride=pdec.stride or None)
        meter.enter("colour fix")
        final = color_fix_decoded(res.decoded, s1.image.to(res.decoded.dtype))
        meter.enter(None)
    total = meter.clock() - total0
    predicted = {}
    for stage, plan in plans.items():
        predicted[stage] = memory.predicted_bytes(stage, size, size, plan.tile, dtype, safety=1.0) / 2**20
    return {"size": size, "lq": lq_size, "out_shape": list(final.shape), "finite": bool(torch.isfinite(final).all()),
            "rss_built_mb": rss_built, "free_gb": free / GB, "plans": {s: p.describe() for s, p in plans.items()},
            "planned_mb": {s: p.predicted_bytes / 2**20 for s, p in plans.items()}, "predicted_mb": predicted,
            "before_mb": meter.before, "peaks_mb": meter.peaks, "times": meter.times, "total_s": total,
            "restore_peak_mb": max(meter.peaks.values()),  # VmHWM is reset per stage: the restore's peak is theirs
            "model_calls": res.denoiser.forwards, "diffusion_tiles": len(res.tiles_latent) or 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=1)
    ap.add_argument("--sizes", default="512,2048", help="output sides, comma-separated; 512 is the baseline")
    ap.add_argument("--steps", type=int, default=1, help="sampling steps (one model evaluation each)")
    ap.add_argument("--sampler", default="edm_dpm++_3m_sde", help="an official sampler (default: v2.1's)")
    ap.add_argument("--cfg", type=float, default=4.0, help="cfg scale (the cond/uncond pair is one batch of 2)")
    ap.add_argument("--free", type=float, default=0.0, help="plan for this many GB free instead of the free RAM")
    args = ap.parse_args()
    if args.child:
        C.emit_result(child_restore(args, int(args.child)))
        return 0
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {512})
    bad = [s for s in sizes if s % 256]
    if bad:
        raise SystemExit(f"--sizes: {bad} are not multiples of 256 (the LQ is a quarter of the output, a multiple of 64)")

    from diffbir_core import memory

    device, dtype = C.setup(args)
    cuda = device.type == "cuda"
    mem = "peak VRAM (torch's max allocated)" if cuda else "peak RSS"
    plan_kind = "GPU plan: the device's free memory" if cuda else "CPU plan"
    if args.free:
        plan_kind += f", planned for {args.free:g} GB free"
    header = C.machine_line(device, dtype) + (f"; {args.steps} step(s) {args.sampler}, cfg {args.cfg} (pair batched); "
                                              f"every tile from the planner ({plan_kind})")
    extra = [a for k, v in (("--steps", args.steps), ("--sampler", args.sampler), ("--cfg", args.cfg),
                            ("--free", args.free)) for a in (k, str(v))]
    results = {}
    for size in sizes:
        C.log(f"any-size child: {size}")
        results[size] = C.run_child(__file__, C.child_argv(args, str(size), extra))
    base = results[512]
    rows = []
    for size in sizes:
        r = results[size]
        for stage in memory.STAGES:
            measured = r["peaks_mb"][stage] - r["before_mb"][stage]
            pred = r["predicted_mb"][stage]
            ok = abs(pred / max(measured, 1.0) - 1) <= 0.25
            rows.append(C.row(f"{size}: {STAGE_NAMES[stage]} working memory, MiB: predicted / measured",
                              f"{pred:.0f}", f"{measured:.0f}", f"{pred / max(measured, 1.0):.2f}", "within 25 %", ok,
                              note=f"{r['plans'][stage]}; planned with margin {r['planned_mb'][stage]:.0f} MiB; "
                                   f"{mem} {r['peaks_mb'][stage]:.0f} MiB"))
        stage_times = ", ".join(f"{name} {r['times'][name]:.1f}" for name in list(memory.STAGES) + ["colour fix"])
        rows.append(C.row(f"{size}: restore time, s", f"{r['total_s']:.1f}", note=f"{args.clock} seconds: {stage_times}"))
        if size == 512:
            continue
        ratio = r["restore_peak_mb"] / base["restore_peak_mb"]
        rows.append(C.row(f"{size}: restore {mem}, MiB: {r['lq']} -> {size} auto / 512 -> 512 auto",
                          f"{r['restore_peak_mb']:.0f}", f"{base['restore_peak_mb']:.0f}", f"{ratio:.3f}", "ratio <= 1.50",
                          ratio <= 1.5, note=f"{'VRAM' if cuda else 'RSS'} with the networks built: "
                                             f"{r['rss_built_mb']:.0f} / "
                                             f"{base['rss_built_mb']:.0f} MiB; planned for {r['free_gb']:.1f} GB free"))
        per_pixel = (r["total_s"] / size**2) / (base["total_s"] / 512**2)
        rows.append(C.row(f"{size}: restore time per output pixel, {size} auto / 512 untiled",
                          f"{r['total_s']:.0f} s", f"{base['total_s']:.0f} s", f"{per_pixel:.2f}", "ratio <= 1.30",
                          per_pixel <= 1.3, note=f"{args.clock} seconds; {r['model_calls']} model evaluation(s), "
                                                 f"{r['diffusion_tiles']} latent tile(s) each"))
        for stage in list(memory.STAGES) + ["colour fix"]:
            t = (r["times"][stage] / size**2) / (base["times"][stage] / 512**2)
            rows.append(C.row(f"{size}: {stage} time per output pixel / 512's", f"{r['times'][stage]:.1f} s",
                              f"{base['times'][stage]:.1f} s", f"{t:.2f}"))
    for r in results.values():
        if not r["finite"] or r["out_shape"][-1] != r["size"]:
            rows.append(C.row(f"restore output {r['size']}", f"shape {r['out_shape']}, finite {r['finite']}", met=False))
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    largest = max(sizes)
    print(f"\nplanner, {largest} x {largest} restore on a simulated GPU, fp16 (UNet + ControlNet weights 2.5 GB to load):")
    for free in (6, 12):
        print(f"{free} GB free:")
        plans = memory.plan_restore(free * GB, (largest, largest), (largest, largest), torch.float16,
                                    weights_bytes={"diffusion": 2.5 * GB})
        for plan in plans.values():
            print("  " + plan.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
