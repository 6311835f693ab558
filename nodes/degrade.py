"""Degrade: the DiffBIR training degradations as a seeded, reproducible ComfyUI node.

Thin adapter over ``diffbir_core.degrade``.
"""

from __future__ import annotations

import inspect
import json

import comfy.model_management as mm
from comfy_api.latest import io

from diffbir_core.degrade import pipeline as _pipe
from diffbir_core.degrade.presets import (
    PRESET_NAMES,
    PRESETS,
    RANGE_INFO,
    format_range,
    get_preset,
    resolve_ranges,
)

from .host import schema
from .host.images import rgb_image

SEED_MAX = 0xFFFFFFFFFFFFFFFF
SHARPEN_CHOICES = ("preset", "on", "off")


def _override_tooltip(key: str) -> str:
    meaning = RANGE_INFO[key][0]
    uses = [f"{name} {format_range(p['ranges'][key])}" for name, p in PRESETS.items() if key in p["ranges"]]
    return (
        f"Override the range of the {meaning}. Empty = the preset's range. Write 'low-high' (e.g. '1-4') or one "
        f"number for a fixed value. Preset values: {'; '.join(uses)}. Only valid for presets listed here."
    )


def _validate_inputs(cls, preset=None, params_json=None, **overrides):
    """Shown before the run: preset, range overrides and params_json (a linked input arrives as None)."""
    try:
        if preset is not None:
            get_preset(preset)
        if params_json and params_json.strip():
            try:
                data = json.loads(params_json)
            except ValueError:
                data = None  # params_from_json words the error
            _pipe.params_from_json(params_json, len(data) if isinstance(data, list) and data else 1)
        elif preset is not None:
            resolve_ranges(preset, {k: v for k, v in overrides.items() if v is not None})
    except ValueError as err:
        return str(err)
    return True


# ComfyUI gives validate_inputs only the inputs its signature names, and skips its own checks (min/max, combo
# list) for exactly those; a **kwargs signature would switch them off for every input. So name each one.
_validate_inputs.__signature__ = inspect.Signature(
    [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
       for name in ("preset", "params_json", *RANGE_INFO)])


class DiffBIRDegrade(io.ComfyNode):
    """Synthesise a low-quality image from a clean one with DiffBIR's training degradations."""

    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRDegrade",
            display_name="Degrade",
            category=schema.TESTING,
            search_aliases=["degrade", "degradation", "synthetic low quality", "blur noise jpeg", "realesrgan "
                            "degradation"],
            description=(
                "Degrade a clean image the way DiffBIR's training data was made, repeatably, so a restorer can be "
                "judged: degrade -> restore -> Compare against hq.\n"
                "Presets: 'general' / 'face' = CodeFormer-style single order (blur, downsample, Gaussian noise, JPEG, "
                "resize back); 'realesrgan' = Real-ESRGAN second order (two rounds of blur/resize/noise/JPEG plus a "
                "final sinc filter); 'realesrgan_v2.1' additionally USM-sharpens the HQ as DiffBIR v2.1 trains.\n"
                "Every random choice comes from seed + batch index (numpy PCG64). The 'params' output is JSON of all "
                "values drawn; paste it into params_json to reproduce the exact images (same machine and library "
                "versions). JPEG is real libjpeg (Pillow), so the Real-ESRGAN JPEG steps differ slightly from the "
                "official DiffJPEG."),
            inputs=[
                io.Image.Input("image", tooltip="Clean (high-quality) images to degrade, at least 16x16; every image "
                                                "of a batch gets its own draws. RGBA loses its alpha, grayscale is "
                                                "repeated to RGB."),
                io.Combo.Input("preset", options=list(PRESET_NAMES), default="general",
                               tooltip="Which DiffBIR training degradation and ranges to use (see the node "
                                       "description)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed of all random choices; image i of a batch uses seed + i. Same seed, same "
                                     "output."),
                *[io.String.Input(key, default="", multiline=False, optional=True, tooltip=_override_tooltip(key),
                                  **schema.ADVANCED) for key in RANGE_INFO],
                io.Combo.Input("sharpen_hq", options=list(SHARPEN_CHOICES), default="preset", optional=True,
                               tooltip="USM-sharpen the HQ before degrading it (DiffBIR v2.1 'use_sharpener'); the hq "
                                       "output is then the sharpened image. 'preset' = on for realesrgan_v2.1, off "
                                       "otherwise.", **schema.ADVANCED),
                io.Int.Input("hq_size", default=0, min=0, max=16384, step=1, optional=True,
                             tooltip="0 = degrade at the input size. >0 = first centre-crop the HQ to this square size "
                                     "like the official datasets (BOX halving, bicubic resize of the short side, "
                                     "centre crop; DiffBIR trains at 512).", **schema.ADVANCED),
                io.String.Input("params_json", default="", multiline=True, optional=True,
                                tooltip="Optional: the 'params' output of an earlier run. When set, nothing is drawn: "
                                        "preset, seed, overrides, sharpen_hq and hq_size are ignored and these exact "
                                        "parameters are applied. A single object applies to every image of the "
                                        "batch; a list needs one entry per image.", **schema.ADVANCED),
            ],
            outputs=[
                io.Image.Output("lq", display_name="lq", tooltip="The degraded (low-quality) images, same size as hq."),
                io.Image.Output("hq", display_name="hq",
                                tooltip="The clean reference aligned pixel for pixel with lq: the input, centre-"
                                        "cropped if hq_size > 0 and USM-sharpened if sharpening is on. Compare "
                                        "restorations against this."),
                io.String.Output("params", display_name="params",
                                 tooltip="JSON of every parameter drawn (one object, or a list for a batch). Feed it "
                                         "to params_json to reproduce."),
            ],
        )

    validate_inputs = classmethod(_validate_inputs)

    @classmethod
    def execute(cls, image, preset, seed, sharpen_hq="preset", hq_size=0, params_json="", **overrides):
        image = rgb_image(image, "image")  # RGBA -> RGB, gray -> RGB; empty and NaN/Inf images refused
        unknown = sorted(set(overrides) - set(RANGE_INFO))
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}; known range overrides: {', '.join(RANGE_INFO)}")
        b = int(image.shape[0])
        if params_json and params_json.strip():
            params = _pipe.params_from_json(params_json, b, name="params_json")
        else:
            if sharpen_hq not in SHARPEN_CHOICES:
                raise ValueError(f"sharpen_hq: expected one of {SHARPEN_CHOICES}, got {sharpen_hq!r}")
            sharpen = None if sharpen_hq == "preset" else sharpen_hq == "on"
            params = [
                _pipe.draw_params(preset, _pipe.make_rng(int(seed) + i), overrides, sharpen_hq=sharpen,
                                  hq_size=int(hq_size), seed=int(seed) + i)
                for i in range(b)
            ]
        lq, hq = _pipe.apply_batch(image, params,
                                   on_image=lambda i: mm.throw_exception_if_processing_interrupted())
        return io.NodeOutput(lq, hq, _pipe.params_to_json(params))
