r"""Transformers (Vaswani et al. 2017): encodings, blocks, models, cached decoding, losses.

Blocks follow ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
exactly (same sublayer order, dropout sites, LayerNorm eps 1e-5 by default, exact
erf GELU), so :mod:`seqjax.interop` can copy PyTorch weights into them:

* Post-LN (``norm_first=False``, the original): ``x = LN(x + Dropout(Sublayer(x)))``.
* Pre-LN (``norm_first=True``, Xiong et al. 2020 "On layer normalization in the
  Transformer architecture"): ``x = x + Dropout(Sublayer(LN(x)))``; its stacks end
  with a final LayerNorm (``final_norm=True``).

The feed-forward sublayer is ``FF(x) = W_2 Dropout(act(W_1 x + b_1)) + b_2``.

Params are nested dicts (kernels input-major, ``x @ kernel + bias``)::

    layer norm     {"scale": (D,), "bias": (D,)}
    feed-forward   {"linear1": {"kernel": (D, F), "bias": (F,)}, "linear2": {"kernel": (F, D), "bias": (D,)}}
    encoder layer  {"self_attn": MHA, "ff": ..., "norm1": ..., "norm2": ...}
    decoder layer  {"self_attn": MHA, "cross_attn": MHA, "ff": ..., "norm1", "norm2", "norm3"}
    stack          {"layers": [layer, ...], "norm": layer norm (only with final_norm)}

with MHA the layout of :mod:`seqjax.attention`. Models add ``{"embedding": (V, D)}``
token tables (scaled by sqrt(D), §3.4), positional encodings and an output
projection (tied to the target embedding when ``tie_embeddings=True``).

Dropout is active only when a ``dropout_key`` is passed: every ``apply`` is
deterministic by default (evaluation), and training passes a fresh key per step.
Masks are boolean with True = attend (see :mod:`seqjax.attention`).

Decoding runs on device: :func:`greedy_decode` and :func:`beam_search` loop with
``lax.while_loop`` over a key/value cache (:class:`KVCache`), so there is no host
round trip per token, and stop as soon as every sequence has produced EOS.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import attention as attn
from seqjax import checks, layers
from seqjax.checks import check_tokens
from seqjax.layers import dense, dropout, layer_norm, sub_key
from seqjax.precision import Policy, wrap
from seqjax.types import Array, DType, Params, PRNGKey

__all__ = [
    "FF_ACTIVATIONS", "POSITIONAL", "StackConfig", "TransformerConfig", "DecoderOnlyConfig",
    "sinusoidal_table", "PositionalEncoding", "positional_encoding",
    "Layer", "encoder_layer", "decoder_layer", "KVCache", "Stack", "encoder", "decoder",
    "EncoderDecoder", "encoder_decoder",
    "DecodeState", "Transformer", "transformer", "DecoderOnly", "decoder_only",
]

#: Feed-forward activations (names of :data:`seqjax.layers.ACTIVATIONS`): ReLU, exact erf GELU
#: (torch's "gelu") and its tanh approximation.
FF_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
POSITIONAL = ("sinusoidal", "learned")


# ----------------------------------------------------------------------------- configs


def _positive(obj, *names):
    for name in names:
        checks.check_int(getattr(obj, name), f"{type(obj).__name__}.{name}")


def _common_checks(obj):
    """The rules every Transformer config shares (sizes, rates, activation, eps)."""
    cls = type(obj).__name__
    _positive(obj, "model_size", "num_heads", "ff_size")
    if obj.model_size % obj.num_heads:
        raise ValueError(f"{cls}.num_heads={obj.num_heads} must divide model_size={obj.model_size}")
    checks.check_rate(obj.dropout, f"{cls}.dropout")
    if obj.attention_dropout is not None:
        checks.check_rate(obj.attention_dropout, f"{cls}.attention_dropout")
    checks.check_choice(obj.activation, f"{cls}.activation", FF_ACTIVATIONS)
    checks.check_float(obj.layer_norm_eps, f"{cls}.layer_norm_eps", minimum=0.0, strict_minimum=True)
    checks.check_bool(obj.norm_first, f"{cls}.norm_first")
    checks.check_bool(obj.final_norm, f"{cls}.final_norm")
    if getattr(obj, "positional", None) is not None:
        checks.check_choice(obj.positional, f"{cls}.positional", POSITIONAL)


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Hyperparameters of an encoder or decoder stack (and of each of its layers).

    Attributes:
      model_size: D.
      num_heads: N, divides D.
      ff_size: F, the feed-forward hidden width.
      num_layers: L.
      dropout: residual, feed-forward and embedding dropout rate.
      attention_dropout: attention-weight dropout (None: same as ``dropout``, as torch).
      activation: ``"relu"``, ``"gelu"`` (exact) or ``"gelu_tanh"``.
      norm_first: Pre-LN when True, Post-LN (original) when False.
      final_norm: a LayerNorm after the last layer (``nn.Transformer`` has one; Pre-LN needs one).
      layer_norm_eps: LayerNorm epsilon (torch's 1e-5).
      use_bias: biases in the attention and feed-forward projections and LayerNorms.
    """

    model_size: int = 512
    num_heads: int = 8
    ff_size: int = 2048
    num_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float | None = None
    activation: str = "relu"
    norm_first: bool = False
    final_norm: bool = False
    layer_norm_eps: float = 1e-5
    use_bias: bool = True

    def __post_init__(self):
        _common_checks(self)
        _positive(self, "num_layers")

    @property
    def attn_dropout(self) -> float:
        return self.dropout if self.attention_dropout is None else float(self.attention_dropout)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the encoder-decoder :func:`transformer`.

    Attributes:
      src_vocab_size, tgt_vocab_size: V of each side.
      model_size, num_heads, ff_size, dropout, attention_dropout, activation,
        norm_first, layer_norm_eps: as :class:`StackConfig`.
      num_encoder_layers, num_decoder_layers: L of each stack.
      max_len: the longest source or target (decoder input) sequence.
      positional: ``"sinusoidal"`` or ``"learned"``.
      tie_embeddings: the output projection is the target embedding transposed
        (Press & Wolf 2017; Vaswani et al. §3.4).
      share_embeddings: source and target use one table (needs equal vocabularies).
      final_norm: a LayerNorm after each stack (``nn.Transformer`` has them).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    model_size: int = 512
    num_heads: int = 8
    ff_size: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float | None = None
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    max_len: int = 512
    positional: str = "sinusoidal"
    tie_embeddings: bool = True
    share_embeddings: bool = False
    final_norm: bool = True

    def __post_init__(self):
        _common_checks(self)
        _positive(self, "src_vocab_size", "tgt_vocab_size", "num_encoder_layers",
                  "num_decoder_layers", "max_len")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("TransformerConfig.share_embeddings needs src_vocab_size == tgt_vocab_size, "
                             f"got {self.src_vocab_size} and {self.tgt_vocab_size}")

    def stack(self, num_layers: int) -> StackConfig:
        return StackConfig(self.model_size, self.num_heads, self.ff_size, num_layers, self.dropout,
                           self.attention_dropout, self.activation, self.norm_first, self.final_norm,
                           self.layer_norm_eps)


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    """Hyperparameters of the decoder-only language model :func:`decoder_only`.

    Fields as :class:`TransformerConfig`, with one ``vocab_size`` and ``num_layers``.
    Defaults follow GPT-2 style: Pre-LN, GELU, learned positions, tied embeddings.
    """

    vocab_size: int
    model_size: int = 256
    num_heads: int = 4
    ff_size: int = 1024
    num_layers: int = 4
    dropout: float = 0.1
    attention_dropout: float | None = None
    activation: str = "gelu"
    norm_first: bool = True
    layer_norm_eps: float = 1e-5
    max_len: int = 256
    positional: str = "learned"
    tie_embeddings: bool = True
    final_norm: bool = True

    def __post_init__(self):
        _common_checks(self)
        _positive(self, "vocab_size", "num_layers", "max_len")

    def stack(self) -> StackConfig:
        return StackConfig(self.model_size, self.num_heads, self.ff_size, self.num_layers, self.dropout,
                           self.attention_dropout, self.activation, self.norm_first, self.final_norm,
                           self.layer_norm_eps)


# ----------------------------------------------------------------------------- small pieces


def sinusoidal_table(max_len: int, model_size: int, dtype: DType = jnp.float32) -> Array:
    r"""Sinusoidal positions (Vaswani et al. 2017 §3.5), (max_len, D):

    .. math:: PE_{p, 2i} = \sin(p / 10000^{2i/D}),\qquad PE_{p, 2i+1} = \cos(p / 10000^{2i/D})
    """
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    i2 = np.arange(0, model_size, 2, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, i2 / model_size)
    table = np.zeros((max_len, model_size))
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : model_size // 2])
    return jnp.asarray(table, dtype)


class PositionalEncoding(NamedTuple):
    """Adds position information to (B, T, D) inputs.

    Attributes:
      init: ``init(key, dtype=float32) -> params``: ``{}`` for sinusoidal,
        ``{"embedding": (max_len, D)}`` (N(0, 0.02), GPT-2) for learned.
      apply: ``apply(params, x, offset=0) -> x + PE[offset : offset + T]``; x (B, T, D),
        ``offset`` a scalar int, may be traced (incremental decoding). Needs
        ``0 <= offset`` and ``offset + T <= max_len``: a ValueError when ``offset`` is
        concrete; a traced offset is not checked (``dynamic_slice`` would clamp it).
      kind, max_len, model_size.
    """

    init: Callable[..., Params]
    apply: Callable[..., Array]
    kind: str
    max_len: int
    model_size: int


def positional_encoding(kind: str, max_len: int, model_size: int) -> PositionalEncoding:
    """A sinusoidal (fixed) or learned (trained table) positional encoding; see :class:`PositionalEncoding`."""
    if kind not in POSITIONAL:
        raise ValueError(f"kind must be one of {POSITIONAL}, got {kind!r}")
    max_len = checks.check_int(max_len, "max_len")
    model_size = checks.check_int(model_size, "model_size")

    def init(key: PRNGKey, dtype: DType = jnp.float32) -> Params:
        checks.check_key(key)
        if kind == "sinusoidal":
            return {}
        return layers.embedding_init(key, max_len, model_size, std=0.02, dtype=dtype)

    def apply(params: Params, x: Array, offset: int | Array = 0) -> Array:
        T = x.shape[-2]
        if T > max_len:
            raise ValueError(f"sequence length {T} exceeds the positional encoding's max_len={max_len}")
        start = checks.concrete_int(offset)
        # dynamic_slice clamps out-of-range starts (silently wrong positions): refuse them
        # while the offset is known; a traced offset is the caller's to bound.
        if start is not None and not 0 <= start <= max_len - T:
            raise ValueError(f"offset={start} with sequence length {T} needs positions {start}.."
                             f"{start + T - 1}, outside the positional encoding's max_len={max_len} "
                             f"(positions 0..{max_len - 1})")
        table = params["embedding"] if kind == "learned" else sinusoidal_table(max_len, model_size, x.dtype)
        pe = jax.lax.dynamic_slice_in_dim(table, offset, T, axis=0)           # (T, D)
        return x + pe.astype(x.dtype)

    return PositionalEncoding(init, apply, kind, max_len, model_size)


def _check_inputs(x, name: str, D: int, layout: str) -> None:
    checks.check_array(x, name, 3, layout)
    if x.shape[-1] != D:
        raise ValueError(f"{name} must have D={D} features, got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------- layers


class KVCache(NamedTuple):
    """One attention layer's key/value cache: ``key``, ``value`` (B, S_max, N, K)."""

    key: Array
    value: Array


class Layer(NamedTuple):
    """One Transformer block (encoder or decoder layer).

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      apply: encoder layer ``apply(params, x, *, mask=None, is_causal=False, lengths=None,
        dropout_key=None)``, x (B, T, D), mask broadcastable to (B, N, T, T), lengths (B,);
        decoder layer ``apply(params, x, memory, *, tgt_mask=None, memory_mask=None,
        tgt_is_causal=False, memory_lengths=None, dropout_key=None)``, x (B, S, D), memory
        (B, T, D), masks to (B, N, S, S) and (B, N, S, T), memory_lengths (B,). -> (B, T|S, D).
        ``is_causal``/``tgt_is_causal`` and the lengths are structured masks (ANDed with any
        dense mask): on GPU/TPU they reach ``jax.nn.dot_product_attention`` as ``is_causal``
        and ``key_value_seq_lengths``, so no dense mask is built (see
        :func:`seqjax.attention.scaled_dot_product_attention`).
      apply_jit: ``jax.jit(apply)``.
      step: ``step(params, x, cache, index, *, memory_kv=None, memory_mask=None)
        -> (y, cache)``: causal self-attention for x (B, s, D) at positions
        ``index .. index+s-1`` over a :class:`KVCache` (decoding, deterministic).
      config: the :class:`StackConfig`.
    """

    init: Callable[..., Params]
    apply: Callable[..., Array]
    apply_jit: Callable[..., Array]
    step: Callable[..., tuple[Array, KVCache]]
    config: StackConfig


def _sublayer(cfg: StackConfig, norm_p, x, fn, key):
    """Residual + LayerNorm around ``fn``, Post-LN or Pre-LN."""
    if cfg.norm_first:
        return x + dropout(fn(layer_norm(norm_p, x, cfg.layer_norm_eps)), cfg.dropout, key)
    return layer_norm(norm_p, x + dropout(fn(x), cfg.dropout, key), cfg.layer_norm_eps)


def _ff(cfg: StackConfig, p, x, key):
    h = layers.ACTIVATIONS[cfg.activation](dense(p["linear1"], x))           # (B, T, F)
    return dense(p["linear2"], dropout(h, cfg.dropout, key))                  # (B, T, D)


def _ff_init(key, cfg: StackConfig, dtype):
    k1, k2 = jax.random.split(key)
    return {"linear1": layers.dense_init(k1, cfg.model_size, cfg.ff_size, use_bias=cfg.use_bias, dtype=dtype),
            "linear2": layers.dense_init(k2, cfg.ff_size, cfg.model_size, use_bias=cfg.use_bias, dtype=dtype)}


def _mha(cfg: StackConfig) -> attn.MultiHeadAttention:
    return attn.multi_head_attention(cfg.num_heads, cfg.model_size, use_bias=cfg.use_bias,
                                     dropout=cfg.attn_dropout)


def _cached_self_attention(mha, p, h, cache: KVCache, index):
    """h (B, s, D) at positions index.., writes its keys/values, attends causally over the cache."""
    kh, vh = mha.heads(p, "key", h), mha.heads(p, "value", h)                 # (B, s, N, K)
    cache = KVCache(jax.lax.dynamic_update_slice_in_dim(cache.key, kh.astype(cache.key.dtype), index, 1),
                    jax.lax.dynamic_update_slice_in_dim(cache.value, vh.astype(cache.value.dtype), index, 1))
    mask = attn.causal_mask(h.shape[1], cache.key.shape[1], offset=index)    # (1, 1, s, S_max)
    return mha.attend(p, mha.heads(p, "query", h), cache.key, cache.value, mask=mask), cache


def encoder_layer(cfg: StackConfig) -> Layer:
    """Self-attention + feed-forward block (``torch.nn.TransformerEncoderLayer``); see :class:`Layer`.

    Used causally (``mask=causal_mask(T)``, or :attr:`Layer.step` with a cache) it is
    the block of a decoder-only language model.
    """
    if not isinstance(cfg, StackConfig):
        raise TypeError(f"cfg must be a StackConfig, got {type(cfg).__name__}")
    mha = _mha(cfg)
    D, N = cfg.model_size, cfg.num_heads

    def init(key: PRNGKey, dtype: DType = jnp.float32) -> Params:
        checks.check_key(key)
        ka, kf = jax.random.split(key)
        return {"self_attn": mha.init(ka, D, dtype=dtype), "ff": _ff_init(kf, cfg, dtype),
                "norm1": layers.layer_norm_init(D, use_bias=cfg.use_bias, dtype=dtype), "norm2": layers.layer_norm_init(D, use_bias=cfg.use_bias, dtype=dtype)}

    def _body(params, x, mask, is_causal, lengths, key):
        x = _sublayer(cfg, params["norm1"], x,
                      lambda h: mha.apply(params["self_attn"], h, mask=mask, is_causal=is_causal,
                                          key_lengths=lengths, dropout_key=sub_key(key, 0)),
                      sub_key(key, 1))
        return _sublayer(cfg, params["norm2"], x, lambda h: _ff(cfg, params["ff"], h, sub_key(key, 2)),
                         sub_key(key, 3))

    def apply(params: Params, x: Array, *, mask: Array | None = None, is_causal: bool = False,
              lengths: Array | None = None, dropout_key: PRNGKey | None = None) -> Array:
        _check_inputs(x, "x", D, "(B, T, D)")
        checks.check_mask(mask, (x.shape[0], N, x.shape[1], x.shape[1]))
        return _body(params, x, mask, is_causal, lengths, dropout_key)

    def step(params: Params, x: Array, cache: KVCache, index, *, memory_kv=None, memory_mask=None):
        new = {}

        def sa(h):
            y, new["cache"] = _cached_self_attention(mha, params["self_attn"], h, cache, index)
            return y
        x = _sublayer(cfg, params["norm1"], x, sa, None)
        x = _sublayer(cfg, params["norm2"], x, lambda h: _ff(cfg, params["ff"], h, None), None)
        return x, new["cache"]

    return Layer(init, apply, jax.jit(apply), step, cfg)


def decoder_layer(cfg: StackConfig) -> Layer:
    """Masked self-attention + encoder-decoder attention + feed-forward
    (``torch.nn.TransformerDecoderLayer``); see :class:`Layer`.

    The decoder ``step`` takes ``memory_kv``: the ``(key, value)`` heads of the memory,
    (B, T, N, K) each, from :func:`memory_kv` (computed once per source).
    """
    if not isinstance(cfg, StackConfig):
        raise TypeError(f"cfg must be a StackConfig, got {type(cfg).__name__}")
    mha = _mha(cfg)
    D, N = cfg.model_size, cfg.num_heads

    def init(key: PRNGKey, dtype: DType = jnp.float32) -> Params:
        checks.check_key(key)
        ka, kc, kf = jax.random.split(key, 3)
        return {"self_attn": mha.init(ka, D, dtype=dtype), "cross_attn": mha.init(kc, D, dtype=dtype),
                "ff": _ff_init(kf, cfg, dtype), "norm1": layers.layer_norm_init(D, use_bias=cfg.use_bias, dtype=dtype),
                "norm2": layers.layer_norm_init(D, use_bias=cfg.use_bias, dtype=dtype), "norm3": layers.layer_norm_init(D, use_bias=cfg.use_bias, dtype=dtype)}

    def apply(params: Params, x: Array, memory: Array, *, tgt_mask: Array | None = None,
              memory_mask: Array | None = None, tgt_is_causal: bool = False,
              memory_lengths: Array | None = None, dropout_key: PRNGKey | None = None) -> Array:
        _check_inputs(x, "x", D, "(B, S, D)")
        _check_inputs(memory, "memory", D, "(B, T, D)")
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"memory batch {memory.shape[0]} does not match x batch {x.shape[0]}")
        B, S, T = x.shape[0], x.shape[1], memory.shape[1]
        checks.check_mask(tgt_mask, (B, N, S, S), "tgt_mask")
        checks.check_mask(memory_mask, (B, N, S, T), "memory_mask")
        key = dropout_key
        x = _sublayer(cfg, params["norm1"], x, lambda h: mha.apply(
            params["self_attn"], h, mask=tgt_mask, is_causal=tgt_is_causal, dropout_key=sub_key(key, 0)),
            sub_key(key, 1))
        x = _sublayer(cfg, params["norm2"], x, lambda h: mha.apply(
            params["cross_attn"], h, memory, memory, mask=memory_mask, key_lengths=memory_lengths,
            dropout_key=sub_key(key, 2)), sub_key(key, 3))
        return _sublayer(cfg, params["norm3"], x, lambda h: _ff(cfg, params["ff"], h, sub_key(key, 4)),
                         sub_key(key, 5))

    def step(params: Params, x: Array, cache: KVCache, index, *, memory_kv=None, memory_mask=None):
        new = {}

        def sa(h):
            y, new["cache"] = _cached_self_attention(mha, params["self_attn"], h, cache, index)
            return y
        mk, mv = memory_kv
        x = _sublayer(cfg, params["norm1"], x, sa, None)
        x = _sublayer(cfg, params["norm2"], x, lambda h: mha.attend(
            params["cross_attn"], mha.heads(params["cross_attn"], "query", h), mk, mv,
            mask=memory_mask), None)
        x = _sublayer(cfg, params["norm3"], x, lambda h: _ff(cfg, params["ff"], h, None), None)
        return x, new["cache"]

    return Layer(init, apply, jax.jit(apply), step, cfg)


# ----------------------------------------------------------------------------- stacks


class Stack(NamedTuple):
    """L layers and an optional final LayerNorm; params ``{"layers": [...], "norm": ...}``.

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      apply: encoder ``apply(params, x, *, mask=None, is_causal=False, lengths=None,
        dropout_key=None)``; decoder ``apply(params, x, memory, *, tgt_mask=None,
        memory_mask=None, tgt_is_causal=False, memory_lengths=None, dropout_key=None)``;
        shapes and masks as :class:`Layer`.
      apply_jit: ``jax.jit(apply)``.
      init_cache: ``init_cache(batch_size, max_len, dtype=float32) -> [KVCache] * L`` (zeros).
      step: ``step(params, x, caches, index, *, memory_kv=None, memory_mask=None)
        -> (y, caches)``, x (B, s, D), every layer's :attr:`Layer.step`, then the final norm.
      memory_kv: decoder only: ``memory_kv(params, memory) -> [(key, value)] * L``, the
        cross-attention heads (B, T, N, K) of every layer.
      layer: the :class:`Layer`.
      config: the :class:`StackConfig`.
    """

    init: Callable[..., Params]
    apply: Callable[..., Array]
    apply_jit: Callable[..., Array]
    init_cache: Callable[..., list]
    step: Callable[..., tuple[Array, list]]
    memory_kv: Callable[..., list] | None
    layer: Layer
    config: StackConfig


def _check_stack_params(params, L):
    if not isinstance(params, dict) or "layers" not in params or len(params["layers"]) != L:
        got = len(params["layers"]) if isinstance(params, dict) and "layers" in params else "no 'layers'"
        raise ValueError(f"params must be {{'layers': [...{L} layers], 'norm': ...}}, got {got}")


def _dtypes(precision: Policy | None) -> tuple[DType, DType]:
    """(the param dtype, the compute dtype) a factory's ``init`` and caches default to."""
    return (jnp.float32, jnp.float32) if precision is None else (precision.param_dtype, precision.compute_dtype)


def _stack(cfg: StackConfig, is_decoder: bool, precision: Policy | str | None = None) -> Stack:
    if not isinstance(cfg, StackConfig):
        raise TypeError(f"cfg must be a StackConfig, got {type(cfg).__name__}")
    precision = checks.check_precision(precision)
    param_dtype, compute_dtype = _dtypes(precision)
    layer = decoder_layer(cfg) if is_decoder else encoder_layer(cfg)
    L, D, N, K = cfg.num_layers, cfg.model_size, cfg.num_heads, cfg.model_size // cfg.num_heads
    mha = _mha(cfg)

    def init(key: PRNGKey, dtype: DType = param_dtype) -> Params:
        checks.check_key(key)
        keys = jax.random.split(key, L)
        params = {"layers": [layer.init(k, dtype) for k in keys]}
        if cfg.final_norm:
            params["norm"] = layers.layer_norm_init(D, use_bias=cfg.use_bias, dtype=dtype)
        return params

    def _final(params, x):
        return layer_norm(params["norm"], x, cfg.layer_norm_eps) if cfg.final_norm else x

    if is_decoder:
        def apply(params: Params, x: Array, memory: Array, *, tgt_mask: Array | None = None,
                  memory_mask: Array | None = None, tgt_is_causal: bool = False,
                  memory_lengths: Array | None = None, dropout_key: PRNGKey | None = None) -> Array:
            _check_stack_params(params, L)
            for i, p in enumerate(params["layers"]):
                x = layer.apply(p, x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                                tgt_is_causal=tgt_is_causal, memory_lengths=memory_lengths,
                                dropout_key=sub_key(dropout_key, i))
            return _final(params, x)

        def memory_kv(params: Params, memory: Array) -> list:
            return [(mha.heads(p["cross_attn"], "key", memory), mha.heads(p["cross_attn"], "value", memory))
                    for p in params["layers"]]
    else:
        def apply(params: Params, x: Array, *, mask: Array | None = None, is_causal: bool = False,
                  lengths: Array | None = None, dropout_key: PRNGKey | None = None) -> Array:
            _check_stack_params(params, L)
            for i, p in enumerate(params["layers"]):
                x = layer.apply(p, x, mask=mask, is_causal=is_causal, lengths=lengths,
                                dropout_key=sub_key(dropout_key, i))
            return _final(params, x)
        memory_kv = None

    def init_cache(batch_size: int, max_len: int, dtype: DType = compute_dtype) -> list:
        z = jnp.zeros((batch_size, max_len, N, K), dtype)
        return [KVCache(z, z) for _ in range(L)]

    def step(params: Params, x: Array, caches: list, index, *, memory_kv=None, memory_mask=None):
        new = []
        for i, p in enumerate(params["layers"]):
            x, c = layer.step(p, x, caches[i], index,
                              memory_kv=None if memory_kv is None else memory_kv[i],
                              memory_mask=memory_mask)
            new.append(c)
        return _final(params, x), new

    # a policy: params and float inputs in the compute dtype, outputs in the output dtype;
    # step's caches (cast on entry, returned as made) and memory_kv's heads stay in the compute dtype
    apply = wrap(precision, apply)
    step = wrap(precision, step, outputs="first")
    if memory_kv is not None:
        memory_kv = wrap(precision, memory_kv, outputs="none")
    return Stack(init, apply, jax.jit(apply), init_cache, step, memory_kv, layer, cfg)


def encoder(cfg: StackConfig, *, precision: Policy | str | None = None) -> Stack:
    """An encoder stack (``torch.nn.TransformerEncoder``) on (B, T, D) inputs; see :class:`Stack`.

    ``precision``: None, or a mixed-precision policy (:mod:`seqjax.precision`): ``init`` makes
    params in its param dtype (``init_cache``: caches in its compute dtype); ``apply`` and
    ``step`` cast params and x to its compute dtype (layer-norm statistics and softmax run in
    float32 either way) and return y in its output dtype.
    """
    return _stack(cfg, is_decoder=False, precision=precision)


def decoder(cfg: StackConfig, *, precision: Policy | str | None = None) -> Stack:
    """A decoder stack (``torch.nn.TransformerDecoder``) on (B, S, D) inputs; see :class:`Stack`.
    ``precision`` as :func:`encoder` (``memory`` is cast to the compute dtype too)."""
    return _stack(cfg, is_decoder=True, precision=precision)


class EncoderDecoder(NamedTuple):
    """An encoder stack and a decoder stack on (B, T, D) / (B, S, D) float inputs
    (``torch.nn.Transformer``: no embeddings, no positional encodings inside).

    Params: ``{"encoder": Stack params, "decoder": Stack params}``.

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      apply: ``apply(params, src, tgt, *, src_mask=None, tgt_mask=None, memory_mask=None,
        dropout_key=None) -> (B, S, D)``: src (B, T, D), tgt (B, S, D); masks boolean,
        True = attend, broadcastable to (B, N, T, T), (B, N, S, S), (B, N, S, T).
      apply_jit: ``jax.jit(apply)``.
      encoder, decoder: the two :class:`Stack` s.
    """

    init: Callable[..., Params]
    apply: Callable[..., Array]
    apply_jit: Callable[..., Array]
    encoder: Stack
    decoder: Stack


def encoder_decoder(encoder_cfg: StackConfig, decoder_cfg: StackConfig, *,
                    precision: Policy | str | None = None) -> EncoderDecoder:
    """Compose :func:`encoder` and :func:`decoder` stacks; see :class:`EncoderDecoder`.
    ``precision`` as :func:`encoder`, for both stacks and ``apply``."""
    if encoder_cfg.model_size != decoder_cfg.model_size:
        raise ValueError(f"encoder and decoder model_size differ: {encoder_cfg.model_size} and "
                         f"{decoder_cfg.model_size}")
    precision = checks.check_precision(precision)
    enc, dec = encoder(encoder_cfg, precision=precision), decoder(decoder_cfg, precision=precision)

    def init(key: PRNGKey, dtype: DType = _dtypes(precision)[0]) -> Params:
        checks.check_key(key)
        ke, kd = jax.random.split(key)
        return {"encoder": enc.init(ke, dtype), "decoder": dec.init(kd, dtype)}

    def apply(params: Params, src: Array, tgt: Array, *, src_mask: Array | None = None,
              tgt_mask: Array | None = None, memory_mask: Array | None = None,
              dropout_key: PRNGKey | None = None) -> Array:
        memory = enc.apply(params["encoder"], src, mask=src_mask, dropout_key=sub_key(dropout_key, 0))
        return dec.apply(params["decoder"], tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         dropout_key=sub_key(dropout_key, 1))

    apply = wrap(precision, apply)
    return EncoderDecoder(init, apply, jax.jit(apply), enc, dec)


# ----------------------------------------------------------------------------- models


class DecodeState(NamedTuple):
    """Everything incremental decoding carries (leaves batch-major, (B, ...)).

    Attributes:
      caches: one :class:`KVCache` per decoder layer, (B, S_max, N, K).
      memory_kv: per layer ``(key, value)`` cross-attention heads (B, T, N, K); ``()``
        for a decoder-only model.
      memory_mask: (B, 1, 1, T) source padding mask, or None.
      index: () int32, the position the next token is written at.

    ``decode_step`` with s tokens needs ``index + s <= S_max`` (the cache length given
    to ``init_decode``). It raises ValueError when ``index`` is concrete; under ``jit``
    the index is traced and is not checked (``dynamic_update_slice`` would clamp it and
    give wrong logits), so keep a jitted loop within the cache: :func:`greedy_decode`
    and :func:`beam_search` size the cache from ``max_len`` and check it up front.
    """

    caches: list
    memory_kv: Any
    memory_mask: Array | None
    index: Array


def _embed_init(key, V, D, dtype):
    # N(0, D^-1/2): after the sqrt(D) scale the embedded tokens have unit variance.
    return layers.embedding_init(key, V, D, std=D ** -0.5, dtype=dtype)


def _embed(p, tokens, D):
    return layers.embed(p, tokens, scale=math.sqrt(D))                         # (B, T, D)


def _logits(params, h, tied_key):
    out = params["output"]
    if "kernel" in out:
        return dense(out, h)
    return h @ params[tied_key]["embedding"].T + out["bias"]                 # (B, S, V)


def _output_init(key, D, V, tie, dtype):
    if tie:
        return {"bias": jnp.zeros((V,), dtype)}
    return layers.dense_init(key, D, V, dtype=dtype)


def _check_cache_room(state: DecodeState, s: int) -> None:
    """Refuse a concrete ``state.index`` whose s new tokens would overrun the KV cache."""
    index = checks.concrete_int(state.index)
    S_max = state.caches[0].key.shape[1]
    if index is not None and index + s > S_max:
        raise ValueError(f"decode_step: {s} token(s) at state.index={index} need {index + s} positions, "
                         f"more than the KV cache length {S_max} (the max_len given to init_decode)")


def _cached_step(state: DecodeState, tokens: Array, vocab_size: int,
                 run: Callable[[Array], tuple[Array, list]]) -> tuple[Array, DecodeState]:
    """One incremental-decoding step of either model over its KV caches.

    ``tokens`` (B,) or (B, s) sit at positions ``state.index ..``; ``run(tokens (B, s))``
    returns (logits (B, s, V), new caches). Returns logits (B, V) for (B,) tokens, else
    (B, s, V), and the state advanced by s.
    """
    single = getattr(tokens, "ndim", None) == 1
    tokens = check_tokens(tokens, vocab_size, "tokens", (1, 2))
    tokens = tokens[:, None] if single else tokens
    _check_cache_room(state, tokens.shape[1])
    logits, caches = run(tokens)
    state = state._replace(caches=caches, index=state.index + tokens.shape[1])
    return (logits[:, 0] if single else logits), state


def _check_decode_len(max_len, start, limit, name="max_len"):
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
        raise TypeError(f"{name} (the decode length) must be an int >= 1, got {max_len!r}")
    if max_len < 1:
        raise ValueError(f"{name} (the decode length) must be >= 1, got {max_len}")
    if start + max_len > limit:
        raise ValueError(f"{name}={max_len} decoding from position {start} needs {start + max_len} "
                         f"positions, more than the model's max_len={limit}")


class Transformer(NamedTuple):
    """The encoder-decoder Transformer over token ids.

    Params: ``{"src_embed": {"embedding": (Vs, D)}, "tgt_embed": {...} (absent when
    shared), "src_pos"/"tgt_pos": positional params, "encoder": Stack, "decoder": Stack,
    "output": {"kernel": (D, Vt), "bias": (Vt,)} ({"bias"} only when tied)}``.

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      encode: ``encode(params, src, *, src_lengths=None, dropout_key=None) -> memory``:
        src (B, T) ints, src_lengths (B,) (right padding) -> (B, T, D).
      decode: ``decode(params, memory, tgt_in, *, src_lengths=None, dropout_key=None)
        -> logits`` (B, S, Vt), causal over tgt_in (B, S).
      apply: ``apply(params, src, tgt_in, *, src_lengths=None, dropout_key=None)
        -> logits`` (B, S, Vt) (teacher forcing).
      apply_jit: ``jax.jit(apply)``.
      init_decode: ``init_decode(params, src, max_len, *, src_lengths=None) -> DecodeState``:
        encodes once, precomputes the memory keys/values, allocates caches of length max_len.
      decode_step: ``decode_step(params, state, tokens) -> (logits, state)``: tokens
        (B,) or (B, s) at positions ``state.index..``; logits (B, Vt) or (B, s, Vt).
        Needs ``state.index + s <= `` the cache length (checked when the index is
        concrete; see :class:`DecodeState`).
      start: the decode protocol of :mod:`seqjax.decoding`: ``start(params, src, max_len,
        *, sos_id, src_lengths=None) -> (logits (B, Vt), state)``: encodes ``src`` (B, T),
        sizes the cache for ``max_len`` generated tokens and feeds ``sos_id``.
      config: the :class:`TransformerConfig`.
    """

    init: Callable[..., Params]
    encode: Callable[..., Array]
    decode: Callable[..., Array]
    apply: Callable[..., Array]
    apply_jit: Callable[..., Array]
    init_decode: Callable[..., DecodeState]
    decode_step: Callable[..., tuple[Array, DecodeState]]
    start: Callable[..., tuple[Array, DecodeState]]
    config: TransformerConfig

    @property
    def vocab_size(self) -> int:
        """V of the generated (target) tokens: the decode protocol's vocabulary."""
        return self.config.tgt_vocab_size


def transformer(cfg: TransformerConfig, *, precision: Policy | str | None = None) -> Transformer:
    """The encoder-decoder Transformer of Vaswani et al. (2017); see :class:`Transformer`.

    ``precision``: None, or a mixed-precision policy (:mod:`seqjax.precision`): ``init`` makes
    params in its param dtype; every function casts the params (and ``encode``'s memory in
    ``decode``) to its compute dtype, keeps the decode state (KV caches) in the compute dtype,
    and returns memory and logits in its output dtype. Softmax and layer-norm statistics run
    in float32 either way, and so does :func:`seqjax.losses.cross_entropy` on the logits.
    """
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
    precision = checks.check_precision(precision)
    enc, dec = encoder(cfg.stack(cfg.num_encoder_layers)), decoder(cfg.stack(cfg.num_decoder_layers))
    pos = positional_encoding(cfg.positional, cfg.max_len, cfg.model_size)
    D, Vs, Vt = cfg.model_size, cfg.src_vocab_size, cfg.tgt_vocab_size
    tgt_key = "src_embed" if cfg.share_embeddings else "tgt_embed"

    def init(key: PRNGKey, dtype: DType = _dtypes(precision)[0]) -> Params:
        checks.check_key(key)
        ks = jax.random.split(key, 7)
        params = {"src_embed": _embed_init(ks[0], Vs, D, dtype),
                  "src_pos": pos.init(ks[2], dtype), "tgt_pos": pos.init(ks[3], dtype),
                  "encoder": enc.init(ks[4], dtype), "decoder": dec.init(ks[5], dtype),
                  "output": _output_init(ks[6], D, Vt, cfg.tie_embeddings, dtype)}
        if not cfg.share_embeddings:
            params["tgt_embed"] = _embed_init(ks[1], Vt, D, dtype)
        return params

    def _src_lengths(B, T, src_lengths):
        return None if src_lengths is None else checks.check_lengths(src_lengths, B, T, "src_lengths")

    def _src_mask(B, T, src_lengths):                                         # for the decode cache
        lengths = _src_lengths(B, T, src_lengths)
        return None if lengths is None else attn.padding_mask(lengths, T)   # (B, 1, 1, T)

    def _embed_pos(params, name, pos_name, tokens, offset, key):
        x = pos.apply(params[pos_name], _embed(params[name], tokens, D), offset)
        return dropout(x, cfg.dropout, key)

    def encode(params: Params, src: Array, *, src_lengths: Array | None = None,
               dropout_key: PRNGKey | None = None) -> Array:
        src = check_tokens(src, Vs, "src")
        x = _embed_pos(params, "src_embed", "src_pos", src, 0, sub_key(dropout_key, 0))
        return enc.apply(params["encoder"], x, lengths=_src_lengths(*src.shape, src_lengths),
                         dropout_key=sub_key(dropout_key, 1))

    def decode(params: Params, memory: Array, tgt_in: Array, *, src_lengths: Array | None = None,
               dropout_key: PRNGKey | None = None) -> Array:
        tgt_in = check_tokens(tgt_in, Vt, "tgt_in")
        checks.check_array(memory, "memory", 3, "(B, T, D)")
        lengths = _src_lengths(memory.shape[0], memory.shape[1], src_lengths)
        y = _embed_pos(params, tgt_key, "tgt_pos", tgt_in, 0, sub_key(dropout_key, 2))
        h = dec.apply(params["decoder"], y, memory, tgt_is_causal=True, memory_lengths=lengths,
                      dropout_key=sub_key(dropout_key, 3))
        return _logits(params, h, tgt_key)

    def apply(params: Params, src: Array, tgt_in: Array, *, src_lengths: Array | None = None,
              dropout_key: PRNGKey | None = None) -> Array:
        memory = encode(params, src, src_lengths=src_lengths, dropout_key=dropout_key)
        return decode(params, memory, tgt_in, src_lengths=src_lengths, dropout_key=dropout_key)

    def init_decode(params: Params, src: Array, max_len: int, *,
                    src_lengths: Array | None = None) -> DecodeState:
        _check_decode_len(max_len, 0, cfg.max_len, "max_len")
        memory = encode(params, src, src_lengths=src_lengths)
        return DecodeState(dec.init_cache(src.shape[0], max_len, memory.dtype),
                           dec.memory_kv(params["decoder"], memory), _src_mask(*src.shape, src_lengths),
                           jnp.zeros((), jnp.int32))

    def decode_step(params: Params, state: DecodeState, tokens: Array) -> tuple[Array, DecodeState]:
        def run(tokens):
            y = _embed_pos(params, tgt_key, "tgt_pos", tokens, state.index, None)
            h, caches = dec.step(params["decoder"], y, state.caches, state.index,
                                 memory_kv=state.memory_kv, memory_mask=state.memory_mask)
            return _logits(params, h, tgt_key), caches
        return _cached_step(state, tokens, Vt, run)

    def start(params: Params, src: Array, max_len: int, *, sos_id: int | None = None,
              src_lengths: Array | None = None) -> tuple[Array, DecodeState]:
        if sos_id is None:
            raise ValueError("sos_id is required to decode with an encoder-decoder Transformer")
        checks.check_token_id(sos_id, "sos_id", Vt)
        src = check_tokens(src, Vs, "src")
        # positions 0 (SOS) .. max_len - 1 are fed; the last generated token is never fed back
        _check_decode_len(max_len, 1, cfg.max_len + 1)
        state = init_decode(params, src, max_len, src_lengths=src_lengths)
        return decode_step(params, state, jnp.full((src.shape[0],), sos_id, jnp.int32))

    # a policy meets the public functions only: inside, they call each other in the compute dtype
    public = [wrap(precision, f) for f in (encode, decode, apply)]
    public += [wrap(precision, f, inputs=False, outputs=o)
               for f, o in ((init_decode, "none"), (decode_step, "first"), (start, "first"))]
    encode_, decode_, apply_, init_decode_, decode_step_, start_ = public
    return Transformer(init, encode_, decode_, apply_, jax.jit(apply_), init_decode_, decode_step_, start_, cfg)


class DecoderOnly(NamedTuple):
    """A decoder-only (GPT-style) language model over token ids.

    Params: ``{"embed": {"embedding": (V, D)}, "pos": positional params, "decoder": Stack
    (encoder-layer blocks, used causally), "output": {"kernel", "bias"} ({"bias"} when tied)}``.

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      apply: ``apply(params, tokens, *, dropout_key=None) -> logits`` (B, T, V), causal:
        logits[:, t] depends on tokens[:, :t+1] only.
      apply_jit: ``jax.jit(apply)``.
      init_decode: ``init_decode(params, batch_size, max_len, dtype=float32) -> DecodeState``.
      decode_step: ``decode_step(params, state, tokens) -> (logits, state)``, as
        :attr:`Transformer.decode_step` (pass a (B, P) prompt to prefill).
      start: the decode protocol of :mod:`seqjax.decoding`: ``start(params, prompt, max_len)
        -> (logits (B, V), state)``: prefills the cache with the prompt (B, P) in one call
        and returns the logits after its last token; the cache holds P + max_len - 1.
      config: the :class:`DecoderOnlyConfig`.
    """

    init: Callable[..., Params]
    apply: Callable[..., Array]
    apply_jit: Callable[..., Array]
    init_decode: Callable[..., DecodeState]
    decode_step: Callable[..., tuple[Array, DecodeState]]
    start: Callable[..., tuple[Array, DecodeState]]
    config: DecoderOnlyConfig

    @property
    def vocab_size(self) -> int:
        """V: the decode protocol's vocabulary."""
        return self.config.vocab_size


def decoder_only(cfg: DecoderOnlyConfig, *, precision: Policy | str | None = None) -> DecoderOnly:
    """A decoder-only Transformer language model (Radford et al. 2018/2019); see :class:`DecoderOnly`.
    ``precision`` as :func:`transformer` (``init_decode``'s caches default to the compute dtype)."""
    if not isinstance(cfg, DecoderOnlyConfig):
        raise TypeError(f"cfg must be a DecoderOnlyConfig, got {type(cfg).__name__}")
    precision = checks.check_precision(precision)
    param_dtype, compute_dtype = _dtypes(precision)
    stack = encoder(cfg.stack())
    pos = positional_encoding(cfg.positional, cfg.max_len, cfg.model_size)
    D, V = cfg.model_size, cfg.vocab_size

    def init(key: PRNGKey, dtype: DType = param_dtype) -> Params:
        checks.check_key(key)
        ke, kp, kd, ko = jax.random.split(key, 4)
        return {"embed": _embed_init(ke, V, D, dtype), "pos": pos.init(kp, dtype),
                "decoder": stack.init(kd, dtype), "output": _output_init(ko, D, V, cfg.tie_embeddings, dtype)}

    def apply(params: Params, tokens: Array, *, dropout_key: PRNGKey | None = None) -> Array:
        tokens = check_tokens(tokens, V, "tokens")
        x = dropout(pos.apply(params["pos"], _embed(params["embed"], tokens, D)), cfg.dropout,
                     sub_key(dropout_key, 0))
        h = stack.apply(params["decoder"], x, is_causal=True, dropout_key=sub_key(dropout_key, 1))
        return _logits(params, h, "embed")

    def init_decode(params: Params, batch_size: int, max_len: int, dtype: DType = compute_dtype) -> DecodeState:
        _check_decode_len(max_len, 0, cfg.max_len, "max_len")
        return DecodeState(stack.init_cache(batch_size, max_len, dtype), (), None, jnp.zeros((), jnp.int32))

    def decode_step(params: Params, state: DecodeState, tokens: Array) -> tuple[Array, DecodeState]:
        def run(tokens):
            x = pos.apply(params["pos"], _embed(params["embed"], tokens, D), state.index)
            h, caches = stack.step(params["decoder"], x, state.caches, state.index)
            return _logits(params, h, "embed"), caches
        return _cached_step(state, tokens, V, run)

    def start(params: Params, prompt: Array, max_len: int, *, sos_id: int | None = None,
              src_lengths: Array | None = None) -> tuple[Array, DecodeState]:
        if sos_id is not None or src_lengths is not None:
            raise ValueError("a decoder-only model takes neither sos_id nor src_lengths: put any start "
                             "token in the prompt (every prompt has the same length P)")
        prompt = check_tokens(prompt, V, "prompt")
        if prompt.shape[1] < 1:
            raise ValueError(f"prompt must hold at least one token, got shape {tuple(prompt.shape)}")
        P = prompt.shape[1]
        _check_decode_len(max_len, P, cfg.max_len + 1)
        state = init_decode(params, prompt.shape[0], P + max_len - 1)
        logits, state = decode_step(params, state, prompt)
        return logits[:, -1], state

    apply_ = wrap(precision, apply)
    decode_step_, start_ = (wrap(precision, f, inputs=False, outputs="first") for f in (decode_step, start))
    return DecoderOnly(init, apply_, jax.jit(apply_), init_decode, decode_step_, start_, cfg)
