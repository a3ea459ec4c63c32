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
import csv
import dataclasses
import io
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fusion_jax import _validation
from fusion_jax._atomic import atomic_open, atomic_write_files
from fusion_jax.units import format_time, parse_time

__all__ = ["build_parser", "main", "parse_time"]

PROG = "fusion-jax"

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

# Errors that are the user's doing (a file, a value, an option); anything else is a bug.
_USER_ERRORS = (ValueError, OSError, zipfile.BadZipFile, EOFError, FloatingPointError)


class _UserError(ValueError):
    """A problem with the command's inputs, reported as one line."""


# --- small parsers -------------------------------------------------------------------------


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _g_max_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid g_max {text!r}: not a number.") from None
    try:
        _validation.check_g_max(value)  # the one check of g_max, with the reference's message
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid g_max {text!r}: {err}") from None
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: not an integer.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be at least 1.")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: not an integer.") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: must be non-negative.")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not a number.") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a positive number.")
    return value


# --- files ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Weights:
    """Layers read from a weights ``.npz`` and the header metadata it carries, if any."""

    layers: dict[str, np.ndarray]
    ids: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    named: bool  # the shipped layout: layer_names and layer_<name> arrays


_META = ("layer_names", "layer_ids", "layer_classes")


def _load_weights(path: str) -> _Weights:
    """Read layer matrices ``[out, in]`` from an ``.npz`` archive.

    Two layouts: every array is a layer named by its key; or the shipped
    layout, with ``layer_names`` (and optionally ``layer_ids``,
    ``layer_classes``) and one ``layer_<name>`` array per name.
    """
    if not os.path.exists(path):
        raise _UserError(f"{path}: no such file.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise _UserError(f"{path}: not a NumPy .npz archive (np.savez) of layer arrays.") from None
    if not isinstance(loaded, Mapping):  # a .npy file gives an array, not an archive
        raise _UserError(f"{path}: a single .npy array, expected an .npz archive of layers.")
    with loaded as archive:
        arrays = {key: archive[key] for key in archive.files}
    if not arrays:
        raise _UserError(f"{path}: the archive holds no arrays.")

    ids = classes = None
    if "layer_names" in arrays:
        names = [str(n) for n in np.atleast_1d(arrays["layer_names"])]
        layers = {}
        for name in names:
            if f"layer_{name}" not in arrays:
                raise _UserError(
                    f"{path}: layer_names lists {name!r} but there is no array 'layer_{name}'."
                )
            layers[name] = arrays[f"layer_{name}"]
        unused = sorted(set(arrays) - set(_META) - {f"layer_{n}" for n in names})
        if unused:
            raise _UserError(
                f"{path}: array(s) {unused} are neither metadata nor listed in layer_names."
            )
        if "layer_ids" in arrays:
            raw_ids = np.atleast_1d(arrays["layer_ids"])
            if raw_ids.dtype.kind not in "iu" or raw_ids.shape != (len(names),):
                raise _UserError(
                    f"{path}: layer_ids must hold {len(names)} integers, one per "
                    f"layer, got {raw_ids.tolist()}."
                )
            ids = tuple(int(i) for i in raw_ids)
        if "layer_classes" in arrays:
            raw = np.atleast_1d(arrays["layer_classes"])
            if raw.dtype.kind != "U" or raw.shape != (len(names),):
                raise _UserError(
                    f"{path}: layer_classes must hold {len(names)} strings, one per layer."
                )
            classes = tuple(str(c) for c in raw)
    else:
        stray = [key for key in _META if key in arrays]
        if stray:
            raise _UserError(f"{path}: has {stray} but no layer_names.")
        layers = dict(arrays)

    for name, weights in layers.items():
        if weights.dtype.kind not in "fiu" or weights.ndim < 2 or weights.size == 0:
            raise _UserError(
                f"{path}: layer {name!r} must be a non-empty numeric array [out, in] (or a "
                f"conv's [out, in, *spatial]), got shape {weights.shape} dtype {weights.dtype}."
            )
    return _Weights(layers, ids, classes, named="layer_names" in arrays)


def _weights_payload(weights: _Weights, layers: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Arrays to save so that :func:`_load_weights` reads ``layers`` in ``weights``' layout."""
    if not weights.named:
        return dict(layers)
    payload: dict[str, Any] = {f"layer_{n}": w for n, w in layers.items()}
    payload["layer_names"] = np.array(list(layers))
    if weights.ids is not None:
        payload["layer_ids"] = np.array(weights.ids, dtype=np.int64)
    if weights.classes is not None:
        payload["layer_classes"] = np.array(weights.classes)
    return payload


def _check_output_file(path: str, what: str, inputs: Sequence[str] = ()) -> None:
    """Fail early (before any work) if ``path`` cannot be an output file or is an input."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise _UserError(f"{what} {path}: is a folder, expected a file name.")
    if not os.path.isdir(directory):
        raise _UserError(f"{what} {path}: the folder {directory} does not exist.")
    for source in inputs:
        if os.path.realpath(source) == os.path.realpath(path):
            raise _UserError(f"{what} {path}: is also an input file; choose another name.")


def _write_files(folder: Path, files: Mapping[str, bytes]) -> None:
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


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(_json_ready(payload), indent=1, allow_nan=False) + "\n").encode()


# --- sweep ---------------------------------------------------------------------------------


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
    lo, hi = (_g_max_arg(v) for v in values[:2])
    n = _positive_int(values[2])
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
        raise _UserError(f"{flag}: {_as_flags(str(err))}") from None
    print(fj.distributed.process_summary(), flush=True)
    if fj.distributed.is_main_process():
        return print
    args.progress = False
    return lambda *_args, **_kwargs: None


def _run_sweep(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _UserError(f"--out {out}: exists and is not a folder.")
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
        raise _UserError(
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
        "sweep.json": _json_bytes(payload),
        "sweep.png": png.getvalue(),
        "table.txt": table.encode(),
    }
    _write_files(out, files)
    print(f"\nwrote {', '.join(files)} to {out}{os.sep}")
    return 0


# --- export / import / calibrate -----------------------------------------------------------


def _run_export(args: argparse.Namespace) -> int:
    import fusion_jax as fj

    _check_output_file(args.out, "OUT", [args.weights])
    weights = _load_weights(args.weights)
    _, exported = fj.fusion_export(
        weights.layers,
        args.out,
        args.g_max,
        ids=weights.ids,
        classes=weights.classes,
        max_input_size=args.max_input_size,
        max_output_size=args.max_output_size,
    )
    shapes = ", ".join(f"{n} {_shape_text(w.shape)}" for n, w in weights.layers.items())
    devices = sum(w.size for w in weights.layers.values())
    print(
        f"wrote {args.out}: {len(exported)} layers ({shapes}), {devices} devices, "
        f"g_max {exported.g_max:g} uS"
    )
    return 0


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _tile_size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid tile size {text!r}: not an integer.") from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid tile size {text!r}: must be non-negative (0: no split)."
        )
    return value


def _add_tile_args(p: argparse.ArgumentParser) -> None:
    """--max-input-size / --max-output-size: the chip's tiles (aihwkit's mapping names)."""
    for side, what in (("input", "inputs"), ("output", "outputs")):
        p.add_argument(
            f"--max-{side}-size",
            type=_tile_size_arg,
            default=512,
            metavar="N",
            help=f"most {what} per chip tile, as aihwkit's mapping; 0: no split "
            "(default: %(default)s, the Composer's)",
        )


def _run_import(args: argparse.Namespace) -> int:
    import fusion_jax as fj
    from fusion_jax.chip_file import read_chip_file

    _check_output_file(args.out, "OUT", [args.readback, args.weights])
    weights = _load_weights(args.weights)
    if weights.ids is not None or weights.classes is not None:
        chip = read_chip_file(args.readback)
        for i, name in enumerate(weights.layers):
            if name not in chip.names:
                continue  # fusion_import names missing layers
            j = chip.names.index(name)
            for field, what, ours in (
                ("ids", "id", weights.ids),
                ("classes", "class", weights.classes),
            ):
                if ours is not None and getattr(chip, field)[j] != ours[i]:
                    raise _UserError(
                        f"{args.readback}: layer {name!r} has {what} "
                        f"{getattr(chip, field)[j]!r} but {args.weights} has {ours[i]!r}: "
                        "the files do not belong together."
                    )
    params = {name: fj.FusionParams(w) for name, w in weights.layers.items()}
    reconstructed = fj.fusion_import(
        args.readback,
        weights.layers,
        params,
        strict_aihwkit=args.strict_aihwkit,
        max_input_size=args.max_input_size,
        max_output_size=args.max_output_size,
    )
    result = {name: np.asarray(w) for name, w in reconstructed.items()}
    for name, w in result.items():
        if not np.all(np.isfinite(w)):
            raise _UserError(f"layer {name!r}: the reconstruction is not finite.")

    lines = [f"{'layer':<8} {'shape':>10} {'rel. error':>11} {'max |error|':>12}"]
    total_err = total_ref = 0.0
    for name, w in result.items():
        ref = weights.layers[name].astype(np.float64)
        diff = w.astype(np.float64) - ref
        total_err += float(np.sum(diff**2))
        total_ref += float(np.sum(ref**2))
        rel = math.sqrt(float(np.sum(diff**2)) / max(float(np.sum(ref**2)), 1e-300))
        shape = _shape_text(w.shape)
        lines.append(f"{name:<8} {shape:>10} {rel:>11.4g} {np.abs(diff).max():>12.4g}")
    lines.append(f"{'all':<8} {'':>10} {math.sqrt(total_err / max(total_ref, 1e-300)):>11.4g}")
    with atomic_open(args.out, binary=True) as fh:
        np.savez(fh, **_weights_payload(weights, result))
    mode = "strict aihwkit" if args.strict_aihwkit else "default"
    print(f"weights reconstructed from {args.readback} against {args.weights} ({mode} mode);")
    print("relative error = ||w_imported - w|| / ||w|| per layer (Frobenius norms)")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


def _matching_conductances(targets_path: str, readback_path: str) -> tuple[np.ndarray, ...]:
    from fusion_jax.chip_file import read_chip_file

    targets, readback = read_chip_file(targets_path), read_chip_file(readback_path)
    if set(targets.names) != set(readback.names):
        raise _UserError(
            f"{targets_path} holds layers {list(targets.names)} but {readback_path} holds "
            f"{list(readback.names)}: the files do not belong together."
        )
    for name in targets.names:
        a, b = targets.layers[name].shape, readback.layers[name].shape
        if a != b:
            raise _UserError(
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
        _check_output_file(args.json, "--json", [args.targets, args.readback])
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
            fh.write(_json_bytes(payload))
        print(f"wrote {args.json}")
    return 0


# --- the parser ----------------------------------------------------------------------------


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
        type=_positive_int,
        nargs="+",
        default=[32],
        metavar="N",
        help="MLP hidden layer widths (default: 32)",
    )
    p.add_argument(
        "--channels",
        type=_positive_int,
        nargs=2,
        default=[8, 16],
        metavar=("C1", "C2"),
        help="CNN channels of the two convolutions (default: 8 16)",
    )
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--g-max",
        type=_g_max_arg,
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
        type=_positive_int,
        default=DEFAULT_SEEDS,
        metavar="N",
        help=(
            "seeds: per seed a digital and a hardware-aware model are trained (initial weights, "
            "batch order, training noise) and programmed once (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--times",
        type=_time_arg,
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
        type=_positive_int,
        default=40,
        metavar="N",
        help="training epochs (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="training batch size (default: %(default)s)",
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=1e-2,
        metavar="LR",
        help="Adam step size (default: %(default)s)",
    )
    p.add_argument(
        "--first-seed",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="seeds S..S+N-1 (N from --seeds) (default: %(default)s)",
    )
    p.add_argument(
        "--train-g-max",
        type=_g_max_arg,
        default=10.0,
        metavar="G",
        help="g_max (uS) of the hardware-aware training (default: 10)",
    )
    p.add_argument(
        "--train-time",
        type=_time_arg,
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
        "--num-processes", type=_positive_int, metavar="N", help="number of processes in the run"
    )
    multi.add_argument(
        "--process-id", type=_non_negative_int, metavar="I", help="this process's index, 0..N-1"
    )
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run that JAX detects itself (Cloud TPU pod slice, Slurm)",
    )
    p.set_defaults(run=_run_sweep)

    p = sub.add_parser(
        "export",
        help="weights .npz -> the chip's upload file (target conductances)",
        description=(
            "Convert weights to target conductances and write the Fusion chip's upload CSV. "
            "WEIGHTS is an .npz archive: either one [out, in] array per layer (named by its "
            "key), or the shipped layout with layer_names, layer_ids, layer_classes and one "
            "layer_<name> array per layer; a conv may be [out, in, *spatial] (PyTorch's "
            "layout), split into chip tiles on channel boundaries. Layers with more than "
            "--max-input-size inputs are converted and written tile by tile, as aihwkit does. "
            "Keep WEIGHTS: 'fusion-jax import' needs it."
        ),
    )
    p.add_argument("weights", metavar="WEIGHTS.npz", help="layer weights, [out, in] each")
    p.add_argument("out", metavar="OUT.csv", help="the chip file to write")
    p.add_argument(
        "--g-max",
        type=_g_max_arg,
        default=40.0,
        metavar="G",
        help="largest conductance in uS (default: 40)",
    )
    _add_tile_args(p)
    p.set_defaults(run=_run_export)

    p = sub.add_parser(
        "import",
        help="chip read-back + original weights -> reconstructed weights .npz",
        description=(
            "Reconstruct weights from a chip read-back file: per output row, the least-squares "
            "gain of the signed read-back conductances against the original weights (which "
            "compensates drift), tile by tile with the tile sizes the file was exported with. "
            "Writes OUT.npz in the layout of WEIGHTS and prints each layer's relative error."
        ),
    )
    p.add_argument("readback", metavar="READBACK.csv", help="conductances read back from the chip")
    p.add_argument("weights", metavar="WEIGHTS.npz", help="the weights that were exported")
    p.add_argument("out", metavar="OUT.npz", help="the reconstructed weights to write")
    p.add_argument(
        "--strict-aihwkit",
        action="store_true",
        help="zero constant rows as aihwkit does (default: keep them)",
    )
    _add_tile_args(p)
    p.set_defaults(run=_run_import)

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
        type=_time_arg,
        default=3600.0,
        metavar="T",
        help="time after programming that the read-back describes (default: 1h)",
    )
    p.add_argument(
        "--fit-bins",
        type=_positive_int,
        default=64,
        metavar="N",
        help="equal-count target bins of the fit, at least 8 (default: %(default)s)",
    )
    p.add_argument(
        "--table-bins",
        type=_positive_int,
        default=10,
        metavar="N",
        help="target bins of the validation table (default: %(default)s)",
    )
    p.add_argument(
        "--g-max",
        type=_g_max_arg,
        default=40.0,
        metavar="G",
        help="g_max (uS) the targets were converted with (default: 40)",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="seed of the model's samples in the table (default: %(default)s)",
    )
    p.set_defaults(run=_run_calibrate)

    p = sub.add_parser(
        "data",
        help="print the path of the real-chip data shipped with the package",
        description=(
            "Print the folder of the shipped LeNet5 read-back (weights.npz, target_g40.csv, "
            "programmed.csv), or the path of one of its files, so that the other subcommands "
            'work from anywhere: fusion-jax export "$(fusion-jax data weights.npz)" target.csv'
        ),
    )
    p.add_argument(
        "file", nargs="?", default=None, help="one file of the data (default: the folder)"
    )
    p.set_defaults(run=_run_data)
    return parser


def _version() -> str:
    from fusion_jax import __version__

    return __version__


def _run_data(args: argparse.Namespace) -> int:
    from fusion_jax.datasets import lenet5_path

    # lenet5_path checks the name (a ValueError, reported as one line).
    print(lenet5_path("weights.npz").parent if args.file is None else lenet5_path(args.file))
    return 0


def _finish_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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
    if args.command == "sweep" and args.g_max_range is not None:
        try:
            args.g_max_range = _g_max_range_arg(args.g_max_range)
        except argparse.ArgumentTypeError as err:
            sub = f"{parser.prog} sweep"
            parser.exit(2, f"{sub}: error: argument --g-max-range: {err} (see {sub} --help)\n")


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
    except _USER_ERRORS as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
