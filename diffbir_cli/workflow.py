"""Workflow files for the command line: the shipped catalogue, UI -> API conversion, prompt edits.

* ``catalogue()`` / ``resolve(name)`` - the graphs in ``workflows/`` under short aliases (``v2.1-sr``, ...)
  or their file stem, each with a one-line description taken from the heading of its note.
* ``workflow_to_api(ui, node_classes, node_info)`` - a frontend-saved (UI) graph as an API prompt, checked
  against the registered node classes (``Host.workflow_to_api`` calls it with the booted host's data).
* prompt edits: the input image, the output prefix, ``--steps/--seed/--upscale`` by node type and
  ``--set NODE.INPUT=VALUE`` by node id, title or type.

Plain module: no ComfyUI or torch import.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = REPO_ROOT / "workflows"

# Frontend-only node types that never reach the backend.
_VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
_NOTE_NODES = {"Note", "MarkdownNote"}
# A V3 DynamicCombo (newer hosts, e.g. 0.33.0's Save Video ``format``) is a combo whose chosen option adds inputs
# of its own; the frontend inserts their widgets right after it, named "<combo>.<input>" (``_dynamic_inputs``).
_DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", _DYNAMIC_COMBO}
_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
_MODE_MUTED, _MODE_BYPASS = 2, 4


class WorkflowConversionError(ValueError):
    """A UI workflow cannot be mapped onto the registered node classes."""


class WorkflowError(ValueError):
    """A workflow name, file or edit the command line cannot use; the message says what to do."""


# --------------------------------------------------------------------------- catalogue

# File stem -> short alias. Files added to workflows/ without an entry get a derived alias.
ALIASES = {
    "diffbir_v2.1_sr_x4": "v2.1-sr",
    "diffbir_v2_sr_bsrnet": "v2-sr",
    "diffbir_v2_face_aligned": "v2-face",
    "diffbir_v2_denoise_scunet": "v2-denoise",
    "diffbir_v1_general": "v1-general",
    "diffbir_lacontrolnet_stock_ksampler": "lacontrolnet-ksampler",
    "diffbir_degrade_restore_compare": "degrade-compare",
    "diffbir_v2.1_unaligned_face": "v2.1-unaligned-face",
    "diffbir_v2.1_video": "v2.1-video",
}


@dataclass(frozen=True)
class WorkflowFile:
    alias: str
    path: pathlib.Path
    description: str

    @property
    def stem(self) -> str:
        return self.path.stem


def load_json(path: pathlib.Path) -> dict:
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise WorkflowError(f"cannot read the workflow file {path} ({err}): give a workflow saved from ComfyUI "
                            "as .json") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{path} is not a ComfyUI workflow (a JSON object): give a workflow saved from "
                            "ComfyUI as .json")
    return data


def description(graph: dict) -> str:
    """The first line of the graph's first note, without Markdown heading marks ('' without a note)."""
    for node in graph.get("nodes") or []:
        if node.get("type") in _NOTE_NODES:
            for value in node.get("widgets_values") or []:
                for line in str(value).splitlines():
                    line = line.strip().lstrip("#").strip()
                    if line:
                        return line
    return ""


def _derived_alias(stem: str) -> str:
    name = stem[len("diffbir_"):] if stem.startswith("diffbir_") else stem
    return name.replace("_", "-")


def catalogue() -> list[WorkflowFile]:
    """The shipped workflows: those with an alias in ALIASES first (in that order), then any others."""
    paths = {p.stem: p for p in WORKFLOWS_DIR.glob("*.json")}
    order = [s for s in ALIASES if s in paths] + sorted(s for s in paths if s not in ALIASES)
    out = []
    for stem in order:
        path = paths[stem]
        try:
            text = description(load_json(path))
        except WorkflowError:
            text = "(unreadable workflow file)"
        out.append(WorkflowFile(ALIASES.get(stem) or _derived_alias(stem), path, text))
    return out


def resolve(name: str) -> WorkflowFile:
    """A workflow by alias, file stem or file name (case-insensitive), or a path to a .json file."""
    wanted = name.strip().lower()
    for wf in catalogue():
        if wanted in (wf.alias.lower(), wf.stem.lower(), wf.path.name.lower()):
            return wf
    path = pathlib.Path(name).expanduser()
    if path.suffix.lower() == ".json" and path.is_file():
        return WorkflowFile(path.stem, path.resolve(), description(load_json(path)))
    known = ", ".join(wf.alias for wf in catalogue())
    raise WorkflowError(f"unknown workflow {name!r}: use one of {known} (see --list) or the path of a workflow "
                        ".json file")


def string_values(graph: dict) -> list[str]:
    """Every string widget value of a UI graph's nodes, or string input of an API prompt (notes skipped).

    The official weight files a graph needs are among these (``weights.files_needed`` picks them out).
    """
    values: list[str] = []
    if "nodes" in graph:
        for node in graph.get("nodes") or []:
            if node.get("type") in _NOTE_NODES or node.get("mode", 0) in (_MODE_MUTED, _MODE_BYPASS):
                continue
            widgets = node.get("widgets_values") or []
            items = widgets.values() if isinstance(widgets, dict) else widgets
            values += [v for v in items if isinstance(v, str)]
    else:
        for node in graph.values():
            if isinstance(node, dict):
                values += [v for v in (node.get("inputs") or {}).values() if isinstance(v, str)]
    return values


def is_api_prompt(graph: dict) -> bool:
    return "nodes" not in graph and bool(graph) and all(
        isinstance(v, dict) and "class_type" in v for v in graph.values())


# --------------------------------------------------------------------------- UI -> API


def _entry(entry) -> tuple:
    """(type, options) of one input definition of /object_info."""
    typ = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
    has_opts = isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict)
    return typ, (entry[1] if has_opts else {})


def _input_spec(info: dict):
    """(ordered [(name, type, options)], hidden names) from a node_info dict."""
    spec = info.get("input", {})
    order = info.get("input_order") or {k: list(v) for k, v in spec.items()}
    inputs = []
    for section in ("required", "optional"):
        defs = spec.get(section) or {}
        for name in order.get(section, list(defs)):
            if name not in defs:
                continue
            inputs.append((name, *_entry(defs[name])))
    hidden = set((spec.get("hidden") or {}).keys())
    return inputs, hidden


def _dynamic_inputs(name: str, opts: dict, value) -> tuple[list, set]:
    """([(name, type, options)], optional names) of the inputs the option ``value`` of the DynamicCombo ``name``
    adds, named "<name>.<input>" in the order the frontend inserts their widgets (required, then optional)."""
    for option in opts.get("options") or []:
        if option.get("key") == value:
            added, optional = [], set()
            for section in ("required", "optional"):
                for key, entry in ((option.get("inputs") or {}).get(section) or {}).items():
                    added.append((f"{name}.{key}", *_entry(entry)))
                    if section == "optional":
                        optional.add(f"{name}.{key}")
            return added, optional
    return [], set()


def _is_dynamic_child(name: str, spec: list) -> bool:
    """Whether ``name`` ("format.codec", ...) is an input a DynamicCombo of ``spec`` may add."""
    return any(typ == _DYNAMIC_COMBO and name.startswith(f"{root}.") for root, typ, _ in spec)


def _is_widget(typ, opts) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in _WIDGET_TYPES


def _has_control_widget(name, typ, opts) -> bool:
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return typ == "INT" and name in ("seed", "noise_seed")


_SUBGRAPH_INPUT, _SUBGRAPH_OUTPUT = -10, -20  # the ids of a subgraph definition's input and output nodes


def _link_record(link) -> dict:
    if isinstance(link, dict):
        return dict(link)
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    return dict(zip(keys, link))


def flatten_subgraphs(ui_workflow: dict) -> dict:
    """The graph with every subgraph instance (a node whose type is the id of one of ``definitions.subgraphs``,
    e.g. a blueprint placed from the node library) replaced by the subgraph's own nodes, as the frontend does
    before it queues a prompt: inner nodes get the ids ``<instance id>:<inner id>``; a link into a subgraph input
    continues to every inner node that input feeds; an unconnected widget input keeps the inner node's widget
    value, or takes the instance's value where the instance stores one (positional ``widgets_values`` over its
    widget inputs, as older frontends save them); the links out of a subgraph output start at the inner node
    that feeds it. Nested subgraphs are expanded in turn. A graph without definitions is returned unchanged."""
    definitions = {sg["id"]: sg for sg in (ui_workflow.get("definitions") or {}).get("subgraphs") or []}
    if not definitions:
        return ui_workflow
    nodes = [dict(n) for n in ui_workflow.get("nodes") or []]
    links = {rec["id"]: rec for rec in map(_link_record, ui_workflow.get("links") or [])}
    expanded = 0
    while True:
        instance = next((n for n in nodes if n.get("type") in definitions), None)
        if instance is None:
            break
        expanded += 1
        if expanded > 1000:
            raise WorkflowConversionError("subgraphs nest too deeply (a subgraph that contains itself?)")
        sg = definitions[instance["type"]]
        nodes.remove(instance)
        prefix = f"{instance['id']}:"
        mode = instance.get("mode", 0)
        inner = {}
        for node in sg.get("nodes") or []:
            node = json.loads(json.dumps(node))  # a deep copy: an instance never changes the definition
            node["id"] = prefix + str(node["id"])
            if mode:
                node["mode"] = mode
            for inp in node.get("inputs") or []:
                inp["link"] = None  # relinked below
            inner[node["id"]] = node
        instance_inputs = instance.get("inputs") or []
        widget_values = instance.get("widgets_values")
        widget_values = list(widget_values) if isinstance(widget_values, list) else []
        widget_slots = [i for i, inp in enumerate(instance_inputs) if inp.get("widget")]
        outer_in = {rec["target_slot"]: rec for rec in links.values() if rec["target_id"] == instance["id"]}
        for rec in list(outer_in.values()):
            del links[rec["id"]]
        for rec in map(_link_record, sg.get("links") or []):
            if rec["target_id"] == _SUBGRAPH_OUTPUT:
                for out in links.values():  # the outer links leaving this output now start inside
                    if out["origin_id"] == instance["id"] and out["origin_slot"] == rec["target_slot"]:
                        out["origin_id"], out["origin_slot"] = prefix + str(rec["origin_id"]), rec["origin_slot"]
                continue
            target = inner.get(prefix + str(rec["target_id"]))
            if target is None:
                raise WorkflowConversionError(f"subgraph {sg.get('name')!r}: link {rec['id']} ends at missing node "
                                              f"#{rec['target_id']}")
            new = dict(rec, id=prefix + str(rec["id"]), target_id=target["id"])
            if rec["origin_id"] == _SUBGRAPH_INPUT:
                slot = rec["origin_slot"]
                outer = outer_in.get(slot)
                if outer is not None:
                    new["origin_id"], new["origin_slot"] = outer["origin_id"], outer["origin_slot"]
                elif slot in widget_slots and widget_slots.index(slot) < len(widget_values):
                    value_node = {"id": f"{prefix}value{slot}", "type": "PrimitiveNode", "mode": 0,
                                  "widgets_values": [widget_values[widget_slots.index(slot)]]}
                    nodes.append(value_node)
                    new["origin_id"], new["origin_slot"] = value_node["id"], 0
                else:
                    continue  # unconnected: the inner node keeps its own widget value (or its socket stays empty)
            else:
                new["origin_id"] = prefix + str(rec["origin_id"])
            links[new["id"]] = new
            slot_inputs = target.get("inputs") or []
            if rec["target_slot"] < len(slot_inputs):
                slot_inputs[rec["target_slot"]]["link"] = new["id"]
        nodes.extend(inner.values())
    flat = {k: v for k, v in ui_workflow.items() if k != "definitions"}
    flat["nodes"], flat["links"] = nodes, list(links.values())
    return flat


def workflow_to_api(ui_workflow: dict, node_classes: dict, node_info) -> dict:
    """Convert a frontend-saved workflow (nodes/links/widgets_values) into an API prompt.

    ``node_classes``: nodes.NODE_CLASS_MAPPINGS; ``node_info(class_name)``: /object_info data. Subgraphs
    (blueprints among them) are flattened first (``flatten_subgraphs``).
    """
    if "nodes" not in ui_workflow:
        raise WorkflowConversionError("not a UI workflow: no 'nodes' list (is it already API format?)")
    ui_workflow = flatten_subgraphs(ui_workflow)
    nodes_by_id = {n["id"]: n for n in ui_workflow["nodes"]}
    links = {}
    for link in ui_workflow.get("links", []) or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)

    def label(node):
        return f"node #{node['id']} ({node.get('type')!r})"

    def resolve(link_id, seen=()):
        """API value for a link: [origin_id, slot], a literal (PrimitiveNode) or None (muted)."""
        if link_id not in links:
            raise WorkflowConversionError(f"link {link_id} is not in the workflow's links")
        origin_id, slot, link_type = links[link_id]
        origin = nodes_by_id.get(origin_id)
        if origin is None:
            raise WorkflowConversionError(f"link {link_id} starts at missing node #{origin_id}")
        if origin_id in seen:
            raise WorkflowConversionError(f"link cycle through {label(origin)}")
        kind = origin.get("type")
        if kind == "Reroute" and kind not in node_classes:
            upstream = next((i.get("link") for i in origin.get("inputs") or []), None)
            return None if upstream is None else resolve(upstream, seen + (origin_id,))
        if kind == "PrimitiveNode" and kind not in node_classes:
            values = origin.get("widgets_values") or []
            return values[0] if values else None
        mode = origin.get("mode", 0)
        if mode == _MODE_MUTED:
            return None
        if mode == _MODE_BYPASS:
            ins = origin.get("inputs") or []
            candidates = ([ins[slot]] if slot < len(ins) else []) + list(ins)
            for inp in candidates:
                if inp.get("link") is not None and (link_type is None or inp.get("type") == link_type):
                    return resolve(inp["link"], seen + (origin_id,))
            return None
        return [str(origin_id), slot]

    prompt = {}
    for node in ui_workflow["nodes"]:
        kind = node.get("type")
        if kind in _VIRTUAL_NODES and kind not in node_classes:
            continue
        if node.get("mode", 0) in (_MODE_MUTED, _MODE_BYPASS):
            continue
        if kind not in node_classes:
            raise WorkflowConversionError(f"{label(node)}: node type {kind!r} does not exist in ComfyUI")
        info = node_info(kind)
        spec, hidden = _input_spec(info)
        names = {name for name, _, _ in spec}
        api_inputs = {}

        # Sockets (and widgets converted to sockets) that are connected.
        linked = {}
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            if name not in names and not _is_dynamic_child(name, spec):
                raise WorkflowConversionError(
                    f"{label(node)}: input {name!r} does not exist (known: {sorted(names)})")
            if inp.get("link") is not None:
                linked[name] = inp["link"]

        # Widgets, positional in widgets_values (or a name->value dict).
        values = node.get("widgets_values")
        widgets = [(name, typ, opts) for name, typ, opts in spec if _is_widget(typ, opts)]
        if isinstance(values, dict):
            for key in values:
                if key not in names and not _is_dynamic_child(key, spec):
                    raise WorkflowConversionError(f"{label(node)}: widget {key!r} does not exist")
            widget_names = {name for name, _, _ in widgets}
            api_inputs.update({k: v for k, v in values.items() if k in widget_names or _is_dynamic_child(k, spec)})
        else:
            values = list(values or [])
            pos = 0
            optional = set((info.get("input") or {}).get("optional") or {})
            todo = list(widgets)
            while todo:
                name, typ, opts = todo.pop(0)
                if pos >= len(values) and name in optional:
                    continue  # an optional widget added after the graph was saved: the node's own default
                if pos >= len(values):
                    raise WorkflowConversionError(
                        f"{label(node)}: widgets_values has {len(values)} entries, no value for widget "
                        f"{name!r} (widgets: {[w[0] for w in widgets]})")
                api_inputs[name] = values[pos]
                pos += 1
                if typ == _DYNAMIC_COMBO:  # the chosen option's widgets come next
                    added, added_optional = _dynamic_inputs(name, opts, api_inputs[name])
                    todo[:0] = [w for w in added if _is_widget(w[1], w[2])]
                    optional |= added_optional
                if pos < len(values) and _has_control_widget(name, typ, opts) \
                        and values[pos] in _CONTROL_VALUES:
                    pos += 1  # frontend's control_after_generate widget
                elif pos < len(values) and any(k.endswith("_upload") and opts.get(k) for k in opts) \
                        and values[pos] in ("image", "video", "audio", "file"):
                    pos += 1  # frontend's upload-button widget
            if pos != len(values):
                raise WorkflowConversionError(
                    f"{label(node)}: widgets_values has {len(values)} entries but only {pos} map to "
                    f"widgets {[w[0] for w in widgets]}; extra values {values[pos:]!r}")

        for name, link_id in linked.items():
            value = resolve(link_id)
            if value is None:
                api_inputs.pop(name, None)
            else:
                api_inputs[name] = value
        for name in list(api_inputs):
            if name in hidden:
                del api_inputs[name]

        entry = {"class_type": kind, "inputs": api_inputs}
        title = node.get("title") or info.get("display_name") or kind
        entry["_meta"] = {"title": title}
        prompt[str(node["id"])] = entry
    return prompt



# --------------------------------------------------------------------------- prompt edits

# Option -> {node type: input}: what --steps, --seed and --upscale set, on every node of these types.
# BasicScheduler / RandomNoise: the step count and seed of a stock custom-sampling graph (SamplerCustomAdvanced).
STEPS_INPUTS = {"KSampler": "steps", "KSamplerAdvanced": "steps", "DiffBIRSampler": "steps", "BasicScheduler": "steps"}
SEED_INPUTS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed", "DiffBIRSampler": "seed",
               "RandomNoise": "noise_seed"}
UPSCALE_INPUTS = {"DiffBIRStage1Restore": "upscale", "DiffBIRFaceDetectAlign": "upscale"}


def _label(api: dict, node_id: str) -> str:
    node = api[node_id]
    title = (node.get("_meta") or {}).get("title")
    kind = node["class_type"]
    return f"node {node_id} ({title!r}, {kind})" if title and title != kind else f"node {node_id} ({kind})"


def find_nodes(api: dict, ref: str) -> list[str]:
    """Node ids matching ``ref``: an id, else a title, else a node type (titles and types case-insensitive)."""
    ref = ref.strip()
    if ref in api:
        return [ref]
    low = ref.lower()
    for key in (lambda n: str((n.get("_meta") or {}).get("title", "")).lower(),
                lambda n: n["class_type"].lower()):
        found = [i for i, n in api.items() if key(n) == low]
        if found:
            return found
    return []


def _nodes_summary(api: dict) -> str:
    return "; ".join(f"{i} {(n.get('_meta') or {}).get('title') or n['class_type']!r}" for i, n in api.items())


def parse_set(text: str) -> tuple[str, str, str]:
    """'NODE.INPUT=VALUE' -> (NODE, INPUT, VALUE); NODE may contain dots (split at the last one)."""
    key, sep, value = text.partition("=")
    node, dot, name = key.strip().rpartition(".")
    if not sep or not dot or not node.strip() or not name.strip():
        raise WorkflowError(f"--set {text!r} is not NODE.INPUT=VALUE: write e.g. --set DiffBIRSampler.cfg=4.5 or "
                            "--set 10.steps=20 (NODE is a node id, title or type)")
    return node.strip(), name.strip(), value


def _coerce(raw: str, typ, what: str):
    if typ == "INT":
        try:
            return int(raw, 0) if raw.strip().lower().startswith(("0x", "0b", "0o")) else int(raw)
        except ValueError:
            raise WorkflowError(f"{what} takes a whole number, not {raw!r}") from None
    if typ == "FLOAT":
        try:
            return float(raw)
        except ValueError:
            raise WorkflowError(f"{what} takes a number, not {raw!r}") from None
    if typ == "BOOLEAN":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise WorkflowError(f"{what} takes true or false, not {raw!r}")
    return raw  # STRING, COMBO (ComfyUI checks the value against the list when it validates the prompt)


def set_input(api: dict, node_ref: str, name: str, raw: str, node_info) -> str:
    """Set widget input ``name`` of the node ``node_ref`` from the text ``raw``; return the node id.

    ``node_info(class_type)`` gives the /object_info dict used to find the input and its type.
    """
    found = find_nodes(api, node_ref)
    if not found:
        raise WorkflowError(f"--set: the workflow has no node with id, title or type {node_ref!r}; its nodes are: "
                            f"{_nodes_summary(api)}")
    if len(found) > 1:
        raise WorkflowError(f"--set: {node_ref!r} names {len(found)} nodes ({', '.join(found)}): use the node id")
    node_id = found[0]
    spec, _ = _input_spec(node_info(api[node_id]["class_type"]))
    types = {n: (t, o) for n, t, o in spec}
    label = _label(api, node_id)
    if name not in types:
        raise WorkflowError(f"--set: {label} has no input {name!r}; its inputs are: {', '.join(types) or 'none'}")
    typ, opts = types[name]
    if not _is_widget(typ, opts):
        raise WorkflowError(f"--set: input {name!r} of {label} is a {typ} connection, not a value: connect it in "
                            "the graph instead")
    value = _coerce(raw, typ if isinstance(typ, str) else "COMBO", f"input {name!r} of {label}")
    _check_range(api, node_id, name, value, opts, f"--set {node_ref}.{name}={raw}")
    api[node_id]["inputs"][name] = value
    return node_id


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"from {lo} to {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def _check_range(api: dict, node_id: str, name: str, value, opts: dict, given: str) -> None:
    """WorkflowError naming ``given`` (the option as the user wrote it) when ``value`` is outside the input's
    min/max: the check ComfyUI's validation makes, done before the start, in the words of the command line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = opts.get("min"), opts.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise WorkflowError(f"{given} is out of range: {name} of {_label(api, node_id)} takes a value "
                            f"{_range_text(lo, hi)}")


def check_option_ranges(api: dict, ids: list[str], table: dict, value, option: str, node_info) -> None:
    """WorkflowError naming ``option`` (e.g. --steps) when ``value`` is outside the min/max of an input it sets.

    ``ids``: the nodes the option set; ``table``: {node type: input}; ``node_info(class_type)``: /object_info.
    """
    for node_id in ids:
        kind = api[node_id]["class_type"]
        spec, _ = _input_spec(node_info(kind))
        opts = {n: o for n, _, o in spec}.get(table[kind], {})
        _check_range(api, node_id, table[kind], value, opts, f"{option} {value}")


def set_by_type(api: dict, table: dict, value, option: str, node_info=None) -> list[str]:
    """Set ``value`` on every node whose type is in ``table`` ({type: input}); the ids set.

    With ``node_info`` (/object_info by class), a value outside an input's min/max is a WorkflowError naming
    ``option``, not a ComfyUI validation error about a node input the user never named.
    """
    ids = [i for i, n in api.items() if n["class_type"] in table]
    if not ids:
        raise WorkflowError(f"{option} does not apply to this workflow: it has no {' or '.join(table)} node "
                            "(use --set NODE.INPUT=VALUE for its own nodes)")
    if node_info is not None:
        check_option_ranges(api, ids, table, value, option, node_info)
    for i in ids:
        api[i]["inputs"][table[api[i]["class_type"]]] = value
    return ids


def set_upscale(api: dict, value: float, option: str = "--upscale", node_info=None) -> list[str]:
    """--upscale: the photo's upscale, on every Stage1 SwinIR Restore and Face Detect & Align, except a Stage1 that
    restores Face Detect & Align's aligned crops (officially at upscale 1; Paste Back needs the photo's size)."""
    def restores_crops(node: dict) -> bool:
        ref = node["inputs"].get("image")
        return isinstance(ref, list) and api.get(str(ref[0]), {}).get("class_type") == "DiffBIRFaceDetectAlign"

    crops = {i: n["inputs"].get("upscale") for i, n in api.items()
             if n["class_type"] == "DiffBIRStage1Restore" and restores_crops(n)}
    ids = set_by_type(api, UPSCALE_INPUTS, value, option)
    for i, old in crops.items():  # put the face crops' upscale back
        if old is None:
            api[i]["inputs"].pop("upscale", None)
        else:
            api[i]["inputs"]["upscale"] = old
    ids = [i for i in ids if i not in crops]
    if node_info is not None:
        check_option_ranges(api, ids, UPSCALE_INPUTS, value, option, node_info)
    return ids


def set_image(api: dict, image_name: str) -> str:
    """Point the workflow's one Load Image node at ``image_name`` (a file in ComfyUI's input folder)."""
    ids = [i for i, n in api.items() if n["class_type"] == "LoadImage"]
    if len(ids) != 1:
        raise WorkflowError(f"the workflow has {len(ids)} Load Image nodes, so it cannot take one input image per "
                            "run: use a workflow with exactly one")
    api[ids[0]]["inputs"]["image"] = image_name
    return ids[0]


def set_output_prefix(api: dict, prefix: str) -> list[str]:
    """Give every Save Image node the file-name prefix ``prefix_<node id>``; the ids of those nodes."""
    ids = [i for i, n in api.items() if n["class_type"] == "SaveImage"]
    if not ids:
        raise WorkflowError("the workflow saves no image (it has no Save Image node): add one to get an output")
    for i in ids:
        api[i]["inputs"]["filename_prefix"] = f"{prefix}_{i}"
    return ids
