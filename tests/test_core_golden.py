"""`python -m diffbir_core.golden` replays the official single-forward golden files: all PASS."""

import subprocess
import sys
from pathlib import Path

import pytest

from diffbir_core import golden

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
SINGLE_FORWARD = ["swinir", "bsrnet", "scunet", "controlnet_unet", "vae", "schedules", "colorfix_guidance_main"]


@pytest.mark.parametrize("name", SINGLE_FORWARD)
def test_golden_file_passes(name):
    rows = golden.run_file(GOLDEN / f"{name}.json")
    assert rows, "no outputs were checked"
    failures = [(n, err, tol) for n, err, tol, ok in rows if not ok]
    assert not failures


def test_expected_outputs_are_covered():
    names = {n for n, *_ in golden.run_file(GOLDEN / "controlnet_unet.json")}
    assert {f"out.control_{i:02d}" for i in range(13)} <= names
    assert {"out.unet_controlled", "out.unet_no_control", "out.unet_only_mid_control", "out.cldm_forward"} <= names
    names = {n for n, *_ in golden.run_file(GOLDEN / "vae.json")}
    assert {"out.posterior_mean", "out.posterior_logvar", "out.z_mode_scaled", "out.decoded_from_z"} <= names
    names = {n for n, *_ in golden.run_file(GOLDEN / "swinir.json")}
    assert names == {"swinir:out.y_128x128", "swinir:out.y_128x192"}


def test_cli_prints_pass_per_output_and_exit_status():
    files = [str(GOLDEN / f"{n}.json") for n in SINGLE_FORWARD]
    proc = subprocess.run([sys.executable, "-m", "diffbir_core.golden", *files], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) > 100 and all(line.endswith("PASS") for line in lines)
    assert all("max_abs_err=" in line and "tol=" in line for line in lines)


def test_cli_fails_on_a_tampered_output(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copy(GOLDEN / "bsrnet.json", tmp_path / "bsrnet.json")
    t = load_file(str(GOLDEN / "bsrnet.safetensors"))
    t["out.y"] = t["out.y"] + 1e-3
    save_file(t, str(tmp_path / "bsrnet.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "diffbir_core.golden", str(tmp_path / "bsrnet.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout.strip().endswith("FAIL")
