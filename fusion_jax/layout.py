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

:class:`KernelAxes` says which axes of a kernel of any shape are its inputs,
its outputs and its stack (independent layers, e.g. a leading layer axis
from ``nnx.scan``); :func:`kernel_to_columns` and :func:`columns_to_kernel`
map any kernel to ``[*stack, in_flat, out_flat]`` and back. Every output
feature of every layer is one chip row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _paths

__all__ = [
    "KernelAxes",
    "columns_to_kernel",
    "flax_to_layers",
    "kernel_to_columns",
    "kernel_to_rows",
    "layers_to_flax",
    "rows_to_kernel",
]

PyTree = TypeVar("PyTree")


@dataclasses.dataclass(frozen=True)
class KernelAxes:
    """Which axes of a kernel are its inputs, its outputs and its stack.

    A kernel of any shape is a stack of independent layers (``stack`` axes,
    e.g. the layer axis added by ``nnx.scan``/``nn.scan``, or the heads of an
    einsum that keeps them apart), each mapping its inputs (``inputs`` axes,
    flattened) to its output features (``outputs`` axes, flattened). Every
    output feature of every layer is one chip row.

    The order of ``inputs`` is the order in which the inputs are flattened
    (first axis slowest), the order an export lists a row's values in: a
    convolution ``[*spatial, in, out]`` has ``inputs=(n, 0, ..., n - 1)``,
    PyTorch's ``[out, in, *spatial]`` flattening. ``outputs`` and ``stack``
    are flattened in the order given too. Together the three name every axis
    of the kernel exactly once. Build one with the constructors
    (:meth:`dense`, :meth:`conv`, :meth:`general`, :meth:`einsum`) and add
    leading stack axes with :meth:`stacked`.

    Attributes:
        inputs: Input axes, in flattening order (at least one).
        outputs: Output axes, in flattening order (at least one).
        stack: Stack axes (independent layers), possibly none.

    Raises:
        ValueError: if the axes are not ``0 .. ndim - 1`` each exactly once,
            or ``inputs`` or ``outputs`` is empty.

    Example:
        >>> import fusion_jax as fj
        >>> fj.layout.KernelAxes.dense()                  # [in, out]
        KernelAxes(inputs=(0,), outputs=(1,), stack=())
        >>> fj.layout.KernelAxes.conv(2)                  # [kh, kw, in, out]
        KernelAxes(inputs=(2, 0, 1), outputs=(3,), stack=())
        >>> fj.layout.KernelAxes.dense().stacked(1)       # [layers, in, out]
        KernelAxes(inputs=(1,), outputs=(2,), stack=(0,))
        >>> fj.layout.KernelAxes.einsum("btd,dhk->bthk")  # attention query [d, heads, k]
        KernelAxes(inputs=(0,), outputs=(1, 2), stack=())
    """

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    stack: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for field in ("inputs", "outputs", "stack"):
            value = getattr(self, field)
            if isinstance(value, int | np.integer):
                value = (value,)
            try:
                axes = tuple(int(a) for a in value)
            except TypeError:
                raise TypeError(
                    f"KernelAxes.{field} must be a tuple of axis numbers, got {value!r}."
                ) from None
            if any(isinstance(a, bool) for a in value):
                raise TypeError(f"KernelAxes.{field} must hold ints, got {value!r}.")
            object.__setattr__(self, field, axes)
        if not self.inputs or not self.outputs:
            raise ValueError(
                f"KernelAxes needs at least one input and one output axis, got {self}."
            )
        every = sorted(self.inputs + self.outputs + self.stack)
        if every != list(range(len(every))):
            raise ValueError(
                f"KernelAxes must name each axis 0..{len(every) - 1} exactly once "
                f"(non-negative axis numbers), got {self}."
            )

    @property
    def ndim(self) -> int:
        """The rank of the kernels these axes describe."""
        return len(self.inputs) + len(self.outputs) + len(self.stack)

    @classmethod
    def dense(cls) -> KernelAxes:
        """``nnx.Linear`` / ``nn.Dense``: ``[in, out]``."""
        return cls(inputs=(0,), outputs=(1,))

    @classmethod
    def conv(cls, spatial: int, *, transpose_kernel: bool = False) -> KernelAxes:
        """A convolution with ``spatial`` window axes: ``[*window, in, out]``.

        The inputs flatten as PyTorch flattens ``[out, in, *window]``. A
        transposed convolution (``nnx.ConvTranspose`` / ``nn.ConvTranspose``)
        stores its kernel so too, unless built with ``transpose_kernel=True``:
        then the kernel is ``[*window, out, in]`` (the output channels are
        the second-to-last axis), which ``transpose_kernel=True`` gives here.

        Args:
            spatial: Number of window axes (2 for a 2-D convolution).
            transpose_kernel: The kernel is ``[*window, out, in]``, as Flax
                stores a transposed convolution built with ``transpose_kernel=True``.

        Returns:
            The kernel's axes.

        Raises:
            ValueError: if ``spatial`` is negative.

        Example:
            >>> import fusion_jax as fj
            >>> fj.layout.KernelAxes.conv(2, transpose_kernel=True)  # [kh, kw, out, in]
            KernelAxes(inputs=(3, 0, 1), outputs=(2,), stack=())
        """
        spatial = int(spatial)
        if spatial < 0:
            raise ValueError(f"spatial must be >= 0, got {spatial}.")
        if transpose_kernel:
            return cls(inputs=(spatial + 1, *range(spatial)), outputs=(spatial,))
        return cls(inputs=(spatial, *range(spatial)), outputs=(spatial + 1,))

    @classmethod
    def general(cls, n_inputs: int, n_outputs: int, n_batch: int = 0) -> KernelAxes:
        """``nnx.LinearGeneral`` / ``nn.DenseGeneral``: ``[*batch, *in, *out]``.

        Args:
            n_inputs: Number of contracted input axes (``len(axis)``).
            n_outputs: Number of output axes (``len(out_features)``).
            n_batch: Number of batch axes (``batch_axis`` / ``batch_dims``):
                one independent layer per batch index, so stack axes.
        """
        n_inputs, n_outputs, n_batch = int(n_inputs), int(n_outputs), int(n_batch)
        return cls(
            inputs=tuple(range(n_batch, n_batch + n_inputs)),
            outputs=tuple(range(n_batch + n_inputs, n_batch + n_inputs + n_outputs)),
            stack=tuple(range(n_batch)),
        )

    @classmethod
    def einsum(cls, einsum_str: str) -> KernelAxes:
        """The kernel (second operand) of ``einsum_str``, e.g. ``"...d,dhk->...hk"``.

        Kernel axes contracted with the input are inputs, axes only in the
        kernel and the output are outputs, axes in the input, the kernel and
        the output are stack axes (one layer per index).

        Raises:
            ValueError: for a string without ``->`` or without exactly two
                operands, an ellipsis or a repeated letter in the kernel, or a
                kernel axis summed over alone (in neither the input nor the
                output).
        """
        text = str(einsum_str).replace(" ", "")
        if "->" not in text or text.count(",") != 1:
            raise ValueError(
                f"einsum_str must be explicit with two operands, 'input,kernel->output'; "
                f"got {einsum_str!r}."
            )
        operands, result = text.split("->")
        lhs, rhs = operands.split(",")
        if "." in rhs:
            raise ValueError(
                f"einsum_str {einsum_str!r}: the kernel operand {rhs!r} has an ellipsis; "
                "name each kernel axis with a letter."
            )
        if len(set(rhs)) != len(rhs):
            raise ValueError(f"einsum_str {einsum_str!r}: the kernel {rhs!r} repeats an axis.")
        inputs, outputs, stack = [], [], []
        for axis, letter in enumerate(rhs):
            in_lhs, in_out = letter in lhs, letter in result
            if in_lhs and in_out:
                stack.append(axis)
            elif in_lhs:
                inputs.append(axis)
            elif in_out:
                outputs.append(axis)
            else:
                raise ValueError(
                    f"einsum_str {einsum_str!r}: kernel axis {letter!r} is in neither the input "
                    "nor the output (summed over alone); it maps to no chip row or column."
                )
        return cls(inputs=tuple(inputs), outputs=tuple(outputs), stack=tuple(stack))

    def stacked(self, n: int = 1) -> KernelAxes:
        """These axes with ``n`` more leading stack axes (``nnx.vmap``/``nnx.scan`` layers).

        Example:
            >>> import fusion_jax as fj
            >>> fj.layout.KernelAxes.conv(1).stacked(2)
            KernelAxes(inputs=(3, 2), outputs=(4,), stack=(0, 1))
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}.")

        def shift(axes: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(a + n for a in axes)

        return KernelAxes(
            inputs=shift(self.inputs),
            outputs=shift(self.outputs),
            stack=(*range(n), *shift(self.stack)),
        )

    def check(self, shape: Sequence[int], name: str = "kernel") -> None:
        """Raise ``ValueError`` naming ``name`` unless a kernel of ``shape`` fits.

        Example:
            >>> import fusion_jax as fj
            >>> fj.layout.KernelAxes.dense().check((3, 4, 5), "blocks/kernel")
            Traceback (most recent call last):
            ...
            ValueError: blocks/kernel: a kernel of shape (3, 4, 5) has 3 axes, but ... describes 2.
        """
        shape = tuple(int(d) for d in shape)
        if len(shape) != self.ndim:
            raise ValueError(
                f"{name}: a kernel of shape {shape} has {len(shape)} axes, but {self} "
                f"describes {self.ndim}."
            )

    def _order(self, export_order: bool) -> tuple[int, ...]:
        """The permutation to ``[*stack, *inputs, *outputs]`` (inputs sorted unless export)."""
        inputs = self.inputs if export_order else tuple(sorted(self.inputs))
        return (*self.stack, *inputs, *self.outputs)


def _as_axes(axes: KernelAxes | None, ndim: int) -> KernelAxes:
    if axes is None:
        if ndim < 2:
            raise ValueError(f"a kernel must have at least 2 dimensions [..., in, out], got {ndim}")
        return KernelAxes.conv(ndim - 2) if ndim > 2 else KernelAxes.dense()
    if not isinstance(axes, KernelAxes):
        raise TypeError(f"axes must be a fusion_jax.layout.KernelAxes, got {type(axes)}.")
    return axes


def _to_columns(kernel: jax.Array, axes: KernelAxes, *, export_order: bool) -> jax.Array:
    perm = axes._order(export_order)
    xp = np if isinstance(kernel, np.ndarray) else jnp  # a host copy stays on the host
    moved = xp.transpose(kernel, perm)  # the identity permutation is free
    stack_shape = moved.shape[: len(axes.stack)]
    n_in = math.prod(kernel.shape[a] for a in axes.inputs)
    n_out = math.prod(kernel.shape[a] for a in axes.outputs)
    return moved.reshape(*stack_shape, n_in, n_out)


def _from_columns(
    columns: jax.Array, axes: KernelAxes, kernel_shape: tuple[int, ...], *, export_order: bool
) -> jax.Array:
    perm = axes._order(export_order)
    moved = columns.reshape(tuple(kernel_shape[a] for a in perm))
    return jnp.transpose(moved, tuple(int(i) for i in np.argsort(perm)))


def kernel_to_columns(
    kernel: Float[ArrayLike, "*shape"], axes: KernelAxes | None = None
) -> Float[Array, "*stack in_flat out_flat"]:
    """Any kernel to ``[*stack, in_flat, out_flat]``: one column per chip row.

    The inputs are flattened in the order of ``axes.inputs`` (for a
    convolution, the order the export writes a row in), the outputs and the
    stack axes in theirs. Column ``j`` of layer ``s`` is the chip row of that
    layer's output feature ``j``; ``kernel_to_rows`` is its transpose for a
    single layer.

    Args:
        kernel: The kernel.
        axes: Its :class:`KernelAxes`; ``None`` for a Flax Dense ``[in, out]``
            or conv ``[*window, in, out]`` kernel.

    Returns:
        The columns, ``[*stack_shape, prod(input sizes), prod(output sizes)]``.

    Raises:
        ValueError: if ``axes`` does not fit the kernel's rank.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> query = jnp.zeros((16, 4, 8))   # nnx.MultiHeadAttention query: [in, heads, head_dim]
        >>> axes = fj.layout.KernelAxes.general(n_inputs=1, n_outputs=2)
        >>> fj.layout.kernel_to_columns(query, axes).shape     # 32 chip rows of 16 inputs
        (16, 32)
        >>> stacked = jnp.zeros((3, 16, 8))  # three scanned Linear(16, 8) layers
        >>> fj.layout.kernel_to_columns(stacked, fj.layout.KernelAxes.dense().stacked()).shape
        (3, 16, 8)
    """
    kernel = jnp.asarray(kernel)
    axes = _as_axes(axes, kernel.ndim)
    axes.check(kernel.shape)
    return _to_columns(kernel, axes, export_order=True)


def columns_to_kernel(
    columns: Float[ArrayLike, "*stack in_flat out_flat"],
    axes: KernelAxes | None,
    kernel_shape: Sequence[int],
) -> Float[Array, "*shape"]:
    """Inverse of :func:`kernel_to_columns`.

    Args:
        columns: ``[*stack_shape, in_flat, out_flat]``.
        axes: The kernel's :class:`KernelAxes` (``None``: Flax Dense/conv).
        kernel_shape: The kernel's shape.

    Returns:
        The kernel, shape ``kernel_shape``.

    Raises:
        ValueError: if ``axes`` or ``columns`` do not fit ``kernel_shape``.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> kernel = jnp.arange(24.0).reshape(2, 3, 4)
        >>> axes = fj.layout.KernelAxes.einsum("bhd,hdk->bhk")  # heads h: a stack axis
        >>> cols = fj.layout.kernel_to_columns(kernel, axes)
        >>> cols.shape
        (2, 3, 4)
        >>> bool((fj.layout.columns_to_kernel(cols, axes, kernel.shape) == kernel).all())
        True
    """
    columns = jnp.asarray(columns)
    kernel_shape = tuple(int(d) for d in kernel_shape)
    axes = _as_axes(axes, len(kernel_shape))
    axes.check(kernel_shape)
    expected = (
        *(kernel_shape[a] for a in axes.stack),
        math.prod(kernel_shape[a] for a in axes.inputs),
        math.prod(kernel_shape[a] for a in axes.outputs),
    )
    if tuple(columns.shape) != expected:
        raise ValueError(
            f"columns of shape {tuple(columns.shape)} do not fit the kernel shape "
            f"{kernel_shape} with {axes} (expected {expected})."
        )
    return _from_columns(columns, axes, kernel_shape, export_order=True)


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


def _kernel_name(path: tuple[Any, ...], leaf: Any) -> str | None:
    """The layer name of a kernel leaf (:func:`fusion_jax._paths.layer_name`), else ``None``."""
    plain = _paths.plain_path(path)
    return _paths.layer_name(plain) if _paths.is_kernel(plain, leaf) else None


def _kernels(params: Any, paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """Layer name -> kernel leaf, in pytree flattening order (and name -> plain path)."""
    kernels: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _kernel_name(path, leaf)
        if name is None:
            continue
        if name in kernels:
            raise ValueError(f"two kernels map to the layer name {name!r}; rename a module.")
        kernels[name] = leaf
        if paths is not None:
            paths[name] = _paths.plain_path(path)
    if not kernels:
        raise ValueError(
            "params hold no kernels (leaves named 'kernel' with at least 2 dimensions); pass a "
            "Linen params dict, an NNX State or its pure dict."
        )
    return kernels


#: ``layouts`` argument: per-leaf kernel axes, by path (tuple or "/"-joined text), or a function.
Layouts = (
    Mapping[_paths.LeafPath | str, KernelAxes]
    | Callable[[_paths.LeafPath, Any], "KernelAxes | None"]
)


def _layout_lookup(
    layouts: Layouts | None, flat_paths: Sequence[_paths.LeafPath]
) -> Callable[[_paths.LeafPath, Any], KernelAxes | None]:
    """``layouts`` as a function of (path, leaf), after checking every key names a leaf."""
    if layouts is None:
        return lambda path, leaf: None
    if callable(layouts) and not isinstance(layouts, Mapping):
        return layouts
    if not isinstance(layouts, Mapping):
        raise TypeError(
            f"layouts must be a mapping leaf path -> KernelAxes or a function, got {type(layouts)}."
        )
    table: dict[str, KernelAxes] = {}
    for k, v in layouts.items():
        text = k if isinstance(k, str) else _paths.path_text(tuple(k))
        if not isinstance(v, KernelAxes):
            raise TypeError(
                f"layouts[{text!r}] must be a fusion_jax.layout.KernelAxes, got {type(v)}."
            )
        table[text] = v
    # A path matches with or without a leading "params" collection, on either side:
    # layouts of a whole Linen `variables` dict serve its `variables["params"]`.
    texts = {_paths.path_text(p) for p in flat_paths}
    texts |= {_paths.path_text(p[1:]) for p in flat_paths if p and p[0] == "params"}
    texts |= {"params/" + text for text in texts}
    unknown = sorted(set(table) - texts)
    if unknown:
        raise ValueError(
            f"layouts name leaves that params lack: {unknown}; leaves are named like "
            f"{sorted(texts)[:4]}."
        )

    def lookup(path: _paths.LeafPath, leaf: Any) -> KernelAxes | None:
        found = table.get(_paths.path_text(path))
        if found is None and path and path[0] == "params":
            found = table.get(_paths.path_text(path[1:]))
        if found is None:
            found = table.get("params/" + _paths.path_text(path))
        return found

    return lookup


def flax_to_layers(
    params: Any,
    *,
    where: Callable[[_paths.LeafPath, Any], bool] | Collection[str] | None = None,
    conv_window: bool = False,
    layouts: Layouts | None = None,
) -> dict[str, Float[Array, "out fan_in"]]:
    """Every kernel of a Flax parameter pytree in the reference layout ``[out, in]``.

    Kernels are the leaves named ``kernel`` with at least 2 dimensions:
    ``linen.Dense``/``nnx.Linear`` ``[in, out]`` and ``linen.Conv``/``nnx.Conv``
    ``[*spatial, in, out]``, each flattened by :func:`kernel_to_rows`. Biases,
    norms and embeddings are not analog layers and are left out. Without
    ``layouts``, a kernel's output is its last axis and its input the one
    before it; other kernels (a ``ConvTranspose`` with
    ``transpose_kernel=True``, ``DenseGeneral`` with several output axes) need
    their axes in ``layouts``, as :func:`fusion_jax.program_params` takes
    them (:func:`fusion_jax.nnx.kernel_layouts`,
    :func:`fusion_jax.linen.kernel_layouts`): one row per output feature,
    the export's order of inputs.

    Args:
        params: A Linen params dict (``variables["params"]`` or the whole
            ``variables`` dict), an NNX ``State`` (``nnx.state(model, nnx.Param)``)
            or its pure dict, or any pytree of such dicts.
        where: Which layers to keep: a predicate ``where(path, leaf)`` on the
            kernel's leaf, as :func:`fusion_jax.program_params` takes it
            (``path`` a tuple of plain names such as ``("params", "Dense_0",
            "kernel")``), or a collection of layer names. Default: all kernels.
        conv_window: Give conv kernels as PyTorch holds them, ``[out, in,
            *window]``, instead of flattened: :func:`fusion_jax.fusion_export`
            then splits a conv with more than ``max_input_size`` inputs into
            chip tiles on input-channel boundaries, as aihwkit does and as
            :func:`fusion_jax.program_kernel` simulates it (flattened, it
            is split as a dense layer of ``in * prod(window)`` inputs). With
            a layout: ``[out, *input sizes]`` in the layout's input order.
        layouts: Kernel axes by leaf path (tuple, or ``/``-joined text, with or
            without the leading ``params``), or a function ``(path, leaf) ->
            KernelAxes | None``; kernels without one are ``[*spatial, in, out]``.
            A layout with stack axes (several layers in one kernel) is refused.

    Returns:
        Layer name -> matrix ``[out, in * prod(spatial)]`` (``[out, in,
        *window]`` for a conv with ``conv_window``), in the pytree's
        flattening order (sorted by key within each dict). A layer name is
        the ``/``-joined path of the kernel's module, e.g. ``"Dense_0"`` or
        ``"blocks/0/linear"`` (a leading ``params`` collection is dropped; a
        kernel at the root is named ``"kernel"``).

    Raises:
        ValueError: if ``params`` holds no kernels, two kernels get the same
            name, ``where`` names layers that do not exist (listing the
            existing ones), or ``layouts`` names a leaf that does not exist or
            gives a kernel stack axes or axes that do not fit it (naming it).

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
        >>> {n: w.shape for n, w in fj.layout.flax_to_layers(variables, conv_window=True).items()}
        {'layers_0': (4, 3, 3, 3), 'layers_1': (2, 4)}
        >>> up = nn.ConvTranspose(5, (2, 2), transpose_kernel=True)    # kernel [2, 2, 5, 3]
        >>> variables = up.init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
        >>> axes = fj.layout.KernelAxes.conv(2, transpose_kernel=True)
        >>> fj.layout.flax_to_layers(variables, layouts={"kernel": axes})["kernel"].shape
        (5, 12)
    """
    paths: dict[str, Any] = {}
    kernels = _kernels(params, paths)
    axes_of = _export_axes(kernels, paths, layouts)
    if where is None:
        selected = list(kernels)
    elif callable(where):
        selected = [name for name in kernels if where(paths[name], kernels[name])]
    else:
        wanted = set(where) if not isinstance(where, str) else {where}
        unknown = sorted(wanted - set(kernels))
        if unknown:
            raise ValueError(
                f"where names unknown layer(s) {unknown}; the kernels are {list(kernels)}."
            )
        selected = [name for name in kernels if name in wanted]
    layers = {}
    for name in selected:
        kernel, axes = kernels[name], axes_of.get(name)
        if axes is None:
            layers[name] = kernel_to_rows(kernel)
            if conv_window:
                *window, n_in, n_out = np.shape(kernel)
                layers[name] = layers[name].reshape(n_out, n_in, *window)
            continue
        layers[name] = kernel_to_columns(kernel, axes).T
        if conv_window:
            inputs = [np.shape(kernel)[a] for a in axes.inputs]
            layers[name] = layers[name].reshape(-1, *inputs)
    return layers


def _export_axes(
    kernels: Mapping[str, Any], paths: Mapping[str, Any], layouts: Layouts | None
) -> dict[str, KernelAxes]:
    """The ``layouts`` entry of each named kernel that has one (checked: one layer, fits)."""
    lookup = _layout_lookup(layouts, list(paths.values()))
    found = {}
    for name, kernel in kernels.items():
        axes = lookup(paths[name], kernel)
        if axes is None:
            continue
        if axes.stack:
            raise ValueError(
                f"layer {name!r}: its layout {axes} has stack axes (several layers in one "
                "kernel); export each layer's kernel on its own."
            )
        try:
            axes.check(np.shape(kernel))
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from None
        found[name] = axes
    return found


def layers_to_flax(
    layers: Mapping[str, Float[ArrayLike, "out fan_in"]],
    params: PyTree,
    *,
    layouts: Layouts | None = None,
) -> PyTree:
    """Put ``[out, in]`` matrices back into a copy of a Flax parameter pytree.

    The inverse of :func:`flax_to_layers`: each matrix replaces the kernel of
    the same layer name (a conv's as ``[out, in * prod(window)]`` or
    ``[out, in, *window]``), reshaped by :func:`rows_to_kernel` and cast to the
    kernel's dtype. Kernels not in ``layers`` and all other leaves are kept;
    ``params`` itself is not modified.

    Args:
        layers: Layer name -> matrix ``[out, in * prod(spatial)]``, e.g. the
            result of :func:`fusion_jax.fusion_import`. May hold a subset of
            the layers.
        params: The pytree the layers came from (Linen params dict, NNX
            ``State`` or pure dict).
        layouts: The kernel axes :func:`flax_to_layers` was given, for
            kernels that are not ``[*spatial, in, out]``.

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
    paths: dict[str, Any] = {}
    kernels = _kernels(params, paths)
    axes_of = _export_axes(kernels, paths, layouts)
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a mapping layer name -> matrix, got {type(layers)}.")
    unknown = [name for name in layers if name not in kernels]
    if unknown:
        raise ValueError(
            f"layer(s) {unknown} match no kernel of params; the kernels are {list(kernels)}."
        )
    for name, rows in layers.items():
        kernel_shape = tuple(np.shape(kernels[name]))
        axes = axes_of.get(name)
        if axes is None:
            expected = (kernel_shape[-1], math.prod(kernel_shape[:-1]))
            window = (kernel_shape[-1], kernel_shape[-2], *kernel_shape[:-2])
        else:
            inputs = tuple(kernel_shape[a] for a in axes.inputs)
            outputs = math.prod(kernel_shape[a] for a in axes.outputs)
            expected, window = (outputs, math.prod(inputs)), (outputs, *inputs)
        if tuple(np.shape(rows)) not in (expected, window):
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
        axes = axes_of.get(name)
        if axes is not None:
            rows = jnp.reshape(
                layers[name], (math.prod(np.shape(leaf)[a] for a in axes.outputs), -1)
            )
            return columns_to_kernel(rows.T, axes, np.shape(leaf)).astype(leaf.dtype)
        rows = jnp.reshape(layers[name], (np.shape(leaf)[-1], -1))
        return rows_to_kernel(rows, np.shape(leaf)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(replace, params)
