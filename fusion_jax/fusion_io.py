"""The chip's file workflow: export weights to the upload file, import the read-back.

:func:`fusion_export` converts each layer to target conductances and writes
the CSV file that programs the Fusion chip; it returns a :class:`FusionExport`
that remembers what the import needs. :func:`fusion_import` reads the file
the chip service returns, checks it against the exported layers and fits
each layer back to weights (per-row least squares against the original
weights, which compensates each row's drift gain).

For Flax models, :func:`fusion_jax.layout.flax_to_layers` gives the layers in
the reference's ``[out, in]`` layout and :func:`fusion_jax.layout.layers_to_flax`
puts the imported weights back into the parameter pytree.

Layers larger than one chip tile (``max_input_size`` / ``max_output_size``,
512 / 512 by default, the Composer's mapping) are converted tile by tile and
written in the chip's tile order, as aihwkit 1.1.0 does (:mod:`fusion_jax.tiles`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _validation, tiles
from fusion_jax.chip_file import ChipFile, check_header, read_chip_file, write_chip_file
from fusion_jax.conversion import FusionParams, convert_back_to_weights, convert_to_conductances
from fusion_jax.errors import ArgumentError

__all__ = ["FusionExport", "fusion_export", "fusion_import"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class FusionExport(Mapping[str, FusionParams]):
    """What :func:`fusion_export` keeps for :func:`fusion_import`.

    A pytree whose leaves are the original weights of each layer (one
    :class:`~fusion_jax.FusionParams` per layer); the file header it wrote
    (names, ids, classes) and ``g_max`` are static metadata. It is also a
    read-only mapping layer name -> :class:`~fusion_jax.FusionParams`, in file
    order.

    Attributes:
        layers: One :class:`~fusion_jax.FusionParams` per layer, in file order.
        names: Layer names (header line 6).
        ids: Layer ids (header line 1).
        classes: Layer class names (header line 2).
        g_max: The g_max in uS the conductances were computed with.
        max_input_size: Most inputs per chip tile of the export (0: no split).
        max_output_size: Most outputs per chip tile of the export (0: no split).
        group_sizes: Per layer, the inputs kept together on a tile (``kh *
            kw`` for a conv given as ``[out, in, kh, kw]``, else 1); empty
            means all 1.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> from fusion_jax.fusion_io import FusionExport
        >>> params = FusionExport(
        ...     layers=(fj.FusionParams(jnp.ones((2, 3))),), names=("fc",), ids=(1,),
        ...     classes=("AnalogLinearMapped",), g_max=40.0,
        ... )
        >>> params["fc"].original_weights.shape, list(params)
        ((2, 3), ['fc'])
        >>> len(jax.tree_util.tree_leaves(params))
        1
    """

    layers: tuple[FusionParams, ...]
    names: tuple[str, ...] = dataclasses.field(metadata={"static": True})
    ids: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    classes: tuple[str, ...] = dataclasses.field(metadata={"static": True})
    g_max: float = dataclasses.field(metadata={"static": True})
    max_input_size: int = dataclasses.field(
        default=tiles.DEFAULT_MAX_INPUT_SIZE, metadata={"static": True}
    )
    max_output_size: int = dataclasses.field(
        default=tiles.DEFAULT_MAX_OUTPUT_SIZE, metadata={"static": True}
    )
    group_sizes: tuple[int, ...] = dataclasses.field(default=(), metadata={"static": True})

    def __post_init__(self) -> None:
        n = len(self.names)
        if not self.group_sizes:
            object.__setattr__(self, "group_sizes", (1,) * n)
        for field in ("layers", "ids", "classes", "group_sizes"):
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"FusionExport.{field} has {len(getattr(self, field))} entries but there are "
                    f"{n} layer names."
                )

    def __getitem__(self, name: str) -> FusionParams:
        try:
            return self.layers[self.names.index(name)]
        except ValueError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def header(self, name: str) -> dict[str, Any]:
        """The header entries expected for layer ``name`` in a read-back file.

        Args:
            name: A layer name.

        Returns:
            ``{"ids": ..., "classes": ..., "counts": ..., "heights": ..., "widths": ...}``.

        Raises:
            KeyError: if there is no layer ``name``.

        Example:
            >>> import jax.numpy as jnp
            >>> import fusion_jax as fj
            >>> from fusion_jax.fusion_io import FusionExport
            >>> params = FusionExport((fj.FusionParams(jnp.ones((2, 3))),), ("fc",), (5,),
            ...                          ("AnalogLinearMapped",), 40.0)
            >>> params.header("fc")
            {'ids': 5, 'classes': 'AnalogLinearMapped', 'counts': 6, 'heights': 2, 'widths': 3}
        """
        if name not in self.names:
            raise KeyError(name)
        i = self.names.index(name)
        height, width = np.shape(self.layers[i].original_weights)[-2:]
        return {
            "ids": self.ids[i],
            "classes": self.classes[i],
            "counts": int(height * width),
            "heights": int(height),
            "widths": int(width),
        }


def _export_g_max(g_max: Any) -> float:
    if np.ndim(g_max) != 0:
        raise ArgumentError(f"g_max must be a scalar, got shape {np.shape(g_max)}.")
    _validation.check_g_max(g_max)
    return float(np.asarray(g_max))


def _layer_shapes(layers: Any) -> dict[str, tuple[int, ...]]:
    """Layer name -> its shape as given: ``[out, in]`` or a conv's ``[out, in, *spatial]``."""
    if not isinstance(layers, Mapping):
        raise TypeError(
            "layers must be a mapping layer name -> weights [out, in], got "
            f"{type(layers).__name__}."
        )
    shapes = {}
    for name, weights in layers.items():
        if not isinstance(name, str):
            raise TypeError(f"layer names must be strings, got {name!r}.")
        shape = tuple(np.shape(weights))
        if len(shape) < 2:
            raise ValueError(
                f"layer {name!r}: weights must be 2-D [out, in] (one row per output), or a conv's "
                f"[out, in, *spatial] as PyTorch holds it, got shape {shape}; flatten Flax "
                "kernels with fusion_jax.layout.kernel_to_rows or fusion_jax.layout.flax_to_layers."
            )
        shapes[name] = shape
    return shapes


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The chip matrix ``(out, in * prod(spatial))`` of a layer shape."""
    return shape[0], int(np.prod(shape[1:]))


def _tile_sizes(
    name: str, matrix: tuple[int, int], max_input_size: int, max_output_size: int, group: int
) -> tuple[int, ...]:
    """A layer's input tile sizes (its output splits change no value), naming the layer."""
    try:
        return tiles._input_sizes(matrix[1], max_input_size, max_output_size, group, matrix[0])
    except (TypeError, ValueError) as err:
        raise type(err)(f"layer {name!r}: {err}") from None


def _input_slices(sizes: tuple[int, ...]) -> list[slice]:
    starts = np.cumsum((0, *sizes))
    return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _with_layer(err: Exception, name: str) -> Exception:
    """A copy of ``err`` (same type) whose message starts with the layer name."""
    return type(err)(f"layer {name!r}: {err}")


def fusion_export(
    layers: Mapping[str, Float[ArrayLike, "out in"]],
    path: str | os.PathLike[str],
    g_max: float = 40.0,
    *,
    ids: Sequence[int] | Mapping[str, int] | None = None,
    classes: Sequence[str] | Mapping[str, str] | None = None,
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
) -> tuple[ChipFile, FusionExport]:
    """Convert layers to target conductances and write the chip's upload file.

    Each chip tile of a layer (:mod:`fusion_jax.tiles`) is converted with
    :func:`fusion_jax.convert_to_conductances` on its own, and the layer is
    written as one line of the file in the chip's tile order (format:
    :mod:`fusion_jax.chip_file`), atomically: on any error no file, partial
    or temporary, is left. With the same weights and tile sizes the file is
    byte for byte the one aihwkit 1.1.0 writes.

    Args:
        layers: Layer name -> weights ``[out, in]`` (any array-like), in the
            order the file should list them; a conv may be given as PyTorch
            holds it, ``[out, in, *spatial]``, and is then split on input
            channel boundaries as aihwkit's mapped conv layers are. Flax
            parameter pytrees convert with
            :func:`fusion_jax.layout.flax_to_layers`.
        path: The CSV file to write (replaced if it exists).
        g_max: Largest conductance in uS, in [10, 40].
        ids: Header ids, a sequence in layer order or a mapping name -> id.
            Default ``1, 2, ...``. aihwkit numbers the model's modules
            instead (ids ``1,4,9,11`` for the LeNet5 layers ``0,3,8,10``):
            pass those ids where the chip service or another tool expects them.
        classes: Header class names, like ``ids``. Default
            ``"AnalogLinearMapped"`` for every layer (pass
            ``"AnalogConv2dMapped"`` for conv layers to match aihwkit).
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split).
        max_output_size: Most outputs per chip tile (0: no split).

    Returns:
        ``(data, params)``: the :class:`~fusion_jax.chip_file.ChipFile`
        written (conductances per layer as ``[out, in * prod(spatial)]``
        matrices), and a :class:`FusionExport` (a pytree mapping layer name
        -> :class:`~fusion_jax.FusionParams` of the ``[out, in * prod(spatial)]``
        weights, plus the header and tile sizes) to pass to :func:`fusion_import`.

    Raises:
        ArgumentError: if ``g_max`` is not a scalar in [10, 40].
        TypeError: if ``layers`` is not a mapping, a name is not a string or
            weights are not numeric.
        ValueError: if a layer has fewer than 2 dimensions, holds NaN/Inf
            (naming the layer and rows), a tile size is negative or a conv
            channel does not fit on a tile, a name or class contains a
            comma, quote or line break,
            ids/classes do not match the layers, or the layers need more
            devices than the chip's 512 x 2048 = 1,048,576 (one per weight).
        OSError: if the file cannot be written.

    References:
        aihwkit 1.1.0 ``aihwkit.utils.export.fusion_export``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from fusion_jax.fusion_io import fusion_export
        >>> layers = {"fc1": np.array([[0.5, -1.0], [0.2, 0.1]]), "fc2": np.array([[2.0, 4.0]])}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data, params = fusion_export(layers, Path(tmp) / "model.csv", g_max=40)
        ...     print(Path(tmp, "model.csv").read_text())
        1,2
        AnalogLinearMapped,AnalogLinearMapped
        4,2
        2,1
        2,2
        fc1,fc2
        20.0,40.0,40.0,20.0
        20.0,40.0
        >>> data.layers["fc2"]
        array([[20., 40.]], dtype=float32)
    """
    g = _export_g_max(g_max)
    shapes = _layer_shapes(layers)
    matrices = {name: _matrix_shape(shape) for name, shape in shapes.items()}
    ids_t, classes_t = check_header(matrices, ids=ids, classes=classes)
    groups = {name: int(np.prod(shape[2:])) for name, shape in shapes.items()}
    sizes = {
        name: _tile_sizes(name, matrices[name], max_input_size, max_output_size, groups[name])
        for name in shapes
    }
    conductances = {}
    fusion_params = []
    for name, weights in layers.items():
        rows = np.reshape(weights, matrices[name]) if len(shapes[name]) > 2 else weights
        try:
            parts = [
                convert_to_conductances(rows[:, cols], g) for cols in _input_slices(sizes[name])
            ]
        except (TypeError, ValueError) as err:
            raise _with_layer(err, name) from err
        if len(parts) == 1:
            g_layer, p_layer = parts[0]
        else:
            g_layer = np.concatenate([np.asarray(c) for c, _ in parts], axis=1)
            p_layer = FusionParams(
                jax.numpy.concatenate([p.original_weights for _, p in parts], axis=1)
            )
        conductances[name] = np.asarray(g_layer)
        fusion_params.append(p_layer)
    data = ChipFile.from_layers(conductances, ids=ids_t, classes=classes_t)
    tile_groups = {name: group for name, group in groups.items() if group > 1}
    write_chip_file(
        path,
        data,
        max_input_size=max_input_size,
        max_output_size=max_output_size,
        group_sizes=tile_groups,
    )
    params = FusionExport(
        layers=tuple(fusion_params),
        names=data.names,
        ids=ids_t,
        classes=classes_t,
        g_max=g,
        max_input_size=int(max_input_size),
        max_output_size=int(max_output_size),
        group_sizes=tuple(groups[name] for name in data.names),
    )
    return data, params


def _layer_params(params: Any, name: str) -> FusionParams | Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise TypeError(
            "params must be the FusionExport from fusion_export or a mapping layer name -> "
            f"FusionParams, got {type(params).__name__}."
        )
    if name not in params:
        raise ValueError(f"layer {name!r}: params have no entry for it (they hold {list(params)}).")
    return params[name]


def fusion_import(
    path: str | os.PathLike[str],
    layers: Mapping[str, Float[ArrayLike, "out in"]],
    params: FusionExport | Mapping[str, FusionParams | Mapping[str, Any]],
    *,
    strict_aihwkit: bool = False,
    max_input_size: int | None = None,
    max_output_size: int | None = None,
) -> dict[str, Float[Array, "out in"]]:
    """Read a chip read-back file and reconstruct each layer's weights.

    The file (``\\n`` or ``\\r\\n`` line endings) must hold exactly the
    layers of ``layers``, with matching counts, heights and widths, and,
    when ``params`` is a :class:`FusionExport`, the ids and classes it was
    exported with (the order of the layers in the file does not matter).
    A layer larger than one chip tile is read back from the file's tile
    order (:mod:`fusion_jax.tiles`). Each tile is then reconstructed with
    :func:`fusion_jax.convert_back_to_weights`: a per-row least-squares fit
    of that tile's original weights on its signed read-back conductances,
    which recovers each tile row's gain after drift. This reads the files
    aihwkit 1.1.0 writes, including tiled layers and the quoted name ``""``
    of a single-layer model.

    Args:
        path: The read-back CSV file.
        layers: The layers that were exported (name -> weights ``[out, in]``,
            or a conv's ``[out, in, *spatial]``, split on channel
            boundaries); their names and shapes are checked against the file.
        params: The :class:`FusionExport` returned by :func:`fusion_export`,
            or a mapping layer name -> :class:`~fusion_jax.FusionParams` (or
            the reference's ``{"original_weights": W}``), in which case ids
            and classes are not checked.
        strict_aihwkit: Reproduce the reference's zeroed rows on
            zero-variance rows (see :func:`fusion_jax.convert_back_to_weights`).
        max_input_size: Most inputs per chip tile the file was written with
            (0: no split). Default: the export's when ``params`` is a
            :class:`FusionExport`, else 512 (the Composer's mapping).
        max_output_size: Most outputs per chip tile, likewise.

    Returns:
        Layer name -> reconstructed weights, in the shape given in
        ``layers``, in the order of ``layers``, in the dtype of the original
        weights.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        TypeError: if ``layers`` or ``params`` is not a mapping.
        ValueError: on a malformed file (wrong number of values, a
            non-numeric, NaN, infinite or negative value: with the line and
            position), a layer missing from the file or from ``params``, a
            file layer not in ``layers``, a header field (ids, classes,
            counts, heights, widths) that disagrees for a layer (naming both),
            or tile sizes that differ from the :class:`FusionExport`'s.

    References:
        aihwkit 1.1.0 ``aihwkit.utils.export.fusion_import``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from fusion_jax.fusion_io import fusion_export, fusion_import
        >>> layers = {"fc": np.array([[0.5, -1.0, 0.25], [0.2, 0.1, -0.3]], np.float32)}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "model.csv"
        ...     _, params = fusion_export(layers, path)
        ...     weights = fusion_import(path, layers, params)   # the unchanged file
        >>> np.asarray(weights["fc"], np.float64).round(6)
        array([[ 0.5 , -1.  ,  0.25],
               [ 0.2 ,  0.1 , -0.3 ]])
    """
    given = _layer_shapes(layers)
    if not given:
        raise ValueError("layers is empty: pass the layers that were exported.")
    shapes = {name: _matrix_shape(shape) for name, shape in given.items()}
    layer_params = {name: _layer_params(params, name) for name in shapes}
    max_in, max_out = _import_tile_sizes(params, max_input_size, max_output_size)
    groups = {name: int(np.prod(shape[2:])) for name, shape in given.items()}
    if isinstance(params, FusionExport):
        for name, shape in given.items():
            exported = params.group_sizes[params.names.index(name)]
            if len(shape) == 2:
                groups[name] = exported
            elif exported != groups[name]:
                raise ValueError(
                    f"layer {name!r}: exported with {exported} inputs per tile group but given "
                    f"as shape {shape} ({groups[name]} per input channel)."
                )
    sizes = {
        name: _tile_sizes(name, shapes[name], max_in, max_out, groups[name]) for name in shapes
    }
    where = os.fspath(path)
    # Read the lines as they are (row-major); the tile order is undone per
    # layer once the header is known to match.
    chip = read_chip_file(path, max_input_size=0, max_output_size=0)
    missing = [name for name in shapes if name not in chip.layers]
    if missing:
        raise ValueError(
            f"{where}: layer(s) {missing} missing from the file, which holds {list(chip.names)}."
        )
    extra = [name for name in chip.names if name not in shapes]
    if extra:
        raise ValueError(
            f"{where}: the file holds layer(s) {extra} that are not in layers {list(shapes)}."
        )
    for name, (height, width) in shapes.items():
        expected: dict[str, Any] = {"counts": height * width, "heights": height, "widths": width}
        if isinstance(params, FusionExport):
            expected = {**params.header(name), **expected}
        i = chip.names.index(name)
        mismatches = [
            f"{field}: the file has {getattr(chip, field)[i]!r}, expected {expected[field]!r}"
            for field in ("ids", "classes", "counts", "heights", "widths")
            if field in expected and getattr(chip, field)[i] != expected[field]
        ]
        if mismatches:
            raise ValueError(
                f"{where}: layer {name!r}: header mismatch in " + "; ".join(mismatches) + "."
            )
    reconstructed = {}
    for name, shape in shapes.items():
        p = layer_params[name]
        original = p.original_weights if isinstance(p, FusionParams) else None
        if original is not None and tuple(np.shape(original)) != shape:
            raise ValueError(
                f"layer {name!r}: params hold original weights of shape "
                f"{tuple(np.shape(original))} but layers gives shape {shape}."
            )
        original = _original(p)
        order = tiles.file_order(
            shape, max_input_size=max_in, max_output_size=max_out, group_size=groups[name]
        )
        g_layer = np.empty(shape[0] * shape[1], chip.layers[name].dtype)
        g_layer[order] = chip.layers[name].ravel()
        g_layer = g_layer.reshape(shape)
        try:
            parts = [
                convert_back_to_weights(
                    g_layer[:, cols], FusionParams(original[:, cols]), strict_aihwkit=strict_aihwkit
                )
                for cols in _input_slices(sizes[name])
            ]
        except (TypeError, ValueError) as err:
            raise _with_layer(err, name) from err
        w_hat = parts[0] if len(parts) == 1 else jax.numpy.concatenate(parts, axis=1)
        reconstructed[name] = w_hat.reshape(given[name])
    return reconstructed


def _original(p: FusionParams | Mapping[str, Any]) -> Any:
    """The original weights held by ``p`` (as the reference, a dict needs the key)."""
    if isinstance(p, FusionParams):
        return p.original_weights
    if isinstance(p, Mapping) and "original_weights" in p:
        return jax.numpy.asarray(p["original_weights"])
    raise ValueError("params do not contain original_weights")


def _import_tile_sizes(params: Any, max_input_size: Any, max_output_size: Any) -> tuple[int, int]:
    """The tile sizes of the file: given, else the export's, else the Composer's."""
    sizes = []
    for value, field, default in (
        (max_input_size, "max_input_size", tiles.DEFAULT_MAX_INPUT_SIZE),
        (max_output_size, "max_output_size", tiles.DEFAULT_MAX_OUTPUT_SIZE),
    ):
        exported = getattr(params, field) if isinstance(params, FusionExport) else None
        if value is None:
            sizes.append(default if exported is None else exported)
            continue
        value = tiles.check_max_size(value, field)
        if exported is not None and value != exported:
            raise ValueError(
                f"{field}={value} but the layers were exported with {field}={exported}; the "
                "file's tiles would not line up (leave it out to use the export's)."
            )
        sizes.append(value)
    return sizes[0], sizes[1]
