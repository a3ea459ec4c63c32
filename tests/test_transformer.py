"""fusion_jax.transformer: histogram task, scanned transformer, programming, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from noise_doubles import AbsoluteNoise, OffsetNoise

from fusion_jax.errors import ArgumentError
from fusion_jax.program_params import leaf_key, program_kernel
from fusion_jax.transformer import (
    Recipe,
    Transformer,
    histogram_task,
    program_transformer,
    programmed_accuracy,
    train,
    transformer_experiment,
)

# One tiny architecture for every test (each new shape is a new compile).
SEQ, VOCAB = 6, 3
SIZES = dict(d_model=8, n_heads=2, d_ff=12, n_layers=2)


def tiny_model(seed=0):
    return Transformer(VOCAB, SEQ, SEQ, **SIZES, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def data():
    return histogram_task(n_train=64, n_test=16, seq_len=SEQ, vocab=VOCAB)


# --- the task ---------------------------------------------------------------------------------


def test_histogram_labels_count_each_token_in_its_sequence():
    data = histogram_task(3, n_train=20, n_test=5, seq_len=9, vocab=4)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        x, y = np.asarray(x), np.asarray(y)
        for row, labels in zip(x, y, strict=True):
            expected = [np.count_nonzero(row == t) - 1 for t in row]
            assert labels.tolist() == expected
        assert x.min() >= 0 and x.max() < 4


def test_histogram_is_fixed_by_its_seed():
    a, b, c = (histogram_task(s, n_train=8, n_test=4, seq_len=5) for s in (1, 1, 2))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:4], a.x_test)  # test set drawn apart


@pytest.mark.parametrize("arg", ["n_train", "n_test", "seq_len", "vocab"])
def test_histogram_rejects_bad_sizes(arg):
    with pytest.raises(ValueError, match=arg):
        histogram_task(**{arg: 1 if arg == "vocab" else 0})


# --- the model --------------------------------------------------------------------------------


def test_blocks_are_stacked_on_a_layer_axis():
    model = tiny_model()
    blocks = model.blocks
    assert blocks.attn.query.kernel.shape == (2, 8, 2, 4)  # [layers, in, heads, head_dim]
    assert blocks.attn.out.kernel.shape == (2, 2, 4, 8)  # [layers, heads, head_dim, out]
    assert blocks.ff1.kernel.shape == (2, 8, 12)
    assert blocks.ff2.kernel.shape == (2, 12, 8)
    assert model.head.kernel.shape == (8, SEQ)
    # The layers are initialised apart, not copies.
    assert not np.allclose(blocks.ff1.kernel[0], blocks.ff1.kernel[1])


def test_scanned_forward_is_the_blocks_in_order():
    model = tiny_model()
    tokens = jnp.array([[0, 1, 2, 1, 0, 0]])
    x = model.embed(tokens)
    x = jnp.concatenate([model.start[...][None, None], x], axis=1) + model.pos[...]
    graphdef, state = nnx.split(model.blocks)
    for layer in range(2):
        x = nnx.merge(graphdef, jax.tree.map(lambda a, i=layer: a[i], state))(x)
    expected = model.head(model.ln_f(x[:, 1:]))
    assert np.allclose(model(tokens), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"n_layers": 0}, "n_layers"), ({"n_heads": 3}, "multiple")]
)
def test_transformer_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(VOCAB, SEQ, SEQ, **{**SIZES, **kwargs}, rngs=nnx.Rngs(0))


# --- programming ------------------------------------------------------------------------------


def params_of(model):
    return nnx.split(model, nnx.Param)[1]


def kernel(state, *path):
    node = state
    for name in path:
        node = node[name]
    return np.asarray(node[...])


def test_noise_free_programming_returns_the_weights():
    params = params_of(tiny_model())
    chip = program_transformer(params, None, g_max=10.0, noise=None)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(chip), strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_only_kernels_are_programmed():
    params = params_of(tiny_model())
    chip = program_transformer(params, jax.random.key(0), g_max=10.0)
    for path in [("embed", "embedding"), ("pos",), ("start",), ("blocks", "ln1", "scale")]:
        assert np.array_equal(kernel(chip, *path), kernel(params, *path))
    for path in [("blocks", "ff1", "bias"), ("blocks", "attn", "query", "bias"), ("head", "bias")]:
        assert np.array_equal(kernel(chip, *path), kernel(params, *path))
    for path in [
        ("blocks", "ff1", "kernel"),
        ("blocks", "attn", "out", "kernel"),
        ("head", "kernel"),
    ]:
        assert not np.allclose(kernel(chip, *path), kernel(params, *path))


@pytest.mark.parametrize(
    "path", [("blocks", "ff2", "kernel"), ("blocks", "attn", "value", "kernel")]
)
def test_each_layer_of_a_stack_is_programmed_on_its_own(path):
    """Layer l of a stack is program_kernel of that layer alone (as [in, out]), with its key."""
    params = params_of(tiny_model())
    key = jax.random.key(5)
    chip = kernel(program_transformer(params, key, g_max=25.0), *path)
    stacked = kernel(params, *path)
    n_out = stacked.shape[-1] * (stacked.shape[-2] if path[-2] == "value" else 1)
    for layer in range(stacked.shape[0]):
        alone = program_kernel(
            stacked[layer].reshape(-1, n_out),
            jax.random.fold_in(leaf_key(key, path), layer),
            g_max=25.0,
        )
        assert np.allclose(chip[layer], np.reshape(alone, stacked.shape[1:]), atol=1e-6)


@pytest.mark.parametrize(
    ("path", "feature"),
    [
        (("blocks", "ff1", "kernel"), (1, Ellipsis, 5)),  # layer 1, output 5
        (("blocks", "attn", "query", "kernel"), (0, slice(None), 1, 2)),  # head 1, dim 2
        (("blocks", "attn", "out", "kernel"), (1, Ellipsis, 3)),  # output 3 over heads x dims
    ],
)
def test_scaling_one_output_feature_scales_its_row_only(path, feature):
    """Every output feature of every layer is one chip row, with its own scale.

    Scaling one output feature by 4 scales its programmed values by 4 and
    changes nothing else (same key: the same devices draw the same noise).
    An offset noise in absolute uS makes any shared scale visible.
    """
    params = params_of(tiny_model())
    noise = OffsetNoise(gain=0.9, offset=0.7)
    scaled = jax.tree.map(lambda a: a, params)
    node = scaled
    for name in path[:-1]:
        node = node[name]
    node[path[-1]].value = node[path[-1]][...].at[feature].multiply(4.0)
    key = jax.random.key(1)
    before = kernel(program_transformer(params, key, g_max=10.0, noise=noise), *path)
    after = kernel(program_transformer(scaled, key, g_max=10.0, noise=noise), *path)
    mask = np.zeros(before.shape, bool)
    mask[feature] = True
    assert np.allclose(after[mask], 4.0 * before[mask], rtol=1e-5, atol=1e-7)
    assert np.array_equal(after[~mask], before[~mask])


def test_program_transformer_checks_its_arguments():
    params = params_of(tiny_model())
    with pytest.raises(ValueError, match="PRNG key"):
        program_transformer(params, None, g_max=10.0)
    with pytest.raises(ArgumentError):
        program_transformer(params, jax.random.key(0), g_max=50.0)
    bad = {"blocks": {"ff1": {"kernel": jnp.ones((2, 3))}}}  # a stacked kernel without its layer
    with pytest.raises(ValueError, match="blocks/ff1/kernel"):
        program_transformer(bad, None, noise=None)


# --- training and evaluation ------------------------------------------------------------------


def test_recipes():
    assert Recipe.fixed(25.0).g_max == (25.0,) and Recipe.fixed(25.0).aware
    assert Recipe.choice(10, 40).draw == "choice"
    with pytest.raises(ArgumentError):
        Recipe.uniform(5.0, 40.0)
    with pytest.raises(ValueError, match="warmup"):
        Recipe.fixed(10.0, warmup=1.0)
    with pytest.raises(ValueError, match="draw"):
        Recipe("x", (10.0,), draw="gauss")


def test_digital_training_learns_and_updates_in_place(data):
    model = tiny_model()
    before = np.asarray(model.head.kernel[...])
    losses = train(
        [model], data, Recipe.digital(), jax.random.key(0)[None], steps=60, batch_size=16
    )
    assert losses.shape == (1, 60)
    assert losses[0, -10:].mean() < 0.8 * losses[0, :10].mean()
    assert not np.allclose(model.head.kernel[...], before)


@pytest.mark.parametrize(
    "recipe", [Recipe.uniform(10.0, 40.0, warmup=0.5), Recipe.choice(10.0, 25.0, 40.0)]
)
def test_hardware_aware_training_sees_the_noise(data, recipe):
    """Trained through the programming: the same seeds without noise would give other weights."""
    keys = jax.random.split(jax.random.key(0), 2)
    aware = [tiny_model(0), tiny_model(1)]
    quiet = [tiny_model(0), tiny_model(1)]
    args = dict(steps=12, batch_size=8)
    losses = train(aware, data, recipe, keys, noise=AbsoluteNoise(3.0), **args)
    quiet_losses = train(quiet, data, recipe, keys, noise=None, **args)
    assert np.all(np.isfinite(losses))
    if recipe.warmup:  # the digital first half is the same, the rest is not
        assert np.allclose(losses[:, :6], quiet_losses[:, :6], atol=1e-5)
    assert not np.allclose(losses[:, -6:], quiet_losses[:, -6:])
    assert not np.allclose(aware[0].head.kernel[...], quiet[0].head.kernel[...])


def test_train_checks_its_arguments(data):
    with pytest.raises(ValueError, match="keys"):
        train([tiny_model()], data, Recipe.digital(), jax.random.split(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="batch_size"):
        train([tiny_model()], data, Recipe.digital(), jax.random.key(0)[None], batch_size=65)
    with pytest.raises(ValueError, match="steps"):
        train([tiny_model()], data, Recipe.digital(), jax.random.key(0)[None], steps=0)


def test_noise_free_chip_accuracy_is_the_clean_accuracy(data):
    models = [tiny_model(0), tiny_model(1)]
    keys = jax.random.split(jax.random.key(0), 2)
    acc = programmed_accuracy(
        models, data.x_test, data.y_test, keys, g_max=(10.0, 40.0), noise=None
    )
    clean = [float(jnp.mean(m(data.x_test).argmax(-1) == data.y_test)) for m in models]
    assert acc.shape == (2, 2)
    assert np.allclose(acc, np.broadcast_to(clean, (2, 2)))


def test_experiment_pairs_the_recipes_by_seed(data):
    """Same seed, same initial weights and batches: two digital runs agree exactly."""
    result = transformer_experiment(
        [Recipe.digital(), Recipe("digital again"), Recipe.fixed(10.0)],
        seeds=(0, 1),
        g_max=(10.0, 40.0),
        steps=8,
        batch_size=8,
        data=data,
        model_kwargs=SIZES,
    )
    assert result.chip.shape == (3, 2, 2) and result.clean.shape == (3, 2)
    assert np.array_equal(result.chip[0], result.chip[1])
    assert np.array_equal(result.gain()[1], np.zeros((2, 2)))
    table = result.table()
    assert table.splitlines()[0].startswith("| training | clean | 10 uS | 40 uS |")
    assert "| g_max = 10 |" in table
