"""fp8 weights for the DiffBIR ControlNet (Load DiffBIR Models' `dtype` fp8_e4m3fn / fp8_e5m2): weight memory
against fp16 and the difference of one cfg step's output.

The full-size IRControlNet (official config, random weights N(0, 1/fan_in)) is cast exactly as the loader casts
it (``patching.cast_controlnet`` + ``use_comfy_ops``: DiffBIR's half-precision blocks stored in 8 bits and cast per
call to the compute dtype by ComfyUI's ops, the time embedding and GroupNorms float32) and drives ComfyUI's own
SD 2.1 UNet (``BaseModel.apply_model`` on the batched cfg pair, ``DiffBIRControl.get_control``: the step of
stage2_bench's and step_bench's host path). The compute dtype is ``--dtype`` (fp16 by default, or bf16), as
ComfyUI's manual cast gives fp8 weights on a GPU. The UNet runs in the compute dtype, and again stored in the same
fp8 type with ComfyUI's manual cast (``set_inference_dtype(fp8, compute)``, what UNETLoader's ``weight_dtype`` or
``--fp8_e4m3fn-unet`` give).

Figures per fp8 type, each against the same step with fp16 (bf16) weights:
* ControlNet weight bytes (all parameters, as ComfyUI's ``module_size`` counts them); on CUDA also the device memory
  the loaded weights take (``torch.cuda.memory_allocated`` before and after moving them);
* the step output (the denoised latent of the cfg pair after CFG): max |fp8 - half| / max |half| and
  mean |fp8 - half| / mean |half|, with only the ControlNet in fp8 and with the UNet in fp8 too;
* the step's time, fp8 / half (interleaved rounds), and on CUDA its peak allocation;
* for scale, the half step against the very same weights computed in float32 (``--no-float32-reference`` skips it).

Run from the repository root: ``python benchmarks/fp8_bench.py [--sizes 256] [--dtype fp16|bf16] [--device cuda]``
(CPU: about 2 minutes at 256 and 10 GB of RAM on a CPU with AVX512-FP16 / AMX; torch computes fp16 elsewhere too,
but far more slowly).
"""

from __future__ import annotations

import argparse
import sys

import _common as C
import torch

TITLE = "fp8 ControlNet weights: memory and one cfg step against fp16/bf16 weights"
FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b| / max |b|, mean |a - b| / mean |b|), as tests/half_precision.py measures."""
    a, b = a.float(), b.float()
    d = (a - b).abs()
    return float(d.max() / b.abs().max()), float(d.mean() / b.abs().mean())


def _unet_like(half_base, storage, compute, device):
    """ComfyUI's SD 2.1 model with the UNet weights of `half_base` stored in `storage`, computed in `compute`
    (manual cast; None: in `storage`): for fp8, what the stock loaders build for an fp8 UNet."""
    import comfy.model_detection
    import comfy.supported_models

    sd = half_base.diffusion_model.state_dict()
    model_config = comfy.supported_models.SD20(comfy.model_detection.detect_unet_config(sd, ""))
    model_config.set_inference_dtype(storage, compute)
    base = model_config.get_model({}, "", device=device)
    base.diffusion_model.load_state_dict(sd)  # copy_ casts to the fp8 parameters
    return base.eval().requires_grad_(False)


def run(args, size: int, device, compute) -> list[dict]:
    C.import_host(device, args.host_attention)
    control_mod = C.extension_module("nodes.host.control")
    patching = C.extension_module("nodes.host.patching")

    C.log(f"building the full-size UNet and ControlNet ({compute})")
    base = C.host_base_model(device, compute, seed=0)
    reference = C.our_network("controlnet", seed=1, device="cpu", dtype=torch.float32)  # the weights, once
    ms = base.model_sampling
    g = torch.Generator().manual_seed(0)
    h = size // 8
    x_vp, c_img = (torch.randn(1, 4, h, h, generator=g) for _ in range(2))
    pos, neg = torch.randn(2, 1, 77, 1024, generator=g)
    sigma = ms.sigma(torch.tensor([float(args.timestep)]))
    x_ve = x_vp * (sigma**2 + 1).sqrt()
    x2, sigma2 = torch.cat([x_ve, x_ve]).to(device), torch.cat([sigma, sigma]).to(device)
    ctx = torch.cat([pos, neg]).to(device, compute)

    def controlnet(dtype):
        import copy

        cn = patching.use_comfy_ops(patching.cast_controlnet(copy.deepcopy(reference), dtype, compute).eval())
        if dtype == torch.float32:
            cn.load_state_dict(half_weights)  # the half network's weights, computed in float32
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        cn = cn.to(device)
        loaded = (torch.cuda.memory_allocated(device) - before) if device.type == "cuda" else None
        ctl = control_mod.DiffBIRControl(patching.wrap_in_patcher(cn), version="v2.1", name=str(dtype),
                                         dtype=compute if dtype != torch.float32 else dtype)
        ctl.set_condition(c_img.to(device), (size, size), 1.0, (0.0, 1.0))
        return ctl, weight_bytes(cn), loaded

    def step_fn(ctl, model, context=ctx):
        ctl.pre_run(model, lambda p: ms.percent_to_sigma(p))

        def step():
            with torch.no_grad():
                control = ctl.get_control(x2, sigma2, {"c_crossattn": context}, 2, {})
                out = model.apply_model(x2, sigma2, c_crossattn=context, control=control, transformer_options={})
                cond, uncond = out.chunk(2)
                return uncond + args.cfg * (cond - uncond)

        return step

    half_ctl, half_bytes, half_loaded = controlnet(compute)
    half_weights = {k: v.float() for k, v in half_ctl.control_model.state_dict().items()}
    half_step = step_fn(half_ctl, base)
    C.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ref_out = half_step().float()
    half_peak = C.cuda_peak_mb(device)
    rows = []
    if args.float32_reference:  # for scale: what computing the very same weights in float32 changes
        C.log("the same weights computed in float32")
        base32 = _unet_like(base, torch.float32, None, device)
        ctl32, _, _ = controlnet(torch.float32)
        out32 = step_fn(ctl32, base32, ctx.float())().float()
        worst, mean = difference(ref_out, out32)
        rows.append(C.row(f"step {size}x{size} output, all-{args.dtype} (ControlNet and UNet): max / mean relative "
                          "difference from the same weights computed in float32", f"{worst:.3g} / {mean:.3g}",
                          note="for scale: the half-precision compute alone"))
        ctl32.cleanup()
        del ctl32, base32, out32
    del half_weights
    for name in args.fp8.split(","):
        storage = FP8[name]
        C.log(f"{name}: ControlNet stored in {storage}, computed in {compute}")
        ctl, size_bytes, loaded = controlnet(storage)
        ratio = size_bytes / half_bytes
        rows.append(C.row(f"{name}: ControlNet weights, MB: {name} / {args.dtype}", f"{size_bytes / 1e6:.0f}",
                          f"{half_bytes / 1e6:.0f}", f"{ratio:.3f}",
                          note="" if loaded is None else
                          f"device memory of the loaded weights {loaded / 2**20:.0f} / {half_loaded / 2**20:.0f} MiB"))
        step = step_fn(ctl, base)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = step().float()
        peak = C.cuda_peak_mb(device)
        worst, mean = difference(out, ref_out)
        rows.append(C.row(f"{name}: step {size}x{size} output, ControlNet {name}, UNet {args.dtype}: "
                          "max / mean relative difference from all-" + args.dtype, f"{worst:.3g} / {mean:.3g}",
                          note=f"finite: {bool(torch.isfinite(out).all())}; max |output| {ref_out.abs().max():.3g}"
                               + ("" if peak is None else f"; CUDA peak {peak:.0f} / {half_peak:.0f} MiB")))
        times = C.interleaved({"half": half_step, "fp8": step}, args.repeats, device, label=f"{name} step {size}")
        per_round = C.ratios(times["fp8"], times["half"])
        rows.append(C.row(f"{name}: step {size}x{size}, s: ControlNet {name} / {args.dtype}", C.stat(times["fp8"]),
                          C.stat(times["half"]), C.stat(per_round)))
        ctl.cleanup()
        del ctl, step
        base8 = _unet_like(base, storage, compute, device)
        ctl, _, _ = controlnet(storage)
        out = step_fn(ctl, base8)().float()
        worst, mean = difference(out, ref_out)
        rows.append(C.row(f"{name}: step {size}x{size} output, ControlNet and UNet {name}: max / mean relative "
                          f"difference from all-{args.dtype}", f"{worst:.3g} / {mean:.3g}",
                          note=f"UNet weights {weight_bytes(base8.diffusion_model) / 1e6:.0f} MB "
                               f"({weight_bytes(base.diffusion_model) / 1e6:.0f} MB in {args.dtype}); finite: "
                               f"{bool(torch.isfinite(out).all())}"))
        ctl.cleanup()
        del ctl, base8
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=3)
    ap.set_defaults(dtype="fp16")
    ap.add_argument("--sizes", default="256", help="comma-separated square image sizes (multiples of 64)")
    ap.add_argument("--fp8", default="fp8_e4m3fn,fp8_e5m2", help="comma-separated fp8 types")
    ap.add_argument("--cfg", type=float, default=4.0, help="cfg scale")
    ap.add_argument("--timestep", type=int, default=500, help="model timestep of the step")
    ap.add_argument("--host-attention", default="default", choices=["default", "sdpa"])
    ap.add_argument("--no-float32-reference", dest="float32_reference", action="store_false",
                    help="skip the row computing the half weights in float32 (for scale; 5 GB more memory)")
    args = ap.parse_args()
    device, compute = C.setup(args)
    if compute == torch.float32:
        ap.error("fp8 weights compute in fp16 or bf16 (ComfyUI's manual cast on a GPU): --dtype fp16 or bf16")
    header = C.machine_line(device, compute) + f"; full-size SD 2.1 UNet (host) + IRControlNet, cfg {args.cfg:g}, " \
                                               f"t {args.timestep}; compute dtype {args.dtype}"
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        rows += run(args, size, device, compute)
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
