"""seqjax.decoding: greedy, beam search and sampling over the decode protocol."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EOS, PAD, SOS, V

from seqjax import decoding, models
from seqjax import transformer as T


@pytest.fixture(scope="module")
def rnn_lm():
    model = models.recurrent_lm(models.RecurrentLMConfig(cell="gru", vocab_size=V, hidden_size=6,
                                                         embed_size=4, num_layers=2))
    return model, model.init(jax.random.key(5))


def test_beam_size_one_equals_greedy(seq2seq, lm):
    model, params, src, _ = seq2seq
    greedy = jax.jit(lambda p, s: decoding.greedy_decode(model, p, s, max_len=8, sos_id=SOS, eos_id=EOS))
    beam = jax.jit(lambda p, s: decoding.beam_search(model, p, s, beam_size=1, max_len=8, sos_id=SOS, eos_id=EOS))
    g = greedy(params, src)
    b, _ = beam(params, src)
    np.testing.assert_array_equal(b[:, 0], g)
    lm_model, lm_params = lm
    prompt = jnp.array([[3, 4], [5, 6]])
    g = jax.jit(lambda p, s: decoding.greedy_decode(lm_model, p, s, max_len=6, eos_id=EOS))(lm_params, prompt)
    b, _ = jax.jit(lambda p, s: decoding.beam_search(lm_model, p, s, beam_size=1, max_len=6, eos_id=EOS))(
        lm_params, prompt)
    np.testing.assert_array_equal(b[:, 0], g)


def test_greedy_matches_argmax_of_full_recomputation_and_pads_after_eos(seq2seq):
    model, params, src, _ = seq2seq
    g = np.asarray(jax.jit(lambda p, s: decoding.greedy_decode(model, p, s, max_len=6, sos_id=SOS, eos_id=EOS))(
        params, src))
    for b in range(src.shape[0]):
        seq = [SOS]
        for t in range(6):
            # fixed width (one compile): causality makes the trailing padding irrelevant
            tgt_in = jnp.array([seq + [PAD] * (6 - len(seq))])
            logits = np.array(model.apply_jit(params, src[b:b + 1], tgt_in))[0, len(seq) - 1]
            logits[PAD] = -np.inf
            nxt = int(np.argmax(logits))
            assert g[b, t] == nxt
            if nxt == EOS:
                assert (g[b, t + 1:] == PAD).all()
                break
            seq.append(nxt)


def _sequence_logprob(model, params, src, seqs):
    """log p(seq | src) for a batch of generated sequences (teacher forcing, pad banned)."""
    width = max(map(len, seqs))
    tgt_in = jnp.array([[SOS] + s[:-1] + [PAD] * (width - len(s)) for s in seqs])
    logits = model.apply_jit(params, jnp.repeat(src, len(seqs), 0), tgt_in)
    logp = np.asarray(jax.nn.log_softmax(logits.at[..., PAD].set(-jnp.inf), -1))
    return np.array([sum(logp[i, t, tok] for t, tok in enumerate(s)) for i, s in enumerate(seqs)])


def test_wide_beam_finds_the_exhaustive_optimum_with_length_penalty():
    """With W = V - 1 (pad banned) every first token is kept, so at max_len=2 the last step
    scores every candidate sequence: beam search is exhaustive and its best must be the argmax."""
    vocab, max_len, alpha = 5, 2, 0.8
    cfg = T.TransformerConfig(vocab, vocab, model_size=8, num_heads=2, ff_size=16, num_encoder_layers=1,
                              num_decoder_layers=1, max_len=6)
    model = T.transformer(cfg)
    params = model.init(jax.random.key(11))
    # sharpen the output so EOS competes with long sequences
    params["output"]["bias"] = params["output"]["bias"].at[EOS].set(1.5)
    src = jnp.array([[3, 4, 3]])
    tokens = [t for t in range(vocab) if t != PAD]
    cands = []
    for n in range(1, max_len + 1):
        for prefix in itertools.product([t for t in tokens if t != EOS], repeat=n - 1):
            cands += [list(prefix) + [t] for t in (tokens if n == max_len else [EOS])]
    cands = [c + [PAD] * (max_len - len(c)) for c in cands]
    # score each candidate on its own (unpadded) tokens
    real = [[t for t in c if t != PAD] for c in cands]
    logp = _sequence_logprob(model, params, src, real)
    scores = [lp / ((5 + len(r)) / 6) ** alpha for lp, r in zip(logp, real)]
    best = cands[int(np.argmax(scores))]
    toks, sc = jax.jit(lambda p, s: decoding.beam_search(model, p, s, beam_size=vocab - 1, max_len=max_len,
                                                  sos_id=SOS, eos_id=EOS, length_penalty=alpha))(params, src)
    assert list(np.asarray(toks[0, 0])) == best
    assert float(sc[0, 0]) == pytest.approx(max(scores), abs=1e-4)
    assert np.all(np.diff(np.asarray(sc[0])) <= 1e-6)                         # best first


def test_beam_wider_than_the_emittable_tokens_is_refused(seq2seq):
    model, params, src, _ = seq2seq
    with pytest.raises(ValueError, match=r"beam_size=7 exceeds the 6 tokens .*pad_id=0"):
        decoding.beam_search(model, params, src, beam_size=V, max_len=4, sos_id=SOS, eos_id=EOS)
    with pytest.raises(ValueError, match=r"beam_size=8 exceeds the 7 tokens"):
        decoding.beam_search(model, params, src, beam_size=V + 1, max_len=4, sos_id=SOS, eos_id=EOS, pad_id=None)


def test_bad_decode_arguments_name_the_argument(seq2seq, lm):
    model, params, src, _ = seq2seq
    with pytest.raises(ValueError, match=r"max_len must be >= 1, got 0"):
        decoding.greedy_decode(model, params, src, max_len=0, sos_id=SOS, eos_id=EOS)
    with pytest.raises(ValueError, match="max_len=20 decoding"):
        decoding.greedy_decode(model, params, src, max_len=20, sos_id=SOS, eos_id=EOS)
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        decoding.beam_search(model, params, src, beam_size=0, max_len=4, sos_id=SOS, eos_id=EOS)
    with pytest.raises(ValueError, match="eos_id must be a token id"):
        decoding.greedy_decode(model, params, src, max_len=4, sos_id=SOS, eos_id=V)
    with pytest.raises(ValueError, match="sos_id is required"):
        decoding.greedy_decode(model, params, src, max_len=4, eos_id=EOS)
    with pytest.raises(ValueError, match="neither sos_id nor src_lengths"):
        decoding.greedy_decode(lm[0], lm[1], src, max_len=4, sos_id=SOS, eos_id=EOS)
    with pytest.raises(TypeError, match="decode protocol"):
        decoding.greedy_decode(T.encoder(T.StackConfig(8, 2, 16, 1)), params, src, max_len=4, eos_id=EOS)
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0.0"):
        decoding.sample(lm[0], lm[1], src, jax.random.key(0), max_len=4, temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 7\]"):
        decoding.sample(lm[0], lm[1], src, jax.random.key(0), max_len=4, top_k=8)
    with pytest.raises(TypeError, match="key must be a jax PRNG key"):
        decoding.sample(lm[0], lm[1], src, 0, max_len=4)


def test_eos_equal_to_pad_stops_decoding(seq2seq):
    """eos_id == pad_id: the stop token is generated (not banned) and fills after itself."""
    model, params, src, _ = seq2seq
    # make the stop token the model's favourite everywhere
    params = dict(params, output=dict(params["output"], bias=params["output"]["bias"].at[0].set(50.0)))
    g = decoding.greedy_decode(model, params, src, max_len=5, sos_id=SOS, eos_id=0, pad_id=0)
    np.testing.assert_array_equal(g, 0)
    b, _ = decoding.beam_search(model, params, src, beam_size=2, max_len=5, sos_id=SOS, eos_id=0, pad_id=0)
    np.testing.assert_array_equal(b[:, 0], 0)


def test_sampling_at_temperature_zero_and_top_k_one_are_greedy(seq2seq, lm, rnn_lm):
    prompt = jnp.array([[3, 4], [5, 6]])
    for model, params, inputs, kw in ((seq2seq[0], seq2seq[1], seq2seq[2], {"sos_id": SOS}),
                                      (lm[0], lm[1], prompt, {}), (rnn_lm[0], rnn_lm[1], prompt, {})):
        g = decoding.greedy_decode(model, params, inputs, max_len=6, eos_id=EOS, pad_id=PAD, **kw)
        s0 = decoding.sample(model, params, inputs, jax.random.key(1), max_len=6, temperature=0.0,
                             eos_id=EOS, pad_id=PAD, **kw)
        s1 = decoding.sample(model, params, inputs, jax.random.key(2), max_len=6, top_k=1, eos_id=EOS,
                             pad_id=PAD, **kw)
        np.testing.assert_array_equal(s0, g)
        np.testing.assert_array_equal(s1, g)


def test_sampling_follows_the_distribution_and_is_a_function_of_the_key(rnn_lm):
    """The first sampled token's frequencies match softmax(logits / temperature)."""
    model, params = rnn_lm
    prompt = jnp.tile(jnp.array([[3, 4]]), (4000, 1))
    draw = jax.jit(lambda k, t: decoding.sample(model, params, prompt, k, max_len=1, temperature=t))
    first = np.asarray(draw(jax.random.key(0), 1.5))[:, 0]
    logits, _ = model.apply(params, prompt[:1])
    want = np.asarray(jax.nn.softmax(logits[0, -1] / 1.5))
    freq = np.bincount(first, minlength=V) / first.size
    np.testing.assert_allclose(freq, want, atol=0.03)
    np.testing.assert_array_equal(draw(jax.random.key(0), 1.5), draw(jax.random.key(0), 1.5))
    assert not np.array_equal(draw(jax.random.key(0), 1.5), draw(jax.random.key(1), 1.5))


def test_recurrent_lm_decodes_like_its_own_apply(rnn_lm):
    """Greedy decoding through the protocol equals argmax over full recomputation."""
    model, params = rnn_lm
    prompt = jnp.array([[3, 4, 5]])
    g = np.asarray(decoding.greedy_decode(model, params, prompt, max_len=5, eos_id=EOS, pad_id=None))[0]
    seq = [3, 4, 5]
    for t in range(5):
        logits, _ = model.apply(params, jnp.array([seq]))
        nxt = int(jnp.argmax(logits[0, -1]))
        assert g[t] == nxt
        if nxt == EOS:
            assert (g[t + 1:] == EOS).all()
            break
        seq.append(nxt)
    b, _ = decoding.beam_search(model, params, prompt, beam_size=1, max_len=5, eos_id=EOS, pad_id=None)
    np.testing.assert_array_equal(b[0, 0], g)
