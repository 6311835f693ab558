"""Nothing bad gets in: hostile checkpoints and a matrix of bad inputs, in a real ComfyUI (tests/comfy_host.py).

* Hostile checkpoint files (the core-level payloads of test_core_checkpoint.py) placed in models/diffbir and selected
  in Load DiffBIR Models: the prompt fails with a clear message, runs nothing from the file, and the host runs the
  next normal prompt.
* ``MATRIX``: one row per bad input a demanding user can hit. A row runs a graph through the host (``host``
  rows) or calls a node FUNCTION directly after the host booted, and expects either a specific message (an error
  raised by our code or by ComfyUI's own validation, never from deep inside torch) or a documented graceful
  result (checked in the row). Run with ``-s`` to print what the user sees for each row. The ``load-image-*`` rows
  pin what ComfyUI's own Load Image does with damaged image files (the README says it; the pack cannot see it).
"""

from __future__ import annotations

import json
import logging
import re
import struct
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy_host as ch
import pytest
import torch
from comfy_host import combo_options, node_module
from random_checkpoints import manifest_shapes, random_state_dict, write_pickle
from sample_images import photo_bytes, png_declaring
from tiny_models import (
    TINY_SD21_NAME,
    tiny_sd21_checkpoint,
    write_tiny_controlnet,
    write_tiny_stage1,
)

REPO = Path(__file__).resolve().parents[1]
S1 = "bad_inputs_swinir.safetensors"  # tiny golden SwinIR (PixelUnshuffle variant, size multiple 64)
BSR = "bad_inputs_bsrnet.safetensors"  # tiny golden BSRNet (x4)
CN = "bad_inputs_controlnet_v2.1.safetensors"  # tiny golden ControlNet, v2.1, fits the tiny SD 2.1
SD21 = "bad_inputs_v2-1_512-ema-pruned.ckpt"  # the official SD 2.1-base layout (random values, tests/manifests)
UNRELATED = "bad_inputs_unrelated.safetensors"
LFS = "bad_inputs_lfs_pointer.pth"
HTML = "bad_inputs_error_page.ckpt"
EMPTY = "bad_inputs_empty.pth"
# Errors a user may see: ours (ValueError subclasses, TypeError, FileNotFoundError) or ComfyUI's own validation.
CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError, ch.PromptValidationError, ch.PromptExecutionError)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


class Env:
    """What the rows use: the host, node instances, the tiny SD 2.1 parts and pytest helpers of the running row."""

    def __init__(self, host, models: Path):
        import nodes

        self.host, self.models = host, models
        self.node = {name: cls() for name, cls in host.node_classes.items() if name.startswith("DiffBIR")}
        self.model, self.clip, self.vae = nodes.CheckpointLoaderSimple().load_checkpoint(TINY_SD21_NAME)[:3]
        self.positive = nodes.CLIPTextEncode().encode(self.clip, "a sharp photo")[0]
        self.stage1, self.control = self.node["DiffBIRLoadModels"].execute(S1, CN)[:2]
        self.bsrnet = self.node["DiffBIRLoadModels"].execute(BSR, "none")[0]
        self.monkeypatch = self.caplog = None

    def run(self, prompt):
        """Run through the host; node errors fail it even when another output is valid (ComfyUI would run that
        one and show the errors on the nodes)."""
        valid = self.host.validate(prompt)
        if valid[3]:
            raise ch.PromptValidationError(ch._format_validation(valid))
        return self.host.run(prompt)

    def output(self, node_id, index=0):
        """A node's output from the executor's cache (kept until the next prompt)."""
        import inspect

        entry = self.host.executor.caches.outputs.get(node_id)
        if inspect.isawaitable(entry):
            entry = self.host.loop.run_until_complete(entry)
        return getattr(entry, "outputs", entry)[index][0]

    # direct node calls with defaults
    def stage1_call(self, image, upscale=1.0, min_short_edge=0, tile=0, overlap=32, stage1="swinir", **kw):
        payload = {"swinir": self.stage1, "bsrnet": self.bsrnet}[stage1] if isinstance(stage1, str) else stage1
        return self.node["DiffBIRStage1Restore"].execute(image, upscale, "auto", min_short_edge, tile,
                                                         stage1=payload, tile_overlap=overlap, **kw)

    def apply_call(self, image, control="default", vae="default", start=0.0, end=1.0, positive=None):
        positive = self.positive if positive is None else positive
        return self.node["DiffBIRLAControlNetApply"].execute(
            positive, positive, self.control if control == "default" else control, image,
            self.vae if vae == "default" else vae, 1.0, start, end)

    def sample(self, positive, negative, latent_hw, batch=1, model=None):
        import nodes

        latent = {"samples": torch.zeros(batch, 4, *latent_hw)}
        return nodes.common_ksampler(model or self.model, 1, 1, 2.0, "euler", "normal", positive, negative,
                                     latent)[0]["samples"]


@pytest.fixture(scope="module")
def env(comfy_host, comfy_models_dir):
    from safetensors.torch import save_file

    tiny_sd21_checkpoint(comfy_models_dir)
    d = comfy_models_dir / "diffbir"
    write_tiny_stage1(d / S1, "swinir")
    write_tiny_stage1(d / BSR, "bsrnet")
    write_tiny_controlnet(d / CN, "v2.1")
    save_file({"foo.weight": torch.zeros(2)}, str(d / UNRELATED))
    (d / LFS).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 1510418561\n")
    (d / HTML).write_text("<!DOCTYPE html><html><body>Access denied</body></html>\n")
    (d / EMPTY).write_bytes(b"")
    write_pickle(random_state_dict(manifest_shapes("sd21_base_keys_read.json")), d / SD21, wrap=True)
    comfy_host.refresh_models()
    yield Env(comfy_host, comfy_models_dir)
    for name in (S1, BSR, CN, SD21, UNRELATED, LFS, HTML, EMPTY):
        (d / name).unlink(missing_ok=True)
    comfy_host.refresh_models()


# ------------------------------------------------------------------------------------------------ graphs


def loader_graph(stage1="none", controlnet="none", dtype="auto"):
    return {"L": {"class_type": "DiffBIRLoadModels",
                  "inputs": {"stage1_name": stage1, "controlnet_name": controlnet, "dtype": dtype}},
            "Linfo": {"class_type": "PreviewAny", "inputs": {"source": ["L", 5]}}}


def stage1_graph(stage1=S1, size=(40, 24), **widgets):
    g = loader_graph(stage1=stage1)
    g["E"] = {"class_type": "EmptyImage", "inputs": {"width": size[0], "height": size[1], "batch_size": 1,
                                                     "color": 0x406080}}
    g["S"] = {"class_type": "DiffBIRStage1Restore",
              "inputs": {"image": ["E", 0], "stage1": ["L", 0], "upscale": 1.0, "version": "auto",
                         "min_short_edge": 0, "tile_size": 0, "tile_overlap": 32, **widgets}}
    g["Sout"] = {"class_type": "PreviewAny", "inputs": {"source": ["S", 1]}}
    return g


def controlnet_graph(controlnet=CN, image=(64, 64), latent=(64, 64), start=0.0, end=1.0, vae=("C", 2)):
    g = loader_graph(controlnet=controlnet)
    g.update({
        "C": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD21_NAME}},
        "E": {"class_type": "EmptyImage", "inputs": {"width": image[0], "height": image[1], "batch_size": 1,
                                                     "color": 0x8040C0}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sharp photo", "clip": ["C", 1]}},
        "A": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["p", 0], "negative": ["p", 0], "control_net": ["L", 1], "image": ["E", 0],
                         "vae": list(vae), "strength": 1.0, "start_percent": start, "end_percent": end,
                         "model": ["C", 0]}},
        "X": {"class_type": "EmptyLatentImage", "inputs": {"width": latent[0], "height": latent[1], "batch_size": 1}},
        "K": {"class_type": "KSampler",
              "inputs": {"model": ["A", 2], "positive": ["A", 0], "negative": ["A", 1], "latent_image": ["X", 0],
                         "seed": 1, "steps": 1, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "Kout": {"class_type": "PreviewAny", "inputs": {"source": ["K", 0]}},
    })
    return g


def sampler_graph(**widgets):
    """controlnet_graph with the DiffBIR Sampler (nodes/sampler.py) in place of the stock KSampler."""
    g = controlnet_graph()
    g["K"] = {"class_type": "DiffBIRSampler",
              "inputs": {"model": ["A", 2], "positive": ["A", 0], "negative": ["A", 1], "seed": 1, "steps": 2,
                         "cfg": 2.0, "sampler_name": "edm_dpm++_3m_sde", "rescale_cfg": False, "start_point": "noise",
                         "noise_aug": 0, "tile_size": 0, "tile_stride": 256, **widgets}}
    return g


def sampler_row(call):
    """A DiffBIR Sampler row: skipped where nodes/sampler.py is not registered (it has its own tests)."""
    def run(env):
        if "DiffBIRSampler" not in env.host.node_classes:
            pytest.skip("the DiffBIR Sampler node is not part of this tree")
        return call(env)
    return run


def sampler_call(env, steps=2, cfg=2.0):
    pos, neg, model = env.apply_call(rand(1, 64, 64, 3))
    return env.host.node_classes["DiffBIRSampler"]().execute(env.model, pos, neg, 1, steps, cfg, "edm_dpm++_3m_sde",
                                                           False, "noise", 0, 0, 256)


def degrade_graph(preset="general", params_json="", **overrides):
    return {"E": {"class_type": "EmptyImage",
                  "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x808080}},
            "D": {"class_type": "DiffBIRDegrade",
                  "inputs": {"image": ["E", 0], "preset": preset, "seed": 0, "params_json": params_json, **overrides}},
            "Dout": {"class_type": "PreviewAny", "inputs": {"source": ["D", 2]}}}


# ------------------------------------------------------------------------------------------------ graceful checks


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


IMG = rand(1, 24, 40, 3)


def same_as_rgb(env, call, image):
    """`call` on an RGBA / gray image gives what it gives on the RGB image the node makes of it."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else image[..., :1].repeat(1, 1, 1, 3)
    got, want = call(image), call(rgb.contiguous())
    tensors = [(a, b) for a, b in zip(got, want) if isinstance(a, torch.Tensor)]
    assert tensors and all(torch.equal(a, b) for a, b in tensors)
    return f"handled: {'RGBA loses alpha' if image.shape[-1] == 4 else 'gray repeated to RGB'}, same result as RGB"


def stage1_sizes(env, h, w, upscale, **kw):
    image, tw, th = env.stage1_call(rand(1, h, w, 3), upscale=upscale, **kw)
    want = (int(h * upscale), int(w * upscale))
    assert tuple(image.shape[1:3]) == want and (th, tw) == want and torch.isfinite(image).all()
    return f"handled: {w}x{h} -> {want[1]}x{want[0]} (padded to the network multiple inside, cropped back)"


def stage1_1x1_official(env):
    image, tw, th = env.stage1_call(rand(1, 1, 1, 3), upscale=4.0, min_short_edge=512)
    assert image.shape == (1, 512, 512, 3) and (tw, th) == (4, 4)
    return "handled: 1x1 x4 -> working size 512x512 (min_short_edge), target 4x4"


def tile_larger_than_image(env):
    whole = env.stage1_call(IMG, tile=0)[0]
    one_tile = env.stage1_call(IMG, tile=4096, overlap=64)[0]
    assert torch.equal(whole, one_tile)
    return "handled: a tile larger than the image is one clamped tile (same result as untiled)"


def oom_above(env, limit_px):
    """The stage-1 network raises torch.OutOfMemoryError on inputs larger than `limit_px` pixels."""
    cls = type(env.stage1.patcher.model)
    forward = cls.forward

    def limited(self, x):
        if x.shape[-2] * x.shape[-1] > limit_px:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated for "
                                         f"{x.shape[-1]}x{x.shape[-2]})")
        return forward(self, x)

    env.monkeypatch.setattr(cls, "forward", limited)


def oom_tiles_retried(env):
    oom_above(env, 128 * 128)
    with env.caplog.at_level(logging.WARNING):
        env.run(stage1_graph(size=(64, 64), upscale=4.0))  # the network sees 256x256: too much
    image = env.output("S")
    assert image.shape == (1, 256, 256, 3) and torch.isfinite(image).all()
    assert "stage1: out of memory with untiled tiles; retrying with 192 px tiles" in env.caplog.text
    assert "stage1: out of memory with 192 px tiles; retrying with 128 px tiles" in env.caplog.text
    return "handled: retried automatically with 192, then 128 px tiles (warning 'stage1: out of memory ... retrying')"


def v21_with_eps_model(env):
    lacn = node_module(env.host, "host.model_sampling")
    with env.caplog.at_level(logging.WARNING):
        env.run(controlnet_graph())
    assert lacn.model_sampling_kind(env.output("A", 2)) == ("v", True)
    warning = next(r.getMessage() for r in env.caplog.records if "v2.1 ControlNet" in r.getMessage())
    assert "connect that output to the sampler" in warning and "sd2.1-base-zsnr-laionaes5.ckpt" in warning
    return "warning: " + warning


def fp16_on_cpu(env):
    info = env.node["DiffBIRLoadModels"].execute("none", CN, "fp16")[5]
    assert "float32 on cpu" in info
    return "handled: " + info.split("; ")[-1]


def both_none(env):
    env.run(loader_graph())
    assert env.output("L", 5) == "nothing loaded (both slots are 'none')"
    return "handled: info 'nothing loaded (both slots are 'none')'"


def condition_not_multiple_of_64(env):
    pos, neg, _ = env.apply_call(rand(1, 7, 13, 3))
    ctl = pos[0][1]["control"]
    assert ctl.condition_size == (7, 13) and ctl.condition_latent.shape[-2:] == (8, 8)  # padded to 64 x 64
    assert torch.isfinite(env.sample(pos, neg, (1, 2))).all()  # cropped to the 1x2 latent of a 7x13 image
    pos, neg, _ = env.apply_call(rand(1, 40, 56, 3))
    assert env.sample(pos, neg, (5, 7)).shape == (1, 4, 5, 7)
    return "handled: padded to a multiple of 64 for the VAE, latent cropped to the sampler's size"


def colorfix_other_sizes(env):
    fix = env.node["DiffBIRColorFix"].execute
    assert fix(rand(1, 1, 1, 3), rand(1, 1, 1, 3), "wavelet")[0].shape == (1, 1, 1, 3)
    assert fix(rand(1, 7, 13, 3), rand(1, 30, 50, 4), "wavelet")[0].shape == (1, 7, 13, 3)
    return "handled: 1x1 and 7x13 work; the reference is resized to the image"


def compare_rgba_vs_rgb(env):
    a = rand(1, 16, 16, 4)
    psnr, _, report = env.node["DiffBIRCompare"].execute(a, a[..., :3].clone())
    assert psnr == float("inf") and "RGB" in report
    return "handled: alpha dropped, PSNR inf (identical RGB)"


def stock_apply_controlnet_gray(env):
    import nodes

    gray = rand(1, 64, 64, 1)
    stock = nodes.ControlNetApplyAdvanced().apply_controlnet(env.positive, env.positive, env.control, gray, 1.0,
                                                             0.0, 1.0, vae=env.vae)
    assert torch.isfinite(env.sample(stock[0], stock[1], (8, 8))).all()
    return "handled: the stock Apply ControlNet path takes a grayscale image too"


# ------------------------------------------------------------------------------------------------ the matrix


@dataclass
class Row:
    id: str
    call: Callable[[Env], Any]
    expect: str | None = None  # regex the message must contain; None: call checks a graceful result
    before_run: bool = False  # the error must come from validation, before anything runs


def deleted_after_listing(env):
    path = env.models / "diffbir" / "bad_inputs_deleted.pth"
    path.write_bytes(b"")
    env.host.refresh_models()
    assert "bad_inputs_deleted.pth" in combo_options(env.host.node_info("DiffBIRLoadModels")["input"]["required"]["stage1_name"])
    path.unlink()  # gone before the run
    return env.node["DiffBIRLoadModels"].execute("bad_inputs_deleted.pth", "none")


def stock_control_object(env):
    import comfy.controlnet

    return env.apply_call(IMG, control=comfy.controlnet.ControlBase())


def wrong_text_encoder(env):
    pos, neg, _ = env.apply_call(rand(1, 64, 64, 3), positive=[[torch.zeros(1, 77, 768), {}]])
    return env.sample(pos, neg, (8, 8))


# -- damaged image files in ComfyUI's own Load Image (a stock node: the pack's nodes get only its IMAGE tensor, never
# the file). The command line refuses each of them before ComfyUI starts (tests/test_cli.py,
# test_damaged_image_files_exit_2_naming_the_file); these rows pin what the README says happens inside ComfyUI.


def load_image(env, name: str, data: bytes):
    """Run the stock Load Image on `data` saved as `name` in ComfyUI's input folder; its IMAGE output."""
    import folder_paths

    path = Path(folder_paths.get_input_directory()) / name
    path.write_bytes(data)
    try:
        env.run({"I": {"class_type": "LoadImage", "inputs": {"image": name}},
                 "P": {"class_type": "PreviewImage", "inputs": {"images": ["I", 0]}}})
        return env.output("I")
    finally:
        path.unlink()


def load_image_fills_truncated(env, fmt: str, suffix: str, fill: int):
    """A file cut in half loads without an error or a warning: full size, the missing rows one flat colour (on
    0.3.75 `fill` grey in every channel; newer hosts decode differently and fill another flat colour)."""
    from PIL import ImageFile

    full = photo_bytes(fmt)
    whole = load_image(env, f"bad_inputs_whole{suffix}", full)
    with env.caplog.at_level(logging.WARNING):
        cut = load_image(env, f"bad_inputs_truncated{suffix}", full[: len(full) // 2])
    assert cut.shape == whole.shape == (1, 48, 64, 3)  # nothing in the IMAGE says a part is missing
    last = cut[0, -1]
    assert torch.equal(last, last[:1].expand_as(last)) and not torch.equal(last, whole[0, -1])  # one flat colour
    if env.host.path.name.startswith("comfyui-0.3.75"):
        assert torch.equal(last, torch.full((64, 3), fill / 255.0))
    assert not [r for r in env.caplog.records if r.levelno >= logging.WARNING], env.caplog.text
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # set only for ComfyUI's retry (node_helpers.pillow), then reset
    colour = ", ".join(f"{round(float(v) * 255)}" for v in last[0])
    return (f"handled by ComfyUI, silently: Load Image decodes what is there and fills the missing rows with one "
            f"colour ({colour}); the pack's nodes cannot tell")


def load_image_fails(env, name: str, data: bytes, error: str):
    with pytest.raises(ch.PromptExecutionError) as err:
        load_image(env, name, data)
    message, origin = _user_message_and_origin(err.value, env.host)
    event = next(d for ev, d in env.host.executor.status_messages if ev == "execution_error")
    errors = (error,) if isinstance(error, str) else tuple(error)
    assert event["node_type"] == "LoadImage" and event["exception_type"].endswith(errors), event
    # the decoder's error, inside ComfyUI: not ours to word (a compiled module such as PyAV's names a relative file)
    assert not (Path(origin).is_absolute() and Path(origin).resolve().is_relative_to(REPO))
    return f"ComfyUI's Load Image fails with {event['exception_type']}: {message.splitlines()[0][:120]}"


def load_image_wrong_extension(env):
    png = photo_bytes("PNG")
    as_png = load_image(env, "bad_inputs_photo.png", png)
    assert torch.equal(load_image(env, "bad_inputs_png_named.jpg", png), as_png)
    assert torch.equal(load_image(env, "bad_inputs_png_named.dat", png), as_png)  # VALIDATE_INPUTS: only "exists"
    return "handled: Load Image decodes by content, whatever the suffix (a PNG named .jpg or .dat loads as the PNG)"


NAN = IMG.clone()
NAN[0, 3, 4, 1] = float("nan")
INF = IMG.clone()
INF[0, 5, 6, 0] = float("inf")

MATRIX = [
    # -- files in the wrong slot (through the host: Load DiffBIR Models)
    Row("sd21-checkpoint-as-controlnet", lambda e: e.run(loader_graph(controlnet=SD21)),
        r"looks like a Stable Diffusion 2\.x checkpoint .* but the ControlNet slot expects a DiffBIR ControlNet .*"
        r"Load it with ComfyUI's Load Checkpoint node"),
    Row("controlnet-as-stage1", lambda e: e.run(loader_graph(stage1=CN)),
        r"looks like a DiffBIR IRControlNet .* but the stage 1 slot expects .* Pick it in the ControlNet slot"),
    Row("stage1-as-controlnet", lambda e: e.run(loader_graph(controlnet=S1)),
        r"looks like a DiffBIR stage-1 SwinIR .* but the ControlNet slot expects .* Pick it in the stage 1 slot"),
    Row("unrelated-safetensors-as-controlnet", lambda e: e.run(loader_graph(controlnet=UNRELATED)),
        r"looks like an unrecognised model \(1 tensors; top-level names: foo\), but the ControlNet slot"),
    Row("unrelated-safetensors-as-stage1", lambda e: e.run(loader_graph(stage1=UNRELATED)),
        r"unrecognised model .* but the stage 1 slot expects"),
    Row("git-lfs-pointer", lambda e: e.run(loader_graph(controlnet=LFS)), r"is a Git LFS pointer .* not the weights"),
    Row("html-error-page", lambda e: e.run(loader_graph(stage1=HTML)), r"is an HTML/XML page, not weights"),
    Row("empty-file", lambda e: e.run(loader_graph(controlnet=EMPTY)), r"is empty \(0 bytes\): download it again"),
    Row("file-not-in-list", lambda e: e.run(loader_graph(controlnet="bad_inputs_missing.pth")),
        r"Value not in list: controlnet_name: 'bad_inputs_missing.pth'", before_run=True),
    Row("file-deleted-after-listing", deleted_after_listing,
        r"model file 'bad_inputs_deleted.pth' not found in models/diffbir or models/upscale_models \(moved or "
        r"deleted\?\)\. Refresh the node list \(press R\)"),
    Row("both-slots-none", both_none),
    Row("controlnet-fp16-on-cpu", fp16_on_cpu),
    # -- empty slots and wrong objects
    Row("stage1-none-into-restore", lambda e: e.run(stage1_graph(stage1="none")),
        r"neither is connected \(a 'stage1' fed by Load DiffBIR Models with stage1_name 'none' is empty too"),
    Row("controlnet-none-into-apply", lambda e: e.run(controlnet_graph(controlnet="none")),
        r"'control_net' is empty: Load DiffBIR Models has controlnet_name 'none'"),
    Row("loader-vae-output-into-apply", lambda e: e.run(controlnet_graph(vae=("L", 4))),
        r"the 'vae' input is empty\. Connect the VAE of your SD 2\.1 Load Checkpoint"),
    Row("stage1-both-models", lambda e: e.stage1_call(IMG, upscale_model=object()), r"both are connected"),
    Row("stage1-given-other-object", lambda e: e.stage1_call(IMG, stage1=e.control),
        r"stage1: expected the stage1 output of 'Load DiffBIR Models', got DiffBIRControl"),
    Row("stock-controlnet-into-apply", stock_control_object, r"needs a DiffBIR ControlNet from 'Load DiffBIR Models'"),
    # -- models that do not go together
    Row("v2.1-controlnet-with-eps-sd21", v21_with_eps_model),
    Row("latent-size-differs-from-condition", lambda e: e.run(controlnet_graph(image=(64, 64), latent=(96, 64))),
        r"the sampler's latent is 12x8 \(96x64 pixels\) but the condition image given to LAControlNet Apply is "
        r"64x64 pixels .* must match"),
    Row("sd15-text-encoder", wrong_text_encoder, r"expects SD 2\.1 text conditioning \(32 channels\) but got 768"),
    # -- image shapes and values
    Row("stage1-rgba", lambda e: same_as_rgb(e, lambda x: e.stage1_call(x), rand(1, 24, 40, 4))),
    Row("stage1-grayscale", lambda e: same_as_rgb(e, lambda x: e.stage1_call(x), rand(1, 24, 40, 1))),
    Row("colorfix-rgba-and-gray", lambda e: same_as_rgb(
        e, lambda x: e.node["DiffBIRColorFix"].execute(x, x, "wavelet"), rand(2, 16, 20, 2))),
    Row("apply-rgba", lambda e: same_as_rgb(e, lambda x: [p[0][1]["control"].condition_latent
                                                          for p in e.apply_call(x)[:1]], rand(1, 64, 64, 4))),
    Row("apply-grayscale", lambda e: same_as_rgb(e, lambda x: [p[0][1]["control"].condition_latent
                                                               for p in e.apply_call(x)[:1]], rand(1, 64, 64, 1))),
    Row("stock-apply-controlnet-grayscale", stock_apply_controlnet_gray),
    Row("degrade-rgba", lambda e: same_as_rgb(e, lambda x: e.node["DiffBIRDegrade"].execute(x, "general", 3)[:2],
                                              rand(1, 32, 32, 4))),
    Row("compare-rgba-vs-rgb", compare_rgba_vs_rgb),
    Row("stage1-1x1", lambda e: stage1_sizes(e, 1, 1, 1.0)),
    Row("stage1-1x1-min-short-edge", stage1_1x1_official),
    Row("stage1-7x13-swinir", lambda e: stage1_sizes(e, 7, 13, 2.0)),
    Row("stage1-7x13-bsrnet", lambda e: stage1_sizes(e, 7, 13, 2.0, stage1="bsrnet")),
    Row("stage1-7x13-tiled", lambda e: stage1_sizes(e, 7, 13, 8.0, tile=64, overlap=16)),
    Row("condition-not-multiple-of-8-or-64", condition_not_multiple_of_64),
    Row("colorfix-1x1-and-7x13", colorfix_other_sizes),
    Row("degrade-7x13", lambda e: e.node["DiffBIRDegrade"].execute(rand(1, 7, 13, 3), "general", 0),
        r"image: the degradation needs at least 16x16 pixels, got 13x7"),
    Row("compare-7x13", lambda e: e.node["DiffBIRCompare"].execute(rand(1, 7, 13, 3), rand(1, 7, 13, 3)),
        r"images must be at least 11x11 pixels for SSIM, got 13x7"),
    Row("stage1-empty-batch", lambda e: e.stage1_call(rand(0, 24, 40, 3)),
        r"image: expected a non-empty IMAGE batch \(B, H, W, C\), got shape \(0, 24, 40, 3\)"),
    Row("apply-empty-batch", lambda e: e.apply_call(rand(0, 64, 64, 3)), r"image: expected a non-empty IMAGE batch"),
    Row("degrade-empty-batch", lambda e: e.node["DiffBIRDegrade"].execute(rand(0, 32, 32, 3), "general", 0),
        r"image: expected a non-empty IMAGE batch"),
    Row("colorfix-empty-reference", lambda e: e.node["DiffBIRColorFix"].execute(IMG, rand(0, 24, 40, 3), "wavelet"),
        r"reference: expected a non-empty IMAGE batch"),
    Row("stage1-nan", lambda e: e.stage1_call(NAN), r"image: contains NaN or infinite pixel values \(image 0"),
    Row("stage1-inf", lambda e: e.stage1_call(INF), r"image: contains NaN or infinite pixel values"),
    Row("apply-nan", lambda e: e.apply_call(NAN), r"image: contains NaN or infinite pixel values"),
    Row("colorfix-inf-reference", lambda e: e.node["DiffBIRColorFix"].execute(IMG, INF, "wavelet"),
        r"reference: contains NaN or infinite pixel values"),
    Row("degrade-nan", lambda e: e.node["DiffBIRDegrade"].execute(NAN, "general", 0), r"image: contains NaN"),
    Row("compare-inf", lambda e: e.node["DiffBIRCompare"].execute(IMG, INF), r"image_b: contains NaN or infinite"),
    Row("stage1-uint8-image", lambda e: e.stage1_call((IMG * 255).byte()),
        r"image: expected a float IMAGE in \[0, 1\], got dtype torch\.uint8"),
    Row("stage1-5-channels", lambda e: e.stage1_call(rand(1, 8, 8, 5)), r"expected 1 \(gray\), 2 \(gray\+alpha\), 3"),
    # -- widget values
    Row("upscale-0", lambda e: e.run(stage1_graph(upscale=0.0)), r"Value 0\.0 smaller than min of 1\.0: upscale",
        before_run=True),
    Row("upscale-100", lambda e: e.run(stage1_graph(upscale=100.0)), r"Value 100\.0 bigger than max of 8\.0: upscale",
        before_run=True),
    Row("upscale-100-direct-call", lambda e: e.stage1_call(IMG, upscale=100.0), r"upscale must be <= 8\.0, got 100\.0"),
    Row("tile-smaller-than-overlap", lambda e: e.run(stage1_graph(tile_size=64, tile_overlap=128)),
        r"tile_size \(64\) must be larger than tile_overlap \(128\): lower tile_overlap or raise tile_size",
        before_run=True),
    Row("tile-rounded-below-overlap", lambda e: e.run(stage1_graph(tile_size=100, tile_overlap=80)),
        r"tile_size \(100, rounded down to 64, a multiple of 64 that the network needs\) must be larger than "
        r"tile_overlap \(80\)"),
    Row("tile-overlap-above-max", lambda e: e.run(stage1_graph(tile_overlap=5000)),
        r"tile_overlap must be <= 4096, got 5000", before_run=True),
    Row("tile-larger-than-image", tile_larger_than_image),
    Row("start-percent-after-end", lambda e: e.run(controlnet_graph(start=0.8, end=0.2)),
        r"start_percent \(0\.8\) is after end_percent \(0\.2\), so the ControlNet would never act", before_run=True),
    Row("colorfix-batch-mismatch", lambda e: e.node["DiffBIRColorFix"].execute(rand(3, 8, 8, 3), rand(2, 8, 8, 3),
                                                                           "wavelet"),
        r"'reference' has 2 images but 'image' has 3; connect a reference batch of the same size or a single"),
    Row("compare-size-mismatch", lambda e: e.node["DiffBIRCompare"].execute(rand(1, 16, 16, 3), rand(1, 16, 17, 3)),
        r"image_a and image_b must have the same size"),
    Row("degrade-override-syntax", lambda e: e.run(degrade_graph(blur_sigma="abc")),
        r"override 'blur_sigma' .*cannot read 'abc' as a range\. Write 'low-high'", before_run=True),
    Row("degrade-override-reversed", lambda e: e.run(degrade_graph(noise_sigma="20-5")),
        r"override 'noise_sigma' .*low 20 is greater than high 5", before_run=True),
    Row("degrade-override-other-preset", lambda e: e.run(degrade_graph(stage2_scale="2-4")),
        r"override 'stage2_scale' does not apply to preset 'general'", before_run=True),
    Row("degrade-params-json-not-json", lambda e: e.run(degrade_graph(params_json="{oops")),
        r"params_json: not valid JSON", before_run=True),
    Row("degrade-unknown-preset", lambda e: e.run(degrade_graph(preset="nope")), r"preset: unknown preset 'nope'",
        before_run=True),
    # -- DiffBIR Sampler (its own checks; nodes/sampler.py)
    Row("sampler-0-steps", sampler_row(lambda e: e.run(sampler_graph(steps=0))),
        r"Value 0 smaller than min of 1: steps", before_run=True),
    Row("sampler-negative-cfg", sampler_row(lambda e: e.run(sampler_graph(cfg=-1.0))),
        r"Value -1\.0 smaller than min of 0\.0: cfg", before_run=True),
    Row("sampler-0-steps-direct-call", sampler_row(lambda e: sampler_call(e, steps=0)),
        r"DiffBIR Sampler: steps must be at least 1 \(got 0\)"),
    Row("sampler-negative-cfg-direct-call", sampler_row(lambda e: sampler_call(e, cfg=-1.0)),
        r"DiffBIR Sampler: cfg must be >= 0 \(got -1\.0\)"),
    # -- damaged image files in the stock Load Image (what ComfyUI does; the command line refuses them first)
    Row("load-image-truncated-jpeg", lambda e: load_image_fills_truncated(e, "JPEG", ".jpg", 128)),
    Row("load-image-truncated-png", lambda e: load_image_fills_truncated(e, "PNG", ".png", 0)),
    # 0.3.75: Pillow's UnidentifiedImageError; newer hosts try PyAV too and report its InvalidDataError
    Row("load-image-zero-bytes", lambda e: load_image_fails(e, "bad_inputs_empty.png", b"",
                                                            ("UnidentifiedImageError", "InvalidDataError"))),
    Row("load-image-decompression-bomb", lambda e: load_image_fails(e, "bad_inputs_bomb.png",
                                                                    png_declaring(100_000, 100_000),
                                                                    "DecompressionBombError")),
    Row("load-image-wrong-extension", load_image_wrong_extension),
    # -- memory
    Row("huge-image-oom-tiles-retried", oom_tiles_retried),
    Row("huge-image-oom-at-every-size", lambda e: (oom_above(e, 64 * 64), e.run(stage1_graph(size=(64, 64),
                                                                                            upscale=4.0))),
        r"stage1 ran out of memory at every tile size tried \(untiled, 192 px, 128 px; smallest 128 px\): .*Free "
        r"memory"),
]


def _user_message_and_origin(exc: BaseException, host) -> tuple[str, str | None]:
    """The message ComfyUI shows for `exc` and the file of the frame that raised it (None: ComfyUI's validation)."""
    if isinstance(exc, ch.PromptValidationError):
        return str(exc), None
    if isinstance(exc, ch.PromptExecutionError):
        data = next(d for ev, d in host.executor.status_messages if ev == "execution_error")
        return data["exception_message"], data["traceback"][-1].split('"')[1]
    return str(exc), traceback.extract_tb(exc.__traceback__)[-1].filename


@pytest.mark.parametrize("row", MATRIX, ids=[r.id for r in MATRIX])
def test_bad_input(env, row, monkeypatch, caplog):
    env.monkeypatch, env.caplog = monkeypatch, caplog
    if row.expect is None:
        seen = row.call(env)
        assert isinstance(seen, str) and seen, "a graceful row returns the documented behaviour"
    else:
        with pytest.raises(CLEAR_ERRORS) as err:
            row.call(env)
        seen, origin = _user_message_and_origin(err.value, env.host)
        assert re.search(row.expect, seen, re.DOTALL), seen
        assert isinstance(err.value, ch.PromptValidationError) == row.before_run, seen
        if origin is not None:  # raised by our code, not deep inside torch or ComfyUI
            assert Path(origin).resolve().is_relative_to(REPO), f"raised in {origin}: {seen}"
    print(f"\n[{row.id}] {seen.splitlines()[-1] if row.before_run else seen}")


def test_matrix_is_large_enough():
    assert len(MATRIX) >= 30 and len({r.id for r in MATRIX}) == len(MATRIX)


# ------------------------------------------------------------------------------------------------ hostile files


class _CreatesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_calling(module: str, name: str, arg: str) -> bytes:
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()  # protocol 0: GLOBAL module.name, called with one string


def _zip_pt(path: Path, pickle_bytes: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")


def _safetensors(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _truncated_pt(path: Path, marker) -> None:
    torch.save({"input_blocks.0.0.weight": torch.randn(64, 8, 3, 3)}, path)
    path.write_bytes(path.read_bytes()[:700])


def _truncated_safetensors(path: Path, marker) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])


REFUSED = r"Refused to load '{name}': it is a pickle that needs arbitrary Python objects .* DiffBIR never does"
NOT_SAFETENSORS = r"'{name}' is not a valid safetensors file .* truncated or damaged: download it again"
HOSTILE = {  # file name -> (writer(path, marker), expected message)
    "hostile_os_system.ckpt": (lambda p, m: p.write_bytes(_pickle_calling("os", "system", f"touch {m}")), REFUSED),
    "hostile_unusual_global.pth": (lambda p, m: p.write_bytes(_pickle_calling("pathlib", "Path.touch", str(m))),
                                   REFUSED),
    "hostile_builtins_exec.pth": (lambda p, m: p.write_bytes(
        _pickle_calling("builtins", "exec", f"open({str(m)!r}, 'w')")), REFUSED),
    "hostile_zip_format.pt": (lambda p, m: _zip_pt(p, _pickle_calling("os", "system", f"touch {m}")), REFUSED),
    "hostile_reduce_object.ckpt": (lambda p, m: torch.save({"x": _CreatesMarker(str(m))}, p), REFUSED),
    "hostile_offsets_beyond_file.safetensors": (lambda p, m: _safetensors(
        p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), NOT_SAFETENSORS),
    "hostile_shape_does_not_fit.safetensors": (lambda p, m: _safetensors(
        p, {"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, b"\0" * 16), NOT_SAFETENSORS),
    "hostile_huge_header.safetensors": (lambda p, m: p.write_bytes(struct.pack("<Q", 2**60) + b"{}"),
                                        NOT_SAFETENSORS),
    "hostile_truncated.pth": (_truncated_pt, r"'{name}' could not be read as a PyTorch checkpoint .* truncated"),
    "hostile_truncated.safetensors": (_truncated_safetensors, NOT_SAFETENSORS),
}


@pytest.mark.parametrize("slot", ["controlnet_name", "stage1_name"])
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_checkpoint_through_the_host(env, name, slot, tmp_path):
    marker = tmp_path / "marker"
    path = env.models / "diffbir" / name
    write, expected = HOSTILE[name]
    write(path, marker)
    try:
        with pytest.raises(ch.PromptExecutionError) as err:
            env.run(loader_graph(**{slot.removesuffix("_name"): name}))
        message, origin = _user_message_and_origin(err.value, env.host)
        assert re.search(expected.format(name=re.escape(name)), message, re.DOTALL), message
        assert Path(origin).resolve().is_relative_to(REPO)
        assert not marker.exists()
    finally:
        path.unlink()
    # The host keeps running: the next normal prompt loads the real files.
    outputs = env.run(loader_graph(stage1=S1, controlnet=CN))
    assert "stage 1: bad_inputs_swinir.safetensors" in outputs["Linfo"]["text"][0]
    assert not marker.exists()
    if slot == "controlnet_name":
        print(f"\n[{name}] {message.splitlines()[0][:160]}")
