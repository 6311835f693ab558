"""Saved workflows and API prompts of the previous release keep running on the V3 nodes (issue 29, item 1).

tests/legacy/api_prompts_e0b0b14.json holds the API prompt of every shipped workflow as the last V1 release
converted it (provenance in tests/legacy/README.md). Every node of the pack appears in them, except the nodes added
since (ADDED_SINCE)."""

import json
from pathlib import Path

import pytest
from test_nodes_registry import NODES
from test_workflows import for_test, input_png, tiny_files  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
LEGACY = json.loads((Path(__file__).parent / "legacy" / "api_prompts_e0b0b14.json").read_text(encoding="utf-8"))
# Nodes added after that release (no saved prompt of it can hold them).
ADDED_SINCE = {"DiffBIRPrompt", "DiffBIRKeepAlpha"}


def test_the_legacy_prompts_use_every_node_of_the_pack():
    used = {node["class_type"] for prompt in LEGACY.values() for node in prompt.values()}
    assert set(NODES) - ADDED_SINCE <= used, sorted(set(NODES) - ADDED_SINCE - used)
    assert ADDED_SINCE <= set(NODES) and not ADDED_SINCE & used


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_a_saved_workflow_converts_to_the_prompt_the_previous_release_made(comfy_host, name):
    """The UI graph (widget values by position) maps onto the V3 nodes' inputs exactly as onto the V1 ones: same
    node ids, inputs, values and links, apart from the alpha path added since."""
    workflow = json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))
    # (the _meta titles of untitled nodes are the host's display names, which newer hosts reword)
    now = {i: (n["class_type"], n["inputs"]) for i, n in comfy_host.workflow_to_api(workflow).items()}
    # Since then the workflows carry the alpha path, and nothing else is new
    alpha = [i for i, (kind, _) in now.items() if kind == "DiffBIRKeepAlpha"]
    assert len(alpha) == 1, alpha
    assert without_alpha(now) == {i: (n["class_type"], n["inputs"]) for i, n in LEGACY[name].items()}


def without_alpha(prompt: dict) -> dict:
    """The prompt before the workflows gained the alpha path (Load Image's MASK -> DiffBIR Keep Alpha -> Save
    Image): each DiffBIR Keep Alpha taken out and what it fed fed by its image input again."""
    alpha = {i: inputs for i, (kind, inputs) in prompt.items() if kind == "DiffBIRKeepAlpha"}
    for inputs in alpha.values():  # its mask is Load Image's MASK output
        assert prompt[inputs["mask"][0]][0] == "LoadImage" and inputs["mask"][1] == 1, inputs
    return {i: (kind, {k: alpha[v[0]]["image"] if isinstance(v, list) and v[0] in alpha else v
                       for k, v in inputs.items()})
            for i, (kind, inputs) in prompt.items() if i not in alpha}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_the_previous_releases_prompt_validates_and_runs(comfy_host, tiny_files, input_png, one_thread,  # noqa: F811
                                                        monkeypatch, name):
    """The old API prompt itself (file names swapped for the tests' tiny models) passes ComfyUI's validation of the
    V3 nodes and runs."""
    from tiny_models import face_node_module, one_face

    prompt = for_test(json.loads(json.dumps(LEGACY[name])), input_png)
    assert comfy_host.validate(prompt)[0], comfy_host.validate(prompt)
    if name == "diffbir_v2.1_unaligned_face.json":
        monkeypatch.setattr(face_node_module(), "detect_faces", one_face)
    outputs = comfy_host.run(prompt, strict=True)
    saved = [i for i, n in prompt.items() if n["class_type"] in ("SaveImage", "PreviewImage", "PreviewAny")]
    assert saved and all(i in outputs for i in saved)
