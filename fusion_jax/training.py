"""Hardware-aware training with optax, and evaluation of models programmed on the chip.

A model is trained *hardware-aware* by building it from the layers of
:mod:`fusion_jax.nnx`: in training mode every forward pass programs each
kernel onto the simulated chip with a fresh draw of the programming noise, so
the optimiser sees the weights as the chip would hold them and the gradient
flows through the programming (exactly, or straight-through). The training
loop, :func:`train`, is the same for a digital and a hardware-aware model and
for any data: arrays in, an optax optimizer on the ``nnx.Param`` state, one
``jax.lax.scan`` per epoch, a callback after each epoch (and ``jax.vmap``
over several models at once inside the experiment).

Evaluation programs a trained model *once* (:func:`fusion_jax.program_params`:
one programmed copy for the whole test set, as after writing it to the chip)
and measures test accuracy; :func:`fusion_jax.sweep`, the one grid engine,
does this for a whole grid of g_max, seeds and inference times in one
compiled call. :func:`hardware_aware_experiment` puts it together on
scikit-learn's digits, and the ``fusion-jax sweep`` command runs it.

Models enter the functional world through :func:`to_apply_fn`, which turns an
NNX model into ``(apply_fn, params)`` with ``apply_fn(params, x) -> logits``
pure, the form :func:`fusion_jax.program_params` and a g_max sweep vmap over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from fusion_jax import _validation, tiles
from fusion_jax.digits import CNN, MLP, DigitsData, load_digits_split
from fusion_jax.evaluation import SweepResult, _check_grid, _check_labels, _nnx_apply, sweep
from fusion_jax.model_programming import freeze_layouts, kernel_layouts
from fusion_jax.programming import (
    DEFAULT_NOISE,
    GradientMode,
    NoiseModel,
    _check_gradient_mode,
)
from fusion_jax.units import format_time

__all__ = [
    "ApplyFn",
    "Callback",
    "EpochEnd",
    "ExperimentResult",
    "TrainHistory",
    "cross_entropy",
    "evaluate",
    "hardware_aware_experiment",
    "to_apply_fn",
    "train",
]

#: A pure forward pass ``apply_fn(params, x) -> logits``.
ApplyFn = Callable[[Any, Float[Array, "batch ..."]], Float[Array, "batch classes"]]

#: Inference times of the default experiment: 1 s, 1 hour, 1 day, 1 year.
DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 3.15e7)
#: g_max values (uS) of the default experiment.
DEFAULT_G_MAX = (10.0, 25.0, 40.0)


# --- model views and the functional form -------------------------------------------------------


def _mode_view(model: nnx.Module, *, training: bool) -> nnx.Module:
    """``model`` (sharing its arrays) with every mode flag set for training or evaluation.

    Sets ``deterministic`` (Dropout, the Fusion layers) and
    ``use_running_average`` (BatchNorm) where some submodule has them; a
    model with neither is returned as is.
    """
    flags: dict[str, bool] = {}
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "deterministic"):
            flags["deterministic"] = not training
        if hasattr(module, "use_running_average"):
            flags["use_running_average"] = not training
    return nnx.view(model, **flags) if flags else model


def to_apply_fn(model: nnx.Module) -> tuple[ApplyFn, nnx.State]:
    """Split an NNX model into a pure forward pass and its parameters.

    The model is taken in evaluation mode (``deterministic=True``: Fusion
    layers use their kernels as given, Dropout is off), so
    ``apply_fn(params, x)`` is a pure function of its arguments: it can be
    jitted, differentiated and vmapped. This is the form in which to program
    a trained model onto the chip: ``program_params(params, key, ...)`` and
    evaluate ``apply_fn`` on the result, for instance under ``jax.vmap`` over
    keys or g_max. The model itself is not modified.

    A hardware-aware model and its digital twin (same architecture built
    with ``nnx.Linear``) have parameters of the same structure, so either's
    ``apply_fn`` evaluates both. Models whose only state is their
    parameters get one shared ``apply_fn`` per architecture, so jitted
    evaluations of other seeds or reruns do not recompile.

    To evaluate programmed copies, program ``params`` inside the transformed
    function, for instance one copy per key (this is what
    :func:`fusion_jax.sweep` does)::

        on_chip = jax.vmap(lambda k: apply_fn(fj.program_params(params, k, g_max=10.0), x))
        logits = on_chip(jax.random.split(jax.random.key(0), 8))   # [8, batch, classes]

    Args:
        model: An ``nnx.Module`` called as ``model(x)``.

    Returns:
        ``(apply_fn, params)``: ``params`` is the ``nnx.Param`` state (an
        ``nnx.State``; kernel paths end in ``"kernel"``, as
        :func:`~fusion_jax.program_params` selects them); other state (RNG
        streams, noise-model fields, batch statistics) is held fixed inside
        ``apply_fn``. ``apply_fn.kernel_layouts`` holds the model's kernel
        axes (:func:`fusion_jax.nnx.kernel_layouts`), the ``layouts`` with
        which to program ``params`` when it has kernels of rank above 2
        (convolutions, stacked layers, attention); :func:`fusion_jax.sweep`
        uses them.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> from fusion_jax.digits import MLP
        >>> from fusion_jax.training import to_apply_fn
        >>> aware = MLP(fusion={"g_max": 10.0}, rngs=nnx.Rngs(params=0, noise=1))
        >>> apply_fn, params = to_apply_fn(aware)
        >>> x = jnp.ones((3, 64))
        >>> apply_fn(params, x).shape
        (3, 10)
        >>> digital_fn, _ = to_apply_fn(MLP(rngs=nnx.Rngs(params=5)))
        >>> bool(jnp.allclose(digital_fn(params, x), apply_fn(params, x)))
        True
        >>> round_trip = jax.jit(lambda p: apply_fn(fj.program_params(p, None, noise=None), x))
        >>> bool(jnp.allclose(round_trip(params), apply_fn(params, x), atol=1e-5))
        True
    """
    layouts = freeze_layouts(kernel_layouts(model))
    graphdef, params, rest = nnx.split(_mode_view(model, training=False), nnx.Param, ...)
    if not jax.tree.leaves(rest):
        # Parameters only: one function per architecture, so that jitted
        # evaluations of equal models (other seeds, a rerun) compile once.
        # The graph definition fixes every layer and its shapes, so the
        # layouts attached to the shared function are the same for all.
        stateless = _stateless_apply_fn(graphdef)
        stateless.kernel_layouts = layouts  # type: ignore[attr-defined]
        return stateless, params

    def apply_fn(params: Any, x: Float[Array, "batch ..."]) -> Float[Array, "batch classes"]:
        return nnx.merge(graphdef, params, rest)(x)

    apply_fn.kernel_layouts = layouts  # type: ignore[attr-defined]
    return apply_fn, params


@functools.lru_cache(maxsize=64)
def _stateless_apply_fn(graphdef: nnx.GraphDef) -> ApplyFn:
    """The forward pass of a model whose only state is its parameters."""

    def apply_fn(params: Any, x: Float[Array, "batch ..."]) -> Float[Array, "batch classes"]:
        return nnx.merge(graphdef, params)(x)

    return apply_fn


# --- training ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainHistory:
    """The training losses of :func:`train`.

    Attributes:
        loss: Mean loss of every mini-batch, ``[epochs, steps_per_epoch]``
            (with a leading model axis ``[models, epochs, steps]`` for several
            models trained together).
    """

    loss: np.ndarray

    @property
    def epoch_loss(self) -> np.ndarray:
        """Mean training loss of each epoch, ``[..., epochs]``."""
        return self.loss.mean(axis=-1)


@dataclasses.dataclass(frozen=True)
class EpochEnd:
    """What :func:`train` tells its ``callback`` after each epoch.

    Attributes:
        epoch: The epoch just finished, from 1.
        epochs: The number of epochs of the run.
        loss: The epoch's mean training loss (per model, ``[models]``, when
            several models are trained together).
    """

    epoch: int
    epochs: int
    loss: np.ndarray


#: Called after every epoch of :func:`train` (for example to drive a progress bar).
Callback = Callable[[EpochEnd], None]

#: The loss :func:`train` minimises by default: softmax cross-entropy against integer labels.
LossFn = Callable[[Float[Array, "batch classes"], Int[Array, " batch"]], Float[Array, ""]]


def cross_entropy(
    logits: Float[Array, "batch classes"], labels: Int[Array, " batch"]
) -> Float[Array, ""]:
    """Mean softmax cross-entropy of ``logits`` against integer ``labels`` (optax's).

    Example:
        >>> import jax.numpy as jnp
        >>> from fusion_jax.training import cross_entropy
        >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log(4)
        1.3863
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # One object per learning rate: the jitted epoch is cached on the optimizer.
    return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "loss_fn", "batch_size"))
def _train_epoch(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    opt_state: optax.OptState,
    keys: PRNGKeyArray,
    x: jax.Array,
    y: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    batch_size: int,
) -> tuple[nnx.State, nnx.State, optax.OptState, jax.Array]:
    """One epoch for a stack of models (leading axis of params, rest, opt_state, keys)."""
    steps = x.shape[0] // batch_size

    def objective(params: nnx.State, rest: nnx.State, xb: jax.Array, yb: jax.Array):
        model = nnx.merge(graphdef, params, rest, copy=True)
        loss = loss_fn(model(xb), yb)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, new_rest

    def one_model(params, rest, opt_state, key):
        order = jax.random.permutation(key, x.shape[0])[: steps * batch_size]

        def step(carry, idx):
            params, rest, opt_state = carry
            (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(
                params, rest, x[idx], y[idx]
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), rest, opt_state), loss

        carry, losses = jax.lax.scan(
            step, (params, rest, opt_state), order.reshape(steps, batch_size)
        )
        return (*carry, losses)

    return jax.vmap(one_model)(params, rest, opt_state, keys)


def _check_training_args(x: jax.Array, y: jax.Array, epochs: int, batch_size: int) -> None:
    if x.ndim < 1 or x.shape[:1] != y.shape[:1]:
        raise ValueError(
            f"x and y must have the same number of examples (leading axis), got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if int(epochs) < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    n_train = x.shape[0]
    if not 1 <= int(batch_size) <= n_train:
        raise ValueError(
            f"batch_size must lie in [1, {n_train}] (the number of training examples), "
            f"got {batch_size}."
        )


def _train_stack(
    models: Sequence[nnx.Module],
    x: jax.Array,
    y: jax.Array,
    keys: PRNGKeyArray | int,
    *,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    callback: Callback | None,
    label: str = "",
) -> np.ndarray:
    """Train models of one architecture together, vmapped; update them in place.

    ``keys``: one key per model for its mini-batch order, or for one model
    the seed of its key (made after the checks: nothing compiles before).
    Returns the losses ``[models, epochs, steps]``.

    Raises:
        ValueError: for bad data, labels or parameters (before compiling).
        FloatingPointError: if a loss is NaN or Inf (the models are left untrained).
    """
    x, y = (_validation.to_jax(a if isinstance(a, jax.Array) else np.asarray(a)) for a in (x, y))
    _check_training_args(x, y, epochs, batch_size)
    views = [_mode_view(m, training=True) for m in models]
    splits = [nnx.split(v, nnx.Param, ...) for v in views]
    graphdef = splits[0][0]
    if any(s[0] != graphdef for s in splits[1:]):
        raise ValueError("models trained together must have the same architecture and settings.")
    # Inside the compiled epoch a NaN would surface only as a NaN loss ("diverged"):
    # the data and the parameters are checked here, on host copies.
    # (targets are the loss function's: a custom one may read NaN as missing)
    where = f"{label}train"
    _validation.check_leaves_finite({"x": x}, where, what="training data")
    if loss_fn is cross_entropy:
        if y.dtype.kind not in "iu":
            raise ValueError(
                f"{where}: y must be integer class labels for the default loss (cross_entropy), "
                f"got dtype {y.dtype}; pass loss_fn= for other targets."
            )
        if _validation.concrete_value(y) is not None:  # (not spread over other processes)
            model_graphdef, state = nnx.split(models[0])
            _check_labels(y, _nnx_apply(model_graphdef), state, x, False, name=f"{where}: y")
    for i, (_, params_i, _) in enumerate(splits):
        _validation.check_leaves_finite(
            params_i, where if len(models) == 1 else f"{where} (model {i} of {len(models)})"
        )
    if isinstance(keys, int):
        keys = jax.random.key(keys)[None]
    params = jax.tree.map(lambda *a: jnp.stack(a), *[s[1] for s in splits])
    rest = jax.tree.map(lambda *a: jnp.stack(a), *[s[2] for s in splits])
    opt_state = jax.vmap(optimizer.init)(params)
    losses = []
    for epoch in range(int(epochs)):
        epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, epoch)
        params, rest, opt_state, loss = _train_epoch(
            graphdef,
            params,
            rest,
            opt_state,
            epoch_keys,
            x,
            y,
            optimizer=optimizer,
            loss_fn=loss_fn,
            batch_size=int(batch_size),
        )
        losses.append(np.asarray(loss))
        if not np.all(np.isfinite(losses[-1])):
            bad = sorted({int(i) for i in np.argwhere(~np.isfinite(losses[-1]))[:, 0]})
            raise FloatingPointError(
                f"{label}training diverged in epoch {epoch + 1}: non-finite loss for model(s) "
                f"{bad} of {len(models)}; lower the learning rate."
            )
        if callback is not None:
            callback(EpochEnd(epoch + 1, int(epochs), losses[-1].mean(axis=-1)))
    for i, model in enumerate(models):
        nnx.update(model, jax.tree.map(lambda a, i=i: a[i], params))
        nnx.update(model, jax.tree.map(lambda a, i=i: a[i], rest))
    return np.stack(losses, axis=1)


def train(
    model: nnx.Module,
    x: Float[ArrayLike, "n ..."],
    y: ArrayLike,
    *,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: LossFn = cross_entropy,
    epochs: int = 40,
    batch_size: int = 64,
    seed: int = 0,
    callback: Callback | None = None,
) -> tuple[nnx.Module, TrainHistory]:
    """Train an NNX model with an optax optimizer, mini-batch by mini-batch.

    The model is trained in training mode: a model built from
    :mod:`fusion_jax.nnx` layers therefore draws new programming noise from
    its ``noise`` RNG stream in every step (hardware-aware training); a
    digital model is trained on its plain weights. Each epoch visits the
    training set in a new random order (mini-batches of ``batch_size``; the
    last incomplete batch is dropped) in one compiled ``jax.lax.scan``.

    Args:
        model: An ``nnx.Module`` mapping a batch of ``x`` to predictions;
            updated in place (its ``nnx.Param`` state, and RNG state for the
            noise).
        x: Training inputs, one example per leading index.
        y: Training targets, one per example (integer labels for the default
            loss).
        optimizer: An optax optimizer over the ``nnx.Param`` state; Adam with
            learning rate 1e-2 by default. Reuse one object across calls to
            reuse the compiled epoch.
        loss_fn: ``loss_fn(predictions, targets) -> scalar``; by default
            :func:`cross_entropy`.
        epochs: Passes over the training set.
        batch_size: Examples per step.
        seed: Seed of the mini-batch order.
        callback: Called with an :class:`EpochEnd` after every epoch (for
            example to print the loss or advance a progress bar).

    Returns:
        ``(model, history)``: the same model object, trained, and its
        :class:`TrainHistory`.

    Raises:
        ValueError: for ``x``/``y`` of different lengths, ``epochs < 1``, a
            ``batch_size`` outside ``[1, n]``, NaN or Inf in ``x`` or in a
            parameter (its path named), a seed outside [0, 2**32), or, with
            the default loss, labels that are not integer class indices of
            the model's outputs (a custom ``loss_fn`` gets ``y`` as given);
            all before compiling.
        TypeError: for a ``seed`` that is not an integer (a float, a key).
        FloatingPointError: if the loss becomes NaN or Inf (the model is
            then left as it was).

    Example:
        >>> import optax
        >>> from flax import nnx
        >>> from fusion_jax.digits import MLP, load_digits_split
        >>> from fusion_jax.training import evaluate, to_apply_fn, train
        >>> data = load_digits_split()
        >>> seen = []
        >>> model, history = train(MLP(rngs=nnx.Rngs(params=0)), data.x_train, data.y_train,
        ...                        optimizer=optax.adam(1e-2), epochs=5,
        ...                        callback=lambda end: seen.append(end.epoch))
        >>> history.loss.shape, seen            # epochs x steps per epoch (1347 // 64)
        ((5, 21), [1, 2, 3, 4, 5])
        >>> bool(history.epoch_loss[-1] < history.epoch_loss[0])
        True
        >>> apply_fn, params = to_apply_fn(model)
        >>> float(evaluate(apply_fn, params, data.x_test, data.y_test)) > 0.8
        True
    """
    losses = _train_stack(
        [model],
        x,
        y,
        _validation.check_seed(seed, "train"),
        optimizer=_adam(1e-2) if optimizer is None else optimizer,
        loss_fn=loss_fn,
        epochs=epochs,
        batch_size=batch_size,
        callback=None
        if callback is None
        else lambda end: callback(dataclasses.replace(end, loss=end.loss[0])),
    )
    return model, TrainHistory(loss=losses[0])


# --- evaluation --------------------------------------------------------------------------------


def _accuracy(apply_fn: ApplyFn, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(apply_fn(params, x), axis=-1) == y)


_accuracy_jit = jax.jit(_accuracy, static_argnums=0)


def evaluate(
    apply_fn: ApplyFn,
    params: Any,
    x: Float[ArrayLike, "n ..."],
    y: Int[ArrayLike, " n"],
) -> Float[Array, ""]:
    """Top-1 accuracy of ``apply_fn(params, x)`` against labels ``y``.

    Args:
        apply_fn: A pure forward pass (see :func:`to_apply_fn`); jitted with
            ``apply_fn`` as a static argument, so reuse the same function
            object to avoid recompiling.
        params: The parameters ``apply_fn`` takes (digital or programmed).
        x: Inputs, one example per leading index.
        y: Integer labels, ``[n]``.

    Returns:
        The fraction of examples whose largest logit is the label, a scalar.

    Raises:
        ValueError: if ``x`` and ``y`` have different numbers of examples.

    Example:
        >>> import jax.numpy as jnp
        >>> from fusion_jax.training import evaluate
        >>> apply_fn = lambda w, x: x @ w
        >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
        >>> float(evaluate(apply_fn, jnp.eye(2), x, jnp.array([0, 1, 1])))
        0.666...
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[:1] != y.shape:
        raise ValueError(f"x has {x.shape[0]} examples but y has shape {y.shape}.")
    return _accuracy_jit(apply_fn, params, x, y)


# --- the experiment ----------------------------------------------------------------------------


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) over the last axis."""
    ddof = 1 if values.shape[-1] > 1 else 0
    return float(values.mean(-1)), float(values.std(-1, ddof=ddof))


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    """Accuracies of a digital and a hardware-aware model programmed on the chip.

    Seed ``s`` trains both models from the same initial weights and
    mini-batch order and programs both with the same key (a paired
    comparison), so the per-seed differences :meth:`gap` have less spread
    than either accuracy. Both sweeps come from :func:`fusion_jax.sweep`
    (``stacked=True``: seed ``s`` programs the models trained with seed ``s``).

    Attributes:
        model: Which architecture (``"mlp"`` or ``"cnn"``).
        clean_digital: Test accuracy of the digital models on their own
            weights (not programmed), ``[S]``.
        clean_aware: The same for the hardware-aware models, ``[S]``.
        digital: The digital models programmed on the chip: a
            :class:`~fusion_jax.SweepResult`, accuracy ``[G, S, T]``.
        aware: The same for the hardware-aware models.
        settings: The training settings (for the record).
    """

    model: str
    clean_digital: np.ndarray
    clean_aware: np.ndarray
    digital: SweepResult
    aware: SweepResult
    settings: Mapping[str, Any]

    @property
    def seeds(self) -> np.ndarray:
        """The seeds, ``[S]``."""
        return self.digital.seeds

    @property
    def g_max(self) -> np.ndarray:
        """g_max values (uS) of the evaluation grid, ``[G]``."""
        return self.digital.g_max

    @property
    def t_inference(self) -> np.ndarray:
        """Inference times (s) of the grid, ``[T]``."""
        return self.digital.t_inference

    def gap(self) -> np.ndarray:
        """Per-seed accuracy of hardware-aware minus digital, ``[G, S, T]``."""
        return self.aware.accuracy - self.digital.accuracy

    def summary(self) -> list[dict[str, float]]:
        """One dict per (g_max, t): means and standard deviations over seeds.

        Keys: ``g_max``, ``t_inference``, ``digital_mean``, ``digital_std``,
        ``aware_mean``, ``aware_std``, ``gap_mean`` and ``gap_sem`` (standard
        error of the mean paired difference); accuracies as fractions.
        """
        rows = []
        n = len(self.seeds)
        gap = self.gap()
        for i, g in enumerate(self.g_max):
            for j, t in enumerate(self.t_inference):
                d_mean, d_std = _mean_std(self.digital.accuracy[i, :, j])
                a_mean, a_std = _mean_std(self.aware.accuracy[i, :, j])
                gap_mean, gap_std = _mean_std(gap[i, :, j])
                rows.append(
                    {
                        "g_max": float(g),
                        "t_inference": float(t),
                        "digital_mean": d_mean,
                        "digital_std": d_std,
                        "aware_mean": a_mean,
                        "aware_std": a_std,
                        "gap_mean": gap_mean,
                        "gap_sem": gap_std / math.sqrt(n),
                    }
                )
        return rows

    def table(self) -> str:
        """A text table of test accuracy (%): mean +- std over seeds, per (g_max, t).

        The last column is the hardware-aware gain, mean +- standard error
        of the paired per-seed differences.
        """
        n = len(self.seeds)
        s = self.settings
        lines = [
            f"{self.model.upper()} on digits, {n} seed{'s' if n != 1 else ''}; hardware-aware "
            f"training at g_max={s['train_g_max']:g} uS, t={format_time(s['train_t_inference'])},"
            f" gradient={s['gradient']!r}",
            "test accuracy (%), mean +- std over seeds; gain: mean +- s.e.m. of paired differences",
            "clean weights (not programmed): digital {:.1f} +- {:.1f}, hardware-aware "
            "{:.1f} +- {:.1f}".format(
                *(100 * v for v in _mean_std(self.clean_digital)),
                *(100 * v for v in _mean_std(self.clean_aware)),
            ),
            f"{'g_max':>6} {'t':>7} {'digital':>14} {'hardware-aware':>15} {'gain':>14}",
        ]
        for row in self.summary():
            lines.append(
                f"{row['g_max']:>6g} {format_time(row['t_inference']):>7} "
                f"{100 * row['digital_mean']:>7.1f} +-{100 * row['digital_std']:>4.1f} "
                f"{100 * row['aware_mean']:>8.1f} +-{100 * row['aware_std']:>4.1f} "
                f"{100 * row['gap_mean']:>+7.1f} +-{100 * row['gap_sem']:>4.1f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@contextlib.contextmanager
def _epoch_reporter(
    label: str,
    epochs: int,
    progress: bool,
    on_epoch: Callable[[str, EpochEnd], None] | None,
) -> Iterator[Callback | None]:
    """The training callback of the experiment: a progress bar and/or ``on_epoch``."""
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=f"train {label}", unit="epoch", leave=False)

    def report(end: EpochEnd) -> None:
        if bar is not None:
            bar.set_postfix_str(f"training loss {float(end.loss.mean()):.4f}", refresh=False)
            bar.update(1)
        if on_epoch is not None:
            on_epoch(label, end)

    try:
        yield report if bar is not None or on_epoch is not None else None
    finally:
        if bar is not None:
            bar.close()


def _stack_params(models: Sequence[nnx.Module]) -> Any:
    return jax.tree.map(lambda *a: jnp.stack(a), *[to_apply_fn(m)[1] for m in models])


def hardware_aware_experiment(
    model: Literal["mlp", "cnn"] = "mlp",
    *,
    seeds: Sequence[int] = tuple(range(10)),
    g_max: Sequence[float] = DEFAULT_G_MAX,
    t_inference: Sequence[float] = DEFAULT_TIMES,
    train_g_max: float = 10.0,
    train_t_inference: float = 86400.0,
    gradient: GradientMode = "exact",
    noise: NoiseModel | None = DEFAULT_NOISE,
    max_input_size: int = tiles.DEFAULT_MAX_INPUT_SIZE,
    max_output_size: int = tiles.DEFAULT_MAX_OUTPUT_SIZE,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    model_kwargs: Mapping[str, Any] | None = None,
    data: DigitsData | None = None,
    progress: bool = False,
    on_epoch: Callable[[str, EpochEnd], None] | None = None,
    devices: Sequence[Any] | None = None,
) -> ExperimentResult:
    """Digital versus hardware-aware training, evaluated as programmed on the chip.

    For each seed, trains the model twice with :func:`train`'s loop (all
    seeds at once, vmapped): digitally, and hardware-aware (Fusion layers,
    programming noise of ``noise`` at ``train_g_max`` and
    ``train_t_inference`` in every step). Both start from the same initial
    weights and see the same mini-batches. Each trained model is then
    programmed once per seed (the same key for both) at every ``g_max`` and
    ``t_inference`` and evaluated on the test set, in one :func:`fusion_jax.sweep`
    per kind of model (seed ``s`` programs with ``jax.random.key(s)``, the
    sweep's rule).

    The defaults are those of the README's table (regenerated by
    ``python scripts/readme_tables.py``); run it and ``print`` the result for
    the figures. The gain of hardware-aware training is largest at low g_max,
    where the chip's absolute noise floor matters most. The inference time
    matters little: the per-row regression of the import compensates the
    drift's common gain, leaving only its device-to-device spread.

    Args:
        model: ``"mlp"`` (:class:`~fusion_jax.digits.MLP`, flat images) or
            ``"cnn"`` (:class:`~fusion_jax.digits.CNN`, 8x8 images).
        seeds: Integer seeds (a sequence): one training run per model and one
            programming per seed.
        g_max: g_max values (uS) to evaluate at, each in [10, 40].
        t_inference: Times since programming (s) to evaluate at.
        train_g_max: g_max of the hardware-aware training.
        train_t_inference: Inference time of the hardware-aware training.
        gradient: ``"exact"`` or ``"ste"`` gradient through the programming.
        noise: Noise model for training and evaluation; the calibrated chip
            model by default.
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split), in training and evaluation.
        max_output_size: Most outputs per chip tile (0: no split).
        epochs: Training epochs.
        batch_size: Mini-batch size.
        learning_rate: Adam step size.
        model_kwargs: Extra arguments of the model class (``hidden=...`` for
            the MLP, ``channels=...`` for the CNN).
        data: The split to use; :func:`~fusion_jax.digits.load_digits_split`
            with seed 0 by default.
        progress: Show progress bars (training epochs, then the sweeps).
        on_epoch: Called as ``on_epoch(label, end)`` after every training
            epoch, ``label`` ``"digital"`` or ``"hardware-aware"`` and ``end``
            an :class:`EpochEnd` with one loss per seed.
        devices: Devices to shard the evaluation over (:func:`fusion_jax.sweep`).

    Returns:
        An :class:`ExperimentResult`; ``print(result)`` shows the table.

    Raises:
        ValueError: for an unknown ``model``, no seeds, a negative time, or
            bad training arguments.
        ArgumentError: for a g_max (or ``train_g_max``) outside [10, 40].
        FloatingPointError: if training diverges.

    Example:
        >>> from fusion_jax.training import hardware_aware_experiment
        >>> result = hardware_aware_experiment(
        ...     seeds=(0, 1), g_max=(10.0, 40.0), t_inference=(86400.0,), epochs=5)
        >>> result.aware.accuracy.shape           # g_max x seeds x t_inference
        (2, 2, 1)
        >>> print(result.table())                 # doctest: +ELLIPSIS
        MLP on digits, 2 seeds; hardware-aware training at g_max=10 uS, t=1 d, ...
    """
    classes = {"mlp": MLP, "cnn": CNN}
    if model not in classes:
        raise ValueError(f"model must be 'mlp' or 'cnn', got {model!r}.")
    _check_gradient_mode(gradient)
    seed_list = _validation.seed_list(seeds, "hardware_aware_experiment")
    g, seed_values, t = _check_grid(g_max, seed_list, t_inference, "hardware_aware_experiment")
    _validation.check_g_max(train_g_max, where="hardware_aware_experiment", name="train_g_max")
    _validation.check_t_inference(train_t_inference, "train_t_inference")
    data = load_digits_split(0) if data is None else data
    data = data.as_images() if model == "cnn" else data.flat()
    cls = classes[model]
    kwargs = dict(model_kwargs or {})
    tile_sizes = {
        "max_input_size": tiles.check_max_size(max_input_size, "max_input_size"),
        "max_output_size": tiles.check_max_size(max_output_size, "max_output_size"),
    }
    fusion = {
        "g_max": float(train_g_max),
        "t_inference": float(train_t_inference),
        "gradient": gradient,
        "noise": noise,
        **tile_sizes,
    }

    # Per seed: initial weights, training noise, mini-batch order. The chip draw of
    # the evaluation is jax.random.key(seed) itself (the sweep's rule).
    per_seed = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(
        jnp.asarray(seed_list, dtype=jnp.uint32)
    )
    k_init, k_noise, k_order = (per_seed[:, i] for i in range(3))
    digital = [cls(**kwargs, rngs=nnx.Rngs(params=k)) for k in k_init]
    aware = [
        cls(**kwargs, fusion=fusion, rngs=nnx.Rngs(params=ki, noise=kn))
        for ki, kn in zip(k_init, k_noise, strict=True)
    ]
    if not (math.isfinite(float(learning_rate)) and float(learning_rate) > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate}.")
    train_args = {
        "optimizer": _adam(float(learning_rate)),
        "loss_fn": cross_entropy,
        "epochs": epochs,
        "batch_size": batch_size,
    }
    for label, models in (("digital", digital), ("hardware-aware", aware)):
        with _epoch_reporter(label, int(epochs), progress, on_epoch) as report:
            _train_stack(
                models,
                data.x_train,
                data.y_train,
                k_order,
                callback=report,
                label=f"{label}: ",
                **train_args,
            )
    if jax.process_count() > 1:
        # Every process trained the same models; take process 0's, so that all
        # evaluate the very same weights even where training is not bit-reproducible.
        from jax.experimental import multihost_utils

        for m in (*digital, *aware):
            nnx.update(m, multihost_utils.broadcast_one_to_all(nnx.state(m, nnx.Param)))

    # One forward pass for both: the parameters have the same structure.
    apply_fn, _ = to_apply_fn(digital[0])
    results = {}
    for name, label, models in (
        ("digital", "digital", digital),
        ("aware", "hardware-aware", aware),
    ):
        results[name] = sweep(
            apply_fn,
            _stack_params(models),
            (data.x_test, data.y_test),
            g_max=g,
            seeds=seed_list,
            t_inference=t,
            noise=noise,
            stacked=True,
            devices=devices,
            **tile_sizes,
            progress=progress,
            label=label,
        )
        results["clean_" + name] = np.array(
            [evaluate(apply_fn, to_apply_fn(m)[1], data.x_test, data.y_test) for m in models]
        )
    return ExperimentResult(
        model=model,
        settings={
            "train_g_max": float(train_g_max),
            "train_t_inference": float(train_t_inference),
            "gradient": gradient,
            **tile_sizes,
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            **kwargs,
        },
        **results,
    )
