"""Quick end-to-end runs of experiments/long_range.py and experiments/char_lm.py."""

import jax
import jax.numpy as jnp
import pytest
from conftest import load_script

from seqjax import decoding, io


def _load(name):
    return load_script("experiments", name)


@pytest.mark.slow
def test_long_range_quick(tmp_path):
    lr = _load("long_range")
    out = lr.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    rows = io.load_csv(out / "results.csv")
    assert [(r["task"], r["model"]) for r in rows] == [
        ("adding100", "irnn"), ("copying100", "transformer"), ("digits", "gru")]
    chance = {r["task"]: float(r["chance"]) for r in rows}
    assert abs(chance["adding100"] - 1 / 6) < 1e-12 and abs(chance["copying100"] - 0.1733) < 1e-4
    assert "| adding100 | 100 | irnn |" in (out / "results.md").read_text()
    assert io.load_json(out / "config.json")["steps"] == 6
    # plotting reads only the saved files
    (out / "learning_curves.png").unlink()
    lr.plot(out)
    assert (out / "learning_curves.png").stat().st_size > 0
    # every run went through fit: metrics log and a final checkpoint
    assert (out / "runs" / "digits_gru" / "checkpoints" / "6").is_dir()
    assert (out / "runs" / "copying100_transformer" / "metrics.jsonl").stat().st_size > 0


def test_long_range_bad_inputs(tmp_path):
    lr = _load("long_range")
    with pytest.raises(ValueError, match="unknown architecture 'lstmm'"):
        lr.main(["--models", "lstmm", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown task 'adding50'"):
        lr.main(["--tasks", "adding50", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        lr.main(["--batch-size", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--lr must be > 0, got 0.0"):
        lr.main(["--lr", "0", "--out", str(tmp_path)])


@pytest.mark.slow
def test_char_lm_hello_learns_o_and_quick_stdlib(tmp_path):
    ch = _load("char_lm")
    out = ch.main(["--corpus", "hello", "--model", "lstm", "--out", str(tmp_path / "hello"), "--no-progress"])
    res = io.load_json(out / "results.json")
    assert res["greedy_continuation"] == "hello"
    assert res["valid_bits_per_char"] < 0.2 * res["unigram_bits_per_char"]
    # the Transformer's cached sampler with the prompt filling the whole window (4 = seq_len)
    out = ch.main(["--corpus", "hello", "--model", "transformer", "--out", str(tmp_path / "hello_tf"), "--no-progress"])
    assert io.load_json(out / "results.json")["greedy_continuation"] == "hello"
    out = ch.main(["--quick", "--corpus", "stdlib", "--model", "transformer", "--out", str(tmp_path / "std"),
                   "--no-progress", "--temperatures", "0.5", "1.0"])
    res = io.load_json(out / "results.json")
    assert set(res["samples"]) == {"0.0", "0.5", "1.0"}
    assert all(s.startswith("def ") and len(s) == 24 for s in res["samples"].values())
    assert res["unigram_bits_per_char"] > 3.0
    (out / "learning_curve.png").unlink()
    ch.plot(out)
    assert (out / "learning_curve.png").exists()


def test_char_lm_bad_inputs(tmp_path):
    ch = _load("char_lm")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)
    with pytest.raises(ValueError, match="not valid utf-8.*encoding='latin-1'.*--encoding"):
        ch.main(["--corpus", "file", "--path", str(latin), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "config.json").exists()     # failed before any compute or output
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ch.main(["--corpus", "file", "--path", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        ch.main(["--corpus", "file", "--path", str(empty), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="unknown architecture 'rnn'"):
        ch.main(["--model", "rnn", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="lr must be > 0"):
        ch.main(["--lr", "-1", "--out", str(tmp_path / "o")])
    # the Transformer's KV cache / positions hold seq_len positions: prompt + sample_chars - 1 <= seq_len
    with pytest.raises(ValueError, match=r"prompt \(4 chars\) \+ sample_chars \(62\) - 1 = 65 .* seq_len = 64"):
        ch.main(["--model", "transformer", "--sample-chars", "62", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--sample-chars must be >= 1"):
        ch.main(["--sample-chars", "0", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "config.json").exists()


def _full_window_reference(net, params, key, prompt, num_chars, temperature):
    """What the KV cache replaces: rerun the whole prefix for every token (Python loop), drawing
    token t with ``fold_in(key, t)`` as ``decoding.sample`` documents.

    The prefix is right-padded to one (1, L) shape so ``apply_jit`` compiles once; causal
    attention keeps the padding after the last real token invisible."""
    toks, out = list(prompt), []
    L = net.config.max_len
    for t in range(num_chars):
        window = jnp.zeros((1, L), jnp.int32).at[0, :len(toks)].set(jnp.asarray(toks, jnp.int32))
        logits = net.apply_jit(params, window)[0, len(toks) - 1]
        tok = int(jnp.argmax(logits) if temperature == 0 else
                  jax.random.categorical(jax.random.fold_in(key, t), logits / temperature))
        toks.append(tok)
        out.append(tok)
    return out


def test_char_lm_transformer_sampler_fills_the_window_like_full_recomputation():
    ch = _load("char_lm")
    V, L, P = 11, 12, 4
    n = L - P + 1                    # the last token is never fed back: the cache is exactly full
    cfg = ch.Config(model="transformer", model_size=16, num_layers=2, seq_len=L, prompt="abcd")
    assert cfg.sample_chars == n     # the default fills the window
    net = ch.make_lm(cfg, V, L)
    params = net.init(jax.random.key(0))
    # widen the GPT-2 init (N(0, 0.02)) so logits are O(1) apart and argmax is not decided by rounding
    leaves, tree = jax.tree.flatten(params)
    noise = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, noise)])
    # with tied embeddings a random model repeats its input under argmax; strong learned positions make the
    # greedy tokens depend on the position, so the cache's position offset is exercised too
    params["pos"]["embedding"] = 3.0 * jax.random.normal(jax.random.key(3), params["pos"]["embedding"].shape)
    prompt = jnp.asarray([[3, 1, 4, 1]], jnp.int32)
    sample = jax.jit(lambda p, k, t: decoding.sample(net, p, prompt, k, max_len=n, temperature=t))
    key = jax.random.key(2)
    for t in (0.0, 1.0):
        got = [int(x) for x in sample(params, key, jnp.float32(t))[0]]
        want = _full_window_reference(net, params, key, [3, 1, 4, 1], n, t)
        assert got == want, t
        assert len(set(want)) > 1, "degenerate reference: the comparison would be weak"
    with pytest.raises(ValueError, match="positions"):
        decoding.sample(net, params, prompt, key, max_len=n + 1)
