"""Video clips in the command line (``diffbir_cli/clips.py``), in this process on the booted host, tiny models.

* ``probe`` / ``plan_chunks``: a 5-frame 64 x 48 clip at 12 fps with audio, its chunks of 2; a clip that does not
  decode (cut off, empty, not a video) is refused before ComfyUI runs, naming the file (exit 2);
* ``read_frames``: any chunk of a clip with key frames every 3 frames is ComfyUI's own decode of those frames,
  read by seeking to the key frame before it;
* ``restore`` of a folder holding an image and two clips (the default v2.1 workflow): the image as ``<stem>.png``,
  each clip as ``<stem>.mp4`` with the input's frame count, frame rate and audio duration (or no audio);
* the units of work: the clip in chunks of 2 through the video workflow (in its image form) gives the same
  frames whether the chunks run in order or in reverse (what a scale-out over workers does), and the frames
  reach the workflow exactly as ComfyUI's own Get Video Components decodes them.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from diffbir_cli import clips
from diffbir_cli import cli as cli_mod
from diffbir_cli import workflow as wfl
from diffbir_cli.errors import EXIT_USAGE, CliError
from sample_images import clip_facts, write_clip
from tiny_models import tiny_sd21_checkpoint, write_tiny_controlnet, write_tiny_stage1

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, SIZE, FPS = 5, (64, 48), 12
AAC_FRAME = 1024 / 16000  # one AAC frame of the test clip's audio: the encoder pads the last one
STAGE1, CONTROLNET = "tiny_clips_stage1.safetensors", "tiny_clips_v2.1.safetensors"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "street.mp4"
    write_clip(path, FRAMES, SIZE, FPS)
    return path


@pytest.fixture(scope="module")
def tiny(comfy_host, comfy_models_dir) -> dict:
    """--set values putting tiny models into the v2.1 workflows (node 2 Load DiffBIR Models, node 4 checkpoint)."""
    write_tiny_stage1(comfy_models_dir / "diffbir" / STAGE1, "swinir")
    write_tiny_controlnet(comfy_models_dir / "diffbir" / CONTROLNET, "v2.1")
    sd = tiny_sd21_checkpoint(comfy_models_dir)
    comfy_host.refresh_models()
    return {"2.stage1_name": STAGE1, "2.controlnet_name": CONTROLNET, "4.ckpt_name": sd,
            "3.min_short_edge": "64"}


def test_probe_and_plan_chunks(clip):
    info = clips.probe(clip)
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (FRAMES, Fraction(FPS), *SIZE, True)
    assert clips.plan_chunks(info, 2) == [(0, 2), (2, 2), (4, 1)]
    assert clips.plan_chunks(info, 16) == [(0, FRAMES)]
    with pytest.raises(CliError, match="--chunk-frames 0 is out of range") as err:
        clips.plan_chunks(info, 0)
    assert err.value.code == EXIT_USAGE
    assert [clips.is_clip(n) for n in ("a.MP4", "b.mkv", "c.png", "d")] == [True, True, False, False]


def test_a_chunk_reads_the_frames_comfyui_decodes_seeking_to_its_key_frame(tmp_path, comfy_host, monkeypatch):
    """Every (start, count) of a clip with a key frame every 3 frames and B-frames between gives the pixels of
    ComfyUI's own decode (VideoFromFile.get_components) for those frame numbers; after the first chunk the
    decoder seeks (the clip is not decoded from its start for each chunk). On 0.3.75 our decoder does it (rgb24,
    as the host); a newer host (0.33.0: float frames, its own colour conversion) decodes the chunk itself through
    its trim window, rounded to 8 bits."""
    from comfy_api.latest import InputImpl

    path = tmp_path / "gop3.mp4"
    write_clip(path, 10, SIZE, FPS, audio=False, key_every=3)
    decoded = (InputImpl.VideoFromFile(str(path)).get_components().images * 255).round().byte().numpy()
    decodes = []
    decode_from = clips._decode_from

    def watched(path, wanted, seek, first=0):
        decodes.append(seek)
        return decode_from(path, wanted, seek, first)

    monkeypatch.setattr(clips, "_decode_from", watched)
    for start in range(10):
        for count in range(1, 11 - start):
            got = np.stack(clips.read_frames(path, start, count))
            assert np.array_equal(got, decoded[start:start + count]), (start, count)
    if clips.host_trims_clips():
        assert decodes == []  # the host decoded every chunk (it seeks itself)
    else:
        assert decodes.count(False) == 10 and decodes.count(True) == 45  # from the start only for start 0


def test_a_chunk_samples_with_the_seed_moved_by_its_start():
    prompt = {"10": {"class_type": "DiffBIRSampler", "inputs": {"seed": 231}},
              "11": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 2**64 - 1}},
              "12": {"class_type": "CLIPTextEncode", "inputs": {"text": "x"}}}
    clips._shift_seeds(prompt, 4, None)
    assert (prompt["10"]["inputs"]["seed"], prompt["11"]["inputs"]["noise_seed"]) == (235, 3)  # wraps in range
    clips._shift_seeds(prompt, 2, 7)
    assert (prompt["10"]["inputs"]["seed"], prompt["11"]["inputs"]["noise_seed"]) == (9, 9)
    assert prompt["12"]["inputs"] == {"text": "x"}
    shared = {"10": {"class_type": "DiffBIRSampler", "inputs": {"seed": 231, "noise_mode": clips.SHARED_NOISE}}}
    clips._shift_seeds(shared, 4, None)
    assert shared["10"]["inputs"]["seed"] == 231  # one noise for every frame: the same for every chunk


def test_a_clip_that_does_not_decode_is_refused_naming_it(tmp_path, clip, capsys):
    data = clip.read_bytes()
    cut, empty, text = tmp_path / "cut.mp4", tmp_path / "empty.mov", tmp_path / "notes.webm"
    cut.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    text.write_text("not a video")
    for bad in (cut, empty, text):
        assert cli_mod.main(["restore", str(bad), "--out", str(tmp_path / "out")]) == EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {bad} ") and "video" in err[0], err
    assert not (tmp_path / "out").exists()


def test_restore_a_folder_of_an_image_and_clips(tmp_path, comfy_host, tiny, clip, capsys):
    """`restore FOLDER` with the default workflow: the image as PNG, each clip as MP4 keeping its frame count, rate
    and audio (or none); --upscale 2 on all."""
    from PIL import Image

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / clip.name).write_bytes(clip.read_bytes())
    Image.effect_noise((40, 32), 60).convert("RGB").save(folder / "photo.png")
    write_clip(folder / "silent.mov", 2, (32, 24), 25, audio=False)
    argv = ["restore", str(folder), "--out", str(out), "--steps", "1", "--upscale", "2", "--offline",
            "--models", str(comfy_host.models_dir), "--chunk-frames", "3"]
    for key, value in tiny.items():
        argv += ["--set", f"{key}={value}"]
    assert cli_mod.main(argv) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "silent.mp4", "street.mp4"]
    with Image.open(out / "photo.png") as img:
        assert img.size == (80, 64)
    restored, source = clip_facts(out / "street.mp4"), clip_facts(clip)
    assert (restored["frames"], restored["fps"]) == (source["frames"], source["fps"]) == (FRAMES, FPS)
    assert restored["size"] == (SIZE[0] * 2, SIZE[1] * 2)
    assert abs(restored["audio_seconds"] - source["audio_seconds"]) <= AAC_FRAME, (restored, source)
    assert clip_facts(out / "silent.mp4") == {"frames": 2, "fps": 25, "size": (64, 48), "audio_seconds": None}
    assert "frames 0-2 (1/2)" in said and "frames 3-4 (2/2)" in said, said
    assert f"{folder / clip.name} -> {out / 'street.mp4'}" in said


def test_chunks_give_the_same_frames_in_any_order(comfy_host, tiny, clip):
    """The units of work of a clip in chunks of 2, through the video workflow in its image form, run in order and
    then in reverse: frame for frame the same restored pixels. Each chunk's input batch is the clip's frames as
    ComfyUI's Get Video Components decodes them (to 8 bits, where the host decodes floats)."""
    from comfy_api.latest import InputImpl
    from PIL import Image

    api = comfy_host.workflow_to_api(wfl.load_json(wfl.resolve("v2.1-video").path))
    api = clips.frames_prompt(api)
    assert not [n for n in api.values() if n["class_type"] in ("LoadVideo", "GetVideoComponents", "CreateVideo",
                                                                "SaveVideo")]
    for key, value in {**tiny, "10.steps": "1", "3.upscale": "1"}.items():
        node, name, raw = wfl.parse_set(f"{key}={value}")
        wfl.set_input(api, node, name, raw, comfy_host.node_info)

    decoded = InputImpl.VideoFromFile(str(clip)).get_components().images  # ComfyUI's own decode
    staged = np.concatenate(clips.read_frames(clip, 1, 3))  # 8-bit: 0.3.75 decodes 8-bit, 0.33.0 floats
    assert np.array_equal(staged, (decoded[1:4] * 255).round().reshape(-1, SIZE[0], 3).byte().numpy())

    units = clips.plan_chunks(clips.probe(clip), 2)

    def restored(order):
        frames = {}
        for start, count in order:
            for k, path in enumerate(clips.restore_chunk(comfy_host, api, clip, start, count)):
                with Image.open(path) as img:
                    frames[start + k] = np.asarray(img.convert("RGB"))
                path.unlink()
        return [frames[i] for i in range(FRAMES)]

    forward, backward = restored(units), restored(units[::-1])
    assert [f.shape for f in forward] == [(SIZE[1], SIZE[0], 3)] * FRAMES
    for i, (a, b) in enumerate(zip(forward, backward, strict=True)):
        assert np.array_equal(a, b), f"frame {i} differs between the chunk orders"

    # chunks equal the whole clip as one batch, in both noise modes (the workflow's shared, and per frame: chunk
    # k..k+1 runs with seed + k). Within CPU rounding: a batch of 2 and one of FRAMES sum in another order.
    (sampler,) = [n for n in api.values() if n["class_type"] == "DiffBIRSampler"]
    assert sampler["inputs"]["noise_mode"] == clips.SHARED_NOISE
    for mode in (clips.SHARED_NOISE, "per frame"):
        sampler["inputs"]["noise_mode"] = mode
        chunked = forward if mode == clips.SHARED_NOISE else restored(units)
        whole = restored([(0, FRAMES)])
        for i, (a, b) in enumerate(zip(chunked, whole, strict=True)):
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.05, f"{mode}: frame {i} differs from the whole batch's"
        if mode == clips.SHARED_NOISE:
            shared_whole = whole
    # and the modes do differ: per frame moves the seed with the frame (frame 0 draws the same noise in both)
    assert np.array_equal(whole[0], shared_whole[0]) and not np.array_equal(whole[1], shared_whole[1])


def test_assemble_refuses_frames_h264_cannot_take(tmp_path, comfy_host, clip):
    """An odd width (H.264 in MP4 needs even sizes) and frames of two sizes: errors naming the clip, no file."""
    from PIL import Image

    odd, mixed = [tmp_path / f"odd{i}.png" for i in range(2)], [tmp_path / f"mixed{i}.png" for i in range(2)]
    for path in odd:
        Image.new("RGB", (33, 24)).save(path)
    Image.new("RGB", (32, 24)).save(mixed[0])
    Image.new("RGB", (34, 24)).save(mixed[1])
    with pytest.raises(CliError, match=rf"{clip} are 33 x 24 pixels; H.264 in MP4 needs an even width and height"):
        clips.assemble(tmp_path / "odd.mp4", odd, clip)
    with pytest.raises(CliError, match=r"is 34 x 24 pixels, the first 32 x 24: a clip's frames must share one size"):
        clips.assemble(tmp_path / "mixed.mp4", mixed, clip)
    assert not list(tmp_path.glob("*.mp4"))
