"""The runnable examples the README points at."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hello_lstm_learns_hello(capsys):
    assert load("hello_lstm").main(["--steps", "80"]) == "ello"
    assert "predicted 'ello'" in capsys.readouterr().out
