"""Helpers shared by the benchmark scripts (plain module, not a test).

* command-line flags every script takes (``--device``, ``--dtype``, ``--repeats``, ``--json``) and the device
  fallback (CUDA asked for but absent: a clear note and the CPU);
* interleaved timing (variant and baseline alternate, so load changes on a shared machine hit both alike),
  medians with their spread, and a markdown table;
* subprocess runs whose peak RSS is read from the kernel (``os.wait4`` rusage of that one child) and, inside
  the child, ``VmHWM`` / CUDA peak allocation;
* real-size networks with random weights: ours through ``diffbir_core.loader.build_network`` and the host's
  (ComfyUI's ``openaimodel.UNetModel``, SD 2.1 config) through ComfyUI's own model classes;
* ``AttentionCounter``: a TorchFunctionMode counting SDPA calls and explicit attention ops.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Appended, not prepended: the repository's nodes/ package must not shadow ComfyUI's nodes.py.
    sys.path.append(str(REPO))

import torch
from torch.overrides import TorchFunctionMode

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------------------- flags, device


def add_common_args(ap: argparse.ArgumentParser, repeats: int = 3) -> None:
    ap.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights/activations dtype")
    ap.add_argument("--repeats", type=int, default=repeats, help="timed repeats per variant (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: elapsed seconds; cpu: this process's CPU seconds (with --threads 1 on a CPU shared "
                         "with other jobs: the compute alone, without the time spent waiting for a core)")
    ap.add_argument("--json", default=None, help="also write the table rows to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one measurement


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("NOTE: --device cuda asked for, but torch.cuda.is_available() is False (no GPU or a CPU-only torch): "
              "falling back to the CPU.", file=sys.stderr, flush=True)
        return torch.device("cpu")
    return dev


CLOCK = "wall"


def setup(args) -> tuple[torch.device, torch.dtype]:
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    CLOCK = "wall" if device.type == "cuda" else args.clock
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        print(f"NOTE: {args.dtype} on the CPU: fast only where the CPU computes it natively (bf16: AVX512-BF16 or AMX, "
              f"measured 2-4x float32), slower than fp32 elsewhere.", file=sys.stderr, flush=True)
    return device, dtype


def machine_line(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return (f"{time.strftime('%Y-%m-%d')}  torch {torch.__version__}  {where}  dtype {str(dtype).replace('torch.', '')}"
            f"  clock {CLOCK}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, wall: bool = False) -> float:
    """Seconds of one call of fn: elapsed, or this process's CPU time with --clock cpu (CPU devices only);
    `wall`: elapsed whatever the clock (work done in other processes, such as a compiler's workers)."""
    clock = time.process_time if CLOCK == "cpu" and not wall else time.perf_counter
    sync(device)
    t0 = clock()
    fn()
    sync(device)
    return clock() - t0


def interleaved(variants: dict, repeats: int, device: torch.device, warmup: bool = True, label: str = "") -> dict:
    """{name: [seconds, ...]}: the variants run in turn, the order reversed every round (A B, B A, ...)."""
    names = list(variants)
    if warmup:
        for name in names:
            timed(variants[name], device)
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(variants[name], device))
        log(f"{label} round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return times


def ratios(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios (the two values of one round ran next to each other)."""
    return [a / b for a, b in zip(num, den)]


def stat(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict | None, unit: str = "", digits: int = 3) -> str:
    """median [min-max] (n) -- the spread is the full range of the repeats."""
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}g}{unit}"
    return f"{s['median']:.{digits}g}{unit} [{s['min']:.{digits}g}-{s['max']:.{digits}g}] n={s['n']}"


# ----------------------------------------------------------------------------------------- table


def row(figure: str, ours=None, baseline=None, ratio=None, target: str = "", met=None, unit: str = "", note: str = "",
        ratio_digits: int = 3) -> dict:
    return {"figure": figure, "ours": fmt(ours, unit) if isinstance(ours, dict) else (ours or "-"),
            "baseline": baseline if isinstance(baseline, str) else fmt(baseline, unit),
            "ratio": fmt(ratio, "", ratio_digits) if isinstance(ratio, dict) else (ratio or "-"),
            "target": target, "met": "" if met is None else ("yes" if met else "NO"), "note": note}


def print_table(title: str, rows: list[dict], header: str = "") -> None:
    cols = ["figure", "ours", "baseline", "ratio", "target", "met"]
    print()
    print(f"### {title}")
    if header:
        print(header)
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    notes = [f"* {r['figure']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        print()
        print("\n".join(notes))
    sys.stdout.flush()


def write_json(path: str | None, title: str, header: str, rows: list[dict]) -> None:
    if path:
        Path(path).write_text(json.dumps({"title": title, "header": header, "rows": rows}, indent=1))


# ----------------------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cuda_peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def emit_result(result: dict) -> None:
    """Child side: one tagged JSON line on stdout, read back by `run_child`."""
    result.setdefault("vmhwm_mb", peak_rss_mb())
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(script: str, argv: list[str], timeout: float | None = None) -> dict:
    """Run `python script argv...` and return its tagged JSON result plus `peak_rss_mb`: the child's own peak
    resident set size from its rusage (os.wait4 on that pid, so other children never mix in).

    The child's stderr (progress) passes through; a failing child raises with its exit code.
    """
    cmd = [sys.executable, str(Path(script).resolve()), *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out = proc.stdout.read()
    finally:
        proc.stdout.close()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(cmd[1:])} failed with exit code {proc.returncode}:\n{out[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(f"child {' '.join(cmd[1:])} printed no result:\n{out[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    result["peak_rss_mb"] = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    result["child_wall_s"] = wall
    return result


def child_argv(args, child: str, extra: list[str] | None = None) -> list[str]:
    argv = ["--child", child, "--device", args.device, "--dtype", args.dtype, "--clock", args.clock]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv + (extra or [])


# ----------------------------------------------------------------------------------------- random weights


class _Pool:
    """Seeded normal numbers for weights: each tensor is a scaled slice (cloned) of one pool, so drawing a
    billion numbers does not take a minute on two cores."""

    def __init__(self, largest: int, seed: int, device, dtype):
        self.gen = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(largest + (1 << 20), generator=self.gen).to(device=device, dtype=dtype)

    def take(self, shape) -> torch.Tensor:
        n = math.prod(shape)
        offset = int(torch.randint(0, self.pool.numel() - n + 1, (1,), generator=self.gen))
        return self.pool[offset : offset + n].view(shape).clone()


def random_value(name: str, shape, pool: _Pool) -> torch.Tensor:
    """Deep random networks keep O(1) activations with N(0, 1/fan_in) matrices, unit norm scales, zero biases."""
    if len(shape) >= 2:
        return pool.take(shape).mul_(math.prod(shape[1:]) ** -0.5)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=pool.pool.dtype, device=pool.pool.device)
    if "relative_position" in name or name.endswith("positional_embedding"):
        return pool.take(shape).mul_(0.02)
    return torch.ones(shape, dtype=pool.pool.dtype, device=pool.pool.device)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter in place (buffers are left as built)."""
    params = list(module.named_parameters())
    largest = max(p.numel() for _, p in params)
    p0 = params[0][1]
    pool = _Pool(largest, seed, p0.device, p0.dtype)
    with torch.no_grad():
        for name, p in params:
            p.copy_(random_value(name, tuple(p.shape), pool))
    return module


def our_network(kind: str, seed: int = 0, config: dict | None = None, device="cpu", dtype=torch.float32):
    """One of our networks at the official (real-size) config with random weights, built the way files are
    loaded: ``loader.build_network`` (meta build, strict assign-load). Networks with persistent buffers
    (SwinIR's position index / masks, SCUNet) are built on the CPU and randomised in place instead."""
    from diffbir_core import loader
    from diffbir_core.arch import architecture

    mod = loader.arch_module(kind)
    config = dict(mod.OFFICIAL_CONFIG) if config is None else config
    with torch.device("meta"):
        shell = mod.build(config)
    if list(shell.buffers()):
        net = mod.build(config)
        randomize_(net, seed)
        memory_format = architecture(kind).memory_format  # what build_network applies after loading a file
        if memory_format is not None:
            net = net.to(memory_format=memory_format)
    else:
        # Drawn directly on the target device in the target dtype (fast on a GPU, no CPU copy of the weights).
        shapes = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
        pool = _Pool(max(math.prod(s) for s in shapes.values()), seed, device, dtype)
        sd = {k: random_value(k, s, pool) for k, s in shapes.items()}
        del pool
        net, _ = loader.build_network(kind, sd, f"random {kind}", config=config)
        del sd
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def spandrel_model(state_dict: dict, device, dtype) -> torch.nn.Module:
    """spandrel's own network for a state dict (``spandrel.ModelLoader``, as ComfyUI's Load Upscale Model)."""
    from spandrel import ModelLoader

    ref = ModelLoader().load_from_state_dict(state_dict).model.eval().requires_grad_(False).to(device=device, dtype=dtype)
    if dtype != torch.float32:
        # spandrel's SwinIR computes the shifted-window mask of sizes other than img_size in float32 at every call,
        # and `attn @ v` then fails in half precision; cast that mask so its own forward can run.
        for block in ref.modules():
            if hasattr(block, "calculate_mask"):
                block.calculate_mask = lambda size, f=block.calculate_mask: f(size).to(dtype)
    return ref


# ----------------------------------------------------------------------------------------- the host (ComfyUI)


def _comfy_host_module():
    """tests/comfy_host.py (the test suite's ComfyUI locator), imported by path without touching sys.path."""
    spec = importlib.util.spec_from_file_location("_bench_comfy_host", REPO / "tests" / "comfy_host.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_host(device: torch.device, attention: str = "default"):
    """Import ComfyUI's ``comfy`` package (the same ComfyUI the tests run: $COMFYUI_PATH or the cached 0.3.75)
    configured for `device`. attention: "default" = ComfyUI's own choice for the device (on the CPU its
    sub-quadratic attention, on NVIDIA PyTorch SDPA); "sdpa" = --use-pytorch-cross-attention."""
    if "comfy.model_management" not in sys.modules:
        path = str(_comfy_host_module().comfyui_path())
        if path not in sys.path:
            sys.path.insert(0, path)
        import comfy.options

        if hasattr(comfy.options, "enable_args_parsing"):
            comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        args = comfy.cli_args.args
        args.cpu = device.type == "cpu"  # must precede the first import of comfy.model_management
        args.disable_auto_launch = True
        if attention == "sdpa":
            args.use_pytorch_cross_attention = True
        if device.type == "cuda" and device.index is not None:
            args.cuda_device = device.index
    import comfy.ldm.modules.attention
    import comfy.model_detection
    import comfy.model_management
    import comfy.supported_models

    return comfy


def host_attention_name() -> str:
    import comfy.ldm.modules.attention as attn

    return attn.optimized_attention.__name__


def host_base_model(device: torch.device, dtype: torch.dtype, seed: int = 0):
    """ComfyUI's SD 2.1 model (``model_base.BaseModel`` around ``openaimodel.UNetModel``) at the real SD 2.1
    config, as the stock checkpoint loader builds it, with random weights."""
    import comfy.model_detection
    import comfy.supported_models

    from diffbir_core.arch import unet as unet_arch

    with torch.device("meta"):
        shapes = unet_arch.build(None).state_dict()  # the official key/shape layout of the SD 2.1 UNet
    unet_config = comfy.model_detection.detect_unet_config(shapes, "")
    model_config = comfy.supported_models.SD20(unet_config)
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, "", device=device)
    randomize_(base.diffusion_model, seed)
    return base.eval().requires_grad_(False)


def host_controlled_model(base, cn, c_img: torch.Tensor, size: int, dtype: torch.dtype):
    """``call(x, sigma, ctx, transformer_options[, batched_number]) -> denoised``: what ComfyUI's ``calc_cond_batch`` runs for a batch
    carrying our control (``DiffBIRControl.get_control`` then ``BaseModel.apply_model`` with the controls), over the
    host's `base` model and our ControlNet `cn` with the condition latent `c_img` of a `size` px image. Call
    `import_host` first."""
    control_mod = extension_module("nodes.host.control")
    patching = extension_module("nodes.host.patching")
    patching.cast_controlnet(cn, dtype)
    ctl = control_mod.DiffBIRControl(patching.wrap_in_patcher(cn), version="v2.1", name="random", dtype=dtype)
    ctl.set_condition(c_img, (size, size), 1.0, (0.0, 1.0))
    ms = base.model_sampling
    ctl.pre_run(base, lambda p: ms.percent_to_sigma(p))

    def call(x, sigma, ctx, transformer_options, batched_number=2):  # 2: the cfg pair (cond, uncond) as one batch
        control = ctl.get_control(x, sigma, {"c_crossattn": ctx}, batched_number, transformer_options)
        return base.apply_model(x, sigma, c_crossattn=ctx, control=control, transformer_options=transformer_options)

    return call


class HostUNet(torch.nn.Module):
    """The host's UNet behind our UNet's signature (``unet(x, t, context, control=[13 tensors], control_scales)``),
    so diffbir_core's denoiser and pipeline drive it. Controls go in ComfyUI's layout (what
    ``DiffBIRControl.get_control`` returns): middle = [c12], output = [c0 .. c11]."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.host = diffusion_model
        self.dtype = next(diffusion_model.parameters()).dtype

    def forward(self, x, timesteps, context, control=None, control_scales=None, only_mid_control=False):
        ctrl = None
        if control is not None:
            if control_scales is not None:
                control = [c * s for c, s in zip(control, control_scales)]
            ctrl = {"input": [], "middle": [control[-1]], "output": [] if only_mid_control else list(control[:-1])}
        out = self.host(x.to(self.dtype), timesteps, context=context.to(self.dtype), control=ctrl,
                        transformer_options={})
        return out.to(x.dtype)


# ----------------------------------------------------------------------------------------- attention counting


_EXPLICIT = ("softmax", "matmul", "bmm", "baddbmm", "einsum", "__matmul__", "__rmatmul__")


class AttentionCounter(TorchFunctionMode):
    """Counts, while active, calls of torch SDPA and of the ops an explicit attention is made of
    (softmax(Q K^T) V: softmax, matmul/@, bmm, baddbmm, einsum)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if "scaled_dot_product_attention" in name:
            self.counts["sdpa"] += 1
        elif name in _EXPLICIT or name.endswith("softmax"):
            self.counts[name.strip("_")] += 1
        return func(*args, **(kwargs or {}))

    @property
    def explicit(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "sdpa")


# ----------------------------------------------------------------------------------------- our ComfyUI nodes


EXTENSION_PACKAGE = "comfyui_diffbir_bench"


def extension_module(name: str):
    """One of our ``nodes/`` modules (e.g. "nodes.host.control") imported as ComfyUI would, inside a package, without
    running the extension's or nodes/ ``__init__`` (which would import every node module). Call
    `import_host` first."""
    import types

    for pkg_name, folder in ((EXTENSION_PACKAGE, REPO), (f"{EXTENSION_PACKAGE}.nodes", REPO / "nodes")):
        if pkg_name not in sys.modules:
            pkg = types.ModuleType(pkg_name)
            pkg.__path__ = [str(folder)]
            pkg.__package__ = pkg_name
            sys.modules[pkg_name] = pkg
    return importlib.import_module(f"{EXTENSION_PACKAGE}.{name}")


class CallCounter:
    """Forward pre-hook counting a module's calls and the batch size (first input's dim 0) of each."""

    def __init__(self, module: torch.nn.Module):
        self.batches: list[int] = []
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.batches.append(int(args[0].shape[0]) if args and torch.is_tensor(args[0]) else -1)

    def remove(self):
        self.handle.remove()
