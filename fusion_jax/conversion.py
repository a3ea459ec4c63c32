"""Weights to Fusion-chip conductances and back, vectorised over rows.

Layout is the reference's: ``[..., out, in]``, one row per output; every
per-row quantity reduces over the last axis. Leading axes are a batch of
independent matrices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _validation
from fusion_jax.regression import _slope

__all__ = ["FusionParams", "convert_back_to_weights", "convert_to_conductances"]

#: Floor of the per-row weight magnitude before scaling (the reference's).
SCALE_EPS = 1e-10


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FusionParams:
    """What the export keeps for the import: the original weights.

    A pytree, so it passes through ``jax.jit``, ``jax.vmap`` and
    ``jax.tree_util`` like an array. As in the reference, neither the sign nor
    the scale is stored: the import recovers both from ``original_weights``.

    Attributes:
        original_weights: The weights that were converted, ``[..., out, in]``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> g, params = fj.convert_to_conductances(jnp.array([[1.0, -2.0]]))
        >>> params.as_dict()["original_weights"]
        Array([[ 1., -2.]], dtype=float32)
        >>> len(jax.tree_util.tree_leaves(params))
        1
    """

    original_weights: Float[Array, "*batch out in"]

    def as_dict(self) -> dict[str, jax.Array]:
        """The reference's params dict, ``{"original_weights": w}``."""
        return {"original_weights": self.original_weights}


@jax.custom_jvp
def _clip_keep_boundary(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """``clip(x, lo, hi)`` whose derivative is 1 on the closed interval.

    Each row's largest weight lands exactly on ``g_max``; ``jnp.clip``'s
    derivative there is 0.5 (ties of min/max), which would break the exact
    Jacobian of the round trip.
    """
    return jnp.clip(x, lo, hi)


@_clip_keep_boundary.defjvp
def _clip_keep_boundary_jvp(primals, tangents):
    x, lo, hi = primals
    dx, dlo, dhi = tangents
    out = jnp.clip(x, lo, hi)
    inside = (x >= lo) & (x <= hi)
    zero = jnp.zeros_like(out)
    dlo = jnp.broadcast_to(dlo, out.shape) if jnp.ndim(dlo) else dlo
    dhi = jnp.broadcast_to(dhi, out.shape) if jnp.ndim(dhi) else dhi
    tangent = jnp.where(inside, dx, jnp.where(x < lo, zero + dlo, zero + dhi))
    return out, tangent


def _prepare_weights(
    weights: Any, name: str = "weights", check_name: str | None = None
) -> jax.Array:
    """``weights`` checked as a stack of rows; ``check_name`` (default ``name``) names them in
    the value checks (a traced caller's layer or leaf: its other errors are restated)."""
    w = _validation.as_matrix_stack(weights, name)
    _validation.check_finite(w, check_name or name)
    _validation.check_row_scale(w, check_name or name)
    return w


def _prepare_g_max(g_max: Any, dtype: Any, where: str | None = None) -> jax.Array:
    """``g_max`` checked (errors name ``where``, or give the reference's message) and cast."""
    if jnp.ndim(g_max) != 0:
        raise _validation.ArgumentError(
            f"g_max must be a scalar, got shape {jnp.shape(g_max)}; to sweep several values "
            "use jax.vmap over g_max or fj.sweep."
        )
    _validation.check_g_max(g_max, where=where)
    return jnp.asarray(g_max, dtype=dtype)


def _signed_conductances(
    w: jax.Array, g_max: jax.Array, axis: int = -1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Signed target conductances ``sign(w) * clip(|w * s|, 0, g_max)``.

    Each line along ``axis`` (a row ``[..., out, in]`` for ``-1``, a Flax
    kernel's column for ``-2``) is one output. Returns ``(x, scale,
    row_max)`` with ``scale`` and ``row_max`` kept as size-1 ``axis``.
    Computed as ``clip(w * s, -g_max, g_max)``: the same values, without the
    kink of ``abs`` at 0 in the derivative.
    """
    row_max = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
    scale = _row_scale(row_max, g_max)
    x = _clip_keep_boundary(w * scale, -g_max, g_max)
    return x, scale, row_max


def _row_scale(row_max: jax.Array, g_max: jax.Array) -> jax.Array:
    """``g_max / max(row_max, 1e-10)`` rounded as torch rounds it, over the whole float range.

    torch (aihwkit) evaluates ``number / tensor`` as ``reciprocal(tensor) *
    number``: two roundings, which an export byte-identical to aihwkit's
    must repeat (a plain division differs in the last bit on about a third
    of the rows). For ``row_max`` within a factor 4 of the dtype's largest
    finite value, ``1 / row_max`` is subnormal, which CPUs and GPUs flush to
    0. Those rows divide both operands by 16 first: exact (powers of two),
    no subnormal on the way.
    """
    m = jnp.maximum(row_max, SCALE_EPS)
    big = jax.lax.stop_gradient(m) >= 2.0 ** (jnp.finfo(m.dtype).maxexp - 2)
    k = jnp.where(big, jnp.asarray(1.0 / 16.0, m.dtype), jnp.asarray(1.0, m.dtype))
    # torch's rounding: the reciprocal, then the product.
    return (1.0 / (m * k)) * (g_max * k)


def convert_to_conductances(
    weights: Float[ArrayLike, "*batch out in"],
    g_max: float | ArrayLike = 40.0,
) -> tuple[Float[Array, "*batch out in"], FusionParams]:
    """Map weights to Fusion-chip target conductances in uS.

    For each output row ``r``: ``s_r = g_max / max(max_j |W_rj|, 1e-10)`` and
    ``G_rj = clip(|W_rj * s_r|, 0, g_max)``. One jitted, vectorised
    computation; leading axes of ``weights`` are independent matrices.

    Args:
        weights: Weights in the reference layout ``[..., out, in]`` (one row
            per output; for Flax kernels see :mod:`fusion_jax.layout`).
            float32/float64 are computed natively, float16/bfloat16 in
            float32 and returned in their own dtype, integers as float32.
        g_max: Largest conductance in uS, in [10, 40]: a Python number, a
            NumPy or JAX scalar, or a traced value (``jax.vmap``/``jax.jit``
            over it compiles once).

    Returns:
        ``(conductances, params)``: the conductances, shape of ``weights``,
        and a :class:`FusionParams` holding the original weights for
        :func:`convert_back_to_weights`.

    Raises:
        ArgumentError: if a concrete ``g_max`` is outside [10, 40] (a traced
            one is reported by ``jax.experimental.checkify``).
        ValueError: if ``weights`` has fewer than 2 dimensions, an empty last
            axis, NaN/Inf values (how many, and in which rows), or rows too
            small to program (largest magnitude below 3.0e-36 in float32).

    References:
        aihwkit ``FusionConductanceConverter.convert_to_conductances``.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> w = jnp.array([[0.5, -1.0, 0.25], [2.0, 0.0, -4.0]])
        >>> g, params = fj.convert_to_conductances(w, g_max=40.0)
        >>> g
        Array([[20., 40., 10.],
               [20.,  0., 40.]], dtype=float32)
    """
    w = _prepare_weights(weights)
    out_dtype = _validation.result_dtype(w.dtype)
    dtype = _validation.compute_dtype(w.dtype)
    g = _prepare_g_max(g_max, dtype)
    return _to_conductances_jit(w, g, dtype=dtype, out_dtype=out_dtype)


@functools.partial(jax.jit, static_argnames=("dtype", "out_dtype"), inline=True)
def _to_conductances_jit(
    w: jax.Array, g_max: jax.Array, *, dtype: Any, out_dtype: Any
) -> tuple[jax.Array, FusionParams]:
    x, _, _ = _signed_conductances(w.astype(dtype), g_max)
    return jnp.abs(x).astype(out_dtype), FusionParams(original_weights=w.astype(out_dtype))


def _original_weights(params: FusionParams | Mapping[str, Any]) -> Any:
    if isinstance(params, FusionParams):
        return params.original_weights
    if isinstance(params, Mapping):
        if "original_weights" not in params:
            raise ValueError("params do not contain original_weights")
        return params["original_weights"]
    raise TypeError(
        "params must be a FusionParams or a dict with 'original_weights', "
        f"got {type(params).__name__}."
    )


def _reconstruct(
    x: jax.Array,
    w: jax.Array,
    *,
    strict_aihwkit: bool,
    x_scale: jax.Array | None = None,
    y_scale: jax.Array | None = None,
    zero_default: jax.Array | None = None,
    axis: int = -1,
) -> jax.Array:
    """``slope_r * x_r`` per line (along ``axis``), the slope fitted of ``w`` on signed ``x``."""
    slope = _slope(
        x,
        w,
        strict_aihwkit=strict_aihwkit,
        x_scale=x_scale,
        y_scale=y_scale,
        zero_default=zero_default,
        axis=axis,
    )
    return jnp.expand_dims(slope, axis) * x


def convert_back_to_weights(
    conductances: Float[ArrayLike, "*batch out in"],
    params: FusionParams | Mapping[str, Any],
    *,
    strict_aihwkit: bool = False,
) -> Float[Array, "*batch out in"]:
    """Reconstruct weights from (programmed) conductances.

    With ``X = G * sign(W)`` and ``W`` the original weights, fits per row the
    least-squares line ``W_r = a_r X_r + b_r`` (intercept fitted, as
    scikit-learn does) and returns ``a_r * X_r``. For noise-free conductances
    this is ``W`` to float rounding; for programmed ones, ``a_r`` is each
    row's gain against the intended weights (per-row drift compensation).

    Args:
        conductances: Conductances in uS, same shape as the original weights.
        params: The :class:`FusionParams` from :func:`convert_to_conductances`,
            or the reference's dict ``{"original_weights": W}``.
        strict_aihwkit: On degenerate rows, reproduce the reference, which
            returns 0 for the whole row: rows where ``X`` has zero variance
            (constant rows, single-input layers) and rows whose original
            weights are all equal (their slope is 0 once the intercept is
            fitted). By default those rows use the least-squares slope
            through the origin, which loses no weights.

    Returns:
        The reconstructed weights, shape and dtype of the original weights.

    Raises:
        ValueError: if ``params`` lacks ``original_weights``, the shapes differ,
            or the conductances hold NaN/Inf or negative values (conductances
            are magnitudes; the sign comes from the original weights).
        FloatingPointError: if the read-back overflows the weights' dtype.

    References:
        aihwkit ``FusionConductanceConverter.convert_back_to_weights``;
        ``../shared/REFERENCE.md``.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> w = jnp.array([[0.3, 0.3, 0.3], [1.0, -2.0, 0.5]])
        >>> g, params = fj.convert_to_conductances(w)
        >>> fj.convert_back_to_weights(g, params)
        Array([[ 0.3,  0.3,  0.3],
               [ 1. , -2. ,  0.5]], dtype=float32)
        >>> fj.convert_back_to_weights(g, params, strict_aihwkit=True)
        Array([[ 0. ,  0. ,  0. ],
               [ 1. , -2. ,  0.5]], dtype=float32)
    """
    if isinstance(conductances, list | tuple):
        raise TypeError(
            "conductances must be one array; the class API "
            "FusionConductanceConverter.convert_back_to_weights takes the list [G]."
        )
    _validation.check_flag(strict_aihwkit, "strict_aihwkit", "convert_back_to_weights")
    w = _prepare_weights(_original_weights(params), "original_weights")
    g = _validation.as_matrix_stack(conductances, "conductances")
    if g.shape != w.shape:
        raise ValueError(
            f"conductances shape {tuple(g.shape)} differs from the original weights "
            f"shape {tuple(w.shape)}."
        )
    _validation.check_finite(g, "conductances")
    _validation.check_non_negative(g, "conductances")
    out_dtype = _validation.result_dtype(w.dtype)
    dtype = _validation.compute_dtype(jnp.result_type(w.dtype, g.dtype))
    w_hat = _to_weights_jit(
        g, w, strict_aihwkit=bool(strict_aihwkit), dtype=dtype, out_dtype=out_dtype
    )
    _validation.check_read_back(w_hat, "convert_back_to_weights")
    return w_hat


@functools.partial(jax.jit, static_argnames=("strict_aihwkit", "dtype", "out_dtype"), inline=True)
def _to_weights_jit(
    g: jax.Array, w: jax.Array, *, strict_aihwkit: bool, dtype: Any, out_dtype: Any
) -> jax.Array:
    wc = w.astype(dtype)
    x = g.astype(dtype) * jnp.sign(wc)
    return _reconstruct(x, wc, strict_aihwkit=strict_aihwkit).astype(out_dtype)
