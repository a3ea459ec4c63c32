"""The aihwkit-compatible class API."""

import jax.numpy as jnp
import numpy as np
import pytest
from reference_impl import ref_convert_back_to_weights, ref_convert_to_conductances

import fusion_jax as fj


def test_same_call_shapes_as_aihwkit():
    w = np.random.default_rng(0).standard_normal((6, 9)).astype(np.float32)
    conv = fj.FusionConductanceConverter(g_max=30)
    conductances, params = conv.convert_to_conductances(w)
    assert isinstance(conductances, list) and len(conductances) == 1
    assert isinstance(params, dict) and set(params) == {"original_weights"}
    np.testing.assert_allclose(conductances[0], ref_convert_to_conductances(w, 30.0), atol=3e-5)
    noisy = [conductances[0] * 0.6 + 0.2]  # a gain and an offset, never negative
    np.testing.assert_allclose(
        conv.convert_back_to_weights(noisy, params),
        ref_convert_back_to_weights(np.asarray(noisy[0]), w),
        atol=1e-5 * np.abs(w).max(),
    )


def test_reference_errors():
    with pytest.raises(fj.ArgumentError, match="must be between 10 and 40"):
        fj.FusionConductanceConverter(g_max=5)
    conv = fj.FusionConductanceConverter()
    [g], params = conv.convert_to_conductances(jnp.ones((2, 3)))
    for bad in ([], [g, g], g):
        with pytest.raises(ValueError, match="conductances must contain exactly 1 element"):
            conv.convert_back_to_weights(bad, params)
    with pytest.raises(ValueError, match="params do not contain original_weights"):
        conv.convert_back_to_weights([g], {})


def test_strict_switch_and_repr():
    conv = fj.FusionConductanceConverter(g_max=40, strict_aihwkit=True)
    [g], params = conv.convert_to_conductances(jnp.array([[0.5], [0.25]]))
    np.testing.assert_array_equal(conv.convert_back_to_weights([g], params), 0.0)
    default = fj.FusionConductanceConverter(g_max=40)
    np.testing.assert_allclose(default.convert_back_to_weights([g], params), [[0.5], [0.25]])
    assert "g_max=40" in repr(conv) and "strict_aihwkit=True" in repr(conv)
