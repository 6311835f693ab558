"""Batches through the DiffBIR Sampler with the tiny models: chunks, noise modes, Cancel between chunks.

* A 9-frame batch equals its frames run one by one, in both noise modes: "per frame" frame k is the frame alone
  with seed + k (the interface the CLI's clip chunks rely on), "shared" frame k is the frame alone with the seed.
  On the CPU the planner fits 8 frames of 64 px per call (2 GiB per call), so the batch runs as 8 + 1: the
  chunks are covered too.
* One progress bar over every chunk's steps; Cancel between chunks stops before the next chunk.
* Shared noise on a static clip (9 identical frames) gives 9 identical frames (bit-identical within a chunk;
  between chunks of different sizes equal to the rounding of CPU kernels that sum a batch in another order).
"""

import types

import pytest
import torch
from tiny_models import TINY_CONTROLNETS, TINY_SD21_NAME

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

FRAMES = 9
SEED = 40
SIZE = 64


def ch_module(comfy_host):
    """nodes/host/conditioning.py as the host loaded it."""
    import importlib

    package = comfy_host.node_classes["DiffBIRSampler"].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.host.conditioning")


def clip(frames: int = FRAMES, static: bool = False) -> torch.Tensor:
    """A (frames, 64, 64, 3) clip: random frames, or one random frame repeated."""
    g = torch.Generator().manual_seed(3)
    if static:
        return torch.rand(1, SIZE, SIZE, 3, generator=g).expand(frames, -1, -1, -1).contiguous()
    return torch.rand(frames, SIZE, SIZE, 3, generator=g)


@pytest.fixture(scope="module")
def tiny_parts(comfy_host, model_files):
    import nodes

    model, clip_model, vae = nodes.CheckpointLoaderSimple().load_checkpoint(TINY_SD21_NAME)[:3]
    control = comfy_host.node_classes["DiffBIRLoadModels"]().execute("none", TINY_CONTROLNETS["v2.1"], "auto")[1]
    pos = nodes.CLIPTextEncode().encode(clip_model, "a sharp photo")[0]
    neg = nodes.CLIPTextEncode().encode(clip_model, "blurry")[0]
    return model, vae, control, pos, neg


def sample(comfy_host, parts, images, seed, **changes):
    model, vae, control, pos, neg = parts
    pos, neg, model = comfy_host.node_classes["DiffBIRLAControlNetApply"]().execute(pos, neg, control, images, vae,
                                                                                  1.0, 0.0, 1.0, model=model)
    inputs = {"seed": seed, "steps": 3, "cfg": 3.0, "sampler_name": "edm_dpm++_3m_sde", "rescale_cfg": False,
              "start_point": "noise", "noise_aug": 0, "tile_size": 0, "tile_stride": 16, "tile_plan": "auto"}
    inputs.update(changes)
    return comfy_host.node_classes["DiffBIRSampler"]().execute(model, pos, neg, **inputs)[0]["samples"]


@pytest.mark.parametrize("mode", ["per frame", "shared"])
def test_a_batch_equals_its_frames_run_one_by_one(comfy_host, tiny_parts, caplog, mode):
    frames = clip()
    with caplog.at_level("INFO", logger="comfyui-diffbir"):
        batch = sample(comfy_host, tiny_parts, frames, SEED, noise_mode=mode, noise_aug=5)
    assert "diffusion: 9 frames in 2 chunks of up to 8" in caplog.text  # the chunks are exercised
    assert batch.shape == (FRAMES, 4, SIZE // 8, SIZE // 8)
    for k in range(FRAMES):
        alone = sample(comfy_host, tiny_parts, frames[k:k + 1], SEED + k if mode == "per frame" else SEED,
                       noise_aug=5)
        if k == FRAMES - 1:  # the second chunk holds this frame alone: the very same computation
            assert torch.equal(batch[k:k + 1], alone), f"frame {k} ({mode})"
        else:
            # in the first chunk the networks see the frame in a batch of 16 (8 frames x cond/uncond) instead of
            # 2: CPU kernels sum in another order, which 3 steps of the tiny random networks amplify to at most
            # ~1.3e-3 on samples up to ~16 (measured); a wrong seed or condition differs by whole units
            torch.testing.assert_close(batch[k:k + 1], alone, atol=3e-3, rtol=1e-4, msg=f"frame {k} ({mode})")
    assert not torch.allclose(batch[0], batch[1])  # different frames stay different


def test_shared_noise_on_a_static_clip_gives_identical_frames(comfy_host, tiny_parts):
    frames = clip(static=True)
    shared = sample(comfy_host, tiny_parts, frames, SEED, noise_mode="shared")
    for k in range(1, FRAMES - 1):  # the first chunk (8 frames): bit-identical
        assert torch.equal(shared[k], shared[0]), f"frame {k} differs from frame 0"
    # the second chunk (frame 8 alone) is the same computation at batch 2 instead of 16: equal to rounding
    torch.testing.assert_close(shared[FRAMES - 1], shared[0], atol=3e-3, rtol=1e-4)
    per_frame = sample(comfy_host, tiny_parts, frames, SEED)
    assert not torch.allclose(per_frame[0], per_frame[1])  # per-frame noise: the same frame varies


def test_a_single_image_draws_as_before(comfy_host, tiny_parts):
    """A batch of one is the seed's one generator in both modes (golden replay and old prompts unchanged)."""
    from diffbir_core.sampling import GeneratorNoise, batch_noise

    image = clip(1)
    a = sample(comfy_host, tiny_parts, image, SEED)
    b = sample(comfy_host, tiny_parts, image, SEED, noise_mode="shared")
    assert torch.equal(a, b)
    source = batch_noise(GeneratorNoise, SEED, 0, 1)
    assert torch.equal(source.randn((1, 4, 8, 8)), GeneratorNoise(SEED).randn((1, 4, 8, 8)))


def test_one_progress_bar_over_every_chunk_and_cancel_between_chunks(comfy_host, tiny_parts, monkeypatch):
    import comfy.model_management
    import comfy_host as ch

    module = ch.node_module(comfy_host, "sampler")
    original = module.latent_preview.prepare_callback
    seen = []

    def prepare_callback(model, steps, *args, **kwargs):
        callback = original(model, steps, *args, **kwargs)

        def recording(step, x0, x, total):
            seen.append((step, total))
            callback(step, x0, x, total)

        return recording

    monkeypatch.setattr(module.latent_preview, "prepare_callback", prepare_callback)
    sample(comfy_host, tiny_parts, clip(1), SEED, steps=2)
    grid = len(seen)  # callbacks of one run (one per grid timestep)
    assert seen == [(i, grid) for i in range(grid)]
    seen.clear()
    sample(comfy_host, tiny_parts, clip(), SEED, steps=2)  # 8 + 1 frames: two runs, one bar
    assert seen == [(i, 2 * grid) for i in range(2 * grid)]

    chunks = []
    run_chunks = module.batches.run_chunks

    def cancel_after_first(frames, size, run):
        def first_then_cancel(index, start, stop):
            chunks.append((start, stop))
            out = run(index, start, stop)
            comfy.model_management.interrupt_current_processing(True)  # as the Cancel button does
            return out

        return run_chunks(frames, size, first_then_cancel)

    # only the sampler's chunks (LAControlNet Apply runs chunks of its own)
    monkeypatch.setattr(module, "batches", types.SimpleNamespace(frames_per_chunk=module.batches.frames_per_chunk,
                                                                 run_chunks=cancel_after_first))
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(comfy_host, tiny_parts, clip(), SEED, steps=2)
    comfy.model_management.interrupt_current_processing(False)
    assert chunks == [(0, 8)]  # the second chunk never started


def test_the_vae_nodes_run_a_batch_in_chunks_within_a_memory_budget(comfy_host, tiny_parts, monkeypatch, caplog):
    """DIFFBIR_MAX_MEMORY (restore --max-memory) sized for two and a half 64 px frames: LAControlNet Apply's encode and
    DiffBIR VAE Decode run 5 frames in chunks and give what the whole batch gives (to the rounding of a batch's
    kernels)."""
    from diffbir_core import memory

    find_control = ch_module(comfy_host).find_control
    model, vae, control, pos, neg = tiny_parts
    frames = clip(5)
    apply, decode = (comfy_host.node_classes[n]() for n in ("DiffBIRLAControlNetApply", "DiffBIRVAEDecode"))
    whole = apply.execute(pos, neg, control, frames, vae, 1.0, 0.0, 1.0, vae_tile_plan="auto")[0]
    latent = {"samples": torch.randn(5, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))}
    decoded = decode.execute(latent, vae, 0, 256, "auto")[0]
    with caplog.at_level("INFO", logger="comfyui-diffbir"):
        for stage in ("vae_encode", "vae_decode"):  # a budget of 2.5 frames of this stage
            monkeypatch.setenv("DIFFBIR_MAX_MEMORY", str(int(2.5 * memory.predicted_bytes(stage, SIZE, SIZE, 0))))
            if stage == "vae_encode":
                chunked = apply.execute(pos, neg, control, frames, vae, 1.0, 0.0, 1.0, vae_tile_plan="auto")[0]
            else:
                chunked_decode = decode.execute(latent, vae, 0, 256, "auto")[0]
    assert "vae_encode: 5 frames in 3 chunks of up to 2" in caplog.text
    assert "vae_decode: 5 frames in 3 chunks of up to 2" in caplog.text
    latents = [find_control(c).condition()[0] for c in (whole, chunked)]
    torch.testing.assert_close(latents[1], latents[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked_decode, decoded, atol=1e-4, rtol=1e-4)
