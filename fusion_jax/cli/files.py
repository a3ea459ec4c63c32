"""``fusion-jax export``, ``import`` and ``data``: the chip's file workflow."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from fusion_jax._atomic import atomic_open
from fusion_jax.cli._common import (
    UserError,
    add_tile_args,
    check_output_file,
    g_max_arg,
    shape_text,
)
from fusion_jax.weights_file import read_weights, weights_payload


def _run_export(args: argparse.Namespace) -> int:
    import fusion_jax as fj

    check_output_file(args.out, "OUT", [args.weights])
    weights = read_weights(args.weights)
    _, exported = fj.fusion_export(
        weights.layers,
        args.out,
        args.g_max,
        ids=weights.ids,
        classes=weights.classes,
        max_input_size=args.max_input_size,
        max_output_size=args.max_output_size,
    )
    shapes = ", ".join(f"{n} {shape_text(w.shape)}" for n, w in weights.layers.items())
    devices = sum(w.size for w in weights.layers.values())
    print(
        f"wrote {args.out}: {len(exported)} layers ({shapes}), {devices} devices, "
        f"g_max {exported.g_max:g} uS"
    )
    return 0


def _run_import(args: argparse.Namespace) -> int:
    import fusion_jax as fj
    from fusion_jax.chip_file import read_chip_file

    check_output_file(args.out, "OUT", [args.readback, args.weights])
    weights = read_weights(args.weights)
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
                    raise UserError(
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
            raise UserError(f"layer {name!r}: the reconstruction is not finite.")

    lines = [f"{'layer':<8} {'shape':>10} {'rel. error':>11} {'max |error|':>12}"]
    total_err = total_ref = 0.0
    for name, w in result.items():
        ref = weights.layers[name].astype(np.float64)
        diff = w.astype(np.float64) - ref
        total_err += float(np.sum(diff**2))
        total_ref += float(np.sum(ref**2))
        rel = math.sqrt(float(np.sum(diff**2)) / max(float(np.sum(ref**2)), 1e-300))
        shape = shape_text(w.shape)
        lines.append(f"{name:<8} {shape:>10} {rel:>11.4g} {np.abs(diff).max():>12.4g}")
    lines.append(f"{'all':<8} {'':>10} {math.sqrt(total_err / max(total_ref, 1e-300)):>11.4g}")
    with atomic_open(args.out, binary=True) as fh:
        np.savez(fh, **weights_payload(weights, result))
    mode = "strict aihwkit" if args.strict_aihwkit else "default"
    print(f"weights reconstructed from {args.readback} against {args.weights} ({mode} mode);")
    print("relative error = ||w_imported - w|| / ||w|| per layer (Frobenius norms)")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


def _run_data(args: argparse.Namespace) -> int:
    from fusion_jax.datasets import lenet5_path

    # lenet5_path checks the name (a ValueError, reported as one line).
    print(lenet5_path("weights.npz").parent if args.file is None else lenet5_path(args.file))
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``export``, ``import`` and ``data`` to the subcommands ``sub``."""
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
        type=g_max_arg,
        default=40.0,
        metavar="G",
        help="largest conductance in uS (default: 40)",
    )
    add_tile_args(p)
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
    add_tile_args(p)
    p.set_defaults(run=_run_import)

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
