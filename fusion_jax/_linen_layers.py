"""Linen: kernel axes of a model's layers, and layers of any kernel shape (private).

Re-exported by :mod:`fusion_jax.linen`. A Linen model's layers exist only
while it runs, so their kernel axes are read by running ``init`` abstractly
(``jax.eval_shape``) with a method interceptor that sees every layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation, tiles
from fusion_jax.layout import KernelAxes
from fusion_jax.model_programming import (
    LeafPath,
    _path_text,
    _plain_path,
    _program_layer_kernel,
)
from fusion_jax.programming import DEFAULT_NOISE, _check_gradient_mode, resolve_noise

__all__ = [
    "FusionDenseGeneral",
    "FusionDotGeneral",
    "FusionEinsum",
    "Fusionized",
    "fusion_interceptor",
    "fusionize",
    "kernel_layouts",
    "layer_kernel_axes",
]


def layer_kernel_axes(module: nn.Module, einsum_str: str | None = None) -> KernelAxes | None:
    """The axes of a Linen layer's own kernel (``None`` for other modules).

    Known layers: ``nn.Dense``, ``nn.Conv``, ``nn.ConvTranspose``,
    ``nn.DenseGeneral`` (``batch_dims`` are stack axes), ``nn.Einsum`` (from
    its ``einsum_str``, or the one given to the call) and the Fusion layers
    derived from them.

    Args:
        module: A Linen module.
        einsum_str: The call's ``einsum_str`` for an ``nn.Einsum`` given it at
            call time.

    Returns:
        The kernel's :class:`~fusion_jax.layout.KernelAxes`, or ``None``.

    Raises:
        ValueError: for an ``nn.Einsum`` without an ``einsum_str``.
    """
    if isinstance(module, nn.Dense):
        return KernelAxes.dense()
    if isinstance(module, nn.Conv | nn.ConvTranspose):
        size = module.kernel_size
        spatial = 1 if isinstance(size, int) else len(size)
        # nn.ConvTranspose(transpose_kernel=True) stores [*window, out, in].
        transposed = isinstance(module, nn.ConvTranspose) and module.transpose_kernel
        return KernelAxes.conv(spatial, transpose_kernel=transposed)
    if isinstance(module, nn.DenseGeneral):
        n_out = 1 if isinstance(module.features, int) else len(module.features)
        n_in = 1 if isinstance(module.axis, int) else len(module.axis)
        return KernelAxes.general(n_in, n_out, len(tuple(module.batch_dims)))
    if isinstance(module, nn.Einsum):
        text = einsum_str if einsum_str is not None else module.einsum_str
        if text is None:
            raise ValueError(
                f"{'/'.join(module.path) or type(module).__name__}: an nn.Einsum without an "
                "einsum_str has no known kernel axes."
            )
        return KernelAxes.einsum(text)
    return None


def kernel_layouts(
    model: nn.Module, *args: Any, method: Callable[..., Any] | str | None = None, **kwargs: Any
) -> dict[LeafPath, KernelAxes]:
    """The kernel axes of every known layer of a Linen model, by leaf path.

    Runs ``model.init`` abstractly (``jax.eval_shape``: nothing is computed)
    on example inputs and records the axes of every ``nn.Dense``,
    ``nn.Conv``, ``nn.ConvTranspose``, ``nn.DenseGeneral`` and ``nn.Einsum``
    (and Fusion layer) it calls, including those inside
    ``nn.MultiHeadDotProductAttention``. A kernel with more leading axes than
    its layer's own (layers stacked by ``nn.scan`` / ``nn.vmap``) gets them as
    stack axes. The result is the ``layouts`` argument of
    :func:`fusion_jax.program_params` and :func:`fusion_jax.sweep` for the
    model's variables.

    Args:
        model: The Linen model.
        *args: Example inputs for ``model.init`` (only shapes and dtypes matter).
        method: As for ``model.init``.
        **kwargs: Keyword arguments of the call (e.g. ``train=False``).

    Returns:
        ``("params", *module path, "kernel")`` -> :class:`~fusion_jax.layout.KernelAxes`.

    Raises:
        ValueError: for a kernel that does not end with its layer's own shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.Dense(2)])
        >>> x = jnp.ones((1, 8, 8, 3))
        >>> layouts = fj.linen.kernel_layouts(model, x)
        >>> layouts[("params", "layers_0", "kernel")]
        KernelAxes(inputs=(2, 0, 1), outputs=(3,), stack=())
        >>> variables = model.init(jax.random.key(0), x)
        >>> chip = fj.program_params(variables, jax.random.key(1), layouts=layouts)
        >>> model.apply(chip, x).shape
        (1, 8, 8, 2)
    """
    seen: dict[LeafPath, tuple[KernelAxes, tuple[int, ...]]] = {}

    def record(next_fun: Callable[..., Any], f_args: Any, f_kwargs: Any, context: Any) -> Any:
        out = next_fun(*f_args, **f_kwargs)
        module = context.module
        if context.method_name != "__call__" or not module.has_variable("params", "kernel"):
            return out
        einsum_str = f_kwargs.get("einsum_str") if isinstance(module, nn.Einsum) else None
        if isinstance(module, nn.Einsum) and einsum_str is None and len(f_args) > 1:
            einsum_str = f_args[1]
        axes = layer_kernel_axes(module, einsum_str)
        if axes is not None:
            shape = tuple(np.shape(nn.meta.unbox(module.get_variable("params", "kernel"))))
            seen[("params", *module.path, "kernel")] = (axes, shape)
        return out

    with nn.intercept_methods(record):
        variables = jax.eval_shape(
            lambda: model.init(jax.random.key(0), *args, method=method, **kwargs)
        )
    shapes = {
        _plain_path(keypath): tuple(np.shape(leaf))
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(variables))[0]
    }
    layouts: dict[LeafPath, KernelAxes] = {}
    for path, (axes, own) in seen.items():
        full = shapes.get(path)
        if full is None:
            continue
        extra = len(full) - len(own)
        if extra < 0 or full[extra:] != own:
            raise ValueError(
                f"{_path_text(path)}: the kernel of shape {full} does not end with its layer's "
                f"own kernel shape {own}; pass its layout by hand."
            )
        layouts[path] = axes.stacked(extra) if extra else axes
    return layouts


# --- programming a plain layer's kernel: the one engine of the Linen layers below ----------------

#: True while a layer runs on its programmed kernel (the interceptor lets that call through).
_RUNNING_PROGRAMMED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fusion_jax_linen_running_programmed", default=False
)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """A Fusion layer's settings (checked once)."""

    g_max: Any = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: Any = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    rng_collection: str = "noise"
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE

    def check(self, where: str) -> None:
        """Check every setting; errors start with ``where`` (the layer or function given them)."""
        tiles.check_max_size(self.max_input_size, "max_input_size")
        tiles.check_max_size(self.max_output_size, "max_output_size")
        _validation.check_g_max(self.g_max, where=where)
        _validation.check_flag(self.strict_aihwkit, "strict_aihwkit", where)
        _check_gradient_mode(self.gradient, where)
        resolve_noise(self.noise)
        _validation.check_t_inference(self.t_inference, where=where)


def _dot_general_axes(ndim: int, dimension_numbers: Any) -> KernelAxes:
    """The kernel (rhs) axes of a ``lax.dot_general`` call: contracted inputs, batch stack."""
    (_, rhs_contract), (_, rhs_batch) = dimension_numbers
    contract = tuple(sorted(int(a) % ndim for a in rhs_contract))
    batch = tuple(int(a) % ndim for a in rhs_batch)
    outputs = tuple(a for a in range(ndim) if a not in contract and a not in batch)
    return KernelAxes(inputs=contract, outputs=outputs, stack=batch)


def _programmed(
    module: nn.Module,
    kernel: jax.Array,
    axes: KernelAxes,
    settings: _Settings,
    rng: PRNGKeyArray | None,
) -> jax.Array:
    noise = resolve_noise(settings.noise)
    key = None
    if noise is not None:
        key = rng if rng is not None else module.make_rng(settings.rng_collection)
    return _program_as(module, kernel, key, axes, settings)


def _program_as(
    module: nn.Module,
    kernel: jax.Array,
    key: PRNGKeyArray | None,
    axes: KernelAxes | None,
    settings: _Settings,
) -> jax.Array:
    """:func:`program_kernel` with ``settings``; an error names ``module`` (its path)."""
    name = "/".join(module.path) or type(module).__name__
    return _program_layer_kernel(
        kernel,
        key,
        layer=f"{name} ({type(module).__name__})",
        axes=axes,
        g_max=settings.g_max,
        noise=resolve_noise(settings.noise),
        t_inference=settings.t_inference,
        strict_aihwkit=settings.strict_aihwkit,
        gradient=settings.gradient,
        max_input_size=settings.max_input_size,
        max_output_size=settings.max_output_size,
    )


def _run_programmed(
    module: nn.Module,
    plain_cls: type[nn.Module],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    axes: KernelAxes,
    settings: _Settings,
    rng: PRNGKeyArray | None = None,
) -> Any:
    """Run ``module`` (bound, with its parameters) as ``plain_cls`` on its programmed kernel.

    A plain layer with the module's attributes is applied to the module's
    parameters with the kernel replaced by its programmed copy (a ``mask``,
    if any, applied before programming).
    """
    settings.check(type(module).__qualname__)
    params = dict(nn.meta.unbox(module.variables["params"]))
    kernel = params["kernel"]
    mask = getattr(module, "mask", None)
    if mask is not None:
        kernel = kernel * mask
    params["kernel"] = _programmed(module, kernel, axes, settings, rng)
    fields = {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(plain_cls)
        if f.init and f.name not in ("parent", "name")
    }
    plain = plain_cls(**fields, parent=None)
    token = _RUNNING_PROGRAMMED.set(True)
    try:
        return plain.apply({"params": params}, *args, **kwargs)
    finally:
        _RUNNING_PROGRAMMED.reset(token)


def _mode(module: nn.Module, deterministic: bool | None) -> bool:
    deterministic = module.deterministic if deterministic is None else deterministic
    _validation.check_flag(deterministic, "deterministic", type(module).__name__, none=True)
    if deterministic is None:
        raise ValueError(
            f"{type(module).__name__} needs `deterministic`: set the attribute or pass it to "
            "the call (True: digital weights, False: programmed on every call)."
        )
    return bool(deterministic)


class FusionDotGeneral(nn.Module):
    """A ``dot_general`` that programs its kernel operand: Fusion projections by injection.

    Linen's ``nn.Dense``, ``nn.DenseGeneral`` and
    ``nn.MultiHeadDotProductAttention`` (``qkv_dot_general_cls``,
    ``out_dot_general_cls``) create their ``dot_general`` from a class given
    to them; give them this one (with its settings bound by
    ``functools.partial``) and their kernels are programmed onto the chip on
    every training call. The kernel's axes follow from the dimension numbers:
    contracted axes are a chip row's inputs, batch axes independent layers,
    the rest output features (one chip row each). It has no parameters of
    its own, so the parameter tree is the plain model's. ``init`` never
    programs.

    Attributes:
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: ``True``: the plain ``lax.dot_general`` (digital
            weights); ``False``: programmed on every call.
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import functools, jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> chip_dot = functools.partial(fj.linen.FusionDotGeneral, g_max=25.0)
        >>> attention = nn.MultiHeadDotProductAttention(
        ...     num_heads=2, qkv_dot_general_cls=chip_dot, out_dot_general_cls=chip_dot)
        >>> x = jnp.ones((1, 5, 8))
        >>> variables = attention.init(jax.random.key(0), x)
        >>> sorted(variables["params"])                     # the plain parameter tree
        ['key', 'out', 'query', 'value']
        >>> attention.apply(variables, x, rngs={"noise": jax.random.key(1)}).shape
        (1, 5, 8)
    """

    g_max: float = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: float = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    deterministic: bool = False
    rng_collection: str = "noise"
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE

    def __call__(
        self,
        lhs: Float[ArrayLike, "*lhs"],
        rhs: Float[ArrayLike, "*kernel"],
        dimension_numbers: Any,
        precision: Any = None,
        preferred_element_type: Any = None,
        **kwargs: Any,
    ) -> Float[Array, "*out"]:
        """``lax.dot_general(lhs, programmed rhs, ...)``.

        Args:
            lhs: The inputs.
            rhs: The kernel, programmed in training mode.
            dimension_numbers: As for ``lax.dot_general``.
            precision: As for ``lax.dot_general``.
            preferred_element_type: As for ``lax.dot_general``.
            **kwargs: Passed on to ``lax.dot_general``.

        Returns:
            The product.
        """
        rhs = jax.numpy.asarray(rhs)
        if not self.deterministic and not self.is_initializing():
            settings = _Settings(
                self.g_max,
                self.noise,
                self.t_inference,
                self.gradient,
                self.strict_aihwkit,
                self.rng_collection,
                max_input_size=self.max_input_size,
                max_output_size=self.max_output_size,
            )
            settings.check(type(self).__qualname__)
            axes = _dot_general_axes(rhs.ndim, dimension_numbers)
            rhs = _programmed(self, rhs, axes, settings, None)
        return jax.lax.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )


class FusionDenseGeneral(nn.DenseGeneral):
    """``nn.DenseGeneral`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.DenseGeneral``'s attributes are accepted and mean the same,
    and the parameters (names, shapes, initial values for the same key) are
    the same. Each output feature (every index of the ``features`` axes) is
    one chip row over all contracted inputs; each index of ``batch_dims`` is
    a layer of its own. Modes, attributes and the digital bias are as for
    :class:`fusion_jax.linen.FusionDense`.

    Attributes:
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
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> layer = fj.linen.FusionDenseGeneral(features=(2, 4), g_max=25.0)
        >>> x = jnp.ones((3, 8))
        >>> variables = layer.init(jax.random.key(0), x)
        >>> layer.apply(variables, x, rngs={"noise": jax.random.key(1)}).shape
        (3, 2, 4)
        >>> plain = nn.DenseGeneral(features=(2, 4)).apply(variables, x)
        >>> bool(jnp.allclose(layer.apply(variables, x, deterministic=True), plain))
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

    @nn.compact
    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch"],
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*out"]:
        """Apply the layer with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: The inputs, contracted along ``axis``.
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The outputs, as ``nn.DenseGeneral`` gives them.
        """
        inputs = jax.numpy.asarray(inputs)
        if self.is_initializing() or _mode(self, deterministic):
            return super().__call__(inputs)
        axes = layer_kernel_axes(self)
        return _run_programmed(self, nn.DenseGeneral, (inputs,), {}, axes, _settings_of(self), rng)


class FusionEinsum(nn.Einsum):
    """``nn.Einsum`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.Einsum``'s attributes are accepted and mean the same, and the
    parameters are the same. The kernel's axes follow from the einsum string
    (:meth:`fusion_jax.layout.KernelAxes.einsum`). Modes, attributes and the
    digital bias are as for :class:`fusion_jax.linen.FusionDense`.

    Attributes:
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
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> layer = fj.linen.FusionEinsum((8, 2, 4), "btd,dhk->bthk")
        >>> x = jnp.ones((1, 5, 8))
        >>> variables = layer.init(jax.random.key(0), x)
        >>> layer.apply(variables, x, rngs={"noise": jax.random.key(1)}).shape
        (1, 5, 2, 4)
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

    @nn.compact
    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch"],
        einsum_str: str | None = None,
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*out"]:
        """Apply the einsum with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: The input operand.
            einsum_str: The equation, if not given as the attribute.
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The einsum's result plus the bias.
        """
        inputs = jax.numpy.asarray(inputs)
        if self.is_initializing() or _mode(self, deterministic):
            return super().__call__(inputs, einsum_str)
        axes = layer_kernel_axes(self, einsum_str)
        return _run_programmed(
            self, nn.Einsum, (inputs, einsum_str), {}, axes, _settings_of(self), rng
        )


# As FusionDense / FusionConv (fusion_jax.linen): the plain layers' auto-names
# (DenseGeneral_0, Einsum_0) and so their initial values for the same key.
FusionDenseGeneral.__name__ = nn.DenseGeneral.__name__
FusionEinsum.__name__ = nn.Einsum.__name__


def _settings_of(module: nn.Module) -> _Settings:
    return _Settings(
        module.g_max,
        module.noise,
        module.t_inference,
        module.gradient,
        module.strict_aihwkit,
        module.rng_collection,
        max_input_size=module.max_input_size,
        max_output_size=module.max_output_size,
    )


# --- fusionize: a method interceptor ---------------------------------------------------

#: The plain Linen layers fusionize programs (exactly these classes: Fusion layers
#: program themselves).
_PLAIN_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.Einsum)


def _programs_through_dot_general(module: nn.Module) -> bool:
    """Whether ``module`` computes with a :class:`FusionDotGeneral` (it programs the kernel)."""
    cls = getattr(module, "dot_general_cls", None)
    while isinstance(cls, functools.partial):
        cls = cls.func
    return isinstance(cls, type) and issubclass(cls, FusionDotGeneral)


def _holds_own_kernel(module: nn.Module) -> bool:
    """Whether ``module`` (bound, not a Fusion layer) has a ``params`` variable named ``kernel``.

    Fusion layers (``_programs_own_kernel``, set by each Fusion layer class)
    program their kernels themselves.
    """
    return not getattr(module, "_programs_own_kernel", False) and module.has_variable(
        "params", "kernel"
    )


def _unconvertible(module: nn.Module) -> str:
    """The error for a called layer with a kernel that the interceptor cannot program."""
    path = tuple(module.path)
    name = "/".join(path) or type(module).__name__
    known = [plain for plain in _PLAIN_LAYERS if isinstance(module, plain)]
    if known:
        why = (
            f"a subclass of nn.{known[0].__name__}; fusionize programs exactly "
            f"nn.{known[0].__name__} (a subclass may compute differently)"
        )
    else:
        why = "a layer fusionize cannot program"
    return (
        f"fusionize: {name} is a {type(module).__name__} with a kernel, {why}. Use a Fusion "
        "layer there, or keep it digital: fusionize(..., where=lambda path, layer: "
        f"path != {path!r})."
    )


@contextlib.contextmanager
def fusion_interceptor(
    *,
    g_max: float = 40.0,
    noise: Any = DEFAULT_NOISE,
    t_inference: float = 0.0,
    gradient: str = "exact",
    strict_aihwkit: bool = False,
    deterministic: bool = False,
    rng_collection: str = "noise",
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
    where: Callable[[tuple[str, ...], nn.Module], bool] | None = None,
) -> Iterator[None]:
    """Within this context every call of a plain Linen layer the chip holds is programmed.

    The Linen counterpart of :func:`fusion_jax.nnx.fusionize`, as a
    ``flax.linen.intercept_methods`` interceptor: every ``__call__`` of an
    ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Conv``, ``nn.ConvTranspose`` or
    ``nn.Einsum`` (exactly those classes, wherever they sit: inside
    ``nn.MultiHeadDotProductAttention``, ``nn.scan``, ``nn.remat``) runs on
    its kernel as programmed onto the chip, with a key from the
    ``rng_collection`` RNGs. Parameters, their names and ``init`` are
    untouched (``init`` never programs). Active while tracing, so it may wrap
    a jitted function's body. :func:`fusionize`
    wraps a model's ``init``/``apply`` in it.

    It never leaves a layer digital silently: a ``__call__`` of a module that
    holds a ``kernel`` parameter and is none of those classes (a subclass of
    one, or a layer of your own) is refused with an error naming it, unless
    ``where`` keeps it digital. Fusion layers, and layers computing with a
    :class:`FusionDotGeneral`, program themselves and are left to it. (A
    layer reached only through another method than ``__call__`` is not seen.)

    Args:
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: ``True`` passes every call through unchanged.
        rng_collection: The RNG collection the noise keys come from.
        where: Which layers holding a kernel go on the chip: a predicate
            ``where(path, layer)``, ``path`` the layer's ``module.path``
            (e.g. ``("Dense_0",)``, without the ``params`` collection and
            ``kernel`` leaf that :func:`fusion_jax.program_params`'s ``where``
            gets); ``False`` keeps the layer digital. ``None``: all of them.

    Yields:
        Nothing; the interceptor is active inside the ``with`` block.

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.
        TypeError: naming the layer, when a layer with a kernel that the
            interceptor cannot program is called and ``where`` does not keep
            it digital.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> model = nn.Dense(4)
        >>> x = jnp.ones((2, 3))
        >>> variables = model.init(jax.random.key(0), x)
        >>> with fj.linen.fusion_interceptor(g_max=25.0):
        ...     y = model.apply(variables, x, rngs={"noise": jax.random.key(1)})
        >>> bool(jnp.allclose(y, model.apply(variables, x)))
        False
    """
    settings = _Settings(
        g_max,
        noise,
        t_inference,
        gradient,
        strict_aihwkit,
        rng_collection,
        max_input_size=max_input_size,
        max_output_size=max_output_size,
    )
    settings.check("fusion_interceptor")

    def intercept(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if (
            deterministic
            or context.method_name != "__call__"
            or _RUNNING_PROGRAMMED.get()
            or module.is_initializing()
            or not (type(module) in _PLAIN_LAYERS or _holds_own_kernel(module))
            or _programs_through_dot_general(module)
            or (where is not None and not where(tuple(module.path), module))
        ):
            return next_fun(*args, **kwargs)
        if type(module) not in _PLAIN_LAYERS:
            raise TypeError(_unconvertible(module))
        einsum_str = None
        if isinstance(module, nn.Einsum):
            einsum_str = kwargs.get("einsum_str", args[1] if len(args) > 1 else None)
        axes = layer_kernel_axes(module, einsum_str)
        return _run_programmed(module, type(module), args, kwargs, axes, settings)

    with nn.intercept_methods(intercept):
        yield


@dataclasses.dataclass(frozen=True)
class Fusionized:
    """A Linen model whose layers are programmed on every ``apply`` (see :func:`fusionize`).

    Attributes:
        model: The plain Linen model.
        settings: The keyword arguments of :func:`fusion_interceptor`.
    """

    model: nn.Module
    settings: dict[str, Any]

    def init(self, *args: Any, **kwargs: Any) -> Any:
        """``model.init``: the plain model's variables (nothing is programmed)."""
        return self.model.init(*args, **kwargs)

    def apply(
        self, variables: Any, *args: Any, chip_deterministic: bool | None = None, **kwargs: Any
    ) -> Any:
        """``model.apply`` with every layer's kernel programmed (unless ``chip_deterministic``).

        Every keyword argument but ``chip_deterministic`` is the model's: a
        model's own ``deterministic`` (its dropout, say) reaches it unchanged.

        Args:
            variables: The model's variables.
            *args: The model's inputs.
            chip_deterministic: Overrides the mode given to :func:`fusionize`
                (``True``: the digital weights).
            **kwargs: Passed to ``model.apply`` (``rngs={"noise": key}``, the
                model's own arguments, ...).

        Returns:
            What ``model.apply`` returns.
        """
        settings = dict(self.settings)
        if chip_deterministic is not None:
            settings["deterministic"] = bool(chip_deterministic)
        with fusion_interceptor(**settings):
            return self.model.apply(variables, *args, **kwargs)

    def kernel_layouts(self, *args: Any, **kwargs: Any) -> dict[LeafPath, KernelAxes]:
        """:func:`kernel_layouts` of the model."""
        return kernel_layouts(self.model, *args, **kwargs)


def fusionize(
    model: nn.Module,
    *,
    g_max: float = 40.0,
    noise: Any = DEFAULT_NOISE,
    t_inference: float = 0.0,
    gradient: str = "exact",
    strict_aihwkit: bool = False,
    deterministic: bool = False,
    rng_collection: str = "noise",
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
    where: Callable[[tuple[str, ...], nn.Module], bool] | None = None,
) -> Fusionized:
    """Linen's one-call conversion: ``model`` with every layer the chip holds programmed.

    Linen modules are defined by code (``@nn.compact``), so their layers
    cannot be swapped after the fact as NNX's can. Instead the result's
    ``apply`` runs ``model.apply`` under :func:`fusion_interceptor`: every
    ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Conv``, ``nn.ConvTranspose`` and
    ``nn.Einsum`` call,
    including those inside attention and ``nn.scan``, computes with its
    kernel programmed onto the chip (one chip row per output feature), a new
    draw per apply from the ``rng_collection`` RNGs. The variables are the
    plain model's: same names, same values; a digital checkpoint is used
    as is. ``init`` is the plain model's. Inside ``nn.scan``/``nn.vmap``,
    list the noise collection in ``split_rngs`` (as for dropout), so that
    each layer draws its own noise. A layer with a kernel that cannot be
    programmed (a subclass of those classes, a layer of your own) is refused
    when called, naming it, unless ``where`` keeps it digital.

    Args:
        model: The plain Linen model.
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split); a longer layer is programmed tile by tile, as exported
            (see :mod:`fusion_jax.tiles`).
        max_output_size: Most outputs per chip tile (0: no split).
        deterministic: The default mode (``apply(..., chip_deterministic=)``
            overrides it): ``True`` runs the plain model.
        rng_collection: The RNG collection the noise keys come from.
        where: Which layers holding a kernel go on the chip: a predicate
            ``where(path, layer)`` on the layer's ``module.path``; ``False``
            keeps it digital. ``None``: all of them.

    Returns:
        A :class:`Fusionized` with ``init``, ``apply`` and ``kernel_layouts``.

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].
        ValueError: for an unknown ``gradient``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> model = nn.Sequential([nn.Dense(8), nn.MultiHeadDotProductAttention(2)])
        >>> chip_model = fj.linen.fusionize(model, g_max=25.0)
        >>> x = jnp.ones((1, 5, 4))
        >>> variables = chip_model.init(jax.random.key(0), x)    # = model.init
        >>> y = chip_model.apply(variables, x, rngs={"noise": jax.random.key(1)})
        >>> y.shape
        (1, 5, 8)
        >>> bool(jnp.allclose(chip_model.apply(variables, x, chip_deterministic=True),
        ...                   model.apply(variables, x)))
        True
    """
    settings = {
        "g_max": g_max,
        "noise": noise,
        "t_inference": t_inference,
        "gradient": gradient,
        "strict_aihwkit": strict_aihwkit,
        "deterministic": deterministic,
        "rng_collection": rng_collection,
        "max_input_size": max_input_size,
        "max_output_size": max_output_size,
        "where": where,
    }
    _Settings(
        g_max,
        noise,
        t_inference,
        gradient,
        strict_aihwkit,
        rng_collection,
        max_input_size=max_input_size,
        max_output_size=max_output_size,
    ).check("fusionize")
    return Fusionized(model, settings)
