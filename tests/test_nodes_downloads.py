"""The loader nodes fetch a missing official file on first use (nodes/host/downloads.py), in the real host.

A local HTTP server on 127.0.0.1 stands in for GitHub as ``DIFFBIR_WEIGHTS_MIRROR`` (the path of the official URL
is kept), serving small random-weight files in the official layout: the golden tiny BSRNet as a pickled state
dict (``BSRNet.pth``) and a RetinaFace MobileNet-0.25 of the official size (``detection_mobilenet0.25_Final.pth``,
1.8 MB: two 1 MiB chunks, so a Cancel can land between them). Prompts run through ComfyUI's own validation and
executor (``comfy_host.run``); the progress bar and Cancel are ComfyUI's own objects. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import urllib.parse
from pathlib import Path

import comfy_host as ch
import pytest
import torch
from safetensors.torch import load_file

from diffbir_weights import CATALOGUE, MIRROR_ENV, OFFLINE_ENV
from diffbir_weights.download import part_path
from diffbir_weights.lockfile import LOCK_FILE_NAME
from local_server import FileServer, serving
from tiny_models import face_node_module, one_face, tiny_retinaface_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = Path(__file__).parent / "golden"
BSRNET, DETECTOR = CATALOGUE["BSRNet.pth"], CATALOGUE["detection_mobilenet0.25_Final.pth"]
RESNET50 = CATALOGUE["detection_Resnet50_Final.pth"]
CHUNK = 1 << 20  # ensure_file's chunk: one progress report and one Cancel check each


def _pickled(sd: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads():
    golden = load_file(str(GOLDEN / "bsrnet.safetensors"))
    return {BSRNET.name: _pickled({k[2:]: v for k, v in golden.items() if k.startswith("w.")}),
            DETECTOR.name: _pickled(tiny_retinaface_state_dict("mobilenet0.25"))}


def _url_path(entry) -> str:
    return urllib.parse.urlsplit(entry.url).path


@pytest.fixture
def mirror(payloads, monkeypatch):
    """The local mirror, serving the payloads at their official URL paths, set as DIFFBIR_WEIGHTS_MIRROR."""
    srv = FileServer()
    srv.files = {_url_path(CATALOGUE[name]): body for name, body in payloads.items()}
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    with serving(srv):
        monkeypatch.setenv(MIRROR_ENV, srv.base)
        yield srv


@pytest.fixture
def models(comfy_host, comfy_models_dir):
    """The session models folder, without the official files these tests fetch before and after each test."""

    def clean():
        for entry in (BSRNET, DETECTOR, RESNET50):
            for folder in (entry.folder, *entry.alt_folders):
                for path in (comfy_models_dir / folder / entry.name, part_path(comfy_models_dir / folder / entry.name)):
                    path.unlink(missing_ok=True)
        (comfy_models_dir / LOCK_FILE_NAME).unlink(missing_ok=True)
        comfy_host.refresh_models()

    clean()
    yield comfy_models_dir
    clean()


@pytest.fixture
def progress(monkeypatch):
    """(every update of a ComfyUI progress bar as (value, total), {n: f}: f() is called at the n-th update)."""
    import comfy.utils

    updates, hooks = [], {}
    original = comfy.utils.ProgressBar.update_absolute

    def update(self, value, total=None, preview=None):
        updates.append((value, total))
        original(self, value, total, preview)
        if len(updates) in hooks:
            hooks.pop(len(updates))()

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update)
    return updates, hooks


def _options(comfy_host, node_type: str, input_name: str) -> list[str]:
    comfy_host.refresh_models()
    return ch.combo_options(comfy_host.node_info(node_type)["input"]["required"][input_name])


def _lock_record(models_dir: Path, entry) -> dict:
    return json.loads((models_dir / LOCK_FILE_NAME).read_text())["files"][entry.name][entry.url]


def loader_prompt(stage1="none", controlnet="none") -> dict:
    """Load DiffBIR Models -> Stage1 SwinIR Restore on a small image; its info and the restored size as outputs."""
    return {
        "L": {"class_type": "DiffBIRLoadModels",
              "inputs": {"stage1_name": stage1, "controlnet_name": controlnet, "dtype": "auto"}},
        "Linfo": {"class_type": "PreviewAny", "inputs": {"source": ["L", 5]}},
        "E": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0x406080}},
        "S": {"class_type": "DiffBIRStage1Restore",
              "inputs": {"image": ["E", 0], "stage1": ["L", 0], "upscale": 4.0, "version": "auto",
                         "min_short_edge": 0, "tile_size": 0, "tile_overlap": 32}},
        "Sw": {"class_type": "PreviewAny", "inputs": {"source": ["S", 1]}},
    }


def detect_prompt(detector: str) -> dict:
    """DiffBIR Face Detect & Align on a small image; its info as output."""
    return {
        "E": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1, "color": 0x806040}},
        "D": {"class_type": "DiffBIRFaceDetectAlign",
              "inputs": {"image": ["E", 0], "detector_name": detector, "upscale": 1.0, "score_threshold": 0.8,
                         "min_eye_distance": 5.0, "order": "score", "max_faces": 0, "face_size": 64}},
        "Dinfo": {"class_type": "PreviewAny", "inputs": {"source": ["D", 2]}},
    }


def _text(outputs, node_id: str) -> str:
    return "".join(outputs[node_id]["text"])


# ------------------------------------------------------------------------------------------------ download


def test_load_models_downloads_a_missing_stage1_file_with_progress_verifies_it_and_runs(comfy_host, models, mirror,
                                                                                      payloads, progress):
    updates, _ = progress
    body, dest = payloads[BSRNET.name], models / "diffbir" / BSRNET.name
    assert BSRNET.name not in _options(comfy_host, "DiffBIRLoadModels", "stage1_name")

    outputs = comfy_host.run(loader_prompt(stage1=BSRNET.name))
    assert mirror.requests == [(_url_path(BSRNET), None)]  # one request, to the mirror, at the official path
    assert dest.read_bytes() == body and not part_path(dest).exists()
    assert _lock_record(models, BSRNET)["sha256"] == hashlib.sha256(body).hexdigest()  # keyed by the official URL
    assert updates[:2] == [(0, len(body)), (len(body), len(body))]  # the bar, in bytes (then stage 1's tiles)
    info = _text(outputs, "Linfo")
    assert f"BSRNet.pth downloaded ({len(body) / 1e3:.1f} KB) from {mirror.base}{_url_path(BSRNET)} into " \
           f"{models / 'diffbir'}" in info
    assert "stage 1: BSRNet.pth -> " in info and "kind bsrnet" in info and "scale x4" in info  # built and loaded
    assert _text(outputs, "Sw") == "96"  # and ran: 24 pixels x 4

    # installed now: listed, and the next run reads it without a request
    assert BSRNET.name in _options(comfy_host, "DiffBIRLoadModels", "stage1_name")
    outputs = comfy_host.run(loader_prompt(stage1=BSRNET.name))
    assert len(mirror.requests) == 1 and "downloaded" not in _text(outputs, "Linfo")


def test_a_download_that_is_not_the_expected_kind_is_refused_and_nothing_is_kept(comfy_host, models, mirror):
    mirror.files[_url_path(BSRNET)] = b"<html><body>rate limited</body></html>"  # what a proxy may answer
    with pytest.raises(ch.PromptExecutionError, match=r"(?s)BSRNet\.pth.*HTML.*has been removed"):
        comfy_host.run(loader_prompt(stage1=BSRNET.name))
    dest = models / "diffbir" / BSRNET.name
    assert len(mirror.requests) == 1 and not dest.exists() and not part_path(dest).exists()
    assert not (models / LOCK_FILE_NAME).exists()  # no hash recorded for a file that was refused


def test_an_official_file_in_another_folder_it_may_live_in_is_used_not_fetched(comfy_host, models, mirror, payloads):
    (models / "upscale_models" / BSRNET.name).write_bytes(payloads[BSRNET.name])
    outputs = comfy_host.run(loader_prompt(stage1=BSRNET.name))  # the workflow names it bare (models/diffbir)
    assert mirror.requests == [] and not (models / "diffbir" / BSRNET.name).exists()
    assert "kind bsrnet" in _text(outputs, "Linfo") and "downloaded" not in _text(outputs, "Linfo")


def test_a_prefixed_official_name_downloads_into_that_folder(comfy_host, models, mirror, payloads):
    outputs = comfy_host.run(loader_prompt(stage1=f"upscale_models/{BSRNET.name}"))
    assert (models / "upscale_models" / BSRNET.name).read_bytes() == payloads[BSRNET.name]
    assert not (models / "diffbir" / BSRNET.name).exists()
    assert f"into {models / 'upscale_models'}" in _text(outputs, "Linfo")


def test_cancel_mid_download_keeps_a_part_that_the_next_run_resumes(comfy_host, models, mirror, payloads, progress,
                                                                   monkeypatch, caplog):
    import comfy.model_management as mm

    caplog.set_level(logging.INFO, logger="comfyui-diffbir")

    updates, hooks = progress
    body, dest = payloads[DETECTOR.name], models / "facedetection" / DETECTOR.name
    assert len(body) > CHUNK  # two chunks: Cancel lands between them
    monkeypatch.setattr(face_node_module(), "detect_faces", one_face)  # random weights find no faces
    hooks[2] = mm.interrupt_current_processing  # the user presses Cancel once the first MiB arrived

    with pytest.raises(ch.PromptExecutionError) as err:
        comfy_host.run(detect_prompt(DETECTOR.name))
    assert [event for event, _ in err.value.events] == ["execution_interrupted"]  # ComfyUI's Cancel, not an error
    assert updates == [(0, len(body)), (CHUNK, len(body))]
    assert not mm.processing_interrupted()  # the node's Cancel check consumed it
    assert part_path(dest).read_bytes() == body[:CHUNK]  # what arrived is kept ...
    assert not dest.exists() and not (models / LOCK_FILE_NAME).exists()  # ... never under the final name
    assert DETECTOR.name not in _options(comfy_host, "DiffBIRFaceDetectAlign", "detector_name")

    assert f"downloading {DETECTOR.name} ({len(body) / 1e6:.1f} MB)" in caplog.text  # the line under the node
    updates.clear()
    caplog.clear()
    outputs = comfy_host.run(detect_prompt(DETECTOR.name))
    assert f"downloading {DETECTOR.name} ({len(body) / 1e6:.1f} MB), resuming after 1.0 MB" in caplog.text
    assert mirror.requests[-1] == (_url_path(DETECTOR), f"bytes={CHUNK}-")  # resumed, not started over
    assert len(mirror.requests) == 2
    assert updates[:2] == [(CHUNK, len(body)), (len(body), len(body))]  # from where it stopped (then: faces)
    assert dest.read_bytes() == body and not part_path(dest).exists()
    assert _lock_record(models, DETECTOR)["sha256"] == hashlib.sha256(body).hexdigest()
    info = _text(outputs, "Dinfo")
    assert info.startswith(f"{DETECTOR.name} downloaded ({len(body) / 1e6:.1f} MB) from {mirror.base}")
    assert "1 face" in info
    assert "RetinaFace mobilenet0.25 (0.43 M parameters)" in info


@pytest.mark.parametrize("value,folder", [(BSRNET.name, "diffbir"), (RESNET50.name, "facedetection")])
def test_offline_the_node_names_file_folder_and_url_and_writes_nothing(comfy_host, models, mirror, monkeypatch,
                                                                      value, folder):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    prompt = loader_prompt(stage1=value) if folder == "diffbir" else detect_prompt(value)
    with pytest.raises(ch.PromptExecutionError) as err:
        comfy_host.run(prompt)  # it validates (an official name), then fails when it runs
    entry = CATALOGUE[value]
    message = str(err.value)
    assert f"{entry.name} is not installed and downloads are off ({OFFLINE_ENV} is set)" in message
    assert f"Download it from {entry.url} into {models / folder}" in message
    assert mirror.requests == []  # not even the mirror was asked
    assert not (models / folder / entry.name).exists() and not part_path(models / folder / entry.name).exists()
    assert not (models / LOCK_FILE_NAME).exists()


# ------------------------------------------------------------------------------------------------ lists, validation


def test_the_detector_list_offers_only_files_that_are_there(comfy_host, models, payloads):
    assert not (models / "facedetection" / RESNET50.name).exists()
    options = _options(comfy_host, "DiffBIRFaceDetectAlign", "detector_name")
    assert RESNET50.name not in options and f"diffbir/{RESNET50.name}" not in options
    (models / "diffbir" / RESNET50.name).write_bytes(payloads[DETECTOR.name])
    assert f"diffbir/{RESNET50.name}" in _options(comfy_host, "DiffBIRFaceDetectAlign", "detector_name")
    assert _default(comfy_host) != RESNET50.name  # nor is it the preselected value
    (models / "facedetection" / RESNET50.name).write_bytes(payloads[DETECTOR.name])
    assert RESNET50.name in _options(comfy_host, "DiffBIRFaceDetectAlign", "detector_name")
    assert _default(comfy_host) == RESNET50.name  # DiffBIR's detector, preselected once it is there


def _default(comfy_host):
    comfy_host.refresh_models()
    return comfy_host.node_info("DiffBIRFaceDetectAlign")["input"]["required"]["detector_name"][1].get("default")


def _validation_error(comfy_host, prompt) -> str | None:
    """ComfyUI's validation of `prompt`: None when it passes, else its message (with the node errors)."""
    comfy_host.refresh_models()
    valid = comfy_host.validate(prompt)
    return None if valid[0] else ch._format_validation(valid)


@pytest.mark.parametrize("value,ok", [
    (RESNET50.name, True),  # official, not installed: fetched when the node runs
    (DETECTOR.name, True),
    (f"diffbir/{RESNET50.name}", True),  # the prefixed form names models/diffbir
    ("my_detector.pth", False),  # not official, not there
    (BSRNET.name, False),  # official, but not a detector
    (f"upscale_models/{RESNET50.name}", False),  # not a folder this input reads
])
def test_detector_validation_accepts_official_names_not_installed(comfy_host, models, value, ok):
    assert value not in _options(comfy_host, "DiffBIRFaceDetectAlign", "detector_name")
    error = _validation_error(comfy_host, detect_prompt(value))
    if ok:
        assert error is None
    else:
        assert f"Value not in list: detector_name: '{value}' is not in models/facedetection or models/diffbir" in error


@pytest.mark.parametrize("stage1,controlnet,refused", [
    (BSRNET.name, "v2.pth", None),
    ("upscale_models/scunet_color_real_psnr.pth", "controlnet/DiffBIR_v2.1.pt", None),
    ("general_full_v1.ckpt", "face_full_v1.ckpt", None),  # the v1 all-in-one files fill either slot
    ("v2.pth", "none", "stage1_name: 'v2.pth'"),  # a ControlNet in the stage-1 slot
    ("none", BSRNET.name, "controlnet_name: 'BSRNet.pth'"),
    ("none", "controlnet/v2.pth.bak", "controlnet_name: 'controlnet/v2.pth.bak'"),
    ("my_upscaler.pth", "none", "stage1_name: 'my_upscaler.pth'"),
])
def test_loader_validation_accepts_official_names_of_each_slot(comfy_host, models, stage1, controlnet, refused):
    error = _validation_error(comfy_host, loader_prompt(stage1=stage1, controlnet=controlnet))
    if refused is None:
        assert error is None
    else:
        assert f"Value not in list: {refused} is not in models/diffbir or models/" in error


def test_validate_inputs_names_the_file_inputs_so_newer_hosts_leave_their_check_to_it(comfy_host):
    """Newer hosts (ComfyUI 0.33.0's execution.validate_inputs) check V3 combo values themselves, except for inputs
    that validate_inputs takes by name (`x not in validate_function_inputs`): without that, an official file that is
    not installed would be refused there as not in the list. (0.3.75, booted here, leaves the check to the node.)"""
    for node_type, names in (("DiffBIRLoadModels", {"stage1_name", "controlnet_name"}),
                             ("DiffBIRFaceDetectAlign", {"detector_name"})):
        args = inspect.getfullargspec(comfy_host.node_classes[node_type].validate_inputs).args
        assert names <= set(args), (node_type, args)
