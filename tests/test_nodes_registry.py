"""Every node of the pack, read back through the real host's node info (what the UI shows)."""

import pytest

# Every node of the pack, class name -> display name: a node added to nodes/ is added here.
NODES = {
    "DiffBIRLoadModels": "Load DiffBIR Models",
    "DiffBIRStage1Restore": "Stage1 SwinIR Restore",
    "DiffBIRLAControlNetApply": "LAControlNet Apply",
    "DiffBIRSampler": "DiffBIR Sampler",
    "DiffBIRSamplerSelect": "DiffBIR Sampler Select",
    "DiffBIRVAEDecode": "DiffBIR VAE Decode (Tiled)",
    "DiffBIRColorFix": "DiffBIR Color Fix",
    "DiffBIRDegrade": "Degrade",
    "DiffBIRCompare": "DiffBIR Compare",
    "DiffBIRFaceDetectAlign": "DiffBIR Face Detect & Align",
    "DiffBIRFacePasteBack": "DiffBIR Face Paste Back",
}


@pytest.fixture(scope="module")
def our_nodes(comfy_host):
    mappings = comfy_host.extension_module.NODE_CLASS_MAPPINGS
    return {name: comfy_host.node_info(name) for name in mappings}


def test_the_pack_registers_exactly_its_nodes(comfy_host, our_nodes):
    assert {name: info["display_name"] for name, info in our_nodes.items()} == NODES
    assert comfy_host.extension_module.NODE_DISPLAY_NAME_MAPPINGS == NODES


def test_every_node_has_category_description_and_tooltips(our_nodes):
    """What the UI shows for every node: the DiffBIR category, a real description, a tooltip on every input and
    on every output (the per-node test files check only what is particular to their node)."""
    for name, info in our_nodes.items():
        assert info["category"] == "DiffBIR", name
        assert len(info["description"]) > 80, f"{name}: no real DESCRIPTION"
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        tooltips = info.get("output_tooltips") or []
        assert len(tooltips) == len(info["output"]) and all(tooltips), f"{name}: output tooltips"
