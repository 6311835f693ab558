"""Seeded test images shared by the core and node tests (smooth content plus noise, so that restorers,
degradations and metrics see image-like data rather than white noise), and image files, whole or damaged, for the
bad-input tests (tests/test_cli.py, tests/test_bad_inputs.py)."""

import io
import struct
import zlib

import numpy as np
import torch


def smooth_image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """An HxWx3 float32 image in [0, 1]: three smooth waves plus N(0, 0.08) noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    img = np.stack([0.5 + 0.4 * np.sin(9 * x + 3 * y), 0.5 + 0.4 * np.cos(7 * y - 4 * x), (x + y) / 2], -1)
    img = img + 0.08 * rng.standard_normal((h, w, 3))
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))


def image_pair(h: int, w: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean, clean + N(0, noise)) as HxWx3 float32 arrays in [0, 1], for PSNR / SSIM checks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a = np.stack([0.5 + 0.4 * np.sin(11 * x), 0.5 + 0.4 * np.cos(5 * y + 2 * x), x * y], -1)
    a = np.clip(a + 0.03 * rng.standard_normal(a.shape), 0, 1)
    b = np.clip(a + noise * rng.standard_normal(a.shape), 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's SSIM with the settings of the official metric (gaussian 11x11, sigma 1.5)."""
    import skimage.metrics as skm

    return skm.structural_similarity(
        a.astype(np.float64), b.astype(np.float64), data_range=1.0, channel_axis=-1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )


def photo_bytes(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    """A noise photo (width, height) as `fmt` (JPEG at quality 90, PNG, ...) file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels with almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def write_clip(path, frames: int = 5, size: tuple[int, int] = (64, 48), fps: int = 12, audio: bool = True,
               seed: int = 0, key_every: int | None = None) -> None:
    """A short H.264 clip (width, height) of smooth random frames at `fps`, with a 440 Hz sine as AAC audio of the
    clip's duration (16 kHz, the encoder's stereo) when `audio`, written with PyAV (ComfyUI's video library).
    `key_every`: a key frame every so many frames (x264 then places B-frames between), else x264's choice."""
    import av

    w, h = size
    rate = 16000
    with av.open(str(path), mode="w") as out:
        options = {"g": str(key_every), "keyint_min": str(key_every), "sc_threshold": "0"} if key_every else {}
        video = out.add_stream("h264", rate=fps, options=options)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        sound = out.add_stream("aac", rate=rate) if audio else None  # every stream before the first packet
        for i in range(frames):
            rgb = (smooth_image(h, w, seed + i).numpy() * 255).round().astype(np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(video.encode(None))
        if sound is not None:
            t = np.arange(round(rate * frames / fps)) / rate
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, 0
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))


def clip_facts(path) -> dict:
    """What a clip holds, decoded with PyAV: frames (count), fps, size (w, h), audio_seconds (None without)."""
    from fractions import Fraction

    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate)
        size = (stream.width, stream.height)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        seconds = None
        if audio is not None:
            samples = sum(f.samples for p in container.demux(audio) for f in p.decode())
            seconds = samples / audio.sample_rate
    return {"frames": frames, "fps": fps, "size": size, "audio_seconds": seconds}
