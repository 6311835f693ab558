"""Template-browser thumbnails for workflows/: a drawing of each graph, saved as <workflow>.jpg beside it.

ComfyUI's Browse Templates shows ``<name>.jpg`` next to a custom node's ``<name>.json`` (a placeholder without
one). No weights exist to render real restorations, so the thumbnail is the graph itself: the nodes at their
canvas positions, DiffBIR nodes highlighted, links as lines, the workflow's title on top.

    python -m diffbir_cli.thumbnails [--check]    # write every thumbnail (--check: report missing ones)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
SIZE = (640, 400)
MARGIN = 16
TITLE_H = 44
OURS = ("DiffBIR", "Degrade")  # node types of this pack start with these
COLOURS = {"background": (32, 33, 36), "node": (60, 63, 68), "ours": (38, 84, 124), "edge": (150, 160, 170),
           "text": (235, 235, 235), "title": (255, 255, 255), "note": (84, 68, 40)}


def _title(workflow: dict, stem: str) -> str:
    for node in workflow.get("nodes", []):
        if node.get("type") == "MarkdownNote":
            for line in str((node.get("widgets_values") or [""])[0]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
    return stem


def render(workflow: dict, stem: str) -> bytes:
    """The thumbnail of one UI-format workflow, as JPEG bytes (deterministic for a given workflow)."""
    from PIL import Image, ImageDraw, ImageFont

    nodes = [n for n in workflow.get("nodes", []) if n.get("type") != "MarkdownNote"]
    boxes = {n["id"]: (float(n["pos"][0]), float(n["pos"][1]), float(n["size"][0]), float(n["size"][1]))
             for n in nodes}
    x0 = min(x for x, _, _, _ in boxes.values())
    y0 = min(y for _, y, _, _ in boxes.values())
    x1 = max(x + w for x, _, w, _ in boxes.values())
    y1 = max(y + h for _, y, _, h in boxes.values())
    area_w, area_h = SIZE[0] - 2 * MARGIN, SIZE[1] - TITLE_H - 2 * MARGIN
    scale = min(area_w / (x1 - x0), area_h / (y1 - y0))
    off_x = MARGIN + (area_w - (x1 - x0) * scale) / 2
    off_y = TITLE_H + MARGIN + (area_h - (y1 - y0) * scale) / 2

    def box(node_id):
        x, y, w, h = boxes[node_id]
        return (off_x + (x - x0) * scale, off_y + (y - y0) * scale,
                off_x + (x + w - x0) * scale, off_y + (y + h - y0) * scale)

    image = Image.new("RGB", SIZE, COLOURS["background"])
    draw = ImageDraw.Draw(image)
    title_font, font = ImageFont.load_default(size=18), ImageFont.load_default(size=11)
    draw.text((MARGIN, 12), _title(workflow, stem)[:64], fill=COLOURS["title"], font=title_font)
    for link in workflow.get("links", []):
        _, src, _, dst, *_ = link
        if src in boxes and dst in boxes:
            a, b = box(src), box(dst)
            draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=COLOURS["edge"], width=2)
    for node in nodes:
        ours = str(node["type"]).startswith(OURS)
        draw.rounded_rectangle(box(node["id"]), radius=5, fill=COLOURS["ours" if ours else "node"],
                               outline=COLOURS["edge"])
        label = node.get("title") or _readable(str(node["type"]))
        bx = box(node["id"])
        draw.text((bx[0] + 4, bx[1] + 3), _short(label, int((bx[2] - bx[0]) / 6.2)), fill=COLOURS["text"], font=font)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()


_NAMES = {"LAControlNetApply": "LAControlNet Apply", "KSampler": "KSampler"}  # where word splitting misreads


def _readable(node_type: str) -> str:
    """'DiffBIRStage1Restore' -> 'Stage1 Restore', 'VAEDecode' -> 'VAE Decode' (CamelCase split into words)."""
    name = node_type.removeprefix("DiffBIR") or node_type
    if name in _NAMES:
        return _NAMES[name]
    out = ""
    for i, ch in enumerate(name):
        before, after = name[i - 1] if i else "", name[i + 1] if i + 1 < len(name) else ""
        if i and ch.isupper() and (before.islower() or before.isdigit() or (before.isupper() and after.islower())):
            out += " "
        out += ch
    return out


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a workflow has no thumbnail (JPEG bytes vary "
                                                       "with the Pillow build, so contents are not compared)")
    args = ap.parse_args(argv)
    stale = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        target = path.with_suffix(".jpg")
        if args.check:
            if not target.is_file():
                stale.append(target.name)
        else:
            target.write_bytes(render(json.loads(path.read_text(encoding="utf-8")), path.stem))
            print(f"wrote {target.name}")
    if stale:
        print("missing (run python -m diffbir_cli.thumbnails): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
