"""Benchmark: where the compile time of hardware-aware models goes.

Measured in a fresh process per revision (``--before REV`` adds the package
as of that git revision, measured the same way in the same run):

* **step**: a jitted gradient step (loss, ``jax.value_and_grad``, the new
  RNG state) of 16 layers 64 wide with ReLUs, batch 8: ``nnx.Linear``
  against ``fj.nnx.FusionLinear`` with the default chip noise (exact
  gradient), straight-through, and noise-free; and ``program_params``: the
  ``nnx.Linear`` model whose kernels the step programs with
  ``fj.program_params`` (default chip noise, exact gradient), where kernels
  of one shape are programmed by one batched call; and
  ``Fusion+program_params``: the ``FusionLinear`` model programmed so (its
  programmed copy's layers use the kernels as programmed). Lowering (tracing to
  StableHLO) and XLA compilation are timed apart; the optimised HLO's
  instruction and fusion counts show the program size per layer.
* **pieces**: XLA compile time and fusion count of one 64x64 kernel's
  noise-free programming, noisy programming, its exact and straight-through
  gradients, and the noise model's random words alone.
* **calls**: XLA compile time of 16 exact-gradient programmings of 64x64
  kernels, one jitted function called 16 times in one jitted loss, as JAX
  emits it (XLA on the CPU inlines the calls) and with each call marked not
  inlineable (XLA's ``inlineable`` frontend attribute, set with
  ``jax.experimental.xla_metadata``): whether XLA compiles a shared body
  once (it does not: it flattens the call graph and compiles each call
  site's copy).
* **recompiles**: how many XLA compilations a second eager ``fj.program``
  with another g_max / t_inference / noise-field value costs, and an eager
  ``fj.program_params`` of a small CNN (two convolutions, two Dense
  layers): compilations and wall time of the first call, and of a second
  call with another g_max and key.

Usage::

    python benchmarks/compile_time.py                   # this checkout
    python benchmarks/compile_time.py --before e6a1e4c  # and the package at e6a1e4c
    python benchmarks/compile_time.py --json out.json

Compile times on a shared machine move with its load: compare the ratios
within one run. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_LAYERS, WIDTH, BATCH = 16, 64, 8
STEP_KINDS = ("nnx.Linear", "exact", "ste", "noise-free", "program_params", "Fusion+program_params")


class _CompileCounter:
    """Counts XLA compilations through JAX's compile log."""

    def __init__(self) -> None:
        import logging

        import jax

        self.count = 0
        counter = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "Finished XLA compilation" in record.getMessage():
                    counter.count += 1

        jax.config.update("jax_log_compiles", True)
        logger = logging.getLogger("jax")
        logger.addHandler(Handler())
        logger.setLevel(logging.DEBUG)
        logger.propagate = False


def _compile(lowered) -> dict[str, float]:
    """XLA compile time of a lowered function, and the optimised HLO's size.

    Returns ``compile_s``, ``instructions``, ``fusions`` and ``calls`` (call
    instructions XLA left in the module).
    """
    start = time.perf_counter()
    compiled = lowered.compile()
    compiling = time.perf_counter() - start
    lines = [line for line in compiled.as_text().splitlines() if " = " in line]
    return {
        "compile_s": compiling,
        "instructions": len(lines),
        "fusions": sum(" fusion(" in line for line in lines),
        "calls": sum(" call(" in line for line in lines),
    }


def _step_model(kind: str):
    import jax
    from flax import nnx

    from fusion_jax.nnx import FusionLinear

    rngs = nnx.Rngs(params=0, noise=1)
    layers = []
    for _ in range(N_LAYERS):
        if kind in ("nnx.Linear", "program_params"):
            layers.append(nnx.Linear(WIDTH, WIDTH, rngs=rngs))
        elif kind in ("exact", "Fusion+program_params"):
            layers.append(FusionLinear(WIDTH, WIDTH, rngs=rngs))
        elif kind == "ste":
            layers.append(FusionLinear(WIDTH, WIDTH, gradient="ste", rngs=rngs))
        else:
            layers.append(FusionLinear(WIDTH, WIDTH, noise=None, rngs=rngs))
        layers.append(jax.nn.relu)
    return nnx.Sequential(*layers)


def measure_step(kind: str) -> dict[str, float]:
    """Lowering and compile time, and HLO size, of the 16-layer gradient step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import fusion_jax as fj

    graphdef, params, rest = nnx.split(_step_model(kind), nnx.Param, ...)

    def step(params, rest, x, key):
        def loss_fn(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            if kind.endswith("program_params"):  # all kernels programmed in the step at once
                model = fj.program_params(model, key)
            return jnp.mean(model(x) ** 2), nnx.split(model, nnx.Param, ...)[2]

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        return grads, rest, loss

    x = jnp.ones((BATCH, WIDTH))
    start = time.perf_counter()
    lowered = jax.jit(step).lower(params, rest, x, jax.random.key(1))
    lowering = time.perf_counter() - start
    return {"lower_s": lowering, **_compile(lowered)}


def measure_pieces() -> dict[str, dict[str, float]]:
    """Compile time and fusions of one 64x64 kernel's programming pieces."""
    import jax
    import jax.numpy as jnp

    import fusion_jax as fj
    from fusion_jax._random import random_words

    w = jax.random.normal(jax.random.key(0), (WIDTH, WIDTH)) * 0.1
    key = jax.random.key(1)
    pieces = {
        "noise-free forward": lambda w, k: fj.program_kernel(w, noise=None),
        "noisy forward": lambda w, k: fj.program_kernel(w, k, g_max=25.0),
        "exact gradient": jax.grad(lambda w, k: jnp.sum(fj.program_kernel(w, k, g_max=25.0) ** 2)),
        "ste gradient": jax.grad(
            lambda w, k: jnp.sum(fj.program_kernel(w, k, g_max=25.0, gradient="ste") ** 2)
        ),
        "random words": lambda w, k: random_words(k, 2, w.shape),
    }
    out = {}
    for name, fn in pieces.items():
        out[name] = _compile(jax.jit(fn).lower(w, key))
    return out


def measure_calls() -> dict[str, dict[str, float]]:
    """XLA compile of 16 calls of one jitted programming: inlined, and kept as calls."""
    import jax
    import jax.numpy as jnp

    import fusion_jax as fj

    try:
        from jax.experimental.xla_metadata import set_xla_metadata
    except ImportError:  # an older JAX: nothing to compare
        return {}

    def body(w: jax.Array, k: jax.Array) -> jax.Array:
        with set_xla_metadata(inlineable="true"):  # what the call holds may be inlined
            return fj.program_kernel(w, k, g_max=25.0)

    program = jax.jit(body)
    keys = jax.random.split(jax.random.key(0), N_LAYERS)
    weights = [jax.random.normal(k, (WIDTH, WIDTH)) * 0.1 for k in keys]
    out = {}
    for name, keep in (("inlined (as JAX emits it)", False), ("kept as calls", True)):

        def loss(ws: list[jax.Array], key: jax.Array, keep: bool = keep) -> jax.Array:
            total = 0.0
            for i, w in enumerate(ws):
                k = jax.random.fold_in(key, i)
                if keep:
                    with set_xla_metadata(inlineable="false"):
                        total = total + jnp.sum(program(w, k) ** 2)
                else:
                    total = total + jnp.sum(program(w, k) ** 2)
            return total

        out[name] = _compile(jax.jit(jax.grad(loss)).lower(weights, jax.random.key(1)))
    return out


def measure_recompiles(counter: _CompileCounter) -> dict[str, float]:
    """Compilations of eager calls with new setting values, and of program_params on a CNN."""
    import jax
    from flax import nnx

    import fusion_jax as fj
    from fusion_jax.noise import FusionChipNoise

    w = jax.random.normal(jax.random.key(0), (32, 48)) * 0.1
    key = jax.random.key(1)
    jax.block_until_ready(fj.program(w, key, g_max=25.0))
    counter.count = 0
    for g_max, t, spread in ((12.0, 60.0, 0.5), (33.0, 3600.0, 2.0)):
        model = FusionChipNoise.lenet5_readback(spread_scale=spread)
        jax.block_until_ready(fj.program(w, key, g_max=g_max, t_inference=t, noise=model))
    settings_compiles = counter.count

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
            self.dense1 = nnx.Linear(16 * 8 * 8, 64, rngs=rngs)
            self.dense2 = nnx.Linear(64, 10, rngs=rngs)

    _, state = nnx.split(CNN(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)  # a plain pytree: every revision accepts it
    extra = {}
    if "layouts" in inspect.signature(fj.program_params).parameters:  # rank > 2 needs its axes
        extra["layouts"] = {f"conv{i}/kernel": fj.layout.KernelAxes.conv(2) for i in (1, 2)}
    counter.count = 0
    start = time.perf_counter()
    jax.block_until_ready(fj.program_params(params, jax.random.key(2), g_max=25.0, **extra))
    first_s, first_compiles = time.perf_counter() - start, counter.count
    counter.count = 0
    start = time.perf_counter()
    jax.block_until_ready(fj.program_params(params, jax.random.key(3), g_max=31.0, **extra))
    second_s, second_compiles = time.perf_counter() - start, counter.count
    return {
        "program_new_settings_compiles": settings_compiles,
        "program_params_first_s": first_s,
        "program_params_first_compiles": first_compiles,
        "program_params_second_s": second_s,
        "program_params_second_compiles": second_compiles,
    }


def child() -> None:
    """Measure everything in this process; print JSON."""
    counter = _CompileCounter()
    result = {"step": {kind: measure_step(kind) for kind in STEP_KINDS}}
    result["pieces"] = measure_pieces()
    result["calls"] = measure_calls()
    result["recompiles"] = measure_recompiles(counter)
    result["load_average"] = os.getloadavg()[0]
    print(json.dumps(result))


def _report(label: str, r: dict) -> None:
    plain = r["step"]["nnx.Linear"]
    plain_total = plain["lower_s"] + plain["compile_s"]
    print(f"\n## {label} (1-minute load average {r['load_average']:.1f})\n")
    print(
        f"Gradient step of {N_LAYERS} layers {WIDTH} wide (lowering + XLA compile; HLO of the "
        "optimised module):\n"
    )
    print(
        "| layers | lowering | XLA compile | total | total / nnx.Linear | HLO instructions "
        "| fusions | extra instructions per layer |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, s in r["step"].items():
        total = s["lower_s"] + s["compile_s"]
        extra = (s["instructions"] - plain["instructions"]) / N_LAYERS
        print(
            f"| {kind} | {s['lower_s']:.2f} s | {s['compile_s']:.2f} s | {total:.2f} s "
            f"| {total / plain_total:.1f}x | {s['instructions']} | {s['fusions']} | {extra:.0f} |"
        )
    print(f"\nOne {WIDTH}x{WIDTH} kernel, jitted alone:\n")
    print("| piece | XLA compile | HLO instructions | fusions |")
    print("| --- | ---: | ---: | ---: |")
    for name, p in r["pieces"].items():
        print(f"| {name} | {p['compile_s']:.2f} s | {p['instructions']} | {p['fusions']} |")
    if r.get("calls"):
        print(
            f"\n{N_LAYERS} exact-gradient programmings of {WIDTH}x{WIDTH} kernels, one jitted "
            "function called in one jitted loss:\n"
        )
        print("| calls | XLA compile | HLO instructions | fusions | calls left |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, p in r["calls"].items():
            print(
                f"| {name} | {p['compile_s']:.2f} s | {p['instructions']} | {p['fusions']} "
                f"| {p['calls']} |"
            )
    c = r["recompiles"]
    print(
        f"\nEager fj.program with 2 new g_max / t_inference / spread_scale values: "
        f"{c['program_new_settings_compiles']} compilations."
    )
    print(
        "Eager fj.program_params of a 4-kernel CNN: first call "
        f"{c['program_params_first_s']:.1f} s "
        f"({c['program_params_first_compiles']} compilations); second call with another g_max "
        f"and key {c['program_params_second_s']:.2f} s "
        f"({c['program_params_second_compiles']} compilations)."
    )


def main(argv: list[str] | None = None) -> None:
    """Measure this checkout (and ``--before REV``); print markdown tables and ratios."""
    from _revision import exported, run_python

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="git revision to measure as 'before' in the same run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child()
        return
    script = str(Path(__file__).resolve())
    results = {}
    if args.before:
        with exported(args.before) as code:
            out = run_python(code, [script, "--child"])
        results[f"before ({args.before})"] = json.loads(out.strip().splitlines()[-1])
    out = run_python(None, [script, "--child"])
    results["after (this checkout)"] = json.loads(out.strip().splitlines()[-1])
    for label, r in results.items():
        _report(label, r)
    if len(results) == 2:
        (b, a) = results.values()

        def ratio(r: dict, kind: str) -> float:
            s, p = r["step"][kind], r["step"]["nnx.Linear"]
            return (s["lower_s"] + s["compile_s"]) / (p["lower_s"] + p["compile_s"])

        print("\n## Before -> after (step total / nnx.Linear)\n")
        for kind in STEP_KINDS[1:]:
            print(f"- {kind}: {ratio(b, kind):.1f}x -> {ratio(a, kind):.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
