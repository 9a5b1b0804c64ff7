"""The seq2seq experiments: attention_bottleneck, task_types and attention_maps."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_script

from seqjax import io, tasks
from seqjax import transformer as tfm


def _load(name):
    return load_script("experiments", name)


# ----------------------------------------------------------------------------- --quick runs


@pytest.mark.slow
def test_attention_bottleneck_quick_writes_figure_data_and_config(tmp_path):
    ab = _load("attention_bottleneck")
    out = ab.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    for name in ("config.json", "models.csv", "loss_curves.csv", "accuracy.csv", "attention_bottleneck.png"):
        assert (out / name).stat().st_size > 0
    cfg = io.load_json(out / "config.json")
    assert cfg["steps"] == ab.QUICK["steps"] and cfg["eval_max_len"] == 2 * ab.QUICK["train_max_len"]
    models = io.load_csv(out / "models.csv")
    assert [(r["task"], r["model"]) for r in models] == [(t, m) for t in ab.TASKS for m in ab.MODELS]
    rows = io.load_csv(out / "accuracy.csv")
    reverse = [r for r in rows if r["task"] == "reverse" and r["model"] == "transformer"]
    assert sorted(int(r["x"]) for r in reverse) == list(range(1, 2 * ab.QUICK["train_max_len"] + 1))
    formats = {r["label"] for r in rows if r["task"] == "dates" and r["group"] == "format"}
    assert len(formats) == len(tasks.DATE_FORMATS) and "23 November 2026" in formats
    assert all(0.0 <= float(r["exact"]) <= float(r["token_accuracy"]) <= 1.0 for r in rows)
    # plotting reads the saved files only
    (out / "attention_bottleneck.png").unlink()
    ab.plot(out)
    assert (out / "attention_bottleneck.png").stat().st_size > 0


@pytest.mark.slow
def test_task_types_quick_writes_figure_data_and_config(tmp_path):
    tt = _load("task_types")
    out = tt.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    for name in ("config.json", "results.csv", "curves.csv", "examples.csv", "task_types.png"):
        assert (out / name).stat().st_size > 0
    results = io.load_csv(out / "results.csv")
    assert [r["task"] for r in results] == list(tt.TASKS)
    assert all(0.0 <= float(r["held_out"]) <= 1.0 and 0.0 <= float(r["chance"]) <= 1.0 for r in results)
    curves = io.load_csv(out / "curves.csv")
    assert {int(r["step"]) for r in curves} == {10, 20}
    assert io.load_json(out / "config.json")["steps"] == tt.QUICK["steps"]
    (out / "task_types.png").unlink()
    tt.plot(out)
    assert (out / "task_types.png").stat().st_size > 0


@pytest.mark.slow
def test_attention_maps_quick_writes_figures_weights_and_config(tmp_path):
    am = _load("attention_maps")
    out = am.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    for name in ("config.json", "metrics.json", "attention.npz", "attention_maps.png",
                 "transformer_attention_maps.png"):
        assert (out / name).stat().st_size > 0
    q = am.QUICK
    with np.load(out / "attention.npz") as z:
        n, T = q.get("num_examples", am.Config.num_examples), q["length"]
        assert z["reverse_weights"].shape == (n, T + 1, T)
        assert z["copy_weights_cross"].shape == (q["num_layers"], n, q["num_heads"], T + 1, T)
        assert z["copy_weights_encoder"].shape == (q["num_layers"], n, q["num_heads"], T, T)
        assert z["dates_weights"].shape == (n, tasks.DATE_TARGET_LENGTH, tasks.DATE_SOURCE_LENGTH)
        w, lengths = z["reverse_weights"], z["reverse_src_lengths"]
        valid = np.arange(T)[None, None, :] < lengths[:, None, None]
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
        assert np.all(w[~np.broadcast_to(valid, w.shape)] == 0.0)
    m = io.load_json(out / "metrics.json")
    assert 0.0 <= m["reverse"]["anti_diagonal_mass"] <= 1.0
    assert np.asarray(m["copy"]["cross_attention_diagonal_mass"]).shape == (q["num_layers"], q["num_heads"])
    for name in ("attention_maps.png", "transformer_attention_maps.png"):
        (out / name).unlink()
    am.plot(out)
    assert (out / "attention_maps.png").exists() and (out / "transformer_attention_maps.png").exists()


# ----------------------------------------------------------------------------- bad flags


def _refused(name, argv, message, tmp_path, capsys):
    """A bad flag is a usage error (exit status 2, as experiments/_common.config makes it) whose
    message names the flag, before the output directory is created."""
    with pytest.raises(SystemExit) as exc:
        _load(name).main(argv + ["--out", str(tmp_path / "never")])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv,message", [
    (["--models", "lstm"], "models: unknown model 'lstm'"),
    (["--tasks", "copy"], "tasks: unknown task 'copy'"),
    (["--train-max-len", "0"], "--train-max-len must be >= 1, got 0"),
    (["--train-max-len", "8", "--eval-max-len", "4"], r"eval_max_len \(4\) must be >= train_max_len \(8\)"),
    (["--attention", "none"], "attention must be one of"),
    (["--cell", "transformer"], "cell must be one of"),
    (["--num-heads", "3"], r"num_heads \(3\) must divide model_size \(64\)"),
    (["--vocab-size", "3"], "vocab_size must be >= 4"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--clip-norm", "nan"], "--clip-norm must be a finite number"),
    (["--warmup", "3000"], r"warmup \(3000\) must be < steps"),
])
def test_attention_bottleneck_bad_flags_name_the_flag(tmp_path, capsys, argv, message):
    _refused("attention_bottleneck", argv, message, tmp_path, capsys)


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "captioning"], "tasks: unknown task 'captioning'"),
    (["--cell", "transformer"], "cell must be one of"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--eval-every", "-2"], "--eval-every must be >= 1, got -2"),
    (["--max-clauses", "1"], "max_clauses must be >= 2"),
    (["--clip-norm", "-1"], "--clip-norm must be > 0, got -1.0"),
])
def test_task_types_bad_flags_name_the_flag(tmp_path, capsys, argv, message):
    _refused("task_types", argv, message, tmp_path, capsys)


@pytest.mark.parametrize("argv,message", [
    (["--cell", "foo"], "cell must be one of"),
    (["--attention", "none"], "attention must be one of"),
    (["--length", "0"], "--length must be >= 1, got 0"),
    (["--num-examples", "9", "--eval-size", "8"], r"num_examples \(9\) must be <= eval_size \(8\)"),
    (["--num-heads", "5"], r"num_heads \(5\) must divide model_size \(64\)"),
    (["--warmup", "1500"], r"warmup \(1500\) must be < every \*_steps"),
])
def test_attention_maps_bad_flags_name_the_flag(tmp_path, capsys, argv, message):
    _refused("attention_maps", argv, message, tmp_path, capsys)


# ----------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_recomputed_transformer_attention_reproduces_the_model_and_is_masked(norm_first):
    """transformer_attention checks itself against Layer.apply and model.apply (it raises on a
    mismatch); here: the weights are distributions, zero on padded keys and on future targets."""
    am = _load("attention_maps")
    V = 9
    model = tfm.transformer(tfm.TransformerConfig(V, V, model_size=8, num_heads=2, ff_size=16,
                                                  num_encoder_layers=2, num_decoder_layers=2, max_len=8,
                                                  norm_first=norm_first, share_embeddings=not norm_first,
                                                  tie_embeddings=not norm_first,
                                                  positional="learned" if norm_first else "sinusoidal"))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.integers(3, V, (3, 6)), jnp.int32)
    tgt_in = jnp.asarray(rng.integers(3, V, (3, 5)), jnp.int32).at[:, 0].set(tasks.SOS)
    lengths = jnp.array([6, 2, 4], jnp.int32)
    w = am.transformer_attention(model, params, src, tgt_in, lengths)
    assert w["encoder"].shape == (2, 3, 2, 6, 6)
    assert w["decoder"].shape == (2, 3, 2, 5, 5) and w["cross"].shape == (2, 3, 2, 5, 6)
    for name in ("encoder", "decoder", "cross"):
        np.testing.assert_allclose(w[name].sum(-1), 1.0, rtol=1e-5)
    padded = np.arange(6)[None, :] >= np.asarray(lengths)[:, None]                   # (B, T)
    cross = np.moveaxis(w["cross"], 1, 0)                                             # (B, L, N, S, T)
    enc = np.moveaxis(w["encoder"], 1, 0)
    for b in range(3):
        assert np.all(cross[b][..., padded[b]] == 0.0) and np.all(enc[b][..., padded[b]] == 0.0)
    future = np.triu(np.ones((5, 5), bool), k=1)
    assert np.all(w["decoder"][..., future] == 0.0)


def test_dates_eval_set_holds_out_every_training_source():
    ab = _load("attention_bottleneck")
    cfg = ab.Config(dates_train_size=300, eval_per_format=5)
    pool = ab.dates_training_set(cfg)
    assert pool.src.shape == (300, tasks.DATE_SOURCE_LENGTH)
    src, src_len, tgt, fmts = ab.dates_eval_set(cfg, pool)
    assert src.shape == (5 * len(tasks.DATE_FORMATS), tasks.DATE_SOURCE_LENGTH)
    assert np.bincount(fmts).tolist() == [5] * len(tasks.DATE_FORMATS)
    seen = {tasks.decode_chars(r) for r in np.asarray(pool.src)}
    assert not seen & {tasks.decode_chars(r) for r in src}
    assert all(len(tasks.decode_chars(r)) == n for r, n in zip(src, src_len))
    # the target is the ISO date then EOS, as seq2seq_dates' tgt_out
    np.testing.assert_array_equal(tgt[:, -1], tasks.EOS)
    assert tasks.decode_chars(tgt[0]).count("-") == 2


def test_accuracy_rows_exact_and_token_accuracy():
    ab = _load("attention_bottleneck")
    want = np.array([[3, 4, 2, 0], [5, 2, 0, 0], [3, 3, 3, 2]])
    out = np.array([[3, 4, 2, 0], [5, 3, 0, 0], [3, 3, 4, 2]])
    rows = ab.accuracy_rows("reverse", "rnn_none", "length", np.array([2, 1, 2]), out, want)
    assert [(r["x"], r["n"], r["exact"]) for r in rows] == [(1, 1, 0.0), (2, 2, 0.5)]
    assert rows[0]["token_accuracy"] == 0.5 and rows[1]["token_accuracy"] == pytest.approx((1 + 0.75) / 2)


def test_digit_names_table_spells_each_name_then_eos():
    tt = _load("task_types")
    tgt_in, tgt_out = tt._names_table()
    assert [tasks.decode_chars(row) for row in tgt_out] == list(tt.DIGIT_NAMES)
    np.testing.assert_array_equal(tgt_in[:, 0], tasks.SOS)
    np.testing.assert_array_equal(tgt_in[:, 1:], np.where(tgt_out[:, :-1] == tasks.EOS, tasks.PAD,
                                                          tgt_out[:, :-1]))
    assert tt.majority_string(np.array([[1, 2], [1, 2], [3, 4]])) == pytest.approx(2 / 3)
