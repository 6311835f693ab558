"""``python -m diffbir_weights.embed``: the frontend's ``models`` metadata, written from the one catalogue.

Plain tests on small graphs (no ComfyUI): which nodes get entries and with what, subgraph blueprints, stale
entries, hashes only where known, the refusals, the command; and that every shipped workflow and blueprint is
up to date (running the generator changes nothing). tests/test_workflows.py checks the same metadata against
the real host: every file widget has its entry, and every entry's folder is one the loader lists.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from diffbir_weights import catalogue, embed
from diffbir_weights.catalogue import CATALOGUE

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "workflows").glob("*.json")) + sorted((REPO / "subgraphs").glob("*.json"))


def node(id_, type_, *values, properties=None):
    return {"id": id_, "type": type_, "widgets_values": list(values),
            "properties": {"Node name for S&R": type_, **(properties or {})}}


def entry(name, directory, file=None):
    return {"name": name, "url": CATALOGUE[file or name].url, "directory": directory}


def test_loader_nodes_get_one_entry_per_official_file_and_the_graph_lists_them_all():
    graph = {"nodes": [
        node(1, "LoadImage", "example.png", "image"),
        node(2, "DiffBIRLoadModels", "realesrgan_s4_swinir_100k.pth", "DiffBIR_v2.1.pt", "auto"),
        node(3, "CheckpointLoaderSimple", "sd2.1-base-zsnr-laionaes5.ckpt"),
        node(4, "DiffBIRLoadModels", "face_swinir_v1.ckpt", "none", "auto"),
        node(5, "DiffBIRFaceDetectAlign", "detection_Resnet50_Final.pth", 2.0, 0.8, 5.0, "score", 0, 512),
        node(6, "DiffBIRLoadModels", "upscale_models/BSRNet.pth", "controlnet/v2.pth", "auto"),
        node(7, "MarkdownNote", "DiffBIR_v2.1.pt"),  # text on the canvas, even when it is only a file name
        node(8, "PrimitiveNode", "v2.pth"),  # a value feeding a loader: the loader's widget carries it too
    ]}
    out = embed.embed(graph)
    models = {n["id"]: n["properties"].get("models") for n in out["nodes"]}
    assert models == {
        1: None, 7: None, 8: None,
        2: [entry("realesrgan_s4_swinir_100k.pth", "diffbir"), entry("DiffBIR_v2.1.pt", "diffbir")],
        3: [entry("sd2.1-base-zsnr-laionaes5.ckpt", "checkpoints")],
        4: [entry("face_swinir_v1.ckpt", "diffbir")],
        5: [entry("detection_Resnet50_Final.pth", "facedetection")],
        # the name is the widget value exactly (the frontend selects entries by it); the folder the loader reads
        6: [entry("upscale_models/BSRNet.pth", "upscale_models", "BSRNet.pth"),
            entry("controlnet/v2.pth", "controlnet", "v2.pth")],
    }
    assert out["models"] == [m for i in (2, 3, 4, 5, 6) for m in models[i]]
    assert list(out["models"][0]) == ["name", "url", "directory"]  # no hash: none is known
    assert "models" not in graph["nodes"][1]["properties"]  # the input graph is left as it was


def test_subgraph_blueprint_nodes_get_entries_and_the_instance_none():
    sub_id = "6f1f2c2e-0000-4000-8000-000000000001"
    blueprint = {
        "nodes": [node(10, sub_id, "DiffBIR_v2.1.pt")],  # the instance, with a promoted widget's value
        "definitions": {"subgraphs": [{
            "id": sub_id, "name": "DiffBIR v2.1 restore",
            "nodes": [node(1, "DiffBIRLoadModels", "realesrgan_s4_swinir_100k.pth", "DiffBIR_v2.1.pt", "auto"),
                      node(2, "DiffBIRFaceDetectAlign", "diffbir/detection_mobilenet0.25_Final.pth", 2.0)],
        }]},
    }
    out = embed.embed(blueprint)
    inner = out["definitions"]["subgraphs"][0]["nodes"]
    assert inner[0]["properties"]["models"] == [entry("realesrgan_s4_swinir_100k.pth", "diffbir"),
                                                entry("DiffBIR_v2.1.pt", "diffbir")]
    assert inner[1]["properties"]["models"] == [
        entry("diffbir/detection_mobilenet0.25_Final.pth", "diffbir", "detection_mobilenet0.25_Final.pth")]
    assert "models" not in out["nodes"][0]["properties"]
    assert out["models"] == inner[0]["properties"]["models"] + inner[1]["properties"]["models"]


def test_stale_entries_go_and_a_second_run_changes_nothing():
    graph = {"nodes": [node(1, "DiffBIRLoadModels", "v2.pth", "none", "auto",
                            properties={"models": [entry("BSRNet.pth", "diffbir")]}),
                       node(2, "DiffBIRLoadModels", "none", "none", "auto",
                            properties={"models": [entry("v2.pth", "diffbir")]})],
             "models": [entry("BSRNet.pth", "diffbir")]}
    out = embed.embed(graph)
    assert out["nodes"][0]["properties"]["models"] == [entry("v2.pth", "diffbir")]
    assert "models" not in out["nodes"][1]["properties"]
    assert out["models"] == [entry("v2.pth", "diffbir")]
    assert embed.embed(out) == out
    empty = embed.embed({"nodes": [node(1, "DiffBIRLoadModels", "none", "none", "auto")], "models": []})
    assert "models" not in empty


def test_a_hash_only_where_the_catalogue_knows_one(monkeypatch):
    digest = "ab" * 32
    known = dataclasses.replace(CATALOGUE["v2.pth"], sha256=digest, sha256_source="test: a made-up record")
    monkeypatch.setitem(catalogue.CATALOGUE, "v2.pth", known)
    out = embed.embed({"nodes": [node(1, "DiffBIRLoadModels", "BSRNet.pth", "v2.pth", "auto")]})
    assert out["nodes"][0]["properties"]["models"] == [
        entry("BSRNet.pth", "diffbir"),
        {"name": "v2.pth", "url": known.url, "hash": digest, "hash_type": "sha256", "directory": "diffbir"}]


def test_refusals_name_the_node_and_the_file():
    with pytest.raises(embed.EmbedError, match=r"node #3 \(SomePackLoader\) names the official file 'v2\.pth'"):
        embed.embed({"nodes": [node(3, "SomePackLoader", "v2.pth")]})
    with pytest.raises(embed.EmbedError, match=r"subgraph 'inner': node #4 \(DiffBIRLoadModels\) names "
                                               r"'mine\.safetensors', which is not an official file"):
        inner = [node(4, "DiffBIRLoadModels", "mine.safetensors", "none", "auto")]
        embed.embed({"nodes": [], "definitions": {"subgraphs": [{"id": "x", "name": "inner", "nodes": inner}]}})
    # a model file in a node that is not a loader is not ours to describe
    assert "models" not in embed.embed({"nodes": [node(5, "SomePackLoader", "mine.safetensors")]})


def test_the_command_writes_checks_and_refuses(tmp_path, capsys):
    path = tmp_path / "wf.json"
    graph = {"nodes": [node(1, "CheckpointLoaderSimple", "v2-1_512-ema-pruned.ckpt")], "version": 0.4}
    path.write_text(json.dumps(graph, indent=2) + "\n", encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    assert embed.main(["--check", str(path)]) == 1 and path.read_text(encoding="utf-8") == before
    assert embed.main([str(path)]) == 0
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["nodes"][0]["properties"]["models"] == [entry("v2-1_512-ema-pruned.ckpt", "checkpoints")]
    assert embed.main(["--check", str(path)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [node(1, "Mystery", "v2.pth")]}), encoding="utf-8")
    assert embed.main([str(bad)]) == 2
    assert "bad.json: node #1 (Mystery)" in capsys.readouterr().err


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_files_are_up_to_date(path):
    """Running the generator on a committed workflow or blueprint changes nothing."""
    text = path.read_text(encoding="utf-8")
    assert embed.dumps(embed.embed(json.loads(text))) == text, \
        f"run: python -m diffbir_weights.embed {path.relative_to(REPO)}"
    if path.parent.name == "workflows":  # every shipped workflow loads models (a blueprint may not)
        assert json.loads(text).get("models"), f"{path.name} lists no model files"
