"""Benchmark: the A/B test of ``fusion_jax._fusion.materialize`` in the regression.

``materialize`` computes the regression's per-row scales and shifts once
(in a branch of a ``lax.cond``) instead of letting XLA recompute them in
every fusion that reads them. This script builds every function twice, with
``materialize`` as it is (A) and replaced by the identity (B), and times
both in the same process, in turns:

* ``fj.program(w, noise=None)`` and ``fj.regression_slope`` on 512x2048 and
  on a stack of 64 matrices of 256x256;
* ``jax.grad`` of ``sum(program(w, noise=None) ** 2)`` on 512x2048;
* the training step of ``benchmarks/train_step.py`` (MLP 784-256-256-10,
  batch 256, chip noise), noise-free and with noise.

The random words' own ``materialize_fn`` (the unrolled threefry, computed
once) is not switched: ``benchmarks/train_step.py --breakdown`` times it
against ``jax.random.bits``.

Usage::

    python benchmarks/materialize_ab.py [--repeats 30]

Prints the median times and B / A: above 1 means materialize wins. This is a
script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextlib.contextmanager
def _variant(on: bool) -> Iterator[None]:
    """Trace with materialize as is (on) or as the identity (off)."""
    import jax

    from fusion_jax import regression

    real = regression.materialize
    jax.clear_caches()  # inline jits cache their traces: trace afresh
    if not on:
        regression.materialize = lambda tree: tree
    try:
        yield
    finally:
        regression.materialize = real


def _cases(repeats: int) -> dict[str, Callable[[], Any]]:
    """One closure per case, compiled under the current variant."""
    import jax
    import jax.numpy as jnp
    from train_step import WIDTHS, _mlp, _train_step

    import fusion_jax as fj

    rng = jax.random.key(0)
    w = jax.random.normal(rng, (512, 2048))
    stack = jax.random.normal(rng, (64, 256, 256))
    x = jax.random.uniform(jax.random.key(1), (256, WIDTHS[0]))
    y = jax.random.randint(jax.random.key(2), (256,), 0, WIDTHS[-1])
    program = jax.jit(lambda w: fj.program(w, noise=None))
    slope = jax.jit(lambda w: fj.regression_slope(w * 1.5, w))
    grad = jax.jit(jax.grad(lambda w: jnp.sum(fj.program(w, noise=None) ** 2)))
    cases = {
        "program 512x2048": lambda: program(w),
        "program 64x256x256": lambda: program(stack),
        "regression_slope 512x2048": lambda: slope(w),
        "grad program 512x2048": lambda: grad(w),
        "train step, noise-free": _train_step(_mlp({"noise": None}), x, y),
        "train step, chip noise": _train_step(_mlp({}), x, y),
    }
    for fn in cases.values():  # compile now, under this variant
        jax.block_until_ready(fn())
    return cases


def main(argv: list[str] | None = None) -> None:
    """Time both variants in turns; print medians and B / A."""
    from train_step import _interleaved_ms

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    with _variant(True):
        on = _cases(args.repeats)
    with _variant(False):
        off = _cases(args.repeats)
    fns = {f"A {k}": v for k, v in on.items()} | {f"B {k}": v for k, v in off.items()}
    times = _interleaved_ms(fns, args.repeats, warmup=2)
    print("| case | A: materialize (ms) | B: identity (ms) | B / A |")
    print("| --- | ---: | ---: | ---: |")
    for name in on:
        a, b = times[f"A {name}"], times[f"B {name}"]
        print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
