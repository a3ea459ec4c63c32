"""Tiles: how the Fusion chip holds a layer larger than one crossbar tile.

The Composer's mapping (aihwkit 1.1.0 ``WebComposerMappingParameter``) puts
at most ``max_input_size = 512`` inputs and ``max_output_size = 512``
outputs on one tile; 0 means "no split". A larger layer ``[out, in]`` is cut
into near-equal pieces along each side (:func:`split_sizes`: ``n = ceil(size
/ max)`` pieces of ``size // n``, the first ``size % n`` one larger) and every
tile ``[out_tile, in_tile]`` is converted on its own: each row's scale is the
largest weight of that row *within the tile*, and the import regresses each
tile row against that tile's weights. Splitting the outputs therefore changes
no value (a row keeps its own scale); splitting the inputs changes every
scale.

Convolutions are split on input-channel boundaries, as aihwkit's mapped conv
layers are: a tile holds whole channels, each with all its ``kh * kw``
kernel elements (``group_size``), so the flattened inputs ``[in, *spatial]``
(PyTorch's order, :func:`fusion_jax.layout.kernel_to_rows`) are cut into
contiguous pieces of whole channels.

The chip file lists a layer's tiles in the order of :func:`tile_slices`:
for each input split, for each output split, the tile row-major. The output
tiles of one input split thus follow each other as that split's rows do, so
output splits change neither the values nor the file; ``max_output_size``
is accepted (and checked) everywhere for symmetry with aihwkit's mapping.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_MAX_INPUT_SIZE",
    "DEFAULT_MAX_OUTPUT_SIZE",
    "check_max_size",
    "file_order",
    "split_sizes",
    "tile_slices",
]

#: Inputs per tile in the Composer's mapping (aihwkit ``WebComposerMappingParameter``).
DEFAULT_MAX_INPUT_SIZE = 512
#: Outputs per tile in the Composer's mapping.
DEFAULT_MAX_OUTPUT_SIZE = 512


def check_max_size(value: Any, name: str) -> int:
    """``value`` as a tile size limit: a non-negative integer (0 = no split), or a clear error.

    Args:
        value: The limit given (``max_input_size`` or ``max_output_size``).
        name: The argument's name, for the error message.

    Returns:
        ``value`` as an ``int``.

    Raises:
        TypeError: if ``value`` is not an integer (``bool`` included).
        ValueError: if ``value`` is negative.

    Example:
        >>> import fusion_jax as fj
        >>> fj.tiles.check_max_size(512, "max_input_size")
        512
        >>> fj.tiles.check_max_size(-1, "max_input_size")
        Traceback (most recent call last):
        ...
        ValueError: max_input_size must be a non-negative integer (0 = no split), got -1.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a non-negative integer (0 = no split), got {value!r}.")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer (0 = no split), got {value}.")
    return int(value)


def split_sizes(size: int, max_size: int, *, group_size: int = 1) -> tuple[int, ...]:
    """How many elements each tile gets when ``size`` elements are split at most ``max_size``.

    aihwkit's ``TileModuleArray.get_split_sizes``: ``n = ceil(size /
    max_size)`` pieces of ``size // n`` elements, the first ``size % n`` one
    larger; ``max_size = 0`` means no split. With ``group_size > 1`` (the
    ``kh * kw`` elements of one conv input channel) whole groups are split
    instead, as aihwkit's mapped conv layers do: the groups are split at
    most ``max_size // group_size`` per tile, and the sizes are returned in
    elements.

    Args:
        size: Elements along the side (inputs or outputs of the layer).
        max_size: Most elements per tile; 0 for no split.
        group_size: Elements that must stay on one tile (``size`` must be a
            multiple of it).

    Returns:
        The tile sizes in elements, in order, summing to ``size``.

    Raises:
        ValueError: if ``size`` or ``group_size`` is not positive,
            ``max_size`` is negative, ``size`` is not a multiple of
            ``group_size``, or a group does not fit on a tile.
        TypeError: if an argument is not an integer.

    Example:
        >>> import fusion_jax as fj
        >>> fj.tiles.split_sizes(784, 512), fj.tiles.split_sizes(1100, 512)
        ((392, 392), (367, 367, 366))
        >>> fj.tiles.split_sizes(784, 0), fj.tiles.split_sizes(300, 512)
        ((784,), (300,))
        >>> fj.tiles.split_sizes(57 * 9, 512, group_size=9)  # conv: 57 channels of 3x3
        (261, 252)
    """
    for value, name in ((size, "size"), (group_size, "group_size")):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    max_size = check_max_size(max_size, "max_size")
    size, group_size = int(size), int(group_size)
    if size % group_size:
        raise ValueError(f"size {size} is not a multiple of group_size {group_size}.")
    groups = size // group_size
    if max_size == 0:
        return (size,)
    if group_size > max_size:
        raise ValueError(
            f"a group of {group_size} elements (one conv input channel, kh * kw) does not fit "
            f"on a tile of at most {max_size} inputs; raise max_input_size or pass 0."
        )
    per_tile = max_size // group_size
    n = -(-groups // per_tile)
    base, extra = divmod(groups, n)
    return tuple((base + (i < extra)) * group_size for i in range(n))


def tile_slices(
    shape: tuple[int, int],
    *,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE,
    group_size: int = 1,
) -> list[tuple[slice, slice]]:
    """The tiles of a layer ``[out, in]``, in the chip file's order.

    For each input split, for each output split: ``(rows, columns)`` of the
    tile in the layer matrix.

    Args:
        shape: The layer's ``(out, in)`` (``in`` flattened as
            ``[in_channels, *spatial]`` for a conv).
        max_input_size: Most inputs per tile (0: no split).
        max_output_size: Most outputs per tile (0: no split).
        group_size: Inputs that stay together (``kh * kw`` for a conv).

    Returns:
        One ``(row_slice, column_slice)`` per tile.

    Raises:
        ValueError, TypeError: as :func:`split_sizes`.

    Example:
        >>> import fusion_jax as fj
        >>> fj.tiles.tile_slices((600, 784))
        [(slice(0, 300, None), slice(0, 392, None)), (slice(300, 600, None), slice(0, 392, None)), \
(slice(0, 300, None), slice(392, 784, None)), (slice(300, 600, None), slice(392, 784, None))]
    """
    n_out, n_in = (int(d) for d in shape)
    ins = split_sizes(n_in, max_input_size, group_size=group_size)
    outs = split_sizes(n_out, max_output_size)
    in_starts = np.cumsum((0, *ins))
    out_starts = np.cumsum((0, *outs))
    return [
        (
            slice(int(out_starts[j]), int(out_starts[j + 1])),
            slice(int(in_starts[i]), int(in_starts[i + 1])),
        )
        for i in range(len(ins))
        for j in range(len(outs))
    ]


def file_order(
    shape: tuple[int, int],
    *,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE,
    group_size: int = 1,
) -> np.ndarray:
    """Where each value of a layer's file line comes from in the layer matrix.

    The chip file writes a layer tile by tile (:func:`tile_slices`), each
    tile row-major. ``line = matrix.ravel()[order]`` and, reading back,
    ``matrix.ravel()[order] = line``.

    Args:
        shape: The layer's ``(out, in)``.
        max_input_size: Most inputs per tile (0: no split).
        max_output_size: Most outputs per tile (0: no split).
        group_size: Inputs that stay together (``kh * kw`` for a conv).

    Returns:
        Flat indices into the row-major matrix, one per value of the line
        (an int64 array of length ``out * in``).

    Example:
        >>> import numpy as np
        >>> import fusion_jax as fj
        >>> fj.tiles.file_order((2, 3), max_input_size=2)  # inputs 3 -> 2, 1
        array([0, 1, 3, 4, 2, 5])
    """
    n_out, n_in = (int(d) for d in shape)
    index = np.arange(n_out * n_in, dtype=np.int64).reshape(n_out, n_in)
    tiles = tile_slices(
        (n_out, n_in),
        max_input_size=max_input_size,
        max_output_size=max_output_size,
        group_size=group_size,
    )
    if len(tiles) == 1:
        return index.ravel()
    return np.concatenate([index[rows, cols].ravel() for rows, cols in tiles])


# --- the tile-wise engine ---------------------------------------------------------------------


def _runs(sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Consecutive equal tile sizes as ``(start, count, size)`` runs (at most 2 for aihwkit's)."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for s in sizes:
        if runs and runs[-1][2] == s:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, s)
        else:
            runs.append((start, 1, s))
        start += s
    return runs


def _split_tiles(w: jax.Array, axis: int, sizes: tuple[int, ...]) -> list[jax.Array]:
    """``w`` cut along its input ``axis`` (-1: rows ``[..., out, in]``; -2: columns
    ``[..., in, out]``) into blocks of equal-size tiles, a tile axis inserted
    before the input axis: ``[..., out, tiles, size]`` or ``[..., tiles, size, out]``.

    Every line of a block (along ``axis``) is one tile row; a single tile is
    a reshape only.
    """
    blocks = []
    n = w.shape[axis]
    for start, count, size in _runs(sizes):
        part = (
            w
            if count * size == n
            else jax.lax.slice_in_dim(w, start, start + count * size, axis=axis)
        )
        if axis == -1:
            blocks.append(part.reshape(*part.shape[:-1], count, size))
        else:
            blocks.append(part.reshape(*part.shape[:-2], count, size, part.shape[-1]))
    return blocks


def _join_tiles(blocks: list[jax.Array], axis: int) -> jax.Array:
    """Inverse of :func:`_split_tiles`."""
    if axis == -1:
        flat = [b.reshape(*b.shape[:-2], -1) for b in blocks]
    else:
        flat = [b.reshape(*b.shape[:-3], -1, b.shape[-1]) for b in blocks]
    return flat[0] if len(flat) == 1 else jnp.concatenate(flat, axis=axis)


def _kernel_input_sizes(
    shape: tuple[int, ...], axes: Any, max_input_size: Any, max_output_size: Any
) -> tuple[int, ...]:
    """The input tile sizes of a kernel with :class:`~fusion_jax.layout.KernelAxes` ``axes``.

    The inputs are split in export order (``axes.inputs``). A convolution,
    whose first input in that order (the channel) lies after the others (the
    window) in the kernel, keeps whole channels on a tile, as aihwkit's
    mapped conv layers do; any other kernel splits its flattened inputs.
    """
    first, rest = axes.inputs[0], axes.inputs[1:]
    group = math.prod(shape[a] for a in rest) if rest and first > max(rest) else 1
    n_in = math.prod(shape[a] for a in axes.inputs)
    n_out = math.prod(shape[a] for a in axes.outputs)
    return _input_sizes(n_in, max_input_size, max_output_size, group, n_out)


def _input_sizes(
    n_in: int, max_input_size: Any, max_output_size: Any, group_size: int, n_out: int
) -> tuple[int, ...]:
    """The input tile sizes of a layer, after checking both limits (outputs split no value)."""
    max_in = check_max_size(max_input_size, "max_input_size")
    split_sizes(int(n_out), check_max_size(max_output_size, "max_output_size"))
    return split_sizes(int(n_in), max_in, group_size=group_size)
