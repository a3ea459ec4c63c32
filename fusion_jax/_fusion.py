"""Steer XLA's fusion on the CPU: compute a value once instead of in every consumer.

XLA fuses cheap elementwise producers into each consumer and recomputes
them there: a random hash read by three fusions is computed three times,
and a clipped product read by a reduction and an elementwise pass is
recomputed in both. ``jax.lax.optimization_barrier`` does not prevent this
on the CPU backend (XLA expands barriers before fusion).

:func:`materialize` returns its argument unchanged, but on the CPU computes
it in a branch of a ``lax.cond``: a branch is compiled on its own, so the
value is computed once and stored. The condition is always true but
derived from the data, so XLA cannot see it and remove the branch. Its
derivative is the identity; other backends get the value as is. Under
``jax.vmap`` the condition stays one for the whole batch (a custom batching
rule), so the branch stays a branch: a batched condition would become a
select of both branches, which reverse mode cannot transpose when the value
is a tangent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

__all__ = ["materialize", "materialize_fn"]

T = TypeVar("T")


def _true_from(value: jax.Array) -> jax.Array:
    """A boolean True that XLA cannot fold: ``(top bit of an element) | 1 != 0``."""
    first = jnp.ravel(value)[:1]
    if first.size == 0:
        return jnp.bool_(True)
    bits = jax.lax.bitcast_convert_type(first.astype(jnp.float32), jnp.uint32)
    return ((bits[0] >> 31) | 1) != 0


@custom_vmap
def _opaque_true_unbatched(value: jax.Array) -> jax.Array:
    return _true_from(value)


@_opaque_true_unbatched.def_vmap
def _opaque_true_vmap(
    axis_size: int, in_batched: list[bool], value: jax.Array
) -> tuple[jax.Array, bool]:
    # One condition for the whole batch: the branch stays a branch under
    # jax.vmap (a batched condition would turn it into a select of both).
    # Through this function again, so that enclosing vmaps do the same.
    return _opaque_true_unbatched(value), False


def _opaque_true(value: jax.Array) -> jax.Array:
    """A boolean True that XLA cannot fold, never batched by ``jax.vmap``."""
    return _opaque_true_unbatched(jax.lax.stop_gradient(value))


def _sharded_in_type(value: Any) -> bool:
    """Whether ``value`` is split over an ``Explicit`` mesh axis (sharding in its type).

    The branch trick does not apply there (slicing a sharded axis and
    branches of differing shardings are refused), so such values are computed
    as they are: :func:`materialize_fn` only ever saves time, never changes a value.
    """
    sharding = (
        getattr(value, "sharding", None)
        if isinstance(value, jax.ShapeDtypeStruct)
        else (jax.typeof(value).sharding)
    )
    return any(axis is not None for axis in getattr(sharding, "spec", ()))


def materialize_fn(fn: Callable[[], T], opaque_from: jax.Array) -> T:
    """``fn()``, on the CPU computed once in its own compiled body.

    No custom derivative (differentiating goes through the ``lax.cond``);
    :func:`materialize` has the identity as its derivative.

    Args:
        fn: A function of no arguments (close over its inputs).
        opaque_from: Any array known before ``fn`` runs; the branch
            condition is derived from it.

    Returns:
        What ``fn()`` returns.
    """
    like = jax.eval_shape(fn)
    if any(_sharded_in_type(v) for v in (opaque_from, *jax.tree.leaves(like))):
        return fn()

    def never() -> T:  # the branch not taken: costs nothing at run time
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)

    def on_cpu() -> T:
        return jax.lax.cond(_opaque_true(opaque_from), fn, never)

    return jax.lax.platform_dependent(cpu=on_cpu, default=fn)


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
