"""Linen: kernel axes of a model's layers, and layers of any kernel shape (private).

Re-exported by :mod:`fusion_jax.linen`. A Linen model's layers exist only
while it runs, so their kernel axes are read by running ``init`` abstractly
(``jax.eval_shape``) with a method interceptor that sees every layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fusion_jax.layout import KernelAxes
from fusion_jax.program_params import LeafPath, _path_text, _plain_path

__all__ = ["kernel_layouts", "layer_kernel_axes"]


def layer_kernel_axes(module: nn.Module, einsum_str: str | None = None) -> KernelAxes | None:
    """The axes of a Linen layer's own kernel (``None`` for other modules).

    Known layers: ``nn.Dense``, ``nn.Conv``, ``nn.ConvTranspose``,
    ``nn.DenseGeneral`` (``batch_dims`` are stack axes), ``nn.Einsum`` (from
    its ``einsum_str``, or the one given to the call) and the Fusion layers
    derived from them.

    Args:
        module: A Linen module.
        einsum_str: The call's ``einsum_str`` for an ``nn.Einsum`` given it at
            call time.

    Returns:
        The kernel's :class:`~fusion_jax.layout.KernelAxes`, or ``None``.

    Raises:
        ValueError: for an ``nn.Einsum`` without an ``einsum_str``.
    """
    if isinstance(module, nn.Dense):
        return KernelAxes.dense()
    if isinstance(module, nn.Conv | nn.ConvTranspose):
        size = module.kernel_size
        return KernelAxes.conv(1 if isinstance(size, int) else len(size))
    if isinstance(module, nn.DenseGeneral):
        n_out = 1 if isinstance(module.features, int) else len(module.features)
        n_in = 1 if isinstance(module.axis, int) else len(module.axis)
        return KernelAxes.general(n_in, n_out, len(tuple(module.batch_dims)))
    if isinstance(module, nn.Einsum):
        text = einsum_str if einsum_str is not None else module.einsum_str
        if text is None:
            raise ValueError(
                f"{'/'.join(module.path) or type(module).__name__}: an nn.Einsum without an "
                "einsum_str has no known kernel axes."
            )
        return KernelAxes.einsum(text)
    return None


def kernel_layouts(
    model: nn.Module, *args: Any, method: Callable[..., Any] | str | None = None, **kwargs: Any
) -> dict[LeafPath, KernelAxes]:
    """The kernel axes of every known layer of a Linen model, by leaf path.

    Runs ``model.init`` abstractly (``jax.eval_shape``: nothing is computed)
    on example inputs and records the axes of every ``nn.Dense``,
    ``nn.Conv``, ``nn.ConvTranspose``, ``nn.DenseGeneral`` and ``nn.Einsum``
    (and Fusion layer) it calls, including those inside
    ``nn.MultiHeadDotProductAttention``. A kernel with more leading axes than
    its layer's own (layers stacked by ``nn.scan`` / ``nn.vmap``) gets them as
    stack axes. The result is the ``layouts`` argument of
    :func:`fusion_jax.program_params` and :func:`fusion_jax.sweep` for the
    model's variables.

    Args:
        model: The Linen model.
        *args: Example inputs for ``model.init`` (only shapes and dtypes matter).
        method: As for ``model.init``.
        **kwargs: Keyword arguments of the call (e.g. ``train=False``).

    Returns:
        ``("params", *module path, "kernel")`` -> :class:`~fusion_jax.layout.KernelAxes`.

    Raises:
        ValueError: for a kernel that does not end with its layer's own shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.Dense(2)])
        >>> x = jnp.ones((1, 8, 8, 3))
        >>> layouts = fj.linen.kernel_layouts(model, x)
        >>> layouts[("params", "layers_0", "kernel")]
        KernelAxes(inputs=(2, 0, 1), outputs=(3,), stack=())
        >>> variables = model.init(jax.random.key(0), x)
        >>> chip = fj.program_params(variables, jax.random.key(1), layouts=layouts)
        >>> model.apply(chip, x).shape
        (1, 8, 8, 2)
    """
    seen: dict[LeafPath, tuple[KernelAxes, tuple[int, ...]]] = {}

    def record(next_fun: Callable[..., Any], f_args: Any, f_kwargs: Any, context: Any) -> Any:
        out = next_fun(*f_args, **f_kwargs)
        module = context.module
        if context.method_name != "__call__" or not module.has_variable("params", "kernel"):
            return out
        einsum_str = f_kwargs.get("einsum_str") if isinstance(module, nn.Einsum) else None
        if isinstance(module, nn.Einsum) and einsum_str is None and len(f_args) > 1:
            einsum_str = f_args[1]
        axes = layer_kernel_axes(module, einsum_str)
        if axes is not None:
            shape = tuple(np.shape(nn.meta.unbox(module.get_variable("params", "kernel"))))
            seen[("params", *module.path, "kernel")] = (axes, shape)
        return out

    with nn.intercept_methods(record):
        variables = jax.eval_shape(
            lambda: model.init(jax.random.key(0), *args, method=method, **kwargs)
        )
    shapes = {
        _plain_path(keypath): tuple(np.shape(leaf))
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(variables))[0]
    }
    layouts: dict[LeafPath, KernelAxes] = {}
    for path, (axes, own) in seen.items():
        full = shapes.get(path)
        if full is None:
            continue
        extra = len(full) - len(own)
        if extra < 0 or full[extra:] != own:
            raise ValueError(
                f"{_path_text(path)}: the kernel of shape {full} does not end with its layer's "
                f"own kernel shape {own}; pass its layout by hand."
            )
        layouts[path] = axes.stacked(extra) if extra else axes
    return layouts
