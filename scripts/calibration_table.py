"""Print the chip noise model's calibration and its validation on the real read-back.

Fits :func:`fusion_jax.noise.calibrate` on the shipped LeNet5 read-back,
prints the fitted coefficients next to the literals of
``FusionChipNoise.lenet5_readback()``, the latent mean and spread at a few
targets, a straight-line summary (gain, offset) of real and simulated
read-backs, the per-bin validation table, and the relative weight error of
``fusion_jax.program`` on the LeNet5 weights at several g_max next to that
of the real chip's read-back.

Usage::

    python scripts/calibration_table.py [--seed 0]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fusion_jax as fj
from fusion_jax.noise import FusionChipNoise, calibrate, validation_table


def _coefficients(model: FusionChipNoise) -> str:
    a = ", ".join(f"{v:+.4f}" for v in model.log_median_coefs)
    b = ", ".join(f"{v:+.4f}" for v in model.log_spread_coefs)
    return (
        f"  log_median_coefs (a0..a3) = ({a})\n"
        f"  log_spread_coefs (b0..b2) = ({b})\n"
        f"  shift = {float(model.shift):.4f} uS, "
        f"stuck_probability = {float(model.stuck_probability):.3g}"
    )


def main(seed: int = 0, validation_only: bool = False) -> None:
    """Print the calibration report (see the module docstring)."""
    data = fj.datasets.lenet5_readback()
    targets, programmed = data.flat_targets(), data.flat_programmed()
    preset = FusionChipNoise.lenet5_readback()
    if validation_only:  # README's table
        print(validation_table(preset, targets, programmed, jax.random.key(seed)).format())
        return
    fitted = calibrate(targets, programmed)

    print(f"Real Fusion-chip LeNet5 read-back: {targets.size} devices, g_max = 40 uS")
    print("\nFitted now by calibrate():")
    print(_coefficients(fitted))
    print("Literals of FusionChipNoise.lenet5_readback():")
    print(_coefficients(preset))
    print(f"  t_calibration = {preset.t_calibration:g} s (assumed), g_ref = {preset.g_ref:g} uS")

    grid = jnp.array([0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0])
    print("\nLatent (pre-clamp) read-back of the preset at t_calibration:")
    print("  target uS " + " ".join(f"{float(g):6.1f}" for g in grid))
    print("  mean uS   " + " ".join(f"{float(v):6.2f}" for v in preset.latent_mean(grid)))
    print("  std uS    " + " ".join(f"{float(v):6.2f}" for v in preset.latent_std(grid)))

    key = jax.random.key(seed)
    simulated = np.asarray(
        preset.sample(
            jnp.asarray(targets, jnp.float32), key, g_max=40.0, t_inference=preset.t_calibration
        )
    )
    real_line = np.polyfit(targets, programmed, 1)
    model_line = np.polyfit(targets, simulated, 1)
    print("\nStraight line through all devices, read-back ~ gain * target + offset:")
    print(f"  real chip: gain {real_line[0]:.3f}, offset {real_line[1]:+.3f} uS")
    print(f"  model:     gain {model_line[0]:.3f}, offset {model_line[1]:+.3f} uS")

    print(f"\nValidation, preset vs real read-back (model sampled with key {seed}):")
    print(validation_table(preset, targets, programmed, key).format())

    print("\nRelative weight error ||W_chip - W|| / ||W|| of fj.program on the LeNet5 weights")
    print("(default noise at t_calibration; the PCM model for comparison):")
    for g_max in (10.0, 20.0, 30.0, 40.0):
        errors = []
        for model in (preset, fj.noise.PCMLikeNoise()):
            num = den = 0.0
            for i, w in enumerate(data.weights.values()):
                w = jnp.asarray(w)
                w_chip = fj.program(
                    w,
                    jax.random.fold_in(key, i),
                    g_max=g_max,
                    noise=model,
                    t_inference=preset.t_calibration,
                )
                num += float(jnp.sum((w_chip - w) ** 2))
                den += float(jnp.sum(w**2))
            errors.append(np.sqrt(num / den))
        print(f"  g_max {g_max:4.0f} uS: chip model {errors[0]:.3f}, PCMLikeNoise {errors[1]:.3f}")
    num = den = 0.0
    for name, w in data.weights.items():
        w_real = fj.convert_back_to_weights(
            jnp.asarray(data.programmed[name], jnp.float32), {"original_weights": jnp.asarray(w)}
        )
        num += float(jnp.sum((w_real - w) ** 2))
        den += float(np.sum(w.astype(np.float64) ** 2))
    print(f"  real chip read-back (g_max 40 uS): {np.sqrt(num / den):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the model samples")
    parser.add_argument(
        "--validation-only", action="store_true", help="print only the validation table (README's)"
    )
    args = parser.parse_args()
    main(args.seed, args.validation_only)
