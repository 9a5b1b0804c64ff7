"""seqjax.seq2seq: the RNN encoder-decoder with attention, through its maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randint

from seqjax import decoding, seq2seq, tasks

PAD, SOS, EOS = tasks.PAD, tasks.SOS, tasks.EOS
V = 9


def _model(attention="general", cell="lstm", bidirectional=True, num_layers=2, **kw):
    cfg = seq2seq.Seq2SeqConfig(V, V, embed_size=6, hidden_size=8, cell=cell, num_layers=num_layers,
                                bidirectional=bidirectional, attention=attention, **kw)
    model = seq2seq.seq2seq(cfg)
    return model, model.init(jax.random.key(0))


CONFIGS = [("general", "lstm", True), ("additive", "gru", True), ("dot", "rnn_tanh", False),
           ("none", "lstm", True), ("general", "gru", False)]
IDS = [f"{a}-{c}-{'bi' if b else 'uni'}" for a, c, b in CONFIGS]


@pytest.fixture(scope="module", params=CONFIGS, ids=IDS)
def model(request):
    attention, cell, bi = request.param
    return _model(attention, cell, bi)


SRC = randint(1, (3, 6), 3, V)
LENGTHS = jnp.array([6, 3, 4])
TGT = randint(2, (3, 5), 3, V).at[:, 0].set(SOS)


def test_teacher_forcing_equals_step_by_step_decoding_on_the_gold_prefix(model):
    m, p = model
    logits, weights = m.apply(p, SRC, TGT, src_lengths=LENGTHS, return_attention=True)
    state = m.encode(p, SRC, src_lengths=LENGTHS)
    for s in range(TGT.shape[1]):
        step_logits, state = m.decode_step(p, state, TGT[:, s])
        np.testing.assert_allclose(step_logits, logits[:, s], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.weights, weights[:, s], rtol=1e-5, atol=1e-6)


def test_attention_weights_sum_to_one_over_valid_positions_and_are_zero_on_padding(model):
    m, p = model
    _, w = m.apply(p, SRC, TGT, src_lengths=LENGTHS, return_attention=True)      # (B, S, T)
    valid = np.arange(SRC.shape[1])[None, :] < np.asarray(LENGTHS)[:, None]
    w = np.asarray(w)
    if m.config.attention == "none":
        np.testing.assert_array_equal(w, 0.0)
        return
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(w * ~valid[:, None, :], 0.0)


def test_padded_source_tokens_cannot_change_any_logit(model):
    """By value (other pad contents) and through gradients (the embedding row of a token
    that appears only in padding gets exactly zero gradient)."""
    m, p = model
    apply = jax.jit(m.apply)                                  # one compilation, not one per primitive
    base = apply(p, SRC, TGT, src_lengths=LENGTHS)
    pad_pos = np.arange(SRC.shape[1])[None, :] >= np.asarray(LENGTHS)[:, None]
    other = jnp.where(pad_pos, (SRC + 1) % V, SRC)
    np.testing.assert_allclose(apply(p, other, TGT, src_lengths=LENGTHS), base, rtol=1e-6, atol=1e-6)
    only_in_pad = V - 1
    src = jnp.where(pad_pos, only_in_pad, jnp.minimum(SRC, V - 2))
    g = jax.jit(jax.grad(lambda q: jnp.sum(m.apply(q, src, TGT, src_lengths=LENGTHS) ** 2)))(p)
    np.testing.assert_array_equal(g["src_embed"]["embedding"][only_in_pad], 0.0)
    assert np.abs(np.asarray(g["src_embed"]["embedding"][3])).sum() > 0


def test_logits_at_s_do_not_depend_on_later_target_inputs(model):
    m, p = model
    base = m.apply(p, SRC, TGT, src_lengths=LENGTHS)
    for s in range(TGT.shape[1] - 1):
        moved = TGT.at[:, s + 1:].set((TGT[:, s + 1:] + 1) % V)
        out = m.apply(p, SRC, moved, src_lengths=LENGTHS)
        np.testing.assert_allclose(out[:, :s + 1], base[:, :s + 1], rtol=1e-6, atol=1e-6)
        assert not np.allclose(out[:, s + 1:], base[:, s + 1:])


def test_greedy_is_the_teacher_forced_argmax_of_its_own_prefix_and_beam_one_is_greedy(model):
    m, p = model
    g = np.asarray(jax.jit(lambda q, s, n: decoding.greedy_decode(
        m, q, s, max_len=6, eos_id=EOS, sos_id=SOS, src_lengths=n))(p, SRC, LENGTHS))
    apply = jax.jit(m.apply)                 # one compilation per prefix length, not one per primitive
    for b in range(SRC.shape[0]):
        seq = [SOS]
        for t in range(6):
            logits = np.array(apply(p, SRC[b:b + 1], jnp.array([seq]), src_lengths=LENGTHS[b:b + 1]))
            logits = logits[0, -1]
            logits[PAD] = -np.inf
            nxt = int(np.argmax(logits))
            assert g[b, t] == nxt
            if nxt == EOS:
                assert (g[b, t + 1:] == PAD).all()
                break
            seq.append(nxt)
    beams, _ = jax.jit(lambda q, s, n: decoding.beam_search(m, q, s, beam_size=1, max_len=6, eos_id=EOS,
                                                            sos_id=SOS, src_lengths=n))(p, SRC, LENGTHS)
    np.testing.assert_array_equal(beams[:, 0], g)


def test_bidirectional_multilayer_encoder_respects_lengths():
    """A sequence's result does not depend on the batch it is padded into."""
    m, p = _model("general", "lstm", True, num_layers=2)
    alone = m.apply(p, SRC[1:2, :3], TGT[1:2])
    padded = m.apply(p, SRC, TGT, src_lengths=LENGTHS)[1:2]
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-5)


def test_scheduled_sampling_at_rate_one_feeds_the_models_own_argmax():
    m, p = _model("general", "gru", False, num_layers=1)
    key = jax.random.key(3)
    sampled = m.apply(p, SRC, TGT, src_lengths=LENGTHS, sampling_rate=1.0, sampling_key=key)
    # equivalent: feed, at each step s >= 1, the argmax of step s-1
    state = m.encode(p, SRC, src_lengths=LENGTHS)
    tok = TGT[:, 0]
    for s in range(TGT.shape[1]):
        logits, state = m.decode_step(p, state, tok)
        np.testing.assert_allclose(logits, sampled[:, s], rtol=1e-5, atol=1e-5)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
    np.testing.assert_allclose(m.apply(p, SRC, TGT, src_lengths=LENGTHS, sampling_rate=0.0),
                               m.apply(p, SRC, TGT, src_lengths=LENGTHS), rtol=0, atol=0)


def test_dropout_only_with_a_key():
    m, p = _model("additive", "lstm", True, dropout=0.5)
    a = m.apply(p, SRC, TGT, src_lengths=LENGTHS)
    np.testing.assert_array_equal(a, m.apply(p, SRC, TGT, src_lengths=LENGTHS))
    d = m.apply(p, SRC, TGT, src_lengths=LENGTHS, dropout_key=jax.random.key(1))
    assert not np.allclose(a, d)


def test_jit_equals_no_jit():
    m, p = _model()
    np.testing.assert_allclose(m.apply_jit(p, SRC, TGT, src_lengths=LENGTHS),
                               m.apply(p, SRC, TGT, src_lengths=LENGTHS), rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="Seq2SeqConfig.cell must be one of"):
        seq2seq.Seq2SeqConfig(V, V, cell="transformer")
    with pytest.raises(ValueError, match="Seq2SeqConfig.attention must be one of"):
        seq2seq.Seq2SeqConfig(V, V, attention="multiplicative")
    with pytest.raises(ValueError, match="attention='dot' needs .* use attention='general'"):
        seq2seq.Seq2SeqConfig(V, V, attention="dot", bidirectional=True)
    m, p = _model()
    with pytest.raises(ValueError, match=r"src must lie in \[0, vocab_size\)"):
        m.apply(p, SRC.at[0, 0].set(V), TGT)
    with pytest.raises(ValueError, match=r"tgt_in must lie in \[0, vocab_size\)"):
        m.apply(p, SRC, TGT.at[0, 0].set(-1))
    with pytest.raises(ValueError, match=r"tgt_in must have shape \(B, T\)"):
        m.apply(p, SRC, TGT[0])
    for bad in (jnp.array([0, 3, 4]), jnp.array([7, 3, 4])):
        with pytest.raises(ValueError, match=r"src_lengths must lie in \[1, T\] = \[1, 6\]"):
            m.apply(p, SRC, TGT, src_lengths=bad)
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        decoding.greedy_decode(m, p, SRC, max_len=0, eos_id=EOS, sos_id=SOS)
    for name in ("eos_id", "sos_id", "pad_id"):
        ids = {"eos_id": EOS, "sos_id": SOS, "pad_id": PAD, name: V}
        with pytest.raises(ValueError, match=f"{name} must be a token id in"):
            decoding.greedy_decode(m, p, SRC, max_len=3, **ids)
    with pytest.raises(ValueError, match=f"beam_size={V} exceeds the {V - 1} tokens"):
        decoding.beam_search(m, p, SRC, beam_size=V, max_len=3, eos_id=EOS, sos_id=SOS)
    with pytest.raises(ValueError, match="sampling_rate=0.5 needs sampling_key"):
        m.apply(p, SRC, TGT, sampling_rate=0.5)


@pytest.mark.slow
def test_learns_reversal_of_length_8():
    """An attention seq2seq learns to reverse strings of length 8 (>= 95% exact match)."""
    from seqjax import losses, train
    cfg = seq2seq.Seq2SeqConfig(11, 11, embed_size=32, hidden_size=64, cell="gru", bidirectional=True,
                                attention="general")
    m = seq2seq.seq2seq(cfg)

    def loss_fn(params, batch, key):
        logits = m.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths, dropout_key=key)
        return losses.cross_entropy(logits, batch.tgt_out, ignore_id=PAD), {}

    tr = train.trainer(loss_fn, train.make_optimizer("adam", 3e-3), clip_norm=1.0)
    state = tr.init(m.init(jax.random.key(0)), jax.random.key(1))
    test = tasks.seq2seq_reverse(jax.random.key(99), 256, length=8, min_length=8)   # held out

    @jax.jit
    def train_200_steps(state, first):                  # 200 steps in one lax.scan: no per-step dispatch
        def body(st, i):
            st, _ = tr.train_step(st, tasks.seq2seq_reverse(jax.random.fold_in(jax.random.key(2), i), 64, length=8))
            return st, None
        return jax.lax.scan(body, state, first + jnp.arange(200))[0]

    @jax.jit
    def exact_match(params):
        out = decoding.greedy_decode(m, params, test.src, max_len=test.tgt_out.shape[1], eos_id=EOS,
                                     sos_id=SOS, src_lengths=test.src_lengths)
        return jnp.mean(jnp.all(out == test.tgt_out, axis=1))

    exact = []                                           # checked every 200 steps, up to 1,200
    for first in range(0, 1200, 200):
        state = train_200_steps(state, first)
        exact.append(float(exact_match(state.params)))
        if exact[-1] >= 0.95:
            break
    assert exact[-1] >= 0.95, exact
