"""program_kernel / program_params: whole parameter pytrees onto the simulated chip."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import normal
from flax import nnx
from noise_doubles import AbsoluteNoise, GivenNoise, OffsetNoise

import fusion_jax as fj
from fusion_jax.model_programming import is_kernel, leaf_key, program_kernel, program_params

NOISE = AbsoluteNoise(1.0)
KEY = jax.random.key(42)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3))(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def linen_vars():
    return LinenNet().init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))


# The conv kernel has rank 4: its axes come from the model (fj.linen.kernel_layouts).
CONV_LAYOUT = {("params", "Conv_0", "kernel"): fj.layout.KernelAxes.conv(2)}


def plain_dict():
    # [6, 4]: the shape of test_same_shaped_kernels_are_programmed_by_one_batched_call's
    # kernels, so that the programs with the default noise model compile once.
    w = normal((6, 4))
    return {"a": {"kernel": w, "bias": jnp.ones(4)}, "b": {"kernel": w}, "step": jnp.array(3)}


def test_program_kernel_is_program_of_the_reference_rows():
    """Each output channel is one chip row: with a deterministic per-device model the
    programmed kernel is exactly program() of the reference rows."""
    kernel = normal((2, 2, 3, 4), 1)
    rows = fj.layout.kernel_to_rows(kernel)
    det = OffsetNoise()
    expected = fj.layout.rows_to_kernel(fj.program(rows, KEY, noise=det, g_max=15.0), kernel.shape)
    np.testing.assert_allclose(
        program_kernel(kernel, KEY, noise=det, g_max=15.0), expected, rtol=1e-5, atol=1e-6
    )
    dense = normal((5, 3), 2)
    np.testing.assert_allclose(
        program_kernel(dense, KEY, noise=det),
        fj.program(dense.T, KEY, noise=det).T,
        rtol=1e-5,
        atol=1e-6,
    )


def test_program_kernel_draws_the_noise_in_the_kernels_own_order():
    """A random model sees the kernel's conductances as ``[in * spatial, out]``: its draws
    land on the devices in that order, and the rest is program() of the reference rows."""
    kernel = normal((2, 2, 3, 4), 1)
    xi = NOISE.normals(KEY, (12, 4)) * NOISE.sigma  # AbsoluteNoise's draws for this kernel
    got = program_kernel(kernel, KEY, noise=NOISE, g_max=15.0)
    rows_noise = GivenNoise(fj.layout.kernel_to_rows(xi.reshape(kernel.shape)))
    expected = fj.layout.rows_to_kernel(
        fj.program(fj.layout.kernel_to_rows(kernel), KEY, noise=rows_noise, g_max=15.0),
        kernel.shape,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_linen_params_kernels_programmed_everything_else_untouched(linen_vars):
    out = program_params(linen_vars, KEY, noise=NOISE, layouts=CONV_LAYOUT)
    assert jax.tree.structure(out) == jax.tree.structure(linen_vars)
    p, q = linen_vars["params"], out["params"]
    for layer in ("Conv_0", "Dense_0"):
        np.testing.assert_array_equal(q[layer]["bias"], p[layer]["bias"])
        assert not np.allclose(q[layer]["kernel"], p[layer]["kernel"])
        np.testing.assert_array_equal(
            q[layer]["kernel"],
            program_kernel(
                p[layer]["kernel"], leaf_key(KEY, ("params", layer, "kernel")), noise=NOISE
            ),
        )
    jax.tree.map(np.testing.assert_array_equal, q["LayerNorm_0"], p["LayerNorm_0"])
    LinenNet().apply(out, jnp.ones((1, 4, 4, 2)))
    # The same chip whether the variables or their "params" are given (a sweep's apply_fn
    # receives the latter).
    alone = program_params(p, KEY, noise=NOISE, layouts=CONV_LAYOUT)
    jax.tree.map(np.testing.assert_array_equal, alone, q)


def test_linen_kernel_layouts_read_the_conv(linen_vars):
    """fj.linen.kernel_layouts gives the same axes as declared by hand, and without any
    layout the rank-4 conv kernel is refused with an error that names it."""
    assert fj.linen.kernel_layouts(LinenNet(), jnp.ones((1, 4, 4, 2))) == {
        **CONV_LAYOUT,
        ("params", "Dense_0", "kernel"): fj.layout.KernelAxes.dense(),
    }
    with pytest.raises(ValueError, match="'params/Conv_0/kernel'.*rank above 2"):
        program_params(linen_vars, KEY, noise=NOISE)


def test_noise_free_round_trip_keeps_the_weights(linen_vars):
    out = program_params(linen_vars, None, noise=None, layouts=CONV_LAYOUT)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out, linen_vars
    )


def test_nnx_state_split_and_merge():
    model = nnx.Sequential(
        nnx.Linear(4, 3, rngs=nnx.Rngs(0)),
        nnx.Dropout(0.1, rngs=nnx.Rngs(1)),
        nnx.Linear(3, 2, rngs=nnx.Rngs(2)),
    )
    graphdef, state = nnx.split(model)
    out = program_params(state, KEY, noise=NOISE)
    assert isinstance(out, nnx.State)
    chip = nnx.merge(graphdef, out)
    for i in (0, 2):
        np.testing.assert_array_equal(chip.layers[i].bias[...], model.layers[i].bias[...])
        assert not np.allclose(chip.layers[i].kernel[...], model.layers[i].kernel[...])
    # RNG state (a key array and a counter) is passed through.
    np.testing.assert_array_equal(
        jax.random.key_data(chip.layers[1].rngs.key[...]),
        jax.random.key_data(model.layers[1].rngs.key[...]),
    )
    # nnx.state(model, nnx.Param) works the same and gives the same kernels.
    params_only = program_params(nnx.state(model, nnx.Param), KEY, noise=NOISE)
    np.testing.assert_array_equal(
        params_only["layers"][0]["kernel"][...], chip.layers[0].kernel[...]
    )


def test_plain_dict_and_distinct_keys_per_leaf():
    params = plain_dict()
    out = program_params(params, KEY, noise=NOISE)
    np.testing.assert_array_equal(out["a"]["bias"], params["a"]["bias"])
    np.testing.assert_array_equal(out["step"], params["step"])
    # The same weights at two paths get different noise.
    assert not np.allclose(out["a"]["kernel"], out["b"]["kernel"])
    # The same key gives the same result; another key another one.
    jax.tree.map(np.testing.assert_array_equal, program_params(params, KEY, noise=NOISE), out)
    other = program_params(params, jax.random.key(43), noise=NOISE)
    assert not np.allclose(other["a"]["kernel"], out["a"]["kernel"])


def test_leaf_keys_do_not_depend_on_the_selection():
    params = plain_dict()
    only_a = program_params(params, KEY, noise=NOISE, where=lambda p, x: p == ("a", "kernel"))
    both = program_params(params, KEY, noise=NOISE)
    np.testing.assert_array_equal(only_a["a"]["kernel"], both["a"]["kernel"])
    np.testing.assert_array_equal(only_a["b"]["kernel"], params["b"]["kernel"])


def test_where_selecting_a_bias_names_the_path():
    with pytest.raises(ValueError, match="a/bias"):
        program_params(plain_dict(), KEY, noise=NOISE, where=lambda path, x: path[-1] == "bias")


def test_bad_leaf_and_empty_selection_are_reported():
    params = plain_dict()
    params["b"]["kernel"] = params["b"]["kernel"].at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="b/kernel.*NaN"):
        program_params(params, KEY, noise=NOISE)
    with pytest.raises(ValueError, match="no leaf"):
        program_params({"bias": jnp.ones(3)}, KEY, noise=NOISE)
    with pytest.raises(ValueError, match=r"program_params \(kernel .*\) needs a PRNG key"):
        program_params(plain_dict(), None, noise=NOISE)
    with pytest.raises(fj.ArgumentError, match=r"^program_params: .* Got g_max=45\.0\.$"):
        program_params(plain_dict(), KEY, noise=NOISE, g_max=45.0)


def test_jit_and_vmap_over_key_and_g_max(linen_vars):
    g_maxes = jnp.array([10.0, 25.0, 40.0])
    keys = jax.random.split(KEY, 3)
    sweep = jax.jit(
        jax.vmap(
            lambda k, g: program_params(linen_vars, k, g_max=g, noise=NOISE, layouts=CONV_LAYOUT)
        )
    )
    out = sweep(keys, g_maxes)
    for i in (0, 2):
        single = program_params(
            linen_vars, keys[i], g_max=float(g_maxes[i]), noise=NOISE, layouts=CONV_LAYOUT
        )
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
            out,
            single,
        )
    # With this absolute-noise model a larger g_max means relatively less noise.
    kernel = linen_vars["params"]["Dense_0"]["kernel"]
    err = jnp.std(out["params"]["Dense_0"]["kernel"] - kernel, axis=(1, 2))
    assert err[0] > err[2]


def test_gradient_through_program_params(linen_vars):
    def loss(params):
        chip = program_params(params, KEY, noise=NOISE, layouts=CONV_LAYOUT)
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(chip))

    grads = jax.jit(jax.grad(loss))(linen_vars)  # one compile costs less CPU than eager ops
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_is_kernel():
    assert is_kernel(("params", "Dense_0", "kernel"), jnp.ones((3, 4)))
    assert not is_kernel(("params", "Dense_0", "bias"), jnp.ones(4))
    assert not is_kernel(("kernel",), jnp.ones(4))
    assert not is_kernel((), jnp.ones((3, 4)))


def test_default_noise():
    pytest.importorskip("fusion_jax.noise")
    params = plain_dict()
    out = program_params(params, KEY)
    np.testing.assert_array_equal(
        out["a"]["kernel"], program_kernel(params["a"]["kernel"], leaf_key(KEY, ("a", "kernel")))
    )


def _programming_calls(fn, *args) -> int:
    """How many programming calls the traced program holds: the closed-form derivative's
    custom_jvp (the only one with symbolic zeros), not those nested inside it."""

    def count(jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "custom_jvp_call" and eqn.params["symbolic_zeros"]:
                n += 1
                continue
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        n += count(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        n += count(sub)
        return n

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_same_shaped_kernels_are_programmed_by_one_batched_call():
    """Kernels of one shape and settings compile to one program (stacked kernels too,
    their layers keyed as each kernel's own); each result is exactly that of its own
    program_kernel call with its leaf key, and so are the gradients."""
    r = np.random.default_rng(3)
    shapes = {"a": (6, 4), "b": (6, 4), "c": (4, 6), "d": (6, 4), "s": (3, 6, 4), "t": (3, 6, 4)}
    params = {
        name: {"kernel": jnp.asarray(r.standard_normal(shape), jnp.float32)}
        for name, shape in shapes.items()
    }
    stacked = fj.layout.KernelAxes.dense().stacked()
    axes = {f"{n}/kernel": stacked for n in "st"}

    def grouped(p):
        return program_params(p, KEY, g_max=25.0, layouts=axes)

    def separate(p):
        return {
            n: {
                "kernel": program_kernel(
                    p[n]["kernel"],
                    leaf_key(KEY, (n, "kernel")),
                    g_max=25.0,
                    axes=stacked if n in "st" else None,
                )
            }
            for n in p
        }

    chip, alone = grouped(params), separate(params)
    for name in params:
        np.testing.assert_array_equal(chip[name]["kernel"], alone[name]["kernel"], err_msg=name)
    # A raw uint32 key (jax.random.PRNGKey) draws as its typed form does.
    stacks = {n: params[n] for n in "st"}  # batched stacked kernels: keys split per layer
    chip_raw = program_params(stacks, jax.random.key_data(KEY), g_max=25.0, layouts=axes)
    jax.tree.map(np.testing.assert_array_equal, chip_raw, {n: chip[n] for n in "st"})
    assert _programming_calls(grouped, params) == 3  # [6, 4], [4, 6], [3, 6, 4]

    def loss(program):
        return lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(program(p)))

    grads = jax.jit(lambda p: (jax.grad(loss(grouped))(p), jax.grad(loss(separate))(p)))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads(stacks)
    )


def test_layers_with_other_settings_are_not_batched_together():
    """Same-shaped Fusion layers with another g_max or t_inference each keep their own
    settings (a call of their own); those with equal settings share one."""
    settings = ({"g_max": 10.0}, {"g_max": 40.0}, {"g_max": 40.0, "t_inference": 100.0}, {})
    net = nnx.Sequential(
        *(fj.nnx.FusionLinear(6, 4, **s, rngs=nnx.Rngs(i)) for i, s in enumerate(settings))
    )
    chip = program_params(net, KEY)
    for i, s in enumerate(settings):
        k = leaf_key(KEY, ("layers", i, "kernel"))
        np.testing.assert_array_equal(
            chip.layers[i].kernel[...], program_kernel(net.layers[i].kernel[...], k, **s)
        )
    assert _programming_calls(lambda: program_params(net, KEY)) == 3


def test_the_programmed_copy_of_a_fusion_model_is_the_chip():
    """Calling the copy uses its kernels as programmed, without programming them again,
    also when the model was in training mode; the model keeps its mode."""
    net = nnx.Sequential(
        fj.nnx.FusionLinear(4, 3, noise=NOISE, rngs=nnx.Rngs(0, noise=1)), nnx.Dropout(0.5)
    )
    chip = program_params(net, KEY)
    layer = chip.layers[0]
    x = jnp.ones((2, 4))
    np.testing.assert_allclose(
        chip.layers[0](x), x @ layer.kernel[...] + layer.bias[...], rtol=1e-6, atol=1e-6
    )
    assert not net.layers[0].deterministic
    assert not chip.layers[1].deterministic  # dropout keeps the model's mode


def test_a_training_step_through_the_programmed_copy():
    """loss(program_params(model, key)(x)) differentiates to the model's parameters: with
    noise off the round trip is the identity, so the gradients are the digital ones."""

    def net(noise):
        return nnx.Sequential(
            fj.nnx.FusionLinear(4, 3, noise=noise, rngs=nnx.Rngs(0)),
            jax.nn.tanh,
            fj.nnx.FusionLinear(3, 2, noise=noise, rngs=nnx.Rngs(1)),
        )

    x = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)

    def on_chip(model):
        return jnp.sum(program_params(model, KEY)(x) ** 2)

    def digital(model):
        return jnp.sum(model(x) ** 2)

    plain = net(None)
    chip_grads = nnx.grad(on_chip)(plain)
    plain.eval()
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        nnx.to_pure_dict(chip_grads),
        nnx.to_pure_dict(nnx.grad(digital)(plain)),
    )
    noisy = nnx.to_pure_dict(nnx.grad(on_chip)(net(NOISE)))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(noisy))
    assert not np.allclose(
        noisy["layers"][0]["kernel"], nnx.to_pure_dict(chip_grads)["layers"][0]["kernel"]
    )


def test_the_programmed_copy_updates_the_models_batch_statistics_and_dropout_stream():
    """Running the copy in training mode updates the model's own non-kernel state."""
    import optax

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.l2 = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.drop(self.bn(self.l1(x))))

    model = Net(nnx.Rngs(0))
    chip = program_params(model, KEY, noise=NOISE)
    assert chip.bn.mean is model.bn.mean and chip.drop.rngs.count is model.drop.rngs.count
    assert chip.l1.kernel is not model.l1.kernel  # the programmed kernels are the copy's own
    kernel = np.asarray(model.l1.kernel[...])

    x = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)
    y = jnp.array([0, 1])
    optimizer = nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param)  # parameters stay put

    @nnx.jit
    def step(model, optimizer, key):
        def loss_fn(model):
            logits = program_params(model, key, noise=NOISE)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    means = []
    for i in range(2):
        step(model, optimizer, jax.random.key(i))
        means.append(np.asarray(model.bn.mean[...]))
    assert int(model.drop.rngs.count[...]) == 2  # a new dropout mask each step
    assert not np.allclose(means[0], 0.0) and not np.allclose(means[1], means[0])
    np.testing.assert_array_equal(model.l1.kernel[...], kernel)  # the input is not programmed


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _PickyNoise:
    """A noise model that refuses rows of more than 5 inputs (raised while programming)."""

    scale: float = 1.0

    def sample(self, conductances, key, *, g_max, t_inference):
        if conductances.shape[-2] > 5:
            raise ValueError("too many inputs for this noise model")
        return conductances


def test_batching_never_changes_a_result_nor_hides_a_name(monkeypatch):
    """Where batching would change a draw or a rounding it is not done: keys of another
    PRNG (rbg: draws depend on the batch position), tiled convolutions (inputs in export
    order); large groups are programmed in chunks; errors still name the leaves."""
    r = np.random.default_rng(5)

    def kernels(shape, names="abc"):
        return {n: {"kernel": jnp.asarray(r.standard_normal(shape), jnp.float32)} for n in names}

    def assert_alone(params, key, **kw):
        chip = program_params(params, key, **kw)
        layouts = kw.pop("layouts", {})
        for n, leaf in params.items():
            k = None if key is None else leaf_key(key, (n, "kernel"))
            alone = program_kernel(leaf["kernel"], k, axes=layouts.get(f"{n}/kernel"), **kw)
            np.testing.assert_array_equal(chip[n]["kernel"], alone, err_msg=n)

    assert_alone(kernels((6, 4)), jax.random.key(3, impl="rbg"))
    conv = fj.layout.KernelAxes.conv(2)
    assert_alone(
        kernels((3, 3, 64, 8), "ab"),
        None,
        noise=None,
        max_input_size=256,
        layouts={"a/kernel": conv, "b/kernel": conv},
    )
    monkeypatch.setattr(fj.model_programming, "_MAX_GROUP_ELEMENTS", 48)  # 2 kernels of 24
    params = kernels((6, 4))
    assert_alone(params, KEY)
    assert _programming_calls(lambda p: program_params(p, KEY), params) == 2  # [a, b], [c]
    with pytest.raises(ValueError, match=r"leaf 'a/kernel, b/kernel': too many inputs"):
        program_params(params, KEY, noise=_PickyNoise())


def test_fusion_layers_left_unprogrammed_keep_their_mode():
    net = nnx.Sequential(
        fj.nnx.FusionLinear(6, 4, rngs=nnx.Rngs(0)), fj.nnx.FusionLinear(6, 4, rngs=nnx.Rngs(1))
    )
    chip = program_params(net, KEY, where=lambda path, leaf: path == ("layers", 0, "kernel"))
    assert chip.layers[0].deterministic  # programmed: the chip
    assert not chip.layers[1].deterministic  # not programmed: still programs itself
    np.testing.assert_array_equal(chip.layers[1].kernel[...], net.layers[1].kernel[...])


def test_a_lora_layer_gets_its_base_kernel_programmed_and_keeps_its_adapters_digital():
    """README: program_params programs the leaves named kernel, nothing else; adapters are
    programmed only when where= selects them."""
    lora = nnx.LoRALinear(3, 2, lora_rank=1, rngs=nnx.Rngs(0))
    lora.lora.lora_b[...] = jnp.ones((1, 2))  # zero-initialised: any value shows a change
    chip = program_params(lora, KEY, noise=NOISE)
    assert not np.allclose(chip.kernel[...], lora.kernel[...])
    for name in ("lora_a", "lora_b"):
        np.testing.assert_array_equal(getattr(chip.lora, name)[...], getattr(lora.lora, name)[...])
    everything = program_params(
        lora, KEY, noise=NOISE, where=lambda path, leaf: path[-1] in ("kernel", "lora_a")
    )
    # (lora_a [3, 1]: one row of three inputs; lora_b's rows have one input each, which a
    # row's own slope reads back exactly whatever the noise)
    assert not np.allclose(everything.lora.lora_a[...], lora.lora.lora_a[...])
    with pytest.raises(TypeError, match="LoRALinear"):  # fusionize has no counterpart for it
        fj.nnx.fusionize(lora)
