"""The gradient experiments: --quick runs write figure, data and config; figures re-made from saved data alone."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from conftest import QUICK_RUNS, load_script


def _load(name):
    return load_script("experiments", name)


def _replot_from_saved(module, out: pathlib.Path, tmp_path: pathlib.Path, data_files, figure: str):
    """Copy only config.json and the data files to a fresh folder: plot() must re-make the figure there."""
    fresh = tmp_path / "replot"
    fresh.mkdir()
    for name in ("config.json", *data_files):
        shutil.copy(out / name, fresh / name)
    module.plot(fresh)
    assert (fresh / figure).stat().st_size > 10_000


# the quick headline's architectures, one run shared with test_papers.py and the bfloat16 test below
GRADIENT_NORMS_ARCHS = ["rnn_tanh", "rnn_relu", "lstm_fb1", "transformer_pre_ln", "orthogonal"]
EXPERIMENTS = {
    # name: (extra argv, data files, figure)
    "gradient_norms": (["--archs", ",".join(GRADIENT_NORMS_ARCHS)], ["gradient_norms.npz"], "gradient_norms.png"),
    "spectral_sweep": ([], ["spectral_sweep.npz"], "spectral_sweep.png"),
    "clipping": (["--steps", "7"], ["clipping.npz"], "clipping.png"),      # a flag --quick must not override
    "layernorm_placement": ([], ["layernorm_placement.npz"], "layernorm_placement.png"),
}


@pytest.mark.slow
@QUICK_RUNS
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_run_writes_figure_data_config_and_replots(name, tmp_path, quick_run):
    module = _load(name)
    argv, data_files, figure = EXPERIMENTS[name]
    out = quick_run(name, *argv)             # checks that nothing outside out (docs/figures) was written
    for f in ("config.json", *data_files, figure):
        assert (out / f).stat().st_size > 0, f
    if name == "clipping":
        assert json.loads((out / "config.json").read_text())["steps"] == 7
    assert list(out.glob("*.csv")), "a CSV of the data is written too"
    cfg = module.io.load_json(out / "config.json")
    data = np.load(out / data_files[0])
    if name == "gradient_norms":
        assert cfg["archs"] == GRADIENT_NORMS_ARCHS
        for arch in cfg["archs"]:
            for phase in ("init", "trained"):
                runs = data[f"{arch}/{phase}"]
                assert runs.shape == (cfg["seeds"], cfg["length"]) and np.all(np.isfinite(runs))
                assert np.all(runs[:, 0] > 0)
    if name == "spectral_sweep":     # the linear RNN sits on its analytic line
        np.testing.assert_allclose(data["linear"], np.broadcast_to(data["analytic_linear"], data["linear"].shape),
                                   rtol=1e-9)
    _replot_from_saved(module, out, tmp_path, data_files, figure)


@pytest.mark.parametrize("argv,match", [
    (["--archs", "rnn_tanh,transformer"], r"archs must be a non-empty list from .*unknown \['transformer'\]"),
    (["--task", "sorting"], r"task must be one of \['adding', 'copying'\], got 'sorting'"),
    (["--length", "0"], r"length must be >= 1"),
    (["--dtype", "float16"], r"dtype must be one of \['float32', 'bfloat16', 'float64'\], got 'float16'"),
])
def test_gradient_norms_rejects_bad_names_before_compute(argv, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _load("gradient_norms").main(["--quick", "--out", str(tmp_path / "never"), *argv])
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_unwritable_output_is_rejected_before_compute(name, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        _load(name).main(["--quick", "--out", str(blocker / "sub")])


@pytest.mark.slow
@QUICK_RUNS
def test_gradient_norms_bfloat16_quick_run_has_its_own_directory_and_follows_float32(tmp_path, monkeypatch,
                                                                                       quick_run):
    """--dtype bfloat16 writes results/gradient_norms_bfloat16/ (never the float32 headline's directory),
    records its policy, and its curves follow float32's: every centre line within a factor
    exp(GRADIENT_RTOL) (the library's bfloat16 gradient tolerance) at every distance."""
    from seqjax import precision
    module = _load("gradient_norms")
    monkeypatch.setattr(module._common, "REPO", tmp_path)            # where the default --out points
    f32_out = quick_run("gradient_norms", *EXPERIMENTS["gradient_norms"][0])   # the same seeds for every arch
    out = module.main(["--quick", "--dtype", "bfloat16", "--archs", "rnn_relu,lstm_fb1,transformer_pre_ln"])
    assert out == tmp_path / "results" / "gradient_norms_bfloat16" and not (tmp_path / "results" / "gradient_norms").exists()
    cfg, summary = module.io.load_json(out / "config.json"), module.io.load_json(out / "summary.json")
    assert cfg["dtype"] == summary["dtype"] == "bfloat16"
    assert summary["precision"] == "params=float32,compute=bfloat16,output=float32"
    assert (out / "reading.md").read_text().startswith("Precision policy bfloat16")
    f32, bf16 = np.load(f32_out / "gradient_norms.npz"), np.load(out / "gradient_norms.npz")
    for arch in cfg["archs"]:
        for phase in ("init", "trained"):
            a, b = f32[f"{arch}/{phase}"], bf16[f"{arch}/{phase}"]
            assert b.dtype == np.float32 and np.all(np.isfinite(b)) and np.all(b > 0)
            log_ratio = np.mean(np.log(b), axis=0) - np.mean(np.log(a), axis=0)      # centre lines
            assert np.max(np.abs(log_ratio)) < precision.GRADIENT_RTOL, (arch, phase, log_ratio)
            assert not np.array_equal(a, b)                                          # bfloat16 did run
    _replot_from_saved(module, out, tmp_path, ["gradient_norms.npz"], "gradient_norms.png")
