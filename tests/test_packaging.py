"""The Comfy Registry archive and metadata (pyproject.toml, .comfyignore).

`comfy node pack` / `comfy node publish` archive the git-tracked files minus the `.comfyignore` patterns
(gitwildmatch, git's own ignore syntax) plus `[tool.comfy] includes`. git applies the same patterns here, so
the file list below is the archive's: it must hold what runs in a user's ComfyUI and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_ARCHIVE_BYTES = 3 * 1024 * 1024
WEIGHT_SUFFIXES = {".safetensors", ".ckpt", ".pth", ".pt", ".bin", ".onnx", ".gguf"}
RUNTIME_DIRS = ("nodes", "diffbir_core", "diffbir_weights", "diffbir_cli")
TOP_LEVEL_FILES = ("__init__.py", "pyproject.toml", "README.md", "LICENSE", "requirements.txt")


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def archive(pyproject) -> set[str]:
    tracked = set(_git("ls-files", "--cached"))
    ignored = set(_git("ls-files", "--cached", "--ignored", f"--exclude-from={ROOT / '.comfyignore'}"))
    includes = pyproject["tool"]["comfy"].get("includes", [])
    forced = {f for f in tracked for inc in includes if f == inc.strip("/") or f.startswith(inc.strip("/") + "/")}
    return (tracked - ignored) | forced


def test_archive_holds_what_runs(archive):
    for name in TOP_LEVEL_FILES:
        assert name in archive, name
    tracked_py = {f for f in _git("ls-files", "--cached") if f.endswith(".py") and f.split("/")[0] in RUNTIME_DIRS}
    assert len(tracked_py) > 30
    assert tracked_py <= archive, sorted(tracked_py - archive)
    workflows = sorted(f for f in archive if f.startswith("workflows/") and f.endswith(".json"))
    assert len(workflows) >= 7
    for wf in workflows:
        assert wf[: -len(".json")] + ".jpg" in archive, f"{wf} ships without its template thumbnail"
    # what the frontend reads from the pack: the blueprints (/global_subgraphs) and the help pages (WEB_DIRECTORY)
    shipped = {f for f in _git("ls-files", "--cached") if f.startswith(("subgraphs/", "web/"))}
    assert any(f.startswith("subgraphs/") for f in shipped) and any(f.startswith("web/docs/") for f in shipped)
    assert shipped <= archive, sorted(shipped - archive)


def test_archive_leaves_out_tests_weights_and_development_files(archive):
    tops = {f.split("/")[0] for f in archive}
    assert tops <= set(TOP_LEVEL_FILES) | set(RUNTIME_DIRS) | {"workflows", "subgraphs", "web"}, sorted(tops)
    assert not [f for f in archive if Path(f).suffix in WEIGHT_SUFFIXES]
    assert not [f for f in archive if "__pycache__" in f or f.endswith(".pyc")]


def test_archive_is_under_3_mb(archive):
    sizes = {f: (ROOT / f).stat().st_size for f in archive}
    total = sum(sizes.values())
    assert total < MAX_ARCHIVE_BYTES, f"{total / 2**20:.2f} MiB uncompressed; largest: " + str(
        sorted(sizes.items(), key=lambda kv: -kv[1])[:5])


def test_registry_metadata(pyproject):
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    # The node id: registry rules (letters, digits, single - _ . between them) and its advice (no "comfyui").
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", project["name"])
    assert "comfy" not in project["name"].lower()
    assert {"Repository", "Documentation", "Issues"} <= set(project["urls"])
    assert "Operating System :: OS Independent" in project["classifiers"]
    gpus = {c for c in project["classifiers"] if c.startswith("Environment :: GPU :: ")}
    assert gpus == {f"Environment :: GPU :: {g}" for g in ("NVIDIA CUDA", "AMD ROCm", "Apple Metal", "Intel Arc")}
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])


def test_icon_is_a_small_image_of_this_repository(pyproject):
    from PIL import Image

    icon_url = pyproject["tool"]["comfy"]["Icon"]
    repo_url = pyproject["project"]["urls"]["Repository"]
    owner_repo = repo_url.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert icon_url.startswith(prefix), icon_url
    path = icon_url.removeprefix(prefix)
    assert path in _git("ls-files", "--cached"), f"{path} is not tracked"
    with Image.open(ROOT / path) as img:
        assert img.format in ("PNG", "JPEG", "GIF")
        assert img.width <= 800 and img.height <= 400
    assert (ROOT / path).stat().st_size < 100_000
