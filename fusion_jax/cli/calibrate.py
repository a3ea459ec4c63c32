"""``fusion-jax calibrate``: fit the chip noise model to a target file and its read-back."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from fusion_jax._atomic import atomic_open
from fusion_jax.cli._common import (
    UserError,
    check_output_file,
    g_max_arg,
    json_bytes,
    non_negative_int,
    positive_int,
    time_arg,
)
from fusion_jax.units import format_time


def _matching_conductances(targets_path: str, readback_path: str) -> tuple[np.ndarray, ...]:
    from fusion_jax.chip_file import read_chip_file

    targets, readback = read_chip_file(targets_path), read_chip_file(readback_path)
    if set(targets.names) != set(readback.names):
        raise UserError(
            f"{targets_path} holds layers {list(targets.names)} but {readback_path} holds "
            f"{list(readback.names)}: the files do not belong together."
        )
    for name in targets.names:
        a, b = targets.layers[name].shape, readback.layers[name].shape
        if a != b:
            raise UserError(
                f"layer {name!r} is {a[0]}x{a[1]} in {targets_path} but "
                f"{b[0]}x{b[1]} in {readback_path}."
            )
    t = np.concatenate([targets.layers[n].ravel() for n in targets.names])
    r = np.concatenate([readback.layers[n].ravel() for n in targets.names])
    return t, r


def _run_calibrate(args: argparse.Namespace) -> int:
    import jax

    from fusion_jax.noise import calibrate, validation_table

    if args.json is not None:
        check_output_file(args.json, "--json", [args.targets, args.readback])
    targets, readback = _matching_conductances(args.targets, args.readback)
    model = calibrate(targets, readback, n_fit_bins=args.fit_bins, t_calibration=args.t_calibration)
    table = validation_table(
        model,
        targets,
        readback,
        jax.random.key(args.seed),
        n_bins=args.table_bins,
        g_range=(0.0, args.g_max),
        g_max=args.g_max,
    )
    probe = np.array([1.0, 5.0, 10.0, 20.0, 40.0])
    mean, std = np.asarray(model.latent_mean(probe)), np.asarray(model.latent_std(probe))

    def numbers(values: Sequence[float], fmt: str = "9.4f") -> str:
        return " ".join(format(float(v), fmt) for v in values)

    print(
        f"FusionChipNoise fitted to {targets.size} devices ({args.targets} -> "
        f"{args.readback}), t_calibration {format_time(args.t_calibration)}:"
    )
    print(f"  log_median_coefs   {numbers(model.log_median_coefs)}")
    print(f"  log_spread_coefs   {numbers(model.log_spread_coefs)}")
    print(f"  shift              {float(model.shift):9.4f} uS")
    print(f"  stuck_probability  {float(model.stuck_probability):9.6f}")
    print(f"  target (uS)        {numbers(probe, '7.1f')}")
    print(f"  latent mean (uS)   {numbers(mean, '7.2f')}")
    print(f"  latent std (uS)    {numbers(std, '7.2f')}")
    print(f"validation: the fitted model sampled once (seed {args.seed}) against the read-back")
    print(table.format())
    if args.json is not None:
        payload = {
            "model": "FusionChipNoise",
            "devices": int(targets.size),
            "targets": args.targets,
            "readback": args.readback,
            "parameters": dataclasses.asdict(model),
            "validation": [dataclasses.asdict(row) for row in table.rows],
        }
        with atomic_open(args.json, binary=True) as fh:
            fh.write(json_bytes(payload))
        print(f"wrote {args.json}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``calibrate`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "calibrate",
        help="fit the chip noise model to a target file and its read-back",
        description=(
            "Fit a FusionChipNoise model (fusion_jax.noise.calibrate) to target conductances "
            "and the chip's read-back of them, print its coefficients and a per-bin comparison "
            "of model samples with the read-back."
        ),
    )
    p.add_argument("targets", metavar="TARGETS.csv", help="target conductances (export output)")
    p.add_argument("readback", metavar="READBACK.csv", help="the chip's read-back of them")
    p.add_argument("--json", metavar="OUT", help="also write the model and table as JSON")
    p.add_argument(
        "--t-calibration",
        type=time_arg,
        default=3600.0,
        metavar="T",
        help="time after programming that the read-back describes (default: 1h)",
    )
    p.add_argument(
        "--fit-bins",
        type=positive_int,
        default=64,
        metavar="N",
        help="equal-count target bins of the fit, at least 8 (default: %(default)s)",
    )
    p.add_argument(
        "--table-bins",
        type=positive_int,
        default=10,
        metavar="N",
        help="target bins of the validation table (default: %(default)s)",
    )
    p.add_argument(
        "--g-max",
        type=g_max_arg,
        default=40.0,
        metavar="G",
        help="g_max (uS) the targets were converted with (default: 40)",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="seed of the model's samples in the table (default: %(default)s)",
    )
    p.set_defaults(run=_run_calibrate)
