"""Restoration guidance inside ComfyUI: the core's RestorationGuidance over the host's VAE (and the stage-1 image
and posterior encode that v2.0.0's better start shares with it).

Two host facts shape this file: the VAE is ComfyUI's (loaded next to the models already in use, so the UNet
stays loaded), and ComfyUI runs prompts in torch.inference_mode, whose tensors cannot be back-propagated
through, so the gradient steps leave inference mode and rgb-space guidance decodes with a grad-capable copy
of the decoder made once per run.
"""

from __future__ import annotations

import copy

import comfy.model_management
import torch

from diffbir_core.arch.vae import DiagonalGaussianDistribution, vae_encode
from diffbir_core.padding import pad_to_size
from diffbir_core.sampling.guidance import RestorationGuidance


class HostVAE:
    """encode (posterior of an image in [-1, 1]) / decode (latent -> image in [-1, 1]) over a ComfyUI VAE."""

    def __init__(self, vae):
        model = getattr(vae, "first_stage_model", None)
        if model is None or getattr(model, "regularization", None) is None or getattr(vae, "latent_channels", 4) != 4:
            raise ValueError("DiffBIR Sampler: restoration guidance needs the SD 2.1 VAE (a 4-channel KL VAE) at "
                             "the 'vae' input.")
        self.vae = vae
        self.model = model
        self._decoder = None

    def _load(self):
        loaded = comfy.model_management.loaded_models(only_currently_used=True)
        comfy.model_management.load_models_gpu([self.vae.patcher] + [m for m in loaded if m is not self.vae.patcher])

    def _input(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.vae.device, dtype=self.vae.vae_dtype)

    def encode(self, image: torch.Tensor) -> DiagonalGaussianDistribution:
        self._load()
        captured = {}

        def keep_moments(module, args, output):
            captured["z"] = args[0]  # the regulariser's input: the posterior moments (mean, logvar)

        hook = self.model.regularization.register_forward_hook(keep_moments)
        try:
            with torch.no_grad():
                self.model.encode(self._input(image))
        finally:
            hook.remove()
        return DiagonalGaussianDistribution(captured["z"].float().to(image.device))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._load()
        model = self.model
        if torch.is_grad_enabled() and any(p.is_inference() for p in model.parameters()):
            if self._decoder is None:
                keep = {id(model.encoder): model.encoder}  # the copy shares the (unused) encoder
                self._decoder = copy.deepcopy(model, memo=keep)
            model = self._decoder
        return model.decode(self._input(z)).float().to(z.device)


class GuidanceOutsideInferenceMode(RestorationGuidance):
    """RestorationGuidance whose gradient steps run outside ComfyUI's inference mode."""

    def __call__(self, x0, model_t, c1, noise):
        if not self.active(model_t):
            return x0
        with torch.inference_mode(False), torch.enable_grad():
            return super().__call__(x0.clone(), model_t, torch.as_tensor(c1).clone(), noise)


def stage1_pixels(image: torch.Tensor | None, b: int, h: int, w: int, use: str) -> torch.Tensor:
    """The stage-1 IMAGE (NHWC) as the (b, 3, 8h, 8w) image in [0, 1] that a (b, 4, h, w) latent decodes to:
    zero-padded (or cropped) to 8 x the latent size, as the official code pads it; `use` names what needs it."""
    if image is None:
        raise ValueError(f"DiffBIR Sampler: {use} needs the stage-1 image, but the ControlNet carries only its "
                         "latent: attach it with 'LAControlNet Apply'.")
    pixels = pad_to_size(image[..., :3].movedim(-1, 1).float(), h * 8, w * 8)
    if pixels.shape[0] == 1 and b > 1:
        pixels = pixels.expand(b, -1, -1, -1)
    return pixels


def posterior_encode(vae):
    """`encode(image, sample, noise)` -> scaled latent through the host's VAE, the core's formula
    (``diffbir_core.arch.vae.vae_encode``: the posterior mode, or a sample drawing one `noise.randn_like`)."""
    host_vae = HostVAE(vae)

    def encode(image: torch.Tensor, sample: bool = False, noise=None) -> torch.Tensor:
        return vae_encode(host_vae, image, sample=sample, noise=noise)

    return encode


def restoration_guidance(image: torch.Tensor | None, vae, b: int, h: int, w: int, loss: str, space: str,
                         scale: float, t_start: int, t_stop: int, repeat: int,
                         style: str) -> GuidanceOutsideInferenceMode:
    """The guidance of a run sampling a (b, 4, h, w) latent towards `image` (the stage-1 IMAGE, NHWC)."""
    # the target is the image the latent decodes to
    target = stage1_pixels(image, b, h, w, "restoration guidance")
    guide = GuidanceOutsideInferenceMode.official(
        HostVAE(vae), None, "v1" if style == "v1" else "v2", float(scale), loss=loss, space=space,
        t_start=int(t_start), t_stop=int(t_stop), repeat=int(repeat))
    guide.set_target(target.clone())
    return guide
