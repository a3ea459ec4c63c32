"""Print the README's transformer table: digital versus hardware-aware training recipes.

Trains the small scanned transformer of :mod:`fusion_jax.transformer` on the
histogram task (synthetic, from a fixed seed: nothing is downloaded) with
each recipe, programs every trained model once per seed onto the simulated
chip (calibrated chip noise, read after one day) at g_max 10, 25 and 40 uS,
and prints token accuracy, mean +- std over seeds, and each recipe's paired
gain over digital training.

``--recipes table`` (default) runs the recipes of the README table;
``--recipes extra`` the other recipes tried (hardware-aware at 25 uS only, a
digital warm-up before the hardware-aware steps), next to the same digital
baseline (same seeds: the same digital models).

Usage::

    python scripts/transformer_table.py [--recipes table|extra] [--seeds 5] [--steps 1000]
"""

from __future__ import annotations

import argparse
import sys
import time

from fusion_jax.transformer import DEFAULT_RECIPES, Recipe, transformer_experiment

EXTRA = (
    Recipe.digital(),
    Recipe.fixed(25.0),
    Recipe.uniform(10.0, 40.0, warmup=0.5),
)


def main(recipes: str = "table", seeds: int = 5, steps: int = 1000) -> None:
    """Run the experiment and print its table (see the module docstring)."""
    chosen = DEFAULT_RECIPES if recipes == "table" else EXTRA
    start = time.perf_counter()
    result = transformer_experiment(chosen, seeds=tuple(range(seeds)), steps=steps, progress=True)
    print(result)
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", choices=("table", "extra"), default="table")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    main(args.recipes, args.seeds, args.steps)
