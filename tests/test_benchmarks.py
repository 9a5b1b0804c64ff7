"""Benchmark scripts run end to end (--quick) and write every row; no timing is asserted."""

import json

import pytest
from conftest import load_script



@pytest.mark.slow
def test_attention_quick_writes_every_row(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch rows need the `torch` extra")
    pytest.importorskip("equinox", reason="the Equinox rows need equinox (the `test` extra)")
    bench = load_script("benchmarks", "attention")
    bench.main(["--quick", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "attention.json").read_text())
    impls = {(r["workload"], r["implementation"]) for r in written["rows"]}
    for workload in {w for w, _ in impls}:
        assert {"seqjax", "Flax", "Equinox", "PyTorch"} <= {i for w, i in impls if w == workload}, workload
    assert len(impls) == len(written["rows"]) >= 8
    for row in written["rows"]:
        assert row["median_ms"] > 0 and row["baseline"] == "PyTorch"
    assert "| vs PyTorch |" in (tmp_path / "attention.md").read_text()

@pytest.mark.slow
def test_recurrent_quick_writes_every_row(tmp_path):
    torch = pytest.importorskip("torch", reason="the PyTorch rows need the `torch` extra")
    pytest.importorskip("equinox", reason="the Equinox rows need equinox (the `test` extra)")
    bench = load_script("benchmarks", "recurrent")
    threads = torch.get_num_threads()
    payload = bench.main(["--quick", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads          # --quick's 1 torch thread does not leak
    assert payload["machine"]["torch_threads"] == 1

    written = json.loads((tmp_path / "recurrent.json").read_text())
    expected = {("lstm", "seqjax"), ("lstm", "seqjax fused"), ("lstm", "Flax LSTMCell"),
                ("lstm", "Flax OptimizedLSTMCell"), ("lstm", "Equinox"), ("lstm", "PyTorch"),
                ("gru", "seqjax"), ("gru", "seqjax fused"), ("gru", "Flax GRUCell"), ("gru", "Equinox"),
                ("gru", "PyTorch"),
                ("rnn_tanh", "seqjax"), ("rnn_tanh", "seqjax fused"), ("rnn_tanh", "Flax SimpleCell"),
                ("rnn_tanh", "PyTorch")}
    rows = {(r["cell"], r["implementation"]): r for r in written["rows"]}
    assert set(rows) == expected
    assert len(written["rows"]) == len(expected)            # no duplicates
    for key, row in rows.items():
        assert row["median_ms"] > 0, key
        assert len(row["round_ms"]) == written["config"]["rounds"] == 2, key
        assert row["baseline"] == "PyTorch", key
    for cell in ("lstm", "gru", "rnn_tanh"):
        assert rows[(cell, "PyTorch")]["ratio"] == 1.0
    assert written["config"]["batch"] == 2 and written["config"]["hidden"] == 16
    assert written["machine"]["versions"]["jax"]
    assert written == json.loads(json.dumps(payload, default=list))   # the JSON is what main returned
    md = (tmp_path / "recurrent.md").read_text()
    for title in ("LSTM", "GRU", "RNN (tanh)", "seqjax fused", "Flax OptimizedLSTMCell", "Equinox", "PyTorch"):
        assert f"| {title} |" in md or f"| {title}" in md


def test_recurrent_rejects_bad_sizes(capsys):
    bench = load_script("benchmarks", "recurrent")
    with pytest.raises(SystemExit):
        bench.main(["--hidden", "0", "--out", "/nonexistent-never-written"])
    assert "--hidden must be >= 1" in capsys.readouterr().err


def test_recurrent_checks_out_dir_before_compute(tmp_path, monkeypatch):
    bench = load_script("benchmarks", "recurrent")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    called = []
    monkeypatch.setattr(bench, "build_candidates", lambda *a, **k: called.append(1) or [])
    with pytest.raises(ValueError, match="--out"):
        bench.main(["--quick", "--out", str(blocker / "sub")])
    assert not called


@pytest.mark.slow
def test_input_projection_and_bidirectional_prototypes_run(tmp_path):
    ip = load_script("benchmarks", "input_projection")
    payload = ip.main(["--quick", "--cells", "lstm", "--out", str(tmp_path)])
    assert {(r["variant"], r["mode"]) for r in payload["rows"]} == {
        (v, m) for v in ("inside", "hoisted", "hoisted_tm") for m in ("fwd", "fwd+bwd")}
    assert all(r["while_loop_state_bytes"] for r in payload["rows"])   # the HLO parse found the loops
    bd = load_script("benchmarks", "bidirectional")
    payload = bd.main(["--quick", "--cells", "gru", "--out", str(tmp_path)])
    assert len(payload["rows"]) == 2
    assert payload["rows"][0]["max_rel_grad_diff"] < 1e-5      # one vmapped scan == two scans


@pytest.mark.slow
def test_long_sequences_quick_writes_every_point(tmp_path):
    load_script("benchmarks", "long_sequences").main(["--quick", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "long_sequences_quick.json").read_text())["rows"]
    assert [(r["T"], r["remat"]) for r in rows] == [(64, None), (64, 16), (256, None), (256, 16)]
    for r in rows:
        assert r["seconds"] > 0 and r["peak_rss_gib"] > 0 and r["xla_temp_gib"] >= 0


@pytest.mark.slow
def test_scaling_experiment_quick_writes_data_config_and_figure(tmp_path):
    load_script("experiments", "scaling").main(["--quick", "--out", str(tmp_path)])
    for name in ("scaling.csv", "config.json", "scaling.png"):
        assert (tmp_path / name).stat().st_size > 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config["lengths"]) == {16, 32, 64} and "crossover_T_time" in config
