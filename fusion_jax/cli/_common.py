"""What the subcommands of ``fusion-jax`` share: argument types, user errors, output files."""

from __future__ import annotations

import argparse
import json
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusion_jax import _validation
from fusion_jax._atomic import atomic_write_files
from fusion_jax.units import parse_time

PROG = "fusion-jax"

# Errors that are the user's doing (a file, a value, an option); anything else is a bug.
USER_ERRORS = (ValueError, OSError, zipfile.BadZipFile, EOFError, FloatingPointError)


class UserError(ValueError):
    """A problem with the command's inputs, reported as one line."""


# --- argument types: one factory --------------------------------------------------------------


def _arg_type(
    what: str, convert: Callable[[str], Any], check: Callable[[Any], str | None]
) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then ``check`` the value.

    ``check`` returns ``None`` for a good value, else what is wrong with it;
    both failures become one ``invalid WHAT 'TEXT': ...`` usage error.
    """
    kind = "an integer" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError as err:
            if convert not in (int, float):  # a parser of ours: its message says it all
                raise argparse.ArgumentTypeError(str(err)) from None
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: not {kind}.") from None
        problem = check(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {problem}")
        return value

    parse.__name__ = what.replace(" ", "_")  # argparse names the type in some messages
    return parse


def _g_max_problem(value: float) -> str | None:
    try:
        _validation.check_g_max(value)  # the one check of g_max, with the reference's message
    except ValueError as err:
        return str(err)
    return None


time_arg = _arg_type("time", parse_time, lambda v: None)
g_max_arg = _arg_type("g_max", float, _g_max_problem)
positive_int = _arg_type("count", int, lambda v: None if v >= 1 else "must be at least 1.")
non_negative_int = _arg_type("seed", int, lambda v: None if v >= 0 else "must be non-negative.")
positive_float = _arg_type(
    "value",
    float,
    lambda v: None if math.isfinite(v) and v > 0 else "must be a positive number.",
)
tile_size_arg = _arg_type(
    "tile size", int, lambda v: None if v >= 0 else "must be non-negative (0: no split)."
)


def add_tile_args(p: argparse.ArgumentParser) -> None:
    """--max-input-size / --max-output-size: the chip's tiles (aihwkit's mapping names)."""
    for side, what in (("input", "inputs"), ("output", "outputs")):
        p.add_argument(
            f"--max-{side}-size",
            type=tile_size_arg,
            default=512,
            metavar="N",
            help=f"most {what} per chip tile, as aihwkit's mapping; 0: no split "
            "(default: %(default)s, the Composer's)",
        )


# --- output files ----------------------------------------------------------------------------


def check_output_file(path: str, what: str, inputs: Sequence[str] = ()) -> None:
    """Fail early (before any work) if ``path`` cannot be an output file or is an input."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a folder, expected a file name.")
    if not os.path.isdir(directory):
        raise UserError(f"{what} {path}: the folder {directory} does not exist.")
    for source in inputs:
        if os.path.realpath(source) == os.path.realpath(path):
            raise UserError(f"{what} {path}: is also an input file; choose another name.")


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write all ``files`` into ``folder``, or none of them (see :mod:`fusion_jax._atomic`)."""
    atomic_write_files(folder, files)


def _json_ready(value: Any) -> Any:
    """``value`` with NaN/Inf as ``None`` and tuples as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def json_bytes(payload: Any) -> bytes:
    return (json.dumps(_json_ready(payload), indent=1, allow_nan=False) + "\n").encode()


def shape_text(shape: Sequence[int]) -> str:
    """``(3, 4)`` as ``3x4``."""
    return "x".join(str(d) for d in shape)
