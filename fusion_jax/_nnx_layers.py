"""NNX: Fusion LinearGeneral and Einsum, and ``fusionize`` (private; see :mod:`fusion_jax.nnx`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import tiles
from fusion_jax.layout import KernelAxes
from fusion_jax.model_programming import _expected_kernel, _path_text, module_kernel_axes
from fusion_jax.nnx import FusionConv, FusionConvTranspose, FusionLinear, RngsLike, _FusionLayer
from fusion_jax.programming import DEFAULT_NOISE, GradientMode, NoiseModel

__all__ = ["FusionEinsum", "FusionLinearGeneral", "fusionize"]


class FusionLinearGeneral(_FusionLayer, nnx.LinearGeneral):
    """``nnx.LinearGeneral`` whose kernel is programmed onto the simulated chip on each call.

    Every argument of ``nnx.LinearGeneral`` is accepted and means the same,
    and the parameters are the same (``kernel [*batch, *in, *out]``). Each
    output feature (every index of the ``out_features`` axes) is one chip
    row over all the contracted inputs; each index of the ``batch_axis``
    axes is a layer of its own (:meth:`fusion_jax.layout.KernelAxes.general`).
    This is the layer of ``nnx.MultiHeadAttention``'s query, key, value and
    output projections: :func:`fusionize` puts it there. Modes, RNG stream
    and the digital bias are as for :class:`fusion_jax.nnx.FusionLinear`.

    Args:
        in_features: Input feature size(s), one per contracted axis.
        out_features: Output feature size(s).
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: ``True`` for evaluation mode (digital weights),
            ``False`` for training mode, ``None`` to require it at call time.
        rng_collection: Name of the ``nnx.Rngs`` stream for the noise keys.
        noise_stream: Keep a noise stream (``noise_key``) in the state, or
            none (``False``: the state is ``nnx.LinearGeneral``'s and every training
            call with noise needs ``rngs=``), as for
            :class:`fusion_jax.nnx.FusionLinear`.
        rngs: ``nnx.Rngs`` for the parameters and the noise stream.
        **kwargs: The other arguments of ``nnx.LinearGeneral`` (``axis``,
            ``batch_axis``, ``use_bias``, ``dtype``, ``kernel_init``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.
        TypeError: if ``noise_stream`` is not a bool, or ``rngs`` is no ``nnx.Rngs``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> layer = fj.nnx.FusionLinearGeneral(8, (2, 4), g_max=25.0,
        ...                                    rngs=nnx.Rngs(params=0, noise=1))
        >>> x = jnp.ones((3, 8))
        >>> layer(x).shape                       # programmed: 8 chip rows of 8 inputs
        (3, 2, 4)
        >>> plain = nnx.LinearGeneral(8, (2, 4), rngs=nnx.Rngs(params=0))
        >>> bool(jnp.allclose(layer(x, deterministic=True), plain(x)))
        True
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        g_max: float = 40.0,
        noise: NoiseModel | None = DEFAULT_NOISE,
        t_inference: float = 0.0,
        gradient: GradientMode = "exact",
        strict_aihwkit: bool = False,
        max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
        max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
        deterministic: bool | None = False,
        rng_collection: str = "noise",
        noise_stream: bool = True,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ) -> None:
        self._check_rngs(rngs)
        super().__init__(in_features, out_features, rngs=rngs, **kwargs)
        self._init_fusion(
            g_max=g_max,
            noise=noise,
            t_inference=t_inference,
            gradient=gradient,
            strict_aihwkit=strict_aihwkit,
            max_input_size=max_input_size,
            max_output_size=max_output_size,
            deterministic=deterministic,
            rng_collection=rng_collection,
            noise_stream=noise_stream,
            rngs=rngs,
        )

    _plain_call = staticmethod(nnx.LinearGeneral.__call__)

    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch"],
        out_sharding: Any = None,
        *,
        deterministic: bool | None = None,
        rngs: RngsLike | None = None,
    ) -> Float[Array, "*out"]:
        """Apply the layer with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs, contracted along ``axis``.
            out_sharding: As for ``nnx.LinearGeneral``.
            deterministic: Overrides the layer's mode for this call.
            rngs: Overrides the layer's RNG stream for this call: an
                ``nnx.Rngs``, an ``nnx.RngStream`` or a PRNG key (used as is).

        Returns:
            The outputs, as ``nnx.LinearGeneral`` gives them.
        """
        return self._fusion_call(jax.numpy.asarray(inputs), out_sharding, deterministic, rngs)


class FusionEinsum(_FusionLayer, nnx.Einsum):
    """``nnx.Einsum`` whose kernel is programmed onto the simulated chip on each call.

    Every argument of ``nnx.Einsum`` is accepted and means the same; the
    parameters are the same. The kernel's axes follow from the einsum string
    (:meth:`fusion_jax.layout.KernelAxes.einsum`): axes contracted with the
    input are a chip row's inputs, axes only in the kernel and the output
    are output features (one chip row each), axes in the input, the kernel
    and the output index independent layers. Modes, RNG stream and the
    digital bias are as for :class:`fusion_jax.nnx.FusionLinear`.

    Args:
        einsum_str: ``"input,kernel->output"``; or ``None`` to give it at call time.
        kernel_shape: Shape of the kernel.
        bias_shape: Shape of the bias, ``None`` for none.
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: ``True`` for evaluation mode, ``False`` for training
            mode, ``None`` to require it at call time.
        rng_collection: Name of the ``nnx.Rngs`` stream for the noise keys.
        noise_stream: Keep a noise stream (``noise_key``) in the state, or
            none (``False``: the state is ``nnx.Einsum``'s and every training
            call with noise needs ``rngs=``), as for
            :class:`fusion_jax.nnx.FusionLinear`.
        rngs: ``nnx.Rngs`` for the parameters and the noise stream.
        **kwargs: The other arguments of ``nnx.Einsum`` (``dtype``,
            ``kernel_init``, ``einsum_op``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.
        TypeError: if ``noise_stream`` is not a bool, or ``rngs`` is no ``nnx.Rngs``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> layer = fj.nnx.FusionEinsum("btd,dhk->bthk", (8, 2, 4), (2, 4),
        ...                             rngs=nnx.Rngs(params=0, noise=1))
        >>> layer(jnp.ones((1, 5, 8))).shape
        (1, 5, 2, 4)
    """

    def __init__(
        self,
        einsum_str: str | None,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        g_max: float = 40.0,
        noise: NoiseModel | None = DEFAULT_NOISE,
        t_inference: float = 0.0,
        gradient: GradientMode = "exact",
        strict_aihwkit: bool = False,
        max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
        max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
        deterministic: bool | None = False,
        rng_collection: str = "noise",
        noise_stream: bool = True,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ) -> None:
        self._check_rngs(rngs)
        if einsum_str is None:
            # nnx.Einsum checks the string in its constructor; one given at
            # call time is checked there.
            super().__init__("a,a->a", kernel_shape, bias_shape, rngs=rngs, **kwargs)
            self.einsum_str = None
        else:
            super().__init__(einsum_str, kernel_shape, bias_shape, rngs=rngs, **kwargs)
        self._init_fusion(
            g_max=g_max,
            noise=noise,
            t_inference=t_inference,
            gradient=gradient,
            strict_aihwkit=strict_aihwkit,
            max_input_size=max_input_size,
            max_output_size=max_output_size,
            deterministic=deterministic,
            rng_collection=rng_collection,
            noise_stream=noise_stream,
            rngs=rngs,
        )

    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch"],
        einsum_str: str | None = None,
        out_sharding: Any = None,
        *,
        deterministic: bool | None = None,
        rngs: RngsLike | None = None,
    ) -> Float[Array, "*out"]:
        """Apply the einsum with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: The input operand.
            einsum_str: The equation, if not given to the constructor.
            out_sharding: As for ``nnx.Einsum``.
            deterministic: Overrides the layer's mode for this call.
            rngs: Overrides the layer's RNG stream for this call.

        Returns:
            The einsum's result plus the bias.
        """
        text = einsum_str if einsum_str is not None else self.einsum_str
        if text is None:
            raise ValueError("FusionEinsum needs an einsum_str, in the constructor or the call.")
        axes = KernelAxes.einsum(text)

        def plain(layer: Any, x: jax.Array, sharding: Any) -> jax.Array:
            return nnx.Einsum.__call__(layer, x, einsum_str, sharding)

        return self._fusion_call(
            jax.numpy.asarray(inputs), out_sharding, deterministic, rngs, plain=plain, axes=axes
        )


#: Plain NNX layer -> its Fusion counterpart (checked in this order: subclasses first).
_COUNTERPARTS: tuple[tuple[type[nnx.Module], type[_FusionLayer]], ...] = (
    (nnx.Linear, FusionLinear),
    (nnx.Conv, FusionConv),
    (nnx.ConvTranspose, FusionConvTranspose),
    (nnx.LinearGeneral, FusionLinearGeneral),
    (nnx.Einsum, FusionEinsum),
)

_CONSTRUCTOR_SKIP = ("self", "rngs", "kernel_metadata", "bias_metadata")


def _counterpart(node: Any) -> type[_FusionLayer] | None:
    if isinstance(node, _FusionLayer):
        return None
    for plain, fusion in _COUNTERPARTS:
        if type(node) is plain:
            return fusion
    return None


def _constructor_kwargs(layer: nnx.Module, plain: type[nnx.Module]) -> dict[str, Any]:
    """The arguments that rebuild ``layer``: its attributes named like ``plain``'s parameters."""
    kwargs = {}
    for name, param in inspect.signature(plain.__init__).parameters.items():
        if name in _CONSTRUCTOR_SKIP or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in vars(layer):
            kwargs[name] = getattr(layer, name)
    return kwargs


def _set_child(node: Any, key: Any, value: Any) -> None:
    if isinstance(key, str) and not isinstance(node, dict | nnx.Dict) and hasattr(node, key):
        setattr(node, key, value)
    else:
        node[key] = value


def fusionize(
    module: nnx.Module,
    *,
    g_max: float = 40.0,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float = 0.0,
    gradient: GradientMode = "exact",
    strict_aihwkit: bool = False,
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
    deterministic: bool | None = False,
    rng_collection: str = "noise",
    noise_stream: bool = True,
    rngs: nnx.Rngs | nnx.RngStream | None = None,
    where: Callable[[tuple[Any, ...], nnx.Module], bool] | None = None,
) -> nnx.Module:
    """A copy of ``module`` with every NNX layer the chip holds made a Fusion layer.

    Like aihwkit's ``convert_to_analog``: every ``nnx.Linear``,
    ``nnx.Conv``, ``nnx.ConvTranspose``, ``nnx.LinearGeneral`` and
    ``nnx.Einsum`` (exactly those classes, wherever they sit: in lists,
    inside ``nnx.MultiHeadAttention``, inside layers stacked by ``nnx.vmap`` /
    ``nnx.scan``) is replaced by :class:`FusionLinear`, :class:`FusionConv`,
    :class:`FusionConvTranspose`, :class:`FusionLinearGeneral` or
    :class:`FusionEinsum` with the same constructor arguments and the same
    parameter values (the same ``nnx.Param`` variables, copied), so the
    state keeps its structure and a checkpoint of either loads into the
    other. Every other module is kept as it is, Fusion layers already in the
    model too, with their own settings (change those with ``nnx.view`` or
    :func:`fusion_jax.program_params`' arguments); ``module`` itself is not
    changed.

    It never leaves a layer digital silently: a module that holds a
    ``kernel`` parameter and is none of those classes (a subclass of one,
    which may compute differently, or a layer of your own) is refused with
    an error naming it, unless ``where`` keeps it digital. ``where(path,
    layer)`` chooses: ``False`` keeps the layer as it is (digital),
    ``True`` converts it (an error for a layer fusionize cannot convert).

    A stacked layer gets a stacked noise stream (a :class:`NoiseKey` with one
    key per layer, split from ``rngs``), so ``nnx.scan``/``nnx.vmap`` over
    the block's state with axis 0 carries it like the parameters.

    Args:
        module: The model.
        g_max: Largest conductance in uS, in [10, 40], for every layer.
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: The new layers' mode: ``False`` (training: programmed
            on every call), ``True`` (digital weights) or ``None`` (given at
            call time); ``model.train()`` / ``model.eval()`` switch it.
        rng_collection: Name of the noise stream of ``rngs``.
        noise_stream: ``False`` builds layers that keep no RNG state: the
            converted model's whole ``nnx.state`` is ``module``'s (it merges
            with ``module``'s graphdef both ways), ``rngs`` is not used, and
            every training call with noise needs ``rngs=`` (a clear error
            otherwise); see :class:`fusion_jax.nnx.FusionLinear`.
        rngs: Where each new layer's noise stream is forked from; ``None``
            leaves the layers without one (pass ``rngs`` to each call, or
            use ``noise=None``).
        where: Which layers holding a kernel go on the chip: a predicate
            ``where(path, layer)``, ``path`` the layer's path in the model
            (e.g. ``("blocks", "mlp")``: the module's, where
            :func:`fusion_jax.program_params`'s ``where`` gets the kernel
            leaf's, ``("blocks", "mlp", "kernel")``); ``None``: all of them.

    Returns:
        The converted copy of ``module``.

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``, or ``rngs`` without the
            noise stream.
        TypeError: naming the layer, for a layer with a kernel that
            fusionize cannot convert and ``where`` does not keep digital.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> model = nnx.Sequential(
        ...     nnx.Linear(8, 8, rngs=nnx.Rngs(0)),
        ...     nnx.MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(1)),
        ... )
        >>> chip_model = fj.nnx.fusionize(model, g_max=25.0, rngs=nnx.Rngs(noise=2))
        >>> type(chip_model.layers[1].query).__name__
        'FusionLinearGeneral'
        >>> x = jnp.ones((1, 5, 8))
        >>> chip_model.eval()                        # digital weights: the original model
        >>> bool(jnp.allclose(chip_model(x), model(x)))
        True
        >>> class Scaled(nnx.Linear):                # a subclass: refused, or kept digital
        ...     pass
        >>> mixed = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)),
        ...                        Scaled(8, 8, rngs=nnx.Rngs(1)))
        >>> fj.nnx.fusionize(mixed, noise=None)
        Traceback (most recent call last):
        ...
        TypeError: fusionize cannot convert 1 layer(s) with a kernel ...
        >>> kept = fj.nnx.fusionize(mixed, noise=None,
        ...                         where=lambda path, layer: path != ("layers", 1))
        >>> [type(layer).__name__ for layer in kept.layers]
        ['FusionLinear', 'Scaled']
    """
    copy = nnx.clone(module)
    if _counterpart(copy) is not None:
        raise TypeError(
            f"fusionize converts the layers inside a model; for a single "
            f"{type(copy).__name__} build its Fusion counterpart directly."
        )

    refused: dict[int, tuple[tuple[Any, ...], nnx.Module]] = {}

    def convert(path: tuple[Any, ...], layer: Any) -> bool:
        """Whether to convert ``layer``: a known layer that ``where`` keeps on the chip."""
        if _counterpart(layer) is None and not _holds_own_kernel(layer):
            return False
        if where is not None and not where(path, layer):
            return False
        if _counterpart(layer) is None:
            refused.setdefault(id(layer), (path, layer))  # all of them, in one error
            return False
        return True

    convert((), copy)  # a model that is itself a layer with a kernel fusionize cannot convert
    # Every node once, with its first path (a layer shared by several parents
    # is visited once: it is converted once and replaced at every reference).
    first_path: dict[int, tuple[Any, ...]] = {}
    parents = []
    for path, node in nnx.iter_graph(copy):
        if id(node) not in first_path:
            first_path[id(node)] = path
        if isinstance(node, nnx.Pytree) and _counterpart(node) is None:
            parents.append(node)
    replaced: dict[int, nnx.Module] = {}
    for parent in parents:
        for key, child in list(nnx.iter_children(parent)):
            if id(child) not in replaced and not convert(first_path[id(child)], child):
                continue
            new = replaced.get(id(child))
            if new is None:
                new = _convert(
                    child,
                    first_path[id(child)],
                    g_max=g_max,
                    noise=noise,
                    t_inference=t_inference,
                    gradient=gradient,
                    strict_aihwkit=strict_aihwkit,
                    max_input_size=max_input_size,
                    max_output_size=max_output_size,
                    deterministic=deterministic,
                    noise_stream=noise_stream,
                    rng_collection=rng_collection,
                    rngs=rngs,
                )
                replaced[id(child)] = new
            _set_child(parent, key, new)
    if refused:
        raise TypeError(_unconvertible(list(refused.values())))
    return copy


def _holds_own_kernel(node: Any) -> bool:
    """Whether ``node`` is a plain (not Fusion) module with an ``nnx.Param`` named ``kernel``."""
    return (
        isinstance(node, nnx.Module)
        and not isinstance(node, _FusionLayer)
        and isinstance(vars(node).get("kernel"), nnx.Param)
    )


def _unconvertible(layers: list[tuple[tuple[Any, ...], nnx.Module]]) -> str:
    """The error for layers with a kernel that fusionize has no Fusion counterpart for."""
    lines = []
    for path, layer in layers:
        known = [plain for plain, _ in _COUNTERPARTS if isinstance(layer, plain)]
        why = (
            f"a subclass of nnx.{known[0].__name__}, which may compute differently"
            if known
            else "no Fusion counterpart"
        )
        lines.append(f"  {_path_text(path) or 'the model'}: {type(layer).__name__} ({why})")
    paths = {tuple(path) for path, _ in layers}
    return (
        f"fusionize cannot convert {len(layers)} layer(s) with a kernel (it converts exactly "
        "nnx.Linear, Conv, ConvTranspose, LinearGeneral and Einsum):\n"
        + "\n".join(lines)
        + "\nBuild them from Fusion layers yourself, or keep them digital: fusionize(..., "
        f"where=lambda path, layer: path not in {sorted(paths, key=str)!r})."
    )


def _convert(
    layer: nnx.Module,
    path: tuple[Any, ...],
    *,
    rngs: nnx.Rngs | nnx.RngStream | None,
    rng_collection: str,
    **settings: Any,
) -> _FusionLayer:
    fusion = _counterpart(layer)
    assert fusion is not None
    plain = type(layer)
    kwargs = _constructor_kwargs(layer, plain)
    # Built abstractly: nothing is initialised; the parameters are the layer's own.
    try:
        new = nnx.eval_shape(
            lambda: fusion(
                **kwargs,
                **settings,
                rng_collection=rng_collection,
                rngs=nnx.Rngs(0),
            )
        )
    except ValueError as err:  # a setting this layer cannot take (a tile below a conv channel)
        if type(err) is not ValueError:
            raise
        raise ValueError(f"fusionize: layer {_path_text(path) or '<root>'}: {err}") from None
    # Everything the abstract build left abstract is the layer's own: the kernel,
    # the bias, and arrays such as a convolution's mask.
    for name, value in vars(layer).items():
        built = vars(new).get(name)
        if isinstance(built, nnx.Variable):
            built = built.get_value()
        if isinstance(built, jax.ShapeDtypeStruct):
            setattr(new, name, value)
    shape = tuple(layer.kernel.shape)
    module_kernel_axes(layer, shape, _path_text((*path, "kernel")))  # checks the shape fits
    own = _expected_kernel(layer)
    extra = len(shape) - len(own[1]) if own is not None else 0
    stack_shape = shape[:extra]  # layers stacked by nnx.vmap / nnx.scan
    new._init_fusion(
        **settings,
        rng_collection=rng_collection,
        rngs=None,
    )
    if new.noise is not None and new.noise_stream and rngs is not None:
        stream = _stream(rngs, rng_collection, type(new).__name__)
        key = stream()
        new._seed_noise_stream(jax.random.split(key, stack_shape) if stack_shape else key)
    return new


def _stream(rngs: nnx.Rngs | nnx.RngStream, collection: str, who: str) -> nnx.RngStream:
    if isinstance(rngs, nnx.RngStream):
        return rngs
    if isinstance(rngs, nnx.Rngs):
        try:
            return rngs[collection]
        except KeyError:
            raise ValueError(
                f"fusionize: {who} draws its programming noise from the RNG stream "
                f"{collection!r}, which rngs lacks (and it has no 'default' stream): pass e.g. "
                f"nnx.Rngs({collection}=0), or noise=None."
            ) from None
    raise TypeError(f"rngs must be an nnx.Rngs or nnx.RngStream, got {type(rngs)}.")
