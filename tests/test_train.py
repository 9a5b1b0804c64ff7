"""seqjax.train: optimisers, the pure step, optax clipping, gradient metrics, truncated BPTT,
and the lazy re-export of the loop (the loop itself is tested in test_loop.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import parity_setup

from seqjax import cells, layers, loop, losses, models, recurrent, tasks, train

KEY = jax.random.key(0)

# one tiny many-to-many model shared by every test (compiled once per process)
MODEL, parity_loss, parity_data, TRAINER, fresh_state = parity_setup()
STEP = jax.jit(TRAINER.train_step)


# ----------------------------------------------------------------------------- optimisers


def test_optimizer_and_schedule_by_name():
    for name in ("sgd", "adam", "adamw", "rmsprop", "lion"):
        opt = train.make_optimizer(name, 1e-3)
        assert isinstance(opt, optax.GradientTransformation)
    sched = train.make_schedule("warmup_cosine", 1.0, total_steps=10, warmup_steps=2)
    assert float(sched(0)) == 0.0 and abs(float(sched(2)) - 1.0) < 1e-6 and float(sched(10)) < 1e-6
    assert abs(float(train.make_schedule("linear", 2.0, total_steps=4)(2)) - 1.0) < 1e-6


def test_optimizer_bad_inputs():
    with pytest.raises(ValueError, match=r"optimizer must be one of \[.*'adam'.*\], got 'adamm'"):
        train.make_optimizer("adamm", 1e-3)
    for lr in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
            train.make_optimizer("adam", lr)
    with pytest.raises(TypeError, match="learning_rate must be a finite number > 0"):
        train.make_optimizer("adam", "1e-3")
    with pytest.raises(ValueError, match=r"schedule must be one of \[.*'cosine'.*\], got 'cosin'"):
        train.make_optimizer("adam", 1e-3, schedule="cosin")
    with pytest.raises(ValueError, match="needs total_steps"):
        train.make_optimizer("adam", 1e-3, schedule="cosine")
    with pytest.raises(ValueError, match=r"warmup_steps must be in \[0, 9\]"):
        train.make_schedule("warmup_cosine", 1.0, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0"):
        train.trainer(parity_loss, train.make_optimizer("sgd", 0.1), clip_norm=0.0)
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        train.trainer(parity_loss, "adam")
    with pytest.raises(TypeError, match="key must be a jax PRNG key"):
        TRAINER.init(MODEL.init(KEY), 0)
    with pytest.raises(ValueError, match="chunk_length must be >= 1"):
        train.truncated_bptt(_chunk_loss, optax.sgd(1.0), chunk_length=0, initial_carry=_zeros_carry)


# ----------------------------------------------------------------------------- train step


def test_few_steps_reduce_the_loss():
    state = fresh_state()
    eval_batch = tasks.running_parity(jax.random.key(99), 64, length=6)
    evaluate = jax.jit(TRAINER.eval_step)
    before = float(evaluate(state.params, eval_batch)["loss"])
    for s in range(60):
        state, metrics = STEP(state, parity_data(s))
    after = float(evaluate(state.params, eval_batch)["loss"])
    assert int(state.step) == 60
    assert after < 0.7 * before, (before, after)


def test_step_metrics_are_the_gradient_norms():
    state = fresh_state()
    batch = parity_data(0)
    _, m_jit = STEP(state, batch)
    grads = jax.jit(jax.grad(lambda p: parity_loss(p, batch, None)[0]))(state.params)
    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(float(m_jit["grad_norm"]), norm, rtol=1e-5)
    head = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads["head"])))
    np.testing.assert_allclose(float(m_jit["grad_norm/head"]), head, rtol=1e-5)
    assert set(m_jit) >= {"loss", "grad_norm", "update_norm", "accuracy", "grad_norm/rnn"}


def test_global_norm_clipping_keeps_the_direction():
    """Pascanu et al. 2013: with SGD(lr=1) the update is exactly -c g / ||g|| when ||g|| > c."""
    params = MODEL.init(KEY)
    batch = parity_data(0)
    grads = jax.grad(lambda p: parity_loss(p, batch, None)[0])(params)
    clip = 0.5 * float(train.global_norm(grads))
    tr = train.trainer(parity_loss, optax.sgd(1.0), clip_norm=clip)
    state = tr.init(params, KEY)
    new, metrics = tr.train_step(state, batch)
    norm = float(metrics["grad_norm"])
    np.testing.assert_allclose(norm, 2 * clip, rtol=1e-5)
    for p0, p1, g in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(p1 - p0), -clip * np.asarray(g) / norm, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(metrics["update_norm"]), clip, rtol=1e-4)
    # the clip is optax's: the same update as optax.chain(clip_by_global_norm, sgd) by hand
    by_hand = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(1.0))
    updates, _ = by_hand.update(grads, by_hand.init(params), params)
    for p1, u, p0 in zip(jax.tree.leaves(new.params), jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(p1), np.asarray(p0 + u), rtol=1e-6, atol=1e-7)
    # below the threshold nothing is clipped
    loose = train.trainer(parity_loss, optax.sgd(1.0), clip_norm=4 * clip)
    new_loose, _ = loose.train_step(loose.init(params, KEY), batch)
    for p0, p1, g in zip(jax.tree.leaves(params), jax.tree.leaves(new_loose.params), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(p1 - p0), -np.asarray(g), rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- gradient metrics


def test_gradient_statistics_are_pure_pytree_reductions():
    grads = {"layers": [{"attn": {"w_q": jnp.full((2, 2), 1.0), "w_k": jnp.full((3,), 2.0)}},
                        {"attn": {"w_q": jnp.array([3.0, 4.0]), "w_k": jnp.zeros((1,))}}],
             "out": jnp.array([-12.0])}
    norms = train.grad_norms_by_path(grads)
    assert list(norms) == ["grads/layers/0/attn/w_k", "grads/layers/0/attn/w_q",
                           "grads/layers/1/attn/w_k", "grads/layers/1/attn/w_q", "grads/out"]
    np.testing.assert_allclose([norms[k] for k in norms], [np.sqrt(12), 2.0, 0.0, 5.0, 12.0], rtol=1e-6)
    per_layer = train.grad_norms_by_path(grads, depth=2, prefix="g")
    np.testing.assert_allclose(per_layer["g/layers/0"], 4.0, rtol=1e-6)
    np.testing.assert_allclose(per_layer["g/layers/1"], 5.0, rtol=1e-6)
    total = np.sqrt(16 + 25 + 144)
    np.testing.assert_allclose(train.global_norm(grads), total, rtol=1e-6)
    np.testing.assert_allclose(train.global_norm(grads), optax.tree.norm(grads), rtol=1e-6)
    stats = jax.jit(functools.partial(train.gradient_statistics, depth=1))(grads)
    np.testing.assert_allclose(stats["grads/global_norm"], total, rtol=1e-6)
    assert float(stats["grads/max_abs"]) == 12.0 and int(stats["grads/nonfinite"]) == 0
    assert set(stats) == {"grads/global_norm", "grads/max_abs", "grads/nonfinite", "grads/layers", "grads/out"}
    bad = dict(grads, out=jnp.array([jnp.nan, jnp.inf]))
    assert int(train.gradient_statistics(bad)["grads/nonfinite"]) == 2
    assert list(train.grad_norms_by_path(cells.LSTMState(jnp.ones(1), jnp.ones(1)))) == ["grads/h", "grads/c"]
    with pytest.raises(ValueError, match=r"depth must be >= 1"):
        train.grad_norms_by_path(grads, depth=0)


def test_global_norm_reduces_bfloat16_in_float32_and_handles_empty_trees():
    g = {"a": jnp.full((4096,), 1.0 + 2.0 ** -7, jnp.bfloat16)}     # bf16 sums of 4096 terms lose digits
    want = np.sqrt(4096) * (1.0 + 2.0 ** -7)
    assert train.global_norm(g).dtype == jnp.float32
    np.testing.assert_allclose(float(train.global_norm(g)), want, rtol=1e-6)
    assert float(train.global_norm({})) == 0.0


def test_the_loop_is_re_exported_lazily_from_train():
    """``seqjax.train`` is the one import: the side-effecting loop lives in ``seqjax.loop``."""
    for name in ("fit", "FitResult", "NonFiniteError", "CheckpointError", "data_mesh", "shard_batch",
                 "replicate"):
        assert getattr(train, name) is getattr(loop, name)
        assert name in train.__all__ and name in dir(train)
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        train.fitt  # noqa: B018


# ----------------------------------------------------------------------------- truncated BPTT

CELL_MODEL = models.sequence_model(models.SequenceModelConfig(
    cell="rnn_tanh", hidden_size=6, output_size=2, input_size=1, readout="all"))


_RNN6 = recurrent.layer(cells.simple_rnn(6))


def _chunk_loss(params, carry, chunk, key):
    """A tanh RNN over one chunk: the carry (1, B, H) flows in and out."""
    ys, carry = _RNN6.apply(params["rnn"], chunk.x, initial_carry=carry)
    logits = layers.dense(params["head"], ys)                                    # (B, K, 2)
    return losses.cross_entropy(logits, chunk.y), (carry, {})


def _full_loss(params, batch, key):
    loss, _ = _chunk_loss(params, jnp.zeros((1, batch.x.shape[0], 6)), batch, key)
    return loss, {}


def _zeros_carry(batch):
    return jnp.zeros((1, batch.x.shape[0], 6))


def test_truncated_bptt_equals_full_bptt_when_the_chunk_covers_the_sequence():
    opt = optax.adam(1e-2)
    params = CELL_MODEL.init(KEY)
    full = train.trainer(_full_loss, opt, clip_norm=0.5)
    tb = train.truncated_bptt(_chunk_loss, opt, chunk_length=8, initial_carry=_zeros_carry, clip_norm=0.5)
    s_full, s_tb = full.init(params, KEY), tb.init(params, KEY)
    step_full, step_tb = jax.jit(full.train_step), jax.jit(tb.train_step)
    for s in range(3):
        batch = tasks.running_parity(jax.random.fold_in(KEY, s), 4, length=8)
        s_full, m_full = step_full(s_full, batch)
        s_tb, m_tb = step_tb(s_tb, batch)
        np.testing.assert_allclose(float(m_full["loss"]), float(m_tb["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s_full.params), jax.tree.leaves(s_tb.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_truncated_bptt_stops_gradients_at_chunk_boundaries():
    params = CELL_MODEL.init(KEY)
    batch = tasks.running_parity(KEY, 4, length=8)
    tb = train.truncated_bptt(_chunk_loss, optax.sgd(1.0), chunk_length=4, initial_carry=_zeros_carry)
    new, _ = jax.jit(tb.train_step)(tb.init(params, KEY), batch)
    got = jax.tree.map(lambda a, b: a - b, params, new.params)       # = the averaged gradient
    # reference: chunk 2's gradient with its incoming carry held constant
    first = jax.tree.map(lambda a: a[:, :4], batch)
    second = jax.tree.map(lambda a: a[:, 4:], batch)
    grad_chunk = jax.jit(jax.grad(_chunk_loss, has_aux=True))
    g1, (carry, _) = grad_chunk(params, _zeros_carry(batch), first, None)
    g2, _ = grad_chunk(params, carry, second, None)
    want = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # and it is not full BPTT through the boundary
    g_full = jax.jit(jax.grad(lambda p: (_chunk_loss(p, _zeros_carry(batch), first, None)[0]
                                 + _chunk_loss(p, _chunk_loss(p, _zeros_carry(batch), first, None)[1][0],
                                               second, None)[0]) / 2))(params)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(want)))
    assert diff > 1e-5
    # per-chunk updates advance the optimiser twice but the step counter once
    tb2 = train.truncated_bptt(_chunk_loss, optax.sgd(1.0), chunk_length=4, initial_carry=_zeros_carry,
                               update_every_chunk=True)
    s2, _ = jax.jit(tb2.train_step)(tb2.init(params, KEY), batch)
    assert int(s2.step) == 1
    tb3 = train.truncated_bptt(_chunk_loss, optax.sgd(1.0), chunk_length=3, initial_carry=_zeros_carry)
    with pytest.raises(ValueError, match="T = 8 must be a multiple of chunk_length = 3"):
        tb3.train_step(tb3.init(params, KEY), batch)
