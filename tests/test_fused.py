"""``recurrent.layer(..., fused_backward=True)``: the hand-written backward pass equals
autodiff of the scan (outputs, final states, gradients w.r.t. params, x and the
initial carry) for every cell of the registry, keeps the padding semantics, matches
PyTorch's gradients, takes its per-cell pieces from the cell (not its name), and
refuses what it cannot do."""

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


def _layers(name, config, fused):
    cell = cells.make(name, H, **({"forget_bias": 1.0} if name == "lstm" else {}))
    return recurrent.layer(cell, **CONFIGS[config], fused_backward=fused)


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
    """(autodiff, fused) results of one case: (loss, (outputs, final)), grads w.r.t.
    (params, x, carry0); both computed in ONE jitted function (one compilation)."""
    lengths = jnp.asarray(LENGTHS) if use_lengths else None
    ref = _loss_fn(_layers(name, config, False), lengths)
    fused = _loss_fn(_layers(name, config, True), lengths)
    both = jax.jit(lambda *a: (jax.value_and_grad(ref, argnums=(0, 1, 2), has_aux=True)(*a),
                               jax.value_and_grad(fused, argnums=(0, 1, 2), has_aux=True)(*a)))
    return jax.tree.map(np.asarray, both(*_inputs(_layers(name, config, True))))


@pytest.mark.parametrize("use_lengths", [False, True], ids=["no lengths", "lengths"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", CELL_NAMES)
def test_fused_equals_autodiff(name, config, use_lengths):
    (want_loss_aux, want_grads), (got_loss_aux, got_grads) = _results(name, config, use_lengths)
    assert_close(got_loss_aux, want_loss_aux, atol=1e-5)        # loss, outputs and final states
    assert_close(got_grads, want_grads, atol=1e-5)              # d/d params, d/d x, d/d initial carry
    for g in jax.tree.leaves(got_grads):                 # the comparison is not vacuous
        assert np.abs(g).max() > 0


@pytest.mark.parametrize("name", CELL_NAMES)
def test_padding_gets_exactly_zero_gradient(name):
    _, (_, (_, dx, _)) = _results(name, "2 layers bidi", True)
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(dx[pad] == 0.0)
    assert np.all(np.abs(dx[~pad]).sum(-1) > 0)
    (_, (outputs, _)), _ = _results(name, "2 layers bidi", True)[1]
    assert np.all(outputs[pad] == 0.0)


def test_float64_matches_autodiff_to_rounding(x64):
    """In float64 the hand-derived gate equations agree with autodiff to ~1e-12, not just within
    float32 noise (the gated cells; the RNN backward is one line)."""
    for name in ("lstm", "gru"):
        ref, fused = _layers(name, "1 layer", False), _layers(name, "1 layer", True)
        params, x, carry0, weights = jax.tree.map(lambda a: a.astype(jnp.float64), _inputs(fused, 1))
        lengths = jnp.asarray(LENGTHS)
        grad = lambda layer: jax.grad(lambda *a: _loss_fn(layer, lengths)(*a)[0], argnums=(0, 1, 2))  # noqa: E731
        want, got = jax.jit(lambda *a: (grad(ref)(*a), grad(fused)(*a)))(params, x, carry0, weights)
        assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(got))
        assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_jit_equals_no_jit():
    layer = _layers("gru", "1 layer", True)
    params, x, carry0, weights = _inputs(layer, 2)
    grad = jax.value_and_grad(_loss_fn(layer, jnp.asarray(LENGTHS)), argnums=(0, 1, 2), has_aux=True)
    assert_close(jax.jit(grad)(params, x, carry0, weights), grad(params, x, carry0, weights), atol=1e-5)


def test_no_bias_and_config():
    layer = recurrent.layer(cells.lstm(H, bias=False), fused_backward=True)
    assert layer.config.fused_backward and not _layers("lstm", "1 layer", False).config.fused_backward
    ref = recurrent.layer(cells.lstm(H, bias=False))
    params, x, carry0, weights = _inputs(layer, 3)
    assert "b_ih" not in params["layers"][0]["forward"]
    grads = [jax.grad(lambda *a, lay=lay: _loss_fn(lay, None)(*a)[0])(params, x, carry0, weights)
             for lay in (ref, layer)]
    assert_close(grads[1], grads[0], atol=1e-5)


def test_unsupported_cell_and_bad_flag_raise():
    custom = cells.lstm(H)._replace(name="peephole_lstm", pointwise_backward=None)
    with pytest.raises(ValueError, match=r"fused_backward=True needs a cell with a hand-written backward.*"
                                         r"'peephole_lstm' has none"):
        recurrent.layer(custom, fused_backward=True)
    recurrent.layer(custom)                              # fine without the flag
    with pytest.raises(TypeError, match="fused_backward must be a bool"):
        recurrent.layer(cells.gru(H), fused_backward="yes")
    with pytest.raises(ValueError, match="'peephole_lstm' has pointwise_backward=None"):
        _fused.fused_unroll(custom, {}, cells.lstm(H).initial_carry((B,)), jnp.zeros((B, T, E)))
    assert set(TORCH_LAYOUT) <= set(CELL_NAMES)
    for name in cells.CELL_NAMES:
        cell = cells.make(name, H)
        assert _fused.supports(cell) == (cell.pointwise_backward is not None)


def test_the_cell_not_its_name_decides():
    """A renamed cell runs the fused path with its own equations (no table keyed by name)."""
    renamed = cells.gru(H)._replace(name="my_gru")
    ref, fused = (recurrent.layer(renamed, bidirectional=True, fused_backward=f) for f in (False, True))
    params, x, carry0, weights = _inputs(fused, 5)
    grad = lambda layer: jax.grad(lambda *a: _loss_fn(layer, jnp.asarray(LENGTHS))(*a)[0],  # noqa: E731
                                  argnums=(0, 1, 2))
    want, got = jax.jit(lambda *a: (grad(ref)(*a), grad(fused)(*a)))(params, x, carry0, weights)
    assert_close(got, want, atol=1e-5)


def test_forward_mode_is_refused_loudly():
    """Documented limitation: jvp through a custom_vjp raises instead of giving a wrong answer."""
    layer = _layers("rnn_tanh", "1 layer", True)
    params, x, _, _ = _inputs(layer)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: layer.apply(params, x)[0], (x,), (x,))


def test_second_derivatives_equal_autodiff():
    """grad of grad (reverse over the hand-written backward) equals autodiff's."""
    lengths = jnp.asarray(LENGTHS)
    layers = [_layers("gru", "1 layer", fused) for fused in (False, True)]
    params, x, _, _ = _inputs(layers[0], 4)

    def grad_norm(layer):
        f = lambda x: jnp.sum(jnp.sin(layer.apply(params, x, lengths=lengths)[0]))  # noqa: E731
        return jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))
    want, got = jax.jit(lambda x: (grad_norm(layers[0])(x), grad_norm(layers[1])(x)))(x)
    assert np.abs(np.asarray(want)).max() > 0
    assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_torch_gradient_parity_lstm():
    """Gradients through from_torch's params with fused_backward=True equal torch's autograd
    (2 layers, bidirectional, packed unsorted lengths, given h0/c0)."""
    torch = pytest.importorskip("torch", reason="PyTorch parity needs the torch extra")
    torch.manual_seed(0)
    module = torch.nn.LSTM(E, H, num_layers=2, bidirectional=True, batch_first=True)
    converted, params = interop.from_torch(module)
    layer = recurrent.layer(converted.config.cell, num_layers=2, bidirectional=True, fused_backward=True)
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
