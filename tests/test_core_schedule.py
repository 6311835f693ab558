"""Schedules as data: the documented grids, and the zero-terminal-SNR rescale's defining properties.

(The complete tables are checked against the official ones by the golden runner, test_core_golden.py.)
"""

import numpy as np
import pytest

from diffbir_core import schedule as S


def test_documented_grids():
    assert S.space_timesteps(1000, "5") == [0, 250, 500, 749, 999]
    assert list(S.ddim_timesteps(10)) == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert list(S.edm_timesteps(10)) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]


def test_zero_terminal_snr():
    plain = S.DiffusionSchedule.for_version("v2")
    zsnr = S.DiffusionSchedule.for_version("v2.1")
    assert not plain.zero_terminal_snr and zsnr.zero_terminal_snr and zsnr.parameterization == "v"
    assert zsnr.alphas_cumprod[0] == pytest.approx(plain.alphas_cumprod[0], rel=1e-12)
    assert zsnr.betas[-1] == 1.0


def test_edm_first_sigma_is_forced_for_every_version():
    for version in ("v1", "v2.1"):
        sig = S.edm_sigmas(S.DiffusionSchedule.for_version(version).alphas_cumprod, 10)
        assert sig[0] == pytest.approx(1e4, rel=1e-6) and sig[-1] == 0.0 and np.all(np.diff(sig) < 0)


def test_spaced_sampler_refuses_one_step():
    with pytest.raises(ValueError, match="at least 2 steps"):
        S.spaced_tables(S.DiffusionSchedule.for_version("v2").alphas_cumprod, 1)


def test_v_and_eps_predictions_agree():
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal(8), rng.standard_normal(8)
    a = 0.3
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    for out, p in ((eps, "eps"), (v, "v")):
        assert np.allclose(S.predict_x0(xt, out, np.sqrt(a), np.sqrt(1 - a), p), x0)
        assert np.allclose(S.predict_eps(xt, out, np.sqrt(a), np.sqrt(1 - a), p), eps)
