"""Benchmark: time per grid point of ``fj.sweep`` against a Python loop of single calls.

Both sides evaluate the same MLP on scikit-learn's digits test set, programmed
with the calibrated chip noise at every (g_max, seed, t_inference) point. The
loop calls one jitted function per point (compiled once, so the difference is
dispatch and the lost batching, not compilation); ``fj.sweep`` evaluates the
grid with ``jax.vmap`` in chunks inside one ``jax.jit``. Medians of repeated
runs after a warm-up run.

Run: ``python benchmarks/sweep_points.py [--g-max-points 16] [--seeds 8] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fusion_jax as fj
from fusion_jax.digits import MLP, load_digits_split
from fusion_jax.training import to_apply_fn

TIMES = (1.0, 3600.0, 86400.0, 3.15e7)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: compiles
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--g-max-points", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()

    data = load_digits_split()
    apply_fn, params = to_apply_fn(MLP(rngs=nnx.Rngs(params=0)))
    x, y = data.x_test, data.y_test
    g_max = np.linspace(10.0, 40.0, args.g_max_points)
    n_points = g_max.size * args.seeds * len(TIMES)
    noise = fj.noise.FusionChipNoise.lenet5_readback()

    def run_sweep():
        return fj.sweep(
            apply_fn, params, (x, y), g_max=g_max, seeds=args.seeds, t_inference=TIMES
        ).accuracy

    @jax.jit
    def one_point(g, seed, t):
        programmed = fj.program_params(
            params, jax.random.key(seed), g_max=g, noise=noise, t_inference=t
        )
        return jnp.mean(jnp.argmax(apply_fn(programmed, x), -1) == y)

    def run_loop():
        out = [
            one_point(jnp.float32(g), jnp.uint32(s), jnp.float32(t))
            for g in g_max
            for s in range(args.seeds)
            for t in TIMES
        ]
        return np.asarray(jax.block_until_ready(out))

    agree = np.allclose(np.asarray(run_sweep()).ravel(), run_loop(), atol=1.5 / len(y))
    t_sweep = _median_time(run_sweep, args.repeats) / n_points
    t_loop = _median_time(run_loop, args.repeats) / n_points
    result = {
        "points": n_points,
        "sweep_ms_per_point": 1e3 * t_sweep,
        "loop_ms_per_point": 1e3 * t_loop,
        "speed_up": t_loop / t_sweep,
        "results_agree": bool(agree),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": len(jax.devices()),
        },
    }
    print(
        f"grid: {args.g_max_points} g_max x {args.seeds} seeds x {len(TIMES)} times "
        f"= {n_points} points, MLP 64-16-10 on {len(y)} digits, chip noise"
    )
    print(f"{'':24}{'ms per point':>14}")
    print(f"{'fj.sweep (one jit)':24}{1e3 * t_sweep:14.3f}")
    print(f"{'Python loop of calls':24}{1e3 * t_loop:14.3f}")
    print(f"speed-up: {t_loop / t_sweep:.1f}x; results agree: {agree}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
