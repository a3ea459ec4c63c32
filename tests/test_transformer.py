"""fusion_jax.transformer: histogram task, scanned transformer, programming, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fusion_jax as fj
from fusion_jax.errors import ArgumentError
from fusion_jax.model_programming import leaf_key
from fusion_jax.transformer import (
    Recipe,
    Transformer,
    _draw_g_max,
    _train_stack,
    histogram_task,
    programmed_accuracy,
    train,
    transformer_experiment,
)

# One tiny architecture, one training configuration and one noise model for every
# test: each new shape or setting is a new compile of the training step. They are
# those of the examples in fusion_jax/transformer.py, which then reuse these compiles.
SEQ, VOCAB = 6, 3
SIZES = dict(d_model=8, n_heads=2, d_ff=12, n_layers=2)
TRAIN = dict(steps=12, batch_size=8, learning_rate=0.03)
NOISE = fj.noise.PCMLikeNoise()
WARM = Recipe.uniform(10.0, 40.0, warmup=0.5)  # half digital, then g_max drawn per step


def tiny_model(seed=0):
    return Transformer(VOCAB, SEQ, SEQ, **SIZES, rngs=nnx.Rngs(seed))


# The task's sizes for every test: a new size is a new compile of the draw.
HISTOGRAM = dict(n_train=64, n_test=16, seq_len=SEQ, vocab=VOCAB)


@pytest.fixture(scope="module")
def data():
    return histogram_task(**HISTOGRAM)


# --- the task ---------------------------------------------------------------------------------


def test_histogram_labels_count_each_token_in_its_sequence():
    data = histogram_task(3, **HISTOGRAM)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        x, y = np.asarray(x), np.asarray(y)
        for row, labels in zip(x, y, strict=True):
            expected = [np.count_nonzero(row == t) - 1 for t in row]
            assert labels.tolist() == expected
        assert x.min() >= 0 and x.max() < VOCAB


def test_histogram_is_fixed_by_its_seed():
    a, b, c = (histogram_task(s, **HISTOGRAM) for s in (1, 1, 2))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:16], a.x_test)  # test set drawn apart


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
    @nnx.jit  # one program, not an eager compile per operation
    def scanned_and_in_order(model, tokens):
        x = model.embed(tokens)
        x = jnp.concatenate([model.start[...][None, None], x], axis=1) + model.pos[...]
        graphdef, state = nnx.split(model.blocks)
        for layer in range(2):
            x = nnx.merge(graphdef, jax.tree.map(lambda a, i=layer: a[i], state))(x)
        return model(tokens), model.head(model.ln_f(x[:, 1:]))

    scanned, expected = scanned_and_in_order(tiny_model(), jnp.array([[0, 1, 2, 1, 0, 0]]))
    assert np.allclose(scanned, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"n_layers": 0}, "n_layers"), ({"n_heads": 3}, "multiple")]
)
def test_transformer_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(VOCAB, SEQ, SEQ, **{**SIZES, **kwargs}, rngs=nnx.Rngs(0))


# --- programming (fj.program_params given the module) -----------------------------------------


def test_noise_free_programming_returns_the_weights():
    model = tiny_model()
    chip = fj.program_params(model, None, g_max=10.0, noise=None)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(chip)), strict=True
    ):
        assert np.allclose(a, b, atol=1e-5)


def test_only_kernels_are_programmed_each_stacked_layer_on_its_own():
    """Embeddings, norms and biases stay digital; layer l of a stack is that layer alone."""
    model = tiny_model()
    key = jax.random.key(5)
    chip = fj.program_params(model, key, g_max=25.0, noise=NOISE)
    digital = [
        lambda m: m.embed.embedding,
        lambda m: m.pos,
        lambda m: m.start,
        lambda m: m.ln_f.scale,
        lambda m: m.blocks.ln1.scale,
        lambda m: m.head.bias,
    ]
    for leaf in digital:
        assert np.array_equal(leaf(chip)[...], leaf(model)[...])
    assert np.array_equal(chip.blocks.ff1.bias[...], model.blocks.ff1.bias[...])
    assert np.array_equal(chip.blocks.attn.query.bias[...], model.blocks.attn.query.bias[...])
    # attention value [layers, in, heads, head_dim]: heads * head_dim rows of `in` inputs
    stacked = np.asarray(model.blocks.attn.value.kernel[...])
    programmed = np.asarray(chip.blocks.attn.value.kernel[...])
    keys = jax.random.split(leaf_key(key, ("blocks", "attn", "value", "kernel")), 2)
    for layer in range(2):
        alone = fj.program_kernel(
            stacked[layer].reshape(8, -1), keys[layer], g_max=25.0, noise=NOISE
        )
        assert np.allclose(programmed[layer], np.reshape(alone, stacked.shape[1:]), atol=1e-6)
        assert not np.allclose(programmed[layer], stacked[layer])


def test_scaling_one_head_feature_scales_its_row_only():
    """One output feature (head 1, dim 2) of layer 0's query is one chip row with its own scale."""
    model = tiny_model()
    scaled = tiny_model()
    query = scaled.blocks.attn.query.kernel
    query[...] = query[...].at[0, :, 1, 2].multiply(4.0)
    # A scale shared with other rows would change their programming too; it is the noise
    # (and g_max) of the test above: no new compile.
    key = jax.random.key(1)
    before = fj.program_params(model, key, g_max=25.0, noise=NOISE).blocks.attn.query.kernel
    after = fj.program_params(scaled, key, g_max=25.0, noise=NOISE).blocks.attn.query.kernel
    mask = np.zeros(before.shape, bool)
    mask[0, :, 1, 2] = True
    before, after = np.asarray(before[...]), np.asarray(after[...])
    assert np.allclose(after[mask], 4.0 * before[mask], rtol=1e-5, atol=1e-7)
    assert np.array_equal(after[~mask], before[~mask])


# --- training and evaluation ------------------------------------------------------------------


def test_recipes():
    assert Recipe.fixed(25.0).g_max == (25.0,) and Recipe.fixed(25.0).aware
    assert not Recipe.digital().aware
    assert Recipe.choice(10, 40).draw == "choice"
    with pytest.raises(
        ArgumentError, match=r"^Recipe 'g_max ~ U\[5, 40\]': .* Got g_max values \[5\.0\]"
    ):
        Recipe.uniform(5.0, 40.0)
    with pytest.raises(ValueError, match="warmup"):
        Recipe.fixed(10.0, warmup=1.0)
    with pytest.raises(ValueError, match="draw"):
        Recipe("x", (10.0,), draw="gauss")


def test_g_max_draws_cover_the_range_or_the_set():
    @jax.jit  # one program for the three draws
    def draws(keys):
        values = jnp.array([10.0, 25.0, 40.0])
        uniform = jax.vmap(lambda k: _draw_g_max(k, values, choice=False))(keys)
        chosen = jax.vmap(lambda k: _draw_g_max(k, values, choice=True))(keys)
        same = jnp.array([25.0, 25.0])
        fixed = jax.vmap(lambda k: _draw_g_max(k, same, choice=False))(keys)
        return uniform, chosen, fixed

    uniform, chosen, fixed = map(np.asarray, draws(jax.random.split(jax.random.key(0), 400)))
    assert uniform.min() >= 10.0 and uniform.max() <= 40.0
    assert uniform.min() < 11.0 and uniform.max() > 39.0 and len(np.unique(uniform)) > 300
    assert set(np.unique(chosen).tolist()) == {10.0, 25.0, 40.0}
    assert np.all(fixed == 25.0)


@pytest.fixture(scope="module")
def trained(data):
    """Models 0 and 1 trained digitally and with the warm-up recipe, same keys.

    Also counts the training programs the hardware-aware training adds to those
    of the digital training (same noise model: none).
    """
    keys = jax.random.split(jax.random.key(0), 2)
    digital, aware = [tiny_model(0), tiny_model(1)], [tiny_model(0), tiny_model(1)]
    before = np.asarray(digital[0].head.kernel[...])
    d_losses = train(digital, data, Recipe.digital(), keys, noise=NOISE, **TRAIN)
    programs = _train_stack._cache_size()
    a_losses = train(aware, data, WARM, keys, noise=NOISE, **TRAIN)
    aware_programs = _train_stack._cache_size() - programs
    return dict(
        digital=digital,
        aware=aware,
        before=before,
        d_losses=d_losses,
        a_losses=a_losses,
        aware_programs=aware_programs,
    )


def test_training_learns_updates_in_place_and_sees_the_noise(trained):
    """Digital training learns; a warm-up recipe is digital, then trains through the noise."""
    digital, aware = trained["digital"], trained["aware"]
    d_losses, a_losses = trained["d_losses"], trained["a_losses"]
    assert d_losses.shape == a_losses.shape == (2, 12)
    assert np.all(d_losses[:, -3:].mean(1) < 0.8 * d_losses[:, :3].mean(1))
    assert not np.allclose(digital[0].head.kernel[...], trained["before"])
    assert np.all(np.isfinite(a_losses))
    assert np.allclose(a_losses[:, :6], d_losses[:, :6], atol=1e-5)  # the digital half
    assert not np.allclose(a_losses[:, 6:], d_losses[:, 6:], atol=1e-3)
    assert not np.allclose(aware[0].head.kernel[...], digital[0].head.kernel[...])
    # Digital and warm-up recipes train with one traced and compiled program.
    assert trained["aware_programs"] == 0


def test_train_checks_its_arguments(data):
    one = jax.random.key(0)[None]
    with pytest.raises(ValueError, match="keys"):
        train([tiny_model()], data, Recipe.digital(), jax.random.split(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="batch_size"):
        train([tiny_model()], data, Recipe.digital(), one, batch_size=65)
    with pytest.raises(ValueError, match="steps"):
        train([tiny_model()], data, Recipe.digital(), one, steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        train([tiny_model()], data, Recipe.digital(), one, learning_rate=-1.0)


def test_noise_free_chip_accuracy_is_the_clean_accuracy(data, trained):
    models = trained["digital"]
    # Every noise term scaled to zero: the noise-free chip, with the compile of the noisy
    # calls below (noise=None would be a program of its own; fj.sweep tests it).
    silent = fj.noise.PCMLikeNoise(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    acc = programmed_accuracy(
        models, data.x_test, data.y_test, [0, 1], g_max=(10.0, 40.0), noise=silent
    )
    # one program for both models (not an eager compile per operation)
    clean_accuracy = nnx.jit(lambda m, x, y: jnp.mean(m(x).argmax(-1) == y))
    clean = [float(clean_accuracy(m, data.x_test, data.y_test)) for m in models]
    assert acc.shape == (2, 2)
    assert np.allclose(acc, np.broadcast_to(clean, (2, 2)))
    # With noise, model i is programmed with seed i's chip draw, whatever models stand beside
    # it. (The experiment below evaluates two models at 10 and 40 uS: the same compile.)
    g = (10.0, 40.0)
    both = programmed_accuracy(models, data.x_test, data.y_test, [5, 7], g_max=g, noise=NOISE)
    beside = [models[1], trained["aware"][0]]
    other = programmed_accuracy(beside, data.x_test, data.y_test, [7, 5], g_max=g, noise=NOISE)
    np.testing.assert_allclose(both[:, 1], other[:, 0])
    assert not np.allclose(both, np.broadcast_to(clean, (2, 2)))  # the noise is felt


def test_experiment_pairs_the_recipes_by_seed(data):
    """Same seed, same initial weights and batches: two digital runs agree exactly."""
    result = transformer_experiment(
        [Recipe.digital(), Recipe("digital again"), WARM],
        seeds=(0, 1),
        g_max=(10.0, 40.0),
        noise=NOISE,
        data=data,
        model_kwargs=SIZES,
        **TRAIN,
    )
    assert result.chip.shape == (3, 2, 2) and result.clean.shape == (3, 2)
    assert np.array_equal(result.chip[0], result.chip[1])
    assert np.array_equal(result.gain()[1], np.zeros((2, 2)))
    assert not np.array_equal(result.chip[2], result.chip[0])
    table = result.table()
    assert table.splitlines()[0].startswith("| training | clean | 10 uS | 40 uS |")
    assert "| g_max ~ U[10, 40], after 50% digital |" in table


def test_fusionize_makes_the_layer_route_of_the_same_model():
    """fj.nnx.fusionize turns every kernel, scanned and attention ones too, into Fusion layers.

    The converted model holds the same parameters: programmed afresh on every call in
    training mode (the scan carries the stacked noise streams), digital in eval mode, and
    programmed once (with the layers' own settings) to the same result as the plain model.
    """
    model = tiny_model()
    aware = fj.nnx.fusionize(model, g_max=25.0, noise=NOISE, rngs=nnx.Rngs(noise=3))
    assert isinstance(aware.blocks.attn.query, fj.nnx.FusionLinearGeneral)
    assert isinstance(aware.blocks.ff2, fj.nnx.FusionLinear)
    assert isinstance(aware.head, fj.nnx.FusionLinear)
    tokens = jnp.array([[0, 1, 2, 1, 0, 0]])
    first, second = aware(tokens), aware(tokens)
    assert np.all(np.isfinite(first)) and not np.allclose(first, second)
    assert not np.allclose(first, model(tokens))
    aware.eval()
    assert np.allclose(aware(tokens), model(tokens), atol=1e-6)
    key = jax.random.key(2)
    chip_aware = fj.program_params(aware, key)  # the layers' own settings: 25 uS, NOISE
    chip_plain = fj.program_params(model, key, g_max=25.0, noise=NOISE)
    out_aware = chip_aware.blocks.attn.out.kernel[...]
    assert np.allclose(out_aware, chip_plain.blocks.attn.out.kernel[...])
    assert not np.allclose(out_aware, model.blocks.attn.out.kernel[...])
    assert np.allclose(chip_aware(tokens), chip_plain(tokens), atol=1e-5)
