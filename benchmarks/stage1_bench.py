"""Stage 1: SwinIR (official DiffBIR config, random weights) seconds per megapixel, ours vs spandrel.

* ours: ``diffbir_core.stage1.restore`` (the official SwinIR pipeline: pad to 64, network, crop; upscale 1,
  ``min_short_edge`` 0) with our SwinIR (``loader.build_network`` layout, attention through SDPA), untiled, or
  tiled with ``--tile``;
* baseline: spandrel's plain forward of the same network (``spandrel.ModelLoader`` on the same state dict,
  its own attention), on the same padded input.
Both run in one child process, interleaved round by round; the ratio is taken per round. A second child runs
ours once and reports its peak RSS (VmHWM, and the kernel's rusage of that child) beside its RSS before the
forward (interpreter + weights). Target: ratio <= 1 (stage 1 not slower than spandrel's plain forward).

Run from the repository root: ``python benchmarks/stage1_bench.py [--sizes 512,1024] [--repeats 5]
[--tile 512 --stride 448] [--device cuda --dtype fp16]`` (default: about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys

import _common as C
import torch

TITLE = "stage 1: SwinIR seconds per megapixel"


def _nets(device, dtype, with_spandrel: bool):
    ours = C.our_network("swinir", seed=1, device="cpu")
    ref = None
    if with_spandrel:
        ref = C.spandrel_model(ours.state_dict(), device, dtype)
    return ours.to(device=device, dtype=dtype), ref


def _restore_fn(net, image, dtype, tile: int, stride: int):
    from diffbir_core import stage1

    def net_fn(x):
        return net(x.to(dtype))

    def run():
        with torch.no_grad():
            return stage1.restore(net_fn, image, "swinir", 1, "v2.1", min_short_edge=0, scale=net.scale,
                                  size_multiple=net.size_multiple, tile=tile, stride=stride).image
    return run


def child_time(args, size: int) -> dict:
    device, dtype = C.setup(args)
    ours, ref = _nets(device, dtype, with_spandrel=True)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    padded = image.to(dtype)  # size is a multiple of 64: the official pipeline pads nothing
    run_ours = _restore_fn(ours, image, dtype, args.tile, args.stride)

    def run_ref():
        with torch.no_grad():
            return ref(padded)

    diff = (run_ours().float() - run_ref().float()).abs().max().item()
    times = C.interleaved({"ours": run_ours, "spandrel": run_ref}, args.repeats, device, warmup=False,
                          label=f"stage1 {size}")
    return {"times": times, "max_abs_diff": diff}


def child_mem(args, size: int) -> dict:
    device, dtype = C.setup(args)
    ours, _ = _nets(device, dtype, with_spandrel=False)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    before = C.current_rss_mb()
    _restore_fn(ours, image, dtype, args.tile, args.stride)()
    return {"rss_before_mb": before, "cuda_peak_mb": C.cuda_peak_mb(device)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=5)
    ap.add_argument("--sizes", default="512", help="comma-separated square input sizes (multiples of 64)")
    ap.add_argument("--tile", type=int, default=0, help="ours in tiles of this size (0: untiled, like spandrel)")
    ap.add_argument("--stride", type=int, default=448, help="tile stride with --tile (tile - 64: a 64 px overlap)")
    args = ap.parse_args()
    if args.child:
        kind, size = args.child.split(":")
        C.emit_result((child_time if kind == "time" else child_mem)(args, int(size)))
        return 0

    device, dtype = C.setup(args)
    header = C.machine_line(device, dtype) + f"; ours {'tile ' + str(args.tile) if args.tile else 'untiled'}"
    extra = ["--repeats", str(args.repeats), "--tile", str(args.tile), "--stride", str(args.stride)]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        if size % 64:
            raise SystemExit(f"--sizes: {size} is not a multiple of 64 (the official SwinIR pipeline's pad)")
        mp = size * size / 1e6
        C.log(f"stage 1 {size}x{size}: timing child")
        res = C.run_child(__file__, C.child_argv(args, f"time:{size}", extra))
        ours = [t / mp for t in res["times"]["ours"]]
        ref = [t / mp for t in res["times"]["spandrel"]]
        ratio = C.stat(C.ratios(ours, ref))
        rows.append(C.row(f"stage 1 SwinIR {size}x{size}, s/MP (ours / spandrel forward)", C.stat(ours),
                          C.stat(ref), ratio, "ratio <= 1.00", ratio["median"] <= 1.0,
                          note=f"max |ours - spandrel| = {res['max_abs_diff']:.1e}"))
        C.log(f"stage 1 {size}x{size}: memory child")
        mem = C.run_child(__file__, C.child_argv(args, f"mem:{size}", extra))
        peak = mem["peak_rss_mb"]
        rows.append(C.row(f"stage 1 peak RSS {size}x{size}, MiB (baseline: RSS before the forward)",
                          f"{peak:.0f}", f"{mem['rss_before_mb']:.0f}", f"{peak / mem['rss_before_mb']:.2f}",
                          note=f"CUDA peak allocated {mem['cuda_peak_mb']:.0f} MiB" if mem["cuda_peak_mb"] else ""))
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
