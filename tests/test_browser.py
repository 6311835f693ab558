"""The pack in ComfyUI's real frontend, in headless Chromium (tests/browser.py), against two frontend builds:

* ``1.32.9``: the build ComfyUI 0.3.75 installs (served by default; fetched with pip when another is installed);
* ``newest``: the newest ``comfyui-frontend-package`` on the package index, served with ``--front-end-root``.

One ComfyUI server (``main.py`` with only this pack, tests/comfy_host.start_server) and one page per build; every
check below runs on that page. Screenshots and the page's console log go to ``$DIFFBIR_TEST_ARTIFACTS`` (default:
``browser-artifacts`` under pytest's base temp folder), one folder per build; the path is printed at the start.

* every ``workflows/*.json`` opens with no missing node types (the frontend's own report and LiteGraph's registry,
  subgraph definitions included);
* every blueprint ``subgraphs/*.json`` is listed by ``GET /global_subgraphs``, opens with no missing nodes, is
  found under the node library's subgraph-blueprint folder and, dragged onto the canvas, becomes a subgraph node
  whose inner nodes are all registered. The pack ships blueprints: no ``subgraphs/*.json`` fails;
* every help page ``web/docs/<NodeId>.md`` is fetched by the frontend and rendered (its first heading and first
  paragraph) when the node's help is opened from the selection toolbox. The pack ships help pages: none fails;
* issue 30: ``workflows/diffbir_v2.1_unaligned_face.json`` opened with the server's empty models folders shows the
  frontend's missing-models listing with each of its five files under the folder its loader reads (1.32.9: the
  "Missing Models" dialog; newest: the Issues tab reached through the "N issues found" toast), screenshot
  ``missing-models-diffbir_v2.1_unaligned_face.png``; newest offers Download (enabled) for the Hugging Face files
  and none for the GitHub-hosted face detector; 1.32.9 disables every Download (its suffix rule: .safetensors and
  .sft only; GitHub is not an allowed source). A copy with one file's metadata removed and another's folder
  changed shows the check notices both.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import urllib.parse
import urllib.request

import pytest

import browser
from comfy_host import EXTENSION_NAME, REPO_ROOT, start_server

pytestmark = pytest.mark.slow

FRONTENDS = ["1.32.9", "newest"]
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
BLUEPRINTS = sorted((REPO_ROOT / "subgraphs").glob("*.json"))
DOCS = REPO_ROOT / "web" / "docs"
HELP_NODES = sorted({p.stem for p in DOCS.glob("*.md")} | {p.parent.name for p in DOCS.glob("*/*.md")}) \
    if DOCS.is_dir() else []
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str):
    with _NO_PROXY.open(url, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="session")
def artifacts(request, tmp_path_factory):
    root = browser.artifacts_root(tmp_path_factory.getbasetemp() / "browser-artifacts")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nbrowser tests: screenshots and console logs in {root}", flush=True)
    return root


@pytest.fixture(scope="module")
def chromium():
    """Module scope: playwright's sync API keeps an event loop running in this thread while it is started, and
    the in-process ComfyUI of the other test modules runs its own loop here (run_until_complete refuses)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: python -m diffbir_cli setup --tests installs tests/requirements.txt")
    try:
        path = browser.find_chromium(install=True)
    except browser.BrowserUnavailable as exc:
        pytest.skip(f"browser tests need Debian's chromium: {exc}")
    with browser.Browser(path) as b:
        yield b


@pytest.fixture(scope="module", params=FRONTENDS)
def comfy(request, chromium, artifacts):
    """(ComfyPage, base URL, frontend id): a ComfyUI server serving one frontend build and a page on it."""
    args, expected = browser.frontend_server_args(request.param)
    with start_server(extra_args=args) as url:
        page = chromium.open(url, artifacts / request.param)
        try:
            assert page.version == expected, (f"the page runs frontend {page.version}, expected {expected} "
                                              f"(server arguments {args})")
            yield page, url, request.param
        finally:
            page.close()


def test_pack_nodes_registered(comfy):
    page, url, _ = comfy
    info = _get_json(url + "/object_info")
    ours = sorted(k for k, v in info.items() if v.get("python_module") == f"custom_nodes.{EXTENSION_NAME}")
    assert len(ours) >= 5, f"the server lists too few {EXTENSION_NAME} nodes: {ours}"
    missing = sorted(set(ours) - page.registered_types())
    assert not missing, f"frontend {page.version} did not register these pack nodes: {missing}"


def test_missing_node_check_detects_missing_nodes(comfy):
    """The checker itself: a top-level node and a node inside a subgraph of unknown types are both reported."""
    page, _, _ = comfy
    workflow = {
        "last_node_id": 2, "last_link_id": 0, "version": 0.4, "links": [], "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "NoSuchNodeTop", "pos": [0, 0], "size": [200, 60], "flags": {}, "order": 0,
             "mode": 0, "inputs": [], "outputs": [], "properties": {}},
            {"id": 2, "type": "6b0d6a4e-0000-4000-8000-000000000001", "pos": [0, 200], "size": [200, 60],
             "flags": {}, "order": 1, "mode": 0, "inputs": [], "outputs": [], "properties": {}}],
        "definitions": {"subgraphs": [{
            "id": "6b0d6a4e-0000-4000-8000-000000000001", "version": 1, "name": "inner",
            "state": {"lastGroupId": 0, "lastNodeId": 1, "lastLinkId": 0, "lastRerouteId": 0},
            "revision": 0, "config": {}, "inputNode": {"id": -10, "bounding": [0, 0, 120, 60]},
            "outputNode": {"id": -20, "bounding": [400, 0, 120, 60]}, "inputs": [], "outputs": [], "widgets": [],
            "nodes": [{"id": 1, "type": "NoSuchNodeInner", "pos": [100, 0], "size": [200, 60], "flags": {},
                       "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {}}],
            "groups": [], "links": [], "extra": {}}]},
    }
    result = page.load_workflow(workflow, "missing-node-check.json", screenshot=False)
    reported = " | ".join(result.reported_missing)
    assert "NoSuchNodeTop" in reported and "NoSuchNodeInner" in reported, (
        f"frontend {page.version} reported {result.reported_missing}")
    assert set(result.unregistered) == {"NoSuchNodeTop", "NoSuchNodeInner"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_without_missing_nodes(comfy, path):
    page, _, _ = comfy
    workflow = json.loads(path.read_text(encoding="utf-8"))
    result = page.load_workflow(workflow, path.name)
    assert result.screenshot is not None and result.screenshot.is_file()
    assert not result.missing, (f"{path.name} in frontend {page.version}: missing node types {result.missing} "
                                f"(screenshot {result.screenshot})")
    assert not result.invalid, f"frontend {page.version} rejects {path.name}'s format: {result.invalid}"
    assert result.node_count == len(workflow["nodes"]), (
        f"{path.name}: {result.node_count} nodes on the canvas, {len(workflow['nodes'])} in the file")


def test_workflows_exist():
    assert WORKFLOWS, "workflows/ has no .json files"


def test_global_subgraphs_lists_every_blueprint(comfy):
    _, url, _ = comfy
    entries = _get_json(url + "/global_subgraphs")
    ours = sorted(e["name"] for e in entries.values()
                  if (e.get("info") or {}).get("node_pack") == f"custom_nodes.{EXTENSION_NAME}")
    assert BLUEPRINTS, "the pack ships no blueprints: subgraphs/*.json is empty or absent"
    assert ours == sorted(p.stem for p in BLUEPRINTS), f"GET /global_subgraphs lists {ours}"


@pytest.mark.parametrize("path", BLUEPRINTS or [None], ids=[p.stem for p in BLUEPRINTS] or ["none"])
def test_blueprint_in_node_library(comfy, path):
    assert path is not None, "the pack ships no blueprints: subgraphs/*.json is empty or absent"
    page, _, _ = comfy
    name = path.stem
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert (workflow.get("definitions") or {}).get("subgraphs"), f"{path.name} has no definitions.subgraphs"

    loaded = page.load_workflow(workflow, f"blueprint file {path.name}", screenshot=False)
    assert not loaded.missing, f"{path.name} in frontend {page.version}: missing node types {loaded.missing}"
    assert not loaded.invalid, f"frontend {page.version} rejects {path.name}'s format: {loaded.invalid}"

    item, folders = page.node_library_item(name)
    if item is None:
        shot = page.screenshot(f"blueprint-{name}-FAILED")
        pytest.fail(f"frontend {page.version}: {name!r} not found under a blueprint folder of the node library "
                    f"(screenshot {shot})")
    assert any(re.search("blueprint", f, re.I) for f in folders), (
        f"{name!r} is in the node library under {folders}, not under a subgraph-blueprint folder")

    added = page.insert_from_node_library(item)
    shot = page.screenshot(f"blueprint-{name}")
    assert len(added) == 1, f"dragging {name!r} onto the canvas added {added} (screenshot {shot})"
    node = added[0]
    assert node["subgraph"] and node["title"] == name, f"inserted {node} (screenshot {shot})"
    inner = page.inner_node_types(node["id"])
    assert inner, f"the inserted {name!r} has no inner nodes"
    # The test server has no model files: a loader naming one is flagged by the newest frontend (missing models,
    # issue 30's dialog); any other error is the node's own.
    bad = [n for n in inner if not n["registered"] or (n["errors"] and not n["missing_files"])]
    assert not bad, f"inserted {name!r}: unregistered or failed inner nodes {bad} (screenshot {shot})"


@pytest.mark.parametrize("node_id", HELP_NODES or [None], ids=HELP_NODES or ["none"])
def test_help_page_rendered(comfy, node_id):
    assert node_id is not None, "the pack ships no help pages: web/docs/*.md is empty or absent"
    page, _, _ = comfy
    assert node_id in page.registered_types(), f"web/docs has a page for {node_id}, which is not a registered node"
    # The page the frontend shows (browser locale en): docs/<id>/en.md first, then docs/<id>.md.
    doc = next(p for p in [DOCS / node_id / "en.md", DOCS / f"{node_id}.md", *sorted((DOCS / node_id).glob("*.md"))]
               if p.is_file())
    heading, paragraph = browser.markdown_expectations(doc.read_text(encoding="utf-8"))
    assert heading, f"{doc.relative_to(REPO_ROOT)} has no heading"

    result = page.open_node_help(node_id, heading, paragraph)
    served = [(s, u) for s, u in result.doc_responses
              if re.search(rf"/extensions/{re.escape(EXTENSION_NAME)}/docs/{re.escape(node_id)}(/[^/]+)?\.md$", u)]
    assert any(s == 200 for s, _ in served), (
        f"frontend {page.version} did not fetch a help page for {node_id}: {result.doc_responses} "
        f"(screenshot {result.screenshot})")
    assert heading in result.headings, (
        f"frontend {page.version}: heading {heading!r} of {doc.name} not rendered in the help panel "
        f"(headings {result.headings}; screenshot {result.screenshot})")
    if paragraph:
        assert paragraph in result.text, (
            f"frontend {page.version}: first paragraph of {doc.name} not in the help panel: {result.text[:500]!r} "
            f"(screenshot {result.screenshot})")


# --------------------------------------------------------------------------- missing models (issue 30)

FACE_WORKFLOW = REPO_ROOT / "workflows" / "diffbir_v2.1_unaligned_face.json"
# The files the face workflow needs and the folder each loader reads (issue 30, "Must show"), written out here so
# that metadata losing an entry fails the test rather than shrinking what it expects.
FACE_FILES = {
    "realesrgan_s4_swinir_100k.pth": "diffbir",
    "DiffBIR_v2.1.pt": "diffbir",
    "sd2.1-base-zsnr-laionaes5.ckpt": "checkpoints",
    "face_swinir_v1.ckpt": "diffbir",
    "detection_Resnet50_Final.pth": "facedetection",
}


def _face_urls() -> dict[str, str]:
    workflow = json.loads(FACE_WORKFLOW.read_text(encoding="utf-8"))
    return {m["name"]: m["url"] for m in workflow.get("models") or []}


def _listing_problems(view: browser.MissingModelsView, expected: dict[str, str]) -> list[str]:
    """How the frontend's missing-models listing differs from ``expected`` (file name -> folder): a file not
    listed, listed more than once or under another folder, or a row for a file not expected."""
    problems = []
    rows = view.by_name()
    for name, directory in expected.items():
        found = rows.get(name, [])
        if not found:
            problems.append(f"{name} is not listed")
        elif len(found) > 1:
            problems.append(f"{name} is listed {len(found)} times: {[r.text for r in found]}")
        elif found[0].directory != directory:
            problems.append(f"{name} is listed under {found[0].directory!r}, not {directory!r}: {found[0].text!r}")
    problems += [f"unexpected row {r.text!r}" for r in view.rows if r.name not in expected]
    return problems


def _without_metadata(workflow: dict, name: str) -> dict:
    """``workflow`` with ``name`` dropped from its top-level ``models`` and from every node's ``properties.models``."""
    out = json.loads(json.dumps(workflow))
    out["models"] = [m for m in out.get("models") or [] if m["name"] != name]
    for node in out["nodes"]:
        props = node.get("properties") or {}
        if "models" in props:
            props["models"] = [m for m in props["models"] if m["name"] != name]
    return out


def _with_directory(workflow: dict, name: str, directory: str) -> dict:
    out = json.loads(json.dumps(workflow))
    for entry in (out.get("models") or []) + [m for n in out["nodes"] for m in (n.get("properties") or {}).get(
            "models") or []]:
        if entry["name"] == name:
            entry["directory"] = directory
    return out


def test_missing_models_listing(comfy):
    """Issue 30: the face workflow opened with no model files installed. The frontend lists each of its five files
    with its folder. Download: 1.58 offers it (enabled) for the Hugging Face files and not for the GitHub-hosted
    detector (our loader fetches that one itself); 1.32.9 shows a Download button for every file, all disabled,
    with the reason (its allowed suffixes are .safetensors/.sft; GitHub is not an allowed source)."""
    page, url, frontend = comfy
    for directory in sorted(set(FACE_FILES.values())):
        assert _get_json(f"{url}/experiment/models/{directory}") == [], f"the test server has files in {directory}"
    urls = _face_urls()
    assert set(urls) == set(FACE_FILES), f"{FACE_WORKFLOW.name}'s top-level models list {sorted(urls)}"

    view = page.missing_models(json.loads(FACE_WORKFLOW.read_text(encoding="utf-8")), FACE_WORKFLOW.name)
    shot = view.screenshot
    assert shot is not None and shot.is_file()
    assert view.where is not None, (f"frontend {page.version} showed no missing-models listing within 15 s of "
                                    f"opening {FACE_WORKFLOW.name} (screenshot {shot})")
    assert re.search(r"Missing Models", view.heading), f"listing headed {view.heading!r} (screenshot {shot})"
    problems = _listing_problems(view, FACE_FILES)
    assert not problems, f"frontend {page.version}, {view.where}: {problems} (screenshot {shot})"

    rows = {r.name: r for r in view.rows}
    hugging_face = {n for n, u in urls.items() if urllib.parse.urlsplit(u).hostname == "huggingface.co"}
    assert hugging_face == set(FACE_FILES) - {"detection_Resnet50_Final.pth"}, urls
    if frontend == "newest":
        assert view.where == "issues panel" and re.search(r"\b\d+ issues? found\b", view.notice), (
            f"frontend {page.version}: reached through {view.notice!r} -> {view.where}")
        wrong = {n: r.download for n, r in rows.items() if r.download != ("enabled" if n in hugging_face else None)}
        assert not wrong, (f"frontend {page.version}: Download should be enabled exactly for the Hugging Face files "
                           f"{sorted(hugging_face)}; differs for {wrong} (screenshot {shot})")
        assert view.download_all == "enabled", f"Download all: {view.download_all} (screenshot {shot})"
    else:
        assert view.where == "dialog", f"frontend {page.version} listed the files in the {view.where}"
        enabled = [n for n, r in rows.items() if r.download != "disabled"]
        assert not enabled, (f"frontend {page.version}: expected a disabled Download for every file (no .safetensors "
                             f"names), got {[(n, rows[n].download) for n in enabled]} (screenshot {shot})")
        for name, row in rows.items():
            reason = (r"Only allowed suffixes are: '\.safetensors', '\.sft'" if name in hugging_face
                      else r"Download not allowed from source '" + re.escape(urls[name]) + "'")
            assert re.search(reason, row.note), f"{name}: the dialog says {row.note!r}, expected /{reason}/"


def test_missing_models_check_notices_gaps(comfy):
    """The listing check itself: the face workflow with the detector's metadata removed and face_swinir_v1.ckpt's
    folder changed to checkpoints. Both frontends must show the difference and the check must name both files
    (1.32.9 drops the file without metadata; 1.58 lists it under "Unknown")."""
    page, _, _ = comfy
    workflow = json.loads(FACE_WORKFLOW.read_text(encoding="utf-8"))
    workflow = _with_directory(_without_metadata(workflow, "detection_Resnet50_Final.pth"),
                               "face_swinir_v1.ckpt", "checkpoints")
    view = page.missing_models(workflow, "missing-models-check.json", screenshot=False)
    assert view.where is not None, f"frontend {page.version} showed no missing-models listing"
    problems = _listing_problems(view, FACE_FILES)
    for name in ("detection_Resnet50_Final.pth", "face_swinir_v1.ckpt"):
        assert any(p.startswith(name + " ") for p in problems), (
            f"frontend {page.version}: the check did not notice the change to {name}: {problems}")
    assert len(problems) == 2, problems
