"""Flax NNX layers whose forward pass programs the kernel onto the simulated chip.

:class:`FusionLinear` and :class:`FusionConv` are ``nnx.Linear`` and
``nnx.Conv`` (subclasses: same constructor arguments, same parameters, same
``nnx.state``) whose kernel goes through :func:`fusion_jax.program_kernel`
before it is used, so that training sees the weights as the chip would hold
them (hardware-aware training).

Modes follow ``nnx.Dropout``:

* training (``deterministic=False``, ``model.train()``): every call
  programs the kernel afresh with a new key from the layer's RNG stream
  (``rng_collection``, default ``"noise"``), so every step sees a new
  draw of the programming noise;
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
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation
from fusion_jax._static import has_array_leaves
from fusion_jax.program_params import program_kernel
from fusion_jax.programming import (
    DEFAULT_NOISE,
    GradientMode,
    NoiseModel,
    _check_gradient_mode,
    resolve_noise,
)

__all__ = ["FusionConv", "FusionLinear"]

RngsLike = nnx.Rngs | nnx.RngStream | PRNGKeyArray


class _KernelView:
    """Reads like ``layer`` except for ``kernel`` (and ``mask``, cleared).

    Lets the plain Flax forward pass run unchanged on a programmed kernel
    without mutating the layer's parameters: ``nnx.Linear.__call__`` and
    ``nnx.Conv.__call__`` only read attributes of ``self``.
    """

    def __init__(self, layer: nnx.Module, kernel: jax.Array) -> None:
        self._layer = layer
        self.kernel = kernel
        self.mask = None  # already applied to ``kernel`` before programming

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)


class _FusionLayer(nnx.Module):
    """What FusionLinear and FusionConv share: settings, keys, programming."""

    #: The plain Flax forward pass, ``(layer, inputs, out_sharding) -> outputs``.
    _plain_call: Callable[..., jax.Array]

    def _init_fusion(
        self,
        *,
        g_max: float,
        noise: NoiseModel | None,
        t_inference: float,
        gradient: GradientMode,
        strict_aihwkit: bool,
        deterministic: bool | None,
        rng_collection: str,
        rngs: nnx.Rngs | nnx.RngStream | None,
    ) -> None:
        if _validation.concrete_value(g_max) is None:
            raise TypeError(
                "g_max of a layer must be a concrete number (use program_params to "
                "sweep g_max under jax.vmap)."
            )
        _validation.check_g_max(g_max)
        _check_gradient_mode(gradient)
        model = resolve_noise(noise)
        _validation.check_t_inference(t_inference, where=type(self).__name__)
        self.g_max = float(g_max)
        # A model of Python numbers is static (part of the graph definition):
        # its fields stay compile-time constants in a jitted step. One with
        # array fields is data, traced like the parameters.
        self.noise = nnx.data(model) if has_array_leaves(model) else model
        self.t_inference = float(t_inference)
        self.gradient = gradient
        self.strict_aihwkit = bool(strict_aihwkit)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        # As nnx.Dropout: the layer owns a fork of the stream it draws from.
        # A noise-free layer draws nothing, so it takes nothing from ``rngs``.
        if model is None or rngs is None:
            self.rngs = nnx.data(None)
        elif isinstance(rngs, nnx.Rngs):
            try:
                stream = rngs[rng_collection]
            except KeyError:
                raise ValueError(
                    f"{type(self).__name__} draws its programming noise from the RNG stream "
                    f"{rng_collection!r}, which rngs lacks (and it has no 'default' stream): "
                    f"pass e.g. nnx.Rngs(params=0, {rng_collection}=1), or noise=None."
                ) from None
            self.rngs = stream.fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        else:
            raise TypeError(f"rngs must be an nnx.Rngs or nnx.RngStream, got {type(rngs)}.")

    def programmed_kernel(self, key: PRNGKeyArray | None = None) -> Float[Array, "*spatial in out"]:
        """The kernel as programmed on the chip with ``key`` (Flax layout).

        :func:`fusion_jax.program_kernel` of the kernel (times ``mask``, for a
        masked convolution) with this layer's settings; what a training-mode
        call computes with when it draws ``key``.

        Args:
            key: PRNG key for the noise; may be ``None`` when ``noise`` is ``None``.

        Returns:
            The programmed kernel, shape and dtype of ``self.kernel``.
        """
        kernel = self.kernel[...]
        mask = getattr(self, "mask", None)  # nnx.Conv's; nnx.Linear has none
        if mask is not None:
            kernel = kernel * mask
        return program_kernel(
            kernel,
            key,
            g_max=self.g_max,
            noise=self.noise,
            t_inference=self.t_inference,
            strict_aihwkit=self.strict_aihwkit,
            gradient=self.gradient,
        )

    def _noise_key(self, rngs: RngsLike | None) -> PRNGKeyArray | None:
        if self.noise is None:
            return None
        source = rngs if rngs is not None else self.rngs
        if source is None:
            raise ValueError(
                f"{type(self).__name__} is in training mode (deterministic=False) with noise on, "
                "but has no RNG stream: pass rngs= to the constructor or to the call, or use "
                "deterministic=True / model.eval() for the digital weights."
            )
        if isinstance(source, nnx.Rngs):
            return source[self.rng_collection]()
        if isinstance(source, nnx.RngStream):
            return source()
        if isinstance(source, jax.Array):
            return source
        raise TypeError(
            f"rngs must be an nnx.Rngs, nnx.RngStream or a PRNG key, got {type(source)}."
        )

    def _fusion_call(
        self,
        inputs: jax.Array,
        out_sharding: Any,
        deterministic: bool | None,
        rngs: RngsLike | None,
    ) -> jax.Array:
        deterministic = deterministic if deterministic is not None else self.deterministic
        if deterministic is None:
            raise ValueError(
                f"{type(self).__name__} needs `deterministic`: pass it to the constructor or the "
                "call, or use model.train() / model.eval()."
            )
        if deterministic:
            return self._plain_call(self, inputs, out_sharding)
        kernel = self.programmed_kernel(self._noise_key(rngs))
        return self._plain_call(_KernelView(self, kernel), inputs, out_sharding)

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` uses the digital weights.

        Args:
            deterministic: New mode; ``None`` leaves it unchanged.
        """
        if deterministic is not None:
            self.deterministic = deterministic


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
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` (through the whole programming path) or
            ``"ste"`` (straight-through); see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        deterministic: ``True`` for evaluation mode (digital weights),
            ``False`` for training mode, ``None`` to require it at call time.
        rng_collection: Name of the ``nnx.Rngs`` stream the noise keys come
            from (``rngs["noise"]`` falls back to the ``default`` stream).
        rngs: ``nnx.Rngs`` for the parameter initialisation and the noise
            stream (the layer keeps a fork of it, as ``nnx.Dropout`` does).
        **linear_kwargs: The other arguments of ``nnx.Linear`` (``use_bias``,
            ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``,
            ``bias_init``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.

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
        deterministic: bool | None = False,
        rng_collection: str = "noise",
        rngs: nnx.Rngs,
        **linear_kwargs: Any,
    ) -> None:
        super().__init__(in_features, out_features, rngs=rngs, **linear_kwargs)
        self._init_fusion(
            g_max=g_max,
            noise=noise,
            t_inference=t_inference,
            gradient=gradient,
            strict_aihwkit=strict_aihwkit,
            deterministic=deterministic,
            rng_collection=rng_collection,
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
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        deterministic: ``True`` for evaluation mode, ``False`` for training
            mode, ``None`` to require it at call time.
        rng_collection: Name of the ``nnx.Rngs`` stream for the noise keys.
        rngs: ``nnx.Rngs`` for the parameters and the noise stream.
        **conv_kwargs: The other arguments of ``nnx.Conv`` (``padding``,
            ``feature_group_count``, ``use_bias``, ``mask``, ``dtype``, ...).

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.

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
        deterministic: bool | None = False,
        rng_collection: str = "noise",
        rngs: nnx.Rngs,
        **conv_kwargs: Any,
    ) -> None:
        super().__init__(in_features, out_features, kernel_size, strides, rngs=rngs, **conv_kwargs)
        self._init_fusion(
            g_max=g_max,
            noise=noise,
            t_inference=t_inference,
            gradient=gradient,
            strict_aihwkit=strict_aihwkit,
            deterministic=deterministic,
            rng_collection=rng_collection,
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
