"""seqjax.attention: the maths of attention, masks, the SDPA paths, MHA and Flax parity;
jit == no jit (chex variants) and causality over random shapes (hypothesis)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from conftest import randn
from hypothesis import given, settings
from hypothesis import strategies as st

from seqjax import attention as A

B, TQ, TK, N, K = 2, 3, 5, 2, 4

# One compile per configuration instead of dozens of eager per-op compiles.
sdpa = jax.jit(A.scaled_dot_product_attention,
               static_argnames=("return_weights", "implementation", "dropout_rate", "scale", "is_causal"))


def _qkv(seed=0, dtype=jnp.float32, tq=TQ, tk=TK):
    return (randn(3 * seed, (B, tq, N, K), dtype), randn(3 * seed + 1, (B, tk, N, K), dtype),
            randn(3 * seed + 2, (B, tk, N, K), dtype))


def _numpy_attention(q, k, v, mask=None, bias=None):
    """The textbook formula in float64 NumPy, loops over batch and heads."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b_, tq, n_, d = q.shape
    tk = k.shape[1]
    out = np.zeros((b_, tq, n_, v.shape[-1]))
    weights = np.zeros((b_, n_, tq, tk))
    m = np.ones((b_, n_, tq, tk), bool) if mask is None else np.broadcast_to(np.asarray(mask), (b_, n_, tq, tk))
    bb = np.zeros((b_, n_, tq, tk)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (b_, n_, tq, tk))
    for b in range(b_):
        for h in range(n_):
            s = q[b, :, h] @ k[b, :, h].T / np.sqrt(d) + bb[b, h]
            for i in range(tq):
                if not m[b, h, i].any():
                    continue                        # fully masked: zeros
                e = np.where(m[b, h, i], np.exp(s[i] - s[i][m[b, h, i]].max()), 0.0)
                weights[b, h, i] = e / e.sum()
            out[b, :, h] = weights[b, h] @ v[b, :, h]
    return out, weights


def _mask():
    """Padding (lengths 5 and 2) AND causal-with-offset, plus a fully masked query row."""
    pad = A.padding_mask(jnp.array([5, 2]), TK)
    row = jnp.array([True, False, True])[None, None, :, None]                # query 1 sees nothing
    return A.combine_masks(pad, A.causal_mask(TQ, TK, offset=2), row)


# ----------------------------------------------------------------------------- masks


def test_mask_builders_match_numpy():
    pad = A.padding_mask(jnp.array([3, 1]), 4)
    assert pad.shape == (2, 1, 1, 4) and pad.dtype == jnp.bool_
    np.testing.assert_array_equal(pad[:, 0, 0], [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(A.causal_mask(3)[0, 0], np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(A.causal_mask(2, 4, offset=2)[0, 0], np.tril(np.ones((2, 4), bool), 2))
    both = A.combine_masks(pad, None, A.causal_mask(4))
    np.testing.assert_array_equal(both, np.asarray(pad) & np.tril(np.ones((4, 4), bool))[None, None])
    assert A.combine_masks(None, None) is None


# ----------------------------------------------------------------------------- SDPA


def test_reference_matches_numpy_oracle_float64(x64):
    q, k, v = _qkv(dtype=jnp.float64)
    mask = _mask()
    bias = randn(9, (1, N, TQ, TK), jnp.float64)
    out, w = sdpa(q, k, v, mask=mask, bias=bias, return_weights=True)
    want_out, want_w = _numpy_attention(q, k, v, mask, bias)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fast_path_equals_reference_path(with_bias):
    q, k, v = _qkv(1)
    mask = _mask()
    bias = randn(3, (B, 1, TQ, TK)) if with_bias else None
    fast = sdpa(q, k, v, mask=mask, bias=bias, implementation="xla")       # jax.nn.dot_product_attention
    ref = sdpa(q, k, v, mask=mask, bias=bias, implementation="reference")
    ref2, _ = sdpa(q, k, v, mask=mask, bias=bias, return_weights=True)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ref, ref2)
    gf = jax.grad(lambda q: jnp.sum(sdpa(q, k, v, mask=mask, bias=bias, implementation="xla") ** 2))(q)
    gr = jax.grad(lambda q: jnp.sum(sdpa(
        q, k, v, mask=mask, bias=bias, implementation="reference") ** 2))(q)
    np.testing.assert_allclose(gf, gr, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("implementation", ["xla", "reference", "vjp", "jvp"])
def test_fully_masked_rows_give_zeros_and_finite_gradients(implementation):
    q, k, v = _qkv(2)
    mask = jnp.zeros((1, 1, TQ, TK), bool)
    out = sdpa(q, k, v, mask=mask, implementation=implementation)
    np.testing.assert_array_equal(out, 0.0)
    g = jax.grad(lambda k: jnp.sum(sdpa(
        q, k, v, mask=_mask(), implementation=implementation)))(k)
    assert np.isfinite(np.asarray(g)).all()
    _, w = sdpa(q, k, v, mask=mask, return_weights=True)
    np.testing.assert_array_equal(w, 0.0)


@pytest.mark.parametrize("implementation", ["xla", "reference", "vjp", "jvp"])
def test_causality_through_gradients(implementation):
    """Output i must not depend on key/value j > i: d out_i / d (k, v)_j == 0."""
    q, k, v = _qkv(4, tq=TK)
    mask = A.causal_mask(TK)
    for i in range(TK):
        gk, gv = jax.grad(lambda k, v: jnp.sum(sdpa(q, k, v, mask=mask, implementation=implementation)[:, i]),
                          argnums=(0, 1))(k, v)
        np.testing.assert_array_equal(gk[:, i + 1:], 0.0)
        np.testing.assert_array_equal(gv[:, i + 1:], 0.0)
        assert np.abs(np.asarray(gv[:, : i + 1])).sum() > 0


@pytest.mark.parametrize("implementation", ["xla", "reference", "vjp", "jvp"])
def test_padding_invariance_through_gradients(implementation):
    q, k, v = _qkv(5)
    lengths = jnp.array([5, 2])
    mask = A.padding_mask(lengths, TK)
    gk, gv = jax.grad(lambda k, v: jnp.sum(sdpa(q, k, v, mask=mask, implementation=implementation) ** 2),
                      argnums=(0, 1))(k, v)
    np.testing.assert_array_equal(gk[1, 2:], 0.0)
    np.testing.assert_array_equal(gv[1, 2:], 0.0)
    # and changing the padding changes nothing
    v2 = v.at[1, 2:].set(100.0)
    np.testing.assert_array_equal(sdpa(q, k, v, mask=mask, implementation=implementation),
                                  sdpa(q, k, v2, mask=mask, implementation=implementation))


@pytest.mark.parametrize("implementation", ["xla", "reference", "vjp", "jvp"])
@pytest.mark.parametrize("tq", [TQ, TK])
def test_structured_masks_equal_their_dense_masks_through_gradients(implementation, tq):
    """is_causal and key_lengths (passed to jax.nn.dot_product_attention as is_causal and
    key_value_seq_lengths on the fast path) give the dense causal_mask/padding_mask results,
    combine with a dense mask, and send no gradient to masked keys."""
    q, k, v = _qkv(7, tq=tq)
    lengths = jnp.array([TK, 2])
    dense = A.combine_masks(A.causal_mask(tq, TK), A.padding_mask(lengths, TK))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)
    structured = loss(lambda q, k, v: sdpa(q, k, v, is_causal=True, key_lengths=lengths,
                                           implementation=implementation))
    reference = loss(lambda q, k, v: sdpa(q, k, v, mask=dense, implementation="reference"))
    np.testing.assert_allclose(structured(q, k, v), reference(q, k, v), rtol=1e-5)
    for g, r in zip(jax.grad(structured, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    gk, gv = jax.grad(structured, (1, 2))(q, k, v)
    np.testing.assert_array_equal(gk[1, 2:], 0.0)
    np.testing.assert_array_equal(gv[1, 2:], 0.0)
    # with a dense mask as well: the three are ANDed, and a row masked out entirely is zeros
    extra = jnp.ones((1, 1, tq, TK), bool).at[..., 0, :].set(False)
    out = sdpa(q, k, v, mask=extra, is_causal=True, key_lengths=lengths, implementation=implementation)
    np.testing.assert_allclose(out, sdpa(q, k, v, mask=A.combine_masks(extra, dense), implementation="reference"),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, 0], 0.0)


def test_structured_masks_bad_inputs_name_the_argument():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"key_lengths must lie in \[1, T\]"):
        A.scaled_dot_product_attention(q, k, v, key_lengths=jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"key_lengths must have shape \(B,\)"):
        A.scaled_dot_product_attention(q, k, v, key_lengths=jnp.array([3, 3, 3]))
    with pytest.raises(TypeError, match="key_lengths"):
        A.scaled_dot_product_attention(q, k, v, key_lengths=jnp.array([3.0, 2.0]))
    with pytest.raises(TypeError, match="is_causal"):
        A.scaled_dot_product_attention(q, k, v, is_causal="yes")


def test_attention_dropout_needs_a_key_and_is_reproducible():
    q, k, v = _qkv(6)
    plain = sdpa(q, k, v)
    no_key = sdpa(q, k, v, dropout_rate=0.5)
    a = sdpa(q, k, v, dropout_rate=0.5, dropout_key=jax.random.key(1))
    b = sdpa(q, k, v, dropout_rate=0.5, dropout_key=jax.random.key(1))
    np.testing.assert_allclose(no_key, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a - plain)).max() > 1e-3


def test_sdpa_bad_inputs_name_the_argument():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="mask must be boolean"):
        A.scaled_dot_product_attention(q, k, v, mask=jnp.ones((TQ, TK)))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 5\) does not broadcast"):
        A.scaled_dot_product_attention(q, k, v, mask=jnp.ones((4, TK), bool))
    with pytest.raises(ValueError, match="k and v must have the same"):
        A.scaled_dot_product_attention(q, k, v[:, :4])
    with pytest.raises(ValueError, match=r"q must have shape \(B, Tq, N, K\)"):
        A.scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="implementation"):
        A.scaled_dot_product_attention(q, k, v, implementation="flash")


# ----------------------------------------------------------------------------- MHA


@pytest.fixture(scope="module")
def mha_setup():
    mha = A.multi_head_attention(num_heads=2, qkv_size=8, out_size=7)
    params = mha.init(jax.random.key(0), query_size=6, key_size=5, value_size=3)
    q, k, v = randn(10, (B, TQ, 6)), randn(11, (B, TK, 5)), randn(12, (B, TK, 3))
    return mha, params, q, k, v


def test_mha_params_layout_and_shapes(mha_setup):
    mha, params, q, k, v = mha_setup
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {"query": {"kernel": (6, 8), "bias": (8,)}, "key": {"kernel": (5, 8), "bias": (8,)},
                      "value": {"kernel": (3, 8), "bias": (8,)}, "out": {"kernel": (8, 7), "bias": (7,)}}
    out, w = mha.apply_jit(params, q, k, v, return_weights=True)
    assert out.shape == (B, TQ, 7) and w.shape == (B, 2, TQ, TK)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def _numpy_mha(params, q, k, v, mask):
    """MHA with 2 heads of size 4 in float64 NumPy: project, attend per head, project out."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    proj = lambda n, x: (np.asarray(x, np.float64) @ p[n]["kernel"] + p[n]["bias"]).reshape(*x.shape[:2], 2, 4)  # noqa
    heads, _ = _numpy_attention(proj("query", q), proj("key", k), proj("value", v), mask)
    return heads.reshape(*q.shape[:2], 8) @ p["out"]["kernel"] + p["out"]["bias"]


def test_mha_matches_per_head_numpy(mha_setup, x64):
    mha, params, q, k, v = mha_setup
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    q, k, v = (a.astype(jnp.float64) for a in (q, k, v))
    mask = A.padding_mask(jnp.array([5, 3]), TK)
    out = mha.apply(params, q, k, v, mask=mask)
    np.testing.assert_allclose(out, _numpy_mha(params, q, k, v, mask), rtol=1e-12, atol=1e-12)


def test_mha_jit_equals_no_jit_and_self_attention_defaults(mha_setup):
    mha, params, q, k, v = mha_setup
    mask = A.padding_mask(jnp.array([5, 3]), TK)
    np.testing.assert_allclose(mha.apply_jit(params, q, k, v, mask=mask), mha.apply(params, q, k, v, mask=mask),
                               rtol=1e-5, atol=1e-6)
    o1, w1 = mha.apply_jit(params, q, k, v, return_weights=True)
    o2, w2 = mha.apply(params, q, k, v, return_weights=True)
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)
    # self-attention: k and v default to q
    self_mha = A.multi_head_attention(2, 8)
    sp = self_mha.init(jax.random.key(3), 6)
    np.testing.assert_allclose(self_mha.apply(sp, q), self_mha.apply(sp, q, q + 0.0, q + 0.0),
                               rtol=1e-5, atol=1e-6)


def test_mha_bad_inputs_name_the_argument(mha_setup):
    mha, params, q, k, v = mha_setup
    with pytest.raises(ValueError, match="num_heads=3 must divide qkv_size"):
        A.multi_head_attention(num_heads=3, qkv_size=8)
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        A.multi_head_attention(num_heads=0, qkv_size=8)
    with pytest.raises(TypeError, match="mask must be boolean"):
        mha.apply(params, q, k, v, mask=jnp.ones((B, 1, 1, TK), jnp.float32))
    with pytest.raises(ValueError, match="mask of shape"):
        mha.apply(params, q, k, v, mask=jnp.ones((B, 1, 1, TK + 1), bool))
    with pytest.raises(ValueError, match="k and v must have the same batch and length"):
        mha.apply(params, q, k, v[:, :4])
    with pytest.raises(ValueError, match="q has 5 features"):
        mha.apply(params, q[..., :5], k, v)


def test_mha_parity_with_flax_linen(mha_setup):
    nn = pytest.importorskip("flax.linen")
    _, _, q, k, v = mha_setup
    mha = A.multi_head_attention(num_heads=2, qkv_size=8, out_size=7)
    params = mha.init(jax.random.key(5), 6, 5, 5)
    # Flax's MultiHeadDotProductAttention takes one key/value width (its inputs_k == inputs_v shape)
    v5 = jnp.concatenate([v, v[..., :2]], -1)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=7)
    fp = flax_mha.init(jax.random.key(0), q, k, v5)["params"]
    mapped = {n: {"kernel": fp[n]["kernel"].reshape(-1, 8), "bias": fp[n]["bias"].reshape(8)}
              for n in ("query", "key", "value")}
    mapped["out"] = {"kernel": fp["out"]["kernel"].reshape(8, 7), "bias": fp["out"]["bias"]}
    assert jax.tree.structure(mapped) == jax.tree.structure(params)
    mask = A.combine_masks(A.padding_mask(jnp.array([5, 3]), TK), A.causal_mask(TQ, TK, offset=1))
    want = jax.jit(flax_mha.apply)({"params": fp}, q, k, v5, mask=mask)
    np.testing.assert_allclose(mha.apply_jit(mapped, q, k, v5, mask=mask), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Bahdanau / Luong


def test_additive_attention_matches_formula_and_masks():
    att = A.additive_attention(hidden_size=5)
    params = att.init(jax.random.key(0), query_size=3, key_size=4)
    query, keys = randn(20, (B, 3)), randn(21, (B, TK, 4))
    mask = A.padding_mask(jnp.array([5, 2]), TK)[:, 0]                        # (B, 1, T)
    apply = jax.jit(att.apply)
    ctx, w = apply(params, query, keys, mask=mask)
    p = jax.tree.map(np.asarray, params)
    e = np.tanh((np.asarray(query) @ p["query"]["kernel"])[:, None] + np.asarray(keys) @ p["key"]["kernel"]
                + p["key"]["bias"]) @ p["energy"]["kernel"][:, 0]
    e = np.where(np.asarray(mask[:, 0]), e, -np.inf)
    want_w = np.exp(e - e.max(-1, keepdims=True))
    want_w /= want_w.sum(-1, keepdims=True)
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ctx, np.einsum("bt,bte->be", want_w, keys), rtol=1e-5, atol=1e-6)
    # all queries at once == one at a time; precomputed keys == on the fly
    qs = jnp.stack([query, 2 * query], 1)
    ctx_s, _ = apply(params, qs, keys, mask=mask, projected_keys=att.project_keys(params, keys))
    np.testing.assert_allclose(ctx_s[:, 0], ctx, rtol=1e-5, atol=1e-6)
    ctx0, w0 = apply(params, query, keys, mask=jnp.zeros((B, 1, TK), bool))
    np.testing.assert_array_equal(ctx0, 0.0)


@pytest.mark.parametrize("score", ["dot", "general"])
def test_luong_attention_matches_formula(score):
    att = A.luong_attention(score)
    params = att.init(jax.random.key(0), 4, 4)
    query, keys, values = randn(30, (B, 4)), randn(31, (B, TK, 4)), randn(32, (B, TK, 6))
    ctx, w = jax.jit(att.apply)(params, query, keys, values)
    qa = np.asarray(query) @ np.asarray(params["kernel"]) if score == "general" else np.asarray(query)
    e = np.einsum("be,bte->bt", qa, keys)
    want_w = np.exp(e - e.max(-1, keepdims=True))
    want_w /= want_w.sum(-1, keepdims=True)
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ctx, np.einsum("bt,btv->bv", want_w, values), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="keys and values must have the same"):
        att.apply(params, query, keys, values[:, :3])
    with pytest.raises(ValueError, match="score must be"):
        A.luong_attention("concat")


# ----------------------------------------------------------------------------- jit == no jit


class AttentionVariantsTest(chex.TestCase):
    """The SDPA paths and MHA, with and without jit (chex variants), against the NumPy formula."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("xla", "reference", "vjp", "jvp")
    def test_sdpa_matches_numpy(self, implementation):
        q, k, v = _qkv(7)
        mask, bias = _mask(), randn(8, (B, 1, TQ, TK))
        out = self.variant(functools.partial(A.scaled_dot_product_attention, implementation=implementation))(
            q, k, v, mask=mask, bias=bias)
        chex.assert_shape(out, (B, TQ, N, K))
        want, _ = _numpy_attention(q, k, v, mask, bias)
        chex.assert_trees_all_close(out, jnp.asarray(want, jnp.float32), rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mha_matches_per_head_numpy(self):
        mha = A.multi_head_attention(num_heads=2, qkv_size=8, out_size=7)
        params = mha.init(jax.random.key(0), query_size=6, key_size=5, value_size=3)
        q, k, v = randn(10, (B, TQ, 6)), randn(11, (B, TK, 5)), randn(12, (B, TK, 3))
        mask = A.padding_mask(jnp.array([5, 3]), TK)
        out = self.variant(mha.apply)(params, q, k, v, mask=mask)
        chex.assert_shape(out, (B, TQ, 7))
        want = _numpy_mha(params, q, k, v, mask)
        chex.assert_trees_all_close(out, jnp.asarray(want, jnp.float32), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- properties (hypothesis)


@functools.lru_cache(maxsize=None)
def _causal_grads(implementation):
    """d sum(out[:, i] * w) / d (q, k, v) under the causal mask, jitted once per path (i traced)."""
    def loss(q, k, v, w, i):
        out = A.scaled_dot_product_attention(q, k, v, mask=A.causal_mask(q.shape[1]),
                                             implementation=implementation)
        return jnp.sum(jax.lax.dynamic_index_in_dim(out, i, axis=1, keepdims=False) * w)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize("implementation", ["xla", "reference", "vjp"])
@settings(max_examples=max(3, settings.default.max_examples // 2))          # per implementation
@given(batch=st.sampled_from([2, 1]), steps=st.sampled_from([6, 3, 1]), heads=st.sampled_from([2, 1]),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_property_causal_attention_gets_no_gradient_from_the_future(implementation, batch, steps, heads, seed, data):
    """Under ``causal_mask``, output i has exactly zero gradient w.r.t. keys and values at j > i
    and w.r.t. every other query, and a non-zero one w.r.t. the values at j <= i."""
    i = data.draw(st.integers(0, steps - 1), label="i")
    q, k, v = (randn(seed + n, (batch, steps, heads, K)) for n in range(3))
    gq, gk, gv = (np.asarray(g) for g in _causal_grads(implementation)(q, k, v, randn(seed + 3, (batch, heads, K)), i))
    np.testing.assert_array_equal(gk[:, i + 1:], 0.0)
    np.testing.assert_array_equal(gv[:, i + 1:], 0.0)
    np.testing.assert_array_equal(np.delete(gq, i, axis=1), 0.0)
    assert (np.abs(gv[:, :i + 1]).sum(axis=(0, 2, 3)) > 0).all()
