"""The ``fusion-jax`` command: g_max sweeps, chip-file export/import, noise calibration.

Subcommands (``fusion-jax SUBCOMMAND --help`` for each one's options):

* ``sweep``: train a digital and a hardware-aware classifier on
  scikit-learn's digits, program both onto the simulated chip over a grid of
  g_max, seeds and inference times (:func:`fusion_jax.sweep`), print the
  tables and write CSV, JSON and a PNG plot to an output folder.
* ``export``: weights ``.npz`` -> the chip's upload file (target conductances).
* ``import``: a chip read-back file + the original weights -> reconstructed
  weights ``.npz``, with the per-layer error.
* ``calibrate``: fit a :class:`~fusion_jax.noise.FusionChipNoise` to a target
  file and its read-back and print it with its validation table.
* ``data``: the path of the real-chip data shipped with the package.

A user mistake (missing file, bad option or value, malformed or mismatched
data) prints one line ``fusion-jax: error: ...`` to stderr and exits with
status 1 (2 for a malformed command line); no output file is left behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fusion_jax.cli import calibrate, files, sweep
from fusion_jax.cli._common import PROG, USER_ERRORS
from fusion_jax.units import parse_time

__all__ = ["build_parser", "main", "parse_time"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fusion-jax`` argument parser with its subcommands.

    Returns:
        An ``argparse.ArgumentParser``; each subcommand's namespace carries
        its handler in ``run``.

    Example:
        >>> from fusion_jax.cli import build_parser
        >>> args = build_parser().parse_args(["sweep", "--g-max", "10", "40", "--times", "1d"])
        >>> args.g_max, args.times, args.seeds
        ([10.0, 40.0], [86400.0], 8)
    """
    parser = _Parser(
        prog=PROG,
        description="Simulate programming neural-network weights onto IBM's Fusion analog chip.",
        epilog=f"Run '{PROG} SUBCOMMAND --help' for a subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    sweep.add_parser(sub)
    files.add_parsers(sub)
    calibrate.add_parser(sub)
    return parser


def _version() -> str:
    from fusion_jax import __version__

    return __version__


def _finish_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express, reported as usage errors."""
    if args.command == "sweep":
        sweep.check_args(parser, args)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}."
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fusion-jax`` command.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 for bad inputs or data (one line
        ``fusion-jax: error: ...`` on stderr), 2 for a malformed command
        line; ``--help`` returns 0.

    Example:
        >>> from fusion_jax.cli import main
        >>> main(["--help"])                       # doctest: +ELLIPSIS
        usage: fusion-jax [-h] [--version] SUBCOMMAND ...
        ...
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _finish_args(parser, args)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except USER_ERRORS as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
