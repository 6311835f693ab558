"""Replay golden files of the official DiffBIR code through our own loaders and networks (the reference engine).

    python -m diffbir_core.reference.golden FILE.json [FILE.json ...]

Each golden file is a pair NAME.json (config, notes) + NAME.safetensors (`in.*` inputs,
`out.*` official outputs, `w.*` weights under official keys, `noise.*` recorded draws).
The case is chosen from the file's content (its config fields and tensor names), never
from its file name. One line per output: name, max_abs_err, tolerance, PASS/FAIL (`result_line`); an
output that cannot meet the tolerance outside the recording environment is judged against its documented
bound instead, which its line names, followed by a `note:` line saying why (`DOCUMENTED_BOUNDS`). The exit
status is 1 if anything fails. `python -m diffbir_cli golden` prints the same lines for the product path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .. import colorfix, schedule, tiling
from ..detect import detect
from ..loader import build_network

SINGLE_FORWARD = (1e-4, 1e-4)  # atol, rtol of the reference README
TABLES = (0.0, 1e-6)
EXACT = (0.0, 0.0)


@dataclass
class Check:
    name: str
    ours: torch.Tensor
    ref: torch.Tensor
    tol: tuple[float, float]

    def result(self) -> tuple[float, bool]:
        ours = self.ours.detach().double().cpu()
        ref = self.ref.detach().double().cpu()
        if ours.shape != ref.shape:
            return float("inf"), False
        finite = torch.isfinite(ref)
        # Infinite table entries (zero-terminal SNR) must be reproduced exactly.
        same_inf = bool((ours[~finite] == ref[~finite]).all())
        diff = (ours[finite] - ref[finite]).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        atol, rtol = self.tol
        ok = same_inf and bool((diff <= atol + rtol * ref[finite].abs()).all())
        return err, ok


@dataclass
class Golden:
    path: Path
    meta: dict
    t: dict

    def sibling(self, file_name: str) -> dict:
        # "weights_file" may carry a remark after the name: "cldm_weights.safetensors (vae.*)"
        return load_file(str(self.path.parent / file_name.split()[0]))

    def weights(self, prefix: str) -> dict:
        if "weights_file" in self.meta:
            src = self.sibling(self.meta["weights_file"])
        else:
            src, prefix = self.t, "w."
        return {k[len(prefix) :]: v for k, v in src.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------------
# cases: (applies, run) pairs, tried in order


def _is_schedules(g: Golden) -> bool:
    return "exact" in g.meta


def _run_schedules(g: Golden) -> list[Check]:
    exact = g.meta["exact"]
    checks: list[Check] = []
    versions = {"v2": {}, "v21": {"zero_snr": True, "parameterization": "v"}}
    for tag, cfg in versions.items():
        diff = schedule.DiffusionSchedule.from_config(cfg)
        ac = diff.alphas_cumprod
        if f"{tag}.betas_float64" in exact:
            checks.append(Check(f"{tag}.betas_float64", torch.from_numpy(diff.betas), torch.tensor(exact[f"{tag}.betas_float64"], dtype=torch.float64), (0.0, 1e-12)))
        base = {"betas": diff.betas, "alphas_cumprod": ac, "sqrt_alphas_cumprod": np.sqrt(ac),
                "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac)}
        for name, ref in g.t.items():
            if not name.startswith(tag + "."):
                continue
            rest = name[len(tag) + 1 :]
            if rest in base:
                ours = base[rest]
            else:
                grid, _, field_name = rest.partition(".")
                kind, steps = grid.rstrip("0123456789"), int(grid[len(grid.rstrip("0123456789")) :])
                if kind == "spaced":
                    ours = getattr(schedule.spaced_tables(ac, steps), field_name)
                elif kind == "ddim":
                    ours = getattr(schedule.ddim_tables(ac, steps), field_name)
                elif kind == "edm" and field_name == "sigmas":
                    ours = schedule.edm_sigmas(ac, steps)
                else:
                    raise KeyError(f"no schedule rule for tensor {name}")
            checks.append(Check(name, torch.from_numpy(np.asarray(ours)), ref, TABLES))
        for key, ref in exact.items():
            if key.startswith(tag + ".edm") and key.endswith(".timesteps"):
                steps = int(key.split(".")[1][3:])
                checks.append(Check(key, torch.from_numpy(schedule.edm_timesteps(steps)), torch.tensor(ref), EXACT))
    for key, ref in exact.items():
        if key.startswith("spaced_timesteps_"):
            ours = schedule.space_timesteps(1000, key.rsplit("_", 1)[1])
        elif key.startswith("space_timesteps_"):
            spec = key[len("space_timesteps_") :]
            if "_of_" in spec:
                counts, total = spec.split("_of_")
                ours = schedule.space_timesteps(int(total), counts.replace("_", ","))
            else:
                ours = schedule.space_timesteps(1000, spec)
        elif key.startswith("sliding_windows_"):
            hw, t, s = key[len("sliding_windows_") :].split("_")
            h, w = map(int, hw.split("x"))
            ours = tiling.sliding_windows(h, w, int(t[1:]), int(s[1:]))
        else:
            continue
        checks.append(Check(key, torch.tensor(ours), torch.tensor(ref), EXACT))
    for name, ref in g.t.items():
        if name.startswith("gaussian_weights_"):
            w, h = map(int, name.rsplit("_", 1)[1].split("x"))
            checks.append(Check(name, torch.from_numpy(tiling.gaussian_weights(w, h)), ref, (1e-6, 1e-6)))
    return checks


def _is_stage1(g: Golden) -> bool:
    return "config" in g.meta and any(k.startswith("w.") for k in g.t)


def _run_stage1(g: Golden) -> list[Check]:
    sd = g.weights("w.")
    det = detect(sd, g.path.name)
    model, _ = build_network(det.kind, sd, g.path.name, config=g.meta["config"])
    checks = []
    for name, x in g.t.items():
        if not name.startswith("in.x"):
            continue
        out_name = "out.y" + name[len("in.x") :]
        with torch.no_grad():
            checks.append(Check(f"{det.kind}:{out_name}", model(x), g.t[out_name], SINGLE_FORWARD))
    return checks


def _is_controlnet_unet(g: Golden) -> bool:
    return "controlnet_cfg" in g.meta and "unet_cfg" in g.meta and "out.control_00" in g.t


def _run_controlnet_unet(g: Golden) -> list[Check]:
    cn, _ = build_network("controlnet", g.weights("controlnet."), "controlnet", config=g.meta["controlnet_cfg"])
    unet, _ = build_network("unet", g.weights("unet."), "unet", config=g.meta["unet_cfg"])
    x, hint, ts, ctx = (g.t[k] for k in ("in.x_noisy", "in.hint", "in.timesteps", "in.context"))
    scales = g.t["in.control_scales"]
    checks = []
    with torch.no_grad():
        controls = cn(x, hint, ts, ctx)
        for i, c in enumerate(controls):
            checks.append(Check(f"out.control_{i:02d}", c, g.t[f"out.control_{i:02d}"], SINGLE_FORWARD))
        runs = {
            "out.unet_controlled": dict(control=controls, control_scales=scales),
            "out.unet_no_control": dict(control=None),
            "out.unet_only_mid_control": dict(control=controls, control_scales=scales, only_mid_control=True),
            "out.cldm_forward": dict(control=cn(x, hint, ts, ctx), control_scales=scales),
        }
        for name, kwargs in runs.items():
            if name in g.t:
                checks.append(Check(name, unet(x, ts, ctx, **kwargs), g.t[name], SINGLE_FORWARD))
    return checks


def _is_vae(g: Golden) -> bool:
    return "vae_cfg" in g.meta and "out.posterior_mean" in g.t


def _run_vae(g: Golden) -> list[Check]:
    vae, _ = build_network("vae", g.weights("vae."), "vae", config=g.meta["vae_cfg"])
    scale = float(g.meta.get("latent_scale_factor", schedule.LATENT_SCALE))
    with torch.no_grad():
        post = vae.encode(2 * g.t["in.img01"] - 1)
        outs = {
            "out.posterior_mean": post.mean,
            "out.posterior_logvar": post.logvar,
            "out.z_mode_scaled": post.mode() * scale,
            "out.decoded_from_z": vae.decode(g.t["in.z"] / scale),
            "out.decoded_from_z_mode": vae.decode(post.mode()),
        }
    return [Check(k, v, g.t[k], SINGLE_FORWARD) for k, v in outs.items() if k in g.t]


def _is_colorfix(g: Golden) -> bool:
    return "out.wavelet_reconstruction" in g.t


def _run_colorfix(g: Golden) -> list[Check]:
    content, style = g.t["in.content"], g.t["in.style"]
    high, low = colorfix.wavelet_decomposition(content)
    outs = {
        "out.content_high": high,
        "out.content_low": low,
        "out.wavelet_blur_r4": colorfix.wavelet_blur(content, 4),
        "out.wavelet_reconstruction": colorfix.wavelet_reconstruction(content, style),
    }
    return [Check(k, v, g.t[k], SINGLE_FORWARD) for k, v in outs.items() if k in g.t]


# --------------------------------------------------------------------------------------
# restoration-guidance pieces (colorfix_guidance_main) and complete sampling runs

SAMPLING = (1e-3, 1e-5)  # |a - b| <= 1e-3 + 1e-5 |b| for complete runs (reference README)

# Recorded outputs that cannot meet the sampling tolerance outside the recording environment, each held to a
# documented bound on max_abs_err instead (README "Proof of correctness"); keyed by (file stem, output).
# v2_sample_spaced5_cfg4_guid_mse_latent: latent-space guidance at scale 1500 over 5 steps makes the run diverge
# (guidance loss 4e2 -> 2.6e7, latents up to 3.8e4); a 1e-7 relative change of the model output moves z_final by
# 1.6e-2, and the official v2.0.0 modules and formulas run in this environment miss the recorded z_final by
# 5.6e-2 as well. out.c_img and out.decoded of the same run do pass.
DOCUMENTED_BOUNDS = {
    ("v2_sample_spaced5_cfg4_guid_mse_latent", "out.z_final"): (
        0.1, "the guided run diverges (guidance loss 4e2 -> 2.6e7, latents up to 3.8e4) and magnifies last-bit "
             "differences: README \"Proof of correctness\""),
}


def documented_bound(stem: str, output: str) -> tuple[float, str] | None:
    """(bound on max_abs_err, why) of a known chaotic recorded output, or None."""
    return DOCUMENTED_BOUNDS.get((stem, output))


def judge(stem: str, output: str, err: float, ok: bool) -> tuple[str, float | None, str]:
    """(verdict, documented bound or None, why) of one checked output: PASS / FAIL at the tolerance, or, for an
    output with a documented bound that misses the tolerance, PASS / FAIL at that bound."""
    bound = documented_bound(stem, output)
    if ok or bound is None:
        return ("PASS" if ok else "FAIL"), None, ""
    return ("PASS" if err < bound[0] else "FAIL"), bound[0], bound[1]


def result_line(stem: str, output: str, err: float | None, tol: tuple[float, float], verdict: str,
                bound: float | None = None) -> str:
    """The one line per checked output that both golden runners print (this one and ``python -m diffbir_cli
    golden``)."""
    atol, rtol = tol
    bound_text = f" (documented bound max_abs_err < {bound:g})" if bound is not None else ""
    err_text = "n/a" if err is None else f"{err:.3e}"
    return f"{stem}:{output}  max_abs_err={err_text}  tol=atol {atol:g} rtol {rtol:g}{bound_text}  {verdict}"


def _is_colorfix_guidance(g: Golden) -> bool:
    return _is_colorfix(g) and "in.guidance_pred" in g.t


def _guidance_scale(g: Golden) -> float:
    """The internal scale the recorded gradients used; these files state it only in their notes."""
    if "internal_scale" in g.meta:
        return float(g.meta["internal_scale"])
    found = re.search(r"(\d+(?:\.\d+)?)\s*\*\s*3000\s*=\s*(\d+(?:\.\d+)?)", g.meta.get("notes", ""))
    if not found:
        raise ValueError("guidance scale not found (no 'internal_scale' field and no 'g_scale*3000=...' note)")
    return float(found.group(2))


def _run_colorfix_guidance(g: Golden) -> list[Check]:
    from ..sampling.guidance import mse_guidance, weight_map

    checks = _run_colorfix(g)
    pred, target, scale = g.t["in.guidance_pred"], g.t["in.guidance_target"], _guidance_scale(g)
    weights = weight_map((target + 1) / 2)
    outs = {}
    outs["out.MSEGuidance.grad"], loss = mse_guidance(pred, target, scale)
    outs["out.MSEGuidance.loss"] = loss.reshape(1)
    outs["out.WeightedMSEGuidance.grad"], loss = mse_guidance(pred, target, scale, weights)
    outs["out.WeightedMSEGuidance.loss"] = loss.reshape(1)
    outs["out.WeightedMSEGuidance.weight_map"] = weights
    _refuse_unchecked_outputs(g, set(outs) | {c.name for c in checks})
    return checks + [Check(k, v, g.t[k], SINGLE_FORWARD) for k, v in outs.items() if k in g.t]


# Fields that describe a file without changing what it computes.
_INFO_FIELDS = {"source", "commit", "what", "torch_seed", "replay_maxabs_diff", "rerun_maxabs_diff", "noise_order",
                "post", "notes", "tensors", "seed"}
_MAIN_FIELDS = {"diffusion_cfg", "steps", "sampler", "cfg_scale", "strength", "start_point_type", "cldm_tiled",
                "cldm_tile_size", "cldm_tile_stride", "tiles_latent", "rescale_cfg", "noise_aug", "s_churn", "s_tmin",
                "s_tmax", "s_noise", "eta", "order", "weights_file", "n_randn_draws_saved", "n_brownian_draws",
                "vae_encoder_tiled", "vae_decoder_tiled", "vae_encoder_tile_size", "vae_decoder_tile_size", "cond_fn",
                "latent_scale_factor"}
_V2_FIELDS = {"diffusion_cfg", "steps", "cfg_scale", "strength", "tiled", "tile_size", "tile_stride", "cond_fn",
              "better_start", "weights_file", "n_randn_draws_saved", "n_brownian_draws", "tiles_latent",
              "latent_scale_factor"}
_DIFFUSION_FIELDS = {"linear_start", "linear_end", "timesteps", "zero_snr", "parameterization", "beta_schedule"}
_COND_FN_FIELDS = {"cls", "scale_arg", "internal_scale", "t_start", "t_stop", "space", "repeat"}
_GUIDANCE_LOSS = {"MSEGuidance": "mse", "WeightedMSEGuidance": "w_mse"}
# The official samplers whose CFG runs cond and uncond as one batch; the others (spaced, edm_*,
# and every v2.0.0 run) make two forwards. The maths is the same, the float32 bits are not, and
# long or guided runs amplify last-bit differences, so the replay follows the official structure.
_BATCHED_CFG = ("ddim", "dpm++_m2")


class UnsupportedField(ValueError):
    """A golden file sets a field (or value) this runner cannot honour; never silently ignored."""


def _check_fields(meta: dict, known: set, what: str) -> None:
    unknown = sorted(k for k in meta if k not in known and k not in _INFO_FIELDS and not k.endswith("_note"))
    if unknown:
        raise UnsupportedField(f"{what}: unsupported field(s) {unknown}")


def _refuse_unchecked_outputs(g: Golden, checked: set) -> None:
    unchecked = sorted(k for k in g.t if k.startswith("out.") and k not in checked)
    if unchecked:
        raise UnsupportedField(f"no rule to reproduce output(s) {unchecked}")


def _diffusion(meta: dict) -> schedule.DiffusionSchedule:
    cfg = meta.get("diffusion_cfg")
    if not isinstance(cfg, dict):
        raise UnsupportedField("diffusion_cfg missing")
    _check_fields(cfg, _DIFFUSION_FIELDS, "diffusion_cfg")
    if cfg.get("beta_schedule", "linear") != "linear":
        raise UnsupportedField(f"diffusion_cfg.beta_schedule {cfg['beta_schedule']!r} (only 'linear')")
    if cfg.get("parameterization", "eps") not in ("eps", "v"):
        raise UnsupportedField(f"diffusion_cfg.parameterization {cfg['parameterization']!r} (only 'eps', 'v')")
    return schedule.DiffusionSchedule.from_config(cfg)


def _stage2_nets(g: Golden):
    from .pipeline import StageTwoNets

    cfgs = dict(g.meta)
    if "weights_file" in g.meta:
        weights_json = (g.path.parent / g.meta["weights_file"].split()[0]).with_suffix(".json")
        cfgs = {**json.loads(weights_json.read_text()), **cfgs}
    nets = {}
    for kind, key in (("controlnet", "controlnet_cfg"), ("unet", "unet_cfg"), ("vae", "vae_cfg")):
        nets[kind], _ = build_network(kind, g.weights(f"{kind}."), kind, config=cfgs.get(key))
    scale = float(cfgs.get("latent_scale_factor", schedule.LATENT_SCALE))
    return StageTwoNets(nets["controlnet"], nets["unet"], nets["vae"], scale)


def _recorded_noise(g: Golden):
    from ..sampling.noise import RecordedNoise

    noise = RecordedNoise.from_tensors(g.t)
    for field, have in (("n_randn_draws_saved", len(noise.randn_draws)), ("n_brownian_draws", len(noise.brownian_draws))):
        if field in g.meta and int(g.meta[field]) != have:
            raise ValueError(f"{field} = {g.meta[field]} but the file holds {have} such draws")
    return noise


def _contexts(g: Golden, cfg_scale: float):
    neg = g.t.get("in.c_txt_neg")
    if neg is None and cfg_scale != 1.0:
        raise ValueError("cfg_scale != 1 needs in.c_txt_neg")
    return g.t["in.c_txt_pos"], neg


def _sampling_inputs(g: Golden):
    """(diffusion, nets, recorded noise, cfg scale, (positive, negative) contexts, condition image) of a sampling
    file, each checked against the file."""
    cfg_scale = float(g.meta.get("cfg_scale", 1.0))
    return (_diffusion(g.meta), _stage2_nets(g), _recorded_noise(g), cfg_scale, _contexts(g, cfg_scale),
            g.t["in.cond_img01"])


def _sampling_checks(g: Golden, res, cond_img01: torch.Tensor) -> list[Check]:

    outs = {"out.c_img": res.c_img, "out.z_final": res.z_final, "out.decoded": res.decoded}
    if "out.wavelet_fixed01" in g.t:
        outs["out.wavelet_fixed01"] = colorfix.color_fix_decoded(res.decoded, cond_img01, "wavelet")
    _refuse_unchecked_outputs(g, set(outs))
    checks = [Check(k, v, g.t[k], SAMPLING) for k, v in outs.items() if k in g.t]
    if "tiles_latent" in g.meta:
        ref = torch.tensor(g.meta["tiles_latent"] or [], dtype=torch.long).reshape(-1, 4)
        checks.append(Check("tiles_latent", torch.tensor(res.tiles_latent, dtype=torch.long).reshape(-1, 4), ref, EXACT))
    return checks


def _is_main_sampling(g: Golden) -> bool:
    return "sampler" in g.meta and "in.cond_img01" in g.t


def check_main_file(m: dict) -> None:
    """Refuse a main-code sampling file that asks for what neither engine reproduces (the v2.1 Tiled-VAE) or what
    the official main pipeline never does (guidance)."""
    _check_fields(m, _MAIN_FIELDS, "main sampling file")
    for field in ("vae_encoder_tiled", "vae_decoder_tiled"):
        if m.get(field):
            raise UnsupportedField(f"{field} = true: the official v2.1 Tiled-VAE (GroupNorm sync) is not reproduced")
    if m.get("cond_fn"):
        raise UnsupportedField("cond_fn in a main-code file: the official main pipeline never applies guidance")


def _run_main_sampling(g: Golden) -> list[Check]:
    from ..sampling.options import OFFICIAL_DEFAULTS
    from .pipeline import apply_cldm

    m = g.meta
    check_main_file(m)
    diffusion, nets, noise, cfg_scale, (pos, neg), cond = _sampling_inputs(g)
    res = apply_cldm(
        nets, cond, pos, neg, diffusion, int(m["steps"]),
        sampler=m["sampler"], strength=float(m.get("strength", 1.0)), cfg_scale=cfg_scale,
        start_point_type=m.get("start_point_type", "noise"), noise_aug=int(m.get("noise_aug", 0)),
        rescale_cfg=bool(m.get("rescale_cfg", False)), cldm_tiled=bool(m.get("cldm_tiled", False)),
        cldm_tile_size=int(m.get("cldm_tile_size", 0)), cldm_tile_stride=int(m.get("cldm_tile_stride", 0)),
        noise=noise, batch_cfg=m["sampler"] in _BATCHED_CFG, **{k: m[k] for k in OFFICIAL_DEFAULTS if k in m},
    )
    noise.check_consumed()
    return _sampling_checks(g, res, cond)


def _is_v2_sampling(g: Golden) -> bool:
    return ("cond_fn" in g.meta or "tiled" in g.meta) and "sampler" not in g.meta and "in.cond_img01" in g.t


def _v2_guidance(cfg, vae):
    from ..sampling.guidance import RestorationGuidance

    _check_fields(cfg, _COND_FN_FIELDS, "cond_fn")
    if cfg.get("cls") not in _GUIDANCE_LOSS:
        raise UnsupportedField(f"cond_fn.cls {cfg.get('cls')!r} (only {sorted(_GUIDANCE_LOSS)})")
    scale = cfg["internal_scale"] if "internal_scale" in cfg else cfg["scale_arg"] * 3000
    return RestorationGuidance(vae, loss=_GUIDANCE_LOSS[cfg["cls"]], scale=float(scale),
                               t_start=int(cfg.get("t_start", 1001)), t_stop=int(cfg.get("t_stop", -1)),
                               space=cfg.get("space", "rgb"), repeat=int(cfg.get("repeat", 1)), rule="v2")


def _run_v2_sampling(g: Golden) -> list[Check]:
    """A v2.0.0 file records `SpacedSampler.sample` alone (reference README), not `Pipeline.run_stage2`: the
    condition latent and the decode are the whole-image VAE calls, no 64-pad, and `tiled` tiles only the model
    calls. (run_stage2_v2, the pipeline, tiles its VAE calls too.)"""
    from .pipeline import CLDMResult, sample_v2, v2_tiles
    from .vae import vae_decode, vae_encode

    m = g.meta
    _check_fields(m, _V2_FIELDS, "v2.0.0 sampling file")
    diffusion, nets, noise, cfg_scale, (pos, neg), cond = _sampling_inputs(g)
    guidance = _v2_guidance(m["cond_fn"], nets.vae) if m.get("cond_fn") else None
    tiles = v2_tiles(cond.shape[-2:], int(m.get("tile_size", 0)), int(m.get("tile_stride", 0)), guidance) \
        if m.get("tiled") else None

    def encode(x, **kw):
        return vae_encode(nets.vae, x, scale=nets.latent_scale, **kw)

    c_img = encode(cond * 2 - 1)
    z, denoiser = sample_v2(nets, cond, c_img, pos, neg, diffusion, int(m["steps"]), encode=encode,
                            strength=float(m.get("strength", 1.0)), cfg_scale=cfg_scale, tiles=tiles,
                            better_start=bool(m.get("better_start", False)), noise=noise, guidance=guidance,
                            batch_cfg=False)
    noise.check_consumed()
    with torch.no_grad():
        decoded = vae_decode(nets.vae, z, scale=nets.latent_scale)
    res = CLDMResult(z_final=z, decoded=decoded, c_img=c_img, denoiser=denoiser,
                     tiles_latent=tiling.sliding_windows(*z.shape[-2:], *tiles) if tiles else [])
    return _sampling_checks(g, res, cond)


CASES = (
    ("schedules", _is_schedules, _run_schedules),
    ("stage1", _is_stage1, _run_stage1),
    ("controlnet_unet", _is_controlnet_unet, _run_controlnet_unet),
    ("vae", _is_vae, _run_vae),
    ("colorfix_guidance", _is_colorfix_guidance, _run_colorfix_guidance),
    ("colorfix", _is_colorfix, _run_colorfix),
    ("main_sampling", _is_main_sampling, _run_main_sampling),
    ("v2_sampling", _is_v2_sampling, _run_v2_sampling),
)


def load_golden(json_path: str | Path) -> Golden:
    json_path = Path(json_path)
    meta = json.loads(json_path.read_text())
    return Golden(json_path, meta, load_file(str(json_path.with_suffix(".safetensors"))))


def run_file(json_path: str | Path) -> list[tuple[str, float, tuple[float, float], bool]]:
    g = load_golden(json_path)
    if not any(k.startswith("out.") for k in g.t) and "exact" not in g.meta:
        return []  # a weights-only file (e.g. cldm_weights) that other golden files point at
    for _name, applies, run in CASES:
        if applies(g):
            return [(c.name, *_with_tol(c)) for c in run(g)]
    raise ValueError(f"{Path(json_path).name}: no golden case matches its content (tensors: {sorted(g.t)[:5]} ...)")


def _with_tol(c: Check):
    err, ok = c.result()
    return err, c.tol, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffbir_core.reference.golden", description="Replay official golden files.")
    ap.add_argument("files", nargs="+", type=Path, help="golden .json files (the .safetensors must sit beside them)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    failed = 0
    for path in args.files:
        if path.suffix != ".json":
            path = path.with_suffix(".json")
        try:
            rows = run_file(path)
        except Exception as err:  # one broken file must not hide the others' results
            print(f"{path.name}: ERROR {type(err).__name__}: {err}")
            failed += 1
            continue
        if not rows:
            print(f"{path.stem}: weights only, no outputs to check")
        for name, err, tol, ok in rows:
            verdict, bound, why = judge(path.stem, name, err, ok)
            print(result_line(path.stem, name, err, tol, verdict, bound))
            if why:
                print(f"  note: {why}")
            failed += verdict != "PASS"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
