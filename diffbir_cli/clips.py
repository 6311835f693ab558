"""Video clips for ``restore``: every frame through a workflow, in chunks of frames, back into a clip.

A clip is restored as independent *units of work*, one chunk of consecutive frames each, so that one process
(``restore_clip``) or many (the Ray scale-out) produce the same frames from the same plan:

* ``probe(path) -> ClipInfo`` - frame count, frame rate, size and whether there is audio; decodes every frame once
  (the count is what ComfyUI's Get Video Components sees, and a clip that does not decode is refused before any
  model loads);
* ``plan_chunks(info, chunk_frames)`` - the units: ``[(start, count), ...]``;
* ``restore_chunk(host, api, clip, start, count, seed)`` - frames ``[start, start + count)`` through the workflow
  as one IMAGE batch, the sampler's seed shifted by ``start``; the restored frames as PNG files, in frame order;
* ``assemble(out_path, frame_files, source_clip)`` - the restored frames, the source's frame rate and its audio
  as an MP4, written by ComfyUI's own video type (``VideoFromComponents.save_to``, what Save Video calls).

How a chunk enters the workflow: its frames are decoded here (PyAV, ``rgb24`` as ComfyUI 0.3.75's ``VideoFromFile``
decodes them; seeking to the key frame before the chunk by the frame timestamps of the one complete decode that
``probe`` makes, cached per file, so a long clip is not decoded from its start for every chunk) and staged as one
animated PNG for the workflow's stock Load Image, which loads the frames of a file as one batch: through Pillow in
0.3.75, through PyAV in newer hosts (0.33.0 reads only the first page of a multi-page TIFF, so not a TIFF). Not
Load Video -> Get Video Components -> ImageFromBatch: that decodes the whole clip into float32 for every chunk
(memory and time grow with the clip, on every worker), where the PNG holds only the chunk's frames, losslessly,
and every image workflow takes it unchanged. A video workflow (Load Video ... Save Video, e.g.
``diffbir_v2.1_video.json``) is first turned into its image form by ``frames_prompt``. Newer hosts (0.33.0) decode
a YUV clip to float frames with a colour conversion of their own; there the host decodes each chunk itself (its
trim window, ``_host_decode``) and the staged frames are that decode rounded to 8 bits.

Seeds: a chunk starting at clip frame k runs with seed + k, so that with the sampler's per-frame noise (frame i of
a batch drawn from seed + i) every frame gets the noise it would get in one whole-clip batch, whatever the chunk
size; with ``noise_mode`` ``shared`` the seed stays, as the clip's one noise does.
"""

from __future__ import annotations

import functools
import pathlib
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction

from . import workflow as wfl
from .errors import EXIT_USAGE, CliError

CLIP_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
DEFAULT_CHUNK_FRAMES = 16
OUTPUT_SUFFIX = ".mp4"  # VideoFromComponents.save_to writes MP4 (H.264, AAC) only
_SEED_RANGE = 2**64  # DiffBIR Sampler's and KSampler's seed inputs take 0 .. 2**64 - 1

_GIVE_CLIPS = f"give a video file ({', '.join(CLIP_SUFFIXES)}) that plays, e.g. re-encode it with ffmpeg"


def is_clip(path) -> bool:
    return pathlib.Path(path).suffix.lower() in CLIP_SUFFIXES


@dataclass(frozen=True)
class ClipInfo:
    path: pathlib.Path
    frames: int
    fps: Fraction  # the video stream's average rate, as ComfyUI's VideoFromFile / Get Video Components read it
    width: int
    height: int
    has_audio: bool

    @property
    def seconds(self) -> float:
        return float(self.frames / self.fps)


def _undecodable(path, err: Exception) -> CliError:
    return CliError(f"{path} is not a video clip that decodes completely: it is truncated, damaged or not a video "
                    f"({type(err).__name__}: {err}); copy or download it again, or {_GIVE_CLIPS}", EXIT_USAGE)


@dataclass(frozen=True)
class _Scan:
    """One complete decode of a clip's video stream: its facts and every frame's presentation timestamp."""
    fps: Fraction
    width: int
    height: int
    has_audio: bool
    pts: tuple  # of each decoded frame, in order (None where the container gives none)
    time_base: Fraction | None  # of the video stream: pts * time_base is seconds


@functools.lru_cache(maxsize=32)
def _scan(path: str, mtime_ns: int, size: int) -> _Scan:
    """Decode every frame once (cached per file version): the frame count Get Video Components sees, and the
    timestamps that let ``read_frames`` seek to a chunk instead of decoding the clip from its start each time."""
    import av

    with av.open(path, mode="r") as container:
        video = next((s for s in container.streams if s.type == "video"), None)
        if video is None:
            raise CliError(f"{path} holds no video stream: {_GIVE_CLIPS}", EXIT_USAGE)
        # ComfyUI's rule (VideoFromFile.get_frame_rate, get_components): the average rate, else 1
        fps = Fraction(video.average_rate) if video.average_rate else Fraction(1)
        has_audio = any(s.type == "audio" for s in container.streams)
        time_base = Fraction(video.time_base) if video.time_base else None
        pts = tuple(frame.pts for frame in container.decode(video=0))
        return _Scan(fps, video.width, video.height, has_audio, pts, time_base)


def _scanned(path) -> _Scan:
    import av

    path = pathlib.Path(path)
    stat = path.stat()
    if stat.st_size == 0:
        raise CliError(f"{path} is empty (0 bytes), not a video clip: {_GIVE_CLIPS}", EXIT_USAGE)
    try:
        return _scan(str(path), stat.st_mtime_ns, stat.st_size)
    except CliError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise _undecodable(path, err) from None


def probe(path) -> ClipInfo:
    """The clip's frame count (every frame decoded: the count Get Video Components gives, and proof that it
    decodes), frame rate, size and audio; CliError(2) naming the file when it does not decode."""
    path = pathlib.Path(path)
    scan = _scanned(path)
    frames = len(scan.pts)
    if frames == 0:
        raise CliError(f"{path} has a video stream without a frame that decodes: {_GIVE_CLIPS}", EXIT_USAGE)
    # No check against the header's frame count: an edit list (a clip trimmed without re-encoding) declares
    # frames that are never shown; a cut-off copy fails in the decode above (FFmpeg's partial last packet).
    return ClipInfo(path, frames, scan.fps, scan.width, scan.height, scan.has_audio)


def check_chunk_frames(chunk_frames: int) -> None:
    if chunk_frames < 1:
        raise CliError(f"--chunk-frames {chunk_frames} is out of range: give at least 1 frame per chunk", EXIT_USAGE)


def plan_chunks(info: ClipInfo, chunk_frames: int) -> list[tuple[int, int]]:
    """The units of work: (start, count) covering frames 0 .. info.frames - 1 in order, count <= chunk_frames."""
    check_chunk_frames(chunk_frames)
    return [(start, min(chunk_frames, info.frames - start)) for start in range(0, info.frames, chunk_frames)]


def read_frames(path, start: int, count: int) -> list:
    """Frames [start, start + count) as HxWx3 uint8 arrays, the pixels ComfyUI's VideoFromFile decodes.

    Frame numbers are exact whatever the codec's key frames: the decoder seeks to the key frame before the
    chunk's first timestamp (from ``_scan``) and every frame taken must carry the timestamp of its number; when
    that cannot hold (no or repeated timestamps, a container that seeks elsewhere) the clip is decoded from its
    first frame instead (the same frames, only slower)."""
    import av

    scan = _scanned(path)
    pts = scan.pts
    if start < 0 or count < 1 or start + count > len(pts):
        raise CliError(f"{path}: frames {start} to {start + count - 1} are not in the clip's {len(pts)} frames",
                       EXIT_USAGE)
    wanted = list(pts[start:start + count])
    distinct = None not in pts and len(set(pts)) == len(pts)  # a frame number is a timestamp
    try:
        if distinct:
            frames = _host_decode(path, scan, start, count)
            if frames is not None:
                return frames
        if start > 0 and distinct:
            frames = _decode_from(path, wanted, seek=True)
            if frames is not None:
                return frames
        return _decode_from(path, wanted, seek=False, first=start)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise _undecodable(path, err) from None


@functools.cache
def host_trims_clips() -> bool:
    """Whether the host's VideoFromFile takes a trim window (start_time, duration): newer hosts (0.33.0), which
    also decode YUV to float frames with a colour conversion of their own, not the rgb24 of 0.3.75's."""
    import inspect

    from comfy_api.latest import InputImpl

    return "start_time" in inspect.signature(InputImpl.VideoFromFile).parameters


def _host_decode(path, scan: _Scan, start: int, count: int):
    """Frames [start, start + count) as the host's own VideoFromFile decodes them, trimmed to the chunk (the host
    seeks to the key frame before it), rounded to 8 bits; None where the host takes no trim window (then
    ``_decode_from`` decodes as 0.3.75 does) or the frame timestamps give no exact window. The window bounds sit a
    quarter tick inside the first and past the last timestamp, so that the host's int(seconds / time_base) lands
    on them exactly."""
    import numpy as np
    from comfy_api.latest import InputImpl

    pts, time_base = scan.pts, scan.time_base
    if not host_trims_clips() or time_base is None or pts[start] < 0 or list(pts) != sorted(pts):
        return None
    first, last = pts[start], pts[start + count - 1]
    start_time = float((first + Fraction(1, 4)) * time_base)
    duration = float((last - first + 1) * time_base)
    images = InputImpl.VideoFromFile(str(path), start_time=start_time, duration=duration).get_components().images
    if images.shape[0] != count:
        return None
    return list((images.clamp(0, 1) * 255).round().numpy().astype(np.uint8))


def _decode_from(path, wanted: list, seek: bool, first: int = 0):
    """Decode the frames with timestamps ``wanted`` after seeking to the key frame before the first (None when
    the frames found there do not match), or without seeking, taking ``len(wanted)`` frames from number ``first``
    on (a CliError when there are fewer)."""
    import av

    frames = []
    with av.open(str(path), mode="r") as container:
        video = container.streams.video[0]
        if seek:
            container.seek(wanted[0], stream=video, backward=True, any_frame=False)
        for index, frame in enumerate(container.decode(video)):
            if seek and frame.pts is not None and frame.pts < wanted[0]:
                continue  # from the key frame up to the chunk
            if not seek and index < first:
                continue
            if seek and frame.pts != wanted[len(frames)]:
                return None  # not where the timestamps said: decode from the start instead
            frames.append(frame.to_ndarray(format="rgb24"))  # as ComfyUI's VideoFromFile decodes
            if len(frames) == len(wanted):
                return frames
    if seek:
        return None
    raise CliError(f"{path}: frames {first} to {first + len(wanted) - 1} do not all decode (got {len(frames)}); the "
                   f"file changed since it was checked? {_GIVE_CLIPS}", EXIT_USAGE)


# --------------------------------------------------------------------------------------------- prompts


def _consumers(api: dict, node_id: str, slot: int | None = None) -> list[str]:
    return [i for i, n in api.items() for v in n["inputs"].values()
            if isinstance(v, list) and len(v) == 2 and str(v[0]) == node_id and (slot is None or v[1] == slot)]


def frames_prompt(api: dict) -> dict:
    """The prompt in image form: a video workflow's Load Video -> Get Video Components becomes a Load Image (its
    frames output is the IMAGE batch) and its Create Video -> Save Video a Save Image of the frames. The frame
    rate and audio go round the graph (``assemble`` takes them from the source). A prompt without Get Video
    Components is returned as it is."""
    comps = [i for i, n in api.items() if n["class_type"] == "GetVideoComponents"]
    if not comps:
        return api
    if len(comps) > 1:
        raise wfl.WorkflowError(f"the workflow has {len(comps)} Get Video Components nodes, so it cannot take one "
                                "clip per run: use a workflow with exactly one")
    (comp,) = comps
    out = {k: {**v, "inputs": dict(v["inputs"])} for k, v in api.items()}
    source = out[comp]["inputs"].get("video")
    for slot, what in ((1, "audio"), (2, "fps")):
        other = [i for i in _consumers(out, comp, slot) if out[i]["class_type"] != "CreateVideo"]
        if other:
            raise wfl.WorkflowError(f"the {what} of Get Video Components (node {comp}) feeds node {other[0]} "
                                    f"({out[other[0]]['class_type']}), not only Create Video: the command line "
                                    "keeps a clip's frame rate and audio itself; connect them to Create Video only")
    for create in [i for i, n in out.items() if n["class_type"] == "CreateVideo"]:
        for save in _consumers(out, create):
            if out[save]["class_type"] != "SaveVideo":
                raise wfl.WorkflowError(f"Create Video (node {create}) feeds node {save} "
                                        f"({out[save]['class_type']}): the command line writes the clip itself; "
                                        "connect Create Video to Save Video only")
            del out[save]
        out[create] = {"class_type": "SaveImage", "inputs": {"images": out[create]["inputs"]["images"],
                                                             "filename_prefix": "frames"},
                       "_meta": {"title": "Save Image (restored frames)"}}
    out[comp] = {"class_type": "LoadImage", "inputs": {"image": ""}, "_meta": {"title": "Load Image (frames)"}}
    if isinstance(source, list) and not _consumers(out, str(source[0])):
        out.pop(str(source[0]), None)  # the Load Video nothing else reads
    return out


SHARED_NOISE = "shared"  # a sampler noise_mode giving every frame of a batch the same noise: no shift


def _shift_seeds(prompt: dict, start: int, seed: int | None) -> None:
    """Every sampler seed (wfl.SEED_INPUTS) becomes (seed, or the prompt's own value) + start, so that the chunk's
    frame i draws what clip frame start + i draws in one whole-clip batch with per-frame noise; with
    noise_mode "shared" (one noise for all frames) the seed stays (the clip's noise does not move either)."""
    for node in prompt.values():
        name = wfl.SEED_INPUTS.get(node["class_type"])
        if name is not None and isinstance(node["inputs"].get(name, 0), int):
            base = node["inputs"].get(name, 0) if seed is None else seed
            shift = 0 if node["inputs"].get("noise_mode") == SHARED_NOISE else start
            node["inputs"][name] = (int(base) + shift) % _SEED_RANGE


def _stage_frames(frames: list, dest: pathlib.Path) -> None:
    """The frames as one animated PNG (lossless). No frame duration is given: with one, Pillow merges identical
    consecutive frames into one (a static clip would lose frames); without, it writes every frame."""
    from PIL import Image

    pages = [Image.fromarray(f, "RGB") for f in frames]
    pages[0].save(dest, format="PNG", save_all=True, append_images=pages[1:], compress_level=1)


def restore_chunk(host, api: dict, clip_path, start: int, count: int, seed: int | None = None) -> list[pathlib.Path]:
    """Restore frames [start, start + count) of ``clip_path`` with the workflow prompt ``api`` (image or video
    form) as one IMAGE batch; the restored frames as PNG files in the host's output folder, in frame order
    (the caller owns them). ``seed``: the sampler's seed for the clip's frame 0 (None: the prompt's own)."""
    from .cli import _saved_images

    prompt = frames_prompt({k: {**v, "inputs": dict(v["inputs"])} for k, v in api.items()})
    tag = f"diffbir_clip_{uuid.uuid4().hex[:12]}"  # unique: workers may share ComfyUI's input folder
    input_dir = pathlib.Path(host.m.folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    staged = input_dir / f"{tag}.png"
    _stage_frames(read_frames(clip_path, start, count), staged)
    try:
        wfl.set_image(prompt, staged.name)
        save_ids = wfl.set_output_prefix(prompt, f"diffbir_cli/{tag}")
        _shift_seeds(prompt, start, seed)
        outputs = host.run(prompt, keep_cache=True, strict=True)
    finally:
        staged.unlink(missing_ok=True)
    saved = _saved_images(host, outputs, save_ids)
    if len(saved) != count:
        raise CliError(f"the workflow saved {len(saved)} images for the {count} frames {start} to "
                       f"{start + count - 1} of {clip_path}: a workflow for clips must save one image per frame "
                       "with one Save Image node")
    return saved


# --------------------------------------------------------------------------------------------- the clip


def source_audio(clip_path):
    """The clip's first audio stream as ComfyUI's AUDIO ({"waveform": 1 x channels x samples, "sample_rate"}),
    decoded as ComfyUI's VideoFromFile does; None without audio. Only the audio is decoded."""
    import av
    import numpy as np
    import torch

    with av.open(str(clip_path), mode="r") as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            return None
        chunks = [frame.to_ndarray() for packet in container.demux(stream) for frame in packet.decode()]
        if not chunks:
            return None
        planar = stream.format.is_planar if stream.format is not None else True
        if not planar:  # packed samples come as 1 x (samples * channels): make them channels x samples
            chunks = [c.reshape(-1, stream.channels).T for c in chunks]
        samples = np.concatenate(chunks, axis=1)
        if np.issubdtype(samples.dtype, np.integer):  # PCM in .mov/.avi: to -1..1, the float range AAC encodes
            samples = samples / float(np.iinfo(samples.dtype).max + 1)
        # save_to writes mono or stereo only
        waveform = torch.from_numpy(np.ascontiguousarray(samples[:2])).float().unsqueeze(0)
        return {"waveform": waveform, "sample_rate": int(stream.sample_rate or 1)}


def _check_even(width: int, height: int, clip) -> None:
    if width % 2 or height % 2:
        raise CliError(f"the restored frames of {clip} are {width} x {height} pixels; H.264 in MP4 needs an even "
                       "width and height: choose an --upscale that makes both even", EXIT_USAGE)


def assemble(out_path, frame_files: list, source_clip, fps: Fraction | None = None) -> pathlib.Path:
    """Write the restored frames as ``out_path`` (MP4, H.264) with the frame rate and audio of ``source_clip``,
    through ComfyUI's VideoFromComponents.save_to (what Create Video + Save Video do). The whole clip is held in
    memory as float32 frames, as there."""
    import numpy as np
    import torch
    from comfy_api.latest import InputImpl, Types
    from PIL import Image

    out_path = pathlib.Path(out_path)
    if fps is None:
        fps = probe(source_clip).fps
    images = None
    for index, file in enumerate(frame_files):
        with Image.open(file) as img:
            frame = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
        if images is None:  # filled in place: one copy of the clip in memory, not a list and its stack
            images = torch.empty((len(frame_files), *frame.shape), dtype=torch.float32)
        if frame.shape != images.shape[1:]:
            raise CliError(f"the restored frame {file} of {source_clip} is {frame.shape[1]} x {frame.shape[0]} "
                           f"pixels, the first {images.shape[2]} x {images.shape[1]}: a clip's frames must share "
                           "one size")
        images[index] = frame
    if images is None:
        raise CliError(f"no restored frames to write for {source_clip}", EXIT_USAGE)
    _check_even(images.shape[2], images.shape[1], source_clip)
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, audio=source_audio(source_clip),
                                                                frame_rate=Fraction(fps)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    video.save_to(str(out_path))
    return out_path


def restore_clip(host, api: dict, info: ClipInfo, out_path, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                 seed: int | None = None, say=print) -> pathlib.Path:
    """The single-process clip restore: ``plan_chunks``, ``restore_chunk`` for each unit, ``assemble``."""
    chunks = plan_chunks(info, chunk_frames)
    files: list[pathlib.Path] = []
    try:
        for n, (start, count) in enumerate(chunks, 1):
            began = time.monotonic()
            files += restore_chunk(host, api, info.path, start, count, seed)
            if n == 1:  # an output size H.264 cannot take fails now, not after the last chunk
                from PIL import Image

                with Image.open(files[0]) as img:
                    _check_even(*img.size, info.path)
            say(f"    frames {start}-{start + count - 1} ({n}/{len(chunks)}) in {time.monotonic() - began:.1f} s")
        return assemble(out_path, files, info.path, info.fps)
    finally:
        for file in files:
            pathlib.Path(file).unlink(missing_ok=True)
