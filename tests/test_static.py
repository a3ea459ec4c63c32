"""StaticNumbers: Python numbers of a pytree stay constants under jit; arrays are traced."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import fusion_jax as fj
from fusion_jax._static import StaticNumbers
from fusion_jax.noise import FusionChipNoise


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Model:
    scale: float
    offset: object
    coefs: tuple = (1.0, 2.0)


def test_numbers_are_static_and_arrays_are_leaves():
    wrapped = StaticNumbers(Model(2.0, jnp.ones(3)))
    leaves, treedef = jax.tree_util.tree_flatten(wrapped)
    assert len(leaves) == 1 and leaves[0].shape == (3,)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.value.scale == 2.0 and back.value.coefs == (1.0, 2.0)
    np.testing.assert_array_equal(back.value.offset, jnp.ones(3))


def test_jit_sees_numbers_as_constants_and_recompiles_for_new_ones():
    seen = []

    @jax.jit
    def f(s):
        seen.append(type(s.value.scale))
        return s.value.offset * s.value.scale + s.value.coefs[1]

    np.testing.assert_allclose(f(StaticNumbers(Model(2.0, jnp.ones(2)))), [4.0, 4.0])
    np.testing.assert_allclose(f(StaticNumbers(Model(2.0, jnp.zeros(2)))), [2.0, 2.0])
    assert seen == [float]  # same numbers, new array: no retrace
    np.testing.assert_allclose(f(StaticNumbers(Model(3.0, jnp.ones(2)))), [5.0, 5.0])
    assert seen == [float, float]


def test_vmap_over_an_array_field():
    offsets = jnp.arange(3.0)
    f = jax.vmap(
        lambda o: jax.jit(lambda s: s.value.offset * s.value.scale)(StaticNumbers(Model(2.0, o)))
    )
    np.testing.assert_allclose(f(offsets), 2.0 * offsets)


def test_program_skips_read_noise_for_a_literal_zero_but_not_for_an_array(monkeypatch):
    """Through program's jit, a float 0 read-noise scale draws no read word; an array
    field (traced) draws it. Both give the same result: the term is 0 either way."""
    from fusion_jax import noise

    w = jax.random.normal(jax.random.key(0), (16, 32))
    key = jax.random.key(1)
    literal = FusionChipNoise.lenet5_readback()
    traced = FusionChipNoise.lenet5_readback(read_noise_scale=jnp.float32(0.0))
    draws = []
    real_draw = noise._draw_words

    def counting_draw(key, n_words, shape):
        draws.append(n_words)
        return real_draw(key, n_words, shape)

    monkeypatch.setattr(noise, "_draw_words", counting_draw)
    jax.clear_caches()  # trace afresh, whatever ran before in this process
    out_literal = fj.program(w, key, noise=literal)
    assert draws == [2]  # latent, drift and stuck words only
    draws.clear()
    out_traced = fj.program(w, key, noise=traced)
    assert draws == [2, 1]  # and the read word
    np.testing.assert_array_equal(out_literal, out_traced)


def test_numbers_of_different_type_or_sign_get_their_own_compilation():
    """0.0 and -0.0, 1 and 1.0 and True are different static data; NaN is found again."""
    traces = []

    @jax.jit
    def f(s):
        traces.append(s.value["a"])
        return jnp.asarray(1.0) / s.value["a"]

    assert float(f(StaticNumbers({"a": 0.0}))) == np.inf
    assert float(f(StaticNumbers({"a": -0.0}))) == -np.inf
    g = jax.jit(lambda s: jnp.asarray(s.value["a"]))
    assert g(StaticNumbers({"a": 1})).dtype == jnp.int32
    assert g(StaticNumbers({"a": 1.0})).dtype == jnp.float32
    assert g(StaticNumbers({"a": True})).dtype == jnp.bool_
    traces.clear()
    f(StaticNumbers({"a": float("nan")}))
    f(StaticNumbers({"a": float("nan")}))
    assert len(traces) == 1  # the second NaN hits the cache
