"""Programming Flax kernels, and whole parameter pytrees, onto the simulated chip.

:func:`fusion_jax.program` works in the reference's layout, one row per output
``[..., out, in]``. Flax keeps the output channel on the last axis of a
kernel (``[in, out]``, ``[kh, kw, in, out]``); stacked layers, attention
and einsum kernels have more axes, which a
:class:`~fusion_jax.layout.KernelAxes` names. :func:`program_kernel` programs
one kernel (each output feature of each layer is one row on the chip) and
:func:`program_params` programs every kernel of a model at once (an
``nnx.Module``, whose layers give their kernels' axes and their settings, or
a parameter pytree): one programmed copy of the whole network, as after
writing it to the chip.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation, layout, tiles
from fusion_jax._paths import LeafPath, is_kernel
from fusion_jax._paths import path_text as _path_text
from fusion_jax._paths import plain_path as _plain_path
from fusion_jax._random import _threefry_key_data
from fusion_jax.conversion import _prepare_g_max, _prepare_weights
from fusion_jax.errors import ArgumentError
from fusion_jax.layout import KernelAxes, Layouts, _layout_lookup
from fusion_jax.programming import (
    DEFAULT_NOISE,
    GradientMode,
    NoiseModel,
    _check_gradient_mode,
    _checked_settings,
    _program_prepared,
    resolve_noise,
)

__all__ = [
    "LeafPath",
    "is_kernel",
    "leaf_key",
    "kernel_layouts",
    "module_kernel_axes",
    "program_kernel",
    "program_params",
]

PyTree = TypeVar("PyTree")


def program_kernel(
    kernel: Float[ArrayLike, "*shape"],
    key: PRNGKeyArray | None = None,
    *,
    axes: KernelAxes | None = None,
    g_max: float | ArrayLike = 40.0,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float | ArrayLike = 0.0,
    strict_aihwkit: bool = False,
    gradient: GradientMode = "exact",
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
) -> Float[Array, "*shape"]:
    """Program one Flax kernel onto the simulated chip and read it back.

    Each output feature is one row on the chip: it gets its own conductance
    scale and its own regression slope. ``axes`` says which kernel axes are
    inputs, outputs and stack (independent layers); by default the kernel is
    a Dense ``[in, out]`` or conv ``[*window, in, out]`` kernel, whose output
    channel is the last axis. For those the result is
    :func:`fusion_jax.program` of the reference rows
    (:func:`fusion_jax.layout.kernel_to_rows`), put back in Flax layout, but
    computed in the kernel's own layout, without the two transposes. The
    noise model therefore sees the conductances as ``[in * spatial, out]``
    and its random draws fall on the devices in that order: with random
    noise, the same key gives a different (equally distributed) draw than
    ``program(kernel_to_rows(kernel), key)``.

    With other ``axes`` it is :func:`fusion_jax.program` of the rows of
    :func:`fusion_jax.layout.kernel_to_columns`, layer by layer along the
    stack axes, put back in the kernel's shape. The noise sees each layer's
    conductances as ``[in_flat, out_flat]`` (inputs in the kernel's axis
    order); stacked layer ``i`` (flattened stack index) draws with
    ``jax.random.split(key, n_layers)[i]``.

    A layer with more inputs than ``max_input_size`` is split into chip
    tiles as its export is (:mod:`fusion_jax.tiles`): along its inputs
    flattened in export order, a convolution on input-channel boundaries
    (whole channels of ``kh * kw`` inputs per tile, as aihwkit's mapped conv
    layers), and each tile row is scaled and regressed on its own.
    Simulating a layer and exporting it (:func:`fusion_jax.fusion_export`)
    give the same tiles. A tiled convolution is programmed with its inputs
    in export order (one transpose there and back).

    Args:
        kernel: The kernel.
        key: PRNG key for the noise; may be ``None`` when ``noise=None``.
        axes: The kernel's :class:`~fusion_jax.layout.KernelAxes`; ``None``
            for a Dense ``[in, out]`` or conv ``[*window, in, out]`` kernel.
            A kernel with leading layer axes (``nnx.scan``) needs
            ``KernelAxes.dense().stacked()`` and so on: without it, it would
            be read as a convolution.
        g_max: Largest conductance in uS, in [10, 40]; may be traced.
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        gradient: ``"exact"`` or ``"ste"`` (straight-through); see
            :func:`fusion_jax.program`.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split).
        max_output_size: Most outputs per chip tile (0: no split); output
            splits change no value.

    Returns:
        The programmed kernel, shape and dtype of ``kernel``.

    Raises:
        ValueError: for a kernel with fewer than 2 dimensions, ``axes`` that
            do not fit it, NaN/Inf values or rows too small to program, a
            missing key when noise is on, an unknown ``gradient``, a negative tile size, or a
            conv channel (``kh * kw`` inputs) larger than ``max_input_size``.
        ArgumentError: for a concrete ``g_max`` outside [10, 40].
        FloatingPointError: if the read-back overflows the kernel's dtype
            (a noisy weight near its largest value read back larger).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> kernel = jnp.array([[1.0, 10.0], [-0.5, 20.0], [0.25, -40.0]])  # [in=3, out=2]
        >>> fj.program_kernel(kernel, noise=None)
        Array([[  1.  ,  10.  ],
               [ -0.5 ,  20.  ],
               [  0.25, -40.  ]], dtype=float32)
        >>> fj.program_kernel(kernel, jax.random.key(0), g_max=25.0).shape
        (3, 2)

        Three scanned layers ``[layers, in, out]``, each programmed on its own:

        >>> stacked = jnp.stack([kernel, 2 * kernel, 3 * kernel])
        >>> axes = fj.layout.KernelAxes.dense().stacked()
        >>> fj.program_kernel(stacked, axes=axes, noise=None)[2]
        Array([[   3.  ,   30.  ],
               [  -1.5 ,   60.  ],
               [   0.75, -120.  ]], dtype=float32)
    """
    return _checked_kernel_call(
        kernel,
        key,
        axes=axes,
        g_max=g_max,
        noise=noise,
        t_inference=t_inference,
        strict_aihwkit=strict_aihwkit,
        gradient=gradient,
        max_input_size=max_input_size,
        max_output_size=max_output_size,
    ).run()


def _program_layer_kernel(kernel: Any, key: Any, *, layer: str, **settings: Any) -> jax.Array:
    """:func:`program_kernel` for a layer named ``layer``, which every error names.

    An error raised here (concrete values) is restated as ``"{layer}: ..."``;
    a traced check (reported under ``checkify``) names ``layer`` the same way.
    """
    try:
        return _checked_kernel_call(kernel, key, traced_prefix=f"{layer}: ", **settings).run()
    except _RESTATED as err:
        _restate(err, layer)
        raise


class _KernelCall(NamedTuple):
    """One checked :func:`program_kernel` call, ready to run (alone or batched)."""

    kernel: jax.Array
    key: PRNGKeyArray | None
    g_max: Any
    model: NoiseModel | None
    t_inference: Any
    statics: dict[str, Any]
    fold: int | None = None  # the kernel's key is fold_in(key, fold) (program_params' leaf key)
    traced_prefix: str = ""  # names the caller in traced checks (concrete errors are restated)

    def run(self) -> jax.Array:
        ((kernel, finite),) = _run_grouped([self])
        where = "program_kernel"
        if isinstance(kernel, jax.core.Tracer):
            where = f"{self.traced_prefix}{where}"
        _validation.check_read_back(kernel, where, kernel=True, all_finite=finite)
        return kernel

    def group_token(self) -> tuple[Any, ...]:
        """Calls with equal tokens differ only in kernel values and key: one batched program."""
        return (
            self.kernel.shape,
            self.kernel.dtype,
            _sharding_token(self.kernel),
            self.key is None,
            None if self.key is None else id(self.key),
            _value_token(self.g_max),
            _value_token(self.t_inference),
            _model_token(self.model),
            tuple(sorted(self.statics.items())),
        )


def _checked_kernel_call(
    kernel: ArrayLike,
    key: PRNGKeyArray | None,
    *,
    axes: KernelAxes | None,
    g_max: Any,
    noise: Any,
    t_inference: Any,
    strict_aihwkit: bool,
    gradient: GradientMode,
    max_input_size: int,
    max_output_size: int,
    traced_prefix: str = "",
) -> _KernelCall:
    """program_kernel's checks (each error raised here, eagerly where values are concrete).

    A traced kernel's values are checked here, in the caller's trace, with
    ``checkify.debug_check`` messages that start with ``traced_prefix`` (a
    layer's or leaf's name): inside the compiled programming, shared by
    every kernel of one shape, no message could name its caller.
    """
    kernel = _validation.as_array(kernel, "kernel")
    axes = layout._as_axes(axes, kernel.ndim)
    axes.check(kernel.shape)
    model = _checked_settings(noise, key, gradient, "program_kernel", t_inference, strict_aihwkit)
    if kernel.size == 0:
        raise ValueError(
            f"kernel is empty (shape {tuple(kernel.shape)}): a kernel [..., in, out] needs at "
            "least one input and one output to program."
        )
    # Checks (and error messages) as for the reference rows, on a host copy
    # of a concrete kernel (no compilation); a traced kernel is checked
    # inside the jit.
    value = _validation.concrete_value(kernel)
    if value is not None:
        host_columns = layout._to_columns(value, axes, export_order=False)
        _prepare_weights(np.swapaxes(host_columns, -1, -2), "kernel")
    elif isinstance(kernel, jax.core.Tracer):
        columns = layout._to_columns(kernel, axes, export_order=False)
        # (only the debug checks carry the prefix: an error raised here is restated)
        _prepare_weights(jnp.swapaxes(columns, -1, -2), "kernel", f"{traced_prefix}kernel")
    _prepare_g_max(g_max, jnp.float32, "program_kernel")  # here: inside the jit it is traced
    sizes = tiles._kernel_input_sizes(kernel.shape, axes, max_input_size, max_output_size)
    statics = {
        "axes": axes,
        "strict_aihwkit": bool(strict_aihwkit),
        "gradient": gradient,
        "in_sizes": sizes,
    }
    return _KernelCall(kernel, key, g_max, model, t_inference, statics, traced_prefix=traced_prefix)


def _value_token(value: Any) -> tuple[Any, ...]:
    """Equal tokens: the same setting value (a concrete value, or the same traced array)."""
    try:
        concrete = _validation.concrete_value(value)
        array = None if concrete is None else np.asarray(concrete)
    except (TypeError, ValueError):  # not convertible to NumPy (a key, an object)
        array = None
    if array is None or array.dtype == object:
        return ("same object", id(value))
    return ("value", array.shape, array.dtype.str, array.tobytes())


def _sharding_token(kernel: jax.Array) -> str:
    """Kernels batched together are concatenated: only those placed alike."""
    if isinstance(kernel, jax.Array) and not isinstance(kernel, jax.core.Tracer):
        return str(kernel.sharding)  # concrete: where its shards are
    return str(getattr(jax.typeof(kernel), "sharding", None))  # traced: its type's sharding


def _model_token(model: NoiseModel | None) -> Any:
    if model is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(model)
    return (treedef, tuple(_value_token(leaf) for leaf in leaves))


def _run_grouped(calls: Sequence[_KernelCall]) -> list[tuple[jax.Array, jax.Array]]:
    """Run calls that differ only in kernel values and keys as one program.

    Same-shaped kernels of a model (the projections of every transformer
    block, a stack of equal layers) then compile to one program instead of
    one per kernel: their layers are programmed as the layers of one stacked
    kernel (no further ``jax.vmap`` level), each with the key of its own
    call. Each kernel's result is that of its own call.
    """
    first = calls[0]
    assert len(calls) == 1 or first.key is None or all(c.fold is not None for c in calls)
    key, folds = first.key, None
    if key is not None and first.fold is not None:
        if len(calls) == 1:
            # Folded here, so that a lone kernel's program is that of a layer
            # programming its kernel with its own key: one compile for both.
            key = jax.random.fold_in(key, first.fold)
        else:
            folds = np.asarray([call.fold for call in calls], np.uint32)
    return list(
        _program_kernels_jit(
            tuple(call.kernel for call in calls),
            key,
            folds,
            first.g_max,
            first.model,
            first.t_inference,
            **first.statics,
        )
    )


_STATICS = ("axes", "strict_aihwkit", "gradient", "in_sizes")
# Not inlined (nor programming._program_jit): each call is one equation of the caller's
# jaxpr, so the layers of a model that share a shape and settings share one
# traced, differentiated and lowered body; XLA inlines it afterwards. A/B:
# ``python benchmarks/compile_time.py --before ecbe485`` (lowering and compile
# of the 16-layer step).


@functools.partial(jax.jit, static_argnames=_STATICS)
def _program_kernels_jit(
    kernels: tuple[jax.Array, ...],
    key: PRNGKeyArray | None,
    folds: jax.Array | None,
    g_max: Any,
    model: NoiseModel | None,
    t_inference: Any,
    *,
    axes: KernelAxes,
    strict_aihwkit: bool,
    gradient: str,
    in_sizes: tuple[int, ...],
) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """program_kernel of checked kernels of one shape and settings, in one program.

    Returns each programmed kernel with whether all of it is finite.

    Rearranging, programming and putting back are one jitted computation, so
    an eager call compiles once, and new values of ``g_max``,
    ``t_inference`` or the noise model's fields do not recompile. One kernel
    is keyed ``key`` (``folds`` is ``None``); of several, kernel ``i`` is
    keyed ``fold_in(key, folds[i])``, and they are programmed as the layers of
    one stack (a stacked kernel's layer ``j`` with ``split(its key)[j]``).
    """
    # Computed as columns [*stack, in, out], one per output feature, with the
    # inputs in the kernel's own axis order: for Dense, conv and stacked
    # kernels that is a reshape, no transpose (transposes cost more than the
    # rest of the conversion on a CPU). Without tiles a row's result does not
    # depend on the order of its inputs; with tiles they are in export order.
    export_order = len(in_sizes) > 1
    # The kernels' values were checked by _checked_kernel_call (on the host, or traced in
    # the caller's trace, naming the caller).
    columns = [layout._to_columns(k, axes, export_order=export_order) for k in kernels]
    settings = {"strict_aihwkit": strict_aihwkit, "gradient": gradient, "in_sizes": in_sizes}
    if len(kernels) == 1:
        assert folds is None  # a lone kernel's key is folded by the caller
        programmed = _program_columns(columns[0], key, g_max, model, t_inference, **settings)
        shape = kernels[0].shape
        return _with_finite(
            (layout._from_columns(programmed, axes, shape, export_order=export_order),)
        )
    shape = columns[0].shape
    n_layers = int(np.prod(shape[:-2], dtype=int))  # per kernel; 1 when not stacked
    layers = jnp.concatenate([c.reshape(-1, *shape[-2:]) for c in columns])
    layer_keys = None
    if model is not None and key is not None:
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw key: its typed form
            key = jax.random.wrap_key_data(key)
        # The leaf keys in one batched fold_in (one hash, not one per kernel);
        # a stacked kernel's layer j then draws with split(leaf key)[j].
        leaf_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, folds)
        if shape[:-2]:
            leaf_keys = jax.vmap(lambda k: jax.random.split(k, n_layers))(leaf_keys)
        layer_keys = leaf_keys.reshape(-1)
    programmed = _program_columns(
        layers, None, g_max, model, t_inference, layer_keys=layer_keys, **settings
    ).reshape(len(kernels), *shape)
    return _with_finite(
        tuple(
            layout._from_columns(programmed[i], axes, k.shape, export_order=export_order)
            for i, k in enumerate(kernels)
        )
    )


def _with_finite(kernels: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """Each programmed kernel with whether all of it is finite (one bool on the device)."""
    return tuple((k, jnp.all(jnp.isfinite(k))) for k in kernels)


def _program_columns(
    columns: jax.Array,
    key: PRNGKeyArray | None,
    g_max: Any,
    model: NoiseModel | None,
    t_inference: Any,
    *,
    strict_aihwkit: bool,
    gradient: str,
    in_sizes: tuple[int, ...] | None = None,
    layer_keys: PRNGKeyArray | None = None,
) -> jax.Array:
    """Program validated columns ``[*stack, in, out]``, each stacked layer on its own.

    The matrix-level entry for every kernel shape: a kernel mapped to
    columns (:func:`fusion_jax.layout.kernel_to_columns`, inputs in export
    order when tiled) is programmed here. Layer ``i`` (the flattened stack
    index) draws its noise with ``jax.random.split(key, n_layers)[i]``, or
    with ``layer_keys[i]`` when given (then ``key`` is unused).
    ``in_sizes``: the input tile sizes along axis -2
    (:func:`fusion_jax.tiles.split_sizes`); ``None`` or one size: one tile.
    """

    def one(cols: jax.Array, k: PRNGKeyArray | None) -> jax.Array:
        return _program_prepared(
            cols,
            k,
            g_max,
            model,
            t_inference,
            strict_aihwkit=strict_aihwkit,
            gradient=gradient,
            axis=-2,
            in_sizes=in_sizes,
        )[0]

    if columns.ndim == 2:
        return one(columns, key)
    flat = columns.reshape(-1, *columns.shape[-2:])
    if layer_keys is None and model is not None and key is not None:
        layer_keys = jax.random.split(key, flat.shape[0])
    if model is None or layer_keys is None:
        programmed = jax.vmap(lambda c: one(c, None))(flat)
    else:
        programmed = jax.vmap(one)(flat, layer_keys)
    return programmed.reshape(columns.shape)


def leaf_key(key: PRNGKeyArray, path: LeafPath) -> PRNGKeyArray:
    """The PRNG key :func:`program_params` uses for the leaf at ``path``.

    ``fold_in`` of a CRC-32 of the path's text (``"a/b/kernel"``): stable
    across runs and processes (unlike Python's ``hash``), and independent of
    which other leaves are selected, so adding a layer does not change the
    noise drawn for the others. A leading ``"params"`` (the collection of
    Linen variables) is left out, so that ``program_params(variables, key)``
    and ``program_params(variables["params"], key)`` (what a sweep's
    ``apply_fn`` receives) draw the same chip.

    Args:
        key: The key given to :func:`program_params`; may be traced or vmapped.
        path: The leaf's path as plain names.

    Returns:
        The leaf's key.

    Example:
        >>> import jax
        >>> import fusion_jax as fj
        >>> k = jax.random.key(0)
        >>> bool((jax.random.key_data(fj.leaf_key(k, ("a", "kernel")))
        ...       == jax.random.key_data(fj.leaf_key(k, ("b", "kernel")))).all())
        False
        >>> bool((jax.random.key_data(fj.leaf_key(k, ("params", "a", "kernel")))
        ...       == jax.random.key_data(fj.leaf_key(k, ("a", "kernel")))).all())
        True
    """
    return jax.random.fold_in(key, _path_hash(path))


def _path_hash(path: LeafPath) -> int:
    if len(path) > 1 and path[0] == "params":  # Linen variables' collection
        path = path[1:]
    # 31 bits: fold_in takes a non-negative int32-representable value.
    return zlib.crc32(_path_text(path).encode()) & 0x7FFFFFFF


class _Unset:
    """Sentinel: a setting not given to :func:`program_params`."""

    def __repr__(self) -> str:
        return "<from the layer, else the default>"


_UNSET: Any = _Unset()

#: The settings a Fusion layer carries and program_params reads, with their defaults.
_SETTING_DEFAULTS: dict[str, Any] = {
    "g_max": 40.0,
    "noise": DEFAULT_NOISE,
    "t_inference": 0.0,
    "strict_aihwkit": False,
    "gradient": "exact",
    "max_input_size": tiles.DEFAULT_MAX_INPUT_SIZE,
    "max_output_size": tiles.DEFAULT_MAX_OUTPUT_SIZE,
}


def _expected_kernel(module: Any) -> tuple[KernelAxes, tuple[int | None, ...]] | None:
    """The axes and shape (``None``: any size) of a known Flax NNX layer's own kernel."""
    from flax import nnx

    if isinstance(module, nnx.Linear):
        return KernelAxes.dense(), (module.in_features, module.out_features)
    if isinstance(module, nnx.ConvTranspose) and module.transpose_kernel:
        # Flax stores this kernel [*window, out, in]: the output channels are axis -2.
        spatial = len(module.kernel_size)
        axes = KernelAxes.conv(spatial, transpose_kernel=True)
        return axes, (*module.kernel_size, module.out_features, None)
    if isinstance(module, nnx.Conv | nnx.ConvTranspose):
        spatial = len(module.kernel_size)
        return KernelAxes.conv(spatial), (*module.kernel_size, None, module.out_features)
    if isinstance(module, nnx.LinearGeneral):
        batch = tuple(module.batch_axis.values())
        axes = KernelAxes.general(len(module.in_features), len(module.out_features), len(batch))
        return axes, (*batch, *module.in_features, *module.out_features)
    if isinstance(module, nnx.Einsum):
        if module.einsum_str is None:
            return None
        return KernelAxes.einsum(module.einsum_str), tuple(module.kernel_shape)
    return None


def module_kernel_axes(module: Any, kernel_shape: Sequence[int], name: str) -> KernelAxes | None:
    """The axes of the kernel of shape ``kernel_shape`` held by a Flax NNX layer.

    Known layers: ``nnx.Linear``, ``nnx.Conv``, ``nnx.ConvTranspose``,
    ``nnx.LinearGeneral`` (its ``batch_axis`` are stack axes), ``nnx.Einsum``
    (from its ``einsum_str``) and their Fusion counterparts. Leading axes
    beyond the layer's own kernel (a layer stacked by ``nnx.vmap`` /
    ``nnx.scan``) are stack axes. ``None`` for any other module.

    Raises:
        ValueError: naming ``name`` if the kernel's shape does not end with
            the layer's own kernel shape, or for an ``nnx.Einsum`` without an
            ``einsum_str`` (given at call time only).
    """
    from flax import nnx

    if isinstance(module, nnx.Einsum) and module.einsum_str is None:
        raise ValueError(
            f"{name}: an nnx.Einsum whose einsum_str is given only at call time has no known "
            "kernel axes; pass layouts={...: fj.layout.KernelAxes.einsum('...')} for it."
        )
    found = _expected_kernel(module)
    if found is None:
        return None
    axes, own = found
    shape = tuple(int(d) for d in kernel_shape)
    extra = len(shape) - len(own)
    fits = extra >= 0 and all(o is None or o == d for o, d in zip(own, shape[extra:], strict=True))
    if not fits:
        raise ValueError(
            f"{name}: the kernel of shape {shape} of a {type(module).__name__} does not end with "
            f"its own kernel shape {tuple('?' if o is None else o for o in own)} (leading axes "
            "are read as stacked layers); pass layouts= for it."
        )
    return axes.stacked(extra) if extra else axes


def _layer_settings(module: Any) -> dict[str, Any] | None:
    """A Fusion layer's own settings (``None`` for a plain layer)."""
    from fusion_jax.nnx import _FusionLayer

    if not isinstance(module, _FusionLayer):
        return None
    return {name: getattr(module, name) for name in _SETTING_DEFAULTS if hasattr(module, name)}


class _ModuleSpecs(NamedTuple):
    """What program_params reads from an NNX module's layers, by kernel leaf path."""

    axes: dict[LeafPath, KernelAxes | ValueError]
    settings: dict[LeafPath, dict[str, Any]]  # a Fusion layer's own settings
    masks: dict[LeafPath, Any]  # a masked layer's (nnx.Conv's, ...) mask


def _module_specs(module: Any, *, strict: bool = True) -> _ModuleSpecs:
    """Kernel axes, Fusion settings and masks of every known layer of an NNX module.

    With ``strict=False`` a layer whose axes cannot be read gets its error as
    its entry, raised only if no ``layouts`` entry replaces it.
    """
    from flax import nnx

    specs = _ModuleSpecs({}, {}, {})
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Module):
            continue
        kernel = getattr(node, "kernel", None)
        if not isinstance(kernel, nnx.Variable):
            continue
        leaf_path = (*path, "kernel")
        name = _path_text(leaf_path)
        value = kernel.get_value()  # an array, or a ShapeDtypeStruct under nnx.eval_shape
        try:
            found = module_kernel_axes(node, tuple(value.shape), name)
        except ValueError as err:
            if strict:
                raise
            found = err
        if found is not None:
            specs.axes[leaf_path] = found
        own = _layer_settings(node)
        if own is not None:
            specs.settings[leaf_path] = own
        mask = getattr(node, "mask", None)
        if mask is not None:
            specs.masks[leaf_path] = mask
    return specs


def kernel_layouts(module: Any) -> dict[LeafPath, KernelAxes]:
    """The kernel axes of every known layer of an NNX module, by leaf path.

    The paths are those of ``nnx.state(module)`` / ``nnx.split(module)``
    leaves as :func:`program_params` names them, so the result is the
    ``layouts`` for programming the module's state as a plain pytree (what
    :func:`fusion_jax.sweep` and :mod:`fusion_jax.training` do). Known layers
    are ``nnx.Linear``, ``Conv``, ``ConvTranspose``, ``LinearGeneral``,
    ``Einsum`` and their Fusion counterparts, stacked or not.

    Args:
        module: An ``nnx.Module``.

    Returns:
        Leaf path -> :class:`~fusion_jax.layout.KernelAxes`.

    Raises:
        ValueError: naming the leaf, for a kernel that does not fit its layer
            (see :func:`module_kernel_axes`).

    Example:
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> model = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0)),
        ...                        nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
        >>> fj.nnx.kernel_layouts(model)
        {('layers', 0, 'kernel'): KernelAxes(inputs=(2, 0, 1), outputs=(3,), stack=()),
         ('layers', 1, 'kernel'): KernelAxes(inputs=(0,), outputs=(1,), stack=())}
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"kernel_layouts needs an nnx.Module, got {type(module)}.")
    return _module_specs(module).axes  # type: ignore[return-value]


def freeze_layouts(layouts: Layouts | None) -> Any:
    """``layouts`` in a hashable form (for a jit static argument or a cache key).

    A mapping becomes a sorted tuple of ``("path/text", KernelAxes)`` pairs,
    which :func:`program_params` accepts back through ``dict(...)``; a
    function or ``None`` is returned as is.
    """
    if layouts is None or (callable(layouts) and not isinstance(layouts, Mapping)):
        return layouts
    if isinstance(layouts, tuple):  # frozen already
        layouts = dict(layouts)
    if not isinstance(layouts, Mapping):
        raise TypeError(
            f"layouts must be a mapping leaf path -> KernelAxes or a function, got {type(layouts)}."
        )
    return tuple(
        sorted((k if isinstance(k, str) else _path_text(tuple(k)), v) for k, v in layouts.items())
    )


def program_params(
    params: PyTree,
    key: PRNGKeyArray | None,
    *,
    g_max: float | ArrayLike = _UNSET,
    noise: NoiseModel | None = _UNSET,
    t_inference: float | ArrayLike = _UNSET,
    strict_aihwkit: bool = _UNSET,
    gradient: GradientMode = _UNSET,
    where: Callable[[LeafPath, Any], bool] | None = None,
    layouts: Layouts | None = None,
    max_input_size: int = _UNSET,
    max_output_size: int = _UNSET,
) -> PyTree:
    """Program every kernel of a model onto the simulated chip, once.

    This is writing a whole model to the chip: every selected kernel is
    programmed with :func:`program_kernel` (one chip row per output feature
    of every layer) under its own key, :func:`leaf_key`; everything else
    (biases, which stay digital, normalisation parameters, RNG state) is
    returned unchanged. Evaluating the result uses one programmed copy for
    the whole test set, as the chip does; the layers of :mod:`fusion_jax.nnx`
    and :mod:`fusion_jax.linen` instead program afresh on every training step.

    ``params`` may be:

    * an ``nnx.Module``: the result is its programmed copy (the input is left
      unchanged), whose Fusion layers with a programmed kernel are in
      evaluation mode (``deterministic``): calling the copy uses the kernels
      as programmed and never programs them again, whatever the input's
      mode (layers ``where`` left out, and others such as dropout, keep
      theirs). Only the programmed kernels are the copy's own variables:
      the others are the input's, so running the copy in training mode
      updates the model's BatchNorm statistics and advances its dropout
      RNG, as a training step through the copy needs. The axes of every
      ``nnx.Linear``, ``Conv``, ``LinearGeneral`` and ``Einsum`` kernel (and of their Fusion
      counterparts) are known from the layer, including stacked layers
      made by ``nnx.vmap``/``nnx.scan`` (leading layer axes) and attention
      projections; each Fusion layer is programmed with its own settings
      (``g_max``, ``noise``, ``t_inference``, ``strict_aihwkit``,
      ``gradient``) unless the call gives them, and a masked convolution's
      kernel times its ``mask`` (masked-out weights are not on the chip), as
      the layer itself programs it.
    * any pytree: a Linen ``variables``/``params`` dict, an ``nnx.State``,
      nested dicts. A kernel of rank 2 is ``[in, out]``; a kernel of higher
      rank needs its axes in ``layouts`` (for Linen,
      :func:`fusion_jax.linen.kernel_layouts`; for an NNX model's state,
      :func:`fusion_jax.nnx.kernel_layouts`), otherwise an error names it.

    Jittable, differentiable, and vmappable over ``key`` and ``g_max``
    (a sweep compiles once). Kernels of the same shape, dtype, placement,
    axes and settings are programmed by one batched call (their leaf keys
    folded in one batch; groups above 2**24 elements in chunks), so the
    programming compiles once per kind of kernel, not once per kernel: the
    projections of all transformer blocks, a stack of equal layers. Each
    kernel's result is that of its own :func:`program_kernel` call with its
    :func:`leaf_key`; where batching would change it (keys of a PRNG other
    than threefry, tiled convolutions) kernels are programmed one by one.
    Inside a training step, ``program_params`` of a model is therefore the
    fastest-compiling way to program every kernel on each step.

    Args:
        params: An ``nnx.Module`` or a parameter pytree.
        key: PRNG key; each leaf's key is folded in from it. May be ``None``
            when noise is off.
        g_max: Largest conductance in uS, in [10, 40]; may be traced.
            Default: each Fusion layer's own, else 40.
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip. Default: each
            Fusion layer's own, else the default chip model.
        t_inference: Seconds since programming at which the chip is read.
            Default: each Fusion layer's own, else 0.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
            Default: each Fusion layer's own, else ``False``.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
            Default: each Fusion layer's own, else ``"exact"``.
        where: Which leaves to program: a predicate ``where(path, leaf)``
            where ``path`` is a tuple of plain names such as
            ``("params", "Dense_0", "kernel")`` (dict keys, attribute names,
            sequence indices; the ``.value`` of an ``nnx.Variable`` or Linen
            box left out). Default :func:`is_kernel`.
        layouts: The :class:`~fusion_jax.layout.KernelAxes` of kernels, by
            leaf path: a tuple of names or its ``/``-joined text (a leading
            ``params`` collection may be left out), or a function
            ``layouts(path, leaf)`` returning the axes or ``None``. They take
            precedence over those read from a module.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); see :func:`program_kernel`. Default: each Fusion layer's
            own, else 512.
        max_output_size: Most outputs per chip tile (0: no split). Default:
            each Fusion layer's own, else 512.

    Returns:
        The programmed copy: a module for a module, else a pytree of the
        same structure with the selected leaves programmed.

    Raises:
        ValueError: if ``where`` selects a leaf with fewer than 2 dimensions,
            a kernel of rank above 2 has no known axes, or a leaf fails
            :func:`program_kernel`'s checks (each message names the leaf's
            path); if no leaf is selected; if ``layouts`` names a missing
            leaf; or if noise is on and ``key`` is ``None``.
        ArgumentError: for a concrete ``g_max`` outside [10, 40].
        FloatingPointError: naming the leaf, if its read-back overflows its
            dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> model = nn.Dense(3)
        >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
        >>> on_chip = fj.program_params(variables, jax.random.key(1), g_max=25.0)
        >>> bool((on_chip["params"]["bias"] == variables["params"]["bias"]).all())
        True
        >>> bool((on_chip["params"]["kernel"] != variables["params"]["kernel"]).any())
        True
        >>> model.apply(on_chip, jnp.ones((1, 4))).shape
        (1, 3)

        An NNX model, with its layers' own settings:

        >>> from flax import nnx
        >>> net = nnx.Sequential(
        ...     fj.nnx.FusionLinear(4, 8, g_max=10.0, rngs=nnx.Rngs(0)),
        ...     nnx.MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(1)),
        ... )
        >>> chip_net = fj.program_params(net, jax.random.key(1))   # layer 0 at 10 uS, rest 40 uS
        >>> chip_net(jnp.ones((1, 5, 4))).shape   # the kernels as programmed, not again
        (1, 5, 8)
        >>> chip_net.layers[0].deterministic, net.layers[0].deterministic
        (True, False)
        >>> bool((chip_net.layers[1].query.kernel[...] != net.layers[1].query.kernel[...]).any())
        True

        A kernel of rank above 2 in a plain pytree needs its axes:

        >>> stacked = {"blocks": {"kernel": jnp.ones((3, 4, 2))}}    # 3 scanned layers
        >>> axes = {"blocks/kernel": fj.layout.KernelAxes.dense().stacked()}
        >>> fj.program_params(stacked, None, noise=None, layouts=axes)["blocks"]["kernel"].shape
        (3, 4, 2)

        A g_max sweep, compiled once:

        >>> sweep = jax.vmap(lambda g: fj.program_params(variables, jax.random.key(1), g_max=g))
        >>> sweep(jnp.array([10.0, 25.0, 40.0]))["params"]["kernel"].shape
        (3, 4, 3)
    """
    from flax import nnx

    call = {
        "g_max": g_max,
        "noise": noise,
        "t_inference": t_inference,
        "strict_aihwkit": strict_aihwkit,
        "gradient": gradient,
        "max_input_size": max_input_size,
        "max_output_size": max_output_size,
    }
    given = {name: value for name, value in call.items() if value is not _UNSET}
    for name in ("max_input_size", "max_output_size"):
        if name in given:
            tiles.check_max_size(given[name], name)
    if "gradient" in given:
        _check_gradient_mode(given["gradient"])
    if "strict_aihwkit" in given:
        _validation.check_flag(given["strict_aihwkit"], "strict_aihwkit", "program_params")
    if "g_max" in given:
        if np.ndim(given["g_max"]) != 0:
            raise ArgumentError(
                f"g_max must be a scalar, got shape {np.shape(given['g_max'])}; to sweep several "
                "values use jax.vmap over g_max."
            )
        _validation.check_g_max(given["g_max"], where="program_params")
    if "noise" in given:
        given["noise"] = resolve_noise(given["noise"])
        if given["noise"] is not None:
            _validation.check_noise_model(given["noise"], where="program_params")
    if "t_inference" in given:
        _validation.check_t_inference(given["t_inference"], where="program_params")
    if key is not None:
        _validation.check_key(key, where="program_params")

    if isinstance(params, nnx.Module):
        specs = _module_specs(params, strict=False)
        graphdef, state = nnx.split(params)
        programmed, done = _program_tree(state, key, given, where, layouts, *specs)
        # Only the programmed kernels are new variables; every other one is the
        # input's own, so that what the copy updates when it runs in training
        # mode (BatchNorm statistics, dropout's RNG count) is the model's, as a
        # training step that programs the model and runs the copy needs.
        flat = zip(nnx.to_flat_state(state), nnx.to_flat_state(programmed), strict=True)
        shared = [(path, new if path in done else old) for (path, old), (_, new) in flat]
        chip = nnx.merge(graphdef, nnx.from_flat_state(shared))
        # The copy is the chip: its Fusion layers whose kernel was programmed use it
        # as programmed (deterministic), also where the input was in training mode.
        from fusion_jax.nnx import _FusionLayer

        for module_path, module in nnx.iter_graph(chip):
            if isinstance(module, _FusionLayer) and (*module_path, "kernel") in done:
                module.deterministic = True
        return chip
    return _program_tree(params, key, given, where, layouts, {}, {})[0]


def _check_kernels_only(
    params: Any,
    caller: str,
    *,
    where: Callable[[LeafPath, Any], bool] | None,
    layouts: Layouts | None,
    **given: Any,
) -> None:
    """The checks :func:`program_params` makes of each kernel it would program, without programming.

    For callers that program the kernels inside a compiled function of
    their own (:func:`fusion_jax.sweep`), where a traced check cannot
    report: the weights are checked here, on host copies (no compile), with
    errors naming ``caller`` and the leaf. ``given`` holds the settings
    passed to ``program_params`` (tile sizes); noise is not drawn. Kernels
    whose values are not all on this process are left to the traced checks.
    """
    from flax import nnx

    given = {**given, "noise": None}
    specs: tuple[Any, ...] = ({}, {})
    if isinstance(params, nnx.Module):
        specs = tuple(_module_specs(params, strict=False))
        params = nnx.state(params)
    _program_tree(params, None, given, where, layouts, *specs, caller=caller, check_only=True)


def _program_tree(
    params: Any,
    key: PRNGKeyArray | None,
    given: dict[str, Any],
    where: Callable[[LeafPath, Any], bool] | None,
    layouts: Layouts | None,
    module_axes: Mapping[LeafPath, KernelAxes | ValueError],
    module_settings: Mapping[LeafPath, Mapping[str, Any]],
    masks: Mapping[LeafPath, Any] | None = None,
    *,
    caller: str = "program_params",
    check_only: bool = False,
) -> tuple[Any, set[LeafPath]]:
    """program_params on a pytree, with per-leaf axes, settings and masks read from a module.

    A kernel with a mask (a masked convolution's) is programmed times its
    mask, as its layer programs it: masked-out weights are not on the chip.
    Returns the programmed pytree and the paths of the leaves it programmed.
    With ``check_only`` every check runs and nothing is programmed (the
    pytree returned is ``None``); errors name ``caller``.
    """
    select = is_kernel if where is None else where
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_plain_path(keypath) for keypath, _ in flat]
    lookup = _layout_lookup(layouts, paths)
    default_model = resolve_noise(DEFAULT_NOISE) if "noise" not in given else None
    out: list[Any] = []
    # Kernels that differ only in values and keys are programmed as one batched call.
    groups: dict[tuple[Any, ...], list[tuple[int, _KernelCall, str]]] = {}
    programmed_paths: set[LeafPath] = set()
    n_selected = 0
    for path, (_, leaf) in zip(paths, flat, strict=True):
        if not select(path, leaf):
            out.append(leaf)
            continue
        n_selected += 1
        name = _path_text(path) or "<root>"
        if np.ndim(leaf) < 2:
            raise ValueError(
                f"{caller}: `where` selected the leaf at {name!r} of shape "
                f"{tuple(np.shape(leaf))}, but only kernels with at least 2 dimensions "
                "[..., in, out] can be programmed (biases stay digital)."
            )
        axes = lookup(path, leaf)
        if axes is None:
            axes = module_axes.get(path)
            if isinstance(axes, ValueError):
                raise ValueError(f"{caller}: {axes}") from None
        if axes is None:
            if np.ndim(leaf) > 2:
                raise ValueError(
                    f"{caller}: the kernel {name!r} of shape {tuple(np.shape(leaf))} has "
                    "rank above 2, and which of its axes are inputs, outputs or stacked layers "
                    "is unknown. Pass layouts={" + repr(name) + ": fj.layout.KernelAxes...} "
                    "(e.g. KernelAxes.conv(2) for a 2-D convolution, KernelAxes.dense().stacked() "
                    "for scanned Dense layers), or the nnx.Module itself, or for Linen "
                    "layouts=fj.linen.kernel_layouts(model, *inputs)."
                )
            axes = KernelAxes.dense()
        settings = {**_SETTING_DEFAULTS, **module_settings.get(path, {}), **given}
        if masks and path in masks:
            if check_only:  # on host copies where they can be read: no compile
                values = [_validation.concrete_value(a) for a in (leaf, masks[path])]
                readable = all(value is not None for value in values)
                leaf = values[0] * values[1] if readable else leaf * masks[path]
            else:
                leaf = leaf * masks[path]
        model = settings["noise"]
        model = default_model if model is DEFAULT_NOISE else resolve_noise(model)
        # The one check of the settings (a key when noise is on, ...), naming the kernel.
        _validation.check_settings(
            where=f"{caller} (kernel {name!r})",
            noise=model,
            key=key,
            t_inference=settings["t_inference"],
        )
        try:
            call = _checked_kernel_call(
                leaf,
                None if model is None else key,
                axes=axes,
                g_max=settings["g_max"],
                noise=model,
                t_inference=settings["t_inference"],
                strict_aihwkit=settings["strict_aihwkit"],
                gradient=settings["gradient"],
                max_input_size=settings["max_input_size"],
                max_output_size=settings["max_output_size"],
                traced_prefix=f"{caller}: leaf {name!r}: ",
            )
        except _RESTATED as err:
            _restate(err, f"{caller}: leaf {name!r}")
            raise
        if call.key is not None:
            call = call._replace(fold=_path_hash(path))  # its key: leaf_key(key, path)
        token = call.group_token() if _groupable(call) else ("alone", len(out))
        groups.setdefault(token, []).append((len(out), call, name))
        programmed_paths.add(path)
        out.append(None)  # filled in below
    if n_selected == 0:
        shown = ", ".join(repr(_path_text(p)) for p in paths[:8]) + (
            " ..." if len(paths) > 8 else ""
        )
        raise ValueError(
            f"{caller} selected no leaf to program; the default selects leaves named "
            f"'kernel' with at least 2 dimensions. Leaves seen: [{shown}]."
        )
    if check_only:
        return None, programmed_paths
    done = []
    for members in groups.values():
        for chunk in _chunks(members):
            try:
                programmed = _run_grouped([call for _, call, _ in chunk])
            except _RESTATED as err:
                _restate(err, f"{caller}: leaf {', '.join(name for _, _, name in chunk)!r}")
                raise
            for (index, _, name), (kernel, finite) in zip(chunk, programmed, strict=True):
                out[index] = kernel
                done.append((kernel, finite, name))
    # Checked once every chunk is dispatched: a concrete check waits for its kernel.
    for kernel, finite, name in done:
        _validation.check_read_back(
            kernel, f"{caller}: leaf {name!r}", kernel=True, all_finite=finite
        )
    return jax.tree_util.tree_unflatten(treedef, out), programmed_paths


#: Most kernel elements programmed by one batched call: a group of same-shaped
#: kernels larger than this is programmed in chunks (at most two compiled sizes),
#: so that the memory of one call stays bounded.
_MAX_GROUP_ELEMENTS = 1 << 24


def _chunks(members: list[Any]) -> list[list[Any]]:
    size = max(1, _MAX_GROUP_ELEMENTS // max(1, members[0][1].kernel.size))
    return [members[i : i + size] for i in range(0, len(members), size)]


def _groupable(call: _KernelCall) -> bool:
    """Whether this kernel may be programmed batched with others and give its own result.

    Not with keys of other PRNG implementations than threefry (their draws under
    ``jax.vmap`` depend on the position in the batch), nor for tiled kernels
    whose inputs are rearranged into export order (a convolution's: XLA then
    compiles the batched body with another summation order).
    """
    if call.key is not None and _threefry_key_data(call.key) is None:
        return False
    axes = call.statics["axes"]
    return len(call.statics["in_sizes"]) <= 1 or len(axes.inputs) == 1


#: The errors programming raises that :func:`_restate` names the kernel's holder in.
_RESTATED = (TypeError, ValueError, FloatingPointError)


def _restate(err: Exception, holder: str) -> None:
    """Name what holds the kernel (a layer, a leaf) in an error raised while programming it.

    Ours (exactly ``TypeError``, ``ValueError``, ``FloatingPointError``) are
    raised again as ``"{holder}: ..."``; any other gets a note; an
    ``ArgumentError`` names its argument already. The caller re-raises.
    """
    if isinstance(err, ArgumentError):
        return
    if type(err) in _RESTATED:
        raise type(err)(f"{holder}: {err}") from err
    err.add_note(f"(while programming {holder})")
