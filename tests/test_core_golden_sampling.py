"""Complete official sampling runs replayed from their JSON alone (golden.run_file), and the guidance pieces."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffbir_core import golden

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
SAMPLING_FILES = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem.startswith(("sample_", "v2_sample_")))

# Outputs that cannot meet |a - b| <= 1e-3 + 1e-5 |b| outside the recording environment.
# v2_sample_spaced5_cfg4_guid_mse_latent: latent-space guidance at scale 1500 over 5 steps makes
# the run diverge (guidance loss 4e2 -> 2.6e7, latents up to 3.8e4); a 1e-7 relative change of
# the model output moves z_final by 1.6e-2, and the official v2.0.0 modules and formulas run in
# this environment miss the recorded z_final by 5.6e-2 as well. out.decoded and out.c_img of the
# same run do pass; z_final is held to the bound below instead.
CHAOTIC = {("v2_sample_spaced5_cfg4_guid_mse_latent", "out.z_final"): 0.1}


def test_sampling_files_are_present():
    assert {"sample_spaced5_v21_cfg1", "sample_spaced5_v21_cfg4_neg", "sample_spaced5_v2eps_cfg4_neg",
            "v2_sample_spaced5_cfg4_neg", "v2_sample_spaced5_cfg4_guid_mse_latent"} <= set(SAMPLING_FILES)


@pytest.mark.parametrize("name", SAMPLING_FILES)
def test_sampling_file_passes(name):
    rows = golden.run_file(GOLDEN / f"{name}.json")
    names = {n for n, *_ in rows}
    assert {"out.c_img", "out.z_final", "out.decoded"} <= names
    for out, err, tol, ok in rows:
        if (name, out) in CHAOTIC:
            assert err < CHAOTIC[(name, out)], (out, err)
        else:
            assert ok, (out, err, tol)


def test_colour_fix_output_is_checked():
    names = {n for n, *_ in golden.run_file(GOLDEN / "sample_spaced5_v21_cfg4_neg.json")}
    assert "out.wavelet_fixed01" in names


def test_guidance_pieces_pass():
    rows = golden.run_file(GOLDEN / "colorfix_guidance_main.json")
    got = {n: ok for n, _, _, ok in rows}
    wanted = {"out.MSEGuidance.loss", "out.MSEGuidance.grad", "out.WeightedMSEGuidance.loss",
              "out.WeightedMSEGuidance.grad", "out.WeightedMSEGuidance.weight_map", "out.wavelet_reconstruction"}
    assert wanted <= set(got) and all(got.values())


def _tampered(tmp_path, name, **changes):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    meta.update(changes)
    (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    shutil.copy(GOLDEN / f"{name}.safetensors", tmp_path / f"{name}.safetensors")
    shutil.copy(GOLDEN / "cldm_weights.safetensors", tmp_path / "cldm_weights.safetensors")
    shutil.copy(GOLDEN / "cldm_weights.json", tmp_path / "cldm_weights.json")
    return tmp_path / f"{name}.json"


@pytest.mark.parametrize("changes", [
    {"vae_encoder_tiled": True},  # official v2.1 Tiled-VAE: not reproduced
    {"sampler": "dpm_s3"},  # a sampler we do not have
    {"start_point_type": "lowfreq"},
    {"some_new_setting": 1},  # an unknown field is never ignored
    {"diffusion_cfg": {"beta_schedule": "cosine"}},
    {"n_randn_draws_saved": 7},  # the recorded draws must all be used
])
def test_unsupported_field_fails_loudly(tmp_path, changes):
    path = _tampered(tmp_path, "sample_spaced5_v21_cfg1", **changes)
    with pytest.raises(ValueError):
        golden.run_file(path)
    proc = subprocess.run([sys.executable, "-m", "diffbir_core.golden", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "ERROR" in proc.stdout


def test_replay_notices_unused_noise(tmp_path):
    """A run that uses fewer recorded draws than stored (wrong draw order) is an error, not a pass."""
    path = _tampered(tmp_path, "sample_spaced5_v21_cfg1", steps=4, n_randn_draws_saved=6)
    with pytest.raises(RuntimeError, match="not consumed"):
        golden.run_file(path)
