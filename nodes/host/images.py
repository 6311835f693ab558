"""Input checks shared by the nodes: IMAGE normalisation and widget bounds. Imports nothing from ComfyUI."""

from __future__ import annotations

import torch


def rgb_image(image: torch.Tensor, input_name: str) -> torch.Tensor:
    """A ComfyUI IMAGE as (B, H, W, 3) float: RGBA drops alpha, grayscale (+alpha) is repeated.

    Never modifies `image`; refuses empty batches, other channel counts, integer and NaN/Inf pixels,
    naming the input.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{input_name}: expected an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:  # a single H, W, C image
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{input_name}: expected a non-empty IMAGE batch (B, H, W, C), got shape {tuple(image.shape)}")
    c = image.shape[-1]
    if c in (3, 4):
        image = image[..., :3]
    elif c in (1, 2):
        image = image[..., :1].repeat(1, 1, 1, 3)
    else:
        raise ValueError(f"{input_name}: expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got {c}")
    if not image.is_floating_point():
        raise TypeError(f"{input_name}: expected a float IMAGE in [0, 1], got dtype {image.dtype}")
    finite = torch.isfinite(image).flatten(1).all(1)
    if not bool(finite.all()):
        bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
        raise ValueError(f"{input_name}: contains NaN or infinite pixel values (image {bad[0]} of the batch"
                         f"{', and ' + str(len(bad) - 1) + ' more' if len(bad) > 1 else ''})")
    return image


def widget_range_error(node_class, name: str, value) -> str | None:
    """Why `value` is outside the min/max of widget `name` of `node_class`, or None.

    ComfyUI skips its own min/max check for the inputs a VALIDATE_INPUTS names, so those repeat it here.
    A linked input has no value at validation time (None) and is not checked.
    """
    if value is None:
        return None
    types = node_class.INPUT_TYPES()
    spec = {**types.get("required", {}), **types.get("optional", {})}
    opts = spec[name][1] if len(spec[name]) > 1 else {}
    if "min" in opts and value < opts["min"]:
        return f"{name} must be >= {opts['min']}, got {value}"
    if "max" in opts and value > opts["max"]:
        return f"{name} must be <= {opts['max']}, got {value}"
    return None
