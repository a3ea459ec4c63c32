"""Benchmark: one hardware-aware training step against the same digital step.

An MLP 784-256-256-10 (batch 256) is trained with optax Adam, once built from
``nnx.Linear`` (digital) and once from :class:`fusion_jax.nnx.FusionLinear`
(hardware-aware: every step programs the three kernels with a fresh draw of
the default, chip-calibrated noise). One step is forward + backward + Adam
update in one ``jax.jit``; the figure is the median wall time of many steps
after warm-up (``block_until_ready``). The goal is a ratio of at most 1.3.

The step is measured under each PRNG JAX offers (``threefry2x32``, the
default, with ``jax_threefry_partitionable`` on and off; ``rbg``;
``unsafe_rbg``), each in its own process, because the implementation is
fixed when the first key is made. With threefry keys the noise models draw
their words with fusion_jax's fused threefry (``fusion_jax._random``: the
same hash, one block of 64 bits per device, fused into its consumer); with the others
they call ``jax.random.bits``. A breakdown of the hardware-aware extra cost
(random numbers, noise model, conversion and regression) is printed for the
PRNG in use.

Usage::

    python benchmarks/train_step.py                 # every PRNG, a table
    python benchmarks/train_step.py --prng rbg      # one PRNG, in this process
    python benchmarks/train_step.py --json out.json # also write the results as JSON

This is a script, not a test: its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

PRNGS = ("threefry", "threefry-nonpartitionable", "rbg", "unsafe_rbg")
_IMPL = {
    "threefry": "threefry2x32",
    "threefry-nonpartitionable": "threefry2x32",
    "rbg": "rbg",
    "unsafe_rbg": "unsafe_rbg",
}
WIDTHS = (784, 256, 256, 10)


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in ms, each call blocked until its results are ready."""
    return _interleaved_ms({"fn": fn}, repeats, warmup)["fn"]


def _interleaved_ms(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median ms of each function, timed in turn within every repeat.

    Interleaving makes the functions share whatever else the machine is
    doing, so their ratios hold even when the absolute times drift.
    """
    import jax
    import numpy as np

    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def _mlp(fusion: dict[str, Any] | None, seed: int = 0) -> Any:
    """The benchmark MLP: ``nnx.Linear`` layers, or ``FusionLinear(**fusion)``."""
    import jax
    from flax import nnx

    from fusion_jax.nnx import FusionLinear

    rngs = nnx.Rngs(params=seed, noise=seed + 1)
    layers: list[Any] = []
    for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:], strict=True):
        if layers:
            layers.append(jax.nn.relu)
        if fusion is None:
            layers.append(nnx.Linear(n_in, n_out, rngs=rngs))
        else:
            layers.append(FusionLinear(n_in, n_out, rngs=rngs, **fusion))
    return nnx.Sequential(*layers)


def _train_step(model: Any, x: Any, y: Any) -> Callable[[], Any]:
    """A closure running one jitted train step (forward, backward, Adam) of ``model``.

    The step is functional (``nnx.split`` / ``nnx.merge`` inside one
    ``jax.jit``, buffers donated); each call advances the parameters, the
    optimiser state and the noise RNG state, and returns the loss.
    """
    import jax
    import optax
    from flax import nnx

    tx = optax.adam(1e-3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, rest, opt_state, x, y):
        def loss_fn(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
            return loss, nnx.split(m, nnx.Param, ...)[2]

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    state = [params, rest, opt_state]

    def run() -> Any:
        *state[:], loss = step(*state, x, y)
        return loss

    return run


def _breakdown(repeats: int, warmup: int) -> dict[str, float]:
    """Where the hardware-aware extra time goes: each piece for the three kernels, jitted."""
    import jax
    import jax.numpy as jnp

    from fusion_jax._random import random_words
    from fusion_jax.model_programming import program_kernel
    from fusion_jax.noise import default_noise

    noise = default_noise()
    shapes = list(zip(WIDTHS[:-1], WIDTHS[1:], strict=True))
    keys = jax.random.split(jax.random.key(0), len(shapes))
    kernels = [jax.random.normal(k, s) * 0.05 for k, s in zip(keys, shapes, strict=True)]
    conductances = [jnp.abs(k.T) / jnp.max(jnp.abs(k)) * 40.0 for k in kernels]

    def per_kernel(fn: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        return jax.jit(
            lambda key: [fn(g, jax.random.fold_in(key, i)) for i, g in enumerate(conductances)]
        )

    bits = per_kernel(lambda g, k: jax.random.bits(k, g.shape))

    def both_words(g: Any, k: Any) -> Any:
        w0, w1 = random_words(k, 2, g.shape)
        return w0 ^ w1

    words = per_kernel(both_words)
    normals = per_kernel(lambda g, k: jax.random.normal(k, g.shape))
    sample = per_kernel(lambda g, k: noise.sample(g, k, g_max=40.0, t_inference=0.0))

    def programmed_sum(kernels: list[Any], key: Any, model: Any) -> Any:
        total = 0.0
        for i, k in enumerate(kernels):
            leaf_key = None if key is None else jax.random.fold_in(key, i)
            total = total + jnp.sum(program_kernel(k, leaf_key, noise=model) ** 2)
        return total

    forward_clean = jax.jit(lambda ks: programmed_sum(ks, None, None))
    grad_clean = jax.jit(jax.grad(lambda ks: programmed_sum(ks, None, None)))
    forward_noisy = jax.jit(lambda ks, key: programmed_sum(ks, key, noise))
    grad_noisy = jax.jit(jax.grad(lambda ks, key: programmed_sum(ks, key, noise)))
    key = jax.random.key(1)
    return _interleaved_ms(
        {
            "jax_random_bits_32_per_weight_ms": lambda: bits(key),
            "noise_words_64_per_weight_ms": lambda: words(key),
            "jax_random_normal_1_per_weight_ms": lambda: normals(key),
            "noise_sample_ms": lambda: sample(key),
            "program_noise_free_forward_ms": lambda: forward_clean(kernels),
            "program_noise_free_grad_ms": lambda: grad_clean(kernels),
            "program_noisy_forward_ms": lambda: forward_noisy(kernels, key),
            "program_noisy_grad_ms": lambda: grad_noisy(kernels, key),
        },
        repeats,
        warmup,
    )


def measure(prng: str, *, batch: int, repeats: int, warmup: int, breakdown: bool) -> dict[str, Any]:
    """Time the digital and hardware-aware steps under one PRNG, in this process.

    Must run before anything in the process makes a PRNG key.
    """
    import jax

    jax.config.update("jax_default_prng_impl", _IMPL[prng])
    jax.config.update("jax_threefry_partitionable", prng != "threefry-nonpartitionable")
    key_x, key_y = jax.random.split(jax.random.key(42))
    x = jax.random.uniform(key_x, (batch, WIDTHS[0]))
    y = jax.random.randint(key_y, (batch,), 0, WIDTHS[-1])
    times = _interleaved_ms(
        {
            "digital": _train_step(_mlp(None), x, y),
            "fusion": _train_step(_mlp({}), x, y),
            "fusion_ste": _train_step(_mlp({"gradient": "ste"}), x, y),
            "fusion_noise_free": _train_step(_mlp({"noise": None}), x, y),
        },
        repeats,
        warmup,
    )
    digital, aware = times["digital"], times["fusion"]
    result: dict[str, Any] = {
        "prng": prng,
        "backend": jax.default_backend(),
        "impl": _IMPL[prng],
        "threefry_partitionable": prng != "threefry-nonpartitionable",
        "digital_ms": digital,
        "fusion_ms": aware,
        "ratio": aware / digital,
        "fusion_ste_ms": times["fusion_ste"],
        "ste_ratio": times["fusion_ste"] / digital,
        "fusion_noise_free_ms": times["fusion_noise_free"],
        "noise_free_ratio": times["fusion_noise_free"] / digital,
    }
    if breakdown:
        result["breakdown"] = _breakdown(repeats, warmup)
    return result


def _in_subprocess(
    prng: str, args: argparse.Namespace, code_root: str | None = None
) -> dict[str, Any]:
    """Measure ``prng`` in a fresh process; with ``code_root``, on the package found there."""
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([code_root, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--prng",
            prng,
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--json",
            out,
            "--quiet",
        ]
        if args.breakdown:
            cmd.append("--breakdown")
        subprocess.run(cmd, check=True, env=env, cwd=code_root)
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)[0]


def _print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"train step (forward + backward + Adam), MLP {'-'.join(map(str, WIDTHS))}, "
        f"batch {results[0]['batch']}, backend {results[0]['backend']}, "
        f"median of {results[0]['repeats']} interleaved steps"
    )
    print(
        f"{'PRNG':<27}{'nnx.Linear':>11}{'FusionLinear':>13}{'ratio':>7}"
        f"{'Fusion, STE':>13}{'ratio':>7}{'Fusion, noise=None':>20}{'ratio':>7}"
    )
    for r in results:
        print(
            f"{r['prng']:<27}{r['digital_ms']:>8.2f} ms{r['fusion_ms']:>10.2f} ms{r['ratio']:>7.2f}"
            f"{r['fusion_ste_ms']:>10.2f} ms{r['ste_ratio']:>7.2f}"
            f"{r['fusion_noise_free_ms']:>17.2f} ms{r['noise_free_ratio']:>7.2f}"
        )
    for r in results:
        if "breakdown" in r:
            print(f"pieces of the hardware-aware step under {r['prng']} (three kernels, jitted):")
            for name, ms in r["breakdown"].items():
                print(f"  {name:<34}{ms:>9.3f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prng",
        choices=(*PRNGS, "all"),
        default="all",
        help="PRNG to measure; 'all' runs each in its own process",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the pieces of the hardware-aware step"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--quiet", action="store_true", help="print nothing (with --json)")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also measure the package as of this git revision (threefry only), in turns",
    )
    args = parser.parse_args(argv)

    if args.before:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _revision import exported

        rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        with exported(args.before) as code:
            for _ in range(3):  # alternate, so that both see the same machine load
                rounds["before"].append(_in_subprocess("threefry", args, code))
                rounds["after"].append(_in_subprocess("threefry", args))
        for label, runs in rounds.items():
            for r in runs:
                r["prng"] = f"threefry, {label}"
            _print_table(runs)
        return 0
    if args.prng == "all":
        results = [_in_subprocess(p, args) for p in PRNGS]
    else:
        result = measure(
            args.prng,
            batch=args.batch,
            repeats=args.repeats,
            warmup=args.warmup,
            breakdown=args.breakdown,
        )
        result.update(batch=args.batch, repeats=args.repeats)
        results = [result]
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        os.replace(tmp, args.json)
    if not args.quiet:
        _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
