"""DiffBIR VAE Decode (Tiled): the official tiled decode of an SD 2.1 latent through ComfyUI's VAE."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .host import batches, schema
from .host.tiled_stage import TiledStage
from .host.vae import LATENT_DOWNSCALE, check_sd_vae, decode_latent

NODE = "DiffBIR VAE Decode"
TILES = TiledStage(NODE, "vae_decode")


class DiffBIRVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRVAEDecode",
            display_name="DiffBIR VAE Decode (Tiled)",
            category=schema.LATENT,
            search_aliases=["vae decode tiled", "tiled decode", "decode"],
            description=(
                "Decode a latent with the SD 2.1 VAE in overlapping tiles (the official DiffBIR v2 tiled decode: "
                "gaussian-blended tiles), so a large restore never needs the whole-image decoder activations. Latents "
                "no larger than one tile decode whole, exactly like the stock VAE Decode. Cancel stops between "
                "tiles."),
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to decode (e.g. from DiffBIR Sampler)."),
                io.Vae.Input("vae", tooltip="The SD 2.1 VAE (from the same checkpoint as the MODEL)."),
                TILES.size_input(512, "Tile size in output pixels (0 = decode the whole image at once; tile_plan "
                                      "manual). Memory grows with the tile, not the image: 512 keeps a 2048x2048 "
                                      "decode near the memory of a 512x512 one."),
                TILES.stride_input("Distance between tile origins in pixels (official: half the tile). Smaller "
                                   "strides blend more tiles per pixel: smoother seams, slower."),
                TILES.plan_input(),
            ],
            outputs=[io.Image.Output("IMAGE", tooltip="The decoded image (latent size x 8).")],
        )

    @classmethod
    def validate_inputs(cls, tile_size=None, tile_stride=None):
        """Shown before the run (ComfyUI then leaves the min/max check of these two inputs to us)."""
        return TILES.error(cls, tile_size, tile_stride) or True

    @classmethod
    def execute(cls, samples, vae, tile_size, tile_stride, tile_plan="manual") -> io.NodeOutput:
        check_sd_vae(vae, NODE)
        if not isinstance(samples, dict) or not isinstance(samples.get("samples"), torch.Tensor):
            raise TypeError(f"{NODE}: 'samples' must be a LATENT (connect a sampler's LATENT output)")
        z = samples["samples"]
        if z.ndim != 4 or z.shape[1] != 4:
            raise ValueError(f"{NODE}: expected an SD 2.1 latent of shape (B, 4, h, w), got {tuple(z.shape)}; decode "
                             "other latents with the stock VAE Decode")
        h, w = z.shape[-2] * LATENT_DOWNSCALE, z.shape[-1] * LATENT_DOWNSCALE
        def decode(tile: int, stride: int) -> torch.Tensor:  # a batch in chunks of as many frames as fit
            size = batches.frames_per_chunk(NODE, TILES.stage, z.shape[0], h, w, tile, vae.device, vae.vae_dtype,
                                            [vae.patcher])
            return torch.cat(batches.run_chunks(z.shape[0], size, lambda _, start, stop: decode_latent(
                vae, z[start:stop], tile, stride), progress=True))

        image = TILES.run(decode, tile_plan, tile_size, tile_stride, h, w, vae.device, vae.vae_dtype, [vae.patcher])
        return io.NodeOutput(image)
