"""The Fusion chip's CSV file: the upload (targets) and the read-back.

Six header lines (ids, classes, weight counts, heights, widths, names), then
one line per layer with its conductances. A layer that fits one chip tile
(at most ``max_input_size`` inputs and ``max_output_size`` outputs, 512 and
512 by default, as the Composer maps layers) is its matrix flattened
row-major; a larger one is listed tile by tile (:mod:`fusion_jax.tiles`:
for each input split, for each output split, the tile row-major), while
the header keeps the layer's full height and width. :func:`write_chip_file`
and :func:`read_chip_file` take the tile sizes and go between that order
and the layer matrices.

Bytes as the reference (aihwkit 1.1.0 ``fusion_export``) writes them, and as
:func:`write_chip_file` writes them too: header lines 1-5 end with ``\\n``
(written directly), line 6 (names) and the data lines end with ``\\r\\n``
(Python's csv writer, which writes a lone empty name, aihwkit's name for a
model that is a single layer, as ``""``); each value is ``repr`` of the
conductance as a Python float, i.e. the shortest decimal that reads back to
the same float32 value.
The chip service returns read-backs with ``\\n`` throughout and more digits;
:func:`read_chip_file` accepts both.

The chip has 512 word-lines x 2048 bit-lines, one PCM device per weight, so a
file may hold at most :data:`CHIP_DEVICES` = 1,048,576 conductances.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float

from fusion_jax import tiles as _tiles
from fusion_jax._atomic import atomic_open

__all__ = [
    "CHIP_BIT_LINES",
    "CHIP_DEVICES",
    "CHIP_WORD_LINES",
    "DEFAULT_CLASS",
    "ChipFile",
    "check_header",
    "read_chip_file",
    "write_chip_file",
]

HEADER_FIELDS = ("ids", "classes", "counts", "heights", "widths", "names")

#: Word-lines of the Fusion chip.
CHIP_WORD_LINES = 512
#: Bit-lines of the Fusion chip.
CHIP_BIT_LINES = 2048
#: PCM devices on the chip: one per weight, so the most weights one file can hold.
CHIP_DEVICES = CHIP_WORD_LINES * CHIP_BIT_LINES

#: Header class name given to layers when none is passed (aihwkit's dense layer class).
DEFAULT_CLASS = "AnalogLinearMapped"

# Characters that would break the comma-separated, line-based header (a
# double quote would make Python's csv writer quote the name).
_FORBIDDEN_CHARS = {",": "a comma", "\n": "a line feed", "\r": "a carriage return", '"': "a quote"}


@dataclasses.dataclass(frozen=True)
class ChipFile:
    """A Fusion chip file: its six header lines and the conductances per layer.

    Build one from conductance matrices with :meth:`ChipFile.from_layers`
    (which validates and fills in the header), read one with
    :func:`read_chip_file`, write one with :func:`write_chip_file`.

    Attributes:
        ids: Layer ids (header line 1).
        classes: Layer class names (line 2).
        counts: Number of weights per layer (line 3).
        heights: Output rows per layer (line 4).
        widths: Inputs per row (line 5).
        names: Layer names (line 6), the keys of ``layers``, in file order.
        layers: Layer name to its conductance matrix ``[height, width]`` (uS).

    Example:
        >>> import numpy as np
        >>> import fusion_jax as fj
        >>> f = fj.chip_file.ChipFile.from_layers({"fc": np.full((2, 3), 40.0)}, ids=[7])
        >>> f.ids, f.classes, f.counts, f.heights, f.widths, f.names
        ((7,), ('AnalogLinearMapped',), (6,), (2,), (3,), ('fc',))
    """

    ids: tuple[int, ...]
    classes: tuple[str, ...]
    counts: tuple[int, ...]
    heights: tuple[int, ...]
    widths: tuple[int, ...]
    names: tuple[str, ...]
    layers: Mapping[str, np.ndarray]

    @classmethod
    def from_layers(
        cls,
        layers: Mapping[str, Float[ArrayLike, "height width"]],
        *,
        ids: Sequence[int] | Mapping[str, int] | None = None,
        classes: Sequence[str] | Mapping[str, str] | None = None,
    ) -> ChipFile:
        """Validate conductance matrices and build the file's header for them.

        Args:
            layers: Layer name to its conductance matrix ``[height, width]``
                in uS (finite, non-negative), in file order.
            ids: Header ids, one per layer (a sequence in the order of
                ``layers`` or a mapping name -> id). Default: ``1, 2, ...`` in
                layer order. aihwkit numbers a model's modules instead (the
                shipped LeNet5 has ids ``1,4,9,11`` for layers ``0,3,8,10``);
                pass its ids explicitly where the chip service expects them.
            classes: Header class names, as ``ids``. Default:
                :data:`DEFAULT_CLASS` for every layer.

        Returns:
            The :class:`ChipFile`, each matrix a NumPy array (floating dtypes
            kept, integers as float64).

        Raises:
            TypeError: if a name is not a string, an id not an integer, or a
                matrix not real-valued.
            ValueError: on an empty mapping, a name or class holding a comma,
                quote or line break, ids or classes of the wrong length or
                naming unknown layers, duplicate ids, a matrix that is not
                2-D or is empty, a value that is NaN, infinite or negative
                (naming the layer and its flat position), or more weights
                than the chip has devices.

        Example:
            >>> import numpy as np
            >>> import fusion_jax as fj
            >>> f = fj.chip_file.ChipFile.from_layers(
            ...     {"a": np.ones((2, 2)), "b": np.ones((1, 3))}, classes={"a": "Conv", "b": "Lin"}
            ... )
            >>> f.ids, f.classes, f.counts
            ((1, 2), ('Conv', 'Lin'), (4, 3))
        """
        if not isinstance(layers, Mapping):
            raise TypeError(
                f"layers must be a mapping name -> conductance matrix, got {type(layers).__name__}."
            )
        matrices = {}
        for name, values in layers.items():
            matrices[name] = _conductance_matrix(values, name)
        shapes = {name: m.shape for name, m in matrices.items()}
        ids_t, classes_t = check_header(shapes, ids=ids, classes=classes)
        names = tuple(matrices)
        return cls(
            ids=ids_t,
            classes=classes_t,
            counts=tuple(int(m.size) for m in matrices.values()),
            heights=tuple(int(m.shape[0]) for m in matrices.values()),
            widths=tuple(int(m.shape[1]) for m in matrices.values()),
            names=names,
            layers=matrices,
        )


def check_header(
    shapes: Mapping[str, Sequence[int]],
    *,
    ids: Sequence[int] | Mapping[str, int] | None = None,
    classes: Sequence[str] | Mapping[str, str] | None = None,
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Validate a file's layer names, shapes, ids and classes; fill in defaults.

    Needs only the shapes, so an export can refuse a model before converting
    any weights.

    Args:
        shapes: Layer name to its matrix shape ``(height, width)``, in file order.
        ids: As in :meth:`ChipFile.from_layers` (default ``1, 2, ...``).
        classes: As in :meth:`ChipFile.from_layers` (default :data:`DEFAULT_CLASS`).

    Returns:
        ``(ids, classes)``, one entry per layer in the order of ``shapes``.

    Raises:
        TypeError: if a name is not a string or an id not an integer.
        ValueError: if there are no layers, a class is empty, a name or
            class holds a comma, quote or line break, ids/classes do not match the layers
            one to one, ids repeat, a shape is not 2-D with both sides >= 1,
            or the layers need more than :data:`CHIP_DEVICES` devices.

    Example:
        >>> import fusion_jax as fj
        >>> fj.chip_file.check_header({"0": (16, 25), "3": (32, 400)}, ids=[1, 4])
        ((1, 4), ('AnalogLinearMapped', 'AnalogLinearMapped'))
        >>> fj.chip_file.check_header({"big": (1024, 1025)})
        Traceback (most recent call last):
        ...
        ValueError: the layers need 1,049,600 devices (one per weight) but the Fusion chip has \
1,048,576 (512 x 2048).
    """
    names = tuple(shapes)
    if not names:
        raise ValueError("there are no layers to write: pass at least one layer.")
    for name in names:
        # aihwkit names a model that is one layer "" (written quoted).
        _check_text(name, "layer name", name, allow_empty=True)
    total = 0
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(
                f"layer {name!r}: a chip layer is a 2-D matrix [height, width] with both sides "
                f">= 1, got shape {shape}."
            )
        total += shape[0] * shape[1]
    if total > CHIP_DEVICES:
        raise ValueError(
            f"the layers need {total:,} devices (one per weight) but the Fusion chip has "
            f"{CHIP_DEVICES:,} ({CHIP_WORD_LINES} x {CHIP_BIT_LINES})."
        )
    ids_t = tuple(range(1, len(names) + 1)) if ids is None else _per_layer(ids, names, "ids")
    for name, value in zip(names, ids_t, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"layer {name!r}: id {value!r} is not an integer.")
    ids_t = tuple(int(v) for v in ids_t)
    if len(set(ids_t)) != len(ids_t):
        repeated = sorted({i for i in ids_t if ids_t.count(i) > 1})
        raise ValueError(f"ids must be distinct, got {list(ids_t)} (repeated: {repeated}).")
    if classes is None:
        classes_t = (DEFAULT_CLASS,) * len(names)
    else:
        classes_t = _per_layer(classes, names, "classes")
    for name, value in zip(names, classes_t, strict=True):
        _check_text(value, "class", name)
    return ids_t, tuple(classes_t)


def _check_text(value: Any, what: str, layer: Any, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(f"layer {layer!r}: the {what} must be a string, got {value!r}.")
    if not value and not allow_empty:
        raise ValueError(f"layer {layer!r}: the {what} is empty.")
    for char, description in _FORBIDDEN_CHARS.items():
        if char in value:
            raise ValueError(
                f"layer {layer!r}: the {what} {value!r} contains {description}, which the "
                "comma-separated chip file cannot hold."
            )


def _per_layer(values: Any, names: tuple[str, ...], field: str) -> tuple[Any, ...]:
    """``values`` (a sequence in layer order or a mapping by name) as a tuple per layer."""
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        unknown = [k for k in values if k not in names]
        if missing or unknown:
            raise ValueError(
                f"{field} must have one entry per layer: missing {missing}, unknown {unknown}."
            )
        return tuple(values[n] for n in names)
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise TypeError(
            f"{field} must be a sequence (one entry per layer) or a mapping layer name -> value, "
            f"got {values!r}."
        )
    values = tuple(values)
    if len(values) != len(names):
        raise ValueError(
            f"{field} has {len(values)} entries but there are {len(names)} layers {list(names)}."
        )
    return values


def _conductance_matrix(values: Any, name: Any) -> np.ndarray:
    """``values`` as a finite, non-negative 2-D NumPy array, or a clear error."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"layer {name!r}: conductances must be real numbers, got dtype {array.dtype}."
        )
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(
            f"layer {name!r}: a chip layer is a 2-D matrix [height, width] with both sides "
            f">= 1, got shape {tuple(array.shape)}."
        )
    bad = ~np.isfinite(array) | (array < 0)
    if bad.any():
        flat = int(np.argmax(bad.ravel()))
        row, col = divmod(flat, array.shape[1])
        raise ValueError(
            f"layer {name!r}: conductance {array.ravel()[flat]!r} at row {row}, column {col} "
            f"(position {flat + 1} of its data line) is not a finite, non-negative number; "
            f"{int(bad.sum())} such value(s) in the layer."
        )
    return array


def _format_values(values: np.ndarray) -> str:
    """One data line (without its ending): ``repr`` of each value as a Python float."""
    return ",".join(map(repr, values.ravel().tolist()))


def _format_header(chip: ChipFile) -> str:
    """Header lines 1-6 with the reference's line endings."""
    fields = (chip.ids, chip.classes, chip.counts, chip.heights, chip.widths)
    head = "".join(",".join(str(v) for v in field) + "\n" for field in fields)
    names = io.StringIO()
    csv.writer(names).writerow(chip.names)  # as aihwkit: a lone "" is written quoted
    return head + names.getvalue()


def _tile_orders(
    chip: ChipFile,
    max_input_size: int,
    max_output_size: int,
    group_sizes: Mapping[str, int] | None,
    where: str,
) -> dict[str, np.ndarray | None]:
    """Per layer, the file order of its values (``None``: one tile, row-major)."""
    _tiles.check_max_size(max_input_size, "max_input_size")
    _tiles.check_max_size(max_output_size, "max_output_size")
    groups = dict(group_sizes or {})
    unknown = [n for n in groups if n not in chip.names]
    if unknown:
        raise ValueError(
            f"{where}group_sizes names layer(s) {unknown} that are not in the file "
            f"{list(chip.names)}."
        )
    orders: dict[str, np.ndarray | None] = {}
    for name, height, width in zip(chip.names, chip.heights, chip.widths, strict=True):
        group = groups.get(name, 1)
        try:
            order = _tiles.file_order(
                (height, width),
                max_input_size=max_input_size,
                max_output_size=max_output_size,
                group_size=group,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}layer {name!r}: {err}") from None
        single = (
            len(_tiles.split_sizes(width, max_input_size, group_size=group)) == 1
            and len(_tiles.split_sizes(height, max_output_size)) == 1
        )
        orders[name] = None if single else order
    return orders


def write_chip_file(
    path: str | os.PathLike[str],
    chip: ChipFile,
    *,
    max_input_size: int = _tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = _tiles.DEFAULT_MAX_OUTPUT_SIZE,
    group_sizes: Mapping[str, int] | None = None,
) -> None:
    """Write a Fusion chip file atomically, in the reference's exact bytes.

    A layer larger than one tile is written tile by tile
    (:func:`fusion_jax.tiles.file_order`), as aihwkit writes it.

    The content is built in memory, then written to a temporary file in the
    same directory, flushed and fsync'ed, and renamed over ``path``
    (:func:`os.replace`), so readers never see a partial file. On any
    failure the temporary file is removed and an existing ``path`` is left
    untouched. A replaced file keeps its permission bits; a symbolic link
    is written through, as :func:`open` does. Errors name ``path``.

    Args:
        path: Destination file; its directory must exist.
        chip: The file's content. Validated again before anything is written
            (header consistent with the matrices, finite non-negative values,
            at most :data:`CHIP_DEVICES` weights).
        max_input_size: Most inputs per chip tile (0: no split).
        max_output_size: Most outputs per chip tile (0: no split).
        group_sizes: Layer name -> inputs per conv input channel (``kh *
            kw``) for conv layers, which are split on channel boundaries;
            other layers 1.

    Returns:
        None.

    Raises:
        ValueError, TypeError: as :meth:`ChipFile.from_layers`, if the
            header's counts, heights, widths or names disagree with the
            matrices, or for bad tile sizes (naming the layer).
        OSError: if the directory does not exist or is not writable.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> import fusion_jax as fj
        >>> chip = fj.chip_file.ChipFile.from_layers({"fc": np.array([[40.0, 12.5]], np.float32)})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "model.csv"
        ...     fj.chip_file.write_chip_file(path, chip)
        ...     print(path.read_bytes())
        b'1\\nAnalogLinearMapped\\n2\\n1\\n2\\nfc\\r\\n40.0,12.5\\r\\n'
    """
    if not isinstance(chip, ChipFile):
        raise TypeError(f"chip must be a ChipFile, got {type(chip).__name__}.")
    checked = ChipFile.from_layers(chip.layers, ids=chip.ids, classes=chip.classes)
    for field in ("counts", "heights", "widths", "names"):
        if tuple(getattr(chip, field)) != getattr(checked, field):
            raise ValueError(
                f"chip.{field} {tuple(getattr(chip, field))} disagrees with the layer matrices, "
                f"which give {getattr(checked, field)}."
            )
    orders = _tile_orders(checked, max_input_size, max_output_size, group_sizes, "")
    with atomic_open(path) as fh:
        fh.write(_format_header(checked))
        for name in checked.names:
            matrix, order = checked.layers[name], orders[name]
            fh.write(_format_values(matrix if order is None else matrix.ravel()[order]))
            fh.write("\r\n")


def _parse_ints(text: str, field: str, line_no: int, path: str) -> tuple[int, ...]:
    values = []
    for pos, item in enumerate(text.split(","), start=1):
        try:
            values.append(int(item))
        except ValueError:
            raise ValueError(
                f"{path}: line {line_no} ({field}), position {pos}: {item!r} is not an integer."
            ) from None
    return tuple(values)


#: Longest header line accepted (bytes): the reader checks each before reading on.
_MAX_HEADER_LINE = 1 << 20
#: Most bytes a value may take in a data line, its comma included. A float's
#: ``repr`` takes at most 24 characters; read-backs with more digits fit too.
_MAX_VALUE_BYTES = 32


def _decode(raw: bytes, path: str, first_line: int) -> str:
    """``raw`` as UTF-8 text, or an error naming the file and the line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = first_line + raw.count(b"\n", 0, err.start)
        raise ValueError(
            f"{path}: line {line_no}: byte {raw[err.start]:#04x} is not UTF-8 text; a Fusion "
            "chip file is a UTF-8 CSV file."
        ) from None


def _read_header(fh: Any, path: str) -> list[str]:
    """The six header lines (endings removed), each checked for length and encoding."""
    lines = []
    for line_no in range(1, 7):
        raw = fh.readline(_MAX_HEADER_LINE + 1)
        if len(raw) > _MAX_HEADER_LINE:
            raise ValueError(
                f"{path}: line {line_no} is longer than {_MAX_HEADER_LINE:,} bytes: not a Fusion "
                "chip file header."
            )
        if not raw:
            raise ValueError(
                f"{path}: a Fusion chip file needs 6 header lines, found {len(lines)} lines."
            )
        lines.append(_decode(raw, path, line_no).removesuffix("\n").removesuffix("\r"))
    return lines


def _check_dimensions(
    path: str,
    names: tuple[str, ...],
    counts: tuple[int, ...],
    heights: tuple[int, ...],
    widths: tuple[int, ...],
) -> None:
    """Every layer at least 1 x 1 with count = height x width, all within the chip."""
    for field, line_no, values in (("heights", 4, heights), ("widths", 5, widths)):
        for pos, value in enumerate(values, start=1):
            if value < 1:
                raise ValueError(
                    f"{path}: line {line_no} ({field}), position {pos} (layer "
                    f"{names[pos - 1]!r}): {value} is not a positive size."
                )
    for i, name in enumerate(names):
        if counts[i] != heights[i] * widths[i]:
            raise ValueError(
                f"{path}: line 3 (counts), position {i + 1} (layer {name!r}): count "
                f"{counts[i]} != height {heights[i]} x width {widths[i]}."
            )
    total = sum(counts)
    if total > CHIP_DEVICES:
        raise ValueError(
            f"{path}: line 3 (counts): the layers hold {total:,} weights but the Fusion chip "
            f"has {CHIP_DEVICES:,} devices."
        )


def read_chip_file(
    path: str | os.PathLike[str],
    *,
    max_input_size: int = _tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = _tiles.DEFAULT_MAX_OUTPUT_SIZE,
    group_sizes: Mapping[str, int] | None = None,
) -> ChipFile:
    """Read a Fusion chip CSV file (``\\n`` or ``\\r\\n`` line endings).

    The header is read and checked first (six lines, each at most 1 MiB,
    UTF-8; positive sizes with count = height x width; at most
    :data:`CHIP_DEVICES` weights in all), then the file's size against what
    the header's layers can take (32 bytes per value; a full chip's file is
    about 25 MB), and only then the data lines: a bogus file costs no more
    memory than a real one.

    The names line is read as CSV (aihwkit writes the name ``""`` of a
    single-layer model quoted). A layer larger than one tile is put back
    from the file's tile order into its matrix.

    Args:
        path: The file to read.
        max_input_size: Most inputs per chip tile the file was written with
            (0: no split).
        max_output_size: Most outputs per chip tile (0: no split).
        group_sizes: Layer name -> ``kh * kw`` for conv layers (split on
            channel boundaries); other layers 1.

    Returns:
        The parsed :class:`ChipFile`, conductances as float64 arrays.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on a malformed header, a header whose fields disagree in
            length, negative or zero sizes, repeated layer names, bytes that
            are not UTF-8, a file larger than its header allows, a data line
            of the wrong length, or a value that is not a finite,
            non-negative number (naming the file, line and position).

    Example:
        >>> import fusion_jax as fj
        >>> f = fj.chip_file.read_chip_file(fj.datasets.lenet5_path("programmed.csv"))
        >>> f.names, f.layers["10"].shape
        (('0', '3', '8', '10'), (10, 128))
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        lines = _read_header(fh, path)
        header_bytes = fh.tell()
        ids = _parse_ints(lines[0], "ids", 1, path)
        classes = tuple(lines[1].split(","))
        counts = _parse_ints(lines[2], "counts", 3, path)
        heights = _parse_ints(lines[3], "heights", 4, path)
        widths = _parse_ints(lines[4], "widths", 5, path)
        names = tuple(next(csv.reader([lines[5]])))  # aihwkit quotes a lone "" name
        header = dict(
            zip(HEADER_FIELDS, (ids, classes, counts, heights, widths, names), strict=True)
        )
        for field, values in header.items():
            if len(values) != len(names):
                raise ValueError(
                    f"{path}: header line {HEADER_FIELDS.index(field) + 1} ({field}) has "
                    f"{len(values)} entries but line 6 names {len(names)} layers."
                )
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: line 6 (names) repeats a layer name: {list(names)}.")
        _check_dimensions(path, names, counts, heights, widths)
        limit = header_bytes + sum(counts) * _MAX_VALUE_BYTES + 2 * len(names) + 64
        if size > limit:
            raise ValueError(
                f"{path}: the file has {size:,} bytes, more than its header's {len(names)} "
                f"layer(s) of {sum(counts):,} values can take (at most {limit:,}): not a Fusion "
                "chip file, or its data lines do not match the header."
            )
        text = _decode(fh.read(), path, 7)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    data_lines = lines
    if len(data_lines) != len(names):
        raise ValueError(
            f"{path}: expected {len(names)} data lines (one per layer), found {len(data_lines)}."
        )
    layers = {}
    for i, (name, line) in enumerate(zip(names, data_lines, strict=True)):
        line_no = 7 + i
        items = line.split(",")
        if len(items) != counts[i]:
            raise ValueError(
                f"{path}: line {line_no} (layer {name!r}) has {len(items)} values, "
                f"expected {counts[i]} ({heights[i]} x {widths[i]})."
            )
        try:
            values = np.array(items, dtype=np.float64)
        except ValueError:
            pos = next(p for p, s in enumerate(items, 1) if not _is_float(s))
            raise ValueError(
                f"{path}: line {line_no} (layer {name!r}), position {pos}: "
                f"{items[pos - 1]!r} is not a number."
            ) from None
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            pos = int(np.argmax(bad)) + 1
            raise ValueError(
                f"{path}: line {line_no} (layer {name!r}), position {pos}: conductance "
                f"{items[pos - 1]!r} is not a finite, non-negative number."
            )
        layers[name] = values
    chip = ChipFile(ids, classes, counts, heights, widths, names, layers)
    orders = _tile_orders(chip, max_input_size, max_output_size, group_sizes, f"{path}: ")
    for i, name in enumerate(names):
        line, order = layers[name], orders[name]
        if order is not None:
            matrix = np.empty_like(line)
            matrix[order] = line
            line = matrix
        layers[name] = line.reshape(heights[i], widths[i])
    return chip


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
