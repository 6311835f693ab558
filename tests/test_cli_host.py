"""The real-ComfyUI test harness itself: in-process host, UI-workflow conversion, HTTP server."""

import io
import json
import os
import pathlib
import time

import pytest

import comfy_host as ch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _empty_image_save(width, height, prefix, color=0):
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def _saved_file(host, image):
    assert image["type"] == "output"
    return host.output_dir / image["subfolder"] / image["filename"]


# (a) ---------------------------------------------------------------------------------------------
def test_stock_graph_runs_in_process(comfy_host):
    from PIL import Image

    outputs = comfy_host.run(_empty_image_save(64, 48, "host_smoke", color=0x336699))
    images = outputs["2"]["images"]
    assert len(images) == 1
    path = _saved_file(comfy_host, images[0])
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (64, 48)
        assert img.convert("RGB").getpixel((10, 10)) == (0x33, 0x66, 0x99)


def test_invalid_prompt_raises_with_comfy_validation_text(comfy_host):
    prompt = _empty_image_save(64, 48, "host_bad")
    prompt["1"]["inputs"]["width"] = 0  # below EmptyImage's minimum of 1
    with pytest.raises(ch.PromptValidationError, match=r"(?s)node 1 \(EmptyImage\).*width"):
        comfy_host.run(prompt)


def test_execution_error_raises_with_executor_message(comfy_host):
    prompt = _empty_image_save(8, 8, "../../outside_output")  # SaveImage refuses at execution time
    with pytest.raises(ch.PromptExecutionError, match=r"node 2 \(SaveImage\).*outside the output folder"):
        comfy_host.run(prompt)
    assert comfy_host.run(_empty_image_save(8, 8, "after_error"))["2"]["images"]  # host still usable


def test_model_folders_resolve_to_session_models_dir(comfy_host, comfy_models_dir):
    import folder_paths

    for name in ("checkpoints", "controlnet", "upscale_models", "diffbir"):
        assert folder_paths.get_folder_paths(name)[0] == str(comfy_models_dir / name)
    before = comfy_host.node_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert "late_added.safetensors" not in before
    (comfy_models_dir / "checkpoints" / "late_added.safetensors").write_bytes(b"")
    try:
        comfy_host.refresh_models()
        after = comfy_host.node_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
        assert "late_added.safetensors" in after
    finally:
        (comfy_models_dir / "checkpoints" / "late_added.safetensors").unlink()
        comfy_host.refresh_models()


# (b) ---------------------------------------------------------------------------------------------
def test_extension_loaded_without_import_error(comfy_host):
    loaded = comfy_host.loaded_modules
    assert ch.EXTENSION_NAME in loaded, f"{ch.EXTENSION_NAME} missing from nodes.LOADED_MODULE_DIRS"
    assert pathlib.Path(loaded[ch.EXTENSION_NAME]).resolve() == REPO_ROOT
    # Only our extension was offered to ComfyUI as a custom node.
    custom = [d for d in loaded.values() if pathlib.Path(d).parent == ch.custom_nodes_dir()]
    assert custom == [loaded[ch.EXTENSION_NAME]]

    ext = comfy_host.extension_module
    assert ext is not None and pathlib.Path(ext.__file__).resolve() == REPO_ROOT / "__init__.py"
    extension = comfy_host.loop.run_until_complete(ext.comfy_entrypoint())
    listed = comfy_host.loop.run_until_complete(extension.get_node_list())
    assert listed
    for cls in listed:  # every node the extension lists is registered and describable
        name = cls.GET_SCHEMA().node_id
        assert comfy_host.node_classes.get(name) is cls, f"{name} not registered (name clash with a builtin?)"
        info = comfy_host.node_info(name)
        assert info["name"] == name
        assert info["python_module"] == f"custom_nodes.{ch.EXTENSION_NAME}"


def test_node_info_matches_object_info_shape(comfy_host):
    info = comfy_host.node_info("EmptyImage")
    assert info["input_order"]["required"] == ["width", "height", "batch_size", "color"]
    assert info["output"] == ["IMAGE"] and info["output_node"] is False
    with pytest.raises(KeyError):
        comfy_host.node_info("NoSuchNode_xyz")


# (c) ---------------------------------------------------------------------------------------------
def _ui_invert_workflow():
    return {
        "last_node_id": 5, "last_link_id": 3, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0, "pos": [0, 0], "size": [300, 130],
             "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": None}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
             "properties": {"Node name for S&R": "EmptyImage"}, "widgets_values": [40, 24, 1, 0]},
            {"id": 2, "type": "ImageInvert", "mode": 0, "pos": [350, 0], "size": [200, 30],
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2], "slot_index": 0}],
             "properties": {}},
            {"id": 5, "type": "Reroute", "mode": 0, "pos": [600, 0], "size": [75, 26],
             "inputs": [{"name": "", "type": "*", "link": 2}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [3], "slot_index": 0}],
             "properties": {"showOutputText": False, "horizontal": False}},
            {"id": 3, "type": "SaveImage", "mode": 0, "pos": [700, 0], "size": [300, 300],
             "inputs": [{"name": "images", "type": "IMAGE", "link": 3}], "outputs": [],
             "properties": {}, "widgets_values": ["ui_invert"]},
            {"id": 4, "type": "Note", "mode": 0, "pos": [0, 200], "size": [300, 100],
             "properties": {"text": ""}, "widgets_values": ["A note the backend never sees."]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 5, 0, "*"], [3, 5, 0, 3, 0, "IMAGE"]],
    }


def test_workflow_to_api_converts_and_runs(comfy_host):
    from PIL import Image

    api = comfy_host.workflow_to_api(_ui_invert_workflow())
    assert {k: (v["class_type"], v["inputs"]) for k, v in api.items()} == {
        "1": ("EmptyImage", {"width": 40, "height": 24, "batch_size": 1, "color": 0}),
        "2": ("ImageInvert", {"image": ["1", 0]}),
        "3": ("SaveImage", {"images": ["2", 0], "filename_prefix": "ui_invert"}),
    }
    outputs = comfy_host.run(api)
    with Image.open(_saved_file(comfy_host, outputs["3"]["images"][0])) as img:
        assert img.size == (40, 24)
        assert img.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # inverted black


def test_workflow_to_api_skips_control_after_generate_value(comfy_host):
    workflow = {"version": 0.4, "links": [], "nodes": [
        {"id": 9, "type": "KSampler", "mode": 0,
         "inputs": [{"name": n, "type": t, "link": None} for n, t in
                    (("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                     ("latent_image", "LATENT"))],
         "widgets_values": [123, "randomize", 20, 7.5, "euler", "normal", 0.6]}]}
    api = comfy_host.workflow_to_api(workflow)
    assert api["9"]["inputs"] == {"seed": 123, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                  "scheduler": "normal", "denoise": 0.6}


def _dynamic_combo(options: dict) -> list:
    """A V3 DynamicCombo as /object_info gives it: {key: {"required": {...}, "optional": {...}}}."""
    return ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": k, "inputs": v} for k, v in options.items()]}]


# ComfyUI 0.33.0's Save Video, abridged from its /object_info (tooltips and the mkv/webm/av1 options left out):
# format and codec are DynamicCombos; the top-level codec is the hidden optional input old graphs fill.
_CODEC = _dynamic_combo({"auto": {"required": {}}, "h264": {"required": {}, "optional": {"encoding": _dynamic_combo({
    "auto": {"required": {}},
    "re-encode": {"required": {"crf": ["FLOAT", {"default": 23.0}],
                               "color_space": ["COMBO", {"options": ["auto", "sRGB"]}]}}})}}})
SAVE_VIDEO_033 = {"input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {}],
                                         "format": _dynamic_combo({"auto": {"required": {"codec": _CODEC}},
                                                                   "mp4": {"required": {"codec": _CODEC}}})},
                            "optional": {"codec": _CODEC}, "hidden": {"prompt": "PROMPT"}},
                  "input_order": {"required": ["video", "filename_prefix", "format"], "optional": ["codec"]}}


@pytest.mark.parametrize("values, want", [
    # the video workflow as saved (0.3.75's format and codec combos) reads as format + its option's codec
    (["video/x", "auto", "auto"], {"format": "auto", "format.codec": "auto"}),
    # the frontend inserts a chosen option's widgets right after the combo, nested options likewise
    (["video/x", "mp4", "h264", "re-encode", 18.0, "sRGB"],
     {"format": "mp4", "format.codec": "h264", "format.codec.encoding": "re-encode",
      "format.codec.encoding.crf": 18.0, "format.codec.encoding.color_space": "sRGB"}),
    (["video/x", "mp4", "h264"], {"format": "mp4", "format.codec": "h264"}),  # optional encoding not saved
    ({"filename_prefix": "video/x", "format": "mp4", "format.codec": "auto"},
     {"format": "mp4", "format.codec": "auto"}),
])
def test_workflow_to_api_dynamic_combo_widgets(values, want):
    """Newer hosts' V3 DynamicCombo widgets (0.33.0's Save Video format), without a host: the node_info above."""
    from diffbir_cli.workflow import workflow_to_api

    node = {"id": 19, "type": "SaveVideo", "mode": 0, "inputs": [{"name": "video", "type": "VIDEO", "link": None}],
            "widgets_values": values}
    api = workflow_to_api({"nodes": [node], "links": []}, {"SaveVideo": object}, lambda kind: SAVE_VIDEO_033)
    assert api["19"]["inputs"] == {"filename_prefix": "video/x", **want}


def test_workflow_to_api_unknown_node_type(comfy_host):
    workflow = _ui_invert_workflow()
    workflow["nodes"][1]["type"] = "NoSuchNode_xyz"
    with pytest.raises(ch.WorkflowConversionError, match=r"node #2 .*NoSuchNode_xyz.* does not exist"):
        comfy_host.workflow_to_api(workflow)


def test_workflow_to_api_unknown_widget(comfy_host):
    workflow = _ui_invert_workflow()
    workflow["nodes"][0]["inputs"].append({"name": "bogus", "type": "INT", "widget": {"name": "bogus"},
                                           "link": None})
    with pytest.raises(ch.WorkflowConversionError, match=r"node #1 \('EmptyImage'\): input 'bogus' does not exist"):
        comfy_host.workflow_to_api(workflow)

    workflow = _ui_invert_workflow()
    workflow["nodes"][0]["widgets_values"].append(99)
    with pytest.raises(ch.WorkflowConversionError, match=r"node #1 .*extra values \[99\]"):
        comfy_host.workflow_to_api(workflow)


# (d) ---------------------------------------------------------------------------------------------
def _wait_for_history(session, url, prompt_id, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = session.get(f"{url}/history/{prompt_id}", timeout=10).json()
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def _view_png(session, url, image):
    from PIL import Image

    view = session.get(f"{url}/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                              "type": image["type"]}, timeout=30)
    assert view.status_code == 200
    assert view.content[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(view.content)) as img:
        assert img.format == "PNG"
        return img.size


def _our_nodes_prompt(image_name, model_name):
    """Degrade -> Stage1 SwinIR Restore (stock Load Upscale Model) -> DiffBIR Color Fix: no SD model needed."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "DiffBIRDegrade", "inputs": {"image": ["1", 0], "preset": "general", "seed": 5}},
        "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "4": {"class_type": "DiffBIRStage1Restore",
              "inputs": {"image": ["2", 0], "upscale_model": ["3", 0], "upscale": 2.0, "version": "v2.1",
                         "min_short_edge": 64, "tile_size": 0, "tile_overlap": 128}},
        "5": {"class_type": "DiffBIRColorFix", "inputs": {"image": ["4", 0], "reference": ["2", 1],
                                                         "method": "wavelet"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "server_diffbir"}},
    }


@pytest.mark.slow
def test_real_server_prompt_history_view(comfy_host, tmp_path):
    import numpy as np
    import requests
    from PIL import Image

    from tiny_models import write_tiny_stage1

    models = tmp_path / "models"
    (models / "upscale_models").mkdir(parents=True)
    write_tiny_stage1(models / "upscale_models" / "tiny_swinir.safetensors", "swinir")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(png, "PNG")

    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through an environment proxy
    start = time.monotonic()
    with ch.start_server(models_dir=models) as url:
        assert url.startswith("http://127.0.0.1:")
        object_info = session.get(f"{url}/object_info/EmptyImage", timeout=30).json()
        assert object_info["EmptyImage"] == comfy_host.node_info("EmptyImage")
        all_info = session.get(f"{url}/object_info", timeout=60).json()
        package = comfy_host.extension_module.__name__ + "."
        ours = [name for name, cls in comfy_host.node_classes.items() if cls.__module__.startswith(package)]
        assert len(ours) >= 10
        for name in ours:
            assert name in all_info, f"server did not register {name}"
            # its help page, where the frontend's help panel asks for it (WEB_DIRECTORY = web/)
            page = session.get(f"{url}/extensions/{ch.EXTENSION_NAME}/docs/{name}.md", timeout=30)
            assert page.status_code == 200 and page.text.startswith(f"# {all_info[name]['display_name']}\n")

        # The blueprints of subgraphs/ in the node library's source (GET /global_subgraphs, then one by id).
        blueprints = session.get(f"{url}/global_subgraphs", timeout=30).json()
        mine = {e["name"]: i for i, e in blueprints.items() if e["info"]["node_pack"].endswith(ch.EXTENSION_NAME)}
        assert sorted(mine) == sorted(p.stem for p in (REPO_ROOT / "subgraphs").glob("*.json")) and mine
        one = session.get(f"{url}/global_subgraphs/{next(iter(mine.values()))}", timeout=30).json()
        assert json.loads(one["data"])["definitions"]["subgraphs"]

        # The workflows folder is served as templates (Workflow > Browse Templates).
        templates = session.get(f"{url}/workflow_templates", timeout=30).json()
        names = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
        assert sorted(templates.get(ch.EXTENSION_NAME, [])) == names
        served = session.get(f"{url}/api/workflow_templates/{ch.EXTENSION_NAME}/{names[0]}.json", timeout=30)
        assert served.status_code == 200 and served.json()["nodes"]

        resp = session.post(f"{url}/prompt", json={"prompt": _empty_image_save(72, 40, "server_smoke"),
                                                   "client_id": "comfyui-diffbir-tests"}, timeout=30)
        assert resp.status_code == 200, resp.text
        entry = _wait_for_history(session, url, resp.json()["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert _view_png(session, url, entry["outputs"]["2"]["images"][0]) == (72, 40)

        # Our nodes in the server process: upload an image, run it, fetch the result.
        upload = session.post(f"{url}/upload/image", files={"image": ("diffbir_server_in.png", png.getvalue(),
                                                                      "image/png")}, timeout=30)
        assert upload.status_code == 200, upload.text
        prompt = _our_nodes_prompt(upload.json()["name"], "tiny_swinir.safetensors")
        resp = session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": "comfyui-diffbir-tests"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        entry = _wait_for_history(session, url, resp.json()["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        # 40x24 x2 = 80x48; short edge 48 < 64 -> 64, long side int(80 * 64 / 48) = 106 (v2.1 rounding).
        assert _view_png(session, url, entry["outputs"]["6"]["images"][0]) == (106, 64)
    print(f"server test wall time {time.monotonic() - start:.1f} s (pid {os.getpid()})")
