"""from_torch parity for attention and Transformer modules, with padding and causal masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch parity tests need the [torch] extra")

from seqjax import attention as A  # noqa: E402
from seqjax import transformer as T  # noqa: E402
from seqjax.interop import from_torch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*nested tensor")

B, S, TS, D, H, F = 2, 4, 5, 8, 2, 16
RTOL, ATOL = 1e-5, 1e-5
SRC_LENGTHS = [5, 3]


def _randomise(module, seed):
    """Torch initialises biases to 0 and LayerNorms to (1, 0): randomise every parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return module.eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, TS, D, generator=g), torch.randn(B, S, D, generator=g)


def _kpm():
    """torch key_padding_mask (True = ignore) and the seqjax mask (True = attend)."""
    kpm = torch.arange(TS)[None, :] >= torch.tensor(SRC_LENGTHS)[:, None]     # (B, TS)
    return kpm, jnp.asarray(~kpm.numpy())[:, None, None, :]                   # (B, 1, 1, TS)


def _causal(n):
    blocked = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)               # torch: True = blocked
    return blocked, A.causal_mask(n)


def _j(t):
    return jnp.asarray(t.detach().numpy())


def _close(got, want, valid_rows=None):
    got, want = np.asarray(got), want.detach().numpy()
    if valid_rows is not None:              # torch's fast path zeroes padded rows: compare valid ones
        for b, n in enumerate(valid_rows):
            np.testing.assert_allclose(got[b, :n], want[b, :n], rtol=RTOL, atol=ATOL)
    else:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- MHA


@pytest.mark.parametrize("kdim", [None, 6], ids=["packed", "separate_kv_width"])
def test_multihead_attention_parity(kdim):
    m = _randomise(torch.nn.MultiheadAttention(D, H, batch_first=True, kdim=kdim, vdim=kdim), 0)
    layer, params = from_torch(m)
    src, tgt = _inputs()
    kv = src if kdim is None else torch.randn(B, TS, kdim)
    kpm, mask = _kpm()
    blocked = torch.triu(torch.ones(S, TS, dtype=torch.bool), 2)
    with torch.no_grad():
        want, want_w = m(tgt, kv, kv, key_padding_mask=kpm, attn_mask=blocked, average_attn_weights=False)
    mask = A.combine_masks(mask, jnp.asarray(~blocked.numpy())[None, None])
    out, w = layer.apply(params, _j(tgt), _j(kv), _j(kv), mask=mask, return_weights=True)
    _close(out, want)
    _close(w, want_w)
    _close(layer.apply_jit(params, _j(tgt), _j(kv), _j(kv), mask=mask), want)


def test_multihead_attention_bad_configs_are_clear():
    with pytest.raises(ValueError, match="batch_first=True"):
        from_torch(torch.nn.MultiheadAttention(D, H))
    with pytest.raises(ValueError, match="add_bias_kv"):
        from_torch(torch.nn.MultiheadAttention(D, H, batch_first=True, add_bias_kv=True))


def test_fully_masked_rows_are_zeros_where_torch_gives_nan():
    m = _randomise(torch.nn.MultiheadAttention(D, H, batch_first=True), 1)
    layer, params = from_torch(m)
    src, _ = _inputs()
    with torch.no_grad():
        want, _ = m(src, src, src, key_padding_mask=torch.ones(B, TS, dtype=torch.bool))
    assert torch.isnan(want).all()                                          # PyTorch issue 41508
    out = layer.apply(params, _j(src), mask=jnp.zeros((B, 1, 1, TS), bool))
    np.testing.assert_allclose(out, np.broadcast_to(params["out"]["bias"], out.shape), rtol=1e-6)


# ----------------------------------------------------------------------------- layers and stacks

VARIANTS = [(False, "relu"), (True, "gelu")]
IDS = ["post_ln_relu", "pre_ln_gelu"]


@pytest.mark.parametrize("norm_first,activation", VARIANTS, ids=IDS)
def test_encoder_layer_and_encoder_parity(norm_first, activation):
    layer_t = torch.nn.TransformerEncoderLayer(D, H, F, dropout=0.1, activation=activation,
                                               batch_first=True, norm_first=norm_first)
    enc_t = _randomise(torch.nn.TransformerEncoder(layer_t, 2, norm=torch.nn.LayerNorm(D),
                                                   enable_nested_tensor=False), 2)
    src, _ = _inputs(1)
    kpm, mask = _kpm()
    blocked, causal = _causal(TS)
    one, one_params = from_torch(enc_t.layers[0])
    with torch.no_grad():
        want = enc_t.layers[0](src, src_key_padding_mask=kpm, src_mask=blocked)
    _close(one.apply(one_params, _j(src), mask=A.combine_masks(mask, causal)), want, SRC_LENGTHS)
    enc, params = from_torch(enc_t)
    assert len(params["layers"]) == 2 and "norm" in params
    with torch.no_grad():
        want = enc_t(src, src_key_padding_mask=kpm)
    _close(enc.apply_jit(params, _j(src), mask=mask), want, SRC_LENGTHS)


@pytest.mark.parametrize("norm_first,activation", VARIANTS, ids=IDS)
def test_decoder_layer_and_decoder_parity(norm_first, activation):
    layer_t = torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.1, activation=activation,
                                               batch_first=True, norm_first=norm_first)
    dec_t = _randomise(torch.nn.TransformerDecoder(layer_t, 2, norm=torch.nn.LayerNorm(D)), 3)
    memory, tgt = _inputs(2)
    kpm, mmask = _kpm()
    blocked, causal = _causal(S)
    one, one_params = from_torch(dec_t.layers[0])
    with torch.no_grad():
        want = dec_t.layers[0](tgt, memory, tgt_mask=blocked, memory_key_padding_mask=kpm)
    _close(one.apply(one_params, _j(tgt), _j(memory), tgt_mask=causal, memory_mask=mmask), want)
    dec, params = from_torch(dec_t)
    with torch.no_grad():
        want = dec_t(tgt, memory, tgt_mask=blocked, memory_key_padding_mask=kpm)
    _close(dec.apply_jit(params, _j(tgt), _j(memory), tgt_mask=causal, memory_mask=mmask), want)


@pytest.mark.parametrize("norm_first,activation", VARIANTS, ids=IDS)
def test_transformer_parity(norm_first, activation):
    m = _randomise(torch.nn.Transformer(D, H, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=F,
                                        dropout=0.1, activation=activation, batch_first=True,
                                        norm_first=norm_first), 4)
    model, params = from_torch(m)
    assert "norm" in params["encoder"] and "norm" in params["decoder"]        # nn.Transformer's final norms
    src, tgt = _inputs(3)
    kpm, mask = _kpm()
    blocked, causal = _causal(S)
    with torch.no_grad():
        want = m(src, tgt, tgt_mask=blocked, src_key_padding_mask=kpm, memory_key_padding_mask=kpm)
    got = model.apply_jit(params, _j(src), _j(tgt), src_mask=mask, tgt_mask=causal, memory_mask=mask)
    _close(got, want)
    # dropout: deterministic without a key, stochastic with one
    noisy = model.apply(params, _j(src), _j(tgt), tgt_mask=causal,
                        dropout_key=jax.random.key(0, impl="rbg"))
    assert np.abs(np.asarray(noisy - model.apply_jit(params, _j(src), _j(tgt), tgt_mask=causal))).max() > 1e-3


def test_converted_layers_report_their_config():
    layer, _ = from_torch(torch.nn.TransformerEncoderLayer(D, H, F, activation="gelu", batch_first=True,
                                                           norm_first=True, layer_norm_eps=1e-6))
    assert layer.config == T.StackConfig(D, H, F, 1, 0.1, 0.1, "gelu", True, False, 1e-6, True)
    with pytest.raises(ValueError, match="activation"):
        from_torch(torch.nn.TransformerEncoderLayer(D, H, F, activation=torch.tanh, batch_first=True))
