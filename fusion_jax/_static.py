"""Tell a pytree of Python numbers from one holding arrays.

The NNX layers keep a noise model made only of Python numbers as static
structure (compile-time constants of a jitted step) and one holding arrays
as data. Switches that change what a model computes (``read_noise``) are
static dataclass fields of the model itself, never inferred from a value.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["has_array_leaves"]


def _is_number(leaf: Any) -> bool:
    return isinstance(leaf, int | float)


def has_array_leaves(tree: Any) -> bool:
    """Whether ``tree`` has leaves other than Python numbers (arrays, traced values).

    Args:
        tree: Any pytree.

    Returns:
        ``True`` if some leaf is not a Python ``int``/``float``/``bool``.

    Example:
        >>> import jax.numpy as jnp
        >>> from fusion_jax._static import has_array_leaves
        >>> has_array_leaves({"a": 1.0}), has_array_leaves({"a": jnp.ones(2)})
        (False, True)
    """
    return not all(_is_number(leaf) for leaf in jax.tree_util.tree_leaves(tree))
