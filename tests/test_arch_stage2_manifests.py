"""The real-size stage-2 networks have exactly the official state-dict keys and shapes.

Manifests (tests/manifests) list every key and shape the official loader reads or writes; the
models are built on the meta device so the full SD 2.1 sizes cost no memory.
"""

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
from diffbir_core.arch import clip_text, controlnet, unet, vae

MANIFESTS = REPO / "tests" / "manifests"
BUILDERS = {"unet": unet.build, "controlnet": controlnet.build, "vae": vae.build, "clip": clip_text.build}


@pytest.fixture(scope="module")
def shapes():
    out = {}
    with torch.device("meta"):
        for name, build in BUILDERS.items():
            out[name] = {k: list(v.shape) for k, v in build().state_dict().items()}
    return out


def manifest_keys(filename):
    return json.loads((MANIFESTS / filename).read_text())["keys"]


def compare(label, ours, manifest):
    missing = sorted(set(manifest) - set(ours))
    unexpected = sorted(set(ours) - set(manifest))
    mismatched = sorted(k for k in set(ours) & set(manifest) if ours[k] != list(manifest[k]))
    print(f"{label}: {len(manifest)} keys, {len(missing)} missing, {len(unexpected)} unexpected, "
          f"{len(mismatched)} mismatched")
    assert not missing, f"{label} missing: {missing[:10]}"
    assert not unexpected, f"{label} unexpected: {unexpected[:10]}"
    assert not mismatched, f"{label} mismatched: {[(k, ours[k], manifest[k]) for k in mismatched[:10]]}"


def prefixed(manifest, prefix):
    return {k[len(prefix):]: v for k, v in manifest.items() if k.startswith(prefix)}


def test_official_configs_are_the_defaults():
    assert unet.OFFICIAL_CONFIG["model_channels"] == 320
    assert controlnet.OFFICIAL_CONFIG["hint_channels"] == 4
    assert "out_channels" not in controlnet.OFFICIAL_CONFIG
    assert vae.OFFICIAL_CONFIG["ddconfig"]["ch"] == 128
    assert clip_text.OFFICIAL_CONFIG["layers"] == 24


def test_controlnet_checkpoint_keys(shapes):
    compare("controlnet (v2/v2.1/v1-converted)", shapes["controlnet"],
            manifest_keys("controlnet_v2_v2.1_v1converted.json"))


@pytest.mark.parametrize("name, prefix", [
    ("unet", "model.diffusion_model."),
    ("vae", "first_stage_model."),
    ("clip", "cond_stage_model."),
])
def test_sd21_checkpoint_keys(shapes, name, prefix):
    manifest = manifest_keys("sd21_base_keys_read.json")
    compare(f"sd21 {prefix}", shapes[name], prefixed(manifest, prefix))


def test_controlldm_module_keys(shapes):
    manifest = manifest_keys("cldm_module_state_dict.json")
    ours = {f"{name}.{k}": v for name, sd in shapes.items() for k, v in sd.items()}
    compare("ControlLDM module", ours, manifest)
