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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _validation
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

    def __post_init__(self) -> None:
        n = len(self.names)
        for field in ("layers", "ids", "classes"):
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
        if len(shape) != 2:
            raise ValueError(
                f"layer {name!r}: weights must be 2-D [out, in] (one row per output), got shape "
                f"{shape}; flatten Flax kernels with fusion_jax.layout.kernel_to_rows or "
                "fusion_jax.layout.flax_to_layers."
            )
        shapes[name] = shape
    return shapes


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
) -> tuple[ChipFile, FusionExport]:
    """Convert layers to target conductances and write the chip's upload file.

    Each layer is converted with :func:`fusion_jax.convert_to_conductances`
    and written as one line of the file (format: :mod:`fusion_jax.chip_file`),
    atomically: on any error no file, partial or temporary, is left.

    Args:
        layers: Layer name -> weights ``[out, in]`` (any array-like), in the
            order the file should list them. Flax parameter pytrees convert
            with :func:`fusion_jax.layout.flax_to_layers`.
        path: The CSV file to write (replaced if it exists).
        g_max: Largest conductance in uS, in [10, 40].
        ids: Header ids, a sequence in layer order or a mapping name -> id.
            Default ``1, 2, ...``. aihwkit numbers the model's modules
            instead (ids ``1,4,9,11`` for the LeNet5 layers ``0,3,8,10``):
            pass those ids where the chip service or another tool expects them.
        classes: Header class names, like ``ids``. Default
            ``"AnalogLinearMapped"`` for every layer (pass
            ``"AnalogConv2dMapped"`` for conv layers to match aihwkit).

    Returns:
        ``(data, params)``: the :class:`~fusion_jax.chip_file.ChipFile`
        written (conductances per layer), and a :class:`FusionExport` (a
        pytree mapping layer name -> :class:`~fusion_jax.FusionParams`, plus
        the header) to pass to :func:`fusion_import`.

    Raises:
        ArgumentError: if ``g_max`` is not a scalar in [10, 40].
        TypeError: if ``layers`` is not a mapping, a name is not a string or
            weights are not numeric.
        ValueError: if a layer is not 2-D, holds NaN/Inf (naming the layer
            and rows), a name or class contains a comma, quote or line break,
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
    ids_t, classes_t = check_header(shapes, ids=ids, classes=classes)
    conductances = {}
    fusion_params = []
    for name, weights in layers.items():
        try:
            g_layer, p_layer = convert_to_conductances(weights, g)
        except (TypeError, ValueError) as err:
            raise _with_layer(err, name) from err
        conductances[name] = np.asarray(g_layer)
        fusion_params.append(p_layer)
    data = ChipFile.from_layers(conductances, ids=ids_t, classes=classes_t)
    write_chip_file(path, data)
    params = FusionExport(
        layers=tuple(fusion_params), names=data.names, ids=ids_t, classes=classes_t, g_max=g
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
) -> dict[str, Float[Array, "out in"]]:
    """Read a chip read-back file and reconstruct each layer's weights.

    The file (``\\n`` or ``\\r\\n`` line endings) must hold exactly the
    layers of ``layers``, with matching counts, heights and widths, and,
    when ``params`` is a :class:`FusionExport`, the ids and classes it was
    exported with (the order of the layers in the file does not matter).
    Each layer is then reconstructed with
    :func:`fusion_jax.convert_back_to_weights`: a per-row least-squares fit
    of the original weights on the signed read-back conductances, which
    recovers each row's gain after drift.

    Args:
        path: The read-back CSV file.
        layers: The layers that were exported (name -> weights ``[out, in]``);
            their names and shapes are checked against the file.
        params: The :class:`FusionExport` returned by :func:`fusion_export`,
            or a mapping layer name -> :class:`~fusion_jax.FusionParams` (or
            the reference's ``{"original_weights": W}``), in which case ids
            and classes are not checked.
        strict_aihwkit: Reproduce the reference's zeroed rows on
            zero-variance rows (see :func:`fusion_jax.convert_back_to_weights`).

    Returns:
        Layer name -> reconstructed weights ``[out, in]``, in the order of
        ``layers``, in the dtype of the original weights.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        TypeError: if ``layers`` or ``params`` is not a mapping.
        ValueError: on a malformed file (wrong number of values, a
            non-numeric, NaN, infinite or negative value: with the line and
            position), a layer missing from the file or from ``params``, a
            file layer not in ``layers``, or a header field (ids, classes,
            counts, heights, widths) that disagrees for a layer (naming both).

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
    shapes = _layer_shapes(layers)
    if not shapes:
        raise ValueError("layers is empty: pass the layers that were exported.")
    layer_params = {name: _layer_params(params, name) for name in shapes}
    chip = read_chip_file(path)
    where = os.fspath(path)
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
        try:
            reconstructed[name] = convert_back_to_weights(
                chip.layers[name], p, strict_aihwkit=strict_aihwkit
            )
        except (TypeError, ValueError) as err:
            raise _with_layer(err, name) from err
    return reconstructed
