"""Injectable noise sources: every random draw of a sampling run goes through one object.

The official code draws from torch's global RNG, so its noise depends on the device and on
everything else that consumed the RNG (reference spec H.15). Here a run takes a `NoiseSource`:

* `GeneratorNoise(seed)`: one seeded CPU `torch.Generator`; every draw is made on the CPU in
  float32 and then moved, so the same seed gives the same image on any device.
* `RecordedNoise(randn=[...], brownian=[...])`: replays recorded draws in call order (the golden
  files' `noise.randn_XX` / `noise.brownian_XX`) and fails loudly when a run asks for more, or
  for another shape, than was recorded.
* `GlobalNoise()`: torch's global CPU RNG (what a host such as ComfyUI seeds itself).
* `FrameNoise(sources)`: a batch whose frame k draws from `sources[k]` (`batch_noise` builds it for the two
  noise modes of a batch: per frame, frame k of a clip from seed + k, or shared, every frame the same draws).

Interface used by the samplers:

* `randn_like(x)`: one standard-normal tensor shaped like x (x_T, noise_aug, ancestral/churn
  noise, the VAE posterior `.sample()` of latent-space guidance).
* `brownian_sampler(x, sigma_min, sigma_max)`: called once at the start of an SDE sampler run
  (edm_dpm++_sde / 2m_sde / 3m_sde); returns `f(sigma, sigma_next)` giving unit-variance
  Brownian increments, i.e. (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), as
  k-diffusion's BrownianTreeNoiseSampler. `brownian(sigma, sigma_next, like)` is the same
  for a sampler created by the last `brownian_sampler` call.

Default Brownian source: a torchsde BrownianTree over [sigma_min, sigma_max] whose seed is
drawn from this source's generator (as the official code draws it from the global RNG), built
on the CPU so it does not depend on the device. Without torchsde (ComfyUI always has it) the
increments are plain independent normals from the same generator: statistically the same for
one pass over a fixed grid, but not a consistent Brownian path across different grids.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch

try:  # optional: ComfyUI requires torchsde, diffbir_core itself does not
    import torchsde
except ImportError:  # pragma: no cover - depends on the environment
    torchsde = None

_SEED_HIGH = 2**63 - 1


class NoiseExhausted(RuntimeError):
    """A replayed run asked for a draw that was not recorded (or of another shape)."""


class NoiseSource:
    """Base class: subclasses implement `_draw(shape)` (float32, CPU) and `_seed()`."""

    _brownian: Callable | None = None

    def _draw(self, shape: torch.Size) -> torch.Tensor:
        raise NotImplementedError

    def _seed(self) -> int:
        raise NotImplementedError

    def randn(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        return self._draw(torch.Size(shape)).to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, device=x.device, dtype=x.dtype)

    def brownian_sampler(self, x: torch.Tensor, sigma_min, sigma_max) -> Callable:
        """Unit-variance Brownian increments over [sigma_min, sigma_max] (see module doc)."""
        self._brownian = _make_brownian(self, x, float(sigma_min), float(sigma_max))
        return self._brownian

    def brownian(self, sigma, sigma_next, like: torch.Tensor) -> torch.Tensor:
        if self._brownian is None:
            raise RuntimeError("brownian() needs a prior brownian_sampler(x, sigma_min, sigma_max) call")
        return self._brownian(sigma, sigma_next).to(device=like.device, dtype=like.dtype)


class GeneratorNoise(NoiseSource):
    """All draws from one seeded CPU generator (device-independent results)."""

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        if generator is None:
            generator = torch.Generator(device="cpu")
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        elif generator.device.type != "cpu":
            raise ValueError("GeneratorNoise needs a CPU generator (draws are made on the CPU, then moved)")
        self.generator = generator

    def _draw(self, shape):
        return torch.randn(shape, generator=self.generator, dtype=torch.float32)

    def _seed(self):
        return int(torch.randint(0, _SEED_HIGH, [], generator=self.generator))


class GlobalNoise(NoiseSource):
    """torch's global CPU RNG (the host seeds it, e.g. ComfyUI's sampler nodes)."""

    def _draw(self, shape):
        return torch.randn(shape, dtype=torch.float32)

    def _seed(self):
        return int(torch.randint(0, _SEED_HIGH, []))


class RecordedNoise(NoiseSource):
    """Replays recorded draws, in call order, unchanged."""

    def __init__(self, randn: Iterable[torch.Tensor] = (), brownian: Iterable[torch.Tensor] = ()):
        self.randn_draws = [t.detach().float().cpu() for t in randn]
        self.brownian_draws = [t.detach().float().cpu() for t in brownian]
        self.randn_used = 0
        self.brownian_used = 0

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "noise.") -> RecordedNoise:
        """From golden-file tensors `noise.randn_XX` / `noise.brownian_XX` (ordered by XX)."""

        def ordered(kind):
            keys = [k for k in tensors if k.startswith(f"{prefix}{kind}_")]
            return [tensors[k] for k in sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]))]

        return cls(ordered("randn"), ordered("brownian"))

    def _draw(self, shape):
        if self.randn_used >= len(self.randn_draws):
            raise NoiseExhausted(f"randn draw #{self.randn_used} {tuple(shape)} requested, only {len(self.randn_draws)} recorded")
        t = self.randn_draws[self.randn_used]
        if t.shape != shape:
            raise NoiseExhausted(f"randn draw #{self.randn_used}: recorded shape {tuple(t.shape)}, requested {tuple(shape)}")
        self.randn_used += 1
        return t

    def _seed(self):  # the tree seed is not part of a recording
        return 0

    def brownian_sampler(self, x, sigma_min, sigma_max):
        def replay(sigma, sigma_next):
            if self.brownian_used >= len(self.brownian_draws):
                raise NoiseExhausted(f"brownian draw #{self.brownian_used} requested, only {len(self.brownian_draws)} recorded")
            t = self.brownian_draws[self.brownian_used]
            if t.shape != x.shape:
                raise NoiseExhausted(f"brownian draw #{self.brownian_used}: recorded shape {tuple(t.shape)}, needed {tuple(x.shape)}")
            self.brownian_used += 1
            return t

        self._brownian = replay
        return replay

    def check_consumed(self) -> None:
        """Raise unless every recorded draw was used (a replay that used fewer drifted)."""
        if self.randn_used != len(self.randn_draws) or self.brownian_used != len(self.brownian_draws):
            raise NoiseExhausted(
                f"recorded noise not consumed exactly: randn {self.randn_used}/{len(self.randn_draws)}, "
                f"brownian {self.brownian_used}/{len(self.brownian_draws)}"
            )


NOISE_MODES = ("per frame", "shared")
_SEED_SPACE = 2**64  # ComfyUI's seed widgets take 0 .. 2^64 - 1; seed + k wraps around inside that range


def frame_seed(seed: int, frame: int) -> int:
    """The seed of frame `frame` of a clip in "per frame" noise: seed + frame (wrapping inside 0 .. 2^64 - 1)."""
    return (int(seed) + int(frame)) % _SEED_SPACE


class FrameNoise(NoiseSource):
    """A batch's noise, frame by frame: every draw of shape (B, ...) takes row k from `sources[k]` (a (1, ...) draw
    of its own), so frame k of a batch gets exactly the draws it would get sampled alone from `sources[k]`. A
    source listed for several frames draws once per draw and gives all of them the same rows (shared noise)."""

    def __init__(self, sources):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("FrameNoise needs at least one frame's source")

    def _rows(self, shape: torch.Size, draw) -> torch.Tensor:
        if shape[0] != len(self.sources):
            raise ValueError(f"a draw of batch {shape[0]} from the noise of {len(self.sources)} frames")
        made = {}
        for source in self.sources:  # each distinct source draws once, in frame order
            if id(source) not in made:
                made[id(source)] = draw(source)
        return torch.cat([made[id(source)] for source in self.sources])

    def _draw(self, shape):
        one = torch.Size((1, *shape[1:]))
        return self._rows(torch.Size(shape), lambda source: source._draw(one))

    def _seed(self):  # only a Brownian fallback asks; each frame's tree takes its own source's seed
        return self.sources[0]._seed()

    def brownian_sampler(self, x, sigma_min, sigma_max):
        made = {}
        for k, source in enumerate(self.sources):
            if id(source) not in made:
                made[id(source)] = source.brownian_sampler(x[k:k + 1], sigma_min, sigma_max)
        samplers = [made[id(source)] for source in self.sources]
        if x.shape[0] != len(samplers):
            raise ValueError(f"a Brownian path of batch {x.shape[0]} from the noise of {len(samplers)} frames")

        def increment(sigma, sigma_next):
            rows = {}
            for source, sampler in zip(self.sources, samplers):
                if id(source) not in rows:
                    rows[id(source)] = sampler(sigma, sigma_next).float().cpu()
            return torch.cat([rows[id(source)] for source in self.sources])

        self._brownian = increment
        return increment


def batch_noise(make_source: Callable[[int], NoiseSource], seed: int, first: int, count: int,
                mode: str = "per frame") -> NoiseSource:
    """The noise of `count` frames that are frames first .. first + count - 1 of a clip.

    "per frame": frame k draws from `make_source(frame_seed(seed, k))`, so frame k of any batch or chunk is the
    frame sampled alone with seed + k, and a clip cut into chunks gives the same frames when the chunk starting
    at frame k runs with seed + k. A single frame (first 0) is `make_source(seed)` itself: a batch of one draws
    exactly as before batches had modes. "shared": every frame draws from one `make_source(seed)` (the same start
    noise and sampler noise for all frames, against flicker): identical input frames give identical output frames.
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {', '.join(NOISE_MODES)}, got {mode!r}")
    if count < 1:
        raise ValueError(f"a batch needs at least one frame, got {count}")
    if mode == "shared":
        source = make_source(int(seed))
        return source if count == 1 else FrameNoise([source] * count)
    if count == 1:
        return make_source(frame_seed(seed, first))
    return FrameNoise([make_source(frame_seed(seed, first + k)) for k in range(count)])


def _make_brownian(source: NoiseSource, x: torch.Tensor, sigma_min: float, sigma_max: float) -> Callable:
    shape = x.shape
    if torchsde is None or not sigma_min < sigma_max:
        # Documented fallback: independent unit normals (exact in law for one pass over a grid).
        return lambda sigma, sigma_next: source._draw(shape)
    seed = source._seed()
    # Built on the CPU in float32 so the path does not depend on the device of x.
    w0 = torch.zeros(shape, dtype=torch.float32)
    tree = torchsde.BrownianTree(sigma_min, w0, sigma_max, entropy=seed)

    def increment(sigma, sigma_next):
        a, b = float(sigma), float(sigma_next)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        lo, hi = max(lo, sigma_min), min(hi, sigma_max)  # guard float32 rounding at the ends
        with warnings.catch_warnings():
            # torchsde warns when a query sits a rounding error outside its interval (harmless;
            # k-diffusion's tree triggers the same warning)
            warnings.filterwarnings("ignore", message="Should have ta>=t0", category=UserWarning)
            return tree(lo, hi) * sign / abs(b - a) ** 0.5

    return increment
