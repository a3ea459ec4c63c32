"""A small transformer on a synthetic sequence task, trained for the chip at any g_max.

The task (:func:`histogram_task`) ships with the code: random token
sequences drawn from a fixed seed, and for every token the number of times it
occurs in its sequence (the "histogram" task). Solving it takes attention: a
token has to find every other copy of itself in the sequence.

The model (:class:`Transformer`) is a pre-norm NNX transformer whose blocks
are built with ``nnx.vmap`` and run with ``nnx.scan``: every kernel of the
blocks is stacked on a leading layer axis (``[layers, in, out]``,
attention ``[layers, in, heads, head_dim]`` and ``[layers, heads, head_dim,
out]``). Programming it onto the chip with :func:`fusion_jax.program_params`
(given the module, which knows every kernel's axes) programs each layer of a
stack on its own, with one chip row per output feature.

Hardware-aware training programs the parameters in every training step with a
fresh draw of the chip noise, and lets the gradient flow through the
programming (:func:`train`). A :class:`Recipe` says at which g_max: a fixed
value, or a value drawn anew in every step from a range or a set.
:func:`transformer_experiment` trains digitally and with several recipes,
programs every trained model once per seed at each g_max of the table and
reports test accuracy, mean and spread over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from fusion_jax import _validation
from fusion_jax.evaluation import sweep
from fusion_jax.model_programming import program_params
from fusion_jax.programming import (
    DEFAULT_NOISE,
    GradientMode,
    NoiseModel,
    _check_gradient_mode,
    resolve_noise,
)
from fusion_jax.training import to_apply_fn

__all__ = [
    "Recipe",
    "SequenceData",
    "Transformer",
    "TransformerResult",
    "histogram_task",
    "programmed_accuracy",
    "train",
    "transformer_experiment",
]

#: g_max values (uS) of the table.
DEFAULT_G_MAX = (10.0, 25.0, 40.0)
#: Seconds after programming at which the chip is read (training and table).
DEFAULT_T_INFERENCE = 86400.0


# --- the task -----------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SequenceData:
    """Token sequences with one label per token (a pytree of arrays).

    Attributes:
        x_train: Training sequences, token ids ``[N, length]``.
        y_train: Their labels ``[N, length]``.
        x_test: Test sequences ``[M, length]``.
        y_test: Their labels ``[M, length]``.
    """

    x_train: Int[Array, "n_train length"]
    y_train: Int[Array, "n_train length"]
    x_test: Int[Array, "n_test length"]
    y_test: Int[Array, "n_test length"]

    @property
    def seq_len(self) -> int:
        """Length of every sequence."""
        return int(self.x_train.shape[1])


def _histogram_batch(key: PRNGKeyArray, n: int, seq_len: int, vocab: int) -> tuple[Any, Any]:
    x = jax.random.randint(key, (n, seq_len), 0, vocab, dtype=jnp.int32)
    counts = (x[:, :, None] == x[:, None, :]).sum(-1)
    return x, (counts - 1).astype(jnp.int32)


def histogram_task(
    seed: int = 0,
    *,
    n_train: int = 4096,
    n_test: int = 1024,
    seq_len: int = 16,
    vocab: int = 8,
) -> SequenceData:
    """The histogram task: label every token with how often it occurs in its sequence.

    Sequences of ``seq_len`` tokens drawn uniformly from ``vocab`` symbols
    with ``jax.random`` from ``seed`` (nothing is downloaded; the same seed
    gives the same data on every machine). The label of a token is its count
    in the sequence minus one, a class in ``[0, seq_len)``.

    Args:
        seed: Seed of the data; the test set is drawn from its own key.
        n_train: Number of training sequences.
        n_test: Number of test sequences.
        seq_len: Tokens per sequence.
        vocab: Number of distinct symbols.

    Returns:
        A :class:`SequenceData`.

    Raises:
        ValueError: for a non-positive size, ``vocab < 2`` or a seed outside
            [0, 2**32).
        TypeError: for a seed that is not an integer.

    Example:
        >>> from fusion_jax.transformer import histogram_task
        >>> data = histogram_task(n_train=2, n_test=1, seq_len=6, vocab=3)
        >>> data.x_train.shape, data.y_test.shape
        ((2, 6), (1, 6))
        >>> x, y = data.x_train[0].tolist(), data.y_train[0].tolist()
        >>> all(y[i] == x.count(x[i]) - 1 for i in range(6))
        True
    """
    for name, value, low in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("seq_len", seq_len, 1),
        ("vocab", vocab, 2),
    ):
        if int(value) < low:
            raise ValueError(f"{name} must be at least {low}, got {value}.")
    k_train, k_test = jax.random.split(
        jax.random.key(_validation.check_seed(seed, "histogram_task"))
    )
    x_train, y_train = _histogram_batch(k_train, int(n_train), int(seq_len), int(vocab))
    x_test, y_test = _histogram_batch(k_test, int(n_test), int(seq_len), int(vocab))
    return SequenceData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


# --- the model ----------------------------------------------------------------------------------


class Block(nnx.Module):
    """One pre-norm transformer block: self-attention, then a two-layer MLP.

    Args:
        d_model: Width of the residual stream.
        n_heads: Attention heads (``d_model`` must be a multiple).
        d_ff: Hidden width of the MLP.
        rngs: ``nnx.Rngs`` for the parameters.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            n_heads, d_model, decode=False, deterministic=True, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.ff1 = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.ff2 = nnx.Linear(d_ff, d_model, rngs=rngs)

    def __call__(self, x: Float[Array, "*batch length d"]) -> Float[Array, "*batch length d"]:
        """The block applied to the residual stream ``x``."""
        x = x + self.attn(self.ln1(x))
        return x + self.ff2(jax.nn.gelu(self.ff1(self.ln2(x))))


class Transformer(nnx.Module):
    """A small encoder-only transformer with scanned blocks, one output per token.

    Token embedding plus a learned position embedding, ``n_layers`` pre-norm
    :class:`Block` s, a final LayerNorm and a linear head to ``n_classes``
    logits at every position. A learned start vector is put in front of the
    sequence (a slot attention can fall back on; its output is dropped).

    The blocks are one module stacked by ``nnx.vmap`` and applied with
    ``nnx.scan``: each block kernel has a leading layer axis, e.g.
    ``blocks.ff1.kernel [n_layers, d_model, d_ff]`` and
    ``blocks.attn.query.kernel [n_layers, d_model, n_heads, head_dim]``.
    Embeddings, LayerNorms and biases stay digital on the chip; the kernels
    are programmed (``fj.program_params(model, key, g_max=...)`` returns the
    programmed copy, each stacked layer on its own, one chip row per output
    feature).

    Args:
        vocab: Number of token ids.
        seq_len: Longest sequence.
        n_classes: Logits per token.
        d_model: Width of the residual stream.
        n_heads: Attention heads.
        d_ff: Hidden width of the MLPs.
        n_layers: Number of blocks.
        rngs: ``nnx.Rngs`` with a ``params`` stream.

    Raises:
        ValueError: for a non-positive size or ``d_model`` not a multiple of ``n_heads``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from fusion_jax.transformer import Transformer
        >>> model = Transformer(vocab=3, seq_len=6, n_classes=6, d_model=8, n_heads=2,
        ...                     d_ff=12, n_layers=2, rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 6), jnp.int32)).shape
        (2, 6, 6)
        >>> model.blocks.attn.query.kernel.shape    # [layers, in, heads, head_dim]
        (2, 8, 2, 4)

        Programmed onto the chip, once: each layer of a stack on its own.

        >>> import jax, fusion_jax as fj
        >>> pcm = fj.noise.PCMLikeNoise()
        >>> chip = fj.program_params(model, jax.random.key(1), g_max=25.0, noise=pcm)  # a copy
        >>> bool((chip.blocks.ff1.kernel[...] != model.blocks.ff1.kernel[...]).any())
        True
        >>> chip(jnp.zeros((2, 6), jnp.int32)).shape
        (2, 6, 6)
    """

    def __init__(
        self,
        vocab: int,
        seq_len: int,
        n_classes: int,
        *,
        d_model: int = 32,
        n_heads: int = 4,
        d_ff: int = 64,
        n_layers: int = 2,
        rngs: nnx.Rngs,
    ) -> None:
        sizes = {
            "vocab": vocab,
            "seq_len": seq_len,
            "n_classes": n_classes,
            "d_model": d_model,
            "n_heads": n_heads,
            "d_ff": d_ff,
            "n_layers": n_layers,
        }
        for name, value in sizes.items():
            if int(value) < 1:
                raise ValueError(f"Transformer: {name} must be positive, got {value}.")
        if d_model % n_heads:
            raise ValueError(
                f"Transformer: d_model ({d_model}) must be a multiple of n_heads ({n_heads})."
            )
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
        self.pos = nnx.Param(init(rngs.params(), (seq_len + 1, d_model)))
        self.start = nnx.Param(init(rngs.params(), (d_model,)))

        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(d_model, n_heads, d_ff, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, n_classes, rngs=rngs)

    def __call__(
        self, tokens: Int[Array, "*batch length"]
    ) -> Float[Array, "*batch length classes"]:
        """Logits ``[..., length, n_classes]`` for token ids ``[..., length]``."""
        x = self.embed(tokens)
        start = jnp.broadcast_to(self.start[...], (*x.shape[:-2], 1, x.shape[-1]))
        x = jnp.concatenate([start, x], axis=-2)
        x = x + self.pos[: x.shape[-2]]

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x: jax.Array, block: Block) -> jax.Array:
            return block(x)

        x = run(x, self.blocks)
        return self.head(self.ln_f(x[..., 1:, :]))


# --- training -----------------------------------------------------------------------------------


def _warmup_text(warmup: float) -> str:
    return f", after {float(warmup):.0%} digital" if warmup else ""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model is trained: digitally, or hardware-aware at which g_max.

    Attributes:
        name: Label in the table.
        g_max: ``()`` for digital training; one value for hardware-aware
            training at that g_max (uS); several values for a g_max drawn
            anew in every step (see ``draw``).
        draw: ``"uniform"``: uniform between the smallest and the largest
            value; ``"choice"``: one of the values, each equally likely.
        warmup: Fraction of the steps trained digitally before the
            hardware-aware steps start (0: hardware-aware from the start).

    Example:
        >>> from fusion_jax.transformer import Recipe
        >>> Recipe.uniform(10.0, 40.0).name
        'g_max ~ U[10, 40]'
        >>> Recipe.fixed(25.0, warmup=0.5).name
        'g_max = 25, after 50% digital'
        >>> Recipe.digital().aware
        False
    """

    name: str
    g_max: tuple[float, ...] = ()
    draw: str = "uniform"
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.draw not in ("uniform", "choice"):
            raise ValueError(f"Recipe {self.name!r}: draw must be 'uniform' or 'choice'.")
        if self.g_max:
            g_max = np.asarray(self.g_max, dtype=np.float64)
            _validation.check_g_max(g_max, where=f"Recipe {self.name!r}", name_values=True)
        if not 0.0 <= float(self.warmup) < 1.0:
            raise ValueError(f"Recipe {self.name!r}: warmup must lie in [0, 1), got {self.warmup}.")

    @property
    def aware(self) -> bool:
        """Whether the recipe programs the weights during training."""
        return bool(self.g_max)

    @classmethod
    def digital(cls) -> Recipe:
        """Plain digital training."""
        return cls("digital")

    @classmethod
    def fixed(cls, g_max: float, warmup: float = 0.0) -> Recipe:
        """Hardware-aware at one g_max."""
        return cls(f"g_max = {g_max:g}{_warmup_text(warmup)}", (float(g_max),), warmup=warmup)

    @classmethod
    def uniform(cls, low: float, high: float, warmup: float = 0.0) -> Recipe:
        """Hardware-aware, g_max drawn uniformly from ``[low, high]`` in every step."""
        name = f"g_max ~ U[{low:g}, {high:g}]{_warmup_text(warmup)}"
        return cls(name, (float(low), float(high)), warmup=warmup)

    @classmethod
    def choice(cls, *values: float, warmup: float = 0.0) -> Recipe:
        """Hardware-aware, g_max drawn from ``values`` in every step."""
        text = ", ".join(f"{v:g}" for v in values)
        name = f"g_max in {{{text}}}{_warmup_text(warmup)}"
        return cls(name, tuple(float(v) for v in values), "choice", warmup)


def _g_values(recipe: Recipe) -> jax.Array:
    """The traced g_max values of a recipe: ``(low, high)`` for a uniform draw, or the choices.

    A digital recipe gets ``(40, 40)``: valid values for a programming its
    training never runs.
    """
    if not recipe.aware:
        return jnp.full(2, 40.0, jnp.float32)
    if recipe.draw == "choice" and len(recipe.g_max) > 1:
        return jnp.asarray(recipe.g_max, jnp.float32)
    return jnp.asarray([min(recipe.g_max), max(recipe.g_max)], jnp.float32)


def _draw_g_max(key: PRNGKeyArray, g_values: jax.Array, *, choice: bool) -> jax.Array:
    """One step's g_max: one of ``g_values``, or uniform between their smallest and largest."""
    if choice:
        return g_values[jax.random.randint(key, (), 0, g_values.shape[0])]
    return jax.random.uniform(key, (), g_values.dtype, g_values.min(), g_values.max())


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "choice",
        "steps",
        "batch_size",
        "learning_rate",
        "gradient",
    ),
)
def _train_stack(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    keys: PRNGKeyArray,
    x: jax.Array,
    y: jax.Array,
    noise: NoiseModel | None,
    t_inference: jax.Array,
    g_values: jax.Array,
    first_aware: jax.Array,
    *,
    choice: bool,
    steps: int,
    batch_size: int,
    learning_rate: float,
    gradient: GradientMode,
) -> tuple[nnx.State, jax.Array]:
    """Train a stack of models (leading axis of params and keys); losses ``[models, steps]``.

    Steps from ``first_aware`` on are hardware-aware: their g_max is uniform
    between the smallest and the largest of ``g_values`` (``choice=False``)
    or one of them. Both are traced, and the earlier, digital steps skip the
    programming in a ``lax.cond``: digital, fixed, uniform and warm-up
    recipes share one compiled function (a digital recipe's ``first_aware``
    is ``steps``).
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(1, steps // 20), steps, learning_rate / 20
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

    def loss_fn(p: nnx.State, key: PRNGKeyArray, step: jax.Array, xb, yb) -> jax.Array:
        k_g, k_noise = jax.random.split(key)

        def programmed(p: nnx.State) -> nnx.State:
            chip = program_params(
                nnx.merge(graphdef, p),
                k_noise,
                g_max=_draw_g_max(k_g, g_values, choice=choice),
                noise=noise,
                t_inference=t_inference,
                gradient=gradient,
            )
            return nnx.state(chip, nnx.Param)

        # Step and first_aware are the same for every model of the stack: under
        # jax.vmap the condition stays one branch, so digital steps skip the programming.
        p = jax.lax.cond(step >= first_aware, programmed, lambda p: p, p)
        return _loss(nnx.merge(graphdef, p)(xb), yb)

    def one_model(params: nnx.State, key: PRNGKeyArray) -> tuple[nnx.State, jax.Array]:
        def step(carry, i):
            params, opt_state = carry
            k_batch, k_step = jax.random.split(jax.random.fold_in(key, i))
            idx = jax.random.randint(k_batch, (batch_size,), 0, x.shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(params, k_step, i, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
        return params, losses

    return jax.vmap(one_model)(params, keys)


def train(
    models: Sequence[Transformer],
    data: SequenceData,
    recipe: Recipe,
    keys: PRNGKeyArray,
    *,
    steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float = DEFAULT_T_INFERENCE,
    gradient: GradientMode = "exact",
) -> np.ndarray:
    """Train transformers of one architecture together (vmapped); update them in place.

    Adam with a warm-up and cosine decay of the step size, gradients clipped
    to norm 1, softmax cross-entropy over every token. Each step draws a
    mini-batch of ``batch_size`` training sequences. A hardware-aware
    ``recipe`` programs the parameters in every step
    (:func:`fusion_jax.program_params` of the module, a fresh noise key and,
    for a drawn g_max, a fresh g_max) and the gradient flows through the programming.

    Recipes compile one training program per kind of g_max draw: digital,
    fixed, uniform and warm-up recipes share one (their g_max values and
    first hardware-aware step are data; digital steps skip the programming
    at run time), ``Recipe.choice`` recipes another. Models trained with the
    same ``noise``, ``gradient``, architecture and sizes reuse it, as
    :func:`transformer_experiment` does for its recipes.

    Args:
        models: :class:`Transformer` s of one architecture; trained in place.
        data: The task.
        recipe: Digital or hardware-aware, and at which g_max.
        keys: One PRNG key per model: mini-batches, noise and g_max draws.
        steps: Training steps.
        batch_size: Sequences per step.
        learning_rate: Peak Adam step size.
        noise: Noise model of the hardware-aware steps (a digital recipe
            never uses it; pass the one of the other recipes to share
            their compiled program).
        t_inference: Read time (s) of the hardware-aware steps.
        gradient: ``"exact"`` or ``"ste"`` through the programming.

    Returns:
        The training losses ``[models, steps]``.

    Raises:
        ValueError: for bad step counts, batch sizes or learning rates, or
            keys not matching the models.
        FloatingPointError: if a loss is NaN or Inf (the models are left untrained).

    Example:
        Two models trained together, digitally for half the steps, then
        through the programming at a g_max drawn in [10, 40] uS in each step:

        >>> import jax
        >>> from flax import nnx
        >>> from fusion_jax.noise import PCMLikeNoise
        >>> from fusion_jax.transformer import Recipe, Transformer, histogram_task, train
        >>> data = histogram_task(n_train=64, n_test=16, seq_len=6, vocab=3)
        >>> sizes = dict(d_model=8, n_heads=2, d_ff=12, n_layers=2)
        >>> models = [Transformer(3, 6, 6, **sizes, rngs=nnx.Rngs(s)) for s in (0, 1)]
        >>> recipe = Recipe.uniform(10.0, 40.0, warmup=0.5)
        >>> keys = jax.random.split(jax.random.key(0), 2)
        >>> losses = train(models, data, recipe, keys, steps=12, batch_size=8,
        ...                learning_rate=0.03, noise=PCMLikeNoise())
        >>> losses.shape
        (2, 12)
    """
    _check_gradient_mode(gradient)
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if not 1 <= int(batch_size) <= data.x_train.shape[0]:
        raise ValueError(f"batch_size must lie in [1, {data.x_train.shape[0]}], got {batch_size}.")
    if not (math.isfinite(float(learning_rate)) and float(learning_rate) > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate}.")
    if keys.shape != (len(models),):
        raise ValueError(f"keys must hold one key per model ({len(models)}), got {keys.shape}.")
    # The first hardware-aware step; a digital recipe never gets there.
    first_aware = round(recipe.warmup * int(steps)) if recipe.aware else int(steps)
    splits = [nnx.split(m, nnx.Param) for m in models]
    graphdef = splits[0][0]
    if any(s[0] != graphdef for s in splits[1:]):
        raise ValueError("models trained together must have the same architecture.")
    params = jax.tree.map(lambda *a: jnp.stack(a), *[s[1] for s in splits])
    params, losses = _train_stack(
        graphdef,
        params,
        keys,
        data.x_train,
        data.y_train,
        resolve_noise(noise),
        jnp.asarray(t_inference, jnp.float32),
        _g_values(recipe),
        jnp.asarray(first_aware, jnp.int32),
        choice=recipe.draw == "choice" and len(recipe.g_max) > 1,
        steps=int(steps),
        batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        gradient=gradient,
    )
    losses = np.asarray(losses)
    if not np.all(np.isfinite(losses)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(losses))[:, 0]})
        raise FloatingPointError(
            f"{recipe.name}: training diverged (non-finite loss) for model(s) {bad}; "
            "lower the learning_rate."
        )
    for i, model in enumerate(models):
        nnx.update(model, jax.tree.map(lambda a, i=i: a[i], params))
    return losses


# --- evaluation on the chip ---------------------------------------------------------------------


def programmed_accuracy(
    models: Sequence[Transformer],
    x: Int[Array, "n length"],
    y: Int[Array, "n length"],
    seeds: Sequence[int],
    *,
    g_max: Sequence[float] = DEFAULT_G_MAX,
    noise: NoiseModel | None = DEFAULT_NOISE,
    t_inference: float = DEFAULT_T_INFERENCE,
    strict_aihwkit: bool = False,
) -> np.ndarray:
    """Token accuracy of each model programmed once onto the chip, at each g_max.

    Model ``i`` is programmed with the chip draw of ``seeds[i]`` (the same
    devices at every g_max) and classifies all of ``x`` with that one
    programmed copy: :func:`fusion_jax.sweep` with the models stacked
    (``stacked=True``), its labels one per token.

    Args:
        models: :class:`Transformer` s of one architecture.
        x: Token sequences.
        y: Labels, one per token.
        seeds: One seed per model (its chip draw is ``jax.random.key(seed)``).
        g_max: g_max values (uS), each in [10, 40].
        noise: Noise model; ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.

    Returns:
        Accuracies ``[len(g_max), len(models)]``.

    Raises:
        ValueError: for seeds not matching the models, or ``x``/``y`` of
            different shapes.
        ArgumentError: for a g_max outside [10, 40].

    Example:
        >>> from flax import nnx
        >>> from fusion_jax.noise import PCMLikeNoise
        >>> from fusion_jax.transformer import Transformer, histogram_task, programmed_accuracy
        >>> data = histogram_task(n_train=64, n_test=16, seq_len=6, vocab=3)
        >>> sizes = dict(d_model=8, n_heads=2, d_ff=12, n_layers=2)
        >>> models = [Transformer(3, 6, 6, **sizes, rngs=nnx.Rngs(s)) for s in (0, 1)]
        >>> acc = programmed_accuracy(models, data.x_test, data.y_test, seeds=[0, 1],
        ...                           g_max=(10.0, 40.0), noise=PCMLikeNoise())
        >>> acc.shape                           # g_max x models
        (2, 2)
    """
    seeds = _validation.seed_list(seeds, "programmed_accuracy")
    if len(seeds) != len(models):
        raise ValueError(f"seeds must hold one seed per model ({len(models)}), got {len(seeds)}.")
    if np.shape(x) != np.shape(y):
        raise ValueError(f"x {np.shape(x)} and y {np.shape(y)} must have the same shape.")
    apply_fn, _ = to_apply_fn(models[0])
    params = jax.tree.map(lambda *a: jnp.stack(a), *[to_apply_fn(m)[1] for m in models])
    result = sweep(
        apply_fn,
        params,
        (x, y),
        g_max=g_max,
        seeds=seeds,
        t_inference=[t_inference],
        noise=noise,
        strict_aihwkit=strict_aihwkit,
        stacked=True,
    )
    return result.accuracy[:, :, 0]


def _clean_accuracy(models: Sequence[Transformer], x: jax.Array, y: jax.Array) -> np.ndarray:
    return np.array([float(jnp.mean(jnp.argmax(m(x), axis=-1) == y)) for m in models])


# --- the experiment -----------------------------------------------------------------------------

#: The recipes of the README table: digital, hardware-aware at each end of
#: the range, and g_max drawn in every step.
DEFAULT_RECIPES = (
    Recipe.digital(),
    Recipe.fixed(10.0),
    Recipe.fixed(40.0),
    Recipe.uniform(10.0, 40.0),
    Recipe.choice(10.0, 25.0, 40.0),
)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    ddof = 1 if values.shape[-1] > 1 else 0
    return float(values.mean(-1)), float(values.std(-1, ddof=ddof))


@dataclasses.dataclass(frozen=True)
class TransformerResult:
    """Test accuracies of transformers trained with several recipes, programmed on the chip.

    Seed ``s`` gives every recipe the same initial weights, mini-batch order
    and programming key, so the differences between recipes are paired.

    Attributes:
        recipes: Names of the recipes, ``[R]`` (the first is the baseline
            the gains are measured against, digital by default).
        seeds: The seeds, ``[S]``.
        g_max: g_max values (uS) of the evaluation, ``[G]``.
        clean: Token accuracy on the unprogrammed weights, ``[R, S]``.
        chip: Token accuracy programmed once per seed, ``[R, G, S]``.
        settings: Model, task and training settings (for the record).
    """

    recipes: tuple[str, ...]
    seeds: np.ndarray
    g_max: np.ndarray
    clean: np.ndarray
    chip: np.ndarray
    settings: Mapping[str, Any]

    def gain(self) -> np.ndarray:
        """Per-seed accuracy of each recipe minus the first (baseline), ``[R, G, S]``."""
        return self.chip - self.chip[:1]

    def table(self) -> str:
        """Markdown table: accuracy (%) mean +- std over seeds, and the paired gain.

        Columns: recipe, clean accuracy, then per g_max the programmed
        accuracy, then per g_max the gain over the baseline (mean +- standard
        error of the paired per-seed differences).
        """
        n = len(self.seeds)
        g_cols = [f"{g:g} uS" for g in self.g_max]
        head = ["training", "clean", *g_cols, *(f"gain at {c}" for c in g_cols)]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        gain = self.gain()
        for r, name in enumerate(self.recipes):
            cells = [name, "{:.1f} ± {:.1f}".format(*(100 * v for v in _mean_std(self.clean[r])))]
            cells += [
                "{:.1f} ± {:.1f}".format(*(100 * v for v in _mean_std(self.chip[r, i])))
                for i in range(len(self.g_max))
            ]
            for i in range(len(self.g_max)):
                if r == 0:
                    cells.append("")
                    continue
                mean, std = _mean_std(gain[r, i])
                cells.append(f"{100 * mean:+.1f} ± {100 * std / math.sqrt(n):.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        s = self.settings
        return (
            f"Transformer on the histogram task, {len(self.seeds)} seeds, {s['steps']} steps; "
            f"token accuracy (%) programmed once per seed, read after {s['t_inference']:g} s; "
            "mean ± std over seeds; gain: paired difference to "
            f"{self.recipes[0]!r}, mean ± s.e.m.\n\n{self.table()}"
        )


def transformer_experiment(
    recipes: Sequence[Recipe] = DEFAULT_RECIPES,
    *,
    seeds: Sequence[int] = tuple(range(5)),
    g_max: Sequence[float] = DEFAULT_G_MAX,
    t_inference: float = DEFAULT_T_INFERENCE,
    noise: NoiseModel | None = DEFAULT_NOISE,
    gradient: GradientMode = "exact",
    steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    data: SequenceData | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> TransformerResult:
    """Train a transformer with each recipe, program it once per seed, evaluate at each g_max.

    For every seed, every recipe starts from the same initial weights and
    sees the same mini-batches; every trained model is programmed once
    (the same key for all recipes of a seed) at each ``g_max`` and read
    after ``t_inference`` seconds. All seeds of a recipe train together
    (vmapped). Run it and ``print`` the result for the table.

    Args:
        recipes: Training recipes; the first is the baseline of the gains.
        seeds: Integer seeds (a sequence): one model per recipe and seed.
        g_max: g_max values (uS) of the table.
        t_inference: Read time (s) of training and evaluation.
        noise: Chip noise model (training and evaluation).
        gradient: ``"exact"`` or ``"ste"`` through the programming.
        steps: Training steps per model.
        batch_size: Sequences per step.
        learning_rate: Peak Adam step size.
        data: The task; :func:`histogram_task` by default.
        model_kwargs: Arguments of :class:`Transformer` other than
            ``vocab``, ``seq_len`` and ``n_classes``.
        progress: Print each recipe's final training loss and accuracies to
            standard error as it finishes.

    Returns:
        A :class:`TransformerResult`.

    Raises:
        ValueError: for no recipes, no seeds, or bad training arguments.
        ArgumentError: for a g_max outside [10, 40].

    Example:
        >>> from fusion_jax.noise import PCMLikeNoise
        >>> from fusion_jax.transformer import Recipe, histogram_task, transformer_experiment
        >>> data = histogram_task(n_train=64, n_test=16, seq_len=6, vocab=3)
        >>> result = transformer_experiment(
        ...     [Recipe.digital(), Recipe.uniform(10.0, 40.0, warmup=0.5)], seeds=(0, 1),
        ...     g_max=(10.0, 40.0), noise=PCMLikeNoise(), steps=12, batch_size=8,
        ...     learning_rate=0.03, data=data,
        ...     model_kwargs=dict(d_model=8, n_heads=2, d_ff=12, n_layers=2))
        >>> result.chip.shape                   # recipes x g_max x seeds
        (2, 2, 2)
        >>> print(result.table())               # doctest: +ELLIPSIS
        | training | clean | 10 uS | 40 uS | gain at 10 uS | gain at 40 uS |
        ...
    """
    recipes = tuple(recipes)
    if not recipes:
        raise ValueError("recipes is empty: the experiment needs at least one recipe.")
    seed_list = _validation.seed_list(seeds, "transformer_experiment")
    g = np.atleast_1d(np.asarray(g_max, dtype=np.float64))
    _validation.check_g_max(g, where="transformer_experiment", name_values=True)
    data = histogram_task() if data is None else data
    kwargs = dict(model_kwargs or {})
    vocab = int(max(data.x_train.max(), data.x_test.max())) + 1
    n_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    n_classes = max(n_classes, data.seq_len)

    # Per seed: initial weights and training (batches, noise, g_max draws); the chip
    # draw of the evaluation is jax.random.key(seed) itself, fj.sweep's rule.
    per_seed = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(
        jnp.asarray(seed_list, dtype=jnp.uint32)
    )
    k_init, k_train = per_seed[:, 0], per_seed[:, 1]
    clean, chip = [], []
    for recipe in recipes:
        models = [
            Transformer(vocab, data.seq_len, n_classes, **kwargs, rngs=nnx.Rngs(params=k))
            for k in k_init
        ]
        losses = train(
            models,
            data,
            recipe,
            k_train,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            noise=noise,
            t_inference=t_inference,
            gradient=gradient,
        )
        clean.append(_clean_accuracy(models, data.x_test, data.y_test))
        chip.append(
            programmed_accuracy(
                models,
                data.x_test,
                data.y_test,
                seed_list,
                g_max=g,
                noise=noise,
                t_inference=t_inference,
            )
        )
        if progress:
            print(
                f"{recipe.name}: final loss {losses[:, -max(1, steps // 10) :].mean():.3f}, "
                f"clean {100 * clean[-1].mean():.1f}%, chip "
                + ", ".join(f"{100 * a:.1f}%" for a in chip[-1].mean(-1)),
                file=sys.stderr,
                flush=True,
            )
    return TransformerResult(
        recipes=tuple(r.name for r in recipes),
        seeds=np.asarray(seed_list),
        g_max=g,
        clean=np.stack(clean),
        chip=np.stack(chip),
        settings={
            "steps": int(steps),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "t_inference": float(t_inference),
            "gradient": gradient,
            "seq_len": data.seq_len,
            "vocab": vocab,
            **kwargs,
        },
    )
