"""fj.program: the simulated chip in the gradient path."""

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import fusion_jax as fj


def _matrix_with_ties_and_zeros(seed, out=5, n_in=7):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, n_in)).astype(np.float32)
    w[0, 3] = 0.0  # an exact zero
    w[1, :2] = 0.0
    w[2, 4] = -np.abs(w[2]).max() * 1.5  # the row max is negative
    w[3, 1] = w[3, 5] = np.abs(w[3]).max() * 1.2  # two entries tie for the row max
    return jnp.asarray(w)


@functools.cache
def _jitted_jacobian(jac):
    """``jac`` of the noise-free ``fj.program``, jitted: one compile per shape, not per op."""
    return jax.jit(jac(lambda w: fj.program(w, noise=None)))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev])
def test_noise_free_round_trip_jacobian_is_identity(seed, jac):
    w = _matrix_with_ties_and_zeros(seed)
    n = w.size
    J = _jitted_jacobian(jac)(w).reshape(n, n)
    np.testing.assert_allclose(J, np.eye(n), atol=1e-5)


def test_identity_jacobian_on_degenerate_rows_and_batches():
    w = jnp.array([[[0.3, 0.3, 0.3], [0.0, 0.0, 0.0]], [[0.5, -0.5, 0.5], [1.0, 2.0, 3.0]]])
    J = _jitted_jacobian(jax.jacfwd)(w).reshape(12, 12)
    np.testing.assert_allclose(J, np.eye(12), atol=1e-5)


def test_plain_autodiff_would_get_the_row_max_wrong():
    # The reason for the custom derivatives: jnp.clip splits the derivative at
    # the boundary, where each row's largest weight sits.
    g_max = 40.0
    w = _matrix_with_ties_and_zeros(3)

    def naive(w):
        s = g_max / jnp.maximum(jnp.max(jnp.abs(w), -1, keepdims=True), 1e-10)
        x = jnp.clip(jnp.abs(w * s), 0, g_max) * jnp.sign(w)
        xc = x - x.mean(-1, keepdims=True)
        yc = w - w.mean(-1, keepdims=True)
        return (xc * yc).sum(-1, keepdims=True) / (xc * xc).sum(-1, keepdims=True) * x

    J = jax.jit(jax.jacfwd(naive))(w).reshape(w.size, w.size)  # one compile, not one per op
    assert np.abs(J - np.eye(w.size)).max() > 0.1


@pytest.mark.parametrize("gradient", ["exact", "ste"])
def test_gradient_wrt_g_max_is_finite(gradient):
    w = _matrix_with_ties_and_zeros(4)
    key = jax.random.key(0)
    for noise in (None, fj.DEFAULT_NOISE):
        grad = jax.grad(
            lambda g, noise=noise: jnp.sum(
                fj.program(w, key, g_max=g, noise=noise, gradient=gradient) ** 2
            )
        )(25.0)
        assert np.isfinite(grad)


def test_exact_gradient_with_noise_matches_finite_differences(x64):
    from fusion_jax import noise as noise_models

    rng = np.random.default_rng(5)
    # Away from kinks: no zeros, no ties, one clear maximum per row, targets
    # well above the clamp at 0.
    w = jnp.asarray(np.sign(rng.standard_normal((3, 6))) * rng.uniform(0.5, 1.0, (3, 6)))
    w = w.at[:, 0].multiply(1.6)
    key = jax.random.key(1)
    # (PCMLikeNoise's own derivatives are checked in test_noise.py.)
    model = noise_models.FusionChipNoise.lenet5_readback()

    def f(w, g_max):
        return fj.program(w, key, g_max=g_max, noise=model, t_inference=3.15e7)

    jax.test_util.check_grads(f, (w, 30.0), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_straight_through_forward_is_programmed_backward_is_identity():
    w = _matrix_with_ties_and_zeros(6)
    key = jax.random.key(2)
    exact = fj.program(w, key, gradient="exact")
    ste = fj.program(w, key, gradient="ste")
    np.testing.assert_allclose(ste, exact, atol=1e-6)
    assert np.abs(np.asarray(ste) - np.asarray(w)).max() > 1e-3  # noise is on
    cot = jnp.asarray(np.random.default_rng(0).standard_normal(w.shape), jnp.float32)
    grad = jax.grad(lambda w: jnp.sum(fj.program(w, key, gradient="ste") * cot))(w)
    np.testing.assert_array_equal(grad, cot)


def test_exact_gradient_through_one_branch_of_a_cond():
    # A programming in one branch of lax.cond, the identity in the other (a digital
    # warm-up before hardware-aware steps), differentiated, jitted and vmapped over the
    # models: the backward pass keeps the key as raw data, which every JAX the bounds
    # admit can pass between branches (JAX 0.9 cannot pass a typed key).
    w = _matrix_with_ties_and_zeros(6)
    key = jax.random.key(2)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(w.shape), jnp.float32)

    def loss(w, on, key):
        chip = jax.lax.cond(on, lambda w: fj.program(w, key, g_max=25.0), lambda w: w, w)
        return jnp.sum(chip * cot)

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None, 0)))
    keys = jnp.stack([key, jax.random.key(3)])
    on, off = grads(jnp.stack([w, w]), True, keys), grads(jnp.stack([w, w]), False, keys)
    np.testing.assert_array_equal(off, np.broadcast_to(cot, off.shape))
    direct = jax.grad(lambda w: jnp.sum(fj.program(w, key, g_max=25.0) * cot))(w)
    np.testing.assert_allclose(on[0], direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(on[1], on[0])  # each model its own key


def test_noise_free_program_is_the_round_trip():
    w = np.random.default_rng(7).standard_normal((4, 9)).astype(np.float32)
    g, params = fj.convert_to_conductances(w, 20.0)
    np.testing.assert_allclose(
        fj.program(w, g_max=20.0, noise=None), fj.convert_back_to_weights(g, params), atol=1e-7
    )


def test_deterministic_per_key_and_different_across_keys():
    w = _matrix_with_ties_and_zeros(8)
    a = fj.program(w, jax.random.key(3))
    b = fj.program(w, jax.random.key(3))
    c = fj.program(w, jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4


def test_jit_and_vmap_over_keys_g_max_and_time():
    w = _matrix_with_ties_and_zeros(9)
    keys = jax.random.split(jax.random.key(5), 3)
    g_maxes = jnp.array([10.0, 25.0, 40.0])
    times = jnp.array([1.0, 3600.0, 3.15e7])

    f = jax.jit(lambda k, g, t: fj.program(w, k, g_max=g, t_inference=t))
    batched = jax.vmap(f)(keys, g_maxes, times)
    for i in range(3):
        np.testing.assert_allclose(batched[i], f(keys[i], g_maxes[i], times[i]), atol=1e-6)
    assert f._cache_size() == 1


def test_program_errors():
    w = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        fj.program(w)
    with pytest.raises(ValueError, match="gradient must be 'exact' or 'ste'"):
        fj.program(w, noise=None, gradient="straight")
    with pytest.raises(TypeError, match=r"\.sample method"):
        fj.program(w, jax.random.key(0), noise="pcm")
    with pytest.raises(fj.ArgumentError, match=r"^program: .*between 10 and 40\. Got g_max=45\.0"):
        fj.program(w, noise=None, g_max=45.0)
    with pytest.raises(fj.ArgumentError, match=r"^program_kernel: .* Got g_max=9\.0"):
        fj.program_kernel(w, noise=None, g_max=9.0)
