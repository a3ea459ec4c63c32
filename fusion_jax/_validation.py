"""Input checks shared by the public functions (private).

Concrete (non-traced) inputs are checked eagerly and raise clear Python
errors. Traced inputs are checked with :func:`jax.experimental.checkify.debug_check`,
which is a no-op unless the caller wraps the computation in
:func:`jax.experimental.checkify.checkify`; nothing is ever clamped silently.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from fusion_jax.errors import ArgumentError

G_MAX_MIN = 10.0
G_MAX_MAX = 40.0
G_MAX_MESSAGE = "Specified fusion g_max value must be between 10 and 40."

_MAX_LISTED_ROWS = 8


def concrete_value(x: Any) -> np.ndarray | None:
    """Return ``x`` as a NumPy array if it is concrete, ``None`` if traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_g_max(g_max: Any) -> None:
    """Check that every value of ``g_max`` lies in [10, 40] uS.

    Raises:
        ArgumentError: for concrete values outside the range.
    """
    value = concrete_value(g_max)
    if value is None:
        g = jnp.asarray(g_max)
        checkify.debug_check(
            jnp.all((g >= G_MAX_MIN) & (g <= G_MAX_MAX)),
            G_MAX_MESSAGE + " Got {g_max}.",
            g_max=g,
        )
        return
    if not _is_real_numeric(value.dtype):
        raise ArgumentError(f"{G_MAX_MESSAGE} Got a non-numeric g_max of dtype {value.dtype}.")
    if value.size == 0 or not np.all((value >= G_MAX_MIN) & (value <= G_MAX_MAX)):
        raise ArgumentError(G_MAX_MESSAGE)


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype computations run in for inputs of ``dtype``.

    float32 and float64 run natively; float16, bfloat16, integers and bools
    run in float32.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and jax.config.jax_enable_x64:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def result_dtype(dtype: Any) -> jnp.dtype:
    """The dtype results are returned in for inputs of ``dtype``."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return compute_dtype(dtype) if dtype.itemsize >= 4 else dtype
    return jnp.dtype(jnp.float32)


def as_matrix_stack(x: Any, name: str) -> jax.Array:
    """Convert ``x`` to a JAX array of rank >= 2 with a non-empty last axis."""
    if not isinstance(x, jax.Array | np.ndarray | jax.core.Tracer):
        x = np.asarray(x)
    if not _is_real_numeric(x.dtype):
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}.")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions [..., out, in] (one row per output), "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[-1] == 0:
        raise ValueError(
            f"{name} has an 'in' axis (last axis) of length 0, shape {tuple(x.shape)}: "
            "every output row needs at least one input."
        )
    return jnp.asarray(x)


def _is_real_numeric(dtype: Any) -> bool:
    dtype = jnp.dtype(dtype)
    return dtype == jnp.bool_ or (
        jnp.issubdtype(dtype, jnp.number) and not jnp.issubdtype(dtype, jnp.complexfloating)
    )


def check_finite(x: jax.Array, name: str) -> None:
    """Refuse NaN or Inf in ``x``, naming how many and in which rows.

    Concrete arrays raise :class:`ValueError`; traced arrays are checked with
    ``checkify.debug_check``.
    """
    value = concrete_value(x)
    if value is None:
        bad = ~jnp.isfinite(x)
        checkify.debug_check(
            ~jnp.any(bad),
            f"{name} contain {{count}} NaN or Inf values",
            count=jnp.sum(bad),
        )
        return
    bad = ~np.isfinite(value)
    count = int(bad.sum())
    if count == 0:
        return
    rows = np.argwhere(bad.any(axis=-1))
    listed = [
        tuple(int(i) for i in r) if len(r) > 1 else int(r[0]) for r in rows[:_MAX_LISTED_ROWS]
    ]
    more = f" and {len(rows) - _MAX_LISTED_ROWS} more" if len(rows) > _MAX_LISTED_ROWS else ""
    raise ValueError(
        f"{name} contain {count} NaN or Inf value{'s' if count != 1 else ''} "
        f"in row{'s' if len(rows) != 1 else ''} {listed}{more} "
        f"(shape {tuple(value.shape)}, rows indexed [..., out])."
    )
