"""Compare a noise model with a real read-back, bin by bin (:func:`validation_table`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from fusion_jax.noise._common import _prepare_pair

# --------------------------------------------------------------------------
# Validation against a read-back
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ValidationRow:
    """One target bin of a :class:`ValidationTable` (conductances in uS).

    Attributes:
        lo: Lower bin edge (inclusive).
        hi: Upper bin edge (exclusive; inclusive for the last bin).
        count: Devices in the bin.
        real_mean: Mean of the real read-back.
        model_mean: Mean of the model's samples.
        real_std: Standard deviation of the real read-back.
        model_std: Standard deviation of the model's samples.
        real_zero_fraction: Fraction of real read-backs equal to 0.
        model_zero_fraction: Fraction of model samples equal to 0.
    """

    lo: float
    hi: float
    count: int
    real_mean: float
    model_mean: float
    real_std: float
    model_std: float
    real_zero_fraction: float
    model_zero_fraction: float

    @property
    def mean_error(self) -> float:
        """Relative error of the model's mean, ``model / real - 1``."""
        return self.model_mean / self.real_mean - 1.0 if self.real_mean else math.nan

    @property
    def std_error(self) -> float:
        """Relative error of the model's standard deviation."""
        return self.model_std / self.real_std - 1.0 if self.real_std else math.nan

    @property
    def zero_fraction_error(self) -> float:
        """Model minus real fraction of zeros (a difference of fractions)."""
        return self.model_zero_fraction - self.real_zero_fraction


@dataclasses.dataclass(frozen=True)
class ValidationTable:
    """Per-bin comparison of a noise model with a real read-back.

    Attributes:
        rows: One :class:`ValidationRow` per target bin.

    Example:
        >>> from fusion_jax.noise import ValidationRow, ValidationTable
        >>> row = ValidationRow(0.0, 4.0, 10, 1.0, 1.05, 0.5, 0.45, 0.1, 0.12)
        >>> print(ValidationTable((row,)))  # doctest: +NORMALIZE_WHITESPACE
        target uS      count | mean real  model    err | std real  model    err | zeros real  model
          0.0- 4.0        10 |     1.000  1.050  +5.0% |    0.500  0.450 -10.0% |      10.0%  12.0%
    """

    rows: tuple[ValidationRow, ...]

    def format(self) -> str:
        """The table as aligned text, one line per bin."""
        lines = [
            "target uS      count | mean real  model    err | std real  model    err "
            "| zeros real  model"
        ]
        for r in self.rows:
            if r.count == 0:
                lines.append(f"{r.lo:5.1f}-{r.hi:4.1f} {0:10d} | (empty)")
                continue
            lines.append(
                f"{r.lo:5.1f}-{r.hi:4.1f} {r.count:10d} | {r.real_mean:9.3f} {r.model_mean:6.3f} "
                f"{r.mean_error:+6.1%} | {r.real_std:8.3f} {r.model_std:6.3f} "
                f"{r.std_error:+6.1%} | {r.real_zero_fraction:10.2%} {r.model_zero_fraction:6.2%}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def validation_table(
    model: Any,
    targets: Float[ArrayLike, "*shape"],
    programmed: Float[ArrayLike, "*shape"],
    key: PRNGKeyArray,
    n_bins: int = 10,
    g_range: tuple[float, float] = (0.0, 40.0),
    *,
    g_max: float = 40.0,
    t_inference: float | None = None,
) -> ValidationTable:
    """Compare a noise model's samples with a real read-back, per target bin.

    Samples the model once at every target (one key), then bins targets,
    read-backs and samples by target conductance into ``n_bins`` equal-width
    bins over ``g_range`` (the last bin includes its upper edge; targets
    outside the range are left out).

    Args:
        model: A noise model (:class:`FusionChipNoise`, :class:`PCMLikeNoise`, ...).
        targets: Target conductances (uS), any shape.
        programmed: The real read-back for each target, same shape.
        key: PRNG key for the model's samples.
        n_bins: Number of target bins.
        g_range: ``(lo, hi)`` of the bins in uS.
        g_max: The g_max the targets were converted with (40 for the shipped data).
        t_inference: Time the model is sampled at; by default the model's
            ``t_calibration`` (0 for a model without one).

    Returns:
        A :class:`ValidationTable`; ``str(table)`` is the formatted text.

    Raises:
        ValueError: for arrays of different shapes, NaN/Inf or negative
            values, ``n_bins < 1`` or an empty ``g_range``.

    Example:
        >>> import jax
        >>> import fusion_jax as fj
        >>> from fusion_jax.noise import FusionChipNoise, validation_table
        >>> data = fj.datasets.lenet5_readback()
        >>> table = validation_table(FusionChipNoise.lenet5_readback(), data.flat_targets(),
        ...                          data.flat_programmed(), jax.random.key(0), n_bins=4)
        >>> [row.count for row in table.rows]
        [37606, 24807, 11969, 5634]
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}.")
    lo, hi = (float(v) for v in g_range)
    if not hi > lo:
        raise ValueError(f"g_range must be (lo, hi) with hi > lo, got {g_range!r}.")
    t, p = _prepare_pair(targets, programmed, 1, "validation_table")
    if t_inference is None:
        t_inference = float(getattr(model, "t_calibration", 0.0))
    sampled = np.asarray(
        model.sample(jnp.asarray(t, jnp.float32), key, g_max=g_max, t_inference=t_inference),
        dtype=np.float64,
    )
    edges = np.linspace(lo, hi, int(n_bins) + 1)
    rows = []
    for i in range(int(n_bins)):
        upper = t <= edges[i + 1] if i == int(n_bins) - 1 else t < edges[i + 1]
        sel = (t >= edges[i]) & upper
        n = int(sel.sum())
        if n == 0:
            rows.append(ValidationRow(edges[i], edges[i + 1], 0, *([math.nan] * 6)))
            continue
        real, fake = p[sel], sampled[sel]
        rows.append(
            ValidationRow(
                lo=float(edges[i]),
                hi=float(edges[i + 1]),
                count=n,
                real_mean=float(real.mean()),
                model_mean=float(fake.mean()),
                real_std=float(real.std()),
                model_std=float(fake.std()),
                real_zero_fraction=float((real <= 0).mean()),
                model_zero_fraction=float((fake <= 0).mean()),
            )
        )
    return ValidationTable(tuple(rows))
