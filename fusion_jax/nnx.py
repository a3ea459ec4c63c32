"""Flax NNX layers whose forward pass programs the kernel onto the simulated chip.

:class:`FusionLinear` and :class:`FusionConv` are ``nnx.Linear`` and
``nnx.Conv`` (subclasses: same constructor arguments, same parameters)
whose kernel goes through :func:`fusion_jax.program_kernel` before it is
used, so that training sees the weights as the chip would hold them
(hardware-aware training).

Drop-in guarantees:

* the ``nnx.Param`` state is the plain layer's, with the same initial
  values for the same ``rngs``, also for a single stream (``nnx.Rngs(0)``):
  a layer reads a stream shared with the parameters without advancing it,
  so the layers after it are initialised as beside plain layers;
* a layer that draws noise adds one leaf, ``noise_key``, a
  :class:`NoiseKey` (an ``nnx.RngState`` of plain ``uint32`` key data), which
  ``nnx.to_pure_dict``, ``flax.serialization`` and orbax save and restore;
  ``nnx.state(model, nnx.Param)`` leaves it out, so parameters move between
  a Fusion model and a plain one in both directions;
* built with ``noise_stream=False``, a layer keeps no RNG state: its whole
  ``nnx.state`` is the plain layer's (same tree, same values), so
  ``nnx.merge`` of a plain model's graphdef with the Fusion model's state
  works, and the reverse; each training call then takes its key
  (``layer(x, rngs=key)``), and a call without one is an error;
* ``g_max`` and ``t_inference`` may be traced: a layer built under
  ``jax.vmap`` over them, or ``nnx.view(model, g_max=g)``, sweeps them
  through a model. A concrete ``g_max`` is range-checked.

Modes follow ``nnx.Dropout``:

* training (``deterministic=False``, ``model.train()``): every call
  programs the kernel afresh with a new key from the layer's RNG stream
  (``rng_collection``, default ``"noise"``) or from the call's ``rngs``, so
  every step sees a new draw of the programming noise;
* evaluation (``deterministic=True``, ``model.eval()``): no noise is drawn
  and the kernel is used as is, i.e. the layer computes with its digital
  weights, exactly as the plain Flax layer. To evaluate the network as
  programmed on a chip (one programmed copy for the whole test set), program
  it once with :func:`fusion_jax.program_params`.

Biases are never programmed: they are added digitally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation, tiles
from fusion_jax._static import has_array_leaves
from fusion_jax.layout import KernelAxes
from fusion_jax.model_programming import (
    _expected_kernel,
    _program_layer_kernel,
    kernel_layouts,
    module_kernel_axes,
)
from fusion_jax.programming import (
    DEFAULT_NOISE,
    GradientMode,
    NoiseModel,
    _check_gradient_mode,
    resolve_noise,
)

__all__ = [
    "FusionConv",
    "FusionConvTranspose",
    "FusionEinsum",
    "FusionLinear",
    "FusionLinearGeneral",
    "NoiseKey",
    "fusionize",
    "kernel_layouts",
]

#: Folded into a key read from a shared parameter stream, so that the noise
#: stream differs from the key the next parameter draws.
_NOISE_SALT = 0x6E6F6973

RngsLike = nnx.Rngs | nnx.RngStream | PRNGKeyArray


class NoiseKey(nnx.RngState):
    """The state of a Fusion layer's noise stream: the key data of its next key.

    An ``nnx.RngState`` (so ``nnx.RngState`` filters select it and
    ``nnx.Param`` filters leave it out) holding raw ``uint32`` key data, not
    a typed PRNG key: ``nnx.to_pure_dict``, ``flax.serialization`` and orbax
    save and restore it as plain integers. Each training call without a
    call-time ``rngs`` splits it into the key it programs with and the next
    state.

    Example:
        >>> from flax import nnx, serialization
        >>> import fusion_jax as fj
        >>> layer = fj.nnx.FusionLinear(3, 4, rngs=nnx.Rngs(0))
        >>> isinstance(layer.noise_key, fj.nnx.NoiseKey), layer.noise_key[...].dtype
        (True, dtype('uint32'))
        >>> data = serialization.to_bytes(nnx.to_pure_dict(nnx.state(layer)))
        >>> sorted(nnx.state(layer, nnx.Param)), sorted(nnx.state(layer, fj.nnx.NoiseKey))
        (['bias', 'kernel'], ['noise_key'])
    """


def _setting(value: Any, name: str) -> Any:
    """A layer setting as stored: a float when concrete (static), else traced data."""
    concrete = _validation.concrete_value(value)
    if concrete is None:
        return nnx.data(jax.numpy.asarray(value))
    if concrete.ndim != 0:
        raise ValueError(
            f"{name} of a layer must be a scalar, got shape {concrete.shape} (use nnx.vmap / "
            f"jax.vmap over the layer to sweep several values)."
        )
    return float(concrete)


def _shares_params_stream(rngs: nnx.Rngs, stream: nnx.RngStream) -> bool:
    """Whether ``stream`` is also the one ``rngs`` draws parameter keys from."""
    try:
        return rngs["params"] is stream
    except KeyError:
        return False


class _FusionLayer(nnx.Module):
    """What the NNX Fusion layers share: settings, noise stream, programming."""

    #: The plain Flax forward pass, ``(layer, inputs, out_sharding) -> outputs``.
    _plain_call: Callable[..., jax.Array]

    def _check_rngs(self, rngs: Any) -> None:
        """Refuse constructor ``rngs`` that are no ``nnx.Rngs`` (Flax's layer fails obscurely)."""
        if not isinstance(rngs, nnx.Rngs):
            shown = f" {rngs!s}" if isinstance(rngs, int | float | str | np.number) else ""
            raise TypeError(
                f"{type(self).__name__}: rngs must be an nnx.Rngs, as for the Flax layer it "
                "replaces (nnx.Rngs(0), or nnx.Rngs(params=0, noise=1) for a separate noise "
                f"stream), got {type(rngs).__name__}{shown}."
            )

    def _init_fusion(
        self,
        *,
        g_max: float,
        noise: NoiseModel | None,
        t_inference: float,
        gradient: GradientMode,
        strict_aihwkit: bool,
        deterministic: bool | None,
        max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
        max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
        rng_collection: str,
        noise_stream: bool = True,
        rngs: nnx.Rngs | nnx.RngStream | None,
    ) -> None:
        _validation.check_g_max(g_max, where=type(self).__name__)
        for name, flag in (("noise_stream", noise_stream), ("strict_aihwkit", strict_aihwkit)):
            _validation.check_flag(flag, name, type(self).__name__)
        _validation.check_flag(deterministic, "deterministic", type(self).__name__, none=True)
        _check_gradient_mode(gradient, type(self).__name__)
        model = resolve_noise(noise)
        _validation.check_t_inference(t_inference, where=type(self).__name__)
        # Concrete settings are static (compile-time constants of a jitted
        # step); traced ones (a layer built under jax.vmap over g_max) are data.
        self.g_max = _setting(g_max, "g_max")
        # A model of Python numbers is static (part of the graph definition):
        # its fields stay compile-time constants in a jitted step. One with
        # array fields is data, traced like the parameters.
        self.noise = nnx.data(model) if has_array_leaves(model) else model
        self.t_inference = _setting(t_inference, "t_inference")
        self.gradient = gradient
        self.strict_aihwkit = bool(strict_aihwkit)
        self.max_input_size = tiles.check_max_size(max_input_size, "max_input_size")
        self.max_output_size = tiles.check_max_size(max_output_size, "max_output_size")
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.noise_stream = noise_stream
        self._check_tiles()
        self._init_noise_stream(model, rngs)

    def _label(self, kernel_shape: tuple[int, ...]) -> str:
        """How errors name the layer: it does not know its path in the model."""
        return f"{type(self).__name__} (kernel {tuple(kernel_shape)})"

    def _check_tiles(self) -> None:
        """Refuse tile sizes the kernel cannot be split into here, not at the first call.

        A convolution keeps whole input channels (``kh * kw`` inputs) on a
        tile: a ``max_input_size`` below that cannot be mapped. Layers whose
        kernel axes are known only at call time are checked then.
        """
        kernel = getattr(self, "kernel", None)
        if kernel is None:
            return
        shape = tuple(kernel.shape)
        name = self._label(shape)
        try:
            axes = module_kernel_axes(self, shape, name)
        except ValueError:
            return  # an einsum string given at call time: checked then
        if axes is None:
            return
        try:
            tiles._kernel_input_sizes(shape, axes, self.max_input_size, self.max_output_size)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    def _init_noise_stream(
        self, model: NoiseModel | None, rngs: nnx.Rngs | nnx.RngStream | None
    ) -> None:
        """Give the layer its own noise stream (a :class:`NoiseKey`), if it draws noise.

        A noise-free layer, one built with ``noise_stream=False`` or one built
        without ``rngs`` has none (``noise_key`` is ``None``, no state leaf) and
        takes nothing from ``rngs``. A separate noise stream
        (``nnx.Rngs(params=0, noise=1)``) is advanced by one key, as
        ``nnx.Dropout`` does. A stream the parameters also come from (the
        ``default`` of ``nnx.Rngs(0)``) is read without being advanced, so the
        layers built after this one get the initial values they would get
        beside plain layers: the layer takes the key the stream hands out next,
        folded with a constant, and its own parameters have just advanced the
        stream, so no two layers get the same key.
        """
        self._noise_impl = None
        if model is None or rngs is None or not self.noise_stream:
            self.noise_key = nnx.data(None)
            return
        if isinstance(rngs, nnx.Rngs):
            try:
                stream = rngs[self.rng_collection]
            except KeyError:
                raise ValueError(
                    f"{type(self).__name__} draws its programming noise from the RNG stream "
                    f"{self.rng_collection!r}, which rngs lacks (and it has no 'default' "
                    f"stream): pass e.g. nnx.Rngs(params=0, {self.rng_collection}=1), or "
                    "noise=None."
                ) from None
            shared = _shares_params_stream(rngs, stream)
        elif isinstance(rngs, nnx.RngStream):
            stream, shared = rngs, False
        else:
            raise TypeError(f"rngs must be an nnx.Rngs or nnx.RngStream, got {type(rngs)}.")
        if shared:
            key = jax.random.fold_in(
                jax.random.fold_in(stream.key[...], stream.count[...]), _NOISE_SALT
            )
        else:
            key = stream()
        self._seed_noise_stream(key)

    def _seed_noise_stream(self, key: PRNGKeyArray) -> None:
        """Start the layer's noise stream at ``key`` (one per layer, for stacked layers)."""
        self._noise_impl = str(jax.random.key_impl(key))
        self.noise_key = NoiseKey(jax.random.key_data(key), tag=self.rng_collection)

    def programmed_kernel(
        self, key: PRNGKeyArray | None = None, axes: KernelAxes | None = None
    ) -> Float[Array, "*spatial in out"]:
        """The kernel as programmed on the chip with ``key`` (Flax layout).

        :func:`fusion_jax.program_kernel` of the kernel (times ``mask``, for a
        masked convolution) with this layer's settings; what a training-mode
        call computes with when it draws ``key``. Every output feature is one
        chip row: the kernel's axes are read from the layer
        (:func:`fusion_jax.model_programming.module_kernel_axes`).

        Args:
            key: PRNG key for the noise; may be ``None`` when ``noise`` is ``None``.
            axes: The kernel's axes, if not those read from the layer (an
                einsum string given at call time).

        Returns:
            The programmed kernel, shape and dtype of ``self.kernel``.
        """
        kernel = self.kernel[...]
        mask = getattr(self, "mask", None)  # nnx.Conv's; nnx.Linear has none
        if mask is not None:
            kernel = kernel * mask
        if axes is None:
            axes = module_kernel_axes(self, kernel.shape, type(self).__name__)
        return _program_layer_kernel(
            kernel,
            key,
            layer=self._label(kernel.shape),
            axes=axes,
            g_max=self.g_max,
            noise=self.noise,
            t_inference=self.t_inference,
            strict_aihwkit=self.strict_aihwkit,
            gradient=self.gradient,
            max_input_size=self.max_input_size,
            max_output_size=self.max_output_size,
        )

    def _noise_key(self, rngs: RngsLike | None) -> PRNGKeyArray | None:
        if self.noise is None:
            return None
        if rngs is None:
            return self._next_own_key()
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or a PRNG key, got {type(rngs)}.")

    def _next_own_key(self) -> PRNGKeyArray:
        """Split the layer's noise stream: the key to use now, the next one stored."""
        if self.noise_key is None and not self.noise_stream:
            raise ValueError(
                f"{type(self).__name__} was built with noise_stream=False and keeps no RNG "
                "state, so each training call (deterministic=False) with noise on needs its "
                "key: call it with rngs= (a PRNG key, an nnx.Rngs or an nnx.RngStream), or use "
                "deterministic=True / model.eval() for the digital weights."
            )
        if self.noise_key is None:
            raise ValueError(
                f"{type(self).__name__} is in training mode (deterministic=False) with noise on, "
                "but has no RNG stream: pass rngs= to the constructor (for a converted model: "
                "fj.nnx.fusionize(model, rngs=nnx.Rngs(noise=0))) or to the call, or use "
                "deterministic=True / model.eval() for the digital weights."
            )
        data = self.noise_key.get_value()
        if isinstance(data, jax.ShapeDtypeStruct):
            raise ValueError(
                f"{type(self).__name__}'s noise stream (noise_key) is abstract: the layer comes "
                "from nnx.eval_shape and its NoiseKey was not restored. Restore the full state "
                "(nnx.state(model), not only nnx.Param), or build the model with real rngs and "
                "load the parameters into it with nnx.update."
            )
        key, following = jax.random.split(jax.random.wrap_key_data(data, impl=self._noise_impl))
        self.noise_key.set_value(jax.random.key_data(following))
        return key

    def _fusion_call(
        self,
        inputs: jax.Array,
        out_sharding: Any,
        deterministic: bool | None,
        rngs: RngsLike | None,
        *,
        plain: Callable[..., jax.Array] | None = None,
        axes: KernelAxes | None = None,
    ) -> jax.Array:
        plain_call = self._plain_call if plain is None else plain
        deterministic = deterministic if deterministic is not None else self.deterministic
        if deterministic is None:
            raise ValueError(
                f"{type(self).__name__} needs `deterministic`: pass it to the constructor or the "
                "call, or use model.train() / model.eval()."
            )
        if deterministic:
            return plain_call(self, inputs, out_sharding)
        kernel = self.programmed_kernel(self._noise_key(rngs), axes)
        return plain_call(self._with_kernel(kernel), inputs, out_sharding)

    def _with_kernel(self, kernel: jax.Array) -> nnx.Module:
        """This layer with ``kernel`` in place of its own, every other variable shared.

        Built with ``nnx.split`` / ``nnx.merge``, so that the plain Flax forward
        pass runs unchanged on it and the layer's parameters stay as they are.
        A convolution's ``mask`` multiplies the programmed kernel once more,
        which keeps masked-out weights at zero.
        """
        graphdef, state = nnx.split(self)
        return nnx.merge(graphdef, nnx.State({**state, "kernel": state["kernel"].replace(kernel)}))

    def set_view(
        self,
        deterministic: bool | None = None,
        g_max: float | jax.Array | None = None,
        t_inference: float | jax.Array | None = None,
    ) -> None:
        """Used by ``nnx.view``: change the mode or the chip settings of a view.

        ``nnx.view(model, deterministic=True)`` evaluates with the digital
        weights; ``nnx.view(model, g_max=g)`` computes with another ``g_max``,
        which may be traced (``jax.vmap`` over ``g`` sweeps it through the
        model, sharing its parameters).

        Args:
            deterministic: New mode; ``None`` leaves it unchanged.
            g_max: New largest conductance in uS (range-checked when concrete).
            t_inference: New read time in seconds.

        Raises:
            ArgumentError: for a concrete ``g_max`` outside [10, 40].

        Example:
            >>> from flax import nnx
            >>> import fusion_jax as fj
            >>> layer = fj.nnx.FusionLinear(3, 4, g_max=40.0, rngs=nnx.Rngs(0))
            >>> nnx.view(layer, g_max=20.0).g_max, layer.g_max
            (20.0, 40.0)
        """
        if deterministic is not None:
            _validation.check_flag(deterministic, "deterministic", type(self).__name__)
            self.deterministic = deterministic
        if g_max is not None:
            _validation.check_g_max(g_max, where=type(self).__name__)
            self.g_max = self._view_setting(g_max, "g_max")
        if t_inference is not None:
            _validation.check_t_inference(t_inference, where=type(self).__name__)
            self.t_inference = self._view_setting(t_inference, "t_inference")

    def _view_setting(self, value: Any, name: str) -> Any:
        """A setting for :meth:`set_view`; a traced one is refused on a stacked layer.

        ``nnx.scan`` / ``nnx.vmap`` over a stack of layers map every array of
        their state over the layer axis; a traced scalar setting has none.
        """
        stored = _setting(value, name)
        found = _expected_kernel(self)
        extra = self.kernel[...].ndim - len(found[1]) if found is not None else 0
        if not isinstance(stored, float) and extra > 0:
            raise ValueError(
                f"nnx.view: a traced {name} cannot be set on a {type(self).__name__} stacked "
                f"by nnx.vmap / nnx.scan (kernel {tuple(self.kernel[...].shape)}): the stack's "
                "transforms would map it over the layer axis. Sweep such a model with "
                f"fj.sweep(model, None, data, {name}=...), or program it with "
                f"fj.program_params(model, key, {name}=...) under jax.vmap; a concrete "
                f"{name} works here."
            )
        return stored


class FusionLinear(_FusionLayer, nnx.Linear):
    """``nnx.Linear`` whose kernel is programmed onto the simulated chip on each call.

    Every argument of ``nnx.Linear`` is accepted and means the same; the
    parameters (``kernel [in, out]``, ``bias [out]``) are the same, so a
    trained model loads into plain ``nnx.Linear`` layers and back. In
    training mode each call programs the kernel with
    :func:`fusion_jax.program_kernel` (one chip row per output feature) using
    a new key from the layer's RNG stream; in evaluation mode
    (``deterministic=True`` or ``model.eval()``) the digital kernel is used
    as is. The bias is always digital. :meth:`programmed_kernel` gives the
    kernel a training call computes with for a given key.

    Args:
        in_features: Number of input features.
        out_features: Number of output features.
        g_max: Largest conductance in uS, in [10, 40] (checked when
            concrete; a traced value, e.g. under ``jax.vmap``, is accepted).
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` (through the whole programming path) or
            ``"ste"`` (straight-through); see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: ``True`` for evaluation mode (digital weights),
            ``False`` for training mode, ``None`` to require it at call time.
        rng_collection: Name of the ``nnx.Rngs`` stream the noise keys come
            from (``rngs["noise"]`` falls back to the ``default`` stream).
        noise_stream: ``True``: the layer keeps its own noise stream, the
            state leaf ``noise_key``. ``False``: it keeps no RNG state, so its
            whole ``nnx.state`` is ``nnx.Linear``'s (it merges with a plain
            model's graphdef both ways); it takes nothing from ``rngs`` for
            noise, and every training call with noise needs ``rngs=``.
        rngs: ``nnx.Rngs`` for the parameter initialisation and the noise
            stream. The layer keeps its own stream (``noise_key``, a
            :class:`NoiseKey`) seeded from ``rngs[rng_collection]``: a separate
            stream is advanced by one key (as ``nnx.Dropout`` does), one shared
            with the parameters is read without being advanced.
        **linear_kwargs: The other arguments of ``nnx.Linear`` (``use_bias``,
            ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``,
            ``bias_init``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.
        TypeError: if ``noise_stream`` is not a bool, or ``rngs`` is no ``nnx.Rngs``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> layer = fj.nnx.FusionLinear(3, 4, g_max=25.0, rngs=nnx.Rngs(params=0, noise=1))
        >>> x = jnp.ones((2, 3))
        >>> y1, y2 = layer(x), layer(x)         # training mode: a new programming each call
        >>> bool((y1 != y2).any())
        True
        >>> layer.eval()                        # evaluation mode: digital weights
        >>> bool(jnp.allclose(layer(x), x @ layer.kernel[...] + layer.bias[...]))
        True
        >>> import jax
        >>> free = fj.nnx.FusionLinear(3, 4, noise_stream=False, rngs=nnx.Rngs(0))
        >>> sorted(nnx.state(free))             # no RNG state: nnx.Linear's state
        ['bias', 'kernel']
        >>> free(x, rngs=jax.random.key(1)).shape   # each training call brings its key
        (2, 4)
    """

    _plain_call = staticmethod(nnx.Linear.__call__)

    def __init__(
        self,
        in_features: int,
        out_features: int,
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
        **linear_kwargs: Any,
    ) -> None:
        self._check_rngs(rngs)
        super().__init__(in_features, out_features, rngs=rngs, **linear_kwargs)
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
        inputs: Float[ArrayLike, "*batch in"],
        out_sharding: Any = None,
        *,
        deterministic: bool | None = None,
        rngs: RngsLike | None = None,
    ) -> Float[Array, "*batch out"]:
        """Apply the layer with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs ``[..., in_features]``.
            out_sharding: As for ``nnx.Linear``.
            deterministic: Overrides the layer's mode for this call.
            rngs: Overrides the layer's RNG stream for this call: an
                ``nnx.Rngs``, an ``nnx.RngStream`` or a PRNG key (used as is).

        Returns:
            The outputs ``[..., out_features]``.
        """
        return self._fusion_call(jax.numpy.asarray(inputs), out_sharding, deterministic, rngs)


class FusionConv(_FusionLayer, nnx.Conv):
    """``nnx.Conv`` whose kernel is programmed onto the simulated chip on each call.

    Every argument of ``nnx.Conv`` is accepted and means the same; the
    parameters (``kernel [*kernel_size, in/groups, out]``, ``bias [out]``)
    are the same. Each output channel (the kernel's last axis) is one row on
    the chip, flattened as the reference flattens ``[out, in, kh, kw]``
    (:func:`fusion_jax.layout.kernel_to_rows`). A ``mask`` is applied before
    programming, so masked-out weights are neither programmed nor counted
    in the channel's scale. Modes and the digital bias are as for
    :class:`FusionLinear`.

    Args:
        in_features: Number of input channels.
        out_features: Number of output channels.
        kernel_size: Shape of the convolution window.
        strides: Inter-window strides.
        g_max: Largest conductance in uS, in [10, 40] (checked when concrete).
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
            none (``False``: the state is ``nnx.Conv``'s and every training
            call with noise needs ``rngs=``), as for :class:`FusionLinear`.
        rngs: ``nnx.Rngs`` for the parameters and the noise stream (as for
            :class:`FusionLinear`).
        **conv_kwargs: The other arguments of ``nnx.Conv`` (``padding``,
            ``feature_group_count``, ``use_bias``, ``mask``, ``dtype``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``, or a ``max_input_size``
            smaller than one input channel (``kh * kw`` inputs).
        TypeError: if ``noise_stream`` is not a bool, or ``rngs`` is no ``nnx.Rngs``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> conv = fj.nnx.FusionConv(2, 4, (3, 3), rngs=nnx.Rngs(params=0, noise=1))
        >>> x = jnp.ones((1, 8, 8, 2))
        >>> conv(x).shape
        (1, 8, 8, 4)
        >>> digital = conv(x, deterministic=True)
        >>> bool(jnp.allclose(digital, nnx.Conv(2, 4, (3, 3), rngs=nnx.Rngs(params=0))(x)))
        True
    """

    _plain_call = staticmethod(nnx.Conv.__call__)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...] | None = 1,
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
        **conv_kwargs: Any,
    ) -> None:
        self._check_rngs(rngs)
        super().__init__(in_features, out_features, kernel_size, strides, rngs=rngs, **conv_kwargs)
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
        inputs: Float[ArrayLike, "*batch ..."],
        out_sharding: Any = None,
        *,
        deterministic: bool | None = None,
        rngs: RngsLike | None = None,
    ) -> Float[Array, "*batch ..."]:
        """Apply the convolution with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs ``[*batch, *spatial, in_features]`` (channels last).
            out_sharding: As for ``nnx.Conv``.
            deterministic: Overrides the layer's mode for this call.
            rngs: Overrides the layer's RNG stream for this call: an
                ``nnx.Rngs``, an ``nnx.RngStream`` or a PRNG key (used as is).

        Returns:
            The convolved outputs, channels last.
        """
        return self._fusion_call(jax.numpy.asarray(inputs), out_sharding, deterministic, rngs)


class FusionConvTranspose(_FusionLayer, nnx.ConvTranspose):
    """``nnx.ConvTranspose`` whose kernel is programmed onto the simulated chip on each call.

    Every argument of ``nnx.ConvTranspose`` is accepted and means the same;
    the parameters are the same. Each output channel is one row on the chip
    over its window of input channels: the kernel's last axis
    (``[*kernel_size, in, out]``), or its second-to-last with
    ``transpose_kernel=True`` (Flax then stores ``[*kernel_size, out, in]``;
    :meth:`fusion_jax.layout.KernelAxes.conv`). A ``mask`` is applied before
    programming, as for :class:`FusionConv`. Modes, RNG stream and the
    digital bias are as for :class:`FusionLinear`.

    Args:
        in_features: Number of input channels.
        out_features: Number of output channels.
        kernel_size: Shape of the convolution window.
        strides: Inter-window strides (the upsampling factor).
        g_max: Largest conductance in uS, in [10, 40] (checked when concrete).
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
            none (``False``: the state is ``nnx.ConvTranspose``'s and every
            training call with noise needs ``rngs=``), as for :class:`FusionLinear`.
        rngs: ``nnx.Rngs`` for the parameters and the noise stream (as for
            :class:`FusionLinear`).
        **conv_kwargs: The other arguments of ``nnx.ConvTranspose``
            (``padding``, ``transpose_kernel``, ``use_bias``, ``mask``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``, or a ``max_input_size``
            smaller than one input channel (``kh * kw`` inputs).
        TypeError: if ``noise_stream`` is not a bool, or ``rngs`` is no ``nnx.Rngs``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> up = fj.nnx.FusionConvTranspose(2, 4, (2, 2), strides=2,
        ...                                 rngs=nnx.Rngs(params=0, noise=1))
        >>> x = jnp.ones((1, 4, 4, 2))
        >>> up(x).shape
        (1, 8, 8, 4)
        >>> plain = nnx.ConvTranspose(2, 4, (2, 2), strides=2, rngs=nnx.Rngs(params=0))
        >>> bool(jnp.allclose(up(x, deterministic=True), plain(x)))
        True
    """

    @staticmethod
    def _plain_call(layer: nnx.Module, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        del out_sharding  # nnx.ConvTranspose's call takes none
        return nnx.ConvTranspose.__call__(layer, inputs)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...] | None = None,
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
        **conv_kwargs: Any,
    ) -> None:
        self._check_rngs(rngs)
        super().__init__(in_features, out_features, kernel_size, strides, rngs=rngs, **conv_kwargs)
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
        inputs: Float[ArrayLike, "*batch ..."],
        *,
        deterministic: bool | None = None,
        rngs: RngsLike | None = None,
    ) -> Float[Array, "*batch ..."]:
        """Apply the transposed convolution with the kernel as programmed or digital.

        Args:
            inputs: Inputs ``[*batch, *spatial, in_features]`` (channels last).
            deterministic: Overrides the layer's mode for this call.
            rngs: Overrides the layer's RNG stream for this call: an
                ``nnx.Rngs``, an ``nnx.RngStream`` or a PRNG key (used as is).

        Returns:
            The upsampled outputs, channels last.
        """
        return self._fusion_call(jax.numpy.asarray(inputs), None, deterministic, rngs)


# The layers of any kernel shape and fusionize build on the classes above.
from fusion_jax._nnx_layers import FusionEinsum, FusionLinearGeneral, fusionize  # noqa: E402
