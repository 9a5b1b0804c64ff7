"""seqjax.models: input checks at the public apply boundary, many-to-one readout, bad configs,
the recurrent LM's carry threading, and the conditioned decoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, draw_lengths, parity_setup, poison_padding, randn
from hypothesis import given, settings
from hypothesis import strategies as st

from seqjax import cells, models, tasks

V = 5
KEY = jax.random.key(0)
CONFIGS = {
    "rnn": lambda: models.sequence_model(models.SequenceModelConfig(
        cell="gru", hidden_size=3, vocab_size=V, embed_size=2)),
    "transformer": lambda: models.transformer_sequence_model(models.TransformerSequenceConfig(
        vocab_size=V, model_size=4, num_heads=1, ff_size=4, num_layers=1, max_len=4)),
    "lm": lambda: models.recurrent_lm(models.RecurrentLMConfig(
        cell="gru", vocab_size=V, hidden_size=3, embed_size=2)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_models_check_ids_and_array_inputs(name):
    model = CONFIGS[name]()
    params = model.init(KEY)
    arg = "tokens" if name == "lm" else "x"
    ok = jnp.array([[0, V - 1, 2]], jnp.int32)
    out = model.apply(params, ok)
    out = out[0] if name == "lm" else out
    assert np.isfinite(np.asarray(out)).all()
    # a gather would clamp V to V - 1 (and wrap -1) silently: refuse out-of-range ids
    for bad in (ok.at[0, 1].set(V), ok.at[0, 0].set(-1)):
        with pytest.raises(ValueError, match=rf"{arg} must lie in \[0, vocab_size\) = \[0, {V}\)"):
            model.apply(params, bad)
    with pytest.raises(TypeError, match=rf"{arg} must be an array .*got list"):
        model.apply(params, [[0, 1, 2]])
    with pytest.raises(TypeError, match=f"{arg} must be integer token ids"):
        model.apply(params, ok.astype(jnp.float32))
    with pytest.raises(ValueError, match=rf"{arg} must have shape \(B, T\)"):
        model.apply(params, ok[0])


def test_float_input_model_rejects_non_arrays():
    model = models.sequence_model(models.SequenceModelConfig(cell="gru", hidden_size=3, input_size=2))
    with pytest.raises(TypeError, match="x must be an array .*got NoneType"):
        model.apply(model.init(KEY), None)


# ----------------------------------------------------------------------------- conditioned decoder

PAD, SOS, EOS = 0, 1, 2
COND_E, COND_V = 5, 9


def _conditioned(cell="lstm", num_layers=2):
    model = models.conditioned_decoder(models.ConditionedDecoderConfig(
        COND_E, COND_V, cell=cell, hidden_size=8, embed_size=4, num_layers=num_layers))
    return model, model.init(jax.random.key(1))


FEATURES = jnp.asarray(np.random.default_rng(0).standard_normal((3, COND_E)), jnp.float32)
TGT_IN = jnp.asarray(np.random.default_rng(1).integers(3, COND_V, (3, 5)), jnp.int32).at[:, 0].set(SOS)


@pytest.mark.parametrize("cell,num_layers", [("lstm", 2), ("gru", 1), ("rnn_tanh", 2)])
def test_conditioned_decoder_step_decoding_equals_teacher_forcing(cell, num_layers):
    model, params = _conditioned(cell, num_layers)
    logits = model.apply(params, FEATURES, TGT_IN)                            # (B, S, V)
    step_logits, state = model.start(params, FEATURES, TGT_IN.shape[1], sos_id=SOS)
    np.testing.assert_allclose(step_logits, logits[:, 0], rtol=1e-5, atol=1e-6)
    for s in range(1, TGT_IN.shape[1]):
        step_logits, state = model.decode_step(params, state, TGT_IN[:, s])
        np.testing.assert_allclose(step_logits, logits[:, s], rtol=1e-5, atol=1e-6)


def test_conditioned_decoder_output_depends_on_the_features_only_through_the_initial_state():
    model, params = _conditioned()
    a = model.apply(params, FEATURES, TGT_IN)
    b = model.apply(params, FEATURES[::-1], TGT_IN)
    assert not np.allclose(a, b)
    # each row depends on its own features only (batched == per-example)
    for i in range(FEATURES.shape[0]):
        np.testing.assert_allclose(model.apply(params, FEATURES[i:i + 1], TGT_IN[i:i + 1]), a[i:i + 1],
                                   rtol=1e-5, atol=1e-6)


def test_conditioned_decoder_greedy_is_the_argmax_of_its_own_prefix():
    from seqjax import decoding
    model, params = _conditioned()
    # sharpen the head so that greedy decodes differ per example and sometimes stop
    params = {**params, "head": {**params["head"], "kernel": params["head"]["kernel"] * 8.0}}
    g = np.asarray(jax.jit(lambda p, f: decoding.greedy_decode(model, p, f, max_len=6, eos_id=EOS,
                                                               sos_id=SOS, pad_id=PAD))(params, FEATURES))
    for b in range(FEATURES.shape[0]):
        seq = [SOS]
        for t in range(6):
            logits = np.array(model.apply(params, FEATURES[b:b + 1], jnp.array([seq], jnp.int32)))[0, -1]
            logits[PAD] = -np.inf
            nxt = int(np.argmax(logits))
            assert g[b, t] == nxt
            if nxt == EOS:
                assert (g[b, t + 1:] == PAD).all()
                break
            seq.append(nxt)
    beams, _ = decoding.beam_search(model, params, FEATURES, beam_size=1, max_len=6, eos_id=EOS,
                                    sos_id=SOS, pad_id=PAD)
    np.testing.assert_array_equal(beams[:, 0], g)


def test_conditioned_decoder_bad_input_names_the_argument():
    model, params = _conditioned()
    with pytest.raises(ValueError, match="ConditionedDecoderConfig.cell must be one of"):
        models.ConditionedDecoderConfig(COND_E, COND_V, cell="transformer")
    with pytest.raises(ValueError, match="forget_bias applies to cell='lstm' only"):
        models.ConditionedDecoderConfig(COND_E, COND_V, cell="gru", forget_bias=1.0)
    with pytest.raises(ValueError, match=r"features must have shape \(B, E=5\), got \(3, 4\)"):
        model.apply(params, FEATURES[:, :4], TGT_IN)
    with pytest.raises(ValueError, match=r"features must have shape \(B, E=5\) \(rank 2\)"):
        model.apply(params, FEATURES[0], TGT_IN)
    with pytest.raises(ValueError, match=r"tgt_in must lie in \[0, vocab_size\) = \[0, 9\)"):
        model.apply(params, FEATURES, TGT_IN.at[0, 1].set(COND_V))
    with pytest.raises(ValueError, match="tgt_in has batch 2 but features has 3"):
        model.apply(params, FEATURES, TGT_IN[:2])
    with pytest.raises(ValueError, match="sos_id is required"):
        model.start(params, FEATURES, 4)
    with pytest.raises(ValueError, match="takes no src_lengths"):
        model.start(params, FEATURES, 4, sos_id=SOS, src_lengths=jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"sos_id must be a token id in \[0, 9\)"):
        model.start(params, FEATURES, 4, sos_id=COND_V)


# ----------------------------------------------------------------------------- model behaviour


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_many_to_one_reads_the_state_at_each_last_valid_step(arch):
    if arch == "lstm":
        m = models.sequence_model(models.SequenceModelConfig(cell="lstm", hidden_size=5, output_size=3,
                                                             vocab_size=12, readout="last"))
    else:
        m = models.transformer_sequence_model(models.TransformerSequenceConfig(
            output_size=3, vocab_size=12, model_size=8, num_heads=2, ff_size=16, num_layers=1, max_len=6))
    params = m.init(KEY)
    batch = tasks.sentiment(KEY, 4, max_clauses=3)
    apply = jax.jit(m.apply)
    out = apply(params, batch.x, lengths=batch.lengths)
    for b in range(4):
        n = int(batch.lengths[b])
        single = apply(params, batch.x[b:b + 1, :n])
        np.testing.assert_allclose(np.asarray(out[b]), np.asarray(single[0]), rtol=1e-5, atol=1e-6)


def test_sequence_model_bad_configs():
    """(The irnn cell's initialisation is tested with the cells, in test_cells.py.)"""
    with pytest.raises(ValueError, match="cell must be one of .*got 'lstmm'"):
        models.SequenceModelConfig(cell="lstmm", input_size=1)
    with pytest.raises(ValueError, match="give input_size"):
        models.SequenceModelConfig(cell="lstm")
    with pytest.raises(ValueError, match="readout must be"):
        models.SequenceModelConfig(input_size=1, readout="first")
    model = parity_setup().model                   # the float-input GRU of test_train, E = 1
    with pytest.raises(ValueError, match="x must have shape \\(B, T, E=1\\)"):
        model.apply(model.init(KEY), jnp.zeros((2, 3)))


def test_recurrent_lm_carry_threading():
    """Reading a stream in two pieces with the carry threaded equals reading it whole.
    (Greedy generation through the decode protocol is tested in test_decoding.py.)"""
    lm = models.recurrent_lm(models.RecurrentLMConfig(cell="gru", vocab_size=7, hidden_size=8, embed_size=4))
    params = lm.init(KEY)
    toks = jax.random.randint(KEY, (2, 10), 0, 7)
    apply = jax.jit(lm.apply)
    full, _ = apply(params, toks)
    a, carry = apply(params, toks[:, :4])
    b, _ = apply(params, toks[:, 4:], carry)
    np.testing.assert_allclose(np.asarray(full), np.asarray(jnp.concatenate([a, b], 1)), rtol=1e-5, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _float_model_value_and_grad(arch, num_layers):
    if arch == "transformer":
        model = models.transformer_sequence_model(models.TransformerSequenceConfig(
            output_size=3, input_size=2, model_size=8, num_heads=2, ff_size=16, num_layers=num_layers, max_len=8))
    else:
        model = models.sequence_model(models.SequenceModelConfig(
            cell=arch, hidden_size=4, output_size=3, input_size=2, num_layers=num_layers, readout="last"))

    def loss(params, x, lengths):
        out = model.apply(params, x, lengths=lengths)
        return jnp.sum(jnp.sin(out)), out
    return model, jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize("family", ["recurrent", "transformer"])
@settings(max_examples=max(3, settings.default.max_examples // 2))          # per family
@given(num_layers=st.sampled_from([1, 2]), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_property_nan_or_inf_in_padding_reaches_no_many_to_one_output_or_gradient(family, num_layers, bad, seed, data):
    """Issue 9, item 1, at the model level: NaN or Inf in padded steps of a many-to-one model's
    float input leaves its outputs and every gradient equal to a clean run's (so finite)."""
    B, T = 3, 5
    arch = "transformer" if family == "transformer" else data.draw(st.sampled_from(cells.CELL_NAMES), label="cell")
    model, value_and_grad = _float_model_value_and_grad(arch, num_layers)
    params = model.init(jax.random.key(seed % 3))
    lengths = draw_lengths(data, B, T, padded_row=True)
    clean = randn(seed, (B, T, 2))
    poisoned, padded = poison_padding(data, clean, lengths, bad)
    (_, out_c), (gp_c, gx_c) = value_and_grad(params, clean, jnp.asarray(lengths))
    (_, out_p), (gp_p, gx_p) = value_and_grad(params, poisoned, jnp.asarray(lengths))
    assert np.isfinite(np.asarray(out_p)).all()
    assert_close(out_p, out_c)
    for leaf in jax.tree.leaves(gp_p):
        assert np.isfinite(np.asarray(leaf)).all()
    assert_close(gp_p, gp_c, rtol=1e-5, atol=1e-5)
    assert_close(np.asarray(gx_p)[~padded], np.asarray(gx_c)[~padded], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(gx_p)[padded], 0.0)

