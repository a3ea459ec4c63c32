"""Benchmark: time and memory of the exact gradient of ``fj.program`` at scale.

For each square float32 weight matrix (default 1024^2, 4096^2, 8192^2) and
each function of the weights below, a fresh subprocess compiles the function,
runs it, and reports:

* **time**: median wall time of repeated calls after one warm-up call;
* **XLA temp**: the temporary buffer bytes of the compiled program
  (``compiled.memory_analysis().temp_size_in_bytes``): what the program
  allocates besides its inputs and outputs, exact and free of noise;
* **peak RSS**: the process's peak resident memory while running, minus its
  resident memory once the weights exist (so it includes the output and the
  temporaries, and whatever the allocator keeps).

Functions (``key`` fixed, ``g_max=25``, the default chip noise):

* ``program``: ``fj.program(w, key, g_max=25)``, the forward programming;
* ``exact``: ``jax.grad(lambda w: sum(fj.program(w, key, g_max=25) ** 2))``;
* ``ste``: the same with ``gradient="ste"`` (straight-through).

Ratios are printed against ``program`` (time) and the weights' bytes
(memory). The goal of the exact gradient is at most 3x the forward time and
3x the weights' bytes in extra memory.

Usage::

    python benchmarks/grad_memory.py                       # 1024, 4096 (and 8192 with --big)
    python benchmarks/grad_memory.py --sizes 4096 8192     # chosen sizes
    python benchmarks/grad_memory.py --json out.json

The 8192^2 case holds 256 MB of weights and needs a few GB: run it alone on
a shared machine. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FUNCTIONS = ("program", "exact", "ste")

_CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
import fusion_jax as fj

n, name, repeats = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

key = jax.random.key(1)
w = jax.block_until_ready(jax.random.normal(jax.random.key(0), (n, n), jnp.float32) * 0.05)
if name == "program":
    fn = lambda w: fj.program(w, key, g_max=25.0)
else:
    grad = "exact" if name == "exact" else "ste"
    fn = jax.grad(lambda w: jnp.sum(fj.program(w, key, g_max=25.0, gradient=grad) ** 2))
compiled = jax.jit(fn).lower(w).compile()
temp = compiled.memory_analysis().temp_size_in_bytes
base = rss_kb()
jax.block_until_ready(compiled(w))          # warm-up
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(w))
    times.append(time.perf_counter() - t)
    del out
print(json.dumps({"time_s": float(np.median(times)), "temp_bytes": int(temp),
                  "peak_extra_bytes": max(peak - base, 0) * 1024}))
"""


def measure(n: int, name: str, repeats: int, code_root: str | None = None) -> dict[str, float]:
    """Run one case in a fresh process (on the package under ``code_root``)."""
    from _revision import run_python

    out = run_python(code_root, ["-c", _CHILD, str(n), name, str(repeats)])
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Measure every size and function; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--before", help="also measure the package at this git revision")
    args = parser.parse_args(argv)
    from _revision import exported

    with contextlib.ExitStack() as stack:
        roots = {"": None}
        if args.before:
            roots = {f"before ({args.before})": stack.enter_context(exported(args.before))}
            roots["after"] = None
        _table(args, roots)


def _table(args: argparse.Namespace, roots: dict[str, str | None]) -> None:
    """Measure every size, function and revision; print one markdown table."""

    results: dict[str, dict[str, dict[str, float]]] = {}
    print(
        "| code | w | weights | function | time | time / program | XLA temp | temp / weights "
        "| peak RSS extra | RSS / weights |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.sizes:
        weights = 4 * n * n
        for label, root in roots.items():
            case = f"{label} {n}".strip()
            results[case] = {}
            for name in FUNCTIONS:
                r = measure(n, name, args.repeats, root)
                results[case][name] = r
                base = results[case]["program"]["time_s"]
                _row(label or "this checkout", n, weights, name, r, base)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _row(label: str, n: int, weights: int, name: str, r: dict[str, float], base: float) -> None:
    print(
        f"| {label} | {n}x{n} | {weights / 2**20:.0f} MiB | {name} | {r['time_s']:.3f} s "
        f"| {r['time_s'] / base:.2f}x | {r['temp_bytes'] / 2**20:.0f} MiB "
        f"| {r['temp_bytes'] / weights:.2f}x | {r['peak_extra_bytes'] / 2**20:.0f} MiB "
        f"| {r['peak_extra_bytes'] / weights:.2f}x |",
        flush=True,
    )


if __name__ == "__main__":
    main()
