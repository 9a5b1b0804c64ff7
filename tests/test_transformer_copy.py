"""The copy example (experiments/transformer_copy.py) reaches exact copies of held-out inputs."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("transformer_copy", ROOT / "experiments" / "transformer_copy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_copy_example_decodes_held_out_inputs_exactly(tmp_path, capsys):
    module = _load()
    metrics = module.main(["--quick", "--out", str(tmp_path)])
    assert metrics["greedy_exact"] == 1.0 and metrics["beam_exact"] == 1.0
    for name in ("config.json", "loss_curve.csv", "loss_curve.png", "metrics.json", "decodes.csv"):
        assert (tmp_path / name).stat().st_size > 0
    rows = module.io.load_csv(tmp_path / "loss_curve.csv")
    assert float(rows[-1]["loss"]) < 0.1 * float(rows[0]["loss"])
    assert "held-out exact copies: greedy 100.0%, beam 100.0%" in capsys.readouterr().out
    # plotting reads the saved files only
    (tmp_path / "loss_curve.png").unlink()
    module.plot(tmp_path)
    assert (tmp_path / "loss_curve.png").exists()


def test_copy_example_rejects_an_unwritable_output_before_compute(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        _load().main(["--quick", "--out", str(blocker / "sub")])


def test_bool_flags_parse_both_ways_and_bad_schedules_are_usage_errors(capsys):
    parse = _load().parse
    assert parse(["--norm-first"])[0].norm_first is True
    assert parse(["--no-norm-first"])[0].norm_first is False
    assert parse([])[0].norm_first is False                                  # the dataclass default
    with pytest.raises(SystemExit) as exit_info:
        parse(["--steps", "50", "--warmup", "50"])
    assert exit_info.value.code == 2
    assert "warmup (50) must be < steps (50)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--beam-size", "11"])
    assert "beam_size (11) must be <= vocab_size - 1 = 10" in capsys.readouterr().err
