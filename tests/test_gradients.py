"""seqjax.gradients: analytic oracles in float64, jacrev references, causality, bad input, and NaN/Inf
in padding never reaching the state gradients (hypothesis)."""

import functools
import gc
import weakref

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import draw_lengths, poison_padding, randn
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from seqjax import cells, recurrent
from seqjax import gradients as G

KEY = jax.random.key(0)


def _orthogonal(key, n, dtype=jnp.float64):
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), dtype))
    return q * jnp.sign(jnp.diag(r))


def _linear_rnn(w_hh, E=3):
    """A bias-free linear RNN h_t = h_{t-1} W + x_t U with W given."""
    H = w_hh.shape[0]
    cell = cells.simple_rnn(H, "linear", bias=False)
    params = cell.init(KEY, E, w_hh.dtype)
    params["w_hh"] = w_hh
    return cell, params


def _mixed_loss(T):
    """A loss that reads every step with different weights plus the final step."""
    w = jnp.linspace(0.3, 1.7, T)

    def loss(ys):
        return jnp.sum(w[None, :, None] * jnp.sin(ys)) + jnp.sum(ys[:, -1] ** 2)
    return loss


# ----------------------------------------------------------------------------- analytic oracles


# Compiled once for the module (cells are hashable NamedTuples of module-level functions).
_sg = jax.jit(G.state_gradients, static_argnums=(0, 3))
_jn = jax.jit(G.jacobian_norms, static_argnums=(0,), static_argnames=("method", "steps", "num_iters"))
_LIN6 = cells.simple_rnn(6, "linear", bias=False)


def _final_dot_v(ys, v):
    return jnp.sum(ys[:, -1] @ v)


def test_linear_rnn_oracle(x64):
    """W = rho Q, Q orthogonal, L = v . h_T  =>  ||dL/dh_t|| = rho^(T-t) ||v|| exactly."""
    H, T, B = 6, 25, 2
    params = _LIN6.init(KEY, 3, jnp.float64)
    xs = jax.random.normal(jax.random.key(2), (B, T, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(3), (H,), jnp.float64)
    loss = functools.partial(_final_dot_v, v=v)
    distance = T - 1 - np.arange(T)                        # steps between h_t and h_T
    for rho in (0.5, 0.9, 1.0, 1.3):
        params["w_hh"] = rho * _orthogonal(jax.random.key(1), H)
        g = G.state_gradients(_LIN6, params, xs, loss)
        assert g.dtype == jnp.float64 and g.shape == (B, T, H)
        expected = rho ** distance * np.linalg.norm(v)
        np.testing.assert_allclose(np.linalg.norm(g, axis=-1), np.broadcast_to(expected, (B, T)), rtol=1e-12)
        # the Jacobian norms give the same line without v
        for method in ("exact", "power"):
            np.testing.assert_allclose(_jn(_LIN6, params, xs, method=method, num_iters=20),
                                       np.broadcast_to(rho ** distance, (B, T)), rtol=1e-10)


@pytest.mark.parametrize("f_logit", [-1.0, 2.0, 40.0])   # f = 0.27, 0.88, 1.0 (exactly, in float64)
def test_lstm_constant_forget_gate_cell_path(x64, f_logit):
    """Forget gate held at f, no recurrent weights: only the cell path links steps, dc_s/dc_t = f^(s-t).

    With L = ||h_T||^2, the last state c_T feeds nothing (the output is h_T, made from
    c_T inside the last step), so dL/dc_T = 0 and, for t < T, dL/dc_t = f^(T-1-t) dL/dc_{T-1}:
    geometric in the distance, and constant for f = 1 (the constant error carousel).
    """
    H, T, B = 4, 30, 3
    cell = cells.lstm(H)
    params = cell.init(KEY, 2, jnp.float64)
    params["w_hh"] = jnp.zeros_like(params["w_hh"])                    # only the cell path links steps
    params["w_ih"] = params["w_ih"].at[:, H:2 * H].set(0.0)            # forget pre-activation = bias only
    params["b_ih"] = params["b_ih"].at[H:2 * H].set(f_logit)
    params["b_hh"] = params["b_hh"].at[H:2 * H].set(0.0)
    f = float(jax.nn.sigmoid(jnp.float64(f_logit)))
    xs = jax.random.normal(jax.random.key(4), (B, T, 2), jnp.float64)
    g = G.state_gradients(cell, params, xs, lambda ys: jnp.sum(ys[:, -1] ** 2))
    assert isinstance(g, cells.LSTMState) and g.c.shape == (B, T, H)
    distance = T - 2 - np.arange(T - 1)                               # steps from c_t to c_{T-1}
    np.testing.assert_allclose(g.c[:, :-1], (f ** distance)[None, :, None] * g.c[:, -2:-1], rtol=1e-12, atol=0)
    assert np.all(np.abs(np.asarray(g.c[:, -2])) > 0)
    assert np.all(np.asarray(g.c[:, -1]) == 0.0)                       # final c is read by nothing
    assert np.all(np.asarray(g.h[:, :-1]) == 0.0)                      # h_t feeds nothing later
    if f_logit == 40.0:
        assert f == 1.0
        np.testing.assert_array_equal(g.c[:, :-1], jnp.broadcast_to(g.c[:, -2:-1], g.c[:, :-1].shape))


def test_non_normal_transient_growth(x64):
    """W = [[0.5, 4], [0, 0.5]]: spectral radius 0.5 yet ||W^k|| rises to about 4 before decaying."""
    T = 40
    W = jnp.array([[0.5, 4.0], [0.0, 0.5]], jnp.float64)
    cell, params = _linear_rnn(W, E=1)
    xs = jnp.ones((1, T, 1), jnp.float64)
    k = T - 1 - np.arange(T)                                           # distance to h_T
    # closed form: W^k = [[0.5^k, 4k 0.5^(k-1)], [0, 0.5^k]]
    Wk = np.zeros((T, 2, 2))
    Wk[:, 0, 0] = Wk[:, 1, 1] = 0.5 ** k
    Wk[:, 0, 1] = 4.0 * k * 0.5 ** (k - 1.0)
    expected = np.linalg.norm(Wk, ord=2, axis=(1, 2))
    assert max(abs(np.linalg.eigvals(np.asarray(W)))) == 0.5
    assert expected.max() > 4.0 and expected[0] < 1e-6                 # transient growth, then decay
    for method in ("exact", "power"):
        np.testing.assert_allclose(G.jacobian_norms(cell, params, xs, method=method)[0], expected, rtol=1e-9)
    # with h_T = h_t W^k and L = e_2 . h_T, dL/dh_t = W^k e_2 = (4k 0.5^(k-1), 0.5^k)
    g = G.state_gradients(cell, params, xs, lambda ys: jnp.sum(ys[:, -1, 1]))
    np.testing.assert_allclose(g[0], Wk[:, :, 1], rtol=1e-12)


# ----------------------------------------------------------------------------- jacrev references


def _cell_reference(cell, params, xs, loss_fn, carry0):
    """dL/dh_t for every t by restarting the sequence from h_t (a Python loop) under jax.jacrev."""
    T = xs.shape[1]
    states, c = [], carry0
    for t in range(T):
        c, _ = cell.step(params, c, xs[:, t])
        states.append(c)

    def loss_from(t, s):
        ys, c = [cell.output(states[u]) for u in range(t)] + [cell.output(s)], s
        for u in range(t + 1, T):
            c, y = cell.step(params, c, xs[:, u])
            ys.append(y)
        return loss_fn(jnp.stack(ys, axis=1))

    grads = [jax.jacrev(functools.partial(loss_from, t))(states[t]) for t in range(T)]
    return jax.tree.map(lambda *a: jnp.stack(a, axis=1), *grads)


@pytest.mark.parametrize("name", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_state_gradients_match_jacrev_reference(x64, name):
    B, T, E, H = 2, 5, 3, 4
    cell = cells.make(name, H)
    params = cell.init(jax.random.key(5), E, jnp.float64)
    xs = jax.random.normal(jax.random.key(6), (B, T, E), jnp.float64)
    carry0 = jax.tree.map(lambda a: 0.3 * jnp.ones_like(a), cell.initial_carry((B,), jnp.float64))
    loss = _mixed_loss(T)
    got = G.state_gradients(cell, params, xs, loss, initial_carry=carry0)
    want = jax.jit(functools.partial(_cell_reference, cell, loss_fn=loss))(params, xs, carry0=carry0)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):   # LSTM: both h and c
        assert a.shape == (B, T, H)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # jit == no jit
    jitted = _sg(cell, params, xs, loss, initial_carry=carry0)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _layer_reference(rec, params, xs, loss_fn):
    """Per-layer, per-direction dL/dh_t: restart layer k's direction d from h_t, rerun the layers above."""
    cfg = rec.config
    cell, H, T = cfg.cell, cfg.cell.hidden_size, xs.shape[1]
    dirs = ("forward", "backward") if cfg.bidirectional else ("forward",)
    single = recurrent.layer(cell, bidirectional=cfg.bidirectional)
    one = lambda k, h: single.apply({"layers": [params["layers"][k]]}, h)[0]   # noqa: E731
    inputs = [xs]
    for k in range(cfg.num_layers):
        inputs.append(one(k, inputs[-1]))
    result = []
    for k in range(cfg.num_layers):
        per_dir = {}
        for j, d in enumerate(dirs):
            p, x = params["layers"][k][d], inputs[k]
            order = list(range(T)) if d == "forward" else list(reversed(range(T)))
            states, c = {}, cell.initial_carry((xs.shape[0],), xs.dtype)
            for t in order:
                c, _ = cell.step(p, c, x[:, t])
                states[t] = c

            def loss_from(t, s, p=p, x=x, order=order, states=states, j=j):
                pos = order.index(t)
                ys = {u: cell.output(states[u]) for u in order[:pos]}
                ys[t], c = cell.output(s), s
                for u in order[pos + 1:]:
                    c, ys[u] = cell.step(p, c, x[:, u])
                own = jnp.stack([ys[u] for u in range(T)], axis=1)            # (B, T, H)
                out = inputs[k + 1].at[..., j * H:(j + 1) * H].set(own)
                for kk in range(k + 1, cfg.num_layers):
                    out = one(kk, out)
                return loss_fn(out)

            grads = [jax.jacrev(functools.partial(loss_from, t))(states[t]) for t in range(T)]
            per_dir[d] = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *grads)
        result.append(per_dir)
    return result


@pytest.mark.parametrize("name,bidirectional", [("lstm", False), ("gru", True)])
def test_multilayer_state_gradients_match_jacrev_reference(x64, name, bidirectional):
    B, T, E, H, L = 2, 3, 3, 3, 2
    rec = recurrent.layer(cells.make(name, H), num_layers=L, bidirectional=bidirectional)
    params = rec.init(jax.random.key(7), E, jnp.float64)
    xs = jax.random.normal(jax.random.key(8), (B, T, E), jnp.float64)
    loss = _mixed_loss(T)
    got = G.state_gradients(rec, params, xs, loss)
    want = jax.jit(functools.partial(_layer_reference, rec, loss_fn=loss))(params, xs)
    assert isinstance(got, list) and len(got) == L
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == (B, T, H)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # the perturbed forward pass (the layer's own hook) with eps = 0 is the layer itself
    zeros = jax.tree.map(jnp.zeros_like, got)
    np.testing.assert_allclose(rec.apply(params, xs, perturbations=zeros)[0], rec.apply(params, xs)[0],
                               rtol=1e-14)


def test_lengths_padded_steps_have_zero_gradient_and_valid_part_matches(x64):
    B, T, E, H = 3, 7, 2, 4
    cell = cells.gru(H)
    params = cell.init(jax.random.key(9), E, jnp.float64)
    xs = jax.random.normal(jax.random.key(10), (B, T, E), jnp.float64)
    lengths = jnp.array([7, 3, 5])
    w = jnp.linspace(0.5, 2.0, T)
    loss = lambda ys: jnp.sum(w[None, :, None] * jnp.tanh(ys))         # noqa: E731
    g = _sg(cell, params, xs, loss, lengths=lengths)
    for b, n in enumerate(np.asarray(lengths)):
        assert np.all(np.asarray(g[b, n:]) == 0.0)
        alone = _sg(cell, params, xs[b:b + 1, :n], lambda ys, n=n: jnp.sum(w[None, :n, None] * jnp.tanh(ys)))
        np.testing.assert_allclose(g[b, :n], alone[0], rtol=1e-12)


def test_output_gradient_is_only_the_explicit_part(x64):
    """Under a final-step loss, d loss / d ys is zero before T; the total dL/dh_t is not."""
    B, T, E, H = 2, 6, 2, 3
    cell = cells.simple_rnn(H)
    params = cell.init(KEY, E, jnp.float64)
    xs = jax.random.normal(KEY, (B, T, E), jnp.float64)
    loss = lambda ys: jnp.sum(ys[:, -1] ** 2)                           # noqa: E731
    ys = recurrent.unroll(cell.step, params, cell.initial_carry((B,), jnp.float64), xs)[1]
    g_out = jax.grad(loss)(ys)
    g_state = G.state_gradients(cell, params, xs, loss)
    assert np.all(np.asarray(g_out[:, :-1]) == 0.0)
    assert np.all(np.linalg.norm(g_state[:, :-1], axis=-1) > 1e-6)
    np.testing.assert_allclose(g_state[:, -1], g_out[:, -1], rtol=1e-12)


# ----------------------------------------------------------------------------- Jacobian norms


def _composed_jacobian_norms(cell, params, xs):
    """Reference: materialise dh_T/dh_t with jax.jacrev of the composed steps (Python loop), take ord-2 norms."""
    B, T = xs.shape[:2]
    _, unravel = ravel_pytree(cell.initial_carry((), xs.dtype))    # one example's carry <-> a vector (n,)
    carry, states = cell.initial_carry((B,), xs.dtype), []
    for t in range(T):
        carry, _ = cell.step(params, carry, xs[:, t])
        states.append(jax.vmap(lambda c: ravel_pytree(c)[0])(carry))   # (B, n)

    def compose(z, x_rest):                    # flat state after step t -> flat final state
        c = unravel(z)
        for u in range(x_rest.shape[0]):
            c, _ = cell.step(params, c, x_rest[u])
        return ravel_pytree(c)[0]

    norms = []
    for t in range(T):
        J = jax.vmap(jax.jacrev(compose))(states[t], xs[:, t + 1:])        # (B, n, n)
        norms.append(jnp.linalg.svd(J, compute_uv=False)[:, 0])
    return jnp.stack(norms, axis=1)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "gru"])
def test_jacobian_norms_exact_matches_composed_jacrev_and_power(x64, name):
    B, T, E, H = 2, 6, 3, 5
    cell = cells.make(name, H)
    params = cell.init(jax.random.key(11), E, jnp.float64)
    params["w_hh"] = 2.0 * params["w_hh"]
    xs = jax.random.normal(jax.random.key(12), (B, T, E), jnp.float64)
    exact = _jn(cell, params, xs, method="exact")
    assert exact.shape == (B, T)
    ref = jax.jit(functools.partial(_composed_jacobian_norms, cell))(params, xs)
    np.testing.assert_allclose(exact, ref, rtol=1e-10)
    steps = (0, 3, T - 1)
    np.testing.assert_allclose(_jn(cell, params, xs, method="power", steps=steps, num_iters=200),
                               exact[:, steps], rtol=1e-6)


# ----------------------------------------------------------------------------- compilation reuse


def _counting_lstm(H):
    """An LSTM cell whose step counts how often it is traced (each new trace of a scan traces it)."""
    base, traces = cells.lstm(H), [0]

    def step(params, carry, x):
        traces[0] += 1
        return base.step(params, carry, x)
    return base._replace(step=step), traces


class _CompileCounter:
    """Counts XLA backend compilations (jax.monitoring events) inside a ``with`` block."""

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, name, _duration, **_):
        if name.endswith("backend_compile_duration"):
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def test_new_params_reuse_one_compilation_and_stay_correct(x64):
    """Eager calls over checkpoints: the second call with new params of the same shapes
    traces no scan and compiles nothing, returns the reference values, and the params
    are not kept alive by a jit cache (step closures over params used to leak there)."""
    B, T, E, H = 2, 4, 3, 3
    cell, traces = _counting_lstm(H)
    rec = recurrent.layer(cell, bidirectional=True)
    xs = jax.random.normal(jax.random.key(13), (B, T, E), jnp.float64)
    carry0 = cell.initial_carry((B,), jnp.float64)
    loss = _mixed_loss(T)

    def analyse(cell_params, layer_params):
        return (G.jacobian_norms(cell, cell_params, xs, method="exact"),
                G.jacobian_norms(cell, cell_params, xs, method="power", steps=(0, T - 2), num_iters=200),
                G.state_gradients(cell, cell_params, xs, loss),
                G.state_gradients(rec, layer_params, xs, loss))

    analyse(cell.init(jax.random.key(14), E, jnp.float64), rec.init(jax.random.key(15), E, jnp.float64))
    params = cell.init(jax.random.key(16), E, jnp.float64)
    params["w_hh"] = 2.0 * params["w_hh"]                  # different values, same shapes
    layer_params = rec.init(jax.random.key(17), E, jnp.float64)
    traces_before = traces[0]
    with _CompileCounter() as compiles:
        exact, power, g_cell, g_layer = jax.block_until_ready(analyse(params, layer_params))
    assert traces[0] == traces_before, "a scan was retraced for new params"
    assert compiles.count == 0, f"{compiles.count} XLA compilations for new params of the same shapes"

    ref_cell = jax.jit(functools.partial(_cell_reference, cell, loss_fn=loss))(params, xs, carry0=carry0)
    ref_layer = jax.jit(functools.partial(_layer_reference, rec, loss_fn=loss))(layer_params, xs)
    np.testing.assert_allclose(exact, jax.jit(functools.partial(_composed_jacobian_norms, cell))(params, xs),
                               rtol=1e-10)
    np.testing.assert_allclose(power, exact[:, [0, T - 2]], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_cell), jax.tree.leaves(ref_cell)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(jax.tree.leaves(g_layer), jax.tree.leaves(ref_layer)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

    alive = weakref.ref(params["w_hh"])
    del params, exact, power, g_cell
    gc.collect()
    assert alive() is None, "jacobian_norms / state_gradients kept the params alive"


# ----------------------------------------------------------------------------- attention-style helpers


def test_input_gradient_norms_causal_function_gives_zero_from_the_future():
    B, T, D = 2, 9, 4
    x = jax.random.normal(KEY, (B, T, D))
    fn = lambda x: jnp.cumsum(jnp.tanh(x), axis=1)                      # causal in time  # noqa: E731
    norms = G.input_gradient_norms(fn, x, position=4)
    assert norms.shape == (B, T)
    assert np.all(np.asarray(norms[:, 5:]) == 0.0) and np.all(np.asarray(norms[:, :5]) > 0)
    np.testing.assert_allclose(G.input_gradient_norms(fn, x, position=-1, loss_fn=jnp.sum),
                               jnp.linalg.norm(1 - jnp.tanh(x) ** 2, axis=-1), rtol=1e-6)
    # the default loss 0.5*||y_p||^2: dL/dx_t = y_p * (1 - tanh(x_t)^2)
    y_last = fn(x)[:, -1:]
    np.testing.assert_allclose(G.input_gradient_norms(fn, x, position=-1),
                               jnp.linalg.norm(y_last * (1 - jnp.tanh(x) ** 2), axis=-1), rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_causal_attention_gives_exactly_zero_gradient_from_the_future(norm_first):
    """A causal Transformer encoder: the loss at position p has exactly zero gradient w.r.t. x_t, t > p."""
    from seqjax import transformer
    from seqjax.attention import causal_mask
    B, T, D = 2, 7, 8
    stack = transformer.encoder(transformer.StackConfig(model_size=D, num_heads=2, ff_size=16, num_layers=2,
                                                        dropout=0.0, norm_first=norm_first, final_norm=norm_first))
    params = stack.init(jax.random.key(13))
    x = jax.random.normal(jax.random.key(14), (B, T, D))
    fn = lambda x: stack.apply(params, x, mask=causal_mask(T))          # noqa: E731
    for p in (0, 3, T - 1):
        norms = G.input_gradient_norms(fn, x, position=p, loss_fn=lambda y: jnp.sum(y ** 2))
        assert np.all(np.asarray(norms[:, p + 1:]) == 0.0)
        assert np.all(np.asarray(norms[:, :p + 1]) > 0.0)
    # without the mask the future does reach the past
    full = G.input_gradient_norms(lambda x: stack.apply(params, x), x, position=0,
                                  loss_fn=lambda y: jnp.sum(y ** 2))
    assert np.all(np.asarray(full) > 0.0)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    cell = cells.lstm(4)
    params = cell.init(KEY, 3)
    xs = jnp.ones((2, 5, 3))
    ok = lambda ys: jnp.mean(ys)                                        # noqa: E731
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar.*\(2, 5, 4\)"):
        G.state_gradients(cell, params, xs, lambda ys: ys ** 2)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar"):
        G.state_gradients(recurrent.layer(cell, num_layers=2), recurrent.layer(cell, num_layers=2).init(KEY, 3),
                          xs, lambda ys: ys[:, -1])
    with pytest.raises(ValueError, match=r"xs has 5 features.*input_size E=3"):
        G.state_gradients(cell, params, jnp.ones((2, 5, 5)), ok)
    with pytest.raises(ValueError, match=r"xs must have shape \(B, T, E\).*\(5, 3\)"):
        G.state_gradients(cell, params, jnp.ones((5, 3)), ok)
    with pytest.raises(ValueError, match=r"T >= 1"):
        G.state_gradients(cell, params, jnp.ones((2, 0, 3)), ok)
    with pytest.raises(TypeError, match=r"xs must be floating"):
        G.state_gradients(cell, params, jnp.ones((2, 5, 3), jnp.int32), ok)
    with pytest.raises(TypeError, match=r"cell must be a seqjax.cells.Cell"):
        G.state_gradients("lstm", params, xs, ok)
    with pytest.raises(ValueError, match=r"initial_carry leaves must have shape \(B, H\) = \(2, 4\)"):
        G.state_gradients(cell, params, xs, ok, initial_carry=cell.initial_carry((3,)))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        G.state_gradients(cell, params, xs, ok, lengths=jnp.array([5, 6]))
    with pytest.raises(ValueError, match=r"x has 5 features"):
        rec = recurrent.layer(cell)
        G.state_gradients(rec, rec.init(KEY, 3), jnp.ones((2, 4, 5)), ok)
    with pytest.raises(ValueError, match=r"method must be"):
        G.jacobian_norms(cell, params, xs, method="svd")
    with pytest.raises(ValueError, match=r"steps must lie in \[0, T\)"):
        G.jacobian_norms(cell, params, xs, steps=[5])
    with pytest.raises(ValueError, match=r"position must be in \[-5, 4\], got 5"):
        G.input_gradient_norms(lambda x: x, xs, position=5)
    with pytest.raises(TypeError, match=r"position must be an int"):
        G.input_gradient_norms(lambda x: x, xs, position=1.0)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar"):
        G.input_gradient_norms(lambda x: x, xs, position=0, loss_fn=lambda y: y)
    with pytest.raises(ValueError, match=r"num_iters must be >= 1"):
        G.jacobian_norms(cell, params, xs, method="power", num_iters=0)


# ----------------------------------------------------------------------------- properties (hypothesis)


def _weighted_tanh_loss(ys):
    """A loss on every step's output (module level: a static argument of the jitted analysis)."""
    return jnp.sum(jnp.linspace(0.5, 2.0, ys.shape[1])[None, :, None] * jnp.tanh(ys))



@functools.lru_cache(maxsize=None)
def _analysed(name, kind, fused):
    """A cell (kind "cell") or a layer ("L1", "L2", "L2bi", with ``fused``), built once (compiled once)."""
    cell = cells.make(name, 4)
    if kind == "cell":
        return cell
    return recurrent.layer(cell, num_layers=1 if kind == "L1" else 2, bidirectional=kind == "L2bi",
                           fused_backward=fused)


@pytest.mark.parametrize("kind", ["cell", "L1", "L2", "L2bi"])           # the analysis paths, swept
@settings(max_examples=max(3, settings.default.max_examples // 3))          # per path
@given(name=st.sampled_from(cells.CELL_NAMES), fused=st.booleans(), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_property_state_gradients_ignore_nan_or_inf_in_padding(kind, name, fused, bad, seed, data):
    """NaN or Inf at random padded entries of xs: the state gradients equal a clean run's (so
    they are finite) and are exactly zero at padded steps, for cells and layers alike."""
    B, T, E = 3, 5, 2
    fused = fused and kind != "cell" and cells.make(name, 4).pointwise_backward is not None
    target = _analysed(name, kind, fused)
    params = target.init(jax.random.key(seed % 3), E)
    lengths = draw_lengths(data, B, T, padded_row=True)
    clean = randn(seed, (B, T, E))
    poisoned, padded = poison_padding(data, clean, lengths, bad)
    want = _sg(target, params, clean, _weighted_tanh_loss, lengths=jnp.asarray(lengths))
    got = _sg(target, params, poisoned, _weighted_tanh_loss, lengths=jnp.asarray(lengths))
    for leaf in jax.tree.leaves(got):
        assert np.isfinite(np.asarray(leaf)).all()
        np.testing.assert_array_equal(np.asarray(leaf)[padded], 0.0)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
