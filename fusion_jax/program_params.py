"""Programming Flax kernels, and whole parameter pytrees, onto the simulated chip.

:func:`fusion_jax.program` works in the reference's layout, one row per output
``[..., out, in]``. Flax keeps the output channel on the last axis of a
kernel (``[in, out]``, ``[kh, kw, in, out]``). :func:`program_kernel` programs
one Flax kernel (each output channel is one row on the chip) and
:func:`program_params` programs every kernel of a model's parameters at once:
one programmed copy of the whole network, as after writing it to the chip.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation, layout, tiles
from fusion_jax.conversion import _prepare_weights
from fusion_jax.errors import ArgumentError
from fusion_jax.programming import (
    DEFAULT_NOISE,
    GradientMode,
    NoiseModel,
    _check_gradient_mode,
    _checked_settings,
    _program_prepared,
    resolve_noise,
)

__all__ = ["LeafPath", "is_kernel", "leaf_key", "program_kernel", "program_params"]

#: A leaf's position in a pytree as plain names, e.g. ``("params", "Dense_0", "kernel")``.
LeafPath = tuple[Hashable, ...]

PyTree = TypeVar("PyTree")

# Attributes under which a box (nnx.Variable, nn.Partitioned) holds its array.
_BOX_ATTRS = ("value", "raw_value")


def program_kernel(
    kernel: Float[ArrayLike, "*spatial in out"],
    key: PRNGKeyArray | None = None,
    *,
    g_max: float | ArrayLike = 40.0,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float | ArrayLike = 0.0,
    strict_aihwkit: bool = False,
    gradient: GradientMode = "exact",
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
) -> Float[Array, "*spatial in out"]:
    """Program one Flax kernel onto the simulated chip and read it back.

    Each output channel (the last axis) is one row on the chip: it gets its
    own conductance scale and its own regression slope. The result is
    :func:`fusion_jax.program` of the reference rows
    (:func:`fusion_jax.layout.kernel_to_rows`), put back in Flax layout, but
    computed in the kernel's own layout, without the two transposes. The
    noise model therefore sees the conductances as ``[in * spatial, out]``
    and its random draws fall on the devices in that order: with random
    noise, the same key gives a different (equally distributed) draw than
    ``program(kernel_to_rows(kernel), key)``.

    A kernel with more inputs than ``max_input_size`` is split into chip
    tiles as its export is (:mod:`fusion_jax.tiles`): a Dense kernel along
    its inputs, a conv kernel on input-channel boundaries (whole channels of
    ``kh * kw`` inputs per tile, as aihwkit's mapped conv layers), and each
    tile row is scaled and regressed on its own. Simulating a layer and
    exporting it (:func:`fusion_jax.fusion_export`) give the same tiles.

    Args:
        kernel: A Dense kernel ``[in, out]`` or a conv kernel
            ``[*spatial, in, out]``. The output channel must be the last
            axis: a kernel with extra leading axes (stacked by ``nnx.vmap`` /
            ``nnx.scan``) would be treated as a conv kernel, so program those
            per slice.
        key: PRNG key for the noise; may be ``None`` when ``noise=None``.
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
        ValueError: for a kernel with fewer than 2 dimensions, NaN/Inf values,
            a missing key when noise is on, an unknown ``gradient``, a
            negative tile size, or a conv channel (``kh * kw`` inputs) larger
            than ``max_input_size``.
        ArgumentError: for a concrete ``g_max`` outside [10, 40].

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
    """
    kernel = jax.numpy.asarray(kernel)
    model = _checked_settings(noise, key, gradient, "program_kernel")
    # Checks (and error messages) as for the reference rows; under jit the
    # rearranged copy is only inspected, never computed.
    _prepare_weights(layout.kernel_to_rows(kernel), "kernel")
    *spatial, n_in, n_out = kernel.shape
    group = tiles._group_size(kernel.shape)
    sizes = tiles._input_sizes(n_in * group, max_input_size, max_output_size, group, n_out)
    # Computed in the kernel's own layout: one column per output channel, no
    # transposes (they cost more than the rest of the conversion on a CPU).
    # A tiled conv needs its inputs in the export's order, channel-major,
    # so that each tile is a contiguous run of whole channels.
    torch_order = len(sizes) > 1 and bool(spatial)
    moved = jnp.moveaxis(kernel, -2, 0) if torch_order else kernel
    programmed = _program_prepared(
        moved.reshape(-1, n_out),
        key,
        g_max,
        model,
        t_inference,
        strict_aihwkit=strict_aihwkit,
        gradient=gradient,
        axis=-2,
        in_sizes=sizes,
    ).reshape(moved.shape)
    return jnp.moveaxis(programmed, 0, -2) if torch_order else programmed


def is_kernel(path: LeafPath, leaf: Any) -> bool:
    """The default selection of :func:`program_params`: weight kernels.

    A leaf is selected when the last name of its path is ``"kernel"`` (Flax's
    name for the weights of ``Dense``/``Linear`` and ``Conv``) and it has at
    least 2 dimensions. Biases, normalisation scales, embeddings, RNG state
    and batch statistics are not selected.

    Args:
        path: The leaf's path as plain names (see :func:`program_params`).
        leaf: The leaf.

    Returns:
        Whether the leaf is a kernel to program.

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> fj.is_kernel(("params", "Dense_0", "kernel"), jnp.ones((3, 4)))
        True
        >>> fj.is_kernel(("params", "Dense_0", "bias"), jnp.ones(4))
        False
    """
    return bool(path) and path[-1] == "kernel" and np.ndim(leaf) >= 2


def leaf_key(key: PRNGKeyArray, path: LeafPath) -> PRNGKeyArray:
    """The PRNG key :func:`program_params` uses for the leaf at ``path``.

    ``fold_in`` of a CRC-32 of the path's text: stable across runs and
    processes (unlike Python's ``hash``), and independent of which other
    leaves are selected, so adding a layer does not change the noise drawn
    for the others.

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
    """
    return jax.random.fold_in(key, _path_hash(path))


def _path_hash(path: LeafPath) -> int:
    # 31 bits: fold_in takes a non-negative int32-representable value.
    return zlib.crc32(_path_text(path).encode()) & 0x7FFFFFFF


def _path_text(path: LeafPath) -> str:
    return "/".join(str(p) for p in path)


def _key_name(entry: Any) -> Hashable:
    """One ``jax.tree_util`` key-path entry as a plain name."""
    if isinstance(entry, jax.tree_util.DictKey):
        return entry.key
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.SequenceKey):
        return entry.idx
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return entry.key
    return str(entry)


def _plain_path(keypath: tuple[Any, ...]) -> LeafPath:
    """A key path as plain names, without the ``.value`` of a box.

    ``nnx.State`` leaves sit under ``Variable.value`` and boxed Linen params
    (``nn.Partitioned``) under ``.value``; dropping that last attribute makes
    the path of a kernel end in ``"kernel"`` whatever holds it.
    """
    entries = list(keypath)
    while (
        entries
        and isinstance(entries[-1], jax.tree_util.GetAttrKey)
        and entries[-1].name in _BOX_ATTRS
    ):
        entries.pop()
    return tuple(_key_name(entry) for entry in entries)


def program_params(
    params: PyTree,
    key: PRNGKeyArray | None,
    *,
    g_max: float | ArrayLike = 40.0,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float | ArrayLike = 0.0,
    strict_aihwkit: bool = False,
    gradient: GradientMode = "exact",
    where: Callable[[LeafPath, Any], bool] | None = None,
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
) -> PyTree:
    """Program every kernel of a parameter pytree onto the simulated chip, once.

    This is writing a whole model to the chip: every selected leaf is
    programmed with :func:`program_kernel` (one row per output channel, the
    last axis) under its own key, :func:`leaf_key`; everything else (biases,
    which stay digital, normalisation parameters, RNG state) is returned
    unchanged. Evaluating the result uses one programmed copy for the whole
    test set, as the chip does; the layers of :mod:`fusion_jax.nnx` and
    :mod:`fusion_jax.linen` instead program afresh on every training step.

    Works on any pytree: a Linen ``variables``/``params`` dict, an
    ``nnx.State`` (from ``nnx.split`` or ``nnx.state``), or nested dicts.
    Jittable, differentiable, and vmappable over ``key`` and ``g_max``
    (a sweep compiles once).

    Args:
        params: The parameter pytree.
        key: PRNG key; each leaf's key is folded in from it. May be ``None``
            when ``noise=None``.
        g_max: Largest conductance in uS, in [10, 40]; may be traced.
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        where: Which leaves to program: a predicate ``where(path, leaf)``
            where ``path`` is a tuple of plain names such as
            ``("params", "Dense_0", "kernel")`` (dict keys, attribute names,
            sequence indices; the ``.value`` of an ``nnx.Variable`` or Linen
            box left out). Default :func:`is_kernel`. Selected leaves must be
            Flax-layout kernels ``[*spatial, in, out]``.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); see :func:`program_kernel`.
        max_output_size: Most outputs per chip tile (0: no split).

    Returns:
        A pytree of the same structure with the selected leaves programmed.

    Raises:
        ValueError: if ``where`` selects a leaf with fewer than 2 dimensions
            or a leaf that fails :func:`program_kernel`'s checks (the message
            names the path), if no leaf is selected, or if noise is on and
            ``key`` is ``None``.
        ArgumentError: for a concrete ``g_max`` outside [10, 40].

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

        The same with NNX, through ``nnx.split`` / ``nnx.merge``:

        >>> from flax import nnx
        >>> layer = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
        >>> graphdef, state = nnx.split(layer)
        >>> chip_layer = nnx.merge(graphdef, fj.program_params(state, jax.random.key(1)))
        >>> chip_layer(jnp.ones((1, 4))).shape
        (1, 3)

        A g_max sweep, compiled once:

        >>> sweep = jax.vmap(lambda g: fj.program_params(variables, jax.random.key(1), g_max=g))
        >>> sweep(jnp.array([10.0, 25.0, 40.0]))["params"]["kernel"].shape
        (3, 4, 3)
    """
    _check_gradient_mode(gradient)
    tiles.check_max_size(max_input_size, "max_input_size")
    tiles.check_max_size(max_output_size, "max_output_size")
    if np.ndim(g_max) != 0:
        raise ArgumentError(
            f"g_max must be a scalar, got shape {np.shape(g_max)}; to sweep several values "
            "use jax.vmap over g_max."
        )
    _validation.check_g_max(g_max)
    model = resolve_noise(noise)
    if model is not None and key is None:
        raise ValueError(
            "program_params needs a PRNG key when noise is on (pass key=, or noise=None)."
        )
    select = is_kernel if where is None else where
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    n_selected = 0
    for keypath, leaf in flat:
        path = _plain_path(keypath)
        if not select(path, leaf):
            out.append(leaf)
            continue
        n_selected += 1
        name = _path_text(path) or "<root>"
        if np.ndim(leaf) < 2:
            raise ValueError(
                f"program_params: `where` selected the leaf at {name!r} of shape "
                f"{tuple(np.shape(leaf))}, but only kernels with at least 2 dimensions "
                "[..., in, out] can be programmed (biases stay digital)."
            )
        leaf_k = None if model is None else leaf_key(key, path)
        try:
            programmed = program_kernel(
                leaf,
                leaf_k,
                g_max=g_max,
                noise=model,
                t_inference=t_inference,
                strict_aihwkit=strict_aihwkit,
                gradient=gradient,
                max_input_size=max_input_size,
                max_output_size=max_output_size,
            )
        except ArgumentError:
            raise
        except (TypeError, ValueError) as err:
            if type(err) in (TypeError, ValueError):  # ours: restate with the leaf's path
                raise type(err)(f"program_params: leaf {name!r}: {err}") from err
            err.add_note(f"(while programming the leaf {name!r} in program_params)")
            raise
        out.append(programmed)
    if n_selected == 0:
        paths = [_path_text(_plain_path(kp)) for kp, _ in flat]
        shown = ", ".join(repr(p) for p in paths[:8]) + (" ..." if len(paths) > 8 else "")
        raise ValueError(
            "program_params selected no leaf to program; the default selects leaves named "
            f"'kernel' with at least 2 dimensions. Leaves seen: [{shown}]."
        )
    return jax.tree_util.tree_unflatten(treedef, out)
