"""Stage 2: one sampling step of the host's SD 2.1 UNet with our IRControlNet, against the same step without control.

The host's UNet is ComfyUI's ``openaimodel.UNetModel`` in its ``BaseModel`` at the real SD 2.1 config (as the
stock checkpoint loader builds it) with random weights; the ControlNet is ours at the official config. One step
is one model evaluation of the cfg pair, batched (batch 2: cond + uncond), at each ``--sizes`` image size:

* ours (``--path comfy``, default): what ComfyUI's ``calc_cond_batch`` runs for a batched pair carrying our
  control: ``DiffBIRControl.get_control`` (nodes/control.py: condition latent, ControlNet forward, control dict)
  then ``BaseModel.apply_model`` with the controls;
  ``--path core``: diffbir_core's ``CLDMDenoiser`` (one batched ControlNet + UNet call, then CFG) driving the
  host UNet;
* baseline: ``BaseModel.apply_model`` of the same batch without control.
The two alternate round by round in one child process per size; the ratio is taken per round. That child's
peak RSS (the kernel's rusage of that process) is the peak of the step with both networks resident; its RSS
before the first step (interpreter + weights) is printed beside it.
Target: the ControlNet adds at most 55 % to a plain UNet step (ratio <= 1.55).

The host's attention is ComfyUI's choice for the device (on the CPU sub-quadratic attention, on NVIDIA SDPA);
``--host-attention sdpa`` forces SDPA (ComfyUI's --use-pytorch-cross-attention) for both terms of the ratio.

Run from the repository root: ``python benchmarks/stage2_bench.py [--sizes 256,512] [--repeats 3]
[--device cuda --dtype fp16]`` (default: about 8 minutes on 2 busy CPU cores, 8 GB of RAM).
"""

from __future__ import annotations

import argparse
import sys

import _common as C
import torch

TITLE = "stage 2: one step (cfg pair batched), host SD 2.1 UNet + our IRControlNet"
CFG = 4.0


def _step_fns(args, size, device, dtype):
    """(plain step, step with control, note) at `size` pixels, cfg pair as one batch of 2."""
    base = C.host_base_model(device, dtype, seed=0)
    cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
    h = size // 8
    g = torch.Generator().manual_seed(0)
    ms = base.model_sampling
    sigma = ms.sigma(torch.tensor([500.0])).to(device)
    x1 = (torch.randn(1, 4, h, h, generator=g) * (sigma.cpu() ** 2 + 1).sqrt()).to(device)  # VE-space latent
    ctx = torch.randn(2, 77, 1024, generator=g).to(device=device, dtype=dtype)  # cond, uncond
    cond_latent = torch.randn(1, 4, h, h, generator=g).to(device)
    x2, sigma2 = torch.cat([x1, x1]), torch.cat([sigma, sigma])

    def plain():
        with torch.no_grad():
            return base.apply_model(x2, sigma2, c_crossattn=ctx, transformer_options={})

    path = args.path
    note = ""
    if path == "comfy":
        try:
            controlled = C.host_controlled_model(base, cn, cond_latent, size, dtype)
        except Exception as err:  # noqa: BLE001 - e.g. a half-written node module: measure the core path instead, and say so
            note = f"nodes.host.control failed to import ({err}); measured the core path"
            path = "core"
    if path == "comfy":
        def with_control():
            with torch.no_grad():
                return controlled(x2, sigma2, ctx, {})
    else:
        from diffbir_core.reference.denoiser import CLDMDenoiser, Condition

        x_vp = ms.calculate_input(sigma, x1)
        t = ms.timestep(sigma).float()
        den = CLDMDenoiser(cn, C.HostUNet(base.diffusion_model), Condition(ctx[:1], cond_latent.to(dtype)),
                           Condition(ctx[1:], cond_latent.to(dtype)), cfg_scale=CFG)

        def with_control():
            with torch.no_grad():
                return den(x_vp.to(dtype), t)
    return plain, with_control, path, note


def child_step(args, size: int) -> dict:
    device, dtype = C.setup(args)
    C.import_host(device, args.host_attention)
    plain, with_control, path, note = _step_fns(args, size, device, dtype)
    before = C.current_rss_mb()
    times = C.interleaved({"plain": plain, "control": with_control}, args.repeats, device,
                          warmup=not args.no_warmup, label=f"stage2 {size}")
    return {"times": times, "rss_before_mb": before, "cuda_peak_mb": C.cuda_peak_mb(device), "path": path,
            "note": note, "host_attention": C.host_attention_name()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=3)
    ap.add_argument("--sizes", default="256,512", help="comma-separated square image sizes (multiples of 64)")
    ap.add_argument("--path", default="comfy", choices=["comfy", "core"], help="how our step is driven (see above)")
    ap.add_argument("--host-attention", default="default", choices=["default", "sdpa"])
    ap.add_argument("--no-warmup", action="store_true", help="no untimed first pair (saves time on slow machines)")
    args = ap.parse_args()
    if args.child:
        C.emit_result(child_step(args, int(args.child.split(":")[1])))
        return 0

    device, dtype = C.setup(args)
    rows, header = [], C.machine_line(device, dtype)
    extra = ["--repeats", str(args.repeats), "--path", args.path, "--host-attention", args.host_attention]
    if args.no_warmup:
        extra.append("--no-warmup")
    for size in [int(s) for s in args.sizes.split(",")]:
        C.log(f"stage 2 step {size}x{size}: child")
        res = C.run_child(__file__, C.child_argv(args, f"step:{size}", extra))
        t = res["times"]
        ratio = C.stat(C.ratios(t["control"], t["plain"]))
        rows.append(C.row(f"stage 2 step {size}x{size} (latent {size // 8}, batch 2), s: with control / plain UNet",
                          C.stat(t["control"]), C.stat(t["plain"]), ratio, "ratio <= 1.55", ratio["median"] <= 1.55,
                          note=f"path {res['path']}, host attention {res['host_attention']}"
                               + (f"; {res['note']}" if res["note"] else "")))
        peak = res["peak_rss_mb"]
        rows.append(C.row(f"stage 2 step peak RSS {size}x{size}, MiB (baseline: RSS before the first step)",
                          f"{peak:.0f}", f"{res['rss_before_mb']:.0f}", f"{peak / res['rss_before_mb']:.2f}",
                          note=f"CUDA peak allocated {res['cuda_peak_mb']:.0f} MiB" if res["cuda_peak_mb"] else ""))
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
