"""Run this extension inside a real ComfyUI in this process (the command line and the tests use it).

Which ComfyUI runs is ``location.py``'s answer (``$COMFYUI_PATH`` or the embedded 0.3.75).

* ``custom_nodes_dir()`` - a temp folder holding only a ``comfyui-diffbir`` symlink to this repository.
* ``boot(output_dir, models_dir=None)`` - boot ComfyUI in this process (once) and return a ``Host``
  that validates and executes API prompts, converts UI workflows and reports /object_info data.

Only version-tolerant, introspection-based glue lives here: no ComfyUI behaviour is faked. No pytest import.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import inspect
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import uuid

from diffbir_weights.catalogue import make_model_folders

from .location import EXTENSION_NAME, REPO_ROOT, comfyui_path
from .workflow import WorkflowConversionError, workflow_to_api  # noqa: F401 - WorkflowConversionError re-exported

# Model folders redirected to ``models_dir`` (plus every folder ComfyUI itself knows in-process).
MODEL_FOLDERS = (
    "checkpoints", "controlnet", "upscale_models", "diffbir", "vae", "loras", "text_encoders",
    "clip_vision", "embeddings", "diffusion_models",
)

log = logging.getLogger("diffbir_cli.host")


class PromptValidationError(RuntimeError):
    """execution.validate_prompt rejected a prompt (a user's input error, not a failed check of ours).

    ``node_errors``: ComfyUI's own record, {node id: {"errors": [{"message", "details", "extra_info":
    {"input_name", ...}}], "class_type"}}, for a caller that words its own message.
    """

    node_errors: dict = {}


class PromptExecutionError(RuntimeError):
    """PromptExecutor reported a failed run; ``events``: ComfyUI's (event, data) error records."""

    events: tuple | list = ()


_CUSTOM_NODES_DIR: pathlib.Path | None = None


def custom_nodes_dir() -> pathlib.Path:
    """A temp folder whose only entry is ``comfyui-diffbir`` -> this repository (one per process)."""
    global _CUSTOM_NODES_DIR
    if _CUSTOM_NODES_DIR is None or not (_CUSTOM_NODES_DIR / EXTENSION_NAME).exists():
        folder = pathlib.Path(tempfile.mkdtemp(prefix="comfyui-diffbir-custom-nodes-"))
        (folder / EXTENSION_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        atexit.register(shutil.rmtree, folder, True)  # rmtree unlinks the symlink, never follows it
        _CUSTOM_NODES_DIR = folder
    return _CUSTOM_NODES_DIR


# --------------------------------------------------------------------------- in-process host


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self, needle: str) -> str:
        out = []
        for record in self.records:
            try:
                msg = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken log record must not hide the real error
                msg = str(record.msg)
            if needle in msg:
                out.append(msg)
        return "\n".join(out)


def _call_with_supported(func, *args, **kwargs):
    """Call ``func`` passing only the keyword arguments its signature accepts."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return func(*args, **kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return func(*args, **kwargs)
    return func(*args, **{k: v for k, v in kwargs.items() if k in params})


class _ZeroDefaultDict(dict):
    """cache_args for PromptExecutor: unknown keys of newer ComfyUI versions read as 0 (disabled)."""

    def __missing__(self, key):
        return 0


class Host:
    """A booted in-process ComfyUI. Create with ``boot()``."""

    def __init__(self, *, path, loop, server, executor, output_dir, models_dir, base_dir,
                 extension_module, modules):
        self.path = path
        self.loop = loop
        self.server = server
        self.executor = executor
        self.output_dir = pathlib.Path(output_dir)
        self.models_dir = pathlib.Path(models_dir) if models_dir else None
        self.base_dir = base_dir
        self.extension_module = extension_module
        self.m = modules  # namespace of ComfyUI modules: nodes, execution, server, folder_paths

    # -- records -------------------------------------------------------------------------------
    @property
    def loaded_modules(self) -> dict:
        """ComfyUI's record of successfully imported custom-node modules (name -> directory)."""
        return self.m.nodes.LOADED_MODULE_DIRS

    @property
    def node_classes(self) -> dict:
        return self.m.nodes.NODE_CLASS_MAPPINGS

    def refresh_models(self) -> None:
        """Forget ComfyUI's cached model-folder listings (files may have been added since)."""
        fp = self.m.folder_paths
        getattr(fp, "filename_list_cache", {}).clear()
        helper = getattr(fp, "cache_helper", None)
        if helper is not None and hasattr(helper, "clear"):
            helper.clear()

    # -- /object_info --------------------------------------------------------------------------
    def node_info(self, class_name: str) -> dict:
        """The dict GET /object_info gives for ``class_name`` (JSON round trip included)."""
        if class_name not in self.node_classes:
            raise KeyError(f"node type {class_name!r} is not registered in ComfyUI")
        handler = self._object_info_node_handler()
        if handler is not None:
            from aiohttp.test_utils import make_mocked_request

            request = make_mocked_request("GET", f"/object_info/{class_name}",
                                          match_info={"node_class": class_name}, app=self.server.app)
            response = self.loop.run_until_complete(handler(request))
            return json.loads(response.body)[class_name]
        method = getattr(self.server, "node_info", None)
        if callable(method):
            return json.loads(json.dumps(method(class_name)))
        raise RuntimeError("cannot find the /object_info builder in this ComfyUI's server.py")

    def _object_info_node_handler(self):
        for route in getattr(self.server, "routes", []):
            if getattr(route, "method", None) == "GET" and getattr(route, "path", None) == "/object_info/{node_class}":
                return route.handler
        return None

    # -- running prompts ----------------------------------------------------------------------
    def validate(self, prompt: dict, prompt_id: str | None = None):
        """Run execution.validate_prompt; return its (valid, error, outputs, node_errors) tuple."""
        validate_prompt = self.m.execution.validate_prompt
        params = list(inspect.signature(validate_prompt).parameters)
        values = {"prompt_id": prompt_id or str(uuid.uuid4()), "prompt": prompt,
                  "partial_execution_list": None}
        args = [values[p] for p in params if p in values]
        result = validate_prompt(*args)
        if inspect.isawaitable(result):
            result = self.loop.run_until_complete(result)
        return result

    def run(self, prompt_api: dict, *, keep_cache: bool = False, strict: bool = False) -> dict:
        """Validate and execute an API-format prompt; return ``history_result["outputs"]``.

        By default the executor's node-output cache is dropped first, so a test never gets a
        stale result (ComfyUI caches by inputs, not by model-file contents). Model folder
        listings are always refreshed. ComfyUI runs the outputs that validate and drops the
        others; ``strict`` raises PromptValidationError when any output fails validation.
        """
        prompt = copy.deepcopy(prompt_api)
        self.refresh_models()
        prompt_id = str(uuid.uuid4())
        valid = self.validate(prompt, prompt_id)
        if not valid[0] or (strict and (list(valid) + [None] * 4)[3]):
            failure = PromptValidationError(_format_validation(valid))
            failure.node_errors = (list(valid) + [None] * 4)[3] or {}
            raise failure
        outputs = list(valid[2])

        executor = self.executor
        if not keep_cache and hasattr(executor, "reset"):
            executor.reset()
        executor.success = True
        extra = {"client_id": None}
        if hasattr(executor, "execute_async"):
            self.loop.run_until_complete(executor.execute_async(prompt, prompt_id, extra, outputs))
        else:
            executor.execute(prompt, prompt_id, extra, outputs)
        self._drain_server_messages()

        errors = [(ev, data) for ev, data in getattr(executor, "status_messages", [])
                  if ev in ("execution_error", "execution_interrupted")]
        if not executor.success or errors:
            failure = PromptExecutionError(_format_execution_errors(errors))
            failure.events = errors  # ComfyUI's own records, for a caller that words its own message
            raise failure
        return executor.history_result["outputs"]

    def cached_nodes(self) -> list[str]:
        """Ids of the nodes the last ``run`` took from the executor's cache instead of executing them
        (ComfyUI's own ``execution_cached`` record)."""
        for event, data in getattr(self.executor, "status_messages", []):
            if event == "execution_cached":
                return [str(n) for n in data.get("nodes", [])]
        return []

    def _drain_server_messages(self):
        queue = getattr(self.server, "messages", None)
        with contextlib.suppress(Exception):
            while queue is not None and not queue.empty():
                queue.get_nowait()

    # -- UI workflow -> API prompt ------------------------------------------------------------
    def workflow_to_api(self, ui_workflow: dict) -> dict:
        return workflow_to_api(ui_workflow, self.node_classes, self.node_info)


def _format_validation(result) -> str:
    _, error, _, node_errors = (list(result) + [None, None, None, None])[:4]
    lines = ["ComfyUI rejected the prompt"]
    if isinstance(error, dict):
        lines.append(f"{error.get('type')}: {error.get('message')}")
        if error.get("details"):
            lines.append(str(error["details"]))
    elif error:
        lines.append(str(error))
    for node_id, info in (node_errors or {}).items():
        for reason in info.get("errors", []):
            lines.append(f"node {node_id} ({info.get('class_type')}): {reason.get('message')}: "
                         f"{reason.get('details')}")
    return "\n".join(lines)


def _format_execution_errors(errors) -> str:
    if not errors:
        return "ComfyUI execution failed (executor.success is False, no error message recorded)"
    lines = []
    for event, data in errors:
        lines.append(f"ComfyUI {event} in node {data.get('node_id')} ({data.get('node_type')}): "
                     f"{data.get('exception_type', '')}: {data.get('exception_message', '')}".rstrip())
        if data.get("traceback"):
            lines.append("".join(data["traceback"]))
    return "\n".join(lines)


_HOST: Host | None = None


def _check_preimported(name: str, comfy_dir: pathlib.Path) -> None:
    mod = sys.modules.get(name)
    if mod is None:
        return
    file = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", []) or []), None)
    if file is None or not pathlib.Path(file).resolve().is_relative_to(comfy_dir):
        raise RuntimeError(
            f"a module named {name!r} ({file}) was imported before ComfyUI booted; it shadows "
            f"ComfyUI's own {name!r} module under {comfy_dir}")


def boot(output_dir, models_dir=None, *, cpu: bool = True, extra_model_paths=(), path=None) -> Host:
    """Boot ComfyUI in this process (once; later calls return the same Host).

    output_dir: where Save Image writes. models_dir: a ComfyUI ``models`` folder put first for every
    model folder (the folders of the official files, ``diffbir_weights.catalogue.MODEL_FOLDERS``, are created).
    cpu: run on the CPU (ComfyUI's --cpu); False lets ComfyUI pick the GPU. extra_model_paths: YAML files in
    ComfyUI's extra_model_paths.yaml format to read (a user's own ComfyUI). path: the ComfyUI checkout
    (default ``comfyui_path()``). Input, temp and user folders are a fresh temp folder.
    """
    global _HOST
    if _HOST is not None:
        if models_dir is not None and _HOST.models_dir is not None \
                and pathlib.Path(models_dir) != _HOST.models_dir:
            log.warning("ComfyUI already booted with models_dir=%s; ignoring %s", _HOST.models_dir, models_dir)
        return _HOST

    path = pathlib.Path(path or comfyui_path()).resolve()
    for name in ("comfy", "nodes", "execution", "server", "folder_paths", "utils"):
        _check_preimported(name, path)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

    import comfy.options
    if hasattr(comfy.options, "enable_args_parsing"):
        comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    args = comfy.cli_args.args
    args.cpu = bool(cpu)  # must precede the first import of comfy.model_management
    args.disable_auto_launch = True
    base_dir = pathlib.Path(tempfile.mkdtemp(prefix="comfyui-diffbir-host-"))
    atexit.register(shutil.rmtree, base_dir, True)
    if hasattr(args, "base_directory"):
        args.base_directory = str(base_dir)  # keeps input/temp/user writes out of the ComfyUI tree
    output_dir = pathlib.Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    args.output_directory = str(output_dir)

    import folder_paths

    folder_paths.set_output_directory(str(output_dir))
    for name, setter in (("input", "set_input_directory"), ("temp", "set_temp_directory"),
                         ("user", "set_user_directory")):
        (base_dir / name).mkdir(exist_ok=True)
        if hasattr(folder_paths, setter):
            getattr(folder_paths, setter)(str(base_dir / name))
    # Exactly our extension: replace (do not extend) the custom_nodes search path.
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes_dir())], set())

    # nodes.py puts comfy/ first on sys.path; `utils` must resolve to ComfyUI's utils/ package first.
    import utils.extra_config

    for yaml_path in extra_model_paths:
        utils.extra_config.load_extra_path_config(str(yaml_path))
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes_dir())], set())  # yaml may add some
    if models_dir is not None:
        _register_models_dir(folder_paths, pathlib.Path(models_dir).resolve())
    import comfy.model_management  # noqa: F401
    import execution
    import nodes
    import server

    if not pathlib.Path(nodes.__file__).resolve().is_relative_to(path):
        raise RuntimeError(f"`import nodes` resolved to {nodes.__file__}, not ComfyUI's nodes.py in {path}")

    loop = asyncio.new_event_loop()
    srv = server.PromptServer(loop)  # never started: no socket is opened

    hook_breaker = None
    with contextlib.suppress(ImportError):
        import hook_breaker_ac10a0 as hook_breaker
    capture = _LogCapture()
    root_logger = logging.getLogger()
    root_logger.addHandler(capture)
    try:
        if hook_breaker is not None:
            hook_breaker.save_functions()
        result = _call_with_supported(nodes.init_extra_nodes, init_custom_nodes=True, init_api_nodes=False)
        if inspect.isawaitable(result):
            loop.run_until_complete(result)
        if hook_breaker is not None:
            hook_breaker.restore_functions()
    finally:
        root_logger.removeHandler(capture)

    ext_dir = custom_nodes_dir() / EXTENSION_NAME
    loaded = getattr(nodes, "LOADED_MODULE_DIRS", {})
    if EXTENSION_NAME not in loaded:
        details = capture.text(str(ext_dir)) or capture.text(EXTENSION_NAME) or "(no log output captured)"
        raise RuntimeError(f"ComfyUI failed to import the {EXTENSION_NAME} extension:\n{details}")
    extension_module = None
    for mod in list(sys.modules.values()):
        mod_file = getattr(mod, "__file__", None)
        if mod_file and os.path.abspath(mod_file) == str(ext_dir / "__init__.py"):
            extension_module = mod
            break

    if models_dir is not None:  # again: an extension may have (re)defined its own folders
        _register_models_dir(folder_paths, pathlib.Path(models_dir).resolve())

    cache_type = getattr(getattr(execution, "CacheType", None), "CLASSIC", False)
    executor = _call_with_supported(execution.PromptExecutor, srv, cache_type=cache_type,
                                    cache_args=_ZeroDefaultDict(lru=0, ram=0), lru_size=None)

    class _Modules:
        pass

    modules = _Modules()
    modules.nodes, modules.execution, modules.server, modules.folder_paths = nodes, execution, server, folder_paths
    _HOST = Host(path=path, loop=loop, server=srv, executor=executor, output_dir=output_dir,
                 models_dir=models_dir, base_dir=base_dir, extension_module=extension_module,
                 modules=modules)
    return _HOST


def _register_models_dir(folder_paths, models_dir: pathlib.Path) -> None:
    names = set(MODEL_FOLDERS) | {n for n in folder_paths.folder_names_and_paths if n != "custom_nodes"}
    for name in sorted(names):
        folder_paths.add_model_folder_path(name, str(models_dir / name), is_default=True)
    make_model_folders(models_dir)  # every folder an official file goes in (diffbir_weights.catalogue.MODEL_FOLDERS)


