"""Drive ComfyUI's real frontend in headless Chromium (the browser tests' harness).

Plain module (no pytest import), like comfy_host.py:

* ``find_chromium(install=True)`` - Debian's chromium (``apt-get install chromium`` as root when it is missing);
  raises ``BrowserUnavailable`` with the reason when there is none and none can be installed.
* ``frontend_server_args(frontend)`` - ``main.py`` arguments that make ComfyUI serve ``frontend``: ``"newest"``
  (the newest ``comfyui-frontend-package`` on the package index) or a version such as ``"1.32.9"``; none when
  that version is the one installed with ComfyUI (its default). Other builds are fetched with ``pip download
  --no-deps`` into the cache folder outside the repository (``cache_root()/wheels``), unpacked once into
  ``cache_root()/frontends/`` and served with ``--front-end-root``.
* ``Browser`` - playwright + that chromium; ``Browser.open(url, artifacts)`` gives a ``ComfyPage``.
* ``ComfyPage`` - one loaded frontend: ``load_workflow`` (reports missing node types), ``missing_models`` (the
  frontend's missing-models listing: files, folders, Download buttons), ``node_library_item``,
  ``insert_from_node_library``, ``open_node_help``, ``screenshot`` (into the artifacts folder).

The two frontends' page APIs differ (see ``ComfyPage``); everything here feature-detects instead of branching on
version numbers. Nothing in ComfyUI or its frontend is faked: the page is the real one, served by ``main.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

from comfy_host import EXTENSION_NAME, cache_root

ARTIFACTS_ENV = "DIFFBIR_TEST_ARTIFACTS"
FRONTEND_PACKAGE = "comfyui-frontend-package"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
VIEWPORT = {"width": 1600, "height": 1000}
READY_TIMEOUT_MS = 90_000
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BrowserUnavailable(RuntimeError):
    """No chromium on this machine and none could be installed (the browser tests skip with this reason)."""


class FrontendUnavailable(RuntimeError):
    """The requested comfyui-frontend-package build could not be fetched."""


# --------------------------------------------------------------------------- chromium


def _chromium_on_disk() -> str | None:
    env = os.environ.get("DIFFBIR_CHROMIUM")
    candidates = ([env] if env else []) + list(CHROMIUM_CANDIDATES)
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_chromium(install: bool = True) -> str:
    """Path of Debian's chromium binary (``$DIFFBIR_CHROMIUM`` first). The real binary in /usr/lib/chromium is
    preferred to the /usr/bin wrapper script, which adds flags of its own. Installs the ``chromium`` package with
    apt-get when missing and allowed (root, apt-get present); playwright's own browser downloads are not used."""
    path = _chromium_on_disk()
    if path:
        return path
    if not install:
        raise BrowserUnavailable("Debian's chromium is not installed (apt-get install chromium)")
    if not shutil.which("apt-get"):
        raise BrowserUnavailable("no chromium found and no apt-get to install it (the browser tests need "
                                 "Debian's chromium package)")
    if os.geteuid() != 0:
        raise BrowserUnavailable("no chromium found; install it as root: apt-get update && apt-get install -y "
                                 "chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = []
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        log.append(f"$ {' '.join(cmd)} (exit {proc.returncode})\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        if proc.returncode != 0:
            raise BrowserUnavailable("no chromium found and apt-get could not install it:\n" + "\n".join(log))
    path = _chromium_on_disk()
    if not path:
        raise BrowserUnavailable("apt-get installed chromium but no binary is at " + ", ".join(CHROMIUM_CANDIDATES))
    return path


# --------------------------------------------------------------------------- frontend builds


def installed_frontend_version() -> str | None:
    """The comfyui-frontend-package installed in this Python (the one ComfyUI serves by default)."""
    try:
        return importlib.metadata.version(FRONTEND_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _wheel_version(path: pathlib.Path) -> str:
    return path.name.split("-")[1]


def _version_key(version: str):
    from packaging.version import Version

    return Version(version)


def _download_frontend(spec: str, wheels: pathlib.Path) -> pathlib.Path:
    """``pip download --no-deps`` one comfyui-frontend-package wheel into ``wheels``; returns its path. pip reuses a
    wheel already in ``wheels`` ("File was already downloaded"), so only a new release costs a download."""
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--dest", str(wheels), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    named = re.findall(r"(comfyui_frontend_package-[^\s/\\]+?\.whl)", proc.stdout)
    if proc.returncode == 0 and named and (wheels / named[-1]).is_file():
        return wheels / named[-1]
    pinned = spec.partition("==")[2]
    cached = sorted(wheels.glob("comfyui_frontend_package-*.whl"), key=lambda p: _version_key(_wheel_version(p)))
    if pinned:
        cached = [p for p in cached if _wheel_version(p) == pinned]
    if cached and proc.returncode != 0:  # offline: the newest (or the pinned) wheel fetched before
        print(f"browser: pip download {spec} failed, using the cached {cached[-1].name}", file=sys.stderr)
        return cached[-1]
    raise FrontendUnavailable(f"could not download {spec} with pip (exit {proc.returncode}):\n$ {' '.join(cmd)}\n"
                              f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _unpack_frontend(wheel: pathlib.Path) -> pathlib.Path:
    """Unpack ``wheel`` once into ``cache_root()/frontends/<name-version>``; returns its ``static`` folder."""
    target = cache_root() / "frontends" / f"{FRONTEND_PACKAGE}-{_wheel_version(wheel)}"
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                rel = pathlib.PurePosixPath(info.filename)
                if info.is_dir() or ".." in rel.parts or rel.is_absolute():
                    continue
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not (tmp / "comfyui_frontend_package" / "static" / "index.html").is_file():
            raise FrontendUnavailable(f"{wheel} has no comfyui_frontend_package/static/index.html")
        try:
            os.rename(tmp, target)  # atomic: a killed run never leaves a half-unpacked build at `target`
        except OSError:
            if not (static / "index.html").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return static


def frontend_static(frontend: str) -> pathlib.Path:
    """The unpacked ``static`` folder of ``frontend`` ("newest" or a version), fetched and unpacked on demand."""
    spec = FRONTEND_PACKAGE if frontend == "newest" else f"{FRONTEND_PACKAGE}=={frontend}"
    return _unpack_frontend(_download_frontend(spec, cache_root() / "wheels"))


def frontend_server_args(frontend: str) -> tuple[list[str], str | None]:
    """(``main.py`` arguments, expected page version) for ``frontend``. A version equal to the installed package
    gets no arguments (ComfyUI's default frontend); anything else is served with ``--front-end-root``."""
    if frontend != "newest" and frontend == installed_frontend_version():
        return [], frontend
    static = frontend_static(frontend)
    version = static.parent.parent.name.rpartition("-")[2]
    return ["--front-end-root", str(static)], version


# --------------------------------------------------------------------------- workflow JSON


def workflow_node_types(workflow: dict) -> dict[str, list[str]]:
    """Node types a UI-format workflow uses -> where (``"top level"`` or ``"subgraph <name>"``), including the nodes
    inside ``definitions.subgraphs``; subgraph instances (their type is a definition's id) are left out."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    ids = {sg.get("id") for sg in subgraphs}
    found: dict[str, list[str]] = {}
    for where, nodes in [("top level", workflow.get("nodes") or [])] + [
            (f"subgraph {sg.get('name') or sg.get('id')!r}", sg.get("nodes") or []) for sg in subgraphs]:
        for node in nodes:
            node_type = node.get("type")
            if node_type and node_type not in ids:
                found.setdefault(node_type, []).append(where)
    return found


def markdown_expectations(text: str) -> tuple[str, str]:
    """(first heading, first paragraph) of a help page as plain text, for finding them in the rendered page."""
    heading = paragraph = ""
    in_code = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code or not line or line.startswith(("<", "|", "!", ">", "---")):
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            heading = heading or _plain(m.group(1))
        elif heading and not re.match(r"([-*+]|\d+\.)\s", line):
            paragraph = _plain(line)
            break
    return heading, paragraph


def _plain(markdown: str) -> str:
    """Inline markdown as the rendered text reads: images dropped, links -> their text, emphasis and code marks
    removed (``tile_size`` in plain text keeps its underscore), backslash escapes resolved."""
    # escaped characters first, set aside as private-use characters: they are text, never marks
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!<>])", lambda m: chr(0xE000 + ord(m.group(1))), markdown)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"`+([^`]*)`+", r"\1", text)
    text = re.sub(r"(\*\*|__)(\S.*?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])([*_])(\S.*?)\1(?![\w*])", r"\2", text)
    text = "".join(chr(ord(c) - 0xE000) if 0xE000 <= ord(c) < 0xE100 else c for c in text)
    return " ".join(text.split())


def _squash(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- the page

# Installed once per page: records what the frontend itself reports as missing when it configures a graph. Both
# frontends call extensions' afterConfigureGraph(missingNodeTypes) after loadGraphData (1.32.9: a list of strings
# and {type, hint} objects; 1.58: {type, nodeId, hint, ...} objects). 1.58 no longer calls
# app.showMissingNodesError on load (it queues "pending warnings" shown in its side panel), so this hook is the
# one both share.
_INSTALL_HOOK = """() => {
  if (window.__diffbirTest) return;
  window.__diffbirTest = {missing: null, configured: 0};
  window.app.registerExtension({
    name: "comfyui-diffbir.browser-tests",
    afterConfigureGraph(missing) {
      window.__diffbirTest.configured += 1;
      window.__diffbirTest.missing = (missing || []).map(m => typeof m === "string" ? m
        : (m.type + (m.hint ? " " + m.hint : "")));
    },
  });
}"""

_READY = """() => {
  const app = window.app;
  if (!app || !window.LiteGraph || !window.LiteGraph.registered_node_types) return false;
  // 1.32.9: app.graph / app.canvas; 1.58: also isGraphReady and rootGraph (app.canvas is a getter that throws
  // before the canvas exists): feature-detect.
  if (typeof app.isGraphReady === "boolean" && !app.isGraphReady) return false;
  let graph = null;
  try { graph = app.rootGraph || app.graph; } catch (e) { return false; }
  if (!graph) return false;
  let canvas = null;
  try { canvas = app.canvas; } catch (e) { return false; }
  return !!canvas && Object.keys(window.LiteGraph.registered_node_types).length > 0 && !!app.extensionManager;
}"""

# The frontends validate a loaded workflow against their schema (setting Comfy.Validation.Workflows, on by
# default): 1.32.9 shows "Invalid workflow against zod schema" in an alert toast, 1.58 passes it to console.warn.
_INVALID = re.compile(r"Invalid workflow against zod schema|does not contain a valid version", re.I)
_TOASTS = ".p-toast-message, [data-sonner-toast], [role=alert]"

_GRAPH_NODES = """() => app.graph.nodes.map(n => ({id: String(n.id), type: n.type, title: n.title,
    subgraph: !!n.subgraph, errors: !!n.has_errors}))"""

_INNER_TYPES = r"""(id) => {
  const node = app.graph.getNodeById(id);
  const out = [];
  const seen = new Set();
  const walk = (sg, where) => {
    if (!sg || seen.has(sg.id)) return;
    seen.add(sg.id);
    for (const n of sg.nodes) {
      if (n.subgraph) walk(n.subgraph, where + "/" + (n.title || n.type));
      else out.push({type: n.type, where, registered: n.type in LiteGraph.registered_node_types,
                     errors: !!n.has_errors,
                     // a file widget naming a file the server does not list: the newest frontends flag the node
                     // (missing models), which says nothing against the node itself
                     missing_files: (n.widgets || []).filter(w => Array.isArray(w.options?.values)
                       && typeof w.value === "string" && /\.(safetensors|sft|ckpt|pth|pt)$/.test(w.value)
                       && !w.options.values.includes(w.value)).map(w => w.value)});
    }
  };
  walk(node && node.subgraph, node ? node.title : "?");
  return out;
}"""

_TREE_ANCESTORS = """(el) => {
  // Folders above a node-library leaf. 1.32.9 nests <li role=treeitem>; 1.58 renders a flat, virtualised list
  // of treeitems with aria-level and data-index: take the nearest earlier item of a lower level, repeatedly.
  const item = el.closest('[role=treeitem]');
  if (!item) return [];
  const root = item.closest('[role=tree]') || item.closest('.side-bar-panel') || document;
  const all = [...root.querySelectorAll('[role=treeitem]')];
  const idx = e => e.hasAttribute('data-index') ? Number(e.getAttribute('data-index')) : all.indexOf(e);
  const flat = all.every(e => e.hasAttribute('data-index'));
  const ordered = flat ? all.slice().sort((a, b) => idx(a) - idx(b)) : all;
  const label = e => e.getAttribute('aria-label') || (e.querySelector('span') || e).innerText.split('\\n')[0];
  const out = [];
  let level = Number(item.getAttribute('aria-level') || 0);
  for (let i = ordered.indexOf(item) - 1; i >= 0 && level > 1; i--) {
    const l = Number(ordered[i].getAttribute('aria-level') || 0);
    if (l && l < level) { out.push(label(ordered[i]).trim()); level = l; }
  }
  return out;
}"""


# The missing-models listing, read from the page. 1.32.9: the "Missing Models" modal dialog, a PrimeVue listbox
# (``.comfy-missing-models``) with one ``[role=option]`` per file, labelled "directory / name" (the URL in the
# label's title), a "Download (?)" button (disabled with the reason beside it in a message) and "Copy URL".
# 1.58: the right side panel's Issues tab, section ``[data-testid=error-group-missing-model]``, one row per file
# (a MissingModelRow: the name in an element titled with it, under it "directory" or "directory · size", and a
# ``[data-testid=missing-model-download]`` button only where the frontend allows the download). Returns null while
# neither is shown.
_MISSING_MODELS = """() => {
  const shown = e => !!e && e.getClientRects().length > 0;
  const text = e => (e ? e.innerText : '').replace(/\\s+/g, ' ').trim();
  const button = b => b ? {text: text(b), label: b.getAttribute('aria-label') || '', title: b.title || '',
                           enabled: !b.disabled && b.getAttribute('aria-disabled') !== 'true'} : null;
  const list = document.querySelector('.comfy-missing-models');
  if (shown(list)) {
    const dialog = list.closest('[role=dialog]') || list.parentElement;
    const heading = [...dialog.querySelectorAll('h1, h2, h3')].map(text).find(t => t) || '';
    const rows = [...list.querySelectorAll('[role=option]')].map(o => {
      const label = o.querySelector('span[title]') || o;
      return {label: text(label), url: label.title || '', text: text(o),
              note: [...o.querySelectorAll('.p-message, [role=alert]')].map(text).join(' | '),
              download: button([...o.querySelectorAll('button')].find(b => /download/i.test(b.innerText)))};
    });
    return {where: 'dialog', heading, text: text(dialog), rows};
  }
  const section = document.querySelector('[data-testid=error-group-missing-model]');
  if (shown(section)) {
    const heading = text(section.querySelector('button[aria-expanded]')) || '';
    const rowEls = [...section.querySelectorAll(
      '[data-testid=missing-model-importable-rows] > *, [data-testid=missing-model-import-not-supported-section] > *')]
      .filter(r => r.querySelector('[data-testid=missing-model-download], [data-testid=missing-model-locate], '
                                   + '[title]'));
    const rows = rowEls.map(r => {
      const name = [...r.querySelectorAll('[title]')].find(e => text(e) && text(e) === e.title.trim());
      const meta = name && name.parentElement ? name.parentElement.nextElementSibling : null;
      return {label: text(name), meta: text(meta), text: text(r), note: '',
              download: button(r.querySelector('[data-testid=missing-model-download]'))};
    });
    return {where: 'issues panel', heading, text: text(section), rows,
            download_all: button(section.querySelector('[data-testid=missing-model-download-all]'))};
  }
  return null;
}"""

_SCROLL_LISTING_TO_END = """() => {
  const list = document.querySelector('.comfy-missing-models .p-listbox-list-container');
  if (!list || list.scrollHeight <= list.clientHeight + 1) return false;
  list.scrollTop = list.scrollHeight;
  return true;
}"""

# 1.58's notice after loading a workflow with problems: "N issues found" with a "View details" button that opens
# the right side panel's Issues tab.
_ERROR_OVERLAY = "[data-testid=error-overlay]"
_ERROR_OVERLAY_DETAILS = "[data-testid=error-overlay-see-errors]"
_ERROR_OVERLAY_DISMISS = "[data-testid=error-overlay-dismiss]"


@dataclasses.dataclass
class LoadResult:
    """What loading one workflow into the canvas gave."""

    name: str
    reported_missing: list[str]      # the frontend's own list (afterConfigureGraph)
    unregistered: dict[str, list[str]]  # types in the JSON that LiteGraph does not know -> where
    node_count: int
    dialogs: list[str] = dataclasses.field(default_factory=list)  # modal dialogs closed after loading (texts)
    invalid: list[str] = dataclasses.field(default_factory=list)  # the frontend's schema-validation complaints
    screenshot: pathlib.Path | None = None

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.reported_missing) | {f"{t} ({', '.join(w)})" for t, w in self.unregistered.items()})


@dataclasses.dataclass
class HelpResult:
    node_type: str
    route: str                      # how the help was opened (selection toolbox / node library)
    text: str                       # the help panel's text
    headings: list[str]             # heading elements in it
    doc_responses: list[tuple[int, str]]  # (status, url) of the /extensions/<pack>/docs/... requests
    screenshot: pathlib.Path | None = None


@dataclasses.dataclass
class MissingModelRow:
    """One file of the frontend's missing-models listing, as shown."""

    name: str                       # the file name shown
    directory: str | None           # the folder shown with it (None: none shown)
    text: str                       # the row's whole text
    download: str | None            # its Download button: "enabled", "disabled", or None where there is none
    note: str = ""                  # 1.32.9: the message beside the row (why Download is disabled)
    url: str = ""                   # 1.32.9: the URL in the label's tooltip


@dataclasses.dataclass
class MissingModelsView:
    """What the frontend showed about missing model files after loading a workflow."""

    where: str | None               # "dialog" (1.32.9's modal), "issues panel" (1.58's right side panel) or None
    heading: str                    # the dialog's title / the panel section's title
    notice: str                     # 1.58: the toast that led to the panel ("6 issues found ...")
    rows: list[MissingModelRow]
    text: str                       # the dialog's / section's whole text
    download_all: str | None = None  # 1.58: "Download all" ("enabled"/"disabled"), None where absent
    seconds: float = 0.0            # from loadGraphData to the listing read
    screenshot: pathlib.Path | None = None

    def by_name(self) -> dict[str, list[MissingModelRow]]:
        out: dict[str, list[MissingModelRow]] = {}
        for row in self.rows:
            out.setdefault(row.name, []).append(row)
        return out


class ComfyPage:
    """One ComfyUI page in one frontend build.

    Page-API differences met between frontend 1.32.9 and 1.58.x (feature-detected, not version-switched):

    * readiness: 1.58 adds ``app.isGraphReady`` and ``app.rootGraph``; its ``app.canvas`` is a getter that throws
      until the canvas exists. 1.32.9 has ``app.graph`` / ``app.canvas`` from ``setup()`` on.
    * missing nodes: 1.32.9's ``loadGraphData`` calls ``app.showMissingNodesError`` (a modal dialog); 1.58 does
      not call it on load, it records pending warnings shown as a "Missing Node Packs" toast and in the right side
      panel's Issues tab. Both call extensions' ``afterConfigureGraph(missingNodeTypes)``: that is read here.
    * node library: 1.32.9 is a PrimeVue tree of nested ``li[role=treeitem]`` with a "Subgraph Blueprints" folder;
      1.58 a flat virtualised reka tree (``aria-level``/``data-index``) with a "SUBGRAPH BLUEPRINTS" section whose
      folder ("Comfy Blueprints" for a pack's blueprints) holds them. Clicking a leaf inserts the node in 1.32.9
      only; dragging it onto the canvas inserts it in both.
    * node help: both show ``[data-testid=info-button]`` in the selection toolbox for a selected node; 1.32.9 opens
      the help page in the node library sidebar, 1.58 in the right side panel's "Info" tab.
    * missing models: 1.32.9 opens a "Missing Models" modal (a listbox ``.comfy-missing-models``, rows "directory /
      name", a "Download (?)" button per file, disabled with the reason in a message beside it); 1.58 shows a toast
      "N issues found" (``[data-testid=error-overlay]``) whose "View details" opens the right side panel's Issues
      tab, section ``[data-testid=error-group-missing-model]``: one row per file (name, then its folder, "Unknown"
      without metadata), a ``[data-testid=missing-model-download]`` button only where it allows the download.
      The panel's open state is the hidden setting ``Comfy.RightSidePanel.IsOpen``.
    * first run: both open the templates browser for a new user unless the ``Comfy.TutorialCompleted`` setting is
      set (done here through the server's ``POST /settings``).
    """

    def __init__(self, browser_context, base_url: str, artifacts: pathlib.Path):
        self.base_url = base_url.rstrip("/")
        self.artifacts = pathlib.Path(artifacts)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.context = browser_context
        self.page = browser_context.new_page()
        self.console: list[str] = []
        self.responses: list[tuple[int, str]] = []
        self.page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))
        self.page.on("response", self._on_response)
        self.version: str | None = None

    def _on_response(self, response):
        if f"/extensions/{EXTENSION_NAME}/" in response.url:
            self.responses.append((response.status, response.url))

    # ---- start-up

    def _post_settings(self, settings: dict) -> None:
        req = urllib.request.Request(self.base_url + "/settings", data=json.dumps(settings).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with _NO_PROXY.open(req, timeout=10) as resp:
            resp.read()

    def open(self) -> "ComfyPage":
        # A fresh server has a fresh user: without this both frontends open the templates browser on start.
        self._post_settings({"Comfy.TutorialCompleted": True})
        t0 = time.monotonic()
        self.page.goto(self.base_url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function(_READY, timeout=READY_TIMEOUT_MS, polling=250)
        self.page.evaluate(_INSTALL_HOOK)
        self.version = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || null")
        self.load_seconds = time.monotonic() - t0
        self.close_dialogs()
        return self

    def close(self) -> None:
        try:
            (self.artifacts / "console.log").write_text("\n".join(self.console) + "\n", encoding="utf-8")
        finally:
            self.context.close()

    # ---- helpers

    def screenshot(self, name: str) -> pathlib.Path:
        safe = re.sub(r"[^A-Za-z0-9._()-]+", "_", name)
        path = self.artifacts / f"{safe}.png"
        self.page.screenshot(path=str(path))
        return path

    def settle(self, ms: int = 250) -> None:
        """Let the canvas redraw (two animation frames) and pending UI updates land."""
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.wait_for_timeout(ms)

    def close_dialogs(self) -> list[str]:
        """Close modal dialogs (1.32.9's missing-nodes / missing-models dialogs, first-run dialogs); returns their
        text. Toasts are left alone."""
        texts = []
        for _ in range(4):
            dialogs = self.page.locator("[role=dialog]:visible, .p-dialog:visible")
            if dialogs.count() == 0:
                break
            texts.append(dialogs.first.inner_text()[:2000])
            close = dialogs.first.locator(
                "button[aria-label=Close], button[aria-label=close], .p-dialog-close-button, "
                "[data-pc-section=pcclosebutton] button, button.p-dialog-header-close")
            if close.count():
                close.first.click()
            else:
                self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)
        return texts

    def _toast_texts(self) -> list[str]:
        return [_squash(t) for t in self.page.locator(_TOASTS).all_inner_texts() if t.strip()]

    def _close_toasts(self) -> None:
        buttons = self.page.locator(".p-toast-message .p-toast-close-button:visible")
        for i in reversed(range(buttons.count())):
            buttons.nth(i).click()

    def run_command(self, command_id: str) -> None:
        self.page.evaluate("(id) => app.extensionManager.command.execute(id)", command_id)

    def graph_nodes(self) -> list[dict]:
        return self.page.evaluate(_GRAPH_NODES)

    def registered_types(self) -> set[str]:
        return set(self.page.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))

    # ---- workflows

    def load_workflow(self, workflow: dict, name: str, screenshot: bool = True) -> LoadResult:
        """Load a UI-format workflow into the canvas as ``name`` (``app.loadGraphData``, the same call the frontend
        makes for a dropped or opened file) and report missing node types both ways: the frontend's own list and
        the types of the JSON (``definitions.subgraphs`` included) that LiteGraph has not registered."""
        self.page.evaluate("() => { window.__diffbirTest.missing = null; }")
        self._close_toasts()
        console_start = len(self.console)
        ok = self.page.evaluate("async ([wf, name]) => { const r = await app.loadGraphData(wf, true, true, name);"
                                " return r !== false; }", [workflow, name])
        if not ok:
            raise RuntimeError(f"the frontend could not load {name} (loadGraphData returned false): see "
                               f"{self.artifacts / 'console.log'}")
        self.page.wait_for_function("() => window.__diffbirTest.missing !== null", timeout=30_000)
        reported = self.page.evaluate("() => window.__diffbirTest.missing")
        registered = self.registered_types()
        unregistered = {t: w for t, w in workflow_node_types(workflow).items() if t not in registered}
        self.settle(400)
        invalid = [m for m in self.console[console_start:] if _INVALID.search(m)]
        invalid += [t for t in self._toast_texts() if _INVALID.search(t)]
        dialogs = self.close_dialogs()
        result = LoadResult(name, reported, unregistered, len(self.graph_nodes()), dialogs, invalid)
        if screenshot:
            result.screenshot = self.screenshot(f"workflow-{pathlib.Path(name).stem}")
        return result

    # ---- missing models

    def missing_models(self, workflow: dict, name: str, timeout_ms: int = 15_000,
                       screenshot: bool = True) -> MissingModelsView:
        """Load ``workflow`` as ``name`` and read the frontend's missing-models listing as a user reaches it: 1.32.9
        opens its "Missing Models" dialog by itself; 1.58 shows a toast ("N issues found") whose "View details"
        opens the Issues tab of the right side panel. Screenshot of the listing (``missing-models-<name>``), then
        the dialog is closed and the side panel put back as it was. ``where`` is None when neither appeared
        within ``timeout_ms``."""
        self.page.evaluate("() => { window.__diffbirTest.missing = null; }")
        self._close_toasts()
        self.close_dialogs()
        # 1.58: an "issues found" notice of an earlier workflow is dismissed, so the one waited for is this one's
        stale = self.page.locator(f"{_ERROR_OVERLAY} {_ERROR_OVERLAY_DISMISS}")
        for i in reversed(range(stale.count())):
            stale.nth(i).click()
        # 1.58: a side panel left open (on the Issues tab of an earlier workflow, or on another tab) is closed
        # first, so what is read below is this workflow's listing, reached through the toast
        panel_was_open = self._right_side_panel_open()
        if panel_was_open:
            self._set_right_side_panel(False)
        t0 = time.monotonic()
        self.page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }",
                           [workflow, name])
        self.page.wait_for_function("() => window.__diffbirTest.missing !== null", timeout=30_000)
        notice = ""
        try:
            self.page.wait_for_function(
                f"() => ({_MISSING_MODELS})() !== null || !!document.querySelector({json.dumps(_ERROR_OVERLAY)})",
                timeout=timeout_ms, polling=100)
        except Exception:  # noqa: BLE001 - reported as where=None with a screenshot
            pass
        overlay = self.page.locator(_ERROR_OVERLAY).filter(has=self.page.locator(_ERROR_OVERLAY_DETAILS))
        if self.page.evaluate(_MISSING_MODELS) is None and overlay.count():
            notice = _squash(overlay.first.inner_text())
            overlay.first.locator(_ERROR_OVERLAY_DETAILS).click()
            try:
                self.page.wait_for_function(f"() => ({_MISSING_MODELS})() !== null", timeout=timeout_ms,
                                            polling=100)
            except Exception:  # noqa: BLE001
                pass
        # rows arrive as the frontend finishes checking; read once two readings 300 ms apart agree
        seen, view = None, None
        for _ in range(20):
            view = self.page.evaluate(_MISSING_MODELS)
            if view is not None and view == seen:
                break
            seen = view
            self.page.wait_for_timeout(300)
        seconds = time.monotonic() - t0
        shot = self.screenshot(f"missing-models-{pathlib.Path(name).stem}") if screenshot else None
        # 1.32.9's list shows about two and a half rows at a time: a second screenshot with it scrolled to its end
        if screenshot and self.page.evaluate(_SCROLL_LISTING_TO_END):
            self.settle(200)
            self.screenshot(f"missing-models-{pathlib.Path(name).stem}-scrolled")
        self.close_dialogs()
        if self._right_side_panel_open() != panel_was_open:
            self._set_right_side_panel(panel_was_open)
        if view is None:
            return MissingModelsView(None, "", notice, [], "", None, seconds, shot)
        rows = []
        for raw in view["rows"]:
            if view["where"] == "dialog":  # "directory / name"
                directory, sep, file_name = raw["label"].partition(" / ")
                if not sep:
                    directory, file_name = None, raw["label"]
            else:  # name, then "directory" or "directory · 1.2 GB"
                file_name, directory = raw["label"], raw["meta"].split(" · ")[0].strip() or None
            dl = raw["download"]
            rows.append(MissingModelRow(file_name.strip(), directory and directory.strip(), raw["text"],
                                        None if dl is None else ("enabled" if dl["enabled"] else "disabled"),
                                        raw.get("note", ""), raw.get("url", "")))
        dl_all = view.get("download_all")
        return MissingModelsView(view["where"], view["heading"], notice, rows, view["text"],
                                 None if dl_all is None else ("enabled" if dl_all["enabled"] else "disabled"),
                                 seconds, shot)

    def _right_side_panel_open(self) -> bool:
        """1.58's right side panel state (its hidden setting ``Comfy.RightSidePanel.IsOpen``); False where the
        frontend has no such setting (1.32.9)."""
        return bool(self.page.evaluate(
            "() => { try { return !!app.extensionManager.setting.get('Comfy.RightSidePanel.IsOpen'); }"
            " catch (e) { return false; } }"))

    def _set_right_side_panel(self, open_: bool) -> None:
        self.page.evaluate("(v) => app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', v)", open_)
        self.settle(200)

    # ---- node library

    def open_node_library(self):
        """The node library sidebar panel (opened through the sidebar tab command both frontends register)."""
        panel = self.page.locator(".side-bar-panel")
        active = self.page.evaluate("() => app.extensionManager.sidebarTab?.activeSidebarTabId ?? null")
        if active != "node-library":
            self.run_command("Workspace.ToggleSidebarTab.node-library")
        panel.locator("[role=treeitem]").first.wait_for(state="visible", timeout=15_000)
        return panel

    def node_library_item(self, display_name: str, folder_pattern: str = r"blueprint|diffbir"):
        """Find ``display_name`` in the node library, expanding only folders whose label matches
        ``folder_pattern``. Returns (leaf locator, its folder labels, innermost first)."""
        panel = self.open_node_library()
        folder = re.compile(folder_pattern, re.I)
        leaf = panel.locator("[role=treeitem]").filter(
            has=self.page.get_by_text(display_name, exact=True))
        for _ in range(6):
            if leaf.count():
                break
            collapsed = panel.locator("[role=treeitem][aria-expanded=false]:not(.p-tree-node-leaf)").filter(
                has_text=folder)
            # In 1.32.9's nested tree a collapsed folder's text is its label only; pick the first matching one.
            if collapsed.count() == 0:
                break
            collapsed.first.get_by_text(folder).first.click()
            self.page.wait_for_timeout(400)
        if not leaf.count():
            return None, []
        item = leaf.last  # the innermost treeitem holding the text (1.32.9 nests items)
        item.scroll_into_view_if_needed()
        ancestors = item.evaluate(_TREE_ANCESTORS)
        return item, ancestors

    def insert_from_node_library(self, item) -> list[dict]:
        """Drag a node-library leaf onto an empty canvas (inserts it in both frontends); returns the new nodes.
        The canvas is emptied first: a DOM widget of a node already there (a multiline text box) would take the
        drop instead of the canvas."""
        empty = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                 "extra": {}, "version": 0.4}
        self.load_workflow(empty, "empty.json", screenshot=False)
        before = {n["id"] for n in self.graph_nodes()}
        canvas = self.page.locator("#graph-canvas")  # both builds give LiteGraph's canvas this id
        box = canvas.bounding_box()
        item.drag_to(canvas, target_position={"x": box["width"] * 0.55, "y": box["height"] * 0.6})
        self.settle(500)
        return [n for n in self.graph_nodes() if n["id"] not in before]

    def inner_node_types(self, node_id: str) -> list[dict]:
        return self.page.evaluate(_INNER_TYPES, node_id)

    # ---- node help

    def _select_node(self, node_id: str) -> None:
        for _ in range(4):
            self.settle(300)
            pos = self.page.evaluate("""(id) => { const n = app.graph.getNodeById(id);
                const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
                return app.canvasPosToClientPos([n.pos[0] + Math.min(60, n.size[0] / 2), n.pos[1] - title / 2]); }""",
                                     node_id)
            self.page.mouse.click(pos[0], pos[1])
            self.page.wait_for_timeout(200)
            selected = self.page.evaluate("() => Object.keys(app.canvas.selected_nodes || {})")
            if selected == [str(node_id)]:
                return
        raise AssertionError(f"could not select node {node_id} by clicking its title (selected: {selected})")

    def open_node_help(self, node_type: str, expected_heading: str, expected_text: str = "",
                       timeout_ms: int = 15_000) -> HelpResult:
        """Put one ``node_type`` node on a fresh canvas, select it with the mouse and open its help through the
        selection toolbox's info button; wait until a heading reading ``expected_heading`` is rendered, and the
        start of ``expected_text`` (the page's first paragraph) too: 1.58's panel titles itself with the node's
        name, which reads like the page's heading before the page has arrived."""
        workflow = {"last_node_id": 1, "last_link_id": 0, "nodes": [
            {"id": 1, "type": node_type, "pos": [300, 250], "size": [320, 120], "flags": {}, "order": 0,
             "mode": 0, "inputs": [], "outputs": [], "properties": {}}],
            "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4}
        self.load_workflow(workflow, f"help {node_type}.json", screenshot=False)
        first_response = len(self.responses)
        self._select_node("1")
        info = self.page.locator("[data-testid=info-button]:visible")
        try:
            info.first.wait_for(state="visible", timeout=timeout_ms)
        except Exception as exc:  # noqa: BLE001
            shot = self.screenshot(f"help-{node_type}-FAILED")
            raise AssertionError(f"frontend {self.version}: no info button in the selection toolbox of a selected "
                                 f"{node_type} node (screenshot {shot})") from exc
        info.first.click()
        route = "selection toolbox info button"
        heading = self.page.locator("h1, h2, h3, h4, h5, h6").filter(
            has_text=re.compile(r"^\s*" + re.escape(expected_heading) + r"\s*$"))
        try:
            heading.first.wait_for(state="visible", timeout=timeout_ms)
        except Exception:  # noqa: BLE001 - report what the page shows instead of a bare timeout
            shot = self.screenshot(f"help-{node_type}-FAILED")
            return HelpResult(node_type, route, self.page.locator("body").inner_text(), [],
                              self.responses[first_response:], shot)
        if expected_text:
            with contextlib.suppress(Exception):  # a miss is reported by the caller's check, with a screenshot
                self.page.get_by_text(expected_text[:60]).first.wait_for(state="visible", timeout=timeout_ms)
        # The help container: the nearest ancestor of the heading that holds more than the heading.
        container = heading.first.locator("xpath=ancestor::*[count(.//p | .//li) > 0][1]")
        text = container.inner_text() if container.count() else heading.first.inner_text()
        headings = [h.strip() for h in container.locator("h1, h2, h3, h4, h5, h6").all_inner_texts()]
        self.settle(200)
        shot = self.screenshot(f"help-{node_type}")
        return HelpResult(node_type, route, _squash(text), headings, self.responses[first_response:], shot)


class Browser:
    """Playwright driving Debian's chromium, headless. Use as a context manager; ``open()`` one page per frontend."""

    def __init__(self, executable: str | None = None):
        self.executable = executable or find_chromium()
        self._pw = None
        self._browser = None

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=True,
                args=["--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        except Exception:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            if self._pw is not None:
                self._pw.stop()

    @property
    def version(self) -> str:
        return self._browser.version

    def open(self, base_url: str, artifacts: pathlib.Path) -> ComfyPage:
        # English UI: the node library's folder labels ("Subgraph Blueprints") are matched in English.
        context = self._browser.new_context(viewport=VIEWPORT, locale="en-US")
        page = ComfyPage(context, base_url, artifacts)
        try:
            return page.open()
        except Exception:
            page.screenshot("page-open-FAILED")
            page.close()
            raise


def artifacts_root(default: pathlib.Path) -> pathlib.Path:
    """``$DIFFBIR_TEST_ARTIFACTS`` or ``default`` (a folder under pytest's tmp path), created."""
    env = os.environ.get(ARTIFACTS_ENV)
    root = pathlib.Path(env).expanduser().resolve() if env else pathlib.Path(default)
    root.mkdir(parents=True, exist_ok=True)
    return root
