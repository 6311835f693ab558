"""Replay golden files of the official DiffBIR code through our own loaders and networks.

    python -m diffbir_core.golden FILE.json [FILE.json ...]

Each golden file is a pair NAME.json (config, notes) + NAME.safetensors (`in.*` inputs,
`out.*` official outputs, `w.*` weights under official keys, `noise.*` recorded draws).
The case is chosen from the file's content (its config fields and tensor names), never
from its file name. One line per output: name, max_abs_err, tolerance, PASS/FAIL; the
exit status is 1 if anything fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from . import colorfix, schedule, tiling
from .detect import detect
from .loader import build_network

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


CASES = (
    ("schedules", _is_schedules, _run_schedules),
    ("stage1", _is_stage1, _run_stage1),
    ("controlnet_unet", _is_controlnet_unet, _run_controlnet_unet),
    ("vae", _is_vae, _run_vae),
    ("colorfix", _is_colorfix, _run_colorfix),
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
    ap = argparse.ArgumentParser(prog="python -m diffbir_core.golden", description="Replay official golden files.")
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
        for name, err, (atol, rtol), ok in rows:
            print(f"{path.stem}:{name}  max_abs_err={err:.3e}  tol=atol {atol:g} rtol {rtol:g}  {'PASS' if ok else 'FAIL'}")
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
