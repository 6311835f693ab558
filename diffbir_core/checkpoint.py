"""Reading and writing checkpoint files without ever executing code from them.

Official DiffBIR weights ship as pickles (.ckpt/.pth/.pt). A pickle can run arbitrary
code when loaded, and these files come from the internet, so:

* .safetensors is read with the safetensors library (no code, header validated);
* everything else goes through `torch.load(weights_only=True)`, torch's restricted
  unpickler, which only rebuilds tensors and plain containers. A few harmless objects
  that real training checkpoints carry (a Lightning callback's state, numpy scalars) are
  admitted as inert stand-ins; anything else is refused with a message on how to convert.

The unwrapping rules follow the official loader (`state_dict` wrapper, DataParallel's
`module.` prefix) plus the BasicSR/KAIR wrappers (`params_ema`, `params`).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")

# Keys that wrap the real state dict. params_ema is preferred over params because
# BasicSR saves the EMA weights there and those are the ones released for inference.
WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not hold what the caller needs."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would need arbitrary code to load; it was not loaded."""


# --------------------------------------------------------------------------------------
# inert stand-ins for harmless non-tensor objects found in real training checkpoints


class _InertObject:
    """Accepts pickled state and keeps it as data; has no behaviour of its own."""

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self._state = state


def _inert(module: str, name: str) -> type:
    cls = type(name, (_InertObject,), {})
    cls.__module__ = module
    return cls


def _numpy_safe_globals() -> list:
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but loading tensors must not need it
        return []
    found = [np.dtype, np.ndarray]
    for mod_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        found += [getattr(mod, "scalar", None), getattr(mod, "_reconstruct", None)]
    found += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    return [g for g in found if g is not None]


# Lightning checkpoints of the v1 era store the ModelCheckpoint callback object; its state
# is a dict of numbers and paths. We give the unpickler a stand-in class under that exact
# name, so the object is rebuilt as plain data and Lightning itself is never imported.
_INERT_GLOBALS = [
    _inert("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    _inert("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"),
    _inert("pytorch_lightning.callbacks.early_stopping", "EarlyStopping"),
]


def _safe_globals() -> list:
    import codecs

    # (class, "module.name") pairs make torch match the checkpoint's global name exactly.
    inert = [(cls, f"{cls.__module__}.{cls.__name__}") for cls in _INERT_GLOBALS]
    return inert + _numpy_safe_globals() + [codecs.encode]


# --------------------------------------------------------------------------------------
# reading


def _refusal(path: Path, err: Exception) -> UnsafeCheckpointError:
    detail = str(err).strip().splitlines()
    what = next((line for line in detail if "global" in line.lower()), detail[0] if detail else repr(err))
    return UnsafeCheckpointError(
        f"Refused to load '{path.name}': it is a pickle that needs arbitrary Python objects to load "
        f"({what.strip()}). Loading it could run code from the file, so DiffBIR never does. "
        "If you trust where it came from, convert it once to safetensors in a separate Python session, e.g. "
        "`python -c \"import torch, safetensors.torch as s; sd = torch.load('IN.ckpt', weights_only=False); "
        "sd = sd.get('state_dict', sd); s.save_file({k: v.contiguous() for k, v in sd.items() "
        "if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\"`, then select the .safetensors file."
    )


def _not_weights(path: Path) -> CheckpointError | None:
    """A text file saved under a checkpoint name (Git LFS pointer, HTML error page), recognised by its start."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"version https://git-lfs"):
        return CheckpointError(
            f"'{path.name}' is a Git LFS pointer ({path.stat().st_size} bytes of text), not the weights: download "
            "the file itself (the download button on Hugging Face, or `git lfs pull` in a clone).")
    if head[:1] == b"<":
        return CheckpointError(
            f"'{path.name}' is an HTML/XML page, not weights (a download that saved an error or login page): "
            "download it again.")
    return None


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(
            f"'{path.name}' is not a valid safetensors file ({type(err).__name__}: {err}). "
            "It may be truncated or damaged: download it again."
        ) from err
    return tensors, metadata


def _read_pickle(path: Path):
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"'{path.name}' is empty (0 bytes): download it again.")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        with open(path, "rb") as f:
            first = f.read(1).decode("latin-1")
        if first not in pickletools.code2op:  # not a pickle at all (nor a zip archive): nothing was refused
            raise CheckpointError(
                f"'{path.name}' is not a PyTorch checkpoint (neither a pickle nor a zip archive). It may be damaged "
                "or another kind of file: download it again.") from err
        raise _refusal(path, err) from err
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, OSError) as err:
        text = str(err)
        if "Unsupported global" in text or "weights_only" in text.lower():
            raise _refusal(path, err) from err
        raise CheckpointError(
            f"'{path.name}' could not be read as a PyTorch checkpoint ({type(err).__name__}: {text[:200]}). "
            "It may be truncated or not a checkpoint at all: download it again."
        ) from err


def unwrap_state_dict(obj, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Descend through wrapper dicts until a flat {key: tensor} mapping remains.

    Non-tensor entries at the state-dict level (step counters, inert objects) are dropped;
    they are not weights.
    """
    for _ in range(4):  # wrappers nest at most a couple of levels deep in practice
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"'{name}' holds a {type(obj).__name__}, not a dictionary of weights.")
        if any(isinstance(v, torch.Tensor) for v in obj.values()) and not any(
            isinstance(obj.get(k), Mapping) for k in WRAPPER_KEYS
        ):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"'{name}' contains no tensors (top-level keys: {sorted(map(str, obj))[:8]}).")
    return tensors


def strip_module_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel's `module.` prefix.

    The official loader looks only at the first key; we strip every key that has it,
    which is the same for real files and also repairs a partially prefixed dict.
    """
    if not any(k.startswith("module.") for k in sd):
        return sd
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file safely: (state dict, metadata).

    Metadata is the safetensors header metadata (empty for pickles); our converter stores
    `diffbir_kind`, `diffbir_version` and `diffbir_config` there.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: '{path}'")
    not_weights = _not_weights(path)
    if not_weights is not None:
        raise not_weights
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        raw, metadata = _read_safetensors(path)
    else:
        raw, metadata = _read_pickle(path), {}
    return strip_module_prefix(unwrap_state_dict(raw, path.name)), metadata


def save_safetensors(
    sd: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to safetensors (contiguous, shared storage broken) with string metadata."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage (tied or sliced weights); copy only those.
    seen: set[int] = set()
    tensors = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
