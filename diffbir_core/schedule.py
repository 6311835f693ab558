"""Noise schedules and timestep grids of the official DiffBIR samplers, as data.

Everything is computed in float64 numpy, as the official code does, and only cast to
float32 by callers that put the tables on a device. The grids differ per sampler and a
reimplementation that borrows another library's spacing silently changes results
(reference spec H.1), so each grid is written out here exactly:

* spaced (v1, v2, v2.1): IDDPM `space_timesteps` with Python `round`; includes 0 and 999.
* ddim (v2.1): LDM "uniform" grid shifted by +1; the top timestep for 10 steps is 901.
* edm_* (v2.1): `linspace(999, 0, N, endpoint=False)` truncated to int, alphas_cumprod at
  the first step forced to 1e-8 (sigma_max = 1e4) even for the non-zsnr schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012
LATENT_SCALE = 0.18215


def scaled_linear_betas(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END
) -> np.ndarray:
    """LDM's "linear" schedule, which is linear in sqrt(beta) ("scaled linear")."""
    return np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023: shift and scale sqrt(alphas_cumprod) so the last step has SNR 0.

    The first value is kept, the last becomes exactly 0, so beta_T = 1 (pure noise).
    """
    sqrt_ac = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    ac = sqrt_ac**2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return 1.0 - alphas


@dataclass(frozen=True)
class DiffusionSchedule:
    """The training diffusion of one DiffBIR version (v1/v2: eps; v2.1: zsnr + v)."""

    betas: np.ndarray
    parameterization: str = "eps"  # "eps" or "v"

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0.0)

    @classmethod
    def from_config(cls, cfg: dict) -> "DiffusionSchedule":
        """Build from the official `diffusion_cfg` dict (linear_start, linear_end, timesteps, zero_snr, parameterization)."""
        betas = scaled_linear_betas(
            int(cfg.get("timesteps", NUM_TRAIN_TIMESTEPS)),
            float(cfg.get("linear_start", LINEAR_START)),
            float(cfg.get("linear_end", LINEAR_END)),
        )
        if cfg.get("zero_snr", False):
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas=betas, parameterization=cfg.get("parameterization", "eps"))

    @classmethod
    def for_version(cls, version: str) -> "DiffusionSchedule":
        """v1 and v2 train on SD 2.1-base (eps); v2.1 on a zero-terminal-SNR v-prediction fine-tune."""
        if version == "v2.1":
            return cls.from_config({"zero_snr": True, "parameterization": "v"})
        if version in ("v1", "v2"):
            return cls.from_config({})
        raise ValueError(f"unknown DiffBIR version {version!r}; expected 'v1', 'v2' or 'v2.1'")

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, parameterization: str = "eps") -> "DiffusionSchedule":
        """The schedule whose cumulative product is `alphas_cumprod` (betas = 1 - ac_t / ac_{t-1})."""
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        prev = np.concatenate([[1.0], ac[:-1]])
        return cls(betas=1.0 - ac / prev, parameterization=parameterization)

    @classmethod
    def from_training_sigmas(cls, sigmas, parameterization: str, zero_snr: bool = False,
                             linear_start: float | None = None, linear_end: float | None = None
                             ) -> "DiffusionSchedule":
        """The official schedule behind a host's table of training sigmas (one per timestep).

        When the host names a scaled-linear schedule (linear_start / linear_end) whose sigmas match the table,
        the official float64 schedule is rebuilt from the config (for a zero-terminal-SNR schedule with
        alphas_cumprod(T-1) = 0 exactly, where hosts keep a tiny positive value); otherwise the table itself
        defines the schedule (ac = 1 / (1 + sigma^2)).
        """
        host = np.asarray(sigmas, dtype=np.float64)
        n = len(host)
        if linear_start is not None and linear_end is not None:
            official = cls.from_config({"timesteps": n, "linear_start": linear_start, "linear_end": linear_end,
                                        "zero_snr": zero_snr, "parameterization": parameterization})
            k = n - 1 if zero_snr else n  # the zero-terminal sigma is infinite here, finite in the host
            if np.allclose(training_sigmas(official.alphas_cumprod)[:k], host[:k], rtol=1e-4, atol=0.0):
                return official
        return cls.from_alphas_cumprod(1.0 / (1.0 + host**2), parameterization)

    def q_sample(self, x0, t: int, noise):
        """Forward diffusion x_t = sqrt(ac_t) x0 + sqrt(1 - ac_t) noise (used for start point and noise_aug)."""
        ac = float(self.alphas_cumprod[t])
        return math.sqrt(ac) * x0 + math.sqrt(1.0 - ac) * noise


# --------------------------------------------------------------------------------------
# spaced (respaced ancestral DDPM)


def space_timesteps(num_timesteps: int, section_counts: str | list[int] | int) -> list[int]:
    """IDDPM's timestep respacing: the sorted list of original timesteps to keep.

    `section_counts` is either an int / list of per-section step counts (the timeline is
    cut into equal sections and each section strided with Python `round`), or the string
    "ddimN" (a fixed integer stride giving exactly N steps).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {wanted} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]

    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # Accumulated, not multiplied: the float error of the running sum decides some
        # round-half cases (e.g. 149 vs 150 for "10,15,20" of 300), and parity needs it.
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += frac_stride
        start += size
    return sorted(set(kept))


@dataclass(frozen=True)
class SpacedTables:
    """Respaced DDPM coefficient tables, indexed by the respaced step index (0 = cleanest)."""

    timesteps: np.ndarray  # original model timesteps, ascending
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray


def spaced_tables(alphas_cumprod: np.ndarray, num_steps: int) -> SpacedTables:
    """The respaced schedule of the official SpacedSampler (guided-diffusion maths).

    The UNet still receives the original timestep value, while these tables are indexed
    with the respaced index, which is why both are kept.
    """
    if num_steps < 2:
        # The official sampler indexes past a one-element grid and crashes; an ancestral
        # sampler needs a start and an end, so say so instead.
        raise ValueError(f"the spaced sampler needs at least 2 steps (got {num_steps})")
    ts = np.asarray(space_timesteps(len(alphas_cumprod), str(num_steps)), dtype=np.int64)
    ac = alphas_cumprod[ts]
    prev = np.concatenate([[1.0], ac[:-1]])
    betas = 1.0 - ac / prev
    with np.errstate(divide="ignore", invalid="ignore"):
        # With zero-terminal SNR ac[-1] = 0 and the eps-path reciprocals are infinite; the
        # official tables carry those infinities and the v-path never reads them.
        sqrt_recip = np.sqrt(1.0 / ac)
        sqrt_recipm1 = np.sqrt(1.0 / ac - 1.0)
        post_var = betas * (1.0 - prev) / (1.0 - ac)
        coef1 = betas * np.sqrt(prev) / (1.0 - ac)
        coef2 = (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - ac)
        # The variance at index 0 is 0; log of it is replaced by the next value (IDDPM).
        log_var = np.log(np.concatenate([post_var[1:2], post_var[1:]]))
    return SpacedTables(
        timesteps=ts,
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=sqrt_recip,
        sqrt_recipm1_alphas_cumprod=sqrt_recipm1,
        posterior_variance=post_var,
        posterior_log_variance_clipped=log_var,
        posterior_mean_coef1=coef1,
        posterior_mean_coef2=coef2,
    )


# --------------------------------------------------------------------------------------
# ddim


def ddim_timesteps(num_steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """LDM `make_ddim_timesteps("uniform")`: a stride of T // N, then +1 (so 999 is never used)."""
    stride = num_timesteps // num_steps
    return np.asarray(range(0, num_timesteps, stride), dtype=np.int64) + 1


@dataclass(frozen=True)
class DDIMTables:
    timesteps: np.ndarray
    ddim_alphas: np.ndarray
    ddim_alphas_prev: np.ndarray
    ddim_sigmas: np.ndarray
    ddim_sqrt_alphas: np.ndarray
    ddim_sqrt_one_minus_alphas: np.ndarray


def ddim_tables(alphas_cumprod: np.ndarray, num_steps: int, eta: float = 0.0) -> DDIMTables:
    ts = ddim_timesteps(num_steps, len(alphas_cumprod))
    a = alphas_cumprod[ts]
    # LDM uses alphas_cumprod[0] (not 1) as the "previous" value of the first step.
    a_prev = np.concatenate([alphas_cumprod[:1], alphas_cumprod[ts[:-1]]])
    sigmas = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    return DDIMTables(
        timesteps=ts,
        ddim_alphas=a,
        ddim_alphas_prev=a_prev,
        ddim_sigmas=sigmas,
        ddim_sqrt_alphas=np.sqrt(a),
        ddim_sqrt_one_minus_alphas=np.sqrt(1.0 - a),
    )


# --------------------------------------------------------------------------------------
# edm (k-diffusion solvers over a discrete VP schedule)

EDM_FIRST_ALPHA_CUMPROD = 1e-8


def edm_timesteps(num_steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Descending model timesteps of the EDM samplers plus the final 0 (sigma = 0)."""
    ts = np.linspace(num_timesteps - 1, 0, num_steps, endpoint=False).astype(np.int64)
    return np.concatenate([ts, [0]])


def edm_sigmas(alphas_cumprod: np.ndarray, num_steps: int) -> np.ndarray:
    """sigma = sqrt((1 - ac) / ac) on the EDM grid, with ac at the first step forced to 1e-8.

    The official code forces the first value for every version, so v1/v2 also start at
    sigma_max = 1e4 instead of their natural ~14.6. A trailing sigma = 0 ends the grid.
    """
    ts = edm_timesteps(num_steps, len(alphas_cumprod))[:-1]
    ac = alphas_cumprod[ts].copy()
    ac[0] = EDM_FIRST_ALPHA_CUMPROD
    return np.concatenate([np.sqrt((1.0 - ac) / ac), [0.0]])


def training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma of every training timestep, used to map a sigma back to the nearest timestep."""
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


# --------------------------------------------------------------------------------------
# parameterisation helpers


def predict_x0(x_t, model_out, sqrt_ac: float, sqrt_one_minus_ac: float, parameterization: str):
    """x0 from the model output at one step: eps -> (x - s1m*eps)/s; v -> s*x - s1m*v."""
    if parameterization == "v":
        return sqrt_ac * x_t - sqrt_one_minus_ac * model_out
    if parameterization == "eps":
        return (x_t - sqrt_one_minus_ac * model_out) / sqrt_ac
    raise ValueError(f"unknown parameterization {parameterization!r}")


def predict_eps(x_t, model_out, sqrt_ac: float, sqrt_one_minus_ac: float, parameterization: str):
    """eps from the model output: v -> s*v + s1m*x."""
    if parameterization == "v":
        return sqrt_ac * model_out + sqrt_one_minus_ac * x_t
    if parameterization == "eps":
        return model_out
    raise ValueError(f"unknown parameterization {parameterization!r}")
