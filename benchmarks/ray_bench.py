"""``restore --ray`` against the single-process restore: images (frames) per minute, with the tiny models.

Runs ``python -m diffbir_cli restore`` as a user does, on a folder of ``--images`` small noise images with the
v2.1 workflow mapped to the tests' tiny random-weight models (tests/tiny_models.py; 1 step, x2), three ways:

* single process, 1 torch thread (and, with ``--threads T``, single process with T torch threads);
* ``--ray --ray-workers N`` (default 2), each worker 1 core (1 torch thread), on a new local Ray.

Two rates per run: **end to end** (images / wall time of the whole command: ComfyUI boot, Ray start, the
workers' boots, model loading included) and **steady** (images after the first output / time from the first
output to the last: the rate once every process is up). The ratio Ray / single process is printed for both;
the outputs of the runs with 1 torch thread per process are checked byte-equal (with more threads torch sums
in another order: the same images up to float rounding, not the same bytes). Tiny networks make this a measure of the overhead
(boots, Ray, moving images) and of how well N processes use N cores, not of real restores, where one image takes
minutes on a CPU and seconds on a GPU and the steady rate is what counts.

Run from the repository root, Ray installed (``python -m diffbir_cli setup --ray``):
``python benchmarks/ray_bench.py [--images 24] [--workers 2] [--repeats 1]`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path += [str(REPO), str(TESTS)]  # appended: the repository's nodes/ must not shadow ComfyUI's nodes.py

STAGE1 = "realesrgan_s4_swinir_100k.pth"


def _models(folder: Path) -> tuple[Path, list[str]]:
    """The tiny models of tests/test_cli.py in ``folder``; the restore options that map the workflow to them."""
    from test_cli import TINY_CONTROLNET, TINY_RUN, _pickled
    from tiny_models import TINY_SD21_NAME, write_tiny_controlnet, write_tiny_sd21

    for sub in ("checkpoints", "diffbir"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    write_tiny_sd21(folder / "checkpoints" / TINY_SD21_NAME)
    write_tiny_controlnet(folder / "diffbir" / TINY_CONTROLNET, "v2.1")
    (folder / "diffbir" / STAGE1).write_bytes(_pickled("swinir"))
    return folder, [*TINY_RUN[:-1], "--offline", "--models", str(folder)]


def _run(inputs: Path, out: Path, options: list[str], threads: int, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), DIFFBIR_CLI_PRELOAD="tiny_models:register_tiny_sd21",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    start = time.monotonic()
    stamps = []
    child = subprocess.Popen([sys.executable, "-m", "diffbir_cli", "restore", str(inputs), "--out", str(out),
                              *options, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if re.match(r"\[\d+/\d+\] ", line):
            stamps.append(time.monotonic() - start)
    err = child.stderr.read()
    if child.wait():
        raise SystemExit(f"restore {' '.join(extra)} failed:\n{err}")
    wall = time.monotonic() - start
    n = len(stamps)
    return {"wall": wall, "end_to_end": 60 * n / wall,
            "steady": 60 * (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0,
                    help="also a single-process run with this many torch threads (default: none)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three runs, interleaved (median shown)")
    args = ap.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="diffbir-ray-bench-") as tmp:
        tmp = Path(tmp)
        _, options = _models(tmp / "models")
        inputs = tmp / "in"
        inputs.mkdir()
        for k in range(args.images):
            Image.effect_noise((48 + 8 * (k % 3), 40), 40 + k).convert("RGB").save(inputs / f"frame{k:04d}.png")
        variants = {"single process, 1 thread": (1, [])}
        if args.threads > 1:
            variants[f"single process, {args.threads} threads"] = (args.threads, [])
        variants[f"Ray, {args.workers} workers of 1 core"] = (1, ["--ray", "--ray-workers", str(args.workers)])
        rows: dict[str, list[dict]] = {name: [] for name in variants}
        for round_ in range(args.repeats):
            for index, (name, (threads, extra)) in enumerate(variants.items()):
                out = tmp / f"out-{round_}-{index}"
                rows[name].append(_run(inputs, out, options, threads, extra))
                print(f"  {name}: {rows[name][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
                reference = tmp / "out-0-0"  # the first run: single process, 1 thread
                differ = [p.name for p in sorted(out.iterdir()) if p.read_bytes() != (reference / p.name).read_bytes()]
                if differ and threads == 1:
                    raise SystemExit(f"{name}: {len(differ)} outputs differ from the single-process run: {differ[:3]}")

    def median(name, key):
        return statistics.median(r[key] for r in rows[name])

    base = "single process, 1 thread"
    ray_name = list(variants)[-1]
    print(f"\n{args.images} images (tiny models, v2.1 workflow, 1 step, x2), {os.cpu_count()} cores, "
          f"median of {args.repeats}:\n")
    print("| run | wall s | images/min end to end | images/min steady | steady vs single, 1 thread |")
    print("|---|---|---|---|---|")
    for name in variants:
        print(f"| {name} | {median(name, 'wall'):.1f} | {median(name, 'end_to_end'):.1f} | "
              f"{median(name, 'steady'):.1f} | {median(name, 'steady') / median(base, 'steady'):.2f}x |")
    ratio = {key: median(ray_name, key) / median(base, key) for key in ("end_to_end", "steady")}
    print(f"\nRay / single process (1 thread): end to end {ratio['end_to_end']:.2f}x, steady {ratio['steady']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
