"""Shared test helpers and fixtures.

Helpers (import them with ``from conftest import randn, randint, assert_close, load_script``):
test data drawn with NumPy (eager ``jax.random`` would compile threefry for every
new shape), a pytree comparison at float32 tolerances (``chex``), hypothesis draws of
lengths and of NaN/Inf padding, a loader for the experiment and benchmark scripts,
which are not a package, and the tiny training set-up that ``test_train.py`` and
``test_loop.py`` share. Fixtures: float64 for analytic oracles, and small Transformer
models.

Property-based tests (``hypothesis``) run under the ``"ci"`` profile registered here:
derandomized (the same examples on every run, so CI is reproducible), no example
database written into the tree, no deadline (the first example of a shape pays for
XLA compilation) and few examples, because every new shape compiles. Set
``HYPOTHESIS_PROFILE=dev`` to search with fresh random examples and more of them.
"""

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple

# The suite is compile-bound (hundreds of small programs, each compiled once), so it asks XLA's
# LLVM backend for no optimisation passes: that cut a compile-heavy sample of it by 20-35% on 2
# cores. It changes how fast the generated code runs, not what it computes (the matmuls still call
# XLA's precompiled kernels, and no fast-math is enabled). Set SEQJAX_TEST_XLA_OPT=1 to run the
# suite on the optimised backend instead. Must run before JAX creates its CPU backend.
if os.environ.get("SEQJAX_TEST_XLA_OPT", "0") == "0":
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
PAD, SOS, EOS = 0, 1, 2        # the special ids of seqjax.tasks
V = 7                          # the vocabulary of the small Transformer fixtures


def randn(seed, shape, dtype=jnp.float32):
    """Standard-normal test data from NumPy, as a JAX array of ``dtype``."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def randint(seed, shape, low, high):
    """Uniform int32 test data in [low, high) from NumPy."""
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape), jnp.int32)


def assert_close(actual, desired, rtol=1e-5, atol=1e-6):
    """Two pytrees with the same structure and leaves equal to float32 rounding (``chex``)."""
    chex.assert_trees_all_close(actual, desired, rtol=rtol, atol=atol)


def draw_lengths(data, batch: int, steps: int, padded_row: bool = False) -> np.ndarray:
    """Hypothesis: (B,) int32 lengths in [1, T]; with ``padded_row`` at least one row is shorter than T."""
    lengths = np.array(data.draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch),
                                 label="lengths"), np.int32)
    if padded_row:
        row = data.draw(st.integers(0, batch - 1), label="padded row")
        lengths[row] = data.draw(st.integers(1, steps - 1), label="its length")
    return lengths


def poison_padding(data, x, lengths, bad: float):
    """Hypothesis: ``x`` (B, T, E) with ``bad`` (NaN, Inf) written at a random non-empty set of
    padded entries (t >= lengths[b]). Returns (the poisoned x, the (B, T) padding mask)."""
    x = np.asarray(x)
    padded = np.arange(x.shape[1])[None, :] >= np.asarray(lengths)[:, None]             # (B, T)
    flags = np.array(data.draw(st.lists(st.booleans(), min_size=x.size, max_size=x.size), label="where"))
    where = padded[..., None] & flags.reshape(x.shape)
    if not where.any():                                                 # at least one poisoned entry
        b = int(np.argmin(lengths))
        where[b, data.draw(st.integers(int(lengths[b]), x.shape[1] - 1), label="t"), 0] = True
    return jnp.asarray(np.where(where, bad, x), x.dtype), padded


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


QUICK_RUNS = pytest.mark.xdist_group("quick_runs")    # `make test` runs --dist loadgroup: one worker


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """``quick_run(name, *argv) -> out``: ``experiments/<name>.py --quick --out <out> *argv``, run once
    per session (checking that it wrote nothing outside ``out``: not docs/figures, no temporaries)
    and shared by every test that asks for the same (name, argv); those tests only read
    the outputs (a replot goes to a fresh folder). Tests using it carry :data:`QUICK_RUNS`, so
    pytest-xdist runs them on one worker and the cache is hit."""
    done: dict[tuple, Path] = {}

    def run(name: str, *argv: str) -> Path:
        key = (name, *argv)
        if key not in done:
            out = tmp_path_factory.mktemp(name) / "out"
            docs = {p.name: p.read_bytes() for p in (ROOT / "docs" / "figures").iterdir()}
            load_script("experiments", name).main(["--quick", "--out", str(out), *argv])
            # experiments write only to --out: `make figures` alone refreshes docs/figures
            assert {p.name: p.read_bytes() for p in (ROOT / "docs" / "figures").iterdir()} == docs, name
            assert not list(out.glob(".*.tmp")), "no temporary files left behind"
            done[key] = out
        return done[key]
    return run


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


# ----------------------------------------------------------------------------- a tiny training set-up


class Parity(NamedTuple):
    """A GRU many-to-many model on running parity, its loss, data and trainer (test_train, test_loop)."""

    model: object
    loss: Callable
    data: Callable
    trainer: object
    fresh_state: Callable


@functools.cache
def parity_setup() -> Parity:
    """Built once per process: one tiny model, so its train step compiles once."""
    from seqjax import losses, models, tasks, train
    model = models.sequence_model(models.SequenceModelConfig(
        cell="gru", hidden_size=8, output_size=2, input_size=1, readout="all"))

    def loss(params, batch, key):
        logits = model.apply(params, batch.x, dropout_key=key)
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.accuracy(logits, batch.y)}

    def data(step):
        return tasks.running_parity(jax.random.fold_in(jax.random.key(7), step), 8, length=6)

    trainer = train.trainer(loss, train.make_optimizer("adam", 2e-2), clip_norm=1.0)
    return Parity(model, loss, data, trainer,
                  lambda: trainer.init(model.init(jax.random.key(0)), jax.random.key(1)))
