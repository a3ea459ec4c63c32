"""Leaf paths of parameter pytrees: the one walker every module uses.

A leaf's path is a tuple of plain names (dict keys, attribute names,
sequence indices) with the ``.value`` of a box (``nnx.Variable``,
``nn.Partitioned``) left out, so a kernel's path ends in ``"kernel"``
whatever holds it: ``("params", "Dense_0", "kernel")`` in Linen variables,
``("layers", 0, "kernel")`` in an ``nnx.State``. :func:`layer_name` is the
name a chip file gives the layer of a kernel: its module's path, ``/``-joined,
without the leading ``params`` collection.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax
import numpy as np

#: A leaf's position in a pytree as plain names, e.g. ``("params", "Dense_0", "kernel")``.
LeafPath = tuple[Hashable, ...]

#: Attributes under which a box (nnx.Variable, nn.Partitioned) holds its array.
BOX_ATTRS = ("value", "raw_value")


def key_name(entry: Any) -> Hashable:
    """One ``jax.tree_util`` key-path entry as a plain name."""
    if isinstance(entry, jax.tree_util.DictKey):
        return entry.key
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.SequenceKey):
        return entry.idx
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return entry.key
    return str(entry)


def plain_path(keypath: tuple[Any, ...]) -> LeafPath:
    """A ``jax.tree_util`` key path as plain names, without the ``.value`` of a box.

    Example:
        >>> import jax
        >>> from fusion_jax._paths import plain_path
        >>> [plain_path(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": [1, 2]})[0]]
        [('a', 0), ('a', 1)]
    """
    entries = list(keypath)
    while (
        entries
        and isinstance(entries[-1], jax.tree_util.GetAttrKey)
        and entries[-1].name in BOX_ATTRS
    ):
        entries.pop()
    return tuple(key_name(entry) for entry in entries)


def path_text(path: LeafPath) -> str:
    """A path as ``/``-joined text, e.g. ``"params/Dense_0/kernel"``."""
    return "/".join(str(p) for p in path)


def is_kernel(path: LeafPath, leaf: Any) -> bool:
    """Whether a leaf is a weight kernel: named ``"kernel"``, at least 2 dimensions.

    This is :func:`fusion_jax.program_params`' default selection: Flax's
    name for the weights of ``Dense``/``Linear``, ``Conv``, ``DenseGeneral``
    and ``Einsum``. Biases, normalisation scales, embeddings, RNG state and
    batch statistics are not selected.

    Args:
        path: The leaf's path as plain names (see :func:`plain_path`).
        leaf: The leaf.

    Returns:
        Whether the leaf is a kernel to program.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> fj.is_kernel(("params", "Dense_0", "kernel"), jnp.ones((3, 4)))
        True
        >>> fj.is_kernel(("params", "Dense_0", "bias"), jnp.ones(4))
        False
    """
    return bool(path) and path[-1] == "kernel" and np.ndim(leaf) >= 2


def layer_name(path: LeafPath) -> str:
    """The layer name of the kernel at ``path``, as chip files name layers.

    Its module's path, ``/``-joined, without a leading ``params`` collection;
    a kernel at the root is named ``kernel``.

    Example:
        >>> from fusion_jax._paths import layer_name
        >>> layer_name(("params", "Dense_0", "kernel")), layer_name(("layers", 0, "kernel"))
        ('Dense_0', 'layers/0')
    """
    module = path[:-1]
    if module and module[0] == "params":
        module = module[1:]
    return path_text(module) or "kernel"
