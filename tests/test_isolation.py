"""Interrupts, isolation and determinism of our nodes in a real ComfyUI (tests/comfy_host.py).

* Cancel during stage-1 tiling (the network from Load DiffBIR Models) and between the images of a Degrade batch
  stops within one tile / image, saves nothing, keeps the loaded models (not reloaded, weights unchanged), and the
  next prompt gives the same result as an uninterrupted run. Cancel during the tiled VAE (DiffBIR VAE Decode,
  LAControlNet Apply's tiled encode) is tested in test_nodes_vae.py, during sampling in test_nodes_sampler.py.
* A full restoration graph (Degrade -> Stage1 SwinIR Restore -> LAControlNet Apply -> stock KSampler -> VAE
  Decode -> DiffBIR Color Fix -> DiffBIR Compare, on the tiny SD 2.1) leaves the MODEL, CLIP, VAE, conditioning,
  ControlNet, stage-1 network and images given to it untouched; two identical prompts give bit-identical images
  on CPU; changing only the KSampler seed or only the Degrade seed changes the output.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import uuid
from pathlib import Path

import comfy_host as ch
import pytest
import torch
from comfy_host import node_module, node_output, saved_images
from tiny_models import (
    TINY_SD21_NAME,
    tiny_sd21_checkpoint,
    write_tiny_controlnet,
    write_tiny_stage1,
)

S1 = "isolation_swinir.safetensors"
CN = "isolation_controlnet_v2.1.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


@pytest.fixture(scope="module")
def files(comfy_host, comfy_models_dir):
    import folder_paths
    from PIL import Image

    tiny_sd21_checkpoint(comfy_models_dir)
    write_tiny_stage1(comfy_models_dir / "diffbir" / S1, "swinir")
    write_tiny_controlnet(comfy_models_dir / "diffbir" / CN, "v2.1")
    g = torch.Generator().manual_seed(11)
    small = torch.rand(3, 6, 6, generator=g)
    rgb = torch.nn.functional.interpolate(small[None], size=(64, 64), mode="bicubic", align_corners=False)[0]
    png = f"isolation_{uuid.uuid4().hex[:8]}.png"
    path = Path(folder_paths.get_input_directory()) / png
    Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    comfy_host.refresh_models()
    yield png
    path.unlink(missing_ok=True)
    for name in (S1, CN):
        (comfy_models_dir / "diffbir" / name).unlink(missing_ok=True)


def load_counts(host):
    return dict(node_module(host, "host.model_cache").LOAD_COUNTS)


def digest(state_dict) -> dict[str, str]:
    """Every tensor's dtype, shape and bytes, hashed (the full-size VAE is too large to keep a copy of)."""
    out = {}
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy()
        out[k] = f"{t.dtype} {tuple(t.shape)} " + hashlib.blake2b(data).hexdigest()
    return out


# ------------------------------------------------------------------------------------------------ interrupts


def stage1_prompt(png, prefix):
    return {
        "I": {"class_type": "LoadImage", "inputs": {"image": png}},
        "L": {"class_type": "DiffBIRLoadModels", "inputs": {"stage1_name": S1, "controlnet_name": "none",
                                                            "dtype": "auto"}},
        "S": {"class_type": "DiffBIRStage1Restore",
              "inputs": {"image": ["I", 0], "stage1": ["L", 0], "upscale": 2.0, "version": "auto",
                         "min_short_edge": 0, "tile_size": 64, "tile_overlap": 32}},
        "F": {"class_type": "DiffBIRColorFix", "inputs": {"image": ["S", 0], "reference": ["I", 0],
                                                          "method": "wavelet"}},
        "W": {"class_type": "SaveImage", "inputs": {"images": ["F", 0], "filename_prefix": prefix}},
    }


def test_cancel_during_stage1_tiles_keeps_models_and_saves_nothing(comfy_host, files, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    prefix = f"isolation_cancel_{uuid.uuid4().hex[:6]}"
    prompt = stage1_prompt(files, prefix)
    comfy_host.run(prompt)  # reference, uninterrupted (loads the network)
    reference = node_output(comfy_host, "S").clone()
    first_saved = saved_images(comfy_host, prefix)
    stage1 = node_output(comfy_host, "L")
    weights, loads = digest(stage1.patcher.model.state_dict()), load_counts(comfy_host)

    updates = []
    original = comfy.utils.ProgressBar.update_absolute

    def update_then_cancel(self, value, total=None, preview=None):
        updates.append((value, total))
        original(self, value, total, preview)
        mm.interrupt_current_processing()  # the user presses Cancel while the first tile finishes

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update_then_cancel)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        comfy_host.run(prompt)
    monkeypatch.undo()
    assert updates == [(1, 9)]  # 128x128 (64x64 x2) in 64-px tiles, stride 32: 3 x 3 tiles; stopped after one
    assert not mm.processing_interrupted()
    assert saved_images(comfy_host, prefix) == first_saved  # nothing written by the cancelled run
    assert digest(stage1.patcher.model.state_dict()) == weights and load_counts(comfy_host) == loads

    comfy_host.run(prompt)  # the next prompt runs normally, on the same loaded network
    assert node_output(comfy_host, "L") is stage1 and load_counts(comfy_host) == loads
    assert torch.equal(node_output(comfy_host, "S"), reference)
    assert len(saved_images(comfy_host, prefix)) == len(first_saved) + 1


def test_cancel_between_degrade_images(comfy_host, files, monkeypatch):
    import comfy.model_management as mm

    from diffbir_core.degrade import pipeline as pipe  # the one copy the nodes import too
    prefix = f"isolation_degrade_cancel_{uuid.uuid4().hex[:6]}"
    prompt = {
        "I": {"class_type": "LoadImage", "inputs": {"image": files}},
        "R": {"class_type": "RepeatImageBatch", "inputs": {"image": ["I", 0], "amount": 3}},
        "D": {"class_type": "DiffBIRDegrade", "inputs": {"image": ["R", 0], "preset": "realesrgan", "seed": 4}},
        "W": {"class_type": "SaveImage", "inputs": {"images": ["D", 0], "filename_prefix": prefix}},
    }
    calls = []
    apply = pipe.apply

    def apply_then_cancel(image, params):
        calls.append(params["seed"])
        mm.interrupt_current_processing()
        return apply(image, params)

    monkeypatch.setattr(pipe, "apply", apply_then_cancel)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        comfy_host.run(prompt)
    monkeypatch.undo()
    assert calls == [4] and not mm.processing_interrupted() and saved_images(comfy_host, prefix) == []
    comfy_host.run(prompt)
    assert node_output(comfy_host, "D").shape == (3, 64, 64, 3) and len(saved_images(comfy_host, prefix)) == 3


# ------------------------------------------------------------------------------------------------ isolation


def full_prompt(png, prefix, kseed=7, dseed=3):
    return {
        "C": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD21_NAME}},
        "L": {"class_type": "DiffBIRLoadModels", "inputs": {"stage1_name": S1, "controlnet_name": CN,
                                                            "dtype": "auto"}},
        "I": {"class_type": "LoadImage", "inputs": {"image": png}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sharp photo", "clip": ["C", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["C", 1]}},
        "D": {"class_type": "DiffBIRDegrade", "inputs": {"image": ["I", 0], "preset": "general", "seed": dseed}},
        "S": {"class_type": "DiffBIRStage1Restore",
              "inputs": {"image": ["D", 0], "stage1": ["L", 0], "upscale": 1.0, "version": "auto",
                         "min_short_edge": 0, "tile_size": 0, "tile_overlap": 32}},
        "A": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["p", 0], "negative": ["n", 0], "control_net": ["L", 1], "image": ["S", 0],
                         "vae": ["C", 2], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                         "model": ["C", 0]}},
        "V": {"class_type": "VAEEncode", "inputs": {"pixels": ["S", 0], "vae": ["C", 2]}},
        "K": {"class_type": "KSampler",
              "inputs": {"model": ["A", 2], "positive": ["A", 0], "negative": ["A", 1], "latent_image": ["V", 0],
                         "seed": kseed, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "De": {"class_type": "VAEDecode", "inputs": {"samples": ["K", 0], "vae": ["C", 2]}},
        "F": {"class_type": "DiffBIRColorFix", "inputs": {"image": ["De", 0], "reference": ["S", 0],
                                                          "method": "wavelet"}},
        "M": {"class_type": "DiffBIRCompare", "inputs": {"image_a": ["F", 0], "image_b": ["D", 1]}},
        "W": {"class_type": "SaveImage", "inputs": {"images": ["F", 0], "filename_prefix": prefix}},
        "Mout": {"class_type": "PreviewAny", "inputs": {"source": ["M", 2]}},
    }


INPUT_NODES = ("C", "L", "I", "p", "n")


def inputs_only(prompt):
    """The loaders and text encoders of `prompt`, with outputs that make ComfyUI run (and cache) them."""
    sub = {k: copy.deepcopy(prompt[k]) for k in INPUT_NODES}
    sub.update({f"o{k}{i}": {"class_type": "PreviewAny", "inputs": {"source": [k, i]}}
                for k, i in (("C", 0), ("C", 1), ("C", 2), ("L", 0), ("L", 1), ("I", 0), ("p", 0), ("n", 0))})
    return sub


def snapshot(host):
    model, clip, vae = (node_output(host, "C", i) for i in range(3))
    stage1, control = node_output(host, "L", 0), node_output(host, "L", 1)
    conds = [node_output(host, k) for k in ("p", "n")]
    return {
        # The UNet's weights. model.model's other attributes (model_sampling) are shared by every clone and
        # hold the object patches of whichever clone ComfyUI loaded last (here the v2.1 clone that LAControlNet
        # Apply made with the stock ModelSamplingDiscrete): the input MODEL's own is get_model_object's.
        "model weights": digest(model.model.diffusion_model.state_dict()),
        "model options": copy.deepcopy(model.model_options),
        "model patches": (dict(model.object_patches), {k: list(v) for k, v in model.patches.items()}),
        "model sampling": (model.get_model_object("model_sampling"),
                           type(model.get_model_object("model_sampling")),
                           digest(model.get_model_object("model_sampling").state_dict())),
        "clip weights": digest(clip.cond_stage_model.state_dict()),
        "clip options": (copy.deepcopy(clip.patcher.model_options), clip.layer_idx),
        "vae weights": digest(vae.first_stage_model.state_dict()),
        "conditioning": [[(digest({"t": t}), sorted(d), {k: digest({"v": v}) if isinstance(v, torch.Tensor) else v
                                                          for k, v in d.items()}) for t, d in c] for c in conds],
        "controlnet": (control.condition_latent, control.condition_size, control.strength,
                       control.timestep_percent_range, control.previous_controlnet, control.control_scales,
                       digest(control.control_model.state_dict())),
        "stage1 weights": digest(stage1.patcher.model.state_dict()),
        "image": digest({"i": node_output(host, "I")}),
    }


def test_full_graph_leaves_its_inputs_untouched(comfy_host, files):
    prompt = full_prompt(files, f"isolation_full_{uuid.uuid4().hex[:6]}")
    comfy_host.run(inputs_only(prompt))  # runs and caches the loaders and encoders only
    objects = [node_output(comfy_host, k, i) for k, i in (("C", 0), ("C", 1), ("C", 2), ("L", 0), ("L", 1), ("p", 0))]
    before = snapshot(comfy_host)

    outputs = comfy_host.run(prompt, keep_cache=True)  # the full graph on those very objects
    assert "PSNR" in outputs["Mout"]["text"][0]
    assert [node_output(comfy_host, k, i) for k, i in (("C", 0), ("C", 1), ("C", 2), ("L", 0), ("L", 1), ("p", 0))] \
        == objects  # same objects (cached), so the graph really received them
    after = snapshot(comfy_host)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], f"{key} changed by the graph"
    assert before["controlnet"][0] is None  # the loader's ControlNet never got the condition attached


def run_final(host, prompt):
    host.run(prompt)
    return node_output(host, "F").clone(), node_output(host, "D").clone()


def test_identical_prompts_are_bit_identical_and_seeds_matter(comfy_host, files):
    prefix = f"isolation_det_{uuid.uuid4().hex[:6]}"
    first, lq = run_final(comfy_host, full_prompt(files, prefix))
    again, lq_again = run_final(comfy_host, full_prompt(files, prefix))  # executor cache dropped in between
    assert torch.equal(first, again) and torch.equal(lq, lq_again)
    pngs = saved_images(comfy_host, prefix)
    assert len(pngs) == 2
    assert (comfy_host.output_dir / pngs[0]).read_bytes() == (comfy_host.output_dir / pngs[1]).read_bytes()

    other_noise, lq_same = run_final(comfy_host, full_prompt(files, prefix, kseed=8))
    assert torch.equal(lq_same, lq) and not torch.equal(other_noise, first)
    other_degradation, lq_other = run_final(comfy_host, full_prompt(files, prefix, dseed=4))
    assert not torch.equal(lq_other, lq) and not torch.equal(other_degradation, first)
