"""Shared fixtures: float64 for analytic oracles, restored afterwards."""

import jax
import pytest


@pytest.fixture
def x64():
    """Enable float64 for one test (analytic oracles), then restore float32 defaults."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
