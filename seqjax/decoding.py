r"""Decoding for any model that offers the decode protocol: greedy, beam search, sampling.

The protocol is three attributes of a model (a NamedTuple of pure functions)::

    model.vocab_size                                  # V of the emitted tokens
    logits, state = model.start(params, inputs, max_len, *, sos_id=None, src_lengths=None)
    logits, state = model.decode_step(params, state, tokens)

* ``start`` reads the inputs (a source (B, T) for encoder-decoders, a prompt (B, P)
  for language models), prepares a state with room for ``max_len`` generated
  tokens (a key/value cache, or a recurrent carry) and returns the logits (B, V)
  of the first generated token. Models that need a start token take ``sos_id``;
  models that do not refuse it.
* ``decode_step`` feeds one token per sequence, tokens (B,), and returns the
  logits (B, V) of the next one.
* Every leaf of ``state`` with a shape is batch-major, (B, ...): beam search
  expands the state to (B*W, ...) by repeating rows and reorders it by gathering
  rows. Scalar leaves (a shared position index) are left alone.

:class:`seqjax.transformer.Transformer`, :class:`seqjax.transformer.DecoderOnly`
and :class:`seqjax.models.RecurrentLM` implement it; nothing here looks at the
model's type.

Every loop runs on device (``lax.while_loop``), with no host round trip per token,
and stops as soon as every sequence has emitted ``eos_id``. Semantics shared by all
three functions:

* a sequence stops after it emits ``eos_id``; later positions hold ``pad_id``
  (``eos_id`` when ``pad_id`` is None);
* ``pad_id`` is never generated, unless it equals ``eos_id`` (then it is the stop token);
* the returned tokens include the EOS.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from seqjax import checks
from seqjax.types import Array, Params, PRNGKey

__all__ = ["greedy_decode", "beam_search", "sample"]


def _check_model(model) -> int:
    for attr in ("start", "decode_step", "vocab_size"):
        if not hasattr(model, attr):
            raise TypeError(f"model must offer the decode protocol (start, decode_step, vocab_size); "
                            f"{type(model).__name__} has no {attr!r}")
    return int(model.vocab_size)


def _banned(pad_id, eos_id):
    """The id never generated: pad_id, unless it is also the stop token."""
    return None if pad_id is None or pad_id == eos_id else pad_id


def _ban(logits: Array, banned) -> Array:
    return logits if banned is None else logits.at[..., banned].set(-jnp.inf)


def _setup(model, max_len, eos_id, sos_id, pad_id, *, eos_optional=False):
    V = _check_model(model)
    checks.check_int(max_len, "max_len")
    checks.check_token_id(eos_id, "eos_id", V, optional=eos_optional)
    checks.check_token_id(sos_id, "sos_id", V, optional=True)
    checks.check_token_id(pad_id, "pad_id", V, optional=True)
    fill = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    return V, fill, _banned(pad_id, eos_id)


def _generate(model, params, inputs, choose: Callable[[Array, Array], Array], *, max_len: int,
              eos_id: int | None, sos_id, pad_id, src_lengths, fill: int, banned) -> Array:
    """The loop greedy decoding and sampling share: ``choose(t, logits (B, V)) -> (B,)`` ids."""
    logits, state = model.start(params, inputs, max_len, sos_id=sos_id, src_lengths=src_lengths)
    B = logits.shape[0]

    def cond(c):
        t, _, _, _, finished = c
        return (t < max_len) & ~jnp.all(finished)

    def body(c):
        t, state, logits, tokens, finished = c
        tok = choose(t, _ban(logits, banned)).astype(jnp.int32)
        tok = jnp.where(finished, fill, tok)
        tokens = tokens.at[:, t].set(tok)
        if eos_id is not None:
            finished = finished | (tok == eos_id)
        logits, state = jax.lax.cond(t + 1 < max_len, lambda: model.decode_step(params, state, tok),
                                     lambda: (logits, state))
        return t + 1, state, logits, tokens, finished

    init = (jnp.zeros((), jnp.int32), state, logits, jnp.full((B, max_len), fill, jnp.int32),
            jnp.zeros((B,), bool))
    return jax.lax.while_loop(cond, body, init)[3]


def greedy_decode(model, params: Params, inputs: Array, *, max_len: int, eos_id: int,
                  sos_id: int | None = None, pad_id: int | None = 0,
                  src_lengths: Array | None = None) -> Array:
    """Greedy decoding (argmax at every step) of any decode-protocol model, on device.

    Args:
      model: a model with the decode protocol (module docstring).
      params: the model's params.
      inputs: int token ids: a source (B, T) or a prompt (B, P).
      max_len: the number of tokens to generate, >= 1.
      eos_id: a sequence stops after emitting it; later positions hold ``pad_id``.
      sos_id: the first decoder input, for models that take one.
      pad_id: filler after EOS; never generated unless equal to ``eos_id`` (None: fill with eos_id).
      src_lengths: (B,) source lengths, for encoder-decoder models.

    Returns:
      (B, max_len) int32 generated tokens (EOS included, then padding). The loop
      stops early once every sequence has emitted EOS.
    """
    _, fill, banned = _setup(model, max_len, eos_id, sos_id, pad_id)
    return _generate(model, params, inputs, lambda t, logits: jnp.argmax(logits, axis=-1),
                     max_len=max_len, eos_id=eos_id, sos_id=sos_id, pad_id=pad_id,
                     src_lengths=src_lengths, fill=fill, banned=banned)


def sample(model, params: Params, inputs: Array, key: PRNGKey, *, max_len: int,
           temperature: float | Array = 1.0, top_k: int | None = None, eos_id: int | None = None,
           sos_id: int | None = None, pad_id: int | None = None,
           src_lengths: Array | None = None) -> Array:
    r"""Ancestral sampling from ``softmax(logits / temperature)``, optionally top-k, on device.

    Step t draws from the key ``fold_in(key, t)``, so a sample is a pure function of
    ``key``. ``temperature == 0`` is the argmax (greedy decoding); ``temperature`` may
    be a traced scalar, so one compilation serves every temperature.

    Args:
      model, params, inputs, max_len, sos_id, pad_id, src_lengths: as :func:`greedy_decode`.
      key: one PRNG key.
      temperature: >= 0.
      top_k: sample among the k most likely tokens only (None: all); 1 <= k <= V.
      eos_id: stop a sequence after it emits this id (None: always generate ``max_len``).

    Returns:
      (B, max_len) int32 tokens.
    """
    V, fill, banned = _setup(model, max_len, eos_id, sos_id, pad_id, eos_optional=True)
    checks.check_key(key)
    if checks.is_concrete(temperature):
        checks.check_float(temperature, "temperature", minimum=0.0)
    if top_k is not None:
        checks.check_int(top_k, "top_k", 1, V)
    temperature = jnp.asarray(temperature, jnp.float32)

    def choose(t, logits):
        if top_k is not None:
            kth = jax.lax.top_k(logits, top_k)[0][..., -1:]                   # (B, 1)
            logits = jnp.where(logits >= kth, logits, -jnp.inf)
        drawn = jax.random.categorical(jax.random.fold_in(key, t),
                                       logits / jnp.maximum(temperature, 1e-6), axis=-1)
        return jnp.where(temperature == 0, jnp.argmax(logits, axis=-1), drawn)

    return _generate(model, params, inputs, choose, max_len=max_len, eos_id=eos_id, sos_id=sos_id,
                     pad_id=pad_id, src_lengths=src_lengths, fill=fill, banned=banned)


def _gnmt_penalty(length: Array, alpha: float) -> Array:
    """GNMT length penalty (Wu et al. 2016, eq. 14): ``((5 + |Y|) / 6) ** alpha``."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, params: Params, inputs: Array, *, beam_size: int, max_len: int, eos_id: int,
                sos_id: int | None = None, pad_id: int | None = 0, length_penalty: float = 0.6,
                src_lengths: Array | None = None) -> tuple[Array, Array]:
    r"""Beam search with the GNMT length penalty, per sequence, on device.

    Each of the W beams of every sequence is ranked by
    :math:`\log p(Y) / lp(Y)`, :math:`lp(Y) = ((5 + |Y|)/6)^\alpha` (Wu et al. 2016);
    ``length_penalty`` is alpha (0: raw log-probability). A beam that emits EOS is
    finished: it keeps its score and length and competes with the live beams at every
    later step. The loop stops when all beams of all sequences are finished or after
    ``max_len`` tokens. With ``beam_size=1`` this is exactly :func:`greedy_decode`.

    Args: as :func:`greedy_decode`, plus
      beam_size: W, 1 <= W <= V (V - 1 when ``pad_id`` is banned).
      length_penalty: alpha >= 0.

    Returns:
      ``(tokens, scores)``: tokens (B, W, max_len) int32 (EOS included, then pad),
      best first; scores (B, W) the length-normalised log-probabilities.
    """
    V, fill, banned = _setup(model, max_len, eos_id, sos_id, pad_id)
    checks.check_int(beam_size, "beam_size")
    alpha = checks.check_float(length_penalty, "length_penalty", minimum=0.0)
    # Fewer than W finite first-step candidates would leave -inf beams that never finish.
    usable = V - (banned is not None)
    if beam_size > usable:
        why = f" minus pad_id={pad_id}, which is never generated" if banned is not None else ""
        raise ValueError(f"beam_size={beam_size} exceeds the {usable} tokens beam search can emit "
                         f"(vocab size {V}{why}); use beam_size <= {usable}")
    W = int(beam_size)
    lp = _gnmt_penalty
    logits, state = model.start(params, inputs, max_len, sos_id=sos_id, src_lengths=src_lengths)
    B = logits.shape[0]
    # Expand every batch leaf to B*W rows, row b*W + w (scalar leaves stay).
    tile = lambda a: a if a.ndim == 0 else jnp.repeat(a, W, axis=0)        # noqa: E731
    state = jax.tree.map(tile, state)
    logits = tile(logits)

    def cond(c):
        t = c[0]
        return (t < max_len) & ~jnp.all(c[5])

    def body(c):
        t, state, logits, tokens, raw, finished, lengths = c
        logp = jax.nn.log_softmax(_ban(logits.astype(jnp.float32), banned), axis=-1).reshape(B, W, V)
        live = raw[..., None] + logp                                          # (B, W, V)
        # a finished beam has one continuation, `fill`, at its own score
        done = jnp.full((B, W, V), -jnp.inf).at[..., fill].set(raw)
        cand = jnp.where(finished[..., None], done, live)
        cand_len = jnp.where(finished, lengths, t + 1)[..., None]              # (B, W, 1)
        norm = (cand / lp(cand_len.astype(jnp.float32), alpha)).reshape(B, W * V)
        _, idx = jax.lax.top_k(norm, W)                                       # (B, W)
        beam, tok = idx // V, (idx % V).astype(jnp.int32)
        raw = jnp.take_along_axis(cand.reshape(B, W * V), idx, axis=1)
        parent_done = jnp.take_along_axis(finished, beam, axis=1)
        lengths = jnp.where(parent_done, jnp.take_along_axis(lengths, beam, axis=1), t + 1)
        finished = parent_done | (tok == eos_id)
        tokens = jnp.take_along_axis(tokens, beam[..., None], axis=1).at[:, :, t].set(tok)
        rows = (jnp.arange(B)[:, None] * W + beam).reshape(B * W)
        state = jax.tree.map(lambda a: a if a.ndim == 0 else jnp.take(a, rows, axis=0), state)
        logits, state = jax.lax.cond(t + 1 < max_len,
                                     lambda: model.decode_step(params, state, tok.reshape(B * W)),
                                     lambda: (logits, state))
        return t + 1, state, logits, tokens, raw, finished, lengths

    raw0 = jnp.full((B, W), -jnp.inf).at[:, 0].set(0.0)                     # only beam 0 is live at t=0
    init = (jnp.zeros((), jnp.int32), state, logits, jnp.full((B, W, max_len), fill, jnp.int32), raw0,
            jnp.zeros((B, W), bool), jnp.zeros((B, W), jnp.int32))
    _, _, _, tokens, raw, finished, lengths = jax.lax.while_loop(cond, body, init)
    scores = raw / lp(jnp.maximum(lengths, 1).astype(jnp.float32), alpha)
    order = jnp.argsort(-scores, axis=1, stable=True)
    return (jnp.take_along_axis(tokens, order[..., None], axis=1),
            jnp.take_along_axis(scores, order, axis=1))

