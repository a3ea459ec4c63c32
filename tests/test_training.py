"""fusion_jax.digits and fusion_jax.training: data, models, optax training, chip evaluation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from noise_doubles import AbsoluteNoise

import fusion_jax as fj
from fusion_jax.digits import CNN, MLP, DigitsData, load_digits_split
from fusion_jax.errors import ArgumentError
from fusion_jax.model_programming import program_params
from fusion_jax.nnx import FusionConv, FusionLinear
from fusion_jax.training import (
    cross_entropy,
    evaluate,
    hardware_aware_experiment,
    to_apply_fn,
    train,
)

HIDDEN = (16,)  # the MLP's default
EPOCHS = 20
# The default experiment (10 seeds, calibrated chip noise) at the smallest and the
# largest g_max, read after a day. (The doctest of hardware_aware_experiment uses
# the same grid, so a full test run compiles it once.)
EXPERIMENT = dict(g_max=(10.0, 40.0), t_inference=(86400.0,))


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_split(seed=0)


@pytest.fixture(scope="module")
def trained(data):
    model = MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=0))
    return train(model, data.x_train, data.y_train, epochs=EPOCHS, seed=0)


@pytest.fixture(scope="module")
def experiment():
    return hardware_aware_experiment("mlp", **EXPERIMENT)


# --- data and models ---------------------------------------------------------------------------


def test_digits_split_is_scaled_stratified_and_seeded(data):
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    assert data.x_train.shape[0] + data.x_test.shape[0] == n
    assert data.x_train.shape[1:] == (64,) and data.x_test.shape[1:] == (64,)
    assert data.x_train.dtype == jnp.float32 and data.y_train.dtype == jnp.int32
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert abs(data.x_test.shape[0] / n - 0.25) < 0.01
    # Stratified: every class keeps its share of the test set to within one example.
    share = np.bincount(np.asarray(data.y_test), minlength=10) / data.x_test.shape[0]
    total = np.bincount(load_digits().target, minlength=10) / n
    assert np.all(np.abs(share - total) * data.x_test.shape[0] <= 1.0)
    again, other = load_digits_split(seed=0), load_digits_split(seed=1)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    assert not np.array_equal(other.y_test, data.y_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=fraction)


def test_images_layout_round_trips(data):
    images = data.as_images()
    assert images.x_train.shape == (data.x_train.shape[0], 8, 8, 1)
    # Row-major 8x8: pixel (r, c) is flat feature 8 r + c.
    np.testing.assert_array_equal(images.x_test[:, 2, 5, 0], data.x_test[:, 2 * 8 + 5])
    np.testing.assert_array_equal(images.flat().x_train, data.x_train)


@pytest.mark.parametrize(
    "make, layer_types",
    [
        (lambda **kw: MLP(hidden=HIDDEN, **kw), (FusionLinear,)),
        (lambda **kw: CNN(channels=(4, 8), **kw), (FusionConv, FusionLinear)),
    ],
)
def test_digital_and_hardware_aware_models_share_parameters(make, layer_types):
    digital = make(rngs=nnx.Rngs(params=0))
    aware = make(fusion={"g_max": 20.0}, rngs=nnx.Rngs(params=0, noise=1))
    d_params, a_params = nnx.state(digital, nnx.Param), nnx.state(aware, nnx.Param)
    assert jax.tree.structure(d_params) == jax.tree.structure(a_params)
    for d, a in zip(jax.tree.leaves(d_params), jax.tree.leaves(a_params), strict=True):
        np.testing.assert_array_equal(d, a)  # same initial weights from the same key
    kinds = {type(m) for _, m in nnx.iter_modules(aware)}
    assert all(t in kinds for t in layer_types)
    assert not kinds & {FusionLinear, FusionConv} - set(layer_types)
    assert not {type(m) for _, m in nnx.iter_modules(digital)} & {FusionLinear, FusionConv}
    assert all(m.g_max == 20.0 for _, m in nnx.iter_modules(aware) if isinstance(m, layer_types))


def test_models_reject_bad_arguments():
    with pytest.raises(TypeError, match="fusion"):
        MLP(fusion=25.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positive"):
        MLP(hidden=(0,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels"):
        CNN(channels=(4,), rngs=nnx.Rngs(0))


# --- training ----------------------------------------------------------------------------------


def test_training_reduces_loss_and_reaches_high_clean_accuracy(trained, data):
    model, history = trained
    assert history.loss.shape == (EPOCHS, data.x_train.shape[0] // 64)
    assert np.all(np.isfinite(history.loss))
    assert history.epoch_loss[-1] < 0.2 * history.epoch_loss[0]
    apply_fn, params = to_apply_fn(model)
    assert float(evaluate(apply_fn, params, data.x_test, data.y_test)) > 0.9
    # Chance level before training: the test of accuracy is not trivial.
    untrained_fn, untrained = to_apply_fn(MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=0)))
    assert float(evaluate(untrained_fn, untrained, data.x_test, data.y_test)) < 0.5


def test_training_is_deterministic_and_depends_on_the_seed(data):
    ends = []

    def run(seed, callback=None):
        model, history = train(
            MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=0)),
            data.x_train,
            data.y_train,
            epochs=2,
            seed=seed,
            callback=callback,
        )
        return nnx.state(model, nnx.Param), history.loss

    (p1, l1), (p2, l2), (p3, _) = run(0), run(0, callback=ends.append), run(1)
    # The callback sees every epoch, with that epoch's mean loss; it changes nothing.
    assert [(e.epoch, e.epochs) for e in ends] == [(1, 2), (2, 2)]
    np.testing.assert_allclose([float(e.loss) for e in ends], l2.mean(axis=-1), rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    np.testing.assert_array_equal(l1, l2)
    assert not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3), strict=True)
    )


def test_hardware_aware_training_draws_new_noise_every_step(data):
    aware = MLP(
        hidden=HIDDEN,
        fusion={"g_max": 10.0, "noise": AbsoluteNoise()},
        rngs=nnx.Rngs(params=0, noise=1),
    )
    layers = list(aware.layers)
    keys = [jax.random.wrap_key_data(layer.noise_key[...]) for layer in layers]
    epochs, steps = 2, data.x_train.shape[0] // 64
    train(aware, data.x_train, data.y_train, epochs=epochs, seed=0)
    # One programming of every kernel per training step: each step splits the stream once.
    for _ in range(epochs * steps):
        keys = [jax.random.split(key)[1] for key in keys]
    for layer, key in zip(layers, keys, strict=True):
        np.testing.assert_array_equal(layer.noise_key[...], jax.random.key_data(key))
    digital, _ = train(
        MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=0)), data.x_train, data.y_train, epochs=epochs
    )
    assert not np.allclose(aware.layers[0].kernel[...], digital.layers[0].kernel[...])
    assert all(layer.deterministic is False for layer in layers)  # mode left as it was


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10_000}, "batch_size"),
        ({"y": np.zeros(5, np.int32)}, "same number of examples"),
    ],
)
def test_train_rejects_bad_arguments(data, kwargs, match):
    args = {"x": data.x_train, "y": data.y_train, **kwargs}
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        train(MLP(hidden=(4,), rngs=nnx.Rngs(0)), x, y, **args)


def test_train_takes_any_optax_optimizer_and_loss(data):
    import optax

    # The optimizer given is the one used: SGD with a zero step leaves the weights as they were
    # (the default, Adam, would move them: see the tests above).
    model = MLP(hidden=(4,), rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    _, history = train(model, data.x_train, data.y_train, optimizer=optax.sgd(0.0), epochs=1)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), before)
    assert np.all(history.loss > 0)
    # The loss given is the one minimised and reported.
    _, history = train(
        model,
        data.x_train,
        data.y_train,
        epochs=1,
        loss_fn=lambda logits, labels: 3.0 + 0.0 * jnp.sum(logits),
    )
    np.testing.assert_array_equal(history.loss, 3.0)


def test_train_refuses_a_diverging_loss_and_leaves_the_model_as_it_was(data):
    model = MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=0))
    before = nnx.state(model, nnx.Param)
    before = jax.tree.map(np.asarray, before)

    # NaN data is refused before training (test_reliability); a loss that overflows is not.
    def overflowing(logits, labels):
        return cross_entropy(logits, labels) * jnp.float32(1e38) * jnp.float32(1e38)

    with pytest.raises(FloatingPointError, match="epoch 1"):
        train(model, data.x_train, data.y_train, epochs=2, loss_fn=overflowing)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), before)


# --- the functional form and evaluation --------------------------------------------------------


def test_apply_fn_is_the_eval_mode_model_and_serves_both_variants(data):
    aware = MLP(hidden=HIDDEN, fusion={"g_max": 10.0}, rngs=nnx.Rngs(params=3, noise=4))
    apply_fn, params = to_apply_fn(aware)
    x = data.x_test[:7]
    # Evaluation mode: the digital weights, no programming.
    np.testing.assert_allclose(apply_fn(params, x), _plain_forward(params, x), rtol=1e-6, atol=1e-6)
    assert all(layer.deterministic is False for layer in aware.layers)  # not changed
    # The digital twin's forward pass evaluates the hardware-aware parameters identically.
    twin_fn, _ = to_apply_fn(MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=9)))
    np.testing.assert_array_equal(twin_fn(params, x), apply_fn(params, x))
    # Models that hold only parameters share one forward pass per architecture
    # (jitted evaluations of other seeds do not recompile).
    assert twin_fn is to_apply_fn(MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=10)))[0]


def _plain_forward(params, x):
    """The MLP by hand: relu(x W0 + b0) W1 + b1."""
    layer0, layer1 = params["layers"][0], params["layers"][1]
    h = jax.nn.relu(x @ layer0["kernel"][...] + layer0["bias"][...])
    return h @ layer1["kernel"][...] + layer1["bias"][...]


def test_noise_free_programming_keeps_the_clean_accuracy(trained, data):
    apply_fn, params = to_apply_fn(trained[0])
    clean = float(evaluate(apply_fn, params, data.x_test, data.y_test))
    result = fj.sweep(
        apply_fn,
        params,
        (data.x_test, data.y_test),
        seeds=[0, 1],
        g_max=[10.0, 40.0],
        t_inference=[1.0, 3.15e7],
        noise=None,
    )
    assert result.accuracy.shape == (2, 2, 2)
    # The round trip is exact to float rounding: at most one borderline example may flip.
    assert np.all(np.abs(result.accuracy - clean) <= 1.0 / data.x_test.shape[0])


def test_stacked_sweep_programs_each_seed_its_own_model(trained, data):
    """The experiment's evaluation: seed i programs parameter set i (paired with its seed)."""
    apply_fn, params = to_apply_fn(trained[0])
    other = jax.tree.map(lambda a: -a, params)  # a second, different model of the same shape
    stacked = jax.tree.map(lambda *a: jnp.stack(a), params, other)
    seeds, g_max, times = [3, 5], [10.0, 40.0], [86400.0]
    result = fj.sweep(
        apply_fn,
        stacked,
        (data.x_test, data.y_test),
        seeds=seeds,
        g_max=g_max,
        t_inference=times,
        stacked=True,
    )
    assert result.accuracy.shape == (2, 2, 1)
    n = data.x_test.shape[0]
    for i, g in enumerate(g_max):
        for k, (seed, p) in enumerate(zip(seeds, (params, other), strict=True)):
            chip = program_params(p, jax.random.key(seed), g_max=g, t_inference=times[0])
            direct = float(evaluate(apply_fn, chip, data.x_test, data.y_test))
            assert abs(result.accuracy[i, k, 0] - direct) <= 1.0 / n, (i, k)
    # The negated model is wrong almost everywhere: the sets were not mixed up.
    assert np.all(result.accuracy[:, 1] < 0.5) and np.all(result.accuracy[:, 0] > 0.5)
    with pytest.raises(ValueError, match="stacked"):
        fj.sweep(apply_fn, stacked, (data.x_test, data.y_test), seeds=3, stacked=True)


def test_evaluate_rejects_mismatched_data(trained, data):
    apply_fn, params = to_apply_fn(trained[0])
    with pytest.raises(ValueError, match="examples"):
        evaluate(apply_fn, params, data.x_test, data.y_test[:-1])


# --- the experiment ----------------------------------------------------------------------------


def test_hardware_aware_training_keeps_more_accuracy_under_chip_noise(experiment):
    r = experiment
    n = len(r.seeds)
    digital, aware = r.digital.accuracy, r.aware.accuracy  # [g_max, seeds, t]
    assert digital.shape == aware.shape == (2, n, 1)
    assert n == 10 and r.settings["train_g_max"] == 10.0
    assert r.clean_digital.mean() > 0.9 and r.clean_aware.mean() > 0.9
    # At g_max = 10 uS the chip noise costs the digital model accuracy ...
    assert digital[0, :, 0].mean() < r.clean_digital.mean() - 0.05
    # ... and the hardware-aware model keeps clearly more of it: the paired gain
    # exceeds 3 standard errors over seeds and 5 points.
    gain = aware[0, :, 0] - digital[0, :, 0]
    sem = gain.std(ddof=1) / math.sqrt(n)
    assert gain.mean() > 3 * sem
    assert gain.mean() > 0.05
    # g_max = 40 uS is gentler for the digital model than g_max = 10 uS.
    assert digital[1, :, 0].mean() > digital[0, :, 0].mean()


def test_experiment_summary_and_table_match_the_arrays(experiment):
    rows = experiment.summary()
    assert [(row["g_max"], row["t_inference"]) for row in rows] == [
        (10.0, 86400.0),
        (40.0, 86400.0),
    ]
    n = len(experiment.seeds)
    for i, row in enumerate(rows):
        d, a = experiment.digital.accuracy[i, :, 0], experiment.aware.accuracy[i, :, 0]
        assert row["digital_mean"] == pytest.approx(np.mean(d))
        assert row["aware_std"] == pytest.approx(np.std(a, ddof=1))
        assert row["gap_sem"] == pytest.approx(np.std(a - d, ddof=1) / math.sqrt(n))
    table = experiment.table()
    assert table.startswith(f"MLP on digits, {n} seeds")
    assert len(table.splitlines()) == 4 + len(rows)
    assert f"{100 * rows[0]['aware_mean']:.1f}" in table.splitlines()[-2]


def test_experiment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="model"):
        hardware_aware_experiment("resnet")
    with pytest.raises(ValueError, match="gradient"):
        hardware_aware_experiment(gradient="approximate")
    with pytest.raises(ValueError, match="seeds"):
        hardware_aware_experiment(seeds=())
    with pytest.raises(ValueError, match="t_inference"):
        hardware_aware_experiment(t_inference=(-1.0,))
    with pytest.raises(ArgumentError, match=r"^hardware_aware_experiment: .* train_g_max=50\.0"):
        hardware_aware_experiment(train_g_max=50.0)
    with pytest.raises(ArgumentError, match=r"^hardware_aware_experiment: .* values \[9\.0\]"):
        hardware_aware_experiment(g_max=(9.0, 40.0))
