"""Every node of the pack, read back through the real host's node info (what the UI shows), and how the pack is built:
V3 nodes registered through comfy_entrypoint, node modules on one floor over the shared layer."""

import ast
import inspect
from pathlib import Path

import pytest
from comfy_host import node_module

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "nodes"

# Every node of the pack, class name -> display name: a node added to nodes/ is added here.
NODES = {
    "DiffBIRLoadModels": "Load DiffBIR Models",
    "DiffBIRStage1Restore": "Stage1 SwinIR Restore",
    "DiffBIRPrompt": "DiffBIR Prompt",
    "DiffBIRLAControlNetApply": "LAControlNet Apply",
    "DiffBIRSampler": "DiffBIR Sampler",
    "DiffBIRSamplerSelect": "DiffBIR Sampler Select",
    "DiffBIRVAEDecode": "DiffBIR VAE Decode (Tiled)",
    "DiffBIRColorFix": "DiffBIR Color Fix",
    "DiffBIRKeepAlpha": "DiffBIR Keep Alpha",
    "DiffBIRDegrade": "Degrade",
    "DiffBIRCompare": "DiffBIR Compare",
    "DiffBIRFaceDetectAlign": "DiffBIR Face Detect & Align",
    "DiffBIRFacePasteBack": "DiffBIR Face Paste Back",
}


def our_classes(host) -> dict:
    """The node classes the host registered from this pack (by the module they live in)."""
    package = host.extension_module.__name__ + "."
    return {name: cls for name, cls in host.node_classes.items() if cls.__module__.startswith(package)}


@pytest.fixture(scope="module")
def our_nodes(comfy_host):
    return {name: comfy_host.node_info(name) for name in our_classes(comfy_host)}


def test_the_pack_registers_exactly_its_nodes(comfy_host, our_nodes):
    assert {name: info["display_name"] for name, info in our_nodes.items()} == NODES
    assert {name: comfy_host.m.nodes.NODE_DISPLAY_NAME_MAPPINGS[name] for name in NODES} == NODES


def test_every_registered_node_is_a_v3_node_from_comfy_entrypoint(comfy_host):
    """V3 only: each class is an io.ComfyNode whose schema id is its registered name, and the pack's entry point is
    comfy_entrypoint (ComfyUI reads NODE_CLASS_MAPPINGS first, so the pack must not define it)."""
    from comfy_api.latest import ComfyExtension, io

    module = comfy_host.extension_module
    assert not hasattr(module, "NODE_CLASS_MAPPINGS") and not hasattr(module, "NODE_DISPLAY_NAME_MAPPINGS")
    extension = comfy_host.loop.run_until_complete(module.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    listed = comfy_host.loop.run_until_complete(extension.get_node_list())
    classes = our_classes(comfy_host)
    assert {cls.GET_SCHEMA().node_id for cls in listed} == set(classes) == set(NODES)
    for name, cls in classes.items():
        assert inspect.isclass(cls) and issubclass(cls, io.ComfyNode), f"{name} is not a V3 io.ComfyNode"
        assert cls.GET_SCHEMA().node_id == name
        for v1_attribute in ("FUNCTION", "RETURN_TYPES", "INPUT_TYPES"):
            assert v1_attribute not in vars(cls), f"{name} defines V1 {v1_attribute} itself"


def test_every_node_has_category_description_and_tooltips(our_nodes):
    """What the UI shows for every node: a category of the DiffBIR tree, a real description, a tooltip on every
    input and on every output (the per-node test files check only what is particular to their node)."""
    for name, info in our_nodes.items():
        assert info["category"].startswith("DiffBIR/") and info["category"] == info["category"][:8] + \
            info["category"][8:].lower(), name
        assert len(info["description"]) > 80, f"{name}: no real description"
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        tooltips = info.get("output_tooltips") or []
        assert len(tooltips) == len(info["output"]) and all(tooltips), f"{name}: output tooltips"
    categories = {info["category"] for info in our_nodes.values()}
    assert len(categories) >= 6  # one tree, split by what the nodes do


def test_search_aliases_and_advanced_inputs_where_the_host_has_them(comfy_host, our_nodes):
    """On a host whose schema has search_aliases every node brings some (restore / upscale / face find the main
    nodes); where inputs can be advanced, the DiffBIR Sampler shows at most 8 widgets before they are opened. On
    0.3.75 (neither feature) the node info carries neither key."""
    schema = node_module(comfy_host, "host.schema")
    for name, info in our_nodes.items():
        aliases = info.get("search_aliases")
        if schema.SUPPORTS_SEARCH_ALIASES:
            assert aliases, name
        else:
            assert aliases is None, name
    if schema.SUPPORTS_SEARCH_ALIASES:
        words = {name: " ".join(info["search_aliases"]) for name, info in our_nodes.items()}
        assert "restore" in words["DiffBIRSampler"] and "upscale" in words["DiffBIRStage1Restore"]
        assert "face" in words["DiffBIRFaceDetectAlign"]

    sampler = our_nodes["DiffBIRSampler"]["input"]
    widgets = {name: spec for section in ("required", "optional") for name, spec in sampler.get(section, {}).items()
               if spec[0] in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO") or isinstance(spec[0], list)}
    shown = [name for name, spec in widgets.items() if not (len(spec) > 1 and spec[1].get("advanced"))]
    shown += [f"{name} (control_after_generate)" for name in shown
              if len(widgets[name]) > 1 and widgets[name][1].get("control_after_generate")]
    if schema.SUPPORTS_ADVANCED:
        assert len(shown) <= 8, shown
        assert {"seed", "steps", "cfg", "sampler_name", "tile_plan"} <= set(shown)
    else:
        assert len(shown) == len(widgets) + 1 == 25  # 0.3.75: every widget shows (the seed with its control)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names = [node.module] if node.module else []
            if node.level and not node.module:  # from . import x, y
                names = [alias.name for alias in node.names]
            elif node.level:
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.level, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
    return found


def test_node_modules_import_the_shared_layer_and_the_core_never_each_other():
    """nodes/*.py hold node classes only and stand on one floor: they import nodes/host (relatively), diffbir_core
    and ComfyUI, never another node module; nodes/host never imports a node module. (By AST, so it holds for any
    host version.)"""
    node_modules = {p.stem for p in NODE_DIR.glob("*.py") if p.stem != "__init__"}
    assert {"load_models", "stage1", "lacontrolnet", "sampler", "vae_decode"} <= node_modules
    for path in sorted(NODE_DIR.glob("*.py")):
        if path.stem == "__init__":
            continue
        for level, name in _imports(path):
            if level == 1:
                assert name == "host" or name.startswith("host."), f"{path.name} imports .{name}"
            assert level <= 1, f"{path.name} imports from outside nodes/ relatively: {name}"
            assert not name.startswith(("nodes", "diffbir_cli")), f"{path.name} imports {name}"
    for path in sorted((NODE_DIR / "host").glob("*.py")):
        for level, name in _imports(path):
            assert level <= 1, f"host/{path.name} imports a node module or the pack: {'.' * level}{name}"
            assert not name.startswith(("nodes", "diffbir_cli")), f"host/{path.name} imports {name}"


def test_one_import_root_for_diffbir_core(comfy_host):
    """The nodes, the command line and the tests share one diffbir_core: no module of the pack imports it
    relatively, and the host's control classes are the tests' own."""
    import sys

    import diffbir_core.arch.ldm_blocks as blocks

    for path in sorted(NODE_DIR.rglob("*.py")):
        for level, name in _imports(path):
            assert not (level >= 1 and "diffbir_core" in name), f"{path} imports diffbir_core relatively"
    package = comfy_host.extension_module.__name__
    assert not [m for m in sys.modules if m.startswith(f"{package}.diffbir_core")]
    patching = node_module(comfy_host, "host.patching")
    assert patching.GroupNorm32 is blocks.GroupNorm32 and patching.Linear is blocks.Linear


def test_readme_layout_names_every_module_of_the_nodes_layer():
    """README's Layout lists each node module and each module of the shared layer (the tree and the README agree)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("\n## Layout"):]
    layout = layout[:layout.index("\n## ", 1)]
    for path in sorted(NODE_DIR.glob("*.py")) + sorted((NODE_DIR / "host").glob("*.py")):
        if path.stem != "__init__":
            assert f"`{path.stem}`" in layout, f"README Layout does not name {path.relative_to(ROOT)}"
    for folder in ("nodes/", "nodes/host/", "web/docs/", "subgraphs/", "diffbir_core/", "workflows/"):
        assert f"`{folder}`" in layout, folder
