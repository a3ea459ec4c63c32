"""Benchmark: fusion_jax's conversion round trip against a memory-bound pass and the reference.

For each matrix shape (float32, one row per output, ``[..., out, in]``) this
prints

* the jitted round trip ``convert_to_conductances`` then
  ``convert_back_to_weights`` (``rt``), and ``fj.program(w, noise=None)``,
  the fused internal round trip (``program``);
* one jitted elementwise pass over the same array, ``w * 2.0`` (read once,
  write once): the memory-bound floor, and each round trip's ratio to it
  (the goal is at most 3x);
* the reference on the same matrices in the same process: aihwkit's
  ``FusionConductanceConverter`` when aihwkit is installed (torch tensors,
  ``convert_to_conductances`` + ``convert_back_to_weights``), otherwise the
  reference algorithm as aihwkit implements it (a Python loop over rows with
  scikit-learn's ``LinearRegression``), labelled as such; its speed-up over
  fusion_jax, and the largest absolute difference between fusion_jax's
  output and the reference's.

The reference costs about a millisecond per row, so past ``--reference-rows``
rows it is timed on the leading rows (whole matrices of a stack) and scaled
up per row; the table marks those times as extrapolated.

Times are medians of ``--repeats`` calls after ``--warmup`` calls, each call
ended by ``block_until_ready``; the three fusion_jax functions take turns in
rounds of back-to-back calls, so that load from other processes spreads over
all of them. fusion_jax is timed first, the reference afterwards.

Run (the aihwkit extra installed, or any environment with fusion_jax)::

    python benchmarks/roundtrip.py --markdown
    python benchmarks/roundtrip.py --json results.json --markdown results.md
    python benchmarks/roundtrip.py --shapes 512x2048 --no-reference
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SHAPES = ("512x2048", "2048x512", "4096x4096", "64x256x256")
G_MAX = 40.0
GOAL_RATIO = 3.0

AIHWKIT = "aihwkit"
SKLEARN_LOOP = "reference algorithm (sklearn loop), not aihwkit"


# ----------------------------------------------------------------------------- helpers


def parse_shape(text: str) -> tuple[int, ...]:
    """``"64x256x256"`` -> ``(64, 256, 256)``; at least two positive sizes."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use e.g. 512x2048") from None
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: need >= 2 positive sizes")
    return shape


def shape_label(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return f"{shape[0]}x{shape[1]}"
    return f"{math.prod(shape[:-2])} x {shape[-2]}x{shape[-1]}"


def cpu_model() -> str:
    """The CPU model named in /proc/cpuinfo, else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: never a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, rounds: int = 5
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` calls each.

    The calls are made in ``rounds`` rounds; in each, every function runs one
    untimed call and then its share of timed calls back to back. Load from
    other processes spreads over all functions, while each is timed in its
    steady state (caches and allocator warm for it), as in a loop calling it.
    """
    import jax

    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    rounds = max(1, min(rounds, repeats))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(rounds):
        share = repeats // rounds + (index < repeats % rounds)
        for name, fn in fns.items():
            jax.block_until_ready(fn())
            for _ in range(share):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                samples[name].append(time.perf_counter() - start)
    return samples


# ----------------------------------------------------------------------------- reference


class Reference:
    """The reference round trip on a 2-D ``[out, in]`` float32 NumPy matrix."""

    kind: str
    version: str

    def round_trip(self, w: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class AihwkitReference(Reference):
    """aihwkit's FusionConductanceConverter, called as a user would."""

    kind = AIHWKIT

    def __init__(self) -> None:
        import aihwkit
        import torch
        from aihwkit.inference.converter.fusion import FusionConductanceConverter

        self._torch = torch
        self._converter = FusionConductanceConverter(g_max=int(G_MAX))
        self.version = f"aihwkit {aihwkit.__version__}, torch {torch.__version__}"

    def round_trip(self, w: np.ndarray) -> np.ndarray:
        weights = self._torch.from_numpy(np.ascontiguousarray(w))
        conductances, params = self._converter.convert_to_conductances(weights)
        return self._converter.convert_back_to_weights(conductances, params).numpy()


class SklearnLoopReference(Reference):
    """aihwkit's algorithm in NumPy, one scikit-learn fit per row, without aihwkit."""

    kind = SKLEARN_LOOP

    def __init__(self) -> None:
        import sklearn
        from sklearn.linear_model import LinearRegression

        self._regression = LinearRegression
        self.version = f"scikit-learn {sklearn.__version__}"

    def round_trip(self, w: np.ndarray) -> np.ndarray:
        scale = np.float32(G_MAX) / np.maximum(np.abs(w).max(axis=1), np.float32(1e-10))
        conductances = np.clip(np.abs(w * scale[:, None]), 0.0, G_MAX)
        x = conductances * np.sign(w)
        out = np.empty_like(x)
        for row in range(w.shape[0]):
            fit = self._regression().fit(x[row].reshape(-1, 1), w[row].reshape(-1, 1))
            out[row] = x[row] * fit.coef_[0][0]
        return out


def load_reference(wanted: str) -> tuple[Reference | None, str]:
    """The reference to time and a note on why it is that one."""
    if wanted == "none":
        return None, "reference not timed (--reference none)"
    if wanted in ("auto", "aihwkit"):
        try:
            return AihwkitReference(), "aihwkit imported"
        except Exception as error:  # ImportError, or a broken binary extension
            reason = f"aihwkit not usable: {type(error).__name__}: {error}"
            if wanted == "aihwkit":
                raise SystemExit(reason) from error
    else:
        reason = "--reference sklearn"
    try:
        return SklearnLoopReference(), reason
    except ImportError as error:
        return None, f"{reason}; scikit-learn not installed either ({error})"


def reference_subset(w: np.ndarray, max_rows: int) -> tuple[list[np.ndarray], int, int]:
    """The matrices the reference is timed on: ``(matrices, rows timed, rows in all)``.

    A 2-D matrix is cut to its leading ``max_rows`` rows; a stack keeps whole
    leading matrices, at least one.
    """
    rows_total = math.prod(w.shape[:-1])
    matrices = w.reshape(-1, *w.shape[-2:])
    if rows_total <= max_rows:
        return list(matrices), rows_total, rows_total
    if w.ndim == 2:
        return [w[:max_rows]], max_rows, rows_total
    count = max(1, max_rows // w.shape[-2])
    return list(matrices[:count]), count * w.shape[-2], rows_total


# ----------------------------------------------------------------------------- the benchmark


@dataclasses.dataclass
class Result:
    """One matrix shape's figures (times in milliseconds)."""

    shape: list[int]
    elements: int
    elementwise_ms: float
    round_trip_ms: float
    program_ms: float
    round_trip_ratio: float
    program_ratio: float
    elementwise_min_ms: float
    round_trip_min_ms: float
    program_min_ms: float
    reference_ms: float | None = None
    reference_rows_timed: int | None = None
    reference_rows_total: int | None = None
    reference_extrapolated: bool | None = None
    speedup_round_trip: float | None = None
    speedup_program: float | None = None
    max_abs_diff_round_trip: float | None = None
    max_abs_diff_program: float | None = None
    max_abs_weight: float | None = None


@dataclasses.dataclass
class Case:
    """One matrix and fusion_jax's outputs on it, kept for the reference phase."""

    weights: np.ndarray
    round_trip: np.ndarray
    program: np.ndarray
    result: Result


def bench_fusion_jax(shape: tuple[int, ...], *, seed: int, warmup: int, repeats: int) -> Case:
    """Time fusion_jax's two round trips and the elementwise pass on one matrix."""
    import jax
    import jax.numpy as jnp

    import fusion_jax as fj

    w_np = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    w = jnp.asarray(w_np)

    round_trip = jax.jit(lambda w: fj.convert_back_to_weights(*fj.convert_to_conductances(w)))
    program = jax.jit(lambda w: fj.program(w, noise=None))
    elementwise = jax.jit(lambda w: w * 2.0)

    samples = time_interleaved(
        {
            "elementwise": lambda: elementwise(w),
            "round_trip": lambda: round_trip(w),
            "program": lambda: program(w),
        },
        warmup,
        repeats,
    )
    t_el = median_ms(samples["elementwise"])
    t_rt = median_ms(samples["round_trip"])
    t_pr = median_ms(samples["program"])
    result = Result(
        shape=list(shape),
        elements=int(w.size),
        elementwise_ms=t_el,
        round_trip_ms=t_rt,
        program_ms=t_pr,
        round_trip_ratio=t_rt / t_el,
        program_ratio=t_pr / t_el,
        elementwise_min_ms=min(samples["elementwise"]) * 1e3,
        round_trip_min_ms=min(samples["round_trip"]) * 1e3,
        program_min_ms=min(samples["program"]) * 1e3,
        max_abs_weight=float(np.abs(w_np).max()),
    )
    return Case(w_np, np.asarray(round_trip(w)), np.asarray(program(w)), result)


def bench_reference(case: Case, reference: Reference, *, max_rows: int, repeats: int) -> None:
    """Time the reference on (the leading rows of) a case and compare outputs; fills ``result``."""
    n = case.weights.shape[-1]
    matrices, rows_timed, rows_total = reference_subset(case.weights, max_rows)
    outputs: list[np.ndarray] = []
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [reference.round_trip(m) for m in matrices]
        times.append(time.perf_counter() - start)
    t_ref = median_ms(times) * rows_total / rows_timed

    ref_out = np.concatenate([o.reshape(-1, n) for o in outputs])
    result = case.result
    result.reference_ms = t_ref
    result.reference_rows_timed = rows_timed
    result.reference_rows_total = rows_total
    result.reference_extrapolated = rows_timed < rows_total
    result.speedup_round_trip = t_ref / result.round_trip_ms
    result.speedup_program = t_ref / result.program_ms
    rt = case.round_trip.reshape(-1, n)[:rows_timed]
    pr = case.program.reshape(-1, n)[:rows_timed]
    result.max_abs_diff_round_trip = float(np.abs(rt - ref_out).max())
    result.max_abs_diff_program = float(np.abs(pr - ref_out).max())


def machine_info(reference: Reference | None, reference_note: str) -> dict[str, Any]:
    import jax
    import jaxlib

    import fusion_jax as fj

    device = jax.devices()[0]
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "fusion_jax": getattr(fj, "__version__", None) or _distribution_version("fusion-jax"),
        "reference": reference.kind if reference else None,
        "reference_version": reference.version if reference else None,
        "reference_note": reference_note,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(results: list[Result], machine: dict[str, Any]) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; jax {machine['jax']} "
        f"({machine['backend']}, {machine['device']}); float32; "
        f"1-min load average {_fmt(machine['load_average_1min'], '.1f')} at the end; "
        f"reference: {machine['reference'] or 'none'}"
        + (f" ({machine['reference_version']})" if machine["reference_version"] else "")
        + ".",
        "",
        "| shape | elements | elementwise (ms) | round trip (ms) | rt / elem | "
        "program (ms) | program / elem | reference (ms) | speed-up rt | "
        "max abs diff rt | max abs diff program |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for r in results:
        ref = _fmt(r.reference_ms, ".0f")
        if r.reference_extrapolated:
            ref += " *"
            notes.append(
                f"{shape_label(tuple(r.shape))}: reference timed on {r.reference_rows_timed} "
                f"of {r.reference_rows_total} rows, scaled per row."
            )
        lines.append(
            f"| {shape_label(tuple(r.shape))} | {r.elements:,} | {r.elementwise_ms:.3f} | "
            f"{r.round_trip_ms:.3f} | {r.round_trip_ratio:.1f}x | {r.program_ms:.3f} | "
            f"{r.program_ratio:.1f}x | {ref} | {_fmt(r.speedup_round_trip, ',.0f')}"
            f"{'x' if r.speedup_round_trip else ''} | {_fmt(r.max_abs_diff_round_trip, '.1e')} | "
            f"{_fmt(r.max_abs_diff_program, '.1e')} |"
        )
    lines.append("")
    lines.append(
        f"Times are medians after warm-up; the goal is a round trip at most {GOAL_RATIO:g}x "
        "the elementwise pass (`w * 2.0`, jitted). Differences are on the rows the reference "
        "ran; weights are standard normal."
    )
    lines.extend(f"\\* {note}" for note in notes)
    return "\n".join(lines) + "\n"


def text_table(results: list[Result], machine: dict[str, Any]) -> str:
    header = (
        f"{'shape':>14} {'elem ms':>9} {'rt ms':>9} {'rt/el':>6} {'prog ms':>9} "
        f"{'prog/el':>7} {'ref ms':>10} {'speedup':>8} {'diff rt':>8} {'diff prog':>9}"
    )
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores, jax {machine['jax']} "
        f"on {machine['backend']} ({machine['device']})",
        f"reference: {machine['reference'] or 'none'}"
        + (f" [{machine['reference_version']}]" if machine["reference_version"] else "")
        + f"; {machine['reference_note']}",
        header,
    ]
    for r in results:
        ref = _fmt(r.reference_ms, ".0f") + ("*" if r.reference_extrapolated else " ")
        lines.append(
            f"{shape_label(tuple(r.shape)):>14} {r.elementwise_ms:9.3f} {r.round_trip_ms:9.3f} "
            f"{r.round_trip_ratio:5.1f}x {r.program_ms:9.3f} {r.program_ratio:6.1f}x "
            f"{ref:>10} {_fmt(r.speedup_round_trip, '7.0f') + 'x':>8} "
            f"{_fmt(r.max_abs_diff_round_trip, '8.1e')} {_fmt(r.max_abs_diff_program, '9.1e')}"
        )
    if any(r.reference_extrapolated for r in results):
        lines.append("* reference timed on the leading rows (whole matrices of a stack), per row")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[parse_shape(s) for s in DEFAULT_SHAPES],
        help="matrix shapes [..., out, in], e.g. 512x2048 64x256x256 (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per function")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument(
        "--reference",
        choices=("auto", "aihwkit", "sklearn", "none"),
        default="auto",
        help="auto: aihwkit if importable, else the sklearn loop (default)",
    )
    parser.add_argument(
        "--reference-rows",
        type=int,
        default=1024,
        help="time the reference on at most this many rows and scale per row",
    )
    parser.add_argument(
        "--reference-repeats", type=int, default=3, help="timed reference runs (median)"
    )
    parser.add_argument("--platform", default="cpu", help="JAX platform (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="PATH",
        help="print the table as markdown (or write it to PATH)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1 or args.reference_rows < 1:
        parser.error("--repeats, --warmup and --reference-rows must be positive")

    os.environ.setdefault("JAX_PLATFORMS", args.platform)
    import jax

    jax.config.update("jax_platforms", args.platform)

    # fusion_jax first, the reference (torch, scikit-learn) only afterwards, so
    # that their thread pools cannot disturb the JAX timings.
    cases = []
    for index, shape in enumerate(args.shapes):
        print(f"timing fusion_jax on {shape_label(shape)} ...", file=sys.stderr, flush=True)
        big = math.prod(shape) > 8_000_000
        repeats = max(5, args.repeats // 5) if big else args.repeats
        cases.append(
            bench_fusion_jax(shape, seed=args.seed + index, warmup=args.warmup, repeats=repeats)
        )
    reference, note = load_reference(args.reference)
    if reference is not None:
        for case in cases:
            label = shape_label(tuple(case.weights.shape))
            print(f"timing the reference on {label} ...", file=sys.stderr, flush=True)
            bench_reference(
                case, reference, max_rows=args.reference_rows, repeats=args.reference_repeats
            )
    machine = machine_info(reference, note)
    results = [case.result for case in cases]

    print(text_table(results, machine))
    settings = {
        "repeats": args.repeats,
        "warmup": args.warmup,
        "reference_rows": args.reference_rows,
        "reference_repeats": args.reference_repeats,
        "seed": args.seed,
        "g_max": G_MAX,
        "goal_ratio": GOAL_RATIO,
    }
    if args.json:
        payload = {
            "machine": machine,
            "settings": settings,
            "results": [dataclasses.asdict(r) for r in results],
        }
        write_atomically(args.json, json.dumps(payload, indent=2) + "\n")
    if args.markdown:
        table = markdown_table(results, machine)
        if args.markdown == "-":
            print()
            print(table, end="")
        else:
            write_atomically(Path(args.markdown), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
