"""Blur kernels as data: small pure functions from a JSON-able *spec* to a normalised numpy kernel.

A spec is a dict ``{"type", "size", ...}``:

* ``iso`` / ``aniso``: bivariate Gaussian ``exp(-q/2)`` with ``q = x^T S^-1 x``,
  ``S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` (iso: sigma_y = sigma_x, theta = 0);
* ``generalized_iso`` / ``generalized_aniso``: ``exp(-(q^beta)/2)``;
* ``plateau_iso`` / ``plateau_aniso``: ``1 / (q^beta + 1)``;
* ``sinc``: circular low-pass ``omega_c J1(omega_c r) / (2 pi r)`` (centre ``omega_c^2 / (4 pi)``).

These are the formulas of BasicSR ``basicsr/data/degradations.py`` (grid centred at 0, x = column
offset, y = row offset); every kernel is divided by its sum. The Bessel function J1 is evaluated by the
trapezoid rule on Bessel's integral (exact to ~1e-15 here), so no scipy is needed. The ``draw_*``
functions make the random choices with a ``numpy.random.Generator`` in the official order.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

GAUSSIAN_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_TYPES = GAUSSIAN_TYPES + ("sinc",)


def mesh_grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets from the centre of a ``size`` x ``size`` kernel."""
    if size < 1 or size % 2 != 1:
        raise ValueError(f"kernel size must be a positive odd number, got {size}")
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy


def quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``q = [x y] S^-1 [x y]^T`` on the kernel grid for the rotated covariance S."""
    c, s = math.cos(theta), math.sin(theta)
    u = np.array([[c, -s], [s, c]])
    cov = u @ np.diag([sigma_x**2, sigma_y**2]) @ u.T
    inv = np.linalg.inv(cov)
    xx, yy = mesh_grid(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalise(k: np.ndarray) -> np.ndarray:
    return k / np.sum(k)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    return _normalise(np.exp(-0.5 * quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    return _normalise(np.exp(-0.5 * np.power(quadratic_form(size, sigma_x, sigma_y, theta), beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    return _normalise(1.0 / (np.power(quadratic_form(size, sigma_x, sigma_y, theta), beta) + 1.0))


def bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1(x) = 1/(2 pi) * integral over one period of cos(t - x sin t); the trapezoid rule converges
    geometrically for this periodic analytic integrand once the node count exceeds |x| comfortably."""
    x = np.asarray(x, dtype=np.float64)
    n = max(256, 2 * int(math.ceil(float(np.max(np.abs(x)))) if x.size else 0) + 64)
    t = 2.0 * math.pi * np.arange(n) / n
    return np.cos(t - x[..., None] * np.sin(t)).mean(axis=-1)


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """2-D circular low-pass (BasicSR ``circular_lowpass_kernel``, without ``pad_to``: zero padding
    does not change a filtered image)."""
    xx, yy = mesh_grid(size)
    r = np.sqrt(xx * xx + yy * yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * bessel_j1(omega_c * r) / (2.0 * math.pi * r)
    c = size // 2
    k[c, c] = omega_c**2 / (4.0 * math.pi)
    return _normalise(k)


def make_kernel(spec: dict) -> np.ndarray:
    """The float64 kernel a spec describes (sums to 1)."""
    t = spec["type"]
    size = int(spec["size"])
    if t == "sinc":
        return sinc_kernel(size, float(spec["omega_c"]))
    if t not in GAUSSIAN_TYPES:
        raise ValueError(f"unknown kernel type {t!r}; expected one of {', '.join(KERNEL_TYPES)}")
    sx, sy, th = float(spec["sigma_x"]), float(spec["sigma_y"]), float(spec["theta"])
    if t.endswith("iso") and not t.endswith("aniso"):
        sy, th = sx, 0.0
    if t in ("iso", "aniso"):
        return gaussian_kernel(size, sx, sy, th)
    if t.startswith("generalized"):
        return generalized_gaussian_kernel(size, sx, sy, th, float(spec["beta"]))
    return plateau_kernel(size, sx, sy, th, float(spec["beta"]))


# ----------------------------------------------------------------------------------------------
# Drawing (all randomness from one numpy Generator, in the order of the official code)


def choose(rng: np.random.Generator, names: Sequence[str], probs: Sequence[float]) -> str:
    """``random.choices(names, probs)``: one uniform draw against the cumulative probabilities."""
    total = float(sum(probs))
    u = rng.random() * total
    acc = 0.0
    for name, p in zip(names, probs):
        acc += p
        if u < acc:
            return name
    return names[-1]


def uniform(rng: np.random.Generator, r: Tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def draw_beta(rng: np.random.Generator, r: Tuple[float, float]) -> float:
    """BasicSR: with p 0.5 beta ~ U(low, 1), else U(1, high) (it assumes low <= 1 <= high; for an
    override range that excludes 1 we draw U(low, high) instead)."""
    lo, hi = r
    if lo <= 1.0 <= hi:
        if rng.random() < 0.5:
            return float(rng.uniform(lo, 1.0))
        return float(rng.uniform(1.0, hi))
    return float(rng.uniform(lo, hi))


def draw_mixed_kernel(
    rng: np.random.Generator,
    kernels: Sequence[Tuple[str, float]],
    size: int,
    sigma_range: Tuple[float, float],
    betag_range: Tuple[float, float] = (0.5, 8.0),
    betap_range: Tuple[float, float] = (0.5, 8.0),
) -> dict:
    """BasicSR ``random_mixed_kernels`` with sigma_x and sigma_y from the same range, rotation in
    [-pi, pi], no multiplicative kernel noise."""
    names = [k for k, _ in kernels]
    kind = choose(rng, names, [p for _, p in kernels])
    sx = uniform(rng, sigma_range)
    if kind.endswith("aniso"):
        sy = uniform(rng, sigma_range)
        theta = float(rng.uniform(-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    spec = {"type": kind, "size": int(size), "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith("generalized"):
        spec["beta"] = draw_beta(rng, betag_range)
    elif kind.startswith("plateau"):
        spec["beta"] = draw_beta(rng, betap_range)
    return spec


def draw_sinc_omega(rng: np.random.Generator, size: int, final: bool = False) -> float:
    """Cut-off of a sinc kernel: U(pi/3, pi) for sizes < 13 (and always for the final sinc),
    else U(pi/5, pi)."""
    lo = math.pi / 3 if (final or size < 13) else math.pi / 5
    return float(rng.uniform(lo, math.pi))


def draw_realesrgan_kernel(
    rng: np.random.Generator,
    sizes: Sequence[int],
    sinc_prob: float,
    kernels: Sequence[Tuple[str, float]],
    sigma_range: Tuple[float, float],
    betag_range: Tuple[float, float],
    betap_range: Tuple[float, float],
) -> dict:
    """One Real-ESRGAN blur kernel: random odd size, then sinc with ``sinc_prob`` else a mixed kernel."""
    size = int(sizes[int(rng.integers(len(sizes)))])
    if rng.random() < sinc_prob:
        return {"type": "sinc", "size": size, "omega_c": draw_sinc_omega(rng, size)}
    return draw_mixed_kernel(rng, kernels, size, sigma_range, betag_range, betap_range)


def draw_final_sinc(rng: np.random.Generator, sizes: Sequence[int], prob: float) -> Optional[dict]:
    """The final sinc filter with probability ``prob``; ``None`` means the identity (pulse) kernel."""
    if rng.random() < prob:
        size = int(sizes[int(rng.integers(len(sizes)))])
        return {"type": "sinc", "size": size, "omega_c": draw_sinc_omega(rng, size, final=True)}
    return None
