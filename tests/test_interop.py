"""Parity with torch.nn.RNN/LSTM/GRU through from_torch, and with the Flax linen cells."""

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


def _torch_run(module, x, lengths, h0):
    """Run module on batch-major x (numpy) with packing; return batch-major outputs."""
    xt = torch.tensor(x)
    if not module.batch_first:
        xt = xt.transpose(0, 1)
    if lengths is not None:
        xt = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=module.batch_first,
                                                     enforce_sorted=False)
    with torch.no_grad():
        out, final = module(xt, h0)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    if not module.batch_first:
        out = out.transpose(0, 1)
    return out.numpy(), final


# Every configuration runs packed (unsorted lengths, given h0/c0, batch_first=True) and
# plain (no lengths, zero state, batch_first=False); two more cases mix the settings.
CASES = ([(kind, kw, True, True, True) for kind, kw in CONFIGS]
         + [(kind, kw, False, False, False) for kind, kw in CONFIGS]
         + [("LSTM", dict(num_layers=2, bidirectional=True), False, True, False),
            ("GRU", dict(num_layers=2), True, False, True)])


@pytest.mark.parametrize("kind, kwargs, batch_first, use_lengths, with_h0", CASES,
                         ids=[f"{k}-{v}-bf{b}-len{l}-h0{h}" for k, v, b, l, h in CASES])
def test_torch_parity(kind, kwargs, batch_first, use_lengths, with_h0):
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(E, H, batch_first=batch_first, **kwargs)
    layer, params = interop.from_torch(module)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    lengths = LENGTHS if use_lengths else None
    n_states = module.num_layers * (2 if module.bidirectional else 1)
    h0 = c0 = None
    if with_h0:
        h0 = rng.standard_normal((n_states, B, H)).astype(np.float32)
        c0 = rng.standard_normal((n_states, B, H)).astype(np.float32)
    torch_h0 = None if h0 is None else ((torch.tensor(h0), torch.tensor(c0)) if kind == "LSTM" else torch.tensor(h0))
    carry0 = None if h0 is None else (cells.LSTMState(jnp.asarray(h0), jnp.asarray(c0)) if kind == "LSTM"
                                      else jnp.asarray(h0))
    want_out, want_final = _torch_run(module, x, lengths, torch_h0)
    got_out, got_final = layer.apply(params, jnp.asarray(x),
                                     lengths=None if lengths is None else jnp.asarray(lengths),
                                     initial_carry=carry0)
    assert_close(got_out, want_out)
    if kind == "LSTM":
        assert_close(got_final.h, want_final[0].numpy())
        assert_close(got_final.c, want_final[1].numpy())
    else:
        assert_close(got_final, want_final.numpy())


def test_torch_gradients_match():
    """Parity of the backward pass too: d sum(out^2) / d W_hh, copied weights."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(E, H, num_layers=2, batch_first=True, bidirectional=True)
    layer, params = interop.from_torch(module)
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


@pytest.mark.parametrize("kind, flax_cls, make", FLAX_CELLS, ids=[c[0] for c in FLAX_CELLS])
def test_flax_cell_parity(kind, flax_cls, make):
    flax_rnn = nn.RNN(flax_cls(features=H))
    x = jax.random.normal(jax.random.key(0), (B, T, E))
    flax_params = flax_rnn.init(jax.random.key(1), x)
    want = flax_rnn.apply(flax_params, x)
    params = interop.flax_cell_params(flax_params["params"]["cell"], kind)
    cell = make(H)
    _, got = recurrent.unroll(cell.step, params, cell.initial_carry((B,)), x)
    assert_close(got, want)
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
