"""The help pages of the nodes (``web/docs/<node id>.md``), which the frontend shows in its node help panel.

ComfyUI serves the pack's ``WEB_DIRECTORY`` (``web/``) at ``/extensions/<pack folder>/``; the frontend asks for
``docs/<node id>/<locale>.md``, then ``docs/<node id>.md``. Each page is the node's description, its inputs and
outputs with their tooltips (read from the running ComfyUI, so a page never disagrees with the node), then a
small example and the official setting the node mirrors (written here).

    python -m diffbir_cli.help_pages          # write web/docs/*.md
    python -m diffbir_cli.help_pages --check  # exit 1 if a page is missing or out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile

from .location import REPO_ROOT

DOCS_DIR = REPO_ROOT / "web" / "docs"

EXTRA = {
    "DiffBIRLoadModels": (
        "Pick `realesrgan_s4_swinir_100k.pth` and `DiffBIR_v2.1.pt` (both in `models/diffbir`), dtype `auto`. Connect "
        "`stage1` to **Stage1 SwinIR Restore** and `control_net` to **LAControlNet Apply**; load the SD 2.1 model "
        "with the stock **Load Checkpoint** (`sd2.1-base-zsnr-laionaes5.ckpt` for v2.1).",
        "The official `inference.py` loads the stage-1 file (`--version`-specific SwinIR, BSRNet or SCUNet) and "
        "the ControlNet (`DiffBIR_v2.1.pt`, `v2.pth`, `v1_*.pth`) with `load_state_dict(strict=True)`; the half "
        "precision of `--precision fp16` is the `fp16` dtype here (time embedding and GroupNorms stay float32)."),
    "DiffBIRStage1Restore": (
        "Load Image -> **Stage1 SwinIR Restore** (`upscale` 4, `version` auto) -> the `image` of LAControlNet Apply "
        "and the `reference` of DiffBIR Color Fix. Resize the final result to `target_width` x `target_height`.",
        "`inference.py --task sr --upscale 4` (v2.1: SwinIR `realesrgan_s4_swinir_100k`), its "
        "resize of a short edge under 512 up to 512 (`min_short_edge`), the 64-pixel padding, and the tiled cleaner "
        "(`--cleaner_tiled --cleaner_tile_size 512 --cleaner_tile_stride 256`: `tile_size` / `tile_stride`)."),
    "DiffBIRPrompt": (
        "A captioner node's STRING output (or typed text) as `caption`, Load Checkpoint's `clip` -> **DiffBIR Prompt** "
        "(`positive_prompt` and `negative_prompt` left at their defaults) -> `positive` and `negative` into "
        "LAControlNet Apply.",
        "v2.1 `inference.py`: the positive text is `\", \".join` of the non-empty caption (`--captioner llava` by "
        "default) and `--pos_prompt` (default: the long quality prompt), the negative is `--neg_prompt`; "
        "`FrozenOpenCLIPEmbedder` encodes each with `open_clip.tokenize`, one window of 77 tokens (the text's first "
        "75 between start and end), so longer text is cut. The paper's v2 recipe: `--captioner none --pos_prompt '' "
        "--neg_prompt 'low quality, blurry, low-resolution, noisy, unsharp, weird textures'`."),
    "DiffBIRLAControlNetApply": (
        "CLIP Text Encode (positive, negative) + Load DiffBIR Models' `control_net` + the stage-1 `image` + the "
        "checkpoint's `vae` and `model` -> **LAControlNet Apply** -> DiffBIR Sampler (its `model` output too for "
        "v2.1).",
        "`ControlLDM.prepare_condition`: the condition latent is the VAE posterior mode of `2 * image - 1` times "
        "0.18215, the image zero-padded to 64 (`--vae_encoder_tiled --vae_encoder_tile_size 256` is the tiled "
        "encode here); `--strength 1` (every one of the 13 control scales) is `strength`."),
    "DiffBIRSampler": (
        "LAControlNet Apply's `model`, `positive`, `negative` -> **DiffBIR Sampler** (`seed` 231, `steps` 10, `cfg` "
        "6, `sampler_name` edm_dpm++_3m_sde) -> DiffBIR VAE Decode (Tiled) -> DiffBIR Color Fix.",
        "`inference.py` v2.1 defaults: `--sampler edm_dpm++_3m_sde --steps 10 --cfg_scale 6 --seed 231`; "
        "`--start_point_type` (and v2.0.0's `--better_start`: `start_point` better_start), `--noise_aug`, `--rescale_cfg`, `--cldm_tiled --cldm_tile_size 512 "
        "--cldm_tile_stride 256` (`tile_size` / `tile_stride`) and the v2 restoration guidance (README example "
        "`--guidance --g_loss w_mse --g_space rgb --g_scale 0.5`) are the inputs of the same names; the paper's "
        "v2 recipe is `spaced`, 50 steps, cfg 4."),
    "DiffBIRSamplerSelect": (
        "**DiffBIR Sampler Select** (`edm_dpm++_3m_sde`) -> the `sampler` of the stock SamplerCustomAdvanced, with "
        "BasicScheduler's sigmas and the conditioning from LAControlNet Apply.",
        "The solvers of the official `sampler/` package (spaced, DDIM, DPM-Solver++ and the k-diffusion EDM "
        "solvers) with their `--s_churn --s_tmin --s_tmax --s_noise --eta --order` settings; they run on ComfyUI's "
        "sigmas here, the DiffBIR Sampler node runs them on the official grids."),
    "DiffBIRVAEDecode": (
        "DiffBIR Sampler's `latent` + the checkpoint's `vae` -> **DiffBIR VAE Decode (Tiled)** (`tile_plan` auto) -> "
        "DiffBIR Color Fix.",
        "The official `--vae_decoder_tiled --vae_decoder_tile_size 256` (pixels; half-tile stride), gaussian-blended "
        "tiles; this node defaults to 512-pixel tiles, or plans them from the free memory (`tile_plan` auto)."),
    "DiffBIRColorFix": (
        "DiffBIR VAE Decode's image as `image`, Stage1 SwinIR Restore's image as `reference`, `method` wavelet.",
        "`wavelet_reconstruction` (v2 / v2.1, always on) and `adaptive_instance_normalization` (v1 `--color_fix_type "
        "adain`) of the official `utils/` code."),
    "DiffBIRKeepAlpha": (
        "Load Image's `MASK` as `mask`, the restored image (after DiffBIR Color Fix) as `image` -> **DiffBIR Keep "
        "Alpha** -> Save Image: a transparent PNG stays transparent, its alpha resized to the restored size.",
        "None: the official code reads images as RGB (`Image.open(...).convert(\"RGB\")`) and drops the alpha; "
        "the alpha is resized as the stock Join Image with Alpha resizes its mask (bilinear)."),
    "DiffBIRFaceDetectAlign": (
        "Load Image (a whole photo) -> **DiffBIR Face Detect & Align** (`detection_Resnet50_Final.pth`, `upscale` 2) "
        "-> Stage1 SwinIR Restore with `face_swinir_v1.ckpt` at upscale 1 -> LAControlNet Apply -> DiffBIR Sampler "
        "-> ... -> DiffBIR Face Paste Back (`alignment`).",
        "The official `--task unaligned_face --upscale 2` without `--only_center_face`: facexlib's "
        "`FaceRestoreHelper` with `retinaface_resnet50`, score threshold 0.8, faces of eye distance under 5 pixels "
        "skipped, 512 x 512 FFHQ crops."),
    "DiffBIRFacePasteBack": (
        "The restored whole photo (resized to input x upscale) as `background`, the restored crops as `faces`, Face "
        "Detect & Align's `alignment` -> **DiffBIR Face Paste Back** -> Save Image.",
        "facexlib's `paste_faces_to_input_image` as DiffBIR's `--task unaligned_face` uses it: inverse affine, the square mask "
        "eroded by 2 x (side // 20) and blurred (`erosion` 0.1, `feather` 0.1), without the face-parsing network."),
    "DiffBIRDegrade": (
        "Load Image (a clean photo) -> **Degrade** (`preset` realesrgan, `seed` 0) -> `lq` into a restore graph; "
        "compare the result with `hq` in DiffBIR Compare.",
        "The training degradations of the official datasets: `CodeformerDataset` (general, face) and "
        "`RealESRGANDataset` (realesrgan; v2.1's `use_sharpener` = realesrgan_v2.1), with their parameter ranges."),
    "DiffBIRCompare": (
        "A restored image as `image_a`, Degrade's `hq` as `image_b` -> **DiffBIR Compare** -> the `report` into a "
        "Preview Any node.",
        "PSNR and SSIM as the official evaluation computes them on RGB in [0, 1] (scikit-image's "
        "`structural_similarity` with a Gaussian window); LPIPS is not computed."),
}


def widget_type(spec):
    typ = spec[0]
    if isinstance(typ, list):
        return "choice"
    return {"COMBO": "choice", "INT": "integer", "FLOAT": "number", "BOOLEAN": "on/off", "STRING": "text"}.get(
        typ, f"`{typ}` socket")


def plain(text: str) -> str:
    """Text (a description, a tooltip) as Markdown that renders it as written: the marks of emphasis, code and
    links escaped (``diffbir_*`` and ``dpm++_m2`` would otherwise start an emphasis)."""
    return re.sub(r"([\\`*_\[\]<])", r"\\\1", text)


def page(node_info: dict, node_id: str) -> str:
    """The Markdown help page of one node from its /object_info data."""
    info = node_info
    lines = [f"# {info['display_name']}", "", plain(info["description"]), "", "## Inputs", ""]
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            opts = spec[1] if len(spec) > 1 else {}
            bits = [widget_type(spec)]
            if "default" in opts:
                bits.append(f"default `{opts['default']}`")
            if section == "optional":
                bits.append("optional")
            lines.append(f"- **`{name}`** ({', '.join(bits)}): {plain(opts.get('tooltip', ''))}")
    lines += ["", "## Outputs", ""]
    for name, typ, tip in zip(info["output_name"], info["output"], info.get("output_tooltips") or []):
        lines.append(f"- **`{name}`** (`{typ}`): {plain(tip)}")
    example, official = EXTRA[node_id]
    lines += ["", "## Example", "", example, "", "## Official setting", "", official, "",
              "More: the pack's README (Nodes, Workflows) and the shipped templates under Workflow > Browse Templates.",
              ""]
    return "\n".join(lines)


def pages(node_info) -> dict[str, str]:
    """node id -> page, for every node of the pack; `node_info(node id)` is the host's /object_info data."""
    return {node_id: page(node_info(node_id), node_id) for node_id in EXTRA}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffbir_cli.help_pages", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    from . import host

    booted = host.boot(tempfile.mkdtemp(prefix="diffbir-help-pages-"))
    stale = []
    for node_id, text in pages(booted.node_info).items():
        path = DOCS_DIR / f"{node_id}.md"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path.name)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    extra = sorted(p.name for p in DOCS_DIR.glob("*.md") if p.stem not in EXTRA)
    if args.check:
        for name in stale:
            print(f"out of date: web/docs/{name}", file=sys.stderr)
        for name in extra:
            print(f"no such node: web/docs/{name}", file=sys.stderr)
        return 1 if stale or extra else 0
    print(f"{len(stale)} page(s) written" + (f"; pages of no node: {', '.join(extra)}" if extra else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
