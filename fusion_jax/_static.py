"""Keep the Python numbers of a pytree compile-time constants across ``jax.jit``.

A noise model is a pytree of floats; passed to a jitted function as an
argument, every float becomes a traced scalar. XLA then cannot fold the
model's constants, and a term switched off by a literal 0 (for example
``read_noise_scale=0.0``) can no longer be skipped: it is computed and
multiplied by a zero known only at run time. :class:`StaticNumbers` wraps
such a pytree so that its Python ``int``/``float``/``bool`` leaves travel in
the tree structure (static, part of the compilation cache key) and only its
array leaves are traced.
"""

from __future__ import annotations

import struct
from typing import Any, Generic, TypeVar

import jax

__all__ = ["StaticNumbers", "has_array_leaves"]

T = TypeVar("T")


def _is_number(leaf: Any) -> bool:
    return isinstance(leaf, int | float)


class _Number:
    """A Python number as static data: equal only to the same type and the same bits.

    ``==`` on the numbers themselves would let ``0.0`` and ``-0.0``, or ``1``
    and ``1.0``, share one compiled function, and would never match a NaN.
    """

    __slots__ = ("value",)

    def __init__(self, value: int | float) -> None:
        self.value = value

    def _key(self) -> tuple[type, Any]:
        v = self.value
        return type(v), struct.pack("<d", v) if isinstance(v, float) else v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Number) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return repr(self.value)


def has_array_leaves(tree: Any) -> bool:
    """Whether ``tree`` has leaves other than Python numbers (arrays, traced values).

    Example:
        >>> import jax.numpy as jnp
        >>> from fusion_jax._static import has_array_leaves
        >>> has_array_leaves({"a": 1.0}), has_array_leaves({"a": jnp.ones(2)})
        (False, True)
    """
    return not all(_is_number(leaf) for leaf in jax.tree_util.tree_leaves(tree))


@jax.tree_util.register_pytree_node_class
class StaticNumbers(Generic[T]):
    """A pytree holding ``value`` whose Python-number leaves are static.

    Attributes:
        value: The wrapped pytree (for example a noise model).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fusion_jax._static import StaticNumbers
        >>> wrapped = StaticNumbers({"scale": 2.0, "offset": jnp.ones(())})
        >>> len(jax.tree_util.tree_leaves(wrapped))    # only the array is a leaf
        1
        >>> def scaled(s):
        ...     assert isinstance(s.value["scale"], float)   # not traced under jit
        ...     return s.value["offset"] * s.value["scale"]
        >>> jax.jit(scaled)(wrapped)
        Array(2., dtype=float32)
    """

    def __init__(self, value: T) -> None:
        self.value = value

    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple[Any, tuple[Any, ...]]]:
        leaves, treedef = jax.tree_util.tree_flatten(self.value)
        numbers = tuple(_Number(leaf) if _is_number(leaf) else None for leaf in leaves)
        arrays = tuple(leaf for leaf in leaves if not _is_number(leaf))
        return arrays, (treedef, numbers)

    @classmethod
    def tree_unflatten(
        cls, aux: tuple[Any, tuple[Any, ...]], arrays: tuple[Any, ...]
    ) -> StaticNumbers[Any]:
        treedef, numbers = aux
        rest = iter(arrays)
        leaves = [next(rest) if number is None else number.value for number in numbers]
        return cls(jax.tree_util.tree_unflatten(treedef, leaves))

    def __repr__(self) -> str:
        return f"StaticNumbers({self.value!r})"
