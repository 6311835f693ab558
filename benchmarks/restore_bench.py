"""Full restore: peak memory of a large tiled restore against a 512 -> 512 restore (real-size random networks).

Each restore runs in its own child process, which builds every network first (SwinIR stage 1, the SD 2.1 UNet,
the IRControlNet and the VAE, all at their official configs with random weights, as a ComfyUI session holds
them) and then restores one image end to end with diffbir_core:
``stage1.restore`` (SwinIR pipeline) -> ``reference.pipeline.apply_cldm`` (condition latent, sampling with the
cfg pair batched, decode) -> wavelet colour fix.

* baseline: a 512 x 512 LQ restored at upscale 1 (512 -> 512), nothing tiled;
* ours: a ``--out-size / 4`` LQ restored at upscale 4 with tiling in every stage: stage-1 tiles
  (``--s1-tile``/``--s1-stride``), tiled diffusion (``--cldm-tile``/``--cldm-stride``, pixels; official 512/256),
  tiled VAE encode and decode (``--vae-tile`` pixels, stride half of it; official 256).
Peak RSS is the kernel's rusage of each child; the RSS after the networks are built (weights) is printed too, so
the growth of the working memory alone can be read off. Target: ours <= 1.3 x the baseline's peak.

The UNet is the host's (ComfyUI's openaimodel.UNetModel at the SD 2.1 config) unless ``--unet ours``. Text
conditioning is random (the CLIP text tower runs once per prompt and is left out). Each diffusion step of a
large image is one ControlNet + UNet call per latent tile: on 2 CPU cores a 2048 x 2048 output (256 x 256 latent,
49 tiles of 64) takes about an hour for one step, so the default is a 768 x 768 output (4 tiles) and one step.

Run from the repository root: ``python benchmarks/restore_bench.py [--out-size 2048] [--steps 1]
[--device cuda --dtype fp16]`` (default: about 10 minutes on 2 busy CPU cores, 8 GB of RAM).
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C
import torch

TITLE = "full restore: peak memory, tiled large output vs 512 -> 512"


def child_restore(args, mode: str) -> dict:
    device, dtype = C.setup(args)
    from diffbir_core import stage1
    from diffbir_core.colorfix import color_fix_decoded
    from diffbir_core.reference.pipeline import StageTwoNets, apply_cldm
    from diffbir_core.schedule import DiffusionSchedule

    t0 = time.perf_counter()
    swinir = C.our_network("swinir", seed=3, device=device, dtype=dtype)
    if args.unet == "host":
        C.import_host(device, args.host_attention)
        unet = C.HostUNet(C.host_base_model(device, dtype, seed=0).diffusion_model)
    else:
        unet = C.our_network("unet", seed=0, device=device, dtype=dtype)
    cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
    vae = C.our_network("vae", seed=2, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    rss_built = C.current_rss_mb()
    C.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cuda_built = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None

    big = mode == "big"
    lq_size = args.out_size // 4 if big else 512
    upscale = 4 if big else 1
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, lq_size, lq_size, generator=g).to(device)
    pos = torch.randn(1, 77, 1024, generator=g).to(device=device, dtype=dtype)
    neg = torch.randn(1, 77, 1024, generator=g).to(device=device, dtype=dtype)
    phases, peaks = {}, {}

    def phase(name, fn):
        C.sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            out = fn()
        C.sync(device)
        phases[name] = time.perf_counter() - t
        peaks[name] = C.peak_rss_mb()
        C.log(f"restore {mode}: {name} {phases[name]:.1f} s, VmHWM {peaks[name]:.0f} MiB")
        return out

    s1 = phase("stage 1", lambda: stage1.restore(
        lambda x: swinir(x.to(dtype)), lq, "swinir", upscale, "v2.1", scale=swinir.scale,
        size_multiple=swinir.size_multiple, tile=args.s1_tile if big else 0, stride=args.s1_stride))
    cond = s1.image.to(dtype)
    tiles = {}
    if big:
        tiles = {"cldm_tiled": True, "cldm_tile_size": args.cldm_tile, "cldm_tile_stride": args.cldm_stride,
                 "vae_encoder_tiled": True, "vae_encoder_tile_size": args.vae_tile,
                 "vae_decoder_tiled": True, "vae_decoder_tile_size": args.vae_tile}
    res = phase("stage 2 (encode, sample, decode)", lambda: apply_cldm(
        StageTwoNets(cn, unet, vae), cond, pos, neg, DiffusionSchedule.for_version("v2.1"), args.steps,
        sampler=args.sampler, cfg_scale=args.cfg, **tiles))
    final = phase("colour fix", lambda: color_fix_decoded(res.decoded, s1.image.to(res.decoded.dtype)))
    out_shape = list(final.shape)
    return {"mode": mode, "lq": lq_size, "out_shape": out_shape, "finite": bool(torch.isfinite(final).all()),
            "rss_built_mb": rss_built, "phases": phases, "peaks": peaks, "build_s": build_s,
            "diffusion_tiles": len(res.tiles_latent) or 1, "model_calls": res.denoiser.forwards,
            "batch_sizes": sorted(set(res.denoiser.batch_sizes)), "cuda_built_mb": cuda_built,
            "cuda_peak_mb": C.cuda_peak_mb(device)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=1)
    ap.add_argument("--out-size", type=int, default=768, help="output side of the large restore (LQ = out/4)")
    ap.add_argument("--steps", type=int, default=1, help="sampling steps (one model evaluation each)")
    ap.add_argument("--sampler", default="edm_dpm++_3m_sde", help="an official sampler (default: v2.1's)")
    ap.add_argument("--cfg", type=float, default=4.0, help="cfg scale (the cond/uncond pair is one batch of 2)")
    ap.add_argument("--unet", default="host", choices=["host", "ours"])
    ap.add_argument("--host-attention", default="default", choices=["default", "sdpa"])
    ap.add_argument("--s1-tile", type=int, default=512)
    ap.add_argument("--s1-stride", type=int, default=384)
    ap.add_argument("--cldm-tile", type=int, default=512)
    ap.add_argument("--cldm-stride", type=int, default=256)
    ap.add_argument("--vae-tile", type=int, default=256)
    args = ap.parse_args()
    if args.child:
        C.emit_result(child_restore(args, args.child))
        return 0
    if args.out_size % 256 or args.out_size < 512:
        raise SystemExit("--out-size must be a multiple of 256 (LQ = out/4, a multiple of 64) and at least 512 "
                         "(smaller outputs are brought to a 512 short edge by the official pipeline)")

    device, dtype = C.setup(args)
    header = (C.machine_line(device, dtype) + f"; UNet {args.unet}, {args.steps} step(s) {args.sampler}, cfg {args.cfg} "
              f"(pair batched); tiles: stage 1 {args.s1_tile}/{args.s1_stride}, diffusion {args.cldm_tile}/"
              f"{args.cldm_stride} px, VAE {args.vae_tile}/{args.vae_tile // 2} px")
    extra = [a for k, v in (("--out-size", args.out_size), ("--steps", args.steps), ("--sampler", args.sampler),
                            ("--cfg", args.cfg),
                            ("--unet", args.unet), ("--host-attention", args.host_attention),
                            ("--s1-tile", args.s1_tile), ("--s1-stride", args.s1_stride),
                            ("--cldm-tile", args.cldm_tile), ("--cldm-stride", args.cldm_stride),
                            ("--vae-tile", args.vae_tile)) for a in (k, str(v))]
    results = {}
    for mode in ("base", "big"):
        C.log(f"restore child: {mode}")
        results[mode] = C.run_child(__file__, C.child_argv(args, mode, extra))
    base, big = results["base"], results["big"]
    out = args.out_size
    ratio = big["peak_rss_mb"] / base["peak_rss_mb"]
    excess = (big["peak_rss_mb"] - big["rss_built_mb"]) / max(1.0, base["peak_rss_mb"] - base["rss_built_mb"])
    rows = [
        C.row(f"restore peak RSS, MiB: {big['lq']} -> {out} tiled / 512 -> 512 untiled", f"{big['peak_rss_mb']:.0f}",
              f"{base['peak_rss_mb']:.0f}", f"{ratio:.3f}", "ratio <= 1.30", ratio <= 1.30,
              note=f"RSS with the networks built (weights): {big['rss_built_mb']:.0f} / {base['rss_built_mb']:.0f} "
                   f"MiB; working memory above it {big['peak_rss_mb'] - big['rss_built_mb']:.0f} / "
                   f"{base['peak_rss_mb'] - base['rss_built_mb']:.0f} MiB (ratio {excess:.2f})"),
    ]
    if big.get("cuda_peak_mb"):
        cr = big["cuda_peak_mb"] / base["cuda_peak_mb"]
        rows.append(C.row(f"restore CUDA peak allocated, MiB: {big['lq']} -> {out} / 512 -> 512",
                          f"{big['cuda_peak_mb']:.0f}", f"{base['cuda_peak_mb']:.0f}", f"{cr:.3f}", "ratio <= 1.30",
                          cr <= 1.30, note=f"weights {big['cuda_built_mb']:.0f} MiB"))
    for name in big["phases"]:
        rows.append(C.row(f"restore time, {name}, s", f"{big['phases'][name]:.1f}", f"{base['phases'][name]:.1f}",
                          f"{big['phases'][name] / base['phases'][name]:.2f}",
                          note=(f"{big['model_calls']} model evaluation(s) of batch {big['batch_sizes']} (cfg pair), each "
                                f"{big['diffusion_tiles']} ControlNet + UNet calls (latent tiles); 512: "
                                f"{base['model_calls']} of batch {base['batch_sizes']}, untiled; wall time"
                                ) if name.startswith("stage 2") else ""))
    for r in (base, big):
        if not r["finite"] or r["out_shape"][-1] != (out if r is big else 512):
            rows.append(C.row(f"restore output {r['mode']}", f"shape {r['out_shape']}, finite {r['finite']}",
                              met=False))
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
