"""fj.sweep: one compiled, chunked, sharded evaluation of a g_max x seed x time grid."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_count import counting_compiles
from flax import nnx

import fusion_jax as fj

# Sweeps that are not about chunking evaluate CHUNK grid points per compiled call: with the
# problem's shapes and the default noise they share one compiled chunk.
CHUNK = 4


def _problem(seed=0, n=96):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w1 = jax.random.normal(k1, (6, 8)) / 2
    w2 = jax.random.normal(k2, (8, 3)) / 2
    x = jax.random.normal(k3, (n, 6))
    params = {
        "l1": {"kernel": w1, "bias": jnp.zeros(8)},
        "l2": {"kernel": w2, "bias": jnp.zeros(3)},
    }
    y = jnp.argmax(_apply(params, x), -1)
    return params, x, y


def _apply(p, x):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"]


def _loop_reference(params, x, y, g_max, seeds, times, noise):
    acc = np.zeros((len(g_max), len(seeds), len(times)))
    for i, g in enumerate(g_max):
        for j, s in enumerate(seeds):
            for k, t in enumerate(times):
                prog = fj.program_params(
                    params, jax.random.key(s), g_max=g, noise=noise, t_inference=t
                )
                acc[i, j, k] = np.mean(np.argmax(_apply(prog, x), -1) == np.asarray(y))
    return acc


def test_matches_a_python_loop_of_single_programs():
    params, x, y = _problem()
    noise = fj.noise.FusionChipNoise.lenet5_readback()
    g_max, seeds, times = [10.0, 40.0], [0, 5], [1.0, 3.15e7]
    result = fj.sweep(
        _apply,
        params,
        (x, y),
        g_max=g_max,
        seeds=seeds,
        t_inference=times,
        noise=noise,
        chunk_size=CHUNK,
    )
    expected = _loop_reference(params, x, y, g_max, seeds, times, noise)
    np.testing.assert_allclose(result.accuracy, expected, atol=1.5 / len(y))
    assert result.accuracy.shape == (2, 2, 2)
    assert np.all(np.isfinite(result.loss))
    assert result.accuracy.min() < 1.0  # the chip noise is felt


def test_noise_free_sweep_is_clean_accuracy():
    params, x, y = _problem(1)
    result = fj.sweep(_apply, params, (x, y), g_max=[10.0, 25.0], seeds=2, noise=None)
    np.testing.assert_allclose(result.accuracy, 1.0)


def test_chunks_and_eval_batches_do_not_change_the_result():
    params, x, y = _problem(2)
    kwargs = dict(g_max=[10.0, 20.0, 40.0], seeds=3, t_inference=[1.0, 86400.0])
    # 18 points: 5 chunks of 4 (the last padded) against 3 chunks of 8, batches of 25 examples.
    whole = fj.sweep(_apply, params, (x, y), chunk_size=CHUNK, **kwargs)
    chunked = fj.sweep(_apply, params, (x, y), chunk_size=8, eval_batch_size=25, **kwargs)
    np.testing.assert_allclose(chunked.accuracy, whole.accuracy, atol=1e-6)
    np.testing.assert_allclose(chunked.loss, whole.loss, rtol=1e-5)


def test_compiles_once_whatever_the_g_max_values():
    params, x, y = _problem(3)
    fj.sweep(_apply, params, (x, y), g_max=np.linspace(10, 40, 5), seeds=2, chunk_size=CHUNK)
    with counting_compiles() as compiles:
        fj.sweep(_apply, params, (x, y), g_max=np.linspace(11, 39, 5), seeds=2, chunk_size=CHUNK)
        grid = dict(g_max=[12.0, 13, 14, 15, 16], seeds=[7, 9], chunk_size=CHUNK)
        fj.sweep(_apply, params, (x, y), **grid)
        assert compiles() == 0


def test_nnx_module_is_accepted():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(6, 8, rngs=rngs)
            self.l2 = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    model = Net(nnx.Rngs(0))
    _, x, _ = _problem(4)
    y = jnp.argmax(model(x), -1)
    result = fj.sweep(model, None, (x, y), g_max=[10.0, 40.0], seeds=2, noise=None)
    np.testing.assert_allclose(result.accuracy, 1.0)
    noisy = fj.sweep(model, None, (x, y), g_max=[10.0], seeds=2, t_inference=[3.15e7])
    assert noisy.accuracy.max() < 1.0


def test_nnx_module_sweeps_as_program_params_programs_it():
    """A masked convolution and a Fusion layer's own tile size: each point is the module's chip.
    The sweep's noise (the chip model by default) replaces a layer's own (here none)."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            mask = np.ones((1, 6, 8), np.float32)
            mask[:, 5, :] = 0.0  # input 5 is masked out: its weights are not on the chip
            self.conv = nnx.Conv(6, 8, (1,), mask=jnp.asarray(mask), rngs=rngs)
            self.out = fj.nnx.FusionLinear(8, 3, max_input_size=3, noise=None, rngs=rngs)

        def __call__(self, x):
            return self.out(jnp.tanh(self.conv(x[:, None, :])[:, 0]))

    model = Net(nnx.Rngs(0))
    _, x, _ = _problem(4)
    y = jnp.argmax(model(x), -1)
    # Large masked-out weights: counted in a row's scale, they would crush the others.
    model.conv.kernel[...] = model.conv.kernel[...].at[:, 5, :].set(100.0)
    result = fj.sweep(model, None, (x, y), g_max=[20.0], seeds=2, t_inference=[3600.0])
    for seed in range(2):
        chip = fj.program_params(
            model, jax.random.key(seed), g_max=20.0, t_inference=3600.0, noise=fj.DEFAULT_NOISE
        )
        logits = chip(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        np.testing.assert_allclose(result.loss[0, seed, 0], loss, rtol=1e-5)
        # (the same count of correct examples; the division may round the last bit apart)
        accuracy = float(jnp.mean(logits.argmax(-1) == y))
        assert result.accuracy[0, seed, 0] == pytest.approx(accuracy, abs=1e-6)
    assert result.accuracy.min() > 0.5  # the masked weights did not flatten the model


def test_result_tables_and_files(tmp_path):
    params, x, y = _problem(5)
    result = fj.sweep(
        _apply,
        params,
        (x, y),
        g_max=[10.0, 40.0],
        seeds=3,
        t_inference=[1.0],
        label="mlp",
        chunk_size=CHUNK,
    )
    rows = result.rows()
    assert len(rows) == 6 and {r["seed"] for r in rows} == {0, 1, 2}
    summary = result.summary()
    assert len(summary) == 2
    np.testing.assert_allclose(summary[0]["accuracy_mean"], result.accuracy[0, :, 0].mean())
    np.testing.assert_allclose(summary[0]["accuracy_std"], result.accuracy[0, :, 0].std(ddof=1))
    table = result.format_table()
    assert "mlp" in table and "t=1 s" in table and "40.00" in table
    result.to_csv(tmp_path / "r.csv")
    result.to_json(tmp_path / "r.json")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "label,g_max,seed,t_inference,accuracy,loss" and len(lines) == 7
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["g_max"] == [10.0, 40.0] and len(payload["rows"]) == 6
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.json"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            dict(g_max=[10.0, 45.0]),
            fj.ArgumentError,
            r"between 10 and 40. Got g_max values \[45.0\]",
        ),
        (dict(g_max=[]), ValueError, "g_max is empty"),
        (dict(seeds=0), ValueError, "seeds must be a positive count"),
        (dict(seeds=[]), ValueError, "seeds is empty"),
        (dict(t_inference=[]), ValueError, "t_inference is empty"),
        (dict(t_inference=[-1.0]), ValueError, "seconds >= 0"),
        (dict(chunk_size=0), ValueError, "chunk_size must be positive"),
    ],
)
def test_bad_grid_refused_before_compiling(kwargs, error, message):
    params, x, y = _problem(6)
    with pytest.raises(error, match=message):
        fj.sweep(_apply, params, (x, y), **kwargs)


def test_bad_data_refused():
    params, x, y = _problem(7)
    with pytest.raises(ValueError, match="96 inputs but 95 labels"):
        fj.sweep(_apply, params, (x, y[:95]))
    with pytest.raises(ValueError, match="integer array"):
        fj.sweep(_apply, params, (x, y.astype(jnp.float32)))
    with pytest.raises(ValueError, match="integer array"):
        fj.sweep(_apply, params, (x, jnp.int32(3)))  # no example axis
    with pytest.raises(ValueError, match="pair"):
        fj.sweep(_apply, params, x)
    # Labels that are no class of the model's 3 logits: refused before compiling.
    for label, where in ((3, "example 5"), (-1, "example 5")):
        with pytest.raises(ValueError, match=rf"in \[0, 3\) .* the first, {label}, at {where}\."):
            fj.sweep(_apply, params, (x, y.at[5].set(label)))


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import fusion_jax as fj
    sys.path.insert(0, {tests!r})
    from test_sweep import _apply, _problem
    assert len(jax.devices()) == 4, jax.devices()
    params, x, y = _problem(8)
    kw = dict(g_max=np.linspace(10, 40, 5), seeds=3, t_inference=[1.0, 86400.0])
    one = fj.sweep(_apply, params, (x, y), devices=jax.devices()[:1], chunk_size=8, **kw)
    four = fj.sweep(_apply, params, (x, y), chunk_size=8, **kw)
    # program_params batches same-shaped kernels only where they are placed alike:
    # each result keeps its kernel's placement and equals its own call.
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((4,), ("model",))
    split, whole = NamedSharding(mesh, P(None, "model")), NamedSharding(mesh, P())
    r, key = np.random.default_rng(0), jax.random.key(3)
    w = lambda: jnp.asarray(r.standard_normal((8, 8)), jnp.float32)
    kernels = {{n: {{"kernel": jax.device_put(w(), s)}}
               for n, s in (("a", split), ("b", split), ("c", whole))}}
    chip = fj.program_params(kernels, key, g_max=20.0)
    placed = []
    for n, leaf in kernels.items():
        alone = fj.program_kernel(leaf["kernel"], fj.leaf_key(key, (n, "kernel")), g_max=20.0)
        got = chip[n]["kernel"]
        placed.append(got.sharding.is_equivalent_to(leaf["kernel"].sharding, 2)
                      and bool((got == alone).all()))
    print(json.dumps({{"one": one.accuracy.tolist(), "four": four.accuracy.tolist(),
                      "loss_one": one.loss.tolist(), "loss_four": four.loss.tolist(),
                      "placed": placed}}))
    """
)


def test_sharded_over_four_cpu_devices_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    script = _SHARDED_SCRIPT.format(tests=os.path.dirname(__file__))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(res["four"], res["one"], atol=1e-6)
    np.testing.assert_allclose(res["loss_four"], res["loss_one"], rtol=1e-5)
    assert np.asarray(res["one"]).shape == (5, 3, 2)
    assert res["placed"] == [True, True, True]


def test_labels_per_token_are_averaged_over_every_label():
    """Labels [n, L] (one per token): accuracy is the mean over all n * L labels."""
    params, x, y = _problem(7)
    # Every example repeats its label 3 times: the accuracy must equal the per-example one.
    per_token = jnp.repeat(y[:, None], 3, axis=1)
    tokens_fn = lambda p, x: jnp.repeat(_apply(p, x)[:, None, :], 3, axis=1)  # noqa: E731
    grid = dict(g_max=[10.0, 40.0], seeds=2, t_inference=[1.0], chunk_size=CHUNK)
    flat = fj.sweep(_apply, params, (x, y), **grid)
    tokens = fj.sweep(tokens_fn, params, (x, per_token), **grid)
    np.testing.assert_allclose(tokens.accuracy, flat.accuracy)
    np.testing.assert_allclose(tokens.loss, flat.loss, rtol=1e-5)


def test_a_module_of_stacked_models_sweeps_each_as_its_own_model():
    """stacked=True with a module built by nnx.vmap (one model per seed): each point
    programs its own set, with that set's kernel axes (the stacked module's layouts read the
    seed axis as stacked layers, which a set's kernels lack)."""

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        return nnx.Linear(6, 3, rngs=nnx.Rngs(params=key))

    models = make(jax.random.split(jax.random.key(0), 2))
    _, x, y = _problem(4)
    grid = dict(g_max=[20.0], t_inference=[3600.0])
    both = fj.sweep(models, None, (x, y), seeds=[3, 4], stacked=True, **grid)
    graphdef, state = nnx.split(models)
    for i, seed in enumerate([3, 4]):
        one = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        chip = fj.program_params(one, jax.random.key(seed), **{k: v[0] for k, v in grid.items()})
        loss = optax.softmax_cross_entropy_with_integer_labels(chip(x), y).mean()
        np.testing.assert_allclose(both.loss[0, i, 0], loss, rtol=1e-5)
