"""Input checks shared by the public functions (private).

Concrete (non-traced) inputs are checked eagerly and raise clear Python
errors. Traced inputs are checked with :func:`jax.experimental.checkify.debug_check`,
which is a no-op unless the caller wraps the computation in
:func:`jax.experimental.checkify.checkify`; nothing is ever clamped silently.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from fusion_jax._paths import path_text, plain_path
from fusion_jax.errors import ArgumentError

G_MAX_MIN = 10.0
G_MAX_MAX = 40.0
G_MAX_MESSAGE = "Specified fusion g_max value must be between 10 and 40."

_MAX_LISTED_ROWS = 8


def concrete_value(x: Any) -> np.ndarray | None:
    """Return ``x`` as a NumPy array if it is concrete, ``None`` if traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except RuntimeError:
        # A global array whose values lie partly on other processes' devices
        # cannot be read here: checked as a traced one.
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return None
        raise


def check_g_max(
    g_max: Any, *, where: str | None = None, name: str = "g_max", name_values: bool = False
) -> None:
    """Check that every value of ``g_max`` lies in [10, 40] uS: the one g_max check.

    Args:
        g_max: One value or an array of values; concrete or traced.
        where: The layer or function whose setting it is: the message starts
            with it and names the value given. Without ``where``,
            ``name_values`` or another ``name`` the message is the
            reference's, word for word.
        name: The argument's name (``train_g_max`` ...).
        name_values: Name the offending values (for grids of many values).

    Raises:
        ArgumentError: for concrete values outside the range.
    """
    prefix = f"{where}: " if where else ""
    value = concrete_value(g_max)
    if value is None:
        g = jnp.asarray(g_max)
        checkify.debug_check(
            jnp.all((g >= G_MAX_MIN) & (g <= G_MAX_MAX)),
            prefix + G_MAX_MESSAGE + f" Got {name}={{g_max}}.",
            g_max=g,
        )
        return
    if not _is_real_numeric(value.dtype):
        raise ArgumentError(
            f"{prefix}{G_MAX_MESSAGE} Got a non-numeric {name} of dtype {value.dtype}."
        )
    inside = (value >= G_MAX_MIN) & (value <= G_MAX_MAX)
    if value.size and np.all(inside):
        return
    if where is None and name == "g_max" and not name_values:
        raise ArgumentError(G_MAX_MESSAGE)
    if value.ndim == 0:
        raise ArgumentError(f"{prefix}{G_MAX_MESSAGE} Got {name}={value.item()!r}.")
    bad = value[~inside].tolist()
    raise ArgumentError(f"{prefix}{G_MAX_MESSAGE} Got {name} values {bad}.")


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype computations run in for inputs of ``dtype``.

    float32 and float64 run natively; float16, bfloat16, integers and bools
    run in float32.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and jax.config.jax_enable_x64:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def result_dtype(dtype: Any) -> jnp.dtype:
    """The dtype results are returned in for inputs of ``dtype``."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return compute_dtype(dtype) if dtype.itemsize >= 4 else dtype
    return jnp.dtype(jnp.float32)


def as_matrix_stack(x: Any, name: str) -> jax.Array:
    """Convert ``x`` to a JAX array of rank >= 2 with a non-empty last axis.

    Values the conversion would change (x64 off) are refused, see
    :func:`check_representable`.
    """
    if not isinstance(x, jax.Array | np.ndarray | jax.core.Tracer):
        x = np.asarray(x)
    if not _is_real_numeric(x.dtype):
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}.")
    if isinstance(x, np.ndarray):
        check_representable(x, name)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions [..., out, in] (one row per output), "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[-1] == 0:
        raise ValueError(
            f"{name} has an 'in' axis (last axis) of length 0, shape {tuple(x.shape)}: "
            "every output row needs at least one input."
        )
    return to_jax(x)


def _is_real_numeric(dtype: Any) -> bool:
    dtype = jnp.dtype(dtype)
    return dtype == jnp.bool_ or (
        jnp.issubdtype(dtype, jnp.number) and not jnp.issubdtype(dtype, jnp.complexfloating)
    )


def _contain(name: str) -> str:
    """The verb for ``name``: "weights contain", "kernel contains"."""
    return "contain" if name.endswith("s") else "contains"


def _refuse_elements(
    x: jax.Array,
    is_bad: Callable[[Any, Any], Any],
    traced_message: str,
    error: Callable[[np.ndarray, np.ndarray, int], Exception],
) -> None:
    """The one engine of the value checks: refuse the elements of ``x`` that ``is_bad`` marks.

    ``is_bad(v, xp)`` maps an array to its mask of refused elements, with
    ``xp`` NumPy for a concrete ``x`` (a host copy: no compile) or
    ``jax.numpy`` for a traced one. A concrete ``x`` with refused elements
    raises ``error(value, mask, count)``; a traced one is checked with
    ``checkify.debug_check`` (``traced_message``, with ``{count}``).
    """
    value = concrete_value(x)
    if value is None:
        bad = is_bad(x, jnp)
        checkify.debug_check(~jnp.any(bad), traced_message, count=jnp.sum(bad))
        return
    bad = is_bad(value, np)
    count = int(np.count_nonzero(bad))
    if count:
        raise error(value, bad, count)


def _first(bad: np.ndarray) -> tuple[int, ...]:
    """The index of the first refused element."""
    return tuple(int(i) for i in np.argwhere(bad)[0])


def _rows_listed(bad: np.ndarray) -> str:
    """The rows (all axes but the last) holding refused elements: ``rows [0, 3]``."""
    rows = np.argwhere(bad.any(axis=-1))
    listed = [
        tuple(int(i) for i in r) if len(r) > 1 else int(r[0]) for r in rows[:_MAX_LISTED_ROWS]
    ]
    more = f" and {len(rows) - _MAX_LISTED_ROWS} more" if len(rows) > _MAX_LISTED_ROWS else ""
    return f"row{'s' if len(rows) != 1 else ''} {listed}{more}"


def _shape_note(value: np.ndarray) -> str:
    """How the rows named in a message are indexed: ``shape (2, 3), rows indexed [..., out]``."""
    return f"shape {tuple(value.shape)}, rows indexed [..., out]"


def check_finite(x: jax.Array, name: str) -> None:
    """Refuse NaN or Inf in ``x``, naming how many and in which rows.

    Concrete arrays raise :class:`ValueError`; traced arrays are checked with
    ``checkify.debug_check``.
    """

    def error(value: np.ndarray, bad: np.ndarray, count: int) -> Exception:
        return ValueError(
            f"{name} {_contain(name)} {count} NaN or Inf value{'s' if count != 1 else ''} "
            f"in {_rows_listed(bad)} ({_shape_note(value)})."
        )

    _refuse_elements(
        x,
        lambda v, xp: ~xp.isfinite(v),
        f"{name} {_contain(name)} {{count}} NaN or Inf values",
        error,
    )


#: A row whose largest magnitude lies below this many times the smallest normal
#: number of its compute dtype cannot be programmed (see :func:`check_row_scale`).
ROW_SCALE_MARGIN = 2.0**8


def min_row_max(dtype: Any) -> float:
    """The smallest largest-magnitude a row of ``dtype`` weights may have to be programmed.

    ``ROW_SCALE_MARGIN`` times the smallest normal number of the compute
    dtype: 3.0e-36 for float32 (and float16, bfloat16, which compute in it).
    """
    return float(jnp.finfo(compute_dtype(dtype)).tiny) * ROW_SCALE_MARGIN


def check_row_scale(x: jax.Array, name: str) -> None:
    """Refuse rows too small to program: their read-back would come back as zeros.

    A row's slope back to weights is about its largest magnitude over
    ``g_max`` (at most 40 uS). For a row whose largest magnitude is below
    :func:`min_row_max` that slope falls near or below the smallest normal
    number, which XLA flushes to 0 (on the CPU and GPUs): the whole row
    would be read back as zeros. Such rows are refused, never zeroed
    silently. Single subnormal values in an ordinary row are far below the
    chip's resolution of that row and are programmed as 0, as any value that
    small would be.

    Concrete arrays raise :class:`ValueError`; traced arrays are checked with
    ``checkify.debug_check``.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return
    bound = min_row_max(x.dtype)

    # Compared as bit patterns (for floats of one sign their order is the
    # values' order): a traced comparison of subnormal floats would see them
    # flushed to 0 by XLA, the very thing this check is about.
    int_type = {2: np.int16, 4: np.int32, 8: np.int64}[jnp.dtype(x.dtype).itemsize]
    magnitude_bits = int_type(np.iinfo(int_type).max)  # clears the sign bit
    bound_bits = int(np.asarray(bound, x.dtype).view(int_type))

    def too_small(v: Any, xp: Any) -> Any:
        if xp is np:
            bits = v.view(int_type)
        else:
            bits = jax.lax.bitcast_convert_type(v, int_type)
        top = xp.max(bits & magnitude_bits, axis=-1, keepdims=True)
        return (top > 0) & (top < bound_bits)

    def error(value: np.ndarray, bad: np.ndarray, count: int) -> Exception:
        top = np.abs(value).max(axis=-1)[bad[..., 0]]
        return ValueError(
            f"{name}: {count} row{'s are' if count != 1 else ' is'} too small to program "
            f"({_rows_listed(bad)}, largest magnitude {top[0]!s}; {_shape_note(value)}). "
            "A row's largest magnitude must be "
            f"at least {bound:.4g} ({ROW_SCALE_MARGIN:g} times the smallest normal "
            f"{compute_dtype(x.dtype)}): below it the slope back to weights, about max / g_max, "
            "is flushed to 0 by XLA and the row would come back as zeros. Rescale the weights: "
            "values are never changed silently."
        )

    _refuse_elements(
        x,
        too_small,
        f"{name} {_contain(name)} {{count}} rows too small to program (largest magnitude "
        f"below {bound:.4g}), which would come back as zeros",
        error,
    )


def check_read_back(
    x: jax.Array, where: str, *, kernel: bool = False, all_finite: Any = None
) -> None:
    """Refuse programmed weights that are NaN or Inf: the inputs were finite, so it overflowed.

    The read-back is the noisy conductances times each row's fitted slope:
    for weights within a small factor of their dtype's largest value (3.4e38
    for float32, 65504 for float16) it can exceed it.

    Concrete arrays raise :class:`FloatingPointError`; traced arrays are
    checked with ``checkify.debug_check``. With ``kernel`` the first
    non-finite weight is named by its index in the kernel's own layout.
    ``all_finite``, whether all of ``x`` is finite as the program computed
    it: when it is concrete and true, only that bool is fetched (``x`` is
    not copied to the host).
    """
    if all_finite is not None and concrete_value(all_finite) is not None and bool(all_finite):
        return

    def error(value: np.ndarray, bad: np.ndarray, count: int) -> Exception:
        first = _first(bad)
        position = f"kernel index {first}" if kernel else _position(first)
        return FloatingPointError(
            f"{where}: {count} programmed weight{'s are' if count != 1 else ' is'} not finite "
            f"(the first, {value[first]!s}, at {position}; shape "
            f"{tuple(value.shape)}). The weights were finite: their noisy read-back overflows "
            f"{value.dtype} (largest {float(jnp.finfo(value.dtype).max):.4g}), or the noise "
            "model returned non-finite conductances. Rescale weights this close to the "
            "largest value."
        )

    _refuse_elements(
        x,
        lambda v, xp: ~xp.isfinite(v),
        f"{where}: {{count}} programmed weights are NaN or Inf (the read-back overflowed)",
        error,
    )


# --------------------------------------------------------------------------
# Values JAX would change on conversion (x64 off)
# --------------------------------------------------------------------------


def _position(index: tuple[int, ...]) -> str:
    """``index`` as text: ``row (i, j)`` of a matrix stack, ``index k`` of a vector."""
    if len(index) == 0:
        return "the scalar"
    if len(index) == 1:
        return f"index {index[0]}"
    return f"row {index[:-1] if len(index) > 2 else index[0]}, column {index[-1]}"


def check_representable(value: np.ndarray, name: str) -> None:
    """Refuse concrete values that the conversion to a JAX array would change.

    With ``jax_enable_x64`` off JAX stores 64-bit inputs in 32 bits: integers
    beyond the 32-bit range wrap around, and float64 magnitudes beyond
    float32's overflow to Inf or (below its smallest normal number, 1.2e-38)
    become subnormal or 0. Such values are refused rather than changed.
    Non-finite values are left to :func:`check_finite`.

    Raises:
        ValueError: naming ``name``, the count, the first value and its position.
    """
    if jax.config.jax_enable_x64 or value.dtype.itemsize <= 4:
        return
    kind = value.dtype.kind
    if kind in "iu":
        info = np.iinfo(np.int32 if kind == "i" else np.uint32)
        bad = (value < info.min) | (value > info.max)
        target = f"{info.dtype} ({info.min} to {info.max})"
    elif kind == "f":
        info32 = np.finfo(np.float32)
        with np.errstate(invalid="ignore"):
            mag = np.abs(value)
            bad = np.isfinite(value) & ((mag > info32.max) | ((mag < info32.tiny) & (mag != 0)))
        target = f"float32 (nonzero magnitudes {float(info32.tiny):.4g} to {float(info32.max):.4g})"
    else:
        return
    count = int(np.count_nonzero(bad))
    if count == 0:
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name}: {count} {value.dtype} value{'s' if count != 1 else ''} out of range for "
        f"{target}, the dtype JAX uses with jax_enable_x64 off; the first, "
        f"{value[first].item()!r}, at {_position(first)}. Enable x64 "
        "(jax.config.update('jax_enable_x64', True)) or rescale: values are never changed "
        "silently."
    )


def as_array(x: Any, name: str) -> jax.Array:
    """``x`` as a JAX array, refusing values the conversion would change (see above)."""
    if isinstance(x, jax.Array | jax.core.Tracer):
        return x
    value = np.asarray(x)
    if value.dtype.kind in "biuf":
        check_representable(value, name)
    return to_jax(value)


def check_flag(value: Any, name: str, where: str, *, none: bool = False) -> None:
    """Refuse a switch that is not ``True`` or ``False`` (``None`` too with ``none``).

    A string such as ``"no"`` would otherwise count as ``True``.

    Raises:
        TypeError: naming ``where``, the setting and the value given.
    """
    if isinstance(value, bool | np.bool_) or (none and value is None):
        return
    allowed = "True, False or None" if none else "True or False"
    raise TypeError(f"{where}: {name} must be {allowed}, got {value!r}.")


def to_jax(x: np.ndarray | jax.Array) -> jax.Array:
    """``x`` as a JAX array; a NumPy array is put on the default device.

    ``jax.device_put``, not ``jnp.asarray``: the same array (dtype
    canonicalised alike), but ``jnp.asarray`` of a NumPy array compiles a
    copy for every new shape.
    """
    return jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)


# --------------------------------------------------------------------------
# Settings shared by every entry point
# --------------------------------------------------------------------------


def check_t_inference(t_inference: Any, name: str = "t_inference", where: str = "") -> None:
    """Check an inference time: a real scalar, finite, >= 0 (seconds).

    Concrete values raise; traced values are checked with
    ``checkify.debug_check``.

    Raises:
        TypeError: for a non-numeric value (a string, None, an object).
        ValueError: for a non-scalar, NaN, Inf, negative, or (x64 off) a
            value beyond float32's range.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(t_inference, jax.core.Tracer):
        t = jnp.asarray(t_inference)
        checkify.debug_check(
            jnp.all(jnp.isfinite(t) & (t >= 0)),
            prefix + name + " must be a finite number of seconds >= 0, got {t}.",
            t=t,
        )
        return
    try:
        value = np.asarray(t_inference)
    except Exception:  # noqa: BLE001 - any unconvertible object is a type error here
        value = np.asarray(None, dtype=object)
    if value.dtype.kind not in "iuf":
        raise TypeError(
            f"{prefix}{name} must be a real number of seconds, got "
            f"{type(t_inference).__name__} {t_inference!r}."
        )
    if value.shape != ():
        raise ValueError(
            f"{prefix}{name} must be a scalar (seconds), got shape {value.shape}; to evaluate "
            "several times use jax.vmap over it or fj.sweep."
        )
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(
            f"{prefix}{name} must be a finite number of seconds >= 0, got {value.item()!r}."
        )
    if value.dtype.kind == "f":  # an integer time converts to a float, whatever its size
        check_representable(value, f"{prefix}{name}")


def check_key(key: Any, where: str) -> None:
    """Check that ``key`` is one PRNG key (typed, or a raw ``uint32`` key).

    Raises:
        TypeError: for an integer, a string or any other non-key.
        ValueError: for a batch of keys.
    """
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(
                f"{where}: key must be one PRNG key, got a batch of keys of shape {shape}; "
                "use jax.vmap to program with several keys."
            )
        return
    if dtype is not None and jnp.dtype(dtype) == jnp.uint32 and len(shape) == 1:
        return  # a raw key of the legacy jax.random.PRNGKey API
    hint = f" (for seed {key}, pass jax.random.key({key}))" if isinstance(key, int) else ""
    raise TypeError(
        f"{where}: key must be a PRNG key such as jax.random.key(0), got "
        f"{type(key).__name__} {key!r}{hint}."
    )


def check_noise_model(noise: Any, where: str = "") -> None:
    """Check that ``noise`` is a noise model instance (``None`` is not checked here).

    Raises:
        TypeError: for a class instead of an instance, or an object without
            a ``sample`` method.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(noise, type):
        raise TypeError(
            f"{prefix}noise must be a noise model instance, got the class {noise.__name__} "
            f"itself: create one, e.g. noise={noise.__name__}(...) (for the chip model "
            "fj.noise.FusionChipNoise.lenet5_readback()), or pass noise=None."
        )
    if not callable(getattr(noise, "sample", None)):
        raise TypeError(
            f"{prefix}noise must be a noise model with a .sample method (see fj.noise) or None, "
            f"got {type(noise).__name__}."
        )


def check_settings(
    *, where: str, noise: Any = None, key: Any = None, t_inference: Any = 0.0
) -> None:
    """The checks every programming entry point makes of its settings.

    ``noise`` is a resolved model (``None``: noise-free, then ``key`` is not
    needed and not checked).

    Raises:
        TypeError, ValueError: see :func:`check_noise_model`,
            :func:`check_key` and :func:`check_t_inference`.
    """
    check_t_inference(t_inference, where=where)
    if noise is None:
        return
    check_noise_model(noise, where)
    if key is None:
        raise ValueError(f"{where} needs a PRNG key when noise is on (pass key=, or noise=None).")
    check_key(key, where)


def check_model_fields(
    model: Any,
    *,
    finite: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    probability: tuple[str, ...] = (),
) -> None:
    """Check a noise model's numeric fields where the model is built.

    Every named field must be finite; ``non_negative`` ones >= 0,
    ``positive`` ones > 0 and ``probability`` ones in [0, 1]. A field may be
    a number, an array (a batch of models) or a tuple of them. Traced fields
    (under ``jit``/``vmap``) and non-numeric placeholders JAX puts in pytrees
    (``None``, shape structs) are skipped; strings are refused.

    Raises:
        TypeError: for a field holding text.
        ValueError: naming the model, the field and the offending value.
    """
    cls = type(model).__name__
    kinds = (
        [(n, "finite") for n in finite]
        + [(n, ">= 0") for n in non_negative]
        + [(n, "> 0") for n in positive]
        + [(n, "in [0, 1]") for n in probability]
    )
    for name, need in kinds:
        field = getattr(model, name)
        parts = field if isinstance(field, tuple | list) else (field,)
        for part in parts:
            if part is None or isinstance(part, jax.core.Tracer):
                continue
            if isinstance(part, str | bytes):
                raise TypeError(f"{cls}.{name} must be a number, got the text {part!r}.")
            value = concrete_value(part)
            if value is None or value.dtype.kind not in "biuf":
                continue
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(value)
                if need == ">= 0":
                    ok &= value >= 0
                elif need == "> 0":
                    ok &= value > 0
                elif need == "in [0, 1]":
                    ok &= (value >= 0) & (value <= 1)
            if not np.all(ok):
                shown = field if value.size <= 8 else f"an array with {int((~ok).sum())} bad values"
                rule = "finite" if need == "finite" else f"finite and {need}"
                raise ValueError(f"{cls}.{name} must be {rule}, got {shown!r}.")


def check_non_negative(x: jax.Array, name: str) -> None:
    """Refuse negative values in ``x`` (conductances are magnitudes), naming the rows.

    Concrete arrays raise :class:`ValueError`; traced arrays are checked with
    ``checkify.debug_check``.
    """

    def error(value: np.ndarray, bad: np.ndarray, count: int) -> Exception:
        return ValueError(
            f"{name} must be >= 0 uS (magnitudes; the sign comes from the original weights): "
            f"{count} negative value{'s' if count != 1 else ''} (smallest "
            f"{float(value.min()):.4g}) in {_rows_listed(bad)} ({_shape_note(value)})."
        )

    _refuse_elements(
        x, lambda v, xp: v < 0, f"{name} {_contain(name)} {{count}} negative values", error
    )


#: Seeds are 32-bit words: ``jax.random.key(seed)`` of a uint32 seed.
SEED_LIMIT = 2**32
_SEED_RANGE = (
    "must lie in [0, 2**32 - 1] (a key is made from a 32-bit seed; a larger or negative one "
    "would wrap around)"
)


def is_typed_key(x: Any) -> bool:
    """Whether ``x`` is an array of typed PRNG keys (``jax.random.key``)."""
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def check_seed(seed: Any, where: str, name: str = "seed") -> int:
    """One integer seed in [0, 2**32), as a Python int.

    A float is refused (``int()`` would truncate it to another seed), and
    so is a PRNG key given for a seed.

    Raises:
        TypeError: naming ``where`` and ``name``, for a key or a value that
            is not an integer.
        ValueError: for a seed outside [0, 2**32).
    """
    if is_typed_key(seed):
        raise TypeError(
            f"{where}: {name} must be an integer seed (it becomes jax.random.key({name})), got "
            f"a PRNG key; pass the seed itself, e.g. {name}=0."
        )
    integer = isinstance(seed, numbers.Integral) or (
        isinstance(seed, np.ndarray | jax.Array) and seed.ndim == 0 and seed.dtype.kind in "iu"
    )
    if isinstance(seed, bool | np.bool_) or not integer:
        raise TypeError(f"{where}: {name} must be an integer, got {seed!r}.")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{where}: {name} {_SEED_RANGE}, got {int(seed)}.")
    return int(seed)


def check_leaves_finite(tree: Any, where: str, what: str = "parameter") -> None:
    """Refuse NaN or Inf in any floating-point leaf of ``tree``, naming the leaf.

    For parameters used inside a compiled function of the library's own (a
    training epoch, a sweep's grid), where a traced check cannot report and
    a NaN would surface only as a NaN loss. Checked on host copies (no
    compile); leaves whose values are not all on this process are skipped.

    Raises:
        ValueError: naming ``where``, the first leaf holding NaN or Inf (its
            path, after ``what``), how many, and the index of the first.
    """
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        value = concrete_value(leaf)
        if value is None:
            continue
        name = path_text(plain_path(keypath)) or "<root>"

        def error(value: np.ndarray, bad: np.ndarray, count: int, name: str = name) -> Exception:
            return ValueError(
                f"{where}: {what} {name!r} contains {count} NaN or Inf "
                f"value{'s' if count != 1 else ''} (the first at index {_first(bad)}; shape "
                f"{tuple(value.shape)})."
            )

        _refuse_elements(value, lambda v, xp: ~xp.isfinite(v), "", error)


def seed_list(seeds: Any, where: str) -> list[int]:
    """A sequence of seeds as Python ints, checked as :func:`check_seeds` does.

    For the functions whose ``seeds`` is a sequence (one model or one chip
    draw per seed): a single number is refused rather than read as one seed
    (``sweep`` reads it as a count), and so is a float, which ``int()``
    would truncate to another seed.

    Raises:
        TypeError: for PRNG keys instead of seeds.
        ValueError: naming ``where``, for a single number; as
            :func:`check_seeds` otherwise.
    """
    is_key = is_typed_key(seeds)
    if not is_key and not isinstance(seeds, np.ndarray | jax.Array | str):
        try:
            seeds = list(seeds)  # a generator, a set, a range...
        except TypeError:
            pass
    if np.ndim(seeds) == 0 and not is_key:
        raise ValueError(
            f"{where}: seeds must be a sequence of seeds, got {seeds!r}; for seeds 0 to n - 1 "
            "pass range(n)."
        )
    return check_seeds(seeds).tolist()


def check_seeds(seeds: Any, name: str = "seeds") -> np.ndarray:
    """A non-empty 1-D sequence of integer seeds in [0, 2**32), as int64.

    Seeds become 32-bit keys: a larger or negative seed would wrap around to
    a different seed than the one reported, so it is refused.

    Raises:
        TypeError: for PRNG keys instead of seeds.
        ValueError: for an empty or non-integer sequence, or a seed out of
            range (the first few named).
    """
    if is_typed_key(seeds):
        raise TypeError(
            f"{name} must be integer seeds (each becomes jax.random.key(seed)), got a PRNG key "
            f"array of shape {tuple(seeds.shape)}; pass the seeds themselves, e.g. "
            f"{name}=[0, 1, 2]."
        )
    s = np.atleast_1d(np.asarray(seeds))
    if s.size == 0:
        raise ValueError(f"{name} is empty: at least one seed is needed.")
    if s.ndim != 1 or s.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D sequence of integers, got {seeds!r}.")
    if s.dtype.kind == "u":
        bad = s[s >= SEED_LIMIT]
    else:
        bad = s[(s < 0) | (s >= SEED_LIMIT)]
    if bad.size:
        raise ValueError(f"{name} {_SEED_RANGE}, got {bad.tolist()[:8]}.")
    return s.astype(np.int64)
