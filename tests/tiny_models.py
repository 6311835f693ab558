"""Small random-weight models that the real ComfyUI host loads through its stock loaders.

The full SD 2.1 costs seconds per step on two CPU cores, so most host tests use an SD 2.1
*shape-alike*: the UNet of the official golden config (model_channels 32, context 32,
16-channel heads; weights `unet.*` of tests/golden/cldm_weights.safetensors), a tiny
OpenCLIP-H-layout text tower (width 32) and a full-size SD VAE with random weights.

ComfyUI recognises a checkpoint by matching its UNet against `comfy.supported_models`;
no stock entry has 32 channels, so `register_tiny_sd21()` adds one entry, `TinySD21`, a
subclass of the stock SD20 entry that differs only in those sizes and its text-encoder
width. Everything else (loaders, model patcher, samplers, VAE, CLIP code) is the host's
own. The VAE stays full size because the stock checkpoint loader builds SD VAEs with the
standard config; at the 64x64 test images it costs well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffbir_core.arch import clip_text, vae as vae_arch

GOLDEN = Path(__file__).parent / "golden"
TINY_CLIP = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3, "embed_dim": 32}
TINY_HEAD_CHANNELS = 16


def golden_cldm_weights(prefix: str) -> dict[str, torch.Tensor]:
    sd = load_file(str(GOLDEN / "cldm_weights.safetensors"))
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def golden_config(key: str) -> dict:
    return json.loads((GOLDEN / "cldm_weights.json").read_text())[key]


# --------------------------------------------------------------------------------------
# host-side registration (call after the host has booted)

_registered = False


def register_tiny_sd21() -> None:
    global _registered
    if _registered:
        return
    import comfy.sd1_clip as sd1_clip
    import comfy.supported_models as supported_models
    import comfy.supported_models_base as supported_models_base
    import comfy.text_encoders.sd2_clip as sd2_clip

    text_config = {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 49407, "hidden_act": "gelu", "hidden_size": TINY_CLIP["width"],
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4 * TINY_CLIP["width"],
        "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": TINY_CLIP["heads"], "num_hidden_layers": TINY_CLIP["layers"], "pad_token_id": 1,
        "projection_dim": TINY_CLIP["embed_dim"], "torch_dtype": "float32", "vocab_size": 49408,
    }

    class TinyClipH(sd1_clip.SDClipModel):
        # SD 2.x reads the penultimate layer, exactly as the stock SD2ClipHModel does.
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, freeze=True, layer="hidden", layer_idx=-2,
                             textmodel_json_config=dict(text_config), dtype=dtype,
                             special_tokens={"start": 49406, "end": 49407, "pad": 0},
                             return_projected_pooled=True, model_options=model_options)

    class TinySD2ClipModel(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_name="h",
                             clip_model=TinyClipH, **kwargs)

    class TinySD21(supported_models.SD20):
        unet_config = {**supported_models.SD20.unet_config, "context_dim": 32, "model_channels": 32}
        unet_extra_config = {**supported_models.SD20.unet_extra_config, "num_head_channels": TINY_HEAD_CHANNELS}

        def clip_target(self, state_dict={}):
            return supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, TinySD2ClipModel)

    supported_models.models.insert(0, TinySD21)
    _registered = True


# --------------------------------------------------------------------------------------
# files


def _random_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights N(0, 1/fan_in) so activations stay O(1) through the deep random network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
    return module


def tiny_sd21_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """An LDM-layout SD 2.1 shape-alike checkpoint (model.diffusion_model., first_stage_model., cond_stage_model.)."""
    sd: dict[str, torch.Tensor] = {}
    unet = golden_cldm_weights("unet.")
    # ComfyUI calls an SD2 checkpoint v-prediction when this bias varies a lot; pin it to
    # zero so the tiny model is an eps model, like SD 2.1-base.
    unet["output_blocks.11.1.transformer_blocks.0.norm1.bias"] = torch.zeros_like(
        unet["output_blocks.11.1.transformer_blocks.0.norm1.bias"]
    )
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet.items()})
    # Built under a fixed seed too: biases and norms keep their default init, which draws
    # from the global generator; without this the file would differ between processes.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = _random_init(vae_arch.build(), seed)
    sd.update({f"first_stage_model.{k}": v.detach().clone() for k, v in vae.state_dict().items()})
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        clip = _random_init(clip_text.build(TINY_CLIP), seed + 1)
    sd.update({f"cond_stage_model.{k}": v.detach().clone() for k, v in clip.state_dict().items()})
    return sd


def write_tiny_sd21(path: Path, seed: int = 0) -> Path:
    save_file({k: v.contiguous() for k, v in tiny_sd21_state_dict(seed).items()}, str(path))
    return path


TINY_SD21_NAME = "tiny_sd21.safetensors"
TINY_UNET_NAME = "tiny_sd21_unet.safetensors"  # its UNet alone, for the stock UNETLoader (models/diffusion_models)
# The golden small ControlNet fits the tiny SD 2.1's UNet; conftest.model_files writes one file per version.
TINY_CONTROLNETS = {"v2.1": "tiny_controlnet_v2.1.safetensors", "v2": "tiny_controlnet_v2.safetensors"}


def tiny_sd21_checkpoint(models_dir: Path, name: str = TINY_SD21_NAME) -> str:
    """Register the tiny SD 2.1 in the host and write it to models_dir/checkpoints once per session.

    The file is deterministic (seed 0), so whichever test writes it first, every test sees the same weights.
    Returns the name to give CheckpointLoaderSimple.
    """
    register_tiny_sd21()
    path = Path(models_dir) / "checkpoints" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        write_tiny_sd21(tmp)
        tmp.replace(path)  # never a half-written file under the listed name
    return name


def tiny_sd21_unet(models_dir: Path, name: str = TINY_UNET_NAME) -> str:
    """The tiny SD 2.1's UNet alone (the same weights) in models_dir/diffusion_models, written once per session, as
    the stock Load Diffusion Model (UNETLoader) reads it; returns its name."""
    register_tiny_sd21()
    path = Path(models_dir) / "diffusion_models" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = "model.diffusion_model."
        unet = {k[len(prefix):]: v.contiguous() for k, v in tiny_sd21_state_dict().items() if k.startswith(prefix)}
        tmp = path.with_name(path.name + ".partial")
        save_file(unet, str(tmp))
        tmp.replace(path)
    return name


def write_tiny_controlnet(path: Path, version: str = "v2.1") -> Path:
    """The golden small ControlNet as a DiffBIR ControlNet file, with the head size recorded."""
    meta = {"diffbir_kind": "controlnet", "diffbir_version": version,
            "diffbir_config": json.dumps({"num_head_channels": TINY_HEAD_CHANNELS})}
    save_file(golden_cldm_weights("controlnet."), str(path), metadata=meta)
    return path


def write_tiny_stage1(path: Path, kind: str) -> Path:
    """The golden small stage-1 network of `kind` (swinir, bsrnet, scunet) as a safetensors file."""
    t = load_file(str(GOLDEN / f"{kind}.safetensors"))
    config = json.loads((GOLDEN / f"{kind}.json").read_text())["config"]
    save_file({k[2:]: v for k, v in t.items() if k.startswith("w.")}, str(path),
              metadata={"diffbir_kind": kind, "diffbir_config": json.dumps(config)})
    return path


def tiny_retinaface_state_dict(backbone: str = "mobilenet0.25", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight RetinaFace in the official key layout: the official MobileNet-0.25 size (0.4 M parameters),
    or for "resnet50" a ResNet-50-layout network one block per stage and width 8 (the official one is 27 M)."""
    from diffbir_core.arch import retinaface

    config = {"backbone": backbone}
    if backbone == retinaface.RESNET50:
        config.update(resnet_layers=(1, 1, 1, 1), width=8, out_channel=32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = _random_init(retinaface.build(config), seed)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def write_tiny_retinaface(path: Path, backbone: str = "mobilenet0.25", seed: int = 0) -> Path:
    """The tiny RetinaFace as a .safetensors file, or for any other suffix as the official files are: a plain
    pickled state dict."""
    sd = tiny_retinaface_state_dict(backbone, seed)
    if Path(path).suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, str(path))
    return path


# --------------------------------------------------------------------------------------
# a face-detector double: random detector weights cannot decide where faces are


def one_face(net, image, *args, **kwargs):
    """Stands in for `diffbir_core.face.detection.detect_faces`: one face (eyes 15 pixels apart) near the top left
    of whatever photo it gets; `net` must be the loaded detector (the real file is still read and built)."""
    from diffbir_core.face.align import face_template
    from diffbir_core.face.detection import Detections

    assert isinstance(net, torch.nn.Module)
    lm = (face_template(512) * 0.12 + torch.tensor([20.0, 10.0], dtype=torch.float64)).float()[None]
    return Detections(torch.tensor([[20.0, 10.0, 81.0, 71.0]]), torch.tensor([0.99]), lm)


def face_node_module():
    """The extension's nodes/face.py module as the host loaded it (to put `one_face` in with monkeypatch)."""
    import sys

    for name, module in list(sys.modules.items()):
        if name.endswith("nodes.face") and hasattr(module, "DiffBIRFaceDetectAlign"):
            return module
    raise LookupError("the DiffBIR face nodes are not loaded")
