"""Soak: the real ComfyUI server (tests/comfy_host.start_server, 127.0.0.1) runs 20 queued restorations.

The graph uses only our nodes and stock image nodes, with a small random-weight stage-1 SwinIR in the server's
models/diffbir: LoadImage -> Degrade (a different seed per prompt, so nothing is cached) -> Stage1 SwinIR Restore
(Load DiffBIR Models) -> DiffBIR Color Fix -> DiffBIR Compare, and SaveImage. All 20 prompts are queued at once
and /history is polled with a deadline. Every prompt must succeed, the server's RSS after the 20th must be within
5 % of its RSS after the 2nd, and the server log must show the stage-1 file read from disk once and loaded onto
the device once.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import comfy_host as ch
import pytest
from tiny_models import write_tiny_stage1

PROMPTS = 20
MODEL = "soak_swinir.safetensors"
DEADLINE_S = 600.0


def _prompt(image_name: str, seed: int) -> dict:
    return {
        "I": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "D": {"class_type": "DiffBIRDegrade", "inputs": {"image": ["I", 0], "preset": "general", "seed": seed}},
        "L": {"class_type": "DiffBIRLoadModels", "inputs": {"stage1_name": MODEL, "controlnet_name": "none",
                                                            "dtype": "auto"}},
        "S": {"class_type": "DiffBIRStage1Restore",
              "inputs": {"image": ["D", 0], "stage1": ["L", 0], "upscale": 1.0, "version": "auto",
                         "min_short_edge": 0, "tile_size": 0, "tile_overlap": 32}},
        "F": {"class_type": "DiffBIRColorFix", "inputs": {"image": ["S", 0], "reference": ["D", 0],
                                                          "method": "wavelet"}},
        "M": {"class_type": "DiffBIRCompare", "inputs": {"image_a": ["F", 0], "image_b": ["D", 1]}},
        "W": {"class_type": "SaveImage", "inputs": {"images": ["F", 0], "filename_prefix": f"soak_{seed:02d}"}},
        "R": {"class_type": "PreviewAny", "inputs": {"source": ["M", 2]}},
    }


def _server_process(url: str):
    """The child process running main.py on the URL's port."""
    import psutil

    port = str(urlparse(url).port)
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if any(part.endswith("main.py") for part in cmd) and port in cmd:
            return child
    raise AssertionError(f"no main.py child process listening on port {port}")


@pytest.mark.slow
def test_twenty_queued_restorations(tmp_path):
    import numpy as np
    import requests
    from PIL import Image

    models = tmp_path / "models"
    (models / "diffbir").mkdir(parents=True)
    write_tiny_stage1(models / "diffbir" / MODEL, "swinir")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(png, "PNG")

    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through an environment proxy
    with ch.start_server(models_dir=models, output_dir=tmp_path / "output") as url:
        server = _server_process(url)
        log_path = Path(server.cwd()) / "server.log"
        upload = session.post(f"{url}/upload/image", files={"image": ("soak_in.png", png.getvalue(), "image/png")},
                              timeout=30)
        assert upload.status_code == 200, upload.text
        name = upload.json()["name"]

        start = time.monotonic()
        ids = []
        for seed in range(PROMPTS):
            resp = session.post(f"{url}/prompt", json={"prompt": _prompt(name, seed), "client_id": uuid.uuid4().hex},
                                timeout=30)
            assert resp.status_code == 200 and not resp.json().get("node_errors"), resp.text
            ids.append(resp.json()["prompt_id"])

        rss = {}  # completed count -> RSS (bytes) when first seen
        history = {}
        while len(history) < PROMPTS:
            assert time.monotonic() - start < DEADLINE_S, f"only {len(history)} of {PROMPTS} prompts finished"
            everything = session.get(f"{url}/history", timeout=30).json()
            history = {p: everything[p] for p in ids if everything.get(p, {}).get("status", {}).get("completed")
                       is not None}
            done = len(history)
            if done >= 2 and 2 not in rss:
                rss[2] = server.memory_info().rss
            time.sleep(0.05)
        rss[PROMPTS] = server.memory_info().rss
        duration = time.monotonic() - start

        for i, prompt_id in enumerate(ids):
            status = history[prompt_id]["status"]
            assert status["status_str"] == "success", (i, status)
            assert history[prompt_id]["outputs"]["W"]["images"][0]["filename"].startswith(f"soak_{i:02d}")
            assert "PSNR" in history[prompt_id]["outputs"]["R"]["text"][0]
        log = log_path.read_text(errors="replace")

    # Messages, wherever they sit in a line: hosts decorate their log lines differently (0.33.0 puts a coloured
    # "[INFO] " in front of each) and add unrelated ones (package versions, start-up warnings).
    reads = log.count(f"DiffBIR: reading the stage1 file {MODEL} from disk")
    device_loads = re.findall(r"Requested to load (\w+)", log)
    growth = rss[PROMPTS] / rss[2] - 1
    print(f"\nsoak: {PROMPTS} prompts in {duration:.1f} s; server RSS after #2 {rss[2] / 2**20:.1f} MiB, after "
          f"#{PROMPTS} {rss[PROMPTS] / 2**20:.1f} MiB ({growth:+.2%}); stage-1 file reads {reads}, "
          f"device loads {device_loads}")
    assert reads == 1, log[-3000:]
    assert len(device_loads) == 1, log[-3000:]  # ComfyUI put the network on the device once
    assert abs(growth) <= 0.05
