"""Mixed precision (seqjax.precision): what runs in which dtype, bfloat16 against float32 within the
stated tolerances, float32 where it matters (LSTM cell state, softmax, loss), bad policies refused by
name, and the adding problem trained in bfloat16 reaching the float32 loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import V, randint, randn

from seqjax import attention, cells, decoding, gradients, losses, models, precision, recurrent, tasks, train
from seqjax import transformer as T

BF16 = precision.policy("bfloat16")
F32, F64 = jnp.dtype("float32"), jnp.dtype("float64")
U = precision.BFLOAT16_UNIT_ROUNDOFF
B, T_, E, H = 4, 12, 5, 16
LENGTHS = jnp.array([12, 7, 3, 12])


def rel_error(actual, desired) -> float:
    """Normwise relative error ||a - d|| / ||d|| over every leaf of two pytrees, in float64."""
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(actual)])
    d = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(desired)])
    return float(np.linalg.norm(a - d) / np.linalg.norm(d))


def dtypes(tree) -> set:
    return {jnp.dtype(a.dtype) for a in jax.tree.leaves(tree)}


def loss_logits_and_grads(model, params, src, tgt, y, src_lengths):
    """``((loss, logits), grads)`` of the cross-entropy of a seq2seq ``model.apply(params, src, tgt)``
    against ``y``, jitted (one compilation instead of one per primitive)."""
    def loss(p):
        logits = model.apply(p, src, tgt, src_lengths=src_lengths)
        return losses.cross_entropy(logits, y), logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


# ----------------------------------------------------------------------------- the policy


def test_presets_and_jmp_strings():
    assert (BF16.param_dtype, BF16.compute_dtype, BF16.output_dtype) == (jnp.float32, jnp.bfloat16, jnp.float32)
    assert BF16.accumulation_dtype == jnp.float32
    assert precision.policy("float32") == precision.Policy()
    assert precision.policy("float64").accumulation_dtype == jnp.float64
    assert precision.policy("p=f32,c=bf16,o=f32") == BF16 == precision.policy(str(BF16))
    assert str(BF16) == "params=float32,compute=bfloat16,output=float32"
    # the tolerances are derived from bfloat16's 8-bit significand
    assert jnp.finfo(jnp.bfloat16).epsneg == U == 2.0 ** -8
    assert (precision.FORWARD_RTOL, precision.GRADIENT_RTOL) == (8 * U, 32 * U)


def test_casts_touch_floating_leaves_only():
    tree = {"w": jnp.ones(3), "ids": jnp.arange(3), "mask": jnp.ones(3, bool), "key": jax.random.key(0),
            "n": 3}
    out = BF16.cast_to_compute(tree)
    assert out["w"].dtype == jnp.bfloat16 and out["ids"].dtype == jnp.int32 and out["mask"].dtype == bool
    assert out["key"] is tree["key"] and out["n"] == 3
    assert BF16.cast_to_output(out)["w"].dtype == jnp.float32


@pytest.mark.parametrize("bad,error,match", [
    ("half", ValueError, r"^precision: unknown precision policy 'half'"),
    ("params=float32,compute=float16", ValueError, r"^precision: .*float16 is not supported"),
    ("params=float32,speed=fast", ValueError, r"^precision: unknown key 'speed'"),
    (jnp.bfloat16, TypeError, r"^precision must be None, a seqjax.precision.Policy or a policy name"),
    ("params=float32,compute=int32", ValueError, r"^precision: .*Policy.compute_dtype must be a floating dtype"),
])
def test_a_bad_policy_is_refused_by_name_everywhere(bad, error, match):
    cfg = T.StackConfig(model_size=8, num_heads=2, ff_size=16, num_layers=1)
    factories = [
        lambda: recurrent.layer(cells.lstm(4), precision=bad),
        lambda: attention.multi_head_attention(2, 8, precision=bad),
        lambda: T.encoder(cfg, precision=bad),
        lambda: T.transformer(T.TransformerConfig(V, V, model_size=8, num_heads=2, ff_size=16), precision=bad),
        lambda: T.decoder_only(T.DecoderOnlyConfig(V, model_size=8, num_heads=2, ff_size=16), precision=bad),
        lambda: models.sequence_model(models.SequenceModelConfig(hidden_size=4, input_size=2), precision=bad),
        lambda: train.trainer(lambda p, b, k: (jnp.zeros(()), {}), train.make_optimizer(), precision=bad),
    ]
    for make in factories:
        with pytest.raises(error, match=match):
            make()


def test_policy_fields_are_checked_by_name():
    with pytest.raises(TypeError, match=r"^Policy.param_dtype must be a floating dtype"):
        precision.Policy(param_dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"^Policy.compute_dtype=float16 is not supported"):
        precision.Policy(compute_dtype=jnp.float16)


def test_float64_policy_needs_x64():
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match=r"^precision=params=float64.* needs float64, .*jax_enable_x64"):
        recurrent.layer(cells.gru(4), precision="float64")


def test_float64_policy_runs_in_float64(x64):
    layer = recurrent.layer(cells.lstm(H), precision="float64")
    params = layer.init(jax.random.key(0), E)
    assert dtypes(params) == {F64}
    out, final = layer.apply(params, randn(0, (B, T_, E)))                      # float32 x: cast up
    assert out.dtype == final.c.dtype == jnp.float64


# ----------------------------------------------------------------------------- recurrent layers


def _layer_loss(layer, x):
    def loss(params):
        ys, final = layer.apply(params, x, lengths=LENGTHS)
        return jnp.sum(ys ** 2) / B, (ys, final)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("name", cells.CELL_NAMES)
def test_every_cell_bfloat16_forward_and_gradients_within_tolerance_of_float32(name):
    """2 layers, T = 12, padded: outputs within 8u and parameter gradients within 32u (normwise)
    of float32 on the same float32 params; params, gradients, outputs and the carry stay float32."""
    cell = cells.make(name, H)
    backwards = recurrent.BACKWARDS if cell.pointwise_backward is not None else ("autodiff",)
    x = randn(0, (B, T_, E))
    for fused in backwards:                                   # every way a layer can be differentiated
        ref = recurrent.layer(cell, num_layers=2, backward=fused)
        mixed = recurrent.layer(cell, num_layers=2, backward=fused, precision=BF16)
        params = ref.init(jax.random.key(0), E)
        assert dtypes(mixed.init(jax.random.key(0), E)) == {F32}
        (_, (y32, f32)), g32 = _layer_loss(ref, x)(params)
        (loss, (y16, f16)), g16 = _layer_loss(mixed, x)(params)
        assert y16.dtype == loss.dtype == jnp.float32
        assert dtypes(f16) == dtypes(g16) == {F32}
        assert rel_error(y16, y32) < precision.FORWARD_RTOL, (name, fused, rel_error(y16, y32))
        assert rel_error(f16, f32) < precision.FORWARD_RTOL, (name, fused, rel_error(f16, f32))
        assert rel_error(g16, g32) < precision.GRADIENT_RTOL, (name, fused, rel_error(g16, g32))
        assert rel_error(y16, y32) > 0                       # bfloat16 did run: the results differ
        np.testing.assert_array_equal(np.asarray(y16)[2, 3:], 0.0)      # padding is still exactly zero


def test_the_matmuls_run_in_bfloat16_and_the_carry_in_float32():
    """The lowered step: the dots take bfloat16 operands; the scan's carry (h and c) is float32."""
    layer = recurrent.layer(cells.lstm(H), precision=BF16)
    params = layer.init(jax.random.key(0), E)
    jaxpr = jax.make_jaxpr(lambda p, x: layer.apply(p, x))(params, randn(0, (B, T_, E)))
    eqns = _eqns(jaxpr.jaxpr)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 2 and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars), dots
    scan = next(e for e in eqns if e.primitive.name == "scan")
    carry = scan.outvars[:scan.params["num_carry"]]                         # h and c
    assert {jnp.dtype(v.aval.dtype) for v in carry} == {F32}


def _eqns(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations (jit, scan), depth first."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                out += _eqns(inner)
    return out


def test_lstm_cell_state_keeps_updates_below_bfloat16_resolution():
    """c' = f c + i g with f = 1 and i g = 1e-3 < u |c|: a bfloat16 carry rounds every update
    away (c stays 1); the policy's float32 carry accumulates all 100 of them (c = 1.1)."""
    Hs, steps = 1, 100
    cell = cells.lstm(Hs)
    g = float(np.arctanh(1e-3))
    params = {"w_ih": jnp.zeros((1, 4)), "w_hh": jnp.zeros((1, 4)), "b_hh": jnp.zeros(4),
              "b_ih": jnp.array([30.0, 30.0, g, 0.0])}                         # i = f = 1, g = 1e-3
    x = jnp.zeros((1, steps, 1))
    mixed = recurrent.layer(cell, precision=BF16)
    carry0 = mixed.initial_carry(1)
    assert dtypes(carry0) == {F32}
    carry0 = cells.LSTMState(carry0.h, jnp.ones_like(carry0.c))
    _, final = mixed.apply({"layers": [{"forward": params}]}, x, initial_carry=carry0)
    assert final.c.dtype == jnp.float32
    np.testing.assert_allclose(float(final.c[0, 0, 0]), 1.0 + steps * 1e-3, rtol=1e-2)
    # the same computation with a bfloat16 carry (no policy, every array bfloat16) loses them all
    plain = recurrent.layer(cell)
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), {"layers": [{"forward": params}]})
    c16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), carry0)
    _, final16 = plain.apply(p16, x.astype(jnp.bfloat16), initial_carry=c16)
    assert final16.c.dtype == jnp.bfloat16 and float(final16.c[0, 0, 0]) == 1.0


def test_float32_policy_is_bit_identical_to_no_policy():
    x = randn(0, (B, T_, E))
    layer = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), E)
    with_policy = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True, precision="float32")
    chex.assert_trees_all_equal(_layer_loss(with_policy, x)(params), _layer_loss(layer, x)(params))
    mha, mha32 = attention.multi_head_attention(2, 8), attention.multi_head_attention(2, 8, precision="float32")
    p = mha.init(jax.random.key(1), 8)
    q = randn(1, (2, 6, 8))
    chex.assert_trees_all_equal(mha32.apply(p, q, mask=attention.causal_mask(6)),
                                mha.apply(p, q, mask=attention.causal_mask(6)))


def test_state_gradients_of_a_bfloat16_layer_are_float32_and_close():
    """The hook gradient_norms.py uses: dL/dh_t through a bfloat16-compute layer, in the float32 carry."""
    x = randn(2, (B, T_, E))
    ref, mixed = recurrent.layer(cells.gru(H)), recurrent.layer(cells.gru(H), precision=BF16)
    params = ref.init(jax.random.key(0), E)
    loss = lambda ys: jnp.sum(ys[:, -1] ** 2)                                  # noqa: E731
    g32 = gradients.state_gradients(ref, params, x, loss)[0]["forward"]
    g16 = gradients.state_gradients(mixed, params, x, loss)[0]["forward"]
    assert g16.dtype == jnp.float32 and g16.shape == (B, T_, H)
    assert rel_error(g16, g32) < precision.GRADIENT_RTOL


# ----------------------------------------------------------------------------- attention, Transformers


def test_masked_attention_bfloat16_within_tolerance_and_softmax_in_float32():
    mha, mixed = attention.multi_head_attention(4, 16), attention.multi_head_attention(4, 16, precision=BF16)
    params = mha.init(jax.random.key(0), 16)
    x = randn(3, (3, 10, 16))
    # padding and causality; the third row's query 0 is fully masked by an all-False row
    mask = attention.combine_masks(attention.padding_mask(jnp.array([10, 6, 3]), 10), attention.causal_mask(10))
    mask = mask & jnp.ones((3, 1, 10, 1), bool).at[2, 0, 0, 0].set(False)

    def run(m):
        def loss(p):
            out, w = m.apply(p, x, mask=mask, return_weights=True)
            return jnp.sum(out ** 2), (out, w)
        return jax.value_and_grad(loss, has_aux=True)(params)
    (_, (y32, w32)), g32 = run(mha)
    (_, (y16, w16)), g16 = run(mixed)
    assert y16.dtype == w16.dtype == jnp.float32 and dtypes(g16) == {F32}
    assert rel_error(y16, y32) < precision.FORWARD_RTOL and rel_error(g16, g32) < precision.GRADIENT_RTOL
    assert np.all(np.isfinite(np.asarray(y16))) and float(jnp.abs(y16[2, 0]).max()) == 0.0
    # the weights are the float32 softmax rounded once to bfloat16 for the weights @ v product
    np.testing.assert_allclose(np.asarray(w16.sum(-1))[:2], 1.0, atol=U)
    # masked_softmax of bfloat16 scores is the float32 softmax rounded once (not a bfloat16 softmax)
    scores, keep = randn(4, (3, 10), jnp.bfloat16), jnp.arange(10) < 7
    np.testing.assert_array_equal(
        np.asarray(attention.masked_softmax(scores, keep), np.float32),
        np.asarray(attention.masked_softmax(scores.astype(jnp.float32), keep).astype(jnp.bfloat16), np.float32))


def _seq2seq_data(norm_first):
    cfg = T.TransformerConfig(V, V, model_size=16, num_heads=2, ff_size=32, num_encoder_layers=2,
                              num_decoder_layers=2, max_len=12, dropout=0.0, norm_first=norm_first)
    return cfg, randint(1, (4, 9), 3, V), randint(2, (4, 8), 3, V), randint(3, (4, 8), 3, V), jnp.array([9, 5, 9, 2])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_transformer_bfloat16_within_tolerance_loss_float32(norm_first):
    cfg, src, tgt, y, n = _seq2seq_data(norm_first)
    ref, mixed = T.transformer(cfg), T.transformer(cfg, precision=BF16)
    params = ref.init(jax.random.key(0))
    assert dtypes(mixed.init(jax.random.key(0))) == {F32}

    (l32, lg32), g32 = loss_logits_and_grads(ref, params, src, tgt, y, n)
    (l16, lg16), g16 = loss_logits_and_grads(mixed, params, src, tgt, y, n)
    assert l16.dtype == lg16.dtype == jnp.float32 and dtypes(g16) == {F32}
    assert rel_error(lg16, lg32) < precision.FORWARD_RTOL
    assert rel_error(g16, g32) < precision.GRADIENT_RTOL
    assert abs(float(l16) - float(l32)) < precision.FORWARD_RTOL * float(l32)
    # decoding under the policy: bfloat16 caches, float32 logits
    logits, state = jax.jit(lambda p: mixed.start(p, src, 6, sos_id=1, src_lengths=n))(params)
    assert logits.dtype == jnp.float32 and state.caches[0].key.dtype == jnp.bfloat16
    assert decoding.greedy_decode(mixed, params, src, max_len=6, sos_id=1, eos_id=2, src_lengths=n).shape[0] == 4


def test_decoder_only_and_stacks_bfloat16():
    lm_cfg = T.DecoderOnlyConfig(V, model_size=16, num_heads=2, ff_size=32, num_layers=2, max_len=12, dropout=0.0)
    ref, mixed = T.decoder_only(lm_cfg), T.decoder_only(lm_cfg, precision=BF16)
    params = ref.init(jax.random.key(0))
    tokens = randint(4, (3, 10), 0, V)
    def grad(m):
        return jax.jit(jax.grad(lambda p: losses.cross_entropy(m.apply(p, tokens[:, :-1]), tokens[:, 1:])))(params)
    out16 = jax.jit(mixed.apply)(params, tokens)
    assert out16.dtype == jnp.float32
    assert rel_error(out16, jax.jit(ref.apply)(params, tokens)) < precision.FORWARD_RTOL
    assert rel_error(grad(mixed), grad(ref)) < precision.GRADIENT_RTOL
    logits, state = jax.jit(lambda p: mixed.start(p, tokens[:, :4], 3))(params)
    assert logits.dtype == jnp.float32 and state.caches[0].key.dtype == jnp.bfloat16
    scfg = T.StackConfig(model_size=16, num_heads=2, ff_size=32, num_layers=2, dropout=0.0)
    ed, ed16 = T.encoder_decoder(scfg, scfg), T.encoder_decoder(scfg, scfg, precision=BF16)
    p = ed.init(jax.random.key(1))
    src, tgt = randn(5, (2, 7, 16)), randn(6, (2, 5, 16))
    apply = lambda m: jax.jit(lambda p: m.apply(p, src, tgt, tgt_mask=attention.causal_mask(5)))(p)  # noqa: E731
    out = apply(ed16)
    assert out.dtype == jnp.float32
    assert rel_error(out, apply(ed)) < precision.FORWARD_RTOL


@pytest.mark.parametrize("kind", ["sequence", "transformer_sequence", "recurrent_lm", "conditioned"])
def test_models_take_the_policy(kind):
    if kind == "sequence":
        cfg = models.SequenceModelConfig(cell="lstm", hidden_size=8, output_size=3, input_size=4)
        make, args = models.sequence_model, (randn(7, (2, 6, 4)),)
    elif kind == "transformer_sequence":
        cfg = models.TransformerSequenceConfig(output_size=3, input_size=4, model_size=8, num_heads=2, ff_size=16)
        make, args = models.transformer_sequence_model, (randn(7, (2, 6, 4)),)
    elif kind == "recurrent_lm":
        cfg = models.RecurrentLMConfig(vocab_size=V, hidden_size=8, embed_size=4)
        make, args = models.recurrent_lm, (randint(8, (2, 6), 0, V),)
    else:
        cfg = models.ConditionedDecoderConfig(feature_size=4, vocab_size=V, hidden_size=8, embed_size=4)
        make, args = models.conditioned_decoder, (randn(9, (2, 4)), randint(8, (2, 6), 0, V))
    ref, mixed = make(cfg), make(cfg, precision=BF16)
    params = ref.init(jax.random.key(0))
    assert dtypes(mixed.init(jax.random.key(0))) == {F32}
    out32, out16 = ref.apply(params, *args), mixed.apply(params, *args)
    first32, first16 = (out32[0], out16[0]) if kind == "recurrent_lm" else (out32, out16)
    assert first16.dtype == jnp.float32 and rel_error(first16, first32) < precision.FORWARD_RTOL
    if kind == "recurrent_lm":                                  # the carry stays float32 across calls
        assert dtypes(out16[1]) == {F32}
        logits, state = mixed.start(params, args[0], 3)
        logits, state = mixed.decode_step(params, state, jnp.argmax(logits, -1))
        assert logits.dtype == jnp.float32 and dtypes(state) == {F32}
    if kind == "conditioned":
        logits, state = mixed.start(params, args[0], 3, sos_id=1)
        assert logits.dtype == jnp.float32 and dtypes(state) == {F32}


@pytest.mark.parametrize("attention_kind", ["none", "general", "additive"])
def test_rnn_seq2seq_takes_the_policy(attention_kind):
    from seqjax import seq2seq
    cfg = seq2seq.Seq2SeqConfig(V, V, embed_size=8, hidden_size=16, bidirectional=True, cell="lstm",
                                attention=attention_kind)
    ref, mixed = seq2seq.seq2seq(cfg), seq2seq.seq2seq(cfg, precision=BF16)
    params = ref.init(jax.random.key(0))
    assert dtypes(mixed.init(jax.random.key(0))) == {F32}
    src, tgt, y, n = randint(1, (4, 9), 3, V), randint(2, (4, 8), 3, V), randint(3, (4, 8), 3, V), jnp.array([9, 5, 9, 2])

    (l32, lg32), g32 = loss_logits_and_grads(ref, params, src, tgt, y, n)
    (l16, lg16), g16 = loss_logits_and_grads(mixed, params, src, tgt, y, n)
    assert l16.dtype == lg16.dtype == jnp.float32 and dtypes(g16) == {F32}
    assert rel_error(lg16, lg32) < precision.FORWARD_RTOL and rel_error(lg16, lg32) > 0
    assert rel_error(g16, g32) < precision.GRADIENT_RTOL
    # decoding: float32 logits, the decoder carries stay float32, the memory is bfloat16
    logits, state = jax.jit(lambda p: mixed.start(p, src, 6, sos_id=1, src_lengths=n))(params)
    assert logits.dtype == jnp.float32 and dtypes(state.carries) == {F32}
    assert state.memory.dtype == jnp.bfloat16
    out = decoding.greedy_decode(mixed, params, src, max_len=6, sos_id=1, eos_id=2, src_lengths=n)
    assert jax.tree.leaves(out)[0].shape[0] == 4
    with pytest.raises(ValueError, match="precision"):
        seq2seq.seq2seq(cfg, precision="float16")


# ----------------------------------------------------------------------------- training


def test_trainer_keeps_float32_params_and_refuses_a_narrow_loss():
    seen = {}

    def loss_fn(params, batch, key):
        seen["dtype"] = params["w"].dtype
        return jnp.mean((batch @ params["w"]).astype(jnp.float32) ** 2), {}
    tr = train.trainer(loss_fn, train.make_optimizer("adam", 0.1), precision=BF16)
    state = tr.init({"w": jnp.ones((3, 2), jnp.bfloat16)}, jax.random.key(0))      # bfloat16 in: float32 kept
    assert dtypes(state.params) == dtypes(state.opt_state) - {jnp.dtype("int32")} == {F32}
    state, metrics = tr.train_step(state, jnp.ones((4, 3)))
    assert seen["dtype"] == jnp.bfloat16 and dtypes(state.params) == {F32}
    assert metrics["loss"].dtype == metrics["grad_norm"].dtype == jnp.float32
    narrow = train.trainer(lambda p, b, k: (jnp.mean(b.astype(jnp.bfloat16) @ p["w"]), {}), train.make_optimizer(),
                           precision=BF16)
    with pytest.raises(ValueError, match=r"^with precision=params=float32,compute=bfloat16,output=float32, "
                                         r"loss_fn must return a float32 \(or wider\) loss, got bfloat16"):
        narrow.train_step(narrow.init({"w": jnp.ones((3, 2))}, jax.random.key(0)), jnp.ones((4, 3)))


ADDING = dict(length=20, hidden=32, steps=400, batch=64, lr=1e-2)
#: bfloat16 training must reach the float32 evaluation MSE within this (absolute): half the
#: "solved" threshold of 0.01, far below the chance level 1/6.
ADDING_MARGIN = 0.005


def _train_adding(policy):
    model = models.sequence_model(models.SequenceModelConfig(
        cell="gru", hidden_size=ADDING["hidden"], output_size=1, input_size=2), precision=policy)

    def loss_fn(params, batch, key):
        return losses.mse(model.apply(params, batch.x)[:, 0], batch.y), {}
    tr = train.trainer(loss_fn, train.make_optimizer("adam", ADDING["lr"]), clip_norm=1.0, precision=policy)
    state = tr.init(model.init(jax.random.key(0)), jax.random.key(1))
    step = lambda s, k: tr.train_step(s, tasks.adding(k, ADDING["batch"], length=ADDING["length"]))  # noqa: E731
    state, _ = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.key(2), ADDING["steps"])))(state)
    held_out = tasks.adding(jax.random.key(99), 1024, length=ADDING["length"])
    return state, float(jax.jit(tr.eval_step)(state.params, held_out)["loss"])


@pytest.mark.slow
def test_adding_problem_trained_in_bfloat16_reaches_the_float32_loss():
    """GRU, T = 20, 400 Adam steps: both solve the task (MSE < 0.01, chance 1/6) and bfloat16's
    held-out MSE is within ADDING_MARGIN of float32's; its stored params stay float32."""
    _, loss32 = _train_adding(None)
    state16, loss16 = _train_adding(BF16)
    assert dtypes(state16.params) == {F32}
    assert loss32 < 0.01 and loss16 < 0.01, (loss32, loss16)
    assert abs(loss16 - loss32) < ADDING_MARGIN, (loss32, loss16)
