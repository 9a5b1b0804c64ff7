"""PyTorch attention and Transformer modules -> seqjax components with copied weights.

:func:`seqjax.interop.from_torch` dispatches here by class name through
:data:`CONVERTERS`. This file imports without PyTorch: torch is only touched through
the module passed in.

Conventions of the returned components (seqjax's, not PyTorch's):

* batch-major inputs, (B, T, D); ``torch.nn.MultiheadAttention`` must have
  ``batch_first=True`` (a clear ValueError otherwise); the Transformer modules are
  converted whatever their ``batch_first``, and take (B, T, D) anyway;
* boolean masks with True = attend: pass ``~key_padding_mask[:, None, None, :]`` for a
  torch ``key_padding_mask`` and ``~attn_mask`` for a torch boolean ``attn_mask``;
* deterministic unless ``apply`` gets a ``dropout_key`` (torch's ``eval()``);
* :class:`~seqjax.attention.MultiHeadAttention` returns per-head weights (B, N, Tq, Tk)
  (torch's ``average_attn_weights=False``);
* a fully masked query row gives zeros where torch gives NaN.

Weight mapping (torch stores ``y = x W^T + b``; seqjax ``y = x @ kernel + bias``):

=================================  ============================================
torch                              seqjax
=================================  ============================================
``in_proj_weight[:D]`` (D, Eq)     ``query.kernel`` (Eq, D) (transposed), k, v likewise
``q/k/v_proj_weight``              ``query/key/value.kernel`` (transposed)
``in_proj_bias`` (3D,)             ``query/key/value.bias``
``out_proj.weight/bias``           ``out.kernel`` (transposed) / ``out.bias``
``self_attn``, ``multihead_attn``  ``self_attn``, ``cross_attn``
``linear1``, ``linear2``           ``ff.linear1``, ``ff.linear2``
``norm1..3.weight/bias``           ``norm1..3.scale/bias``
``layers.{i}``, ``norm``           ``layers[i]``, ``norm``
=================================  ============================================
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from seqjax import attention as attn
from seqjax import transformer as tfm
from seqjax.types import Params

__all__ = ["CONVERTERS", "to_jax", "mha_from_torch", "encoder_layer_from_torch", "decoder_layer_from_torch",
           "encoder_from_torch", "decoder_from_torch", "transformer_from_torch"]


def to_jax(tensor) -> jnp.ndarray:
    """A torch tensor (any device) -> a float32 JAX array with the same values."""
    return jnp.asarray(tensor.detach().cpu().float().numpy())


def _linear(lin) -> Params:
    p = {"kernel": to_jax(lin.weight).T}
    if lin.bias is not None:
        p["bias"] = to_jax(lin.bias)
    return p


def _norm(ln) -> Params:
    if ln.weight is None:
        raise ValueError("LayerNorm with elementwise_affine=False is not supported")
    p = {"scale": to_jax(ln.weight)}
    if ln.bias is not None:
        p["bias"] = to_jax(ln.bias)
    return p


def _mha_params(m) -> Params:
    D = m.embed_dim
    if m._qkv_same_embed_dim:
        w = to_jax(m.in_proj_weight)                                               # (3D, D)
        ws = [w[:D], w[D:2 * D], w[2 * D:]]
    else:
        ws = [to_jax(m.q_proj_weight), to_jax(m.k_proj_weight), to_jax(m.v_proj_weight)]   # (D, E*) each
    params = {name: {"kernel": w.T} for name, w in zip(("query", "key", "value"), ws)}
    if m.in_proj_bias is not None:
        b = to_jax(m.in_proj_bias)
        for i, name in enumerate(("query", "key", "value")):
            params[name]["bias"] = b[i * D:(i + 1) * D]
    params["out"] = _linear(m.out_proj)
    return params


def _check_mha(m, need_batch_first: bool) -> None:
    if need_batch_first and not m.batch_first:
        raise ValueError("torch.nn.MultiheadAttention must have batch_first=True to convert "
                         "(seqjax is batch-major); build it with batch_first=True")
    if m.bias_k is not None or m.bias_v is not None:
        raise ValueError("torch.nn.MultiheadAttention with add_bias_kv=True is not supported")
    if m.add_zero_attn:
        raise ValueError("torch.nn.MultiheadAttention with add_zero_attn=True is not supported")
    if (m.in_proj_bias is None) != (m.out_proj.bias is None):
        raise ValueError("MultiheadAttention with bias on only some projections is not supported")


def mha_from_torch(module) -> tuple[attn.MultiHeadAttention, Params]:
    """``torch.nn.MultiheadAttention(batch_first=True)`` -> (MultiHeadAttention, params)."""
    _check_mha(module, need_batch_first=True)
    layer = attn.multi_head_attention(module.num_heads, module.embed_dim, out_size=module.embed_dim,
                                      use_bias=module.in_proj_bias is not None, dropout=module.dropout)
    return layer, _mha_params(module)


def _activation(module) -> str:
    import torch
    act = module.activation
    if isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if act is torch.nn.functional.gelu:
        return "gelu"
    if act is torch.nn.functional.relu or isinstance(act, torch.nn.ReLU):
        return "relu"
    raise ValueError(f"activation {act!r} is not supported; use 'relu' or 'gelu'")


def _layer_config(layer, num_layers: int = 1, final_norm: bool = False) -> tfm.StackConfig:
    _check_mha(layer.self_attn, need_batch_first=False)
    use_bias = layer.linear1.bias is not None
    return tfm.StackConfig(model_size=layer.self_attn.embed_dim, num_heads=layer.self_attn.num_heads,
                           ff_size=layer.linear1.out_features, num_layers=num_layers,
                           dropout=float(layer.dropout.p), attention_dropout=float(layer.self_attn.dropout),
                           activation=_activation(layer), norm_first=bool(layer.norm_first),
                           final_norm=final_norm, layer_norm_eps=float(layer.norm1.eps), use_bias=use_bias)


def _encoder_layer_params(layer) -> Params:
    return {"self_attn": _mha_params(layer.self_attn),
            "ff": {"linear1": _linear(layer.linear1), "linear2": _linear(layer.linear2)},
            "norm1": _norm(layer.norm1), "norm2": _norm(layer.norm2)}


def _decoder_layer_params(layer) -> Params:
    _check_mha(layer.multihead_attn, need_batch_first=False)
    p = _encoder_layer_params(layer)
    p["cross_attn"] = _mha_params(layer.multihead_attn)
    p["norm3"] = _norm(layer.norm3)
    return p


def encoder_layer_from_torch(module) -> tuple[tfm.Layer, Params]:
    """``torch.nn.TransformerEncoderLayer`` -> (Layer, params); ``apply(params, src, *, mask=None)``."""
    return tfm.encoder_layer(_layer_config(module)), _encoder_layer_params(module)


def decoder_layer_from_torch(module) -> tuple[tfm.Layer, Params]:
    """``torch.nn.TransformerDecoderLayer`` -> (Layer, params);
    ``apply(params, tgt, memory, *, tgt_mask=None, memory_mask=None)``."""
    return tfm.decoder_layer(_layer_config(module)), _decoder_layer_params(module)


def _stack_params(module, layer_params: Callable) -> tuple[tfm.StackConfig, Params]:
    layers = list(module.layers)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no layers")
    cfg = _layer_config(layers[0], len(layers), final_norm=module.norm is not None)
    for i, layer in enumerate(layers[1:], 1):
        if _layer_config(layer, len(layers), cfg.final_norm) != cfg:
            raise ValueError(f"layer {i} of {type(module).__name__} is configured differently from layer 0; "
                             "seqjax stacks need identical layers")
    params = {"layers": [layer_params(layer) for layer in layers]}
    if module.norm is not None:
        if float(module.norm.eps) != cfg.layer_norm_eps:
            raise ValueError(f"the final norm's eps {module.norm.eps} differs from the layers' "
                             f"{cfg.layer_norm_eps}; not supported")
        params["norm"] = _norm(module.norm)
    return cfg, params


def encoder_from_torch(module) -> tuple[tfm.Stack, Params]:
    """``torch.nn.TransformerEncoder`` -> (encoder Stack, params); ``apply(params, src, *, mask=None)``."""
    cfg, params = _stack_params(module, _encoder_layer_params)
    return tfm.encoder(cfg), params


def decoder_from_torch(module) -> tuple[tfm.Stack, Params]:
    """``torch.nn.TransformerDecoder`` -> (decoder Stack, params);
    ``apply(params, tgt, memory, *, tgt_mask=None, memory_mask=None)``."""
    cfg, params = _stack_params(module, _decoder_layer_params)
    return tfm.decoder(cfg), params


def transformer_from_torch(module) -> tuple[tfm.EncoderDecoder, Params]:
    """``torch.nn.Transformer`` -> (EncoderDecoder, params);
    ``apply(params, src, tgt, *, src_mask=None, tgt_mask=None, memory_mask=None)``."""
    enc_cfg, enc_params = _stack_params(module.encoder, _encoder_layer_params)
    dec_cfg, dec_params = _stack_params(module.decoder, _decoder_layer_params)
    return tfm.encoder_decoder(enc_cfg, dec_cfg), {"encoder": enc_params, "decoder": dec_params}


CONVERTERS: dict[str, Callable[[Any], tuple[Any, Params]]] = {
    "MultiheadAttention": mha_from_torch,
    "TransformerEncoderLayer": encoder_layer_from_torch,
    "TransformerDecoderLayer": decoder_layer_from_torch,
    "TransformerEncoder": encoder_from_torch,
    "TransformerDecoder": decoder_from_torch,
    "Transformer": transformer_from_torch,
}
