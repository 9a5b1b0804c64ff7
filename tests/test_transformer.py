"""seqjax.transformer: blocks, models and cached decoding steps; the decoder-only model's
causality over random lengths and positions (hypothesis)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import V, randint, randn
from hypothesis import given
from hypothesis import strategies as st

from seqjax import attention as A
from seqjax import layers
from seqjax import transformer as T


def _cfg(norm_first=False, **kw):
    base = dict(model_size=8, num_heads=2, ff_size=16, num_encoder_layers=2, num_decoder_layers=2,
                max_len=12, norm_first=norm_first)
    base.update(kw)
    return T.TransformerConfig(V, V, **base)


# ----------------------------------------------------------------------------- pieces


def test_sinusoidal_table_matches_vaswani_formula(x64):
    table = np.asarray(T.sinusoidal_table(7, 6, jnp.float64))
    for p, i in itertools.product(range(7), range(3)):
        assert table[p, 2 * i] == pytest.approx(np.sin(p / 10000 ** (2 * i / 6)), abs=1e-14)
        assert table[p, 2 * i + 1] == pytest.approx(np.cos(p / 10000 ** (2 * i / 6)), abs=1e-14)
    pe = T.positional_encoding("sinusoidal", 7, 6)
    x = jnp.zeros((1, 3, 6), jnp.float64)
    np.testing.assert_array_equal(pe.apply({}, x, 2)[0], table[2:5])


def test_pre_ln_with_zeroed_branches_is_the_identity():
    """Pre-LN with zeroed residual branches is the identity map (and Jacobian): every block adds 0."""
    for norm_first in (True, False):
        cfg = T.StackConfig(model_size=8, num_heads=2, ff_size=16, num_layers=2, norm_first=norm_first)
        enc = T.encoder(cfg)
        params = enc.init(jax.random.key(0))
        for p in params["layers"]:
            p["self_attn"]["out"] = jax.tree.map(jnp.zeros_like, p["self_attn"]["out"])
            p["ff"]["linear2"] = jax.tree.map(jnp.zeros_like, p["ff"]["linear2"])
        x = randn(1, (2, 5, 8))
        y = enc.apply_jit(params, x)
        want = x
        if not norm_first:
            for _ in range(2):
                want = layers.layer_norm({"scale": jnp.ones(8), "bias": jnp.zeros(8)}, want)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        if norm_first:
            jac = jax.jit(jax.jacobian(lambda v: enc.apply(params, v.reshape(1, 5, 8)).reshape(-1)))(
                x[:1].reshape(-1))
            np.testing.assert_allclose(jac, np.eye(40), atol=1e-6)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="model_size must be >= 1"):
        T.StackConfig(model_size=0)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        T.StackConfig(num_layers=-1)
    with pytest.raises(ValueError, match="num_heads=3 must divide model_size=8"):
        T.StackConfig(model_size=8, num_heads=3)
    with pytest.raises(ValueError, match="src_vocab_size must be >= 1"):
        T.TransformerConfig(0, 5)
    with pytest.raises(ValueError, match="ff_size must be >= 1"):
        T.DecoderOnlyConfig(5, ff_size=0)
    with pytest.raises(ValueError, match="activation"):
        T.StackConfig(activation="swish")
    with pytest.raises(ValueError, match="dropout"):
        T.TransformerConfig(5, 5, dropout=1.5)


# ----------------------------------------------------------------------------- models


def test_jit_equals_no_jit(both):
    model, params, src, tgt = both
    lengths = jnp.array([6, 4, 2])
    np.testing.assert_allclose(model.apply_jit(params, src, tgt, src_lengths=lengths),
                               model.apply(params, src, tgt, src_lengths=lengths), rtol=1e-5, atol=1e-5)


def test_decoder_causality_through_gradients():
    cfg = T.StackConfig(model_size=8, num_heads=2, ff_size=16, num_layers=2, norm_first=True, final_norm=True)
    dec = T.decoder(cfg)
    params = dec.init(jax.random.key(0))
    x = randn(1, (2, 5, 8))
    mem = randn(2, (2, 4, 8))
    grad = jax.jit(jax.grad(lambda x, i: jnp.sum(dec.apply(params, x, mem, tgt_mask=A.causal_mask(5))[:, i] ** 2)))
    for i in range(5):
        g = grad(x, i)
        np.testing.assert_array_equal(g[:, i + 1:], 0.0)                  # no gradient from the future
        assert np.abs(np.asarray(g[:, : i + 1])).min(axis=-1).max() > 0


def test_model_causality_and_source_padding_invariance(seq2seq):
    model, params, src, tgt = seq2seq
    lengths = jnp.array([6, 4, 2])
    base = model.apply_jit(params, src, tgt, src_lengths=lengths)
    # changing target token j changes no logit before j
    for j in range(1, 5):
        moved = model.apply_jit(params, src, tgt.at[:, j].set((tgt[:, j] + 1) % V), src_lengths=lengths)
        np.testing.assert_allclose(moved[:, :j], base[:, :j], rtol=1e-6, atol=1e-6)
        assert np.abs(np.asarray(moved[:, j:] - base[:, j:])).max() > 1e-4
    # changing padded source tokens changes nothing
    src2 = src.at[1, 4:].set(3).at[2, 2:].set(4)
    np.testing.assert_array_equal(model.apply_jit(params, src2, tgt, src_lengths=lengths), base)


def test_encoder_padding_invariance_through_gradients():
    cfg = T.StackConfig(model_size=8, num_heads=2, ff_size=16, num_layers=2)
    enc = T.encoder(cfg)
    params = enc.init(jax.random.key(0))
    x = randn(1, (2, 5, 8))
    mask = A.padding_mask(jnp.array([5, 3]), 5)
    g = jax.grad(lambda x: jnp.sum(enc.apply(params, x, mask=mask)[1, :3] ** 2))(x)
    np.testing.assert_array_equal(g[1, 3:], 0.0)
    assert np.abs(np.asarray(g[1, :3])).min() > 0


def test_models_send_structured_masks_to_the_fused_kernel(seq2seq, lm, monkeypatch):
    """On GPU/TPU every model's causal and padding masks reach jax.nn.dot_product_attention as
    is_causal and key_value_seq_lengths, never as a dense mask (which cuDNN's flash kernel would
    need materialised as a bias). The backend is faked so the fast path is taken on CPU."""
    calls = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, mask=None, **kw):
        calls.append((mask is None and bias is None, kw["is_causal"], kw["key_value_seq_lengths"] is not None))
        return real(q, k, v, bias=bias, mask=mask, **kw)
    monkeypatch.setattr(A.jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(A.jax, "default_backend", lambda: "gpu")
    model, params, src, tgt = seq2seq
    fast = model.apply(params, src, tgt, src_lengths=jnp.array([6, 4, 2]))
    layers_ = len(params["encoder"]["layers"])
    # encoder self-attention: lengths; decoder self-attention: causal; cross-attention: lengths
    assert calls == [(True, False, True)] * layers_ + [(True, True, False), (True, False, True)] * layers_, calls
    calls.clear()
    lm_model, lm_params = lm
    lm_model.apply(lm_params, randint(4, (2, 7), 0, V))
    assert calls and all(c == (True, True, False) for c in calls), calls
    monkeypatch.undo()
    np.testing.assert_allclose(fast, model.apply(params, src, tgt, src_lengths=jnp.array([6, 4, 2])),
                               rtol=1e-4, atol=1e-5)


def test_dropout_only_with_a_key(seq2seq):
    _, _, src, tgt = seq2seq
    m = T.transformer(_cfg(dropout=0.3))
    p = m.init(jax.random.key(0))
    a = m.apply_jit(p, src, tgt)
    np.testing.assert_array_equal(a, m.apply_jit(p, src, tgt))
    # an rbg key: threefry bits at every dropout site make XLA:CPU compiles slow
    b = m.apply_jit(p, src, tgt, dropout_key=jax.random.key(1, impl="rbg"))
    assert np.abs(np.asarray(a - b)).max() > 1e-3


# ----------------------------------------------------------------------------- decoding


def test_kv_cache_equals_full_recomputation(both):
    model, params, src, tgt = both
    lengths = jnp.array([6, 4, 2])
    full = model.apply_jit(params, src, tgt, src_lengths=lengths)
    state = model.init_decode(params, src, 5, src_lengths=lengths)
    step = jax.jit(model.decode_step)
    logits = []
    for t in range(2):                                                       # one token at a time
        out, state = step(params, state, tgt[:, t])
        logits.append(out[:, None])
    out, state = step(params, state, tgt[:, 2:])                            # then a chunk of three
    logits.append(out)
    np.testing.assert_allclose(jnp.concatenate(logits, 1), full, rtol=1e-5, atol=1e-5)
    assert int(state.index) == 5


def test_lm_kv_cache_equals_full_recomputation_and_causality(lm):
    model, params = lm
    toks = randint(4, (2, 9), 0, V)
    full = model.apply_jit(params, toks)
    state = model.init_decode(params, 2, 9)
    prefill, state = model.decode_step(params, state, toks[:, :4])
    outs = [prefill]
    step = jax.jit(model.decode_step)
    for t in range(4, 9):
        out, state = step(params, state, toks[:, t])
        outs.append(out[:, None])
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)
    moved = model.apply_jit(params, toks.at[:, 6].set((toks[:, 6] + 1) % V))
    np.testing.assert_allclose(moved[:, :6], full[:, :6], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_argument(seq2seq, lm):
    model, params, src, tgt = seq2seq
    with pytest.raises(ValueError, match=r"src must lie in \[0, vocab_size\) = \[0, 7\)"):
        model.apply(params, src.at[0, 0].set(V), tgt)
    with pytest.raises(ValueError, match="tgt_in must lie in"):
        model.apply(params, src, tgt.at[0, 0].set(-1))
    with pytest.raises(TypeError, match="src must be integer token ids"):
        model.apply(params, src.astype(jnp.float32), tgt)
    with pytest.raises(ValueError, match="tokens must lie in"):
        lm[0].apply(lm[1], jnp.array([[V + 3]]))
    with pytest.raises(ValueError, match="tgt_mask of shape"):
        T.decoder(T.StackConfig(8, 2, 16, 1)).apply(
            T.decoder(T.StackConfig(8, 2, 16, 1)).init(jax.random.key(0)), jnp.zeros((1, 3, 8)),
            jnp.zeros((1, 4, 8)), tgt_mask=jnp.ones((4, 4), bool))


def test_decoding_past_the_kv_cache_or_the_positions_raises(seq2seq, lm):
    model, params = lm                                                      # max_len=12
    # a full cache (decoding up to its length is checked against recomputation above)
    state = model.init_decode(params, 2, 4)._replace(index=jnp.asarray(4, jnp.int32))
    with pytest.raises(ValueError, match=r"state.index=4 need 5 positions, more than the KV cache length 4"):
        model.decode_step(params, state, jnp.zeros((2,), jnp.int32))
    s2s, s2s_params, src, _ = seq2seq
    s2s_state = T.DecodeState(T.decoder(s2s.config.stack(2)).init_cache(3, 2), None, None,
                              jnp.asarray(0, jnp.int32))                    # the check precedes the memory
    with pytest.raises(ValueError, match="need 3 positions, more than the KV cache length 2"):
        s2s.decode_step(s2s_params, s2s_state, jnp.zeros((3, 3), jnp.int32))
    # a hand-built cache longer than the positional table stops at the table
    long_cache = T.encoder(model.config.stack()).init_cache(2, 16)
    state = T.DecodeState(long_cache, (), None, jnp.asarray(11, jnp.int32))
    with pytest.raises(ValueError, match=r"offset=11 with sequence length 2 .* max_len=12"):
        model.decode_step(params, state, jnp.zeros((2, 2), jnp.int32))
    pe = T.positional_encoding("sinusoidal", 4, 8)
    x = jnp.zeros((1, 2, 8))
    np.testing.assert_array_equal(pe.apply({}, x, 2), T.sinusoidal_table(4, 8)[None, 2:4])
    for offset in (3, jnp.int32(3), -1):
        with pytest.raises(ValueError, match="outside the positional encoding's max_len=4"):
            pe.apply({}, x, offset)


# ----------------------------------------------------------------------------- properties (hypothesis)


@functools.lru_cache(maxsize=None)
def _position_grads(model):
    """d sum(logits[:, i] * w) / d (the learned position table), jitted once per length (i traced).

    Row j of the table is added to every sequence's input at position j, so its gradient is
    the gradient from input position j (summed over the batch): a continuous handle on a
    token model's inputs."""
    def loss(params, tokens, w, i):
        logits = model.apply(params, tokens)
        return jnp.sum(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False) * w)
    return jax.jit(lambda params, tokens, w, i: jax.grad(loss)(params, tokens, w, i)["pos"]["embedding"])


@given(steps=st.sampled_from([12, 5, 1]), seed=st.integers(0, 2 ** 16), data=st.data())
def test_property_decoder_only_gets_no_gradient_from_the_future(lm, steps, seed, data):
    """The decoder-only LM: logits at position i have exactly zero gradient from input positions
    j > i (and from unused positions j >= T), and a non-zero one from every j <= i."""
    model, params = lm
    assert model.config.positional == "learned"
    i = data.draw(st.integers(0, steps - 1), label="i")
    tokens = randint(seed, (2, steps), 0, V)
    g = np.asarray(_position_grads(model)(params, tokens, randn(seed + 1, (2, V)), i))          # (max_len, D)
    np.testing.assert_array_equal(g[i + 1:], 0.0)
    assert (np.abs(g[:i + 1]).sum(axis=-1) > 0).all()
