"""The workflows in workflows/ inside a real ComfyUI.

* Format: every file is a UI-format graph (version 0.4) whose nodes, links, slots and link types agree with
  each other and with the host's /object_info, that converts to an API prompt, and that carries a note naming
  its weight files; the official defaults (files, prompts, steps, cfg, upscale) are pinned per file.
* Models metadata (``python -m diffbir_weights.embed``): every widget of a workflow or blueprint that names a
  model file has its ``properties.models`` entry (name, URL and folder as the catalogue gives them) and the
  top-level ``models`` list has it; a file placed at ``<directory>/<name>`` is what the frontend's folder
  listing shows and what the loader node offers under that name; the catalogue's ``LOADERS`` table agrees with
  the nodes' lists.
* Execution: every workflow runs end to end with the official file names replaced by small random-weight
  models (the tiny SD 2.1 shape-alike through the stock checkpoint loader, tiny ControlNets and stage-1
  networks), sampler steps (DiffBIR Sampler, KSampler, BasicScheduler) reduced to 2 and Stage1's minimum short edge lowered from 512 to 64 (CPU time:
  the stock SD VAE is full size); every saved or previewed image has the size the pipeline gives it. The video
  workflow runs on a short clip (``CLIP_FRAMES`` frames with audio): its saved clip has the clip's frame count,
  frame rate and audio duration.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from diffbir_core import stage1 as stage1_core
from diffbir_weights import catalogue as weights
from diffbir_weights.catalogue import LOADERS
from sample_images import clip_facts, write_clip
from tiny_models import (TINY_SD21_NAME, face_node_module, one_face, tiny_sd21_checkpoint, write_tiny_controlnet,
                         write_tiny_retinaface, write_tiny_stage1)

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
BLUEPRINTS = sorted((REPO / "subgraphs").glob("*.json"))  # subgraph blueprints, served at /global_subgraphs
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
_PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PACK_ID = (_PYPROJECT["name"], _PYPROJECT["version"])  # what the frontend reads to offer installing the pack

# Official file name -> what the test puts in its place.
STAGE1_FILES = {"realesrgan_s4_swinir_100k.pth": "swinir", "general_swinir_v1.ckpt": "swinir",
                "face_swinir_v1.ckpt": "swinir", "BSRNet.pth": "bsrnet", "scunet_color_real_psnr.pth": "scunet"}
CONTROLNET_FILES = {"DiffBIR_v2.1.pt": "v2.1", "v2.pth": "v2", "v1_general.pth": "v1", "v1_face.pth": "v1"}
CHECKPOINT_FILES = ("sd2.1-base-zsnr-laionaes5.ckpt", "v2-1_512-ema-pruned.ckpt")
DETECTOR_FILES = {"detection_Resnet50_Final.pth": "resnet50", "detection_mobilenet0.25_Final.pth": "mobilenet0.25"}
TEST_FACE_SIZE = 64  # aligned crops of 64 instead of 512 (CPU time)
TINY_CHECKPOINT = TINY_SD21_NAME
STAGE1_SCALE = {"swinir": 1, "bsrnet": 4, "scunet": 1}
TEST_STEPS, TEST_MIN_SHORT_EDGE = 2, 64
INPUT_W, INPUT_H = 48, 40
CLIP_FRAMES, CLIP_FPS = 3, 12  # the video workflow's input clip (input_png's name with .mp4)

V21_POS = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
           "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, "
           "hyper sharpness, perfect without deformations.")
V21_NEG = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
           "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg "
           "artifacts, deformed, lowres, over-smooth.")
V2_NEG = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"
# node: the sampler node type; sampler: DiffBIR Sampler's sampler_name, or KSampler's (sampler_name, scheduler).
SAMPLER_NODES = ("KSampler", "DiffBIRSampler", "SamplerCustomAdvanced")
EDM_EXTRAS = (0.0, 0.0, 300.0, 1.0, 1.0, 1)  # official s_churn, s_tmin, s_tmax, s_noise, eta, order
V21 = {"files": ("realesrgan_s4_swinir_100k.pth", "DiffBIR_v2.1.pt", "sd2.1-base-zsnr-laionaes5.ckpt"),
       "node": "DiffBIRSampler", "steps": 10, "cfg": 6.0, "sampler": "edm_dpm++_3m_sde", "prompts": (V21_POS, V21_NEG)}
V2 = {"node": "DiffBIRSampler", "steps": 50, "cfg": 4.0, "sampler": "spaced", "prompts": ("", V2_NEG)}
OFFICIAL = {
    "diffbir_v2.1_sr_x4.json": {**V21, "stage1": (4.0, "v2.1")},
    "diffbir_v2.1_video.json": {**V21, "stage1": (4.0, "v2.1"), "noise_mode": "shared"},  # the v2.1 x4 restore over every frame
    "diffbir_v2_sr_bsrnet.json": {**V2, "files": ("BSRNet.pth", "v2.pth", "v2-1_512-ema-pruned.ckpt"),
                                  "stage1": (4.0, "v2")},
    "diffbir_v2_face_aligned.json": {**V2, "files": ("face_swinir_v1.ckpt", "v2.pth", "v2-1_512-ema-pruned.ckpt"),
                                     "stage1": (1.0, "v2")},
    "diffbir_v2_denoise_scunet.json": {**V2, "files": ("scunet_color_real_psnr.pth", "v2.pth",
                                                       "v2-1_512-ema-pruned.ckpt"), "stage1": (1.0, "v2")},
    "diffbir_v1_general.json": {**V2, "cfg": 1.0, "prompts": ("", ""), "stage1": (4.0, "v1"),
                                "files": ("general_swinir_v1.ckpt", "v1_general.pth", "v2-1_512-ema-pruned.ckpt")},
    "diffbir_degrade_restore_compare.json": {**V21, "stage1": (1.0, "v2.1")},
    # the stock custom-sampling graph with DiffBIR Sampler Select; sampler: (its sampler_name, the scheduler)
    "diffbir_v2.1_sampler_select.json": {**V21, "stage1": (4.0, "v2.1"), "node": "SamplerCustomAdvanced",
                                         "sampler": ("edm_dpm++_3m_sde", "simple")},
    # two restorations in one graph: the whole photo (background), then the face crops; pasted back
    "diffbir_v2.1_unaligned_face.json": {
        **V21, "stage1": (2.0, "v2.1"), "report": ("1 face",),
        "files": V21["files"] + ("face_swinir_v1.ckpt", "detection_Resnet50_Final.pth"),
        "pipelines": ({"files": V21["files"], "stage1_input": "LoadImage"},
                      {"files": ("face_swinir_v1.ckpt",) + V21["files"][1:], "stage1": (1.0, "v2.1"),
                       "stage1_input": "DiffBIRFaceDetectAlign"}),
        # detector, upscale (the official README example's 2), score 0.8, eye distance 5, order, all faces, 512
        "face": ("detection_Resnet50_Final.pth", 2.0, 0.8, 5.0, "score", 0, 512)},
    "diffbir_lacontrolnet_stock_ksampler.json": {**V21, "files": ("none", "DiffBIR_v2.1.pt",
                                                                  "sd2.1-base-zsnr-laionaes5.ckpt"), "stage1": None,
                                                 "node": "KSampler", "sampler": ("dpmpp_3m_sde", "simple")},
}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def tiny_name(official: str) -> str:
    return f"tiny_{official.rsplit('.', 1)[0]}.safetensors"


def by_class(api: dict, class_type: str) -> list[dict]:
    return [node for node in api.values() if node["class_type"] == class_type]


def file_widgets(api: dict) -> list[str]:
    """The loaders' file widget values (what the weight downloader reads from a workflow)."""
    values = [n["inputs"][k] for n in by_class(api, "DiffBIRLoadModels") for k in ("stage1_name", "controlnet_name")]
    values += [n["inputs"]["detector_name"] for n in by_class(api, "DiffBIRFaceDetectAlign")]
    return values + [n["inputs"]["ckpt_name"] for n in by_class(api, "CheckpointLoaderSimple")]


def test_the_workflow_set():
    assert [p.name for p in WORKFLOWS] == sorted(OFFICIAL)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in WORKFLOWS:
        assert f"`{path.name}`" in readme, f"README does not list {path.name}"
        for entry in weights.files_needed(OFFICIAL[path.name]["files"], strict=True):
            assert any(f"`{entry.name}`" in line and f"`models/{entry.folder}`" in line
                       for line in readme.splitlines()), f"README's weight table lacks {entry.name}"


# ------------------------------------------------------------------------------------------------ format


def _compatible(input_type, link_type: str) -> bool:
    if isinstance(input_type, list):  # a COMBO converted to an input
        return link_type in ("COMBO", "*")
    return input_type == "*" or link_type in input_type.split(",")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_a_template_thumbnail(path):
    """Browse Templates shows <name>.jpg beside <name>.json (python -m diffbir_cli.thumbnails draws them)."""
    from PIL import Image

    from diffbir_cli import thumbnails

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: run python -m diffbir_cli.thumbnails"
    with Image.open(thumb) as img:
        assert (img.format, img.size) == ("JPEG", thumbnails.SIZE)
    # drawn from this very graph: a fresh drawing has the same size and nearly the same pixels
    with Image.open(io.BytesIO(thumbnails.render(load(path), path.stem))) as fresh, Image.open(thumb) as img:
        diff = np.asarray(fresh.convert("L"), dtype=np.float32) - np.asarray(img.convert("L"), dtype=np.float32)
    assert np.abs(diff).mean() < 2.0, "thumbnail out of date: run python -m diffbir_cli.thumbnails"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_consistent_ui_format(comfy_host, path):
    import comfy_host as ch

    wf = load(path)
    assert wf["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in wf, f"{path.name}: no {key!r}"
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in wf["links"]}
    assert len(links) == len(wf["links"]), "duplicate link ids"
    assert not links or wf["last_link_id"] >= max(links)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(nodes)))

    infos = {}
    for node in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, f"{path.name}: node #{node.get('id')} has no {key!r}"
        assert node["mode"] == 0, f"node #{node['id']} is muted or bypassed"
        if node["type"] in VIRTUAL:
            continue
        assert node["properties"]["Node name for S&R"] == node["type"]
        info = infos[node["id"]] = comfy_host.node_info(node["type"])  # KeyError: not a registered node type
        spec, _ = ch._input_spec(info)
        declared = {name: typ for name, typ, _ in spec}
        for slot, inp in enumerate(node["inputs"]):
            name = (inp.get("widget") or {}).get("name") or inp["name"]
            assert name in declared, f"node #{node['id']} ({node['type']}): no input {name!r}"
            assert inp["type"] == declared[name] or isinstance(declared[name], list)
            if inp.get("link") is not None:
                link = links[inp["link"]]
                assert (link[3], link[4]) == (node["id"], slot), f"link {link[0]} does not end at this slot"
        linked = {(i.get("widget") or {}).get("name") or i["name"] for i in node["inputs"] if i.get("link") is not None}
        for name, typ, opts in spec:
            required = name in (info["input"].get("required") or {})
            if required and not ch._is_widget(typ, opts):
                assert name in linked, f"node #{node['id']} ({node['type']}): required input {name!r} not connected"
        types = [o["type"] for o in node["outputs"]]
        if info.get("python_module", "").startswith("custom_nodes."):  # ours (the only pack the host loads):
            # exactly this pack's outputs, tagged with its registry id
            assert types == info["output"], f"node #{node['id']}: output types"
            assert (node["properties"].get("cnr_id"), node["properties"].get("ver")) == PACK_ID, \
                f"node #{node['id']}: cnr_id / ver must be pyproject's name / version {PACK_ID}"
        else:  # stock: newer hosts append outputs (0.33.0 SaveImage gains IMAGE); the frontend adds them on load
            assert types == info["output"][: len(types)], f"node #{node['id']}: output types"
        for slot, out in enumerate(node["outputs"]):
            for link_id in out.get("links") or []:
                assert links[link_id][1:3] == [node["id"], slot], f"link {link_id} does not start at this slot"

    for link_id, src, src_slot, dst, dst_slot, link_type in wf["links"]:
        assert src in infos and dst in nodes, f"link {link_id} joins missing or virtual nodes"
        assert link_type == infos[src]["output"][src_slot] == nodes[src]["outputs"][src_slot]["type"]
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        target = nodes[dst]["inputs"][dst_slot]
        assert target["link"] == link_id
        name = (target.get("widget") or {}).get("name") or target["name"]
        declared = {n: t for n, t, _ in ch._input_spec(infos[dst])[0]}[name]
        assert _compatible(declared, link_type), f"link {link_id}: {link_type} into {name} ({declared})"
        assert nodes[src]["order"] < nodes[dst]["order"], f"link {link_id}: order is not topological"

    api = comfy_host.workflow_to_api(wf)  # every widget value maps onto a real widget
    notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, f"{path.name} has no note"
    text = "\n".join(v for n in notes for v in n["widgets_values"])
    values = file_widgets(api)
    assert not weights.unknown_files(values), "loader widgets must hold official file names"
    for entry in weights.files_needed(values):  # the note says where each file goes, as the catalogue does
        assert any(entry.name in line and f"models/{entry.folder}" in line for line in text.splitlines()), \
            f"the note of {path.name} does not put {entry.name} in models/{entry.folder}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_uses_official_defaults(comfy_host, path):
    want = OFFICIAL[path.name]
    api = comfy_host.workflow_to_api(load(path))
    samplers = [(i, n) for kind in SAMPLER_NODES for i, n in api.items() if n["class_type"] == kind]
    if by_class(api, "LoadVideo"):  # a clip: Create Video gets the source's frame rate and audio back
        (save,) = by_class(api, "SaveVideo")
        create = api[save["inputs"]["video"][0]]
        assert create["class_type"] == "CreateVideo"
        assert [api[create["inputs"][k][0]]["class_type"] for k in ("fps", "audio")] == ["GetVideoComponents"] * 2
        assert [create["inputs"][k][1] for k in ("audio", "fps")] == [1, 2]
    else:  # the alpha path: the saved image gets the input's transparency back (Load Image's MASK)
        (save,) = by_class(api, "SaveImage")
        alpha = api[save["inputs"]["images"][0]]
        assert alpha["class_type"] == "DiffBIRKeepAlpha" and alpha["inputs"]["mask"][1] == 1
        assert api[alpha["inputs"]["mask"][0]]["class_type"] == "LoadImage"
    if "pipelines" not in want:  # one restoration: one loader, one SD checkpoint, one sampler
        (loader,) = by_class(api, "DiffBIRLoadModels")
        (ckpt,) = by_class(api, "CheckpointLoaderSimple")
        assert (loader["inputs"]["stage1_name"], loader["inputs"]["controlnet_name"],
                ckpt["inputs"]["ckpt_name"]) == want["files"]
        assert [n["class_type"] for _, n in samplers] == [want["node"]]
        stage1 = by_class(api, "DiffBIRStage1Restore")
        _check_sampler(api, want, *samplers[0], stage1[:1])
        if want["stage1"] is None:
            assert not stage1
        else:
            assert [n["inputs"]["method"] for n in by_class(api, "DiffBIRColorFix")] == ["wavelet"]
        return
    # several restorations in one graph (unaligned faces: the whole photo, then the face crops), each pinned
    assert [n["class_type"] for _, n in samplers] == [{**want, **p}["node"] for p in want["pipelines"]]
    for (sampler_id, sampler), pipeline in zip(samplers, want["pipelines"]):
        p = {**want, **pipeline}
        apply = api[sampler["inputs"]["positive"][0]]
        stage1_id = apply["inputs"]["image"][0]
        stage1 = api[stage1_id]
        files = (api[stage1["inputs"]["stage1"][0]]["inputs"]["stage1_name"],
                 api[apply["inputs"]["control_net"][0]]["inputs"]["controlnet_name"],
                 api[apply["inputs"]["model"][0]]["inputs"]["ckpt_name"])
        assert files == p["files"]
        _check_sampler(api, p, sampler_id, sampler, [stage1])
        fixes = [n for n in by_class(api, "DiffBIRColorFix") if n["inputs"]["reference"][0] == stage1_id]
        assert [n["inputs"]["method"] for n in fixes] == ["wavelet"]
        assert api[stage1["inputs"]["image"][0]]["class_type"] == p["stage1_input"]
    if "face" in want:
        (detect,) = by_class(api, "DiffBIRFaceDetectAlign")
        (paste,) = by_class(api, "DiffBIRFacePasteBack")
        d = detect["inputs"]
        assert (d["detector_name"], d["upscale"], d["score_threshold"], d["min_eye_distance"], d["order"],
                d["max_faces"], d["face_size"]) == want["face"]
        assert (paste["inputs"]["erosion"], paste["inputs"]["feather"]) == (0.1, 0.1)
        assert api[alpha["inputs"]["image"][0]]["class_type"] == "DiffBIRFacePasteBack"


def _check_sampler(api: dict, want: dict, sampler_id: str, sampler: dict, stage1: list) -> None:
    """One restoration's sampler, prompts, ControlNet strength, decode and stage 1 against the official values."""
    s = sampler["inputs"]
    if want["node"] == "SamplerCustomAdvanced":  # its settings sit on the nodes feeding it
        noise, guider, select, sigmas = (api[s[k][0]] for k in ("noise", "guider", "sampler", "sigmas"))
        assert [n["class_type"] for n in (noise, guider, select, sigmas)] == \
            ["RandomNoise", "CFGGuider", "DiffBIRSamplerSelect", "BasicScheduler"]
        sel = select["inputs"]
        assert (sigmas["inputs"]["steps"], guider["inputs"]["cfg"], (sel["sampler_name"], sigmas["inputs"]["scheduler"]),
                sigmas["inputs"]["denoise"]) == (want["steps"], want["cfg"], want["sampler"], 1.0)
        assert tuple(sel[k] for k in ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order")) == EDM_EXTRAS
        assert sigmas["inputs"]["model"] == guider["inputs"]["model"], "sigmas and guider must share the MODEL"
        latent = api[s["latent_image"][0]]
        assert latent["class_type"] == "EmptyLatentImage" and latent["inputs"]["batch_size"] == 1
        s = {**guider["inputs"], "seed": noise["inputs"]["noise_seed"]}  # model, prompts and seed checked below
    elif want["node"] == "KSampler":
        assert (s["steps"], s["cfg"], (s["sampler_name"], s["scheduler"]), s["denoise"]) == \
            (want["steps"], want["cfg"], want["sampler"], 1.0)
    else:  # the official sampler on its official grid, official defaults for everything else
        assert (s["steps"], s["cfg"], s["sampler_name"]) == (want["steps"], want["cfg"], want["sampler"])
        assert (s["rescale_cfg"], s["start_point"], s["noise_aug"], s["tile_size"], s["guidance"]) == \
            (False, "noise", 0, 0, "none")
        assert (s["s_churn"], s["s_tmin"], s["s_tmax"], s["s_noise"], s["eta"], s["order"]) == EDM_EXTRAS
        assert "latent" not in s, "the DiffBIR Sampler sizes its latent from the condition"
        # a clip's frames share one noise (the remedy for flicker); an image batch draws seed + k per frame
        assert s.get("noise_mode", "per frame") == want.get("noise_mode", "per frame")
    assert s["seed"] == 231  # the official default seed
    texts = [api[s[name][0]]["inputs"]["text"] for name in ("positive", "negative")
             if api[s[name][0]]["class_type"] == "CLIPTextEncode"]
    if not texts:  # through LAControlNet Apply
        apply = api[s["positive"][0]]
        assert apply["class_type"] == "DiffBIRLAControlNetApply"
        assert s["model"] == [s["positive"][0], 2], "the sampler must take LAControlNet Apply's MODEL output"
        assert (apply["inputs"]["strength"], apply["inputs"]["start_percent"], apply["inputs"]["end_percent"]) == \
            (1.0, 0.0, 1.0)
        assert apply["inputs"]["vae_tile_size"] == 0, "the official condition encode is untiled"
        if want["node"] != "KSampler":
            decodes = by_class(api, "DiffBIRVAEDecode")
            if len(decodes) > 1:  # several restorations: the decode of this sampler's latent
                decodes = [n for n in decodes if n["inputs"]["samples"][0] == sampler_id]
            (decode,) = decodes  # the official v2 tiled decode, whole below one tile
            assert (decode["inputs"]["tile_size"], decode["inputs"]["tile_stride"]) == (512, 256)
        texts = [api[apply["inputs"][name][0]]["inputs"]["text"] for name in ("positive", "negative")]
    assert tuple(texts) == want["prompts"]
    if want["stage1"] is not None:
        inputs = stage1[0]["inputs"]
        assert (inputs["upscale"], inputs["version"], inputs["min_short_edge"]) == (*want["stage1"], 512)


# ------------------------------------------------------------------------------------------------ models metadata


def _graph_nodes(graph: dict):
    """(where, node) for the nodes that load things: the graph's and its subgraph definitions', without notes,
    primitives, reroutes and subgraph instances."""
    subgraphs = (graph.get("definitions") or {}).get("subgraphs") or []
    instances = {s.get("id") for s in subgraphs}
    lists = [("", graph.get("nodes") or [])] + [(f"subgraph {s.get('name')!r}: ", s.get("nodes") or [])
                                                 for s in subgraphs]
    for where, nodes in lists:
        for node in nodes:
            if node.get("type") not in VIRTUAL and node.get("type") not in instances:
                yield where, node


def _widgets(comfy_host, node: dict) -> dict:
    """The node's widget values by widget name, mapped as the host maps them (its links left out)."""
    alone = {**node, "inputs": [{**i, "link": None} for i in node.get("inputs") or []],
             "outputs": [{**o, "links": []} for o in node.get("outputs") or []], "mode": 0}
    (api,) = comfy_host.workflow_to_api({"nodes": [alone], "links": []}).values()
    return api["inputs"]


def _options(info: dict, name: str) -> list:
    """A COMBO widget's options from /object_info data ([options, {...}] or V3's ["COMBO", {"options": ...}])."""
    spec = {**(info["input"].get("required") or {}), **(info["input"].get("optional") or {})}[name]
    return spec[0] if isinstance(spec[0], list) else (spec[1] or {}).get("options") or []


def _is_model_file(value) -> bool:
    import folder_paths

    return isinstance(value, str) and value.lower().endswith(tuple(folder_paths.supported_pt_extensions))


@pytest.mark.parametrize("path", WORKFLOWS + BLUEPRINTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_file_widget_has_its_models_entry(comfy_host, path):
    """The frontend's missing-models check sees a node's file only through properties.models (name = the widget
    value); each entry must say what the catalogue says, and the top-level list must hold every one of them."""
    import comfy_host as ch

    graph = load(path)
    top = graph.get("models") or []
    seen = []
    for where, node in _graph_nodes(graph):
        label = f"{path.name}: {where}node #{node['id']} ({node['type']})"
        values = _widgets(comfy_host, node)
        types = {name: typ for name, typ, _ in ch._input_spec(comfy_host.node_info(node["type"]))[0]}
        entries = (node.get("properties") or {}).get("models") or []
        for item in entries:
            assert item["name"] in values.values(), f"{label}: stale entry {item['name']!r}"
        for widget, value in values.items():
            typ = types.get(widget)  # None: an input a DynamicCombo's option adds ("format.codec"), no file
            is_combo = isinstance(typ, list) or typ == "COMBO"
            if not (is_combo and _is_model_file(value)):
                continue
            matching = [item for item in entries if item["name"] == value]
            assert len(matching) == 1, f"{label}: widget {widget} = {value!r} has {len(matching)} models entries"
            official = weights.lookup(value)
            assert official is not None, f"{label}: {value!r} is not in the catalogue"
            want = {"name": value, "url": official.url, "directory": LOADERS[node["type"]].folder_of(value)}
            if official.sha256:
                want.update(hash=official.sha256, hash_type="sha256")
            assert matching[0] == want, f"{label}: the entry disagrees with the catalogue"
            assert want in top, f"{label}: the top-level models list lacks {value!r}"
            seen.append(want)
    assert seen or path in BLUEPRINTS, f"{path.name} names no model file"  # a blueprint may load nothing
    assert sorted(map(json.dumps, top)) == sorted(set(map(json.dumps, seen))), "top-level list: extra entries"


def _probe_in(comfy_models_dir: Path, directory: str, relative: str) -> Path:
    """An empty probe file at <directory>/<relative> of the test models folder (never the user's)."""
    import os

    import folder_paths

    folder = comfy_models_dir / directory
    assert os.path.normpath(folder) in map(os.path.normpath, folder_paths.get_folder_paths(directory)), \
        f"the host does not read models/{directory} from the test models folder"
    probe = folder / relative
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    return probe


@pytest.mark.parametrize("path", WORKFLOWS + BLUEPRINTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_models_entries_name_the_folders_the_loaders_list(comfy_host, comfy_models_dir, path):
    """For each entry: a file at <directory>/<name> (where the frontend looks, and where its download lands) is
    listed by GET /experiment/models/<directory> under <name> (the frontend's presence check) and offered by
    the loader's widget as <name>, the widget value. A probe file named like the entry stands in for it, so an
    official name that a loader lists even when absent cannot make this pass."""
    import folder_paths

    files = type(comfy_host.server.model_file_manager)  # the class behind /experiment/models/<directory>
    checked = 0
    for where, node in _graph_nodes(load(path)):
        values = _widgets(comfy_host, node)
        for item in (node.get("properties") or {}).get("models") or []:
            label = f"{path.name}: {where}node #{node['id']} ({node['type']}) {item['name']!r}"
            directory = item["directory"]
            assert directory in folder_paths.folder_names_and_paths, f"{label}: no models folder {directory!r}"
            widget = next(k for k, v in values.items() if v == item["name"])
            head, _, base = item["name"].replace("\\", "/").rpartition("/")
            name = (head + "/" if head else "") + f"zz_probe_{uuid.uuid4().hex[:8]}_{base}"
            probe = _probe_in(comfy_models_dir, directory, name)
            try:
                comfy_host.refresh_models()
                listed = [f["name"].replace("\\", "/") for f in files().get_model_file_list(directory)]
                assert name in listed, f"{label}: models/{directory} lists the file as another name ({listed})"
                options = _options(comfy_host.node_info(node["type"]), widget)
                assert name in options, f"{label}: {node['type']}.{widget} does not offer models/{directory}/{name}"
                checked += 1
            finally:
                probe.unlink()
                comfy_host.refresh_models()
    assert checked or path in BLUEPRINTS, f"{path.name} has no models entries"


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_the_loader_table_matches_the_nodes(comfy_host, comfy_models_dir, kind):
    """catalogue.LOADERS against the real nodes: a file in each folder it names appears in the node's list,
    bare in the main folder and with the folder as prefix in the others; the table maps that value back."""
    import comfy_host as ch

    if kind not in comfy_host.node_classes:
        assert not kind.startswith("DiffBIR"), f"catalogue.LOADERS names {kind}, which this pack does not register"
        pytest.skip(f"{kind} is not a node of this ComfyUI")
    loader = LOADERS[kind]
    for folder in (loader.folder, *loader.prefixed):
        probe = _probe_in(comfy_models_dir, folder, f"zz_probe_{uuid.uuid4().hex[:8]}.pth")
        value = probe.name if folder == loader.folder else f"{folder}/{probe.name}"
        try:
            comfy_host.refresh_models()
            info = comfy_host.node_info(kind)
            lists = [_options(info, name) for name, typ, _ in ch._input_spec(info)[0]
                     if isinstance(typ, list) or typ == "COMBO"]
            assert any(value in options for options in lists), f"{kind} does not list {value!r}"
            assert loader.folder_of(value) == folder
        finally:
            probe.unlink()
            comfy_host.refresh_models()


# ------------------------------------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def tiny_files(comfy_host, comfy_models_dir):
    assert tiny_sd21_checkpoint(comfy_models_dir) == TINY_CHECKPOINT
    for official, kind in STAGE1_FILES.items():
        write_tiny_stage1(comfy_models_dir / "diffbir" / tiny_name(official), kind)
    for official, version in CONTROLNET_FILES.items():
        write_tiny_controlnet(comfy_models_dir / "diffbir" / tiny_name(official), version)
    (comfy_models_dir / "facedetection").mkdir(exist_ok=True)
    for official, backbone in DETECTOR_FILES.items():
        write_tiny_retinaface(comfy_models_dir / "facedetection" / tiny_name(official), backbone)
    comfy_host.refresh_models()
    return comfy_models_dir


@pytest.fixture(scope="module")
def input_png(comfy_host):
    import folder_paths
    from PIL import Image

    g = torch.Generator().manual_seed(11)
    arr = (torch.rand(INPUT_H, INPUT_W, 3, generator=g) * 255).round().byte().numpy()
    name = f"diffbir_workflow_{uuid.uuid4().hex[:8]}.png"
    path = Path(folder_paths.get_input_directory()) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    clip = path.with_suffix(".mp4")  # what Load Video loads (for_test)
    write_clip(clip, CLIP_FRAMES, (INPUT_W, INPUT_H), CLIP_FPS)
    yield name
    path.unlink(missing_ok=True)
    clip.unlink(missing_ok=True)


def for_test(api: dict, png: str) -> dict:
    """The workflow's prompt with tiny models, the test image (or clip), 2 steps and a 64-pixel minimum short
    edge."""
    for node in api.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LoadImage":
            inputs["image"] = png
        elif kind == "LoadVideo":
            inputs["file"] = str(Path(png).with_suffix(".mp4"))
        elif kind == "CheckpointLoaderSimple":
            assert inputs["ckpt_name"] in CHECKPOINT_FILES
            inputs["ckpt_name"] = TINY_CHECKPOINT
        elif kind == "DiffBIRLoadModels":
            for key, table in (("stage1_name", STAGE1_FILES), ("controlnet_name", CONTROLNET_FILES)):
                assert inputs[key] == "none" or inputs[key] in table, f"{key}: not an official file name"
                if inputs[key] != "none":
                    inputs[key] = tiny_name(inputs[key])
        elif kind in ("KSampler", "DiffBIRSampler", "BasicScheduler"):
            inputs["steps"] = TEST_STEPS
        elif kind == "DiffBIRStage1Restore":
            inputs["min_short_edge"] = TEST_MIN_SHORT_EDGE
        elif kind == "DiffBIRFaceDetectAlign":
            assert inputs["detector_name"] in DETECTOR_FILES
            inputs["detector_name"] = tiny_name(inputs["detector_name"])
            inputs["face_size"] = TEST_FACE_SIZE
    return api


class Sizes:
    """Image / latent / integer values of a prompt's nodes, computed from the official size rules."""

    def __init__(self, api, original):
        self.api, self.original = api, original  # original: the workflow's prompt before for_test()

    def value(self, ref):
        return self.output(*ref) if isinstance(ref, list) else ref

    def output(self, node_id, slot=0):
        node = self.api[node_id]
        kind, inputs = node["class_type"], node["inputs"]
        if kind in ("LoadImage", "GetVideoComponents"):
            return (INPUT_W, INPUT_H)
        if kind == "DiffBIRDegrade":
            return self.value(inputs["image"])
        if kind == "DiffBIRStage1Restore":
            w, h = self.value(inputs["image"])
            loader = self.original[inputs["stage1"][0]]["inputs"]["stage1_name"]
            pipeline = STAGE1_FILES[loader]
            p = stage1_core.plan(h, w, pipeline, inputs["upscale"], inputs["version"], inputs["min_short_edge"],
                                 STAGE1_SCALE[pipeline])
            size = (p.working_size[1], p.working_size[0])
            return [size, p.target_size[1], p.target_size[0]][slot]
        if kind == "GetImageSize":
            return self.value(inputs["image"])[slot] if slot < 2 else 1
        if kind == "ImageScale":
            return (self.value(inputs["width"]), self.value(inputs["height"]))
        if kind in ("DiffBIRColorFix", "DiffBIRKeepAlpha"):
            return self.value(inputs["image"])
        if kind == "DiffBIRFaceDetectAlign":  # the aligned crops
            return (inputs["face_size"], inputs["face_size"])
        if kind == "DiffBIRFacePasteBack":  # image, faces_only: the background's size
            return self.value(inputs["background"])
        if kind == "EmptyLatentImage":
            return (self.value(inputs["width"]) // 8, self.value(inputs["height"]) // 8)
        if kind == "VAEEncode":
            w, h = self.value(inputs["pixels"])
            return (w // 8, h // 8)
        if kind in ("KSampler", "SamplerCustomAdvanced"):
            return self.value(inputs["latent_image"])
        if kind == "DiffBIRSampler":  # the connected latent's size, else the condition image's size / 8 rounded up
            if "latent" in inputs:
                return self.value(inputs["latent"])
            apply = self.api[inputs["positive"][0]]
            assert apply["class_type"] == "DiffBIRLAControlNetApply"
            w, h = self.value(apply["inputs"]["image"])
            return (math.ceil(w / 8), math.ceil(h / 8))
        if kind in ("VAEDecode", "DiffBIRVAEDecode"):
            w, h = self.value(inputs["samples"])
            return (w * 8, h * 8)
        raise AssertionError(f"no size rule for {kind}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_with_tiny_models(comfy_host, tiny_files, input_png, one_thread, monkeypatch, path):
    import folder_paths
    from PIL import Image

    original = comfy_host.workflow_to_api(load(path))
    api = for_test(json.loads(json.dumps(original)), input_png)
    if by_class(api, "DiffBIRFaceDetectAlign"):  # random detector weights cannot decide where faces are
        monkeypatch.setattr(face_node_module(), "detect_faces", one_face)
    outputs = comfy_host.run(api)
    sizes = Sizes(api, original)
    load_video = next((i for i, n in api.items() if n["class_type"] == "LoadVideo"), None)
    checked = 0
    for node_id, node in api.items():
        if node["class_type"] in ("SaveImage", "PreviewImage"):
            want = sizes.value(node["inputs"]["images"])
            (image,) = outputs[node_id]["images"]
            folder = folder_paths.get_output_directory() if image["type"] == "output" else \
                folder_paths.get_temp_directory()
            with Image.open(Path(folder) / image["subfolder"] / image["filename"]) as img:
                assert img.size == want, f"node {node_id} ({node['class_type']}): {img.size} != {want}"
                source = api[node["inputs"]["images"][0]]
                if source["class_type"] == "DiffBIRFacePasteBack" and node["inputs"]["images"][1] == 1:
                    assert np.asarray(img).max() > 0, "faces_only is black: no face was pasted"
            checked += 1
        elif node["class_type"] == "SaveVideo":  # the restored clip: the source's frames, rate and audio
            (video,) = outputs[node_id]["images"]
            clip = clip_facts(Path(folder_paths.get_output_directory()) / video["subfolder"] / video["filename"])
            source = clip_facts(Path(folder_paths.get_input_directory()) / api[load_video]["inputs"]["file"])
            assert (clip["frames"], clip["fps"]) == (source["frames"], source["fps"]) == (CLIP_FRAMES, CLIP_FPS)
            assert clip["size"] == sizes.value(api[node["inputs"]["video"][0]]["inputs"]["images"])
            assert abs(clip["audio_seconds"] - source["audio_seconds"]) <= 1024 / 16000, "audio: not the source's"
            checked += 1
        elif node["class_type"] == "PreviewAny":
            text = "".join(outputs[node_id]["text"])
            for word in OFFICIAL[path.name].get("report", ("PSNR", "SSIM")):
                assert word in text, f"node {node_id} (PreviewAny): {word!r} not in {text!r}"
    assert checked >= 1
    if OFFICIAL[path.name]["stage1"] is not None:  # the final image has the official size: input x upscale
        upscale, version = OFFICIAL[path.name]["stage1"]  # the whole photo's Stage1 (pinned above)
        (save,) = by_class(api, "SaveImage") or by_class(api, "CreateVideo")
        rnd = math.ceil if version == "v1" else int
        assert sizes.value(save["inputs"]["images"]) == (rnd(INPUT_W * upscale), rnd(INPUT_H * upscale))
