"""``restore --ray [ADDRESS]``: share one restore's inputs among Ray workers, on many GPUs and machines.

Ray (https://docs.ray.io) is the engine: it starts the worker processes, places them on GPUs or cores, moves
the data and tells when a process dies. What is ours is the same unit of work as the single-process run
(``units.py``) and this driver:

* Ray: a new local instance without ADDRESS (all of this machine's cores and GPUs), else the cluster at ADDRESS
  (``auto``: the one ``ray start`` began on this machine);
* workers: one Ray actor per GPU of the cluster, else one per ``--ray-cpus-per-worker`` cores (or
  ``--ray-workers N``); each boots ComfyUI once in its process and loads the models once
  (``cli.start_host``, what the single-process run does), then restores the units it is given;
* the driver reads the inputs, hands each worker one unit at a time (so a dead worker loses at most one), writes
  every output itself, through a temporary name and a rename (``units.write_outputs``), and prints one line per
  output over all workers. Outputs already in ``--out`` are skipped, so a rerun after an interruption does the
  rest. A worker that dies (its process killed, out of memory, its machine gone) has its unit put back in the
  queue for the others and a new worker started in its place; a unit whose worker died ``MAX_TRIES`` times is
  an error naming it (it may be what kills them).

Each unit runs with the index it has in the single-process run, so its PNG is the same file, byte for byte.
Clips (``clips.py``): each chunk of ``clips.plan_chunks`` is a unit (``units.ClipChunk``), its frames kept in a
hidden folder of ``--out``; when a clip's chunks are all there, a worker assembles it (``units.ClipAssembly``:
``clips.assemble`` needs ComfyUI's video type) from the frames the driver sends, and the driver writes the clip.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time

from diffbir_weights.fetch import OFFLINE_ENV
from diffbir_weights.mirrors import MIRROR_ENV

from . import cli, clips, units
from .errors import EXIT_OK, EXIT_USAGE, CliError
from .location import CACHE_ENV, COMFYUI_ENV, REPO_ROOT


RAY_HINT = "python -m diffbir_cli setup --ray"
MAX_TRIES = 3
# What the command line reads from the environment, given to every worker (a cluster's other machines do not
# inherit the driver's environment; the repository on PYTHONPATH is how they import this package).
WORKER_ENV = (cli.PRELOAD_ENV, "DIFFBIR_MAX_MEMORY", COMFYUI_ENV, CACHE_ENV, OFFLINE_ENV, MIRROR_ENV)


def _say(*parts, file=None) -> None:
    print(*parts, file=file or sys.stdout, flush=True)


def check_options(args) -> None:
    """--ray-workers and --ray-cpus-per-worker need --ray; with it, Ray must be installed (CliError(2) else)."""
    if args.ray is None:
        if args.ray_workers is not None or args.ray_cpus_per_worker is not None:
            raise CliError("--ray-workers and --ray-cpus-per-worker share the inputs among Ray workers: add --ray",
                           EXIT_USAGE)
        return
    require_ray()


def require_ray():
    """The ``ray`` module, or CliError(2) saying how to install it (Ray is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise CliError(f"Ray is not installed: {RAY_HINT}", EXIT_USAGE) from None
    return ray


# --------------------------------------------------------------------------------------------- worker


def _fetch_lock(models: pathlib.Path):
    """One fetch at a time in a models folder: the workers on one machine share it (and its .part files)."""
    from filelock import FileLock  # a dependency of Ray (and of torch)

    models.mkdir(parents=True, exist_ok=True)
    return FileLock(str(models / ".diffbir-fetch.lock"))


class Worker:
    """A Ray actor: one booted ComfyUI with the prompt of this run. Never raises in ``__init__``: a failure to
    start is kept and raised by every call, so the driver gets the error itself (a failed constructor reaches
    it only as a dead actor)."""

    def __init__(self, args, wf, graph: dict, mirrors):
        start = time.monotonic()
        self.error: BaseException | None = None
        output = pathlib.Path(tempfile.mkdtemp(prefix="diffbir-ray-output-"))
        atexit.register(shutil.rmtree, output, True)
        try:
            self.host, self.api, self.given = cli.start_host(args, wf, graph, mirrors, output, _fetch_lock)
        except BaseException as err:  # noqa: BLE001 - handed to the driver by ready()
            self.error = err
        self.seconds = time.monotonic() - start

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def ready(self) -> dict:
        self._check()
        import comfy.model_management
        import torch

        device = str(comfy.model_management.get_torch_device())
        return {"pid": os.getpid(), "node": socket.gethostname(), "seconds": self.seconds, "device": device,
                "threads": torch.get_num_threads()}

    def restore(self, unit, data) -> tuple[list[bytes], list[tuple[str, str]], float]:
        """One unit: its output files' bytes (read and removed here), its text outputs, its seconds. ``data``:
        an image's bytes (ImageUnit), a clip's restored frames as PNG bytes (ClipAssembly), or None."""
        self._check()
        start = time.monotonic()
        texts: list[tuple[str, str]] = []
        with cli.worded_rejections(self.given), tempfile.TemporaryDirectory(prefix="diffbir-ray-clip-") as tmp:
            if isinstance(unit, units.ClipChunk):
                files = clips.restore_chunk(self.host, self.api, unit.clip, unit.start, unit.count)
            elif isinstance(unit, units.ClipAssembly):
                frames = [pathlib.Path(tmp) / f"{k:08d}.png" for k in range(len(data))]
                for path, frame in zip(frames, data, strict=True):
                    path.write_bytes(frame)
                files = [clips.assemble(pathlib.Path(tmp) / f"clip{unit.suffix}", frames, unit.clip, unit.fps)]
            else:
                restored = units.restore_image(self.host, self.api, unit, data)
                files, texts = restored.files, restored.texts
            out = []
            for path in map(pathlib.Path, files):
                out.append(path.read_bytes())
                path.unlink()
        return out, texts, time.monotonic() - start


# --------------------------------------------------------------------------------------------- driver


@contextlib.contextmanager
def _session(ray, address: str, verbose: bool):
    """Ray for this run: a new local instance (shut down after) or a connection to a cluster."""
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    options = {"runtime_env": {"env_vars": env}, "log_to_driver": verbose,
               "logging_level": logging.INFO if verbose else logging.ERROR}
    try:
        if address:
            ray.init(address=address, **options)
        else:  # "local": always a new instance, never a cluster that RAY_ADDRESS or `ray start` left around
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise CliError(f"cannot start or join {where} ({type(err).__name__}: {_first_line(err)}): start the cluster "
                       "with ray start --head (see the README's Run on a Ray cluster), or give --ray without an "
                       "address for a local Ray", EXIT_USAGE) from None
    try:
        yield
    finally:
        ray.shutdown()


def _worker_plan(ray, args, units_count: int) -> tuple[int, dict, str]:
    """(workers, actor options, what each gets in words): one per GPU, else one per --ray-cpus-per-worker
    cores; never more than there are units, and never more than the cluster has room for (they would wait)."""
    resources = ray.cluster_resources()
    gpus = 0 if args.cpu else int(resources.get("GPU", 0))
    cores = int(resources.get("CPU", 1))
    per = args.ray_cpus_per_worker or 1
    if per < 1:
        raise CliError(f"--ray-cpus-per-worker {per}: give 1 or more cores per worker", EXIT_USAGE)
    room = gpus if gpus else cores // per
    count = args.ray_workers if args.ray_workers is not None else room
    if count < 1 or count > room:
        has = f"{gpus} GPUs" if gpus else f"{cores} cores ({room} workers of {per})"
        raise CliError(f"--ray-workers {count}: the Ray cluster has room for 1 to {room} workers ({has}): give a "
                       "number in that range", EXIT_USAGE)
    if gpus:
        return min(count, units_count), {"num_cpus": 1, "num_gpus": 1}, "1 GPU"
    return min(count, units_count), {"num_cpus": per, "num_gpus": 0}, f"{per} core{'s' * (per > 1)}"


def restore(args, wf, graph: dict, images: list[pathlib.Path], out_dir: pathlib.Path, mirrors,
            videos: dict | None = None) -> int:
    """``videos``: {clip path: ``clips.ClipInfo``} (``clips.probe``), restored in chunks and assembled."""
    ray = require_ray()
    done = [u for u in units.image_units(images) if u.done(out_dir)]
    todo: list = [u for u in units.image_units(images) if not u.done(out_dir)]
    clip_done, chunks, assemblies = _clip_units(videos or {}, args, out_dir)
    if done or clip_done:
        _say(f"skipped {len(done) + clip_done} already written in {out_dir} (delete them to restore those inputs "
             "again)")
    if todo or chunks or assemblies:
        with cli._output_folder(out_dir), _session(ray, args.ray, args.verbose):
            _Driver(ray, args, wf, graph, mirrors, todo + chunks, assemblies, out_dir).run()
    return EXIT_OK


class _Driver:
    """Hands out units and writes what comes back (one unit in flight per worker)."""

    def __init__(self, ray, args, wf, graph, mirrors, todo: list, assemblies: dict, out_dir: pathlib.Path):
        """``assemblies``: {ClipAssembly: the starts of its chunks still to write}; each is queued once they are."""
        self.ray, self.out_dir, self.total = ray, out_dir, len(todo) + len(assemblies)
        self.assemblies = assemblies
        todo = [a for a, left in assemblies.items() if not left] + todo
        self.count, options, self.each = _worker_plan(ray, args, len(todo))
        self.actor = ray.remote(Worker).options(**options, max_restarts=0)
        self.make = lambda: self.actor.remote(args, wf, graph, mirrors)
        self.pending = collections.deque(todo)
        self.tries: collections.Counter = collections.Counter()
        self.workers: dict[int, object] = {}  # live workers by number (a replacement gets a new number)
        self.info: dict[int, dict] = {}
        self.idle: list[int] = []
        self.in_flight: dict = {}  # Ray object ref -> (worker number, unit or None for its ready call)
        self.numbers = itertools.count(1)
        self.written = 0

    def run(self) -> None:
        _say(f"Ray: {self.count} worker{'s' * (self.count > 1)} of {self.each} each for {self.total} input"
             f"{'s' * (self.total > 1)} (resources {_resources(self.ray)})")
        try:
            self._fill()
            while self.in_flight:
                [ref], _ = self.ray.wait(list(self.in_flight), num_returns=1)
                number, unit = self.in_flight.pop(ref)
                try:
                    value = self.ray.get(ref)
                except self.ray.exceptions.RayTaskError as err:
                    # The worker's own error (a CliError, a rejected value, a failed node): raised here as it is,
                    # it gets the message and exit status it gets in one process.
                    cause = getattr(err, "cause", None)
                    raise (cause if isinstance(cause, Exception) else CliError(_first_line(err))) from None
                except self.ray.exceptions.RayActorError as err:
                    self._died(number, unit, err)
                else:
                    if unit is None:
                        self._ready(number, value)
                    else:
                        self._write(number, unit, *value)
                self._fill()
        finally:
            for handle in self.workers.values():
                self.ray.kill(handle)

    def _start(self) -> None:
        number = next(self.numbers)
        handle = self.make()
        self.workers[number] = handle
        self.in_flight[handle.ready.remote()] = (number, None)
        self.idle.append(number)  # its first unit queues behind its start

    def _fill(self) -> None:
        while self.pending and len(self.workers) < self.count:
            self._start()
        while self.pending and self.idle:
            number = self.idle.pop(0)
            unit = self.pending.popleft()
            data = _unit_data(unit, self.out_dir)
            self.in_flight[self.workers[number].restore.remote(unit, data)] = (number, unit)

    def _ready(self, number: int, info: dict) -> None:
        self.info[number] = info
        _say(f"worker {number} ready in {info['seconds']:.1f} s: pid {info['pid']} on {info['node']}, "
             f"{info['device']} ({info['threads']} torch thread{'s' * (info['threads'] > 1)})")

    def _write(self, number: int, unit, files: list[bytes], texts, seconds: float) -> None:
        written = _write_unit(unit, files, self.out_dir)
        for assembly, left in self.assemblies.items():  # a clip whose last chunk this was: assemble it next
            if isinstance(unit, units.ClipChunk) and assembly.stem == unit.stem and unit.start in left:
                left.discard(unit.start)
                if not left:
                    self.pending.appendleft(assembly)
        self.written += 1
        _say(units.progress_line(self.written, self.total, unit, written, seconds, f"worker {number}"))
        for line in units.text_lines(texts):
            _say(line)
        self.idle.append(number)

    def _died(self, number: int, unit, err) -> None:
        """Put its unit back (once per unit: a worker's ready and restore calls both fail when it dies) and
        forget the worker; ``_fill`` starts another in its place."""
        if unit is not None:
            self.tries[unit] += 1
            if self.tries[unit] >= MAX_TRIES:
                raise CliError(f"the Ray worker restoring {unit.label} died {MAX_TRIES} times (the last: "
                               f"{_first_line(err)}): this input may be what kills it (memory?); restore it alone "
                               "without --ray to see", EXIT_USAGE) from None
            self.pending.appendleft(unit)
        if number in self.workers:
            self.ray.kill(self.workers.pop(number))
            if number in self.idle:
                self.idle.remove(number)
            pid = self.info.get(number, {}).get("pid", "?")
            what = f"while restoring {unit.label}; it goes back in the queue" if unit is not None else "starting"
            _say(f"worker {number} (pid {pid}) died {what} ({type(err).__name__})", file=sys.stderr)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _resources(ray) -> str:
    res = ray.cluster_resources()
    return ", ".join(f"{int(res[k])} {k}" for k in ("CPU", "GPU") if res.get(k)) + \
        f" on {len([n for n in ray.nodes() if n.get('Alive')])} node(s)"


# --------------------------------------------------------------------------------------------- clips


def _clip_units(videos: dict, args, out_dir: pathlib.Path) -> tuple[int, list, dict]:
    """(clips already written, the chunk units still to restore, {ClipAssembly: starts of its chunks to
    restore}): the chunks of ``clips.plan_chunks`` with the single-process run's chunk size, so that a clip
    comes out as it does there; chunks written by an interrupted run are kept."""
    if not videos:
        return 0, [], {}
    chunk_frames = args.chunk_frames
    written, chunks, assemblies = 0, [], {}
    for (path, info), stem in zip(videos.items(), cli._output_stems(list(videos)), strict=True):
        assembly = units.ClipAssembly(pathlib.Path(path), stem, clips.OUTPUT_SUFFIX, info.fps)
        if assembly.done(out_dir):
            written += 1
            continue
        todo = [units.ClipChunk(pathlib.Path(path), stem, start, count)
                for start, count in clips.plan_chunks(info, chunk_frames)]
        todo = [c for c in todo if not c.done(out_dir)]
        chunks += todo
        assemblies[assembly] = {c.start for c in todo}
    return written, chunks, assemblies


def _unit_data(unit, out_dir: pathlib.Path):
    """What the driver sends with a unit: an image's bytes; a clip's restored frames, in frame order."""
    if isinstance(unit, units.ImageUnit):
        return unit.source.read_bytes()
    if isinstance(unit, units.ClipAssembly):
        return [f.read_bytes() for f in sorted(units.ClipChunk.frames_root(out_dir, unit.stem).glob("*/*.png"))]
    return None


def _write_unit(unit, files: list[bytes], out_dir: pathlib.Path) -> list[pathlib.Path]:
    if isinstance(unit, units.ClipChunk):
        return unit.write_frames(out_dir, files)
    if isinstance(unit, units.ClipAssembly):  # the clip, then its frames are no longer needed
        final = unit.output(out_dir)
        part = final.with_name(f".{final.name}.part")
        part.write_bytes(files[0])
        os.replace(part, final)
        shutil.rmtree(units.ClipChunk.frames_root(out_dir, unit.stem), ignore_errors=True)
        return [final]
    return units.write_outputs(out_dir, unit.stem, files)
