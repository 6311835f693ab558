"""Structural checks behind the benchmark targets (counts, not timings).

1. Attention: every one of our networks (real official configs, random weights, small inputs) runs one forward
   under a TorchFunctionMode that counts torch SDPA calls and the ops an explicit attention is made of
   (softmax, matmul/@, bmm, baddbmm, einsum). Target: SDPA > 0 wherever the network has attention and no
   explicit op at all. The host's UNet (ComfyUI's attention choice for the device) and spandrel's own SwinIR
   are listed for reference, not checked.
2. CFG batching: counts of ControlNet and UNet forwards (forward pre-hooks) and their batch sizes per model
   evaluation, at real SD 2.1 shapes with the host's UNet:
   * our sampler path (``diffbir_core.reference.pipeline.apply_cldm`` -> ``CLDMDenoiser``), cfg 4: target one
     ControlNet and one UNet forward of batch 2 per step; the same with ``batch_cfg=False`` shows what an
     unbatched pair looks like (two of batch 1);
   * the ComfyUI path (stock ``comfy.samplers`` with our ``DiffBIRControl`` on cond and uncond, one euler step):
     target one ``get_control``, one ControlNet and one UNet forward of batch 2.

Run from the repository root: ``python benchmarks/checks.py [--device cuda --dtype fp16] [--size 256]``
(about 2 minutes on 2 CPU cores; 7 GB of RAM for the full-size stage-2 networks).
"""

from __future__ import annotations

import argparse
import gc
import sys

import _common as C
import torch

TITLE = "checks: attention through SDPA, cfg pair batched"


def _forward_specs(device, dtype):
    """(name, kind, config, make_inputs, call) of each of our networks; inputs small, configs official."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    ctx = lambda: rnd(1, 77, 1024)
    t = lambda: torch.tensor([500.0], device=device)
    return [
        ("SwinIR (stage 1)", "swinir", None, lambda: (rnd(1, 3, 128, 128),), lambda m, x: m(x)),
        ("SCUNet (stage 1)", "scunet", None, lambda: (rnd(1, 3, 64, 64),), lambda m, x: m(x)),
        ("BSRNet (stage 1, no attention)", "bsrnet", None, lambda: (rnd(1, 3, 32, 32),), lambda m, x: m(x)),
        ("IRControlNet", "controlnet", None, lambda: (rnd(1, 4, 16, 16), rnd(1, 4, 16, 16), t(), ctx()),
         lambda m, x, h, tt, c: m(x, h, tt, c)),
        ("UNet (ours, SD 2.1)", "unet", None, lambda: (rnd(1, 4, 16, 16), t(), ctx()),
         lambda m, x, tt, c: m(x, tt, c)),
        ("VAE encode", "vae", None, lambda: (rnd(1, 3, 64, 64),), lambda m, x: m.encode(x).mode()),
        ("VAE decode", "vae", None, lambda: (rnd(1, 4, 8, 8),), lambda m, z: m.decode(z)),
        ("OpenCLIP text", "clip_text", None,
         lambda: (torch.randint(0, 49408, (1, 77), generator=g).to(device),), lambda m, tok: m(tok)),
    ]


def attention_rows(device, dtype) -> list[dict]:
    rows = []
    has_attention = {"bsrnet": False}
    built = {}
    for name, kind, config, make_inputs, call in _forward_specs(device, dtype):
        if kind not in built:
            built.clear()
            gc.collect()
            C.log(f"attention check: building {kind}")
            built[kind] = C.our_network(kind, seed=1, config=config, device=device, dtype=dtype)
        net = built[kind]
        inputs = make_inputs()
        counter = C.AttentionCounter()
        with torch.no_grad(), counter:
            out = call(net, *inputs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        finite = all(bool(torch.isfinite(o).all()) for o in outs)
        expect_sdpa = has_attention.get(kind, True)
        ok = finite and counter.explicit == 0 and (counter.counts["sdpa"] > 0) == expect_sdpa
        rows.append(C.row(f"attention calls, {name}", ours=_counts(counter), baseline="-",
                          target="SDPA only" if expect_sdpa else "no attention", met=ok,
                          note="" if finite else "output not finite"))
    built.clear()
    gc.collect()
    rows.append(_spandrel_swinir_row(device, dtype))
    return rows


def _counts(counter: C.AttentionCounter) -> str:
    explicit = {k: v for k, v in sorted(counter.counts.items()) if k != "sdpa"}
    text = f"sdpa {counter.counts['sdpa']}"
    return text + (", " + ", ".join(f"{k} {v}" for k, v in explicit.items()) if explicit else ", explicit 0")


def _spandrel_swinir_row(device, dtype) -> dict:
    """spandrel's own SwinIR (the stage-1 baseline of stage1_bench) on the same input, for reference."""
    ref = C.spandrel_model(C.our_network("swinir", seed=1, device="cpu").state_dict(), device, dtype)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    counter = C.AttentionCounter()
    with torch.no_grad(), counter:
        ref(x)
    return C.row("attention calls, spandrel SwinIR (reference)", ours=_counts(counter), baseline="-",
                 target="(not ours)", met=None)


def _host_attention_row(base, device, dtype) -> dict:
    counter = C.AttentionCounter()
    x = torch.randn(1, 4, 16, 16, device=device, dtype=dtype)
    with torch.no_grad(), counter:
        base.diffusion_model(x, torch.tensor([500.0], device=device),
                             context=torch.randn(1, 77, 1024, device=device, dtype=dtype), transformer_options={})
    return C.row("attention calls, host UNet (ComfyUI, reference)", ours=_counts(counter), baseline="-",
                 target="(host's choice)", met=None, note=f"ComfyUI uses {C.host_attention_name()} here")


def _per_step(cn_batches, unet_batches, steps) -> str:
    return (f"{steps} step(s): ControlNet forwards {len(cn_batches)} (batch {sorted(set(cn_batches))}), "
            f"UNet forwards {len(unet_batches)} (batch {sorted(set(unet_batches))})")


def cfg_rows(base, device, dtype, size: int) -> list[dict]:
    from diffbir_core.reference.pipeline import StageTwoNets, apply_cldm
    from diffbir_core.schedule import DiffusionSchedule

    rows = []
    C.log("cfg check: building the ControlNet and the VAE")
    cn = C.our_network("controlnet", seed=1, device=device, dtype=dtype)
    vae = C.our_network("vae", seed=2, device=device, dtype=dtype)
    unet = C.HostUNet(base.diffusion_model)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g).to(device=device, dtype=dtype)
    pos = torch.randn(1, 77, 1024, generator=g).to(device=device, dtype=dtype)
    neg = torch.randn(1, 77, 1024, generator=g).to(device=device, dtype=dtype)
    diffusion = DiffusionSchedule.for_version("v2.1")

    steps = 2  # the spaced sampler's minimum
    for batch_cfg in (True, False):
        cn_count, unet_count = C.CallCounter(cn), C.CallCounter(base.diffusion_model)
        C.log(f"cfg check: apply_cldm {size}x{size}, spaced {steps} steps, cfg 4, batch_cfg={batch_cfg}")
        res = apply_cldm(StageTwoNets(cn, unet, vae), image, pos, neg, diffusion, steps, sampler="spaced",
                         cfg_scale=4.0, batch_cfg=batch_cfg)
        cn_count.remove()
        unet_count.remove()
        per_eval_ok = (len(cn_count.batches) == len(unet_count.batches) == steps
                       and set(cn_count.batches) == set(unet_count.batches) == {2})
        rows.append(C.row(f"cfg pair, our sampler path (apply_cldm, batch_cfg={batch_cfg})",
                          ours=_per_step(cn_count.batches, unet_count.batches, steps), baseline="-",
                          target="1 forward of batch 2 per step" if batch_cfg else "(unbatched reference)",
                          met=per_eval_ok if batch_cfg else None))
    del res
    rows.append(_comfy_path_row(base, cn, device, dtype, size, pos, neg))
    return rows


def _comfy_path_row(base, cn, device, dtype, size, pos, neg) -> dict:
    """One euler step of ComfyUI's own sampler with our DiffBIRControl on cond and uncond (as LAControlNet Apply
    attaches it): ComfyUI batches the pair when both carry the same control object."""
    try:
        control_mod = C.extension_module("nodes.host.control")
        patching = C.extension_module("nodes.host.patching")
    except Exception as err:  # noqa: BLE001 - the node package failed to import: say so rather than hide the row
        return C.row("cfg pair, ComfyUI path (DiffBIRControl)", ours=f"skipped: nodes.host.control import failed ({err})",
                     baseline="-", target="1 forward of batch 2 per step", met=False)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers

    latent = size // 8
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    cn_patcher = patching.wrap_in_patcher(cn)
    ctl = control_mod.DiffBIRControl(cn_patcher, version="v2.1", name="random", dtype=dtype)
    ctl.set_condition(torch.randn(1, 4, latent, latent), (size, size), 1.0, (0.0, 1.0))
    calls = []
    original = type(ctl).get_control

    def counting(self, x_noisy, *args, **kwargs):
        calls.append(int(x_noisy.shape[0]))
        return original(self, x_noisy, *args, **kwargs)

    cn_count, unet_count = C.CallCounter(cn), C.CallCounter(base.diffusion_model)
    type(ctl).get_control = counting
    try:
        positive = [[pos.float().cpu(), {"control": ctl}]]
        negative = [[neg.float().cpu(), {"control": ctl}]]
        sigmas = comfy.samplers.calculate_sigmas(base.model_sampling, "normal", 1)
        C.log(f"cfg check: ComfyUI sample_custom {size}x{size}, euler 1 step, cfg 4")
        comfy.sample.sample_custom(patcher, torch.randn(1, 4, latent, latent), 4.0,
                                   comfy.samplers.sampler_object("euler"), sigmas, positive, negative,
                                   torch.zeros(1, 4, latent, latent), disable_pbar=True, seed=0)
    finally:
        type(ctl).get_control = original
        cn_count.remove()
        unet_count.remove()
    ok = calls == [2] and cn_count.batches == [2] and unet_count.batches == [2]
    return C.row("cfg pair, ComfyUI path (stock sampler + DiffBIRControl)",
                 ours=f"get_control calls {len(calls)} (batch {sorted(set(calls))}); "
                      + _per_step(cn_count.batches, unet_count.batches, 1),
                 baseline="-", target="1 forward of batch 2 per step", met=ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, repeats=1)
    ap.add_argument("--size", type=int, default=256, help="image size of the cfg-batching check (pixels)")
    ap.add_argument("--host-attention", default="default", choices=["default", "sdpa"])
    ap.add_argument("--skip-cfg", action="store_true", help="attention counts only (no 7 GB stage-2 networks)")
    args = ap.parse_args()
    device, dtype = C.setup(args)
    header = C.machine_line(device, dtype)
    C.import_host(device, args.host_attention)
    rows = attention_rows(device, dtype)
    if not args.skip_cfg:
        C.log("building the host's SD 2.1 UNet")
        base = C.host_base_model(device, dtype)
        rows.append(_host_attention_row(base, device, dtype))
        rows += cfg_rows(base, device, dtype, args.size)
    C.print_table(TITLE, rows, header)
    C.write_json(args.json, TITLE, header, rows)
    return 0 if all(r["met"] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
