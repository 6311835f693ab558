"""DiffBIR Sampler and the diffbir_* KSAMPLERs inside a real ComfyUI.

* Parity: ComfyUI's own UNet (golden small weights), our ControlNet through LAControlNet Apply and the host VAE,
  sampled by the DiffBIR Sampler node through ComfyUI's machinery with the recorded noise, reproduce the
  official Pipeline.apply_cldm runs (v2.1 = v-prediction + zero-terminal SNR, and v2 = eps).
* The tiny SD 2.1 shape-alike (tests/tiny_models.py) runs every official sampler, seeds, Cancel, tiled
  diffusion, restoration guidance and the stock SamplerCustom / KSamplerSelect with the diffbir_* samplers.
"""

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from comfy_host import combo_options, node_module, node_output
from tiny_models import TINY_CONTROLNETS, TINY_SD21_NAME

from diffbir_core.sampling import grid
from diffbir_core.sampling.noise import RecordedNoise

GOLDEN = Path(__file__).resolve().parent / "golden"
LATENT_SCALE = 0.18215
TINY_CN = TINY_CONTROLNETS["v2.1"]
OFFICIAL = ("spaced", "ddim", "dpm++_m2", "edm_euler", "edm_euler_a", "edm_heun", "edm_dpm_2", "edm_dpm_2_a",
            "edm_lms", "edm_dpm++_2s_a", "edm_dpm++_sde", "edm_dpm++_2m", "edm_dpm++_2m_sde", "edm_dpm++_3m_sde")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


def sampler_inputs(**changes):
    inputs = {"seed": 7, "steps": 3, "cfg": 3.0, "sampler_name": "edm_dpm++_3m_sde", "rescale_cfg": False,
              "start_point": "noise", "noise_aug": 0, "tile_size": 0, "tile_stride": 16}
    inputs.update(changes)
    return inputs


def graph(**sampler_changes):
    """The tiny SD 2.1 + golden ControlNet (v2.1) graph ending in a DiffBIR Sampler (node "s")."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD21_NAME}},
        "2": {"class_type": "DiffBIRLoadModels",
              "inputs": {"stage1_name": "none", "controlnet_name": TINY_CN, "dtype": "auto"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x8040C0}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sharp photo", "clip": ["1", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["p", 0], "negative": ["n", 0], "control_net": ["2", 1], "image": ["3", 0],
                         "vae": ["1", 2], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                         "model": ["1", 0]}},
        "s": {"class_type": "DiffBIRSampler",
              "inputs": {"model": ["4", 2], "positive": ["4", 0], "negative": ["4", 1], **sampler_inputs(),
                         **sampler_changes}},
        "o": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}},
    }


def run_sampler(comfy_host, **changes):
    comfy_host.run(graph(**changes))
    return node_output(comfy_host, "s")["samples"].clone()


def conditioned(comfy_host, size, seed):
    """MODEL (v + zsnr, from LAControlNet Apply), positive/negative with the control of a random size x size
    condition image, the VAE: for direct calls."""
    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(TINY_SD21_NAME)[:3]
    control = comfy_host.node_classes["DiffBIRLoadModels"]().execute("none", TINY_CN, "auto")[1]
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))
    pos = nodes.CLIPTextEncode().encode(clip, "a sharp photo")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    pos, neg, model = comfy_host.node_classes["DiffBIRLAControlNetApply"]().execute(pos, neg, control, image, vae, 1.0,
                                                                                  0.0, 1.0, model=model)
    return {"model": model, "positive": pos, "negative": neg, "vae": vae, "plain": nodes.CLIPTextEncode().encode(
        clip, "no control")[0]}


@pytest.fixture(scope="module")
def tiny(comfy_host, model_files):
    return conditioned(comfy_host, 64, 0)


def call_node(comfy_host, tiny, **changes):
    kwargs = {"model": tiny["model"], "positive": tiny["positive"], "negative": tiny["negative"], **sampler_inputs()}
    kwargs.update(changes)
    return comfy_host.node_classes["DiffBIRSampler"]().execute(**kwargs)[0]["samples"]


# ------------------------------------------------------------------------------------------ registration


def test_nodes_registered_with_tooltips_and_official_defaults(comfy_host):
    for class_name, display in (("DiffBIRSampler", "DiffBIR Sampler"),
                                ("DiffBIRSamplerSelect", "DiffBIR Sampler Select")):
        info = comfy_host.node_info(class_name)
        assert info["display_name"] == display and info["category"] == "DiffBIR/sampling"
        assert len(info["description"]) > 80
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{class_name}.{name} has no tooltip"
        assert len(info["output_tooltips"]) == len(info["output"])
    info = comfy_host.node_info("DiffBIRSampler")
    req, opt = info["input"]["required"], info["input"]["optional"]
    assert tuple(combo_options(req["sampler_name"])) == OFFICIAL and req["sampler_name"][1]["default"] == "edm_dpm++_3m_sde"
    assert req["steps"][1]["default"] == 10 and req["cfg"][1]["default"] == 6.0
    assert "spaced" in req["sampler_name"][1]["tooltip"] and "50" in req["steps"][1]["tooltip"]
    assert "4" in req["cfg"][1]["tooltip"]
    assert req["noise_aug"][1]["max"] == 199 and combo_options(req["start_point"]) == ["noise", "cond",
                                                                                        "better_start"]
    assert {"latent", "vae", "guidance", "guidance_space", "guidance_scale", "guidance_t_start", "guidance_t_stop",
            "guidance_repeat", "guidance_style", "s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order",
            "tile_plan", "noise_mode"} == set(opt)
    assert combo_options(opt["guidance"]) == ["none", "mse", "w_mse"] and opt["s_tmax"][1]["default"] == 300.0
    # The diffbir_* KSAMPLERs are in the stock lists (KSamplerSelect and KSampler read them).
    stock = comfy_host.node_info("KSamplerSelect")["input"]["required"]["sampler_name"]
    names = combo_options(stock)
    wanted = {"diffbir_spaced", "diffbir_ddim", "diffbir_dpmpp_m2", "diffbir_edm_dpmpp_3m_sde", "diffbir_edm_euler_a"}
    assert wanted <= set(names) and len([n for n in names if n.startswith("diffbir_")]) == 14
    ks = combo_options(comfy_host.node_info("KSampler")["input"]["required"]["sampler_name"])
    assert wanted <= set(ks)


# ------------------------------------------------------------------------------------------ parity


def _golden_model(patcher, sampling):
    import comfy_extras.nodes_model_advanced as advanced

    node = advanced.ModelSamplingDiscrete
    if hasattr(node, "patch"):
        return node().patch(patcher, *sampling)[0]
    out = node.execute(model=patcher, sampling=sampling[0], zsnr=sampling[1])
    return out.result[0] if hasattr(out, "result") else out[0]


@pytest.mark.parametrize("name, sampling", [("sample_spaced5_v21_cfg4_neg", ("v_prediction", True)),
                                            ("sample_spaced5_v2eps_cfg4_neg", ("eps", False))])
def test_parity_with_official_apply_cldm(comfy_host, model_files, golden_host_unet, golden_host_vae, monkeypatch,
                                         name, sampling):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    assert (meta["sampler"], meta["steps"], meta["cfg_scale"], meta["strength"]) == ("spaced", 5, 4.0, 1.0)
    g = load_file(GOLDEN / f"{name}.safetensors")
    vae = golden_host_vae
    model = _golden_model(golden_host_unet(), sampling)
    lacn = node_module(comfy_host, "host.model_sampling")
    assert lacn.model_sampling_kind(model) == (sampling[0].split("_")[0], sampling[1])
    control = comfy_host.node_classes["DiffBIRLoadModels"]().execute("none", TINY_CN, "fp32")[1]
    pos, neg, _ = comfy_host.node_classes["DiffBIRLAControlNetApply"]().execute(
        [[g["in.c_txt_pos"], {}]], [[g["in.c_txt_neg"], {}]], control, g["in.cond_img01"].movedim(1, -1), vae,
        1.0, 0.0, 1.0)

    noise = RecordedNoise.from_tensors(g)
    monkeypatch.setattr(node_module(comfy_host, "sampler"), "noise_source", lambda seed: noise)
    out = comfy_host.node_classes["DiffBIRSampler"]().execute(
        model, pos, neg, 0, 5, 4.0, "spaced", False, "noise", 0, 0, 256)[0]["samples"]
    noise.check_consumed()
    got, want = out * LATENT_SCALE, g["out.z_final"]
    err = (got - want).abs()
    print(f"{name}: z_final max abs err {err.max().item():.3e}")
    assert (err <= 1e-3 + 1e-5 * want.abs()).all(), err.max().item()


# ------------------------------------------------------------------------------------------ every sampler, seeds


@pytest.mark.parametrize("sampler", OFFICIAL)
def test_every_official_sampler_runs(comfy_host, tiny, sampler):
    steps = 2 if sampler in ("ddim", "edm_heun", "edm_dpm_2", "edm_dpm++_sde", "edm_dpm++_2s_a") else 3
    out = call_node(comfy_host, tiny, sampler_name=sampler, steps=steps)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_fractional_grid_reaches_unet_and_controlnet_unrounded(comfy_host, tiny, monkeypatch):
    """dpm++_m2's model times are fractional; the host's sigma -> timestep map would round them."""
    module = node_module(comfy_host, "sampler")
    unet = tiny["model"].model.diffusion_model
    control = node_module(comfy_host, "host.conditioning").find_control(tiny["positive"]).control_model
    seen = {"unet": [], "control": []}
    unet_forward, control_forward = unet._forward, control.forward

    def unet_spy(x, timesteps=None, *args, **kwargs):
        seen["unet"].append(float(timesteps[0]))
        return unet_forward(x, timesteps, *args, **kwargs)

    def control_spy(x, hint, timesteps, context):
        seen["control"].append(float(timesteps[0]))
        return control_forward(x, hint, timesteps, context)

    monkeypatch.setattr(unet, "_forward", unet_spy)
    monkeypatch.setattr(control, "forward", control_spy)
    call_node(comfy_host, tiny, sampler_name="dpm++_m2", steps=3)
    want = grid("dpm++_m2", node_module(comfy_host, "host.model_sampling").model_diffusion(tiny["model"]), 3)
    assert any(t != round(t) for t in want)
    for name, got in seen.items():
        assert got == pytest.approx(want, abs=1e-3), name


# the core module and name of the grid maths each family's plan computes (one sampler per family)
GRID_MATHS = {"spaced": ("spaced", "spaced_tables"), "ddim": ("ddim", "ddim_tables"),
              "dpm++_m2": ("dpm_solver", "DiscreteVPSchedule"), "edm_dpm++_3m_sde": ("edm", "edm_sigmas")}


@pytest.mark.parametrize("sampler, steps", [("spaced", 3), ("ddim", 2), ("dpm++_m2", 3), ("edm_dpm++_3m_sde", 3)])
def test_a_run_computes_its_sampling_plan_once(comfy_host, tiny, monkeypatch, sampler, steps):
    """Prepare makes the sampling plan once; the guider's sigmas come from its timesteps and the core sampler runs on
    that very plan: nothing recomputes the grid or the tables."""
    module = node_module(comfy_host, "sampler")
    core = importlib.import_module(f"diffbir_core.sampling.{GRID_MATHS[sampler][0]}")
    made, given, maths, mapped = [], [], [], []

    def spy(calls, fn, keep=lambda args, kwargs, out: out):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append(keep(args, kwargs, out))
            return out
        return wrapper

    sampler_of = module.get_sampler

    def get_sampler(name):  # the sampler the node runs, recording the plan it is given
        return spy(given, sampler_of(name), lambda args, kwargs, out: kwargs.get("plan"))

    monkeypatch.setattr(module, "make_plan", spy(made, module.make_plan))
    monkeypatch.setattr(module, "host_sigmas", spy(mapped, module.host_sigmas, lambda args, kwargs, out: args[1]))
    monkeypatch.setattr(module, "get_sampler", get_sampler)
    monkeypatch.setattr(core, GRID_MATHS[sampler][1], spy(maths, getattr(core, GRID_MATHS[sampler][1])))
    out = call_node(comfy_host, tiny, sampler_name=sampler, steps=steps)
    assert torch.isfinite(out).all()
    assert len(made) == 1 and (made[0].sampler, made[0].steps) == (sampler, steps)
    assert len(given) == 1 and given[0] is made[0]
    assert len(mapped) == 1 and mapped[0] is made[0].timesteps
    assert len(maths) == 1, f"{GRID_MATHS[sampler][1]} ran {len(maths)} times in one run"


def test_cpu_runs_take_pytorch_attention_with_the_same_result(comfy_host, tiny, monkeypatch):
    """On the CPU the DiffBIR Sampler hands ComfyUI's UNet its PyTorch attention (SDPA) in place of the slow CPU
    default (sub-quadratic): the same samples within the sampling-run tolerance, and an override set by someone else
    stays."""
    import comfy.ldm.modules.attention as host_attention

    module = node_module(comfy_host, "host.model_function")
    mine = object()
    options = {"optimized_attention_override": mine}
    module.use_sdpa_on_cpu(options, torch.device("cpu"))
    assert options["optimized_attention_override"] is mine
    options = {}
    module.use_sdpa_on_cpu(options, torch.device("cuda"))
    assert options == {}
    module.use_sdpa_on_cpu(options, torch.device("cpu"))
    assert options["optimized_attention_override"] is module._sdpa_on_cpu

    calls = []
    original = host_attention.attention_pytorch

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(host_attention, "attention_pytorch", counting)
    monkeypatch.setattr(host_attention, "optimized_attention", host_attention.attention_sub_quad)  # the CPU default
    with_sdpa = call_node(comfy_host, tiny)
    assert calls  # the UNet's attentions went to SDPA
    monkeypatch.setattr(module, "use_sdpa_on_cpu", lambda options, device: None)
    n = len(calls)
    sub_quad = call_node(comfy_host, tiny)
    assert len(calls) == n  # without the override nothing reaches attention_pytorch
    # Each attention call agrees to ~4e-7; the 3-step run of the tiny random networks amplifies that to ~7e-4
    # (samples up to ~12): held to the reference's tolerance of sampling runs (atol 1e-3, rtol 1e-5).
    torch.testing.assert_close(with_sdpa, sub_quad, atol=1e-3, rtol=1e-5)


def test_seed_reproducible_through_the_executor(comfy_host, model_files):
    a = run_sampler(comfy_host, seed=11)
    b = run_sampler(comfy_host, seed=11)
    c = run_sampler(comfy_host, seed=12)
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.allclose(a, c)


def test_interrupt_stops_the_prompt_and_the_next_one_runs(comfy_host, model_files, monkeypatch):
    import comfy.model_management
    import comfy_host as ch

    module = node_module(comfy_host, "sampler")
    original = module.latent_preview.prepare_callback
    steps_seen = []

    def prepare_callback(model, steps, *args, **kwargs):
        callback = original(model, steps, *args, **kwargs)

        def interrupting(step, x0, x, total):
            callback(step, x0, x, total)
            steps_seen.append(step)
            comfy.model_management.interrupt_current_processing(True)  # as the Cancel button does

        return interrupting

    monkeypatch.setattr(module.latent_preview, "prepare_callback", prepare_callback)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        run_sampler(comfy_host, sampler_name="spaced", steps=5)
    assert steps_seen == [0]
    monkeypatch.setattr(module.latent_preview, "prepare_callback", original)
    assert torch.isfinite(run_sampler(comfy_host, sampler_name="spaced", steps=2)).all()


# ------------------------------------------------------------------------------------------ tiles, guidance, noise_aug


def test_tiled_diffusion_crops_the_condition_per_tile(comfy_host, tiny128, monkeypatch):
    control_module = node_module(comfy_host, "host.control")
    windows = set()
    original = control_module.DiffBIRControl._hint_for

    def spy(self, x_noisy, batched_number, window=None):
        windows.add(window)
        return original(self, x_noisy, batched_number, window)

    monkeypatch.setattr(control_module.DiffBIRControl, "_hint_for", spy)
    whole = call_node(comfy_host, tiny128, sampler_name="edm_dpm++_2m", steps=3)
    assert windows == {None}
    windows.clear()
    one_tile = call_node(comfy_host, tiny128, sampler_name="edm_dpm++_2m", steps=3, tile_size=128, tile_stride=64)
    assert windows == {(0, 16, 0, 16)}  # a tile covering the image: the untiled result up to rounding
    assert torch.allclose(one_tile, whole, rtol=1e-4, atol=1e-4 * whole.abs().max().item())
    windows.clear()
    tiled = call_node(comfy_host, tiny128, sampler_name="edm_dpm++_2m", steps=3, tile_size=64, tile_stride=32)
    assert windows == {(y, y + 8, x, x + 8) for y in (0, 4, 8) for x in (0, 4, 8)}
    assert torch.isfinite(tiled).all() and not torch.equal(tiled, whole)
    rel = ((tiled - whole).abs().mean() / whole.abs().mean()).item()
    print(f"tiled (64/32 px) vs whole: mean abs diff / mean abs = {rel:.3f}")
    # The random tiny UNet attends globally at every level and an 8x8 latent tile sees a quarter of the 16x16
    # image, so the tiles change the result noticeably, but stay bounded.
    assert rel < 1.0


def test_noise_aug_and_start_point_cond_change_the_result(comfy_host, tiny):
    base = call_node(comfy_host, tiny, sampler_name="spaced", steps=2)
    assert torch.equal(base, call_node(comfy_host, tiny, sampler_name="spaced", steps=2))
    aug = call_node(comfy_host, tiny, sampler_name="spaced", steps=2, noise_aug=150)
    assert torch.isfinite(aug).all() and not torch.allclose(aug, base)
    # zero-terminal SNR: start point "cond" is pure noise (the same first draw), as officially
    cond = call_node(comfy_host, tiny, sampler_name="spaced", steps=2, start_point="cond")
    assert torch.allclose(cond, base, atol=1e-5)
    # rescale_cfg: ddim's grid (t = 501, 1) never reaches scale 1, where ComfyUI skips the negative and the tiny
    # UNet cannot run a batch of 1 at an 8x8 latent (GroupNorm over a single 1x1 value per group).
    ddim = call_node(comfy_host, tiny, sampler_name="ddim", steps=2)
    rescaled = call_node(comfy_host, tiny, sampler_name="ddim", steps=2, rescale_cfg=True)
    assert torch.isfinite(rescaled).all() and not torch.allclose(rescaled, ddim)


def test_restoration_guidance_runs_with_a_vae(comfy_host, model_files, monkeypatch):
    """Through the executor (torch.inference_mode): latent space, and rgb space back-propagating the VAE decoder."""
    host_vae = node_module(comfy_host, "host.guidance").HostVAE
    calls = []
    for name in ("encode", "decode"):
        original = getattr(host_vae, name)

        def spy(self, z, _name=name, _original=original):
            calls.append((_name, torch.is_grad_enabled()))
            return _original(self, z)

        monkeypatch.setattr(host_vae, name, spy)
    prompt = graph(sampler_name="spaced", steps=2)
    comfy_host.run(prompt)
    plain = node_output(comfy_host, "s")["samples"].clone()
    for space in ("latent", "rgb"):
        calls.clear()
        prompt["s"]["inputs"].update({"vae": ["1", 2], "guidance": "w_mse", "guidance_space": space,
                                      "guidance_scale": 0.5})
        comfy_host.run(prompt)
        guided = node_output(comfy_host, "s")["samples"]
        assert torch.isfinite(guided).all() and not torch.allclose(guided, plain), space
        # one target encode, then (rgb) one decode with gradients per guided step
        assert calls == ([("encode", False)] if space == "latent" else [("decode", True)] * 2), calls


def test_better_start_runs_through_the_executor_and_needs_the_vae(comfy_host, model_files, tiny, monkeypatch):
    """v2.0.0's better_start (start point from the encoded stage-1 image, a posterior sample) inside the executor's
    inference mode, on the v2 ControlNet and the eps model (with v2.1's zero-terminal SNR it is pure noise);
    without the vae input it is refused naming it. (Parity with the reference: tests/test_cli_golden.py.)"""
    host_vae = node_module(comfy_host, "host.guidance").HostVAE
    calls = []
    original = host_vae.encode
    monkeypatch.setattr(host_vae, "encode", lambda self, x: calls.append(tuple(x.shape)) or original(self, x))
    prompt = graph(sampler_name="spaced", steps=2)
    prompt["2"]["inputs"]["controlnet_name"] = TINY_CONTROLNETS["v2"]
    prompt["s"]["inputs"]["model"] = ["1", 0]  # the eps SD 2.1-base, as v2 needs
    comfy_host.run(prompt)
    plain = node_output(comfy_host, "s")["samples"].clone()
    prompt["s"]["inputs"].update(start_point="better_start", vae=["1", 2])
    comfy_host.run(prompt)
    better = node_output(comfy_host, "s")["samples"]
    assert calls == [(1, 3, 64, 64)]  # the stage-1 image at 8 x the latent size, encoded once
    assert torch.isfinite(better).all() and not torch.allclose(better, plain)
    with pytest.raises(ValueError, match=r"better_start encodes the stage-1 image: connect the 'vae' input"):
        call_node(comfy_host, tiny, start_point="better_start")


# ------------------------------------------------------------------------------------------ stock nodes, KSAMPLERs


def test_diffbir_ksamplers_run_in_stock_sampler_custom(comfy_host, model_files):
    prompt = graph(sampler_name="spaced", steps=3, cfg=3.0, seed=5)
    prompt.update({
        "e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "diffbir_spaced"}},
        "d": {"class_type": "DiffBIRSamplerSelect",
              "inputs": {"sampler_name": "edm_dpm++_3m_sde", "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 300.0,
                         "s_noise": 1.0, "eta": 1.0, "order": 1}},
        "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 2], "scheduler": "normal", "steps": 3,
                                                           "denoise": 1.0}},
    })
    for node, sampler in (("c1", "k"), ("c2", "d")):
        prompt[node] = {"class_type": "SamplerCustom",
                        "inputs": {"model": ["4", 2], "add_noise": True, "noise_seed": 5, "cfg": 3.0,
                                   "positive": ["4", 0], "negative": ["4", 1], "sampler": [sampler, 0],
                                   "sigmas": ["sig", 0], "latent_image": ["e", 0]}}
        prompt["o" + node] = {"class_type": "PreviewAny", "inputs": {"source": [node, 0]}}
    comfy_host.run(prompt)
    ours = node_output(comfy_host, "s")["samples"]
    stock_spaced = node_output(comfy_host, "c1")["samples"]
    stock_edm = node_output(comfy_host, "c2")["samples"]
    assert torch.isfinite(stock_spaced).all() and torch.isfinite(stock_edm).all()
    # diffbir_spaced in SamplerCustom: the official grid for len(sigmas) - 1 steps, the stock initial noise of the
    # seed continued by the sampler's draws: the DiffBIR Sampler's run with the same seed.
    err = (stock_spaced - ours).abs().max().item()
    print(f"SamplerCustom(diffbir_spaced) vs DiffBIR Sampler(spaced): max abs err {err:.2e} "
          f"(max abs {ours.abs().max().item():.2f})")
    assert torch.allclose(stock_spaced, ours, rtol=1e-4, atol=1e-4 * ours.abs().max().item())


def test_sampler_select_drives_stock_sampler_custom_advanced(comfy_host, model_files):
    """DiffBIR Sampler Select in SamplerCustomAdvanced (RandomNoise, CFGGuider, BasicScheduler: the graph of
    workflows/diffbir_v2.1_sampler_select.json) is the same run as the stock KSampler with the registered
    diffbir_edm_dpmpp_3m_sde on the same seed, sigmas and cfg; its extras (eta, s_noise) reach the solver."""
    prompt = graph()
    prompt.pop("o")  # the DiffBIR Sampler itself is not run here
    prompt.pop("s")
    prompt.update({
        "e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler",
              "inputs": {"model": ["4", 2], "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["e", 0],
                         "seed": 5, "steps": 3, "cfg": 3.0, "sampler_name": "diffbir_edm_dpmpp_3m_sde",
                         "scheduler": "simple", "denoise": 1.0}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "guider": {"class_type": "CFGGuider",
                   "inputs": {"model": ["4", 2], "positive": ["4", 0], "negative": ["4", 1], "cfg": 3.0}},
        "sig": {"class_type": "BasicScheduler",
                "inputs": {"model": ["4", 2], "scheduler": "simple", "steps": 3, "denoise": 1.0}},
        "ok": {"class_type": "PreviewAny", "inputs": {"source": ["k", 0]}},
    })
    extras = {"official": (1.0, 1.0), "eta 0.5": (0.5, 1.0), "s_noise 0.5": (1.0, 0.5)}
    for i, (eta, s_noise) in enumerate(extras.values()):
        prompt[f"sel{i}"] = {"class_type": "DiffBIRSamplerSelect",
                             "inputs": {"sampler_name": "edm_dpm++_3m_sde", "s_churn": 0.0, "s_tmin": 0.0,
                                        "s_tmax": 300.0, "s_noise": s_noise, "eta": eta, "order": 1}}
        prompt[f"sca{i}"] = {"class_type": "SamplerCustomAdvanced",
                             "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": [f"sel{i}", 0],
                                        "sigmas": ["sig", 0], "latent_image": ["e", 0]}}
        prompt[f"o{i}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"sca{i}", 0]}}
    comfy_host.run(prompt)
    ksampler = node_output(comfy_host, "k")["samples"]
    runs = [node_output(comfy_host, f"sca{i}")["samples"] for i in range(len(extras))]
    assert all(torch.isfinite(r).all() for r in runs) and ksampler.abs().max() > 0
    scale = ksampler.abs().max().item()
    assert torch.allclose(runs[0], ksampler, rtol=1e-5, atol=1e-5 * scale), \
        f"max abs err {(runs[0] - ksampler).abs().max().item():.2e}"
    for name, run in zip(list(extras)[1:], runs[1:]):
        assert (run - runs[0]).abs().max().item() > 1e-3 * scale, f"{name} did not change the result"


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, r"steps must be at least 1"),
    ({"cfg": -1.0}, r"cfg must be >= 0"),
    ({"tile_size": 64, "tile_stride": 72}, r"tile_stride \(72\) must not exceed tile_size \(64\)"),
    ({"tile_size": 36, "tile_stride": 16}, r"tile_size must be 0 \(no tiling\) or a multiple of 8 of at least 64"),
    ({"guidance": "w_mse"}, r"restoration guidance needs the SD 2.1 VAE: connect the 'vae' input"),
    ({"sampler_name": "ddim", "steps": 3}, r"ddim with 3 steps.*choose another step count"),
    ({"sampler_name": "euler"}, r"unknown sampler_name 'euler'"),
])
def test_bad_inputs_name_the_input_and_the_fix(comfy_host, tiny, changes, message):
    with pytest.raises(ValueError, match=message):
        call_node(comfy_host, tiny, **changes)


def test_missing_control_and_guidance_with_tiles_are_refused(comfy_host, tiny):
    with pytest.raises(ValueError, match=r"'positive' carries no DiffBIR ControlNet.*LAControlNet Apply"):
        call_node(comfy_host, tiny, positive=tiny["plain"])
    with pytest.raises(ValueError, match=r"'negative' carries no DiffBIR ControlNet"):
        call_node(comfy_host, tiny, negative=tiny["plain"])
    with pytest.raises(ValueError, match=r"does not work with tiled diffusion"):
        call_node(comfy_host, tiny, vae=tiny["vae"], guidance="mse", tile_size=64, tile_stride=32)
    with pytest.raises(ValueError, match=r"'latent' is 4x4 \(32x32 pixels\) but the condition image is 64x64"):
        call_node(comfy_host, tiny, latent={"samples": torch.zeros(1, 4, 4, 4)})


def test_error_reaches_the_prompt(comfy_host, model_files):
    import comfy_host as ch

    prompt = graph()
    prompt["s"]["inputs"]["positive"] = ["p", 0]  # the stock CLIP Text Encode output: no DiffBIR ControlNet
    with pytest.raises(ch.PromptExecutionError, match=r"connect the positive and negative outputs|Connect the positive"):
        comfy_host.run(prompt)


# ------------------------------------------------------------------------------------------ tile_plan auto, OOM


@pytest.fixture(scope="module")
def tiny128(comfy_host, model_files):
    """The tiny graph on a 128 x 128 condition image (a 16 x 16 latent: room for 64 px tiles)."""
    return conditioned(comfy_host, 128, 1)


def test_auto_plan_is_untiled_when_it_fits_and_bit_identical(comfy_host, tiny, caplog, eight_gb_free):
    manual = call_node(comfy_host, tiny, sampler_name="edm_dpm++_2m", steps=3)
    with caplog.at_level("INFO"):
        auto = call_node(comfy_host, tiny, sampler_name="edm_dpm++_2m", steps=3, tile_size=32, tile_plan="auto")
    assert torch.equal(auto, manual)
    assert "DiffBIR Sampler: diffusion: untiled (64x64 px)" in caplog.text


def test_out_of_memory_in_diffusion_retries_with_smaller_tiles(comfy_host, tiny128, monkeypatch, caplog):
    module = node_module(comfy_host, "host.model_function")
    want = call_node(comfy_host, tiny128, sampler_name="spaced", steps=2, tile_size=64, tile_stride=48)
    original = module.HostModelFunction._call
    sizes = []

    def oom_above_8(self, x, *args):
        sizes.append(x.shape[-1])
        if x.shape[-1] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return original(self, x, *args)

    monkeypatch.setattr(module.HostModelFunction, "_call", oom_above_8)
    with caplog.at_level("WARNING"):
        got = call_node(comfy_host, tiny128, sampler_name="spaced", steps=2)  # manual, untiled
    # the whole 16 x 16 latent fails at the first call; the rerun (same seed, same draws) samples the planner's
    # grid for a 128 px image: 64 px tiles (latent 8; the UNet's multiple), stride 48 (its overlap an eighth
    # of the side)
    assert sizes[0] == 16 and set(sizes[1:]) == {8}
    assert torch.equal(got, want)
    assert "diffusion: out of memory with untiled tiles; retrying with 64 px tiles" in caplog.text
    monkeypatch.setattr(module.HostModelFunction, "_call", lambda self, x, *args: (_ for _ in ()).throw(
        torch.OutOfMemoryError("out of memory")))
    with pytest.raises(MemoryError, match=r"diffusion ran out of memory at every tile size tried \(untiled, 64 px"):
        call_node(comfy_host, tiny128, sampler_name="spaced", steps=2)
