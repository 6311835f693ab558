"""Batches in the core: the noise of a batch's frames (diffbir_core.sampling.noise.batch_noise) and the frames per
chunk of the memory planner (diffbir_core.memory.frames_per_chunk, chunk_ranges)."""

import pytest
import torch

from diffbir_core import memory
from diffbir_core.sampling.noise import FrameNoise, GeneratorNoise, RecordedNoise, batch_noise, frame_seed

SHAPE = (4, 3, 5)


def test_per_frame_noise_is_each_frame_alone_with_seed_plus_its_index():
    noise = batch_noise(GeneratorNoise, 7, 2, 3)  # frames 2, 3, 4 of a clip
    draws = [noise.randn((3, *SHAPE)) for _ in range(2)]
    brownian = noise.brownian_sampler(torch.zeros(3, *SHAPE), 0.1, 10.0)(5.0, 2.0)
    for k in range(3):
        alone = GeneratorNoise(7 + 2 + k)
        for draw in draws:
            assert torch.equal(draw[k:k + 1], alone.randn((1, *SHAPE)))
        assert torch.equal(brownian[k:k + 1], alone.brownian_sampler(torch.zeros(1, *SHAPE), 0.1, 10.0)(5.0, 2.0))


def test_shared_noise_gives_every_frame_the_seeds_draws():
    noise = batch_noise(GeneratorNoise, 7, 5, 4, "shared")
    draw = noise.randn((4, *SHAPE))
    alone = GeneratorNoise(7).randn((1, *SHAPE))
    assert all(torch.equal(draw[k:k + 1], alone) for k in range(4))
    steps = noise.brownian_sampler(torch.zeros(4, *SHAPE), 0.1, 10.0)(5.0, 2.0)
    assert all(torch.equal(steps[k], steps[0]) for k in range(4))


def test_a_single_frame_is_the_seeds_own_source_and_replays_unchanged():
    recorded = RecordedNoise(randn=[torch.ones(1, *SHAPE)])
    assert batch_noise(lambda seed: recorded, 7, 0, 1) is recorded  # the golden replay seam sees one source
    assert torch.equal(batch_noise(GeneratorNoise, 7, 0, 1).randn((1, *SHAPE)), GeneratorNoise(7).randn((1, *SHAPE)))
    assert frame_seed(2**64 - 1, 1) == 0  # seed + k wraps inside ComfyUI's seed range


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="noise mode must be one of per frame, shared"):
        batch_noise(GeneratorNoise, 0, 0, 2, "per batch")
    with pytest.raises(ValueError, match="batch 3 from the noise of 2 frames"):
        FrameNoise([GeneratorNoise(0), GeneratorNoise(1)]).randn((3, *SHAPE))


def test_frames_per_chunk_fit_the_budget_one_frame_is_planned_for():
    one = memory.predicted_bytes("diffusion", 64, 64, 0)
    assert memory.frames_per_chunk("diffusion", 64, 64, 0, 9, 2**31, call_limit=memory.CPU_CALL_BYTES) == 8
    assert memory.frames_per_chunk("diffusion", 64, 64, 0, 9, one * 3.5) == 3
    assert memory.frames_per_chunk("diffusion", 64, 64, 0, 2, one * 100) == 2  # never more than the batch
    assert memory.frames_per_chunk("diffusion", 4096, 4096, 512, 9, one) == 1  # at least one frame
    assert memory.chunk_ranges(9, 8) == [(0, 8), (8, 9)]
    assert memory.chunk_ranges(6, 2) == [(0, 2), (2, 4), (4, 6)]
