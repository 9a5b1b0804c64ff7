"""The cells and the unroll: scan == loop, jit == no jit, batched == per example,
padding invariance through gradients, dtypes, dropout and every bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    return jax.random.normal(jax.random.key(seed), shape)


def _close(a, b, **kw):
    kw.setdefault("rtol", 1e-5)
    kw.setdefault("atol", 1e-6)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw), a, b)


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
    _close(got, want)


@pytest.mark.parametrize("name", CELLS)
def test_time_major_matches_batch_major(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(1), E)
    xs = _inputs()
    c_bm, y_bm = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), xs, lengths=LENGTHS)
    c_tm, y_tm = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), jnp.swapaxes(xs, 0, 1),
                                  lengths=LENGTHS, time_major=True)
    _close(c_bm, c_tm)
    _close(y_bm, jnp.swapaxes(y_tm, 0, 1))


@pytest.mark.parametrize("name", CELLS)
def test_step_equations_against_numpy(name):
    """Each cell's step written out by hand in NumPy from its docstring equations."""
    cell = CELLS[name]
    p = {k: np.asarray(v, np.float64) for k, v in cell.init(jax.random.key(2), E).items()}
    x = np.asarray(_inputs(3, (B, E)), np.float64)
    h = np.asarray(_inputs(4, (B, H)), np.float64)
    c = np.asarray(_inputs(5, (B, H)), np.float64)
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    xp, hp = x @ p["w_ih"] + p["b_ih"], h @ p["w_hh"] + p["b_hh"]
    if name == "lstm":
        i, f, g, o = np.split(xp + hp, 4, axis=-1)
        c_new = sig(f) * c + sig(i) * np.tanh(g)
        want = (sig(o) * np.tanh(c_new), c_new)
        carry, y = cell.step(cell_params(p), cells.LSTMState(jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)),
                             jnp.asarray(x, jnp.float32))
        _close((carry.h, carry.c), want, rtol=1e-5, atol=1e-5)
        _close(y, want[0], rtol=1e-5, atol=1e-5)
        return
    if name == "gru":
        (a_r, a_z, a_n), (u_r, u_z, u_n) = np.split(xp, 3, -1), np.split(hp, 3, -1)
        r, z = sig(a_r + u_r), sig(a_z + u_z)
        n = np.tanh(a_n + r * u_n)
        want = (1 - z) * n + z * h
    else:
        act = {"rnn_tanh": np.tanh, "rnn_relu": lambda a: np.maximum(a, 0), "rnn_linear": lambda a: a}[name]
        want = act(xp + hp)
    carry, y = cell.step(cell_params(p), jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))
    _close(carry, want, rtol=1e-5, atol=1e-5)
    _close(y, want, rtol=1e-5, atol=1e-5)


def cell_params(p):
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def test_lstm_forget_bias_and_default_init():
    H_big = 64
    default = cells.lstm(H_big).init(jax.random.key(0), 7)
    bound = 1 / np.sqrt(H_big)
    for leaf in jax.tree.leaves(default):
        assert float(jnp.abs(leaf).max()) <= bound
    shifted = cells.lstm(H_big, forget_bias=1.0).init(jax.random.key(0), 7)
    delta = np.asarray(shifted["b_ih"] - default["b_ih"])
    np.testing.assert_allclose(delta[H_big:2 * H_big], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(delta, np.s_[H_big:2 * H_big]), 0.0)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "gru"])
def test_any_batch_shape(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), E)
    x = _inputs(1, (2, 3, E))
    carry, y = cell.step(params, cell.initial_carry((2, 3)), x)
    assert y.shape == (2, 3, H)
    flat_carry, flat_y = cell.step(params, cell.initial_carry((6,)), x.reshape(6, E))
    _close(y.reshape(6, H), flat_y)
    scalar_carry, scalar_y = cell.step(params, cell.initial_carry(()), x[0, 0])
    assert scalar_y.shape == (H,)
    _close(scalar_y, y[0, 0])


# ----------------------------------------------------------------------------- layers

LAYERS = {
    (name, L, bidi): recurrent.layer(CELLS[name], num_layers=L, bidirectional=bidi)
    for name in ("rnn_tanh", "lstm", "gru") for L in (1, 2) for bidi in (False, True)
}


@functools.lru_cache(maxsize=None)
def _jitted_apply(key):
    return jax.jit(LAYERS[key].apply)


@pytest.mark.parametrize("key", list(LAYERS), ids=str)
def test_layer_jit_equals_no_jit(key):
    layer = LAYERS[key]
    params = layer.init(jax.random.key(0), E)
    x = _inputs()
    lengths = jnp.asarray(LENGTHS)
    _close(_jitted_apply(key)(params, x, lengths=lengths), layer.apply(params, x, lengths=lengths))


@pytest.mark.parametrize("key", [k for k in LAYERS if k[1] == 2], ids=str)
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
        _close(outputs[b, :n], out_b[0])
        np.testing.assert_array_equal(np.asarray(outputs[b, n:]), 0.0)
        _close(jax.tree.map(lambda a: a[:, b], final), jax.tree.map(lambda a: a[:, 0], final_b))


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

    grad = np.asarray(jax.grad(loss)(x))
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(grad[pad] == 0.0)
    assert np.all(np.abs(grad[~pad]).sum(-1) > 0)        # valid steps do receive gradient
    # and the padded values themselves cannot change any output
    x_noise = jnp.where(pad[..., None], 1e3 * _inputs(3), x)
    _close(layer.apply(params, x_noise, lengths=lengths), layer.apply(params, x, lengths=lengths))


def test_layer_shapes_and_final_layout():
    layer = recurrent.layer(cells.lstm(H), num_layers=3, bidirectional=True)
    params = layer.init(jax.random.key(0), E)
    outputs, final = layer.apply(params, _inputs())
    assert outputs.shape == (B, T, 2 * H)
    assert isinstance(final, cells.LSTMState)
    assert final.h.shape == final.c.shape == (6, B, H)
    # the top layer's forward final h is its output at the last step; backward's at step 0
    _close(final.h[4], outputs[:, -1, :H])
    _close(final.h[5], outputs[:, 0, H:])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes(dtype):
    layer = recurrent.layer(cells.gru(H), num_layers=2)
    params = layer.init(jax.random.key(0), E, dtype)
    outputs, final = layer.apply(params, _inputs().astype(dtype), lengths=jnp.asarray(LENGTHS))
    assert outputs.dtype == dtype and final.dtype == dtype
    ref, _ = layer.apply(jax.tree.map(lambda a: a.astype(jnp.float32), params), _inputs().astype(dtype).astype(jnp.float32),
                         lengths=jnp.asarray(LENGTHS))
    _close(outputs.astype(jnp.float32), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("fused", [False, True])
def test_mixed_precision_bfloat16_inputs_float32_params(fused):
    """bf16 activations with f32 weights (the usual accelerator set-up): the carry is the
    promoted dtype, so the scan keeps one carry type, and results equal the f32 computation."""
    layer = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True, fused_backward=fused)
    params = layer.init(jax.random.key(0), E)
    x16 = _inputs().astype(jnp.bfloat16)
    outputs, final = layer.apply(params, x16, lengths=jnp.asarray(LENGTHS))
    assert outputs.dtype == final.h.dtype == jnp.float32
    ref = layer.apply(params, x16.astype(jnp.float32), lengths=jnp.asarray(LENGTHS))
    _close((outputs, final), ref)
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
    _close(layer.apply(params, x), plain)
    _close(layer.apply(params, x, dropout_key=None), plain)
    a = layer.apply(params, x, dropout_key=jax.random.key(1))
    b = layer.apply(params, x, dropout_key=jax.random.key(2))
    assert not np.allclose(a[0], plain[0]) and not np.allclose(a[0], b[0])
    _close(layer.apply(params, x, dropout_key=jax.random.key(1)), a)      # same key, same mask
    # dropout never touches the first layer's states (it acts between layers)
    _close(a[1].h[0], plain[1].h[0])
    # it is layers.dropout with the key folded with the layer index
    h0 = recurrent.layer(cells.lstm(H)).apply({"layers": params["layers"][:1]}, x)[0]
    top = recurrent.layer(cells.lstm(H)).apply(
        {"layers": [{"forward": params["layers"][1]["forward"]}]},
        layers.dropout(h0, 0.5, jax.random.fold_in(jax.random.key(1), 0)))
    _close(a[0], top[0])
    with pytest.raises(TypeError, match="dropout_key must be a jax PRNG key"):
        layer.apply(params, x, dropout_key=1)


# ----------------------------------------------------------------------------- perturbation hook


def _perturbed_reference(layer, params, x, eps, lengths):
    """apply(..., perturbations=eps) as a Python loop: each (layer, direction) adds eps[:, t]
    to its carry after valid step t; padded steps keep the carry and output zero."""
    cfg = layer.config
    cell, h = cfg.cell, x
    finals = []
    for k in range(cfg.num_layers):
        outs = []
        for d in cfg.directions:
            carry = cell.initial_carry((x.shape[0],))
            ys = [None] * T
            for t in (range(T) if d == "forward" else reversed(range(T))):
                new, _ = cell.step(params["layers"][k][d], carry, h[:, t])
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


@pytest.mark.parametrize("fused", [False, True], ids=["autodiff", "fused"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_perturbations_add_to_every_carry(name, fused):
    layer = recurrent.layer(CELLS[name], num_layers=2, bidirectional=True, fused_backward=fused)
    params = layer.init(jax.random.key(0), E)
    x, lengths = _inputs(), jnp.asarray(LENGTHS)
    zeros = _perturbations(layer, 0, scale=0.0)
    _close(layer.apply(params, x, lengths=lengths, perturbations=zeros), layer.apply(params, x, lengths=lengths))
    eps = _perturbations(layer, 20, scale=0.1)
    _close(layer.apply(params, x, lengths=lengths, perturbations=eps),
           _perturbed_reference(layer, params, x, eps, lengths))


def test_perturbation_gradients_with_fused_backward_equal_autodiff():
    """With perturbations the fused layer runs the plain unroll; its gradients are autodiff's."""
    ref, fused = (recurrent.layer(CELLS["lstm"], num_layers=2, bidirectional=True, fused_backward=f)
                  for f in (False, True))
    params = ref.init(jax.random.key(0), E)
    eps = _perturbations(ref, 0, scale=0.0)

    def grads(layer):
        loss = lambda p, e: jnp.sum(jnp.sin(layer.apply(p, _inputs(), lengths=jnp.asarray(LENGTHS),  # noqa: E731
                                                          perturbations=e)[0]))
        return jax.grad(loss, argnums=(0, 1))(params, eps)
    want, got = grads(ref), grads(fused)
    _close(got, want)
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
    _close(recurrent.perturbed_step(cell)(params, carry, (x, jnp.zeros((B, H)))), cell.step(params, carry, x))


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
    (lambda: cells.simple_rnn(4, "softplus"), ValueError, "activation must be one of"),
    (lambda: cells.make("lstmm", 4), ValueError, "cell name must be one of"),
    (lambda: cells.lstm(0), ValueError, "hidden_size must be >= 1"),
    (lambda: cells.gru(2.5), TypeError, "hidden_size must be an int"),
    (lambda: recurrent.layer(cells.gru(4), num_layers=0), ValueError, "num_layers must be >= 1"),
    (lambda: recurrent.layer(cells.gru(4), num_layers=2.0), TypeError, "num_layers must be an int >= 1"),
    (lambda: recurrent.layer(cells.gru(4), dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (lambda: recurrent.layer(cells.gru(4), dropout=-0.1), ValueError, r"dropout must be a finite number >= 0"),
    (lambda: recurrent.layer(cells.gru(4), bidirectional="yes"), TypeError, "bidirectional must be a bool"),
    (lambda: recurrent.layer("gru"), TypeError, "cell must be a seqjax.cells.Cell"),
    (lambda: cells.gru(4).init(jax.random.key(0), 0), ValueError, "input_size must be >= 1"),
    (lambda: cells.gru(4).init(jax.random.key(0), 3, jnp.int32), TypeError, "dtype must be a floating"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_make_by_name():
    assert cells.make("rnn_relu", 3).name == "rnn_relu"
    assert cells.make("rnn", 3, activation="linear").name == "rnn_linear"
    assert cells.make("gru", 3).hidden_size == 3
