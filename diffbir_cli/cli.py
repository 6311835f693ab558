"""``python -m diffbir_cli``: restore images and video clips with the shipped workflows, download their weights.

    python -m diffbir_cli restore INPUT... --out DIR [--workflow NAME] [--upscale F] [--steps N] [--seed S]
                                  [--set NODE.INPUT=VALUE ...] [--chunk-frames N] [--offline] [--models DIR]
                                  [--mirror URL] [--ray [ADDRESS]]  (share the inputs among Ray workers: ``ray_run.py``)
    python -m diffbir_cli download (--workflow NAME ... | FILE ... | --all) [--models DIR] [--mirror URL]
    python -m diffbir_cli setup [--tests] [--ray]  (set up ComfyUI, install what the main job needs, check it boots)
    python -m diffbir_cli golden FILE...  (replay official sampling golden files through the nodes: ``golden.py``)
    python -m diffbir_cli --list

``restore`` loads a graph from workflows/, converts it to an API prompt, boots ComfyUI in this process
(``COMFYUI_PATH`` or the embedded 0.3.75, see ``location.py``), fetches missing official weights
(``diffbir_weights.fetch``), then runs one prompt per input image (models stay loaded between them) and writes
``<stem>.png`` files to ``--out``. A video clip (``clips.CLIP_SUFFIXES``) runs one prompt per chunk of
``--chunk-frames`` frames and becomes ``<stem>.mp4`` with the source's frame rate and audio (``clips.py``). A
video workflow (Load Video ... Save Video) runs in its image form (``clips.frames_prompt``). ``setup`` is
``install.py``.

Exit status (``errors.py``): 0 done; 2 usage or input error (unknown workflow, an input that is not an image or
clip that decodes completely, bad --set, a value out of range); 3 weights missing with --offline (or
DIFFBIR_OFFLINE=1); 4 no usable ComfyUI (run setup); 1 anything else. Errors are one sentence on stderr
(``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pathlib
import sys
import tempfile
import time
import traceback
import warnings

from diffbir_weights.fetch import OFFLINE_ENV
from diffbir_weights.mirrors import MIRROR_ENV, MirrorError, mirror_map

from . import clips, install, location
from . import workflow as wfl
from .errors import EXIT_FAILURE, EXIT_MISSING_WEIGHTS, EXIT_NO_COMFYUI, EXIT_OK, EXIT_USAGE, CliError

# The restore usage line of --help, the module docstring and the README: INPUT and --out are required.
RESTORE_USAGE = ("%(prog)s INPUT... --out DIR [--workflow NAME] [--upscale F] [--steps N] [--seed S]\n"
                 "       [--set NODE.INPUT=VALUE ...] [--chunk-frames N] [--offline] [--cpu] [--max-memory SIZE]\n"
                 "       [--models DIR] [--mirror URL] [--ray [ADDRESS] [--ray-workers N] [--ray-cpus-per-worker N]]\n"
                 "       [-v] [--debug]")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
PRELOAD_ENV = "DIFFBIR_CLI_PRELOAD"

log = logging.getLogger("diffbir_cli")


def _say(*parts, file=None) -> None:
    print(*parts, file=file or sys.stdout, flush=True)


# --------------------------------------------------------------------------------------------- --list


def print_list() -> int:
    rows = [(wf.alias, wf.path.name, wf.description) for wf in wfl.catalogue()]
    wa = max(len(r[0]) for r in rows)
    wb = max(len(r[1]) for r in rows)
    for alias, name, text in rows:
        _say(f"{alias:<{wa}}  {name:<{wb}}  {text}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- inputs


_GIVE_IMAGES = "give PNG, JPEG, WebP, BMP or TIFF files, or a folder of them"


def _check_image(path: pathlib.Path) -> None:
    """CliError(2) naming ``path`` unless Pillow decodes every frame of it completely.

    Decoding (not only reading the header) is what finds a truncated file: Pillow opens one lazily, and ComfyUI's
    Load Image fills the missing part without a word (it retries with ``LOAD_TRUNCATED_IMAGES``, see the README).
    Pillow's own size limit stands: a header declaring more pixels than ``Image.MAX_IMAGE_PIXELS`` twice over (a
    decompression bomb) is refused before anything is decoded; a large image under that limit is decoded.
    """
    from PIL import Image, ImageFile, ImageSequence, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise CliError(f"{path} is empty (0 bytes), not an image: {_GIVE_IMAGES}", EXIT_USAGE)
    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # what another package may have set: a partial file must fail here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large but under the limit: decoded
            with Image.open(path) as img:
                img.verify()  # checksums (PNG) and structure, without decoding
            with Image.open(path) as img:
                for frame in ImageSequence.Iterator(img):
                    frame.load()
    except Image.DecompressionBombError as err:
        raise CliError(f"{path} declares {_declared_size(path)}, more than the {2 * Image.MAX_IMAGE_PIXELS} "
                       f"pixels Pillow decodes for one image (a decompression bomb?), so it is not read: give a "
                       f"smaller image ({type(err).__name__})", EXIT_USAGE) from None
    except UnidentifiedImageError:
        raise CliError(f"{path} is not an image (Pillow cannot identify its format): {_GIVE_IMAGES}",
                       EXIT_USAGE) from None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for a damaged file
        raise CliError(f"{path} is not an image that decodes completely: it is truncated or damaged "
                       f"({type(err).__name__}: {err}); copy or download it again, or open and save it in an "
                       "image editor", EXIT_USAGE) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def _declared_size(path: pathlib.Path) -> str:
    """'W x H pixels (N)' from the header alone (Pillow's open reads no pixel data), or 'a size' if unreadable."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only to read the header of a file already refused
    try:
        with Image.open(path) as img:
            w, h = img.size
        return f"{w} x {h} pixels ({w * h})"
    except Exception:  # noqa: BLE001 - the message is the point, not this detail
        return "a size"
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def collect_inputs(items: list[str]) -> list[pathlib.Path]:
    """The inputs: files as given, folders' image and clip files (by suffix, sorted, not recursive). Images are
    checked here; clips (``clips.is_clip``) by ``clips.probe``."""
    images: list[pathlib.Path] = []
    for item in items:
        path = pathlib.Path(item).expanduser()
        if path.is_dir():
            suffixes = IMAGE_SUFFIXES + clips.CLIP_SUFFIXES
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise CliError(f"the folder {path} holds no images or clips ({', '.join(suffixes)}): give image "
                               "or video files, or a folder of them", EXIT_USAGE)
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise CliError(f"the input {path} does not exist: give image files or folders of images", EXIT_USAGE)
    for path in images:
        if not clips.is_clip(path):
            _check_image(path)
    return images


def _output_stems(images: list[pathlib.Path]) -> list[str]:
    """One output stem per input; a repeated stem (same name in two folders) gets -2, -3, ..."""
    seen: dict[str, int] = {}
    stems = []
    for path in images:
        stem = path.stem
        n = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = n
        stems.append(stem if n == 1 else f"{stem}-{n}")
    return stems


# --------------------------------------------------------------------------------------------- ComfyUI


def _locate_comfyui() -> pathlib.Path:
    """COMFYUI_PATH or the embedded ComfyUI as set up by ``setup`` (never set up here: exit 4 says how)."""
    return location.user_comfyui() or location.embedded_comfyui(setup=False)


def models_dir(args) -> pathlib.Path:
    return location.models_dir(getattr(args, "models", None))


def _accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _run_preload() -> None:
    """Test-only start-up hook: DIFFBIR_CLI_PRELOAD=module:function[,module:function] runs after boot."""
    spec = os.environ.get(PRELOAD_ENV, "").strip()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        module, _, func = item.partition(":")
        try:
            getattr(importlib.import_module(module), func or "main")()
        except Exception as err:
            raise CliError(f"{PRELOAD_ENV}={item} failed ({type(err).__name__}: {err}): fix or unset it") from err


def boot_host(args, output_dir: pathlib.Path):
    from . import host as host_mod

    path = _locate_comfyui()
    user = os.environ.get(location.COMFYUI_ENV)
    enclosing = location.enclosing_comfyui()
    if not user and enclosing is not None:
        _say(f"note: this extension is installed in the ComfyUI at {enclosing}; set {location.COMFYUI_ENV}="
             f"{enclosing} to run that ComfyUI with its models (now using the embedded one)", file=sys.stderr)
    models = models_dir(args)
    extra = []
    if user and not args.models and (path / "extra_model_paths.yaml").is_file():
        extra.append(path / "extra_model_paths.yaml")  # the user's ComfyUI also finds its models there
    cpu = args.cpu or not _accelerator()
    log.info("ComfyUI %s, models %s, %s", path, models, "CPU" if cpu else "GPU")
    try:
        host = host_mod.boot(output_dir, models_dir=models, cpu=cpu, extra_model_paths=extra, path=path)
    except ImportError as err:
        raise CliError(f"ComfyUI in {path} cannot start ({type(err).__name__}: {err}): {location.SETUP_HINT}",
                       EXIT_NO_COMFYUI) from err
    _run_preload()
    return host, models


# --------------------------------------------------------------------------------------------- weights


def _files_in_host(host):
    """Find a catalogue entry as the running ComfyUI does (its model folders, extra_model_paths.yaml)."""
    folder_paths = host.m.folder_paths

    def found(entry):
        for folder in (entry.folder, *entry.alt_folders):
            try:
                full = folder_paths.get_full_path(folder, entry.name)
            except KeyError:  # a folder name this ComfyUI does not know
                full = None
            if full:
                return pathlib.Path(full)
        return None

    return found


# --------------------------------------------------------------------------------------------- restore


def _apply_options(api: dict, args, node_info) -> dict[tuple[str, str], str]:
    """Put --upscale, --steps, --seed and --set into the prompt (a value outside an input's range is an error
    naming the option); {(node id, input): the option as given} for every input they set."""
    given: dict[tuple[str, str], str] = {}

    def note(ids: list[str], table: dict, option: str, value) -> None:
        given.update({(i, table[api[i]["class_type"]]): f"{option} {value}" for i in ids})

    if args.upscale is not None:
        note(wfl.set_upscale(api, args.upscale, "--upscale", node_info), wfl.UPSCALE_INPUTS, "--upscale", args.upscale)
    if args.steps is not None:
        note(wfl.set_by_type(api, wfl.STEPS_INPUTS, args.steps, "--steps", node_info), wfl.STEPS_INPUTS, "--steps",
             args.steps)
    if args.seed is not None:
        note(wfl.set_by_type(api, wfl.SEED_INPUTS, args.seed, "--seed", node_info), wfl.SEED_INPUTS, "--seed",
             args.seed)
    for text in args.set or []:
        node, name, raw = wfl.parse_set(text)
        given[(wfl.set_input(api, node, name, raw, node_info), name)] = f"--set {text}"
    return given


def _rejected_option(err, given: dict[tuple[str, str], str]) -> CliError | None:
    """A ComfyUI validation error about an input that an option set, worded with that option (None: another
    input, the generic message then says --set or the workflow)."""
    for node_id, info in (getattr(err, "node_errors", None) or {}).items():
        for reason in info.get("errors", []):
            name = (reason.get("extra_info") or {}).get("input_name")
            option = given.get((str(node_id), name))
            if option:
                why = ": ".join(str(p) for p in (reason.get("message"), reason.get("details")) if p)
                return CliError(f"{option} is not accepted: ComfyUI rejected {name} of node {node_id} "
                                f"({info.get('class_type')}) ({why}): give {option.split()[0]} another value",
                                EXIT_USAGE)
    return None


def _saved_images(host, outputs: dict, save_ids: list[str]) -> list[pathlib.Path]:
    files = []
    for node_id in sorted(save_ids, key=lambda i: (len(i), i)):
        for image in (outputs.get(node_id) or {}).get("images", []):
            if image.get("type", "output") == "output":
                files.append(host.output_dir / image.get("subfolder", "") / image["filename"])
    return files


def _run_images(host, api: dict, images: list[pathlib.Path], out_dir: pathlib.Path, verbose: bool) -> None:
    from . import units

    todo = units.image_units(images)
    for unit in todo:
        restored = units.restore_image(host, api, unit)
        written = units.write_outputs(out_dir, unit.stem, restored.files)
        _say(units.progress_line(unit.index, len(todo), unit, written, restored.seconds))
        if verbose:
            cached = host.cached_nodes()
            prompt = restored.prompt
            _say("    reused from the previous image (not run again): "
                 + (", ".join(f"{i} {prompt[i]['class_type']}" for i in cached if i in prompt) or "nothing"))
        for line in units.text_lines(restored.texts):
            _say(line)


def _run_clips(host, api: dict, videos: dict, out_dir: pathlib.Path, chunk_frames: int) -> None:
    """Each clip through ``clips.restore_clip`` (chunks of frames, then the clip with its frame rate and audio)."""
    for index, (info, stem) in enumerate(zip(videos.values(), _output_stems(list(videos)), strict=True), 1):
        _say(f"[{index}/{len(videos)}] {info.path}: {info.frames} frames {info.width} x {info.height} at "
             f"{float(info.fps):g} fps, {'with' if info.has_audio else 'no'} audio")
        start = time.monotonic()
        dest = clips.restore_clip(host, api, info, out_dir / f"{stem}{clips.OUTPUT_SUFFIX}", chunk_frames, say=_say)
        _say(f"[{index}/{len(videos)}] {info.path} -> {dest} ({time.monotonic() - start:.1f} s)")


@contextlib.contextmanager
def _output_folder(out_dir: pathlib.Path):
    """Remove the output folder again if this run created it and a failure left it empty."""
    created = not out_dir.exists()
    try:
        yield
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def start_host(args, wf, graph: dict, mirrors, output_dir: pathlib.Path, fetch_guard=contextlib.nullcontext):
    """Boot ComfyUI, make the API prompt with the options in it and fetch its missing weights: (host, api, given)
    for ``worded_rejections``. What each Ray worker does once, too; ``fetch_guard(models)``: a context around
    the fetch (workers on one machine share its models folder)."""
    from diffbir_weights.catalogue import files_needed
    from diffbir_weights.fetch import fetch_weights

    host, models = boot_host(args, output_dir)
    if wfl.is_api_prompt(graph):
        api = graph
    else:
        try:
            api = host.workflow_to_api(graph)
        except wfl.WorkflowConversionError as err:
            raise CliError(f"the workflow {wf.path.name} does not fit the nodes of this ComfyUI ({err}): update "
                           "ComfyUI or this extension", EXIT_USAGE) from err
    api = clips.frames_prompt(api)  # a video workflow in image form: images and clip chunks alike
    given = _apply_options(api, args, host.node_info)
    with fetch_guard(models):
        fetch_weights(files_needed(wfl.string_values(api)), models, found=_files_in_host(host),
                      offline=args.offline or None, mirrors=mirrors)
    return host, api, given


@contextlib.contextmanager
def worded_rejections(given: dict[tuple[str, str], str]):
    """ComfyUI's rejection of a value that an option set, worded with that option (``_rejected_option``)."""
    from . import host as host_mod

    try:
        yield
    except host_mod.PromptValidationError as err:
        worded = _rejected_option(err, given)
        if worded is None:
            raise
        raise worded from err


def cmd_restore(args) -> int:
    if args.list:
        return print_list()
    if not args.inputs:
        raise CliError("no input image: give image files or folders, e.g. restore photo.png --workflow v2.1-sr "
                       "--out restored", EXIT_USAGE)
    if not args.out:
        raise CliError("no output folder: add --out DIR", EXIT_USAGE)
    wf = wfl.resolve(args.workflow)
    graph = wfl.load_json(wf.path)
    for text in args.set or []:
        wfl.parse_set(text)  # syntax errors before the slow start
    mirrors = mirror_map(args.mirror)
    from . import ray_run

    ray_run.check_options(args)  # before the inputs are read: Ray installed, or how to install it
    install.require()  # before the first import of PIL or torch: say "run setup", not ModuleNotFoundError
    if args.max_memory:
        from diffbir_core.memory import parse_bytes

        try:
            parse_bytes(args.max_memory)
        except ValueError as err:
            raise CliError(f"--max-memory: {err}", EXIT_USAGE) from None
        os.environ["DIFFBIR_MAX_MEMORY"] = args.max_memory  # the nodes' tile_plan auto plans within it
    inputs = collect_inputs(args.inputs)
    clips.check_chunk_frames(args.chunk_frames)  # before the slow start
    videos = {p: clips.probe(p) for p in inputs if clips.is_clip(p)}
    images = [p for p in inputs if p not in videos]
    out_dir = pathlib.Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} is a file, not a folder: give a folder for the restored images", EXIT_USAGE)
    sources = {p.resolve() for p in inputs}
    outputs = [out_dir / f"{stem}.png" for stem in _output_stems(images)]
    outputs += [out_dir / f"{stem}{clips.OUTPUT_SUFFIX}" for stem in _output_stems(list(videos))]
    for output in outputs:
        if output.resolve() in sources:
            kind = "clip" if output.suffix == clips.OUTPUT_SUFFIX else "image"
            raise CliError(f"the output {output} would overwrite an input {kind}: give another --out folder",
                           EXIT_USAGE)

    if args.ray is not None:
        from . import ray_run

        return ray_run.restore(args, wf, graph, images, out_dir, mirrors, videos)
    with tempfile.TemporaryDirectory(prefix="diffbir-cli-output-") as tmp, _output_folder(out_dir):
        host, api, given = start_host(args, wf, graph, mirrors, pathlib.Path(tmp))
        with worded_rejections(given):
            _run_images(host, api, images, out_dir, args.verbose)
            _run_clips(host, api, videos, out_dir, args.chunk_frames)
    return EXIT_OK


# --------------------------------------------------------------------------------------------- download


def cmd_download(args) -> int:
    from diffbir_weights import catalogue as weights
    from diffbir_weights.fetch import fetch_weights

    mirrors = mirror_map(args.mirror)
    entries = list(weights.CATALOGUE.values()) if args.all else []
    for name in args.workflow or []:
        wf = wfl.resolve(name)
        entries += weights.files_needed(wfl.string_values(wfl.load_json(wf.path)))
    try:
        entries += weights.files_needed(args.files, strict=True)
    except ValueError:
        unknown = ", ".join(weights.unknown_files(args.files))
        raise CliError(f"not an official DiffBIR weight file: {unknown}; give official names (see the README's "
                       "weight table) or --workflow NAME", EXIT_USAGE) from None
    entries = list(dict.fromkeys(entries))
    if not entries:
        raise CliError("nothing to download: give --workflow NAME (see --list), official file names, or --all",
                       EXIT_USAGE)
    install.require(install.DOWNLOAD_MODULES)
    models = models_dir(args)
    fetch_weights(entries, models, mirrors=mirrors, verify_present=True)
    _say(f"{len(entries)} file{'s' if len(entries) > 1 else ''} in place under {models}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- setup


def cmd_setup(args) -> int:
    install.setup(models=models_dir(args), install=not args.no_install, tests=args.tests, ray=args.ray)
    return EXIT_OK


# --------------------------------------------------------------------------------------------- golden


def cmd_golden(args) -> int:
    """Replay official sampling golden files through the nodes in ComfyUI (``golden.py``): CPU, float32, one
    thread (the small networks run 20-30x slower with two threads on a busy CPU), a temporary models folder."""
    import torch

    from . import golden
    from . import host as host_mod

    files = [pathlib.Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.with_suffix(".json").is_file()]
    if missing:
        raise CliError(f"no such golden file: {', '.join(missing)}", EXIT_USAGE)
    path = _locate_comfyui()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="diffbir-golden-") as scratch:
        scratch = pathlib.Path(scratch)
        try:
            host = host_mod.boot(scratch / "output", models_dir=scratch / "models", cpu=True, path=path)
        except ImportError as err:
            raise CliError(f"ComfyUI in {path} cannot start ({type(err).__name__}: {err}): {location.SETUP_HINT}",
                           EXIT_NO_COMFYUI) from err
        failed = golden.replay_files(host, files, out=_say)
    return EXIT_FAILURE if failed else EXIT_OK


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", metavar="DIR",
                        help="ComfyUI models folder (default: $COMFYUI_PATH/models, else <cache>/models of the "
                             "embedded ComfyUI)")
    common.add_argument("--mirror", metavar="URL",
                        help=f"download weights from a mirror: URL replaces the official scheme and host, keeping "
                             f"the path; HOST=URL[,HOST=URL] per host (default: ${MIRROR_ENV})")
    common.add_argument("-v", "--verbose", action="store_true", help="log what ComfyUI does")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    parser = argparse.ArgumentParser(
        prog="python -m diffbir_cli",
        description="DiffBIR blind image restoration from the command line: the shipped workflows run in an "
                    "in-process ComfyUI (COMFYUI_PATH, or an embedded ComfyUI set up in a cache folder).",
        epilog="exit status: 0 done, 1 failure, 2 usage or input error, 3 weights missing with --offline, "
               "4 no usable ComfyUI")
    parser.add_argument("--list", action="store_true", help="list the workflows and exit")
    sub = parser.add_subparsers(dest="command", metavar="{restore,download,setup,golden}")

    # INPUT and --out are needed unless --list is given, which argparse cannot say: not required=True (that would
    # refuse `restore --list`), but the usage and the group title say it, and cmd_restore checks it (exit 2).
    r = sub.add_parser("restore", parents=[common], help="restore images and video clips with a workflow",
                       usage=f"{RESTORE_USAGE}\n       %(prog)s --list",
                       description="Restore images and video clips with a workflow from workflows/; one prompt per "
                                   "image or chunk of frames, models loaded once; missing official weights are "
                                   "downloaded first. A clip's every frame is restored and written as <stem>.mp4 "
                                   "with its frame rate and audio.")
    needed = r.add_argument_group("required (except with --list)")
    needed.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, video clips or folders of them")
    needed.add_argument("-o", "--out", metavar="DIR",
                        help="folder for the restored images (<stem>.png) and clips (<stem>.mp4)")
    r.add_argument("-w", "--workflow", default="v2.1-sr", metavar="NAME",
                   help="workflow alias, file stem or .json path (default v2.1-sr; see --list)")
    r.add_argument("--upscale", type=float, metavar="F",
                   help="upscale factor of the photo (Stage1 SwinIR Restore, Face Detect & Align; not a Stage1 "
                        "restoring face crops)")
    r.add_argument("--steps", type=int, metavar="N", help="sampling steps (KSampler / DiffBIR Sampler)")
    r.add_argument("--seed", type=int, metavar="S", help="sampling seed (KSampler / DiffBIR Sampler)")
    r.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="set any widget: NODE is a node id, title or type (repeatable)")
    r.add_argument("--chunk-frames", type=int, default=clips.DEFAULT_CHUNK_FRAMES, metavar="N",
                   help=f"frames of a clip restored together as one batch (default {clips.DEFAULT_CHUNK_FRAMES}); "
                        "more use more memory")
    r.add_argument("--offline", action="store_true",
                   help="never use the network; say which weight files to put where when some are missing "
                        f"(also when ${OFFLINE_ENV} is 1)")
    r.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    r.add_argument("--max-memory", metavar="SIZE",
                   help="plan the tiles (tile_plan auto) for at most this much memory, e.g. 6GB; on the CPU this "
                        "replaces the 2 GiB-per-call limit")
    r.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="share the inputs among Ray workers (one per GPU, else one per --ray-cpus-per-worker "
                        "cores), each loading the models once; a local Ray without ADDRESS, else the cluster at "
                        "ADDRESS ('auto': the one `ray start` began on this machine). Skips inputs whose output is "
                        "already in --out. Needs Ray: python -m diffbir_cli setup --ray")
    r.add_argument("--ray-workers", type=int, metavar="N",
                   help="with --ray: this many workers (default: one per GPU of the cluster, else one per "
                        "--ray-cpus-per-worker cores)")
    r.add_argument("--ray-cpus-per-worker", type=int, metavar="N",
                   help="with --ray on CPUs: the cores each worker gets (torch threads; default 1)")
    r.add_argument("--list", action="store_true", help="list the workflows and exit")
    r.set_defaults(func=cmd_restore)

    d = sub.add_parser("download", parents=[common], help="download official weight files",
                       description="Download the official weight files a workflow needs (or named files) into "
                                   "the ComfyUI models folders, resuming, size- and kind-checked, SHA-256 locked; "
                                   "files already there are checked against the lock file.")
    d.add_argument("files", nargs="*", metavar="FILE", help="official file names, e.g. DiffBIR_v2.1.pt")
    d.add_argument("-w", "--workflow", action="append", help="the files of this workflow (repeatable)")
    d.add_argument("--all", action="store_true", help="every official file (many GB)")
    d.set_defaults(func=cmd_download)

    st = sub.add_parser("setup", parents=[common], help="set up ComfyUI and install the Python requirements",
                        description="Set up the ComfyUI the runner uses (COMFYUI_PATH, or the embedded ComfyUI "
                                    f"{location.COMFYUI_VERSION} extracted into a cache folder), pip-install what "
                                    "it and this extension need into this Python (saying what and how big first; "
                                    "nothing when all is there) and check that ComfyUI boots with the extension.")
    st.add_argument("--tests", action="store_true", help="also install the test requirements (tests/requirements.txt)")
    st.add_argument("--ray", action="store_true",
                    help="also install Ray, for restore --ray (optional: the main job does not need it)")
    st.add_argument("--no-install", action="store_true", help="install nothing: only set up ComfyUI and check it boots")
    st.set_defaults(func=cmd_setup)

    gd = sub.add_parser("golden", parents=[common], help="replay official sampling golden files through the nodes",
                        description="Replay official sampling golden files (tests/golden) through the product path: "
                                    "ComfyUI's own UNet and VAE, Load DiffBIR Models, LAControlNet Apply, DiffBIR "
                                    "Sampler with the recorded noise, DiffBIR VAE Decode and Color Fix; prints the "
                                    "lines of python -m diffbir_core.reference.golden with its tolerances (CPU, float32).")
    gd.add_argument("files", nargs="+", metavar="FILE", help="golden .json files (the .safetensors beside them)")
    gd.set_defaults(func=cmd_golden)
    return parser


def _short_type(name: str) -> str:
    """'…/comfyui-diffbir.diffbir_core.checkpoint.CheckpointError' -> 'CheckpointError': ComfyUI names a custom
    node's classes after the folder it imported the node pack from (a temporary folder here)."""
    return (name or "").rsplit(".", 1)[-1]


def _execution_message(err, debug: bool) -> str:
    """One sentence for a failed node; ComfyUI's traceback of it only with --debug."""
    events = getattr(err, "events", None) or []
    if not events:
        return str(err).splitlines()[0] + " (run with --debug for the traceback)"
    event, data = events[0]
    if event == "execution_interrupted":
        return f"the run was interrupted in node {data.get('node_id')} ({data.get('node_type')})"
    if debug and data.get("traceback"):
        _say("ComfyUI's traceback:\n" + "".join(data["traceback"]).rstrip(), file=sys.stderr)
    text = (str(data.get("exception_message", "")).strip().splitlines() or [""])[0]
    return (f"{data.get('node_type')} (node {data.get('node_id')}) failed: {_short_type(data.get('exception_type'))}: "
            f"{text}" + ("" if debug else " (run with --debug for ComfyUI's traceback)"))


def _message(err: BaseException, debug: bool = False) -> tuple[str, int]:
    from diffbir_weights.download import DownloadError
    from diffbir_weights.fetch import FetchError, MissingWeightsError
    from diffbir_weights.lockfile import LockFileError

    from .host import PromptExecutionError, PromptValidationError

    if isinstance(err, CliError):
        return str(err), err.code
    if isinstance(err, (wfl.WorkflowError, MirrorError)):
        return str(err), EXIT_USAGE
    if isinstance(err, location.ComfyUINotFoundError):
        return str(err), EXIT_NO_COMFYUI
    if isinstance(err, MissingWeightsError):
        return str(err), EXIT_MISSING_WEIGHTS
    if isinstance(err, (FetchError, DownloadError, LockFileError)):
        return str(err), EXIT_FAILURE
    if isinstance(err, PromptValidationError):
        lines = str(err).splitlines()
        reasons = [line for line in lines if line.startswith("node ")] or lines[1:]
        return ("ComfyUI rejected the workflow (" + "; ".join(reasons[:3]) + "): fix that value with --set "
                "NODE.INPUT=VALUE or in the workflow", EXIT_USAGE)
    if isinstance(err, PromptExecutionError):
        return _execution_message(err, debug), EXIT_FAILURE
    if isinstance(err, ImportError):  # a package missing that the quick check does not know about
        return f"{type(err).__name__}: {err}: {location.SETUP_HINT}", EXIT_NO_COMFYUI
    return f"unexpected {type(err).__name__}: {err} (run with --debug for the traceback)", EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose, debug = getattr(args, "verbose", False), getattr(args, "debug", False)
    if not (verbose or debug):  # spandrel's SwinIR calls torch.meshgrid the old way; not the user's concern
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
    handler = logging.StreamHandler(sys.stderr)
    if not (verbose or debug):  # ComfyUI logs a failed node's traceback itself; without -v the one sentence says it
        handler.addFilter(lambda record: record.name.startswith("diffbir_cli"))
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING, format="%(message)s",
                        handlers=[handler])
    try:
        if args.list and args.command is None:
            return print_list()
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args.func(args)
    except KeyboardInterrupt:
        _say("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure becomes one message and an exit status
        if debug:
            traceback.print_exc()
        message, code = _message(err, debug)
        _say(f"error: {message}", file=sys.stderr)
        return code
