"""The official prompts: default texts, how a caption joins the positive prompt, the 77-token window.

DiffBIR v2.1 (`inference.py`, reference spec C.1) captions each image (LLaVA by default, RAM++ or none) and
encodes `", ".join` of the non-empty caption and `--pos_prompt` (whose default is the long quality prompt below);
the negative is `--neg_prompt`. The paper's v2 recipe uses an empty positive prompt and the short negative.
The text encoder is OpenCLIP's (`FrozenOpenCLIPEmbedder`): `open_clip.tokenize` gives one window of
`CONTEXT_LENGTH` tokens (start, the text's first `CONTEXT_LENGTH - 2` tokens, end, zero padding), so text beyond
it never reaches the model. Plain Python: the nodes apply this through the user's CLIP (``nodes/host/prompts``).
"""

from __future__ import annotations

CONTEXT_LENGTH = 77  # OpenCLIP's context_length: start token + 75 text tokens + end token

# v2.1 `inference.py` defaults (DEFAULT_POS_PROMPT / DEFAULT_NEG_PROMPT, one string each as in the code)
V21_POSITIVE = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
                "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
                "detailing, hyper sharpness, perfect without deformations.")
V21_NEGATIVE = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D "
                "render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
                "signature, jpeg artifacts, deformed, lowres, over-smooth.")
# the paper's v2 recipe (README): --pos_prompt '' --neg_prompt '...'
V2_POSITIVE = ""
V2_NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"


def join_caption(caption: str, positive: str) -> str:
    """The positive text the official code encodes: `", ".join` of the caption and the positive prompt, leaving
    out an empty one (an empty caption gives the positive prompt alone, an empty positive prompt the caption)."""
    return ", ".join(text for text in (caption, positive) if text)


def truncate(tokens: list, context_length: int = CONTEXT_LENGTH) -> tuple[list, list]:
    """(kept, dropped) text tokens of one official window: the first `context_length - 2` are kept (the window's
    start and end tokens take the other two places), the rest dropped, as `open_clip.tokenize` truncates."""
    room = context_length - 2
    return list(tokens[:room]), list(tokens[room:])
