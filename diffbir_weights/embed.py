"""Write the ComfyUI frontend's ``models`` metadata into workflows and blueprints, from the one catalogue.

    python -m diffbir_weights.embed workflows/*.json subgraphs/*.json    # rewrite the files that changed
    python -m diffbir_weights.embed --check workflows/*.json             # exit 1 if one is out of date

The frontend (``workflowSchema.ts``, ``zModelFile``) reads ``{name, url, directory, hash?, hash_type?}``
entries from a node's ``properties.models`` (only those whose ``name`` equals one of the node's widget
values) and from a top-level ``models`` list, checks each against ``GET /experiment/models/<directory>`` and
lists the missing ones with their folder and a download button for URLs it trusts.

For every loader node (``catalogue.LOADERS``) at the top level and inside ``definitions.subgraphs[*].nodes``,
each widget value naming an official file gets ``{"name": the value exactly, "url": the official URL,
"directory": the folder the loader reads that value from}``, plus ``"hash"`` and ``"hash_type": "sha256"``
only where the catalogue knows the SHA-256 (with its source); the top-level ``models`` lists every entry once.
A loader without file values loses a stale ``models`` property. A value prefixed with a folder
(``upscale_models/x.pth``) keeps its prefix in ``name``, as the frontend requires, though the folder's listing
shows the bare name: shipped workflows name files bare (tests/test_workflows.py checks it).

Refused, so that the catalogue and the files cannot drift apart: an official file name in a widget of a node
type the catalogue does not know as a loader (add it to ``LOADERS``), and a model file a loader names that
is not in the catalogue (nothing to link to). Plain module: no ComfyUI import.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from .catalogue import LOADERS, NONE_VALUES, WeightFile, is_model_file, lookup

HASH_TYPE = "sha256"
# Frontend-only node types: a note's text or a primitive's value loads nothing (a primitive feeding a loader's
# widget leaves its value in that widget too).
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")


class EmbedError(ValueError):
    """A workflow names a file the catalogue cannot describe; the message names the node and what to do."""


def model_entry(entry: WeightFile, name: str, directory: str) -> dict:
    """One ``zModelFile`` entry, keys in the schema's order; a hash only where the catalogue knows it."""
    out = {"name": name, "url": entry.url}
    if entry.sha256:
        out["hash"] = entry.sha256
        out["hash_type"] = HASH_TYPE
    out["directory"] = directory
    return out


def _string_values(node: dict) -> list[str]:
    values = node.get("widgets_values")
    items = values.values() if isinstance(values, dict) else (values or [])
    return [v for v in items if isinstance(v, str)]


def _label(node: dict, where: str) -> str:
    return f"{where}node #{node.get('id')} ({node.get('type')})"


def node_models(node: dict, where: str = "") -> list[dict]:
    """The ``models`` entries of one node (empty for a node that names no official file).

    EmbedError for an official file in a node type that is not a known loader, or a model file that a known
    loader names but the catalogue does not have.
    """
    kind = node.get("type")
    loader = LOADERS.get(kind)
    out: list[dict] = []
    for value in _string_values(node):
        if value.strip().lower() in NONE_VALUES:
            continue
        entry = lookup(value)
        if loader is None:
            if entry is not None:
                raise EmbedError(f"{_label(node, where)} names the official file {value!r}, but "
                                 "diffbir_weights.catalogue.LOADERS does not say which models folder that node "
                                 "type reads: add it there")
            continue
        if entry is None:
            if is_model_file(value):
                raise EmbedError(f"{_label(node, where)} names {value!r}, which is not an official file in "
                                 "diffbir_weights.catalogue, so there is no URL to give: use an official file "
                                 "name or add the file to the catalogue")
            continue
        item = model_entry(entry, value, loader.folder_of(value))
        if item not in out:
            out.append(item)
    return out


def _node_lists(graph: dict) -> Iterator[tuple[str, list[dict], set[str]]]:
    """(label prefix, node list, subgraph ids) for the graph and each subgraph definition."""
    subgraphs = [s for s in (graph.get("definitions") or {}).get("subgraphs") or [] if isinstance(s, dict)]
    ids = {s.get("id") for s in subgraphs if s.get("id")}
    yield "", graph.get("nodes") or [], ids
    for sub in subgraphs:
        yield f"subgraph {sub.get('name') or sub.get('id')!r}: ", sub.get("nodes") or [], ids


def embed(graph: dict) -> dict:
    """A copy of a UI-format workflow or blueprint with its ``models`` metadata written from the catalogue."""
    graph = copy.deepcopy(graph)
    every: list[dict] = []
    for where, nodes, subgraph_ids in _node_lists(graph):
        for node in nodes:
            if not isinstance(node, dict) or node.get("type") in subgraph_ids or node.get("type") in VIRTUAL_NODES:
                continue  # a subgraph instance (its inner loader carries the entries), a note, a primitive
            items = node_models(node, where)
            props = node.get("properties")
            if items:
                if not isinstance(props, dict):
                    props = node["properties"] = {}
                props["models"] = items
            elif node.get("type") in LOADERS and isinstance(props, dict):
                props.pop("models", None)  # no file selected any more: no stale entry
            every += [i for i in items if i not in every]
    if every:
        graph["models"] = every
    else:
        graph.pop("models", None)
    return graph


def dumps(graph: dict) -> str:
    """The repository's workflow file format: two-space JSON, non-ASCII kept, one final newline."""
    return json.dumps(graph, indent=2, ensure_ascii=False) + "\n"


def embed_file(path: str | Path, write: bool = True) -> bool:
    """Embed into one file; True when its text changes (written unless `write` is False)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        new = dumps(embed(json.loads(text)))
    except EmbedError as err:
        raise EmbedError(f"{path.name}: {err}") from None
    if new == text:
        return False
    if write:
        path.write_text(new, encoding="utf-8")
    return True


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffbir_weights.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="workflow or blueprint .json files")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(None if argv is None else list(argv))
    stale = []
    try:
        for path in args.files:
            if embed_file(path, write=not args.check):
                stale.append(path)
                print(f"{'out of date' if args.check else 'updated'}: {path}")
    except EmbedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check and stale:
        print("run: python -m diffbir_weights.embed " + " ".join(str(p) for p in args.files), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
