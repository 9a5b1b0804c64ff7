"""The copy example (experiments/transformer_copy.py) reaches exact copies of held-out inputs."""

import pytest
from conftest import load_script


def _load():
    return load_script("experiments", "transformer_copy")


@pytest.mark.slow
def test_copy_example_decodes_held_out_inputs_exactly(tmp_path, capsys):
    module = _load()
    metrics = module.main(["--quick", "--out", str(tmp_path), "--no-progress"])
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


def test_flags_override_quick_bools_parse_both_ways_and_bad_schedules_are_refused(tmp_path):
    module = _load()

    def values(*argv):
        return module._common.parse(module._common.parser(module.Config, "", "copy"), list(argv),
                                    quick=module.QUICK)[0]
    assert values("--norm-first")["norm_first"] is True
    assert values("--no-norm-first")["norm_first"] is False
    assert "norm_first" not in values() and module.Config().norm_first is False      # the dataclass default
    assert values("--quick")["steps"] == module.QUICK["steps"]
    assert values("--quick", "--steps", "7")["steps"] == 7                            # a flag beats --quick
    with pytest.raises(ValueError, match=r"warmup \(50\) must be < steps \(50\)"):
        module.main(["--steps", "50", "--warmup", "50", "--out", str(tmp_path / "never")])
    with pytest.raises(ValueError, match=r"beam_size \(11\) must be <= vocab_size - 1 = 10"):
        module.main(["--beam-size", "11", "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
