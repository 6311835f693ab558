"""Load DiffBIR Models: the stage-1 restorer and the IRControlNet/LAControlNet from the model folders."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from .host import model_cache, schema
from .host.loaders import DTYPES, load_controlnet, load_sd_parts, load_stage1
from .host.downloads import obtain
from .host.model_files import CONTROLNET_FILE, STAGE1_FILE
from .host.types import Stage1IO

log = logging.getLogger("comfyui-diffbir")
NODE = "Load DiffBIR Models"


class DiffBIRLoadModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRLoadModels",
            display_name=NODE,
            category=schema.LOADERS,
            search_aliases=["diffbir loader", "load controlnet", "swinir", "bsrnet", "scunet", "ircontrolnet",
                            "lacontrolnet", "restore"],
            description=(
                "Load DiffBIR's stage-1 restorer and its ControlNet (IRControlNet; LAControlNet in v1) from "
                "models/diffbir (also listed: models/upscale_models for stage 1 and models/controlnet for the "
                "ControlNet, shown with that folder as prefix). Kind and DiffBIR version are detected from the file; "
                "a wrong file is refused with a message saying what it is. An official file that is not installed "
                "(a workflow names it) is downloaded into its folder when the node runs, with a progress bar; "
                "DIFFBIR_OFFLINE=1 turns that off. Connect CONTROL_NET to 'LAControlNet "
                "Apply' and the stage-1 model to 'Stage1 SwinIR Restore'. The SD 2.1 model itself comes from the "
                "stock Load Checkpoint: v2.1 needs sd2.1-base-zsnr-laionaes5.ckpt, v1/v2 need "
                "v2-1_512-ema-pruned.ckpt."),
            inputs=[
                io.Combo.Input("stage1_name", options=STAGE1_FILE.choices(),
                               tooltip="Stage-1 restorer file: general_swinir_v1.ckpt / face_swinir_v1.ckpt / "
                                       "realesrgan_s4_swinir_100k.pth (SwinIR), BSRNet.pth or "
                                       "scunet_color_real_psnr.pth, from models/diffbir or (prefixed) "
                                       "models/upscale_models. An official name that is not installed is downloaded "
                                       "into that folder when the node runs. 'none' = no stage 1."),
                io.Combo.Input("controlnet_name", options=CONTROLNET_FILE.choices(),
                               tooltip="DiffBIR ControlNet file: DiffBIR_v2.1.pt, v2.pth, v1_general.pth or "
                                       "v1_face.pth (or a file converted with diffbir_core.convert), from "
                                       "models/diffbir or (prefixed) models/controlnet. The version is read from the "
                                       "file name or the converter's metadata. An official name that is not "
                                       "installed is downloaded into that folder when the node runs. 'none' = no "
                                       "ControlNet."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the ControlNet. auto = what ComfyUI picks for the UNet on this "
                                       "device (fp16 on most GPUs, fp32 on CPU, fp8 when ComfyUI runs with "
                                       "--fp8_e4m3fn-unet / --fp8_e5m2-unet). fp16/bf16 follow DiffBIR's half "
                                       "mode (time embedding and GroupNorms stay float32). fp8_e4m3fn/fp8_e5m2 store "
                                       "those weights in 8 bits (about half the memory of fp16) and compute in "
                                       "fp16/bf16 as ComfyUI does for an fp8 UNet (float32 on a CPU); less "
                                       "exact than fp16, e5m2 more so (README: Precision). A DiffBIR v1 full checkpoint's SD 2.1 UNet is loaded "
                                       "in the same precision. Stage-1 restorers always run in float32.",
                               **schema.ADVANCED),
            ],
            outputs=[
                Stage1IO.Output("stage1", display_name="stage1",
                                tooltip="The stage-1 restorer (SwinIR, BSRNet or SCUNet) for the DiffBIR stage-1 "
                                        "node; empty when stage1_name is 'none'."),
                io.ControlNet.Output("control_net", display_name="control_net",
                                     tooltip="The DiffBIR ControlNet for 'LAControlNet Apply'; empty when "
                                             "controlnet_name is 'none'."),
                io.Model.Output("model", display_name="model",
                                tooltip="Only for a DiffBIR v1 full checkpoint (stage 1 + ControlNet + SD 2.1 in one "
                                        "file): its SD 2.1 UNet. Empty (None) for any other file: use the stock Load "
                                        "Checkpoint instead."),
                io.Clip.Output("clip", display_name="clip",
                               tooltip="Only for a DiffBIR v1 full checkpoint: its SD 2.1 text encoder. Empty (None) "
                                       "otherwise."),
                io.Vae.Output("vae", display_name="vae",
                              tooltip="Only for a DiffBIR v1 full checkpoint: its SD 2.1 VAE. Empty (None) "
                                      "otherwise."),
                io.String.Output("info", display_name="info",
                                 tooltip="What was detected in each file: kind, DiffBIR version, sizes, precision and "
                                         "which SD 2.1 it needs; and which files were downloaded, from where."),
            ],
        )

    @classmethod
    def validate_inputs(cls, stage1_name=None, controlnet_name=None):
        # A listed file, or an official file of the slot that is not installed yet (downloaded when the node runs).
        return STAGE1_FILE.unlisted_error(stage1_name) or CONTROLNET_FILE.unlisted_error(controlnet_name) or True

    @classmethod
    def fingerprint_inputs(cls, stage1_name, controlnet_name, dtype="auto"):
        # Re-run when a file is replaced on disk under the same name (or arrives: a download, a copy by hand).
        return repr(([STAGE1_FILE.fingerprint(stage1_name), CONTROLNET_FILE.fingerprint(controlnet_name)], dtype))

    @classmethod
    def execute(cls, stage1_name, controlnet_name, dtype="auto") -> io.NodeOutput:
        lines = []
        stage1_path, downloaded = obtain(STAGE1_FILE, stage1_name, NODE)
        lines += [downloaded] if downloaded else []
        controlnet_path, downloaded = obtain(CONTROLNET_FILE, controlnet_name, NODE)
        lines += [downloaded] if downloaded else []
        stage1 = control = None
        sd_parts = (None, None, None)
        v1_sd = None  # path of a v1 full checkpoint picked in either slot

        if stage1_path is not None:
            stage1, has_sd, info = model_cache.cached("stage1", (model_cache.file_key(stage1_path),),
                                                      lambda: load_stage1(stage1_path), stage1_path)
            lines.append(info)
            v1_sd = stage1_path if has_sd else v1_sd
        if controlnet_path is not None:
            control, has_sd, info = model_cache.cached("controlnet", (model_cache.file_key(controlnet_path), dtype),
                                                       lambda: load_controlnet(controlnet_path, dtype),
                                                       controlnet_path)
            lines.append(info)
            v1_sd = controlnet_path if has_sd else v1_sd
        if v1_sd is not None:
            path = v1_sd
            sd_parts = model_cache.cached("sd", (model_cache.file_key(path), dtype),
                                          lambda: load_sd_parts(path, dtype), path)
            lines.append(f"SD 2.1 (MODEL, CLIP, VAE) loaded from the v1 full checkpoint {os.path.basename(path)}")
        for slot, used in (("stage1", stage1_path), ("controlnet", controlnet_path), ("sd", v1_sd)):
            if used is None:
                model_cache.release(slot)  # release what an earlier run loaded into an emptied slot
        if stage1_path is None and controlnet_path is None:
            lines.append("nothing loaded (both slots are 'none')")
        info = "\n".join(lines)
        log.info("DiffBIR: %s", info.replace("\n", "; "))
        return io.NodeOutput(stage1, control, *sd_parts, info)
