"""diffbir_core is plain torch: it imports no ComfyUI module, directly or indirectly."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "nodes", "folder_paths", "execution", "server", "latent_preview"}


def test_no_comfy_import_statements():
    offenders = []
    for path in (REPO / "diffbir_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in COMFY_MODULES]
    assert not offenders


def test_importing_every_core_module_loads_no_comfy_module():
    code = (
        "import sys, pkgutil, importlib, diffbir_core\n"
        "for m in pkgutil.walk_packages(diffbir_core.__path__, 'diffbir_core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(COMFY_MODULES)!r})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_extension_entry_point_imports_outside_comfyui():
    """ComfyUI loads the repo root as a package; outside ComfyUI that must not fail."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('comfyui_diffbir', {str(REPO / '__init__.py')!r}, submodule_search_locations=[{str(REPO)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['comfyui_diffbir'] = mod; spec.loader.exec_module(mod)\n"
        "assert not hasattr(mod, 'comfy_entrypoint') and mod.WEB_DIRECTORY == './web'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
