"""Small sequence models built from seqjax layers, and their losses.

Two families, each a frozen config dataclass and a factory returning a NamedTuple
of pure functions:

* :func:`sequence_model` (:class:`SequenceModelConfig`): an optional token
  embedding, a recurrent layer (:func:`seqjax.recurrent.layer`) and a linear
  readout, either from the state at each sequence's last valid step (many-to-one:
  classification, the adding problem) or from every step (many-to-many: copying
  memory, running parity).
* :func:`transformer_sequence_model` (:class:`TransformerSequenceConfig`): the same
  contract with a Transformer encoder stack from :mod:`seqjax.transformer` (causal
  self-attention by default, so step t sees only steps <= t like a recurrent net).
* :func:`recurrent_lm` (:class:`RecurrentLMConfig`): a character-level language
  model (embedding, recurrent layer, softmax over V) whose carry can be threaded
  across calls, with :func:`generate` for sampling at a temperature.

Cells: ``"rnn_tanh"`` (Elman), ``"rnn_relu"``, ``"irnn"`` (ReLU RNN with identity
recurrent init, Le, Jaitly & Hinton 2015), ``"lstm"`` (forget-gate bias
``forget_bias``, Jozefowicz et al. 2015) and ``"gru"``.

Params layout::

    {"embed": (V, E)            # only with vocab_size
     "rnn": recurrent.layer params ({"layers": [{"forward": cell params}, ...]}),
     "head": {"w": (H, C), "b": (C,)}}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import cells, recurrent
from seqjax.transformer import check_tokens
from seqjax.types import Array, Carry, DType, Params, PRNGKey

__all__ = ["CELLS", "SequenceModelConfig", "SequenceModel", "sequence_model",
           "TransformerSequenceConfig", "transformer_sequence_model", "RecurrentLMConfig",
           "RecurrentLM", "recurrent_lm", "generate", "sample_logits", "softmax_cross_entropy", "accuracy",
           "make_cell"]

#: Cell names accepted by the model configs.
CELLS = ("rnn_tanh", "rnn_relu", "irnn", "lstm", "gru")


def make_cell(name: str, hidden_size: int, *, forget_bias: float = 1.0,
              irnn_input_std: float = 1e-3) -> cells.Cell:
    """A :class:`~seqjax.cells.Cell` by model-level name (one of :data:`CELLS`).

    ``"irnn"`` is ``cells.simple_rnn(H, "relu")`` with its init replaced by Le et al.
    2015's: ``w_hh = I``, biases 0, ``w_ih ~ N(0, irnn_input_std^2)``. ``"lstm"`` gets
    ``forget_bias`` added to the forget gate at init.
    """
    if name not in CELLS:
        raise ValueError(f"unknown architecture (cell) {name!r}; expected one of {list(CELLS)}")
    if name == "lstm":
        return cells.lstm(hidden_size, forget_bias=forget_bias)
    if name == "gru":
        return cells.gru(hidden_size)
    if name in ("rnn_tanh", "rnn_relu"):
        return cells.simple_rnn(hidden_size, name.split("_")[1])
    base = cells.simple_rnn(hidden_size, "relu")

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        params = base.init(key, input_size, dtype)
        return {"w_ih": irnn_input_std * jax.random.normal(key, params["w_ih"].shape, dtype),
                "w_hh": jnp.eye(hidden_size, dtype=dtype),
                "b_ih": jnp.zeros_like(params["b_ih"]), "b_hh": jnp.zeros_like(params["b_hh"])}
    return base._replace(init=init, name="irnn")


def _linear_init(key: PRNGKey, fan_in: int, fan_out: int, dtype) -> Params:
    """PyTorch ``nn.Linear`` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    kw, kb = jax.random.split(key)
    return {"w": jax.random.uniform(kw, (fan_in, fan_out), dtype, -bound, bound),
            "b": jax.random.uniform(kb, (fan_out,), dtype, -bound, bound)}


def _check_positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{n} must be an int >= 1, got {v!r}")


# ----------------------------------------------------------------------------- sequence model


@dataclasses.dataclass(frozen=True)
class SequenceModelConfig:
    """Hyperparameters of :func:`sequence_model`.

    Attributes:
      cell: one of :data:`CELLS`.
      hidden_size: H.
      output_size: C, classes (or regression outputs).
      input_size: E for float inputs (B, T, E); ignored with ``vocab_size``.
      vocab_size: V for integer token inputs (B, T), embedded to ``embed_size``.
      embed_size: embedding width.
      num_layers: L stacked recurrent layers.
      readout: ``"last"`` (many-to-one, (B, C)) or ``"all"`` (many-to-many, (B, T, C)).
      dropout: between recurrent layers (needs a key in training).
      forget_bias: LSTM forget-gate bias at init.
      irnn_input_std: IRNN input-weight init std.
    """

    cell: str = "lstm"
    hidden_size: int = 128
    output_size: int = 1
    input_size: int | None = None
    vocab_size: int | None = None
    embed_size: int = 32
    num_layers: int = 1
    readout: str = "last"
    dropout: float = 0.0
    forget_bias: float = 1.0
    irnn_input_std: float = 1e-3

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown architecture (cell) {self.cell!r}; expected one of {list(CELLS)}")
        _check_positive(self, "hidden_size", "output_size", "input_size", "vocab_size", "embed_size",
                        "num_layers")
        if self.input_size is None and self.vocab_size is None:
            raise ValueError("give input_size (float inputs (B, T, E)) or vocab_size (tokens (B, T))")
        if self.readout not in ("last", "all"):
            raise ValueError(f"readout must be 'last' or 'all', got {self.readout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SequenceModel(NamedTuple):
    """``init(key) -> params``; ``apply(params, x, *, lengths=None, key=None) -> outputs``
    with x (B, T, E) float or (B, T) int tokens in [0, V) and outputs (B, C) ("last") or
    (B, T, C) ("all"); ``key`` switches dropout on. A non-array x raises TypeError;
    token ids outside [0, V) raise ValueError when concrete (under jit they are traced
    and unchecked)."""

    init: Callable[[PRNGKey], Params]
    apply: Callable[..., Array]
    config: SequenceModelConfig


def _check_array(x, name: str) -> None:
    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array (jax or numpy), got {type(x).__name__}")


def _embed_tokens(table: Array, tokens, vocab_size: int, name: str) -> Array:
    """``table[tokens]`` for (B, T) int ids, checked first: a gather clamps out-of-range ids
    silently, so ids outside [0, V) raise ValueError when concrete (traced ids under jit
    cannot be checked)."""
    _check_array(tokens, name)
    tokens = check_tokens(tokens, vocab_size, name)
    return jnp.take(table, tokens, axis=0)                                # (B, T, E)


def _embed_inputs(config, params: Params, x: Array, name: str = "x") -> Array:
    _check_array(x, name)
    if config.vocab_size is not None:
        return _embed_tokens(params["embed"], x, config.vocab_size, name)  # (B, T, E)
    if x.ndim != 3 or x.shape[-1] != config.input_size:
        raise ValueError(f"{name} must have shape (B, T, E={config.input_size}), got {x.shape}")
    return x


def sequence_model(config: SequenceModelConfig) -> SequenceModel:
    """Embedding (optional) -> recurrent layer -> linear readout. See the module docstring."""
    if not isinstance(config, SequenceModelConfig):
        raise TypeError(f"config must be a SequenceModelConfig, got {type(config).__name__}")
    cell = make_cell(config.cell, config.hidden_size, forget_bias=config.forget_bias,
                     irnn_input_std=config.irnn_input_std)
    rnn = recurrent.layer(cell, num_layers=config.num_layers, dropout=config.dropout)
    E = config.embed_size if config.vocab_size is not None else config.input_size

    def init(key: PRNGKey) -> Params:
        k_e, k_r, k_h = jax.random.split(key, 3)
        params = {"rnn": rnn.init(k_r, E), "head": _linear_init(k_h, config.hidden_size,
                                                                 config.output_size, jnp.float32)}
        if config.vocab_size is not None:
            params["embed"] = jax.random.normal(k_e, (config.vocab_size, E), jnp.float32)
        return params

    def apply(params: Params, x: Array, *, lengths: Array | None = None,
              key: PRNGKey | None = None) -> Array:
        h = _embed_inputs(config, params, x)
        ys, final = rnn.apply(params["rnn"], h, lengths=lengths, dropout_key=key,
                              deterministic=key is None)
        if config.readout == "last":
            feats = cell.output(jax.tree.map(lambda a: a[-1], final))     # (B, H) last layer
        else:
            feats = ys                                                    # (B, T, H)
        return feats @ params["head"]["w"] + params["head"]["b"]

    return SequenceModel(init, apply, config)


# ----------------------------------------------------------------------------- Transformer


@dataclasses.dataclass(frozen=True)
class TransformerSequenceConfig:
    """Hyperparameters of :func:`transformer_sequence_model`.

    Attributes:
      output_size: C.
      input_size: E for float inputs (B, T, E), projected to D by a linear layer.
      vocab_size: V for int tokens (B, T), embedded (scaled by sqrt(D)).
      model_size, num_heads, ff_size, num_layers, dropout, norm_first: the encoder
        stack (:class:`seqjax.transformer.StackConfig`; Pre-LN by default).
      max_len: the longest T.
      positional: ``"sinusoidal"`` or ``"learned"``.
      causal: causal self-attention (step t attends to steps <= t).
      readout: ``"last"`` (the last valid step) or ``"all"``.
    """

    output_size: int = 1
    input_size: int | None = None
    vocab_size: int | None = None
    model_size: int = 64
    num_heads: int = 4
    ff_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    norm_first: bool = True
    max_len: int = 1024
    positional: str = "sinusoidal"
    causal: bool = True
    readout: str = "last"

    def __post_init__(self):
        _check_positive(self, "output_size", "input_size", "vocab_size", "model_size", "num_heads",
                        "ff_size", "num_layers", "max_len")
        if self.input_size is None and self.vocab_size is None:
            raise ValueError("give input_size (float inputs (B, T, E)) or vocab_size (tokens (B, T))")
        if self.model_size % self.num_heads:
            raise ValueError(f"model_size={self.model_size} must be divisible by num_heads={self.num_heads}")
        if self.readout not in ("last", "all"):
            raise ValueError(f"readout must be 'last' or 'all', got {self.readout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def transformer_sequence_model(config: TransformerSequenceConfig) -> SequenceModel:
    """Input projection / embedding -> positional encoding -> encoder stack -> readout.

    Params: ``{"input": {"w": (E, D), "b": (D,)}`` or ``{"embed": (V, D)}``, ``"pos"``,
    ``"encoder"`` (a :func:`seqjax.transformer.encoder` stack), ``"head": {"w": (D, C), "b": (C,)}}``.
    ``apply(params, x, *, lengths=None, key=None)`` as :class:`SequenceModel`; padded
    keys are masked out and ``"last"`` reads position ``lengths - 1``.
    """
    from seqjax import attention, transformer  # the attention issue's modules

    if not isinstance(config, TransformerSequenceConfig):
        raise TypeError(f"config must be a TransformerSequenceConfig, got {type(config).__name__}")
    D = config.model_size
    stack = transformer.encoder(transformer.StackConfig(
        model_size=D, num_heads=config.num_heads, ff_size=config.ff_size, num_layers=config.num_layers,
        dropout=config.dropout, norm_first=config.norm_first, final_norm=config.norm_first))
    pos = transformer.positional_encoding(config.positional, config.max_len, D)

    def init(key: PRNGKey) -> Params:
        k_in, k_pos, k_enc, k_head = jax.random.split(key, 4)
        params = {"pos": pos.init(k_pos), "encoder": stack.init(k_enc),
                  "head": _linear_init(k_head, D, config.output_size, jnp.float32)}
        if config.vocab_size is not None:
            params["embed"] = jax.random.normal(k_in, (config.vocab_size, D), jnp.float32) / math.sqrt(D)
        else:
            params["input"] = _linear_init(k_in, config.input_size, D, jnp.float32)
        return params

    def apply(params: Params, x: Array, *, lengths: Array | None = None,
              key: PRNGKey | None = None) -> Array:
        if config.vocab_size is not None:
            h = _embed_inputs(config, params, x) * math.sqrt(D)            # (B, T, D)
        else:
            h = _embed_inputs(config, params, x) @ params["input"]["w"] + params["input"]["b"]
        B, T = h.shape[:2]
        h = pos.apply(params["pos"], h)
        mask = attention.causal_mask(T) if config.causal else None        # (1, 1, T, T)
        if lengths is not None:
            lengths = recurrent.validate_lengths(lengths, B, T)
            mask = attention.combine_masks(mask, attention.padding_mask(lengths, T))
        h = stack.apply(params["encoder"], h, mask=mask, dropout_key=key)  # (B, T, D)
        if config.readout == "last":
            last = jnp.full((B,), T - 1) if lengths is None else lengths - 1
            h = h[jnp.arange(B), last]                                      # (B, D)
        return h @ params["head"]["w"] + params["head"]["b"]

    return SequenceModel(init, apply, config)


# ----------------------------------------------------------------------------- char LM


@dataclasses.dataclass(frozen=True)
class RecurrentLMConfig:
    """Hyperparameters of :func:`recurrent_lm`: cell (one of :data:`CELLS`), vocab_size V,
    hidden_size H, embed_size, num_layers L, dropout, forget_bias."""

    cell: str = "lstm"
    vocab_size: int = 98
    hidden_size: int = 256
    embed_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    forget_bias: float = 1.0

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown architecture (cell) {self.cell!r}; expected one of {list(CELLS)}")
        _check_positive(self, "vocab_size", "hidden_size", "embed_size", "num_layers")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class RecurrentLM(NamedTuple):
    """A recurrent language model.

    Attributes:
      init: ``init(key) -> params``.
      apply: ``apply(params, tokens, carry=None, *, key=None) -> (logits, carry)`` with
        tokens (B, T) int in [0, V) (checked when concrete), logits (B, T, V) and the carry in the layer's
        (L, B, H) layout (thread it to continue a stream).
      initial_carry: ``initial_carry(batch_size) -> carry`` of zeros.
      config: the :class:`RecurrentLMConfig`.
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[..., tuple[Array, Carry]]
    initial_carry: Callable[[int], Carry]
    config: RecurrentLMConfig


def recurrent_lm(config: RecurrentLMConfig) -> RecurrentLM:
    """Embedding (V, E) -> recurrent layer -> linear head (H, V)."""
    if not isinstance(config, RecurrentLMConfig):
        raise TypeError(f"config must be a RecurrentLMConfig, got {type(config).__name__}")
    cell = make_cell(config.cell, config.hidden_size, forget_bias=config.forget_bias)
    rnn = recurrent.layer(cell, num_layers=config.num_layers, dropout=config.dropout)

    def init(key: PRNGKey) -> Params:
        k_e, k_r, k_h = jax.random.split(key, 3)
        return {"embed": jax.random.normal(k_e, (config.vocab_size, config.embed_size), jnp.float32),
                "rnn": rnn.init(k_r, config.embed_size),
                "head": _linear_init(k_h, config.hidden_size, config.vocab_size, jnp.float32)}

    def apply(params: Params, tokens: Array, carry: Carry | None = None, *,
              key: PRNGKey | None = None) -> tuple[Array, Carry]:
        h = _embed_tokens(params["embed"], tokens, config.vocab_size, "tokens")  # (B, T, E)
        ys, carry = rnn.apply(params["rnn"], h, initial_carry=carry, dropout_key=key,
                              deterministic=key is None)
        return ys @ params["head"]["w"] + params["head"]["b"], carry      # (B, T, V)

    return RecurrentLM(init, apply, rnn.initial_carry, config)


def sample_logits(key: PRNGKey, logits: Array, temperature) -> Array:
    """Sample ids from ``softmax(logits / temperature)`` over the last axis of (..., V);
    ``temperature == 0`` gives the argmax. ``temperature`` may be traced."""
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature == 0, greedy, sampled).astype(jnp.int32)


def generate(lm: RecurrentLM, params: Params, key: PRNGKey, prompt: Array, num_tokens: int, *,
             temperature: float | Array = 1.0) -> Array:
    """Sample a continuation of ``prompt`` (T0,) ids: (num_tokens,) ids.

    The prompt is read once to build the carry; then each step samples from
    ``softmax(logits / temperature)`` (``temperature=0``: greedy argmax) and feeds the
    token back. One ``lax.scan``; jit it at the call site with ``num_tokens`` static
    (``temperature`` may be a traced scalar, so one compilation serves every temperature).
    """
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 1 or prompt.shape[0] < 1:
        raise ValueError(f"prompt must have shape (T0,) with T0 >= 1, got {prompt.shape}")
    logits, carry = lm.apply(params, prompt[None, :])

    def body(c, k):
        carry, logit = c
        tok = sample_logits(k, logit, temperature)                        # (1,)
        logits, carry = lm.apply(params, tok[:, None], carry)
        return (carry, logits[:, -1]), tok[0]

    _, toks = jax.lax.scan(body, (carry, logits[:, -1]), jax.random.split(key, num_tokens))
    return toks


# ----------------------------------------------------------------------------- losses


def softmax_cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Mean cross-entropy (nats) of logits (..., C) against int labels (...), over ``mask``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if mask is None:
        return jnp.mean(nll)
    mask = mask.astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def accuracy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Fraction of argmax(logits) (..., C) equal to labels (...), over ``mask``."""
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if mask is None:
        return jnp.mean(hit)
    mask = mask.astype(jnp.float32)
    return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)
