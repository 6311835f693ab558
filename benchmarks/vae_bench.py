"""VAE encode and decode (SD 2.1 KL autoencoder, official config, random weights): ours vs the host's.

* ours: ``diffbir_core`` (``arch/vae.py`` through ``reference/vae.py``: ``vae_encode`` = posterior mode x 0.18215,
  ``vae_decode``), untiled; with ``--tiled`` also the v2.0.0-style tiled encode/decode that the pipeline uses for
  large images (pixel tiles ``--tile`` with stride tile/2), on the same image;
* baseline: ComfyUI's stock ``comfy.sd.VAE`` (what VAE Encode / VAE Decode run) built from the same state dict.
Encode and decode variants alternate round by round in one child process per size; ratios are per round.
Two more children run our encode and our decode once each and report their peak RSS (the kernel's rusage of
that child) beside their RSS before the call (interpreter + weights).

Run from the repository root: ``python benchmarks/vae_bench.py [--sizes 512] [--repeats 3] [--tiled]
[--device cuda --dtype bf16]`` (default: about 4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys

import _common as C
import torch

TITLE = "VAE encode / decode"


def _inputs(size, device, dtype):
    g = torch.Generator().manual_seed(0)
    image01 = torch.rand(1, 3, size, size, generator=g)
    z = torch.randn(1, 4, size // 8, size // 8, generator=g)
    return image01.to(device=device, dtype=dtype), z.to(device=device, dtype=dtype)


def _ours(vae, image01, z, tile: int):
    from diffbir_core.reference.vae import (
        vae_decode,
        vae_decode_tiled,
        vae_encode,
        vae_encode_tiled,
    )

    def enc():
        with torch.no_grad():
            return vae_encode(vae, image01 * 2 - 1)

    def dec():
        with torch.no_grad():
            return vae_decode(vae, z)

    def enc_tiled():
        with torch.no_grad():
            return vae_encode_tiled(vae, image01 * 2 - 1, tile, tile // 2)

    def dec_tiled():
        with torch.no_grad():
            return vae_decode_tiled(vae, z, tile // 8, tile // 16)
    return enc, dec, enc_tiled, dec_tiled


def child_time(args, size: int) -> dict:
    device, dtype = C.setup(args)
    C.import_host(device)
    import comfy.sd

    from diffbir_core.schedule import LATENT_SCALE

    vae = C.our_network("vae", seed=2, device=device, dtype=dtype)
    host = comfy.sd.VAE(sd={k: v.float().cpu() for k, v in vae.state_dict().items()}, dtype=dtype, device=device)
    image01, z = _inputs(size, device, dtype)
    enc, dec, enc_tiled, dec_tiled = _ours(vae, image01, z, args.tile)
    image_nhwc = image01.float().movedim(1, -1).cpu()
    z_host = (z.float() / LATENT_SCALE).cpu()

    def host_enc():
        return host.encode(image_nhwc)

    def host_dec():
        return host.decode(z_host)

    enc_diff = (enc().float().cpu() / LATENT_SCALE - host_enc()).abs().max().item()
    variants = {"enc": enc, "host_enc": host_enc, "dec": dec, "host_dec": host_dec}
    if args.tiled:
        variants.update({"enc_tiled": enc_tiled, "dec_tiled": dec_tiled})
    times = C.interleaved(variants, args.repeats, device, warmup=False, label=f"vae {size}")
    return {"times": times, "enc_diff": enc_diff}


def child_mem(args, what: str, size: int) -> dict:
    device, dtype = C.setup(args)
    vae = C.our_network("vae", seed=2, device=device, dtype=dtype)
    image01, z = _inputs(size, device, dtype)
    enc, dec, enc_tiled, dec_tiled = _ours(vae, image01, z, args.tile)
    before = C.current_rss_mb()
    {"enc": enc, "dec": dec, "enc_tiled": enc_tiled, "dec_tiled": dec_tiled}[what]()
    return {"rss_before_mb": before, "cuda_peak_mb": C.cuda_peak_mb(device)}


def _time_rows(args, size: int, extra: list[str]) -> list[dict]:
    C.log(f"VAE {size}x{size}: timing child")
    res = C.run_child(__file__, C.child_argv(args, f"time:{size}", extra))
    t, rows = res["times"], []
    for what, label in (("enc", "encode"), ("dec", "decode")):
        ratio = C.stat(C.ratios(t[what], t[f"host_{what}"]))
        rows.append(C.row(f"VAE {label} {size}x{size}, s: ours / ComfyUI VAE", C.stat(t[what]),
                          C.stat(t[f"host_{what}"]), ratio,
                          note=f"max |latent ours - ComfyUI| = {res['enc_diff']:.1e}" if what == "enc" else ""))
        if args.tiled:
            ratio = C.stat(C.ratios(t[f"{what}_tiled"], t[what]))
            rows.append(C.row(f"VAE {label} {size}x{size} tiled ({args.tile} px, stride {args.tile // 2}), s: "
                              "ours tiled / ours untiled", C.stat(t[f"{what}_tiled"]), C.stat(t[what]), ratio))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=3)
    ap.add_argument("--sizes", default="512", help="comma-separated square image sizes (multiples of 64)")
    ap.add_argument("--tiled", action="store_true", help="also time our tiled encode/decode")
    ap.add_argument("--tile", type=int, default=256, help="pixel tile of the tiled variants (official 256)")
    ap.add_argument("--memory-only", action="store_true", help="skip the timing child: peak RSS rows only")
    ap.add_argument("--parts", default="encode,decode", help="peak RSS rows for: encode, decode or both")
    args = ap.parse_args()
    if args.child:
        kind, size = args.child.split(":")
        C.emit_result(child_time(args, int(size)) if kind == "time" else child_mem(args, kind[4:], int(size)))
        return 0

    device, dtype = C.setup(args)
    rows, header = [], C.machine_line(device, dtype)
    extra = ["--repeats", str(args.repeats), "--tile", str(args.tile)] + (["--tiled"] if args.tiled else [])
    for size in [int(s) for s in args.sizes.split(",")]:
        if not args.memory_only:
            rows += _time_rows(args, size, extra)
        peaks = {}
        parts = [p.strip()[:3] for p in args.parts.split(",")]
        kinds = tuple((p, {"enc": "encode", "dec": "decode"}[p]) for p in parts)
        if args.tiled:
            kinds += tuple((f"{p}_tiled", f"{label} tiled ({args.tile} px)") for p, label in kinds)
        for what, label in kinds:
            C.log(f"VAE {size}x{size}: memory child ({label})")
            mem = C.run_child(__file__, C.child_argv(args, f"mem-{what}:{size}", extra))
            peak = peaks[what] = mem["peak_rss_mb"]
            rows.append(C.row(f"VAE {label} peak RSS {size}x{size}, MiB (baseline: RSS before the call)", f"{peak:.0f}",
                              f"{mem['rss_before_mb']:.0f}", f"{peak / mem['rss_before_mb']:.2f}",
                              note=f"CUDA peak allocated {mem['cuda_peak_mb']:.0f} MiB" if mem["cuda_peak_mb"] else ""))
            if what.endswith("_tiled"):
                base = what[:-6]
                rows.append(C.row(f"VAE {dict(kinds)[base]} {size}x{size} peak RSS, tiled ({args.tile} px) / untiled", f"{peak:.0f}",
                                  f"{peaks[base]:.0f}", f"{peak / peaks[base]:.2f}"))
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
