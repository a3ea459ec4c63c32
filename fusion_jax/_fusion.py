"""Steer XLA's fusion on the CPU: compute a value once instead of in every consumer.

XLA fuses cheap elementwise producers into each consumer and recomputes
them there: a per-row quantity (a scale, a slope) broadcast over a row is
recomputed for every element of the row, and a random hash read by three
fusions is computed three times. ``jax.lax.optimization_barrier`` does not
prevent this on the CPU backend (XLA expands barriers before fusion).

:func:`materialize` returns its argument unchanged, but on the CPU computes
it inside the body of a ``while_loop`` that runs once: a loop body is
compiled on its own, so the value is computed once and stored. The trip
count is 1 but derived from the data, so XLA cannot see it and remove the
loop. Its derivative is the identity; other backends get the value as is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

__all__ = ["materialize", "materialize_fn"]

T = TypeVar("T")


def _opaque_one(leaves: list[jax.Array]) -> jax.Array:
    """An int32 1 that XLA cannot fold: ``(top bit of some element) | 1``."""
    first = jnp.ravel(leaves[0])[:1]
    if first.size == 0:
        return jnp.int32(1)
    bits = jax.lax.bitcast_convert_type(first.astype(jnp.float32), jnp.uint32)
    return ((bits[0] >> 31) | 1).astype(jnp.int32)


def _run_once(fn: Callable[[], T], like: T, trips: jax.Array) -> T:
    init = (jnp.int32(0), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like))
    _, out = jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, fn()), init)
    return out


def materialize_fn(fn: Callable[[], T], trips_from: jax.Array) -> T:
    """``fn()``, on the CPU computed once in its own compiled body (not differentiable).

    Args:
        fn: A function of no arguments (close over its inputs).
        trips_from: Any non-empty array known before ``fn`` runs; the loop's
            trip count is derived from it.

    Returns:
        What ``fn()`` returns.
    """
    like = jax.eval_shape(fn)
    trips = _opaque_one([trips_from])
    return jax.lax.platform_dependent(cpu=lambda: _run_once(fn, like, trips), default=fn)


@jax.custom_jvp
def materialize(tree: T) -> T:
    """``tree`` itself, computed once on the CPU rather than in every consumer.

    Args:
        tree: A pytree of arrays.

    Returns:
        The same values; the derivative is the identity.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fusion_jax._fusion import materialize
        >>> row_scale = materialize(jnp.array([2.0, 4.0]))
        >>> row_scale
        Array([2., 4.], dtype=float32)
        >>> jax.grad(lambda v: jnp.sum(materialize(v * v)))(jnp.array([1.0, 3.0]))
        Array([2., 6.], dtype=float32)
    """
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.size(leaf)]
    if not leaves:
        return tree
    return materialize_fn(lambda: tree, leaves[0])


@materialize.defjvp
def _materialize_jvp(primals: tuple[Any], tangents: tuple[Any]) -> tuple[Any, Any]:
    (tree,), (tangent,) = primals, tangents
    return materialize(tree), tangent
