"""Shared test helpers and fixtures.

Helpers (import them with ``from conftest import randn, randint, load_script``):
test data drawn with NumPy (eager ``jax.random`` would compile threefry for every
new shape) and a loader for the experiment and benchmark scripts, which are not a
package. Fixtures: float64 for analytic oracles, and small Transformer models.
"""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAD, SOS, EOS = 0, 1, 2        # the special ids of seqjax.tasks
V = 7                          # the vocabulary of the small Transformer fixtures


def randn(seed, shape, dtype=jnp.float32):
    """Standard-normal test data from NumPy, as a JAX array of ``dtype``."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def randint(seed, shape, low, high):
    """Uniform int32 test data in [low, high) from NumPy."""
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape), jnp.int32)


def load_script(folder: str, name: str):
    """Import ``<repo>/<folder>/<name>.py`` (an experiment or benchmark script) as a module."""
    path = ROOT / folder / f"{name}.py"
    if folder == "benchmarks" and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))           # benchmarks import their _common module
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                    # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def x64():
    """Enable float64 for one test (analytic oracles), then restore float32 defaults."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _seq2seq(norm_first):
    from seqjax import transformer as T
    cfg = T.TransformerConfig(V, V, model_size=8, num_heads=2, ff_size=16, num_encoder_layers=2,
                              num_decoder_layers=2, max_len=12, norm_first=norm_first,
                              positional="learned" if norm_first else "sinusoidal",
                              tie_embeddings=not norm_first)
    model = T.transformer(cfg)
    params = model.init(jax.random.key(0))
    return model, params, randint(1, (3, 6), 3, V), randint(2, (3, 5), 1, V)


@pytest.fixture(scope="module")
def seq2seq():
    """(model, params, src (3, 6), tgt (3, 5)): Post-LN, sinusoidal positions, tied output."""
    return _seq2seq(False)


@pytest.fixture(scope="module", params=[False, True], ids=["post_ln", "pre_ln"])
def both(request):
    """Post-LN as ``seq2seq``, and Pre-LN with learned positions and an untied output projection."""
    return _seq2seq(request.param)


@pytest.fixture(scope="module")
def lm():
    """(model, params): a small decoder-only Transformer LM, max_len 12."""
    from seqjax import transformer as T
    model = T.decoder_only(T.DecoderOnlyConfig(V, model_size=8, num_heads=2, ff_size=16, num_layers=2,
                                               max_len=12))
    return model, model.init(jax.random.key(3))
