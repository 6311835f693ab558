"""diffbir_core.tiling: the one tile loop (blend_tiles) and the one tile rule (tile_settings_error) that every
tiled stage uses (stage 1, VAE encode/decode, diffusion)."""

import pytest
import torch

from diffbir_core import stage1
from diffbir_core.tiling import decode_tiles
from diffbir_core.tiling import blend_tiles, gaussian_weights, sliding_windows, tile_settings_error


def test_one_window_covering_the_output_is_the_call_itself():
    x = torch.randn(2, 3, 20, 28)
    ticks = []
    out = blend_tiles([(0, 20, 0, 28)], lambda *w: x * 3, (20, 28), on_tile=lambda i, n: ticks.append((i, n)))
    assert torch.equal(out, x * 3) and ticks == [(0, 1)]  # bit for bit: no w * y / w rounding


def test_blend_is_the_weighted_mean_of_the_tiles():
    """Per pixel: sum of w_tile * value_tile / sum of w_tile, with the official gaussian weights."""
    torch.manual_seed(0)
    h, w, tile, stride = 24, 40, 16, 8
    windows = sliding_windows(h, w, tile, stride)
    values = {win: torch.randn(1, 2, tile, tile) for win in windows}
    out = blend_tiles(windows, lambda *win: values[win], (h, w))
    g = torch.tensor(gaussian_weights(tile, tile), dtype=torch.float32)
    num, den = torch.zeros(1, 2, h, w), torch.zeros(h, w)
    for (y0, y1, x0, x1), v in values.items():
        num[..., y0:y1, x0:x1] += v * g
        den[y0:y1, x0:x1] += g
    torch.testing.assert_close(out, num / den)
    # scale: results placed at the window times the scale (a decoder's 8x output)
    up = blend_tiles(windows, lambda *win: values[win].repeat_interleave(2, -1).repeat_interleave(2, -2),
                     (2 * h, 2 * w), scale=2)
    assert up.shape == (1, 2, 48, 80)


def test_every_stage_runs_through_the_one_loop(monkeypatch):
    """stage 1's tile runner, the VAE tiles and the tiled model calls of diffusion (both engines') all call
    tiling.blend_tiles."""
    import diffbir_core.tiling as tiling

    calls = []
    real = tiling.blend_tiles

    def spy(windows, *args, **kwargs):
        calls.append(len(windows))
        return real(windows, *args, **kwargs)

    monkeypatch.setattr(stage1, "blend_tiles", spy)
    monkeypatch.setattr(tiling, "blend_tiles", spy)
    x = torch.rand(1, 3, 64, 64)
    done = []
    y = stage1.run_tiled(lambda t: t * 2, x, 32, 16, on_tile=lambda i, n: done.append((i, n)))
    torch.testing.assert_close(y, x * 2)
    assert done == [(i, 9) for i in range(1, 10)]  # after each tile, 1-based, as before
    z = torch.randn(1, 4, 16, 16)
    decode_tiles(lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2)[:, :3], z, 8, 4)
    windows = []
    out = tiling.tiled_model_call(lambda t, window: windows.append(window) or t * 2, z, 8, 4)
    torch.testing.assert_close(out, z * 2)
    assert windows == tiling.sliding_windows(16, 16, 8, 4)
    assert calls == [9, 9, 9]


@pytest.mark.parametrize("size, stride, message", [
    (0, 0, None),
    (512, 256, None),
    (64, 8, None),
    (32, 16, r"tile_size must be 0 \(no tiling\) or a multiple of 8 of at least 64 pixels, got 32"),
    (100, 16, r"tile_size must be 0 \(no tiling\) or a multiple of 8 of at least 64 pixels, got 100"),
    (512, 12, r"tile_stride must be a positive multiple of 8 pixels, got 12"),
    (256, 384, r"tile_stride \(384\) must not exceed tile_size \(256\): tiles would leave gaps; use 128"),
])
def test_one_tile_rule(size, stride, message):
    """One rule (one minimum, MIN_TILE) for every tiled stage of every node."""
    error = tile_settings_error(size, stride)
    if message is None:
        assert error is None
    else:
        assert error is not None and __import__("re").search(message, error), error


def test_holds_a_tile_is_the_official_tiny_input_rule():
    """The official main code tiles only an input of at least one tile in both sides; both engines ask this."""
    from diffbir_core.tiling import holds_a_tile

    assert holds_a_tile(64, 64, 64) and holds_a_tile(80, 64, 64)
    assert not holds_a_tile(63, 128, 64) and not holds_a_tile(128, 56, 64)
