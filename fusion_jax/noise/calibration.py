"""Fit :class:`FusionChipNoise` to a target / read-back pair (:func:`calibrate`).

The solver is ``scipy.optimize.least_squares`` (trust-region reflective),
iteratively reweighted. It replaced a hand-written Levenberg-Marquardt loop:
on the shipped read-back both reach the same optimum (same cost, same
coefficients to far below the presets' rounding), the hand-written loop in
fewer Jacobian evaluations and less time (it takes one step per reweighting).
scipy stays: the fit runs once per data set, and a maintained solver with a
real bound on the stuck-probability logit replaces 50 lines of damping logic.
``python scripts/calibration_solvers.py`` prints the comparison.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jaxtyping import ArrayLike, Float

from fusion_jax import _validation
from fusion_jax.noise._common import _check_targets_in_range, _check_time, _prepare_pair
from fusion_jax.noise.chip import FusionChipNoise, _poly

# --------------------------------------------------------------------------
# Calibration: censored moments of the shifted log-normal
# --------------------------------------------------------------------------

#: Parameter vector: a0..a3, b0..b2, ln(shift), logit(stuck_probability).
_N_MEDIAN, _N_SPREAD = 4, 3
_LOGIT_RANGE = (-16.0, 0.0)


def _readback_moments(theta: jax.Array, ell: jax.Array) -> tuple[jax.Array, ...]:
    """Per-device ``E[R]``, ``E[R^2]``, ``P(R = 0)`` at the calibration time.

    With ``L + c = exp(X)``, ``X ~ N(m, s^2)``:
    ``E[exp(kX); X > ln c] = exp(k m + k^2 s^2 / 2) * Phi((m - ln c) / s + k s)``.
    """
    a, b = theta[:_N_MEDIAN], theta[_N_MEDIAN : _N_MEDIAN + _N_SPREAD]
    log_c, logit_p = theta[-2], theta[-1]
    m, s = _poly(a, ell), jnp.exp(_poly(b, ell))
    c, keep = jnp.exp(log_c), 1.0 - jax.nn.sigmoid(logit_p)
    z = (m - log_c) / s
    e1 = jnp.exp(m + 0.5 * s**2)
    p_pos = ndtr(z)
    mean = keep * (e1 * ndtr(z + s) - c * p_pos)
    second = keep * (
        jnp.exp(2.0 * m + 2.0 * s**2) * ndtr(z + 2.0 * s)
        - 2.0 * c * e1 * ndtr(z + s)
        + c**2 * p_pos
    )
    return mean, second, 1.0 - keep * p_pos


def _bin_moments(
    theta: jax.Array, ell: jax.Array, bins: jax.Array, count: jax.Array, n_bins: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Model mean, variance and zero fraction per bin.

    The per-device moments are averaged over each bin's own targets, so the
    bin width adds no bias (the spread of the means within a bin is part of
    the bin's variance, in the model as in the data).
    """
    dev_mean, dev_second, dev_zero = _readback_moments(theta, ell)

    def bin_average(v: jax.Array) -> jax.Array:
        return jax.ops.segment_sum(v, bins, n_bins) / count

    mean = bin_average(dev_mean)
    return mean, bin_average(dev_second) - mean**2, bin_average(dev_zero)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def _zero_fraction_se(
    theta: jax.Array, ell: jax.Array, bins: jax.Array, stats: jax.Array, *, n_bins: int
) -> jax.Array:
    """Binomial standard error of each bin's zero fraction under the model."""
    count = stats[0]
    zero = _bin_moments(theta, ell, bins, count, n_bins)[2]
    return jnp.sqrt(jnp.maximum(zero * (1.0 - zero), 1.0 / count) / count)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def _moment_residuals(
    theta: jax.Array,
    ell: jax.Array,
    bins: jax.Array,
    stats: jax.Array,
    se_zero: jax.Array,
    *,
    n_bins: int,
) -> jax.Array:
    """Standardised residuals of the per-bin mean, variance and zero fraction.

    ``stats`` rows: count, mean, variance, zero fraction, and the standard
    errors of the mean and the variance (from the data). ``se_zero`` comes
    from the model at the previous iterate (iteratively reweighted, which
    makes the zero-fraction part the binomial maximum likelihood; weights
    from the data would favour the bins that happen to hold fewer zeros).
    """
    count, mean, var, zero, se_mean, se_var = stats
    model_mean, model_var, model_zero = _bin_moments(theta, ell, bins, count, n_bins)
    return jnp.concatenate(
        [
            (model_mean - mean) / se_mean,
            (model_var - var) / se_var,
            (model_zero - zero) / se_zero,
        ]
    )


_jacobian = jax.jit(jax.jacfwd(_moment_residuals), static_argnames=("n_bins",))


def _bin_statistics(t: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of the targets and each bin's read-back statistics."""
    edges = np.unique(np.quantile(t, np.linspace(0.0, 1.0, n_bins + 1)))
    raw = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, max(len(edges) - 2, 0))
    _, bins = np.unique(raw, return_inverse=True)
    count = np.bincount(bins).astype(np.float64)
    mean = np.bincount(bins, p) / count
    var = np.bincount(bins, (p - mean[bins]) ** 2) / count
    m4 = np.bincount(bins, (p - mean[bins]) ** 4) / count
    zero = np.bincount(bins, (p <= 0).astype(np.float64)) / count
    stats = np.stack(
        [
            count,
            mean,
            var,
            zero,
            np.sqrt(np.maximum(var, 1e-4) / count),
            np.sqrt(np.maximum(m4 - var**2, 1e-8) / count),
        ]
    )
    return bins, stats


def _initial_theta(ell_bin: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Starting point from the bins whose read-backs are mostly non-zero."""
    count, mean, var, zero = stats[:4]
    c = 0.1
    ok = (zero < 0.5) & (mean > 0)
    if ok.sum() < _N_MEDIAN + 1:
        raise ValueError(
            f"calibration needs at least {_N_MEDIAN + 1} target bins whose read-backs are "
            f"mostly non-zero, found {int(ok.sum())}: are the read-backs all 0?"
        )
    w = np.sqrt(count[ok])
    x = ell_bin[ok]
    design = np.vander(x, _N_MEDIAN, increasing=True)
    a = np.linalg.lstsq(design * w[:, None], np.log(mean[ok] + c) * w, rcond=None)[0]
    s = np.sqrt(np.log1p(np.maximum(var[ok], 1e-6) / (mean[ok] + c) ** 2))
    design = np.vander(x, _N_SPREAD, increasing=True)
    b = np.linalg.lstsq(design * w[:, None], np.log(s) * w, rcond=None)[0]
    top = zero[ell_bin >= np.median(ell_bin)].mean()
    p = float(np.clip(top, 1e-6, 0.1))
    return np.concatenate([a, b, [math.log(c), math.log(p / (1.0 - p))]])


def calibrate(
    targets: Float[ArrayLike, "*shape"],
    programmed: Float[ArrayLike, "*shape"],
    *,
    n_fit_bins: int = 64,
    t_calibration: float = 3600.0,
    g_ref: float = 40.0,
    g_floor: float = 0.1,
    max_iter: int = 200,
    g_max: float = 40.0,
) -> FusionChipNoise:
    """Fit a :class:`FusionChipNoise` to target conductances and a chip read-back.

    The targets are split into ``n_fit_bins`` equal-count bins. The model's
    read-back moments are exact expressions of the censored, shifted
    log-normal (the clamp at 0 and the stuck devices included), averaged
    over each bin's own targets. ``scipy.optimize.least_squares`` (float64,
    JAX residuals and Jacobian) fits the 9 parameters so that each bin's
    mean, variance and fraction of zeros match the data, each residual
    divided by its standard error (mean and variance: from the data; zero
    fraction: binomial under the model, iteratively reweighted, so that part
    is the binomial maximum likelihood). The fit is deterministic.

    Moments rather than likelihood: the read-back has heavier tails than any
    two-parameter latent, and a likelihood fit trades the tails (and so the
    variance, which is what the weight error depends on) for the shape of
    the bulk; a normal (Tobit) likelihood in addition gives too many zeros
    for targets of 1 to 3 uS.

    Args:
        targets: Target conductances (uS, >= 0), any shape.
        programmed: The read-back for each target (uS, >= 0), same shape.
        n_fit_bins: Number of equal-count target bins (at least 8; 20
            points per bin needed).
        t_calibration: Seconds after programming the read-back describes
            (stored in the model, see :class:`FusionChipNoise`).
        g_ref: Conductance (uS) normalising the target in the model.
        g_floor: Targets below this (uS) are treated as this.
        max_iter: Maximum solver iterations (Jacobian evaluations, over all
            reweighting rounds; >= 1).
        g_max: The g_max the targets were converted with, in [10, 40] uS:
            no target may exceed it.

    Returns:
        The fitted :class:`FusionChipNoise` (coefficients as Python floats).

    Raises:
        ValueError: if the arrays differ in shape, contain NaN/Inf or
            negative values, a target exceeds ``g_max`` (how many, and
            where), there are fewer than ``20 * n_fit_bins`` points, almost
            all read-backs are 0, ``max_iter < 1``; or if the fit does not
            converge.
        ArgumentError: for ``g_max`` outside [10, 40].
        TypeError: for non-numeric arrays.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fusion_jax.noise import FusionChipNoise, calibrate
        >>> truth = FusionChipNoise.lenet5_readback()
        >>> g = jnp.linspace(0.0, 40.0, 20000)
        >>> r = truth.sample(g, jax.random.key(0), g_max=40.0, t_inference=3600.0)
        >>> fitted = calibrate(g, r, n_fit_bins=32)
        >>> bool(abs(fitted.latent_mean(30.0) / truth.latent_mean(30.0) - 1) < 0.05)
        True
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    _check_time(t_calibration, "t_calibration")
    theta, args, n_bins = _prepare_fit(targets, programmed, n_fit_bins, g_ref, g_floor, g_max)
    with jax.enable_x64(True):
        theta, _ = _solve(theta, args, n_bins, int(max_iter))
    a, b = theta[:_N_MEDIAN], theta[_N_MEDIAN : _N_MEDIAN + _N_SPREAD]
    return FusionChipNoise(
        log_median_coefs=tuple(float(v) for v in a),
        log_spread_coefs=tuple(float(v) for v in b),
        shift=float(np.exp(theta[-2])),
        stuck_probability=float(1.0 / (1.0 + np.exp(-theta[-1]))),
        t_calibration=float(t_calibration),
        g_ref=float(g_ref),
        g_floor=float(g_floor),
    )


def _prepare_fit(
    targets: Any, programmed: Any, n_fit_bins: Any, g_ref: Any, g_floor: Any, g_max: Any
) -> tuple[np.ndarray, tuple[np.ndarray, ...], int]:
    """Checked data, bins and starting point: ``(theta0, (ell, bins, stats), n_bins)``."""
    if not isinstance(n_fit_bins, int | np.integer) or n_fit_bins < 8:
        raise ValueError(f"n_fit_bins must be an integer >= 8, got {n_fit_bins!r}.")
    _validation.check_g_max(g_max, where="calibrate")
    for name, value in (("g_ref", g_ref), ("g_floor", g_floor)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number of uS > 0, got {value!r}.")
    t, p = _prepare_pair(
        targets, programmed, 20 * int(n_fit_bins), f"calibration with n_fit_bins={n_fit_bins}"
    )
    _check_targets_in_range(t, float(g_max), np.shape(targets))
    bins, stats = _bin_statistics(t, p, int(n_fit_bins))
    n_bins = stats.shape[1]
    if n_bins < 8:
        raise ValueError(
            f"the targets take too few distinct values to fit a target dependence "
            f"({n_bins} non-empty bins, need 8)."
        )
    ell = np.log(np.maximum(t, g_floor) / g_ref)
    ell_bin = np.bincount(bins, ell) / stats[0]
    return _initial_theta(ell_bin, stats), (ell, bins, stats), n_bins


def _fit_cost(theta: np.ndarray, args: tuple[np.ndarray, ...], n_bins: int) -> float:
    """Half the squared moment residuals at ``theta``, zero-fraction weights from ``theta``.

    This is the cost at a fixed point of the reweighted fit, the number the
    solvers are compared by (``scripts/calibration_solvers.py``). Call with
    float64 enabled (``jax.enable_x64``).
    """
    th = jnp.asarray(theta)
    se_zero = _zero_fraction_se(th, *args, n_bins=n_bins)
    r = np.asarray(_moment_residuals(th, *args, se_zero, n_bins=n_bins))
    return 0.5 * float(r @ r)


def _solve(
    theta: np.ndarray, args: tuple[np.ndarray, ...], n_bins: int, max_iter: int
) -> tuple[np.ndarray, int]:
    """Fit the moments with ``scipy.optimize.least_squares`` (float64, deterministic).

    The zero-fraction weights depend on the parameters (binomial standard
    errors under the model), so the fit is iteratively reweighted: fix the
    weights at the current parameters, solve that weighted least squares
    with the trust-region reflective solver (the stuck-probability logit
    bounded to ``_LOGIT_RANGE``), and repeat until the parameters stop
    moving. ``max_iter`` bounds the Jacobian evaluations over all rounds.

    Returns:
        The parameters and the number of Jacobian evaluations.
    """
    lower = np.full(theta.shape, -np.inf)
    upper = np.full(theta.shape, np.inf)
    lower[-1], upper[-1] = _LOGIT_RANGE
    theta = np.clip(theta, lower, upper)
    used = 0
    while used < max_iter:
        se_zero = _zero_fraction_se(jnp.asarray(theta), *args, n_bins=n_bins)

        def residuals(th: np.ndarray, se_zero: jax.Array = se_zero) -> np.ndarray:
            return np.asarray(_moment_residuals(jnp.asarray(th), *args, se_zero, n_bins=n_bins))

        def jacobian(th: np.ndarray, se_zero: jax.Array = se_zero) -> np.ndarray:
            return np.asarray(_jacobian(jnp.asarray(th), *args, se_zero, n_bins=n_bins))

        if not np.all(np.isfinite(residuals(theta))):
            raise ValueError("calibration failed: the model's moments became non-finite.")
        import scipy.optimize  # here: slow to import, and only the fit needs it

        fit = scipy.optimize.least_squares(
            residuals,
            theta,
            jac=jacobian,
            bounds=(lower, upper),
            method="trf",
            x_scale="jac",
            ftol=1e-12,
            xtol=1e-12,
            gtol=1e-12,
            max_nfev=max_iter - used,
        )
        used += int(fit.njev)
        if not np.isfinite(fit.cost):
            raise ValueError("calibration failed: the model's moments became non-finite.")
        step = float(np.max(np.abs(fit.x - theta)))
        theta = fit.x
        if fit.status > 0 and step < 1e-9:
            return theta, used
    raise ValueError(
        f"calibration did not converge in {max_iter} iterations (cost "
        f"{_fit_cost(theta, args, n_bins):.6g}); raise max_iter or check the data."
    )
