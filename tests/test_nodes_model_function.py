"""The DiffBIR Sampler's model function (nodes/host/model_function.py) against the reference engine's.

Both engines answer the core samplers' call `denoise_fn(x, t) -> eps or v` for the same golden small ControlLDM:
the product path through ComfyUI's guided model (ComfyUI's UNet, our ControlNet through LAControlNet Apply, CFG on
the denoised estimate, converted back by `sampling.parameterization.output_from_denoised`), the reference through
`reference.denoiser.CLDMDenoiser` (our UNet, CFG on the model output). Given the same condition latent, noisy
latent and timestep they must agree, whole and tiled (both tile through `tiling.tiled_model_call`), at an integer
and at a fractional timestep, for an eps and a v + zero-terminal-SNR MODEL.
"""

from pathlib import Path

import pytest
import torch
from comfy_host import node_module
from safetensors.torch import load_file
from tiny_models import TINY_CONTROLNETS

from diffbir_core.reference import golden
from diffbir_core.reference.denoiser import CLDMDenoiser, Condition

GOLDEN = Path(__file__).resolve().parent / "golden"
CFG = 4.0

pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: see conftest.one_thread


def host_model_function(comfy_host, model, pos, neg, parameterization, tiles, x, t):
    """The DiffBIR Sampler's model function at (x, t), built inside a guider run as the node builds it."""
    import comfy.samplers

    mf = node_module(comfy_host, "host.model_function")
    ms = node_module(comfy_host, "host.model_sampling")
    got = {}

    def run(guider, extra_args, callback, x_start):
        options = extra_args["model_options"]
        mf.add_exact_timestep_wrapper(options)
        fn = mf.HostModelFunction(guider, guider.inner_model.model_sampling, parameterization, cfg=CFG,
                                  rescale_cfg=False, rescale_any_cfg=False, tiles=tiles, model_options=options,
                                  seed=None)
        with torch.no_grad():
            got["out"] = fn(x, torch.tensor([t]))
        return x_start

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(pos, neg)
    guider.set_cfg(CFG)
    sigmas = ms.host_sigmas(model.get_model_object("model_sampling"), [t])
    guider.sample(x, torch.zeros_like(x), mf.OfficialRun(run), sigmas, disable_pbar=True, seed=0)
    return got["out"]


@pytest.mark.parametrize("name, v_zsnr", [("sample_spaced5_v21_cfg4_neg", True),
                                          ("sample_spaced5_v2eps_cfg4_neg", False)])
def test_host_and_reference_model_functions_agree(comfy_host, model_files, golden_host_unet, golden_host_vae, name,
                                                  v_zsnr):
    g = load_file(GOLDEN / f"{name}.safetensors")
    model = golden_host_unet()
    if v_zsnr:
        model = node_module(comfy_host, "host.model_sampling").patch_v_zsnr(model)
    control = comfy_host.node_classes["DiffBIRLoadModels"]().execute("none", TINY_CONTROLNETS["v2.1"], "fp32")[1]
    # 192x128: two 128 px tiles (latent 16, stride 8). Smaller tiles would bring the small UNet's 1/8 level to 1x1,
    # where its GroupNorm divides by a zero variance and magnifies last-bit differences beyond any tolerance.
    image = torch.cat([g["in.cond_img01"], g["in.cond_img01"][:, :, :64]], dim=2)
    pos, neg, _ = comfy_host.node_classes["DiffBIRLAControlNetApply"]().execute(
        [[g["in.c_txt_pos"], {}]], [[g["in.c_txt_neg"], {}]], control, image.movedim(1, -1), golden_host_vae,
        1.0, 0.0, 1.0)
    c_img, _ = node_module(comfy_host, "host.conditioning").find_control(pos).condition()
    assert c_img.shape == (1, 4, 24, 16)
    nets = golden._stage2_nets(golden.load_golden(GOLDEN / f"{name}.json"))
    x = torch.randn(c_img.shape, generator=torch.Generator().manual_seed(3))
    parameterization = "v" if v_zsnr else "eps"
    for tiles in (None, (16, 8)):
        reference = CLDMDenoiser(nets.controlnet, nets.unet, Condition(g["in.c_txt_pos"], c_img),
                                 Condition(g["in.c_txt_neg"], c_img), cfg_scale=CFG, tiles=tiles)
        for t in (500.0, 321.5):  # the sampler's integer grids, and dpm++_m2's fractional one
            with torch.no_grad():
                want = reference(x, torch.tensor([t]) if t % 1 else torch.tensor([int(t)]))
            got = host_model_function(comfy_host, model, pos, neg, parameterization, tiles, x, t)
            err = (got - want).abs().max().item()
            print(f"{name} tiles={tiles} t={t}: max abs err {err:.2e} (max |output| {want.abs().max().item():.2f})")
            assert got.shape == want.shape and err <= 1e-4 * max(1.0, want.abs().max().item()), (tiles, t, err)
