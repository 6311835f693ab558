"""Stage1 SwinIR Restore in a real ComfyUI (tests/comfy_host.py); its prompts end in DiffBIR Color Fix.

The stage-1 network is the small golden SwinIR (tests/golden/swinir.safetensors, official key layout),
which ComfyUI's stock "Load Upscale Model" (spandrel) recognises as a SwinIR.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import comfy_host as ch
from comfy_host import combo_options, node_module
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
MODEL_FILE = "diffbir_swinir_small.safetensors"
STAGE1, COLORFIX = "DiffBIRStage1Restore", "DiffBIRColorFix"


def _golden(name):
    from safetensors.torch import load_file

    tensors = load_file(str(GOLDEN / f"{name}.safetensors"))
    sd = {k[2:]: v.contiguous() for k, v in tensors.items() if k.startswith("w.")}
    return sd, json.loads((GOLDEN / f"{name}.json").read_text())["config"]


@pytest.fixture(scope="module")
def upscale_model_file(comfy_models_dir):
    from safetensors.torch import save_file

    sd, _ = _golden("swinir")
    path = comfy_models_dir / "upscale_models" / MODEL_FILE
    save_file(sd, str(path))
    return MODEL_FILE


@pytest.fixture(scope="module")
def input_png(comfy_host):
    """A 50x30 RGBA PNG in ComfyUI's input folder (LoadImage drops alpha into its MASK output)."""
    import folder_paths
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    small = torch.rand(3, 4, 6, generator=g)
    rgb = torch.nn.functional.interpolate(small[None], size=(30, 50), mode="bicubic", align_corners=False)[0]
    arr = (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    name = f"diffbir_stage1_{uuid.uuid4().hex[:8]}.png"
    path = Path(folder_paths.get_input_directory()) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert("RGBA").save(path)
    yield name
    path.unlink(missing_ok=True)


def _prompt(png, model, prefix, **stage1_inputs):
    inputs = {"image": ["1", 0], "upscale_model": ["2", 0], "upscale": 2.0, "version": "auto",
              "min_short_edge": 128, "tile_size": 0, "tile_overlap": 32}
    inputs.update(stage1_inputs)
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": png}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
        "3": {"class_type": STAGE1, "inputs": inputs},
        "4": {"class_type": COLORFIX, "inputs": {"image": ["3", 0], "reference": ["1", 0], "method": "wavelet"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


def _saved_size(comfy_host, outputs, node="5"):
    from PIL import Image

    image = outputs[node]["images"][0]
    with Image.open(comfy_host.output_dir / image["subfolder"] / image["filename"]) as img:
        return img.size


# ------------------------------------------------------------------------------------------------ node_info


def test_node_info(comfy_host):
    """Its inputs, outputs and defaults (display name, category and tooltips: test_nodes_registry.py)."""
    info = comfy_host.node_info(STAGE1)
    assert info["output"] == ["IMAGE", "INT", "INT"]
    assert info["input"]["optional"]["stage1"][0] == "DIFFBIR_STAGE1"
    assert info["input"]["optional"]["upscale_model"][0] == "UPSCALE_MODEL"
    assert combo_options(info["input"]["required"]["version"]) == ["auto", "v1", "v2", "v2.1"]
    assert info["input"]["required"]["min_short_edge"][1]["default"] == 512
    assert info["input"]["required"]["tile_size"][1]["default"] == 0


# ------------------------------------------------------------------------------------------------ prompts


def test_stock_upscale_model_graph_runs(comfy_host, upscale_model_file, input_png):
    # 30x50 x2 -> 60x100; short edge 60 < 128 -> 128 x int(100*128/60) = 128x213 (v2.1), padded to 128x256.
    outputs = comfy_host.run(_prompt(input_png, upscale_model_file, "diffbir_stage1"))
    assert _saved_size(comfy_host, outputs) == (213, 128)
    outputs = comfy_host.run(_prompt(input_png, upscale_model_file, "diffbir_stage1_exact", min_short_edge=0,
                                     version="v1", upscale=1.5, tile_size=64, tile_overlap=16))
    assert _saved_size(comfy_host, outputs) == (75, 45)  # ceil(50*1.5), ceil(30*1.5)


def test_neither_model_connected_is_a_clear_error(comfy_host, input_png):
    prompt = _prompt(input_png, "unused", "diffbir_stage1_err")
    del prompt["2"], prompt["3"]["inputs"]["upscale_model"]
    with pytest.raises(ch.PromptExecutionError, match=r"connect exactly one of 'stage1'.*neither"):
        comfy_host.run(prompt)


def test_cancel_stops_between_tiles_and_the_next_prompt_runs(comfy_host, upscale_model_file, input_png,
                                                             monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    updates = []
    original = comfy.utils.ProgressBar.update_absolute

    def update_then_cancel(self, value, total=None, preview=None):
        updates.append((value, total))
        original(self, value, total, preview)
        mm.interrupt_current_processing()  # the user presses Cancel while tile 1 finishes

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update_then_cancel)
    prompt = _prompt(input_png, upscale_model_file, "diffbir_stage1_cancel", tile_size=64, tile_overlap=32)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        comfy_host.run(prompt)
    assert updates == [(1, 21)]  # 128x256 in 64-px tiles with stride 32: 3 x 7 tiles; stopped after the first
    assert not mm.processing_interrupted()

    monkeypatch.undo()
    outputs = comfy_host.run(prompt)
    assert _saved_size(comfy_host, outputs) == (213, 128)


# ------------------------------------------------------------------------------------------------ in-process


def test_stage1_payload_from_a_model_patcher(comfy_host):
    """A DIFFBIR_STAGE1 payload (what Load DiffBIR Models outputs), run through the node function."""
    import comfy.model_management as mm
    import comfy.model_patcher

    from diffbir_core import stage1 as core
    from diffbir_core.loader import build_network

    types_mod = node_module(comfy_host, "host.types")
    node = comfy_host.node_classes[STAGE1]()

    def payload(kind, version, scale, multiple):
        sd, config = _golden(kind)
        net, _ = build_network(kind, sd, config=config)
        patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        return types_mod.Stage1Model(patcher, kind, version, scale, multiple, f"golden {kind}"), net

    stage1, net = payload("swinir", "v2", 1, 64)
    g = torch.Generator().manual_seed(5)
    rgba = torch.rand(1, 24, 40, 4, generator=g)
    before = rgba.clone()
    image, tw, th = node.execute(rgba, 2.0, "auto", 64, 0, stage1=stage1, tile_overlap=32)
    assert torch.equal(rgba, before)  # input untouched
    assert (tw, th) == (80, 48) and image.shape == (1, 64, 106, 3)  # short 48 -> 64, long int(80*64/48)
    assert image.dtype == torch.float32 and image.device == mm.intermediate_device()
    with torch.no_grad():
        want = core.restore(net.to("cpu"), rgba[..., :3].movedim(-1, 1), "swinir", 2.0, "v2", 64, 1, 64).image
    torch.testing.assert_close(image.movedim(-1, 1).cpu(), want.clamp(0, 1), atol=1e-5, rtol=1e-5)

    gray = rgba[..., :1]
    image_gray, _, _ = node.execute(gray, 2.0, "v2", 64, 128, stage1=stage1, tile_overlap=64)
    assert image_gray.shape == (1, 64, 106, 3)

    bsr, _ = payload("bsrnet", "v2", 4, 1)
    batch = torch.rand(2, 10, 14, 3, generator=g)
    image, tw, th = node.execute(batch, 2.5, "auto", 0, 0, stage1=bsr, tile_overlap=32)
    assert (tw, th) == (35, 25) and image.shape == (2, 25, 35, 3)  # exact target: int(14*2.5), int(10*2.5)

    bad = batch.clone()
    bad[1, 3, 4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image: contains NaN or infinite pixel values \(image 1 of the batch"):
        node.execute(bad, 2.0, "auto", 0, 0, stage1=bsr, tile_overlap=32)
    with pytest.raises(ValueError, match=r"both are connected"):
        node.execute(batch, 2.0, "auto", 0, 0, stage1=bsr, upscale_model=object(), tile_overlap=32)
    with pytest.raises(ValueError, match=r"tile_size \(32\) must be larger than tile_overlap \(64\)"):
        node.execute(batch, 2.0, "auto", 0, 32, stage1=bsr, tile_overlap=64)

    # Stock upscale models: SR networks (classic SwinIR x4 too) run like BSRNet, x1 restorers like their kind.
    pick = node_module(comfy_host, "host.stage1_runner").pipeline_for
    assert [pick("upscale_model", 4, "SwinIR"), pick("upscale_model", 2, "ESRGAN"), pick("upscale_model", 1, "SwinIR"),
            pick("upscale_model", 1, "SCUNet"), pick("upscale_model", 1, "DAT")] == \
        ["bsrnet", "bsrnet", "swinir", "scunet", "swinir"]


def test_tile_stride_is_the_old_overlap_complement(comfy_host):
    """tile_stride (the unit of every tile node) runs the tiles an overlap of tile_size - tile_stride ran; prompts
    that still give tile_overlap keep its meaning; the stride follows the one tile rule."""
    import comfy.model_management as mm
    import comfy.model_patcher

    from diffbir_core.loader import build_network

    sd, config = _golden("bsrnet")
    net, _ = build_network("bsrnet", sd, config=config)
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    bsr = node_module(comfy_host, "host.types").Stage1Model(patcher, "bsrnet", "v2", 4, 1, "golden bsrnet")
    node = comfy_host.node_classes[STAGE1]()
    image = torch.rand(1, 96, 120, 3, generator=torch.Generator().manual_seed(9))  # BSRNet runs on the raw input
    by_overlap = node.execute(image, 4.0, "auto", 0, 64, stage1=bsr, tile_overlap=16)[0]
    by_stride = node.execute(image, 4.0, "auto", 0, 64, stage1=bsr, tile_stride=48)[0]
    assert torch.equal(by_stride, by_overlap)
    assert not torch.equal(node.execute(image, 4.0, "auto", 0, 64, stage1=bsr, tile_stride=32)[0], by_overlap)
    with pytest.raises(ValueError, match=r"Stage1 SwinIR Restore: tile_stride \(96\) must not exceed tile_size \(64\)"):
        node.execute(image, 4.0, "auto", 0, 64, stage1=bsr, tile_stride=96)
    info = comfy_host.node_info(STAGE1)["input"]
    assert "tile_overlap" not in info["required"] and info["optional"]["tile_stride"][1]["default"] == 256
    assert info["optional"]["tile_overlap"][1]["forceInput"]
