"""DiffBIR Sampler: the fourteen official samplers on their official grids, run by ComfyUI's own machinery.

How the node drives ComfyUI (one sampling run, exactly as the stock sampler nodes do):

* A stock ``comfy.samplers.CFGGuider`` holds the MODEL and the positive/negative conditioning (which carry our
  DiffBIRControl from LAControlNet Apply). Its ``sample()`` prepares the run the ComfyUI way:
  ``comfy.sampler_helpers.prepare_sampling`` loads the MODEL and the ControlNet (``get_models``) with
  ``load_models_gpu`` and the memory estimate of the latent, processes the conds (the control's ``pre_run``),
  applies the MODEL's patches, wrappers and hooks, and cleans up afterwards.
* The guider runs ``_OfficialRun`` (a ``comfy.samplers.Sampler``), which calls the official sampler function of
  ``diffbir_core.sampling`` (own timestep grid, coefficient tables and random draws). That function asks for the
  model output (eps or v) of the noisy VP latent x at a model timestep t; ``HostModelFunction`` answers by calling
  the guider at the MODEL's sigma of t: ComfyUI's ``sampling_function`` -> ``calc_cond_batch`` (cond and uncond
  batched, ``DiffBIRControl.get_control`` computing the 13 controls, ``BaseModel.apply_model`` with the controls
  added to the UNet) -> CFG on the denoised estimate D. The node converts back with the same sigma s:
  ``eps = (x sqrt(1+s^2) - D) / s``, ``v = (eps - s D) / sqrt(1+s^2)``. The UNet sees exactly x and t (the host's
  ``calculate_input`` undoes the scaling, its ``timestep(s)`` gives t back), CFG on D equals the official CFG on
  eps/v (the map is affine), and for the zero-terminal-SNR v2.1 MODEL ComfyUI keeps s(999) finite (~4.5e3), so
  the conversion is defined where eps is not; the official sampler then applies its own tables (alpha(999) = 0:
  x0 = -v). Fractional timesteps (dpm++_m2's grid) reach the UNet and the ControlNet unrounded through a
  transformer_options key (``control.MODEL_TIMESTEP_KEY``) and a DIFFUSION_MODEL wrapper.
* ``latent_preview.prepare_callback`` gives previews and the progress bar; every model call and every step
  checks ``comfy.model_management.throw_exception_if_processing_interrupted()`` (Cancel).
* Noise: one seeded CPU generator (``diffbir_core.sampling.noise.GeneratorNoise``) for every draw, in the
  official order (x_T, the noise_aug draw, the sampler's draws), so a seed gives the same image on any device.
* Tiled diffusion: every model call is split into latent tiles; each tile is one guider call whose
  transformer_options carry the tile window (``control.TILE_KEY``), so the control crops its condition latent to
  the tile; outputs are blended with the official gaussian weights.
* rescale_cfg: the guider's cfg is set per call to the official ``s(t)``.

The same solvers are also registered as ComfyUI KSAMPLERs named ``diffbir_<name>`` (``++`` -> ``pp``) for the
stock KSamplerSelect / SamplerCustom / KSampler and returned by the "DiffBIR Sampler Select" node. As KSAMPLERs
they get ComfyUI's sigmas: the solver maths and the noise order (the sampler's draws continue the seeded CPU
stream after the stock initial noise, as officially one stream) are the official ones; the EDM solvers run on
the host's sigmas instead of the official EDM grid, and spaced / ddim / dpm++_m2 run their own official grid for
len(sigmas) - 1 steps (only the step count is taken from the sigmas; they refuse to start part-way, e.g.
denoise < 1). The official grids come from the DiffBIR Sampler node.

Differences from the official pipeline, by design:
* the sampled latent is the condition image's size / 8 rounded up (or the connected latent's size), not the
  whole 64-padded latent that the official code samples and crops after decoding;
* tile_size may be any multiple of 8 pixels (the official code asserts multiples of 64), and with tiles the
  condition latent is the one LAControlNet Apply encoded from the 64-padded image (the official tiled path pads
  to 8 before encoding, which changes the latent slightly through the VAE's attention);
* restoration guidance works with every sampler and version (see diffbir_core.sampling.guidance).
"""

from __future__ import annotations

import copy
import logging
import math

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview
import numpy as np
import torch
import torch.nn.functional as F

from ..diffbir_core.sampling.denoiser import rescaled_cfg
from ..diffbir_core.sampling.dpm_solver import ORDER as DPM_ORDER
from ..diffbir_core.sampling.dpm_solver import DiscreteVPSchedule
from ..diffbir_core.sampling.guidance import LOSSES, SPACES, RestorationGuidance
from ..diffbir_core.sampling.k_solvers import SOLVERS
from ..diffbir_core.sampling.ksampler import ksampler_function
from ..diffbir_core.sampling.noise import GeneratorNoise, NoiseSource
from ..diffbir_core.sampling.options import OFFICIAL_DEFAULTS
from ..diffbir_core.sampling.pipeline import q_sample
from ..diffbir_core.sampling.registry import (
    DDPM_FAMILY,
    EDM_FAMILY,
    SAMPLER_NAMES,
    get_sampler,
)
from ..diffbir_core.schedule import (
    DiffusionSchedule,
    ddim_timesteps,
    edm_timesteps,
    space_timesteps,
)
from ..diffbir_core.tiling import gaussian_weights, sliding_windows
from .control import MODEL_TIMESTEP_KEY, TILE_KEY, DiffBIRControl
from .lacontrolnet import model_sampling_kind

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "edm_dpm++_3m_sde"  # official v2.1 CLI: edm_dpm++_3m_sde, 10 steps, cfg 6
START_POINTS = ("noise", "cond")
GUIDANCE_LOSSES = ("none",) + LOSSES
GUIDANCE_STYLES = ("v2", "v1")
MAX_NOISE_AUG = 199  # the v2.1 training range of the condition's noise augmentation
_EXACT_T_WRAPPER = "diffbir_exact_timestep"


def ksampler_name(official: str) -> str:
    """The ComfyUI sampler name of an official sampler: edm_dpm++_3m_sde -> diffbir_edm_dpmpp_3m_sde."""
    return "diffbir_" + official.replace("++", "pp")


KSAMPLER_NAMES = {ksampler_name(name): name for name in SAMPLER_NAMES}


def noise_source(seed: int) -> NoiseSource:
    """The one noise stream of a DiffBIR Sampler run.

    Testing seam: the tests replace this module function to replay recorded draws (golden parity); nothing else
    should. A seeded CPU generator: same seed, same image on any device.
    """
    return GeneratorNoise(seed)


# ----------------------------------------------------------------------------------------- schedule and grids


def diffusion_for_sampling(model_sampling, prediction: str, zsnr: bool) -> DiffusionSchedule:
    """The official training schedule matching a MODEL's discrete sampling, as DiffBIR's samplers use it.

    SD 2.1 MODELs (ComfyUI's scaled-linear "linear" schedule) get the official float64 schedule (for v2.1 the
    zero-terminal-SNR one with alphas_cumprod(999) = 0 exactly, where ComfyUI keeps 4.9e-8); any other discrete
    schedule is taken from the MODEL's own sigma table.
    """
    host = model_sampling.sigmas.detach().double().cpu().numpy()
    n = int(getattr(model_sampling, "num_timesteps", len(host)))
    start, end = getattr(model_sampling, "linear_start", None), getattr(model_sampling, "linear_end", None)
    if start is not None and end is not None and n == len(host):
        diffusion = DiffusionSchedule.from_config({"timesteps": n, "linear_start": start, "linear_end": end,
                                                  "zero_snr": zsnr, "parameterization": prediction})
        ac = diffusion.alphas_cumprod
        with np.errstate(divide="ignore"):
            ours = np.sqrt((1.0 - ac) / ac)
        k = n - 1 if zsnr else n
        if np.allclose(ours[:k], host[:k], rtol=1e-4, atol=0.0):
            return diffusion
    ac = 1.0 / (1.0 + host**2)
    prev = np.concatenate([[1.0], ac[:-1]])
    return DiffusionSchedule(betas=1.0 - ac / prev, parameterization=prediction)


def model_diffusion(model) -> DiffusionSchedule:
    """The schedule of a MODEL (ModelPatcher); refuses MODELs that are not discrete eps / v SD models."""
    prediction, zsnr = model_sampling_kind(model)
    if prediction not in ("eps", "v"):
        raise ValueError(
            "DiffBIR Sampler: the MODEL does not sample as a discrete eps- or v-prediction SD model (DiffBIR needs "
            "SD 2.1). Connect the SD 2.1 MODEL (for v2.1 the MODEL output of LAControlNet Apply) without other "
            "ModelSampling patches.")
    return diffusion_for_sampling(model.get_model_object("model_sampling"), prediction, zsnr)


def grid_timesteps(name: str, diffusion: DiffusionSchedule, steps: int) -> list[float]:
    """The model timesteps of the official grid of sampler `name`, one per step, first (noisiest) first."""
    n = len(diffusion.betas)
    steps = int(steps)
    if name == "spaced":
        return [float(t) for t in sorted(space_timesteps(n, steps), reverse=True)]
    if name == "ddim":
        ts = ddim_timesteps(steps, n)
        if ts.max() >= n:
            raise ValueError(
                f"DiffBIR Sampler: ddim with {steps} steps: the official grid (stride {n // steps}, +1) reaches t = {n}, "
                "outside the schedule (the official code fails there); choose another step count (e.g. 10, 20, 50).")
        return [float(t) for t in ts[::-1]]
    if name == "dpm++_m2":
        if steps < DPM_ORDER:
            raise ValueError(f"DiffBIR Sampler: dpm++_m2 needs at least {DPM_ORDER} steps (got {steps}).")
        ns = DiscreteVPSchedule(diffusion.betas)
        return [float(t) for t in ns.model_time(ns.time_steps(steps))[:steps]]
    if name in EDM_FAMILY:
        return [float(t) for t in edm_timesteps(steps, n)[:-1]]
    raise ValueError(f"DiffBIR Sampler: unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}.")


def host_sigma(model_sampling, t: float) -> torch.Tensor:
    """The MODEL's sigma at model timestep t (its table at integers, its log-sigma interpolation between)."""
    if float(t).is_integer():
        return model_sampling.sigmas[int(t)].detach().float().reshape(())
    return model_sampling.sigma(torch.tensor([float(t)], dtype=torch.float32)).float().reshape(())


# ----------------------------------------------------------------------------------------- the model function


def _exact_timestep(executor, x, timesteps, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: the UNet gets the DiffBIR Sampler's exact timestep (host sigmas round it)."""
    options = args[3] if len(args) > 3 else kwargs.get("transformer_options")
    exact = (options or {}).get(MODEL_TIMESTEP_KEY)
    if exact is not None and torch.is_tensor(timesteps):
        timesteps = torch.full_like(timesteps, float(exact))
    return executor(x, timesteps, *args, **kwargs)


class HostModelFunction:
    """``denoise_fn(x, t) -> eps or v`` for the diffbir_core samplers, computed by ComfyUI's guided model.

    x is the VP latent at model timestep t (a (batch,) tensor); the result is the CFG-combined model output in
    `parameterization` (see the module doc for the conversion). With `tiles = (tile, stride)` in latent pixels each
    call is split into tiles, the condition latent cropped per tile by the control, outputs gaussian-blended.
    """

    def __init__(self, guider, model_sampling, parameterization: str, *, cfg: float, rescale_cfg: bool,
                 rescale_any_cfg: bool, tiles, model_options: dict, seed):
        self.guider = guider
        self.model_sampling = model_sampling
        self.parameterization = parameterization
        self.cfg = float(cfg)
        self.rescale_cfg = bool(rescale_cfg)
        self.rescale_any_cfg = rescale_any_cfg
        self.tiles = tiles
        self.model_options = model_options
        self.seed = seed

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        t_value = float(t.reshape(-1)[0])
        scale = rescaled_cfg(self.cfg, t if t.is_floating_point() else int(t_value), self.rescale_cfg,
                             self.rescale_any_cfg)
        self.guider.set_cfg(float(scale))
        sigma = host_sigma(self.model_sampling, t_value).to(x.device)
        if self.tiles is None:
            return self._call(x, sigma, t_value, None)
        tile, stride = self.tiles
        out = torch.zeros_like(x)
        count = torch.zeros_like(x, dtype=torch.float32)
        for y0, y1, x0, x1 in sliding_windows(x.shape[-2], x.shape[-1], tile, stride):
            weights = torch.tensor(gaussian_weights(x1 - x0, y1 - y0), dtype=x.dtype, device=x.device)
            out[..., y0:y1, x0:x1] += self._call(x[..., y0:y1, x0:x1], sigma, t_value, (y0, y1, x0, x1)) * weights
            count[..., y0:y1, x0:x1] += weights
        return out / count

    def _call(self, x, sigma, t_value, window):
        comfy.model_management.throw_exception_if_processing_interrupted()
        options = dict(self.model_options)
        transformer_options = dict(options.get("transformer_options", {}))
        transformer_options[MODEL_TIMESTEP_KEY] = t_value
        if window is not None:
            transformer_options[TILE_KEY] = window
        options["transformer_options"] = transformer_options
        c = torch.sqrt(1.0 + sigma**2)
        x_host = x * c
        denoised = self.guider(x_host, sigma.expand(x.shape[0]), model_options=options, seed=self.seed).float()
        eps = (x_host - denoised) / sigma
        if self.parameterization == "eps":
            return eps
        return (eps - sigma * denoised) / c


class _OfficialRun(comfy.samplers.Sampler):
    """The Sampler CFGGuider.sample() runs: hands the guider to the official sampler (see module doc)."""

    def __init__(self, run):
        self.run = run

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        return self.run(model_wrap, extra_args, callback, noise)


# ----------------------------------------------------------------------------------------- guidance


class _Posterior:
    """The VAE posterior N(mean, exp(logvar)) as the guidance reads it (`mean`, `sample(noise)`)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise.to(self.mean)


class HostVAE:
    """encode (posterior of an image in [-1, 1]) / decode (latent -> image in [-1, 1]) over a ComfyUI VAE.

    The VAE is loaded next to the models already in use (the UNet stays loaded). ComfyUI runs prompts in
    torch.inference_mode, whose weights cannot be back-propagated through: rgb-space guidance decodes with a
    grad-capable copy of the decoder made once per run.
    """

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

    def encode(self, image: torch.Tensor) -> _Posterior:
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
        return _Posterior(captured["z"].float().to(image.device))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._load()
        model = self.model
        if torch.is_grad_enabled() and any(p.is_inference() for p in model.parameters()):
            if self._decoder is None:
                keep = {id(model.encoder): model.encoder}  # the copy shares the (unused) encoder
                self._decoder = copy.deepcopy(model, memo=keep)
            model = self._decoder
        return model.decode(self._input(z)).float().to(z.device)


class _GuidanceOutsideInferenceMode(RestorationGuidance):
    """RestorationGuidance whose gradient steps run outside ComfyUI's inference mode."""

    def __call__(self, x0, model_t, c1, noise):
        if not self.active(model_t):
            return x0
        with torch.inference_mode(False), torch.enable_grad():
            return super().__call__(x0.clone(), model_t, torch.as_tensor(c1).clone(), noise)


# ----------------------------------------------------------------------------------------- conditioning


def _controls(control):
    while control is not None:
        yield control
        control = getattr(control, "previous_controlnet", None)


def find_control(conditioning) -> DiffBIRControl | None:
    for _, options in conditioning or []:
        for control in _controls(options.get("control")):
            if isinstance(control, DiffBIRControl):
                return control
    return None


def _replace_condition(conditionings, latent: torch.Tensor):
    """Copies of the conditionings whose DiffBIR controls carry `latent` (shared objects stay shared)."""
    memo = {}

    def rebuild(control):
        if control is None:
            return None
        if id(control) in memo:
            return memo[id(control)]
        prev = rebuild(control.previous_controlnet)
        if isinstance(control, DiffBIRControl):
            new = control.copy().set_condition(latent, control.condition()[1], control.strength,
                                               control.timestep_percent_range, control.condition_pixels())
        elif prev is not control.previous_controlnet:
            new = control.copy()
        else:
            new = control
        if new is not control:
            new.set_previous_controlnet(prev)
        memo[id(control)] = new
        return new

    out = []
    for conditioning in conditionings:
        items = []
        for tensor, options in conditioning:
            options = options.copy()
            if "control" in options:
                options["control"] = rebuild(options["control"])
            items.append([tensor, options])
        out.append(items)
    return out


def _fits(latent_px: int, image_px: int) -> bool:
    return latent_px in (image_px // 8, math.ceil(image_px / 8))


# ----------------------------------------------------------------------------------------- the node

_TIP_SAMPLER = (
    "The official DiffBIR sampler, on its own official timestep grid. v2.1 default: edm_dpm++_3m_sde (10 steps, "
    "cfg 6). Paper (v2) recipe: spaced (50 steps, cfg 4). spaced/ddim/dpm++_m2 are the DDPM-family samplers; "
    "edm_* are the k-diffusion solvers on DiffBIR's EDM grid.")


class DiffBIRSampler:
    DESCRIPTION = (
        "Stage 2 of DiffBIR with the official samplers: the 14 samplers of the official code on their own "
        "timestep grids, with DiffBIR's start point, condition noise augmentation, rescaled CFG, tiled diffusion "
        "and restoration guidance. Connect the MODEL and the positive/negative outputs of LAControlNet Apply (for "
        "v2.1 its MODEL output). Runs through ComfyUI's sampling machinery (memory management, previews, "
        "progress, Cancel). Outputs the latent for VAE Decode; one seed gives the same result on any device.")
    CATEGORY = "DiffBIR"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The restored latent (the condition image's size / 8); decode it with the SD 2.1 VAE "
                       "(DiffBIR VAE Decode (Tiled) keeps large images within memory).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD 2.1 MODEL: for a v2.1 ControlNet the MODEL output of "
                                               "LAControlNet Apply (v-prediction + zero-terminal SNR), for v1/v2 "
                                               "the plain SD 2.1-base."}),
                "positive": ("CONDITIONING", {"tooltip": "The positive output of LAControlNet Apply (it carries the "
                                                         "DiffBIR ControlNet and the condition latent)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative output of LAControlNet Apply (same "
                                                         "ControlNet and condition, negative prompt)."}),
                "seed": ("INT", {"default": 231, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the one CPU noise stream (start noise, noise_aug, sampler "
                                            "noise): the same seed gives the same image on any device. Official "
                                            "default 231."}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 1000,
                                  "tooltip": "Sampling steps. Official v2.1 default 10 (edm_dpm++_3m_sde); the "
                                             "paper's v2 recipe uses 50 with spaced."}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale. Official v2.1 default 6 (README and "
                                             "gradio 8); the paper's v2 recipe uses 4. 1 skips the negative."}),
                "sampler_name": (list(SAMPLER_NAMES), {"default": DEFAULT_SAMPLER, "tooltip": _TIP_SAMPLER}),
                "rescale_cfg": ("BOOLEAN", {"default": False,
                                            "tooltip": "Official --rescale_cfg: the guidance scale ramps from 1 at "
                                                       "the noisiest step to 1 + cfg at the end (only when cfg > 1)."}),
                "start_point": (list(START_POINTS), {"default": "noise",
                                                     "tooltip": "noise: start from pure noise (official default). "
                                                                "cond: start from the condition latent diffused to "
                                                                "t = 999 (v1/v2 'better start'; identical to noise "
                                                                "for v2.1's zero-terminal-SNR model)."}),
                "noise_aug": ("INT", {"default": 0, "min": 0, "max": MAX_NOISE_AUG,
                                      "tooltip": "Official --noise_aug: diffuse the condition latent to this timestep "
                                                 "before sampling (0 = off, official default; v2.1 trained with "
                                                 "0..199). Higher values let the model change more."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                      "tooltip": "Tiled diffusion tile size in pixels (0 = off). A multiple of 8; "
                                                 "the official code requires multiples of 64 (default 512). Images "
                                                 "smaller than a tile are sampled whole, as officially."}),
                "tile_stride": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8,
                                        "tooltip": "Tiled diffusion stride in pixels (official default 256); a "
                                                   "multiple of 8, at most tile_size. Used when tile_size > 0."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Optional: only its size and batch size are used (sampling starts "
                                                 "from noise as officially). Without it the size is the condition "
                                                 "image's size / 8 (rounded up) and the batch that of the condition."}),
                "vae": ("VAE", {"tooltip": "The SD 2.1 VAE, needed for restoration guidance (it encodes the guidance "
                                           "target, and decodes in rgb space)."}),
                "guidance": (list(GUIDANCE_LOSSES), {"default": "none",
                                                     "tooltip": "Restoration guidance (v1/v2 feature): pull each "
                                                                "step's x0 estimate towards the stage-1 image. mse, "
                                                                "or w_mse (weighted: flat regions count, edges "
                                                                "not; v2 default). none = off (v2.1)."}),
                "guidance_space": (list(SPACES), {"default": "latent",
                                                  "tooltip": "latent: compare latents (official default, fast); rgb: "
                                                             "compare decoded images (slow, back-propagates through "
                                                             "the VAE decoder)."}),
                "guidance_scale": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10000.0, "step": 0.01,
                                             "tooltip": "Official --g_scale (v2 style multiplies it by 3000 "
                                                        "internally). Official default 0 (no effect); README "
                                                        "example 0.5 with w_mse in rgb space."}),
                "guidance_t_start": ("INT", {"default": 1001, "min": -1, "max": 1001,
                                             "tooltip": "Guidance acts while t_stop < t + 1 < t_start (model "
                                                        "timestep t). Official default 1001."}),
                "guidance_t_stop": ("INT", {"default": -1, "min": -1, "max": 1001,
                                            "tooltip": "See guidance_t_start. Official default -1."}),
                "guidance_repeat": ("INT", {"default": 1, "min": 1, "max": 100,
                                            "tooltip": "Gradient steps per sampling step (v2 default 1; v1 used 5)."}),
                "guidance_style": (list(GUIDANCE_STYLES), {"default": "v2",
                                                           "tooltip": "v2: scale x 3000, x0 moved so the posterior "
                                                                      "mean moves by the gradient (v2.0.0). v1: "
                                                                      "scale as given, mean moved by half the "
                                                                      "gradient per repeat (v1)."}),
                "s_churn": ("FLOAT", {"default": OFFICIAL_DEFAULTS["s_churn"], "min": 0.0, "max": 100.0, "step": 0.01,
                                      "tooltip": "edm_euler / edm_heun / edm_dpm_2: churn (official default 0)."}),
                "s_tmin": ("FLOAT", {"default": OFFICIAL_DEFAULTS["s_tmin"], "min": 0.0, "max": 10000.0, "step": 0.01,
                                     "tooltip": "Churn applies for s_tmin <= sigma <= s_tmax (official 0)."}),
                "s_tmax": ("FLOAT", {"default": OFFICIAL_DEFAULTS["s_tmax"], "min": 0.0, "max": 100000.0,
                                     "step": 0.01, "tooltip": "See s_tmin (official 300)."}),
                "s_noise": ("FLOAT", {"default": OFFICIAL_DEFAULTS["s_noise"], "min": 0.0, "max": 100.0, "step": 0.01,
                                      "tooltip": "Noise multiplier of the churn, ancestral and SDE edm_* samplers "
                                                 "(official 1)."}),
                "eta": ("FLOAT", {"default": OFFICIAL_DEFAULTS["eta"], "min": 0.0, "max": 100.0, "step": 0.01,
                                  "tooltip": "Ancestral / SDE edm_* samplers: amount of fresh noise (official 1; 0 "
                                             "makes them deterministic)."}),
                "order": ("INT", {"default": OFFICIAL_DEFAULTS["order"], "min": 1, "max": 4,
                                  "tooltip": "edm_lms: order of the linear multistep (official 1)."}),
            },
        }

    def sample(self, model, positive, negative, seed, steps, cfg, sampler_name, rescale_cfg, start_point, noise_aug,
               tile_size, tile_stride, latent=None, vae=None, guidance="none", guidance_space="latent",
               guidance_scale=0.5, guidance_t_start=1001, guidance_t_stop=-1, guidance_repeat=1, guidance_style="v2",
               s_churn=OFFICIAL_DEFAULTS["s_churn"], s_tmin=OFFICIAL_DEFAULTS["s_tmin"],
               s_tmax=OFFICIAL_DEFAULTS["s_tmax"], s_noise=OFFICIAL_DEFAULTS["s_noise"], eta=OFFICIAL_DEFAULTS["eta"],
               order=OFFICIAL_DEFAULTS["order"]):
        steps, noise_aug, tile_size, tile_stride = int(steps), int(noise_aug), int(tile_size), int(tile_stride)
        self._check_settings(steps, cfg, sampler_name, start_point, noise_aug, tile_size, tile_stride, guidance, vae)
        control = find_control(positive)
        if control is None:
            raise ValueError(
                "DiffBIR Sampler: 'positive' carries no DiffBIR ControlNet. Connect the positive and negative outputs "
                "of 'LAControlNet Apply' (with the ControlNet from 'Load DiffBIR Models') to this node.")
        if cfg != 1 and find_control(negative) is None:
            raise ValueError(
                "DiffBIR Sampler: 'negative' carries no DiffBIR ControlNet, so the unconditional branch would run "
                "without the condition (officially both share it). Connect the negative output of 'LAControlNet "
                "Apply' too, or set cfg to 1.")
        diffusion = model_diffusion(model)
        grid = grid_timesteps(sampler_name, diffusion, steps)

        c_latent, (img_h, img_w) = control.condition()
        b, h, w = self._latent_size(latent, c_latent, img_h, img_w)
        c_img = c_latent[:, :, :h, :w].float()
        if c_img.shape[0] == 1 and b > 1:
            c_img = c_img.expand(b, -1, -1, -1)
        elif c_img.shape[0] != b:
            raise ValueError(
                f"DiffBIR Sampler: the latent batch ({b}) does not match the {c_img.shape[0]} condition images: give "
                "LAControlNet Apply one image or as many as the latent batch.")

        tiles = None
        if tile_size > 0:
            tile, stride = tile_size // 8, tile_stride // 8
            if h >= tile and w >= tile:
                tiles = (tile, stride)
            else:
                log.info("DiffBIR Sampler: the image (%dx%d) is smaller than a tile (%d px): sampled whole, as "
                         "officially.", w * 8, h * 8, tile_size)
        if tiles is not None and guidance != "none":
            raise ValueError("DiffBIR Sampler: restoration guidance needs the whole image and does not work with "
                             "tiled diffusion (as officially): set tile_size to 0 or guidance to none.")

        # The one noise stream, in the official order: x_T, then the noise_aug draw, then the sampler's draws.
        noise = noise_source(seed)
        last_t = len(diffusion.betas) - 1
        if start_point == "cond":
            x_T = q_sample(diffusion, c_img, last_t, noise.randn(c_img.shape))
        else:
            x_T = noise.randn((b, 4, h, w))
        if noise_aug > 0:
            c_aug = q_sample(diffusion, c_img, noise_aug, noise.randn_like(c_img))
            positive, negative = _replace_condition((positive, negative), c_aug)

        restoration = None
        if guidance != "none":
            restoration = self._guidance(control, vae, b, h, w, guidance, guidance_space, guidance_scale,
                                         guidance_t_start, guidance_t_stop, guidance_repeat, guidance_style)

        ms = model.get_model_object("model_sampling")
        sigmas = torch.stack([host_sigma(ms, t) for t in grid] + [torch.zeros(())])
        total = len(grid)
        preview = latent_preview.prepare_callback(model, total)
        settings = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise, "eta": eta,
                    "order": int(order)}
        run_fn = get_sampler(sampler_name)

        def run(guider, extra_args, callback, x_start):
            options = extra_args["model_options"]  # the run's own copy (CFGGuider.inner_sample)
            comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                         _EXACT_T_WRAPPER, _exact_timestep, options,
                                                         is_model_options=True)
            fn = HostModelFunction(guider, guider.inner_model.model_sampling, diffusion.parameterization, cfg=cfg,
                                   rescale_cfg=rescale_cfg, rescale_any_cfg=(sampler_name == "dpm++_m2"), tiles=tiles,
                                   model_options=options, seed=extra_args.get("seed"))

            def on_step(d):
                comfy.model_management.throw_exception_if_processing_interrupted()
                if callback is not None:
                    callback(d["i"], d["denoised"], d["x"], total)

            with torch.no_grad():
                return run_fn(fn, x_start, diffusion, steps, noise, callback=on_step, guidance=restoration,
                              **settings)

        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        samples = guider.sample(x_T, torch.zeros_like(x_T), _OfficialRun(run), sigmas, callback=preview,
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return ({"samples": samples.to(comfy.model_management.intermediate_device())},)

    # -- checks and helpers --------------------------------------------------------------------------------
    @staticmethod
    def _check_settings(steps, cfg, sampler_name, start_point, noise_aug, tile_size, tile_stride, guidance, vae):
        if steps < 1:
            raise ValueError(f"DiffBIR Sampler: steps must be at least 1 (got {steps}); official v2.1 uses 10.")
        if not cfg >= 0:
            raise ValueError(f"DiffBIR Sampler: cfg must be >= 0 (got {cfg}); official v2.1 uses 6, v2 uses 4.")
        if sampler_name not in SAMPLER_NAMES:
            raise ValueError(f"DiffBIR Sampler: unknown sampler_name {sampler_name!r}; choose one of "
                             f"{', '.join(SAMPLER_NAMES)}.")
        if start_point not in START_POINTS:
            raise ValueError(f"DiffBIR Sampler: start_point must be 'noise' or 'cond' (got {start_point!r}).")
        if not 0 <= noise_aug <= MAX_NOISE_AUG:
            raise ValueError(f"DiffBIR Sampler: noise_aug must be in 0..{MAX_NOISE_AUG} (got {noise_aug}).")
        if tile_size:
            if tile_size < 0 or tile_size % 8:
                raise ValueError(f"DiffBIR Sampler: tile_size must be 0 (off) or a positive multiple of 8 pixels "
                                 f"(got {tile_size}); the official default is 512.")
            if tile_stride < 8 or tile_stride % 8:
                raise ValueError(f"DiffBIR Sampler: tile_stride must be a positive multiple of 8 pixels (got "
                                 f"{tile_stride}); the official default is 256.")
            if tile_stride > tile_size:
                raise ValueError(f"DiffBIR Sampler: tile_size ({tile_size}) is smaller than tile_stride "
                                 f"({tile_stride}), which would leave gaps: use a stride of at most the tile size "
                                 "(official 512 / 256).")
        if guidance not in GUIDANCE_LOSSES:
            raise ValueError(f"DiffBIR Sampler: guidance must be one of {GUIDANCE_LOSSES} (got {guidance!r}).")
        if guidance != "none" and vae is None:
            raise ValueError("DiffBIR Sampler: restoration guidance needs the SD 2.1 VAE: connect the 'vae' input "
                             "(the VAE of your checkpoint), or set guidance to none.")

    @staticmethod
    def _latent_size(latent, c_latent, img_h, img_w):
        if latent is None:
            return c_latent.shape[0], math.ceil(img_h / 8), math.ceil(img_w / 8)
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != 4:
            raise ValueError(f"DiffBIR Sampler: 'latent' must be an SD latent (B, 4, h, w), got shape "
                             f"{tuple(samples.shape)}.")
        b, _, h, w = samples.shape
        if not (_fits(h, img_h) and _fits(w, img_w)) or h > c_latent.shape[-2] or w > c_latent.shape[-1]:
            raise ValueError(
                f"DiffBIR Sampler: 'latent' is {w}x{h} ({w * 8}x{h * 8} pixels) but the condition image is {img_w}x"
                f"{img_h} pixels. Leave 'latent' unconnected (the size then comes from the condition), or give an "
                f"Empty Latent Image of {img_w}x{img_h}.")
        if latent.get("noise_mask") is not None:
            log.warning("DiffBIR Sampler: the latent's noise_mask is ignored (DiffBIR restores the whole image).")
        return b, h, w

    @staticmethod
    def _guidance(control, vae, b, h, w, loss, space, scale, t_start, t_stop, repeat, style):
        image = control.condition_pixels()
        if image is None:
            raise ValueError("DiffBIR Sampler: restoration guidance needs the stage-1 image, but the ControlNet "
                             "carries only its latent: attach it with 'LAControlNet Apply'.")
        target = image[..., :3].movedim(-1, 1).float()
        pad_h, pad_w = h * 8 - target.shape[-2], w * 8 - target.shape[-1]
        target = F.pad(target, (0, max(pad_w, 0), 0, max(pad_h, 0)))[..., : h * 8, : w * 8]
        if target.shape[0] == 1 and b > 1:
            target = target.expand(b, -1, -1, -1)
        guide = _GuidanceOutsideInferenceMode.official(
            HostVAE(vae), None, "v1" if style == "v1" else "v2", float(scale), loss=loss, space=space,
            t_start=int(t_start), t_stop=int(t_stop), repeat=int(repeat))
        guide.set_target(target.clone())
        return guide


# ----------------------------------------------------------------------------------------- KSAMPLER registration


def _model_patcher_of(model):
    """The ModelPatcher behind the model a KSAMPLER function gets (KSamplerX0Inpaint -> CFGGuider)."""
    for _ in range(4):
        patcher = getattr(model, "model_patcher", None)
        if patcher is not None:
            return patcher
        model = getattr(model, "inner_model", None)
        if model is None:
            break
    raise ValueError("DiffBIR KSAMPLER: cannot find the MODEL behind the sampler's model function")


def _continuing_stream(seed, x: torch.Tensor) -> NoiseSource | None:
    """The seeded CPU stream after the host's initial noise: stock noise is the first randn(shape) of that seed."""
    if seed is None:
        return None
    source = GeneratorNoise(int(seed))
    source.randn(x.shape)
    return source


def make_ksampler_function(official: str, **settings):
    """The KSAMPLER function for `official` (see the module doc for what it preserves)."""
    core = ksampler_function(official, **settings)
    ddpm = official in DDPM_FAMILY

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra_args = {} if extra_args is None else extra_args
        options.setdefault("noise", _continuing_stream(extra_args.get("seed"), x))
        if ddpm:
            patcher = _model_patcher_of(model)
            ms = patcher.get_model_object("model_sampling")
            if float(sigmas[0]) < float(ms.sigma_max) * (1 - 1e-5):
                raise ValueError(
                    f"{ksampler_name(official)} always runs its full official grid from pure noise; it cannot "
                    "start part-way (denoise < 1, start_at_step > 0). Use a full schedule, or an edm sampler.")
            prediction, zsnr = model_sampling_kind(patcher)
            if prediction not in ("eps", "v"):
                raise ValueError(f"{ksampler_name(official)} needs a discrete eps- or v-prediction SD MODEL.")
            options["alphas_cumprod"] = diffusion_for_sampling(ms, prediction, zsnr).alphas_cumprod
        return core(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)

    sample.__name__ = f"sample_{ksampler_name(official)}"
    sample.__doc__ = f"DiffBIR's official {official} as a ComfyUI KSAMPLER function."
    return sample


def official_ksampler(official: str, **settings) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running DiffBIR's `official` sampler (settings: the official EDM extras)."""
    return comfy.samplers.KSAMPLER(make_ksampler_function(official, **settings))


def register_ksamplers() -> list[str]:
    """Add the diffbir_* samplers to ComfyUI's sampler lists (KSampler, KSamplerSelect); returns the new names.

    ComfyUI resolves a sampler name as ``comfy.k_diffusion.sampling.sample_<name>`` (``comfy.samplers.ksampler``)
    and lists ``comfy.samplers.KSAMPLER_NAMES`` / ``SAMPLER_NAMES`` (``KSampler.SAMPLERS`` is the same list), so a
    function is added there under that name and the names are appended in place. Idempotent; names already
    taken are left alone. Each uses the official default settings (the Select node exposes them).
    """
    import comfy.k_diffusion.sampling as k_sampling

    added = []
    for name, official in KSAMPLER_NAMES.items():
        attr = f"sample_{name}"
        if getattr(k_sampling, attr, None) is None:
            setattr(k_sampling, attr, make_ksampler_function(official))
        for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
            if name not in names:
                names.append(name)
                added.append(name)
    return sorted(set(added))


class DiffBIRSamplerSelect:
    DESCRIPTION = (
        "One of DiffBIR's official samplers as a SAMPLER for the stock SamplerCustom / SamplerCustomAdvanced. "
        "They use the scheduler's sigmas: the edm_* solvers step on them (not on DiffBIR's EDM grid), spaced, ddim "
        "and dpm++_m2 run their own official grid with as many steps as the sigmas have. For the official grids "
        "use the DiffBIR Sampler node. (The same samplers appear as diffbir_* in the stock sampler lists, with the "
        "official default settings.)")
    CATEGORY = "DiffBIR"
    FUNCTION = "get_sampler"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("The sampler, for SamplerCustom's 'sampler' input.",)

    @classmethod
    def INPUT_TYPES(cls):
        extras = DiffBIRSampler.INPUT_TYPES()["optional"]
        return {
            "required": {
                "sampler_name": (list(SAMPLER_NAMES), {"default": DEFAULT_SAMPLER, "tooltip": _TIP_SAMPLER}),
                **{k: extras[k] for k in ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order")},
            },
        }

    def get_sampler(self, sampler_name, s_churn, s_tmin, s_tmax, s_noise, eta, order):
        if sampler_name not in SAMPLER_NAMES:
            raise ValueError(f"DiffBIR Sampler Select: unknown sampler_name {sampler_name!r}; choose one of "
                             f"{', '.join(SAMPLER_NAMES)}.")
        settings = {}
        if sampler_name in EDM_FAMILY:
            reads = SOLVERS[sampler_name[len("edm_"):]][1]
            given = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise, "eta": eta,
                     "order": int(order)}
            settings = {k: v for k, v in given.items() if k in reads}
        return (official_ksampler(sampler_name, **settings),)


try:
    REGISTERED_KSAMPLERS = register_ksamplers()
except (AttributeError, ImportError, TypeError) as err:  # an unexpected ComfyUI: the nodes still work, only the stock lists miss our names
    REGISTERED_KSAMPLERS = []
    log.warning("DiffBIR: could not add the diffbir_* samplers to ComfyUI's sampler lists (%s); use the "
                "'DiffBIR Sampler Select' node instead.", err)


NODE_CLASS_MAPPINGS = {"DiffBIRSampler": DiffBIRSampler, "DiffBIRSamplerSelect": DiffBIRSamplerSelect}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRSampler": "DiffBIR Sampler", "DiffBIRSamplerSelect": "DiffBIR Sampler Select"}
