"""The small SD 2.1 shape-alike loads through the host's stock checkpoint loader and samples."""

import torch

from tiny_models import TINY_SD21_NAME, tiny_sd21_checkpoint


def test_stock_loader_and_ksampler_run_the_tiny_sd21(comfy_host, comfy_models_dir):
    assert tiny_sd21_checkpoint(comfy_models_dir) == TINY_SD21_NAME
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd21.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
              "latent_image": ["4", 0], "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "tiny"}},
    }
    outputs = comfy_host.run(prompt)
    assert outputs["7"]["images"]

    import comfy.sd
    import folder_paths

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", "tiny_sd21.safetensors"))
    assert type(model.model.model_config).__name__ == "TinySD21"
    assert model.model.model_type.name == "EPS"
    cond = clip.encode_from_tokens(clip.tokenize("a photo"))
    assert cond.shape == (1, 77, 32) and torch.isfinite(cond).all()
