"""Encoding a prompt through the user's CLIP as the official OpenCLIP embedder does: one 77-token window.

ComfyUI's CLIP Text Encode splits a long prompt into several 77-token windows (each start + up to 75 tokens + end),
encodes each and concatenates them along the token axis, so every token reaches the cross-attention, and it reads
``(text:1.2)`` as a weight. The official ``FrozenOpenCLIPEmbedder`` tokenizes with ``open_clip.tokenize``: start,
the text's first 75 tokens (cut mid-word if need be), end, zero padding; nothing else reaches the model, and
brackets are text. ``official_tokens`` builds that one window from the CLIP's own tokenizer: the text's tokens
(brackets escaped so ComfyUI reads no weights), the text tokens of all its windows in order (not relying on where
a host starts its next window: ComfyUI moves a short word group that does not fit whole to the next one), the
first 75 kept, framed by the start, end and padding tokens of the CLIP's own empty prompt. The result is the token structure
``CLIP.tokenize`` returns, so ``encode_from_tokens_scheduled`` encodes it as CLIP Text Encode would (hooks,
pooled output).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffbir_core.prompts import CONTEXT_LENGTH, truncate


@dataclass(frozen=True)
class Truncation:
    """What the window of one prompt holds: text tokens kept and dropped (per CLIP of the model, e.g. "h")."""

    kept: dict[str, int]
    dropped: dict[str, int]

    @property
    def any_dropped(self) -> bool:
        return any(self.dropped.values())


def escape_weights(text: str) -> str:
    """`text` with ComfyUI's prompt-weight syntax escaped: brackets stay text, as in the official tokenizer."""
    return text.replace("(", "\\(").replace(")", "\\)")  # ComfyUI unescapes exactly these two


def official_tokens(clip, text: str) -> tuple[dict, Truncation]:
    """(tokens for ``clip.encode_from_tokens*``, what was kept and dropped) of `text` in one official window."""
    windows_of = clip.tokenize(escape_weights(text), return_word_ids=True)
    empty_of = clip.tokenize("", return_word_ids=True)
    tokens, kept, dropped = {}, {}, {}
    for key, windows in windows_of.items():
        frame = empty_of[key][0]  # start, end, then padding up to the window's length
        if len(frame) != CONTEXT_LENGTH:
            raise ValueError(f"DiffBIR Prompt: this CLIP's '{key}' tokenizer does not make {CONTEXT_LENGTH}-token "
                             f"windows (its empty prompt has {len(frame)} tokens); connect the CLIP of the SD 2.1 "
                             "checkpoint.")
        # text tokens carry the id of their word (> 0); start, end and padding carry 0
        text_tokens = [tok for window in windows for tok in window if len(tok) > 2 and tok[2] != 0]
        keep, drop = truncate(text_tokens, len(frame))
        window = [frame[0], *keep, frame[1], *frame[2:len(frame) - len(keep)]]
        tokens[key] = [[(tok[0], tok[1]) for tok in window]]
        kept[key], dropped[key] = len(keep), len(drop)
    return tokens, Truncation(kept, dropped)


def encode(clip, tokens: dict) -> list:
    """CONDITIONING of `tokens`, encoded the way CLIP Text Encode encodes its tokens."""
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)  # hosts before scheduled CLIP hooks
    return [[cond, {"pooled_output": pooled}]]
