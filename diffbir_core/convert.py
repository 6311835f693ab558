"""Convert an official DiffBIR checkpoint to safetensors.

    python -m diffbir_core.convert IN OUT.safetensors [--fp16] [--version v2.1]

The input is read safely (never unpickling arbitrary objects), unwrapped and stripped of
`module.` exactly as the official loader does, and its kind is detected. The output keeps
the official key names and records `diffbir_kind`, `diffbir_version` and, when known,
`diffbir_config` in the safetensors metadata, so later loads need no guessing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_checkpoint, save_safetensors
from .detect import detect


def convert(src: Path, dst: Path, fp16: bool = False, version: str | None = None, config: dict | None = None) -> dict:
    sd, metadata = read_checkpoint(src)
    det = detect(sd, src.name, metadata)
    if not det.loadable:
        raise CheckpointError(f"'{src.name}' looks like {det.looks_like}; only DiffBIR files are converted.")
    if fp16:
        # Schedule buffers and integer indices keep their precision; only weights shrink.
        sd = {k: v.half() if v.is_floating_point() and v.dim() > 0 and k.count(".") else v for k, v in sd.items()}
    out_meta = dict(metadata)
    out_meta["diffbir_kind"] = det.kind
    if version or det.version:
        out_meta["diffbir_version"] = version or det.version
    if config is not None:
        # Hyper-parameters no shape reveals (e.g. attention head size of a small model).
        out_meta["diffbir_config"] = json.dumps(config)
    out_meta["diffbir_source"] = src.name
    save_safetensors(sd, dst, out_meta)
    return {"kind": det.kind, "version": out_meta.get("diffbir_version"), "tensors": len(sd)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffbir_core.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path, help="official .ckpt/.pth/.pt/.safetensors file")
    ap.add_argument("output", type=Path, help="output .safetensors path")
    ap.add_argument("--fp16", action="store_true", help="store floating-point weights as float16 (half the size)")
    ap.add_argument("--version", choices=("v1", "v2", "v2.1"), help="record the DiffBIR version (else taken from the name)")
    ap.add_argument("--config", type=Path, help="JSON file with the network's hyper-parameters, stored as metadata")
    args = ap.parse_args(argv)
    if args.output.suffix != ".safetensors":
        ap.error("the output file must end in .safetensors")
    if args.output.resolve() == args.input.resolve():
        ap.error("input and output are the same file")
    try:
        config = json.loads(args.config.read_text()) if args.config else None
        info = convert(args.input, args.output, args.fp16, args.version, config)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(args.output), **info}))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
