"""seqjax.recurrent: the unroll and the layers: scan == loop, jit == no jit, batched == per
example, padding invariance through gradients, NaN-proof padding, dtypes, dropout, the
perturbation hook and every bad input; properties over random shapes, lengths and cells
(hypothesis). The cells themselves are tested in test_cells.py."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from conftest import assert_close, draw_lengths, poison_padding, randn
from hypothesis import given, settings
from hypothesis import strategies as st

from seqjax import cells, layers, recurrent

H, E, B, T = 5, 3, 4, 6
CELLS = {
    "rnn_tanh": cells.simple_rnn(H),
    "rnn_relu": cells.simple_rnn(H, "relu"),
    "rnn_linear": cells.simple_rnn(H, "linear"),
    "lstm": cells.lstm(H, forget_bias=1.0),
    "gru": cells.gru(H),
}
LENGTHS = np.array([6, 1, 3, 5])


def _inputs(seed=0, shape=(B, T, E)):
    return randn(seed, shape)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_scan_equals_python_loop(name, reverse, lengths):
    cell = CELLS[name]
    params = cell.init(jax.random.key(1), E)
    carry = jax.tree.map(lambda a: a + 0.3, cell.initial_carry((B,)))
    xs = _inputs()
    got = recurrent.unroll(cell.step, params, carry, xs, lengths=lengths, reverse=reverse)
    want = recurrent.static_unroll(cell.step, params, carry, xs, lengths=lengths, reverse=reverse)
    assert_close(got, want)


@pytest.mark.parametrize("name", CELLS)
def test_time_major_matches_batch_major(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(1), E)
    xs = _inputs()
    c_bm, y_bm = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), xs, lengths=LENGTHS)
    c_tm, y_tm = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), jnp.swapaxes(xs, 0, 1),
                                  lengths=LENGTHS, time_major=True)
    assert_close(c_bm, c_tm)
    assert_close(y_bm, jnp.swapaxes(y_tm, 0, 1))


# ----------------------------------------------------------------------------- layers

# Every configuration on every derivative path (recurrent.BACKWARDS: the default "jvp", "vjp" and
# "autodiff"): the paths share the forward pass and differ in how it is differentiated.
LAYERS = {
    (name, L, bidi, backward): recurrent.layer(CELLS[name], num_layers=L, bidirectional=bidi, backward=backward)
    for name in ("rnn_tanh", "lstm", "gru") for L in (1, 2) for bidi in (False, True)
    for backward in recurrent.BACKWARDS
}


class LayerVariantsTest(chex.TestCase):
    """Every layer configuration, with and without jit (chex variants), equals the Python-loop reference."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*LAYERS)
    def test_layer_equals_loop_reference(self, name, num_layers, bidirectional, backward):
        layer = LAYERS[(name, num_layers, bidirectional, backward)]
        params = layer.init(jax.random.key(0), E)
        x, lengths = _inputs(), jnp.asarray(LENGTHS)
        got = self.variant(layer.apply)(params, x, lengths=lengths)
        chex.assert_shape(got[0], (B, T, layer.config.num_directions * H))
        assert_close(got, _loop_reference(layer, params, x, lengths))


@pytest.mark.parametrize("key", [k for k in LAYERS if k[1] == 2], ids=str)
def test_layer_gradients_equal_loop_reference(key):
    """d/d params and d/d x of a loss on outputs and final state, on every derivative path, equal
    autodiff of the Python-loop reference (2 layers, lengths)."""
    layer = LAYERS[key]
    params = layer.init(jax.random.key(0), E)
    x, lengths, weights = _inputs(), jnp.asarray(LENGTHS), _inputs(9, (B, T, layer.config.num_directions * H))

    def loss(apply):
        def f(params, x):
            outputs, final = apply(params, x)
            return jnp.sum(outputs * weights) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))
        return jax.grad(f, argnums=(0, 1))
    got, want = jax.jit(lambda p, x: (loss(lambda p, x: layer.apply(p, x, lengths=lengths))(p, x),
                                      loss(lambda p, x: _loop_reference(layer, p, x, lengths))(p, x)))(params, x)
    assert_close(got, want, atol=1e-5)


@pytest.mark.parametrize("key", [k for k in LAYERS if k[1] == 2 and k[3] == "jvp"], ids=str)
def test_layer_batched_equals_per_example_truncated(key):
    """Padding semantics == running each sequence alone, cut at its own length."""
    layer = LAYERS[key]
    params = layer.init(jax.random.key(0), E)
    x = _inputs()
    carry0 = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape), layer.initial_carry(B))
    outputs, final = layer.apply(params, x, lengths=jnp.asarray(LENGTHS), initial_carry=carry0)
    for b, n in enumerate(LENGTHS):
        carry_b = jax.tree.map(lambda a: a[:, b:b + 1], carry0)
        out_b, final_b = layer.apply(params, x[b:b + 1, :n], initial_carry=carry_b)
        assert_close(outputs[b, :n], out_b[0])
        np.testing.assert_array_equal(np.asarray(outputs[b, n:]), 0.0)
        assert_close(jax.tree.map(lambda a: a[:, b], final), jax.tree.map(lambda a: a[:, 0], final_b))


@pytest.mark.parametrize("key", [k for k in LAYERS if k[1] == 2 and k[2]], ids=str)
def test_padding_gets_exactly_zero_gradient(key):
    layer = LAYERS[key]
    params = layer.init(jax.random.key(0), E)
    x = _inputs()
    lengths = jnp.asarray(LENGTHS)
    weights = _inputs(9, (B, T, 2 * H))

    def loss(x):
        outputs, final = layer.apply(params, x, lengths=lengths)
        return jnp.sum(outputs * weights) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final))

    grad = np.asarray(jax.jit(jax.grad(loss))(x))
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(grad[pad] == 0.0)
    assert np.all(np.abs(grad[~pad]).sum(-1) > 0)        # valid steps do receive gradient
    # and the padded values themselves cannot change any output
    x_noise = jnp.where(pad[..., None], 1e3 * _inputs(3), x)
    apply = jax.jit(lambda x: layer.apply(params, x, lengths=lengths))
    assert_close(apply(x_noise), apply(x))


def test_layer_shapes_and_final_layout():
    layer = recurrent.layer(cells.lstm(H), num_layers=3, bidirectional=True)
    params = layer.init(jax.random.key(0), E)
    outputs, final = layer.apply(params, _inputs())
    assert outputs.shape == (B, T, 2 * H)
    assert isinstance(final, cells.LSTMState)
    assert final.h.shape == final.c.shape == (6, B, H)
    # the top layer's forward final h is its output at the last step; backward's at step 0
    assert_close(final.h[4], outputs[:, -1, :H])
    assert_close(final.h[5], outputs[:, 0, H:])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes(dtype):
    layer = recurrent.layer(cells.gru(H), num_layers=2)
    params = layer.init(jax.random.key(0), E, dtype)
    outputs, final = layer.apply(params, _inputs().astype(dtype), lengths=jnp.asarray(LENGTHS))
    assert outputs.dtype == dtype and final.dtype == dtype
    ref, _ = layer.apply(jax.tree.map(lambda a: a.astype(jnp.float32), params),
                         _inputs().astype(dtype).astype(jnp.float32),
                         lengths=jnp.asarray(LENGTHS))
    assert_close(outputs.astype(jnp.float32), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
def test_mixed_precision_bfloat16_inputs_float32_params(backward):
    """bf16 activations with f32 weights (the usual accelerator set-up): the carry is the
    promoted dtype, so the scan keeps one carry type, and results equal the f32 computation."""
    layer = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True, backward=backward)
    params = layer.init(jax.random.key(0), E)
    x16 = _inputs().astype(jnp.bfloat16)
    outputs, final = layer.apply(params, x16, lengths=jnp.asarray(LENGTHS))
    assert outputs.dtype == final.h.dtype == jnp.float32
    ref = layer.apply(params, x16.astype(jnp.float32), lengths=jnp.asarray(LENGTHS))
    assert_close((outputs, final), ref)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, x16)[0] ** 2))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_float64(x64):
    layer = recurrent.layer(cells.lstm(H), bidirectional=True)
    params = layer.init(jax.random.key(0), E, jnp.float64)
    outputs, final = layer.apply(params, _inputs().astype(jnp.float64))
    assert outputs.dtype == jnp.float64 and final.c.dtype == jnp.float64


def test_dropout_between_layers():
    """One convention: ``dropout_key=None`` (the default) is deterministic, a key switches dropout on."""
    layer = recurrent.layer(cells.lstm(H), num_layers=2, dropout=0.5)
    params = layer.init(jax.random.key(0), E)
    x = _inputs()
    plain = recurrent.layer(cells.lstm(H), num_layers=2).apply(params, x)
    assert_close(layer.apply(params, x), plain)
    assert_close(layer.apply(params, x, dropout_key=None), plain)
    a = layer.apply(params, x, dropout_key=jax.random.key(1))
    b = layer.apply(params, x, dropout_key=jax.random.key(2))
    assert not np.allclose(a[0], plain[0]) and not np.allclose(a[0], b[0])
    assert_close(layer.apply(params, x, dropout_key=jax.random.key(1)), a)      # same key, same mask
    # dropout never touches the first layer's states (it acts between layers)
    assert_close(a[1].h[0], plain[1].h[0])
    # it is layers.dropout with the key folded with the layer index
    h0 = recurrent.layer(cells.lstm(H)).apply({"layers": params["layers"][:1]}, x)[0]
    top = recurrent.layer(cells.lstm(H)).apply(
        {"layers": [{"forward": params["layers"][1]["forward"]}]},
        layers.dropout(h0, 0.5, jax.random.fold_in(jax.random.key(1), 0)))
    assert_close(a[0], top[0])
    with pytest.raises(TypeError, match="dropout_key must be a jax PRNG key"):
        layer.apply(params, x, dropout_key=1)


# ----------------------------------------------------------------------------- perturbation hook


def _loop_reference(layer, params, x, lengths, eps=None):
    """apply(..., perturbations=eps) as a Python loop: each (layer, direction) adds eps[:, t]
    to its carry after valid step t (eps None: nothing); padded steps keep the carry and
    output zero."""
    cfg = layer.config
    cell, h = cfg.cell, x
    finals = []
    for k in range(cfg.num_layers):
        outs = []
        for d in cfg.directions:
            carry = cell.initial_carry((x.shape[0],))
            steps = range(x.shape[1])
            ys = [None] * len(steps)
            for t in (steps if d == "forward" else reversed(steps)):
                new, _ = cell.step(params["layers"][k][d], carry, h[:, t])
                if eps is not None:
                    new = jax.tree.map(lambda a, e: a + e[:, t], new, eps[k][d])
                valid = (t < lengths)[:, None]
                carry = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, carry)
                ys[t] = jnp.where(valid, cell.output(carry), 0.0)
            finals.append(carry)
            outs.append(jnp.stack(ys, axis=1))
        h = jnp.concatenate(outs, axis=-1)
    return h, jax.tree.map(lambda *a: jnp.stack(a), *finals)


def _perturbations(layer, seed, scale=1.0):
    one = layer.config.cell.initial_carry((B, T))
    return [{d: jax.tree.map(lambda a, i=i: scale * _inputs(seed + i, a.shape), one)
             for i, d in enumerate(layer.config.directions)} for _ in range(layer.config.num_layers)]


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_perturbations_add_to_every_carry(name, backward):
    layer = recurrent.layer(CELLS[name], num_layers=2, bidirectional=True, backward=backward)
    params = layer.init(jax.random.key(0), E)
    x, lengths = _inputs(), jnp.asarray(LENGTHS)
    zeros = _perturbations(layer, 0, scale=0.0)
    assert_close(layer.apply(params, x, lengths=lengths, perturbations=zeros), layer.apply(params, x, lengths=lengths))
    eps = _perturbations(layer, 20, scale=0.1)
    assert_close(layer.apply(params, x, lengths=lengths, perturbations=eps),
           _loop_reference(layer, params, x, lengths, eps))


@pytest.mark.parametrize("backward", ["jvp", "vjp"])
def test_perturbation_gradients_on_the_fast_paths_equal_autodiff(backward):
    """With perturbations a fast-path layer runs the plain unroll; its gradients are autodiff's."""
    ref, fused = (recurrent.layer(CELLS["lstm"], num_layers=2, bidirectional=True, backward=b)
                  for b in ("autodiff", backward))
    params = ref.init(jax.random.key(0), E)
    eps = _perturbations(ref, 0, scale=0.0)

    def grads(layer):
        loss = lambda p, e: jnp.sum(jnp.sin(layer.apply(p, _inputs(), lengths=jnp.asarray(LENGTHS),  # noqa: E731
                                                          perturbations=e)[0]))
        return jax.grad(loss, argnums=(0, 1))(params, eps)
    want, got = grads(ref), grads(fused)
    assert_close(got, want)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(want[1]))


def test_bad_perturbations():
    layer = recurrent.layer(CELLS["lstm"], num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), E)
    good = _perturbations(layer, 0, scale=0.0)
    with pytest.raises(ValueError, match="perturbations must have the structure"):
        layer.apply(params, _inputs(), perturbations=[{"forward": good[0]["forward"]}] * 2)
    with pytest.raises(ValueError, match=r"perturbations must have the structure"):
        layer.apply(params, _inputs(), perturbations=good[:1])
    bad_shape = [{d: jax.tree.map(lambda a: a[:, :-1], p) for d, p in g.items()} for g in good]
    with pytest.raises(ValueError, match=r"perturbations leaves must have shape \(B, T, H\) = \(4, 6, 5\)"):
        layer.apply(params, _inputs(), perturbations=bad_shape)
    bad_dtype = jax.tree.map(lambda a: a.astype(jnp.bfloat16), good)
    with pytest.raises(TypeError, match="perturbations must have dtype float32"):
        layer.apply(params, _inputs(), perturbations=bad_dtype)


def test_perturbed_step_is_cached_per_cell_and_is_the_step_at_zero():
    cell = CELLS["gru"]
    assert recurrent.perturbed_step(cell) is recurrent.perturbed_step(cell)
    params = cell.init(jax.random.key(0), E)
    carry, x = _inputs(1, (B, H)), _inputs(2, (B, E))
    assert_close(recurrent.perturbed_step(cell)(params, carry, (x, jnp.zeros((B, H)))), cell.step(params, carry, x))


# ----------------------------------------------------------------------------- bad input

_LAYER = recurrent.layer(cells.lstm(H), num_layers=2)
_PARAMS = _LAYER.init(jax.random.key(0), E)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(x=jnp.zeros((T, E))), ValueError, r"x must have shape \(B, T, E\)"),
    (dict(x=jnp.zeros((B, T, E + 1))), ValueError, "input_size=3"),
    (dict(x=jnp.zeros((B, T, E), jnp.int32)), TypeError, "x must be floating"),
    (dict(lengths=jnp.array([1, 2, 3])), ValueError, r"lengths must have shape \(B,\)"),
    (dict(lengths=jnp.array([0, 2, 3, 4])), ValueError, r"lengths must lie in \[1, T\]"),
    (dict(lengths=jnp.array([1, 2, 3, T + 1])), ValueError, r"lengths must lie in \[1, T\]"),
    (dict(lengths=jnp.array([1.0, 2, 3, 4])), TypeError, "lengths must be integers"),
    (dict(initial_carry=cells.LSTMState(jnp.zeros((2, B, H + 1)), jnp.zeros((2, B, H + 1)))),
     ValueError, "initial_carry leaves must have shape"),
    (dict(initial_carry=jnp.zeros((2, B, H))), ValueError, "initial_carry must have the structure"),
    (dict(initial_carry=cells.LSTMState(jnp.zeros((2, B, H), jnp.bfloat16), jnp.zeros((2, B, H), jnp.bfloat16))),
     TypeError, "initial_carry must have dtype float32"),
])
def test_bad_apply_inputs(kwargs, exc, match):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", jnp.zeros((B, T, E)))
    with pytest.raises(exc, match=match):
        _LAYER.apply(_PARAMS, x, **kwargs)


def test_lengths_shape_is_checked_under_jit():
    with pytest.raises(ValueError, match="lengths must have shape"):
        jax.jit(_LAYER.apply)(_PARAMS, jnp.zeros((B, T, E)), lengths=jnp.ones((B + 1,), jnp.int32))


@pytest.mark.parametrize("make, exc, match", [
    (lambda: recurrent.layer(cells.gru(4), num_layers=0), ValueError, "num_layers must be >= 1"),
    (lambda: recurrent.layer(cells.gru(4), num_layers=2.0), TypeError, "num_layers must be an int >= 1"),
    (lambda: recurrent.layer(cells.gru(4), dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (lambda: recurrent.layer(cells.gru(4), dropout=-0.1), ValueError, r"dropout must be a finite number >= 0"),
    (lambda: recurrent.layer(cells.gru(4), bidirectional="yes"), TypeError, "bidirectional must be a bool"),
    (lambda: recurrent.layer("gru"), TypeError, "cell must be a seqjax.cells.Cell"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ----------------------------------------------------------------------------- properties (hypothesis)
# Shapes come from short lists: every new (cell, shape) compiles, so a few shapes keep this fast.

_CELL_NAMES = st.sampled_from(cells.CELL_NAMES)
_SEEDS = st.integers(0, 2 ** 16)
_PER_PATH = settings(max_examples=max(3, settings.default.max_examples // 3))      # per pytest case


@functools.lru_cache(maxsize=None)
def _cell(name):
    return cells.make(name, H)


@functools.lru_cache(maxsize=None)
def _jit_unroll(step, reverse, time_major, remat):
    return jax.jit(lambda p, c, xs, lengths: recurrent.unroll(step, p, c, xs, lengths=lengths, reverse=reverse,
                                                            time_major=time_major, remat=remat))


# The switches that pick code paths (reverse; remat's segmented scan) are swept by pytest, so that
# every path runs on every run; hypothesis draws the rest, half the profile's examples per case
# (this test is cheap). Every T but 1 is odd: remat's K = 2 leaves a part segment of masked
# padding steps. Choices are listed most telling first: hypothesis starts from the first.
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("remat", [None, 2], ids=["scan", "remat2"])
@settings(max_examples=max(3, settings.default.max_examples // 2))
@given(name=_CELL_NAMES, shape=st.sampled_from([(3, 5), (1, 7), (3, 3), (1, 1)]), time_major=st.booleans(),
       use_lengths=st.sampled_from([True, False]), jit=st.booleans(), seed=_SEEDS, data=st.data())
def test_property_scan_equals_python_loop(reverse, remat, name, shape, time_major, use_lengths, jit, seed, data):
    """``unroll`` (lax.scan, under jit or not, rematerialised in segments or not) == ``static_unroll``
    (a Python loop), for any cell, batch, length, direction, layout and initial carry."""
    (batch, steps), cell = shape, _cell(name)
    params = cell.init(jax.random.key(seed % 3), E)
    carry = jax.tree.map(lambda a: randn(seed + 1, a.shape), cell.initial_carry((batch,)))
    xs = randn(seed, (steps, batch, E) if time_major else (batch, steps, E))
    lengths = jnp.asarray(draw_lengths(data, batch, steps)) if use_lengths else None
    if jit:
        got = _jit_unroll(cell.step, reverse, time_major, remat)(params, carry, xs, lengths)
    else:
        got = recurrent.unroll(cell.step, params, carry, xs, lengths=lengths, reverse=reverse,
                               time_major=time_major, remat=remat)
    want = recurrent.static_unroll(cell.step, params, carry, xs, lengths=lengths, reverse=reverse,
                                   time_major=time_major)
    assert_close(got, want)


@functools.lru_cache(maxsize=None)
def _layer(name, num_layers, bidirectional, backward):
    """A layer and its jitted apply, built once per configuration (one compilation per shape)."""
    layer = recurrent.layer(_cell(name), num_layers=num_layers, bidirectional=bidirectional, backward=backward)
    return layer, jax.jit(layer.apply)


# bidirectional and the derivative path (recurrent.BACKWARDS) pick code paths: swept by pytest, as above.
_PATHS = pytest.mark.parametrize("bidirectional,backward",
                                 [(bidi, b) for bidi in (False, True) for b in recurrent.BACKWARDS],
                                 ids=[f"{'bidi' if bidi else 'uni'}-{b}" for bidi in (False, True)
                                      for b in recurrent.BACKWARDS])
_FUSABLE = tuple(n for n in cells.CELL_NAMES if _cell(n).pointwise_backward is not None)


def _draw_cell(data, backward):
    """A cell name of the registry (the "jvp" and "vjp" paths: one with a hand-written backward)."""
    return data.draw(st.sampled_from(cells.CELL_NAMES if backward == "autodiff" else _FUSABLE), label="cell")


_BATCH_SHAPES = st.tuples(st.sampled_from([1, 3]), st.sampled_from([2, 5]))           # (B, T)


@_PATHS
@_PER_PATH
@given(num_layers=st.sampled_from([1, 2]), shapes=st.tuples(_BATCH_SHAPES, _BATCH_SHAPES), seed=_SEEDS,
       data=st.data())
def test_property_padding_and_batch_invariance(bidirectional, backward, num_layers, shapes, seed, data):
    """A sequence of length n, placed at a random row of two batches of random sizes and padded
    lengths, with different companions, padding (random, up to 1e3) and lengths: its valid
    outputs and final state are the same in both, and its padded outputs are exactly zero."""
    layer, apply = _layer(_draw_cell(data, backward), num_layers, bidirectional, backward)
    params = layer.init(jax.random.key(seed % 3), E)
    n = data.draw(st.integers(1, min(steps for _, steps in shapes)), label="n")
    sequence = randn(seed, (n, E))
    carry_row = jax.tree.map(lambda a: randn(seed + 1, a.shape[:1] + a.shape[2:]), layer.initial_carry(1))
    runs = []
    for k, (batch, steps) in enumerate(shapes):
        row = data.draw(st.integers(0, batch - 1), label=f"row in batch {k}")
        lengths = draw_lengths(data, batch, steps)
        lengths[row] = n
        x = np.array(randn(seed + 10 * k + 2, (batch, steps, E)))
        x[row, :n] = sequence
        x[row, n:] = 1e3 * np.asarray(randn(seed + 10 * k + 3, (steps - n, E)))       # loud padding
        carry = jax.tree.map(lambda a, r: jnp.asarray(randn(seed + 10 * k + 4, a.shape)).at[:, row].set(r),
                             layer.initial_carry(batch), carry_row)
        outputs, final = apply(params, jnp.asarray(x), lengths=jnp.asarray(lengths), initial_carry=carry)
        np.testing.assert_array_equal(np.asarray(outputs[row, n:]), 0.0)
        runs.append((outputs[row, :n], jax.tree.map(lambda a: a[:, row], final)))
    assert_close(runs[0], runs[1])


_BAD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf])


@functools.lru_cache(maxsize=None)
def _layer_value_and_grad(name, num_layers, bidirectional, backward):
    layer, _ = _layer(name, num_layers, bidirectional, backward)

    def loss(params, x, lengths, weights):
        outputs, final = layer.apply(params, x, lengths=lengths)
        return jnp.sum(outputs * weights) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final)), (outputs, final)
    return layer, jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@_PATHS
@_PER_PATH
@given(num_layers=st.sampled_from([1, 2]), bad=_BAD_VALUES, seed=_SEEDS, data=st.data())
def test_property_nan_or_inf_in_padding_reaches_no_output_or_gradient(bidirectional, backward, num_layers, bad,
                                                                      seed, data):
    """NaN or Inf at random padded entries of x: outputs, final state, every parameter's gradient
    and the input gradient equal a clean run's (so all finite), and padded inputs get exactly zero."""
    batch, steps = 3, 5
    layer, value_and_grad = _layer_value_and_grad(_draw_cell(data, backward), num_layers, bidirectional, backward)
    params = layer.init(jax.random.key(seed % 3), E)
    lengths = draw_lengths(data, batch, steps, padded_row=True)
    clean = randn(seed, (batch, steps, E))
    poisoned, padded = poison_padding(data, clean, lengths, bad)
    weights = randn(seed + 1, (batch, steps, layer.config.num_directions * H))
    (loss_c, out_c), (gp_c, gx_c) = value_and_grad(params, clean, jnp.asarray(lengths), weights)
    (loss_p, out_p), (gp_p, gx_p) = value_and_grad(params, poisoned, jnp.asarray(lengths), weights)
    assert np.isfinite(float(loss_p))
    assert_close(out_p, out_c)
    for leaf in jax.tree.leaves(gp_p):
        assert np.isfinite(np.asarray(leaf)).all()
    assert_close(gp_p, gp_c, rtol=1e-5, atol=1e-5)
    gx_p, gx_c = np.asarray(gx_p), np.asarray(gx_c)
    assert np.isfinite(gx_p[~padded]).all()
    assert_close(gx_p[~padded], gx_c[~padded], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gx_p[padded], 0.0)


# ----------------------------------------------------------------------------- remat


@pytest.mark.parametrize("backward", ["jvp", "autodiff"])                 # the paths that take remat
@pytest.mark.parametrize("K", [1, 4, 7, 23, 40])
def test_remat_gives_the_same_values_and_gradients(K, backward):
    """Segments of K steps under jax.checkpoint (K dividing T or not, K >= T) change nothing."""
    x = randn(11, (3, 23, 4))
    lengths = jnp.array([23, 7, 15])
    plain = recurrent.layer(cells.lstm(6), num_layers=2, bidirectional=True, backward="autodiff")
    remat = recurrent.layer(cells.lstm(6), num_layers=2, bidirectional=True, remat=K, backward=backward)
    params = plain.init(jax.random.key(0), 4)

    def loss(layer):
        def f(p, x):
            ys, final = layer.apply(p, x, lengths=lengths)
            return jnp.sum(ys ** 2) + sum(jnp.sum(a ** 2) for a in jax.tree.leaves(final))
        return jax.value_and_grad(f, argnums=(0, 1))
    (v0, g0), (v1, g1) = jax.jit(lambda p, x: (loss(plain)(p, x), loss(remat)(p, x)))(params, x)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    chex.assert_trees_all_close(g1, g0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backward", ["jvp", "autodiff"])
def test_remat_bounds_gradient_memory(backward):
    """XLA's own accounting of the compiled gradient: O(T/K + K) states instead of O(T)."""
    T, B, E, H = 4096, 8, 16, 32
    x = jax.ShapeDtypeStruct((B, T, E), jnp.float32)

    def temp_bytes(remat):
        layer = recurrent.layer(cells.lstm(H), remat=remat, backward=backward)
        p = jax.eval_shape(lambda: layer.init(jax.random.key(0), E))
        f = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x)[0] ** 2)))
        return f.lower(p, x).compile().memory_analysis().temp_size_in_bytes
    assert temp_bytes(64) < 0.35 * temp_bytes(None)


def test_remat_is_refused_with_the_vjp_backward_and_checked():
    with pytest.raises(ValueError, match="remat and fused_backward=True cannot be combined"):
        recurrent.layer(cells.lstm(4), remat=8, fused_backward=True)
    with pytest.raises(ValueError, match="remat and backward='vjp' cannot be combined"):
        recurrent.layer(cells.lstm(4), remat=8, backward="vjp")
    with pytest.raises(ValueError, match="remat must be >= 1"):
        recurrent.layer(cells.lstm(4), remat=0)
