"""The reference stage 2 end to end: condition image -> condition latent -> sampling -> decode.

Part of the reference engine (see `diffbir_core.reference`): our own UNet, ControlNet and VAE driven the way the
official code drives them, replayed against the golden files; the nodes run the product path instead.

`apply_cldm` mirrors the official v2.1/main `Pipeline.apply_cldm` (reference spec C.3-C.6):

1. pad the condition image (stage-1 output, [0, 1]) with zeros at the bottom/right to a
   multiple of 64, or of 8 when the VAE encoder or the diffusion is tiled (`padding.condition_pad`);
2. condition latent `c_img = vae.encode(2 x - 1).mode() * 0.18215` (shared by cond and uncond);
   with diffusion untiled, c_img is zero-padded to a multiple of 8 (a no-op after the 64-pad);
3. start point (`sampling.start.start_latent`, the DiffBIR Sampler's too): "noise" = `randn(b, 4, h, w)`;
   "cond" = `q_sample(c_img, 999, randn)` (the same first draw; with zero-terminal SNR this is pure noise);
4. noise_aug > 0: one `randn_like(c_img)`, `c_img <- q_sample(c_img, noise_aug, noise)`, shared
   by the unconditional branch;
5. sample with control strength, CFG, rescale_cfg, tiling (`denoiser.CLDMDenoiser`); guidance refuses tiles
   (`sampling.guidance.check_untiled`);
6. crop the latent to the unpadded latent size, decode (`z / 0.18215`), crop to the image size.
The result carries `c_img` as recorded by the golden files (before the latent pad and before
noise_aug), `z_final` and `decoded` (~[-1, 1]); `colorfix.color_fix_decoded` gives the official final
`wavelet_reconstruction((decoded + 1) / 2, cond_img01)`.

`run_stage2_v2` mirrors v2.0.0 `Pipeline.run_stage2` (spec B.3-B.7): always pad to 64, v2.0.0
tiled encode / eps tiles / tiled decode, `better_start`, restoration guidance; `sample_v2` is its sampling
step alone (`SpacedSampler.sample` with the start point), which the v2.0.0 golden files record.

Differences from the official code, by design:
* tiled VAE (`vae_encoder_tiled` / `vae_decoder_tiled`) uses the v2.0.0 gaussian-blended tiles
  for every version, not v2.1's Tiled-VAE with synchronised GroupNorm (see `vae.py`);
* restoration guidance works with the v2.1 pipeline and every sampler (the v2.1 CLI accepts
  it but never applies it); like v2.0.0 it refuses tiled diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..padding import condition_pad, pad_to_multiple, pad_to_size
from ..sampling.cfg import rescales_any_cfg
from ..sampling.guidance import check_untiled
from ..sampling.noise import GeneratorNoise, NoiseSource
from ..sampling.registry import get_sampler
from ..sampling.start import better_start_latent, check_start, start_latent
from ..schedule import LATENT_SCALE, DiffusionSchedule
from ..tiling import check_tile_settings, holds_a_tile, sliding_windows
from .denoiser import CLDMDenoiser, Condition
from .vae import vae_decode, vae_decode_tiled, vae_encode, vae_encode_tiled


@dataclass
class StageTwoNets:
    controlnet: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    latent_scale: float = LATENT_SCALE


@dataclass
class CLDMResult:
    z_final: torch.Tensor  # sampled latent, cropped to the unpadded latent size
    decoded: torch.Tensor  # vae decode, cropped to the condition image size, ~[-1, 1]
    c_img: torch.Tensor  # condition latent before the latent pad and before noise_aug
    tiles_latent: list  # the latent tiles of tiled diffusion, [] when untiled
    denoiser: CLDMDenoiser


def apply_cldm(nets: StageTwoNets, cond_img01: torch.Tensor, c_txt_pos: torch.Tensor, c_txt_neg: torch.Tensor | None,
               diffusion: DiffusionSchedule, steps: int, *, sampler: str = "spaced", strength: float = 1.0,
               cfg_scale: float = 1.0, start_point_type: str = "noise", noise_aug: int = 0, rescale_cfg: bool = False,
               cldm_tiled: bool = False, cldm_tile_size: int = 512, cldm_tile_stride: int = 256,
               vae_encoder_tiled: bool = False, vae_encoder_tile_size: int = 256, vae_encoder_tile_stride: int | None = None,
               vae_decoder_tiled: bool = False, vae_decoder_tile_size: int = 256, vae_decoder_tile_stride: int | None = None,
               noise: NoiseSource | None = None, guidance=None, callback=None, batch_cfg: bool = True,
               **sampler_options) -> CLDMResult:
    sample_fn = get_sampler(sampler)
    noise_aug = check_start(diffusion, start_point_type, noise_aug)
    noise = GeneratorNoise() if noise is None else noise
    vae, scale = nets.vae, nets.latent_scale
    h0, w0 = cond_img01.shape[-2:]

    # 1. pad the condition image
    cond_img01 = pad_to_multiple(cond_img01, condition_pad(vae_encoder_tiled or cldm_tiled))
    if vae_encoder_tiled and not holds_a_tile(*cond_img01.shape[-2:], vae_encoder_tile_size):
        vae_encoder_tiled = False
    # 2. condition latent
    if vae_encoder_tiled:
        stride = vae_encoder_tile_stride or vae_encoder_tile_size // 2
        check_tile_settings(vae_encoder_tile_size, stride, tile_name="vae_encoder_tile_size",
                            stride_name="vae_encoder_tile_stride")
        c_img = vae_encode_tiled(vae, cond_img01 * 2 - 1, vae_encoder_tile_size, stride, scale=scale)
    else:
        c_img = vae_encode(vae, cond_img01 * 2 - 1, scale=scale)
    c_img_recorded = c_img
    h1, w1 = c_img.shape[-2:]
    if cldm_tiled and not holds_a_tile(h1, w1, cldm_tile_size // 8):
        cldm_tiled = False
    if cldm_tiled:
        check_tile_settings(cldm_tile_size, cldm_tile_stride, tile_name="cldm_tile_size",
                            stride_name="cldm_tile_stride")
        check_untiled(guidance, cldm_tiled)
    else:
        c_img = pad_to_multiple(c_img, 8)
    h2, w2 = c_img.shape[-2:]
    # 3. start point, 4. noise augmentation of the condition
    x_T, c_img = start_latent(diffusion, c_img, start_point_type, noise_aug, noise)
    if guidance is not None:  # the stage-1 image, zero-padded to the size the latent decodes to
        guidance.set_target(pad_to_size(cond_img01, h2 * 8, w2 * 8))
    # 5. sample
    tiles = (cldm_tile_size // 8, cldm_tile_stride // 8) if cldm_tiled else None
    denoiser = CLDMDenoiser(
        nets.controlnet, nets.unet, Condition(c_txt_pos, c_img),
        Condition(c_txt_neg, c_img) if c_txt_neg is not None else None,
        cfg_scale=cfg_scale, strength=strength, rescale_cfg=rescale_cfg, tiles=tiles,
        rescale_any_cfg=rescales_any_cfg(sampler), batch_cfg=batch_cfg,
    )
    with torch.no_grad():
        z = sample_fn(denoiser, x_T, diffusion, steps, noise, callback=callback, guidance=guidance, **sampler_options)
    z = z[..., :h1, :w1]
    # 6. decode
    if vae_decoder_tiled and not holds_a_tile(h1, w1, vae_decoder_tile_size // 8):
        vae_decoder_tiled = False
    with torch.no_grad():
        if vae_decoder_tiled:
            stride = vae_decoder_tile_stride or vae_decoder_tile_size // 2
            check_tile_settings(vae_decoder_tile_size, stride, tile_name="vae_decoder_tile_size",
                                stride_name="vae_decoder_tile_stride")
            decoded = vae_decode_tiled(vae, z, vae_decoder_tile_size // 8, max(stride // 8, 1), scale=scale)
        else:
            decoded = vae_decode(vae, z, scale=scale)
    tile_list = sliding_windows(h2, w2, *tiles) if tiles else []
    return CLDMResult(z_final=z, decoded=decoded[..., :h0, :w0], c_img=c_img_recorded, tiles_latent=tile_list,
                      denoiser=denoiser)


def run_stage2_v2(nets: StageTwoNets, clean01: torch.Tensor, c_txt_pos: torch.Tensor, c_txt_neg: torch.Tensor | None,
                  diffusion: DiffusionSchedule, steps: int, *, strength: float = 1.0, cfg_scale: float = 1.0,
                  tiled: bool = False, tile_size: int = 512, tile_stride: int = 256, better_start: bool = False,
                  noise: NoiseSource | None = None, guidance=None, callback=None, batch_cfg: bool = True) -> CLDMResult:
    """v2.0.0 `Pipeline.run_stage2` with the spaced sampler (see the module doc): pad to 64, encode (tiled when
    `tiled`), `sample_v2`, decode (tiled when `tiled`), crop."""
    noise = GeneratorNoise() if noise is None else noise
    vae, scale = nets.vae, nets.latent_scale
    h0, w0 = clean01.shape[-2:]
    pad_clean = pad_to_multiple(clean01, condition_pad())
    tiles = v2_tiles(pad_clean.shape[-2:], tile_size, tile_stride, guidance) if tiled else None
    if tiled:
        def encode(x, **kw):
            return vae_encode_tiled(vae, x, tile_size, tile_stride, scale=scale, **kw)
    else:
        def encode(x, **kw):
            return vae_encode(vae, x, scale=scale, **kw)
    c_img = encode(pad_clean * 2 - 1)
    z, denoiser = sample_v2(nets, pad_clean, c_img, c_txt_pos, c_txt_neg, diffusion, steps, encode=encode,
                            strength=strength, cfg_scale=cfg_scale, tiles=tiles, better_start=better_start, noise=noise,
                            guidance=guidance, callback=callback, batch_cfg=batch_cfg)
    with torch.no_grad():
        decoded = vae_decode_tiled(vae, z, *tiles, scale=scale) if tiled else vae_decode(vae, z, scale=scale)
    tile_list = sliding_windows(*z.shape[-2:], *tiles) if tiles else []
    return CLDMResult(z_final=z, decoded=decoded[..., :h0, :w0], c_img=c_img, tiles_latent=tile_list, denoiser=denoiser)


def v2_tiles(size: tuple[int, int], tile_size: int, tile_stride: int, guidance=None) -> tuple[int, int]:
    """(latent tile, latent stride) of v2.0.0 tiled sampling for an image of `size` pixels, checked as v2.0.0
    requires: whole latent tiles, an image of at least one tile, no restoration guidance."""
    if tile_size <= 0:
        raise ValueError(f"tiled sampling needs a positive tile_size, got {tile_size}")
    check_tile_settings(tile_size, tile_stride)
    if not holds_a_tile(*size, tile_size):
        h, w = size
        raise ValueError(f"v2.0.0 tiled sampling needs an image of at least one tile ({tile_size}), got {h}x{w}")
    check_untiled(guidance, True)
    return tile_size // 8, tile_stride // 8


def sample_v2(nets: StageTwoNets, clean01: torch.Tensor, c_img: torch.Tensor, c_txt_pos: torch.Tensor,
              c_txt_neg: torch.Tensor | None, diffusion: DiffusionSchedule, steps: int, *, encode, strength: float = 1.0,
              cfg_scale: float = 1.0, tiles: tuple[int, int] | None = None, better_start: bool = False,
              noise: NoiseSource, guidance=None, callback=None, batch_cfg: bool = True):
    """v2.0.0 `SpacedSampler.sample` and its start point, on the condition latent `c_img` of `clean01` (the
    stage-1 image in [0, 1], also the guidance target): x_T is a fresh draw, or with `better_start` the noised
    `encode`d low frequencies of `clean01`; `tiles` (latent tile, stride; see `v2_tiles`) tiles the model calls
    only. Returns (z, denoiser). The v2.0.0 golden files record this step alone, with untiled VAE calls."""
    if guidance is not None:
        guidance.set_target(clean01)
    if better_start:
        x_T = better_start_latent(diffusion, clean01, encode, noise)
    else:
        x_T = noise.randn((clean01.shape[0], 4, *c_img.shape[-2:]), c_img.device, c_img.dtype)
    denoiser = CLDMDenoiser(
        nets.controlnet, nets.unet, Condition(c_txt_pos, c_img),
        Condition(c_txt_neg, c_img) if c_txt_neg is not None else None,
        cfg_scale=cfg_scale, strength=strength, tiles=tiles, batch_cfg=batch_cfg,
    )
    with torch.no_grad():
        z = get_sampler("spaced")(denoiser, x_T, diffusion, steps, noise, callback=callback, guidance=guidance)
    return z, denoiser
