"""The ControlNet side of the nodes inside a real ComfyUI: Load DiffBIR Models, LAControlNet Apply and the
DiffBIRControl that the stock samplers drive.

* Parity: ComfyUI's own UNet (openaimodel, built from the golden small config) driven through
  DiffBIRControl.get_control reproduces the official ControlLDM forward; ComfyUI's VAE through
  LAControlNet Apply's encode path reproduces the official condition latent.
* Stock samplers: KSampler, KSamplerAdvanced and SamplerCustom run a graph with our ControlNet on the tiny
  SD 2.1 shape-alike (tests/tiny_models.py: the golden small UNet, a tiny OpenCLIP-H-layout text tower, the SD
  VAE), loaded and prompted by the stock Load Checkpoint and CLIP Text Encode nodes.
"""

import copy
import inspect
import logging
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir_core.arch import controlnet as controlnet_arch
from diffbir_core.checkpoint import save_safetensors
from comfy_host import combo_options, node_module, node_output
from tiny_models import TINY_CLIP, TINY_CONTROLNETS, TINY_SD21_NAME

GOLDEN = Path(__file__).resolve().parent / "golden"
ATOL = RTOL = 1e-4

TINY_CKPT = TINY_SD21_NAME  # the tiny SD 2.1 (eps, like SD 2.1-base)
# The golden small ControlNet: it fits the tiny SD 2.1's UNet (12 input blocks, 32 channels).
TINY_CN = TINY_CONTROLNETS
# A ControlNet for another UNet shape (4 input blocks, 64 channels): the wrong-UNet error and the v1 full file.
OTHER_CN_CONFIG = {"image_size": 32, "in_channels": 4, "hint_channels": 4, "model_channels": 64,
                   "attention_resolutions": [1, 2], "num_res_blocks": 1, "channel_mult": [1, 1],
                   "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
                   "transformer_depth": 1, "context_dim": TINY_CLIP["width"], "legacy": False}
OTHER_CN = "tiny_other_unet_controlnet_v2.safetensors"


def check(name, got, want):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want).abs()
    print(f"{name}: max abs err {err.max().item():.3e}")
    assert (err <= ATOL + RTOL * want.abs()).all(), f"{name}: max abs err {err.max().item():.3e}"


def random_state_dict(module, seed):
    """Seeded random weights (N(0, 1/fan_in) matrices, unit norms, small biases) in fp16."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in module.state_dict().items():
        if ref.dim() > 1:
            out[key] = (torch.randn(ref.shape, generator=gen) * math.prod(ref.shape[1:]) ** -0.5).half()
        elif key.endswith("weight"):
            out[key] = torch.ones(ref.shape, dtype=torch.float16)
        else:
            out[key] = (torch.randn(ref.shape, generator=gen) * 0.02).half()
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


@pytest.fixture(scope="module")
def model_files(model_files):
    """The session's tiny models (conftest.model_files) plus this module's: a ControlNet for another UNet shape
    and a BSRNet file for the wrong-slot test."""
    diffbir = model_files / "diffbir"
    bsr = load_file(GOLDEN / "bsrnet.safetensors")
    save_safetensors({k[2:]: v for k, v in bsr.items() if k.startswith("w.")}, diffbir / "golden_bsrnet.safetensors")

    with torch.device("meta"):
        other = controlnet_arch.build(OTHER_CN_CONFIG)
    save_safetensors(random_state_dict(other, 3), diffbir / OTHER_CN,
                     {"diffbir_kind": "controlnet", "diffbir_version": "v2"})
    return model_files


def encode(clip, text):
    """CONDITIONING from the stock CLIP Text Encode node."""
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def load_models_node(comfy_host, controlnet_name, stage1_name="none", dtype="auto"):
    return comfy_host.node_classes["DiffBIRLoadModels"]().execute(stage1_name, controlnet_name, dtype)


# ------------------------------------------------------------------------------------------ loading
# (registration, display names and tooltips of every node: test_nodes_registry.py)


def test_loader_lists_folders_with_prefixes(comfy_host, model_files):
    (model_files / "controlnet" / "elsewhere.safetensors").write_bytes(b"")
    (model_files / "upscale_models" / "up.pth").write_bytes(b"")
    try:
        comfy_host.refresh_models()
        req = comfy_host.node_info("DiffBIRLoadModels")["input"]["required"]
        cn_choices, s1_choices = combo_options(req["controlnet_name"]), combo_options(req["stage1_name"])
        assert cn_choices[0] == "none" and s1_choices[0] == "none"
        assert TINY_CN["v2.1"] in cn_choices and "controlnet/elsewhere.safetensors" in cn_choices
        assert "upscale_models/up.pth" in s1_choices and "controlnet/elsewhere.safetensors" not in s1_choices
        # new choices are appended: a saved workflow stores the value, which must keep meaning the same
        assert combo_options(req["dtype"]) == ["auto", "fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]

        cls = comfy_host.node_classes["DiffBIRLoadModels"]
        key = cls.fingerprint_inputs("none", TINY_CN["v2"], "auto")
        assert cls.fingerprint_inputs("none", TINY_CN["v2"], "auto") == key
        first = load_models_node(comfy_host, TINY_CN["v2"])[1]
        assert load_models_node(comfy_host, TINY_CN["v2"])[1] is first  # cached: no reload
        path = model_files / "diffbir" / TINY_CN["v2"]
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced
        assert cls.fingerprint_inputs("none", TINY_CN["v2"], "auto") != key
        assert load_models_node(comfy_host, TINY_CN["v2"])[1] is not first
    finally:
        (model_files / "controlnet" / "elsewhere.safetensors").unlink()
        (model_files / "upscale_models" / "up.pth").unlink()
        comfy_host.refresh_models()


# ------------------------------------------------------------------------------------------ parity


def test_host_unet_with_diffbir_control_matches_official(comfy_host, model_files, golden_host_unet):
    import comfy.model_management as mm

    patcher = golden_host_unet()
    model = patcher.model

    control, info = load_models_node(comfy_host, TINY_CN["v2.1"], dtype="fp32")[1::4]
    assert "version v2.1" in info and control.version == "v2.1" and control.num_controls == 13
    g = load_file(GOLDEN / "controlnet_unet.safetensors")
    ctl = control.copy().set_condition(g["in.hint"], (128, 128), 1.0, (0.0, 1.0))
    ctl.set_control_scales(g["in.control_scales"].tolist())  # non-uniform, as in the golden run
    assert control.condition_latent is None and control.control_scales is None  # copy() left the loader's alone

    ms = model.model_sampling
    sigma = ms.sigmas[g["in.timesteps"]]  # timestep(sigma) gives back the recorded integer timesteps
    x = g["in.x_noisy"] * (sigma**2 + 1).sqrt().view(-1, 1, 1, 1)  # the sampler's (VE) latent
    mm.load_models_gpu([patcher] + ctl.get_models())
    ctl.pre_run(model, lambda p: ms.percent_to_sigma(p))
    with torch.no_grad():
        out = ctl.get_control(x, sigma, {"c_crossattn": g["in.context"]}, 1, {})
        assert [len(out["input"]), len(out["middle"]), len(out["output"])] == [0, 1, 12]
        for i in range(12):
            scale = g["in.control_scales"][i]
            check(f"control {i}", out["output"][i], g[f"out.control_{i:02d}"] * scale)
        check("control 12 (middle)", out["middle"][0], g["out.control_12"] * g["in.control_scales"][12])
        middle = out["middle"][0].clone()  # the host UNet pops the lists it consumes
        timesteps = ms.timestep(sigma)
        assert timesteps.tolist() == g["in.timesteps"].tolist()
        pred = model.diffusion_model(ms.calculate_input(sigma, x), timesteps.float(), context=g["in.context"],
                                     control=out, transformer_options={})
    check("host UNet + DiffBIRControl vs cldm_forward", pred, g["out.cldm_forward"])

    # Chained after another DiffBIR ControlNet: controls add up, like stock ControlNets.
    chained = ctl.copy().set_previous_controlnet(ctl)
    chained.pre_run(model, lambda p: ms.percent_to_sigma(p))
    with torch.no_grad():
        both = chained.get_control(x, sigma, {"c_crossattn": g["in.context"]}, 1, {})
    check("chained middle", both["middle"][0], 2 * middle)
    # Outside start/end percent only the previous ControlNet acts; none at all gives no control.
    late = ctl.copy().set_condition(g["in.hint"], (128, 128), 1.0, (0.9, 1.0))
    late.pre_run(model, lambda p: ms.percent_to_sigma(p))
    assert late.get_control(x, sigma, {"c_crossattn": g["in.context"]}, 1, {}) is None
    late.set_previous_controlnet(ctl)
    with torch.no_grad():
        prev_only = late.get_control(x, sigma, {"c_crossattn": g["in.context"]}, 1, {})
    check("range: previous only", prev_only["middle"][0], middle)
    for c in (ctl, chained, late):
        c.cleanup()


def test_condition_latent_matches_official(comfy_host, model_files, golden_host_vae):
    vae = golden_host_vae
    s = load_file(GOLDEN / "sample_spaced5_v21_cfg1.safetensors")
    control = load_models_node(comfy_host, TINY_CN["v2.1"], dtype="fp32")[1]
    apply = comfy_host.node_classes["DiffBIRLAControlNetApply"]()
    positive = [[s["in.c_txt_pos"], {}]]
    pos, neg, model = apply.execute(positive, positive, control, s["in.cond_img01"].movedim(1, -1), vae, 1.0, 0.0, 1.0)
    assert model is None
    ctl = pos[0][1]["control"]
    assert neg[0][1]["control"] is ctl and "control" not in positive[0][1]
    assert ctl.condition_size == (128, 128)
    check("condition latent vs out.c_img", ctl.condition_latent, s["out.c_img"])

    # Not a multiple of 64: zero padded like the official pipeline, and cropped to the sampler's latent.
    img = s["in.cond_img01"][:, :, :120, :104].movedim(1, -1)
    ctl2 = apply.execute(positive, positive, control, img, vae, 1.0, 0.0, 1.0)[0][0][1]["control"]
    assert ctl2.condition_latent.shape[-2:] == (16, 16) and ctl2.condition_size == (120, 104)
    assert ctl2._hint_for(torch.zeros(2, 4, 15, 13), 2).shape == (2, 4, 15, 13)
    with pytest.raises(ValueError, match=r"(?s)latent is 16x16.*104x120 pixels.*must match"):
        ctl2._hint_for(torch.zeros(1, 4, 16, 16), 1)


# ------------------------------------------------------------------------------------------ stock samplers


def sampler_graph(strength=1.0, controlnet=TINY_CN["v2.1"]):
    sampler = {"seed": 7, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal"}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT}},
        "2": {"class_type": "DiffBIRLoadModels",
              "inputs": {"stage1_name": "none", "controlnet_name": controlnet, "dtype": "auto"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x8040C0}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sharp photo", "clip": ["1", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["p", 0], "negative": ["n", 0], "control_net": ["2", 1],
                         "image": ["3", 0], "vae": ["1", 2], "strength": strength, "start_percent": 0.0,
                         "end_percent": 1.0, "model": ["1", 0]}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["4", 2], "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["5", 0],
                         "denoise": 1.0, **sampler}},
        "7": {"class_type": "KSamplerAdvanced",
              "inputs": {"model": ["4", 2], "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["5", 0],
                         "add_noise": "enable", "noise_seed": 7, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
                         "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000,
                         "return_with_leftover_noise": "disable"}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 2], "scheduler": "normal", "steps": 2,
                                                         "denoise": 1.0}},
        "10": {"class_type": "SamplerCustom",
               "inputs": {"model": ["4", 2], "add_noise": True, "noise_seed": 7, "cfg": 2.0, "positive": ["4", 0],
                          "negative": ["4", 1], "sampler": ["8", 0], "sigmas": ["9", 0], "latent_image": ["5", 0]}},
        # Output nodes that write no files.
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}},
    }


def run_latents(comfy_host, prompt):
    comfy_host.run(prompt)
    return {node: node_output(comfy_host, node)["samples"].clone() for node in ("6", "7", "10")}


def test_stock_samplers_run_with_diffbir_controlnet(comfy_host, model_files):
    first = run_latents(comfy_host, sampler_graph())
    for node, latent in first.items():
        assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all(), node
    again = run_latents(comfy_host, sampler_graph())
    for node in first:
        assert torch.equal(first[node], again[node]), f"node {node} not reproducible"
    assert torch.equal(first["6"], first["7"])  # KSampler == KSamplerAdvanced over the full range
    without = run_latents(comfy_host, sampler_graph(strength=0.0))
    for node in first:
        assert not torch.allclose(first[node], without[node]), f"node {node}: the ControlNet had no effect"


def test_wrong_file_in_controlnet_slot_names_it(comfy_host, model_files):
    import comfy_host as ch

    prompt = {"1": {"class_type": "DiffBIRLoadModels",
                    "inputs": {"stage1_name": "none", "controlnet_name": "golden_bsrnet.safetensors", "dtype": "auto"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}}
    with pytest.raises(ch.PromptExecutionError,
                       match=r"'golden_bsrnet.safetensors' looks like a BSRNet.*but the ControlNet slot expects "
                             r"a DiffBIR ControlNet"):
        comfy_host.run(prompt)


# ------------------------------------------------------------------------------------------ MODEL handling


def _model_snapshot(model):
    # The ModelPatcher's own state; model.model's attributes are shared by all clones and hold whichever
    # clone's object patches ComfyUI applied last, so they are not the input MODEL's state.
    return (model.get_model_object("model_sampling"), dict(model.object_patches), copy.deepcopy(model.model_options))


def test_inputs_unchanged_and_v21_model_patched(comfy_host, model_files, caplog):
    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(TINY_CKPT)[:3]
    apply = comfy_host.node_classes["DiffBIRLAControlNetApply"]()
    lacn = node_module(comfy_host, "host.model_sampling")
    assert lacn.model_sampling_kind(model) == ("eps", False)

    positive, negative = encode(clip, "a sharp photo"), encode(clip, "")
    cond_before = copy.deepcopy((positive, negative))
    model_before = _model_snapshot(model)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))

    control = load_models_node(comfy_host, TINY_CN["v2.1"])[1]
    with caplog.at_level(logging.WARNING):
        pos, neg, patched = apply.execute(positive, negative, control, image, vae, 1.0, 0.0, 1.0, model=model)
    assert "v2.1 ControlNet" in caplog.text and "sd2.1-base-zsnr-laionaes5.ckpt" in caplog.text
    assert patched is not model and lacn.model_sampling_kind(patched) == ("v", True)
    ms = patched.get_model_object("model_sampling")
    assert torch.isfinite(ms.sigma_max) and ms.sigma_max > 1000  # ComfyUI keeps the zsnr end finite (~4.5e3)

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = nodes.common_ksampler(patched, 3, 2, 2.0, "euler", "normal", pos, neg, latent)[0]["samples"]
    assert torch.isfinite(out).all()

    after = _model_snapshot(model)
    assert after[0] is model_before[0] and lacn.model_sampling_kind(model) == ("eps", False)
    assert after[1:] == model_before[1:]
    assert len(positive) == len(negative) == 1
    for now, before in zip(positive + negative, cond_before[0] + cond_before[1]):
        assert torch.equal(now[0], before[0]) and set(now[1]) == set(before[1]) and "control" not in now[1]

    # v2 ControlNet: eps MODEL passes through untouched, no warning; a v-pred zsnr MODEL is flagged.
    control_v2 = load_models_node(comfy_host, TINY_CN["v2"])[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert apply.execute(positive, negative, control_v2, image, vae, 1.0, 0.0, 1.0, model=model)[2] is model
        assert "DiffBIR" not in caplog.text
        apply.execute(positive, negative, control_v2, image, vae, 1.0, 0.0, 1.0, model=patched)
    assert "v2 ControlNet" in caplog.text and "v2-1_512-ema-pruned.ckpt" in caplog.text


def test_a_mismatched_model_is_reported_in_the_nodes_ui_text(comfy_host, model_files, monkeypatch):
    """A v2.1 ControlNet on the eps SD 2.1-base (and a v2 one on a v + zsnr MODEL) is shown as LAControlNet Apply's
    text in the UI (PromptServer.send_progress_text to that node), not only written to the console."""
    sent = []
    server = comfy_host.server
    monkeypatch.setattr(server, "send_progress_text", lambda text, node_id, *a, **k: sent.append((node_id, text)),
                        raising=False)
    graph = sampler_graph()
    graph = {k: v for k, v in graph.items() if k in ("1", "2", "3", "p", "n", "4")}
    graph["o"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}
    comfy_host.run(graph)
    texts = [text for node_id, text in sent if node_id == "4"]
    assert len(texts) == 1 and "v2.1 ControlNet" in texts[0] and "sd2.1-base-zsnr-laionaes5.ckpt" in texts[0]

    sent.clear()
    graph["2"]["inputs"]["controlnet_name"] = TINY_CN["v2"]
    comfy_host.run(graph)  # v2 ControlNet on the eps model: nothing to report
    assert not [text for node_id, text in sent if node_id == "4"]


# ------------------------------------------------------------------------------------------ precision, lowvram


def _golden_controlnet_inputs():
    g = load_file(GOLDEN / "controlnet_unet.safetensors")
    return g, (g["in.x_noisy"], g["in.hint"], g["in.timesteps"], g["in.context"])


def test_controlnet_lowvram_cast_path_and_half_modes(comfy_host, model_files):
    """ComfyUI's partial loading casts our swapped layers per call; fp16/bf16 follow DiffBIR's half mode."""
    from diffbir_core.loader import load_network  # the one diffbir_core the nodes import too

    ctl_module = node_module(comfy_host, "host.patching")
    path = model_files / "diffbir" / TINY_CN["v2.1"]
    g, args = _golden_controlnet_inputs()

    model = ctl_module.use_comfy_ops(ctl_module.cast_controlnet(load_network(path, ["controlnet"], "c").model,
                                                                torch.float32))
    assert all(hasattr(m, "comfy_cast_weights") for m in model.modules() if isinstance(m, torch.nn.Linear))
    patcher = ctl_module.wrap_in_patcher(model)
    with torch.no_grad():
        full = model(*args)
        check("ops-swapped control 12", full[-1], g["out.control_12"])
        patcher.load(torch.device("cpu"), lowvram_model_memory=1, full_load=False)  # everything "offloaded"
        try:
            assert any(getattr(m, "comfy_cast_weights", False) for m in model.modules())
            partial = model(*args)
        finally:
            patcher.unpatch_model()
    for a, b in zip(partial, full):
        assert torch.equal(a, b)

    for dtype in (torch.float16, torch.bfloat16):
        half = ctl_module.cast_controlnet(load_network(path, ["controlnet"], "c").model, dtype)
        assert half.time_embed[0].weight.dtype == torch.float32 and half.input_blocks[1][0].in_layers[2].weight.dtype == dtype
        norms = [m for m in half.modules() if type(m).__name__ == "GroupNorm32"]
        assert norms and all(m.weight.dtype == torch.float32 for m in norms)
        with torch.no_grad():
            out = ctl_module.use_comfy_ops(half)(*args)
        assert out[-1].dtype == dtype
        err = (out[-1].float() - g["out.control_12"]).abs().max().item()
        print(f"{dtype}: control 12 max abs err {err:.2e}")
        assert err < 0.05 * g["out.control_12"].abs().max().item()


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
def test_controlnet_fp8_storage_computes_in_the_cast_dtype(comfy_host, model_files, fp8):
    """fp8 weights (the half blocks; time embedding and GroupNorms float32) cast per call to the compute dtype by
    ComfyUI's ops: the controls come out in that dtype, close to the fp16 ones, and ComfyUI's partial (lowvram)
    loading gives the same bits as the full load."""
    from diffbir_core.loader import load_network

    ctl_module = node_module(comfy_host, "host.patching")
    path = model_files / "diffbir" / TINY_CN["v2.1"]
    g, args = _golden_controlnet_inputs()
    half = ctl_module.use_comfy_ops(ctl_module.cast_controlnet(load_network(path, ["controlnet"], "c").model,
                                                               torch.float16))
    model = ctl_module.use_comfy_ops(ctl_module.cast_controlnet(load_network(path, ["controlnet"], "c").model, fp8,
                                                                torch.float16))
    assert model.block_dtype == torch.float16 and model.input_blocks[1][0].in_layers[2].weight.dtype == fp8
    assert model.time_embed[0].weight.dtype == torch.float32
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if type(m).__name__ == "ComfyGroupNorm32")
    stored = {p.dtype for p in model.parameters()}
    assert stored == {fp8, torch.float32}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert size < 0.6 * sum(p.numel() * p.element_size() for p in half.parameters())
    with torch.no_grad():
        ref, full = half(*args), model(*args)
        patcher = ctl_module.wrap_in_patcher(model)
        patcher.load(torch.device("cpu"), lowvram_model_memory=1, full_load=False)  # everything "offloaded"
        try:
            partial = model(*args)
        finally:
            patcher.unpatch_model()
    assert all(getattr(m, "comfy_cast_weights", True) for m in model.input_blocks.modules()
               if hasattr(type(m), "comfy_cast_weights")), "unloading must keep the per-call cast"
    for a, b in zip(partial, full):
        assert torch.equal(a, b)
    scale = g["out.control_12"].abs().max().item()
    err = (full[-1].float() - ref[-1].float()).abs().max().item()
    print(f"{fp8}: control 12 max abs difference from fp16 {err:.2e} (max |control| {scale:.2f})")
    assert full[-1].dtype == torch.float16 and torch.isfinite(full[-1]).all()
    # measured (torch 2.14.1, this project's CPU): 0.10 (e4m3fn) and 0.28 (e5m2) of max |control|; bound: twice that
    assert err < {torch.float8_e4m3fn: 0.21, torch.float8_e5m2: 0.57}[fp8] * scale


def test_stock_apply_controlnet_node_encodes_lazily(comfy_host, model_files):
    """Our CONTROL_NET also works with the stock 'Apply ControlNet (Advanced)' when its VAE is connected."""
    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(TINY_CKPT)[:3]
    control = load_models_node(comfy_host, TINY_CN["v2"])[1]
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    positive = encode(clip, "a sharp photo")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    ours = comfy_host.node_classes["DiffBIRLAControlNetApply"]().execute(positive, positive, control, image, vae,
                                                                        0.8, 0.0, 1.0)
    stock = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, positive, control, image, 0.8, 0.0, 1.0, vae=vae)
    a = nodes.common_ksampler(model, 5, 2, 2.0, "euler", "normal", ours[0], ours[1], latent)[0]["samples"]
    b = nodes.common_ksampler(model, 5, 2, 2.0, "euler", "normal", stock[0], stock[1], latent)[0]["samples"]
    assert torch.isfinite(a).all() and torch.equal(a, b)
    without_vae = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, positive, control, image, 0.8, 0.0, 1.0)
    with pytest.raises(ValueError, match="needs a VAE"):
        nodes.common_ksampler(model, 5, 1, 2.0, "euler", "normal", without_vae[0], without_vae[1], latent)

    # A ControlNet that does not fit the MODEL's UNet is refused with the fix, not silently skipped.
    other = load_models_node(comfy_host, OTHER_CN)[1]
    misfit = comfy_host.node_classes["DiffBIRLAControlNetApply"]().execute(positive, positive, other, image, vae,
                                                                          1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"fits an SD 2.1 UNet \(4 input blocks, 64 channels\).*12 input blocks "
                                         r"and 32 channels"):
        nodes.common_ksampler(model, 5, 1, 2.0, "euler", "normal", misfit[0], misfit[1], latent)


# ------------------------------------------------------------------------------------------ host versions


def test_control_class_fits_this_hosts_control_base(comfy_host, model_files):
    """DiffBIRControl against the ControlBase of the running ComfyUI (0.3.75, 0.33.0, ...): every method we
    override takes each argument the host's own method takes, by name; a multi-GPU deep clone (newer hosts)
    owns a copy of the network in its own patcher and registers where the host keeps such clones."""
    import comfy.controlnet
    import comfy.model_patcher

    control = load_models_node(comfy_host, TINY_CN["v2"])[1]
    cls = type(control)
    assert issubclass(cls, comfy.controlnet.ControlBase)
    overridden = [name for name in vars(cls) if callable(getattr(comfy.controlnet.ControlBase, name, None))
                  and not name.startswith("__")]
    assert {"pre_run", "cleanup", "get_models", "set_cond_hint", "inference_memory_requirements"} <= set(overridden)
    for name in overridden:
        ours = inspect.signature(getattr(cls, name))
        takes_any = any(p.kind is p.VAR_KEYWORD for p in ours.parameters.values())
        for param in inspect.signature(getattr(comfy.controlnet.ControlBase, name)).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            assert param.name in ours.parameters or takes_any, f"{name}() lacks the host's argument {param.name!r}"

    device = torch.device("cpu")
    clone = control.deepclone_multigpu(device, autoregister=True)
    assert isinstance(clone, cls) and isinstance(clone.control_model_wrapped, comfy.model_patcher.ModelPatcher)
    assert clone.control_model is not control.control_model
    assert clone.control_model_wrapped.model is clone.control_model
    for a, b in zip(clone.control_model.parameters(), control.control_model.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    if hasattr(control, "multigpu_clones"):  # hosts with multi-GPU sampling keep and load the clones
        assert control.multigpu_clones[device] is clone
        assert clone.control_model_wrapped in control.get_models()


# ------------------------------------------------------------------------------------------ v1 full checkpoint


def test_v1_full_checkpoint_fills_both_slots_and_sd_outputs(comfy_host, model_files):
    import comfy.model_patcher

    from diffbir_core.arch import swinir as swinir_arch

    with torch.device("meta"):
        stage1 = swinir_arch.build({"embed_dim": 16, "depths": [1], "num_heads": [2]})
    # The tiny SD 2.1 (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*) plus a ControlNet whose
    # head size (64) the loader can assume: v1 files carry no metadata.
    v1 = load_file(model_files / "checkpoints" / TINY_CKPT)
    v1.update({"control_model." + k: v for k, v in load_file(model_files / "diffbir" / OTHER_CN).items()})
    v1.update({"preprocess_model." + k: v for k, v in random_state_dict(stage1, 4).items()})
    save_safetensors(v1, model_files / "diffbir" / "tiny_full_v1.safetensors")
    comfy_host.refresh_models()

    s1, control, model, clip, vae, info = load_models_node(comfy_host, "tiny_full_v1.safetensors",
                                                           stage1_name="tiny_full_v1.safetensors")
    assert (s1.kind, s1.version, s1.scale, s1.size_multiple) == ("swinir", "v1", 1, 64)
    assert isinstance(s1.patcher, comfy.model_patcher.ModelPatcher)
    assert control.version == "v1" and control.num_controls == 5
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and vae is not None and clip is not None
    cond = encode(clip, "a photo")[0][0]
    assert cond.shape == (1, 77, TINY_CLIP["width"]) and torch.isfinite(cond).all()
    assert "v1 full checkpoint" in info and info.count("version v1") == 2
    # fp8: the ControlNet and the file's SD 2.1 UNet both stored in fp8, computed as ComfyUI casts them here
    control, model = load_models_node(comfy_host, "tiny_full_v1.safetensors", dtype="fp8_e4m3fn")[1:3]
    assert control.control_model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float8_e4m3fn
    assert model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float8_e4m3fn
    assert control.dtype == model.model.manual_cast_dtype
    # Any other file leaves MODEL/CLIP/VAE empty.
    assert load_models_node(comfy_host, TINY_CN["v2"])[2:5] == (None, None, None)
