"""Flax kernel layout <-> the reference's [out, in] rows, and whole Flax pytrees."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import normal
from flax import nnx

import fusion_jax as fj
from fusion_jax.fusion_io import fusion_export, fusion_import
from fusion_jax.layout import flax_to_layers, kernel_to_rows, layers_to_flax, rows_to_kernel

# --- single kernels ---------------------------------------------------------------------------


def test_dense_kernel_rows_are_outputs():
    kernel = np.arange(12.0, dtype=np.float32).reshape(3, 4)  # in=3, out=4
    x = np.array([1.0, -2.0, 0.5], np.float32)
    rows = kernel_to_rows(kernel)
    assert rows.shape == (4, 3)
    np.testing.assert_allclose(rows @ x, x @ kernel)


def test_conv_rows_follow_pytorch_flattening():
    """Row r, column (c, i, j) holds the weight of output r, input channel c, tap (i, j)."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)  # kh, kw, in, out
    rows = np.asarray(kernel_to_rows(kernel))
    assert rows.shape == (5, 4 * 2 * 3)
    for r in range(5):
        for c in range(4):
            for i in range(2):
                for j in range(3):
                    assert rows[r, (c * 2 + i) * 3 + j] == kernel[i, j, c, r]
    np.testing.assert_array_equal(rows_to_kernel(rows, kernel.shape), kernel)


def test_conv_rows_compute_the_conv_output():
    """A VALID conv over one kernel-sized patch is rows @ patch flattened as [in, kh, kw]."""
    conv = nn.Conv(5, (2, 3), padding="VALID")
    x = normal((1, 2, 3, 4), 1)
    params = {"kernel": normal((2, 3, 4, 5), 2), "bias": normal((5,), 3)}  # kh, kw, in, out
    y = conv.apply({"params": params}, x)[0, 0, 0]
    rows = kernel_to_rows(params["kernel"])
    patch = jnp.transpose(x[0], (2, 0, 1)).ravel()
    np.testing.assert_allclose(rows @ patch + params["bias"], y, rtol=1e-5, atol=1e-5)


def test_rows_to_kernel_errors():
    with pytest.raises(ValueError, match=r"do not fit kernel shape \(2, 2, 3, 4\)"):
        rows_to_kernel(np.ones((4, 11)), (2, 2, 3, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        kernel_to_rows(np.ones(3))


# --- Flax models ------------------------------------------------------------------------------


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), padding="VALID", name="conv")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(2, name="head")(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), padding="VALID", rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(12, 2, rngs=rngs)])  # same shapes as LinenNet

    def __call__(self, x):
        x = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
        return self.blocks[0](x)


def _perturb_biases(tree):
    """Non-zero biases, so the round trip is checked with them in play."""
    return jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 if "bias" in jax.tree_util.keystr(p) else v, tree
    )


def test_linen_round_trip_through_the_chip_file(tmp_path):
    model = LinenNet()
    x = normal((2, 4, 4, 2), 2)
    variables = _perturb_biases(model.init(jax.random.key(3), x))
    layers = flax_to_layers(variables)
    assert {k: v.shape for k, v in layers.items()} == {"conv": (3, 18), "head": (2, 12)}

    path = tmp_path / "linen.csv"
    data, params = fusion_export(layers, path)
    assert data.names == ("conv", "head")
    imported = fusion_import(path, layers, params)
    loaded = layers_to_flax(imported, variables)

    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
    for (p, a), b in zip(
        jax.tree_util.tree_leaves_with_path(loaded),
        jax.tree_util.tree_leaves(variables),
        strict=True,
    ):
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(p)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.apply(loaded, x), model.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_nnx_round_trip_through_the_chip_file(tmp_path):
    model = NnxNet(nnx.Rngs(0))
    x = normal((2, 4, 4, 2), 4)
    state = _perturb_biases(nnx.state(model, nnx.Param))
    nnx.update(model, state)
    y = model(x)

    layers = flax_to_layers(state)
    assert {k: v.shape for k, v in layers.items()} == {
        "blocks/0": (2, 12),
        "conv": (3, 18),
    }
    assert list(flax_to_layers(nnx.to_pure_dict(state))) == list(layers)

    path = tmp_path / "nnx.csv"
    _, params = fusion_export(layers, path)
    imported = fusion_import(path, layers, params)
    loaded = layers_to_flax(imported, state)
    assert type(loaded) is type(state)

    fresh = NnxNet(nnx.Rngs(1))  # different weights until the loaded state goes in
    assert not np.allclose(fresh(x), y)
    nnx.update(fresh, loaded)
    np.testing.assert_allclose(fresh.conv.kernel[...], model.conv.kernel[...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fresh(x), y, rtol=1e-5, atol=1e-5)


def test_layers_to_flax_changes_only_the_given_layers():
    params = {
        "a": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        "b": {"kernel": jnp.ones((2, 2))},
    }
    new = layers_to_flax({"a": jnp.full((2, 3), 5.0)}, params)
    np.testing.assert_array_equal(new["a"]["kernel"], np.full((3, 2), 5.0))
    assert new["b"]["kernel"] is params["b"]["kernel"] and new["a"]["bias"] is params["a"]["bias"]
    np.testing.assert_array_equal(params["a"]["kernel"], np.ones((3, 2)))  # input untouched


def test_kernels_are_cast_to_the_pytree_dtype():
    params = {"d": {"kernel": jnp.ones((3, 2), jnp.bfloat16)}}
    new = layers_to_flax({"d": np.full((2, 3), 0.5, np.float64)}, params)
    assert new["d"]["kernel"].dtype == jnp.bfloat16


def test_naming_rules():
    params = {
        "params": {
            "enc": {"layer": {"kernel": jnp.ones((2, 3))}, "scale": jnp.ones((2, 3))},
            "embed": {"embedding": jnp.ones((5, 2))},
            "vec": {"kernel": jnp.ones(3)},
        }
    }
    assert list(flax_to_layers(params)) == ["enc/layer"]  # params collection dropped
    assert list(flax_to_layers({"kernel": jnp.ones((2, 2))})) == ["kernel"]


def test_where_selects_layers():
    params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2, 3))}}
    assert list(flax_to_layers(params, where=["b"])) == ["b"]
    # the predicate is program_params' where(path, leaf)
    assert list(flax_to_layers(params, where=lambda path, leaf: "b" not in path)) == ["a"]
    with pytest.raises(ValueError, match=r"where names unknown layer\(s\) \['c'\]"):
        flax_to_layers(params, where=["c"])


def test_flax_helper_errors():
    params = {"a": {"kernel": jnp.ones((3, 2))}}
    with pytest.raises(ValueError, match="params hold no kernels"):
        flax_to_layers({"a": {"bias": jnp.ones(3)}})
    with pytest.raises(ValueError, match=r"layer\(s\) \['z'\] match no kernel.*\['a'\]"):
        layers_to_flax({"z": jnp.ones((2, 3))}, params)
    with pytest.raises(
        ValueError, match=r"layer 'a': matrix of shape \(3, 2\) does not fit the kernel of shape"
    ):
        layers_to_flax({"a": jnp.ones((3, 2))}, params)
    with pytest.raises(TypeError, match="layer 'a': matrix must be real floating point"):
        layers_to_flax({"a": np.ones((2, 3), np.int32)}, params)
    with pytest.raises(ValueError, match="two kernels map to the layer name 'a'"):
        flax_to_layers(
            {"a": {"kernel": jnp.ones((2, 2))}, "params": {"a": {"kernel": jnp.ones((2, 2))}}}
        )


def test_flax_layers_export_in_one_call(tmp_path):
    """The documented one-liner: a Flax pytree straight into the chip file."""
    params = {"fc": {"kernel": jnp.arange(1.0, 7.0).reshape(3, 2)}}
    data, _ = fusion_export(flax_to_layers(params), tmp_path / "m.csv")
    assert (data.heights, data.widths) == ((2,), (3,))
    np.testing.assert_allclose(
        data.layers["fc"], [[8.0, 24.0, 40.0], [2 * 40 / 6, 4 * 40 / 6, 40.0]], rtol=1e-6
    )
    assert fj.chip_file.read_chip_file(tmp_path / "m.csv").names == ("fc",)


def test_layouts_export_other_kernels_one_row_per_output_and_refuse_what_does_not_fit():
    # nn.ConvTranspose(transpose_kernel=True) stores [*window, out, in] = (2, 4, 3).
    kernel = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3)), jnp.float32)
    params = {"params": {"up": {"kernel": kernel}}}
    axes = fj.layout.KernelAxes.conv(1, transpose_kernel=True)
    for key in ("up/kernel", "params/up/kernel", ("params", "up", "kernel")):
        rows = flax_to_layers(params, layouts={key: axes})["up"]
        assert rows.shape == (4, 6)  # 4 output channels, each over 3 inputs x 2 taps
        # Layouts of the whole variables (fj.linen.kernel_layouts) serve variables["params"].
        np.testing.assert_array_equal(
            flax_to_layers(params["params"], layouts={key: axes})["up"], rows
        )
    chip = fj.program_params(params["params"], None, noise=None, layouts={"params/up/kernel": axes})
    np.testing.assert_allclose(chip["up"]["kernel"], kernel, rtol=1e-5, atol=1e-6)
    window = flax_to_layers(params, layouts={"up/kernel": axes}, conv_window=True)["up"]
    np.testing.assert_array_equal(window[1], kernel[:, 1, :].T)  # [in, window] of channel 1
    for layers in ({"up": rows}, {"up": window}):
        back = layers_to_flax(layers, params, layouts={"up/kernel": axes})
        np.testing.assert_array_equal(back["params"]["up"]["kernel"], kernel)
    with pytest.raises(ValueError, match="layouts name leaves that params lack"):
        flax_to_layers(params, layouts={"down/kernel": axes})
    stacked = fj.layout.KernelAxes.dense().stacked()
    with pytest.raises(ValueError, match="layer 'up': its layout .* stack axes"):
        flax_to_layers(params, layouts={"up/kernel": stacked})
    with pytest.raises(ValueError, match="layer 'up'"):
        flax_to_layers(params, layouts={"up/kernel": fj.layout.KernelAxes.dense()})
    with pytest.raises(ValueError, match=r"layer 'up': matrix of shape \(3, 8\) does not fit"):
        layers_to_flax({"up": jnp.ones((3, 8))}, params, layouts={"up/kernel": axes})
