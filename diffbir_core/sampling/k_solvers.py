"""The eleven EDM-family solvers of DiffBIR v2.1 (its vendored k-diffusion), over an x0-denoiser.

Every solver has k-diffusion's / ComfyUI's KSAMPLER signature

    sample_xxx(model, x, sigmas, extra_args=None, callback=None, disable=None, <its settings>, noise=None, noise_sampler=None)

with `model(x, sigma, **extra_args)` returning the denoised x0 for x at noise level sigma
(x = x0 + sigma * eps, "EDM" scaling), `sigmas` descending and ending with 0. So they plug
into ComfyUI as `comfy.samplers.KSAMPLER(sample_xxx)` unchanged (see `ksampler.py`).

Randomness: `noise` is a `noise.NoiseSource` (default: a `GeneratorNoise` seeded with
`extra_args["seed"]` when the host passes one, else torch's global RNG). `noise_sampler`, a
k-diffusion style `f(sigma, sigma_next)`, overrides the ancestral / SDE noise. The SDE solvers
take their increments from `noise.brownian_sampler(x, sigma_min, sigma_max)` (a Brownian tree).

Draw order as in the official copy: euler, heun and dpm_2 draw one `randn_like(x)` per step
BEFORE testing the churn factor, i.e. even with s_churn = 0 (used only when gamma > 0; churn
applies only where s_tmin <= sigma <= s_tmax); the ancestral solvers (euler_a, dpm_2_a,
dpm++_2s_a) draw one per step with sigma_next > 0; dpm++_sde makes two Brownian calls per
such step (sub-step first), 2m_sde / 3m_sde one (none when eta = 0); dpm++_2m and lms none.
The arithmetic follows k-diffusion in float32 on the sigma tensor; lms integrates its
Lagrange coefficients exactly (k-diffusion uses scipy quad, exact for these polynomials).
"""

from __future__ import annotations

import numpy as np
import torch

from .noise import GeneratorNoise, GlobalNoise, NoiseSource


def _append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return x[(...,) + (None,) * (ndim - x.ndim)]


def to_d(x, sigma, denoised):
    """Karras ODE derivative dx/dsigma from a denoiser output."""
    return (x - denoised) / _append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up) of an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _source(noise: NoiseSource | None, extra_args: dict) -> NoiseSource:
    if noise is not None:
        return noise
    seed = extra_args.get("seed")
    return GeneratorNoise(seed) if seed is not None else GlobalNoise()


def _step_noise(noise: NoiseSource, noise_sampler, x):
    if noise_sampler is not None:
        return noise_sampler
    return lambda sigma, sigma_next: noise.randn_like(x)


def _brownian(noise: NoiseSource, noise_sampler, x, sigmas):
    if noise_sampler is not None:
        return noise_sampler
    sampler = noise.brownian_sampler(x, sigmas[sigmas > 0].min(), sigmas.max())
    return lambda sigma, sigma_next: sampler(sigma, sigma_next).to(device=x.device, dtype=x.dtype)


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise):
    """Karras churn: returns (x, sigma_hat); draws one randn_like(x) whether or not it is used."""
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = noise.randn_like(x) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _cb(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise=None, noise_sampler=None):
    return _ancestral(model, x, sigmas, extra_args, callback, eta, s_noise, noise, noise_sampler, _euler_step,
                      lambda sigma_next, sigma_down: sigma_next > 0)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def _dpm_2_step(model, x, d, sigma, sigma_to, s_in, extra_args):
    """DPM-Solver-2 from sigma to sigma_to: the derivative at the log-midpoint; an Euler step when sigma_to is 0."""
    if sigma_to == 0:
        return x + d * (sigma_to - sigma)
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = _dpm_2_step(model, x, d, sigma_hat, sigmas[i + 1], s_in, extra_args)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise=None, noise_sampler=None):
    # The official copy adds (and draws) the ancestral noise only after a midpoint step, i.e. where sigma_down > 0.
    return _ancestral(model, x, sigmas, extra_args, callback, eta, s_noise, noise, noise_sampler, _dpm_2_step,
                      lambda sigma_next, sigma_down: sigma_down != 0)


def _euler_step(model, x, d, sigma, sigma_to, s_in, extra_args):
    return x + d * (sigma_to - sigma)


def _ancestral(model, x, sigmas, extra_args, callback, eta, s_noise, noise, noise_sampler, step, draws):
    """The ancestral loop of euler_a and dpm_2_a: a deterministic `step` down to sigma_down, then noise of
    sigma_up where `draws(sigma_next, sigma_down)` (the two solvers test different things, which matters for
    the draw order when eta > 1)."""
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    step_noise = _step_noise(noise, noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        x = step(model, x, d, sigmas[i], sigma_down, s_in, extra_args)
        if draws(sigmas[i + 1], sigma_down):
            x = x + step_noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial j on t[i], t[i-1], ... (exact)."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    t = np.asarray(t, dtype=np.float64)
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if j == k:
            continue
        poly = poly * np.polynomial.Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4, noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    order = int(order)
    if order < 1:
        raise ValueError(f"lms order must be >= 1, got {order}")
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    step_noise = _step_noise(noise, noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + step_noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise=None, noise_sampler=None, r=1 / 2):
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    brownian = _brownian(noise, noise_sampler, x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
            s_ = _t_fn(sd)
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + brownian(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
            t_next_ = _t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + brownian(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise=None, noise_sampler=None, solver_type="midpoint"):
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    brownian = _brownian(noise, noise_sampler, x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    h_last = None
    h = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + brownian(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = _source(noise, extra_args)
    brownian = _brownian(noise, noise_sampler, x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + brownian(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# name (without "edm_") -> (solver, the official settings it reads)
SOLVERS = {
    "euler": (sample_euler, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "euler_a": (sample_euler_ancestral, ("eta", "s_noise")),
    "heun": (sample_heun, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpm_2": (sample_dpm_2, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpm_2_a": (sample_dpm_2_ancestral, ("eta", "s_noise")),
    "lms": (sample_lms, ("order",)),
    "dpm++_2s_a": (sample_dpmpp_2s_ancestral, ("eta", "s_noise")),
    "dpm++_sde": (sample_dpmpp_sde, ("eta", "s_noise")),
    "dpm++_2m": (sample_dpmpp_2m, ()),
    "dpm++_2m_sde": (sample_dpmpp_2m_sde, ("eta", "s_noise")),
    "dpm++_3m_sde": (sample_dpmpp_3m_sde, ("eta", "s_noise")),
}

