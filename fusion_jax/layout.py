"""Between Flax kernel layout and the reference's one-row-per-output layout.

The reference (aihwkit) stores a layer as ``[out, in]``, one row per output;
conv weights ``[out, in, kh, kw]`` are flattened to ``[out, in * kh * kw]``.
Flax keeps the output channel on the LAST axis: ``Dense``/``nnx.Linear``
kernels are ``[in, out]``, conv kernels ``[kh, kw, in, out]``. Getting the axis
wrong silently scales the wrong direction, so every conversion goes through
:func:`kernel_to_rows` and :func:`rows_to_kernel`.

:func:`flax_to_layers` and :func:`layers_to_flax` apply them to a whole Flax
parameter pytree (Linen params dict, NNX ``State`` or pure dict), so a model
exports in one call and the imported weights load back into the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["flax_to_layers", "kernel_to_rows", "layers_to_flax", "rows_to_kernel"]

PyTree = TypeVar("PyTree")

#: Leaf attribute names under which a Flax variable box holds its array
#: (``nnx.Variable``, ``nn.Partitioned``): dropped from layer names.
_BOX_ATTRS = ("value", "raw_value")


def kernel_to_rows(kernel: Float[ArrayLike, "*spatial in out"]) -> Float[Array, "out fan_in"]:
    """Flax kernel ``[*spatial, in, out]`` to reference rows ``[out, in * prod(spatial)]``.

    The row order within each output follows the reference's (PyTorch's)
    flattening of ``[out, in, *spatial]``, so exported files match aihwkit's
    for the same layer.

    Args:
        kernel: A Dense kernel ``[in, out]`` or conv kernel ``[kh, kw, in, out]``
            (any number of spatial axes).

    Returns:
        The matrix in reference layout, one row per output channel.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> kernel = jnp.arange(6.0).reshape(3, 2)        # Dense: in=3, out=2
        >>> fj.layout.kernel_to_rows(kernel)
        Array([[0., 2., 4.],
               [1., 3., 5.]], dtype=float32)
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(
            f"kernel must have at least 2 dimensions [..., in, out], got {kernel.shape}."
        )
    spatial = kernel.ndim - 2
    # [*spatial, in, out] -> [out, in, *spatial]
    perm = (kernel.ndim - 1, kernel.ndim - 2, *range(spatial))
    moved = jnp.transpose(kernel, perm)
    return moved.reshape(moved.shape[0], -1)


def rows_to_kernel(
    rows: Float[ArrayLike, "out fan_in"], kernel_shape: Sequence[int]
) -> Float[Array, "*spatial in out"]:
    """Inverse of :func:`kernel_to_rows`: reference rows back to a Flax kernel.

    Args:
        rows: Matrix ``[out, in * prod(spatial)]``.
        kernel_shape: The Flax kernel shape ``[*spatial, in, out]``.

    Returns:
        The kernel, shape ``kernel_shape``.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> kernel = jnp.arange(24.0).reshape(2, 2, 3, 2)  # Conv: 2x2, in=3, out=2
        >>> rows = fj.layout.kernel_to_rows(kernel)
        >>> rows.shape
        (2, 12)
        >>> bool((fj.layout.rows_to_kernel(rows, kernel.shape) == kernel).all())
        True
    """
    rows = jnp.asarray(rows)
    kernel_shape = tuple(int(d) for d in kernel_shape)
    if len(kernel_shape) < 2:
        raise ValueError(f"kernel_shape must have at least 2 dimensions, got {kernel_shape}.")
    *spatial, n_in, n_out = kernel_shape
    expected = (n_out, n_in * math.prod(spatial))
    if rows.shape != expected:
        raise ValueError(
            f"rows of shape {tuple(rows.shape)} do not fit kernel shape {kernel_shape} "
            f"(expected {expected})."
        )
    moved = rows.reshape(n_out, n_in, *spatial)
    # [out, in, *spatial] -> [*spatial, in, out]
    perm = (*range(2, 2 + len(spatial)), 1, 0)
    return jnp.transpose(moved, perm)


def _key_name(key: Any) -> str:
    """One path entry of ``jax.tree_util.tree_flatten_with_path`` as text."""
    if isinstance(key, jax.tree_util.DictKey | jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    return str(key)


def _kernel_name(path: tuple[Any, ...], leaf: Any) -> str | None:
    """The layer name of a kernel leaf, ``None`` for any other leaf.

    A kernel is a leaf named ``kernel`` (after dropping a variable box's
    ``value`` attribute) with at least 2 dimensions. Its name is the
    ``/``-joined path of its module, without a leading ``params`` collection;
    a kernel at the root is named ``kernel``.
    """
    keys = list(path)
    while keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in _BOX_ATTRS:
        keys.pop()
    parts = [_key_name(k) for k in keys]
    if not parts or parts[-1] != "kernel" or np.ndim(leaf) < 2:
        return None
    module = parts[:-1]
    if module and module[0] == "params":
        module = module[1:]
    return "/".join(module) or "kernel"


def _kernels(params: Any) -> dict[str, Any]:
    """Layer name -> kernel leaf, in pytree flattening order."""
    kernels: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _kernel_name(path, leaf)
        if name is None:
            continue
        if name in kernels:
            raise ValueError(f"two kernels map to the layer name {name!r}; rename a module.")
        kernels[name] = leaf
    if not kernels:
        raise ValueError(
            "params hold no kernels (leaves named 'kernel' with at least 2 dimensions); pass a "
            "Linen params dict, an NNX State or its pure dict."
        )
    return kernels


def flax_to_layers(
    params: Any,
    *,
    include: Callable[[str], bool] | Collection[str] | None = None,
) -> dict[str, Float[Array, "out fan_in"]]:
    """Every kernel of a Flax parameter pytree in the reference layout ``[out, in]``.

    Kernels are the leaves named ``kernel`` with at least 2 dimensions:
    ``linen.Dense``/``nnx.Linear`` ``[in, out]`` and ``linen.Conv``/``nnx.Conv``
    ``[*spatial, in, out]``, each flattened by :func:`kernel_to_rows`. Biases,
    norms and embeddings are not analog layers and are left out. Only
    kernels whose output is the last axis and input the one before it fit
    (not, e.g., ``DenseGeneral`` with several output axes).

    Args:
        params: A Linen params dict (``variables["params"]`` or the whole
            ``variables`` dict), an NNX ``State`` (``nnx.state(model, nnx.Param)``)
            or its pure dict, or any pytree of such dicts.
        include: Which layers to keep: a predicate on the layer name, or a
            collection of layer names. Default: all kernels.

    Returns:
        Layer name -> matrix ``[out, in * prod(spatial)]``, in the pytree's
        flattening order (sorted by key within each dict). A layer name is
        the ``/``-joined path of the kernel's module, e.g. ``"Dense_0"`` or
        ``"blocks/0/linear"`` (a leading ``params`` collection is dropped; a
        kernel at the root is named ``"kernel"``).

    Raises:
        ValueError: if ``params`` holds no kernels, two kernels get the same
            name, or ``include`` names layers that do not exist (listing the
            existing ones).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
        >>> layers = fj.layout.flax_to_layers(variables)
        >>> {name: w.shape for name, w in layers.items()}
        {'layers_0': (4, 27), 'layers_1': (2, 4)}
    """
    kernels = _kernels(params)
    if include is None:
        selected = list(kernels)
    elif callable(include):
        selected = [name for name in kernels if include(name)]
    else:
        wanted = set(include) if not isinstance(include, str) else {include}
        unknown = sorted(wanted - set(kernels))
        if unknown:
            raise ValueError(
                f"include names unknown layer(s) {unknown}; the kernels are {list(kernels)}."
            )
        selected = [name for name in kernels if name in wanted]
    return {name: kernel_to_rows(kernels[name]) for name in selected}


def layers_to_flax(layers: Mapping[str, Float[ArrayLike, "out fan_in"]], params: PyTree) -> PyTree:
    """Put ``[out, in]`` matrices back into a copy of a Flax parameter pytree.

    The inverse of :func:`flax_to_layers`: each matrix replaces the kernel of
    the same layer name, reshaped by :func:`rows_to_kernel` and cast to the
    kernel's dtype. Kernels not in ``layers`` and all other leaves are kept;
    ``params`` itself is not modified.

    Args:
        layers: Layer name -> matrix ``[out, in * prod(spatial)]``, e.g. the
            result of :func:`fusion_jax.fusion_import`. May hold a subset of
            the layers.
        params: The pytree the layers came from (Linen params dict, NNX
            ``State`` or pure dict).

    Returns:
        A pytree of the same structure and dtypes as ``params``. For NNX, load
        it with ``nnx.update(model, new_state)``.

    Raises:
        ValueError: if a layer name matches no kernel (listing the kernels),
            or a matrix's shape does not fit its kernel (naming the layer and
            both shapes).
        TypeError: if a matrix is not real floating point (naming the layer).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> params = nn.Dense(2).init(jax.random.key(0), jnp.ones((1, 3)))["params"]
        >>> layers = fj.layout.flax_to_layers(params)
        >>> new = fj.layout.layers_to_flax({"kernel": 2 * layers["kernel"]}, params)
        >>> bool(jnp.allclose(new["kernel"], 2 * params["kernel"]))
        True
    """
    kernels = _kernels(params)
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a mapping layer name -> matrix, got {type(layers)}.")
    unknown = [name for name in layers if name not in kernels]
    if unknown:
        raise ValueError(
            f"layer(s) {unknown} match no kernel of params; the kernels are {list(kernels)}."
        )
    for name, rows in layers.items():
        kernel_shape = tuple(np.shape(kernels[name]))
        expected = (kernel_shape[-1], math.prod(kernel_shape[:-1]))
        if tuple(np.shape(rows)) != expected:
            raise ValueError(
                f"layer {name!r}: matrix of shape {tuple(np.shape(rows))} does not fit the "
                f"kernel of shape {kernel_shape}, which needs [out, in] = {expected}."
            )
        dtype = rows.dtype if hasattr(rows, "dtype") else np.asarray(rows).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"layer {name!r}: matrix must be real floating point, got {dtype}.")

    def replace(path: tuple[Any, ...], leaf: Any) -> Any:
        name = _kernel_name(path, leaf)
        if name is None or name not in layers:
            return leaf
        return rows_to_kernel(layers[name], np.shape(leaf)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(replace, params)
