"""The Fusion chip's CSV file: the upload (targets) and the read-back.

Six header lines (ids, classes, weight counts, heights, widths, names), then
one line per layer with its conductance matrix flattened row-major. Files
written by Python's csv module end data lines with ``\\r\\n``; the chip
service writes ``\\n``; both are read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

__all__ = ["ChipFile", "read_chip_file"]

HEADER_FIELDS = ("ids", "classes", "counts", "heights", "widths", "names")


@dataclasses.dataclass(frozen=True)
class ChipFile:
    """A parsed Fusion chip file.

    Attributes:
        ids: Layer ids (header line 1).
        classes: Layer class names (line 2).
        counts: Number of weights per layer (line 3).
        heights: Output rows per layer (line 4).
        widths: Inputs per row (line 5).
        names: Layer names (line 6), the keys of ``layers``.
        layers: Layer name to its conductance matrix ``[height, width]`` (uS).
    """

    ids: tuple[int, ...]
    classes: tuple[str, ...]
    counts: tuple[int, ...]
    heights: tuple[int, ...]
    widths: tuple[int, ...]
    names: tuple[str, ...]
    layers: Mapping[str, np.ndarray]


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


def read_chip_file(path: str | os.PathLike[str]) -> ChipFile:
    """Read a Fusion chip CSV file (``\\n`` or ``\\r\\n`` line endings).

    Args:
        path: The file to read.

    Returns:
        The parsed :class:`ChipFile`, conductances as float64 arrays.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on a malformed header, a header whose fields disagree in
            length, a data line of the wrong length, or a value that is not a
            finite, non-negative number (naming the line and position).

    Example:
        >>> import fusion_jax as fj
        >>> f = fj.chip_file.read_chip_file(fj.datasets.lenet5_path("programmed.csv"))
        >>> f.names, f.layers["10"].shape
        (('0', '3', '8', '10'), (10, 128))
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8", newline="") as fh:
        lines = [line.rstrip("\r\n") for line in fh.read().splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 6:
        raise ValueError(f"{path}: a Fusion chip file needs 6 header lines, found {len(lines)} lines.")
    ids = _parse_ints(lines[0], "ids", 1, path)
    classes = tuple(lines[1].split(","))
    counts = _parse_ints(lines[2], "counts", 3, path)
    heights = _parse_ints(lines[3], "heights", 4, path)
    widths = _parse_ints(lines[4], "widths", 5, path)
    names = tuple(lines[5].split(","))
    header = dict(zip(HEADER_FIELDS, (ids, classes, counts, heights, widths, names), strict=True))
    for field, values in header.items():
        if len(values) != len(names):
            raise ValueError(
                f"{path}: header line {HEADER_FIELDS.index(field) + 1} ({field}) has "
                f"{len(values)} entries but line 6 names {len(names)} layers."
            )
    data_lines = lines[6:]
    if len(data_lines) != len(names):
        raise ValueError(
            f"{path}: expected {len(names)} data lines (one per layer), found {len(data_lines)}."
        )
    layers = {}
    for i, (name, line) in enumerate(zip(names, data_lines, strict=True)):
        line_no = 7 + i
        if counts[i] != heights[i] * widths[i]:
            raise ValueError(
                f"{path}: layer {name!r}: count {counts[i]} != height {heights[i]} x width "
                f"{widths[i]}."
            )
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
        layers[name] = values.reshape(heights[i], widths[i])
    return ChipFile(ids, classes, counts, heights, widths, names, layers)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
