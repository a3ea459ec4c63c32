"""regression_slope: the batched closed form of scikit-learn's LinearRegression slope."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_impl import ref_slope

import fusion_jax as fj

# Values are drawn within a few fixed (rows, samples) shapes: each new shape is a new compile.
SHAPES = ((1, 2), (1, 40), (5, 2), (3, 17), (5, 40))
# The other tests take one of these where the shape is not what they check.
ROWS = SHAPES[3]  # three rows: room for an odd row between two ordinary ones


@given(
    st.sampled_from(SHAPES),
    st.sampled_from([-30, -8, 0, 0, 8, 30]),
    st.floats(0.0, 1e3),
    st.integers(0, 2**31 - 1),
)
def test_matches_sklearn_slope(shape, exponent, offset, seed):
    out, n = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((out, n)) + offset
    y = 0.7 * x + rng.standard_normal((out, n)) * 0.3 - 4.0
    x, y = (x * 10.0**exponent).astype(np.float32), (y * 10.0**exponent).astype(np.float32)
    expected = ref_slope(x, y)
    got = np.asarray(fj.regression_slope(x, y))
    np.testing.assert_allclose(got, expected, rtol=2e-4 * (1 + offset))


def test_large_common_offset_no_cancellation():
    # A naive one-pass formula sum(xy) - n*mean(x)*mean(y) loses every digit here.
    rng = np.random.default_rng(0)
    base = rng.standard_normal(SHAPES[4])
    x = (1e4 + base).astype(np.float32)
    y = (3.0 * base + 7.0).astype(np.float32)
    got = np.asarray(fj.regression_slope(x, y))
    np.testing.assert_allclose(got, ref_slope(x, y), rtol=2e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        naive = ((x * y).mean(-1) - x.mean(-1) * y.mean(-1)) / ((x * x).mean(-1) - x.mean(-1) ** 2)
    assert np.abs(naive - 3.0).max() > 10 * np.abs(got - 3.0).max()


def test_degenerate_rows():
    x = jnp.array([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    y = jnp.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(fj.regression_slope(x, y), [0.5, 0.0, 0.5])
    np.testing.assert_array_equal(fj.regression_slope(x, y, strict_aihwkit=True), [0.0, 0.0, 0.0])


def test_batched_leading_axes_and_vmap():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 10)).astype(np.float32)
    y = (x * rng.standard_normal((3, 4, 1)) + 0.1 * rng.standard_normal((3, 4, 10))).astype(
        np.float32
    )
    batched = fj.regression_slope(x, y)
    assert batched.shape == (3, 4)
    np.testing.assert_allclose(batched, ref_slope(x, y), rtol=1e-5, atol=1e-6)
    vmapped = jax.jit(jax.vmap(fj.regression_slope))(x, y)  # one compile, not one per op
    np.testing.assert_allclose(vmapped, batched, rtol=1e-6)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        fj.regression_slope(np.ones((2, 3)), np.ones((2, 4)))


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 6)))
    y = jnp.asarray(rng.standard_normal((2, 6)))
    with jax.enable_x64(True):
        x64, y64 = x.astype(jnp.float64), y.astype(jnp.float64)
        jax.test_util.check_grads(
            jax.jit(fj.regression_slope), (x64, y64), order=2, modes=("fwd", "rev")
        )


def test_one_pass_moments_equal_the_normalised_ones():
    """Rows of ordinary magnitude use the raw one-pass moments; they equal the moments of
    the rows normalised by powers of two (exact scaling), so the slope does not change."""
    from fusion_jax import regression

    rng = np.random.default_rng(3)
    x = jnp.asarray((rng.standard_normal(ROWS) * 7.0 + 2.0).astype(np.float32))
    y = jnp.asarray((rng.standard_normal(ROWS) * 0.01).astype(np.float32))
    # jitted: one compile each instead of one per operation
    moments, kx, ky, sx, sy = jax.jit(regression._moments_any_scale)(x, y)
    np.testing.assert_array_equal(sx, 1.0)  # the one-pass branch was taken
    px, py = 2.0**-4, 2.0**6  # powers of two: exact scaling
    n = ROWS[0]
    scaled, skx, sky = jax.jit(regression._normalised_moments)(
        x, y, jnp.full(n, 1 / px), jnp.full(n, 1 / py)
    )
    for raw, norm, power in zip(moments, scaled, (px, py, px * px, px * py, py * py), strict=True):
        np.testing.assert_allclose(raw * power, norm, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-30, 1e30, 0.0])
def test_rows_of_extreme_magnitude_or_zeros_beside_ordinary_rows(scale):
    """A row of 1e-30s, 1e30s or zeros sends the matrix to the normalised second pass;
    every row still gets scikit-learn's slope (0 where x is all zero)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(ROWS)
    y = 0.5 * x + 0.1 * rng.standard_normal(ROWS)
    x[1] *= scale
    y[1] *= scale
    x, y = x.astype(np.float32), y.astype(np.float32)
    got = np.asarray(fj.regression_slope(x, y))
    from fusion_jax import regression

    sx = jax.jit(regression._moments_any_scale)(jnp.asarray(x), jnp.asarray(y))[3]
    assert sx[0] != 1.0  # the ordinary rows were normalised too: the second pass ran
    if scale == 0.0:
        np.testing.assert_allclose(got[[0, 2]], ref_slope(x[[0, 2]], y[[0, 2]]), rtol=1e-5)
        assert got[1] == 0.0
    else:
        np.testing.assert_allclose(got, ref_slope(x, y), rtol=1e-5)


@pytest.mark.parametrize(("sx", "sy"), [(1.0, 1e-30), (1e-30, 1.0), (1.0, 1e30), (1e30, 1.0)])
def test_only_x_or_only_y_of_extreme_magnitude(sx, sy):
    """Each of the two range checks on its own sends the rows to the normalised pass."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(ROWS)
    y = 0.5 * x + 0.1 * rng.standard_normal(ROWS)
    x, y = (x * sx).astype(np.float32), (y * sy).astype(np.float32)
    np.testing.assert_allclose(fj.regression_slope(x, y), ref_slope(x, y), rtol=1e-5)


def test_gradient_through_the_normalised_pass():
    """slope(c x, y) = slope(x, y) / c for a power of two c, so its gradient in x is the
    unscaled one divided by c; c = 2**-30 sends x to the normalised pass."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((3, 40)), jnp.float32)
    y = jnp.asarray(0.3 * x + 0.2 * rng.standard_normal((3, 40)), jnp.float32)
    c = 2.0**-30
    # c is an argument: one compiled gradient for both; c = 1 is the unscaled slope
    grad = jax.jit(jax.grad(lambda v, c: fj.regression_slope(v * c, y).sum()))
    scaled = grad(x, c)
    plain = grad(x, 1.0)
    np.testing.assert_allclose(np.asarray(scaled) * c, plain, rtol=1e-4, atol=1e-6)
