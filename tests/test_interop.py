"""Parity with torch.nn.RNN/LSTM/GRU through from_torch, and with the Flax linen cells: outputs,
final states and gradients, on every derivative path of ``recurrent.layer`` (``recurrent.BACKWARDS``:
the default "jvp", "vjp" and "autodiff")."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from seqjax import cells, interop, recurrent

torch = pytest.importorskip("torch", reason="PyTorch parity needs the torch extra: pip install 'seqjax[torch]'")

E, H, B, T = 4, 6, 4, 7
LENGTHS = np.array([5, 7, 1, 3])        # unsorted, with a length-1 sequence


CONFIGS = [
    # (class, kwargs)
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=3, bias=False)),
    ("GRU", dict(bidirectional=True)),
    ("GRU", dict(num_layers=2, bidirectional=True, bias=False)),
]


def _torch_run(module, xt, lengths, h0):
    """Run module on a batch-major tensor x with packing; return batch-major outputs (tensors)."""
    if not module.batch_first:
        xt = xt.transpose(0, 1)
    if lengths is not None:
        xt = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=module.batch_first,
                                                     enforce_sorted=False)
    out, final = module(xt, h0)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    if not module.batch_first:
        out = out.transpose(0, 1)
    return out, final


def _on_path(layer, backward):
    """``layer`` (from ``from_torch``) rebuilt with the derivative path ``backward``."""
    cfg = layer.config
    return recurrent.layer(cfg.cell, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                           dropout=cfg.dropout, backward=backward)


_SEQJAX_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}


# Every configuration runs packed (unsorted lengths, given h0/c0, batch_first=True) and
# plain (no lengths, zero state, batch_first=False); two more cases mix the settings.
CASES = ([(kind, kw, True, True, True) for kind, kw in CONFIGS]
         + [(kind, kw, False, False, False) for kind, kw in CONFIGS]
         + [("LSTM", dict(num_layers=2, bidirectional=True), False, True, False),
            ("GRU", dict(num_layers=2), True, False, True)])


# The default path ("jvp") on every case; the optional paths on the packed ones (lengths and a given
# h0/c0: every input has a gradient to compare, and padding is in play).
PARITY = [(*case, backward) for backward in recurrent.BACKWARDS for case in CASES
          if backward == "jvp" or (case[3] and case[4])]


@pytest.mark.parametrize("kind, kwargs, batch_first, use_lengths, with_h0, backward", PARITY,
                         ids=[f"{k}-{v}-bf{b}-len{l}-h0{h}-{p}" for k, v, b, l, h, p in PARITY])
def test_torch_parity(kind, kwargs, batch_first, use_lengths, with_h0, backward):
    """Outputs and final states equal torch's, and so do the gradients of a loss on both w.r.t. x,
    the initial state and every weight and bias (torch's autograd against the layer's path)."""
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(E, H, batch_first=batch_first, **kwargs)
    layer, params = interop.from_torch(module)
    assert layer.config.backward == "jvp"                  # from_torch builds the default path
    layer = _on_path(layer, backward)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    lengths = LENGTHS if use_lengths else None
    n_states = module.num_layers * (2 if module.bidirectional else 1)
    weights = rng.standard_normal((B, T, H * (2 if module.bidirectional else 1))).astype(np.float32)
    h0 = c0 = None
    if with_h0:
        h0 = rng.standard_normal((n_states, B, H)).astype(np.float32)
        c0 = rng.standard_normal((n_states, B, H)).astype(np.float32)
    given = [] if h0 is None else ([h0, c0] if kind == "LSTM" else [h0])
    state0 = [torch.tensor(a, requires_grad=True) for a in given]          # torch's h0 (and c0), with .grad
    torch_h0 = None if h0 is None else (tuple(state0) if kind == "LSTM" else state0[0])
    carry0 = None if h0 is None else (cells.LSTMState(jnp.asarray(h0), jnp.asarray(c0)) if kind == "LSTM"
                                      else jnp.asarray(h0))
    xt = torch.tensor(x, requires_grad=True)
    want_out, want_final = _torch_run(module, xt, lengths, torch_h0)
    want_final = want_final if kind == "LSTM" else (want_final,)
    ((want_out * torch.tensor(weights)).sum() + sum(f.sin().sum() for f in want_final)).backward()

    def loss(params, x, carry0):
        out, final = layer.apply(params, x, lengths=None if lengths is None else jnp.asarray(lengths),
                                 initial_carry=carry0)
        return jnp.sum(out * weights) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final)), (out, final)
    (_, (got_out, got_final)), (dparams, dx, dcarry0) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, jnp.asarray(x), carry0)
    assert_close(got_out, want_out.detach().numpy())
    assert_close(jax.tree.leaves(got_final), [f.detach().numpy() for f in want_final])
    assert_close(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    if with_h0:
        assert_close(jax.tree.leaves(dcarry0), [a.grad.numpy() for a in state0], rtol=1e-4, atol=1e-5)
    suffixes = {"forward": "", "backward": "_reverse"}
    for k, per_layer in enumerate(dparams["layers"]):
        for d, grads in per_layer.items():
            for name, g in grads.items():
                want = getattr(module, f"{_SEQJAX_NAMES[name]}_l{k}{suffixes[d]}").grad.numpy()
                assert_close(g, want.T if name.startswith("w") else want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
def test_torch_gradients_match(backward):
    """Parity of the backward pass too: d sum(out^2) / d W_hh, copied weights."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(E, H, num_layers=2, batch_first=True, bidirectional=True)
    layer, params = interop.from_torch(module)
    layer = _on_path(layer, backward)
    x = np.random.default_rng(0).standard_normal((B, T, E)).astype(np.float32)
    out, _ = module(torch.tensor(x))
    (out ** 2).sum().backward()
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, jnp.asarray(x))[0] ** 2))(params)
    assert_close(grads["layers"][1]["backward"]["w_hh"], module.weight_hh_l1_reverse.grad.numpy().T,
                 rtol=1e-4, atol=1e-5)
    assert_close(grads["layers"][0]["forward"]["b_ih"], module.bias_ih_l0.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_torch_dropout_rate_is_carried_over():
    layer, _ = interop.from_torch(torch.nn.GRU(E, H, num_layers=2, dropout=0.25))
    assert layer.config.dropout == 0.25


def test_torch_unsupported():
    with pytest.raises(ValueError, match="proj_size=2 is not supported"):
        interop.from_torch(torch.nn.LSTM(E, H, proj_size=2))
    with pytest.raises(TypeError, match="does not convert Linear"):
        interop.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        interop.from_torch("LSTM")


# ----------------------------------------------------------------------------- Flax

FLAX_CELLS = [("simple", nn.SimpleCell, cells.simple_rnn), ("lstm", nn.LSTMCell, cells.lstm),
              ("gru", nn.GRUCell, cells.gru)]


@pytest.mark.parametrize("backward", recurrent.BACKWARDS)
@pytest.mark.parametrize("kind, flax_cls, make", FLAX_CELLS, ids=[c[0] for c in FLAX_CELLS])
def test_flax_cell_parity(kind, flax_cls, make, backward):
    """Outputs equal nn.RNN's, and so do the gradients of a loss on them w.r.t. x and Flax's own
    params (the layer's, pulled back through flax_cell_params), on every derivative path."""
    flax_rnn = nn.RNN(flax_cls(features=H))
    x = jax.random.normal(jax.random.key(0), (B, T, E))
    flax_params = flax_rnn.init(jax.random.key(1), x)
    want = flax_rnn.apply(flax_params, x)
    params = interop.flax_cell_params(flax_params["params"]["cell"], kind)
    cell = make(H)
    _, got = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), x)
    assert_close(got, want)
    layer = recurrent.layer(cell, backward=backward)
    weights = jax.random.normal(jax.random.key(2), (B, T, H))

    def seqjax_loss(cell_params, x):
        params = {"layers": [{"forward": interop.flax_cell_params(cell_params, kind)}]}
        return jnp.sum(jnp.sin(layer.apply(params, x)[0]) * weights)

    def flax_loss(cell_params, x):
        return jnp.sum(jnp.sin(flax_rnn.apply({"params": {"cell": cell_params}}, x)) * weights)
    cell_params = flax_params["params"]["cell"]
    assert_close(jax.jit(jax.grad(seqjax_loss, argnums=(0, 1)))(cell_params, x),
                 jax.grad(flax_loss, argnums=(0, 1))(cell_params, x), rtol=1e-4, atol=1e-5)
    # and the carry order: Flax's LSTM carry is (c, h), seqjax's LSTMState(h, c)
    if kind == "lstm":
        (c, h), _ = nn.RNN(flax_cls(features=H), return_carry=True).apply(flax_params, x)
        final, _ = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), x)
        assert_close(final.h, h)
        assert_close(final.c, c)


def test_flax_adapter_in_a_linen_model():
    seq_layer = recurrent.layer(cells.lstm(H), num_layers=2, bidirectional=True)

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x, lengths):
            outputs, final = interop.FlaxLayer(seq_layer, name="encoder")(x, lengths=lengths)
            return nn.Dense(3)(final.h[-1])

    model = Classifier()
    x = jax.random.normal(jax.random.key(0), (B, T, E))
    lengths = jnp.asarray(LENGTHS)
    variables = model.init(jax.random.key(1), x, lengths)
    inner = variables["params"]["encoder"]["params"]
    assert jax.tree.structure(inner) == jax.tree.structure(seq_layer.init(jax.random.key(0), E))
    logits = model.apply(variables, x, lengths)
    _, final = seq_layer.apply(inner, x, lengths=lengths)
    dense = variables["params"]["Dense_0"]
    assert_close(logits, final.h[-1] @ dense["kernel"] + dense["bias"])
    grads = jax.grad(lambda v: jnp.sum(model.apply(v, x, lengths) ** 2))(variables)
    assert float(jnp.abs(grads["params"]["encoder"]["params"]["layers"][0]["forward"]["w_hh"]).sum()) > 0


def test_flax_cell_params_bad_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        interop.flax_cell_params({}, "transformer")
