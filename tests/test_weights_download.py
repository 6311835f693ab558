"""diffbir_weights: the catalogue, the downloader and ``ensure_file`` against a local, optionally misbehaving
HTTP server, and the package's place between the nodes and the command line.

The server runs on 127.0.0.1 (port 0) in a thread and serves small checkpoints the tests
write themselves (the golden tiny BSRNet weights); nothing leaves the machine.
"""

from __future__ import annotations

import ast
import hashlib
import io
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from diffbir_core.detect import KIND_NAMES, version_from_name
from diffbir_weights import download as dl
from diffbir_weights import fetch
from diffbir_weights.catalogue import (CATALOGUE, CHECKPOINTS, DIFFBIR, FACEDETECTION, LOADERS, files_needed, lookup,
                                       unknown_files)
from diffbir_weights.lockfile import LOCK_FILE_NAME
from diffbir_weights.mirrors import MIRROR_ENV
from diffbir_weights.progress import TextProgress
from local_server import serving

GOLDEN = Path(__file__).parent / "golden" / "bsrnet.safetensors"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_weights_environment(monkeypatch):
    """A developer's DIFFBIR_WEIGHTS_MIRROR or DIFFBIR_OFFLINE must not change what these tests see."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.delenv(fetch.OFFLINE_ENV, raising=False)


# --------------------------------------------------------------------------------------
# the local server


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold a server thread for long

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        st = self.server.state
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "/files/" + self.path[len("/redirect/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = st.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        size, start = len(body), 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not st.ignore_range:
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(size + st.extra_length))
        self.end_headers()
        payload, cut = body[start:], st.cut_next > 0
        if cut:  # send half, then (after an optional stall) close the connection
            st.cut_next -= 1
            payload = payload[: len(payload) // 2]
        for i in range(0, len(payload), 32768):  # bounded: the payload is a few hundred KB
            self.wfile.write(payload[i : i + 32768])
        self.wfile.flush()
        if cut and st.stall:
            time.sleep(st.stall)


class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_next = 0  # responses still to cut at half
        self.extra_length = 0  # announce this many bytes more than a full response has
        self.ignore_range = False  # answer 200 with the whole file to Range requests
        self.stall = 0.0  # seconds to wait after a response before closing


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up is expected here
        pass


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = _State()
    with serving(httpd):
        yield httpd


def _pickle_bytes(sd: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads():
    golden = load_file(str(GOLDEN))
    bsrnet = {k[2:]: v for k, v in golden.items() if k.startswith("w.")}
    changed = {k: v + 1 for k, v in bsrnet.items()}
    vae = {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)}
    return {"bsrnet": _pickle_bytes(bsrnet), "changed": _pickle_bytes(changed), "vae": save(vae)}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _fetch(server, tmp_path, name="BSRNet.pth", kind="bsrnet", **kw):
    url = f"{server.base}/files/{name}"
    dest = tmp_path / "models" / "diffbir" / name
    lock = tmp_path / "models" / LOCK_FILE_NAME
    kw.setdefault("retry_wait", 0)
    kw.setdefault("timeout", 5)
    kw.setdefault("chunk_size", 16384)
    return url, dest, lock, (lambda: dl.download(url, dest, kind, lock, **kw))


# --------------------------------------------------------------------------------------
# downloads


def test_normal_download_writes_file_and_lock(server, tmp_path, payloads):
    server.state.files["/files/BSRNet.pth"] = payloads["bsrnet"]
    calls = []
    url, dest, lock, run = _fetch(server, tmp_path, progress=lambda d, t: calls.append((d, t)))
    result = run()
    assert dest.read_bytes() == payloads["bsrnet"]
    assert not dl.part_path(dest).exists()
    assert (result.lock, result.kind, result.resumed) == ("recorded", "bsrnet", False)
    entry = json.loads(lock.read_text())["files"]["BSRNet.pth"][url]
    assert entry["sha256"] == _sha(payloads["bsrnet"]) == result.sha256
    assert entry["size"] == len(payloads["bsrnet"])
    assert [p.name for p in lock.parent.iterdir() if p.name.endswith(".tmp")] == []  # atomic write left no temp
    assert calls[-1] == (len(payloads["bsrnet"]),) * 2
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
    assert [p.name for p in dest.parent.iterdir()] == ["BSRNet.pth"]  # no check folder left behind
    # a second, identical download matches the record
    assert run().lock == "matched"


def test_resume_after_dropped_connection(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    server.state.cut_next = 1
    url, dest, lock, run = _fetch(server, tmp_path)
    result = run()
    assert dest.read_bytes() == body and result.resumed
    assert [r for _, r in server.state.requests] == [None, f"bytes={len(body) // 2}-"]
    assert json.loads(lock.read_text())["files"]["BSRNet.pth"][url]["sha256"] == _sha(body)


def test_interrupted_call_keeps_part_and_next_call_resumes(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    server.state.cut_next = 2  # the first two calls break off (retries=0: no automatic resume)
    _, dest, _, run = _fetch(server, tmp_path, retries=0)
    with pytest.raises(dl.DownloadInterrupted, match=r"BSRNet\.pth.*resume"):
        run()
    part = dl.part_path(dest)
    assert part.stat().st_size == len(body) // 2 and not dest.exists()
    with pytest.raises(dl.DownloadInterrupted):
        run()  # second call: Range request, again cut (at half of the rest)
    assert server.state.requests[1][1] == f"bytes={len(body) // 2}-"
    result = run()
    assert dest.read_bytes() == body and result.resumed and result.sha256 == _sha(body)
    assert server.state.requests[2][1] == f"bytes={part_size_after_two(len(body))}-"


def part_size_after_two(n: int) -> int:
    half = n // 2
    return half + (n - half) // 2


def test_read_timeout_is_retried_with_range(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    server.state.cut_next, server.state.stall = 1, 1.0
    _, dest, _, run = _fetch(server, tmp_path, timeout=0.5)
    assert run().resumed and dest.read_bytes() == body
    # resumed from what had arrived before the timeout (at most the half that was sent)
    ranges = [r for _, r in server.state.requests]
    assert ranges[0] is None and all(ranges[1:])
    start = int(re.fullmatch(r"bytes=(\d+)-", ranges[1]).group(1))
    assert 0 < start <= len(body) // 2


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    server.state.ignore_range = True
    _, dest, _, run = _fetch(server, tmp_path)
    dest.parent.mkdir(parents=True)
    dl.part_path(dest).write_bytes(b"garbage" * 1000)
    result = run()
    assert dest.read_bytes() == body and not result.resumed
    assert server.state.requests[0][1] == "bytes=7000-"


def test_complete_part_and_416_finishes(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    _, dest, _, run = _fetch(server, tmp_path)
    dest.parent.mkdir(parents=True)
    dl.part_path(dest).write_bytes(body)
    result = run()
    assert dest.read_bytes() == body and result.sha256 == _sha(body)
    assert len(server.state.requests) == 1


def test_redirect_is_followed_with_range(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    server.state.cut_next = 1
    dest = tmp_path / "BSRNet.pth"
    dl.download(f"{server.base}/redirect/BSRNet.pth", dest, "bsrnet", retry_wait=0, timeout=5)
    assert dest.read_bytes() == body
    assert server.state.requests[-1] == ("/files/BSRNet.pth", f"bytes={len(body) // 2}-")


def test_size_mismatch_is_refused_and_part_removed(server, tmp_path, payloads):
    server.state.files["/files/BSRNet.pth"] = payloads["bsrnet"]
    server.state.extra_length = 1000  # announces more than it has, sends what it has, closes
    _, dest, lock, run = _fetch(server, tmp_path)
    with pytest.raises(dl.SizeMismatchError, match=r"BSRNet\.pth.*announced"):
        run()
    assert not dest.exists() and not dl.part_path(dest).exists() and not lock.exists()


def test_wrong_kind_is_refused_and_removed(server, tmp_path, payloads):
    server.state.files["/files/model.safetensors"] = payloads["vae"]
    _, dest, lock, run = _fetch(server, tmp_path, name="model.safetensors", kind="bsrnet")
    with pytest.raises(dl.WrongKindError) as err:
        run()
    msg = str(err.value)
    assert "model.safetensors" in msg and "standalone VAE" in msg and "[vae]" in msg and "[bsrnet]" in msg
    assert not dest.exists() and not dl.part_path(dest).exists() and not lock.exists()
    assert [p.name for p in dest.parent.iterdir()] == []


def test_non_checkpoint_is_refused(server, tmp_path):
    server.state.files["/files/BSRNet.pth"] = b"<html>sign in</html>"
    _, dest, _, run = _fetch(server, tmp_path)
    with pytest.raises(dl.WrongKindError, match=r"BSRNet\.pth.*not a usable checkpoint"):
        run()
    assert not dest.exists()


def test_changed_file_reports_sha_mismatch_and_keeps_record(server, tmp_path, payloads):
    server.state.files["/files/BSRNet.pth"] = payloads["bsrnet"]
    url, dest, lock, run = _fetch(server, tmp_path)
    run()
    recorded = lock.read_text()
    server.state.files["/files/BSRNet.pth"] = payloads["changed"]
    with pytest.raises(dl.HashMismatchError) as err:
        run()
    msg = str(err.value)
    assert _sha(payloads["changed"]) in msg and _sha(payloads["bsrnet"]) in msg and "changed upstream" in msg
    assert lock.read_text() == recorded  # the record is not overwritten
    assert dest.read_bytes() == payloads["bsrnet"] and not dl.part_path(dest).exists()
    # verify() on the intact file agrees; on a corrupted one it reports the mismatch
    assert dl.verify(dest, url, lock, "bsrnet") == "matched"
    dest.write_bytes(payloads["changed"])
    with pytest.raises(dl.HashMismatchError, match="corrupt or was replaced"):
        dl.verify(dest, url, lock)
    # an expected upstream change is accepted only when asked for
    assert dl.download(url, dest, "bsrnet", lock, update_lock=True, retry_wait=0).lock == "updated"
    assert json.loads(lock.read_text())["files"]["BSRNet.pth"][url]["sha256"] == _sha(payloads["changed"])


def test_http_error_and_bad_scheme_messages(server, tmp_path):
    dest = tmp_path / "diffbir" / "v2.pth"
    with pytest.raises(dl.DownloadError, match=r"v2\.pth.*HTTP 404.*manually from .*v2\.pth.*diffbir"):
        dl.download(f"{server.base}/files/v2.pth", dest, retry_wait=0, timeout=5)
    assert not dl.part_path(dest).exists()
    with pytest.raises(dl.DownloadError, match="only http and https"):
        dl.download("file:///etc/hostname", dest)


def test_text_progress_draws_one_throttled_line():
    out = io.StringIO()
    bar = TextProgress("BSRNet.pth", stream=out, interval=10.0)
    for done in range(0, 1001, 10):
        bar(done, 1000)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") <= 3 and text.endswith("\n") and "\n" not in text[:-1]
    assert "100.0%" in text and "BSRNet.pth" in text


# --------------------------------------------------------------------------------------
# catalogue and offline message


def test_catalogue_is_consistent():
    expected = {
        "v2-1_512-ema-pruned.ckpt", "sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt", "v2.pth", "v1_general.pth",
        "v1_face.pth", "realesrgan_s4_swinir_100k.pth", "general_swinir_v1.ckpt", "face_swinir_v1.ckpt",
        "codeformer_swinir.ckpt", "BSRNet.pth", "scunet_color_real_psnr.pth", "general_full_v1.ckpt",
        "face_full_v1.ckpt", "detection_Resnet50_Final.pth", "detection_mobilenet0.25_Final.pth",
    }
    assert set(CATALOGUE) == expected
    for e in CATALOGUE.values():
        assert e.url.startswith("https://") and e.url.endswith("/" + e.name)
        assert e.kind in KIND_NAMES
        assert e.folder == {"sd21": CHECKPOINTS, "retinaface": FACEDETECTION}.get(e.kind, DIFFBIR)
        if e.kind == "controlnet":  # the loader tells ControlNet versions apart by name
            assert version_from_name(e.name) == e.version


def test_files_needed_from_widget_values():
    values = ["realesrgan_s4_swinir_100k.pth", "controlnet/DiffBIR_v2.1.pt", "none",
              "sd2.1-base-zsnr-laionaes5.ckpt", "upscale_models/realesrgan_s4_swinir_100k.pth", "mine.safetensors"]
    assert [e.name for e in files_needed(values)] == [
        "realesrgan_s4_swinir_100k.pth", "DiffBIR_v2.1.pt", "sd2.1-base-zsnr-laionaes5.ckpt"]
    assert unknown_files(values) == ["mine.safetensors"]
    with pytest.raises(ValueError, match="mine.safetensors"):
        files_needed(values, strict=True)
    assert lookup("sub\\BSRNet.pth").kind == "bsrnet"


def test_offline_message_lists_missing_files_and_folders(tmp_path):
    models = tmp_path / "models"
    (models / "upscale_models").mkdir(parents=True)
    (models / "upscale_models" / "BSRNet.pth").write_bytes(b"x")  # present in an alternative folder
    files = files_needed(["BSRNet.pth", "v2.pth", "v2-1_512-ema-pruned.ckpt"])
    msg = fetch.missing_files_message(files, models)
    assert "BSRNet.pth" not in msg and msg.startswith("2 model files are missing")
    assert f"into {models / 'diffbir'}" in msg and f"into {models / 'checkpoints'}" in msg
    assert CATALOGUE["v2.pth"].url in msg and CATALOGUE["v2-1_512-ema-pruned.ckpt"].url in msg
    assert fetch.missing_files_message(files[:1], models) == ""
    with pytest.raises(fetch.MissingWeightsError, match=r"v2\.pth"):
        fetch.fetch_weights(files, models, offline=True)


def test_failures_from_a_mirror_name_the_official_url_and_every_failed_file(server, tmp_path, capsys):
    """One fetch tries every missing file; the summary names each failed one with its official URL and folder,
    and each file's own message tells to download it by hand from the official URL, not the mirror's."""
    from diffbir_weights.mirrors import mirror_map

    models = tmp_path / "models"
    files = files_needed(["BSRNet.pth", "v2.pth", "sd2.1-base-zsnr-laionaes5.ckpt"])
    server.state.files["/cszn/KAIR/releases/download/v1.0/BSRNet.pth"] = b"<html>not here</html>"  # wrong kind
    with pytest.raises(fetch.FetchError) as err:
        fetch.fetch_weights(files, models, mirrors=mirror_map(server.base), retries=0)
    summary = str(err.value).splitlines()
    assert summary[0].startswith("3 of 3 weight files failed")
    assert "--offline" in summary[0] and "--mirror" in summary[0]
    assert "Download each by hand into the folder shown on its line" in summary[0]
    # one line per file, each with its own folder (the SD checkpoint does not go where the ControlNet goes)
    assert summary[1:] == [
        f"  BSRNet.pth from {CATALOGUE['BSRNet.pth'].url} into {models / 'diffbir'} (or {models / 'upscale_models'})",
        f"  v2.pth from {CATALOGUE['v2.pth'].url} into {models / 'diffbir'} (or {models / 'controlnet'})",
        f"  sd2.1-base-zsnr-laionaes5.ckpt from {CATALOGUE['sd2.1-base-zsnr-laionaes5.ckpt'].url} into "
        f"{models / 'checkpoints'}"]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "not a usable checkpoint" in errors[0]
    for line, entry in zip(errors[1:], files[1:], strict=True):
        assert "HTTP 404" in line and f"manually from {entry.url} and put it in '{models / entry.folder}'" in line
    assert sorted(p.name for p in models.rglob("*") if p.is_file()) == []  # nothing half-downloaded is kept


def test_the_core_has_no_download_code():
    """Weights distribution lives in diffbir_weights: no diffbir_core module imports a network library."""
    network = {"urllib", "http", "socket", "ssl", "requests", "httpx", "aiohttp"}
    core = Path(__file__).resolve().parent.parent / "diffbir_core"
    offenders = []
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            offenders += [f"{path.relative_to(core)}: {n}" for n in names if n.split(".")[0] in network]
    assert not offenders and not (core / "download.py").exists() and not (core / "weights.py").exists(), offenders


# --------------------------------------------------------------------------------------
# cancel, and ensure_file: what a loader node calls for a missing official file


def _cancel_after(chunks: int):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > chunks  # the first check is before the request, then one per chunk

    return cancel


def test_cancel_keeps_the_part_and_the_next_call_resumes(server, tmp_path, payloads):
    body = payloads["bsrnet"]
    server.state.files["/files/BSRNet.pth"] = body
    url, dest, lock, _ = _fetch(server, tmp_path)
    with pytest.raises(dl.DownloadCancelled, match=r"BSRNet\.pth.*cancelled.*BSRNet\.pth\.part.*resume"):
        dl.download(url, dest, "bsrnet", lock, chunk_size=16384, retry_wait=0, timeout=5, cancel=_cancel_after(3))
    part = dl.part_path(dest)
    assert part.stat().st_size == 3 * 16384 and not dest.exists() and not lock.exists()
    assert part.read_bytes() == body[: 3 * 16384]  # what arrived is on disk, nothing more
    result = dl.download(url, dest, "bsrnet", lock, chunk_size=16384, retry_wait=0, timeout=5, cancel=lambda: False)
    assert result.resumed and dest.read_bytes() == body and not part.exists()
    assert server.state.requests[-1][1] == f"bytes={3 * 16384}-"
    assert json.loads(lock.read_text())["files"]["BSRNet.pth"][url]["sha256"] == _sha(body)


def test_an_exception_raised_by_cancel_propagates_and_keeps_the_part(server, tmp_path, payloads):
    """ComfyUI's Cancel: the node passes throw_exception_if_processing_interrupted, which raises its own error."""

    class Interrupted(Exception):
        pass

    server.state.files["/files/BSRNet.pth"] = payloads["bsrnet"]
    url, dest, lock, _ = _fetch(server, tmp_path)
    seen = []

    def cancel():
        seen.append(1)
        if len(seen) > 2:
            raise Interrupted("the user pressed Cancel")
        return False

    with pytest.raises(Interrupted):
        dl.download(url, dest, "bsrnet", lock, chunk_size=16384, retry_wait=0, timeout=5, cancel=cancel)
    assert dl.part_path(dest).stat().st_size == 2 * 16384 and not dest.exists()


def test_ensure_file_downloads_a_missing_file_from_the_mirror_in_the_environment(server, tmp_path, payloads,
                                                                               monkeypatch):
    entry = CATALOGUE["BSRNet.pth"]
    body = payloads["bsrnet"]
    server.state.files[urllib.parse.urlsplit(entry.url).path] = body
    monkeypatch.setenv(MIRROR_ENV, server.base)
    models = tmp_path / "models"
    calls = []
    path = fetch.ensure_file("BSRNet.pth", models, progress=lambda d, t: calls.append((d, t)), cancel=lambda: False)
    assert path == models / "diffbir" / "BSRNet.pth" and path.read_bytes() == body
    assert calls == [(0, len(body)), (len(body), len(body))]  # start, then after the one 1 MiB chunk
    lock = json.loads((models / LOCK_FILE_NAME).read_text())["files"]["BSRNet.pth"]
    assert list(lock) == [entry.url] and lock[entry.url]["sha256"] == _sha(body)  # the official URL's record
    # present now: no request, same path; an alternative folder counts too
    requests = len(server.state.requests)
    assert fetch.ensure_file("BSRNet.pth", models) == path and len(server.state.requests) == requests
    (models / "upscale_models").mkdir()
    (models / "upscale_models" / "scunet_color_real_psnr.pth").write_bytes(b"x")
    assert fetch.ensure_file("scunet_color_real_psnr.pth", models) == models / "upscale_models" / \
        "scunet_color_real_psnr.pth"


def test_ensure_file_into_a_given_folder_with_the_nodes_lookup(server, tmp_path, payloads):
    """A node passes where ComfyUI finds the file (folder_paths) and the folder it downloads into."""
    body = payloads["bsrnet"]
    server.state.files["/cszn/KAIR/releases/download/v1.0/BSRNet.pth"] = body
    elsewhere = tmp_path / "extra" / "diffbir"
    looked_up = []

    def found(entry):
        looked_up.append(entry.name)
        return None

    path = fetch.ensure_file("upscale_models/BSRNet.pth", tmp_path / "models", found=found, dest_dir=elsewhere,
                             mirrors=server.base)
    assert looked_up == ["BSRNet.pth"] and path == elsewhere / "BSRNet.pth" and path.read_bytes() == body
    assert (tmp_path / "models" / LOCK_FILE_NAME).is_file()  # the lock file stays in the models folder
    with pytest.raises(ValueError, match="mine.safetensors.*not an official"):
        fetch.ensure_file("mine.safetensors", tmp_path / "models")


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_ensure_file_offline_names_file_folder_and_url_and_writes_nothing(server, tmp_path, monkeypatch, how):
    entry = CATALOGUE["detection_Resnet50_Final.pth"]
    models = tmp_path / "models"
    if how == "environment":
        monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    kw = {"offline": True} if how == "argument" else {}
    with pytest.raises(fetch.MissingWeightsError) as err:
        fetch.ensure_file(entry.name, models, mirrors=server.base, **kw)
    msg = str(err.value)
    assert entry.name in msg and f"from {entry.url}" in msg and f"into {models / 'facedetection'}" in msg
    assert fetch.OFFLINE_ENV in msg
    assert server.state.requests == [] and not models.exists()  # no request, nothing half-written anywhere
    # offline=False overrides the environment
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    server.state.files["/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"] = b"<html/>"
    with pytest.raises(dl.WrongKindError):
        fetch.ensure_file(entry.name, models, mirrors=server.base, offline=False)
    assert len(server.state.requests) == 1


def test_offline_switch_reads_the_environment(monkeypatch, tmp_path):
    assert not fetch.offline_requested()
    for value, expected in (("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False)):
        monkeypatch.setenv(fetch.OFFLINE_ENV, value)
        assert fetch.offline_requested() is expected, value
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    assert fetch.offline_requested(False) is False
    with pytest.raises(fetch.MissingWeightsError, match=r"v2\.pth"):  # the CLI's batch fetch honours it too
        fetch.fetch_weights(["v2.pth"], tmp_path / "models")


def test_catalogue_lookup_gives_url_folders_and_only_traceable_hashes():
    entry = lookup("controlnet/DiffBIR_v2.1.pt")
    assert (entry.url, entry.folder, entry.alt_folders) == (
        "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt", DIFFBIR, ("controlnet",))
    for e in CATALOGUE.values():
        if e.sha256 is None:
            assert e.sha256_source is None, e.name
        else:  # a hash is listed only with where it was obtained
            assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and e.sha256_source, e.name
    assert LOADERS["DiffBIRLoadModels"].folder_of("BSRNet.pth") == DIFFBIR
    assert LOADERS["DiffBIRLoadModels"].folder_of("upscale_models/BSRNet.pth") == "upscale_models"
    assert LOADERS["DiffBIRLoadModels"].folder_of("sub/BSRNet.pth") == DIFFBIR
    assert LOADERS["DiffBIRFaceDetectAlign"].folder_of("diffbir/detection_Resnet50_Final.pth") == DIFFBIR
    assert LOADERS["CheckpointLoaderSimple"].folder_of("sd2.1-base-zsnr-laionaes5.ckpt") == CHECKPOINTS


# --------------------------------------------------------------------------------------
# one home for weights distribution: the nodes and the CLI import it, it imports neither


def _imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import statement of a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


def test_import_boundaries():
    """nodes/ never imports diffbir_cli; diffbir_weights imports no ComfyUI module, no nodes and no diffbir_cli."""
    forbidden = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "nodes", "folder_paths", "execution",
                 "server", "latent_preview", "diffbir_cli"}
    offenders = []
    for path in sorted((REPO / "diffbir_weights").rglob("*.py")):
        for level, module in _imports(path):
            top = module.split(".")[0]
            if (level == 0 and top in forbidden) or (level >= 2 and top in ("nodes", "diffbir_cli")):
                offenders.append(f"{path.relative_to(REPO)}: {'.' * level}{module}")
    for path in sorted((REPO / "nodes").rglob("*.py")):
        for level, module in _imports(path):
            if "diffbir_cli" in module.split("."):
                offenders.append(f"{path.relative_to(REPO)}: {'.' * level}{module}")
    assert not offenders, offenders
    assert sorted(p.name for p in (REPO / "diffbir_cli").glob("*.py")
                  if p.stem in ("weights", "fetch", "download", "lockfile", "mirrors", "progress")) == []


def test_importing_diffbir_weights_loads_no_comfy_and_no_cli():
    code = (
        "import sys, pkgutil, importlib, diffbir_weights\n"
        "for m in pkgutil.walk_packages(diffbir_weights.__path__, 'diffbir_weights.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('comfy', 'folder_paths', 'nodes', 'diffbir_cli',"
        " 'torch'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # not even torch until a kind is checked


def test_inside_the_pack_package_the_kind_check_uses_the_one_diffbir_core(tmp_path, payloads):
    """ComfyUI imports the repository as one package, whose __init__ puts the pack's folder on sys.path: from then on
    diffbir_weights and diffbir_core have one top-level name each, as in the command line and the tests (no copy
    under the pack's package name)."""
    path = tmp_path / "BSRNet.pth"
    path.write_bytes(payloads["bsrnet"])
    code = (
        "import importlib, importlib.util, sys\n"
        f"sys.path = [p for p in sys.path if p not in ('', {str(REPO)!r})]\n"
        f"spec = importlib.util.spec_from_file_location('comfyui_diffbir', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['comfyui_diffbir'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "import diffbir_weights as w\n"
        "from pathlib import Path\n"
        f"det = w.download.check_kind(Path({str(path)!r}), 'bsrnet')\n"
        "assert det.kind == 'bsrnet', det\n"
        "assert 'diffbir_core.detect' in sys.modules, sorted(sys.modules)\n"
        "assert not [m for m in sys.modules if m.startswith('comfyui_diffbir.diffbir_')], sorted(sys.modules)\n"
        "print(w.ensure_file.__module__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "diffbir_weights.fetch"


def test_in_comfyui_a_progress_bar_reports_and_cancel_leaves_a_resumable_part(comfy_host, server, tmp_path,
                                                                             payloads, monkeypatch):
    """What a loader node will do, with ComfyUI's own objects: diffbir_weights (imported by its top-level name,
    as the nodes import it), ComfyUI's ProgressBar as the progress callback and throw_exception_if_processing_
    interrupted as cancel. Cancel pressed mid-download raises ComfyUI's interrupt and keeps the .part; the next
    run resumes it and the file is verified and recorded."""
    import importlib

    import comfy.model_management as mm
    import comfy.utils

    weights = importlib.import_module("diffbir_weights")  # the one copy, which the nodes import too
    assert weights.download._core_modules()[0].__name__ == "diffbir_core.checkpoint"
    entry, body = weights.CATALOGUE["BSRNet.pth"], payloads["bsrnet"]
    server.state.files[urllib.parse.urlsplit(entry.url).path] = body
    monkeypatch.setenv(weights.MIRROR_ENV, server.base)
    models = tmp_path / "models"
    updates, pressed = [], []
    original = comfy.utils.ProgressBar.update_absolute

    def update(self, value, total=None, preview=None):
        updates.append((value, total))
        original(self, value, total, preview)
        if len(updates) == 3 and not pressed:
            pressed.append(True)
            mm.interrupt_current_processing()  # the user presses Cancel after the second chunk

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update)

    def run():
        bar = comfy.utils.ProgressBar(1)
        return weights.ensure_file("BSRNet.pth", models, progress=lambda done, total: bar.update_absolute(done, total),
                                   cancel=mm.throw_exception_if_processing_interrupted, chunk_size=65536)

    with pytest.raises(mm.InterruptProcessingException):
        run()
    assert not mm.processing_interrupted()  # ComfyUI's own check consumed the Cancel
    part, dest = dl.part_path(models / "diffbir" / "BSRNet.pth"), models / "diffbir" / "BSRNet.pth"
    assert updates == [(0, len(body)), (65536, len(body)), (131072, len(body))]
    assert part.stat().st_size == 131072 and not dest.exists()
    updates.clear()
    assert run() == dest and dest.read_bytes() == body and not part.exists()
    assert updates[0] == (131072, len(body)) and updates[-1] == (len(body), len(body))
    assert server.state.requests[-1][1] == "bytes=131072-"
    assert json.loads((models / LOCK_FILE_NAME).read_text())["files"]["BSRNet.pth"][entry.url]["sha256"] == _sha(body)
