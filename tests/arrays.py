"""Array helpers shared by the tests: inputs drawn with NumPy, and the row-scale check."""

import jax
import numpy as np


def normal(shape, seed=0):
    """Standard normal float32 values from NumPy: an eager jax.random call compiles per shape."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return jax.device_put(values)  # jnp.asarray would compile a copy per shape


def assert_only_row_scaled(before, after, index, c):
    """``after`` is ``before`` with the entries at ``index`` times ``c``; the rest unchanged.

    ``index`` picks one chip row, e.g. ``(..., 1)`` for output channel 1 of a
    Flax kernel: per-row programming scales that row's programmed weights
    exactly with its weights and leaves every other row as it was.
    """
    before, after = np.asarray(before), np.asarray(after)
    np.testing.assert_allclose(after[index], c * before[index], rtol=2e-4, atol=1e-6)
    mask = np.ones(before.shape, bool)
    mask[index] = False
    np.testing.assert_array_equal(after[mask], before[mask])
