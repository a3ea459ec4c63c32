"""Compare the calibration's solver with the hand-written Levenberg-Marquardt it replaced.

:func:`fusion_jax.noise.calibrate` fits its 9 parameters with
``scipy.optimize.least_squares`` (trust-region reflective), iteratively
reweighted. Until it did, the package carried its own damped Gauss-Newton
(Levenberg-Marquardt) loop, kept below as the baseline. Both start from the
same point on the same bins of the shipped LeNet5 read-back; the script
prints, for each, the fitted coefficients, the final cost (half the squared
standardised moment residuals, zero-fraction weights from the fitted
parameters), the iterations (Jacobian evaluations) and the wall time
(median of ``--repeat`` runs after one warm-up that compiles the JAX
residuals).

Usage::

    python scripts/calibration_solvers.py [--repeat 3] [--n-fit-bins 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fusion_jax as fj
from fusion_jax.noise import calibration as cal

NAMES = ("a0", "a1", "a2", "a3", "b0", "b1", "b2", "shift", "stuck_p")


def levenberg_marquardt(
    theta: np.ndarray, args: tuple[np.ndarray, ...], n_bins: int, max_iter: int = 200
) -> tuple[np.ndarray, int]:
    """The hand-written solver: one damped Gauss-Newton step per reweighting.

    Each iteration fixes the zero-fraction weights at the current parameters
    and takes one step on that weighted least squares, the damping raised
    (x4) until the step lowers the cost and lowered (/3) after it.
    """

    def residuals(th: np.ndarray, se_zero: jax.Array) -> np.ndarray:
        return np.asarray(cal._moment_residuals(jnp.asarray(th), *args, se_zero, n_bins=n_bins))

    damping = 1e-2
    for it in range(1, max_iter + 1):
        th = jnp.asarray(theta)
        se_zero = cal._zero_fraction_se(th, *args, n_bins=n_bins)
        r = residuals(theta, se_zero)
        f = 0.5 * float(r @ r)
        jac = np.asarray(cal._jacobian(th, *args, se_zero, n_bins=n_bins))
        grad, hess = jac.T @ r, jac.T @ jac
        diag = np.diag(np.maximum(np.diag(hess), 1e-12))
        while True:
            candidate = theta - np.linalg.solve(hess + damping * diag, grad)
            candidate[-1] = np.clip(candidate[-1], *cal._LOGIT_RANGE)
            r_new = residuals(candidate, se_zero)
            f_new = 0.5 * float(r_new @ r_new)
            if np.isfinite(f_new) and f_new < f:
                break
            damping *= 4.0
            if damping > 1e12:
                return theta, it
        converged = f - f_new <= 1e-12 * f or np.max(np.abs(candidate - theta)) < 1e-9
        theta = candidate
        damping = max(damping / 3.0, 1e-9)
        if converged:
            return theta, it
    raise RuntimeError(f"no convergence in {max_iter} iterations")


def _readable(theta: np.ndarray) -> np.ndarray:
    """Coefficients, shift (uS) and stuck probability, as the model stores them."""
    out = np.array(theta, dtype=np.float64)
    out[-2] = np.exp(theta[-2])
    out[-1] = 1.0 / (1.0 + np.exp(-theta[-1]))
    return out


def main(repeat: int = 3, n_fit_bins: int = 64) -> None:
    """Print the comparison (see the module docstring)."""
    data = fj.datasets.lenet5_readback()
    theta0, args, n_bins = cal._prepare_fit(
        data.flat_targets(), data.flat_programmed(), n_fit_bins, 40.0, 0.1, 40.0
    )
    solvers = {
        "scipy least_squares (trf)": lambda: cal._solve(theta0, args, n_bins, 200),
        "hand-written LM": lambda: levenberg_marquardt(theta0, args, n_bins),
    }
    results = {}
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in args)
        for name, solve in solvers.items():
            solve()  # warm-up: compiles the residuals and the Jacobian
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                theta, iters = solve()
                times.append(time.perf_counter() - start)
            results[name] = (theta, iters, cal._fit_cost(theta, args, n_bins), times)
    print(
        f"LeNet5 read-back, {data.flat_targets().size} devices, {n_bins} bins, "
        f"{3 * n_bins} residuals; start cost {_start_cost(theta0, args, n_bins):.6g}"
    )
    header = f"{'solver':<27} {'cost':>12} {'iters':>6} {'time (s)':>9}"
    print(header)
    for name, (_, iters, cost, times) in results.items():
        print(f"{name:<27} {cost:12.6f} {iters:6d} {statistics.median(times):9.3f}")
    (sp, *_), (lm, *_) = results.values()
    print(f"\n{'param':<8} {'scipy':>12} {'hand LM':>12} {'diff':>10}")
    for label, a, b in zip(NAMES, _readable(sp), _readable(lm), strict=True):
        print(f"{label:<8} {a:12.6g} {b:12.6g} {a - b:+10.2e}")


def _start_cost(theta: np.ndarray, args: tuple, n_bins: int) -> float:
    with jax.enable_x64(True):
        return cal._fit_cost(theta, tuple(jnp.asarray(a) for a in args), n_bins)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per solver")
    parser.add_argument("--n-fit-bins", type=int, default=64)
    ns = parser.parse_args()
    main(ns.repeat, ns.n_fit_bins)
