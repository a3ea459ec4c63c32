"""Import the real Fusion-chip LeNet5 read-back and print the per-layer reconstruction error.

Exports the shipped weights (``weights.npz``, with its header ids and classes)
through :func:`fusion_jax.fusion_export` to a temporary file, checks that the
file is byte-identical to the reference's ``target_g40.csv``, then imports the
chip's ``programmed.csv`` with :func:`fusion_jax.fusion_import` and prints,
per layer, ``||W_hat - W||_F / ||W||_F`` for

* the import (per-row least-squares gain against the original weights), and
* a naive reconstruction dividing the read-back by the known per-row scale
  ``g_max / max|W_r|`` (which ignores the chip's ~0.55 drift gain),

plus the median per-row gain the import found (read-back / target).

Run: ``.venv/bin/python scripts/lenet5_import.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import fusion_jax as fj
from fusion_jax.chip_file import read_chip_file
from fusion_jax.fusion_io import fusion_export, fusion_import

G_MAX = 40.0


def relative_error(estimate: np.ndarray, weights: np.ndarray) -> float:
    """``||estimate - weights||_F / ||weights||_F`` in float64."""
    estimate = np.asarray(estimate, np.float64)
    weights = np.asarray(weights, np.float64)
    return float(np.linalg.norm(estimate - weights) / np.linalg.norm(weights))


def main(markdown: bool = False) -> None:
    with np.load(fj.datasets.lenet5_path("weights.npz")) as npz:
        names = [str(n) for n in npz["layer_names"]]
        layers = {n: npz[f"layer_{n}"] for n in names}
        ids = [int(i) for i in npz["layer_ids"]]
        classes = [str(c) for c in npz["layer_classes"]]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.csv"
        _, params = fusion_export(layers, path, g_max=G_MAX, ids=ids, classes=classes)
        identical = path.read_bytes() == fj.datasets.lenet5_path("target_g40.csv").read_bytes()
    if not markdown:
        print(f"export byte-identical to target_g40.csv: {identical}")
    elif not identical:
        raise SystemExit("the export of weights.npz differs from target_g40.csv")

    readback_path = fj.datasets.lenet5_path("programmed.csv")
    imported = fusion_import(readback_path, layers, params)
    readback = read_chip_file(readback_path).layers

    if markdown:
        print(
            "| layer | shape | relative error (fusion_jax import) | naive (divide by scale) "
            "| median per-row gain fitted |\n| --- | --- | ---: | ---: | ---: |"
        )
    else:
        print(f"{'layer':>5} {'shape':>10} {'import':>8} {'naive':>8} {'gain':>6}")
    for name, w in layers.items():
        row_max = np.abs(w).max(axis=1, keepdims=True).astype(np.float64)
        naive = readback[name] * np.sign(w) * row_max / G_MAX
        w_hat = np.asarray(imported[name], np.float64)
        x = readback[name] * np.sign(w)
        slope = (w_hat * x).sum(axis=1) / (x * x).sum(axis=1)  # W_hat_r = slope_r * X_r
        gain = np.median(row_max[:, 0] / (G_MAX * slope))
        shape = "x".join(map(str, w.shape))
        if markdown:
            kind = "conv" if "Conv" in classes[names.index(name)] else "dense"
            print(
                f"| {name} ({kind}) | {shape} | {relative_error(w_hat, w):.3f} "
                f"| {relative_error(naive, w):.3f} | {gain:.3f} |"
            )
            continue
        print(
            f"{name:>5} {shape:>10} {relative_error(w_hat, w):8.4f} "
            f"{relative_error(naive, w):8.4f} {gain:6.3f}"
        )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print README's markdown table")
    main(parser.parse_args().markdown)
