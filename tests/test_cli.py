"""Every experiment script refuses a bad value of each numeric flag, naming the flag, and
leaves its --out directory exactly as it was; a refused --resume changes no file."""

import argparse

import pytest
from conftest import load_script

SCRIPTS = ("char_lm", "clipping", "gradient_norms", "layernorm_placement", "long_range", "spectral_sweep",
           "transformer_copy", "hello_lstm", "attention_bottleneck", "task_types", "attention_maps", "scaling")


def _numeric_flags(module) -> list[tuple[str, type]]:
    """The script's numeric flags, read off its parser (built by running main on --help)."""
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = spy
    try:
        with pytest.raises(SystemExit):
            module.main([])
    finally:
        argparse.ArgumentParser.parse_args = original
    flags = []
    for action in captured["parser"]._actions:
        kind = getattr(action.type, "__name__", None)
        if action.option_strings and kind in ("int", "float"):
            flags.append((action.option_strings[0], int if kind == "int" else float))
    return flags


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_refuses_a_bad_value_and_touches_nothing(name, tmp_path, capsys):
    module = load_script("experiments", name)
    flags = _numeric_flags(module)
    assert flags, f"{name} has no numeric flags?"
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    before = _snapshot(out)
    fresh = tmp_path / "never_created"
    for flag, kind in flags:
        for bad in (["-3"] if kind is int else ["-1.5", "nan"]):
            for target in (out, fresh):
                argv = [flag, bad, "--out", str(target)] if name != "hello_lstm" else [flag, bad]
                with pytest.raises(SystemExit) as exc:
                    module.main(argv)
                assert exc.value.code == 2, (flag, bad)
                err = capsys.readouterr().err
                assert flag in err or flag.lstrip("-").replace("-", "_") in err, (flag, bad, err)
                assert _snapshot(out) == before
                assert not fresh.exists()


@pytest.mark.parametrize("name", ["long_range", "char_lm"])
def test_a_refused_resume_leaves_every_file_as_it_was(name, tmp_path):
    module = load_script("experiments", name)
    out = tmp_path / "run"
    (out / "runs" / "a" / "checkpoints" / "10").mkdir(parents=True)
    (out / "config.json").write_text('{"seed": 0}\n')
    before = _snapshot(out)
    with pytest.raises(ValueError, match="different config"):
        module.main(["--quick", "--seed", "1", "--resume", "--out", str(out)])
    assert _snapshot(out) == before
    with pytest.raises(ValueError, match="already holds checkpoints"):
        module.main(["--quick", "--seed", "1", "--out", str(out)])
    assert _snapshot(out) == before
