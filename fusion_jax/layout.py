"""Between Flax kernel layout and the reference's one-row-per-output layout.

The reference (aihwkit) stores a layer as ``[out, in]``, one row per output;
conv weights ``[out, in, kh, kw]`` are flattened to ``[out, in * kh * kw]``.
Flax keeps the output channel on the LAST axis: ``Dense``/``nnx.Linear``
kernels are ``[in, out]``, conv kernels ``[kh, kw, in, out]``. Getting the axis
wrong silently scales the wrong direction, so every conversion goes through
these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["kernel_to_rows", "rows_to_kernel"]


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
        raise ValueError(f"kernel must have at least 2 dimensions [..., in, out], got {kernel.shape}.")
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
    expected = (n_out, n_in * int(jnp.prod(jnp.array(spatial, dtype=int))) if spatial else n_in)
    if rows.shape != expected:
        raise ValueError(
            f"rows of shape {tuple(rows.shape)} do not fit kernel shape {kernel_shape} "
            f"(expected {expected})."
        )
    moved = rows.reshape(n_out, n_in, *spatial)
    # [out, in, *spatial] -> [*spatial, in, out]
    perm = (*range(2, 2 + len(spatial)), 1, 0)
    return jnp.transpose(moved, perm)
