r"""RNN encoder-decoder (sequence to sequence) with optional attention.

The model of Sutskever et al. 2014 ("Sequence to sequence learning with neural
networks") when ``attention="none"``: the decoder sees the source only through
the encoder's final state, a fixed-size bottleneck. With attention it is the
global attention model of Luong, Pham & Manning 2015 ("Effective approaches to
attention-based neural machine translation", §3.1 and §3.3): at every target
step t the top decoder state :math:`h_t` scores every encoder state
:math:`\bar h_s`, and

.. math::
    a_t = \mathrm{softmax}_s\,\mathrm{score}(h_t, \bar h_s),\qquad
    c_t = \sum_s a_{ts} \bar h_s,\qquad
    \tilde h_t = \tanh(W_c [c_t; h_t]),\qquad
    p(y_t \mid y_{<t}, x) = \mathrm{softmax}(W_s \tilde h_t + b_s)

(Luong eq. 5 and 6), with the scores of :mod:`seqjax.attention`: ``"dot"``
(:math:`h_t^\top \bar h_s`), ``"general"`` (:math:`h_t^\top W_a \bar h_s`) and
``"additive"`` (Bahdanau, Cho & Bengio 2015's score
:math:`v^\top \tanh(W_q h_t + W_k \bar h_s)`, used here inside Luong's global
architecture, not Bahdanau's full model, which attends from the previous state).
With ``input_feeding=True`` (Luong §3.3) :math:`\tilde h_{t-1}` is concatenated
to the embedded input of step t.

Shapes (glossary in :mod:`seqjax.types`): src (B, T) and tgt_in (B, S) int ids,
logits (B, S, Vt), attention weights (B, S, T). The encoder is
:func:`seqjax.recurrent.layer` (any cell of :func:`seqjax.cells.make`,
multi-layer, optionally bidirectional, variable lengths with
``pack_padded_sequence`` semantics); encoder states are ``M = num_directions * H``
wide. The decoder has the same cell and number of layers; its initial state is
the encoder's final state, each layer's directions concatenated and bridged by
a linear map (M -> H) when the encoder is bidirectional.

Teacher forcing runs the decoder step over the target with
:func:`seqjax.recurrent.unroll` (the one scan that owns time); decoding feeds
the same step one token at a time through the decode protocol of
:mod:`seqjax.decoding`, so the two agree exactly. Padded source positions get
exactly zero attention weight and cannot change any logit.

Params::

    {"src_embed": {"embedding": (Vs, E)}, "tgt_embed": {"embedding": (Vt, E)},
     "encoder": recurrent.layer params,
     "bridge": [[dense (M, H) per carry leaf] per layer]       # bidirectional only
     "decoder": [cell params per layer],                       # layer 0 input E (+ H with input feeding)
     "attention": luong / additive params,                     # not with "none"
     "combine": {"kernel": (M + H, H), "bias": (H,)},          # W_c; not with "none"
     "output": {"kernel": (H, Vt), "bias": (Vt,)}}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import attention as attn
from seqjax import cells, checks, layers, recurrent
from seqjax.types import Array, DType, Params, PRNGKey
from seqjax.precision import Policy, wrap

__all__ = ["ATTENTION", "Seq2SeqConfig", "Seq2Seq", "Seq2SeqState", "seq2seq"]

#: Values of :attr:`Seq2SeqConfig.attention`.
ATTENTION = ("none", "dot", "general", "additive")


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyperparameters of :func:`seq2seq`.

    Attributes:
      src_vocab_size, tgt_vocab_size: Vs and Vt.
      embed_size: E, the width of both embeddings.
      hidden_size: H of every encoder and decoder cell.
      cell: a name of :func:`seqjax.cells.make`.
      num_layers: L, encoder and decoder layers.
      bidirectional: a bidirectional encoder (states M = 2H wide, bridged to H).
      attention: ``"none"`` (the fixed-size bottleneck), ``"dot"``, ``"general"`` or ``"additive"``.
      attention_size: A, the width of the additive score's MLP (default H).
      input_feeding: feed the previous attentional state to the next step (Luong §3.3);
        only with attention.
      dropout: rate on the embeddings, between recurrent layers and on the attentional
        state (active when ``apply`` gets a ``dropout_key``).
      cell_options: options passed to :func:`seqjax.cells.make`, e.g. ``(("forget_bias", 1.0),)``.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    embed_size: int = 32
    hidden_size: int = 64
    cell: str = "lstm"
    num_layers: int = 1
    bidirectional: bool = False
    attention: str = "general"
    attention_size: int | None = None
    input_feeding: bool = True
    dropout: float = 0.0
    cell_options: tuple = ()

    def __post_init__(self):
        for name in ("src_vocab_size", "tgt_vocab_size", "embed_size", "hidden_size", "num_layers"):
            checks.check_int(getattr(self, name), f"Seq2SeqConfig.{name}")
        if self.attention_size is not None:
            checks.check_int(self.attention_size, "Seq2SeqConfig.attention_size")
        checks.check_choice(self.cell, "Seq2SeqConfig.cell", cells.CELL_NAMES)
        checks.check_choice(self.attention, "Seq2SeqConfig.attention", ATTENTION)
        checks.check_bool(self.bidirectional, "Seq2SeqConfig.bidirectional")
        checks.check_bool(self.input_feeding, "Seq2SeqConfig.input_feeding")
        checks.check_rate(self.dropout, "Seq2SeqConfig.dropout")
        if self.attention == "dot" and self.memory_size != self.hidden_size:
            raise ValueError(f"Seq2SeqConfig.attention='dot' needs encoder states as wide as the decoder "
                             f"state, but a bidirectional encoder gives {self.memory_size} and the decoder "
                             f"{self.hidden_size}; use attention='general' (or 'additive')")
        self.make_cell()

    @property
    def memory_size(self) -> int:
        """M, the width of the encoder states: (1 or 2) * H."""
        return (2 if self.bidirectional else 1) * self.hidden_size

    @property
    def feeds_input(self) -> bool:
        return self.input_feeding and self.attention != "none"

    def make_cell(self) -> cells.Cell:
        return cells.make(self.cell, self.hidden_size, **dict(self.cell_options))


class Seq2SeqState(NamedTuple):
    """What decoding carries (every leaf batch-major, as the decode protocol asks).

    Attributes:
      carries: a tuple of L cell carries, (B, H) leaves.
      feed: (B, H) the last attentional state (zeros before the first step).
      prev: (B,) int32, the last emitted argmax (scheduled sampling reads it).
      memory: (B, T, M) encoder states.
      keys: (B, T, A) the additive score's projected keys, or (B, 0) when unused.
      mask: (B, T) bool, True at valid source positions.
      weights: (B, T) the attention weights of the last step (zeros without attention).
    """

    carries: tuple
    feed: Array
    prev: Array
    memory: Array
    keys: Array
    mask: Array
    weights: Array


class Seq2Seq(NamedTuple):
    """An RNN encoder-decoder; see the module docstring.

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      encode: ``encode(params, src, *, src_lengths=None, dropout_key=None) -> Seq2SeqState``
        for src (B, T): the state before the first target step.
      apply: ``apply(params, src, tgt_in, *, src_lengths=None, return_attention=False,
        dropout_key=None, sampling_rate=0.0, sampling_key=None)`` -> logits (B, S, Vt),
        or ``(logits, weights (B, S, T))``. Teacher forcing: step s reads ``tgt_in[:, s]``;
        with ``sampling_rate`` p > 0 and a ``sampling_key`` (scheduled sampling, Bengio et
        al. 2015) each step s >= 1 reads the model's own argmax of step s-1 instead, with
        probability p.
      apply_jit: ``jax.jit(apply)`` with ``return_attention`` static.
      start: the decode protocol (:mod:`seqjax.decoding`): ``start(params, src, max_len, *,
        sos_id, src_lengths=None) -> (logits (B, Vt), state)``.
      decode_step: ``decode_step(params, state, tokens (B,)) -> (logits (B, Vt), state)``;
        ``state.weights`` holds that step's attention weights (B, T), for plotting.
      config: the :class:`Seq2SeqConfig`.
    """

    init: Callable[..., Params]
    encode: Callable[..., Seq2SeqState]
    apply: Callable[..., Any]
    apply_jit: Callable[..., Any]
    start: Callable[..., tuple[Array, Seq2SeqState]]
    decode_step: Callable[..., tuple[Array, Seq2SeqState]]
    config: Seq2SeqConfig

    @property
    def vocab_size(self) -> int:
        """Vt: the decode protocol's vocabulary."""
        return self.config.tgt_vocab_size


def _score(cfg: Seq2SeqConfig):
    if cfg.attention == "additive":
        return attn.additive_attention(cfg.attention_size or cfg.hidden_size)
    if cfg.attention in ("dot", "general"):
        return attn.luong_attention(cfg.attention)
    return None


@functools.lru_cache(maxsize=64)
def _decoder_step(cfg: Seq2SeqConfig) -> Callable:
    """The decoder's one step, ``step(params, carry, x) -> (carry, (logits, weights))``.

    Built once per config (a static argument of :func:`seqjax.recurrent.unroll`): every
    array arrives through ``params`` (the model params and the encoder memory), the
    carry ``(carries, feed, prev)`` or ``x = (tokens (B,), coin (B,), embed_keep, out_keep)``
    (coin < rate means: read ``prev`` instead of the given token; the keep multipliers
    are dropout masks or None).
    """
    cell, score = cfg.make_cell(), _score(cfg)

    def step(params_memory, carry, x):
        params, memory, keys, mask = params_memory
        carries, feed, prev = carry
        tokens, use_prev, embed_keep, out_keep = x
        tokens = jnp.where(use_prev, prev, tokens)
        inp = layers.embed(params["tgt_embed"], tokens)                       # (B, E)
        if embed_keep is not None:
            inp = inp * embed_keep
        if cfg.feeds_input:
            inp = jnp.concatenate([inp, feed.astype(inp.dtype)], axis=-1)     # (B, E + H)
        new = []
        for k, p in enumerate(params["decoder"]):
            c, inp = cell.step(p, carries[k], inp)
            new.append(c)
        h = inp                                                               # (B, H) top layer
        if score is None:
            weights = jnp.zeros(mask.shape, h.dtype)
            out = h
        else:
            if cfg.attention == "additive":
                ctx, weights = score.apply(params["attention"], h, memory, mask=mask[:, None, :],
                                           projected_keys=keys)
            else:
                ctx, weights = score.apply(params["attention"], h, memory, mask=mask[:, None, :])
            out = jnp.tanh(layers.dense(params["combine"], jnp.concatenate([ctx, h], axis=-1)))
        if out_keep is not None:
            out = out * out_keep
        logits = layers.dense(params["output"], out)                          # (B, Vt)
        prev = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (tuple(new), out, prev), (logits, weights)
    return step


def seq2seq(cfg: Seq2SeqConfig, *, precision: Policy | str | None = None) -> Seq2Seq:
    """An RNN encoder-decoder with optional attention; see :class:`Seq2Seq`.

    ``precision``: None, or a mixed-precision policy (:mod:`seqjax.precision`): ``init`` makes
    params in its param dtype; ``apply``, ``encode``, ``start`` and ``decode_step`` cast the
    params to its compute dtype, the encoder and decoder carries stay in at least float32 (as
    in ``recurrent.layer(precision=...)``), the memory and the attention run in the compute
    dtype (softmax in float32), and logits and attention weights come out in its output dtype.
    """
    if not isinstance(cfg, Seq2SeqConfig):
        raise TypeError(f"cfg must be a Seq2SeqConfig, got {type(cfg).__name__}")
    precision = checks.check_precision(precision)
    cell = cfg.make_cell()
    enc = recurrent.layer(cell, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                          dropout=cfg.dropout, precision=precision)
    score = _score(cfg)
    E, H, M, L = cfg.embed_size, cfg.hidden_size, cfg.memory_size, cfg.num_layers
    ND = 2 if cfg.bidirectional else 1
    Vs, Vt = cfg.src_vocab_size, cfg.tgt_vocab_size
    n_leaves = len(jax.tree.leaves(cell.initial_carry((1,))))

    def init(key: PRNGKey, dtype: DType = jnp.float32) -> Params:
        ks = jax.random.split(checks.check_key(key), 8)
        dec_keys = jax.random.split(ks[3], L)
        params = {
            "src_embed": layers.embedding_init(ks[0], Vs, E, dtype=dtype),
            "tgt_embed": layers.embedding_init(ks[1], Vt, E, dtype=dtype),
            "encoder": enc.init(ks[2], E, dtype),
            "decoder": [cell.init(dec_keys[k], (E + H if cfg.feeds_input else E) if k == 0 else H, dtype)
                        for k in range(L)],
            "output": layers.dense_init(ks[4], H, Vt, init="torch", dtype=dtype),
        }
        if ND == 2:
            bkeys = jax.random.split(ks[5], L * n_leaves).reshape(L, n_leaves)
            params["bridge"] = [[layers.dense_init(bkeys[k, j], M, H, init="torch", dtype=dtype)
                                 for j in range(n_leaves)] for k in range(L)]
        if score is not None:
            params["attention"] = score.init(ks[6], H, M, dtype)
            params["combine"] = layers.dense_init(ks[7], M + H, H, init="torch", dtype=dtype)
        return params

    def _bridge(params, final) -> tuple:
        """Encoder final state, leaves (L*ND, B, H) -> L decoder carries, leaves (B, H)."""
        out = []
        for k in range(L):
            leaves, treedef = jax.tree.flatten(final)
            per = []
            for j, leaf in enumerate(leaves):
                both = leaf[k * ND:(k + 1) * ND]                              # (ND, B, H)
                if ND == 1:
                    per.append(both[0])
                else:
                    cat = jnp.concatenate([both[0], both[1]], axis=-1)        # (B, 2H)
                    per.append(layers.dense(params["bridge"][k][j], cat))
            out.append(jax.tree.unflatten(treedef, per))
        return tuple(out)

    def encode(params: Params, src: Array, *, src_lengths: Array | None = None,
               dropout_key: PRNGKey | None = None) -> Seq2SeqState:
        src = checks.check_tokens(src, Vs, "src")
        B, T = src.shape
        if T < 1:
            raise ValueError(f"src must hold at least one token, got shape {tuple(src.shape)}")
        lengths = None if src_lengths is None else checks.check_lengths(src_lengths, B, T, "src_lengths")
        x = layers.dropout(layers.embed(params["src_embed"], src), cfg.dropout,
                           layers.sub_key(dropout_key, 0))                    # (B, T, E)
        memory, final = enc.apply(params["encoder"], x, lengths=lengths,
                                  dropout_key=layers.sub_key(dropout_key, 1))  # (B, T, M)
        if precision is not None:                  # the memory feeds compute-dtype matmuls
            memory = precision.cast_to_compute(memory)
        mask = (jnp.ones((B, T), bool) if lengths is None
                else jnp.arange(T)[None, :] < lengths[:, None])               # (B, T)
        keys = (score.project_keys(params["attention"], memory) if cfg.attention == "additive"
                else jnp.zeros((B, 0), memory.dtype))
        dtype = memory.dtype
        carries = _bridge(params, final)
        feed_dtype = jax.tree.leaves(carries)[0].dtype       # the decoder's carry dtype (float32 under bf16)
        return Seq2SeqState(carries, jnp.zeros((B, H), feed_dtype),
                            jnp.zeros((B,), jnp.int32), memory, keys, mask, jnp.zeros((B, T), dtype))

    def _keep(key, shape, dtype):
        keep = jax.random.bernoulli(key, 1.0 - cfg.dropout, shape)
        return jnp.where(keep, 1.0 / (1.0 - cfg.dropout), 0.0).astype(dtype)

    def apply(params: Params, src: Array, tgt_in: Array, *, src_lengths: Array | None = None,
              return_attention: bool = False, dropout_key: PRNGKey | None = None,
              sampling_rate: float = 0.0, sampling_key: PRNGKey | None = None):
        tgt_in = checks.check_tokens(tgt_in, Vt, "tgt_in")
        state = encode(params, src, src_lengths=src_lengths, dropout_key=dropout_key)
        B, S = tgt_in.shape
        if B != state.memory.shape[0]:
            raise ValueError(f"tgt_in has batch {B} but src has {state.memory.shape[0]}")
        if S < 1:
            raise ValueError(f"tgt_in must hold at least one token, got shape {tuple(tgt_in.shape)}")
        rate = checks.check_float(sampling_rate, "sampling_rate", minimum=0.0, maximum=1.0)
        if rate > 0.0 and sampling_key is None:
            raise ValueError(f"sampling_rate={rate} needs sampling_key=jax.random.key(...)")
        if rate > 0.0:
            use_prev = jax.random.uniform(checks.check_key(sampling_key, "sampling_key"), (B, S)) < rate
            use_prev = use_prev.at[:, 0].set(False)                           # step 0 reads SOS
        else:
            use_prev = jnp.zeros((B, S), bool)
        dtype = state.memory.dtype
        embed_keep = out_keep = None
        if dropout_key is not None and cfg.dropout > 0.0:
            embed_keep = _keep(layers.sub_key(dropout_key, 2), (B, S, E), dtype)
            out_keep = _keep(layers.sub_key(dropout_key, 3), (B, S, H), dtype)
        carry = (state.carries, state.feed, state.prev)
        _, (logits, weights) = recurrent.unroll(
            _decoder_step(cfg), (params, state.memory, state.keys, state.mask), carry,
            (tgt_in, use_prev, embed_keep, out_keep))                         # (B, S, Vt), (B, S, T)
        return (logits, weights) if return_attention else logits

    def start(params: Params, src: Array, max_len: int, *, sos_id: int | None = None,
              src_lengths: Array | None = None) -> tuple[Array, Seq2SeqState]:
        if sos_id is None:
            raise ValueError("sos_id is required to decode with a seq2seq model")
        checks.check_token_id(sos_id, "sos_id", Vt)
        checks.check_int(max_len, "max_len")
        state = encode(params, src, src_lengths=src_lengths)
        return decode_step(params, state, jnp.full((state.memory.shape[0],), sos_id, jnp.int32))

    def decode_step(params: Params, state: Seq2SeqState, tokens: Array) -> tuple[Array, Seq2SeqState]:
        tokens = checks.check_tokens(tokens, Vt, "tokens", (1,))
        B = tokens.shape[0]
        (carries, feed, prev), (logits, weights) = _decoder_step(cfg)(
            (params, state.memory, state.keys, state.mask), (state.carries, state.feed, state.prev),
            (tokens, jnp.zeros((B,), bool), None, None))
        return logits, state._replace(carries=carries, feed=feed, prev=prev, weights=weights)

    if precision is not None:
        make_params = init
        init = lambda key, dtype=precision.param_dtype: precision.cast_to_param(make_params(key, dtype))  # noqa: E731
        # the decode state (carries, memory) goes back in on the next call: passed through as made
        encode = wrap(precision, encode, outputs="none")
        apply = wrap(precision, apply)
        start, decode_step = (wrap(precision, f, inputs=False, outputs="first") for f in (start, decode_step))
    return Seq2Seq(init, encode, apply, jax.jit(apply, static_argnames=("return_attention",)),
                   start, decode_step, cfg)
