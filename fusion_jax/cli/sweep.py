"""``fusion-jax sweep``: the digits experiment, its tables, plot and files.

It runs :func:`fusion_jax.training.hardware_aware_experiment` (digital and
hardware-aware training per seed, then one :func:`fusion_jax.sweep` per kind
of model), prints the tables and writes them, with a plot, to a folder,
all or nothing. It can join a multi-process run (TPU pod slices, GPU
clusters): then only process 0 prints and writes.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusion_jax import _validation
from fusion_jax.cli._common import (
    UserError,
    add_tile_args,
    g_max_arg,
    json_bytes,
    non_negative_int,
    positive_float,
    positive_int,
    time_arg,
    write_files,
)
from fusion_jax.units import format_time, parse_time

#: Defaults of ``fusion-jax sweep``.
DEFAULT_G_MAX_RANGE = (_validation.G_MAX_MIN, _validation.G_MAX_MAX, 7)
DEFAULT_SEEDS = 8
DEFAULT_TIMES = ("1s", "1h", "1d", "1y")
DEFAULT_OUT = "fusion_jax_results"

_NOISE_HELP = {
    "chip": "FusionChipNoise calibrated on the real-chip LeNet5 read-back",
    "pcm": "PCMLikeNoise, aihwkit's statistical PCM model",
    "none": "no noise: the exact conversion round trip",
}


def _noise_model(name: str) -> Any:
    from fusion_jax.noise import FusionChipNoise, PCMLikeNoise

    return {
        "chip": FusionChipNoise.lenet5_readback,
        "pcm": PCMLikeNoise,
        "none": lambda: None,
    }[name]()


def _g_max_grid(args: argparse.Namespace) -> np.ndarray:
    if args.g_max is not None:
        return np.asarray(args.g_max, dtype=np.float64)
    lo, hi, n = args.g_max_range if args.g_max_range is not None else DEFAULT_G_MAX_RANGE
    return np.linspace(lo, hi, n)


def _g_max_range_arg(values: Sequence[str]) -> tuple[float, float, int]:
    lo, hi = (g_max_arg(v) for v in values[:2])
    n = positive_int(values[2])
    if hi < lo:
        raise argparse.ArgumentTypeError(f"--g-max-range: HI {hi:g} is below LO {lo:g}.")
    if n == 1 and hi != lo:
        raise argparse.ArgumentTypeError("--g-max-range: N must be at least 2 when LO != HI.")
    return lo, hi, n


def _describe_model(args: argparse.Namespace) -> str:
    if args.model == "mlp":
        return "MLP " + "-".join(str(w) for w in (64, *args.hidden, 10))
    c1, c2 = args.channels
    return f"CNN conv3x3({c1})-conv3x3/2({c2})-linear(10)"


def _sweep_table(experiment: Any) -> str:
    """The per-kind tables (g_max by time) and the paired comparison of the experiment."""
    clean = {"digital": experiment.clean_digital, "hardware-aware": experiment.clean_aware}
    lines = [
        "test accuracy before programming (digital weights), mean over seeds: "
        + ", ".join(f"{label} {100 * float(np.mean(acc)):.2f}" for label, acc in clean.items()),
        "",
    ]
    for r in (experiment.digital, experiment.aware):
        lines += [r.format_table(), ""]
    lines += [experiment.table(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _sweep_csv(results: Sequence[Any]) -> bytes:
    rows = [row for r in results for row in r.rows()]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _as_flags(message: str) -> str:
    """A message of :mod:`fusion_jax.distributed` with its argument names as the CLI's flags."""
    for name, flag in (
        ("coordinator_address", "--coordinator"),
        ("num_processes", "--num-processes"),
        ("process_id", "--process-id"),
        ("none of them for", "--distributed alone for"),
    ):
        message = message.replace(name, flag)
    return message


def _join_run(args: argparse.Namespace) -> Callable[..., None]:
    """Join the multi-process run the flags ask for; return ``print`` for process 0.

    Every process prints one line saying which it is and the devices it
    sees; afterwards only process 0 prints (the others get a no-op) and shows
    progress bars.
    """
    import fusion_jax as fj

    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in explicit):
        return print
    try:
        fj.distributed.initialize(*explicit)
    except ValueError as err:
        flag = "--distributed" if args.distributed else "--coordinator"
        raise UserError(f"{flag}: {_as_flags(str(err))}") from None
    print(fj.distributed.process_summary(), flush=True)
    if fj.distributed.is_main_process():
        return print
    args.progress = False
    return lambda *_args, **_kwargs: None


def _run_sweep(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder.")
    g_max = _g_max_grid(args)
    times = np.asarray(
        args.times if args.times is not None else [parse_time(t) for t in DEFAULT_TIMES],
        dtype=np.float64,
    )

    import jax

    import fusion_jax as fj
    from fusion_jax.digits import load_digits_split
    from fusion_jax.plotting import plot_sweep
    from fusion_jax.training import hardware_aware_experiment

    say = _join_run(args)  # first: before anything uses a device

    noise = _noise_model(args.noise)
    data = load_digits_split(0)
    if not 1 <= args.batch_size <= data.x_train.shape[0]:
        raise UserError(
            f"--batch-size {args.batch_size}: must lie in [1, "
            f"{data.x_train.shape[0]}] (the number of training images)."
        )
    kwargs = (
        {"hidden": tuple(args.hidden)}
        if args.model == "mlp"
        else {"channels": tuple(args.channels)}
    )
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    say(
        f"{_describe_model(args)} on scikit-learn digits: {data.x_train.shape[0]} training, "
        f"{data.x_test.shape[0]} test images; noise: {args.noise} ({_NOISE_HELP[args.noise]})"
    )
    say(
        f"{args.seeds} seeds ({seeds[0]}..{seeds[-1]}), each: a digital and a hardware-aware "
        f"model trained {args.epochs} epochs (batch {args.batch_size}, Adam lr "
        f"{args.learning_rate:g}; hardware-aware: programmed in every step at g_max "
        f"{args.train_g_max:g} uS, t {format_time(args.train_time)}, gradient {args.gradient}), "
        "then both programmed once with the seed's chip draw"
    )
    sys.stdout.flush()
    experiment = hardware_aware_experiment(
        args.model,
        seeds=seeds,
        g_max=g_max,
        t_inference=times,
        train_g_max=args.train_g_max,
        train_t_inference=args.train_time,
        gradient=args.gradient,
        noise=noise,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_input_size=args.max_input_size,
        max_output_size=args.max_output_size,
        model_kwargs=kwargs,
        data=data,
        progress=args.progress,
    )
    results = [experiment.digital, experiment.aware]
    clean = {
        "digital": float(np.mean(experiment.clean_digital)),
        "hardware-aware": float(np.mean(experiment.clean_aware)),
    }
    table = _sweep_table(experiment)
    if not fj.distributed.is_main_process():
        return 0  # process 0 prints the tables and writes the files
    print()
    print(table, end="")
    figure = plot_sweep(
        results,
        clean=[clean["digital"], clean["hardware-aware"]],
        title=f"{_describe_model(args)} on digits, programmed with noise: {args.noise}",
    )
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=150)
    settings = {
        "model": args.model,
        "architecture": _describe_model(args),
        "noise": args.noise,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seeds": seeds,
        "train_g_max": args.train_g_max,
        "train_t_inference": args.train_time,
        "gradient": args.gradient,
        "max_input_size": args.max_input_size,
        "max_output_size": args.max_output_size,
        "jax_backend": jax.default_backend(),
    }
    payload = {
        "settings": settings,
        "clean_accuracy": clean,
        "results": [
            {
                "label": r.label,
                "g_max": r.g_max.tolist(),
                "seeds": r.seeds.tolist(),
                "t_inference": r.t_inference.tolist(),
                "summary": r.summary(),
                "rows": r.rows(),
            }
            for r in results
        ],
    }
    files = {
        "sweep.csv": _sweep_csv(results),
        "sweep.json": json_bytes(payload),
        "sweep.png": png.getvalue(),
        "table.txt": table.encode(),
    }
    write_files(out, files)
    print(f"\nwrote {', '.join(files)} to {out}{os.sep}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``sweep`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "sweep",
        help="train digital and hardware-aware models, sweep g_max, write tables and a plot",
        description=(
            "Train a digital and a hardware-aware classifier on scikit-learn's digits, program "
            "both onto the simulated Fusion chip for every g_max, seed and inference time, "
            "print accuracy tables (mean +- std over seeds) and write sweep.csv, sweep.json, "
            "sweep.png and table.txt to the output folder. Times take a unit: s, min, h, d, y."
        ),
    )
    p.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default="mlp",
        help="the classifier (default: %(default)s)",
    )
    p.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        default=[32],
        metavar="N",
        help="MLP hidden layer widths (default: 32)",
    )
    p.add_argument(
        "--channels",
        type=positive_int,
        nargs=2,
        default=[8, 16],
        metavar=("C1", "C2"),
        help="CNN channels of the two convolutions (default: 8 16)",
    )
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--g-max",
        type=g_max_arg,
        nargs="+",
        metavar="G",
        help="g_max values in uS, each in [10, 40]",
    )
    grid.add_argument(
        "--g-max-range",
        nargs=3,
        metavar=("LO", "HI", "N"),
        help=f"N g_max values evenly from LO to HI (default: "
        f"{' '.join(f'{v:g}' for v in DEFAULT_G_MAX_RANGE)})",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=DEFAULT_SEEDS,
        metavar="N",
        help=(
            "seeds: per seed a digital and a hardware-aware model are trained (initial weights, "
            "batch order, training noise) and programmed once (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--times",
        type=time_arg,
        nargs="+",
        metavar="T",
        help=f"inference times after programming (default: {' '.join(DEFAULT_TIMES)})",
    )
    p.add_argument(
        "--noise",
        choices=tuple(_NOISE_HELP),
        default="chip",
        help="noise model, for training and programming: "
        + "; ".join(f"{k}: {v}" for k, v in _NOISE_HELP.items())
        + " (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=40,
        metavar="N",
        help="training epochs (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="N",
        help="training batch size (default: %(default)s)",
    )
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        default=1e-2,
        metavar="LR",
        help="Adam step size (default: %(default)s)",
    )
    p.add_argument(
        "--first-seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="seeds S..S+N-1 (N from --seeds) (default: %(default)s)",
    )
    p.add_argument(
        "--train-g-max",
        type=g_max_arg,
        default=10.0,
        metavar="G",
        help="g_max (uS) of the hardware-aware training (default: 10)",
    )
    p.add_argument(
        "--train-time",
        type=time_arg,
        default=86400.0,
        metavar="T",
        help="inference time of the hardware-aware training (default: 1d)",
    )
    p.add_argument(
        "--gradient",
        choices=("exact", "ste"),
        default="exact",
        help="gradient through the programming in hardware-aware training (default: %(default)s)",
    )
    p.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help="output folder (default: %(default)s)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    multi = p.add_argument_group(
        "multi-process runs (a TPU pod slice, a GPU cluster: one process per host)",
        "Start the same command on every host; all processes train the same models and share "
        "the grid points out over all their devices; process 0 prints and writes the files.",
    )
    multi.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, reachable from every process (with --num-processes and "
        "--process-id)",
    )
    multi.add_argument(
        "--num-processes", type=positive_int, metavar="N", help="number of processes in the run"
    )
    multi.add_argument(
        "--process-id", type=non_negative_int, metavar="I", help="this process's index, 0..N-1"
    )
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run that JAX detects itself (Cloud TPU pod slice, Slurm)",
    )
    add_tile_args(p)
    p.set_defaults(run=_run_sweep)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express, reported as usage errors."""
    if args.command == "sweep":
        from fusion_jax.distributed import _check_process_args

        sub = f"{parser.prog} sweep"
        explicit = (args.coordinator, args.num_processes, args.process_id)
        problem = None
        if args.distributed and any(v is not None for v in explicit):
            problem = "--distributed (JAX's own detection) takes no --coordinator, "
            problem += "--num-processes or --process-id"
        else:
            try:
                _check_process_args(*explicit)
            except ValueError as err:
                problem = _as_flags(str(err))
        if problem is not None:
            parser.exit(2, f"{sub}: error: {problem} (see {sub} --help)\n")
    if args.g_max_range is not None:
        try:
            args.g_max_range = _g_max_range_arg(args.g_max_range)
        except argparse.ArgumentTypeError as err:
            sub = f"{parser.prog} sweep"
            parser.exit(2, f"{sub}: error: argument --g-max-range: {err} (see {sub} --help)\n")


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}."
    return " ".join(str(err).split()) or type(err).__name__
