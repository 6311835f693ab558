"""pytest configuration: a real in-process ComfyUI host, booted once per session.

Light on purpose: ComfyUI and torch are imported only when a test uses the `comfy_host` fixture.
"""

import pytest

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


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory, comfy_models_dir):
    """The booted in-process ComfyUI (`comfy_host.Host`)."""
    import comfy_host as host_module  # tests/ is on sys.path (rootdir-relative conftest, no __init__.py)

    return host_module.boot(tmp_path_factory.mktemp("comfy_output"), models_dir=comfy_models_dir)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: with two, OpenMP fork/join stalls on a busy shared CPU
    make them up to 20x slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def eight_gb_free(monkeypatch):
    """The planner's input as on a device with 8 GB free (the machine's own free memory varies)."""
    import comfy.model_management as mm

    def eight_gb(dev=None, torch_free_too=False):
        return (8 * 2**30, 8 * 2**30) if torch_free_too else 8 * 2**30

    monkeypatch.setattr(mm, "get_free_memory", eight_gb)
