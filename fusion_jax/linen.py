"""Flax Linen layers whose forward pass programs the kernel onto the simulated chip.

:class:`FusionDense`, :class:`FusionConv` and :class:`FusionConvTranspose`
are drop-in replacements for ``nn.Dense``, ``nn.Conv`` and
``nn.ConvTranspose``: subclasses with the same attributes, the same default
submodule names (``Dense_0``, ``Conv_0``, ``ConvTranspose_0``, counted
together with the plain layers), hence the same parameter tree and the same initial values for
the same ``params`` key. A digital checkpoint loads into the hardware-aware
model and back. The kernel goes through :func:`fusion_jax.program_kernel`
before the plain layer uses it (with the public ``nn.map_variables``), for
hardware-aware training.

Modes follow ``nn.Dropout``:

* training (``deterministic=False``): every ``apply`` programs the kernel
  afresh with a key from the RNG collection ``rng_collection`` (default
  ``"noise"``: ``model.apply(variables, x, rngs={"noise": key})``);
* evaluation (``deterministic=True``): no noise is drawn and the kernel is
  used as is (digital weights), exactly as the plain layer. To evaluate the
  network as programmed on a chip (one programmed copy for the whole test
  set), program its variables once with :func:`fusion_jax.program_params`.

``init`` never programs (it needs no ``"noise"`` key), and biases are never
programmed: they are added digitally. ``g_max`` and ``t_inference`` may be
traced (e.g. swept with ``jax.vmap``); a concrete ``g_max`` is range-checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation, tiles
from fusion_jax._linen_layers import (
    FusionDenseGeneral,
    FusionDotGeneral,
    FusionEinsum,
    Fusionized,
    _program_as,
    _settings_of,
    fusion_interceptor,
    fusionize,
    kernel_layouts,
    layer_kernel_axes,
)
from fusion_jax.layout import KernelAxes
from fusion_jax.programming import DEFAULT_NOISE, _check_gradient_mode, resolve_noise

__all__ = [
    "FusionConv",
    "FusionConvTranspose",
    "FusionDense",
    "FusionDenseGeneral",
    "FusionDotGeneral",
    "FusionEinsum",
    "Fusionized",
    "fusion_interceptor",
    "fusionize",
    "kernel_layouts",
    "layer_kernel_axes",
]


def _check_settings(layer: nn.Module) -> None:
    _validation.check_g_max(layer.g_max, where=type(layer).__qualname__)
    _validation.check_flag(layer.strict_aihwkit, "strict_aihwkit", type(layer).__qualname__)
    _check_gradient_mode(layer.gradient, type(layer).__qualname__)
    resolve_noise(layer.noise)
    _validation.check_t_inference(layer.t_inference, where=type(layer).__qualname__)


def _fusion_apply(
    layer: nn.Module,
    plain_call: Callable[[nn.Module, jax.Array], jax.Array],
    inputs: jax.Array,
    deterministic: bool | None,
    rng: PRNGKeyArray | None,
    axes: KernelAxes | None = None,
) -> jax.Array:
    """Run the plain layer's ``__call__`` on ``layer``, its kernel programmed in training mode.

    The plain call creates (at ``init``) and reads the parameters itself, so
    the names, initialisers and values are the plain layer's. In training
    mode ``nn.map_variables`` hands it the programmed kernel instead of the
    stored one; the stored parameters are not changed.
    """
    _check_settings(layer)
    if deterministic is None:
        deterministic = layer.deterministic
    if deterministic is None:
        raise ValueError(
            f"{type(layer).__qualname__} needs `deterministic`: set the attribute or pass it to "
            "the call (True: digital weights, False: programmed on every call)."
        )
    if deterministic or layer.is_initializing():
        return plain_call(layer, inputs)
    noise = resolve_noise(layer.noise)
    key = None
    if noise is not None:
        key = rng if rng is not None else layer.make_rng(layer.rng_collection)
    mask = getattr(layer, "mask", None)  # nn.Conv's; nn.Dense has none

    def program(variables: dict[str, Any]) -> dict[str, Any]:
        params = dict(variables["params"])
        kernel = params["kernel"]
        if mask is not None:
            if mask.shape != kernel.shape:
                raise ValueError(
                    f"{type(layer).__qualname__}: mask shape {tuple(mask.shape)} differs from the "
                    f"kernel shape {tuple(kernel.shape)}."
                )
            # Masked-out weights are neither programmed nor counted in a row's scale;
            # the plain call multiplies by the mask again, which keeps them at zero.
            kernel = kernel * mask
        params["kernel"] = _program_as(layer, kernel, key, axes, _settings_of(layer))
        return {**variables, "params": params}

    return nn.map_variables(plain_call, "params", trans_in_fn=program)(layer, inputs)


class FusionDense(nn.Dense):
    """``nn.Dense`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.Dense``'s attributes are accepted and mean the same. An
    unnamed ``FusionDense`` is named as an ``nn.Dense`` in its place would be
    (``Dense_0``, ...), so its parameters (``kernel [in, out]``, ``bias
    [out]``) have the same path and, for the same ``params`` key, the same
    initial values: variables move between the two. In training mode the kernel is
    programmed with :func:`fusion_jax.program_kernel` (one chip row per
    output feature) using a key from the ``rng_collection`` RNGs; in
    evaluation mode the digital kernel is used as is. The bias is digital.

    Attributes:
        g_max: Largest conductance in uS, in [10, 40] (checked when
            concrete; a traced value, e.g. under ``jax.vmap``, is accepted).
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"`` (straight-through); see
            :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: ``True`` for evaluation mode (digital weights),
            ``False`` for training mode; a call-time ``deterministic``
            overrides it. ``None`` requires it at call time (as ``nn.Dropout``).
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> layer = fj.linen.FusionDense(4, g_max=25.0)
        >>> x = jnp.ones((2, 3))
        >>> variables = layer.init(jax.random.key(0), x)     # no "noise" key needed
        >>> y1 = layer.apply(variables, x, rngs={"noise": jax.random.key(1)})
        >>> y2 = layer.apply(variables, x, rngs={"noise": jax.random.key(2)})
        >>> bool((y1 != y2).any())
        True
        >>> y_eval = layer.apply(variables, x, deterministic=True)   # digital weights
        >>> p = variables["params"]
        >>> bool(jnp.allclose(y_eval, x @ p["kernel"] + p["bias"]))
        True
    """

    _programs_own_kernel = True  # fusionize's interceptor lets it program itself

    g_max: float = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: float = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    deterministic: bool | None = False
    rng_collection: str = "noise"
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE

    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch in"],
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch out"]:
        """Apply the layer with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs ``[..., in]``.
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The outputs ``[..., features]``.
        """
        return _fusion_apply(self, nn.Dense.__call__, jax.numpy.asarray(inputs), deterministic, rng)


class FusionConv(nn.Conv):
    """``nn.Conv`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.Conv``'s attributes are accepted and mean the same; an
    unnamed ``FusionConv`` is named as an ``nn.Conv`` would be (``Conv_0``,
    ...), so the parameter tree (``kernel [*kernel_size, in/groups, out]``,
    ``bias [out]``) and its initial values are the same. Each output channel
    (the kernel's last axis) is one row on the chip
    (:func:`fusion_jax.layout.kernel_to_rows`). A ``mask`` is applied before
    programming (masked-out weights are not programmed). Modes, attributes
    and the digital bias are as for :class:`FusionDense`.

    Attributes:
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
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> conv = fj.linen.FusionConv(4, (3, 3))
        >>> x = jnp.ones((1, 8, 8, 2))
        >>> variables = conv.init(jax.random.key(0), x)
        >>> conv.apply(variables, x, rngs={"noise": jax.random.key(1)}).shape
        (1, 8, 8, 4)
        >>> plain = nn.Conv(4, (3, 3)).apply(variables, x)
        >>> bool(jnp.allclose(conv.apply(variables, x, deterministic=True), plain))
        True
    """

    _programs_own_kernel = True  # fusionize's interceptor lets it program itself

    g_max: float = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: float = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    deterministic: bool | None = False
    rng_collection: str = "noise"
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE

    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch ..."],
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch ..."]:
        """Apply the convolution with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs ``[*batch, *spatial, in]`` (channels last).
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The convolved outputs, channels last.
        """
        inputs = jax.numpy.asarray(inputs)
        if inputs.shape[-1] % self.feature_group_count:
            raise ValueError(
                f"FusionConv: {inputs.shape[-1]} input channels are not divisible by "
                f"feature_group_count={self.feature_group_count}."
            )
        return _fusion_apply(self, nn.Conv.__call__, inputs, deterministic, rng)


class FusionConvTranspose(nn.ConvTranspose):
    """``nn.ConvTranspose`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.ConvTranspose``'s attributes are accepted and mean the same;
    an unnamed ``FusionConvTranspose`` is named as an ``nn.ConvTranspose``
    would be (``ConvTranspose_0``, ...), so the parameter tree and its
    initial values are the same. Each output channel is one row on the chip:
    the kernel's last axis (``[*kernel_size, in, out]``), or its
    second-to-last with ``transpose_kernel=True`` (Flax then stores
    ``[*kernel_size, out, in]``; :meth:`fusion_jax.layout.KernelAxes.conv`).
    A ``mask`` is applied before programming. Modes, attributes and the
    digital bias are as for :class:`FusionDense`.

    Attributes:
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
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> up = fj.linen.FusionConvTranspose(4, (2, 2), strides=(2, 2))
        >>> x = jnp.ones((1, 4, 4, 2))
        >>> variables = up.init(jax.random.key(0), x)
        >>> up.apply(variables, x, rngs={"noise": jax.random.key(1)}).shape
        (1, 8, 8, 4)
        >>> plain = nn.ConvTranspose(4, (2, 2), strides=(2, 2)).apply(variables, x)
        >>> bool(jnp.allclose(up.apply(variables, x, deterministic=True), plain))
        True
    """

    _programs_own_kernel = True  # fusionize's interceptor lets it program itself

    g_max: float = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: float = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    deterministic: bool | None = False
    rng_collection: str = "noise"
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE

    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch ..."],
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch ..."]:
        """Apply the transposed convolution with the kernel as programmed or digital.

        Args:
            inputs: Inputs ``[*batch, *spatial, in]`` (channels last).
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The upsampled outputs, channels last.
        """
        axes = layer_kernel_axes(self)
        inputs = jax.numpy.asarray(inputs)
        return _fusion_apply(self, nn.ConvTranspose.__call__, inputs, deterministic, rng, axes)


# Flax names an unnamed submodule after its class (``Dense_0``, ``Conv_1``, ...)
# and derives its parameters' initial keys from that name. Taking the plain
# layers' class names makes a Fusion layer's parameters those the plain layer
# would have in its place (the Python names stay FusionDense / FusionConv).
FusionDense.__name__ = nn.Dense.__name__
FusionConv.__name__ = nn.Conv.__name__
FusionConvTranspose.__name__ = nn.ConvTranspose.__name__
