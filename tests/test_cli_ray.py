"""``restore --ray``: the command line's inputs shared among Ray workers (``diffbir_cli/ray_run.py``).

Run as a user runs it, ``python -m diffbir_cli`` in a subprocess, on a local Ray of 2 CPU workers with the tiny
models of tests/test_cli.py: a folder of 6 images and a 5-frame clip restores to the same files as the
single-process run (the images byte for byte, the clip frame for frame: ``_assert_same_clip``; both runs with one
``--max-memory``, so that both plan the same batch splits), while one worker
is killed (SIGKILL) after the first output: its unit goes to another worker, every output is written exactly once;
a rerun skips all 7 without starting Ray. Without Ray, ``--ray`` says how to install it.

Ray is an optional extra: ``python -m diffbir_cli setup --tests --ray`` installs it (CI does). Without it the
Ray run skips and says so, except under CI (``CI`` set), where it fails: CI must not pass without running it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffbir_cli import install
from diffbir_cli.ray_run import RAY_HINT
from sample_images import photo_bytes, write_clip
from test_cli import REPO, TINY_RUN, cli, cli_models, error_line, payloads  # noqa: F401 - fixtures

try:
    import ray
except ImportError:
    ray = None

STAGE1 = "realesrgan_s4_swinir_100k.pth"
RUN = [*TINY_RUN[:-1], "--offline"]  # without -v: the workers' logs stay in Ray's log folder
SIZES = [(48, 40), (40, 32), (32, 48), (40, 40), (56, 32), (32, 40)]


def _env() -> dict:
    from diffbir_cli import cli as cli_mod

    return {cli_mod.PRELOAD_ENV: "tiny_models:register_tiny_sd21"}


def test_ray_not_installed_says_how_to_install_it(tmp_path):
    """``import ray`` failing (sys.modules['ray'] = None is what an absent package looks like to an import)."""
    png = tmp_path / "in.png"
    png.write_bytes(photo_bytes("PNG"))
    code = ("import sys; sys.modules['ray'] = None; from diffbir_cli.cli import main; "
            f"sys.exit(main(['restore', {str(png)!r}, '--out', {str(tmp_path / 'out')!r}, '--ray']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert error_line(proc, 2) == f"error: Ray is not installed: {RAY_HINT}"
    assert RAY_HINT == "python -m diffbir_cli setup --ray"
    assert not (tmp_path / "out").exists()
    line = error_line(cli("restore", png, "--out", tmp_path / "out", "--ray-workers", "2"), 2)
    assert line == "error: --ray-workers and --ray-cpus-per-worker share the inputs among Ray workers: add --ray"


def test_setup_ray_installs_ray_only_when_asked(tmp_path):
    with_ray = install.requirement_args(tmp_path, tests=True, ray=True)
    assert with_ray[-1] == install.RAY_REQUIREMENT and with_ray[-1].startswith("ray")
    assert not any(a.startswith("ray") for a in install.requirement_args(tmp_path, tests=True))
    helped = cli("setup", "--help")
    assert helped.returncode == 0 and "--ray" in helped.stdout


def _need_ray() -> None:
    if ray is None:
        if os.environ.get("CI"):
            pytest.fail(f"Ray is not installed, and CI must run this test: {RAY_HINT}")
        pytest.skip(f"Ray is not installed: {RAY_HINT} (CI installs it and fails here without it)")


def test_a_workers_error_is_the_one_sentence_of_the_single_process_run(tmp_path, cli_models, payloads):
    """A value out of range found in the worker (its host checks it): the same error line and exit status."""
    _need_ray()
    (cli_models / "diffbir" / STAGE1).write_bytes(payloads["swinir"])
    png = tmp_path / "in.png"
    png.write_bytes(photo_bytes("PNG"))
    proc = cli("restore", png, "--out", tmp_path / "out", "--models", cli_models, *RUN, "--steps", "0", "--ray",
               "--ray-workers", "1", env=_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --steps 0 is out of range: steps of node 10 "
                                                          "('DiffBIR Sampler', DiffBIRSampler) takes a value from 1"), \
        proc.stderr
    assert not (tmp_path / "out").exists()


def _lines(proc_out: str, pattern: str) -> list[re.Match]:
    return [m for m in (re.match(pattern, line) for line in proc_out.splitlines()) if m]


def test_ray_restores_the_same_files_and_survives_a_killed_worker(tmp_path, cli_models, payloads):
    _need_ray()
    from PIL import Image

    (cli_models / "diffbir" / STAGE1).write_bytes(payloads["swinir"])
    inputs, single, spread = tmp_path / "in", tmp_path / "single", tmp_path / "ray"
    inputs.mkdir()
    for k, size in enumerate(SIZES):
        Image.effect_noise(size, 40 + 5 * k).convert("RGB").save(inputs / f"img{k}.png")
    names = sorted(f"img{k}.png" for k in range(len(SIZES)))
    # and a 5-frame clip (issue 27.4) restored in 2 chunks of 3 frames, then assembled: 3 units of their own on Ray
    write_clip(inputs / "clip.mp4", frames=5, size=(48, 32))
    names, units_total = sorted([*names, "clip.mp4"]), len(SIZES) + 3
    # One memory budget for both runs: the planner sizes a chunk's batch (and tiles) by the free memory, which the
    # Ray workers share, and a batch split differently rounds differently (a 1-level change re-encodes the clip to
    # other bytes; seen in CI). At 300 MB the plan (diffusion 1 frame per call, VAE decode 2, nothing tiled) is the
    # same whenever at least ~250 MB are free.
    run = [*RUN, "--chunk-frames", "3", "--max-memory", "300MB"]

    start = time.monotonic()
    proc = cli("restore", inputs, "--out", single, "--models", cli_models, *run, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single_s = time.monotonic() - start
    assert sorted(p.name for p in single.iterdir()) == names

    # The Ray run; the first worker to write an output is killed at once (it has its next image in hand).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(_env(), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])))
    stderr = tmp_path / "ray.stderr"
    start = time.monotonic()
    with stderr.open("w") as err_file:
        child = subprocess.Popen([sys.executable, "-m", "diffbir_cli", "restore", str(inputs), "--out", str(spread),
                                  "--models", str(cli_models), *run, "--ray", "--ray-workers", "2"], cwd=REPO,
                                 env=env, stdout=subprocess.PIPE, stderr=err_file, text=True)
        out, pids, killed = [], {}, None
        try:
            for line in child.stdout:
                out.append(line)
                ready = re.match(r"worker (\d+) ready in [\d.]+ s: pid (\d+) ", line)
                if ready:
                    pids[ready[1]] = int(ready[2])
                written = re.match(r"\[1/\d+\] .* \(.*, worker (\d+)\)$", line.rstrip())
                if written and killed is None:
                    killed = pids[written[1]]
                    os.kill(killed, signal.SIGKILL)
            code = child.wait(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
    ray_s = time.monotonic() - start
    out, err = "".join(out), stderr.read_text()
    assert code == 0, out + err
    assert killed is not None and len(pids) >= 3, out  # 2 workers, then the replacement of the killed one
    died = _lines(err, r"worker (\d+) \(pid (\d+)\) died while restoring (.+?); it goes back in the queue")
    assert len(died) == 1 and int(died[0][2]) == killed, err

    written = _lines(out, rf"\[(\d+)/{units_total}\] (.+?) -> (\S+) \(")
    assert [int(m[1]) for m in written] == list(range(1, units_total + 1)), out  # one progress line, all workers
    finals = [Path(m[3]).name for m in written if ".frames" not in m[3]]  # not a clip's chunk of frames
    assert sorted(finals) == names  # each output written once
    assert died[0][3] in [m[2] for m in written]  # the lost image was restored by another worker
    assert sorted(p.name for p in spread.iterdir()) == names  # no temporary file left
    for name in names:
        if name != "clip.mp4":
            assert (spread / name).read_bytes() == (single / name).read_bytes(), name
    _assert_same_clip(spread / "clip.mp4", single / "clip.mp4")

    before = {p.name: p.stat().st_mtime_ns for p in spread.iterdir()}
    start = time.monotonic()
    again = cli("restore", inputs, "--out", spread, "--models", cli_models, *run, "--ray", env=_env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip() == f"skipped {len(names)} already written in {spread} (delete them to restore " \
                                   "those inputs again)"
    assert {p.name: p.stat().st_mtime_ns for p in spread.iterdir()} == before
    print(f"\nray test: single process {single_s:.1f} s, 2 Ray workers with one killed {ray_s:.1f} s, "
          f"rerun {time.monotonic() - start:.1f} s")


def _assert_same_clip(got: Path, want: Path) -> None:
    """The same clip as the single-process run: frame count, rate and audio packets exactly, and every frame's
    pixels within 5 levels on average. Not byte for byte: about one run in ten on a loaded two-core machine, one
    of the two runs restores a chunk's later frames a level apart (CPU rounding; seen in CI and here, the cause not
    found), and H.264 spreads that over the frame (mean 2.5, max 43 levels in the case kept); a frame out of place,
    lost or from another chunk differs by 50 or more."""
    import av
    import numpy as np

    def read(path):
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            audio = [bytes(p) for s in container.streams if s.type == "audio" for p in container.demux(s)]
        with av.open(str(path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)
        return frames, rate, audio

    (frames, rate, audio), (frames0, rate0, audio0) = read(got), read(want)
    assert (frames.shape, rate, audio) == (frames0.shape, rate0, audio0)
    mean = np.abs(frames - frames0).mean(axis=(1, 2, 3))
    assert mean.max() < 5, f"mean level difference per frame {mean.round(2).tolist()}"


def test_ray_auto_without_a_cluster_says_how_to_start_one(tmp_path):
    _need_ray()
    png = tmp_path / "in.png"
    png.write_bytes(photo_bytes("PNG"))
    line = error_line(cli("restore", png, "--out", tmp_path / "out", "--ray", "auto", env={"RAY_ADDRESS": ""}), 2)
    assert line.startswith("error: cannot start or join the Ray cluster at auto (ConnectionError: ") and \
        line.endswith("start the cluster with ray start --head (see the README's Run on a Ray cluster), or give "
                      "--ray without an address for a local Ray"), line
    assert not (tmp_path / "out").exists()
