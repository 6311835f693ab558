"""Flicker of a restored clip in the DiffBIR Sampler's two noise modes (issue 27, item 2).

A real photo (scikit-image's bundled ``coffee``, 400 x 600) is panned into a short clip: a 128 x 128 window moving
`--pan` pixels right per frame, each frame lightly degraded (its own Gaussian noise, sigma `--noise`). The clip
is restored as one batch through the nodes in a real ComfyUI (Stage1 SwinIR Restore at upscale 1 -> LAControlNet
Apply -> DiffBIR Sampler, v2.1, 10 steps -> DiffBIR VAE Decode -> DiffBIR Color Fix) with the tests' tiny
random-weight models (tests/tiny_models.py), once with ``noise_mode`` "per frame" and once "shared"; and a static
clip (one frame repeated) likewise.

Figures (pixel values 0..255), each the mean over the clip's consecutive frame pairs:

* change: mean |frame k+1 - frame k|, the issue's figure; for a pan it includes the motion itself;
* aligned change: the same after shifting frame k by the known pan (the overlap only), i.e. what changes that
  the motion does not explain: the flicker.

Each row is printed for the input clip and both modes, and the ratio output / input. Run from the repository
root: ``python benchmarks/flicker_bench.py [--frames 9] [--size 128] [--pan 4] [--steps 10]`` (about 8 minutes on
two busy CPU cores, most of it the full-size SD VAE that the tiny checkpoint keeps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common as C
import torch

TITLE = "flicker: consecutive-frame change of a restored clip, noise_mode per frame vs shared"


def panned_clip(frames: int, size: int, pan: int, noise: float, static: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, degraded) clips (frames, size, size, 3) in [0, 1] from skimage.data.coffee()."""
    import skimage.data

    photo = torch.from_numpy(skimage.data.coffee()).float() / 255.0  # (400, 600, 3)
    top, left = 120, 100
    clean = torch.stack([photo[top:top + size, left + (0 if static else k * pan):][:, :size] for k in range(frames)])
    g = torch.Generator().manual_seed(0)
    if static:  # one degraded frame repeated: identical input frames
        degraded = (clean[:1] + noise * torch.randn(clean[:1].shape, generator=g)).expand_as(clean)
    else:
        degraded = clean + noise * torch.randn(clean.shape, generator=g)
    return clean, degraded.clamp(0, 1).contiguous()


def change(clip: torch.Tensor, shift: int) -> float:
    """Mean |frame k+1 - frame k| (0..255) with frame k+1's content `shift` pixels left of frame k's."""
    a, b = clip[:-1], clip[1:]
    if shift:
        a, b = a[:, :, shift:], b[:, :, :-shift]
    return float((b - a).abs().mean()) * 255.0


@torch.inference_mode()  # as ComfyUI's executor runs every node
def restore(nodes: dict, parts: dict, clip: torch.Tensor, mode: str, steps: int, seed: int) -> torch.Tensor:
    stage1_out = nodes["DiffBIRStage1Restore"]().execute(clip, 1.0, "v2.1", clip.shape[1], 0,
                                                         stage1=parts["stage1"], tile_plan="manual")[0]
    pos, neg, model = nodes["DiffBIRLAControlNetApply"]().execute(parts["pos"], parts["neg"], parts["control"],
                                                                  stage1_out, parts["vae"], 1.0, 0.0, 1.0,
                                                                  model=parts["model"])
    latent = nodes["DiffBIRSampler"]().execute(model, pos, neg, seed=seed, steps=steps, cfg=6.0,
                                               sampler_name="edm_dpm++_3m_sde", rescale_cfg=False,
                                               start_point="noise", noise_aug=0, tile_size=0, tile_stride=256,
                                               tile_plan="auto", noise_mode=mode)[0]
    image = nodes["DiffBIRVAEDecode"]().execute(latent, parts["vae"], 0, 256, "manual")[0]
    return nodes["DiffBIRColorFix"]().execute(image, stage1_out, "wavelet")[0].cpu()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pan", type=int, default=4, help="pixels the window moves right per frame")
    ap.add_argument("--noise", type=float, default=0.03, help="sigma of each frame's Gaussian noise (0..1 scale)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=231)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.append(str(C.REPO / "tests"))
    import comfy_host
    from tiny_models import TINY_CONTROLNETS, tiny_sd21_checkpoint, write_tiny_controlnet, write_tiny_stage1

    work = Path(tempfile.mkdtemp(prefix="flicker-bench-"))
    models = work / "models"
    host = comfy_host.boot(work / "output", models_dir=models)
    checkpoint = tiny_sd21_checkpoint(models)
    write_tiny_controlnet(models / "diffbir" / TINY_CONTROLNETS["v2.1"], "v2.1")
    write_tiny_stage1(models / "diffbir" / "tiny_swinir.safetensors", "swinir")
    host.refresh_models()

    import nodes as comfy_nodes

    model, clip_model, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(checkpoint)[:3]
    stage1, control = host.node_classes["DiffBIRLoadModels"]().execute("tiny_swinir.safetensors",
                                                                       TINY_CONTROLNETS["v2.1"], "auto")[:2]
    parts = {"model": model, "vae": vae, "stage1": stage1, "control": control,
             "pos": comfy_nodes.CLIPTextEncode().encode(clip_model, "a cup of coffee")[0],
             "neg": comfy_nodes.CLIPTextEncode().encode(clip_model, "blurry")[0]}

    print(f"{TITLE}\n{args.frames} frames of {args.size} px from skimage.data.coffee(), pan {args.pan} px/frame, "
          f"noise sigma {args.noise}, tiny random v2.1 models, {args.steps} steps, seed {args.seed}; pixel values "
          "0..255\n")
    print("| clip | figure | input | per frame | shared | per frame / input | shared / input |")
    print("|---|---|---|---|---|---|---|")
    for static in (False, True):
        _, degraded = panned_clip(args.frames, args.size, args.pan, args.noise, static)
        outputs = {mode: restore(host.node_classes, parts, degraded, mode, args.steps, args.seed)
                   for mode in ("per frame", "shared")}
        shift = 0 if static else args.pan
        figures = [("change", 0)] + ([] if static else [("aligned change", shift)])
        for name, s in figures:
            base = change(degraded, s)
            per, shared = change(outputs["per frame"], s), change(outputs["shared"], s)
            ratio = (lambda v: f"{v / base:.2f}") if base > 0 else (lambda v: "-")
            print(f"| {'static' if static else f'pan {args.pan} px'} | {name} | {base:.2f} | {per:.2f} | "
                  f"{shared:.2f} | {ratio(per)} | {ratio(shared)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
