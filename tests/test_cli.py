"""The command line, run as a user runs it: ``python -m diffbir_cli`` in a subprocess from the repository root.

* restore end to end: the shipped v2.1 workflow on a folder of two tiny images, with the SD checkpoint and
  ControlNet mapped by ``--set`` to small random-weight models (the tiny SD 2.1 is registered in the
  subprocess through the test-only ``DIFFBIR_CLI_PRELOAD`` hook) and the stage-1 file missing: ``--offline``
  says which file goes where (exit 3), then the runner downloads it from a local mirror and restores both
  images, loading the models once (ComfyUI's own record of the nodes it took from its cache);
* ``download`` against a local mirror on 127.0.0.1: a normal and a resumed transfer, the lock file keyed by
  the official URL, a present file checked against the lock, a changed file (SHA-256 mismatch), a size
  mismatch and a file of the wrong kind;
* ``--list`` and each clear failure: one ``error:`` line, no traceback, its exit status; among them the bad-input
  matrix of image files (``DAMAGED``: truncated JPEG and PNG, a bad checksum, zero bytes, a non-image under an
  image suffix, a decompression bomb's header) and option values out of range, named by the option given.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir_cli import cli as cli_mod
from diffbir_cli import workflow as wfl
from diffbir_weights import mirrors
from diffbir_weights.catalogue import CATALOGUE, files_needed
from diffbir_weights.fetch import OFFLINE_ENV
from diffbir_weights.lockfile import LOCK_FILE_NAME
from local_server import FileServer, serving
from sample_images import photo_bytes, png_declaring
from tiny_models import TINY_SD21_NAME, write_tiny_controlnet, write_tiny_sd21

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
TINY_CONTROLNET = "tiny_DiffBIR_v2.1.safetensors"
# The v2.1 workflow with tiny models: files by --set (by id, by title, by type), 1 step, x2, small stage 2.
TINY_RUN = ["--workflow", "v2.1-sr", "--steps", "1", "--upscale", "2",
            "--set", f"2.controlnet_name={TINY_CONTROLNET}",
            "--set", f"Load Checkpoint.ckpt_name={TINY_SD21_NAME}",
            "--set", "DiffBIRStage1Restore.min_short_edge=64", "-v"]


def cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in (mirrors.MIRROR_ENV, OFFLINE_ENV, cli_mod.PRELOAD_ENV)}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    full["OMP_NUM_THREADS"] = "1"  # tiny networks on a shared CPU: one thread is faster
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "diffbir_cli", *map(str, args)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """The one-sentence error of a failed run (exactly one stderr line, no traceback)."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ mirror


class _Mirror(FileServer):
    def serve(self, name: str, body: bytes, *, cut: bool = False, extra_length: int = 0) -> str:
        """Serve ``body`` where the mirror of the official URL of ``name`` is; returns that path."""
        path = urllib.parse.urlsplit(CATALOGUE[name].url).path
        self.files[path] = body
        if cut:
            self.cut.add(path)
        if extra_length:
            self.extra_length[path] = extra_length
        return path


@pytest.fixture
def mirror():
    srv = _Mirror()
    with serving(srv):
        yield srv


def _pickled(kind: str, offset: float = 0.0) -> bytes:
    t = load_file(str(GOLDEN / f"{kind}.safetensors"))
    buf = io.BytesIO()
    torch.save({k[2:]: v + offset if v.is_floating_point() else v for k, v in t.items() if k.startswith("w.")}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads():
    return {"swinir": _pickled("swinir"), "changed": _pickled("swinir", 1.0), "bsrnet": _pickled("bsrnet")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ --list, failures


def test_list_shows_every_workflow_with_alias_and_description():
    proc = cli("--list")
    assert proc.returncode == 0, proc.stderr
    shipped = sorted((REPO / "workflows").glob("*.json"))
    catalogue = wfl.catalogue()
    assert sorted(wf.path for wf in catalogue) == shipped
    assert len({wf.alias for wf in catalogue}) == len(catalogue)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(shipped)
    for wf, line in zip(catalogue, lines, strict=True):
        assert line.split()[:2] == [wf.alias, wf.path.name] and wf.description and line.endswith(wf.description)
        assert wfl.resolve(wf.alias) == wfl.resolve(wf.stem) == wf
    assert lines[0].startswith("v2.1-sr ") and "recommended" in lines[0]
    assert cli("restore", "--list").stdout == proc.stdout


def test_clear_failures_are_one_sentence_with_an_exit_status(tmp_path):
    from PIL import Image

    png = tmp_path / "good" / "in.png"
    png.parent.mkdir()
    Image.new("RGB", (8, 8)).save(png)
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")

    line = error_line(cli("restore", png, "--workflow", "v3-magic", "--out", tmp_path / "o"), 2)
    assert "unknown workflow 'v3-magic'" in line and "v2.1-sr" in line and "--list" in line
    line = error_line(cli("restore", fake, "--out", tmp_path / "o"), 2)
    assert f"{fake} is not an image" in line
    line = error_line(cli("restore", tmp_path / "missing.png", "--out", tmp_path / "o"), 2)
    assert "does not exist" in line
    assert "would overwrite an input image" in error_line(cli("restore", png.parent, "--out", png.parent), 2)
    line = error_line(cli("restore", png, "--out", tmp_path / "o", "--set", "steps=3"), 2)
    assert "NODE.INPUT=VALUE" in line
    line = error_line(cli("restore", png, "--out", tmp_path / "o", env={"COMFYUI_PATH": str(tmp_path)}), 4)
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder" in line and "unset it" in line
    if not os.environ.get("COMFYUI_PATH"):  # the embedded ComfyUI, not set up in an empty cache, offline
        line = error_line(cli("restore", png, "--out", tmp_path / "o", "--offline",
                              env={"COMFYUI_DIFFBIR_CACHE": str(tmp_path / "cache")}), 4)
        assert "not set up" in line and "--offline" in line and "COMFYUI_PATH" in line
    line = error_line(cli("download", "mine.safetensors", "--models", tmp_path), 2)
    assert "not an official DiffBIR weight file: mine.safetensors" in line
    assert "nothing to download" in error_line(cli("download", "--models", tmp_path), 2)
    assert not (tmp_path / "o").exists()


def _half(fmt: str) -> bytes:
    data = photo_bytes(fmt)
    return data[: len(data) // 2]


def _bad_checksum_png() -> bytes:
    data = bytearray(photo_bytes("PNG"))
    data[data.index(b"IDAT") + 40] ^= 0xFF
    return bytes(data)


# The bad-input matrix of the command line: file name -> (its bytes, what the error line says after the path).
DAMAGED = {
    "truncated.jpg": (lambda: _half("JPEG"), "is not an image that decodes completely: it is truncated or damaged "
                                             "(OSError: image file is truncated"),
    "truncated.png": (lambda: _half("PNG"), "is not an image that decodes completely: it is truncated or damaged"),
    "bad-checksum.png": (_bad_checksum_png, "is not an image that decodes completely: it is truncated or damaged "
                                            "(SyntaxError: broken PNG file"),
    "zero-bytes.png": (lambda: b"", "is empty (0 bytes), not an image: give PNG, JPEG"),
    "text-with-an-image-suffix.jpg": (lambda: b"not an image\n", "is not an image (Pillow cannot identify its format)"),
    "bomb.png": (lambda: png_declaring(100_000, 100_000),
                 "declares 100000 x 100000 pixels (10000000000), more than the 178956970 pixels Pillow decodes for one "
                 "image (a decompression bomb?)"),
}


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_image_files_exit_2_naming_the_file(tmp_path, name):
    """Given by name or found in a folder beside a good image: exit 2, one line naming the file, before ComfyUI
    starts (a truncated JPEG used to be restored with its missing part filled in grey, silently)."""
    data, says = DAMAGED[name]
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "a-good.png").write_bytes(photo_bytes("PNG"))
    bad = folder / name
    bad.write_bytes(data())
    for target in (bad, folder):
        line = error_line(cli("restore", target, "--out", out), 2)
        assert line.startswith(f"error: {bad} {says}"), line
    assert not out.exists()


def test_inputs_are_read_by_content_and_a_partial_file_is_refused_however_pillow_is_set(tmp_path, monkeypatch):
    """A good image under another suffix passes (Load Image decodes by content too); a truncated one is refused
    even when another package left Pillow's LOAD_TRUNCATED_IMAGES on, and the setting is put back."""
    from PIL import ImageFile

    from diffbir_cli.errors import EXIT_USAGE, CliError

    named = [tmp_path / n for n in ("png-named.jpg", "png-named.dat", "no-suffix")]
    for path in named:
        path.write_bytes(photo_bytes("PNG"))
    assert cli_mod.collect_inputs([str(p) for p in named]) == named
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_half("JPEG"))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(CliError, match=rf"^{re.escape(str(cut))} is not an image that decodes completely") as err:
        cli_mod.collect_inputs([str(cut)])
    assert err.value.code == EXIT_USAGE and ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_restore_help_shows_input_and_out_as_required_as_restore_requires_them(tmp_path):
    helped = cli("restore", "--help")
    assert helped.returncode == 0, helped.stderr
    usage = helped.stdout.split("\n\n", 1)[0]
    assert usage.startswith("usage: python -m diffbir_cli restore INPUT... --out DIR [--workflow NAME]"), usage
    assert "[-o DIR]" not in usage and "[--out" not in usage and "python -m diffbir_cli restore --list" in usage
    assert re.search(r"^required \(except with --list\):\n  INPUT .*\n  -o DIR, --out DIR ", helped.stdout,
                     re.MULTILINE)
    png = tmp_path / "in.png"
    png.write_bytes(photo_bytes("PNG"))
    assert error_line(cli("restore", png), 2) == "error: no output folder: add --out DIR"
    assert "no input image" in error_line(cli("restore", "--out", tmp_path / "o"), 2)
    assert cli("restore", "--list").returncode == 0


def _default_api(comfy_host) -> dict:
    return comfy_host.workflow_to_api(wfl.load_json(wfl.resolve("v2.1-sr").path))


def test_values_out_of_range_name_the_option_they_came_from(comfy_host):
    """--steps/--seed/--upscale/--set values outside an input's range: the error names the option as given, not
    "--set NODE.INPUT=VALUE"; a rejection by ComfyUI's own validation of an input an option set is worded so too."""
    from diffbir_cli.errors import EXIT_USAGE
    from diffbir_cli.host import PromptValidationError

    parser = cli_mod.build_parser()

    def apply(*options):
        api = _default_api(comfy_host)
        args = parser.parse_args(["restore", "x.png", "--out", "o", *options])
        return api, cli_mod._apply_options(api, args, comfy_host.node_info)

    sampler = "node 10 ('DiffBIR Sampler', DiffBIRSampler)"
    stage1 = "node 3 ('Stage1 SwinIR Restore', DiffBIRStage1Restore)"
    for options, message in (
            (("--steps", "-1"), f"--steps -1 is out of range: steps of {sampler} takes a value from 1 to 1000"),
            (("--seed", "-1"), f"--seed -1 is out of range: seed of {sampler} takes a value from 0 to {2**64 - 1}"),
            (("--upscale", "0.5"), f"--upscale 0.5 is out of range: upscale of {stage1} takes a value from 1.0 to 8.0"),
            (("--upscale", "9"), f"--upscale 9.0 is out of range: upscale of {stage1} takes a value from 1.0 to 8.0"),
            (("--set", "10.steps=0"), f"--set 10.steps=0 is out of range: steps of {sampler} takes a value from 1 to "
                                      "1000")):
        with pytest.raises(wfl.WorkflowError) as err:
            apply(*options)
        assert str(err.value) == message
        assert cli_mod._message(err.value) == (message, EXIT_USAGE)

    api, given = apply("--steps", "3", "--seed", "7", "--upscale", "2", "--set", "DiffBIRSampler.cfg=4.5")
    assert given == {("10", "steps"): "--steps 3", ("10", "seed"): "--seed 7", ("3", "upscale"): "--upscale 2.0",
                     ("10", "cfg"): "--set DiffBIRSampler.cfg=4.5"}
    assert (api["10"]["inputs"]["steps"], api["10"]["inputs"]["cfg"], api["3"]["inputs"]["upscale"]) == (3, 4.5, 2.0)
    api["10"]["inputs"]["steps"] = -1  # as if our check had let it through: ComfyUI's validation record
    rejected = PromptValidationError("ComfyUI rejected the prompt")
    rejected.node_errors = comfy_host.validate(api)[3]
    worded = cli_mod._rejected_option(rejected, given)
    assert str(worded) == ("--steps 3 is not accepted: ComfyUI rejected steps of node 10 (DiffBIRSampler) (Value -1 "
                           "smaller than min of 1: steps): give --steps another value") and worded.code == EXIT_USAGE
    assert cli_mod._rejected_option(rejected, {("10", "cfg"): "--set 10.cfg=4.5"}) is None  # not an option's input


def test_an_option_out_of_range_stops_restore_before_the_weights(tmp_path):
    """End to end: exit 2 naming --steps, before the missing weights are even looked at (--offline would exit 3)."""
    png = tmp_path / "in.png"
    png.write_bytes(photo_bytes("PNG"))
    line = error_line(cli("restore", png, "--out", tmp_path / "o", "--offline", "--models", tmp_path / "models",
                          "--steps", "-1"), 2)
    assert line.startswith("error: --steps -1 is out of range: steps of node 10") and "NODE.INPUT" not in line
    assert not (tmp_path / "o").exists()


def test_the_readme_set_examples_work_on_the_default_workflow(comfy_host):
    """The README's --set examples and the example of the --set syntax error, on the default v2.1-sr workflow
    (which has a DiffBIR Sampler, no KSampler); the README's quoted range error is the one restore prints."""
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    settings = readme[readme.index("- **Settings**"):readme.index("- **ComfyUI**")]
    examples = re.findall(r'`--set "?([^`"]+)"?`', settings[settings.index("e.g. on the default workflow"):])[:3]
    with pytest.raises(wfl.WorkflowError) as syntax:
        wfl.parse_set("steps=3")
    examples += re.findall(r"--set (\S+=\S+)", str(syntax.value).split("write e.g.", 1)[1])
    assert examples == ["DiffBIRSampler.cfg=4.5", "Positive prompt.text=a cat", "3.tile_size=512",
                        "DiffBIRSampler.cfg=4.5", "10.steps=20"], examples
    api = _default_api(comfy_host)
    for text in examples:
        node = wfl.set_input(api, *wfl.parse_set(text), comfy_host.node_info)
        assert str(api[node]["inputs"][text.split("=")[0].rsplit(".", 1)[1]]) == text.split("=", 1)[1].strip(), text
    quoted = re.search(r"`error: (--steps -1 is out of range: [^`]+)`", settings).group(1)
    with pytest.raises(wfl.WorkflowError, match=f"^{re.escape(quoted)}$"):
        wfl.set_by_type(_default_api(comfy_host), wfl.STEPS_INPUTS, -1, "--steps", comfy_host.node_info)


def test_set_finds_nodes_by_id_title_or_type_and_names_what_is_wrong():
    info = {"KSampler": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {}], "cfg": ["FLOAT", {}],
                                                "sampler_name": [["euler", "ddpm"]]}}}}
    api = {"10": {"class_type": "KSampler", "inputs": {"seed": 1, "cfg": 6.0}, "_meta": {"title": "Main"}},
           "11": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "Refiner"}}}
    assert wfl.set_input(api, "refiner", "cfg", "4.5", info.__getitem__) == "11" and api["11"]["inputs"]["cfg"] == 4.5
    assert wfl.set_input(api, "10", "seed", "0x10", info.__getitem__) == "10" and api["10"]["inputs"]["seed"] == 16
    for args, needle in ((("KSampler", "cfg", "1"), "names 2 nodes"), (("12", "cfg", "1"), "no node with id"),
                         (("10", "denoise", "1"), "has no input 'denoise'"), (("10", "model", "x"), "connection"),
                         (("10", "seed", "many"), "whole number")):
        with pytest.raises(wfl.WorkflowError, match=needle):
            wfl.set_input(api, *args, info.__getitem__)
    assert wfl.parse_set("Load Checkpoint v1.2.ckpt_name=a=b.ckpt") == ("Load Checkpoint v1.2", "ckpt_name", "a=b.ckpt")
    hosts = mirrors.mirror_map("huggingface.co=http://127.0.0.1:9/hf/, http://127.0.0.1:9")
    assert mirrors.mirror_url(CATALOGUE["v2.pth"].url, hosts) == \
        "http://127.0.0.1:9/hf/lxq007/DiffBIR-v2/resolve/main/v2.pth"
    assert mirrors.mirror_url(CATALOGUE["BSRNet.pth"].url, hosts) == \
        "http://127.0.0.1:9/cszn/KAIR/releases/download/v1.0/BSRNet.pth"



def test_steps_and_seed_reach_the_diffbir_sampler_of_the_shipped_workflows():
    """--steps / --seed set the DiffBIR Sampler (the shipped workflows' sampler) as well as the stock KSampler."""
    for name in ("diffbir_v2.1_sr_x4.json", "diffbir_v2_sr_bsrnet.json", "diffbir_lacontrolnet_stock_ksampler.json"):
        wf = json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))
        api = {str(n["id"]): {"class_type": n["type"], "inputs": {}} for n in wf["nodes"]}
        want = "KSampler" if "stock_ksampler" in name else "DiffBIRSampler"
        (sampler,) = [i for i, n in api.items() if n["class_type"] in ("KSampler", "DiffBIRSampler")]
        assert api[sampler]["class_type"] == want, name
        assert wfl.set_by_type(api, wfl.STEPS_INPUTS, 3, "--steps") == [sampler]
        assert wfl.set_by_type(api, wfl.SEED_INPUTS, 7, "--seed") == [sampler]
        assert api[sampler]["inputs"] == {"steps": 3, "seed": 7}


def test_steps_and_seed_reach_the_stock_custom_sampling_graph():
    """In the SamplerCustomAdvanced workflow the step count lives on BasicScheduler and the seed on RandomNoise."""
    wf = json.loads((REPO / "workflows" / "diffbir_v2.1_sampler_select.json").read_text(encoding="utf-8"))
    api = {str(n["id"]): {"class_type": n["type"], "inputs": {}} for n in wf["nodes"]}
    (scheduler,) = [i for i, n in api.items() if n["class_type"] == "BasicScheduler"]
    (noise,) = [i for i, n in api.items() if n["class_type"] == "RandomNoise"]
    assert wfl.set_by_type(api, wfl.STEPS_INPUTS, 3, "--steps") == [scheduler]
    assert wfl.set_by_type(api, wfl.SEED_INPUTS, 7, "--seed") == [noise]
    assert (api[scheduler]["inputs"], api[noise]["inputs"]) == ({"steps": 3}, {"noise_seed": 7})

# ------------------------------------------------------------------------------------------------ download


def test_download_with_the_offline_environment_variable_lists_the_files(tmp_path, mirror, payloads):
    """DIFFBIR_OFFLINE=1 (the switch a node shares) acts as --offline: exit 3, each file with URL and folder."""
    models = tmp_path / "models"
    mirror.serve("v2.pth", payloads["bsrnet"])
    proc = cli("download", "v2.pth", "--models", models, "--mirror", mirror.base, env={OFFLINE_ENV: "1"})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert f"from {CATALOGUE['v2.pth'].url}" in proc.stderr and f"into {models / 'diffbir'}" in proc.stderr
    assert mirror.requests == [] and not (models / "diffbir" / "v2.pth").exists()


def test_download_subcommand_against_a_local_mirror(tmp_path, mirror, payloads):
    models = tmp_path / "models"
    bsr = mirror.serve("BSRNet.pth", payloads["bsrnet"], cut=True)  # the first transfer drops halfway
    mirror.serve("face_swinir_v1.ckpt", payloads["swinir"])
    proc = cli("download", "BSRNet.pth", "face_swinir_v1.ckpt", "--models", models, "--mirror", mirror.base)
    assert proc.returncode == 0, proc.stderr
    assert (models / "diffbir" / "BSRNet.pth").read_bytes() == payloads["bsrnet"]
    assert (models / "diffbir" / "face_swinir_v1.ckpt").read_bytes() == payloads["swinir"]
    assert [r for p, r in mirror.requests if p == bsr] == [None, f"bytes={len(payloads['bsrnet']) // 2}-"]
    assert re.search(r"BSRNet\.pth: downloaded, \d+ bytes, resumed, opens as bsrnet; SHA-256 recorded", proc.stdout)
    assert "100.0%" in proc.stderr  # the progress bar
    lock_path = models / LOCK_FILE_NAME
    lock = json.loads(lock_path.read_text())["files"]
    for name, body in (("BSRNet.pth", payloads["bsrnet"]), ("face_swinir_v1.ckpt", payloads["swinir"])):
        assert list(lock[name]) == [CATALOGUE[name].url]  # recorded under the official URL, not the mirror's
        assert lock[name][CATALOGUE[name].url]["sha256"] == _sha(body)

    # Again, through the environment variable: BSRNet.pth is there and matches its record; face_swinir_v1.ckpt
    # was deleted and changed upstream; the others announce a wrong size or are not what their name says.
    (models / "diffbir" / "face_swinir_v1.ckpt").unlink()
    mirror.serve("face_swinir_v1.ckpt", payloads["changed"])
    mirror.serve("scunet_color_real_psnr.pth", payloads["bsrnet"], extra_length=1000)
    mirror.serve("v2.pth", payloads["bsrnet"])
    recorded = lock_path.read_text()
    before = len(mirror.requests)
    proc = cli("download", "BSRNet.pth", "face_swinir_v1.ckpt", "scunet_color_real_psnr.pth", "v2.pth",
               "--models", models, env={mirrors.MIRROR_ENV: mirror.base})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "BSRNet.pth: present" in proc.stdout and "matches the lock file" in proc.stdout
    assert bsr not in [p for p, _ in mirror.requests[before:]]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, proc.stderr
    assert "face_swinir_v1.ckpt" in errors[0] and _sha(payloads["changed"]) in errors[0] and "lock file" in errors[0]
    assert "scunet_color_real_psnr.pth" in errors[1] and "announced" in errors[1]
    assert "'v2.pth'" in errors[2] and "[bsrnet]" in errors[2] and "[controlnet]" in errors[2]
    assert errors[3].startswith("error: 3 of 4 weight files failed")
    assert sorted(p.name for p in (models / "diffbir").iterdir()) == ["BSRNet.pth"]  # nothing bad kept
    assert lock_path.read_text() == recorded


# ------------------------------------------------------------------------------------------------ restore


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory, comfy_models_dir):
    """A models folder with the tiny SD 2.1 (shared with the host tests' file) and a tiny v2.1 ControlNet."""
    shared = comfy_models_dir / "checkpoints" / TINY_SD21_NAME
    if not shared.is_file():  # same deterministic file tiny_models.tiny_sd21_checkpoint() writes
        shared.parent.mkdir(parents=True, exist_ok=True)
        tmp = shared.with_name(shared.name + ".partial")
        write_tiny_sd21(tmp)
        tmp.replace(shared)
    models = tmp_path_factory.mktemp("cli_models")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / TINY_SD21_NAME).symlink_to(shared)
    (models / "diffbir").mkdir()
    write_tiny_controlnet(models / "diffbir" / TINY_CONTROLNET, "v2.1")
    return models


def test_restore_a_folder_downloading_missing_weights(tmp_path, cli_models, mirror, payloads):
    from PIL import Image

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.effect_noise((48, 40), 60).convert("RGB").save(inputs / "a.png")
    Image.effect_noise((40, 32), 60).convert("RGB").save(inputs / "b.jpg", quality=90)
    (inputs / "notes.txt").write_text("not an image: skipped")
    stage1 = "realesrgan_s4_swinir_100k.pth"
    env = {cli_mod.PRELOAD_ENV: "tiny_models:register_tiny_sd21"}

    offline = cli("restore", inputs, "--out", out, "--models", cli_models, "--offline", *TINY_RUN[:-1], env=env)
    assert offline.returncode == 3 and "Traceback" not in offline.stderr, offline.stdout + offline.stderr
    message = offline.stderr[offline.stderr.index("error: "):].splitlines()  # the last thing said, and all of it
    assert message[0] == ("error: 1 model file is missing and nothing is downloaded offline. Download each from its "
                          "URL and put it in the folder shown:")
    assert message[1].split() == [stage1, "-", *CATALOGUE[stage1].description.split()]
    assert message[2:] == [f"      from {CATALOGUE[stage1].url}",
                           f"      into {cli_models / 'diffbir'} (or {cli_models / 'upscale_models'})"]
    assert not out.exists() and not mirror.requests

    path = mirror.serve(stage1, payloads["swinir"])
    proc = cli("restore", inputs, "--out", out, "--models", cli_models, "--mirror", mirror.base, *TINY_RUN, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p for p, _ in mirror.requests] == [path]
    assert (cli_models / "diffbir" / stage1).read_bytes() == payloads["swinir"]
    lock = json.loads((cli_models / LOCK_FILE_NAME).read_text())["files"][stage1]
    assert lock[CATALOGUE[stage1].url]["sha256"] == _sha(payloads["swinir"])

    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for name, size in (("a.png", (96, 80)), ("b.png", (80, 64))):  # input x --upscale 2
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size == size
    assert f"[1/2] {inputs / 'a.png'} -> {out / 'a.png'}" in proc.stdout
    assert f"[2/2] {inputs / 'b.jpg'} -> {out / 'b.png'}" in proc.stdout
    reused = [line for line in proc.stdout.splitlines() if "reused from the previous image" in line]
    assert len(reused) == 2 and reused[0].endswith("nothing")
    for node in ("2 DiffBIRLoadModels", "4 CheckpointLoaderSimple"):  # models loaded once, for the first image
        assert node in reused[1]


# ------------------------------------------------------------------------------------------------ faces


def test_upscale_reaches_the_photo_and_the_detector_not_the_face_crops():
    """In the unaligned-face workflow --upscale is the photo's: background Stage1 and Face Detect & Align change
    together (Paste Back needs them equal); the Stage1 restoring the aligned crops stays at 1."""
    wf = json.loads((REPO / "workflows" / "diffbir_v2.1_unaligned_face.json").read_text(encoding="utf-8"))
    api = {str(n["id"]): {"class_type": n["type"], "inputs": {}} for n in wf["nodes"]}
    for src, _, dst, slot in ((link[1], link[2], link[3], link[4]) for link in wf["links"]):
        node = next(n for n in wf["nodes"] if n["id"] == dst)
        api[str(dst)]["inputs"][node["inputs"][slot]["name"]] = [str(src), 0]
    (face_stage1,) = [i for i, n in api.items() if n["class_type"] == "DiffBIRStage1Restore"
                      and api[n["inputs"]["image"][0]]["class_type"] == "DiffBIRFaceDetectAlign"]
    api[face_stage1]["inputs"]["upscale"] = 1.0
    ids = wfl.set_upscale(api, 4.0)
    assert sorted(api[i]["class_type"] for i in ids) == ["DiffBIRFaceDetectAlign", "DiffBIRStage1Restore"]
    assert all(api[i]["inputs"]["upscale"] == 4.0 for i in ids) and api[face_stage1]["inputs"]["upscale"] == 1.0


def test_the_face_workflow_downloads_the_detector_into_facedetection():
    graph = wfl.load_json(wfl.resolve("v2.1-unaligned-face").path)
    needed = {e.name: e.folder for e in files_needed(wfl.string_values(graph))}
    assert needed == {"realesrgan_s4_swinir_100k.pth": "diffbir", "face_swinir_v1.ckpt": "diffbir",
                      "DiffBIR_v2.1.pt": "diffbir", "sd2.1-base-zsnr-laionaes5.ckpt": "checkpoints",
                      "detection_Resnet50_Final.pth": "facedetection"}
    assert CATALOGUE["detection_Resnet50_Final.pth"].url == \
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"


def test_restore_faces_in_a_whole_photo(tmp_path, comfy_host, comfy_models_dir, monkeypatch, one_thread):
    """`restore --workflow v2.1-unaligned-face` end to end (in this process, on the booted host) with tiny models;
    a detector double decides where the face is."""
    from PIL import Image

    from tiny_models import face_node_module, one_face, tiny_sd21_checkpoint, write_tiny_retinaface, write_tiny_stage1

    sd = tiny_sd21_checkpoint(comfy_models_dir)
    write_tiny_stage1(comfy_models_dir / "diffbir" / "tiny_cli_bg.safetensors", "swinir")
    write_tiny_stage1(comfy_models_dir / "diffbir" / "tiny_cli_face.safetensors", "swinir")
    write_tiny_controlnet(comfy_models_dir / "diffbir" / TINY_CONTROLNET, "v2.1")
    (comfy_models_dir / "facedetection").mkdir(exist_ok=True)
    write_tiny_retinaface(comfy_models_dir / "facedetection" / "tiny_cli_detector.safetensors", "resnet50")
    seen = []
    monkeypatch.setattr(face_node_module(), "detect_faces", lambda net, image, *a: seen.append(image.shape) or
                        one_face(net, image))
    photo, out = tmp_path / "family.png", tmp_path / "out"
    Image.effect_noise((48, 40), 60).convert("RGB").save(photo)
    sets = {"2.stage1_name": "tiny_cli_bg.safetensors", "2.controlnet_name": TINY_CONTROLNET,
            "12.stage1_name": "tiny_cli_face.safetensors", "3.ckpt_name": sd,
            "13.detector_name": "tiny_cli_detector.safetensors", "13.face_size": "64",
            "6.min_short_edge": "64", "15.min_short_edge": "64"}
    argv = ["restore", str(photo), "--workflow", "v2.1-unaligned-face", "--out", str(out), "--steps", "1",
            "--upscale", "2", "--offline", "--models", str(comfy_host.models_dir)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert cli_mod.main(argv) == 0
    assert seen == [(3, 80, 96)]  # the detector saw the photo upscaled x 2
    with Image.open(out / "family.png") as img:
        assert img.size == (96, 80)  # the photo x 2, faces pasted in


def test_a_bad_weight_file_is_one_sentence_and_leaves_no_output_folder(tmp_path, cli_models):
    """A stage-1 file that is no checkpoint fails in its loader node: one line naming the node and the error
    class (not ComfyUI's temporary module path), ComfyUI's traceback only with --debug, no empty --out left."""
    from PIL import Image

    models, out = tmp_path / "models", tmp_path / "out"
    for sub in ("checkpoints", "diffbir"):
        (models / sub).mkdir(parents=True)
        for f in (cli_models / sub).iterdir():
            (models / sub / f.name).symlink_to(f.resolve())
    stage1 = models / "diffbir" / "realesrgan_s4_swinir_100k.pth"
    stage1.unlink(missing_ok=True)
    stage1.write_bytes(b"<html>sign in to download</html>")
    png = tmp_path / "in.png"
    Image.effect_noise((32, 32), 60).convert("RGB").save(png)
    env = {cli_mod.PRELOAD_ENV: "tiny_models:register_tiny_sd21"}
    args = ("restore", png, "--out", out, "--models", models, "--offline", *TINY_RUN[:-1])

    line = error_line(cli(*args, env=env), 1)
    assert re.match(r"error: DiffBIRLoadModels \(node 2\) failed: \w+Error: .*realesrgan_s4_swinir_100k\.pth", line)
    assert "/" not in line.split(" failed: ", 1)[1].split(":", 1)[0]  # a bare class name
    assert "--debug" in line and not out.exists()

    debug = cli(*args, "--debug", env=env)
    assert debug.returncode == 1 and "ComfyUI's traceback:" in debug.stderr and not out.exists()
    assert debug.stderr.strip().splitlines()[-1].startswith("error: DiffBIRLoadModels (node 2) failed: ")


def test_max_memory_is_read_before_the_start(tmp_path):
    """--max-memory reaches the nodes' planner as DIFFBIR_MAX_MEMORY; a size it cannot read is a usage error."""
    line = error_line(cli("restore", tmp_path / "x.png", "--out", tmp_path / "out", "--max-memory", "lots"), 2)
    assert "--max-memory: cannot read 'lots' as a memory size; write e.g. 6GB" in line
