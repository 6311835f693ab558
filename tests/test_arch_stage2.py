"""Stage-2 networks against tensors recorded from the official DiffBIR code (tests/golden).

The weights are the seeded small ControlLDM of cldm_weights.safetensors; they must load strictly
into models built from the configs in cldm_weights.json, and every forward must agree with the
recorded output within the reference set's single-forward tolerance.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
from diffbir_core.arch import controlnet as controlnet_arch
from diffbir_core.arch import unet as unet_arch
from diffbir_core.arch import vae as vae_arch

GOLDEN = REPO / "tests" / "golden"
ATOL = RTOL = 1e-4
LATENT_SCALE = 0.18215  # also recorded in cldm_weights.json


def check(name, got, want):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    excess = (err - (ATOL + RTOL * want.abs())).max().item()
    print(f"{name}: max abs err {err.max().item():.3e}")
    assert excess <= 0, f"{name}: max abs err {err.max().item():.3e} exceeds atol/rtol {ATOL}/{RTOL}"


@pytest.fixture(scope="module")
def models():
    cfg = json.loads((GOLDEN / "cldm_weights.json").read_text())
    weights = load_file(GOLDEN / "cldm_weights.safetensors")
    built = {
        "unet": unet_arch.build(cfg["unet_cfg"]),
        "controlnet": controlnet_arch.build(cfg["controlnet_cfg"]),
        "vae": vae_arch.build(cfg["vae_cfg"]),
    }
    assert cfg["latent_scale_factor"] == LATENT_SCALE
    for prefix, model in built.items():
        sd = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        model.load_state_dict(sd, strict=True)
        model.eval()
    return built


@pytest.fixture(scope="module")
def cldm_case():
    return load_file(GOLDEN / "controlnet_unet.safetensors")


@pytest.fixture(scope="module")
def controls(models, cldm_case):
    g = cldm_case
    with torch.no_grad():
        return models["controlnet"](g["in.x_noisy"], g["in.hint"], g["in.timesteps"], g["in.context"])


def test_controlnet_controls(controls, cldm_case):
    assert len(controls) == 13
    for i, c in enumerate(controls):
        check(f"control_{i:02d}", c, cldm_case[f"out.control_{i:02d}"])


@pytest.mark.parametrize(
    "name, use_control, use_scales, only_mid",
    [
        ("unet_controlled", True, True, False),
        ("unet_no_control", False, False, False),
        ("unet_only_mid_control", True, True, True),
    ],
)
def test_unet(models, cldm_case, name, use_control, use_scales, only_mid):
    g = cldm_case
    # Feed the recorded controls so a UNet fault is not masked or caused by the ControlNet.
    control = [g[f"out.control_{i:02d}"] for i in range(13)] if use_control else None
    scales = g["in.control_scales"] if use_scales else None
    with torch.no_grad():
        out = models["unet"](
            g["in.x_noisy"], g["in.timesteps"], g["in.context"],
            control=control, control_scales=scales, only_mid_control=only_mid,
        )
    check(name, out, g[f"out.{name}"])


def test_unet_scales_as_floats_and_controls_untouched(models, cldm_case):
    g = cldm_case
    control = [g[f"out.control_{i:02d}"] for i in range(13)]
    before = [c.clone() for c in control]
    with torch.no_grad():
        out = models["unet"](
            g["in.x_noisy"], g["in.timesteps"], g["in.context"],
            control=control, control_scales=g["in.control_scales"].tolist(),
        )
    check("unet_controlled (float scales)", out, g["out.unet_controlled"])
    assert len(control) == 13 and all(torch.equal(a, b) for a, b in zip(control, before))


def test_cldm_forward(models, cldm_case):
    g = cldm_case
    with torch.no_grad():
        control = models["controlnet"](g["in.x_noisy"], g["in.hint"], g["in.timesteps"], g["in.context"])
        out = models["unet"](
            g["in.x_noisy"], g["in.timesteps"], g["in.context"],
            control=control, control_scales=g["in.control_scales"],
        )
    check("cldm_forward", out, g["out.cldm_forward"])


def test_vae(models):
    g = load_file(GOLDEN / "vae.safetensors")
    vae = models["vae"]
    with torch.no_grad():
        posterior = vae.encode(2 * g["in.img01"] - 1)
        z_mode = posterior.mode() * LATENT_SCALE
        check("posterior_mean", posterior.mean, g["out.posterior_mean"])
        check("posterior_logvar", posterior.logvar, g["out.posterior_logvar"])
        check("z_mode_scaled", z_mode, g["out.z_mode_scaled"])
        check("decoded_from_z", vae.decode(g["in.z"] / LATENT_SCALE), g["out.decoded_from_z"])
        check("decoded_from_z_mode", vae.decode(z_mode / LATENT_SCALE), g["out.decoded_from_z_mode"])


def test_posterior_sample_replays_noise(models):
    g = load_file(GOLDEN / "vae.safetensors")
    with torch.no_grad():
        posterior = models["vae"].encode(2 * g["in.img01"] - 1)
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
    expected = posterior.mean + torch.exp(0.5 * posterior.logvar) * noise
    assert torch.equal(posterior.sample(noise), expected)
    assert torch.equal(posterior.sample(generator=torch.Generator().manual_seed(0)), expected)
