"""The one-node blueprints of subgraphs/ (ComfyUI serves a pack's subgraphs/*.json at /global_subgraphs and the
frontend lists them under Subgraph Blueprints): their format, that they are the shipped workflows' own nodes, and
that they run in the real host, placed between Load Image and Save Image as a user places them."""

import json
from pathlib import Path

import pytest
from comfy_host import saved_images
from test_workflows import INPUT_H, INPUT_W, by_class, for_test, input_png, tiny_files  # noqa: F401 - fixtures
from tiny_models import face_node_module, one_face

REPO = Path(__file__).resolve().parent.parent
SUBGRAPHS = REPO / "subgraphs"
# blueprint name -> (the workflow it packs, its exposed inputs, the official upscale)
BLUEPRINTS = {
    "DiffBIR Restore (v2.1)": ("diffbir_v2.1_sr_x4.json", 4.0),
    "DiffBIR Face Restore (v2.1)": ("diffbir_v2.1_unaligned_face.json", 2.0),
}
EXPOSED = ["image", "upscale", "prompt", "steps", "seed", "color_fix"]


def blueprint(name: str) -> dict:
    return json.loads((SUBGRAPHS / f"{name}.json").read_text(encoding="utf-8"))


def parts(bp: dict):
    """(the instance node, the subgraph definition) of a blueprint file."""
    (instance,) = bp["nodes"]
    (definition,) = bp["definitions"]["subgraphs"]
    assert instance["type"] == definition["id"]
    return instance, definition


def test_the_blueprint_set():
    assert sorted(p.stem for p in SUBGRAPHS.glob("*.json")) == sorted(BLUEPRINTS)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in BLUEPRINTS:
        assert f"**{name}**" in readme, f"README does not describe the blueprint {name}"


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_format_and_promoted_widgets(comfy_host, name):
    """Image in, image out, upscale / prompt / steps / seed / colour fix exposed; every subgraph input reaches the
    inner widgets it names (link slots match input names), inner nodes list their widget inputs in the node's
    definition order (the frontend attaches promoted widgets by position), and proxyWidgets name real widgets."""
    from diffbir_cli.workflow import _input_spec, _is_widget

    instance, sg = parts(blueprint(name))
    assert sg["name"] == name == instance["title"] and len(sg["description"]) > 60
    assert [i["name"] for i in sg["inputs"]] == EXPOSED and [i["name"] for i in instance["inputs"]] == EXPOSED
    assert [o["type"] for o in sg["outputs"]] == ["IMAGE"] == [o["type"] for o in instance["outputs"]]
    nodes = {n["id"]: n for n in sg["nodes"]}
    links = {link["id"]: link for link in sg["links"]}
    for slot, sg_input in enumerate(sg["inputs"]):
        assert sg_input["linkIds"], f"{sg_input['name']} feeds nothing"
        for link_id in sg_input["linkIds"]:
            link = links[link_id]
            assert (link["origin_id"], link["origin_slot"]) == (-10, slot)
            target = nodes[link["target_id"]]["inputs"][link["target_slot"]]
            assert target["link"] == link_id and target["type"] == sg_input["type"]
    for node in sg["nodes"]:
        spec, _ = _input_spec(comfy_host.node_info(node["type"]))
        order = [n for n, typ, opts in spec if _is_widget(typ, opts)]
        listed = [i["widget"]["name"] for i in node.get("inputs") or [] if i.get("widget")]
        if listed and node["type"] != "ImageScale":  # ImageScale: two widgets converted to sockets in the workflow
            assert listed == order, f"{node['type']} lists its widget inputs out of definition order"
    for node_id, widget in instance["properties"]["proxyWidgets"]:
        inner = nodes[int(node_id)]
        assert any((i.get("widget") or {}).get("name") == widget and i.get("link") for i in inner["inputs"])
    (out_link,) = [links[i] for i in sg["outputs"][0]["linkIds"]]
    assert nodes[out_link["origin_id"]]["type"] in ("ImageScale", "DiffBIRFacePasteBack")


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_nodes_are_the_shipped_workflows_nodes(name):
    """A blueprint packs a shipped workflow (minus its Load Image, alpha path, Save Image, previews and notes): same
    node types, same widget values, same official defaults, so the two never drift apart."""
    workflow = json.loads((REPO / "workflows" / BLUEPRINTS[name][0]).read_text(encoding="utf-8"))
    _, sg = parts(blueprint(name))
    source = {n["id"]: n for n in workflow["nodes"]}
    for node in sg["nodes"]:
        assert node["type"] == source[node["id"]]["type"]
        assert node["widgets_values"] == source[node["id"]]["widgets_values"], node["type"]
    dropped = {n["type"] for i, n in source.items() if i not in {m["id"] for m in sg["nodes"]}}
    # (DiffBIR Keep Alpha takes Load Image's MASK, which a blueprint's IMAGE input does not carry)
    assert dropped <= {"LoadImage", "SaveImage", "PreviewImage", "PreviewAny", "MarkdownNote", "Note",
                       "DiffBIRKeepAlpha"}


def placed(name: str, png: str, instance_values=None) -> dict:
    """A UI workflow as a user makes it: Load Image -> the blueprint's node -> Save Image. instance_values: the
    instance's widgets_values (older frontends store promoted values there)."""
    bp = blueprint(name)
    instance, _ = parts(bp)
    instance = json.loads(json.dumps(instance))
    if instance_values is not None:
        instance["widgets_values"] = instance_values
    load = {"id": 900, "type": "LoadImage", "mode": 0, "inputs": [],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK"}],
            "widgets_values": [png, "image"]}
    save = {"id": 901, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
            "widgets_values": [f"blueprint_{instance['id']}"]}
    instance["inputs"][0]["link"] = 1
    instance["outputs"][0]["links"] = [2]
    links = [[1, 900, 0, instance["id"], 0, "IMAGE"], [2, instance["id"], 0, 901, 0, "IMAGE"]]
    return {**bp, "nodes": [load, instance, save], "links": links}


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_runs_in_the_real_host(comfy_host, tiny_files, input_png, one_thread, monkeypatch, name):  # noqa: F811
    """Placed between Load Image and Save Image and converted as the frontend flattens it, the blueprint runs with
    the tests' tiny models and saves input x upscale; a value the instance stores (older frontends) reaches the
    inner nodes (upscale 2 instead of the official 4 or 2 -> 1.5; steps; seed; colour fix)."""
    from PIL import Image

    upscale = BLUEPRINTS[name][1]
    monkeypatch.setattr(face_node_module(), "detect_faces", one_face)  # random detector weights find nothing
    api = for_test(comfy_host.workflow_to_api(placed(name, input_png)), input_png)
    assert all(":" in node_id for node_id, node in api.items() if node["class_type"] not in ("LoadImage",
                                                                                            "SaveImage"))
    outputs = comfy_host.run(api)
    (save_id,) = [i for i, n in api.items() if n["class_type"] == "SaveImage"]
    (image,) = outputs[save_id]["images"]
    with Image.open(comfy_host.output_dir / image["subfolder"] / image["filename"]) as img:
        assert img.size == (int(INPUT_W * upscale), int(INPUT_H * upscale))

    values = [1.5, "a sharp photo of a cat", 3, 77, "adain"]  # upscale, prompt, steps, seed, color_fix
    api = comfy_host.workflow_to_api(placed(name, input_png, values))
    assert {n["inputs"]["upscale"] for n in by_class(api, "DiffBIRStage1Restore")} <= {1.5, 1.0}
    assert 1.5 in {n["inputs"]["upscale"] for n in by_class(api, "DiffBIRStage1Restore")}
    assert all(n["inputs"]["upscale"] == 1.5 for n in by_class(api, "DiffBIRFaceDetectAlign"))
    assert {(n["inputs"]["steps"], n["inputs"]["seed"]) for n in by_class(api, "DiffBIRSampler")} == {(3, 77)}
    assert {n["inputs"]["method"] for n in by_class(api, "DiffBIRColorFix")} == {"adain"}
    assert "a sharp photo of a cat" in {n["inputs"]["text"] for n in by_class(api, "CLIPTextEncode")}
    outputs = comfy_host.run(for_test(api, input_png))
    (image,) = outputs[save_id]["images"]
    with Image.open(comfy_host.output_dir / image["subfolder"] / image["filename"]) as img:
        assert img.size == (int(INPUT_W * 1.5), int(INPUT_H * 1.5))
    assert saved_images(comfy_host, f"blueprint_{parts(blueprint(name))[0]['id']}")


def _route(host, path: str):
    """The handler ComfyUI's SubgraphManager registers for GET `path` (the in-process server never starts, so the
    routes are made here, by ComfyUI's own add_routes)."""
    from aiohttp import web

    routes = web.RouteTableDef()
    host.server.subgraph_manager.add_routes(routes, host.loaded_modules.items())
    for route in routes:
        if route.method == "GET" and route.path == path:
            return route.handler
    raise AssertionError(f"this ComfyUI's SubgraphManager has no GET {path}")


def test_blueprints_are_served_to_the_node_library(comfy_host):
    """ComfyUI's /global_subgraphs lists each blueprint under this pack (what the frontend's node library shows), and
    /global_subgraphs/{id} gives its graph (the server's own route handlers, called in-process)."""
    from aiohttp.test_utils import make_mocked_request

    def get(path, pattern, **match):
        request = make_mocked_request("GET", path, match_info=match, app=comfy_host.server.app)
        return json.loads(comfy_host.loop.run_until_complete(_route(comfy_host, pattern)(request)).body)

    entries = get("/global_subgraphs", "/global_subgraphs")
    ours = {e["name"]: i for i, e in entries.items() if e["info"]["node_pack"].endswith(".comfyui-diffbir")}
    assert sorted(ours) == sorted(BLUEPRINTS)
    for name, entry_id in ours.items():
        full = get(f"/global_subgraphs/{entry_id}", "/global_subgraphs/{id}", id=entry_id)
        assert parts(json.loads(full["data"]))[1]["name"] == name
