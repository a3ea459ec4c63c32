"""A small classification task and models for hardware-aware training examples.

scikit-learn's bundled handwritten digits (1797 images of 8x8 pixels, ten
classes; no download) split into training and test sets, and two small Flax
NNX classifiers, :class:`MLP` and :class:`CNN`. Each model is built either
digital (``nnx.Linear`` / ``nnx.Conv``) or hardware-aware
(:class:`fusion_jax.nnx.FusionLinear` / :class:`fusion_jax.nnx.FusionConv`,
which program their kernels onto the simulated chip on every training call).
Both variants have the same parameters (``nnx.state(model, nnx.Param)`` has
the same structure and shapes), so one evaluation applies to both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from fusion_jax import _validation
from fusion_jax.nnx import FusionConv, FusionLinear

__all__ = ["CNN", "MLP", "DigitsData", "load_digits_split"]

#: Side of a digits image in pixels.
IMAGE_SIZE = 8
#: Number of digit classes.
N_CLASSES = 10
#: Largest pixel value in scikit-learn's digits (16 grey levels + 0).
_PIXEL_MAX = 16.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DigitsData:
    """A training/test split of the digits data (a pytree of arrays).

    Attributes:
        x_train: Training images, pixel values in [0, 1], flat ``[N, 64]`` or
            images ``[N, 8, 8, 1]`` (see :meth:`as_images`).
        y_train: Training labels in ``0..9``, ``[N]``.
        x_test: Test images, same layout as ``x_train``.
        y_test: Test labels, ``[M]``.
    """

    x_train: Float[Array, "n_train ..."]
    y_train: Int[Array, " n_train"]
    x_test: Float[Array, "n_test ..."]
    y_test: Int[Array, " n_test"]

    def as_images(self) -> DigitsData:
        """The same split with images shaped ``[N, 8, 8, 1]`` (channels last, for :class:`CNN`).

        Returns:
            A new :class:`DigitsData`; already image-shaped data is returned as is.

        Example:
            >>> import fusion_jax.digits as fjd
            >>> fjd.load_digits_split().as_images().x_test.shape
            (450, 8, 8, 1)
        """
        shape = (IMAGE_SIZE, IMAGE_SIZE, 1)
        return DigitsData(
            x_train=self.x_train.reshape(-1, *shape),
            y_train=self.y_train,
            x_test=self.x_test.reshape(-1, *shape),
            y_test=self.y_test,
        )

    def flat(self) -> DigitsData:
        """The same split with flat images ``[N, 64]`` (for :class:`MLP`).

        Returns:
            A new :class:`DigitsData`.

        Example:
            >>> import fusion_jax.digits as fjd
            >>> fjd.load_digits_split().as_images().flat().x_train.shape
            (1347, 64)
        """
        return DigitsData(
            x_train=self.x_train.reshape(self.x_train.shape[0], -1),
            y_train=self.y_train,
            x_test=self.x_test.reshape(self.x_test.shape[0], -1),
            y_test=self.y_test,
        )


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """Load scikit-learn's digits and split them, stratified by class.

    The data ship with scikit-learn (``sklearn.datasets.load_digits``):
    nothing is downloaded. Pixels (0..16) are scaled to [0, 1].

    Args:
        seed: Seed of the random split.
        test_fraction: Fraction of the 1797 images held out for testing, in (0, 1).

    Returns:
        The split, images flat ``[N, 64]`` float32 and labels int32.

    Raises:
        ValueError: if ``test_fraction`` is not strictly between 0 and 1, or
            the seed lies outside [0, 2**32).
        TypeError: for a seed that is not an integer.

    Example:
        >>> import fusion_jax.digits as fjd
        >>> data = fjd.load_digits_split(seed=0)
        >>> data.x_train.shape, data.x_test.shape
        ((1347, 64), (450, 64))
        >>> float(data.x_train.min()), float(data.x_train.max())
        (0.0, 1.0)
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / _PIXEL_MAX).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        y,
        test_size=float(test_fraction),
        random_state=_validation.check_seed(seed, "load_digits_split"),
        stratify=y,
    )
    return DigitsData(
        x_train=jnp.asarray(x_train),
        y_train=jnp.asarray(y_train),
        x_test=jnp.asarray(x_test),
        y_test=jnp.asarray(y_test),
    )


def _fusion_kwargs(fusion: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if fusion is None:
        return None
    if not isinstance(fusion, Mapping):
        raise TypeError(
            "fusion must be None (digital layers) or a mapping of FusionLinear/FusionConv "
            f"keyword arguments such as {{'g_max': 25.0}}, got {type(fusion).__name__}."
        )
    return dict(fusion)


class MLP(nnx.Module):
    """A multilayer perceptron, digital or hardware-aware.

    ``Linear -> ReLU`` for every hidden width, then a ``Linear`` to the
    class logits. The default, one hidden layer of 16, is narrow on purpose:
    programming noise then costs a digitally trained network clearly more
    accuracy than a hardware-aware one (wider networks average more noise
    away; see :func:`fusion_jax.training.hardware_aware_experiment`).

    With ``fusion=None`` the layers are ``nnx.Linear``; with a mapping
    (``{}`` for the defaults) they are
    :class:`fusion_jax.nnx.FusionLinear` with those keyword arguments
    (``g_max``, ``noise``, ``t_inference``, ``gradient``, ...), which
    program every kernel, the output layer's included, on each training call.

    Args:
        in_features: Input width (64 for the flat digits).
        hidden: Widths of the hidden layers.
        n_classes: Number of output logits.
        fusion: ``None`` for a digital model, or keyword arguments of
            :class:`~fusion_jax.nnx.FusionLinear` for a hardware-aware one.
        rngs: ``nnx.Rngs`` with a ``params`` stream (and, for a hardware-aware
            model, a ``noise`` stream for the programming noise).

    Raises:
        ValueError: for an empty or non-positive width.
        TypeError: if ``fusion`` is neither ``None`` nor a mapping.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax.digits as fjd
        >>> digital = fjd.MLP(hidden=(16,), rngs=nnx.Rngs(params=0))
        >>> aware = fjd.MLP(hidden=(16,), fusion={"g_max": 25.0}, rngs=nnx.Rngs(params=0, noise=1))
        >>> digital(jnp.zeros((2, 64))).shape
        (2, 10)
        >>> jax.tree.map(jnp.shape, nnx.state(aware, nnx.Param)) == jax.tree.map(
        ...     jnp.shape, nnx.state(digital, nnx.Param))
        True
    """

    def __init__(
        self,
        in_features: int = IMAGE_SIZE * IMAGE_SIZE,
        hidden: Sequence[int] = (16,),
        n_classes: int = N_CLASSES,
        *,
        fusion: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        widths = [int(in_features), *(int(h) for h in hidden), int(n_classes)]
        if min(widths) < 1:
            raise ValueError(f"MLP widths must be positive, got in/hidden/out {widths}.")
        kwargs = _fusion_kwargs(fusion)

        def make(n_in: int, n_out: int) -> nnx.Linear:
            if kwargs is None:
                return nnx.Linear(n_in, n_out, rngs=rngs)
            return FusionLinear(n_in, n_out, rngs=rngs, **kwargs)

        self.layers = nnx.List([make(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])

    def __call__(self, x: Float[Array, "*batch features"]) -> Float[Array, "*batch classes"]:
        """Logits for flat inputs ``[..., in_features]``."""
        *hidden, last = self.layers
        for layer in hidden:
            x = jax.nn.relu(layer(x))
        return last(x)


class CNN(nnx.Module):
    """A small convolutional network for 8x8 images, digital or hardware-aware.

    ``Conv 3x3 -> ReLU -> Conv 3x3 stride 2 -> ReLU -> flatten -> Linear``
    (``SAME`` padding, so an 8x8 image gives a 4x4 map before the output
    layer). With ``fusion=None`` the layers are ``nnx.Conv``/``nnx.Linear``;
    with a mapping they are :class:`~fusion_jax.nnx.FusionConv` /
    :class:`~fusion_jax.nnx.FusionLinear` with those keyword arguments.

    Args:
        channels: Output channels of the two convolutions.
        n_classes: Number of output logits.
        image_size: Side of the (square) input images.
        fusion: ``None`` for a digital model, or keyword arguments of the
            Fusion layers for a hardware-aware one.
        rngs: ``nnx.Rngs`` with a ``params`` stream (and ``noise`` for a
            hardware-aware model).

    Raises:
        ValueError: for a channel count that is not two positive numbers.
        TypeError: if ``fusion`` is neither ``None`` nor a mapping.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax.digits as fjd
        >>> cnn = fjd.CNN(channels=(4, 8), rngs=nnx.Rngs(params=0))
        >>> cnn(jnp.zeros((2, 8, 8, 1))).shape
        (2, 10)
    """

    def __init__(
        self,
        channels: tuple[int, int] = (8, 16),
        n_classes: int = N_CLASSES,
        image_size: int = IMAGE_SIZE,
        *,
        fusion: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"channels must be two positive numbers, got {channels}.")
        c1, c2 = (int(c) for c in channels)
        kwargs = _fusion_kwargs(fusion)
        side = -(-int(image_size) // 2)  # SAME padding, stride 2
        if kwargs is None:
            self.conv1 = nnx.Conv(1, c1, (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(c1, c2, (3, 3), strides=2, rngs=rngs)
            self.out = nnx.Linear(side * side * c2, int(n_classes), rngs=rngs)
        else:
            self.conv1 = FusionConv(1, c1, (3, 3), rngs=rngs, **kwargs)
            self.conv2 = FusionConv(c1, c2, (3, 3), strides=2, rngs=rngs, **kwargs)
            self.out = FusionLinear(side * side * c2, int(n_classes), rngs=rngs, **kwargs)

    def __call__(self, x: Float[Array, "*batch h w 1"]) -> Float[Array, "*batch classes"]:
        """Logits for images ``[..., h, w, 1]`` (channels last)."""
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.out(x.reshape(*x.shape[:-3], -1))
