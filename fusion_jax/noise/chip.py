"""Conductance-space noise models of the Fusion chip.

Two models, both pytrees with the :class:`fusion_jax.NoiseModel` method
``sample(conductances, key, *, g_max, t_inference)``:

* :class:`PCMLikeNoise`: the reference's statistical PCM model (programming
  noise, drift, 1/f read noise). Every term scales with ``g_max``, so the
  relative weight noise it gives does not depend on ``g_max``.
* :class:`FusionChipNoise`: a model of what the real Fusion chip returns,
  calibrated on the shipped LeNet5 read-back (about 80,000 devices). Its
  gain, offset, clamp and spread are functions of the target in absolute uS,
  which is what makes ``g_max`` matter. :func:`calibrate` fits it to any
  target / read-back pair; :func:`validation_table` compares a model with a
  read-back, bin by bin.

All numeric fields are pytree data fields: a sweep can ``jax.vmap`` over a
batch of models (for example over ``spread_scale`` or ``drift_scale``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation
from fusion_jax._random import random_words

__all__ = [
    "FusionChipNoise",
    "PCMLikeNoise",
    "ValidationRow",
    "ValidationTable",
    "calibrate",
    "default_noise",
    "validation_table",
]

#: Conductance (uS) at which the PCM programming-noise coefficients were fitted.
PCM_PROG_G_REF = 25.0
#: Floor of the relative conductance in the drift statistics (the reference's).
_DRIFT_G_REL_MIN = 1e-7
#: ``max((g/g_max)**0.65, 1e-3)`` equals ``max(g/g_max, _READ_REL_MIN)**0.65``;
#: flooring before the power keeps its derivative finite at 0.
_READ_REL_MIN = 1e-3 ** (1.0 / 0.65)


# --------------------------------------------------------------------------
# Shared PCM statistics (REFERENCE.md, aihwkit PCMLikeNoiseModel)
# --------------------------------------------------------------------------


def _drift_exponent(g_rel: jax.Array, xi: jax.Array, drift_scale: Any) -> jax.Array:
    """Per-device drift exponent ``nu = |mu + sd * xi| * drift_scale``."""
    log_rel = jnp.log(jnp.maximum(jnp.abs(g_rel), _DRIFT_G_REL_MIN))
    mu = jnp.clip(-0.0155 * log_rel + 0.0244, 0.049, 0.1)
    sd = jnp.clip(-0.0125 * log_rel - 0.0059, 0.008, 0.045)
    return jnp.abs(mu + sd * xi) * drift_scale


def _read_noise_sigma(g_rel: jax.Array, t: Any, t_read: Any) -> jax.Array:
    """Relative 1/f read-noise std ``Q * sqrt(ln((t + t_read) / (2 t_read)))``."""
    q = jnp.minimum(0.0088 / jnp.maximum(g_rel, _READ_REL_MIN) ** 0.65, 0.2)
    # The quotient overflows for times beyond about 1e32 s (t_read = 2.5e-7 s):
    # there, the difference of the logs, which is finite.
    ratio = (t + t_read) / (2.0 * t_read)
    log_ratio = jnp.where(
        jnp.isfinite(ratio), jnp.log(ratio), jnp.log(t + t_read) - jnp.log(2.0 * t_read)
    )
    return q * jnp.sqrt(jnp.maximum(log_ratio, 0.0))


def _add_read_noise(
    g: jax.Array, g_rel_prog: jax.Array, xi: jax.Array, scale: Any, t: Any, t_read: Any
) -> jax.Array:
    """``max(0, g + |g| * scale * sigma_read * xi)``."""
    sigma = _read_noise_sigma(g_rel_prog, t, t_read)
    return jnp.maximum(g + jnp.abs(g) * scale * sigma * xi, 0.0)


# --------------------------------------------------------------------------
# Argument checks (concrete values only; traced values pass through)
# --------------------------------------------------------------------------


def _as_conductances(conductances: Any) -> jax.Array:
    """Conductances as a floating JAX array; concrete ones must be finite and >= 0."""
    g = _validation.as_array(conductances, "conductances")
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.float32)
    value = _validation.concrete_value(g)
    if value is not None:
        bad = ~np.isfinite(value)
        if bad.any():
            raise ValueError(
                f"conductances contain {int(bad.sum())} NaN or Inf values "
                f"(first at flat index {int(np.flatnonzero(bad)[0])}, shape {value.shape})."
            )
        if (value < 0).any():
            raise ValueError(
                f"conductances must be >= 0 uS (magnitudes); {int((value < 0).sum())} are "
                f"negative, the smallest {float(value.min()):.4g} (shape {value.shape})."
            )
    return g


def _check_time(t_inference: Any, name: str = "t_inference") -> None:
    _validation.check_t_inference(t_inference, name)


def _check_sample_args(model: Any, key: Any, g_max: Any, t_inference: Any) -> None:
    """The settings checks of ``sample`` (the fields are checked when the model is built)."""
    where = f"{type(model).__name__}.sample"
    _validation.check_key(key, where)
    _validation.check_g_max(g_max)
    _validation.check_t_inference(t_inference, where=where)


def _compute_dtype(dtype: Any) -> Any:
    """At least float32: float16's range (max 65504, smallest normal 6e-5) is too small
    for the intermediate terms (``t_read`` = 2.5e-7 s alone would flush to 0)."""
    return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------
# Random draws: two 32-bit words per device
# --------------------------------------------------------------------------
#
# Random words and the inverse normal CDF are most of the cost of a sample,
# so each device draws one threefry block, two 32-bit words
# (:func:`fusion_jax._random.random_words`: JAX's threefry hash, fused and
# computed once), and the terms share its 64 bits: the normals that set most
# of the spread get 24 bits, the drift normal 16 and the stuck-device uniform
# of FusionChipNoise 24. Disjoint bits of the hash's output are independent,
# so the terms stay independent.

_SQRT2 = math.sqrt(2.0)
_LOW_8 = 0xFF
_LOW_16 = 0xFFFF


def _draw_words(key: PRNGKeyArray, n_words: int, shape: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """``n_words`` independent uniform 32-bit words per device, each of shape ``shape``."""
    return random_words(key, n_words, shape)


def _normal_from_code(code: jax.Array, n_bits: int, dtype: Any) -> jax.Array:
    """Standard normal from uniform ``n_bits``-bit integers ``code`` (``n_bits <= 24``).

    The inverse normal CDF at the midpoint of the code's bin,
    ``u = (code + 1/2) / 2**n_bits``, as ``sqrt(2) * erfinv(2u - 1)`` with
    ``2u - 1 = (2 code + 1 - 2**n_bits) / 2**n_bits``: an odd integer below
    2**24 times a power of two, exact in float32, strictly inside (-1, 1) and
    symmetric about 0. The ``2**n_bits`` values are equally likely; the
    largest is the normal quantile at ``1 - 2**-(n_bits + 1)``: 5.4 for 24
    bits, 4.3 for 16 bits. Computed in at least float32.
    """
    compute = jnp.promote_types(dtype, jnp.float32)
    odd = 2 * code.astype(jnp.int32) + (1 - 2**n_bits)
    return (_SQRT2 * jax.lax.erf_inv(odd.astype(compute) * 2.0**-n_bits)).astype(dtype)


def _read_noise_on(model: Any) -> bool:
    """The model's ``read_noise`` switch, refusing a concrete non-zero scale that it turns off."""
    if model.read_noise:
        return True
    scale = _validation.concrete_value(model.read_noise_scale)
    if scale is not None and np.any(scale != 0):
        raise ValueError(
            f"{type(model).__name__}: read_noise_scale={np.asarray(scale).tolist()} has no "
            "effect while read_noise=False; pass read_noise=True to add read noise."
        )
    return False


def _pcm_draws(
    key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any, *, with_read: bool
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Programming, drift and read normals of :class:`PCMLikeNoise` from two words per device.

    Bits 31-8 of word 0: programming normal (24 bits); bits 31-8 of word 1:
    read normal (24 bits, not computed unless ``with_read``); bits 7-0 of
    both words: drift normal (16 bits).
    """
    w0, w1 = _draw_words(key, 2, shape)
    xi_prog = _normal_from_code(w0 >> 8, 24, dtype)
    xi_drift = _normal_from_code(((w0 & _LOW_8) << 8) | (w1 & _LOW_8), 16, dtype)
    xi_read = _normal_from_code(w1 >> 8, 24, dtype) if with_read else None
    return xi_prog, xi_drift, xi_read


def _chip_draws(
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    dtype: Any,
    stuck_probability: Any,
    *,
    with_read: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Latent normal, drift normal, stuck mask and read normal of :class:`FusionChipNoise`.

    The key is split in two. From the first, two words per device: bits
    31-8 of word 0 give the latent normal (24 bits), bits 31-16 of word 1
    the drift normal (16 bits), bits 15-0 of word 1 above bits 7-0 of word
    0 a 24-bit code ``k`` and a device is stuck where ``(k + 1/2) / 2**24 <
    stuck_probability`` (probability within 3e-8 of ``stuck_probability``).
    The read normal (24 bits) comes from a third word drawn with the second
    key, only when ``with_read``: switching read noise on leaves the other
    draws as they were.
    """
    k_main, k_read = jax.random.split(key)
    w0, w1 = _draw_words(k_main, 2, shape)
    xi = _normal_from_code(w0 >> 8, 24, dtype)
    xi_drift = _normal_from_code(w1 >> 16, 16, dtype)
    stuck_code = ((w1 & _LOW_16) << 8) | (w0 & _LOW_8)
    stuck = stuck_code.astype(jnp.float32) + 0.5 < stuck_probability * 2.0**24
    xi_read = None
    if with_read:
        xi_read = _normal_from_code(_draw_words(k_read, 1, shape)[0] >> 8, 24, dtype)
    return xi, xi_drift, stuck, xi_read


# --------------------------------------------------------------------------
# PCMLikeNoise
# --------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PCMLikeNoise:
    """The reference's statistical PCM noise model, in conductance space.

    With ``gT`` the target conductance (uS), ``xi`` independent standard
    normal draws per device and per term:

    * programming: ``sigma_prog = (c0 + c1 r + c2 r^2) * g_max / 25`` with
      ``r = gT / g_max``; ``g_prog = max(0, gT + prog_noise_scale * sigma_prog * xi)``.
    * drift: ``nu = |mu + sd * xi| * drift_scale`` with ``mu``, ``sd``
      clipped log-linear functions of ``max(r, 1e-7)``; at
      ``t = t_inference + t0``, ``g_drift = g_prog * (t / t0)^(-nu)`` where
      ``t > t0`` (so ``t_inference = 0`` means no drift).
    * read (1/f) noise: ``Q = min(0.0088 / max((g_prog / g_max)^0.65, 1e-3), 0.2)``,
      ``sigma = Q * sqrt(ln((t + t_read) / (2 t_read)))``;
      ``g = max(0, g_drift + |g_drift| * read_noise_scale * sigma * xi)``.
      Read noise is present at every ``t_inference``, 0 included.

    Every term scales with ``g_max``: the relative weight noise does not
    depend on it. All fields are pytree data fields (``jax.vmap`` over a
    batch of models works).

    **Random draws.** Each device draws two 32-bit random words, which give
    its three normals by the inverse normal CDF: 24 bits each for the
    programming and read normals (tails to 5.4 sigma), 16 bits for the
    drift normal (65,536 equally likely values, tails to 4.3 sigma: the
    mean and std of the drift exponent change by less than 2e-5, relative).
    The static switch ``read_noise`` decides whether the read-noise term is
    computed; ``read_noise_scale`` is its size, data like every other field
    (a literal 0 and a traced 0 give the same, as does ``read_noise=False``).

    The fields are checked when the model is built (``ValueError`` naming
    the field): ``c0``-``c2`` finite, scales >= 0, ``t0`` and ``t_read`` > 0.

    Attributes:
        prog_noise_scale: Multiplier of the programming noise.
        read_noise_scale: Multiplier of the read noise (used when ``read_noise``).
        drift_scale: Multiplier of the drift exponent.
        t0: Time (s) after programming at which drift starts.
        t_read: Read duration (s) in the 1/f noise term.
        c0: Programming-noise coefficient (constant), fitted at 25 uS.
        c1: Programming-noise coefficient (linear).
        c2: Programming-noise coefficient (quadratic).
        read_noise: Whether to compute the read-noise term: a static switch
            (part of the tree structure, fixed under ``jax.jit``). ``False``
            skips the term and its draw; with a concrete non-zero
            ``read_noise_scale`` that is refused rather than ignored.

    References:
        S. R. Nandakumar et al., "Phase-change memory models for deep
        learning training and inference", ICECS 2019; aihwkit
        ``PCMLikeNoiseModel``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fusion_jax.noise import PCMLikeNoise
        >>> g = jnp.array([0.0, 10.0, 25.0])
        >>> out = PCMLikeNoise().sample(g, jax.random.key(0), g_max=25.0, t_inference=3600.0)
        >>> out.shape, bool(jnp.all(out >= 0))
        ((3,), True)
        >>> PCMLikeNoise(0.0, 0.0, 0.0).sample(g, jax.random.key(0), g_max=25.0, t_inference=0.0)
        Array([ 0., 10., 25.], dtype=float32)
    """

    #: Each read-back depends only on its own target (for a fixed key): see fj.NoiseModel.
    elementwise: ClassVar[bool] = True

    prog_noise_scale: float | Array = 1.0
    read_noise_scale: float | Array = 1.0
    drift_scale: float | Array = 1.0
    t0: float | Array = 20.0
    t_read: float | Array = 250e-9
    c0: float | Array = 0.26348
    c1: float | Array = 1.9650
    c2: float | Array = -1.1731
    read_noise: bool = dataclasses.field(default=True, metadata={"static": True})

    def __post_init__(self) -> None:
        _validation.check_model_fields(
            self,
            finite=("c0", "c1", "c2"),
            non_negative=("prog_noise_scale", "read_noise_scale", "drift_scale"),
            positive=("t0", "t_read"),
        )

    def sample(
        self,
        conductances: Float[ArrayLike, "*shape"],
        key: PRNGKeyArray,
        *,
        g_max: Float[ArrayLike, ""],
        t_inference: Float[ArrayLike, ""],
    ) -> Float[Array, "*shape"]:
        """Conductances read ``t_inference`` seconds after programming ``conductances``.

        Args:
            conductances: Target conductances in uS (>= 0), any shape.
            key: PRNG key; two 32-bit words per device are drawn from it,
                giving independent normals per device and per term (see
                **Random draws** above). Same key, same result.
            g_max: Largest target conductance in uS, in [10, 40].
            t_inference: Seconds since programming (>= 0).

        Returns:
            The noisy conductances, shape and dtype of ``conductances``,
            never negative. Differentiable w.r.t. ``conductances``,
            ``g_max``, ``t_inference`` and the fields (for a fixed key).

        Raises:
            ArgumentError: for a concrete ``g_max`` outside [10, 40].
            ValueError: for concrete negative or non-finite conductances
                (or, x64 off, float64 ones beyond float32's range), or a
                ``t_inference`` that is NaN, Inf or negative. (The fields
                are checked when the model is built.)
            TypeError: for a key that is not a PRNG key, or a non-numeric
                ``t_inference``.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from fusion_jax.noise import PCMLikeNoise
            >>> g = jnp.full((4096,), 20.0)
            >>> model = PCMLikeNoise(read_noise_scale=0.0)
            >>> out = model.sample(g, jax.random.key(1), g_max=25.0, t_inference=0.0)
            >>> round(float(out.std()), 1)   # sigma_prog at 20 of 25 uS
            1.1
        """
        g = _as_conductances(conductances)
        _check_sample_args(self, key, g_max, t_inference)
        out_dtype = g.dtype
        dtype = _compute_dtype(out_dtype)
        g = g.astype(dtype)
        g_max = jnp.asarray(g_max, dtype)
        t = jnp.asarray(t_inference, dtype) + self.t0
        with_read = _read_noise_on(self)
        xi_prog, xi_drift, xi_read = _pcm_draws(key, g.shape, dtype, with_read=with_read)

        rel = g / g_max
        sigma_prog = (self.c0 + self.c1 * rel + self.c2 * rel**2) * (g_max / PCM_PROG_G_REF)
        g_prog = jnp.maximum(g + self.prog_noise_scale * sigma_prog * xi_prog, 0.0)
        nu = _drift_exponent(rel, xi_drift, self.drift_scale)
        # (t / t0)^(-nu) where t > t0; the log is 0 (no drift) otherwise.
        g_drift = g_prog * jnp.exp(-nu * jnp.log(jnp.maximum(t, self.t0) / self.t0))
        if not with_read:
            return g_drift.astype(out_dtype)
        out = _add_read_noise(
            g_drift, g_prog / g_max, xi_read, self.read_noise_scale, t, self.t_read
        )
        return out.astype(out_dtype)


# --------------------------------------------------------------------------
# FusionChipNoise
# --------------------------------------------------------------------------


def _poly(coefs: Any, x: jax.Array) -> jax.Array:
    """``sum_k coefs[k] * x**k`` (ascending coefficients, Horner)."""
    out = jnp.zeros_like(x) + coefs[-1]
    for c in reversed(tuple(coefs)[:-1]):
        out = out * x + c
    return out


def _log_target(g: jax.Array, g_floor: Any, g_ref: Any) -> jax.Array:
    """``ln(max(g, g_floor) / g_ref)``: finite with a finite derivative at g = 0."""
    return jnp.log(jnp.maximum(g, g_floor) / g_ref)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FusionChipNoise:
    """What the real Fusion chip reads back for a target conductance.

    A censored, shifted log-normal in absolute uS, fitted on the real chip's
    LeNet5 read-back (:func:`calibrate`). With ``l = ln(max(gT, g_floor) / g_ref)``
    and ``xi`` a standard normal draw per device:

    * ``m(gT) = a0 + a1 l + a2 l^2 + a3 l^3`` (``log_median_coefs``),
    * ``s(gT) = spread_scale * exp(b0 + b1 l + b2 l^2)`` (``log_spread_coefs``),
    * latent read-back ``L = exp(m + s xi) - shift`` (uS; its median is
      ``exp(m) - shift``, its mean and std are :meth:`latent_mean` and
      :meth:`latent_std`),
    * read-back ``R = max(0, L)``, and ``R = 0`` for a device stuck at zero
      (probability ``stuck_probability``).

    The latent mean carries the chip's gain and offset (about
    ``0.49 * gT - 0.36`` uS from 2 to 20 uS, steeper above: 23.3 uS at 40);
    the clamp at 0 gives the zero read-backs of small targets; the latent
    std grows from 0.31 uS at a 1 uS target to 0.88 at 5, 1.75 at 20 and
    2.8 at 40 uS. The log-normal shape (right skew, few zeros for targets
    above about 1 uS) is what the data shows; a normal latent cannot match
    both the spread and the zero fraction of the smallest targets.

    **g_max.** The model was fitted at g_max = 40 uS. It is a function of the
    target in absolute uS: gain, offset and spread apply to the target
    conductance whatever g_max produced it, so ``g_max`` is accepted (and
    checked) but not used. At a smaller g_max, targets are smaller and the
    spread, which does not shrink in proportion, is larger relative to them:
    this is what makes g_max matter on the chip.

    **Time.** The calibrated distribution is the chip's state at
    ``t_calibration`` seconds after programming. Other times add PCM drift
    relative to it, ``R(t) = R * ((t + t0) / (t_calibration + t0))^(-nu)``,
    with a per-device exponent ``nu`` from the PCM drift statistics of
    :class:`PCMLikeNoise` at ``gT / g_ref`` (times ``drift_scale``), then
    optional 1/f read noise (``read_noise=True`` with ``read_noise_scale``;
    off by default: the calibrated spread already contains the chip's read
    noise). At
    ``t_inference == t_calibration`` the sample is exactly the calibrated
    distribution; earlier times (``t_inference = 0`` included) are the
    extrapolation back, with less drift (mean conductance about 1.3x the
    read-back's at 20 to 40 uS, 1.5x at 2 uS).

    ``t_calibration = 3600`` s is an assumption: the data does not record
    when the chip was read. We assume the read-back the chip service returned
    was taken minutes to hours after programming and use one hour, a common
    reference time of PCM drift studies. Attributing the whole observed gain
    (about 0.55) to drift with the PCM exponents instead (mean ``nu`` 0.049
    at large targets) would put the read-back about six weeks after
    programming and still leave the offset of about -0.8 uS unexplained, so
    the gain is taken to include the chip's read-out scaling.

    **Random draws.** Each device draws two 32-bit random words: 24 bits
    give the latent normal ``xi`` by the inverse normal CDF (tails to 5.4
    sigma), 16 bits the drift normal (65,536 equally likely values, tails to
    4.3 sigma: the mean and std of the drift exponent change by less than
    2e-5, relative), and the remaining 24 bits a uniform for the stuck mask
    (the stuck fraction is ``stuck_probability`` to within 3e-8; 16 bits
    would round it to a multiple of 1.5e-5, up to 1.7% off the calibrated
    4.6e-4). Read noise, when
    on, draws a third word from a key of its own, so switching it on leaves
    the other draws as they were; with ``read_noise=False`` (the default)
    nothing is drawn for it. Same key, same result.

    The fields are checked when the model is built (``ValueError`` naming
    the field): coefficients finite, ``stuck_probability`` in [0, 1],
    scales and ``t_calibration`` >= 0, ``shift``, ``t0``, ``t_read``,
    ``g_ref`` and ``g_floor`` > 0.

    Attributes:
        log_median_coefs: ``(a0, a1, a2, a3)``: ``ln(latent median + shift)``
            as a cubic in ``l``.
        log_spread_coefs: ``(b0, b1, b2)``: log of the log-spread ``s`` as a
            quadratic in ``l``.
        shift: ``c`` (uS, > 0): the latent is a log-normal shifted down by it.
        stuck_probability: Probability that a device reads 0 whatever its target.
        spread_scale: Multiplier of ``s`` (0: no device-to-device spread,
            only gain, offset and clamp).
        t_calibration: Seconds after programming that the calibrated
            distribution describes (assumed, see above).
        drift_scale: Multiplier of the drift exponent for other times.
        read_noise_scale: Multiplier of extra 1/f read noise (used when ``read_noise``).
        t0: Time (s) after programming at which drift starts.
        t_read: Read duration (s) in the 1/f noise term.
        g_ref: The chip's full conductance range (uS): normalises the target
            in the polynomials and in the PCM drift and read statistics.
        g_floor: Targets below this (uS) are treated as this (all but
            certainly read back as 0).
        read_noise: Whether to add the 1/f read noise (static switch, as for
            :class:`PCMLikeNoise`; off by default: the calibrated spread
            already contains the chip's read noise).

    References:
        Real chip data: IBM AI Hardware Center "Composer" LeNet5 read-back
        (``fusion_jax/data/fusion_lenet5``, see its README); drift
        statistics: S. R. Nandakumar et al., ICECS 2019.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fusion_jax.noise import FusionChipNoise
        >>> model = FusionChipNoise.lenet5_readback()
        >>> g = jnp.linspace(0.0, 40.0, 5)
        >>> r = model.sample(g, jax.random.key(0), g_max=40.0, t_inference=model.t_calibration)
        >>> r.shape, bool(jnp.all(r >= 0))
        ((5,), True)
        >>> [round(float(v), 1) for v in model.latent_mean(jnp.array([10.0, 40.0]))]
        [4.5, 23.3]
    """

    #: Each read-back depends only on its own target (for a fixed key): see fj.NoiseModel.
    elementwise: ClassVar[bool] = True

    log_median_coefs: tuple[float | Array, ...]
    log_spread_coefs: tuple[float | Array, ...]
    shift: float | Array
    stuck_probability: float | Array
    spread_scale: float | Array = 1.0
    t_calibration: float | Array = 3600.0
    drift_scale: float | Array = 1.0
    read_noise_scale: float | Array = 0.0
    t0: float | Array = 20.0
    t_read: float | Array = 250e-9
    g_ref: float | Array = 40.0
    g_floor: float | Array = 0.1
    read_noise: bool = dataclasses.field(default=False, metadata={"static": True})

    def __post_init__(self) -> None:
        for name in ("log_median_coefs", "log_spread_coefs"):
            coefs = getattr(self, name)
            if coefs is None or isinstance(coefs, jax.core.Tracer):
                continue  # a placeholder of a pytree spec (vmap in_axes, tree_map)
            if not isinstance(coefs, tuple | list) or len(coefs) == 0:
                raise ValueError(
                    f"FusionChipNoise.{name} must be a non-empty tuple of coefficients, "
                    f"got {coefs!r}."
                )
        _validation.check_model_fields(
            self,
            finite=("log_median_coefs", "log_spread_coefs"),
            non_negative=("spread_scale", "drift_scale", "read_noise_scale", "t_calibration"),
            positive=("shift", "t0", "t_read", "g_ref", "g_floor"),
            probability=("stuck_probability",),
        )

    @classmethod
    def lenet5_readback(cls, **overrides: Any) -> FusionChipNoise:
        """The model calibrated on the shipped real-chip LeNet5 read-back.

        The coefficients are :func:`calibrate` on
        ``fusion_jax.datasets.lenet5_readback()`` (80,016 devices, g_max =
        40 uS), rounded to 4 decimals (the stuck probability to 3
        significant digits).

        Args:
            **overrides: Fields to change (for example ``spread_scale=0.5``
                or ``drift_scale=0.0``).

        Returns:
            A :class:`FusionChipNoise`.

        Example:
            >>> from fusion_jax.noise import FusionChipNoise
            >>> FusionChipNoise.lenet5_readback(spread_scale=0.5).spread_scale
            0.5
        """
        fitted = dict(
            log_median_coefs=(3.1419, 1.4247, 0.2398, 0.0576),
            log_spread_coefs=(-2.1214, -0.5919, -0.0110),
            shift=0.0491,
            stuck_probability=0.000461,
        )
        return cls(**{**fitted, **overrides})

    def _log_params(self, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(m, s)`` of the latent log-normal for targets ``g``."""
        ell = _log_target(g, self.g_floor, self.g_ref)
        m = _poly(self.log_median_coefs, ell)
        s = self.spread_scale * jnp.exp(_poly(self.log_spread_coefs, ell))
        return m, s

    def latent_mean(self, conductances: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Mean (uS) of the latent, pre-clamp read-back at ``t_calibration``.

        Args:
            conductances: Target conductances in uS.

        Returns:
            ``exp(m + s^2 / 2) - shift``, shape of ``conductances``.

        Example:
            >>> from fusion_jax.noise import FusionChipNoise
            >>> round(float(FusionChipNoise.lenet5_readback().latent_mean(20.0)), 1)
            9.6
        """
        m, s = self._log_params(_as_float(conductances))
        return jnp.exp(m + 0.5 * s**2) - self.shift

    def latent_std(self, conductances: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Standard deviation (uS) of the latent read-back at ``t_calibration``.

        Args:
            conductances: Target conductances in uS.

        Returns:
            ``exp(m + s^2 / 2) * sqrt(exp(s^2) - 1)``, shape of ``conductances``.

        Example:
            >>> from fusion_jax.noise import FusionChipNoise
            >>> round(float(FusionChipNoise.lenet5_readback().latent_std(40.0)), 1)
            2.8
        """
        m, s = self._log_params(_as_float(conductances))
        return jnp.exp(m + 0.5 * s**2) * jnp.sqrt(jnp.expm1(s**2))

    def sample(
        self,
        conductances: Float[ArrayLike, "*shape"],
        key: PRNGKeyArray,
        *,
        g_max: Float[ArrayLike, ""],
        t_inference: Float[ArrayLike, ""],
    ) -> Float[Array, "*shape"]:
        """Conductances the chip reads back ``t_inference`` s after programming.

        Args:
            conductances: Target conductances in uS (>= 0), any shape.
            key: PRNG key; two 32-bit words per device give the latent
                normal, the drift normal and the stuck mask, a third the
                read normal when read noise is on (see **Random draws**
                above). Same key, same result.
            g_max: The g_max the targets were converted with, in [10, 40];
                checked but not used (the model works in absolute uS).
            t_inference: Seconds since programming (>= 0); at
                ``t_calibration`` the calibrated distribution itself.

        Returns:
            Read-back conductances, shape and dtype of ``conductances``,
            never negative. Differentiable w.r.t. ``conductances`` and the
            fields for a fixed key (zero derivative where clamped at 0).

        Raises:
            ArgumentError: for a concrete ``g_max`` outside [10, 40].
            ValueError: for concrete negative or non-finite conductances
                (or, x64 off, float64 ones beyond float32's range), or a
                ``t_inference`` that is NaN, Inf or negative. (The fields
                are checked when the model is built.)
            TypeError: for a key that is not a PRNG key, or a non-numeric
                ``t_inference``.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from fusion_jax.noise import FusionChipNoise
            >>> model = FusionChipNoise.lenet5_readback()
            >>> g = jnp.full((20000,), 30.0)
            >>> r = model.sample(g, jax.random.key(0), g_max=40.0, t_inference=3600.0)
            >>> round(float(r.mean()), 0), round(float(r.std()), 0)
            (16.0, 2.0)
            >>> r_year = model.sample(g, jax.random.key(0), g_max=40.0, t_inference=3.15e7)
            >>> bool(r_year.mean() < r.mean())
            True
        """
        g = _as_conductances(conductances)
        _check_sample_args(self, key, g_max, t_inference)
        out_dtype = g.dtype
        dtype = _compute_dtype(out_dtype)
        g = g.astype(dtype)
        with_read = _read_noise_on(self)
        xi, xi_drift, stuck, xi_read = _chip_draws(
            key, g.shape, dtype, self.stuck_probability, with_read=with_read
        )

        m, s = self._log_params(g)
        r_cal = jnp.where(stuck, 0.0, jnp.maximum(jnp.exp(m + s * xi) - self.shift, 0.0))

        t = jnp.asarray(t_inference, dtype) + self.t0
        nu = _drift_exponent(g / self.g_ref, xi_drift, self.drift_scale)
        r = r_cal * jnp.exp(-nu * (jnp.log(t) - jnp.log(self.t_calibration + self.t0)))
        if with_read:
            r = _add_read_noise(
                r, r_cal / self.g_ref, xi_read, self.read_noise_scale, t, self.t_read
            )
        return r.astype(out_dtype)


def _as_float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def default_noise() -> FusionChipNoise:
    """The default noise model of :func:`fusion_jax.program`.

    Returns:
        ``FusionChipNoise.lenet5_readback()``, the model calibrated on the real
        chip's read-back.

    Example:
        >>> from fusion_jax.noise import default_noise
        >>> default_noise().t_calibration
        3600.0
    """
    return FusionChipNoise.lenet5_readback()


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


def _prepare_pair(
    targets: Any, programmed: Any, min_points: int, need: str
) -> tuple[np.ndarray, ...]:
    """Validated flat float64 copies of a target / read-back pair."""
    arrays = []
    for name, x in (("targets", targets), ("programmed", programmed)):
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}.")
        arrays.append(x)
    t, p = arrays
    if t.shape != p.shape:
        raise ValueError(
            f"targets and programmed must have the same shape (one read-back per target), "
            f"got {t.shape} and {p.shape}."
        )
    for name, x in (("targets", t), ("programmed", p)):
        bad = ~np.isfinite(x)
        if bad.any():
            raise ValueError(
                f"{name} contain {int(bad.sum())} NaN or Inf values "
                f"(first at flat index {int(np.flatnonzero(bad.ravel())[0])})."
            )
        if (x < 0).any():
            raise ValueError(
                f"{name} must be conductances >= 0 uS; {int((x < 0).sum())} are negative "
                f"(smallest {float(x.min()):.4g})."
            )
    if t.size < min_points:
        raise ValueError(
            f"{need} needs at least {min_points} target / read-back pairs, got {t.size}."
        )
    return t.astype(np.float64).ravel(), p.astype(np.float64).ravel()


def _check_targets_in_range(t: np.ndarray, g_max: float, shape: tuple[int, ...]) -> None:
    """Refuse targets above ``g_max``: the chip cannot hold them, a fit would chase them."""
    above = np.flatnonzero(t > g_max)
    if above.size == 0:
        return
    where = [tuple(int(i) for i in np.unravel_index(k, shape)) for k in above[:8]]
    shown = [w[0] if len(w) == 1 else w for w in where]
    more = f" and {above.size - 8} more" if above.size > 8 else ""
    raise ValueError(
        f"targets must lie in [0, g_max = {g_max:g}] uS, the chip's range; {above.size} of "
        f"{t.size} exceed it (largest {float(t[above].max()):.6g}) at positions {shown}{more}."
    )


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
    over each bin's own targets. Levenberg-Marquardt (float64, JAX) fits the
    9 parameters so that each bin's mean, variance and fraction of zeros
    match the data, each residual divided by its standard error (mean and
    variance: from the data; zero fraction: binomial under the model,
    iteratively reweighted, so that part is the binomial maximum
    likelihood). The fit is deterministic.

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
        max_iter: Maximum Levenberg-Marquardt iterations (>= 1).
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
    if not isinstance(n_fit_bins, int | np.integer) or n_fit_bins < 8:
        raise ValueError(f"n_fit_bins must be an integer >= 8, got {n_fit_bins!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    _validation.check_g_max(g_max)
    _check_time(t_calibration, "t_calibration")
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
    theta = _initial_theta(ell_bin, stats)

    with jax.enable_x64(True):
        args = (jnp.asarray(ell), jnp.asarray(bins), jnp.asarray(stats))
        theta = _levenberg_marquardt(theta, args, n_bins, max_iter)
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


def _levenberg_marquardt(
    theta: np.ndarray, args: tuple[jax.Array, ...], n_bins: int, max_iter: int
) -> np.ndarray:
    """Minimise half the squared moment residuals (float64, deterministic).

    Each iteration fixes the zero-fraction weights at the current parameters,
    then takes one damped Gauss-Newton step on that weighted least squares.
    """

    def residuals(th: np.ndarray, se_zero: jax.Array) -> np.ndarray:
        return np.asarray(_moment_residuals(jnp.asarray(th), *args, se_zero, n_bins=n_bins))

    def clamp(th: np.ndarray) -> np.ndarray:
        th = th.copy()
        th[-1] = np.clip(th[-1], *_LOGIT_RANGE)
        return th

    damping = 1e-2
    for _ in range(max_iter):
        th = jnp.asarray(theta)
        se_zero = _zero_fraction_se(th, *args, n_bins=n_bins)
        r = residuals(theta, se_zero)
        f = 0.5 * float(r @ r)
        if not np.isfinite(f):
            raise ValueError("calibration failed: the model's moments became non-finite.")
        jac = np.asarray(_jacobian(th, *args, se_zero, n_bins=n_bins))
        grad, hess = jac.T @ r, jac.T @ jac
        diag = np.diag(np.maximum(np.diag(hess), 1e-12))
        while True:
            candidate = clamp(theta - np.linalg.solve(hess + damping * diag, grad))
            r_new = residuals(candidate, se_zero)
            f_new = 0.5 * float(r_new @ r_new)
            if np.isfinite(f_new) and f_new < f:
                break
            damping *= 4.0
            if damping > 1e12:
                return theta  # no descent direction left: converged
        converged = f - f_new <= 1e-12 * f or np.max(np.abs(candidate - theta)) < 1e-9
        theta = candidate
        damping = max(damping / 3.0, 1e-9)
        if converged:
            return theta
    raise ValueError(
        f"calibration did not converge in {max_iter} iterations (cost {f:.6g}); "
        "raise max_iter or check the data."
    )


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
