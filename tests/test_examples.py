"""The runnable examples the README points at."""

import pytest
from conftest import load_script


@pytest.mark.slow
def test_hello_lstm_learns_hello(capsys):
    assert load_script("experiments", "hello_lstm").main(["--steps", "80"]) == "ello"
    assert "predicted 'ello'" in capsys.readouterr().out
