"""Tiled VAE in the real host: DiffBIR VAE Decode (Tiled) and LAControlNet Apply's tiled condition encode.

* Within one tile both are the stock whole-image VAE call, bit for bit.
* Larger images go through the host VAE one tile at a time (never a call larger than a tile); where only one
  tile covers a region the result is that tile's own decode/encode, elsewhere the gaussian blend.
* Cancel during either stops before the next tile (one VAE call made), returns nothing, saves nothing, and the
  next prompt gives the uninterrupted result.
* Bad tile settings are refused before the run with the input names and the fix.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import comfy_host as ch
import pytest
import torch
from comfy_host import node_module, node_output, saved_images
from tiny_models import TINY_CONTROLNETS, TINY_SD21_NAME

CN = TINY_CONTROLNETS["v2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


def node(host, name):
    return host.node_classes[name]()


@pytest.fixture(autouse=True)
def inference_mode():
    """As the host's executor runs nodes (direct node calls here would otherwise track gradients)."""
    with torch.inference_mode():
        yield


class Calls:
    """Wraps comfy.sd.VAE.encode/decode: records the spatial size of every call, optionally cancels on one."""

    def __init__(self, monkeypatch, method: str, cancel_on: int | None = None):
        import comfy.model_management as mm
        import comfy.sd

        self.sizes = []
        original = getattr(comfy.sd.VAE, method)

        def wrapped(vae, x, *args, **kwargs):
            self.sizes.append(tuple(x.shape[-2:]) if method == "decode" else tuple(x.shape[1:3]))
            if cancel_on is not None and len(self.sizes) == cancel_on:
                mm.interrupt_current_processing()  # the user presses Cancel while this tile runs
            return original(vae, x, *args, **kwargs)

        monkeypatch.setattr(comfy.sd.VAE, method, wrapped)


def latent(h, w, seed=0):
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ decode


def test_decode_within_one_tile_is_the_stock_decode(comfy_host, golden_host_vae):
    z = latent(8, 12)
    (stock,) = node(comfy_host, "VAEDecode").decode(golden_host_vae, {"samples": z})
    for tile in (0, 512, 96):
        (ours,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, tile, 48)
        assert ours.shape == stock.shape == (1, 64, 96, 3)
        assert torch.equal(ours, stock), tile


def test_tiled_decode_calls_the_vae_per_tile_and_blends(comfy_host, golden_host_vae, monkeypatch):
    z = latent(24, 32, seed=1)
    calls = Calls(monkeypatch, "decode")
    (tiled,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 128, 64)
    monkeypatch.undo()
    # latent tiles of 16 with stride 8: rows 0, 8 and columns 0, 8, 16 -> 6 calls, none larger than a tile
    assert calls.sizes == [(16, 16)] * 6
    assert tiled.shape == (1, 192, 256, 3) and bool(torch.isfinite(tiled).all())
    assert 0.0 <= float(tiled.min()) and float(tiled.max()) <= 1.0
    # Output pixels 0-63 (latent 0-7) of rows and columns are covered by the first tile only: its own decode.
    (corner,) = node(comfy_host, "VAEDecode").decode(golden_host_vae, {"samples": z[..., :16, :16]})
    assert (tiled[:, :64, :64] - corner[:, :64, :64]).abs().max() < 1e-5
    # The blended middle is a weighted average of the overlapping tiles: not the first tile's value alone.
    (whole,) = node(comfy_host, "VAEDecode").decode(golden_host_vae, {"samples": z})
    assert not torch.allclose(tiled[:, 64:128, 64:128], corner[:, 64:128, 64:128], atol=1e-4)
    print(f"tiled vs whole decode, small random VAE: MAE {(tiled - whole).abs().mean():.4f}")


def decode_prompt(prefix, size=192):
    return {
        "C": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD21_NAME}},
        "E": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "D": {"class_type": "DiffBIRVAEDecode",
              "inputs": {"samples": ["E", 0], "vae": ["C", 2], "tile_size": 128, "tile_stride": 64}},
        "W": {"class_type": "SaveImage", "inputs": {"images": ["D", 0], "filename_prefix": prefix}},
    }


def test_cancel_during_tiled_decode_stops_within_one_tile(comfy_host, model_files, monkeypatch):
    import comfy.model_management as mm

    prefix = f"vae_decode_cancel_{uuid.uuid4().hex[:6]}"
    prompt = decode_prompt(prefix)
    calls = Calls(monkeypatch, "decode", cancel_on=1)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        comfy_host.run(prompt)
    monkeypatch.undo()
    assert calls.sizes == [(16, 16)]  # 2 x 2 tiles planned (24x24 latent, tile 16, stride 8): stopped after one
    assert not mm.processing_interrupted() and saved_images(comfy_host, prefix) == []

    calls = Calls(monkeypatch, "decode")
    comfy_host.run(prompt)  # the next prompt runs normally, all four tiles
    monkeypatch.undo()
    assert calls.sizes == [(16, 16)] * 4 and len(saved_images(comfy_host, prefix)) == 1
    assert node_output(comfy_host, "D").shape == (1, 192, 192, 3)


# ------------------------------------------------------------------------------------------------ encode


def apply_prompt(png, vae_tile_size, vae_tile_stride=64):
    return {
        "C": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD21_NAME}},
        "L": {"class_type": "DiffBIRLoadModels", "inputs": {"stage1_name": "none", "controlnet_name": CN,
                                                            "dtype": "auto"}},
        "I": {"class_type": "LoadImage", "inputs": {"image": png}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["C", 1]}},
        "A": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["p", 0], "negative": ["p", 0], "control_net": ["L", 1], "image": ["I", 0],
                         "vae": ["C", 2], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                         "vae_tile_size": vae_tile_size, "vae_tile_stride": vae_tile_stride}},
        "o": {"class_type": "PreviewAny", "inputs": {"source": ["A", 0]}},
    }


@pytest.fixture(scope="module")
def png(comfy_host):
    import folder_paths
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    rgb = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(192, 160), mode="bicubic")
    name = f"vae_tiles_{uuid.uuid4().hex[:8]}.png"
    Image.fromarray((rgb[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(
        Path(folder_paths.get_input_directory()) / name)
    return name


def condition(host):
    return node_output(host, "A")[0][1]["control"]


def test_tiled_condition_encode(comfy_host, model_files, png, monkeypatch):
    comfy_host.run(apply_prompt(png, 0))
    whole = condition(comfy_host)
    assert whole.condition_size == (192, 160) and whole.condition_latent.shape == (1, 4, 24, 24)  # 64-padded

    comfy_host.run(apply_prompt(png, 256))  # the padded 192x192 image fits one tile: encoded whole
    assert torch.equal(condition(comfy_host).condition_latent, whole.condition_latent)

    calls = Calls(monkeypatch, "encode")
    comfy_host.run(apply_prompt(png, 128))
    monkeypatch.undo()
    tiled = condition(comfy_host)
    assert calls.sizes == [(128, 128)] * 4  # latent rows 0, 8 x columns 0, 8 of the padded 192x192 image
    assert tiled.condition_size == (192, 160) and tiled.condition_latent.shape == (1, 4, 24, 24)
    assert bool(torch.isfinite(tiled.condition_latent).all())
    # latent 0-7 of rows and columns is covered by the first tile only: its own encoding (x 0.18215)
    first = node_output(comfy_host, "C", 2).encode(node_output(comfy_host, "I")[:, :128, :128]).float() * 0.18215
    assert (tiled.condition_latent[..., :8, :8] - first[..., :8, :8]).abs().max() < 1e-5
    assert not torch.equal(tiled.condition_latent, whole.condition_latent)


def test_cancel_during_tiled_condition_encode(comfy_host, model_files, png, monkeypatch):
    import comfy.model_management as mm

    prompt = apply_prompt(png, 128)
    comfy_host.run(prompt)
    reference = condition(comfy_host).condition_latent.clone()
    calls = Calls(monkeypatch, "encode", cancel_on=1)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        comfy_host.run(prompt)
    monkeypatch.undo()
    assert calls.sizes == [(128, 128)] and not mm.processing_interrupted()
    comfy_host.run(prompt)
    assert torch.equal(condition(comfy_host).condition_latent, reference)


# ------------------------------------------------------------------------------------------------ bad settings


@pytest.mark.parametrize(("tile", "stride", "message"), [
    (32, 16, r"tile_size must be 0 \(no tiling\) or a multiple of 8 of at least 64 pixels, got 32"),
    (256, 384, r"tile_stride \(384\) must not exceed tile_size \(256\): tiles would leave gaps; use 128"),
    (100000, 64, r"tile_size must be <= 8192, got 100000"),
])
def test_bad_decode_tiles_are_refused_before_the_run(comfy_host, model_files, tile, stride, message):
    prompt = decode_prompt("never")
    prompt["D"]["inputs"].update(tile_size=tile, tile_stride=stride)
    with pytest.raises(ch.PromptValidationError, match=message):
        comfy_host.run(prompt, strict=True)


def test_bad_encode_tiles_are_refused_before_the_run(comfy_host, model_files, png):
    with pytest.raises(ch.PromptValidationError,
                       match=r"vae_tile_stride \(512\) must not exceed vae_tile_size \(256\)"):
        comfy_host.run(apply_prompt(png, 256, 512), strict=True)


def test_decode_refuses_a_latent_that_is_not_sd(comfy_host, golden_host_vae):
    with pytest.raises(ValueError, match=r"expected an SD 2.1 latent of shape \(B, 4, h, w\), got \(1, 16, 8, 8\)"):
        node(comfy_host, "DiffBIRVAEDecode").execute({"samples": torch.zeros(1, 16, 8, 8)}, golden_host_vae, 512, 256)


# ------------------------------------------------------------------------------------------------ tile_plan auto


class OOMAbove:
    """Wraps comfy.sd.VAE.encode/decode (bypassing the host's own tiled fallback inside them): an out-of-memory
    error for calls whose spatial side exceeds `limit` (latent pixels for decode, image pixels for encode)."""

    def __init__(self, monkeypatch, method: str, limit: int):
        import comfy.sd

        self.sizes = []
        original = getattr(comfy.sd.VAE, method)

        def wrapped(vae, x, *args, **kwargs):
            size = tuple(x.shape[-2:]) if method == "decode" else tuple(x.shape[1:3])
            self.sizes.append(size)
            if max(size) > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return original(vae, x, *args, **kwargs)

        monkeypatch.setattr(comfy.sd.VAE, method, wrapped)


def test_auto_plan_is_untiled_when_it_fits_and_bit_identical(comfy_host, golden_host_vae, caplog, eight_gb_free):
    z = latent(64, 64, seed=2)  # a 512 x 512 image, with the machine's free memory
    (manual,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 0, 256)
    with caplog.at_level("INFO"):
        (auto,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 128, 64, "auto")
    assert torch.equal(auto, manual)
    assert "DiffBIR VAE Decode: vae_decode: untiled (512x512 px)" in caplog.text


def budget_for_tiles(side, tile):
    """A DIFFBIR_MAX_MEMORY just above what `tile` px tiles of a side x side decode need (the planner plans for
    the full-size SD 2.1 decoder, whatever the VAE here): the plan is then that tile."""
    from diffbir_core import memory

    cap = int(memory.predicted_bytes("vae_decode", side, side, tile)) + 2**20
    plan = memory.plan_stage("vae_decode", side, side, cap)
    assert plan.tile == tile, plan
    return cap, plan


def test_auto_plan_tiles_within_max_memory(comfy_host, golden_host_vae, monkeypatch, caplog, eight_gb_free):
    cap, plan = budget_for_tiles(256, 144)
    monkeypatch.setenv("DIFFBIR_MAX_MEMORY", str(cap))
    z = latent(32, 32, seed=3)
    calls = Calls(monkeypatch, "decode")
    with caplog.at_level("INFO"):
        (auto,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 0, 256, "auto")
    monkeypatch.undo()
    assert calls.sizes == [(18, 18)] * 4
    assert f"DiffBIR VAE Decode: {plan.describe()}" in caplog.text
    # a 256 px image overlaps an eighth of its side (32 px): 2 x 2 tiles of 144 px
    assert "vae_decode: 2 x 2 tiles of 144 px (stride 112), planned for" in caplog.text
    (manual,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 144, 112)
    assert torch.equal(auto, manual)


def test_cpu_auto_plan_keeps_each_call_within_the_cpu_limit(comfy_host, golden_host_vae, monkeypatch, caplog,
                                                             eight_gb_free):
    """On the CPU with 8 GB free and no DIFFBIR_MAX_MEMORY, a decode the planner predicts above
    memory.CPU_CALL_BYTES is tiled; with DIFFBIR_MAX_MEMORY set the user's budget alone decides."""
    from diffbir_core import memory  # the one copy the nodes import too

    tiles = node_module(comfy_host, "host.tiled_stage")
    monkeypatch.delenv("DIFFBIR_MAX_MEMORY", raising=False)
    assert tiles.call_limit(torch.device("cpu")) == memory.CPU_CALL_BYTES
    # a smaller limit for the test's tiny latents: 256 px untiled needs more than this, 144 px tiles less
    monkeypatch.setattr(memory, "CPU_CALL_BYTES", int(memory.predicted_bytes("vae_decode", 256, 256, 144)) + 2**20)
    z = latent(32, 32, seed=5)
    calls = Calls(monkeypatch, "decode")
    with caplog.at_level("INFO"):
        node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 0, 256, "auto")
    assert calls.sizes == [(18, 18)] * 4 and "vae_decode: 2 x 2 tiles of 144 px" in caplog.text
    monkeypatch.setenv("DIFFBIR_MAX_MEMORY", "8GB")
    assert tiles.call_limit(torch.device("cpu")) is None and tiles.call_limit(torch.device("meta")) is None
    calls.sizes.clear()
    node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 0, 256, "auto")
    assert calls.sizes == [(32, 32)]


def test_out_of_memory_in_decode_retries_with_smaller_tiles(comfy_host, golden_host_vae, monkeypatch, caplog):
    z = latent(24, 32, seed=4)
    (want,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 88, 56)
    oom = OOMAbove(monkeypatch, "decode", limit=16)
    with caplog.at_level("WARNING"):
        (got,) = node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 0, 256)
    monkeypatch.undo()
    # untiled (24x32 latent) fails, 144 px tiles (latent 18) fail, 88 px tiles run (the planner's grids, each
    # retry at most 3/4 the side of the last): the manual 88 px result
    assert oom.sizes[:2] == [(24, 32), (18, 18)] and set(oom.sizes[2:]) == {(11, 11)}
    assert torch.equal(got, want)
    assert "vae_decode: out of memory with untiled tiles; retrying with 144 px tiles" in caplog.text
    assert "retrying with 88 px tiles" in caplog.text
    oom = OOMAbove(monkeypatch, "decode", limit=4)
    with pytest.raises(MemoryError, match=r"vae_decode ran out of memory at every tile size tried .*smallest 64 px"):
        node(comfy_host, "DiffBIRVAEDecode").execute({"samples": z}, golden_host_vae, 0, 256)


def test_out_of_memory_in_condition_encode_retries_with_smaller_tiles(comfy_host, model_files, png, monkeypatch):
    comfy_host.run(apply_prompt(png, 112, 88))
    want = condition(comfy_host).condition_latent.clone()
    prompt = apply_prompt(png, 0)
    prompt["A"]["inputs"]["vae_tile_plan"] = "manual"
    oom = OOMAbove(monkeypatch, "encode", limit=128)
    comfy_host.run(prompt)
    monkeypatch.undo()
    # the 64-padded 192x192 image fails whole, then every 112 px tile (stride 88: the planner's first grid)
    # runs: the manual 112 px tiled latent
    assert oom.sizes[0] == (192, 192) and set(oom.sizes[1:]) == {(112, 112)}
    assert torch.equal(condition(comfy_host).condition_latent, want)


def test_cancel_during_an_auto_planned_decode(comfy_host, model_files, monkeypatch, eight_gb_free):
    import comfy.model_management as mm

    cap, _ = budget_for_tiles(192, 112)  # 2 x 2 tiles of 112 px
    monkeypatch.setenv("DIFFBIR_MAX_MEMORY", str(cap))
    prefix = f"vae_decode_auto_cancel_{uuid.uuid4().hex[:6]}"
    prompt = decode_prompt(prefix)
    prompt["D"]["inputs"].update(tile_size=0, tile_plan="auto")
    calls = Calls(monkeypatch, "decode", cancel_on=1)
    with pytest.raises(ch.PromptExecutionError, match="execution_interrupted"):
        comfy_host.run(prompt)
    assert calls.sizes == [(14, 14)] and not mm.processing_interrupted() and saved_images(comfy_host, prefix) == []
