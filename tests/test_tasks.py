"""Task samplers: determinism under a key, definitions on small cases, baselines from data."""

import datetime

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import tasks

KEY = jax.random.key(0)


@pytest.mark.parametrize("name,kwargs", [
    ("adding", {"length": 10}), ("copying_memory", {"delay": 5}), ("sequential_digits", {}),
    ("sentiment", {}), ("running_parity", {}), ("seq2seq_copy", {"min_length": 3}),
    ("seq2seq_reverse", {"min_length": 3}), ("seq2seq_dates", {}),
])
def test_deterministic_under_key(name, kwargs):
    sample = tasks.get(name)
    a = sample(KEY, 8, **kwargs)
    b = sample(KEY, 8, **kwargs)
    c = sample(jax.random.key(1), 8, **kwargs)
    chex.assert_trees_all_equal(a, b)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(a, c)


def test_adding_definition_and_baseline():
    T = 20
    batch = tasks.adding(KEY, 4000, length=T)
    x, y = np.asarray(batch.x), np.asarray(batch.y)
    assert x.shape == (4000, T, 2) and y.shape == (4000,)
    markers = x[..., 1]
    assert np.all(markers.sum(1) == 2)
    i = markers[:, : T // 2].argmax(1)
    j = T // 2 + markers[:, T // 2:].argmax(1)
    assert np.all(markers[:, : T // 2].sum(1) == 1) and np.all(markers[:, T // 2:].sum(1) == 1)
    np.testing.assert_allclose(y, x[np.arange(4000), i, 0] + x[np.arange(4000), j, 0], rtol=1e-6)
    # both marker positions cover their whole half
    assert set(i) == set(range(T // 2)) and set(j) == set(range(T // 2, T))
    # chance: predicting 1 gives MSE 1/6
    assert abs(np.mean((y - 1.0) ** 2) - tasks.adding_baseline()) < 0.01
    assert abs(tasks.adding_baseline() - 1 / 6) < 1e-12


def test_copying_memory_definition_and_baseline():
    T = 7
    batch = tasks.copying_memory(KEY, 2000, delay=T)
    x, y = np.asarray(batch.x), np.asarray(batch.y)
    assert x.shape == y.shape == (2000, T + 20)
    data = x[:, :10]
    assert data.min() >= 1 and data.max() <= 8
    assert np.all(x[:, 10:T + 9] == 0) and np.all(x[:, T + 9] == 9) and np.all(x[:, T + 10:] == 0)
    assert np.all(y[:, : T + 10] == 0) and np.array_equal(y[:, T + 10:], data)
    # the memoryless predictor: blank with prob 1 until T+10, then uniform over 1..8
    probs = np.zeros((T + 20, 10))
    probs[: T + 10, 0] = 1.0
    probs[T + 10:, 1:9] = 1 / 8
    ce = -np.mean(np.log(probs[np.arange(T + 20)[None, :], y]))
    assert abs(ce - tasks.copying_memory_baseline(T)) < 1e-9
    for delay, published in [(100, 0.1733), (200, 0.0945), (300, 0.0650), (500, 0.0400), (1000, 0.0204)]:
        assert abs(tasks.copying_memory_baseline(delay) - published) < 6e-5


def test_sequential_digits_split_and_chance():
    data = tasks.sequential_digits_data()
    assert data.x_train.shape == (1437, 64, 1) and data.x_test.shape == (360, 64, 1)
    assert float(data.x_train.max()) <= 1.0 and float(data.x_train.min()) >= 0.0
    from sklearn.datasets import load_digits
    digits = load_digits()
    # the split is a partition of the 1797 images (pixel by pixel, row-major)
    flat = np.concatenate([np.asarray(data.x_train), np.asarray(data.x_test)]).reshape(-1, 64)
    ref = digits.images.reshape(-1, 64) / 16.0
    assert sorted(map(bytes, flat.astype(np.float32))) == sorted(map(bytes, ref.astype(np.float32)))
    chance = tasks.majority_accuracy(data.y_test)
    assert 0.09 < chance < 0.14
    batch = tasks.sequential_digits(KEY, 5, split="test")
    assert batch.x.shape == (5, 64, 1) and np.all(np.asarray(batch.lengths) == 64)


def test_sentiment_labels_follow_the_grammar():
    batch = tasks.sentiment(KEY, 500, max_clauses=6, min_clauses=1)
    vocab = tasks.SENTIMENT_VOCAB
    pos = {"good", "great", "fun", "superb"}
    neg = {"bad", "dull", "awful", "boring"}
    for row, label, length in zip(np.asarray(batch.x), np.asarray(batch.y), np.asarray(batch.lengths)):
        words = [vocab[i] for i in row]
        assert all(w == "<pad>" for w in words[length:]) and "<pad>" not in words[:length]
        score = polar = 0
        for modifier, word in zip(words[0:length:2], words[1:length:2]):
            sign = -1 if modifier == "not" else 1
            if word in pos or word in neg:
                polar += 1
                score += sign * (1 if word in pos else -1)
        assert polar % 2 == 1
        assert label == int(score > 0)
    chance = tasks.majority_accuracy(tasks.sentiment(KEY, 20000).y)
    assert 0.5 <= chance < 0.52


def test_running_parity():
    batch = tasks.running_parity(KEY, 1000, length=9)
    bits = np.asarray(batch.x)[..., 0].astype(int)
    y = np.asarray(batch.y)
    for t in range(9):
        np.testing.assert_array_equal(y[:, t], bits[:, : t + 1].sum(1) % 2)
    assert abs(tasks.majority_accuracy(y) - tasks.running_parity_baseline()) < 0.02


def test_seq2seq_copy_and_reverse_conventions():
    assert (tasks.PAD, tasks.SOS, tasks.EOS) == (0, 1, 2)
    for fn in (tasks.seq2seq_copy, tasks.seq2seq_reverse):
        b = fn(KEY, 64, length=6, min_length=2)
        src, tin, tout = map(np.asarray, (b.src, b.tgt_in, b.tgt_out))
        assert src.shape == (64, 6) and tin.shape == tout.shape == (64, 7)
        for s, i, o, n, m in zip(src, tin, tout, np.asarray(b.src_lengths), np.asarray(b.tgt_lengths)):
            assert m == n + 1 and 2 <= n <= 6
            data = s[:n]
            assert data.min() >= 3 and data.max() <= 10 and np.all(s[n:] == tasks.PAD)
            target = data if fn is tasks.seq2seq_copy else data[::-1]
            np.testing.assert_array_equal(o[:m], np.append(target, tasks.EOS))
            np.testing.assert_array_equal(i[:m], np.insert(target, 0, tasks.SOS))
            assert np.all(o[m:] == tasks.PAD) and np.all(i[m:] == tasks.PAD)
    # Annotated Transformer copy: 8 data symbols, chance from data
    big = tasks.seq2seq_copy(KEY, 20000)
    assert set(np.unique(np.asarray(big.src))) == set(range(3, 11))
    assert abs(tasks.source_blind_accuracy(big.tgt_out) - tasks.seq2seq_copy_baseline()) < 0.006


def test_dates_round_trip():
    batch = tasks.seq2seq_dates(KEY, 200)
    assert batch.src.shape == (200, tasks.DATE_SOURCE_LENGTH)
    assert batch.tgt_out.shape == (200, tasks.DATE_TARGET_LENGTH)
    seen_formats = set()
    for src, tout, n in zip(np.asarray(batch.src), np.asarray(batch.tgt_out), np.asarray(batch.src_lengths)):
        iso = tasks.decode_chars(tout)
        date = datetime.date.fromisoformat(iso)
        text = tasks.decode_chars(src)
        assert len(text) == n
        matches = [f for f in range(len(tasks.DATE_FORMATS)) if tasks.format_date(date, f) == text]
        assert matches, (text, iso)
        seen_formats.update(matches)
    assert len(seen_formats) == len(tasks.DATE_FORMATS)
    assert tasks.format_date(datetime.date(2026, 11, 23), 0) == "23 November 2026"
    longest = tasks.format_date(datetime.date(2026, 9, 30), 6)
    assert len(longest) == tasks.DATE_SOURCE_LENGTH
    chance = tasks.source_blind_accuracy(tasks.seq2seq_dates(KEY, 3000).tgt_out)
    assert 0.3 < chance < 0.7   # year prefix, dashes and EOS are guessable; digits are not
    with pytest.raises(ValueError, match="not in DATE_VOCAB"):
        tasks.encode_chars("23 Novémber")


def test_char_lm_hello_and_windows():
    corpus = tasks.hello()
    assert corpus.vocab.decode(corpus.train) == "hello"
    batch = tasks.lm_windows(KEY, corpus.train, 3, 4)
    assert corpus.vocab.decode(batch.x[0]) == "hell" and corpus.vocab.decode(batch.y[0]) == "ello"
    tokens = jnp.arange(100)
    w = tasks.lm_windows(KEY, tokens, 50, 7)
    np.testing.assert_array_equal(np.asarray(w.y), np.asarray(w.x) + 1)
    assert int(w.x.max()) <= 98


def test_unigram_baseline_matches_entropy():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.25, 0.125, 0.125])
    ids = rng.choice(4, size=200000, p=p)
    entropy = -np.sum(p * np.log2(p))   # 1.75 bits
    assert abs(tasks.unigram_bits_per_char(ids, ids, 4) - entropy) < 0.01


def test_stdlib_corpus():
    corpus = tasks.stdlib_corpus(max_chars=60000)
    assert corpus.train.shape[0] + corpus.valid.shape[0] == 60000
    assert 0.08 < corpus.valid.shape[0] / 60000 < 0.12
    text = corpus.vocab.decode(corpus.train)
    assert "def " in text and "import" in text and "ABIFLAGS" not in text
    assert corpus.vocab.size <= 98
    # both splits hold the same mix of modules: the unigram model transfers
    V = corpus.vocab.size
    gap = tasks.unigram_bits_per_char(corpus.train, corpus.valid, V) - \
        tasks.unigram_bits_per_char(corpus.train, corpus.train, V)
    assert abs(gap) < 0.3


def test_text_file_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("héllo wörld\n" * 20, encoding="utf-8")
    corpus = tasks.text_file(good)
    assert "é" in corpus.vocab.chars
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tasks.text_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        tasks.text_file(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid utf-8.*encoding='latin-1'"):
        tasks.text_file(latin)
    assert tasks.text_file(latin, encoding="latin-1").vocab.decode(
        tasks.text_file(latin, encoding="latin-1", valid_fraction=0.0).train) == "café au lait"
    with pytest.raises(ValueError, match="directory"):
        tasks.text_file(tmp_path)


def test_bad_inputs():
    with pytest.raises(ValueError, match="task name must be one of .*got 'addding'"):
        tasks.get("addding")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        tasks.adding(KEY, 0)
    with pytest.raises(TypeError, match="batch_size"):
        tasks.copying_memory(KEY, 2.5)
    with pytest.raises(ValueError, match="length must be even"):
        tasks.adding(KEY, 2, length=7)
    with pytest.raises(ValueError, match="vocab_size must be >= 4"):
        tasks.seq2seq_copy(KEY, 2, vocab_size=3)
    with pytest.raises(ValueError, match="min_length must be <= length"):
        tasks.seq2seq_reverse(KEY, 2, length=4, min_length=5)
    with pytest.raises(ValueError, match="split must be"):
        tasks.sequential_digits(KEY, 2, split="valid")
    with pytest.raises(ValueError, match="seq_len=10 need at least 11"):
        tasks.lm_windows(KEY, jnp.arange(5), 2, 10)
    with pytest.raises(TypeError, match="key must be a jax PRNG key"):
        tasks.running_parity(0, 2)
    with pytest.raises(TypeError, match="key must be a single jax PRNG key.*float32"):
        tasks.adding(jnp.ones((2,)), 2)
    with pytest.raises(TypeError, match="key must be a single jax PRNG key.*shape \\(2,\\)"):
        tasks.adding(jax.random.split(KEY, 2), 2)
    assert tasks.adding(jax.random.PRNGKey(0), 2).x.shape == (2, 100, 2)      # legacy raw keys still work
