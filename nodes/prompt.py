"""DiffBIR Prompt: a caption (any STRING) joined with the official positive prompt, both prompts encoded as the
official OpenCLIP embedder encodes them (one 77-token window, ``host.prompts``)."""

from __future__ import annotations

from comfy_api.latest import io

from diffbir_core.prompts import V2_NEGATIVE, V21_NEGATIVE, V21_POSITIVE, join_caption

from .host import schema
from .host.progress import report
from .host.prompts import encode, official_tokens
NODE = "DiffBIR Prompt"


def _line(name: str, text: str, truncation) -> str:
    kept, dropped = sum(truncation.kept.values()), sum(truncation.dropped.values())
    if not text:
        return f"{name}: empty"
    if dropped:
        return f"{name}: {kept + dropped} tokens, the first {kept} encoded, {dropped} dropped (official 77-token window)"
    return f"{name}: {kept} tokens, all encoded"


class DiffBIRPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRPrompt",
            display_name=NODE,
            category=schema.CONDITIONING,
            search_aliases=["prompt", "caption", "captioner", "text encode", "clip text encode", "diffbir prompt"],
            description=(
                "The official DiffBIR prompts: the caption (any text, e.g. a captioner node's STRING output) is "
                "joined with the positive prompt as the official code joins them (caption, then ', ', then the "
                "positive prompt; an empty one left out), and both prompts are encoded through your CLIP the way the "
                "official OpenCLIP text encoder sees them: one window of 77 tokens (start, the first 75 tokens of the "
                "text, end), so the tokens beyond it are dropped, and brackets are plain text (no (word:1.2) "
                "weights). The stock CLIP Text Encode instead encodes a long prompt in several 77-token windows, "
                "which conditions differently. Defaults: the official v2.1 positive and negative prompts. Connect "
                "positive and negative to LAControlNet Apply."),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the SD 2.1 checkpoint (Load Checkpoint's CLIP output)."),
                io.String.Input("caption", default="", multiline=True,
                                tooltip="A description of the image, typed or connected from a captioner node's "
                                        "STRING output (the official v2.1 default captioner is LLaVA, asked for a "
                                        "very short description). Empty = no caption."),
                io.String.Input("positive_prompt", default=V21_POSITIVE, multiline=True,
                                tooltip="Appended after the caption (official --pos_prompt). Default: the official "
                                        "v2.1 quality prompt; the paper's v2 recipe uses an empty one."),
                io.String.Input("negative_prompt", default=V21_NEGATIVE, multiline=True,
                                tooltip="Official --neg_prompt. Default: the official v2.1 negative prompt; the "
                                        f"paper's v2 recipe uses '{V2_NEGATIVE}'."),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive",
                                       tooltip="The caption and positive prompt, encoded in one 77-token window: "
                                               "connect to LAControlNet Apply's positive."),
                io.Conditioning.Output("negative_out", display_name="negative",
                                       tooltip="The negative prompt, encoded in one 77-token window: connect to "
                                               "LAControlNet Apply's negative."),
                io.String.Output("positive_text", display_name="positive_text",
                                 tooltip="The positive text as joined (caption, positive prompt), before truncation."),
                io.String.Output("report", display_name="report",
                                 tooltip="How many tokens each prompt has and how many were dropped (connect to "
                                         "Preview Any to read it)."),
            ],
        )

    @classmethod
    def execute(cls, clip, caption, positive_prompt, negative_prompt) -> io.NodeOutput:
        if clip is None:
            raise ValueError(f"{NODE}: the 'clip' input is empty; connect the CLIP output of the SD 2.1 Load "
                             "Checkpoint (a checkpoint without a text encoder gives none).")
        texts = {"positive": join_caption(caption or "", positive_prompt or ""), "negative": negative_prompt or ""}
        conditionings, lines = {}, []
        for name, text in texts.items():
            tokens, truncation = official_tokens(clip, text)
            conditionings[name] = encode(clip, tokens)
            lines.append(_line(name, text, truncation))
            if truncation.any_dropped:  # console and the node's text in the UI
                report(NODE, lines[-1])
        return io.NodeOutput(conditionings["positive"], conditionings["negative"], texts["positive"],
                             "\n".join(lines))
