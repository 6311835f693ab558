"""diffbir_core.memory: the planner (untiled whenever it fits, the largest tile that fits otherwise, monotonic in
the budget), its units, and the out-of-memory fallback (retries with the next smaller tile, fails naming the stage).
"""

import pytest
import torch

from diffbir_core import memory
from diffbir_core.tiling import sliding_windows

GB = 2**30


def test_small_image_with_memory_to_spare_is_untiled_in_every_stage():
    plans = memory.plan_restore(8 * GB, (512, 512), (512, 512))
    assert set(plans) == set(memory.STAGES)
    for plan in plans.values():
        assert not plan.tiled and plan.grid == (1, 1) and plan.predicted_bytes <= plan.budget_bytes
        assert plan.describe().startswith(f"{plan.stage}: untiled (512x512 px)")


@pytest.mark.parametrize("stage", memory.STAGES)
def test_tiles_are_the_fastest_grid_that_fits_and_grow_with_the_budget(stage):
    previous = None
    for free_gb in (2, 4, 6, 12, 24, 80):
        try:
            plan = memory.plan_stage(stage, 4096, 4096, free_gb * GB)
        except memory.PlanError:
            continue
        assert plan.predicted_bytes <= plan.budget_bytes
        if plan.tiled:
            # no other grid that fits is predicted faster, and the untiled call would not have fitted
            assert memory.predicted_bytes(stage, 4096, 4096, 0) > plan.budget_bytes
            chosen = memory.relative_time(stage, 4096, 4096, plan.tile, plan.stride)
            for side, stride in memory.candidate_tiles(stage, 4096, 4096):
                if memory.predicted_bytes(stage, 4096, 4096, side) <= plan.budget_bytes:
                    assert memory.relative_time(stage, 4096, 4096, side, stride) >= chosen
        side = plan.tile or 4096
        if previous is not None:
            assert side >= previous, (stage, free_gb)
        previous = side
    assert previous is not None


def test_the_largest_tile_is_not_the_fastest_once_attention_dominates():
    # a 2080 px diffusion tile (2 x 2 over 4096) evaluates fewer pixels than 512 px ones (9 x 9) but its
    # full-resolution self-attention costs more than their overlap
    assert memory.relative_time("diffusion", 4096, 4096, 2080, 2016) > memory.relative_time(
        "diffusion", 4096, 4096, 512, 448)
    # stage 1's windowed attention does not grow with the tile: there the fewest tiles are the fastest
    times = [memory.relative_time("stage1", 4096, 4096, *c) for c in memory.candidate_tiles("stage1", 4096, 4096)]
    assert times[0] == min(times)


@pytest.mark.parametrize("stage", memory.STAGES)
@pytest.mark.parametrize("size", [(2048, 2048), (4096, 4096), (1080, 1920), (600, 4000)])
def test_planned_grids_cover_the_image_with_a_narrow_overlap(stage, size):
    h, w = size
    candidates = memory.candidate_tiles(stage, h, w)
    assert candidates and candidates == sorted(candidates, reverse=True)
    long_side = max(h, w)
    for side, stride in candidates[:6]:
        assert side % memory.SIDE_MULTIPLE[stage] == 0 and side - stride == memory.OVERLAP[stage]
        windows = sliding_windows(h, w, side, stride)
        n = max(memory.tile_grid(h, w, side, stride))
        # the smallest side for its tile count: one multiple less needs more tiles across the longer side
        assert n * side - (n - 1) * memory.OVERLAP[stage] >= long_side
        assert n * (side - memory.SIDE_MULTIPLE[stage]) - (n - 1) * memory.OVERLAP[stage] < long_side
        covered = torch.zeros(h, w, dtype=torch.bool)
        for y0, y1, x0, x1 in windows:
            covered[y0:y1, x0:x1] = True
        assert covered.all()
    # what narrow overlaps buy: 2 x 2 tiles over a 2048 square evaluate at most 1.15x its pixels
    if size == (2048, 2048):
        side, stride = candidates[0]
        evaluated = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in sliding_windows(h, w, side, stride))
        assert evaluated / (h * w) <= 1.15, (stage, side)


def test_cpu_plan_keeps_every_call_within_the_cpu_limit_and_512_untiled():
    plans = memory.plan_restore(20 * GB, (512, 512), (512, 512), call_limit=memory.CPU_CALL_BYTES)
    assert not any(plan.tiled for plan in plans.values())
    big = memory.plan_restore(20 * GB, (4096, 4096), (4096, 4096), call_limit=memory.CPU_CALL_BYTES)
    unlimited = memory.plan_restore(20 * GB, (4096, 4096), (4096, 4096))
    for stage in memory.STAGES:
        assert big[stage].tiled and big[stage].predicted_bytes <= memory.CPU_CALL_BYTES, big[stage].describe()
        assert big[stage].tile <= (unlimited[stage].tile or 4096)
    assert unlimited["vae_decode"].predicted_bytes > memory.CPU_CALL_BYTES


def test_plan_for_4k_on_6_and_12_gb_gpus_and_fp16():
    six = memory.plan_restore(6 * GB, (4096, 4096), (4096, 4096), torch.float16, weights_bytes={"diffusion": 3.5 * GB})
    twelve = memory.plan_restore(12 * GB, (4096, 4096), (4096, 4096), torch.float16,
                                 weights_bytes={"diffusion": 3.5 * GB})
    for stage in memory.STAGES:
        if stage != "stage1":  # SwinIR's windowed attention is light: 4K fits 6 GB in fp16 untiled
            assert six[stage].tiled, stage
        assert (twelve[stage].tile or 4096) >= (six[stage].tile or 4096)
        print(f"6 GB : {six[stage].describe()}\n12 GB: {twelve[stage].describe()}")
    # half the bytes per activation: fp16 tiles are at least as large as fp32 ones
    fp32 = memory.plan_stage("vae_decode", 4096, 4096, 6 * GB, torch.float32)
    assert six["vae_decode"].tile >= fp32.tile


def test_grid_and_description_match_the_tile_loop():
    plan = memory.plan_stage("diffusion", 1024, 1536, 0.4 * GB)
    assert plan.tiled and plan.stride == plan.tile - memory.OVERLAP["diffusion"]
    windows = sliding_windows(1024 // 8, 1536 // 8, plan.tile // 8, plan.stride // 8)
    assert plan.grid[0] * plan.grid[1] == len(windows)
    assert plan.describe().startswith(f"diffusion: {plan.grid[0]} x {plan.grid[1]} tiles of {plan.tile} px")
    assert "planned for 410 MB free" in plan.describe()


def test_too_little_memory_names_the_stage_and_the_smallest_tile():
    with pytest.raises(memory.PlanError, match=r"vae_decode: a 4096x4096 image needs .* even in 128 px tiles"):
        memory.plan_stage("vae_decode", 4096, 4096, 1 * GB, weights_bytes=0.99 * GB)


def test_parse_bytes():
    assert memory.parse_bytes("6GB") == 6 * GB == memory.parse_bytes("6 GiB") == memory.parse_bytes("6g")
    assert memory.parse_bytes("512MB") == 512 * 2**20 and memory.parse_bytes("1.5e9") == 1_500_000_000
    with pytest.raises(ValueError, match=r"cannot read 'lots' as a memory size; write e.g. 6GB"):
        memory.parse_bytes("lots")


def test_cost_table_says_how_it_was_measured():
    for stage in memory.STAGES:
        cost = memory.COSTS[stage]
        assert cost.per_pixel > 0 and cost.per_pixel2 >= 0 and cost.fixed >= 0 and "CPU fp32" in cost.measured
        assert cost.bytes(512 * 512, 2) == pytest.approx(cost.bytes(512 * 512, 4) / 2)


# ------------------------------------------------------------------------------------------ fallback


class TileLimitedRun:
    """Raises the allocator's out-of-memory error for tiles above `limit` px (0 = untiled counts as the image)."""

    def __init__(self, limit, image=4096, error=lambda: torch.OutOfMemoryError("out of memory. Tried to allocate")):
        self.limit, self.image, self.error, self.calls = limit, image, error, []

    def __call__(self, tile, stride):
        self.calls.append((tile, stride))
        if (tile or self.image) > self.limit:
            raise self.error()
        return f"ran with {tile}"


def test_fallback_retries_with_the_next_smaller_tile():
    run, released, logged = TileLimitedRun(300), [], []
    out = memory.run_with_fallback("vae_decode", run, 0, 0, 4096, 4096, release_memory=lambda: released.append(1),
                                   log=logged.append)
    assert out == "ran with 256"
    # the planner's grids (64 px overlap), each retry at most 3/4 the side of the one that failed
    assert run.calls == [(0, 0), (2080, 2016), (1408, 1344), (872, 808), (640, 576), (472, 408), (352, 288),
                         (256, 192)]
    sides = [4096] + [tile for tile, _ in run.calls[1:]]
    assert all(b <= memory.RETRY_SHRINK * a for a, b in zip(sides, sides[1:]))
    assert len(released) == 7
    assert logged[0] == "vae_decode: out of memory with untiled tiles; retrying with 2080 px tiles"


def test_fallback_gives_up_naming_the_stage_and_smallest_tile_and_keeps_other_errors():
    with pytest.raises(MemoryError, match=r"stage1 ran out of memory at every tile size tried \(512 px, 384 px, "
                                          r"256 px, 192 px, 128 px; smallest 128 px\)"):
        memory.run_with_fallback("stage1", TileLimitedRun(64), 512, 128, 4096, 4096)
    not_memory = TileLimitedRun(64, error=lambda: ValueError("not memory"))
    with pytest.raises(ValueError, match="not memory"):
        memory.run_with_fallback("diffusion", not_memory, 512, 256, 4096, 4096)
    assert not_memory.calls == [(512, 256)]
    # an out-of-memory RuntimeError from another backend (text only) counts too; the first try keeps its stride
    mps = TileLimitedRun(300, error=lambda: RuntimeError("MPS backend out of memory"))
    assert memory.run_with_fallback("diffusion", mps, 512, 128, 1024, 1024) == "ran with 256"
    assert mps.calls == [(512, 128), (384, 320), (256, 192)]


def test_planned_diffusion_tiles_fit_the_unet_and_run_through_it():
    """The UNet halves a latent tile once per level after the first and meets its skip connections again: a
    planned tile must be a multiple of 8 latent pixels per halving (64 px for SD 2.1), or the skip concat fails."""
    from diffbir_core.arch import unet

    halvings = len(unet.OFFICIAL_CONFIG["channel_mult"]) - 1
    assert memory.SIDE_MULTIPLE["diffusion"] % (8 * 2**halvings) == 0
    for size in [(2048, 2048), (1000, 760), (128, 128)]:
        for side, _ in memory.candidate_tiles("diffusion", *size):
            assert side % (8 * 2**halvings) == 0, (size, side)
    # and a planned tile runs through a UNet with the official depth (narrow channels to stay quick)
    config = dict(unet.OFFICIAL_CONFIG, model_channels=32, num_head_channels=8, context_dim=16,
                  use_checkpoint=False)
    net = unet.build(config).eval()
    side, _ = memory.candidate_tiles("diffusion", 1000, 760)[-1]
    x = torch.randn(1, 4, side // 8, side // 8)
    with torch.no_grad():
        out = net(x, torch.tensor([10]), torch.randn(1, 3, 16))
    assert out.shape == x.shape
