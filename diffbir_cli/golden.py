"""``python -m diffbir_cli golden FILE...``: replay the official sampling golden files through the product path.

``python -m diffbir_core.reference.golden`` proves the core's reference engine (its own UNet, VAE and ControlNet
and the reference pipeline). This command proves what users run, in a ComfyUI booted in this process (``host.boot``, on
the CPU in float32 like the recordings, one torch thread):

* the file's small SD 2.1 weights in **ComfyUI's own** UNet (``comfy.supported_models.SD20``, a ModelPatcher)
  and VAE (``comfy.sd.VAE``) classes;
* the small ControlNet written as a DiffBIR ControlNet file (version v2.1 for a v-prediction zero-terminal-SNR
  file, v2 for an eps one) and loaded by **Load DiffBIR Models**;
* the condition encoded by **LAControlNet Apply** (which, for v2.1, also gives the v + zsnr MODEL);
* the run made by the **DiffBIR Sampler** node (ComfyUI's CFGGuider, model patcher, ControlNet machinery) with
  the file's sampler, steps, cfg, control strength, start point (v2.0.0's better_start too), noise_aug,
  rescale_cfg, tiles, sampler settings and restoration guidance, its noise being the file's recorded draws;
* the decode by **DiffBIR VAE Decode** and the colour fix by **DiffBIR Color Fix**.

The nodes are called as ComfyUI's executor calls them (inside ``torch.inference_mode``). The text embeddings are
the file's ``in.c_txt_*`` (no CLIP runs). One seam: the DiffBIR Sampler module's ``noise_source`` gives the
recorded draws during a run (the seam the tests use too), and every recorded draw must be used.

Output: the lines of ``python -m diffbir_core.reference.golden`` (``diffbir_core.reference.golden.result_line``),
with the same tolerances and documented bounds; exit status 1 if any line FAILs or a file cannot be replayed (ERROR). Where
the product differs from the official code by design (``DIFFERENCES``), the line says DIFFERS (printing the
error all the same) and a ``note:`` line says why; such lines do not fail the run. Files that are not sampling
runs are named and left to ``python -m diffbir_core.reference.golden``.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import sys
from dataclasses import dataclass

import torch

from diffbir_core import padding
from diffbir_core.reference import golden as core

# How the product path differs from the official code where a golden file can show it (README "Proof of
# correctness"). Printed as `note:` lines; the key names the difference.
DIFFERENCES = {
    "decode_clamp": (
        "compared with clamp(official, -1, 1): ComfyUI's VAE decode returns an IMAGE in [0, 1] "
        "(comfy.sd.VAE.process_output clamps), the official decode is not clamped"),
    "colour_fix_input": (
        "DiffBIR Color Fix corrects that clamped IMAGE, the official code the unclamped decode (Pipeline.run clamps "
        "after the fix); with these random weights the decode leaves [-1, 1] widely, so the fixed images differ"),
    "colour_fix_same_input": (
        "the official wavelet fix (diffbir_core.colorfix, itself checked against the official code by "
        "colorfix_guidance_main) of the clamped official decode, clamped: the same input the product's fix gets"),
    "latent_size": (
        "the DiffBIR Sampler samples the condition image's size / 8 (rounded up), the official untiled pipeline the "
        "latent of the image zero-padded to a multiple of 64 (cropped after decoding): the recorded draws have the "
        "padded shape, so the product cannot replay this run"),
    "condition_pad": (
        "LAControlNet Apply encodes the condition from the image zero-padded to a multiple of 64 (then cropped), "
        "this file's official code from the image padded to a multiple of 8 (main, tiled) or unpadded (v2.0.0 "
        "sampler alone); the VAE's attention sees the whole padded image, so the condition latent differs "
        "slightly"),
}


class Unsupported(core.UnsupportedField):
    """A golden file needs a feature the product path does not have (reported as ERROR, never ignored)."""


@dataclass
class Row:
    output: str
    err: float | None
    verdict: str  # PASS, FAIL or DIFFERS
    bound: float | None = None
    notes: tuple[str, ...] = ()
    tol: tuple[float, float] = core.SAMPLING

    def lines(self, stem: str) -> list[str]:
        return [core.result_line(stem, self.output, self.err, self.tol, self.verdict, self.bound)] + [
            f"  note: {n}" for n in self.notes]


# --------------------------------------------------------------------------------------------- the host


def _node(host, node_id: str):
    return host.node_classes[node_id]


def _host_module(host, name: str):
    """Our nodes/host/<name>.py as the host imported it (ComfyUI loads the pack under a package name of its own)."""
    return sys.modules[f"{host.extension_module.__name__}.nodes.host.{name}"]


def _sampler_module(host):
    return sys.modules[host.node_classes["DiffBIRSampler"].__module__]


class HostNets:
    """The small ControlLDM of one weights file in ComfyUI: UNet and VAE in ComfyUI's own classes (built once),
    the ControlNet as a DiffBIR ControlNet file loaded by Load DiffBIR Models (once per version)."""

    def __init__(self, host, weights_path: pathlib.Path, cfg: dict, controlnet_dir: pathlib.Path):
        from safetensors.torch import load_file

        self.host = host
        self.cfg = cfg
        self.weights = load_file(str(weights_path))
        self.controlnet_dir = controlnet_dir
        self.stem = weights_path.stem
        self._vae = None
        self._unet = None
        self._controls: dict = {}

    def part(self, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in self.weights.items() if k.startswith(prefix)}

    def vae(self):
        import comfy.sd

        if self._vae is None:
            self._vae = comfy.sd.VAE(sd=self.part("vae."), config={"params": self.cfg["vae_cfg"]})
        return self._vae

    def unet(self):
        """A fresh ModelPatcher (clone) of ComfyUI's SD 2.x UNet with the file's weights, float32."""
        import comfy.model_detection
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models

        if self._unet is None:
            sd = self.part("unet.")
            config = comfy.supported_models.SD20(comfy.model_detection.detect_unet_config(sd, ""))
            # the head width is in no weight's shape (ComfyUI's SD 2.x entry assumes SD 2.1's 64)
            config.unet_config["num_head_channels"] = self.cfg["unet_cfg"]["num_head_channels"]
            config.set_inference_dtype(torch.float32, None)
            model = config.get_model(sd, "")
            model.load_model_weights(sd, "")
            self._unet = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                          offload_device=mm.unet_offload_device())
        return self._unet.clone()

    def control(self, version: str):
        """The ControlNet of `version`, from a file in the models folder, through Load DiffBIR Models (fp32)."""
        from safetensors.torch import save_file

        if version not in self._controls:
            name = f"golden_{self.stem}_{version}.safetensors"
            meta = {"diffbir_kind": "controlnet", "diffbir_version": version,
                    "diffbir_config": json.dumps({"num_head_channels": self.cfg["controlnet_cfg"]["num_head_channels"]})}
            save_file(self.part("controlnet."), str(self.controlnet_dir / name), metadata=meta)
            self.host.refresh_models()
            self._controls[version] = _node(self.host, "DiffBIRLoadModels").execute("none", name, "fp32")[1]
        return self._controls[version]


@contextlib.contextmanager
def _recorded_noise(host, noise):
    module = _sampler_module(host)
    original = module.noise_source
    module.noise_source = lambda seed: noise
    try:
        yield
    finally:
        module.noise_source = original


@contextlib.contextmanager
def _tile_windows(host, seen: list):
    """Record the tile windows the DiffBIR control is asked for (tiled diffusion), in call order."""
    control_cls = _host_module(host, "control").DiffBIRControl
    key = _host_module(host, "control").TILE_KEY
    original = control_cls.get_control

    def spy(self, x_noisy, t, cond, batched_number, transformer_options=None, *args, **kwargs):
        window = (transformer_options or {}).get(key)
        if window is not None and tuple(window) not in seen:
            seen.append(tuple(window))
        return original(self, x_noisy, t, cond, batched_number, transformer_options, *args, **kwargs)

    control_cls.get_control = spy
    try:
        yield
    finally:
        control_cls.get_control = original


# --------------------------------------------------------------------------------------------- one run


@dataclass
class Run:
    """What a golden file asks of the product path, in node terms."""

    steps: int
    cfg: float
    sampler: str
    strength: float = 1.0
    rescale_cfg: bool = False
    start_point: str = "noise"
    noise_aug: int = 0
    tile_size: int = 0  # pixels; 0 = untiled
    tile_stride: int = 256
    settings: dict | None = None
    guidance: dict | None = None
    condition_pad: int = padding.CONDITION_PAD  # what the official code pads the condition image to before encoding


def _version(diffusion) -> str:
    """The ControlNet version that goes with a file's diffusion (v2.1: v + zero-terminal SNR; v2: eps)."""
    if diffusion.parameterization == "v" and diffusion.zero_terminal_snr:
        return "v2.1"
    if diffusion.parameterization == "eps" and not diffusion.zero_terminal_snr:
        return "v2"
    raise Unsupported(f"diffusion_cfg: {diffusion.parameterization}-prediction "
                      f"{'with' if diffusion.zero_terminal_snr else 'without'} zero-terminal SNR matches no DiffBIR "
                      "version (v2.1: v + zsnr, v1/v2: eps)")


def _conditioning(g, cfg_scale: float):
    pos, neg = core._contexts(g, cfg_scale)  # the core runner's text contexts and its cfg check
    if neg is None:
        neg = torch.zeros_like(pos)  # never used: with cfg 1 ComfyUI makes no unconditional call
    return [[pos, {}]], [[neg, {}]]


def _replay(host, g, nets: HostNets, run: Run, diffusion) -> list[Row]:
    from diffbir_core.sampling.plans import same_diffusion
    from diffbir_core.schedule import LATENT_SCALE

    noise = core._recorded_noise(g)
    cond01 = g.t["in.cond_img01"]
    h0, w0 = cond01.shape[-2:]
    version = _version(diffusion)
    pos, neg = _conditioning(g, run.cfg)
    pos, neg, model = _node(host, "DiffBIRLAControlNetApply").execute(
        pos, neg, nets.control(version), cond01.movedim(1, -1), nets.vae(), run.strength, 0.0, 1.0, model=nets.unet())
    if not same_diffusion(_sampler_module(host).model_diffusion(model), diffusion):
        raise Unsupported("diffusion_cfg: the file's training schedule is not the one of ComfyUI's SD 2.x MODEL "
                          "(scaled linear 0.00085 .. 0.012, 1000 steps)")
    control = _host_module(host, "conditioning").find_control(pos)
    ref_c = g.t["out.c_img"]
    c_img = control.condition()[0][..., :ref_c.shape[-2], :ref_c.shape[-1]]
    # the nodes always pad to CONDITION_PAD: a file padded otherwise differs where that pad is not a no-op
    pad = padding.CONDITION_PAD
    known = ("condition_pad",) if (h0 % pad or w0 % pad) and run.condition_pad != pad else ()
    rows = [_row(g, "out.c_img", c_img, ref_c, known)]
    if tuple(g.t["out.z_final"].shape[-2:]) != (math.ceil(h0 / 8), math.ceil(w0 / 8)):
        rows += [Row(name, None, "DIFFERS", notes=(DIFFERENCES["latent_size"],))
                 for name in ("out.z_final", "out.decoded", "out.wavelet_fixed01") if name in g.t]
        return rows

    kwargs = dict(run.settings or {})
    if run.guidance:
        kwargs.update(**run.guidance)
    if run.guidance or run.start_point == "better_start":
        kwargs["vae"] = nets.vae()
    windows: list = []
    with _recorded_noise(host, noise), _tile_windows(host, windows):
        samples = _node(host, "DiffBIRSampler").execute(
            model, pos, neg, 0, run.steps, run.cfg, run.sampler, run.rescale_cfg, run.start_point, run.noise_aug,
            run.tile_size, run.tile_stride, **kwargs)[0]["samples"]
    noise.check_consumed()
    rows.append(_row(g, "out.z_final", samples * LATENT_SCALE, g.t["out.z_final"], known))

    image = _node(host, "DiffBIRVAEDecode").execute({"samples": samples}, nets.vae(), 0, 256)[0][:, :h0, :w0]
    ref = g.t["out.decoded"]
    clamped = bool((ref.abs() > 1).any())
    rows.append(_row(g, "out.decoded", image.movedim(-1, 1) * 2 - 1, ref.clamp(-1, 1),
                     known, ("decode_clamp",) if clamped else ()))
    if "out.wavelet_fixed01" in g.t:
        from diffbir_core import colorfix

        fixed = _node(host, "DiffBIRColorFix").execute(image, cond01.movedim(1, -1), "wavelet")[0].movedim(-1, 1)
        official = g.t["out.wavelet_fixed01"].clamp(0, 1)
        if clamped:
            rows.append(_row(g, "out.wavelet_fixed01", fixed, official, ("colour_fix_input",) + known))
            same_input = colorfix.color_fix_decoded(ref.clamp(-1, 1), cond01, "wavelet").clamp(0, 1)
            rows.append(_row(g, "out.wavelet_fixed01[clamped]", fixed, same_input, known,
                             ("colour_fix_same_input",)))
        else:
            rows.append(_row(g, "out.wavelet_fixed01", fixed, official, known))
    if "tiles_latent" in g.meta:
        want = torch.tensor(g.meta["tiles_latent"] or [], dtype=torch.long).reshape(-1, 4)
        got = torch.tensor(windows, dtype=torch.long).reshape(-1, 4)
        rows.append(_row(g, "tiles_latent", got, want, (), tol=core.EXACT))
    return rows


def _row(g, output, ours, ref, differs=(), notes=(), tol=core.SAMPLING) -> Row:
    """A checked output: PASS / FAIL at the tolerance (or a documented bound); a miss explained by a known
    difference in `differs` is DIFFERS with that note; `notes` explain how a passing output was compared."""
    err, ok = core.Check(output, ours, ref, tol).result()
    verdict, bound, why = core.judge(g.path.stem, output, err, ok)
    text = tuple(DIFFERENCES[n] for n in notes) + ((why,) if why else ())
    if verdict == "FAIL" and differs:
        return Row(output, err, "DIFFERS", bound, text + tuple(DIFFERENCES[n] for n in differs), tol)
    return Row(output, err, verdict, bound, text, tol)


def _main_run(g) -> Run:
    """A DiffBIR main (v2.1 code) `Pipeline.apply_cldm` file as a DiffBIR Sampler run."""
    from diffbir_core.sampling.options import OFFICIAL_DEFAULTS

    m = g.meta
    core.check_main_file(m)  # the reference runner's refusals, the same for the product path
    if m.get("start_point_type", "noise") not in ("noise", "cond"):  # the main code's --start_point_type
        raise Unsupported(f"start_point_type {m['start_point_type']!r} (the main code has 'noise' and 'cond')")
    tiled = bool(m.get("cldm_tiled", False))
    return Run(steps=int(m["steps"]), cfg=float(m.get("cfg_scale", 1.0)), sampler=m["sampler"],
               strength=float(m.get("strength", 1.0)), rescale_cfg=bool(m.get("rescale_cfg", False)),
               start_point=m.get("start_point_type", "noise"), noise_aug=int(m.get("noise_aug", 0)),
               tile_size=int(m.get("cldm_tile_size", 0)) if tiled else 0,
               tile_stride=int(m.get("cldm_tile_stride", 256)) if tiled else 256,
               settings={k: m[k] for k in OFFICIAL_DEFAULTS if k in m}, condition_pad=padding.condition_pad(tiled))


def _v2_run(g) -> Run:
    """A v2.0.0 `SpacedSampler.sample` file as a DiffBIR Sampler run (spaced, guidance style v2)."""
    m = g.meta
    core._check_fields(m, core._V2_FIELDS, "v2.0.0 sampling file")
    guidance = None
    if m.get("cond_fn"):
        cfn = m["cond_fn"]
        core._check_fields(cfn, core._COND_FN_FIELDS, "cond_fn")
        if cfn.get("cls") not in core._GUIDANCE_LOSS:
            raise Unsupported(f"cond_fn.cls {cfn.get('cls')!r} (only {sorted(core._GUIDANCE_LOSS)})")
        # the node's guidance_scale is the official --g_scale; style v2 multiplies it by 3000 itself
        scale = float(cfn["internal_scale"]) / 3000 if "internal_scale" in cfn else float(cfn["scale_arg"])
        guidance = dict(guidance=core._GUIDANCE_LOSS[cfn["cls"]], guidance_space=cfn.get("space", "rgb"),
                        guidance_scale=scale, guidance_t_start=int(cfn.get("t_start", 1001)),
                        guidance_t_stop=int(cfn.get("t_stop", -1)), guidance_repeat=int(cfn.get("repeat", 1)),
                        guidance_style="v2")
    tiled = bool(m.get("tiled", False))
    # v2.0.0 SpacedSampler.sample alone: the condition is the whole (unpadded) image's encode
    return Run(steps=int(m["steps"]), cfg=float(m.get("cfg_scale", 1.0)), sampler="spaced",
               strength=float(m.get("strength", 1.0)),
               start_point="better_start" if m.get("better_start") else "noise",
               tile_size=int(m.get("tile_size", 0)) if tiled else 0,
               tile_stride=int(m.get("tile_stride", 256)) if tiled else 256, guidance=guidance, condition_pad=1)


class Replayer:
    """Replays golden files in one booted host; the networks of a weights file are built once."""

    def __init__(self, host):
        import folder_paths

        self.host = host
        self.controlnet_dir = pathlib.Path(folder_paths.get_folder_paths("diffbir")[0])
        self.controlnet_dir.mkdir(parents=True, exist_ok=True)
        self._nets: dict = {}

    def _nets_for(self, g) -> HostNets:
        if "weights_file" not in g.meta:
            raise Unsupported("no weights_file: a sampling file names the small ControlLDM it ran with")
        path = (g.path.parent / g.meta["weights_file"].split()[0]).resolve()
        if path not in self._nets:
            cfg = json.loads(path.with_suffix(".json").read_text())
            self._nets[path] = HostNets(self.host, path, cfg, self.controlnet_dir)
        return self._nets[path]

    def replay(self, path) -> list[Row] | None:
        """The rows of a sampling file; None for a file that is not a sampling run."""
        g = core.load_golden(path)
        if core._is_main_sampling(g):
            run = _main_run(g)
        elif core._is_v2_sampling(g):
            run = _v2_run(g)
        else:
            return None
        diffusion = core._diffusion(g.meta)
        with torch.inference_mode():
            return _replay(self.host, g, self._nets_for(g), run, diffusion)


def replay_files(host, files, out=print) -> int:
    """Replay `files` (golden .json paths) and print their lines; the number of failures (FAIL or ERROR)."""
    replayer = Replayer(host)
    failed = 0
    for path in map(pathlib.Path, files):
        if path.suffix != ".json":
            path = path.with_suffix(".json")
        try:
            rows = replayer.replay(path)
        except Exception as err:  # one broken file must not hide the others' results
            out(f"{path.name}: ERROR {type(err).__name__}: {err}")
            failed += 1
            continue
        if rows is None:
            g = core.load_golden(path)
            if not any(k.startswith("out.") for k in g.t) and "exact" not in g.meta:
                out(f"{path.stem}: weights only, no outputs to check")
            else:
                out(f"{path.stem}: not a sampling run (single forwards or tables): replay it with python -m "
                    "diffbir_core.reference.golden")
            continue
        for row in rows:
            for line in row.lines(path.stem):
                out(line)
            failed += row.verdict == "FAIL"
    return failed
