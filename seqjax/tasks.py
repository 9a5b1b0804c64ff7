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

Seq2seq conventions (shared by every seq2seq task and by :mod:`seqjax.transformer`'s decoders):
``PAD = 0``, ``SOS = 1``, ``EOS = 2``. The source carries no specials (right-padded
with PAD); the decoder input is ``SOS + target`` and the decoder output is
``target + EOS``, both right-padded with PAD to S = max target length + 1.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import sysconfig
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import checks
from seqjax.types import Array, PRNGKey

__all__ = [
    "RegressionBatch", "SequenceLabelBatch", "ClassificationBatch", "LMBatch",
    "adding", "adding_baseline",
    "COPY_BLANK", "COPY_DELIMITER", "COPY_VOCAB_SIZE", "copying_memory", "copying_memory_baseline",
    "DigitsData", "sequential_digits_data", "sequential_digits", "majority_accuracy",
    "SENTIMENT_VOCAB", "sentiment", "running_parity", "running_parity_baseline",
    "CharVocab", "CharCorpus", "char_vocab", "hello", "text_file", "stdlib_corpus", "lm_windows",
    "unigram_bits_per_char", "TASKS", "get",
    "PAD", "SOS", "EOS", "NUM_SPECIALS",
    "Seq2SeqBatch", "seq2seq_copy", "seq2seq_reverse", "seq2seq_copy_baseline",
    "source_blind_accuracy",
    "DATE_VOCAB", "DATE_SOURCE_LENGTH", "DATE_TARGET_LENGTH", "DATE_FORMATS",
    "encode_chars", "decode_chars", "format_date", "seq2seq_dates",
]

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


@jax.jit
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
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    length = checks.check_int(length, "length")
    vocab_size = checks.check_int(vocab_size, "vocab_size", NUM_SPECIALS + 1)
    if min_length is None:
        min_length = length
    min_length = checks.check_int(min_length, "min_length")
    if min_length > length:
        raise ValueError(f"min_length must be <= length = {length}, got {min_length}")
    return _random_tokens_core(key, batch_size, length, vocab_size, min_length)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _random_tokens_core(key, batch_size, length, vocab_size, min_length):
    k_tok, k_len = jax.random.split(key)
    tokens = jax.random.randint(k_tok, (batch_size, length), NUM_SPECIALS, vocab_size, jnp.int32)
    lengths = jax.random.randint(k_len, (batch_size,), min_length, length + 1, jnp.int32)
    valid = jnp.arange(length)[None, :] < lengths[:, None]             # (B, T)
    return jnp.where(valid, tokens, PAD), lengths


def seq2seq_copy(key: PRNGKey, batch_size: int, *, length: int = 10, vocab_size: int = 11,
                 min_length: int | None = None) -> Seq2SeqBatch:
    """A copy task modelled on the Annotated Transformer's: the target is the source.

    The defaults (vocabulary 11, length 10) are the Annotated Transformer's (``data_gen``
    and ``example_simple_model`` in ``the_annotated_transformer.py`` of
    ``harvardnlp/annotated-transformer``), whose data tokens are ids 1..10 with the first
    forced to 1 and no EOS. Here ids 0, 1, 2 are PAD, SOS, EOS and the data tokens are
    drawn uniformly from the remaining ids ``3 .. vocab_size - 1`` (8 symbols). Jitted
    inside (sizes static); jittable from outside too.

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
    return _make_seq2seq(src, lengths, _reverse_valid(src, lengths), lengths)


@jax.jit
def _reverse_valid(src, lengths):
    T = src.shape[1]
    t = jnp.arange(T)[None, :]
    idx = jnp.clip(lengths[:, None] - 1 - t, 0, T - 1)                # (B, T) source index
    return jnp.where(t < lengths[:, None], jnp.take_along_axis(src, idx, axis=1), PAD)


def seq2seq_copy_baseline(length: int = 10, vocab_size: int = 11) -> float:
    """Token accuracy over ``tgt_out`` (EOS included) of the best source-blind predictor
    for fixed-length copy/reversal: guess a data token (1 / (V - 3)) at each of the T
    data positions, EOS at the last: ``(T / (V - 3) + 1) / (T + 1)``."""
    length = checks.check_int(length, "length")
    vocab_size = checks.check_int(vocab_size, "vocab_size", NUM_SPECIALS + 1)
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
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
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


# ----------------------------------------------------------------------------- batches


class RegressionBatch(NamedTuple):
    """Many-to-one regression: x (B, T, E) float32 inputs, y (B,) float32 targets."""

    x: Array
    y: Array


class SequenceLabelBatch(NamedTuple):
    """Many-to-many labelling: x (B, T) int32 tokens or (B, T, E) float32, y (B, T) int32."""

    x: Array
    y: Array


class ClassificationBatch(NamedTuple):
    """Many-to-one classification.

    Attributes:
      x: (B, T) int32 tokens or (B, T, E) float32 features.
      y: (B,) int32 class labels.
      lengths: (B,) int32 valid steps (right padding).
    """

    x: Array
    y: Array
    lengths: Array


# ----------------------------------------------------------------------------- adding


def adding(key: PRNGKey, batch_size: int, *, length: int = 100) -> RegressionBatch:
    r"""The adding problem in the variant of Arjovsky et al. 2016.

    Channel 0 holds ``x[:, t, 0] ~ U[0, 1]``; channel 1 is zero except for two ones at
    ``i ~ U{0 .. T/2 - 1}`` and ``j ~ T/2 + U{0 .. T/2 - 1}``. The target is
    :math:`x_i + x_j`, scored by the MSE of the prediction after the last step. This is
    ``generate_data`` of ``adding_problem.py`` in the authors' code (``amarshah/complex_RNN``);
    their text (Sec. 5.2 of their LaTeX): "The first 1 entry is located uniformly at random
    in the first half of the sequence, whilst the second 1 entry is located uniformly at
    random in the second half". Hochreiter & Schmidhuber's original adding problem differs
    (values in [-1, 1], the first marker among the first ten steps, target
    0.5 + (X1 + X2)/4; "Experiment 1: adding problem" at people.idsia.ch/~juergen/nipslstm/node4.html);
    Le et al. 2015's variant is unchecked.
    Chance: predicting the mean 1 always gives MSE Var(U + U') = 1/6
    (:func:`adding_baseline`; Arjovsky et al.: "an expected mean squared error of 0.167,
    the variance of the sum of two independent uniform distributions"); "solved" means
    test MSE < 0.01 (seqjax's rule). Jittable.

    Args:
      key: PRNG key.
      batch_size: B >= 1.
      length: T, even, >= 2.

    Returns:
      :class:`RegressionBatch` with x (B, T, 2) float32 and y (B,) float32.
    """
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    length = checks.check_int(length, "length", 2)
    if length % 2:
        raise ValueError(f"length must be even (the markers fall in each half), got {length}")
    return _adding_core(key, batch_size, length)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _adding_core(key, batch_size, length):
    half = length // 2
    k_val, k_i, k_j = jax.random.split(key, 3)
    values = jax.random.uniform(k_val, (batch_size, length), jnp.float32)
    i = jax.random.randint(k_i, (batch_size,), 0, half)
    j = half + jax.random.randint(k_j, (batch_size,), 0, half)
    t = jnp.arange(length)[None, :]
    markers = ((t == i[:, None]) | (t == j[:, None])).astype(jnp.float32)   # (B, T)
    y = jnp.sum(values * markers, axis=1)
    return RegressionBatch(jnp.stack([values, markers], axis=-1), y)


def adding_baseline() -> float:
    """Test MSE of always predicting 1 on :func:`adding`: Var(U[0,1] + U[0,1]) = 1/6."""
    return 1.0 / 6.0


# ----------------------------------------------------------------------------- copying memory

COPY_BLANK = 0       #: blank symbol of :func:`copying_memory`
COPY_DELIMITER = 9   #: "now recall" marker; data symbols are 1-8
COPY_VOCAB_SIZE = 10
_COPY_SYMBOLS = 10   # how many symbols are memorised


def copying_memory(key: PRNGKey, batch_size: int, *, delay: int = 100) -> SequenceLabelBatch:
    r"""Copying memory (Arjovsky, Shah & Bengio 2016, Sec. 5.1 of the authors' LaTeX).

    Alphabet: 0 blank, 1-8 data, 9 delimiter, as ``generate_data`` of ``memory_problem.py``
    in the authors' code (``amarshah/complex_RNN``; the paper names the symbols a_0..a_7
    data, a_8 blank, a_9 delimiter). With T = ``delay``::

        x = [s_1 .. s_10] + [0] * (T - 1) + [9] + [0] * 10        (length T + 20)
        y = [0] * (T + 10) + [s_1 .. s_10]

    scored by the mean cross-entropy over all T + 20 steps. Chance: a memoryless model
    predicts blank for the first T + 10 steps and a uniform data symbol for the last 10,
    giving :math:`10 \ln 8 / (T + 20)` (:func:`copying_memory_baseline`; the paper: "The
    categorical cross entropy of this strategy is 10 log(8)/(T+20)"). Jittable.

    Args:
      key: PRNG key.
      batch_size: B >= 1.
      delay: T >= 1.

    Returns:
      :class:`SequenceLabelBatch` with x, y (B, T + 20) int32.
    """
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    delay = checks.check_int(delay, "delay")
    return _copying_core(key, batch_size, delay)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _copying_core(key, batch_size, delay):
    n = _COPY_SYMBOLS
    symbols = jax.random.randint(key, (batch_size, n), 1, 9, jnp.int32)
    blanks = lambda k: jnp.full((batch_size, k), COPY_BLANK, jnp.int32)  # noqa: E731
    delim = jnp.full((batch_size, 1), COPY_DELIMITER, jnp.int32)
    x = jnp.concatenate([symbols, blanks(delay - 1), delim, blanks(n)], axis=1)
    y = jnp.concatenate([blanks(delay + n), symbols], axis=1)
    return SequenceLabelBatch(x, y)


def copying_memory_baseline(delay: int = 100) -> float:
    """Memoryless cross-entropy on :func:`copying_memory`: ``10 ln 8 / (T + 20)`` nats per
    step (0.1733 at T = 100, 0.0945 at T = 200)."""
    delay = checks.check_int(delay, "delay")
    return _COPY_SYMBOLS * math.log(8) / (delay + 2 * _COPY_SYMBOLS)


# ----------------------------------------------------------------------------- sequential digits


class DigitsData(NamedTuple):
    """Sequential digits, fixed split. x_* (N, 64, 1) float32 in [0, 1], y_* (N,) int32."""

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


DIGITS_TEST_SIZE = 360  #: the last 360 images of a fixed permutation (seed 0) are the test set


@functools.lru_cache(maxsize=1)
def sequential_digits_data() -> DigitsData:
    """scikit-learn's bundled 8x8 digits (1797 images, no download) read pixel by pixel.

    Each image becomes 64 steps of one feature (row-major pixel intensity / 16). The
    split is fixed: a ``numpy.random.default_rng(0)`` permutation, the first 1437
    images for training and the last 360 for testing. Chance accuracy is the
    frequency of the majority test class, about 10% (:func:`majority_accuracy`).

    Raises:
      ImportError: if scikit-learn (the ``data`` extra) is missing.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the sequential digits task needs scikit-learn: "
                          "pip install seqjax[data]") from err
    digits = load_digits()
    x = (digits.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)   # (N, 64, 1)
    y = digits.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    train, test = perm[:-DIGITS_TEST_SIZE], perm[-DIGITS_TEST_SIZE:]
    return DigitsData(jnp.asarray(x[train]), jnp.asarray(y[train]),
                      jnp.asarray(x[test]), jnp.asarray(y[test]))


def sequential_digits(key: PRNGKey, batch_size: int, *, split: str = "train",
                      data: DigitsData | None = None) -> ClassificationBatch:
    """A batch of sequential digits drawn uniformly with replacement from ``split``.

    Args:
      key: PRNG key.
      batch_size: B >= 1.
      split: ``"train"`` or ``"test"``.
      data: the arrays; :func:`sequential_digits_data` by default (pass them when
        jitting, so they are arguments rather than constants).

    Returns:
      :class:`ClassificationBatch` with x (B, 64, 1) float32, y (B,), lengths (B,) = 64.
    """
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = sequential_digits_data() if data is None else data
    xs, ys = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return _gather_core(key, xs, ys, batch_size)


@functools.partial(jax.jit, static_argnums=(3,))
def _gather_core(key, xs, ys, batch_size):
    idx = jax.random.randint(key, (batch_size,), 0, ys.shape[0])
    return ClassificationBatch(xs[idx], ys[idx], jnp.full((batch_size,), xs.shape[1], jnp.int32))


def majority_accuracy(labels) -> float:
    """Chance level of a classification task, from data: the frequency of the most
    common label (any shape of non-negative ints)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("labels must not be empty")
    return float(np.bincount(labels).max() / labels.size)


# ----------------------------------------------------------------------------- sentiment grammar

_NEGATOR = "not"
_FILLERS = ("the", "movie", "was", "a", "plot", "and", "it", "film")
_POSITIVE = ("good", "great", "fun", "superb")
_NEGATIVE = ("bad", "dull", "awful", "boring")
#: Vocabulary of :func:`sentiment`: id 0 ``<pad>``, 1 ``not``, then fillers, positive, negative words.
SENTIMENT_VOCAB: tuple[str, ...] = ("<pad>", _NEGATOR) + _FILLERS + _POSITIVE + _NEGATIVE
_FILLER0 = 2
_POS0 = _FILLER0 + len(_FILLERS)
_NEG0 = _POS0 + len(_POSITIVE)


def sentiment(key: PRNGKey, batch_size: int, *, max_clauses: int = 8,
              min_clauses: int = 2) -> ClassificationBatch:
    """Many-to-one sentiment classification on a synthetic grammar with negation.

    A sentence is ``n ~ U{min_clauses .. max_clauses}`` two-token clauses
    ``[modifier, word]``: the modifier is a filler word or ``"not"`` (probability 1/4);
    the word is a filler (probability 1/2) or a polar word, positive or negative
    with equal probability. A clause scores +1 / -1 for a positive / negative word,
    flipped by a preceding ``"not"``, and 0 for a filler. The label is 1 (positive)
    when the sum is > 0. The number of polar words is made odd (clause 0 toggles
    between polar and filler when needed), so there are no ties. Reading the words
    without their modifiers is not enough: the model must track negation and count.
    Chance: :func:`majority_accuracy` of the labels, about 1/2. Jittable.

    Returns:
      :class:`ClassificationBatch` with x (B, T = 2 * max_clauses) int32 tokens of
      :data:`SENTIMENT_VOCAB` (0-padded), y (B,) int32 and lengths (B,) = 2 n.
    """
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    max_clauses = checks.check_int(max_clauses, "max_clauses")
    min_clauses = checks.check_int(min_clauses, "min_clauses")
    if min_clauses > max_clauses:
        raise ValueError(f"min_clauses must be <= max_clauses = {max_clauses}, got {min_clauses}")
    return _sentiment_core(key, batch_size, max_clauses, min_clauses)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sentiment_core(key, batch_size, max_clauses, min_clauses):
    B, K = batch_size, max_clauses
    k_n, k_neg, k_pol, k_sign, k_fill, k_word = jax.random.split(key, 6)
    n = jax.random.randint(k_n, (B,), min_clauses, max_clauses + 1)
    valid = jnp.arange(K)[None, :] < n[:, None]                          # (B, K)
    negated = jax.random.bernoulli(k_neg, 0.25, (B, K))
    polar = jax.random.bernoulli(k_pol, 0.5, (B, K)) & valid
    even = jnp.sum(polar, axis=1) % 2 == 0
    polar = polar.at[:, 0].set(jnp.where(even, ~polar[:, 0], polar[:, 0]))  # odd count: no ties
    positive = jax.random.bernoulli(k_sign, 0.5, (B, K))
    fill = jax.random.randint(k_fill, (B, K, 2), _FILLER0, _POS0)
    word_idx = jax.random.randint(k_word, (B, K), 0, len(_POSITIVE))
    modifier = jnp.where(negated, 1, fill[..., 0])
    word = jnp.where(polar, jnp.where(positive, _POS0, _NEG0) + word_idx, fill[..., 1])
    score = jnp.where(polar, jnp.where(positive, 1, -1) * jnp.where(negated, -1, 1), 0)
    y = (jnp.sum(score, axis=1) > 0).astype(jnp.int32)
    x = jnp.stack([modifier, word], axis=-1)                               # (B, K, 2)
    x = jnp.where(valid[..., None], x, 0).reshape(B, 2 * K).astype(jnp.int32)
    return ClassificationBatch(x, y, (2 * n).astype(jnp.int32))


# ----------------------------------------------------------------------------- running parity


def running_parity(key: PRNGKey, batch_size: int, *, length: int = 20) -> SequenceLabelBatch:
    r"""Many-to-many frame labelling: the running parity of the bits seen so far.

    :math:`b_t \sim \text{Bernoulli}(1/2)`, :math:`y_t = (\sum_{s \le t} b_s) \bmod 2`:
    every label depends on the whole past. Chance: 1/2 per step
    (:func:`running_parity_baseline`). Jittable.

    Returns:
      :class:`SequenceLabelBatch` with x (B, T, 1) float32 bits and y (B, T) int32.
    """
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    length = checks.check_int(length, "length")
    return _parity_core(key, batch_size, length)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _parity_core(key, batch_size, length):
    bits = jax.random.bernoulli(key, 0.5, (batch_size, length)).astype(jnp.int32)
    y = jnp.cumsum(bits, axis=1) % 2
    return SequenceLabelBatch(bits.astype(jnp.float32)[..., None], y.astype(jnp.int32))


def running_parity_baseline() -> float:
    """Per-step accuracy of any predictor blind to the bits on :func:`running_parity`: 1/2."""
    return 0.5


# ----------------------------------------------------------------------------- character LM


class CharVocab(NamedTuple):
    """A character vocabulary: id ``i`` is ``chars[i]``."""

    chars: tuple[str, ...]

    @property
    def size(self) -> int:
        """V."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """text -> (T,) int32 ids; raises ValueError naming a character outside the vocabulary."""
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.asarray([index[c] for c in text], np.int32)
        except KeyError as err:
            raise ValueError(f"text contains {err.args[0]!r}, which is not in the vocabulary") from err

    def decode(self, ids) -> str:
        """(T,) ids -> text."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must lie in [0, {self.size}), got min {ids.min()} max {ids.max()}")
        return "".join(self.chars[i] for i in ids.tolist())


class CharCorpus(NamedTuple):
    """A character corpus: train (N,) and valid (M,) int32 ids, and the vocabulary."""

    train: Array
    valid: Array
    vocab: CharVocab


class LMBatch(NamedTuple):
    """Next-token prediction: x (B, T) int32 inputs, y (B, T) int32 = x shifted by one."""

    x: Array
    y: Array


def char_vocab(text: str) -> CharVocab:
    """The sorted set of characters of ``text``."""
    if not text:
        raise ValueError("text must not be empty")
    return CharVocab(tuple(sorted(set(text))))


def _corpus(text: str, valid_fraction: float) -> CharCorpus:
    valid_fraction = float(valid_fraction)
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    vocab = char_vocab(text)
    ids = vocab.encode(text)
    n_valid = int(len(ids) * valid_fraction)
    if n_valid < 2:   # too short to split: evaluate on the training text
        return CharCorpus(jnp.asarray(ids), jnp.asarray(ids), vocab)
    return CharCorpus(jnp.asarray(ids[:-n_valid]), jnp.asarray(ids[-n_valid:]), vocab)


def hello() -> CharCorpus:
    """The classic "hello" example (Karpathy 2015): vocabulary {e, h, l, o}; the model
    reads h, e, l, l and must predict e, l, l, o. train = valid = "hello"."""
    return _corpus("hello", 0.0)


def text_file(path: str | os.PathLike, *, encoding: str = "utf-8",
              valid_fraction: float = 0.1) -> CharCorpus:
    """A character corpus from any text file; the last ``valid_fraction`` is held out.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the path is a directory, the file is empty, or it does not decode
        with ``encoding`` (the message names the offending byte and the ``encoding``
        option to pass, e.g. ``encoding="latin-1"``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"text file {str(path)!r} is a directory; pass a file")
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"text file {str(path)!r} is empty; a language model needs text")
    try:
        text = raw.decode(encoding)
    except LookupError as err:
        raise ValueError(f"encoding {encoding!r} is not a known codec") from err
    except UnicodeDecodeError as err:
        raise ValueError(
            f"text file {str(path)!r} is not valid {encoding}: byte {raw[err.start]:#04x} at "
            f"position {err.start}. Pass its encoding, e.g. encoding='latin-1' or 'cp1252' "
            f"(--encoding on the command line)") from err
    if not text.strip():
        raise ValueError(f"text file {str(path)!r} holds only whitespace")
    return _corpus(text, valid_fraction)


def stdlib_corpus(*, max_chars: int = 1_000_000, valid_fraction: float = 0.1) -> CharCorpus:
    """An offline real corpus: the Python standard library's own source.

    The top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` in sorted order
    (without the generated ``_sysconfigdata*`` build tables), read until ``max_chars``
    characters. The last ``valid_fraction`` of every file (cut at a line break) goes to the
    validation split, the rest to training, so both splits hold the same mix of modules.
    Characters outside
    printable ASCII, tab and newline become ``"?"`` (a compact vocabulary, V <= 98).
    """
    max_chars = checks.check_int(max_chars, "max_chars", 100)
    valid_fraction = float(valid_fraction)
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in sorted(root.glob("*.py")) if not f.name.startswith("_sysconfigdata")]
    if not files:
        raise FileNotFoundError(f"no *.py files in the standard library directory {str(root)!r}")
    allowed = set(chr(c) for c in range(32, 127)) | {"\n", "\t"}
    train_parts, valid_parts, total = [], [], 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = "".join(c if c in allowed else "?" for c in text)[: max_chars - total]
        cut = text.rfind("\n", 0, int(len(text) * (1.0 - valid_fraction))) + 1
        train_parts.append(text[:cut])
        valid_parts.append(text[cut:])
        total += len(text)
        if total >= max_chars:
            break
    train_text, valid_text = "".join(train_parts), "".join(valid_parts)
    if len(valid_text) < 2:          # a tiny max_chars: evaluate on the training text
        valid_text = train_text
    vocab = char_vocab(train_text + valid_text)
    return CharCorpus(jnp.asarray(vocab.encode(train_text)), jnp.asarray(vocab.encode(valid_text)), vocab)


def lm_windows(key: PRNGKey, tokens: Array, batch_size: int, seq_len: int) -> LMBatch:
    """Random windows of a token stream for next-token prediction.

    Window starts are uniform in ``[0, N - seq_len - 1]``; ``y`` is ``x`` shifted by one.
    Jittable (``tokens`` an argument, sizes static).

    Args:
      key: PRNG key.
      tokens: (N,) int token stream, N >= seq_len + 1.
      batch_size: B >= 1.
      seq_len: T >= 1.

    Returns:
      :class:`LMBatch` with x, y (B, T) int32.
    """
    checks.check_key(key)
    batch_size = checks.check_int(batch_size, "batch_size")
    seq_len = checks.check_int(seq_len, "seq_len")
    checks.check_array(tokens, "tokens", 1, "(N,)", kind="integer")
    N = tokens.shape[0]
    if N < seq_len + 1:
        raise ValueError(f"tokens has {N} ids; windows of seq_len={seq_len} need at least {seq_len + 1}")
    return _windows_core(key, tokens, batch_size, seq_len)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _windows_core(key, tokens, batch_size, seq_len):
    N = tokens.shape[0]
    starts = jax.random.randint(key, (batch_size,), 0, N - seq_len)
    idx = starts[:, None] + jnp.arange(seq_len + 1)[None, :]            # (B, T + 1)
    window = tokens[idx].astype(jnp.int32)
    return LMBatch(window[:, :-1], window[:, 1:])


def unigram_bits_per_char(train, evaluate, vocab_size: int) -> float:
    """Chance level of a character LM: bits per character on ``evaluate`` of the
    add-one-smoothed unigram distribution of ``train`` (both (N,) int ids)."""
    train = np.asarray(train).reshape(-1)
    evaluate = np.asarray(evaluate).reshape(-1)
    if evaluate.size == 0:
        raise ValueError("evaluate must not be empty")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    probs = counts / counts.sum()
    return float(-np.mean(np.log2(probs[evaluate])))


# ----------------------------------------------------------------------------- registry

#: Samplers by name; each is ``sample(key, batch_size, **options)``.
TASKS: dict[str, Callable[..., NamedTuple]] = {
    "adding": adding,
    "copying_memory": copying_memory,
    "sequential_digits": sequential_digits,
    "sentiment": sentiment,
    "running_parity": running_parity,
    "seq2seq_copy": seq2seq_copy,
    "seq2seq_reverse": seq2seq_reverse,
    "seq2seq_dates": seq2seq_dates,
}


def get(name: str) -> Callable[..., NamedTuple]:
    """The sampler called ``name`` (one of :data:`TASKS`)."""
    checks.check_choice(name, "task name", sorted(TASKS))
    return TASKS[name]
