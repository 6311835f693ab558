"""DiffBIR Sampler: the fourteen official samplers on their official grids, run by ComfyUI's own machinery.

How the node drives ComfyUI (one sampling run, exactly as the stock sampler nodes do):

* A stock ``comfy.samplers.CFGGuider`` holds the MODEL and the positive/negative conditioning (which carry our
  DiffBIRControl from LAControlNet Apply). Its ``sample()`` prepares the run the ComfyUI way:
  ``comfy.sampler_helpers.prepare_sampling`` loads the MODEL and the ControlNet (``get_models``) with
  ``load_models_gpu`` and the memory estimate of the latent, processes the conds (the control's ``pre_run``),
  applies the MODEL's patches, wrappers and hooks, and cleans up afterwards.
* The guider runs ``host.model_function.OfficialRun``, which calls the official sampler function of
  ``diffbir_core.sampling`` (own random draws) on the run's sampling plan: the official timestep grid and
  coefficient tables, computed once (``make_plan``) and also giving the guider its sigmas;
  ``host.model_function.HostModelFunction`` answers its model calls through the guider (conversion, exact
  timesteps and tiled diffusion: see that module).
* ``latent_preview.prepare_callback`` gives previews and the progress bar; every model call and every step
  checks ``comfy.model_management.throw_exception_if_processing_interrupted()`` (Cancel).
* Noise: one seeded CPU generator (``diffbir_core.sampling.GeneratorNoise``) per frame for every draw, in the
  official order (``start_latent``: x_T, the noise_aug draw; then the sampler's draws), so a seed gives the same
  image on any device. A batch (``noise_mode``, ``diffbir_core.sampling.batch_noise``): "per frame" draws frame k
  from seed + k, so frame k of a batch is that frame run alone with seed + k (a batch of one is unchanged, and a
  clip cut into chunks gives the same frames when the chunk starting at frame k runs with seed + k); "shared"
  gives every frame the draws of the seed (identical input frames give identical output frames: less flicker).
* Batches of any length: sampled in chunks of as many frames as the memory planner fits (``host.batches``),
  with one progress bar over every chunk's steps and Cancel between chunks.
* rescale_cfg: the guider's cfg is set per call to the official ``s(t)``; restoration guidance: ``host.guidance``.

The same solvers are also ComfyUI KSAMPLERs and the "DiffBIR Sampler Select" node (``host.ksamplers``).

Differences from the official pipeline, by design:
* the sampled latent is the condition image's size / 8 rounded up (or the connected latent's size), not the
  whole 64-padded latent that the official code samples and crops after decoding;
* tile_size may be any multiple of 8 pixels from 64 (the official code asserts multiples of 64), and with tiles
  the condition latent is the one LAControlNet Apply encoded from the 64-padded image (the official tiled path
  pads to 8 before encoding, which changes the latent slightly through the VAE's attention);
* restoration guidance works with every sampler and version (see diffbir_core.sampling.guidance).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from diffbir_core.sampling import (
    ALL_START_POINTS,
    BETTER_START,
    LOSSES,
    NOISE_MODES,
    SPACES,
    GeneratorNoise,
    NoiseSource,
    SamplerPlan,
    batch_noise,
    check_untiled,
    get_sampler,
    make_plan,
    rescales_any_cfg,
    start_latent,
)
from diffbir_core.tiling import holds_a_tile

from .host import batches, schema
from .host.conditioning import find_control, replace_condition
from .host.guidance import posterior_encode, restoration_guidance, stage1_pixels
from .host.model_function import HostModelFunction, OfficialRun, add_exact_timestep_wrapper
from .host.model_sampling import host_sigmas, model_diffusion
from .host.patching import inference_dtype
from .host.solver_inputs import check_sampler_name, sampler_name_input, setting_inputs, solver_settings
from .host.tiled_stage import TiledStage
from .host.vae import latent_fits

log = logging.getLogger("comfyui-diffbir")

GUIDANCE_LOSSES = ("none",) + LOSSES
GUIDANCE_STYLES = ("v2", "v1")
MAX_NOISE_AUG = 199  # the v2.1 training range of the condition's noise augmentation
NODE = "DiffBIR Sampler"
TILES = TiledStage(NODE, "diffusion")


def noise_source(seed: int) -> NoiseSource:
    """The one noise stream of a DiffBIR Sampler run.

    Replay seam: the golden replay (``python -m diffbir_cli golden``) and the tests replace this module function
    to replay recorded draws (golden parity); nothing else should. A seeded CPU generator: same seed, same image on any device.
    """
    return GeneratorNoise(seed)


@dataclass
class _Denoise:
    """One run of an official sampler inside ComfyUI's guider (``OfficialRun`` calls it with the guider)."""

    plan: SamplerPlan  # sampler, DiffusionSchedule of the MODEL, steps, grid and tables (computed once per run)
    cfg: float
    rescale_cfg: bool
    tiles: tuple[int, int] | None  # (tile, stride) in latent pixels
    noise: NoiseSource
    guidance: object  # RestorationGuidance or None
    settings: dict

    def __call__(self, guider, extra_args, callback, x_start):
        options = extra_args["model_options"]  # the run's own copy (CFGGuider.inner_sample)
        add_exact_timestep_wrapper(options)
        plan = self.plan
        fn = HostModelFunction(guider, guider.inner_model.model_sampling, plan.diffusion.parameterization,
                               cfg=self.cfg, rescale_cfg=self.rescale_cfg,
                               rescale_any_cfg=rescales_any_cfg(plan.sampler), tiles=self.tiles,
                               model_options=options, seed=extra_args.get("seed"))
        total = len(plan.timesteps)  # one callback per grid timestep (ddim's grid may hold one more than steps)

        def on_step(d):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if callback is not None:
                callback(d["i"], d["denoised"], d["x"], total)

        with torch.no_grad():
            return get_sampler(plan.sampler)(fn, x_start, plan.diffusion, plan.steps, self.noise, callback=on_step,
                                             guidance=self.guidance, plan=plan, **self.settings)


def _frames(images: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Frames start .. stop - 1 of a batch of images; one image stands for every frame."""
    return images if images is None or images.shape[0] == 1 else images[start:stop]


class DiffBIRSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        adv = schema.ADVANCED
        return schema.schema(
            node_id="DiffBIRSampler",
            display_name=NODE,
            category=schema.SAMPLING,
            search_aliases=["restore", "diffbir", "upscale", "super resolution", "image restoration", "ksampler",
                            "stage 2"],
            description=(
                "Stage 2 of DiffBIR with the official samplers: the 14 samplers of the official code on their own "
                "timestep grids, with DiffBIR's start point, condition noise augmentation, rescaled CFG, tiled "
                "diffusion and restoration guidance. Connect the MODEL and the positive/negative outputs of "
                "LAControlNet Apply (for v2.1 its MODEL output). Runs through ComfyUI's sampling machinery (memory "
                "management, previews, progress, Cancel). Outputs the latent for VAE Decode; one seed gives the "
                "same result on any device."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.1 MODEL: for a v2.1 ControlNet the MODEL output of "
                                                "LAControlNet Apply (v-prediction + zero-terminal SNR), for v1/v2 the "
                                                "plain SD 2.1-base."),
                io.Conditioning.Input("positive", tooltip="The positive output of LAControlNet Apply (it carries the "
                                                          "DiffBIR ControlNet and the condition latent)."),
                io.Conditioning.Input("negative", tooltip="The negative output of LAControlNet Apply (same "
                                                          "ControlNet and condition, negative prompt)."),
                io.Int.Input("seed", default=231, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the one CPU noise stream (start noise, noise_aug, sampler noise): the "
                                     "same seed gives the same image on any device. Official default 231."),
                io.Int.Input("steps", default=10, min=1, max=1000,
                             tooltip="Sampling steps. Official v2.1 default 10 (edm_dpm++_3m_sde); the paper's v2 "
                                     "recipe uses 50 with spaced."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale. Official v2.1 default 6 (README and gradio "
                                       "8); the paper's v2 recipe uses 4. 1 skips the negative."),
                sampler_name_input(),
                io.Boolean.Input("rescale_cfg", default=False,
                                 tooltip="Official --rescale_cfg: the guidance scale ramps from 1 at the noisiest step "
                                         "to 1 + cfg at the end (only when cfg > 1).", **adv),
                io.Combo.Input("start_point", options=list(ALL_START_POINTS), default="noise",
                               tooltip="noise: start from pure noise (official default). cond: start from the "
                                       "condition latent diffused to t = 999 (the main code's --start_point_type "
                                       "cond). better_start: v2.0.0's --better_start, the low frequencies of the "
                                       "stage-1 image encoded (a posterior sample; needs the vae input) and "
                                       "diffused to t = 999. Both are identical to noise for v2.1's "
                                       "zero-terminal-SNR model.", **adv),
                io.Int.Input("noise_aug", default=0, min=0, max=MAX_NOISE_AUG,
                             tooltip="Official --noise_aug: diffuse the condition latent to this timestep before "
                                     "sampling (0 = off, official default; v2.1 trained with 0..199). Higher values "
                                     "let the model change more.", **adv),
                TILES.size_input(0, "Tiled diffusion tile size in pixels (0 = off; tile_plan manual). A multiple of "
                                    "64 (official default 512). Images smaller than a tile are sampled whole, as "
                                    "officially."),
                TILES.stride_input("Tiled diffusion stride in pixels (official default 256); a multiple of 8, at "
                                   "most tile_size. Used when tile_size > 0."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: only its size and batch size are used (sampling starts from noise "
                                        "as officially). Without it the size is the condition image's size / 8 "
                                        "(rounded up) and the batch that of the condition."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The SD 2.1 VAE, needed for restoration guidance (it encodes the guidance "
                                     "target, and decodes in rgb space) and for start_point better_start."),
                io.Combo.Input("guidance", options=list(GUIDANCE_LOSSES), default="none", optional=True,
                               tooltip="Restoration guidance (v1/v2 feature): pull each step's x0 estimate towards "
                                       "the stage-1 image. mse, or w_mse (weighted: flat regions count, edges not; "
                                       "v2 default). none = off (v2.1).", **adv),
                io.Combo.Input("guidance_space", options=list(SPACES), default="latent", optional=True,
                               tooltip="latent: compare latents (official default, fast); rgb: compare decoded "
                                       "images (slow, back-propagates through the VAE decoder).", **adv),
                io.Float.Input("guidance_scale", default=0.5, min=0.0, max=10000.0, step=0.01, optional=True,
                               tooltip="Official --g_scale (v2 style multiplies it by 3000 internally). Official "
                                       "default 0 (no effect); README example 0.5 with w_mse in rgb space.", **adv),
                io.Int.Input("guidance_t_start", default=1001, min=-1, max=1001, optional=True,
                             tooltip="Guidance acts while t_stop < t + 1 < t_start (model timestep t). Official "
                                     "default 1001.", **adv),
                io.Int.Input("guidance_t_stop", default=-1, min=-1, max=1001, optional=True,
                             tooltip="See guidance_t_start. Official default -1.", **adv),
                io.Int.Input("guidance_repeat", default=1, min=1, max=100, optional=True,
                             tooltip="Gradient steps per sampling step (v2 default 1; v1 used 5).", **adv),
                io.Combo.Input("guidance_style", options=list(GUIDANCE_STYLES), default="v2", optional=True,
                               tooltip="v2: scale x 3000, x0 moved so the posterior mean moves by the gradient "
                                       "(v2.0.0). v1: scale as given, mean moved by half the gradient per repeat "
                                       "(v1).", **adv),
                *setting_inputs(optional=True, advanced=True),
                TILES.plan_input(),
                io.Combo.Input("noise_mode", options=list(NOISE_MODES), default=NOISE_MODES[0], optional=True,
                               tooltip="Noise of a batch (video frames). per frame: frame k draws from seed + k, "
                                       "exactly as that frame run alone with seed + k (so the part of a clip "
                                       "starting at frame k reproduces with seed + k). shared: every frame starts "
                                       "from the same noise (the seed's), the usual remedy for flicker: identical "
                                       "frames give identical results. A single image is the same in both."),
            ],
            outputs=[
                io.Latent.Output("latent_out", display_name="latent",
                                 tooltip="The restored latent (the condition image's size / 8); decode it with the "
                                         "SD 2.1 VAE (DiffBIR VAE Decode (Tiled) keeps large images within "
                                         "memory)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, tile_size=None, tile_stride=None):
        """Shown before the run (ComfyUI then leaves the min/max check of these two inputs to us)."""
        return TILES.error(cls, tile_size, tile_stride) or True

    @classmethod
    def execute(cls, model, positive, negative, seed, steps, cfg, sampler_name, rescale_cfg, start_point, noise_aug,
                tile_size, tile_stride, latent=None, vae=None, guidance="none", guidance_space="latent",
                guidance_scale=0.5, guidance_t_start=1001, guidance_t_stop=-1, guidance_repeat=1, guidance_style="v2",
                tile_plan="manual", noise_mode=NOISE_MODES[0], **solver_values) -> io.NodeOutput:
        # 1. check inputs
        steps, noise_aug, tile_size, tile_stride = int(steps), int(noise_aug), int(tile_size), int(tile_stride)
        cls._check_settings(steps, cfg, sampler_name, start_point, noise_aug, guidance, vae, noise_mode)
        if not TILES.is_auto(tile_plan):
            TILES.check(tile_size, tile_stride)
        control = cls._control(positive, negative, cfg)
        settings = solver_settings(NODE, solver_values)

        # 2. prepare: the sampling plan (the official grid and tables, once), the run's size and condition, the
        # guidance target
        diffusion = model_diffusion(model)
        try:
            plan = make_plan(sampler_name, diffusion, steps)
        except ValueError as err:
            raise ValueError(f"{NODE}: {err}.") from None
        sigmas = host_sigmas(model.get_model_object("model_sampling"), plan.timesteps)
        c_latent, (img_h, img_w) = control.condition()
        b, h, w = cls._latent_size(latent, c_latent, img_h, img_w)
        c_img = cls._condition_batch(c_latent[:, :, :h, :w].float(), b)
        pixels = control.condition_pixels() if start_point == BETTER_START or guidance != "none" else None
        encode = posterior_encode(vae) if start_point == BETTER_START else None
        dtype, patchers = inference_dtype(model), [model, *control.get_models()]

        # 3. denoise, chunk by chunk: everything from the first noise draw, so that an out-of-memory retry replays it
        def denoise_chunk(tiles, start: int, stop: int, callback) -> torch.Tensor:
            n = stop - start
            clean = restoration = None
            if start_point == BETTER_START:  # v2.0.0: the start latent comes from the stage-1 image
                clean = stage1_pixels(_frames(pixels, start, stop), n, h, w, "start_point better_start")
            if guidance != "none":
                restoration = restoration_guidance(
                    _frames(pixels, start, stop), vae, n, h, w, guidance, guidance_space, guidance_scale,
                    guidance_t_start, guidance_t_stop, guidance_repeat, guidance_style)
            noise = batch_noise(noise_source, seed, start, n, noise_mode)
            x_T, c_aug = start_latent(diffusion, c_img[start:stop], start_point, noise_aug, noise, clean, encode)
            # the whole batch's conds as they are (bit-identical to a run without chunks); a chunk's or an
            # augmented condition replaces the control's latent in copies
            conds = (positive, negative) if n == b and noise_aug == 0 else replace_condition((positive, negative),
                                                                                          c_aug)
            run = _Denoise(plan, cfg, rescale_cfg, tiles, noise, restoration, settings)
            guider = comfy.samplers.CFGGuider(model)
            guider.set_conds(*conds)
            guider.set_cfg(cfg)
            return guider.sample(x_T, torch.zeros_like(x_T), OfficialRun(run), sigmas, callback=callback,
                                 disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)

        def denoise(tile: int, stride: int) -> torch.Tensor:
            tiles = cls._tiles(tile, stride, h, w, clamp=tile_plan == "auto")
            check_untiled(guidance if guidance != "none" else None, tiles is not None, f"{NODE}: ",
                          ": set tile_size to 0 (tile_plan manual) or guidance to none.")
            size = batches.frames_per_chunk(NODE, TILES.stage, b, h * 8, w * 8, tile if tiles else 0,
                                            model.load_device, dtype, patchers)
            steps_per_chunk = len(plan.timesteps)
            total = steps_per_chunk * -(-b // size)
            progress = latent_preview.prepare_callback(model, total)  # one bar over every chunk's steps

            def chunk(index, start, stop):
                def callback(step, x0, x, _steps):
                    progress(index * steps_per_chunk + step, x0, x, total)

                return denoise_chunk(tiles, start, stop, callback)

            return torch.cat(batches.run_chunks(b, size, chunk))

        if guidance != "none":  # guidance needs the whole image: no planning, no fallback to tiles
            samples = denoise(tile_size, tile_stride)
        else:
            samples = TILES.run(denoise, tile_plan, tile_size, tile_stride, h * 8, w * 8, model.load_device,
                                dtype, patchers)
        return io.NodeOutput({"samples": samples.to(comfy.model_management.intermediate_device())})

    # -- checks and helpers --------------------------------------------------------------------------------
    @staticmethod
    def _check_settings(steps, cfg, sampler_name, start_point, noise_aug, guidance, vae, noise_mode):
        if steps < 1:
            raise ValueError(f"{NODE}: steps must be at least 1 (got {steps}); official v2.1 uses 10.")
        if not cfg >= 0:
            raise ValueError(f"{NODE}: cfg must be >= 0 (got {cfg}); official v2.1 uses 6, v2 uses 4.")
        check_sampler_name(NODE, sampler_name)
        if start_point not in ALL_START_POINTS:
            raise ValueError(f"{NODE}: start_point must be one of {', '.join(ALL_START_POINTS)} (got "
                             f"{start_point!r}).")
        if start_point == BETTER_START and vae is None:
            raise ValueError(f"{NODE}: start_point better_start encodes the stage-1 image: connect the 'vae' input "
                             "(the VAE of your checkpoint), or pick start_point noise or cond.")
        if not 0 <= noise_aug <= MAX_NOISE_AUG:
            raise ValueError(f"{NODE}: noise_aug must be in 0..{MAX_NOISE_AUG} (got {noise_aug}).")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"{NODE}: noise_mode must be one of {', '.join(NOISE_MODES)} (got {noise_mode!r}).")
        if guidance not in GUIDANCE_LOSSES:
            raise ValueError(f"{NODE}: guidance must be one of {GUIDANCE_LOSSES} (got {guidance!r}).")
        if guidance != "none" and vae is None:
            raise ValueError(f"{NODE}: restoration guidance needs the SD 2.1 VAE: connect the 'vae' input (the VAE "
                             "of your checkpoint), or set guidance to none.")

    @staticmethod
    def _control(positive, negative, cfg):
        """The DiffBIR control the conditioning carries (both branches must carry it unless cfg is 1)."""
        control = find_control(positive)
        if control is None:
            raise ValueError(
                f"{NODE}: 'positive' carries no DiffBIR ControlNet. Connect the positive and negative outputs of "
                "'LAControlNet Apply' (with the ControlNet from 'Load DiffBIR Models') to this node.")
        if cfg != 1 and find_control(negative) is None:
            raise ValueError(
                f"{NODE}: 'negative' carries no DiffBIR ControlNet, so the unconditional branch would run without the "
                "condition (officially both share it). Connect the negative output of 'LAControlNet Apply' too, or "
                "set cfg to 1.")
        return control

    @staticmethod
    def _condition_batch(c_img: torch.Tensor, b: int) -> torch.Tensor:
        if c_img.shape[0] == 1 and b > 1:
            return c_img.expand(b, -1, -1, -1)
        if c_img.shape[0] != b:
            raise ValueError(
                f"{NODE}: the latent batch ({b}) does not match the {c_img.shape[0]} condition images: give "
                "LAControlNet Apply one image or as many as the latent batch.")
        return c_img

    @staticmethod
    def _tiles(tile_size, tile_stride, h, w, clamp):
        """(tile, stride) in latent pixels, or None. An image smaller than a manual tile is sampled whole, as
        officially; a planned (or retried) tile is clamped to the image like every tile loop does."""
        if tile_size <= 0:
            return None
        tile, stride = tile_size // 8, tile_stride // 8
        if clamp or holds_a_tile(h, w, tile):
            return tile, stride
        log.info("%s: the image (%dx%d) is smaller than a tile (%d px): sampled whole, as officially.",
                 NODE, w * 8, h * 8, tile_size)
        return None

    @staticmethod
    def _latent_size(latent, c_latent, img_h, img_w):
        if latent is None:
            return c_latent.shape[0], math.ceil(img_h / 8), math.ceil(img_w / 8)
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != 4:
            raise ValueError(f"{NODE}: 'latent' must be an SD latent (B, 4, h, w), got shape "
                             f"{tuple(samples.shape)}.")
        b, _, h, w = samples.shape
        if not (latent_fits(h, img_h) and latent_fits(w, img_w)) or h > c_latent.shape[-2] or w > c_latent.shape[-1]:
            raise ValueError(
                f"{NODE}: 'latent' is {w}x{h} ({w * 8}x{h * 8} pixels) but the condition image is {img_w}x{img_h} "
                "pixels. Leave 'latent' unconnected (the size then comes from the condition), or give an Empty "
                f"Latent Image of {img_w}x{img_h}.")
        if latent.get("noise_mask") is not None:
            log.warning("%s: the latent's noise_mask is ignored (DiffBIR restores the whole image).", NODE)
        return b, h, w
