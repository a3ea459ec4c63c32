"""materialize: the value itself, computed once, with the identity as derivative."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np

from fusion_jax._fusion import materialize, materialize_fn


def test_values_pass_unchanged_through_jit_and_vmap():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": (jnp.array([1, 2]), jnp.zeros((0, 4)))}
    out = jax.jit(materialize)(tree)
    np.testing.assert_array_equal(out["a"], tree["a"])
    np.testing.assert_array_equal(out["b"][0], tree["b"][0])
    assert out["b"][1].shape == (0, 4)
    batched = jax.vmap(lambda v: materialize(v * 2.0))(jnp.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(batched, 2.0 * jnp.arange(12.0).reshape(4, 3))


def test_derivative_is_the_identity_in_both_modes():
    def f(v):
        return jnp.sum(jnp.sin(materialize(v**2)))

    v = jnp.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(jax.grad(f)(v), jnp.cos(v**2) * 2 * v, rtol=1e-6)
    _, tangent = jax.jvp(lambda v: materialize(v**2), (v,), (jnp.ones(3),))
    np.testing.assert_allclose(tangent, 2 * v, rtol=1e-6)
    jax.test_util.check_grads(lambda v: materialize(v**3), (v,), order=2, modes=("fwd", "rev"))


def test_materialize_fn_gives_fn_and_is_a_branch_on_cpu():
    def fn():
        return jnp.arange(4.0) * 3.0

    compute = jax.jit(lambda x: materialize_fn(fn, x) + x[0])
    np.testing.assert_array_equal(compute(jnp.ones(2)), jnp.arange(4.0) * 3.0 + 1.0)
    compiled = compute.lower(jnp.ones(2)).compile().as_text()
    if jax.default_backend() == "cpu":
        assert " conditional(" in compiled  # computed in its own body, once
