"""Time the Degrade pipelines on a 1024x1024 image, per preset (target: under 2 s on a CPU).

Run from the repository root: ``python benchmarks/degrade_bench.py [--size 1024] [--seeds 3]``.
Prints, per preset, the time to draw the parameters and the mean / max time to apply them over a few
seeds (different seeds take different paths, e.g. up- or down-scaling in the Real-ESRGAN pipeline).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from diffbir_core.degrade import PRESET_NAMES, apply, draw_params, make_rng


def test_image(size: int) -> torch.Tensor:
    """Deterministic natural-ish image: smooth colour gradients, edges and fine texture."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    r = 0.5 + 0.4 * np.sin(6 * x + 2 * y)
    g = 0.5 + 0.4 * np.cos(4 * y - 3 * x)
    b = ((x * 8).astype(int) + (y * 8).astype(int)) % 2 * 0.6 + 0.2
    img = np.stack([r, g, b], -1) + 0.05 * rng.standard_normal((size, size, 3))
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    img = test_image(args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {args.size}x{args.size}")
    apply(img[:64, :64], draw_params("general", make_rng(0)))  # warm-up
    for preset in PRESET_NAMES:
        draws, times = [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            params = draw_params(preset, make_rng(seed))
            t1 = time.perf_counter()
            apply(img, params)
            t2 = time.perf_counter()
            draws.append(t1 - t0)
            times.append(t2 - t1)
        print(
            f"{preset:16s} draw {1000 * max(draws):6.2f} ms   apply mean {np.mean(times):6.3f} s   "
            f"max {max(times):6.3f} s   ({args.seeds} seeds)"
        )


if __name__ == "__main__":
    main()
