"""convert_to_conductances / convert_back_to_weights against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import checkify
from reference_impl import (
    degenerate_rows,
    ref_convert_back_to_weights,
    ref_convert_to_conductances,
)

import fusion_jax as fj

KINDS = ("normal", "offset", "sparse", "uniform", "mixed")
SHAPES = ((1, 1), (1, 24), (6, 1), (5, 13), (2, 3, 7))
# The other tests use these shapes too where the shape is not what they check:
# the conversions of each compile once.
MATRIX = SHAPES[3]  # a general matrix


@st.composite
def weight_matrices(draw, dtype=np.float32):
    """Random [batch?, out, in] matrices: tiny/huge magnitudes, offsets, sparse rows.

    The values are drawn within a few fixed shapes (each new shape is a new
    XLA compile): one element, a single row, a single column, a general
    matrix and a batched stack.
    """
    *batch, out, n_in = draw(st.sampled_from(SHAPES))
    exponent = draw(st.sampled_from([-30, -12, -3, 0, 0, 0, 2, 12, 30]))
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shape = (*batch, out, n_in)
    w = rng.standard_normal(shape)
    if kind == "offset":
        w = rng.uniform(5.0, 30.0) * np.sign(rng.standard_normal()) + w
    elif kind == "sparse":
        w = w * (rng.random(shape) < 0.2)
    elif kind == "uniform":
        w = rng.uniform(-1, 1, shape)
    elif kind == "mixed":
        w[..., 0, :] = 0.3
        if out > 1:
            w[..., 1, :] = 0.0
    return (w * 10.0**exponent).astype(dtype)


def _perturb(g, seed, g_max):
    """Conductances that differ from the targets (the import case)."""
    rng = np.random.default_rng(seed)
    noisy = g * rng.uniform(0.4, 1.1) + rng.normal(0, 0.05 * g_max, g.shape)
    return np.maximum(noisy, 0.0).astype(g.dtype)


def _check_against_reference(w, g_max, seed):
    g, params = fj.convert_to_conductances(w, g_max=g_max)
    g = np.asarray(g)
    g_ref = ref_convert_to_conductances(w, g_max)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-6 * g_max)

    scale = np.abs(w).max() if np.abs(w).max() > 0 else 1.0
    for g_in in (g_ref, _perturb(g_ref, seed, g_max)):
        ref = ref_convert_back_to_weights(g_in, w)
        strict = np.asarray(fj.convert_back_to_weights(g_in, params, strict_aihwkit=True))
        np.testing.assert_allclose(strict, ref, rtol=0, atol=1e-5 * scale)
        default = np.asarray(fj.convert_back_to_weights(g_in, params))
        ok = ~degenerate_rows(g_in, w)
        np.testing.assert_allclose(default[ok], ref[ok], rtol=0, atol=1e-5 * scale)
        assert default.dtype == w.dtype


@given(weight_matrices(), st.floats(10.0, 40.0), st.integers(0, 2**31 - 1))
def test_matches_reference_float32(w, g_max, seed):
    _check_against_reference(w, g_max, seed)


@given(weight_matrices(np.float64), st.floats(10.0, 40.0), st.integers(0, 2**31 - 1))
def test_matches_reference_float64(w, g_max, seed):
    with jax.enable_x64(True):
        _check_against_reference(w, g_max, seed)


def test_noise_free_round_trip_is_exact_on_chip_sized_matrix():
    w = np.random.default_rng(0).standard_normal((512, 2048)).astype(np.float32)
    g, params = fj.convert_to_conductances(w)
    w_hat = np.asarray(fj.convert_back_to_weights(g, params))
    assert np.abs(w_hat - w).max() < 1e-5


# The degenerate-row table of REFERENCE.md (measured with aihwkit 1.1.0, g_max = 40).
DEGENERATE_TABLE = [
    ([0.3, 0.3, 0.3], [0.0, 0.0, 0.0]),
    ([0.5], [0.0]),
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ([0.7, 0.7, -0.7], [0.7, 0.7, -0.7]),
    ([1.0, -2.0, 0.5], [1.0, -2.0, 0.5]),
]


@pytest.mark.parametrize(("row", "aihwkit_result"), DEGENERATE_TABLE)
def test_degenerate_rows_strict_reproduces_reference(row, aihwkit_result):
    w = np.array([row], dtype=np.float32)
    g, params = fj.convert_to_conductances(w, g_max=40)
    strict = fj.convert_back_to_weights(g, params, strict_aihwkit=True)
    np.testing.assert_allclose(strict, [aihwkit_result], atol=1e-6)


@pytest.mark.parametrize(("row", "aihwkit_result"), DEGENERATE_TABLE)
def test_degenerate_rows_default_loses_no_weights(row, aihwkit_result):
    w = np.array([row], dtype=np.float32)
    g, params = fj.convert_to_conductances(w, g_max=40)
    default = fj.convert_back_to_weights(g, params)
    np.testing.assert_allclose(default, w, atol=1e-6)


def test_single_input_layer_survives_by_default_and_is_wiped_when_strict():
    w = np.array([[0.5], [-1.5], [2.0], [0.25], [-3.0], [1.0]], dtype=np.float32)  # SHAPES[2]
    g, params = fj.convert_to_conductances(w)
    np.testing.assert_allclose(fj.convert_back_to_weights(g, params), w, rtol=1e-6)
    np.testing.assert_array_equal(fj.convert_back_to_weights(g, params, strict_aihwkit=True), 0)


def test_constant_weights_with_programmed_conductances_are_not_zeroed():
    # Noisy conductances of a constant row: x varies, y does not. With the
    # intercept fitted the slope is 0 and the reference zeroes the row; the
    # default uses the through-origin slope instead.
    w = np.array([[0.3, 0.3, 0.3, 0.3], [1.0, -2.0, 0.5, 0.1]], dtype=np.float32)
    g = np.array([[20.0, 22.0, 18.0, 21.0], [19.0, 41.0, 9.0, 3.0]], dtype=np.float32)
    _, params = fj.convert_to_conductances(w)
    ref = ref_convert_back_to_weights(g, w)
    np.testing.assert_allclose(ref[0], 0.0, atol=1e-12)  # what aihwkit does
    strict = fj.convert_back_to_weights(g, params, strict_aihwkit=True)
    np.testing.assert_allclose(strict, ref, atol=1e-6)
    default = np.asarray(fj.convert_back_to_weights(g, params))
    x = g[0].astype(np.float64)
    np.testing.assert_allclose(default[0], (x * w[0]).sum() / (x * x).sum() * x, rtol=1e-5)
    np.testing.assert_allclose(default[1], ref[1], atol=1e-6)  # other rows: the reference's
    g_const = g.copy()
    g_const[0] = 21.0  # constant conductances for the constant row (rows are independent)
    np.testing.assert_allclose(fj.convert_back_to_weights(g_const, params)[0], w[0], rtol=1e-6)


def test_program_with_noise_keeps_constant_and_single_input_rows():
    w = np.array([[0.3, 0.3, 0.3], [0.5, -1.0, 0.25]], dtype=np.float32)
    key = jax.random.key(0)
    w_chip = np.asarray(fj.program(w, key, g_max=25.0))
    assert np.all(np.abs(w_chip[0]) > 0.05)
    strict = np.asarray(fj.program(w, key, g_max=25.0, strict_aihwkit=True))
    np.testing.assert_array_equal(strict[0], 0.0)
    one_input = np.array([[0.5], [-1.5]], dtype=np.float32)
    assert np.all(np.abs(np.asarray(fj.program(one_input, key))) > 0.1)


def test_batch_axes_equal_per_matrix_results():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, *MATRIX)).astype(np.float32)
    g, params = fj.convert_to_conductances(w, g_max=25.0)
    w_hat = fj.convert_back_to_weights(g * 0.9 + 0.1, params)
    for i in range(3):
        for j in range(2):
            gi, pi = fj.convert_to_conductances(w[i, j], g_max=25.0)
            np.testing.assert_array_equal(g[i, j], gi)
            np.testing.assert_allclose(
                w_hat[i, j], fj.convert_back_to_weights(gi * 0.9 + 0.1, pi), rtol=1e-6, atol=1e-7
            )


def test_vmap_over_weights_equals_batch():
    w = np.random.default_rng(2).standard_normal(SHAPES[4]).astype(np.float32)
    g_batch, _ = fj.convert_to_conductances(w)
    g_vmap = jax.vmap(lambda m: fj.convert_to_conductances(m)[0])(w)
    np.testing.assert_array_equal(g_batch, g_vmap)


# --- g_max --------------------------------------------------------------------------------


@pytest.mark.parametrize("g_max", [40, 10.0, np.float32(25.0), jnp.float32(33.0), np.array(12.5)])
def test_g_max_accepts_python_numpy_and_jax_scalars(g_max):
    g, _ = fj.convert_to_conductances(jnp.array([[1.0, -0.5]]), g_max=g_max)
    np.testing.assert_allclose(g, [[float(g_max), float(g_max) / 2]], rtol=1e-6)


@pytest.mark.parametrize("g_max", [9.99, 40.01, 0, -10, 100, np.float32(5.0), jnp.array(45.0)])
def test_g_max_out_of_range_raises_reference_message(g_max):
    with pytest.raises(fj.ArgumentError) as err:
        fj.convert_to_conductances(jnp.ones((2, 2)), g_max=g_max)
    assert str(err.value) == "Specified fusion g_max value must be between 10 and 40."
    assert issubclass(fj.ArgumentError, ValueError)


def test_g_max_must_be_scalar():
    with pytest.raises(fj.ArgumentError, match="scalar"):
        fj.convert_to_conductances(jnp.ones((2, 2)), g_max=jnp.array([10.0, 20.0]))


def test_traced_g_max_out_of_range_is_reported_by_checkify_and_never_clamped():
    def f(g_max):
        return fj.convert_to_conductances(jnp.array([[1.0, 0.5]]), g_max=g_max)[0]

    checked = checkify.checkify(jax.jit(f))
    err, g = checked(50.0)
    with pytest.raises(checkify.JaxRuntimeError, match=r"between 10 and 40\. Got g_max=50\.0"):
        err.throw()
    np.testing.assert_allclose(g, [[50.0, 25.0]])  # computed as asked, not clamped
    err, _ = checked(20.0)
    assert err.get() is None

    err, _ = checkify.checkify(jax.jit(jax.vmap(f)))(jnp.array([20.0, 41.0]))  # one compile
    assert "between 10 and 40" in err.get()


def test_g_max_sweep_compiles_once():
    w = jnp.asarray(np.random.default_rng(3).standard_normal((8, 16)), jnp.float32)

    @jax.jit
    def round_trip(w, g_max):
        g, params = fj.convert_to_conductances(w, g_max)
        return fj.convert_back_to_weights(g * 0.95, params)

    for g_max in (10.0, 17.5, 25.0, 40.0, 33.3):
        round_trip(w, g_max)
    assert round_trip._cache_size() == 1

    @jax.jit
    def sweep(w, g_maxes):
        return jax.vmap(lambda gm: fj.convert_to_conductances(w, gm)[0])(g_maxes)

    out_a = sweep(w, jnp.linspace(10, 40, 7))
    sweep(w, jnp.linspace(12, 38, 7))
    assert sweep._cache_size() == 1
    np.testing.assert_allclose(out_a[-1], fj.convert_to_conductances(w, 40.0)[0], rtol=1e-6)


# --- dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_computed_in_float32_returned_in_input_dtype(dtype):
    w32 = np.random.default_rng(4).standard_normal((4, 9)).astype(np.float32)
    w = jnp.asarray(w32).astype(dtype)
    g, params = fj.convert_to_conductances(w)
    assert g.dtype == dtype
    expected = ref_convert_to_conductances(np.asarray(w.astype(jnp.float32)), 40.0)
    np.testing.assert_allclose(np.asarray(g, np.float32), expected, rtol=1e-2)
    w_hat = fj.convert_back_to_weights(g, params)
    assert w_hat.dtype == dtype
    np.testing.assert_allclose(np.asarray(w_hat, np.float32), np.asarray(w, np.float32), atol=0.05)


def test_integer_weights_promoted_to_float32():
    w = np.array([[1, -2, 4], [3, 3, -3]], dtype=np.int32)
    g, params = fj.convert_to_conductances(w)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, [[10.0, 20.0, 40.0], [40.0, 40.0, 40.0]])
    np.testing.assert_allclose(fj.convert_back_to_weights(g, params), w, atol=1e-5)


def test_float64_is_native_with_x64(x64):
    w = np.random.default_rng(5).standard_normal(MATRIX)
    g, params = fj.convert_to_conductances(w)
    assert g.dtype == jnp.float64
    np.testing.assert_allclose(fj.convert_back_to_weights(g, params), w, atol=1e-13)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("w", [np.float32(1.0), np.ones(3, np.float32)])
def test_weights_need_two_dimensions(w):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fj.convert_to_conductances(w)


def test_empty_in_axis_is_refused():
    with pytest.raises(ValueError, match="'in' axis .* length 0"):
        fj.convert_to_conductances(np.zeros((3, 0), np.float32))


def test_empty_batch_returns_empty_arrays():
    w = np.zeros((0, 5), np.float32)
    g, params = fj.convert_to_conductances(w)
    assert g.shape == (0, 5)
    assert fj.convert_back_to_weights(g, params).shape == (0, 5)


def test_nan_and_inf_named_with_count_and_rows():
    w = np.ones((5, 4), np.float32)
    w[1, 2] = np.nan
    w[3, 0] = np.inf
    w[3, 1] = -np.inf
    with pytest.raises(ValueError, match=r"weights contain 3 NaN or Inf values in rows \[1, 3\]"):
        fj.convert_to_conductances(w)
    wb = np.ones((2, 3, 4), np.float32)
    wb[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or Inf value in row \[\(1, 2\)\]"):
        fj.convert_to_conductances(wb)


def test_nan_under_jit_reported_by_checkify():
    f = checkify.checkify(jax.jit(lambda w: fj.convert_to_conductances(w)[0]))
    err, _ = f(jnp.array([[1.0, jnp.nan], [jnp.inf, 2.0]]))
    assert "weights contain 2 NaN or Inf values" in err.get()


def test_conductance_shape_mismatch_and_nan_refused():
    _, params = fj.convert_to_conductances(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"conductances shape \(3, 5\) differs .* \(3, 4\)"):
        fj.convert_back_to_weights(np.ones((3, 5), np.float32), params)
    with pytest.raises(
        ValueError, match=r"conductances contain 3 NaN or Inf values in rows \[0, 1, 2\]"
    ):
        fj.convert_back_to_weights(np.where(np.eye(3, 4) > 0, np.nan, 1.0), params)
    with pytest.raises(TypeError, match="one array"):
        fj.convert_back_to_weights([np.ones((3, 4))], params)


def test_params_without_original_weights():
    with pytest.raises(ValueError, match="params do not contain original_weights"):
        fj.convert_back_to_weights(np.ones((2, 2)), {"weights": np.ones((2, 2))})


def test_params_is_a_pytree_and_accepts_reference_dict():
    w = jnp.asarray(np.random.default_rng(6).standard_normal(MATRIX).astype(np.float32))
    g, params = fj.convert_to_conductances(w)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 1 and leaves[0] is params.original_weights
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    assert isinstance(doubled, fj.FusionParams)
    np.testing.assert_allclose(
        fj.convert_back_to_weights(g, params.as_dict()), fj.convert_back_to_weights(g, params)
    )
    via_jit = jax.jit(fj.convert_back_to_weights)(g, params)
    np.testing.assert_allclose(via_jit, w, atol=1e-6)


def test_gradient_finite_through_both_directions():
    w = jnp.asarray(np.random.default_rng(7).standard_normal((4, 6)), jnp.float32)

    def loss(w, g_max):
        g, params = fj.convert_to_conductances(w, g_max)
        return jnp.sum(fj.convert_back_to_weights(0.8 * g + 0.3, params) ** 2)

    gw, gg = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, 30.0)  # one compile, not one per op
    assert np.all(np.isfinite(gw)) and np.isfinite(gg)
    assert np.any(gw != 0)
