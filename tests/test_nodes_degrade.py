"""The Degrade node (nodes/degrade.py) as the real host loaded it: the params string replays an image, batches
draw per image, bad overrides name the input, and the node's contract (inputs, tooltips, outputs).
The degradation maths itself is tested in test_core_degrade.py."""

import json

import pytest
import torch
from comfy_host import combo_options, node_module
from sample_images import smooth_image as _image

from diffbir_core.degrade import FORMAT, PRESET_NAMES, RANGE_INFO, apply, draw_params, make_rng, params_from_json


@pytest.fixture(scope="module")
def node(comfy_host):
    return comfy_host.node_classes["DiffBIRDegrade"]()


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_params_string_reproduces_image(node, preset):
    img = _image(48, 56)[None]
    lq, hq, text = node.execute(img, preset, 123)
    params = json.loads(text)
    assert params["format"] == FORMAT and params["preset"] == preset and params["seed"] == 123
    # preset, seed and overrides are ignored when params_json is given
    lq2, hq2, text2 = node.execute(img, "face", 999, params_json=text, blur_sigma="1-2")
    assert torch.equal(lq, lq2) and torch.equal(hq, hq2) and json.loads(text2) == params
    # the library route too
    lq3, hq3 = apply(img[0], params_from_json(text, 1)[0])
    assert torch.equal(lq3, lq[0]) and torch.equal(hq3, hq[0])


def test_batch_each_image_own_draws_seed_plus_index(node):
    one = _image()
    batch = torch.stack([one, one, one])
    lq, hq, text = node.execute(batch, "realesrgan", 40)
    params = json.loads(text)
    assert isinstance(params, list) and [p["seed"] for p in params] == [40, 41, 42]
    assert not torch.equal(lq[0], lq[1]) and not torch.equal(lq[1], lq[2])
    for i in range(3):
        lq_i, hq_i, _ = node.execute(one[None], "realesrgan", 40 + i)
        assert torch.equal(lq_i[0], lq[i]) and torch.equal(hq_i[0], hq[i])
    lq_r, _, _ = node.execute(batch, "general", 0, params_json=text)
    assert torch.equal(lq_r, lq)
    with pytest.raises(ValueError, match="params_json.*3 parameter sets.*2 images"):
        node.execute(batch[:2], "general", 0, params_json=text)


@pytest.mark.parametrize(
    "key,text,match",
    [
        ("blur_sigma", "5-1", "blur_sigma.*greater than high"),
        ("noise_sigma", "abc", "noise_sigma.*cannot read 'abc'"),
        ("jpeg_quality", "0-50", "jpeg_quality.*>= 1"),
        ("jpeg_quality", "50-120", "jpeg_quality.*<= 100"),
        ("blur_sigma", "0-2", "blur_sigma.*> 0"),
        ("noise_sigma", "-1-5", "noise_sigma.*cannot read"),
    ],
)
def test_bad_overrides_name_the_input(node, key, text, match):
    with pytest.raises(ValueError, match=match):
        node.execute(_image()[None], "general", 0, **{key: text})


def test_override_for_other_pipeline_and_bad_params_json(node):
    img = _image()[None]
    with pytest.raises(ValueError, match="resize_scale.*does not apply to preset 'general'"):
        node.execute(img, "general", 0, resize_scale="0.5-1.2")
    with pytest.raises(ValueError, match="downsample.*does not apply to preset 'realesrgan'"):
        node.execute(img, "realesrgan", 0, downsample="2-4")
    with pytest.raises(ValueError, match="resize_scale.*must contain 1"):
        node.execute(img, "realesrgan", 0, resize_scale="2-3")
    with pytest.raises(ValueError, match="params_json: not valid JSON"):
        node.execute(img, "general", 0, params_json="{oops")
    p = draw_params("general", make_rng(0))
    del p["noise"]
    with pytest.raises(ValueError, match="params_json.noise"):
        node.execute(img, "general", 0, params_json=json.dumps(p))
    p = draw_params("realesrgan", make_rng(0))
    p["stage1"]["jpeg_quality"] = 500
    with pytest.raises(ValueError, match=r"params_json.stage1.jpeg_quality: must be 1..100"):
        node.execute(img, "general", 0, params_json=json.dumps(p))
    with pytest.raises(ValueError, match="preset: unknown preset"):
        node.execute(img, "nope", 0)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        draw_params("general", 123)
    with pytest.raises(ValueError, match=r"image: expected 1 \(gray\), 2 \(gray\+alpha\), 3 \(RGB\) or 4"):
        node.execute(torch.zeros(1, 32, 32, 5), "general", 0)  # RGBA and gray are converted to RGB


def test_node_contract(comfy_host):
    module = node_module(comfy_host, "degrade")
    DiffBIRDegrade = module.DiffBIRDegrade
    assert comfy_host.m.nodes.NODE_DISPLAY_NAME_MAPPINGS["DiffBIRDegrade"] == "Degrade"
    assert comfy_host.node_classes["DiffBIRDegrade"] is DiffBIRDegrade
    spec = DiffBIRDegrade.INPUT_TYPES()
    inputs = {**spec["required"], **spec["optional"]}
    assert set(RANGE_INFO) <= set(inputs) and "params_json" in inputs
    for name, (_, opts) in inputs.items():
        assert opts.get("tooltip"), name
    assert tuple(DiffBIRDegrade.RETURN_TYPES) == ("IMAGE", "IMAGE", "STRING")
    assert tuple(DiffBIRDegrade.RETURN_NAMES) == ("lq", "hq", "params")
    assert len(DiffBIRDegrade.OUTPUT_TOOLTIPS) == 3 and DiffBIRDegrade.CATEGORY == "DiffBIR/testing"
    assert DiffBIRDegrade.DESCRIPTION and hasattr(DiffBIRDegrade, DiffBIRDegrade.FUNCTION)
    assert set(combo_options(inputs["preset"])) == set(PRESET_NAMES)
