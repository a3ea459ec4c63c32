"""The fused random words: JAX's threefry bit for bit, one hash per block, any key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from fusion_jax._random import random_words, threefry2x32


def test_threefry2x32_is_jax_threefry_bit_for_bit():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    counters = rng.integers(0, 2**32, size=(2, 1000), dtype=np.uint32)
    mine = threefry2x32(jnp.uint32(key[0]), jnp.uint32(key[1]), counters[0], counters[1])
    theirs = threefry_2x32(key, counters.reshape(-1))  # first half x0, second half x1
    np.testing.assert_array_equal(np.concatenate(mine), theirs)


@pytest.mark.parametrize("n_words", [1, 2, 3])
def test_words_are_the_threefry_blocks_of_block_and_flat_index(n_words):
    key = jax.random.key(7)
    shape = (3, 5)
    words = random_words(key, n_words, shape)
    assert len(words) == n_words
    data = np.asarray(jax.random.key_data(key))
    index = np.arange(15, dtype=np.uint32)
    for w in range(n_words):
        block = np.full(15, w // 2, np.uint32)
        expected = np.asarray(threefry_2x32(data, np.concatenate([block, index])))
        expected = expected[(w % 2) * 15 : (w % 2 + 1) * 15].reshape(shape)
        np.testing.assert_array_equal(words[w], expected)
        assert words[w].dtype == jnp.uint32 and words[w].shape == shape


def test_raw_keys_give_the_words_of_the_typed_key():
    raw = jax.random.PRNGKey(3)
    typed = jax.random.wrap_key_data(raw)
    for a, b in zip(random_words(raw, 2, (4, 4)), random_words(typed, 2, (4, 4)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_other_prngs_draw_with_jax_random_bits(impl):
    key = jax.random.key(5, impl=impl)
    words = random_words(key, 2, (6, 7))
    np.testing.assert_array_equal(jnp.stack(words), jax.random.bits(key, (2, 6, 7), jnp.uint32))


def test_jit_and_vmap_over_keys_give_the_eager_words():
    keys = jax.random.split(jax.random.key(11), 4)
    batched = jax.jit(jax.vmap(lambda k: random_words(k, 2, (8, 3))))(keys)
    for i, k in enumerate(keys):
        for w in range(2):
            np.testing.assert_array_equal(batched[w][i], random_words(k, 2, (8, 3))[w])


def test_words_are_uniform_and_independent():
    w0, w1 = (np.asarray(w, np.uint64) for w in random_words(jax.random.key(1), 2, (200_000,)))
    n = w0.size
    for w in (w0, w1):
        bits = (w[:, None] >> np.arange(32, dtype=np.uint64)) & 1
        # every bit is a fair coin: within 5 standard errors of 1/2
        assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 5 * 0.5 / np.sqrt(n))
    u0, u1 = w0 / 2.0**32, w1 / 2.0**32
    for a, b in ((u0, u1), (u0[:-1], u0[1:]), (u1[:-1], u1[1:])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)


def test_gradient_passes_through_code_that_uses_the_words():
    def f(x, key):
        (w,) = random_words(key, 1, x.shape)
        return jnp.sum(x * (w >> 8).astype(jnp.float32) * 2.0**-24)

    x = jnp.ones(5)
    key = jax.random.key(2)
    grad = jax.jit(jax.grad(f))(x, key)
    (w,) = random_words(key, 1, x.shape)
    np.testing.assert_allclose(grad, (np.asarray(w) >> 8) * 2.0**-24, rtol=1e-6)


def test_arrays_beyond_the_32_bit_counter_draw_with_jax_random_bits(monkeypatch):
    from fusion_jax import _random

    monkeypatch.setattr(_random, "_MAX_ELEMENTS", 16)
    key = jax.random.key(9)
    small = random_words(key, 2, (3, 5))  # 15 elements: the fused hash
    large = random_words(key, 2, (4, 5))  # 20 elements: past the (patched) counter
    expected = jax.random.bits(key, (2, 4, 5), jnp.uint32)
    np.testing.assert_array_equal(jnp.stack(large), expected)
    assert not np.array_equal(small[0], jax.random.bits(key, (2, 3, 5), jnp.uint32)[0])
