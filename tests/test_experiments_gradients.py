"""The gradient experiments: --quick runs write figure, data and config; figures re-made from saved data alone."""

import importlib.util
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"gradient_experiment_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _replot_from_saved(module, out: pathlib.Path, tmp_path: pathlib.Path, data_files, figure: str):
    """Copy only config.json and the data files to a fresh folder: plot() must re-make the figure there."""
    fresh = tmp_path / "replot"
    fresh.mkdir()
    for name in ("config.json", *data_files):
        shutil.copy(out / name, fresh / name)
    module.plot(fresh)
    assert (fresh / figure).stat().st_size > 10_000


EXPERIMENTS = {
    # name: (extra argv, data files, figure)
    "gradient_norms": (["--archs", "rnn_tanh,lstm_fb1,transformer_pre_ln"],
                       ["gradient_norms.npz"], "gradient_norms.png"),
    "spectral_sweep": ([], ["spectral_sweep.npz"], "spectral_sweep.png"),
    "clipping": (["--steps", "7"], ["clipping.npz"], "clipping.png"),      # a flag --quick must not override
    "layernorm_placement": ([], ["layernorm_placement.npz"], "layernorm_placement.png"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_run_writes_figure_data_config_and_replots(name, tmp_path, monkeypatch):
    module = _load(name)
    readme_figure = tmp_path / "readme" / "gradient_norms.png"
    if name == "gradient_norms":       # a --quick run must never overwrite the README's figure
        monkeypatch.setattr(module, "REPO", tmp_path)
        monkeypatch.setattr(module, "README_FIGURE", readme_figure)
    argv, data_files, figure = EXPERIMENTS[name]
    out = tmp_path / "out"
    module.main(["--quick", "--out", str(out), *argv])
    for f in ("config.json", *data_files, figure):
        assert (out / f).stat().st_size > 0, f
    assert not readme_figure.exists()
    if name == "clipping":
        assert json.loads((out / "config.json").read_text())["steps"] == 7
    assert list(out.glob("*.csv")), "a CSV of the data is written too"
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"
    cfg = module.io.load_json(out / "config.json")
    data = np.load(out / data_files[0])
    if name == "gradient_norms":
        assert cfg["archs"] == ["rnn_tanh", "lstm_fb1", "transformer_pre_ln"]
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
