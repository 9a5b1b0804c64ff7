"""Synthetic and small offline sequence tasks as pure samplers.

Every sampler has the form ``sample(key, batch_size, ...) -> batch``: the batch is a
pure function of the key (no global random state), so a training stream built as
``sample(jax.random.fold_in(key, step), B)`` replays exactly on resume. Batches are
NamedTuples of arrays with the shapes in their docstrings (dimension letters of
:mod:`seqjax.types`). Each task documents and exposes its chance-level baseline as
a function; the tests check every baseline against sampled data.

=====================  ==============================  ===================================
task                   sampler                         chance baseline
=====================  ==============================  ===================================
adding problem         :func:`adding`                  MSE 1/6 (:func:`adding_baseline`)
copying memory         :func:`copying_memory`          CE 10 ln 8 / (T+20)
sequential digits      :func:`sequential_digits`       accuracy of the majority class
sentiment grammar      :func:`sentiment`               accuracy of the majority class
running parity         :func:`running_parity`          per-step accuracy 1/2
character LM           :func:`lm_windows`              unigram bits per character
seq2seq copy/reverse   :func:`seq2seq_copy` ...        :func:`seq2seq_copy_baseline`
date normalisation     :func:`seq2seq_dates`           :func:`source_blind_accuracy`
=====================  ==============================  ===================================

Seq2seq conventions (shared by every seq2seq task and by :mod:`seqjax.seq2seq`):
``PAD = 0``, ``SOS = 1``, ``EOS = 2``. The source carries no specials (right-padded
with PAD); the decoder input is ``SOS + target`` and the decoder output is
``target + EOS``, both right-padded with PAD to S = max target length + 1.
"""

from __future__ import annotations

import datetime
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.types import Array, PRNGKey

__all__ = [
    "PAD", "SOS", "EOS", "NUM_SPECIALS",
    "Seq2SeqBatch", "seq2seq_copy", "seq2seq_reverse", "seq2seq_copy_baseline",
    "source_blind_accuracy",
    "DATE_VOCAB", "DATE_SOURCE_LENGTH", "DATE_TARGET_LENGTH", "DATE_FORMATS",
    "encode_chars", "decode_chars", "format_date", "seq2seq_dates",
]

# ----------------------------------------------------------------------------- checks


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int >= 1, got {batch_size!r} "
                        f"of type {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} "
                        f"of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_key(key) -> None:
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key(0)), got {type(key).__name__}")


# ----------------------------------------------------------------------------- seq2seq

PAD = 0  #: padding id in every seq2seq vocabulary
SOS = 1  #: start-of-sequence id: the first decoder input
EOS = 2  #: end-of-sequence id: the last decoder output
NUM_SPECIALS = 3


class Seq2SeqBatch(NamedTuple):
    """A seq2seq batch (right padding with PAD everywhere).

    Attributes:
      src: (B, T) int32 source tokens, PAD at ``t >= src_lengths[b]``.
      tgt_in: (B, S) int32 decoder inputs ``[SOS, y_1, ..., y_n, PAD, ...]``.
      tgt_out: (B, S) int32 decoder targets ``[y_1, ..., y_n, EOS, PAD, ...]``.
      src_lengths: (B,) int32 valid source steps.
      tgt_lengths: (B,) int32 valid target steps ``n + 1`` (EOS included).
    """

    src: Array
    tgt_in: Array
    tgt_out: Array
    src_lengths: Array
    tgt_lengths: Array


def _make_seq2seq(src: Array, src_lengths: Array, tgt: Array, tgt_lengths: Array) -> Seq2SeqBatch:
    """tgt (B, S-1) padded with PAD, tgt_lengths n (B,) -> the SOS/EOS layout, S = S-1 + 1."""
    B = tgt.shape[0]
    sos = jnp.full((B, 1), SOS, jnp.int32)
    pad = jnp.full((B, 1), PAD, jnp.int32)
    tgt_in = jnp.concatenate([sos, tgt], axis=1)                       # (B, S)
    tgt_out = jnp.concatenate([tgt, pad], axis=1)                      # (B, S)
    tgt_out = tgt_out.at[jnp.arange(B), tgt_lengths].set(EOS)          # EOS right after y_n
    return Seq2SeqBatch(src.astype(jnp.int32), tgt_in, tgt_out, src_lengths.astype(jnp.int32),
                        (tgt_lengths + 1).astype(jnp.int32))


def _random_tokens(key: PRNGKey, batch_size: int, length: int, vocab_size: int,
                   min_length: int | None) -> tuple[Array, Array]:
    """Data tokens in [NUM_SPECIALS, V) of shape (B, T), PAD after each length."""
    _check_key(key)
    batch_size = _check_batch_size(batch_size)
    length = _check_int(length, "length")
    vocab_size = _check_int(vocab_size, "vocab_size", NUM_SPECIALS + 1)
    if min_length is None:
        min_length = length
    min_length = _check_int(min_length, "min_length")
    if min_length > length:
        raise ValueError(f"min_length must be <= length = {length}, got {min_length}")
    k_tok, k_len = jax.random.split(key)
    tokens = jax.random.randint(k_tok, (batch_size, length), NUM_SPECIALS, vocab_size, jnp.int32)
    lengths = jax.random.randint(k_len, (batch_size,), min_length, length + 1, jnp.int32)
    valid = jnp.arange(length)[None, :] < lengths[:, None]             # (B, T)
    return jnp.where(valid, tokens, PAD), lengths


def seq2seq_copy(key: PRNGKey, batch_size: int, *, length: int = 10, vocab_size: int = 11,
                 min_length: int | None = None) -> Seq2SeqBatch:
    """The copy task of the Annotated Transformer: the target is the source.

    With the defaults (vocabulary 11, length 10, as in the Annotated Transformer),
    ids 0, 1, 2 are PAD, SOS, EOS and the data tokens are drawn uniformly from the
    remaining ids ``3 .. vocab_size - 1`` (8 symbols). Jittable with static sizes.

    Args:
      key: PRNG key.
      batch_size: B >= 1.
      length: T, the longest source.
      vocab_size: V >= 4 (3 specials + at least one data token).
      min_length: if given, each source length is uniform in ``[min_length, length]``;
        by default every source has exactly ``length`` tokens.

    Returns:
      :class:`Seq2SeqBatch` with src (B, T), tgt_in / tgt_out (B, T + 1).
    """
    src, lengths = _random_tokens(key, batch_size, length, vocab_size, min_length)
    return _make_seq2seq(src, lengths, src, lengths)


def seq2seq_reverse(key: PRNGKey, batch_size: int, *, length: int = 10, vocab_size: int = 11,
                    min_length: int | None = None) -> Seq2SeqBatch:
    """Reversal: the target is the valid part of the source in reverse order.

    Same vocabulary and arguments as :func:`seq2seq_copy`; with variable lengths only
    the ``src_lengths[b]`` valid tokens are reversed (padding stays at the end).

    Returns:
      :class:`Seq2SeqBatch` with src (B, T), tgt_in / tgt_out (B, T + 1).
    """
    src, lengths = _random_tokens(key, batch_size, length, vocab_size, min_length)
    T = src.shape[1]
    t = jnp.arange(T)[None, :]
    idx = jnp.clip(lengths[:, None] - 1 - t, 0, T - 1)                # (B, T) source index
    tgt = jnp.where(t < lengths[:, None], jnp.take_along_axis(src, idx, axis=1), PAD)
    return _make_seq2seq(src, lengths, tgt, lengths)


def seq2seq_copy_baseline(length: int = 10, vocab_size: int = 11) -> float:
    """Token accuracy over ``tgt_out`` (EOS included) of the best source-blind predictor
    for fixed-length copy/reversal: guess a data token (1 / (V - 3)) at each of the T
    data positions, EOS at the last: ``(T / (V - 3) + 1) / (T + 1)``."""
    length = _check_int(length, "length")
    vocab_size = _check_int(vocab_size, "vocab_size", NUM_SPECIALS + 1)
    return (length / (vocab_size - NUM_SPECIALS) + 1.0) / (length + 1.0)


def source_blind_accuracy(tgt_out) -> float:
    """Chance level of any seq2seq task, computed from data.

    The token accuracy (over non-PAD targets) of the best predictor that ignores the
    source: at each target position predict that position's most common token.

    Args:
      tgt_out: (B, S) int target tokens with PAD padding (many examples, e.g. B = 10^4).
    """
    tgt_out = np.asarray(tgt_out)
    if tgt_out.ndim != 2:
        raise ValueError(f"tgt_out must have shape (B, S), got {tgt_out.shape}")
    correct = 0
    total = 0
    for s in range(tgt_out.shape[1]):
        col = tgt_out[:, s]
        col = col[col != PAD]
        if col.size:
            correct += np.bincount(col).max()
            total += col.size
    return float(correct / max(total, 1))


# -- date-format normalisation: "23 November 2026" -> "2026-11-23", character level

_SPECIAL_TOKENS = ("<pad>", "<sos>", "<eos>")
_DATE_CHARS = " ,-./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: The character vocabulary of :func:`seq2seq_dates` (source and target share it):
#: ids 0-2 are ``<pad>``, ``<sos>``, ``<eos>``, then space, ``,-./``, digits, A-Z, a-z.
DATE_VOCAB: tuple[str, ...] = _SPECIAL_TOKENS + tuple(_DATE_CHARS)
_CHAR_TO_ID = {c: i for i, c in enumerate(DATE_VOCAB) if i >= NUM_SPECIALS}

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: Source formats (English names, locale-independent), by index.
DATE_FORMATS: tuple[str, ...] = (
    "{d} {Month} {Y}",             # 23 November 2026
    "{Month} {d}, {Y}",            # November 23, 2026
    "{d} {Mon} {Y}",               # 23 Nov 2026
    "{Mon} {d} {Y}",               # Nov 23 2026
    "{dd}.{mm}.{Y}",               # 23.11.2026
    "{dd}/{mm}/{Y}",               # 23/11/2026 (day first)
    "{Weekday}, {d} {Month} {Y}",  # Monday, 23 November 2026
    "{month} {d} {Y}",             # november 23 2026
)
_FIRST_DAY = datetime.date(1900, 1, 1)
_NUM_DAYS = (datetime.date(2099, 12, 31) - _FIRST_DAY).days + 1
#: T of :func:`seq2seq_dates`: the longest source ("Wednesday, 30 September 2026").
DATE_SOURCE_LENGTH = len("Wednesday, 30 September 2026")
#: S of :func:`seq2seq_dates`: "YYYY-MM-DD" plus EOS.
DATE_TARGET_LENGTH = 11


def format_date(date: datetime.date, fmt: int) -> str:
    """``date`` written in source format ``DATE_FORMATS[fmt]``."""
    if not 0 <= fmt < len(DATE_FORMATS):
        raise ValueError(f"fmt must be in [0, {len(DATE_FORMATS)}), got {fmt}")
    month = _MONTHS[date.month - 1]
    return DATE_FORMATS[fmt].format(d=date.day, dd=f"{date.day:02d}", mm=f"{date.month:02d}",
                                    Y=f"{date.year:04d}", Month=month, Mon=month[:3],
                                    month=month.lower(), Weekday=_WEEKDAYS[date.weekday()])


def encode_chars(text: str, length: int | None = None) -> np.ndarray:
    """Characters of ``text`` -> (T,) int32 ids in :data:`DATE_VOCAB`, PAD-padded to ``length``.

    Raises:
      ValueError: naming the first character outside the vocabulary, or when the
        text is longer than ``length``.
    """
    bad = [c for c in text if c not in _CHAR_TO_ID]
    if bad:
        raise ValueError(f"text contains {bad[0]!r}, which is not in DATE_VOCAB "
                         f"(space, ',-./', digits and ASCII letters)")
    ids = [_CHAR_TO_ID[c] for c in text]
    if length is not None:
        if len(ids) > length:
            raise ValueError(f"text has {len(ids)} characters, more than length={length}")
        ids += [PAD] * (length - len(ids))
    return np.asarray(ids, np.int32)


def decode_chars(ids) -> str:
    """(T,) ids in :data:`DATE_VOCAB` -> text, stopping at the first EOS and skipping PAD/SOS."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if i == EOS:
            break
        if i >= NUM_SPECIALS:
            out.append(DATE_VOCAB[i])
    return "".join(out)


def seq2seq_dates(key: PRNGKey, batch_size: int) -> Seq2SeqBatch:
    """Date-format normalisation: a small realistic character-level translation.

    A date uniform in 1900-01-01 .. 2099-12-31 is written in one of the
    :data:`DATE_FORMATS` (uniform) as the source, e.g. ``"23 November 2026"`` or
    ``"Monday, 23 November 2026"``; the target is its ISO 8601 form ``"2026-11-23"``.
    Vocabulary :data:`DATE_VOCAB` (V = 70) for both sides; :func:`encode_chars` and
    :func:`decode_chars` convert. The dates are drawn with ``jax.random`` and formatted
    on the host, so the batch is deterministic in ``key`` but the sampler is not
    jittable. Chance level: :func:`source_blind_accuracy` of a large batch.

    Returns:
      :class:`Seq2SeqBatch` with src (B, T = DATE_SOURCE_LENGTH = 28) and
      tgt_in / tgt_out (B, S = DATE_TARGET_LENGTH = 11).
    """
    _check_key(key)
    batch_size = _check_batch_size(batch_size)
    k_day, k_fmt = jax.random.split(key)
    days = np.asarray(jax.random.randint(k_day, (batch_size,), 0, _NUM_DAYS))
    fmts = np.asarray(jax.random.randint(k_fmt, (batch_size,), 0, len(DATE_FORMATS)))
    src = np.zeros((batch_size, DATE_SOURCE_LENGTH), np.int32)
    tgt = np.zeros((batch_size, DATE_TARGET_LENGTH - 1), np.int32)
    src_lengths = np.zeros((batch_size,), np.int32)
    for b in range(batch_size):
        date = _FIRST_DAY + datetime.timedelta(days=int(days[b]))
        text = format_date(date, int(fmts[b]))
        src[b] = encode_chars(text, DATE_SOURCE_LENGTH)
        src_lengths[b] = len(text)
        tgt[b] = encode_chars(date.isoformat())
    tgt_lengths = np.full((batch_size,), DATE_TARGET_LENGTH - 1, np.int32)
    return _make_seq2seq(jnp.asarray(src), jnp.asarray(src_lengths), jnp.asarray(tgt),
                         jnp.asarray(tgt_lengths))
