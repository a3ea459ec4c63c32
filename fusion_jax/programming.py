"""Simulated programming of weights onto the Fusion chip, in the gradient path."""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation, tiles
from fusion_jax._fusion import materialize_fn
from fusion_jax.conversion import (
    SCALE_EPS,
    _clip_keep_boundary,
    _prepare_g_max,
    _prepare_weights,
    _signed_conductances,
)
from fusion_jax.regression import SlopeLinearization, _slope

__all__ = ["DEFAULT_NOISE", "GradientMode", "NoiseModel", "program"]

GradientMode = Literal["exact", "ste"]


@runtime_checkable
class NoiseModel(Protocol):
    """What :func:`program` needs of a conductance-space noise model.

    A noise model is a pytree (its numeric fields can be traced or vmapped)
    with a ``sample`` method mapping target conductances (uS) to the
    conductances read back ``t_inference`` seconds after programming.
    A model whose every read-back depends only on its own target (for a
    fixed key) may say so with a class attribute ``elementwise = True``:
    the exact gradient of :func:`program` then uses its closed form, which
    recomputes the model's derivative from the key in the backward pass
    instead of storing every intermediate of ``sample`` (same gradient, a
    fraction of the memory and of the compiled program). Both built-in
    models do.

    Example:
        A noise model of your own: Gaussian noise of a fixed width in uS.

        >>> import dataclasses, jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> @jax.tree_util.register_dataclass
        ... @dataclasses.dataclass(frozen=True)
        ... class AbsoluteNoise:
        ...     sigma: float = 0.5
        ...     def sample(self, conductances, key, *, g_max, t_inference):
        ...         xi = jax.random.normal(key, conductances.shape, conductances.dtype)
        ...         return jnp.maximum(conductances + self.sigma * xi, 0.0)
        >>> isinstance(AbsoluteNoise(), fj.NoiseModel)
        True
        >>> w = jnp.array([[1.0, -2.0, 0.5]])
        >>> fj.program(w, jax.random.key(0), noise=AbsoluteNoise(0.0))
        Array([[ 1. , -2. ,  0.5]], dtype=float32)
    """

    def sample(
        self,
        conductances: Float[Array, "*shape"],
        key: PRNGKeyArray,
        *,
        g_max: Float[ArrayLike, ""],
        t_inference: Float[ArrayLike, ""],
    ) -> Float[Array, "*shape"]:
        """Read-back conductances for ``conductances`` (uS), never negative."""
        ...


class _DefaultNoise:
    """Sentinel: the chip model calibrated on the real LeNet5 read-back."""

    def __repr__(self) -> str:
        return "DEFAULT_NOISE"


#: Use the default noise model, ``fj.noise.FusionChipNoise.lenet5_readback()``.
DEFAULT_NOISE: Any = _DefaultNoise()


def resolve_noise(noise: Any) -> NoiseModel | None:
    """Turn the ``noise`` argument into a noise model (``None``: noise-free)."""
    if noise is DEFAULT_NOISE:
        from fusion_jax.noise import default_noise

        return default_noise()
    if noise is None:
        return None
    _validation.check_noise_model(noise)
    return noise


def _check_gradient_mode(gradient: str, where: str = "") -> None:
    """Refuse a ``gradient`` other than ``"exact"`` or ``"ste"`` (``where``: who was given it)."""
    if gradient not in ("exact", "ste"):
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}gradient must be 'exact' or 'ste' (straight-through), got {gradient!r}."
        )


def program(
    weights: Float[ArrayLike, "*batch out in"],
    key: PRNGKeyArray | None = None,
    *,
    g_max: float | ArrayLike = 40.0,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float | ArrayLike = 0.0,
    strict_aihwkit: bool = False,
    gradient: GradientMode = "exact",
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
) -> Float[Array, "*batch out in"]:
    """Program weights onto the simulated chip and read them back.

    Converts to conductances (per-row scale and clamp to ``[0, g_max]``),
    applies the noise model in conductance space, and converts back with the
    per-row regression slope against the original weights: the reference's
    export, chip, import path as one differentiable, jittable function.

    Args:
        weights: Weights ``[..., out, in]`` (reference layout, one row per
            output; Flax kernels are ``[..., in, out]``, see
            :mod:`fusion_jax.layout`).
        key: PRNG key for the noise; unused (may be ``None``) when
            ``noise=None``.
        g_max: Largest conductance in uS, in [10, 40]; may be traced.
        noise: A noise model (:mod:`fusion_jax.noise`); by default the chip
            model calibrated on the real LeNet5 read-back; ``None`` for the
            noise-free round trip.
        t_inference: Seconds since programming at which the chip is read;
            0 (the default) is right after programming. The calibrated chip
            model reproduces the real read-back at its ``t_calibration``
            (1 h, an assumption) and drifts from there, so pass
            ``t_inference=3600.0`` for the measured statistics.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        gradient: ``"exact"`` differentiates through scale, clamp, noise and
            regression (exact: the noise-free round trip has the identity as
            its Jacobian); ``"ste"`` is straight-through: the forward value
            is the programmed weights, the gradient passes to the weights
            unchanged.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split). A longer row is split into near-equal tiles
            (:func:`fusion_jax.tiles.split_sizes`), each tile row scaled and
            regressed on its own, as the chip holds and the export writes it.
        max_output_size: Most outputs per tile (0: no split). Splitting the
            outputs changes no value; it is checked and kept for symmetry
            with the export.

    Returns:
        The weights as read back from the simulated chip, shape and dtype of
        ``weights``.

    Raises:
        ArgumentError: for a concrete ``g_max`` outside [10, 40].
        FloatingPointError: if the read-back overflows the weights' dtype (a
            noisy weight near its largest value read back larger; traced:
            reported by ``jax.experimental.checkify``).
        ValueError: for bad weights (see :func:`convert_to_conductances`), a
            missing key when noise is on, an unknown ``gradient``, or a
            ``t_inference`` that is NaN, Inf or negative, or a negative tile
            size.
        TypeError: for a key that is not a PRNG key (an integer seed), a
            noise model class instead of an instance, or a non-numeric
            ``t_inference``.

    References:
        aihwkit ``FusionConductanceConverter``, ``fusion_export`` /
        ``fusion_import``; Nandakumar et al. 2019 (PCM noise).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> w = jnp.array([[1.0, -2.0, 0.5], [0.3, 0.3, 0.3]])
        >>> fj.program(w, noise=None)
        Array([[ 1. , -2. ,  0.5],
               [ 0.3,  0.3,  0.3]], dtype=float32)
        >>> w_chip = fj.program(w, jax.random.key(0), g_max=25.0)
        >>> w_chip.shape
        (2, 3)
    """
    model = _checked_settings(noise, key, gradient, "program", t_inference, strict_aihwkit)
    w = _prepare_weights(weights)
    if w.size == 0:
        raise ValueError(
            f"program: weights is empty (shape {tuple(w.shape)}): weights [..., out, in] need "
            "at least one output row to program."
        )
    sizes = tiles._input_sizes(w.shape[-1], max_input_size, max_output_size, 1, w.shape[-2])
    w_hat, finite = _program_prepared(
        w,
        key,
        g_max,
        model,
        t_inference,
        strict_aihwkit=strict_aihwkit,
        gradient=gradient,
        in_sizes=sizes,
        where="program",
    )
    _validation.check_read_back(w_hat, "program", all_finite=finite)
    return w_hat


def _checked_settings(
    noise: Any,
    key: PRNGKeyArray | None,
    gradient: str,
    caller: str,
    t_inference: Any = 0.0,
    strict_aihwkit: Any = False,
) -> NoiseModel | None:
    """The noise model ``noise`` stands for, after checking every setting but g_max.

    ``gradient`` and ``strict_aihwkit`` here; noise, key and ``t_inference`` by
    :func:`fusion_jax._validation.check_settings`, the one check all entry
    points share.
    """
    _check_gradient_mode(gradient)
    _validation.check_flag(strict_aihwkit, "strict_aihwkit", caller)
    model = resolve_noise(noise)
    _validation.check_settings(where=caller, noise=model, key=key, t_inference=t_inference)
    return model


def _program_prepared(
    w: jax.Array,
    key: PRNGKeyArray | None,
    g_max: Any,
    model: NoiseModel | None,
    t_inference: Any,
    *,
    strict_aihwkit: bool,
    gradient: str,
    axis: int = -1,
    in_sizes: tuple[int, ...] | None = None,
    where: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`program` of validated weights whose lines (outputs) lie along ``axis``.

    ``in_sizes``: the input tile sizes along ``axis`` (None: one tile);
    ``where``: the entry point a g_max error names. Returns the read-back
    and whether all of it is finite (computed on the device, so that an
    eager caller's check fetches one bool, not the array).
    """
    out_dtype = _validation.result_dtype(w.dtype)
    dtype = _validation.compute_dtype(w.dtype)
    g = _prepare_g_max(g_max, dtype, where)
    return _program_jit(
        w,
        key,
        g,
        model,
        jnp.asarray(t_inference, dtype),
        strict_aihwkit=bool(strict_aihwkit),
        gradient=gradient,
        dtype=dtype,
        out_dtype=out_dtype,
        axis=axis,
        in_sizes=None if in_sizes is None or len(in_sizes) == 1 else tuple(in_sizes),
    )


@functools.partial(
    jax.jit,
    static_argnames=("strict_aihwkit", "gradient", "dtype", "out_dtype", "axis", "in_sizes"),
)
def _program_jit(
    w: jax.Array,
    key: PRNGKeyArray | None,
    g_max: jax.Array,
    noise: NoiseModel | None,
    t_inference: jax.Array,
    *,
    strict_aihwkit: bool,
    gradient: str,
    dtype: Any,
    out_dtype: Any,
    axis: int,
    in_sizes: tuple[int, ...] | None,
) -> tuple[jax.Array, jax.Array]:
    # The noise model is data: its fields are traced here (a new value does
    # not recompile); inside an outer jit that closes over Python numbers
    # they are constants XLA can fold. Switches such as ``read_noise`` are
    # static fields of the model.
    wc = w.astype(dtype)
    if gradient == "ste":  # no derivative is traced through the programming at all
        w_hat = _program_core(
            jax.lax.stop_gradient(wc),
            key,
            g_max,
            noise,
            t_inference,
            strict_aihwkit,
            axis,
            in_sizes,
        )
        w_hat = wc + jax.lax.stop_gradient(w_hat - wc)
    else:
        w_hat = _program_core(wc, key, g_max, noise, t_inference, strict_aihwkit, axis, in_sizes)
    w_hat = w_hat.astype(out_dtype)
    return w_hat, jnp.all(jnp.isfinite(w_hat))


def _program_core(
    w: jax.Array,
    key: PRNGKeyArray | None,
    g_max: jax.Array,
    noise: NoiseModel | None,
    t_inference: jax.Array,
    strict_aihwkit: bool,
    axis: int = -1,
    in_sizes: tuple[int, ...] | None = None,
) -> jax.Array:
    """Convert, apply noise, reconstruct (validated inputs, compute dtype; lines along ``axis``).

    With ``in_sizes`` (more than one tile) every tile row is converted and
    regressed on its own (:mod:`fusion_jax.tiles`). The noise model sees all
    devices in one call, in their order in ``w``: the whole array, or its
    reshape into equal tiles ``[..., tiles, size, out]`` (no copy).

    Noise-free, or with a noise model that declares ``elementwise = True``
    (each read-back depends only on its own target, for a fixed key: both
    built-in models), the derivative with respect to the weights is written
    out in closed form (:func:`_programmed_jvp`): the exact derivative of
    the same computation, which keeps one weight-sized array between the
    forward and the backward pass and recomputes the noise's derivative from
    the key. Other noise models, and derivatives with respect to ``g_max``,
    ``t_inference`` or the model's fields, are differentiated by autodiff of
    :func:`_program_autodiff`.
    """
    statics = _Statics(strict_aihwkit, axis, in_sizes)
    if noise is not None and not getattr(noise, "elementwise", False):
        return _program_autodiff(w, key, g_max, noise, t_inference, statics)
    # Python numbers of the model stay Python numbers (constants that XLA
    # can fold); its array fields are arguments of the custom derivative.
    leaves, treedef = jax.tree_util.tree_flatten(noise)
    is_array = tuple(not isinstance(leaf, int | float) for leaf in leaves)
    numbers = tuple(None if a else leaf for a, leaf in zip(is_array, leaves, strict=True))

    def rebuild(arrays: list[Any]) -> NoiseModel | None:
        rest = iter(arrays)
        full = [next(rest) if a else leaf for a, leaf in zip(is_array, numbers, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, full)

    @jax.custom_jvp
    def programmed(
        w: jax.Array, key: Any, g_max: jax.Array, t: jax.Array, arrays: list[Any]
    ) -> jax.Array:
        return _forward(w, key, g_max, rebuild(arrays), t, statics)[0]

    def jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[jax.Array, jax.Array]:
        w, key, g_max, t, arrays = primals
        w_dot, _, *others = tangents
        if any(map(_nonzero, jax.tree_util.tree_leaves(others, is_leaf=_is_zero))):
            # g_max, t_inference or a field is differentiated: plain autodiff.
            def plain(w: jax.Array, g_max: jax.Array, t: jax.Array, arrays: list[Any]):
                return _program_autodiff(w, key, g_max, rebuild(arrays), t, statics)

            instantiated = jax.tree_util.tree_map(_instantiate, (w_dot, *others), is_leaf=_is_zero)
            return jax.jvp(plain, (w, g_max, t, arrays), tuple(instantiated))
        w_hat, xs, fits = _forward(w, key, g_max, rebuild(arrays), t, statics)
        if not _nonzero(w_dot):
            return w_hat, jnp.zeros_like(w_hat)
        # How many elements of each line reach its largest magnitude.
        counts = [_tie_count(jnp.abs(b), statics.axis) for b in statics.split(w)]
        # Recomputed in the backward pass from its inputs (the weights, the
        # read-back ``xs`` and per-line values): nothing else is stored.
        key_data, wrap = _key_as_data(key)
        tangent = jax.checkpoint(
            lambda w, key_data, g_max, t, arrays, xs, fits, counts, w_dot: _programmed_jvp(
                w, wrap(key_data), g_max, rebuild(arrays), t, xs, fits, counts, w_dot, statics
            ),
            policy=jax.checkpoint_policies.nothing_saveable,
        )(w, key_data, g_max, t, arrays, xs, fits, counts, w_dot)
        return w_hat, tangent

    programmed.defjvp(jvp, symbolic_zeros=True)
    arrays = [leaf for a, leaf in zip(is_array, leaves, strict=True) if a]
    return programmed(w, key, g_max, t_inference, arrays)


def _key_as_data(key: Any) -> tuple[Any, Any]:
    """A typed PRNG key as its raw ``uint32`` data, and the function that wraps it back.

    The backward pass then stores raw data, not a typed key: before JAX
    0.10, ``lax.cond`` cannot differentiate a branch that stores a typed key
    (the other branch's placeholder for it has another type), which a
    programming inside a cond, such as a warm-up's, would otherwise hit.
    Other keys (raw keys, ``None``) pass as they are.
    """
    if key is None or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key, lambda data: data
    impl = jax.random.key_impl(key)
    return jax.random.key_data(key), lambda data: jax.random.wrap_key_data(data, impl=impl)


def _tie_count(v: jax.Array, axis: int) -> jax.Array:
    """How many elements of each line of ``v`` (along ``axis``) equal its maximum (keepdims).

    One variadic reduction of maxima and counts, a constant as far as
    derivatives go (an integer sum of ``v == top`` was a tree reduction
    whose partial results XLA kept alive through the backward pass).
    """

    def combine(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        top = jnp.maximum(a[0], b[0])
        count = jnp.where(a[0] == top, a[1], 0.0) + jnp.where(b[0] == top, b[1], 0.0)
        return top, count

    fixed = jax.lax.stop_gradient(v)
    inits = (jnp.asarray(-jnp.inf, v.dtype), jnp.asarray(0.0, v.dtype))
    _, count = jax.lax.reduce((fixed, jnp.ones_like(fixed)), inits, combine, (axis % v.ndim,))
    return jnp.expand_dims(count, axis)


class _LineFit(NamedTuple):
    """Per-line values of one block (all with the line axis kept, size 1)."""

    slope: jax.Array
    lin: SlopeLinearization | None
    row_max: jax.Array
    scale: jax.Array


class _Statics(NamedTuple):
    """The static settings of one programming: degenerate rows, line axis, input tiles."""

    strict_aihwkit: bool
    axis: int
    in_sizes: tuple[int, ...] | None

    def split(self, a: jax.Array) -> list[jax.Array]:
        return [a] if self.in_sizes is None else tiles._split_tiles(a, self.axis, self.in_sizes)

    def join(self, blocks: list[jax.Array]) -> jax.Array:
        return blocks[0] if self.in_sizes is None else tiles._join_tiles(blocks, self.axis)


def _read_back(
    noise: NoiseModel,
    xs: list[jax.Array],
    blocks: list[jax.Array],
    w: jax.Array,
    key: PRNGKeyArray,
    g_max: jax.Array,
    t_inference: jax.Array,
    statics: _Statics,
) -> list[jax.Array]:
    """Signed read-back conductances of the signed targets ``xs`` (one per block)."""
    if len(xs) == 1:  # one block (equal tiles): the noise sees it as it is
        g_read = noise.sample(jnp.abs(xs[0]), key, g_max=g_max, t_inference=t_inference)
        return [g_read.astype(w.dtype) * jnp.sign(blocks[0])]
    g_read = noise.sample(jnp.abs(statics.join(xs)), key, g_max=g_max, t_inference=t_inference)
    return statics.split(g_read.astype(w.dtype) * jnp.sign(w))


def _forward(
    w: jax.Array,
    key: PRNGKeyArray | None,
    g_max: jax.Array,
    noise: NoiseModel | None,
    t_inference: jax.Array,
    statics: _Statics,
    linearize: bool = True,
) -> tuple[jax.Array, list[jax.Array], list[_LineFit]]:
    """The programmed weights, the signed read-back and the per-line values of each block.

    With ``linearize``, each block's slopes come with their
    :class:`~fusion_jax.regression.SlopeLinearization` (else ``None``).
    """
    axis = statics.axis
    blocks = statics.split(w)
    converted = [_signed_conductances(b, g_max, axis) for b in blocks]
    xs = [x for x, _, _ in converted]
    if noise is not None:
        scales = [scale for _, scale, _ in converted]

        def read_back() -> list[jax.Array]:
            # From the weights themselves (the branch's operands are stored).
            blocks = statics.split(w)
            targets = [
                _clip_keep_boundary(b * s, -g_max, g_max)
                for b, s in zip(blocks, scales, strict=True)
            ]
            return _read_back(noise, targets, blocks, w, key, g_max, t_inference, statics)

        # Read by the regression's sums and by the final product: computed once.
        xs = materialize_fn(read_back, w)
    out, fits = [], []
    for x, wb, (_, line_scale, line_max) in zip(xs, blocks, converted, strict=True):
        row_max, scale = jnp.squeeze(line_max, axis), jnp.squeeze(line_scale, axis)
        fitted = _slope(
            x,
            wb,
            strict_aihwkit=statics.strict_aihwkit,
            x_scale=jnp.broadcast_to(g_max, row_max.shape),
            y_scale=row_max,
            zero_default=1.0 / scale,
            axis=axis,
            linearize=linearize,
        )
        slope, lin = fitted if linearize else (fitted, None)
        slope = jnp.expand_dims(slope, axis)
        out.append(slope * x)
        fits.append(_LineFit(slope, lin, line_max, line_scale))
    return statics.join(out), xs, fits


def _programmed_jvp(
    w: jax.Array,
    key: PRNGKeyArray | None,
    g_max: jax.Array,
    noise: NoiseModel | None,
    t_inference: jax.Array,
    xs: list[jax.Array],
    fits: list[_LineFit],
    counts: list[jax.Array],
    w_dot: jax.Array,
    statics: _Statics,
) -> jax.Array:
    """The derivative of the programmed weights along ``w_dot``, in closed form.

    Per line (tile row) with maximum magnitude ``m``, scale ``s = g_max /
    m``, target ``c = w s``, signed read-back ``x = N(|c|) sign(w)`` and
    slope ``a``: ``dm`` is the mean of ``sign(w) dw`` over the elements
    where ``|w| = m`` (as ``jnp.max`` differentiates ties), ``ds = -s dm /
    m``, ``dc = s dw + w ds`` (0 where the target was clipped), ``dx =
    N'(|c|) dc`` (``dc`` noise-free), ``da`` from the slope's
    :class:`~fusion_jax.regression.SlopeLinearization` and the result ``a dx
    + x da``. ``N'`` is the noise model's derivative at each device, one
    array computed from the key, as the elementwise model allows.
    """
    axis = statics.axis
    blocks, dots = statics.split(w), statics.split(w_dot)
    dcs = []
    for b, db, fit, count in zip(blocks, dots, fits, counts, strict=True):
        row_max, scale = fit.row_max, fit.scale
        tie = jnp.abs(b) == row_max
        dm = jnp.sum(jnp.where(tie, jnp.sign(b) * db, 0.0), axis=axis, keepdims=True) / count
        # d max(row_max, SCALE_EPS): 1 above the floor, 1/2 on it (as jnp.maximum), 0 below.
        floor = jnp.asarray(SCALE_EPS, b.dtype)
        dm = dm * jnp.where(row_max > floor, 1.0, jnp.where(row_max == floor, 0.5, 0.0))
        ds = -(scale / jnp.maximum(row_max, floor)) * dm
        # Per-line values stored as they are: in the backward pass XLA's CPU
        # reductions would otherwise store their broadcast, weight-sized.
        ds = materialize_fn(lambda ds=ds: ds, w)
        c = b * scale
        dcs.append(jnp.where((c >= -g_max) & (c <= g_max), scale * db + b * ds, 0.0))
    if noise is not None:

        def derivative() -> jax.Array:
            # From the weights themselves (the branch's operands are stored).
            targets = statics.join(
                [
                    jnp.clip(b * s, -g_max, g_max)
                    for b, s in zip(statics.split(w), [f.scale for f in fits], strict=True)
                ]
            )
            magnitude = jnp.abs(targets)
            _, slope = jax.jvp(
                lambda g: noise.sample(g, key, g_max=g_max, t_inference=t_inference),
                (magnitude,),
                (jnp.ones_like(magnitude),),
            )
            # d|c|/dc (+1 at 0, as jnp.abs) and the sign of the weights.
            return slope.astype(w.dtype) * jnp.where(targets >= 0, 1.0, -1.0) * jnp.sign(w)

        d = statics.split(materialize_fn(derivative, w))
        dxs = [di * dc for di, dc in zip(d, dcs, strict=True)]
    else:
        dxs = dcs
    out = []
    for x, b, db, dx, fit in zip(xs, blocks, dots, dxs, fits, strict=True):
        a, lin = fit.slope, fit.lin
        xc = x - jnp.expand_dims(lin.x_center, axis)
        yc = b - jnp.expand_dims(lin.y_center, axis)
        da = jnp.expand_dims(lin.inv_den, axis) * jnp.sum(
            (yc - 2.0 * a * xc) * dx + xc * db, axis=axis, keepdims=True
        )
        da = materialize_fn(lambda da=da: da, w)  # stored per line, as ``ds``
        out.append(a * dx + x * da)
    return statics.join(out)


def _program_autodiff(
    w: jax.Array,
    key: PRNGKeyArray | None,
    g_max: jax.Array,
    noise: NoiseModel | None,
    t_inference: jax.Array,
    statics: _Statics,
) -> jax.Array:
    """:func:`_program_core`, differentiated by autodiff through every step."""
    return _forward(w, key, g_max, noise, t_inference, statics, linearize=False)[0]


def _is_zero(tangent: Any) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _nonzero(tangent: Any) -> bool:
    return not _is_zero(tangent)


def _instantiate(tangent: Any) -> Any:
    """A tangent as an array: symbolic zeros become zeros of the tangent type."""
    if not _is_zero(tangent):
        return tangent
    return jnp.zeros(tangent.aval.shape, tangent.aval.dtype)
