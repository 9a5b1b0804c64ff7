"""The fast paths of ``recurrent.layer``: ``backward="jvp"`` (the default, a ``jax.custom_jvp``)
and ``backward="vjp"`` (``fused_backward=True``, a ``jax.custom_vjp``) equal autodiff of the scan
(outputs, final states, gradients w.r.t. params, x and the initial carry) for every cell of
the registry that has a hand-written derivative, keep the padding semantics, match PyTorch's
gradients and two analytic oracles, take their per-cell pieces from the cell (not its name),
and refuse what they cannot do. The jvp path also differentiates in forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.linearize``), twice, and under ``remat``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from seqjax import _fused, cells, interop, recurrent

H, E, B, T = 4, 3, 4, 6
LENGTHS = np.array([6, 1, 3, 5])            # unsorted, with a length-1 sequence
# every cell of the one registry that has a hand-written backward (the orthogonal RNN has none: refused)
CELL_NAMES = tuple(n for n in cells.CELL_NAMES if cells.make(n, H).pointwise_backward is not None)
TORCH_LAYOUT = ("rnn_tanh", "rnn_relu", "rnn_linear", "rnn_sigmoid", "rnn", "irnn", "lstm", "gru")
CONFIGS = {"1 layer": dict(num_layers=1, bidirectional=False),
           "2 layers bidi": dict(num_layers=2, bidirectional=True)}
FAST = ("jvp", "vjp")                       # the hand-written paths; "autodiff" is the reference


def _layers(name, config, backward):
    cell = cells.make(name, H, **({"forget_bias": 1.0} if name == "lstm" else {}))
    return recurrent.layer(cell, **CONFIGS[config], backward=backward)


def _loss_fn(layer, lengths):
    """A loss touching every output and every leaf of the final state, non-linearly."""
    def loss(params, x, carry0, weights):
        outputs, final = layer.apply(params, x, lengths=lengths, initial_carry=carry0)
        return (jnp.sum(outputs * weights) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final)),
                (outputs, final))
    return loss


def _inputs(layer, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    params = layer.init(k[0], E)
    x = jax.random.normal(k[1], (B, T, E))
    carry0 = jax.tree.map(lambda a: jax.random.normal(k[2], a.shape), layer.initial_carry(B))
    weights = jax.random.normal(k[3], (B, T, layer.config.num_directions * H))
    return params, x, carry0, weights


@functools.lru_cache(maxsize=None)
def _results(name, config, use_lengths):
    """{backward: ((loss, (outputs, final)), grads w.r.t. (params, x, carry0))} for every path,
    all computed in ONE jitted function (one compilation per case)."""
    lengths = jnp.asarray(LENGTHS) if use_lengths else None
    fns = {b: jax.value_and_grad(_loss_fn(_layers(name, config, b), lengths), argnums=(0, 1, 2), has_aux=True)
           for b in recurrent.BACKWARDS}
    every = jax.jit(lambda *a: {b: f(*a) for b, f in fns.items()})
    return jax.tree.map(np.asarray, every(*_inputs(_layers(name, config, "autodiff"))))


# Every cell in the configuration that exercises the most (two bidirectional layers with lengths);
# every configuration for one cell of each family (the Elman RNN, the LSTM's two-part carry, the
# GRU's separate hidden projection). The cells differ only in pointwise/pointwise_backward, which
# the configuration does not touch.
EQUALS_AUTODIFF = ([(name, "2 layers bidi", True) for name in CELL_NAMES]
                   + [(name, config, use_lengths) for name in ("rnn_tanh", "lstm", "gru") for config in CONFIGS
                      for use_lengths in (False, True) if (config, use_lengths) != ("2 layers bidi", True)])


@pytest.mark.parametrize("backward", FAST)
@pytest.mark.parametrize("name, config, use_lengths", EQUALS_AUTODIFF,
                         ids=[f"{n}-{c}-{'lengths' if u else 'no lengths'}" for n, c, u in EQUALS_AUTODIFF])
def test_fast_path_equals_autodiff(name, config, use_lengths, backward):
    results = _results(name, config, use_lengths)
    (want_loss_aux, want_grads), (got_loss_aux, got_grads) = results["autodiff"], results[backward]
    assert_close(got_loss_aux, want_loss_aux, atol=1e-5)        # loss, outputs and final states
    assert_close(got_grads, want_grads, atol=1e-5)              # d/d params, d/d x, d/d initial carry
    for g in jax.tree.leaves(got_grads):                 # the comparison is not vacuous
        assert np.abs(g).max() > 0


@pytest.mark.parametrize("backward", FAST)
@pytest.mark.parametrize("name", CELL_NAMES)
def test_padding_gets_exactly_zero_gradient(name, backward):
    (_, (outputs, _)), (_, dx, _) = _results(name, "2 layers bidi", True)[backward]
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(dx[pad] == 0.0)
    assert np.all(np.abs(dx[~pad]).sum(-1) > 0)
    assert np.all(outputs[pad] == 0.0)


def test_the_default_is_the_jvp_path_where_the_cell_allows_it():
    for name in cells.CELL_NAMES:
        cell = cells.make(name, H)
        want = "jvp" if cell.pointwise_backward is not None else "autodiff"
        assert recurrent.layer(cell).config.backward == want, name
    layer = recurrent.layer(cells.gru(H), fused_backward=True)
    assert layer.config.backward == "vjp" and layer.config.fused_backward
    assert not recurrent.layer(cells.gru(H)).config.fused_backward


@pytest.mark.parametrize("backward", FAST)
def test_float64_matches_autodiff_to_rounding(x64, backward):
    """In float64 the hand-derived gate equations agree with autodiff to ~1e-12, not just within
    float32 noise (2 layers, bidirectional, lengths, a given initial state)."""
    lengths = jnp.asarray(LENGTHS)
    for name in ("lstm", "gru", "rnn_tanh"):
        ref, fast = _layers(name, "2 layers bidi", "autodiff"), _layers(name, "2 layers bidi", backward)
        params, x, carry0, weights = jax.tree.map(lambda a: a.astype(jnp.float64), _inputs(fast, 1))
        grad = lambda layer: jax.grad(lambda *a: _loss_fn(layer, lengths)(*a)[0], argnums=(0, 1, 2))  # noqa: E731
        want, got = jax.jit(lambda *a: (grad(ref)(*a), grad(fast)(*a)))(params, x, carry0, weights)
        assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(got))
        assert_close(got, want, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- forward mode (jvp path)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_forward_mode_equals_autodiff(x64, name):
    """jax.jvp, jax.linearize and jax.jacfwd through the default (jvp) layer equal autodiff's, to
    float64 rounding: 2 layers, bidirectional, lengths, tangents on params, x and the initial carry."""
    lengths = jnp.asarray(LENGTHS)
    ref, fast = _layers(name, "2 layers bidi", "autodiff"), _layers(name, "2 layers bidi", "jvp")
    primals = jax.tree.map(lambda a: a.astype(jnp.float64), _inputs(fast, 2)[:3])
    tangents = jax.tree.map(lambda a: a.astype(jnp.float64), _inputs(fast, 3)[:3])
    apply = lambda layer: lambda p, x, c: layer.apply(p, x, lengths=lengths, initial_carry=c)  # noqa: E731

    want = jax.jit(lambda p, t: jax.jvp(apply(ref), p, t))(primals, tangents)
    got = jax.jit(lambda p, t: jax.jvp(apply(fast), p, t))(primals, tangents)
    assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(got[1][0])).max() > 0

    def linearized(p, t):                     # the primal output and the linear map at t and at 2t
        out, linear = jax.linearize(apply(fast), *p)
        return out, linear(*t), linear(*jax.tree.map(lambda a: 2 * a, t))
    out, once, twice = jax.jit(linearized)(primals, tangents)
    assert_close(out, want[0], rtol=1e-12, atol=1e-12)
    assert_close(once, want[1], rtol=1e-10, atol=1e-12)
    assert_close(twice, jax.tree.map(lambda t: 2 * t, want[1]), rtol=1e-10, atol=1e-12)   # linear in the tangents
    outputs_of_x = lambda layer: lambda x: apply(layer)(primals[0], x, primals[2])[0]  # noqa: E731
    assert_close(jax.jit(jax.jacfwd(outputs_of_x(fast)))(primals[1]),
                 jax.jit(jax.jacrev(outputs_of_x(ref)))(primals[1]), rtol=1e-10, atol=1e-12)


def test_forward_mode_is_refused_loudly_on_the_vjp_path():
    """Documented limitation of backward="vjp": jvp through a custom_vjp raises instead of giving a
    wrong answer."""
    layer = _layers("rnn_tanh", "1 layer", "vjp")
    params, x, _, _ = _inputs(layer)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: layer.apply(params, x)[0], (x,), (x,))


@pytest.mark.parametrize("backward", FAST)
def test_second_derivatives_equal_autodiff(backward):
    """grad of grad (reverse over the hand-written rule) equals autodiff's; so does the jvp path's
    jax.hessian (forward over reverse)."""
    lengths = jnp.asarray(LENGTHS)
    layers = [_layers("gru", "1 layer", b) for b in ("autodiff", backward)]
    params, x, _, _ = _inputs(layers[0], 4)

    def grad_norm(layer):
        f = lambda x: jnp.sum(jnp.sin(layer.apply(params, x, lengths=lengths)[0]))  # noqa: E731
        return jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))
    want, got = jax.jit(lambda x: (grad_norm(layers[0])(x), grad_norm(layers[1])(x)))(x)
    assert np.abs(np.asarray(want)).max() > 0
    assert_close(got, want, rtol=1e-4, atol=1e-5)
    if backward == "jvp":
        def hessian(layer):
            def f(b_hh):
                p = {"layers": [{"forward": {**params["layers"][0]["forward"], "b_hh": b_hh}}]}
                return jnp.sum(jnp.sin(layer.apply(p, x, lengths=lengths)[0]))
            return jax.hessian(f)(params["layers"][0]["forward"]["b_hh"])
        assert_close(jax.jit(lambda: hessian(layers[1]))(), hessian(layers[0]), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- remat and jax.checkpoint


@pytest.mark.parametrize("K", [1, 4, 7])
def test_jvp_path_composes_with_remat(K):
    """backward="jvp" with remat=K (K dividing T or not) gives autodiff's values and gradients,
    and keeps forward mode."""
    x = jax.random.normal(jax.random.key(11), (3, 13, E))
    lengths = jnp.array([13, 5, 9])
    ref = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True, backward="autodiff")
    fast = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True, backward="jvp", remat=K)
    assert fast.config.remat == K
    params = ref.init(jax.random.key(0), E)

    def loss(layer):
        def f(p, x):
            ys, final = layer.apply(p, x, lengths=lengths)
            return jnp.sum(ys ** 2) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))
        return jax.value_and_grad(f, argnums=(0, 1))
    want, got = jax.jit(lambda p, x: (loss(ref)(p, x), loss(fast)(p, x)))(params, x)
    assert_close(got, want, rtol=1e-5, atol=1e-5)
    jvp = lambda layer: jax.jvp(lambda x: layer.apply(params, x, lengths=lengths)[0], (x,), (x,))  # noqa: E731
    assert_close(jax.jit(lambda: jvp(fast))(), jax.jit(lambda: jvp(ref))(), rtol=1e-5, atol=1e-5)


def test_jvp_path_under_jax_checkpoint():
    """The whole layer under jax.checkpoint (the user's own rematerialisation) differentiates as
    without it."""
    layer = _layers("lstm", "2 layers bidi", "jvp")
    params, x, carry0, weights = _inputs(layer, 6)
    f = lambda p: _loss_fn(layer, jnp.asarray(LENGTHS))(p, x, carry0, weights)[0]  # noqa: E731
    assert_close(jax.jit(jax.grad(jax.checkpoint(f)))(params), jax.grad(f)(params), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- oracles and parity


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
def test_linear_rnn_oracle_on_every_path(x64, backward):
    """h_t = h_{t-1} W + x_t with W = rho Q, Q orthogonal, L = v . h_T: dL/dx_t = dL/dh_t, so
    ||dL/dx_t|| = rho^(T-1-t) ||v|| exactly, by reverse mode (jax.grad) and, on the jvp path, by
    forward mode (jax.jacfwd) too."""
    H6, T25 = 6, 25
    layer = recurrent.layer(cells.simple_rnn(H6, "linear", bias=False), backward=backward)
    q, r = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (H6, H6), jnp.float64))
    v = jax.random.normal(jax.random.key(3), (H6,), jnp.float64)
    x = jax.random.normal(jax.random.key(2), (2, T25, H6), jnp.float64)
    distance = T25 - 1 - np.arange(T25)
    for rho in (0.5, 1.0, 1.3):
        params = {"layers": [{"forward": {"w_ih": jnp.eye(H6, dtype=jnp.float64),
                                          "w_hh": rho * q * jnp.sign(jnp.diag(r))}}]}
        loss = lambda x: jnp.sum(layer.apply(params, x)[1][0] @ v)          # noqa: E731  final h (B, H)
        grads = [jax.grad(loss)(x)] + ([jax.jacfwd(loss)(x)] if backward == "jvp" else [])
        for g in grads:
            np.testing.assert_allclose(np.linalg.norm(g, axis=-1),
                                       np.broadcast_to(rho ** distance * np.linalg.norm(v), (2, T25)), rtol=1e-12)


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
def test_lstm_constant_forget_gate_oracle_on_every_path(x64, backward):
    """No recurrent weights and the forget gate held at f: c_T = f^T c_0 + (terms without c_0) and
    h_0 feeds nothing, so dL/dc_0 = f^T v and dL/dh_0 = 0 exactly for L = v . c_T (f = 1: the
    constant error carousel), in reverse mode and, on the jvp path, in forward mode."""
    T30 = 30
    layer = recurrent.layer(cells.lstm(H), backward=backward)
    params = layer.init(jax.random.key(0), 2, jnp.float64)
    cell = dict(params["layers"][0]["forward"])
    cell["w_hh"] = jnp.zeros_like(cell["w_hh"])                          # only the cell path links steps
    cell["w_ih"] = cell["w_ih"].at[:, H:2 * H].set(0.0)                  # forget pre-activation = bias only
    cell["b_hh"] = cell["b_hh"].at[H:2 * H].set(0.0)
    x = jax.random.normal(jax.random.key(4), (3, T30, 2), jnp.float64)
    v = jax.random.normal(jax.random.key(5), (H,), jnp.float64)
    carry0 = jax.tree.map(lambda a: a + 0.5, layer.initial_carry(3, jnp.float64))
    for f_logit in (-1.0, 2.0, 40.0):                                    # f = 0.27, 0.88, 1.0 (in float64)
        p = {"layers": [{"forward": {**cell, "b_ih": cell["b_ih"].at[H:2 * H].set(f_logit)}}]}
        f = float(jax.nn.sigmoid(jnp.float64(f_logit)))
        loss = lambda c0, p=p: jnp.sum(layer.apply(p, x, initial_carry=c0)[1].c[0] @ v)  # noqa: E731
        g = jax.grad(loss)(carry0)
        np.testing.assert_allclose(g.c[0], np.broadcast_to(f ** T30 * v, (3, H)), rtol=1e-12, atol=0)
        np.testing.assert_array_equal(np.asarray(g.h), 0.0)
        if backward == "jvp":
            _, dc = jax.jvp(loss, (carry0,), (cells.LSTMState(jnp.zeros_like(carry0.h), jnp.ones_like(carry0.c)),))
            np.testing.assert_allclose(dc, 3 * f ** T30 * np.sum(v), rtol=1e-12)


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
def test_torch_gradient_parity_lstm(backward):
    """Gradients through from_torch's params equal torch's autograd on every path (2 layers,
    bidirectional, packed unsorted lengths, given h0/c0)."""
    torch = pytest.importorskip("torch", reason="PyTorch parity needs the torch extra")
    torch.manual_seed(0)
    module = torch.nn.LSTM(E, H, num_layers=2, bidirectional=True, batch_first=True)
    converted, params = interop.from_torch(module)
    layer = recurrent.layer(converted.config.cell, num_layers=2, bidirectional=True, backward=backward)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, 4, B, H)).astype(np.float32)
    w = rng.standard_normal((B, T, 2 * H)).astype(np.float32)

    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(LENGTHS), batch_first=True,
                                                     enforce_sorted=False)
    out, (hn, cn) = module(packed, (h0t, c0t))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    ((out * torch.tensor(w)).sum() + hn.sin().sum() + cn.sin().sum()).backward()

    carry0 = cells.LSTMState(jnp.asarray(h0), jnp.asarray(c0))
    grads = jax.jit(jax.grad(lambda *a: _loss_fn(layer, jnp.asarray(LENGTHS))(*a)[0], argnums=(0, 1, 2)))(
        params, jnp.asarray(x), carry0, jnp.asarray(w))
    dparams, dx, dcarry0 = grads
    assert_close(dx, xt.grad.numpy(), atol=1e-5)
    assert_close(dcarry0.h, h0t.grad.numpy(), atol=1e-5)
    assert_close(dcarry0.c, c0t.grad.numpy(), atol=1e-5)
    for k in range(2):
        for d, suffix in (("forward", ""), ("backward", "_reverse")):
            get = lambda n: getattr(module, f"{n}_l{k}{suffix}").grad.numpy()  # noqa: E731
            g = dparams["layers"][k][d]
            assert_close(g["w_ih"], get("weight_ih").T, atol=1e-5)
            assert_close(g["w_hh"], get("weight_hh").T, atol=1e-5)
            assert_close(g["b_ih"], get("bias_ih"), atol=1e-5)
            assert_close(g["b_hh"], get("bias_hh"), atol=1e-5)


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("backward", FAST)
def test_no_bias(backward):
    layer = recurrent.layer(cells.lstm(H, bias=False), backward=backward)
    ref = recurrent.layer(cells.lstm(H, bias=False), backward="autodiff")
    params, x, carry0, weights = _inputs(layer, 3)
    assert "b_ih" not in params["layers"][0]["forward"]
    grads = [jax.grad(lambda *a, lay=lay: _loss_fn(lay, None)(*a)[0])(params, x, carry0, weights)
             for lay in (ref, layer)]
    assert_close(grads[1], grads[0], atol=1e-5)


def test_times_w_hh_is_the_tangent_of_hidden_proj():
    """The jvp path's one hand-written product is the tangent of cells.hidden_proj w.r.t. h."""
    params = cells.gru(H).init(jax.random.key(0), E)
    h, dh = jax.random.normal(jax.random.key(1), (2, B, H))
    want = jax.jvp(functools.partial(cells.hidden_proj, params), (h,), (dh,))[1]
    assert_close(_fused._times_w_hh(dh, params["w_hh"].T), want)


def test_unsupported_cell_and_bad_flags_raise():
    custom = cells.lstm(H)._replace(name="peephole_lstm", pointwise_backward=None)
    assert recurrent.layer(custom).config.backward == "autodiff"         # the default falls back
    with pytest.raises(ValueError, match=r"fused_backward=True needs a cell with a hand-written backward.*"
                                         r"'peephole_lstm' has none"):
        recurrent.layer(custom, fused_backward=True)
    for backward in FAST:
        with pytest.raises(ValueError, match=rf"backward='{backward}' needs a cell with a hand-written backward"):
            recurrent.layer(custom, backward=backward)
    recurrent.layer(custom, backward="autodiff")                          # fine
    with pytest.raises(ValueError, match=r"backward must be one of \['jvp', 'vjp', 'autodiff'\], got 'fast'"):
        recurrent.layer(cells.gru(H), backward="fast")
    with pytest.raises(ValueError, match="fused_backward=True is backward='vjp'; it cannot be combined with "
                                         "backward='jvp'"):
        recurrent.layer(cells.gru(H), backward="jvp", fused_backward=True)
    assert recurrent.layer(cells.gru(H), backward="vjp", fused_backward=True).config.backward == "vjp"
    with pytest.raises(TypeError, match="fused_backward must be a bool"):
        recurrent.layer(cells.gru(H), fused_backward="yes")
    with pytest.raises(ValueError, match="remat and backward='vjp' cannot be combined"):
        recurrent.layer(cells.gru(H), backward="vjp", remat=4)
    for unroll in (_fused.jvp_unroll, _fused.fused_unroll):
        with pytest.raises(ValueError, match="'peephole_lstm' has pointwise_backward=None"):
            unroll(custom, {}, cells.lstm(H).initial_carry((B,)), jnp.zeros((B, T, E)))
    assert set(TORCH_LAYOUT) <= set(CELL_NAMES)
    for name in cells.CELL_NAMES:
        cell = cells.make(name, H)
        assert _fused.supports(cell) == (cell.pointwise_backward is not None)


@pytest.mark.parametrize("backward", FAST)
def test_the_cell_not_its_name_decides(backward):
    """A renamed cell runs the fast path with its own equations (no table keyed by name)."""
    renamed = cells.gru(H)._replace(name="my_gru")
    ref, fast = (recurrent.layer(renamed, bidirectional=True, backward=b) for b in ("autodiff", backward))
    params, x, carry0, weights = _inputs(fast, 5)
    grad = lambda layer: jax.grad(lambda *a: _loss_fn(layer, jnp.asarray(LENGTHS))(*a)[0],  # noqa: E731
                                  argnums=(0, 1, 2))
    want, got = jax.jit(lambda *a: (grad(ref)(*a), grad(fast)(*a)))(params, x, carry0, weights)
    assert_close(got, want, atol=1e-5)


def test_jit_equals_no_jit():
    layer = _layers("gru", "1 layer", "jvp")
    params, x, carry0, weights = _inputs(layer, 2)
    grad = jax.value_and_grad(_loss_fn(layer, jnp.asarray(LENGTHS)), argnums=(0, 1, 2), has_aux=True)
    assert_close(jax.jit(grad)(params, x, carry0, weights), grad(params, x, carry0, weights), atol=1e-5)
