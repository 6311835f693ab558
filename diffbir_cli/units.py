"""One restore of ``python -m diffbir_cli restore``, as a unit of work that any process can run.

A unit is one input image (``ImageUnit``; a chunk of a clip's frames is the same idea, ``ray_run``). The same
three steps run in one process (``cli._run_images``) and on Ray workers (``ray_run``):

* ``restore_image(host, api, unit, data)`` runs the prompt for one image in a booted host and returns what Save
  Image saved (files in the host's output folder) with the run's text outputs;
* ``write_outputs(out_dir, stem, files)`` puts them in ``--out`` under their final names, each through a
  temporary name and a rename, so that a file under its final name is always complete;
* ``unit.done(out_dir)`` says whether a unit's outputs are all there already (what a rerun skips).

Why a unit carries its index: the staged input name and the Save Image prefix are made from it, and Save Image
embeds the prompt in the PNG; the same index gives the same bytes whichever process runs the unit.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import time

from . import workflow as wfl
from .errors import CliError


def output_name(stem: str, k: int, count: int) -> str:
    """``<stem>.png`` for a workflow that saves one image, ``<stem>_1.png``, ``<stem>_2.png``, ... for several."""
    return f"{stem}.png" if count == 1 else f"{stem}_{k}.png"


@dataclasses.dataclass(frozen=True)
class ImageUnit:
    """One input image: ``index`` (1-based, its place among the run's inputs), its file, its output stem."""

    index: int
    source: pathlib.Path
    stem: str

    @property
    def label(self) -> str:
        return str(self.source)

    def done(self, out_dir: pathlib.Path) -> bool:
        """Its outputs are all in ``out_dir``: its first (``<stem>.png`` or ``<stem>_1.png``) is there, and
        ``write_outputs`` renames the first one last."""
        return any((out_dir / output_name(self.stem, 1, count)).is_file() for count in (1, 2))


def image_units(images: list[pathlib.Path]) -> list[ImageUnit]:
    from .cli import _output_stems

    return [ImageUnit(i, path, stem) for i, (path, stem) in enumerate(zip(images, _output_stems(images),
                                                                             strict=True), 1)]


@dataclasses.dataclass
class Restored:
    """What one unit's run gave: the saved files (in the host's output folder, in Save Image order), its text
    outputs as (label, text), the seconds it took, and the prompt that ran (for the caller's report)."""

    files: list[pathlib.Path]
    texts: list[tuple[str, str]]
    seconds: float
    prompt: dict


def restore_image(host, api: dict, unit: ImageUnit, data: bytes | None = None) -> Restored:
    """Run ``api`` on ``unit``'s image (its file, or ``data``: the file's bytes, for a worker on another machine).

    The models stay loaded between calls (``keep_cache``: ComfyUI reuses the loaders' results)."""
    from .cli import _saved_images

    input_dir = pathlib.Path(host.m.folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    staged = f"diffbir_cli_{unit.index:04d}{unit.source.suffix.lower()}"
    if data is None:
        shutil.copyfile(unit.source, input_dir / staged)
    else:
        (input_dir / staged).write_bytes(data)
    prompt = {k: {**v, "inputs": dict(v["inputs"])} for k, v in api.items()}
    wfl.set_image(prompt, staged)
    save_ids = wfl.set_output_prefix(prompt, f"diffbir_cli/{unit.index:04d}")
    start = time.monotonic()
    try:
        outputs = host.run(prompt, keep_cache=True, strict=True)
    finally:
        (input_dir / staged).unlink(missing_ok=True)
    seconds = time.monotonic() - start
    saved = _saved_images(host, outputs, save_ids)
    if not saved:
        raise CliError(f"the workflow saved no image for {unit.source}: check its Save Image node")
    texts = []
    for node_id, out in outputs.items():  # text outputs (e.g. the compare report)
        node = prompt.get(node_id, {})
        label = (node.get("_meta") or {}).get("title") or node.get("class_type", node_id)
        texts += [(label, str(text)) for text in out.get("text", []) or []]
    return Restored(saved, texts, seconds, prompt)


def write_outputs(out_dir: pathlib.Path, stem: str, files: list[pathlib.Path | bytes]) -> list[pathlib.Path]:
    """Put one unit's outputs (files to move, or bytes) into ``out_dir``; returns their final paths.

    Each goes to a hidden temporary name first and is renamed (atomic on one file system), so an interrupted
    run never leaves a partial file under a final name; the first output is renamed last, so that it existing
    means the unit is complete (``ImageUnit.done``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = [out_dir / output_name(stem, k, len(files)) for k in range(1, len(files) + 1)]
    for item, final in list(zip(files, finals, strict=True))[::-1]:
        part = final.with_name(f".{final.name}.part")
        if isinstance(item, bytes):
            part.write_bytes(item)
        else:
            shutil.move(str(item), part)
        os.replace(part, final)
    return finals


@dataclasses.dataclass(frozen=True)
class ClipChunk:
    """Frames ``start`` .. ``start + count - 1`` of a clip (``clips.plan_chunks``); its restored frames wait in a
    hidden folder of ``--out`` until the clip is assembled (``ClipAssembly``)."""

    clip: pathlib.Path
    stem: str
    start: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.clip} frames {self.start}-{self.start + self.count - 1}"

    @staticmethod
    def frames_root(out_dir: pathlib.Path, stem: str) -> pathlib.Path:
        return out_dir / f".{stem}.frames"

    def frames_dir(self, out_dir: pathlib.Path) -> pathlib.Path:
        return self.frames_root(out_dir, self.stem) / f"{self.start:08d}"

    def done(self, out_dir: pathlib.Path) -> bool:
        return self.frames_dir(out_dir).is_dir()  # renamed into place complete (write_frames)

    def write_frames(self, out_dir: pathlib.Path, frames: list[bytes]) -> list[pathlib.Path]:
        final = self.frames_dir(out_dir)
        part = final.with_name(final.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        for k, data in enumerate(frames):
            (part / f"{self.start + k:08d}.png").write_bytes(data)
        os.replace(part, final)
        return [final]


@dataclasses.dataclass(frozen=True)
class ClipAssembly:
    """A clip whose chunks are all restored, to be made into ``out_dir/<stem><suffix>`` (``clips.assemble``,
    which needs ComfyUI's video type: a worker runs it, the driver writes the file)."""

    clip: pathlib.Path
    stem: str
    suffix: str
    fps: object  # fractions.Fraction, the source's frame rate (``clips.ClipInfo.fps``)

    @property
    def label(self) -> str:
        return f"{self.clip} (assembled)"

    def output(self, out_dir: pathlib.Path) -> pathlib.Path:
        return out_dir / f"{self.stem}{self.suffix}"

    def done(self, out_dir: pathlib.Path) -> bool:
        return self.output(out_dir).is_file()


def progress_line(position: int, total: int, unit, written: list[pathlib.Path], seconds: float,
                  where: str = "") -> str:
    """The line printed when a unit is written: ``[3/6] in/c.png -> out/c.png (1.2 s)``."""
    return (f"[{position}/{total}] {unit.label} -> {', '.join(str(p) for p in written)} ({seconds:.1f} s"
            f"{', ' + where if where else ''})")


def text_lines(texts: list[tuple[str, str]]) -> list[str]:
    return [f"    {label}: " + text.replace("\n", "\n    ") for label, text in texts]
