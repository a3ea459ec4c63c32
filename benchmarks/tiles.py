"""Benchmark: the cost of chip tiles in ``fj.program_kernel``.

A 784x256 Dense kernel has 784 inputs, so the Composer's mapping
(``max_input_size = 512``) puts it on two tiles of 392 inputs, each tile row
scaled and regressed on its own. This times, on the same kernel and in the
same process,

* **tiled**: ``fj.program_kernel(kernel, key)`` with the default tile sizes;
* **untiled**: the same with ``max_input_size=0`` (one tile, the whole row);

each jitted, for three workloads: the noise-free round trip
(``noise=None``), the default chip noise model, and the gradient of a loss
through the default noise model (``gradient="exact"``, as in hardware-aware
training). It prints the median times and the ratio tiled / untiled per
workload (the goal is at most 1.1x), and the ratio of the fastest calls
(least disturbed by other processes).

The two variants take turns in rounds of back-to-back calls, so that load
from other processes spreads over both; each time is the median over
``--repeats`` calls (after warm-up), and the ratio is the median of the
per-round ratios.

Run::

    python benchmarks/tiles.py
    python benchmarks/tiles.py --shape 784x256 --repeats 200 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import fusion_jax as fj

GOAL = 1.1


def _timer(fn: Callable[[], jax.Array], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (each ended by ``block_until_ready``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def workloads(kernel: jax.Array, key: jax.Array) -> dict[str, dict[str, Callable[[], jax.Array]]]:
    """Workload name -> {"tiled": call, "untiled": call}."""

    def make(max_input_size: int, mode: str) -> Callable[[], jax.Array]:
        if mode == "noise-free":
            fn = jax.jit(lambda k: fj.program_kernel(k, noise=None, max_input_size=max_input_size))
            return lambda: fn(kernel)
        if mode == "chip noise":
            fn = jax.jit(lambda k, r: fj.program_kernel(k, r, max_input_size=max_input_size))
            return lambda: fn(kernel, key)

        def loss(k: jax.Array, r: jax.Array) -> jax.Array:
            return jnp.sum(fj.program_kernel(k, r, max_input_size=max_input_size) ** 2)

        grad = jax.jit(jax.grad(loss))
        return lambda: grad(kernel, key)

    return {
        mode: {"tiled": make(512, mode), "untiled": make(0, mode)}
        for mode in ("noise-free", "chip noise", "gradient, chip noise")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="784x256", help="kernel [in]x[out] (default 784x256)")
    parser.add_argument("--repeats", type=int, default=100, help="calls per timing (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args(argv)
    n_in, n_out = (int(v) for v in args.shape.split("x"))
    kernel = jax.random.normal(jax.random.key(0), (n_in, n_out), jnp.float32) * 0.05
    key = jax.random.key(1)
    print(
        f"kernel {n_in}x{n_out} float32, tiles of inputs "
        f"{fj.tiles.split_sizes(n_in, 512)} vs {(n_in,)}; backend {jax.default_backend()}, "
        f"jax {jax.__version__}"
    )
    print()
    print("| workload | untiled (ms) | tiled (ms) | tiled / untiled | ratio of fastest calls |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, calls in workloads(kernel, key).items():
        for call in calls.values():  # compile and warm up
            for _ in range(5):
                jax.block_until_ready(call())
        tiled: list[float] = []
        untiled: list[float] = []
        ratios = []
        for _ in range(args.rounds):
            u = _timer(calls["untiled"], args.repeats)
            t = _timer(calls["tiled"], args.repeats)
            untiled += u
            tiled += t
            ratios.append(statistics.median(t) / statistics.median(u))
        ratio = statistics.median(ratios)
        print(
            f"| {mode} | {1e3 * statistics.median(untiled):.3f} | "
            f"{1e3 * statistics.median(tiled):.3f} | {ratio:.2f}x | "
            f"{min(tiled) / min(untiled):.2f}x |"
        )
    print()
    print(f"goal: tiled / untiled <= {GOAL}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
