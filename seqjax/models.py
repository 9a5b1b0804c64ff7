"""Small sequence models built from seqjax layers.

Three families, each a frozen config dataclass and a factory returning a NamedTuple
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
  across calls. It offers the decode protocol of :mod:`seqjax.decoding`, so
  ``decoding.sample`` / ``greedy_decode`` / ``beam_search`` generate text with it.
* :func:`conditioned_decoder` (:class:`ConditionedDecoderConfig`): one-to-many, a
  recurrent decoder whose initial state is a function of a feature vector (the
  image-captioning setting); it also offers the decode protocol.

Cells come from the one registry, :func:`seqjax.cells.make` (any of
:data:`seqjax.cells.CELL_NAMES`); ``forget_bias`` and ``irnn_input_std`` are passed to
it only when set, so the cells' own defaults apply otherwise.

Dropout follows the library convention: ``dropout_key=None`` is deterministic.

Params layout::

    {"embed": {"embedding": (V, E)}     # only with vocab_size
     "rnn": recurrent.layer params ({"layers": [{"forward": cell params}, ...]}),
     "head": {"kernel": (H, C), "bias": (C,)}}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import cells, checks, layers, recurrent, transformer
from seqjax.precision import Policy, wrap
from seqjax.types import Array, Carry, Params, PRNGKey

__all__ = ["SequenceModelConfig", "SequenceModel", "sequence_model",
           "TransformerSequenceConfig", "transformer_sequence_model", "RecurrentLMConfig",
           "RecurrentLM", "recurrent_lm", "ConditionedDecoderConfig", "ConditionedDecoder",
           "ConditionedDecoderState", "conditioned_decoder"]

READOUTS = ("last", "all")


def _cell(config) -> cells.Cell:
    """The config's cell from :func:`seqjax.cells.make`, with the options the config sets."""
    options = {}
    if config.forget_bias is not None:
        if config.cell != "lstm":
            raise ValueError(f"forget_bias applies to cell='lstm' only, got cell={config.cell!r}")
        options["forget_bias"] = config.forget_bias
    if getattr(config, "irnn_input_std", None) is not None:
        if config.cell != "irnn":
            raise ValueError(f"irnn_input_std applies to cell='irnn' only, got cell={config.cell!r}")
        options["input_std"] = config.irnn_input_std
    return cells.make(config.cell, config.hidden_size, **options)


def _check_ints(obj, *names) -> None:
    for name in names:
        if getattr(obj, name) is not None:
            checks.check_int(getattr(obj, name), f"{type(obj).__name__}.{name}")


def _check_inputs_given(obj) -> None:
    if obj.input_size is None and obj.vocab_size is None:
        raise ValueError("give input_size (float inputs (B, T, E)) or vocab_size (tokens (B, T))")


def _compute(precision: Policy | None, x):
    """``x`` in the policy's compute dtype (a recurrent layer's float32 outputs or state, on
    their way into the head); unchanged without a policy."""
    return x if precision is None else precision.cast_to_compute(x)


def _param_init(precision: Policy | None, init: Callable[[PRNGKey], Params]) -> Callable[[PRNGKey], Params]:
    """``init`` whose params come out in the policy's param dtype; ``init`` itself without a policy."""
    return init if precision is None else lambda key: precision.cast_to_param(init(key))


# ----------------------------------------------------------------------------- sequence model


@dataclasses.dataclass(frozen=True)
class SequenceModelConfig:
    """Hyperparameters of :func:`sequence_model`.

    Attributes:
      cell: a name of :func:`seqjax.cells.make`.
      hidden_size: H.
      output_size: C, classes (or regression outputs).
      input_size: E for float inputs (B, T, E); ignored with ``vocab_size``.
      vocab_size: V for integer token inputs (B, T), embedded to ``embed_size``.
      embed_size: embedding width.
      num_layers: L stacked recurrent layers.
      readout: ``"last"`` (many-to-one, (B, C)) or ``"all"`` (many-to-many, (B, T, C)).
      dropout: between recurrent layers (active when ``apply`` gets a ``dropout_key``).
      forget_bias: LSTM forget-gate bias at init (None: the cell's default).
      irnn_input_std: IRNN input-weight init std (None: the cell's default).
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
    forget_bias: float | None = None
    irnn_input_std: float | None = None

    def __post_init__(self):
        checks.check_choice(self.cell, "cell", cells.CELL_NAMES)
        _check_ints(self, "hidden_size", "output_size", "input_size", "vocab_size", "embed_size", "num_layers")
        _check_inputs_given(self)
        checks.check_choice(self.readout, "readout", READOUTS)
        checks.check_rate(self.dropout, "dropout")
        _cell(self)                                     # options are checked by the cell itself


class SequenceModel(NamedTuple):
    """``init(key) -> params``; ``apply(params, x, *, lengths=None, dropout_key=None) -> outputs``
    with x (B, T, E) float or (B, T) int tokens in [0, V), lengths (B,) in [1, T], and
    outputs (B, C) ("last") or (B, T, C) ("all"). A non-array x raises TypeError; token
    ids outside [0, V) raise ValueError when concrete."""

    init: Callable[[PRNGKey], Params]
    apply: Callable[..., Array]
    config: SequenceModelConfig


def _embed_inputs(config, params: Params, x, *, scale: float = 1.0) -> Array:
    """(B, T) tokens -> (B, T, E) embeddings, or (B, T, E) floats checked against input_size."""
    if config.vocab_size is not None:
        tokens = checks.check_tokens(x, config.vocab_size, "x")
        return layers.embed(params["embed"], tokens, scale=scale)           # (B, T, E)
    checks.check_array(x, "x", 3, f"(B, T, E={config.input_size})")
    if x.shape[-1] != config.input_size:
        raise ValueError(f"x must have shape (B, T, E={config.input_size}), got {tuple(x.shape)}")
    return x


def sequence_model(config: SequenceModelConfig, *, precision: Policy | str | None = None) -> SequenceModel:
    """Embedding (optional) -> recurrent layer -> linear readout. See the module docstring.

    ``precision``: None, or a mixed-precision policy (:mod:`seqjax.precision`): params in its
    param dtype, ``apply`` computes in its compute dtype with the recurrent carry in float32
    (``recurrent.layer(precision=...)``) and returns outputs in its output dtype.
    """
    if not isinstance(config, SequenceModelConfig):
        raise TypeError(f"config must be a SequenceModelConfig, got {type(config).__name__}")
    precision = checks.check_precision(precision)
    cell = _cell(config)
    rnn = recurrent.layer(cell, num_layers=config.num_layers, dropout=config.dropout, precision=precision)
    E = config.embed_size if config.vocab_size is not None else config.input_size

    def init(key: PRNGKey) -> Params:
        k_e, k_r, k_h = jax.random.split(checks.check_key(key), 3)
        params = {"rnn": rnn.init(k_r, E),
                  "head": layers.dense_init(k_h, config.hidden_size, config.output_size, init="torch")}
        if config.vocab_size is not None:
            params["embed"] = layers.embedding_init(k_e, config.vocab_size, E)
        return params

    def apply(params: Params, x: Array, *, lengths: Array | None = None,
              dropout_key: PRNGKey | None = None) -> Array:
        h = _embed_inputs(config, params, x)
        ys, final = rnn.apply(params["rnn"], h, lengths=lengths, dropout_key=dropout_key)
        if config.readout == "last":
            feats = cell.output(jax.tree.map(lambda a: a[-1], final))     # (B, H) last layer
        else:
            feats = ys                                                    # (B, T, H)
        return layers.dense(params["head"], _compute(precision, feats))

    return SequenceModel(_param_init(precision, init), wrap(precision, apply), config)


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
        _check_ints(self, "output_size", "input_size", "vocab_size", "max_len")
        _check_inputs_given(self)
        checks.check_choice(self.readout, "readout", READOUTS)
        checks.check_bool(self.causal, "causal")
        self.stack()                                    # the stack's own rules

    def stack(self) -> transformer.StackConfig:
        return transformer.StackConfig(
            model_size=self.model_size, num_heads=self.num_heads, ff_size=self.ff_size,
            num_layers=self.num_layers, dropout=self.dropout, norm_first=self.norm_first,
            final_norm=self.norm_first)


def transformer_sequence_model(config: TransformerSequenceConfig, *,
                               precision: Policy | str | None = None) -> SequenceModel:
    """Input projection / embedding -> positional encoding -> encoder stack -> readout.

    ``precision`` as :func:`sequence_model` (softmax and layer-norm statistics in float32).

    Params: ``{"input": {"kernel": (E, D), "bias": (D,)}`` or ``{"embed": {"embedding": (V, D)}}``,
    ``"pos"``, ``"encoder"`` (a :func:`seqjax.transformer.encoder` stack),
    ``"head": {"kernel": (D, C), "bias": (C,)}}``.
    ``apply(params, x, *, lengths=None, dropout_key=None)`` as :class:`SequenceModel`;
    padded keys are masked out and ``"last"`` reads position ``lengths - 1``.
    """
    if not isinstance(config, TransformerSequenceConfig):
        raise TypeError(f"config must be a TransformerSequenceConfig, got {type(config).__name__}")
    precision = checks.check_precision(precision)
    D = config.model_size
    stack = transformer.encoder(config.stack())
    pos = transformer.positional_encoding(config.positional, config.max_len, D)

    def init(key: PRNGKey) -> Params:
        k_in, k_pos, k_enc, k_head = jax.random.split(checks.check_key(key), 4)
        params = {"pos": pos.init(k_pos), "encoder": stack.init(k_enc),
                  "head": layers.dense_init(k_head, D, config.output_size, init="torch")}
        if config.vocab_size is not None:
            params["embed"] = layers.embedding_init(k_in, config.vocab_size, D, std=D ** -0.5)
        else:
            params["input"] = layers.dense_init(k_in, config.input_size, D, init="torch")
        return params

    def apply(params: Params, x: Array, *, lengths: Array | None = None,
              dropout_key: PRNGKey | None = None) -> Array:
        h = _embed_inputs(config, params, x, scale=math.sqrt(D))           # (B, T, D) or (B, T, E)
        B, T = h.shape[:2]
        if lengths is not None:
            lengths = checks.check_lengths(lengths, B, T)
            # zero padded inputs before any use: a NaN there times its zero attention weight
            # would still be NaN, and so would the input projection's gradient (0 * NaN)
            valid = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
            h = jnp.where(valid, h, jnp.zeros_like(h))
        if config.vocab_size is None:
            h = layers.dense(params["input"], h)                            # (B, T, D)
        h = pos.apply(params["pos"], h)
        h = stack.apply(params["encoder"], h, is_causal=config.causal, lengths=lengths,
                        dropout_key=dropout_key)                             # (B, T, D)
        if config.readout == "last":
            last = jnp.full((B,), T - 1) if lengths is None else lengths - 1
            h = h[jnp.arange(B), last]                                      # (B, D)
        return layers.dense(params["head"], h)

    return SequenceModel(_param_init(precision, init), wrap(precision, apply), config)


# ----------------------------------------------------------------------------- char LM


@dataclasses.dataclass(frozen=True)
class RecurrentLMConfig:
    """Hyperparameters of :func:`recurrent_lm`: cell (a name of :func:`seqjax.cells.make`),
    vocab_size V, hidden_size H, embed_size, num_layers L, dropout, forget_bias (None:
    the cell's default)."""

    cell: str = "lstm"
    vocab_size: int = 98
    hidden_size: int = 256
    embed_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    forget_bias: float | None = None

    def __post_init__(self):
        checks.check_choice(self.cell, "cell", cells.CELL_NAMES)
        _check_ints(self, "vocab_size", "hidden_size", "embed_size", "num_layers")
        checks.check_rate(self.dropout, "dropout")
        _cell(self)


class RecurrentLM(NamedTuple):
    """A recurrent language model.

    Attributes:
      init: ``init(key) -> params``.
      apply: ``apply(params, tokens, carry=None, *, dropout_key=None) -> (logits, carry)``
        with tokens (B, T) int in [0, V) (checked when concrete), logits (B, T, V) and the
        carry in the layer's (L, B, H) layout (thread it to continue a stream).
      initial_carry: ``initial_carry(batch_size) -> carry`` of zeros.
      start: the decode protocol (:mod:`seqjax.decoding`): ``start(params, prompt, max_len)
        -> (logits (B, V), state)`` reads the prompt (B, P >= 1) and returns the logits
        after its last token; ``state`` is the carry with batch-major leaves (B, L, H).
      decode_step: ``decode_step(params, state, tokens) -> (logits, state)``, tokens (B,),
        logits (B, V).
      config: the :class:`RecurrentLMConfig`.
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[..., tuple[Array, Carry]]
    initial_carry: Callable[[int], Carry]
    start: Callable[..., tuple[Array, Carry]]
    decode_step: Callable[..., tuple[Array, Carry]]
    config: RecurrentLMConfig

    @property
    def vocab_size(self) -> int:
        """V: the decode protocol's vocabulary."""
        return self.config.vocab_size


def recurrent_lm(config: RecurrentLMConfig, *, precision: Policy | str | None = None) -> RecurrentLM:
    """Embedding (V, E) -> recurrent layer -> linear head (H, V).

    ``precision`` as :func:`sequence_model`; the carry (and the decode state) stays in the
    policy's accumulation dtype (float32 for bfloat16), logits come in its output dtype.
    """
    if not isinstance(config, RecurrentLMConfig):
        raise TypeError(f"config must be a RecurrentLMConfig, got {type(config).__name__}")
    precision = checks.check_precision(precision)
    rnn = recurrent.layer(_cell(config), num_layers=config.num_layers, dropout=config.dropout,
                          precision=precision)
    V = config.vocab_size

    def init(key: PRNGKey) -> Params:
        k_e, k_r, k_h = jax.random.split(checks.check_key(key), 3)
        return {"embed": layers.embedding_init(k_e, V, config.embed_size),
                "rnn": rnn.init(k_r, config.embed_size),
                "head": layers.dense_init(k_h, config.hidden_size, V, init="torch")}

    def apply(params: Params, tokens: Array, carry: Carry | None = None, *,
              dropout_key: PRNGKey | None = None) -> tuple[Array, Carry]:
        tokens = checks.check_tokens(tokens, V, "tokens")
        h = layers.embed(params["embed"], tokens)                          # (B, T, E)
        ys, carry = rnn.apply(params["rnn"], h, initial_carry=carry, dropout_key=dropout_key)
        return layers.dense(params["head"], _compute(precision, ys)), carry  # (B, T, V)

    # The decode state is the carry with the batch axis first, as the protocol asks.
    to_state = lambda carry: jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), carry)  # noqa: E731
    to_carry = to_state

    def start(params: Params, prompt: Array, max_len: int, *, sos_id: int | None = None,
              src_lengths: Array | None = None) -> tuple[Array, Carry]:
        if sos_id is not None or src_lengths is not None:
            raise ValueError("a recurrent LM takes neither sos_id nor src_lengths: put any start "
                             "token in the prompt (every prompt has the same length P)")
        checks.check_int(max_len, "max_len")
        logits, carry = apply(params, prompt)
        return logits[:, -1], to_state(carry)

    def decode_step(params: Params, state: Carry, tokens: Array) -> tuple[Array, Carry]:
        tokens = checks.check_tokens(tokens, V, "tokens", (1,))
        logits, carry = apply(params, tokens[:, None], to_carry(state))
        return logits[:, 0], to_state(carry)

    # the carry goes in and out as the layer keeps it (float32 under bfloat16): never cast
    apply_, start_, decode_step_ = (wrap(precision, f, inputs=False, outputs="first")
                                    for f in (apply, start, decode_step))
    return RecurrentLM(_param_init(precision, init), apply_, rnn.initial_carry, start_, decode_step_, config)


# ----------------------------------------------------------------------------- one-to-many


@dataclasses.dataclass(frozen=True)
class ConditionedDecoderConfig:
    """Hyperparameters of :func:`conditioned_decoder`.

    Attributes:
      feature_size: E, the width of the conditioning feature vector.
      vocab_size: V of the generated tokens.
      cell: a name of :func:`seqjax.cells.make`.
      hidden_size: H.
      embed_size: width of the token embedding fed to the decoder.
      num_layers: L stacked recurrent layers (each gets its own initial state).
      dropout: rate on the embedded inputs and between layers (active when ``apply``
        gets a ``dropout_key``).
      forget_bias: LSTM forget-gate bias at init (None: the cell's default).
    """

    feature_size: int
    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 64
    embed_size: int = 16
    num_layers: int = 1
    dropout: float = 0.0
    forget_bias: float | None = None

    def __post_init__(self):
        checks.check_choice(self.cell, "ConditionedDecoderConfig.cell", cells.CELL_NAMES)
        _check_ints(self, "feature_size", "vocab_size", "hidden_size", "embed_size", "num_layers")
        checks.check_rate(self.dropout, "ConditionedDecoderConfig.dropout")
        _cell(self)


class ConditionedDecoderState(NamedTuple):
    """What decoding carries: ``carry``, the cell carry with batch-major leaves (B, L, H)
    (an ``LSTMState`` of two such arrays for the LSTM), as the decode protocol asks."""

    carry: Carry


class ConditionedDecoder(NamedTuple):
    r"""A one-to-many recurrent decoder conditioned on a feature vector.

    Each layer k's initial carry is a function of the features f (B, E): every carry
    component (h, and c for the LSTM) is :math:`\tanh(W^{(k)} f + b^{(k)})`. Then, as
    in any recurrent language model,

    .. math::
        h_s = \mathrm{cell}(h_{s-1}, \mathrm{embed}(y_{s-1})),\qquad
        p(y_s \mid y_{<s}, f) = \mathrm{softmax}(W_o h_s + b_o),\qquad y_0 = \mathrm{SOS}.

    This is the image-captioning setting. Vinyals et al. 2015 ("Show and tell: a
    neural image caption generator") give the image embedding to the LSTM as its first
    input; here it sets the initial state instead, so the first fed token is SOS.

    Params::

        {"condition": [{"kernel": (E, L*H), "bias": (L*H,)} per carry component],
         "embed": {"embedding": (V, embed_size)},
         "rnn": recurrent.layer params,
         "head": {"kernel": (H, V), "bias": (V,)}}

    Attributes:
      init: ``init(key) -> params``.
      initial_carry: ``initial_carry(params, features) -> carry`` in the recurrent
        layer's (L, B, H) layout, for features (B, E).
      apply: ``apply(params, features, tgt_in, *, dropout_key=None) -> logits (B, S, V)``:
        teacher forcing, step s reads ``tgt_in[:, s]`` (``tgt_in[:, 0]`` is SOS).
      start: the decode protocol (:mod:`seqjax.decoding`): ``start(params, features,
        max_len, *, sos_id, src_lengths=None) -> (logits (B, V), state)`` builds the
        initial state and feeds ``sos_id``; ``src_lengths`` must be None (the features
        have no length).
      decode_step: ``decode_step(params, state, tokens (B,)) -> (logits (B, V), state)``.
      config: the :class:`ConditionedDecoderConfig`.
    """

    init: Callable[[PRNGKey], Params]
    initial_carry: Callable[[Params, Array], Carry]
    apply: Callable[..., Array]
    start: Callable[..., tuple[Array, ConditionedDecoderState]]
    decode_step: Callable[..., tuple[Array, ConditionedDecoderState]]
    config: ConditionedDecoderConfig

    @property
    def vocab_size(self) -> int:
        """V: the decode protocol's vocabulary."""
        return self.config.vocab_size


def conditioned_decoder(config: ConditionedDecoderConfig, *,
                        precision: Policy | str | None = None) -> ConditionedDecoder:
    """Features -> initial state; embedding -> recurrent layer -> linear head. See :class:`ConditionedDecoder`.

    ``precision`` as :func:`recurrent_lm` (the initial state is made in the compute dtype
    and kept in the accumulation dtype).
    """
    if not isinstance(config, ConditionedDecoderConfig):
        raise TypeError(f"config must be a ConditionedDecoderConfig, got {type(config).__name__}")
    precision = checks.check_precision(precision)
    cell = _cell(config)
    rnn = recurrent.layer(cell, num_layers=config.num_layers, dropout=config.dropout, precision=precision)
    E, V, H, L = config.feature_size, config.vocab_size, config.hidden_size, config.num_layers
    treedef = jax.tree.structure(cell.initial_carry((1,)))

    def init(key: PRNGKey) -> Params:
        k_c, k_e, k_r, k_h = jax.random.split(checks.check_key(key), 4)
        return {"condition": [layers.dense_init(k, E, L * H, init="torch")
                              for k in jax.random.split(k_c, treedef.num_leaves)],
                "embed": layers.embedding_init(k_e, V, config.embed_size),
                "rnn": rnn.init(k_r, config.embed_size),
                "head": layers.dense_init(k_h, H, V, init="torch")}

    def _check_features(features) -> Array:
        checks.check_array(features, "features", 2, f"(B, E={E})")
        if features.shape[-1] != E:
            raise ValueError(f"features must have shape (B, E={E}), got {tuple(features.shape)}")
        return features

    def initial_carry(params: Params, features: Array) -> Carry:
        B = _check_features(features).shape[0]
        leaves = [jnp.tanh(layers.dense(p, features)).reshape(B, L, H).swapaxes(0, 1)   # (L, B, H)
                  for p in params["condition"]]
        if precision is not None:                                          # the layer's carry dtype
            leaves = [a.astype(precision.accumulation_dtype) for a in leaves]
        return jax.tree.unflatten(treedef, leaves)

    def _run(params, carry, tokens, dropout_key):
        x = layers.dropout(layers.embed(params["embed"], tokens), config.dropout,
                           layers.sub_key(dropout_key, 0))                 # (B, S, embed_size)
        ys, carry = rnn.apply(params["rnn"], x, initial_carry=carry,
                              dropout_key=layers.sub_key(dropout_key, 1))  # (B, S, H)
        return layers.dense(params["head"], _compute(precision, ys)), carry  # (B, S, V)

    def apply(params: Params, features: Array, tgt_in: Array, *,
              dropout_key: PRNGKey | None = None) -> Array:
        tgt_in = checks.check_tokens(tgt_in, V, "tgt_in")
        carry = initial_carry(params, features)
        if tgt_in.shape[0] != features.shape[0]:
            raise ValueError(f"tgt_in has batch {tgt_in.shape[0]} but features has {features.shape[0]}")
        if tgt_in.shape[1] < 1:
            raise ValueError(f"tgt_in must hold at least one token, got shape {tuple(tgt_in.shape)}")
        return _run(params, carry, tgt_in, dropout_key)[0]

    # The decode state holds the carry with the batch axis first, as the protocol asks.
    swap = lambda carry: jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), carry)  # noqa: E731

    def decode_step(params: Params, state: ConditionedDecoderState,
                    tokens: Array) -> tuple[Array, ConditionedDecoderState]:
        tokens = checks.check_tokens(tokens, V, "tokens", (1,))
        logits, carry = _run(params, swap(state.carry), tokens[:, None], None)
        return logits[:, 0], ConditionedDecoderState(swap(carry))

    def start(params: Params, features: Array, max_len: int, *, sos_id: int | None = None,
              src_lengths: Array | None = None) -> tuple[Array, ConditionedDecoderState]:
        if sos_id is None:
            raise ValueError("sos_id is required to decode with a conditioned decoder")
        if src_lengths is not None:
            raise ValueError("a conditioned decoder takes no src_lengths: its input is one feature "
                             "vector per sequence, features (B, E)")
        checks.check_token_id(sos_id, "sos_id", V)
        checks.check_int(max_len, "max_len")
        state = ConditionedDecoderState(swap(initial_carry(params, features)))
        return decode_step(params, state, jnp.full((features.shape[0],), sos_id, jnp.int32))

    return ConditionedDecoder(_param_init(precision, init), wrap(precision, initial_carry, outputs="none"),
                              wrap(precision, apply), wrap(precision, start, outputs="first"),
                              wrap(precision, decode_step, inputs=False, outputs="first"), config)
