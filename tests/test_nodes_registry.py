"""Every node of the pack, read back through the real host's node info (what the UI shows)."""

import pytest

DISPLAY_NAMES = {
    "Load DiffBIR Models",
    "Stage1 SwinIR Restore",
    "LAControlNet Apply",
    "DiffBIR Sampler",
    "DiffBIR Color Fix",
    "Degrade",
    "DiffBIR Compare",
    "DiffBIR VAE Decode (Tiled)",
    "DiffBIR Face Detect & Align",
    "DiffBIR Face Paste Back",
}


@pytest.fixture(scope="module")
def our_nodes(comfy_host):
    mappings = comfy_host.extension_module.NODE_CLASS_MAPPINGS
    return {name: comfy_host.node_info(name) for name in mappings}


def test_design_nodes_are_registered_with_their_display_names(our_nodes):
    assert DISPLAY_NAMES <= {info["display_name"] for info in our_nodes.values()}


def test_every_node_has_category_description_and_input_tooltips(our_nodes):
    for name, info in our_nodes.items():
        assert info["category"].split("/")[0] == "DiffBIR", name
        assert len(info["description"]) > 40, f"{name}: no real DESCRIPTION"
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(info.get("output_tooltips") or []) == len(info["output"]), f"{name}: output tooltips"
