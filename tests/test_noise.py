"""Noise models: PCM statistics, the chip model calibrated on the real read-back."""

import dataclasses
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import fusion_jax as fj
from fusion_jax import noise
from fusion_jax.noise import FusionChipNoise, PCMLikeNoise, _draws, calibration

# Devices per statistical check, and the size of most other samples: an eager sample
# compiles each of its operations once per size.
N = 50_000
Z = 4.5  # tolerance in standard errors


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _sigma_prog(g, g_max):
    """REFERENCE.md programming noise, written out independently of the module."""
    r = g / g_max
    return (0.26348 + 1.9650 * r - 1.1731 * r * r) * g_max / 25.0


def _drift_mu_sd(g_rel):
    lr = math.log(max(g_rel, 1e-7))
    mu = min(max(-0.0155 * lr + 0.0244, 0.049), 0.1)
    return mu, min(max(-0.0125 * lr - 0.0059, 0.008), 0.045)


def _folded_normal(mu, sd):
    """Mean and std of |mu + sd * xi|."""
    mean = sd * math.sqrt(2.0 / math.pi) * math.exp(-mu * mu / (2 * sd * sd)) + mu * (
        1.0 - 2.0 * _cdf(-mu / sd)
    )
    return mean, math.sqrt(mu * mu + sd * sd - mean * mean)


def _assert_mean_std(x, mean, std, what):
    """Sample mean and std within Z standard errors (the std's from the sample kurtosis)."""
    x = np.asarray(x, np.float64)
    n = x.size
    m4 = np.mean((x - x.mean()) ** 4)
    se_std = math.sqrt(max(m4 - x.var() ** 2, 0.0) / n) / (2 * std)
    assert abs(x.mean() - mean) < Z * std / math.sqrt(n), (what, x.mean(), mean)
    assert abs(x.std() - std) < Z * se_std + 1e-6, (what, x.std(), std)


def _full(value, n=N):
    return jnp.full((n,), value, jnp.float32)


@jax.jit
def _jit_sample(model, g, key, t_inference):
    """``model.sample`` at g_max = 40 uS as one compiled program (the model's fields traced).

    For data the test needs rather than checks: an eager ``sample`` compiles
    each of its operations for each new shape.
    """
    return model.sample(g, key, g_max=40.0, t_inference=t_inference)


# ----------------------------------------------------------------------------- PCMLikeNoise


@pytest.mark.parametrize("g_max", [25.0, 10.0])
def test_pcm_programming_noise_matches_formula(g_max):
    target = 0.8 * g_max  # far from the clamp: 18 sigma
    model = PCMLikeNoise(read_noise_scale=0.0)  # t_inference = 0: t = t0, no drift
    out = model.sample(_full(target), jax.random.key(0), g_max=g_max, t_inference=0.0)
    _assert_mean_std(out, target, _sigma_prog(target, g_max), "programming")


def test_pcm_programming_noise_clamp_at_zero():
    target, g_max = 0.5, 25.0
    sigma = _sigma_prog(target, g_max)
    k = target / sigma  # 1.65 sigma: the clamp removes ~5% of the mass
    out = np.asarray(
        PCMLikeNoise(read_noise_scale=0.0).sample(
            _full(target), jax.random.key(1), g_max=g_max, t_inference=0.0
        ),
        np.float64,
    )
    rect_mean = target * _cdf(k) + sigma * _phi(k)
    rect_second = (target**2 + sigma**2) * _cdf(k) + target * sigma * _phi(k)
    rect_std = math.sqrt(rect_second - rect_mean**2)
    _assert_mean_std(out, rect_mean, rect_std, "rectified")
    p0 = _cdf(-k)
    assert abs((out == 0).mean() - p0) < Z * math.sqrt(p0 * (1 - p0) / N)


@pytest.mark.parametrize("g_rel", [0.8, 0.01])
def test_pcm_drift_log_ratio(g_rel):
    g_max, t = 25.0, 1e4
    target = g_rel * g_max
    model = PCMLikeNoise(prog_noise_scale=0.0, read_noise_scale=0.0)
    out = model.sample(_full(target), jax.random.key(2), g_max=g_max, t_inference=t)
    log_ratio = np.log(np.asarray(out, np.float64) / target)
    nu_mean, nu_std = _folded_normal(*_drift_mu_sd(g_rel))
    scale = math.log((t + 20.0) / 20.0)
    _assert_mean_std(log_ratio, -nu_mean * scale, nu_std * scale, "drift")

    doubled = dataclasses.replace(model, drift_scale=2.0).sample(
        _full(target), jax.random.key(2), g_max=g_max, t_inference=t
    )
    np.testing.assert_allclose(
        np.log(np.asarray(doubled) / target), 2 * log_ratio, rtol=1e-4, atol=1e-6
    )
    no_time = model.sample(_full(target), jax.random.key(2), g_max=g_max, t_inference=0.0)
    np.testing.assert_array_equal(no_time, _full(target))


@pytest.mark.parametrize("t_inference", [0.0, 86400.0])
def test_pcm_read_noise_std(t_inference):
    g_max, target = 25.0, 12.5
    model = PCMLikeNoise(prog_noise_scale=0.0, drift_scale=0.0)
    out = model.sample(_full(target), jax.random.key(3), g_max=g_max, t_inference=t_inference)
    q = min(0.0088 / (target / g_max) ** 0.65, 0.2)
    t = t_inference + 20.0
    sigma = q * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))
    _assert_mean_std(np.asarray(out) / target - 1.0, 0.0, sigma, "read")


@jax.jit
def _pcm_sample(g, prog, read, drift, g_max, t, key):
    model = PCMLikeNoise(prog_noise_scale=prog, read_noise_scale=read, drift_scale=drift)
    return model.sample(g, key, g_max=g_max, t_inference=t)


@given(
    st.lists(st.floats(0.0, 1.0), min_size=32, max_size=32),
    st.floats(0.0, 5.0),
    st.floats(0.0, 5.0),
    st.floats(0.0, 3.0),
    st.floats(10.0, 40.0),
    st.floats(0.0, 1e8),
    st.integers(0, 2**31 - 1),
)
def test_pcm_never_negative(fractions, prog, read, drift, g_max, t, seed):
    g = jnp.array(fractions, jnp.float32) * g_max
    out = np.asarray(_pcm_sample(g, prog, read, drift, g_max, t, jax.random.key(seed)))
    assert np.all(np.isfinite(out)) and np.all(out >= 0)


def test_pcm_deterministic_per_key_and_keys_independent():
    g = jnp.linspace(0.0, 25.0, N)
    model = PCMLikeNoise()
    a = model.sample(g, jax.random.key(5), g_max=25.0, t_inference=100.0)
    b = model.sample(g, jax.random.key(5), g_max=25.0, t_inference=100.0)
    c = model.sample(g, jax.random.key(6), g_max=25.0, t_inference=100.0)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.99


def test_pcm_relative_weight_noise_does_not_depend_on_g_max():
    w = np.random.default_rng(7).normal(size=(16, 64)).astype(np.float32)
    key = jax.random.key(8)
    run = jax.jit(lambda g: fj.program(w, key, noise=PCMLikeNoise(), g_max=g, t_inference=3600.0))
    low, high = np.asarray(run(10.0)), np.asarray(run(40.0))
    assert np.std(low - w) > 0.01 * np.std(w)  # noise is on
    np.testing.assert_allclose(low, high, rtol=1e-4, atol=1e-5 * np.max(np.abs(w)))


def test_pcm_jit_and_vmap_over_inputs_and_fields():
    g = jnp.linspace(0.5, 25.0, 64)
    keys = jax.random.split(jax.random.key(9), 3)
    g_maxes = jnp.array([10.0, 25.0, 40.0])
    times = jnp.array([0.0, 10.0, 1e5])
    scales = jnp.array([0.5, 1.0, 2.0])

    def one(key, g_max, t, scale):
        return PCMLikeNoise(prog_noise_scale=scale).sample(g, key, g_max=g_max, t_inference=t)

    batched = jax.jit(jax.vmap(one))(keys, g_maxes, times, scales)
    single = jax.jit(one)
    for i in range(3):
        np.testing.assert_allclose(
            batched[i], single(keys[i], g_maxes[i], times[i], scales[i]), rtol=2e-5, atol=1e-5
        )


def test_pcm_gradients(x64):
    g = jnp.linspace(4.0, 24.0, 12)  # g_prog stays far above 0 for this key
    key = jax.random.key(10)
    model = PCMLikeNoise()

    f = jax.jit(lambda g, gm: model.sample(g, key, g_max=gm, t_inference=3600.0))
    assert np.all(np.asarray(f(g, 25.0)) > 0.5)
    # in g and g_max together (random directions in both): one jvp and one vjp of f
    check_grads(f, (g, 25.0), order=1, modes=("fwd", "rev"))
    # and in g_max alone: in the joint check a small error of its derivative hides behind g's
    check_grads(lambda gm: f(g, gm), (25.0,), order=1, modes=("fwd", "rev"))
    # finite at and next to 0; the shape of g, so the vjp above is reused
    with_zero = jnp.concatenate([jnp.array([0.0, 1e-9, 3.0, 25.0]), g[:8]])
    grads = jax.grad(lambda g, gm: jnp.sum(f(g, gm)), argnums=(0, 1))(with_zero, 25.0)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in grads)


# ----------------------------------------------------------------------------- FusionChipNoise


@pytest.fixture(scope="module")
def readback():
    data = fj.datasets.lenet5_readback()
    return data.flat_targets(), data.flat_programmed()


def test_preset_reproduces_real_readback_per_bin(readback):
    targets, programmed = readback
    model = FusionChipNoise.lenet5_readback()
    table = noise.validation_table(model, targets, programmed, jax.random.key(0))
    print("\nFusionChipNoise.lenet5_readback() vs the real chip read-back:\n" + table.format())
    assert len(table.rows) == 10
    assert sum(r.count for r in table.rows) == targets.size
    for r in table.rows:
        assert abs(r.model_mean / r.real_mean - 1) <= 0.10, r
        assert abs(r.model_std / r.real_std - 1) <= 0.10, r
        assert abs(r.model_zero_fraction - r.real_zero_fraction) <= 0.02, r


def test_preset_weight_error_matches_the_real_chip():
    """End to end: fj.program's weight error equals the real read-back's (layer 8,
    65,536 of the 80,016 weights)."""
    data = fj.datasets.lenet5_readback()
    model = FusionChipNoise.lenet5_readback()
    w = jnp.asarray(data.weights["8"])
    w_real = fj.convert_back_to_weights(
        jnp.asarray(data.programmed["8"], jnp.float32), {"original_weights": w}
    )
    w_sim = jax.jit(
        lambda w: fj.program(w, jax.random.key(30), noise=model, t_inference=model.t_calibration)
    )(w)
    real = float(jnp.linalg.norm(w_real - w) / jnp.linalg.norm(w))
    sim = float(jnp.linalg.norm(w_sim - w) / jnp.linalg.norm(w))
    assert sim == pytest.approx(real, rel=0.05)  # real 0.193; seeds give 0.191-0.194


def test_calibrate_on_shipped_data_reproduces_preset(readback):
    fitted = noise.calibrate(*readback)
    preset = FusionChipNoise.lenet5_readback()
    # Literals: the fit rounded to 4 decimals (stuck probability: 3 significant digits).
    np.testing.assert_allclose(fitted.log_median_coefs, preset.log_median_coefs, atol=2e-4)
    np.testing.assert_allclose(fitted.log_spread_coefs, preset.log_spread_coefs, atol=2e-4)
    assert fitted.shift == pytest.approx(preset.shift, rel=5e-3)
    assert fitted.stuck_probability == pytest.approx(preset.stuck_probability, rel=5e-3)
    g = jnp.linspace(0.5, 40.0, 80)
    np.testing.assert_allclose(fitted.latent_std(g), preset.latent_std(g), rtol=5e-3)
    np.testing.assert_allclose(fitted.latent_mean(g), preset.latent_mean(g), rtol=5e-3, atol=2e-3)
    again = noise.calibrate(*readback)
    assert again == fitted  # deterministic


def test_calibrate_recovers_a_known_model():
    truth = FusionChipNoise(
        log_median_coefs=(3.3, 1.2, 0.15, 0.03),
        log_spread_coefs=(-1.9, -0.5, -0.02),
        shift=0.2,
        stuck_probability=0.003,
    )
    targets = np.random.default_rng(11).uniform(0.0, 40.0, 40_000).astype(np.float32)
    r = _jit_sample(truth, targets, jax.random.key(12), truth.t_calibration)
    fitted = noise.calibrate(targets, np.asarray(r), n_fit_bins=32)
    g = jnp.array([2.0, 5.0, 10.0, 20.0, 35.0])
    np.testing.assert_allclose(fitted.latent_mean(g), truth.latent_mean(g), rtol=0.03)
    np.testing.assert_allclose(fitted.latent_std(g), truth.latent_std(g), rtol=0.07)
    assert fitted.stuck_probability == pytest.approx(0.003, rel=0.3)


@pytest.mark.parametrize("target", [0.8, 1.5, 30.0])
def test_calibrated_distribution_matches_its_moments(target):
    """Samples at t_calibration against quadrature of the model definition."""
    model = FusionChipNoise.lenet5_readback()
    (a0, a1, a2, a3), (b0, b1, b2) = model.log_median_coefs, model.log_spread_coefs
    ell = math.log(target / 40.0)
    m = a0 + a1 * ell + a2 * ell**2 + a3 * ell**3
    s = math.exp(b0 + b1 * ell + b2 * ell**2)
    xi = np.linspace(-9, 9, 200_001)
    w = np.exp(-0.5 * xi**2) / math.sqrt(2 * math.pi) * (xi[1] - xi[0])
    r = np.maximum(np.exp(m + s * xi) - model.shift, 0.0)
    keep = 1.0 - model.stuck_probability
    mean = keep * np.sum(w * r)
    std = math.sqrt(keep * np.sum(w * r**2) - mean**2)
    zero = 1.0 - keep * np.sum(w * (r > 0))

    out = np.asarray(
        model.sample(_full(target), jax.random.key(13), g_max=40.0, t_inference=3600.0),
        np.float64,
    )
    _assert_mean_std(out, mean, std, "calibrated")
    assert abs((out == 0).mean() - zero) < Z * math.sqrt(zero * (1 - zero) / out.size) + 1e-4
    # the closed form the calibration fits with agrees with the quadrature
    theta = jnp.array(
        [
            a0,
            a1,
            a2,
            a3,
            b0,
            b1,
            b2,
            math.log(model.shift),
            math.log(model.stuck_probability / (1 - model.stuck_probability)),
        ]
    )
    with jax.enable_x64(True):
        moments = jax.jit(calibration._readback_moments)  # compiled once for all targets
        e1, e2, p0 = moments(jnp.asarray(theta, jnp.float64), jnp.array(ell))
    assert float(e1) == pytest.approx(mean, rel=1e-6, abs=1e-9)
    assert math.sqrt(float(e2) - float(e1) ** 2) == pytest.approx(std, rel=1e-5)
    assert float(p0) == pytest.approx(zero, abs=5e-5)  # grid step of the indicator


def test_t_calibration_reproduces_calibrated_and_later_times_drift():
    model = FusionChipNoise.lenet5_readback()
    g = jnp.linspace(0.0, 40.0, N)
    key = jax.random.key(14)
    at_cal = model.sample(g, key, g_max=40.0, t_inference=model.t_calibration)
    no_drift = dataclasses.replace(model, drift_scale=0.0)
    np.testing.assert_array_equal(
        at_cal, no_drift.sample(g, key, g_max=40.0, t_inference=model.t_calibration)
    )
    np.testing.assert_array_equal(at_cal, no_drift.sample(g, key, g_max=40.0, t_inference=1e7))

    target, t = 20.0, 3.15e7  # one year; g_rel = 0.5: mu = 0.049, sd = 0.008
    cal = model.sample(_full(target), key, g_max=40.0, t_inference=model.t_calibration)
    year = model.sample(_full(target), key, g_max=40.0, t_inference=t)
    assert np.all((np.asarray(cal) > 0) == (np.asarray(year) > 0))
    pos = np.asarray(cal) > 0
    log_ratio = np.log(np.asarray(year, np.float64)[pos] / np.asarray(cal, np.float64)[pos])
    nu_mean, nu_std = _folded_normal(*_drift_mu_sd(target / 40.0))
    scale = math.log((t + 20.0) / (model.t_calibration + 20.0))
    _assert_mean_std(log_ratio, -nu_mean * scale, nu_std * scale, "chip drift")
    earlier = model.sample(_full(target), key, g_max=40.0, t_inference=0.0)
    assert float(jnp.mean(earlier)) > float(jnp.mean(cal))


def test_chip_model_works_in_absolute_us_so_g_max_matters():
    model = FusionChipNoise.lenet5_readback()
    g = jnp.linspace(0.0, 10.0, N)
    key = jax.random.key(15)
    np.testing.assert_array_equal(
        model.sample(g, key, g_max=10.0, t_inference=3600.0),
        model.sample(g, key, g_max=40.0, t_inference=3600.0),
    )
    w = np.random.default_rng(16).normal(size=(64, 128)).astype(np.float32)

    @jax.jit
    def rel_err(g_max):
        out = fj.program(w, key, noise=model, g_max=g_max, t_inference=3600.0)
        return jnp.std(out - w) / jnp.std(w)

    assert float(rel_err(10.0)) > 1.5 * float(rel_err(40.0))


def test_spread_scale_zero_leaves_gain_offset_clamp_and_vmaps():
    model = FusionChipNoise.lenet5_readback(stuck_probability=0.0)
    g = jnp.linspace(0.0, 40.0, N)
    key = jax.random.key(17)
    flat = dataclasses.replace(model, spread_scale=0.0)
    out = flat.sample(g, key, g_max=40.0, t_inference=3600.0)
    a, shift = model.log_median_coefs, model.shift
    ell = np.log(np.maximum(np.asarray(g, np.float64), 0.1) / 40.0)
    median = np.maximum(np.exp(a[0] + a[1] * ell + a[2] * ell**2 + a[3] * ell**3) - shift, 0)
    np.testing.assert_allclose(out, median, rtol=1e-5, atol=1e-6)

    scales = jnp.array([0.0, 1.0, 2.0])

    def one(scale):
        m = dataclasses.replace(model, spread_scale=scale)
        return m.sample(g, key, g_max=40.0, t_inference=3600.0)

    batched = jax.jit(jax.vmap(one))(scales)
    for i, scale in enumerate([0.0, 1.0, 2.0]):
        np.testing.assert_allclose(batched[i], one(scale), rtol=1e-5, atol=1e-6)
    dev = np.asarray(batched) - np.asarray(batched[0])
    assert np.std(dev[2]) > 1.5 * np.std(dev[1]) > 0


def test_chip_never_negative_deterministic_and_jittable():
    model = FusionChipNoise.lenet5_readback(read_noise=True, read_noise_scale=1.0)
    g = jnp.linspace(0.0, 40.0, N)
    key = jax.random.key(18)
    out = model.sample(g, key, g_max=40.0, t_inference=1e6)
    assert np.all(np.asarray(out) >= 0) and np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_array_equal(out, model.sample(g, key, g_max=40.0, t_inference=1e6))
    jitted = jax.jit(lambda m, g, k, t: m.sample(g, k, g_max=40.0, t_inference=t))
    np.testing.assert_allclose(jitted(model, g, key, 1e6), out, rtol=1e-5, atol=1e-6)
    other = model.sample(g, jax.random.key(19), g_max=40.0, t_inference=1e6)
    assert np.mean(np.asarray(other) != np.asarray(out)) > 0.9


def test_chip_read_noise_option_adds_spread():
    g = _full(30.0)
    key = jax.random.key(20)
    base = FusionChipNoise.lenet5_readback().sample(g, key, g_max=40.0, t_inference=3600.0)
    noisy = FusionChipNoise.lenet5_readback(read_noise=True, read_noise_scale=3.0).sample(
        g, key, g_max=40.0, t_inference=3600.0
    )
    assert float(jnp.std(noisy)) > 1.02 * float(jnp.std(base))


def test_chip_gradients(x64):
    model = FusionChipNoise.lenet5_readback()
    g = jnp.linspace(5.0, 35.0, 16)  # latent far above 0 for this key
    key = jax.random.key(21)
    f = jax.jit(lambda g: model.sample(g, key, g_max=40.0, t_inference=1e6))  # drift on
    assert np.all(np.asarray(f(g)) > 0.5)
    check_grads(f, (g,), order=1, modes=("fwd", "rev"))
    grads = jax.jit(
        jax.grad(
            lambda g, gm: jnp.sum(model.sample(g, key, g_max=gm, t_inference=1e5)), argnums=(0, 1)
        )
    )(jnp.array([0.0, 0.05, 0.5, 20.0]), 25.0)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in grads)


def test_default_noise_is_the_preset_and_program_uses_it():
    assert noise.default_noise() == FusionChipNoise.lenet5_readback()
    w = np.random.default_rng(22).normal(size=(8, 32)).astype(np.float32)
    key = jax.random.key(23)
    out = fj.program(w, key)
    np.testing.assert_array_equal(out, fj.program(w, key, noise=noise.default_noise()))
    assert out.shape == w.shape and np.all(np.isfinite(np.asarray(out)))


# ----------------------------------------------------------------------------- random draws


def test_normal_from_code_is_the_normal_quantile_of_the_bin_midpoint():
    """Every 16-bit code, and the extreme and random 24-bit codes, against the inverse CDF."""
    quantile = NormalDist().inv_cdf
    codes = np.arange(2**16)
    z = np.asarray(_draws._normal_from_code(jnp.asarray(codes, jnp.uint32), 16, jnp.float32))
    expected = np.array([quantile((k + 0.5) / 2**16) for k in codes])
    np.testing.assert_allclose(z, expected, atol=1e-4)
    np.testing.assert_array_equal(z, -z[::-1])  # symmetric: mean exactly 0
    assert np.all(np.diff(z) > 0)  # monotone: all 65,536 values distinct
    assert z.max() == pytest.approx(4.32, abs=0.01)  # the 16-bit tail

    rng = np.random.default_rng(0)
    codes = np.r_[0, 1, 2**23, 2**24 - 2, 2**24 - 1, rng.integers(0, 2**24, 2000)]
    z = np.asarray(_draws._normal_from_code(jnp.asarray(codes, jnp.uint32), 24, jnp.float32))
    expected = np.array([quantile((int(k) + 0.5) / 2**24) for k in codes])
    np.testing.assert_allclose(z, expected, atol=1e-4)
    assert z[0] == pytest.approx(-5.42, abs=0.01) and z[4] == -z[0]


def _assert_uncorrelated(a, b, what):
    a, b = (np.asarray(x, np.float64).ravel() for x in (a, b))
    r = np.corrcoef(a, b)[0, 1]
    assert abs(r) < Z / math.sqrt(a.size), (what, r)


def _assert_standard_normal(x, what):
    x = np.asarray(x, np.float64)
    _assert_mean_std(x, 0.0, 1.0, what)
    for k in (2.0, 3.0):  # two-sided tail mass
        p = 2.0 * _cdf(-k)
        assert abs(np.mean(np.abs(x) > k) - p) < Z * math.sqrt(p * (1 - p) / x.size), (what, k)
    assert 4.0 < np.abs(x).max() < 5.5, what


@pytest.mark.parametrize("stuck_probability", [1.0 / 3.0, 0.000461])
def test_chip_draws_are_standard_and_independent(stuck_probability):
    n = 400_000
    xi, xi_drift, stuck, xi_read = _draws._chip_draws(
        jax.random.key(40), (n,), jnp.float32, stuck_probability, with_read=True
    )
    normals = {"latent": xi, "drift": xi_drift, "read": xi_read}
    for name, x in normals.items():
        _assert_standard_normal(x, name)
    p = stuck_probability
    assert abs(float(jnp.mean(stuck)) - p) < Z * math.sqrt(p * (1 - p) / n)
    if p < 0.01:
        return
    names = list(normals)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            _assert_uncorrelated(normals[a], normals[b], (a, b))
            _assert_uncorrelated(normals[a] ** 2, normals[b] ** 2, (a, b, "squares"))
        _assert_uncorrelated(normals[a], stuck, (a, "stuck"))
        _assert_uncorrelated(jnp.abs(normals[a]), stuck, (a, "|.|", "stuck"))
    # without read noise the other draws are the very same
    again = _draws._chip_draws(jax.random.key(40), (n,), jnp.float32, p, with_read=False)
    for x, y in zip((xi, xi_drift, stuck), again[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    assert again[3] is None


def test_pcm_draws_are_standard_and_independent():
    n = 400_000
    draws = _draws._pcm_draws(jax.random.key(41), (n,), jnp.float32, with_read=True)
    for name, x in zip(("programming", "drift", "read"), draws, strict=True):
        _assert_standard_normal(x, name)
    for i in range(3):
        for j in range(i + 1, 3):
            _assert_uncorrelated(draws[i], draws[j], (i, j))
            _assert_uncorrelated(draws[i] ** 2, draws[j] ** 2, (i, j, "squares"))
    without = _draws._pcm_draws(jax.random.key(41), (n,), jnp.float32, with_read=False)
    np.testing.assert_array_equal(without[0], draws[0])
    np.testing.assert_array_equal(without[1], draws[1])
    assert without[2] is None


def test_read_noise_switch_and_scale_zero_literal_or_traced_agree():
    """read_noise=False skips the term; with it on, a literal 0 scale, a traced 0 (jit
    argument) and a vmapped 0 all give that same result, and larger scales spread more."""
    g = jnp.linspace(0.0, 40.0, N)
    key = jax.random.key(42)
    chip = FusionChipNoise.lenet5_readback()
    pcm = PCMLikeNoise(read_noise=False, read_noise_scale=0.0)
    for model, t in ((chip, 1e5), (pcm, 1e5)):

        def traced(scale, m=model, t=t):
            m = dataclasses.replace(m, read_noise=True, read_noise_scale=scale)
            return m.sample(g, key, g_max=40.0, t_inference=t)

        batched = jax.jit(jax.vmap(traced))(jnp.array([0.0, 1.0, 3.0]))
        base = np.asarray(model.sample(g, key, g_max=40.0, t_inference=t))  # term skipped
        np.testing.assert_allclose(batched[0], base, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(jax.jit(traced)(0.0), base, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(traced(0.0), base, rtol=1e-6, atol=1e-6)  # a literal 0
        dev = np.asarray(batched) - base
        assert np.std(dev[2]) > 2.5 * np.std(dev[1]) > 0
    # A scale the switch would ignore is refused where the model is built (so every entry
    # point agrees); the class's default scale, or 0, turns the term off with the switch.
    for build in (
        lambda: FusionChipNoise.lenet5_readback(read_noise_scale=0.5),
        lambda: PCMLikeNoise(read_noise=False, read_noise_scale=0.5),
        lambda: dataclasses.replace(pcm, read_noise_scale=0.5),
    ):
        with pytest.raises(ValueError, match="read_noise_scale=0.5 has no effect while read_no"):
            build()
    np.testing.assert_array_equal(
        PCMLikeNoise(read_noise=False).sample(g, key, g_max=40.0, t_inference=1e5),
        pcm.sample(g, key, g_max=40.0, t_inference=1e5),
    )
    # chip: switching read noise on keeps the latent and stuck draws, so every 0 stays 0
    # (read noise multiplies the conductance). At 0.5 uS about 60% of the devices read 0;
    # with other latent draws about 40% of these zeros would not be zeros.
    small = _full(0.5)
    zeros = np.asarray(chip.sample(small, key, g_max=40.0, t_inference=1e5)) == 0
    on = dataclasses.replace(chip, read_noise=True, read_noise_scale=1.0)
    on_zeros = np.asarray(on.sample(small, key, g_max=40.0, t_inference=1e5)) == 0
    assert 0.3 < zeros.mean() < 0.9 and np.all(on_zeros[zeros])


# ----------------------------------------------------------------------------- bad input


def test_sample_rejects_bad_arguments():
    model = FusionChipNoise.lenet5_readback()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="negative"):
        model.sample(jnp.array([1.0, -2.0]), key, g_max=40.0, t_inference=0.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        PCMLikeNoise().sample(jnp.array([1.0, jnp.nan]), key, g_max=40.0, t_inference=0.0)
    with pytest.raises(ValueError, match="t_inference"):
        model.sample(jnp.array([1.0]), key, g_max=40.0, t_inference=-1.0)
    with pytest.raises(fj.ArgumentError, match=r"^PCMLikeNoise.sample: .* Got g_max=50\.0\.$"):
        PCMLikeNoise().sample(jnp.array([1.0]), key, g_max=50.0, t_inference=0.0)
    with pytest.raises(ValueError, match="spread_scale"):
        FusionChipNoise.lenet5_readback(spread_scale=-1.0).sample(
            jnp.array([1.0]), key, g_max=40.0, t_inference=0.0
        )


@pytest.mark.parametrize(
    ("targets", "programmed", "message"),
    [
        (np.ones(2000), np.ones(1999), "same shape"),
        (np.r_[np.ones(1999), np.nan], np.ones(2000), "targets contain 1 NaN"),
        (np.ones(2000), np.r_[np.ones(1999), -1.0], "programmed must be conductances >= 0"),
        (np.linspace(0, 40, 500), np.linspace(0, 20, 500), "at least 1280"),
        (np.linspace(0, 40, 4000), np.zeros(4000), "mostly non-zero"),
        (np.full(4000, 3.0), np.full(4000, 1.0), "too few distinct"),
        (np.array(["a"] * 2000), np.ones(2000), "real numeric"),
    ],
)
def test_calibrate_rejects_bad_data(targets, programmed, message):
    with pytest.raises((ValueError, TypeError), match=message):
        noise.calibrate(targets, programmed)


def test_validation_table_handles_empty_bins_and_checks_input(readback):
    targets, programmed = readback  # all targets are at most 40 uS: bins 3 to 5 are empty
    table = noise.validation_table(
        FusionChipNoise.lenet5_readback(),
        targets,
        programmed,
        jax.random.key(0),
        n_bins=5,
        g_range=(0.0, 120.0),
    )
    assert [r.count > 0 for r in table.rows] == [True, True, False, False, False]
    assert "(empty)" in str(table)
    with pytest.raises(ValueError, match="same shape"):
        noise.validation_table(PCMLikeNoise(), targets[:10], programmed[:9], jax.random.key(0))
    with pytest.raises(ValueError, match="g_range"):
        noise.validation_table(
            PCMLikeNoise(), targets, programmed, jax.random.key(0), g_range=(5.0, 5.0)
        )


def test_noise_package_exports_its_public_names_from_their_modules():
    expected = {
        "FusionChipNoise": "chip",
        "PCMLikeNoise": "pcm",
        "ValidationRow": "validation",
        "ValidationTable": "validation",
        "calibrate": "calibration",
        "default_noise": "chip",
        "validation_table": "validation",
    }
    assert sorted(noise.__all__) == sorted(expected)
    for name, module in expected.items():
        assert getattr(fj.noise, name).__module__ == f"fusion_jax.noise.{module}", name


def _small_readback(n=4000):
    truth = FusionChipNoise.lenet5_readback()
    targets = jnp.linspace(0.0, 40.0, n)
    r = _jit_sample(truth, targets, jax.random.key(13), truth.t_calibration)
    return np.asarray(targets), np.asarray(r)


def test_calibration_solver_stops_at_a_fixed_point_of_the_reweighting():
    theta0, args, n_bins = calibration._prepare_fit(*_small_readback(), 16, 40.0, 0.1, 40.0)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in args)

        def gradient(theta):
            th = jnp.asarray(theta)
            se_zero = calibration._zero_fraction_se(th, *args, n_bins=n_bins)
            r = calibration._moment_residuals(th, *args, se_zero, n_bins=n_bins)
            jac = calibration._jacobian(th, *args, se_zero, n_bins=n_bins)
            return np.asarray(jac).T @ np.asarray(r)

        theta, n_jac = calibration._solve(theta0, args, n_bins, 200)
        assert 1 <= n_jac <= 200
        # with the weights taken at the solution, the weighted cost is stationary there
        assert np.max(np.abs(gradient(theta))) < 1e-6 * np.max(np.abs(gradient(theta0)))
        assert calibration._fit_cost(theta, args, n_bins) < calibration._fit_cost(
            theta0, args, n_bins
        )


def test_calibrate_reports_no_convergence_within_max_iter():
    with pytest.raises(ValueError, match=r"did not converge in 1 iterations \(cost [0-9.]+\)"):
        noise.calibrate(*_small_readback(), n_fit_bins=16, max_iter=1)
