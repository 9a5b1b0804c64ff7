"""Benchmark scripts run end to end (--quick) and write every row; no timing is asserted.

The FLOP counts behind the GFLOP/s columns are checked against XLA's own count where
XLA can count (programs without a loop)."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT, load_script, randn

from seqjax import attention, cells, recurrent
from seqjax import transformer as tfm


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
        assert row["gflop_per_s"] > 0 and 0 < row["fraction_of_peak"] and row["flops_source"] == "xla_cost_analysis"
        assert (row["compile_s"] is None) == (row["implementation"] == "PyTorch")
    assert "| vs PyTorch | GFLOP/s | % of peak | compile s |" in (tmp_path / "attention.md").read_text()

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
    expected = {("lstm", "Flax LSTMCell"), ("lstm", "Flax OptimizedLSTMCell"), ("lstm", "Equinox"),
                ("lstm", "PyTorch"), ("gru", "Flax GRUCell"), ("gru", "Equinox"), ("gru", "PyTorch"),
                ("rnn_tanh", "Flax SimpleCell"), ("rnn_tanh", "PyTorch")}
    expected |= {(cell, path) for cell in ("lstm", "gru", "rnn_tanh")          # default, vjp, autodiff
                 for path in ("seqjax", "seqjax fused", "seqjax autodiff", bench.FLOOR)}
    rows = {(r["cell"], r["implementation"]): r for r in written["rows"]}
    assert set(rows) == expected
    assert len(written["rows"]) == len(expected)            # no duplicates
    for key, row in rows.items():
        assert row["median_ms"] > 0, key
        assert len(row["round_ms"]) == written["config"]["rounds"] == 2, key
        assert row["baseline"] == "PyTorch", key
        assert row["gflop_per_s"] > 0 and row["fraction_of_peak"] > 0 and row["flops_source"] == "analytic", key
        assert (row["compile_s"] is None) == (key[1] == "PyTorch"), key
    for cell in ("lstm", "gru", "rnn_tanh"):            # one FLOP count per cell, shared by every implementation
        assert len({r["gflop"] for r in written["rows"] if r["cell"] == cell}) == 1
    assert written["machine"]["matmul_peak"]["float32"]["flop_per_s"] > 0 and written["machine"]["date"]
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
    assert isinstance(config["transformer_costlier_throughout_time"], bool)


def test_scaling_crossover_is_a_switch_not_the_smallest_length():
    scaling = load_script("experiments", "scaling")
    def rows(lstm, tfm):
        return [{"model": m, "T": T, "s": v} for m, vs in (("lstm", lstm), ("transformer", tfm))
                for T, v in zip((64, 128, 256), vs)]
    switch = rows([2.0, 3.0, 4.0], [1.0, 3.0, 9.0])          # cheaper, equal, then costlier at T=256
    assert scaling.crossover(switch, "s") == 256 and not scaling.costlier_throughout(switch, "s")
    always = rows([1.0, 2.0, 3.0], [2.0, 4.0, 8.0])          # costlier from the smallest T: no crossover
    assert scaling.crossover(always, "s") is None and scaling.costlier_throughout(always, "s")
    never = rows([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert scaling.crossover(never, "s") is None and not scaling.costlier_throughout(never, "s")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_recurrent_flops_match_xla_on_an_unrolled_loop(cell):
    """XLA counts a Python-loop unroll step by step; the analytic matmul count is within its
    elementwise extra. On the scan, XLA would count one step, so no XLA count is used."""
    common = load_script("benchmarks", "_common")
    B, T, E, H = 4, 6, 64, 64
    c = cells.make(cell, H)
    params, x, carry = c.init(jax.random.key(0), E), randn(0, (B, T, E)), c.initial_carry((B,))
    loss = lambda p, x: jnp.sum(recurrent.static_unroll(c.step, p, carry, x)[1] ** 2)      # noqa: E731
    for mode, fn in (("grad", jax.grad(loss)), ("forward", loss)):
        xla = common.CompiledRunner(jax.jit(fn), params, x).xla_flops
        analytic = common.recurrent_flops(common.cell_gates(cell), B, T, E, H, mode=mode)
        assert 1.0 <= xla / analytic <= 1.1, (mode, xla, analytic)
    scanned = common.CompiledRunner(jax.jit(jax.grad(lambda p, x: jnp.sum(recurrent.unroll(
        c.step, p, carry, x)[1] ** 2))), params, x)
    assert scanned.xla_flops is None and scanned.compile_seconds > 0
    counted = common.workload_flops(123.0, scanned)
    assert counted["source"] == "analytic" and counted["flops"] == 123.0


def test_attention_flops_match_xla():
    common = load_script("benchmarks", "_common")
    B, T, D, N, F = 2, 64, 128, 4, 256
    x = randn(1, (B, T, D))
    mha = attention.multi_head_attention(N, D)
    enc = tfm.encoder_layer(tfm.StackConfig(D, N, F, 1, dropout=0.0))
    for apply, params, analytic in ((mha.apply, mha.init(jax.random.key(0), D), common.attention_flops(B, T, D)),
                                    (enc.apply, enc.init(jax.random.key(0)),
                                     common.encoder_layer_flops(B, T, D, F))):
        runner = common.CompiledRunner(jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2))), params, x)
        assert 1.0 <= runner.xla_flops / analytic <= 1.05
        assert common.workload_flops(analytic, runner)["source"] == "xla_cost_analysis"


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_accelerator_quick_writes_every_row_and_the_summary(tmp_path):
    """benchmarks/accelerator.py --quick in a subprocess (as `make bench` runs it): the file named
    after the device holds every (workload, dtype, implementation) row with positive, finite
    numbers, the device, both matmul peaks and the command. No timing is compared."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    device = jax.devices()[0].device_kind
    bench = load_script("benchmarks", "accelerator")
    stem = f"accelerator-{bench.device_slug(device)}-quick"
    written = json.loads((tmp_path / f"{stem}.json").read_text())
    assert written["device"]["kind"] == device and written["device"]["platform"] == jax.default_backend()
    assert written["command"].startswith("python benchmarks/accelerator.py --quick")
    for dtype in ("float32", "bfloat16"):
        assert _finite_positive(written["machine"]["matmul_peak"][dtype]["flop_per_s"])
    assert written["skipped"] == []                                     # everything runs on a CPU
    expected = {(w, d, i) for d in ("float32", "bfloat16") for w, impls in (
        [(c, ("seqjax", "seqjax vjp", "seqjax autodiff")) for c in ("lstm", "gru")] + [("mha", ("seqjax",)),
         ("encoder_layer", ("seqjax",))]
        + [(f"scaling T={T}", (bench.LSTM_LAYER, bench.ENCODER_LAYER)) for T in (8, 32)]) for i in impls}
    rows = {(r["workload"], r["dtype"], r["implementation"]): r for r in written["rows"]}
    assert set(rows) == expected and len(written["rows"]) == len(expected)
    for key, row in rows.items():
        for column in ("median_ms", "min_ms", "gflop", "gflop_per_s", "fraction_of_peak", "compile_s", "ratio"):
            assert _finite_positive(row[column]), (key, column, row[column])
    assert set(written["crossover_T"]) == {"float32", "bfloat16"}
    md = (tmp_path / f"{stem}.md").read_text()
    assert f"seqjax on {device}" in md and "| GFLOP/s | % of peak | compile s |" in md and "--quick" in md

    load_script("benchmarks", "summary").main(["--results", str(tmp_path)])
    summary = (tmp_path / "summary.md").read_text()
    assert f"## {stem}" in summary and "Not found: recurrent" in summary


@pytest.mark.slow
def test_state_gradients_quick_reports_flops_and_compile_time(tmp_path):
    payload = load_script("benchmarks", "state_gradients").main(["--quick", "--cells", "gru", "--out", str(tmp_path)])
    timings = payload["results"][0]["timings"]
    for method in ("value_and_grad", "state_gradients"):
        assert _finite_positive(timings[method]["gflop_per_s"]) and _finite_positive(timings[method]["compile_s"])
    assert payload["results"][0]["max_rel_diff_naive_vs_state_gradients"] < 1e-4
    written = json.loads((tmp_path / "state_gradients.json").read_text())
    assert written["command"].startswith("python benchmarks/state_gradients.py --quick")
    assert _finite_positive(written["machine"]["matmul_peak"]["float32"]["flop_per_s"])
