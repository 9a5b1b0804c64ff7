"""seqjax.attention's hand-written derivatives (``implementation="jvp"``, the CPU default, and
``"vjp"``): the same outputs as the reference path and the derivatives of JAX's autodiff of it,
in float64, for every mask and bias form; forward mode and second derivatives where promised."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randn

from seqjax import attention as A

B, TQ, TK, N, K = 2, 3, 5, 2, 4
CUSTOM = ["vjp", "jvp"]

sdpa = jax.jit(A.scaled_dot_product_attention, static_argnames=("implementation", "is_causal", "scale"))


def _inputs(dtype, kv=K, seed=0):
    return (randn(seed, (B, TQ, N, K), dtype), randn(seed + 1, (B, TK, N, K), dtype),
            randn(seed + 2, (B, TK, N, kv), dtype))


def _masks():
    dense = jnp.asarray(np.random.default_rng(3).random((B, 1, TQ, TK)) < 0.7).at[0, 0, 1].set(False)
    return {"none": {}, "dense with a fully masked row": {"mask": dense},
            "causal + key_lengths": {"is_causal": True, "key_lengths": jnp.array([TK, 2])}}


BIASES = {"none": None, "(B, N, Tq, Tk)": (B, N, TQ, TK), "(1, N, Tq, Tk)": (1, N, TQ, TK), "(Tk,)": (TK,),
          "(B, 1, 1, Tk)": (B, 1, 1, TK)}


def _loss(implementation, masks):
    def loss(q, k, v, bias):
        out = sdpa(q, k, v, bias=bias, implementation=implementation, **masks)
        return jnp.sum(jnp.sin(out) * jnp.arange(1.0, out.shape[-1] + 1))    # a cotangent that is not out
    return loss


@pytest.mark.parametrize("implementation", CUSTOM)
@pytest.mark.parametrize("masks", list(_masks()))
@pytest.mark.parametrize("bias_shape", list(BIASES))
def test_outputs_and_gradients_equal_autodiff_of_the_reference_float64(x64, implementation, masks, bias_shape):
    q, k, v = _inputs(jnp.float64)
    bias = None if BIASES[bias_shape] is None else randn(7, BIASES[bias_shape], jnp.float64)
    m = _masks()[masks]
    np.testing.assert_allclose(sdpa(q, k, v, bias=bias, implementation=implementation, **m),
                               sdpa(q, k, v, bias=bias, implementation="reference", **m), rtol=1e-13, atol=1e-13)
    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    got = jax.grad(_loss(implementation, m), argnums)(q, k, v, bias)
    want = jax.grad(_loss("reference", m), argnums)(q, k, v, bias)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("implementation", CUSTOM)
def test_value_width_other_than_key_width(x64, implementation):
    q, k, v = _inputs(jnp.float64, kv=3)
    m = _masks()["dense with a fully masked row"]
    got = jax.grad(_loss(implementation, m), (0, 1, 2))(q, k, v, None)
    want = jax.grad(_loss("reference", m), (0, 1, 2))(q, k, v, None)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("implementation", CUSTOM)
def test_bfloat16_keeps_dtypes_and_stays_near_float32(implementation):
    q, k, v = _inputs(jnp.float32)
    m = _masks()["dense with a fully masked row"]
    lo = tuple(a.astype(jnp.bfloat16) for a in (q, k, v))
    out = sdpa(*lo, implementation=implementation, **m)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), sdpa(*lo, implementation="reference", **m).astype(jnp.float32),
                               atol=2e-2)
    grads = jax.grad(lambda q, k, v: jnp.sum(sdpa(q, k, v, implementation=implementation, **m)
                                             .astype(jnp.float32) ** 2), (0, 1, 2))(*lo)
    want = jax.grad(lambda q, k, v: jnp.sum(sdpa(q, k, v, implementation="reference", **m) ** 2), (0, 1, 2))(q, k, v)
    for g, w in zip(grads, want):
        assert g.dtype == jnp.bfloat16
        assert np.linalg.norm(g.astype(jnp.float32) - w) <= 0.06 * np.linalg.norm(w)


def test_jvp_path_forward_mode_and_second_derivatives(x64):
    """"jvp" is a jax.custom_jvp: jax.jvp, jax.jacfwd and jax.hessian work and agree with autodiff."""
    q, k, v = _inputs(jnp.float64)
    m = _masks()["dense with a fully masked row"]
    f = {impl: (lambda q, k, v, impl=impl: sdpa(q, k, v, implementation=impl, **m)) for impl in ("jvp", "reference")}
    tangents = _inputs(jnp.float64, seed=10)
    (o1, t1), (o0, t0) = (jax.jvp(f[i], (q, k, v), tangents) for i in ("jvp", "reference"))
    np.testing.assert_allclose(o1, o0, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(t1, t0, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jax.jacfwd(f["jvp"], 1)(q, k, v), jax.jacfwd(f["reference"], 1)(q, k, v),
                               rtol=1e-12, atol=1e-13)
    h = {i: jax.hessian(lambda q: jnp.sum(jnp.sin(f[i](q, k, v))))(q) for i in ("jvp", "reference")}
    np.testing.assert_allclose(h["jvp"], h["reference"], rtol=1e-11, atol=1e-12)


def test_vjp_path_reverse_over_reverse_and_no_forward_mode(x64):
    """"vjp" is a jax.custom_vjp: gradients of gradients work; forward mode is refused by JAX."""
    q, k, v = _inputs(jnp.float64)
    m = _masks()["causal + key_lengths"]

    def gnorm(impl):
        return lambda q: jnp.sum(jax.grad(lambda k: jnp.sum(sdpa(q, k, v, implementation=impl, **m) ** 2))(k) ** 2)
    np.testing.assert_allclose(jax.grad(gnorm("vjp"))(q), jax.grad(gnorm("reference"))(q), rtol=1e-11, atol=1e-12)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda q: sdpa(q, k, v, implementation="vjp"), (q,), (q,))


def test_cpu_default_is_the_jvp_path_and_weights_or_dropout_take_the_reference():
    """On CPU, implementation=None runs the custom-JVP path; return_weights and dropout, which it
    does not cover, fall back to the reference path (same values either way)."""
    if jax.default_backend() != "cpu":
        pytest.skip("checks what implementation=None means on CPU; on GPU/TPU it means jax.nn.dot_product_attention, tested in test_attention.py")
    q, k, v = _inputs(jnp.float32)

    def jaxpr(**kwargs):
        return str(jax.make_jaxpr(lambda q: A.scaled_dot_product_attention(q, k, v, **kwargs))(q))
    assert "custom_jvp_call" in jaxpr()
    assert "custom_jvp_call" not in jaxpr(return_weights=True)
    assert "custom_jvp_call" not in jaxpr(dropout_rate=0.5, dropout_key=jax.random.key(0))
    assert "custom_vjp_call" in jaxpr(implementation="vjp")
    out, _ = A.scaled_dot_product_attention(q, k, v, return_weights=True)
    np.testing.assert_allclose(out, A.scaled_dot_product_attention(q, k, v), rtol=1e-6, atol=1e-7)


def test_mha_default_gradients_equal_the_reference_path(x64):
    x = randn(0, (B, TK, 8), jnp.float64)
    mask = A.padding_mask(jnp.array([TK, 3]), TK)
    grads = {}
    for impl in (None, "vjp", "reference"):
        mha = A.multi_head_attention(2, 8, implementation=impl)
        params = mha.init(jax.random.key(1), 8, dtype=jnp.float64)
        grads[impl] = jax.grad(lambda p: jnp.sum(mha.apply(p, x, mask=mask) ** 2))(params)
    for impl in (None, "vjp"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), grads[impl],
                     grads["reference"])


def test_forward_mode_through_the_default_mha(x64):
    """The default (custom-JVP on CPU) keeps jax.jvp working through multi-head attention."""
    x, dx = randn(0, (B, TK, 8), jnp.float64), randn(1, (B, TK, 8), jnp.float64)
    outs = {}
    for impl in (None, "reference"):
        mha = A.multi_head_attention(2, 8, implementation=impl)
        params = mha.init(jax.random.key(1), 8, dtype=jnp.float64)
        outs[impl] = jax.jvp(lambda x: mha.apply(params, x, is_causal=True), (x,), (dx,))
    for a, b in zip(outs[None], outs["reference"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
