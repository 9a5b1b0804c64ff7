"""Variable lengths cost no extra loop: ``recurrent.unroll`` with ``lengths`` compiles, forward and
backward, to as many loops over time as without (``seqjax.recurrent._scan``'s docstring). The
semantics of padding are tested in ``test_recurrent.py`` and ``test_fused.py``."""

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_close, randn

from seqjax import cells, recurrent

B, T, E, H = 3, 6, 4, 5


def _loops(layer, params, x, lengths) -> int:
    def loss(p, x):
        return jnp.sum(layer.apply(p, x, lengths=lengths)[0] ** 2)
    return jax.jit(jax.grad(loss)).lower(params, x).compile().as_text().count(" while(")


@pytest.mark.parametrize("backward", ["jvp", "vjp", "autodiff"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lengths_add_no_loop_to_the_gradient(cell, backward):
    layer = recurrent.layer(cells.make(cell, H), num_layers=2, bidirectional=True, backward=backward)
    params = layer.init(jax.random.key(0), E)
    x = randn(0, (B, T, E))
    with_lengths = _loops(layer, params, x, jnp.array([T, 4, 1]))
    assert with_lengths == _loops(layer, params, x, None), (
        "with lengths the gradient has more loops over time than without: the masked scan body's "
        "primal work was split into a loop of its own")


def test_remat_segments_with_lengths_match_the_plain_scan():
    """The segmented (remat) scan shares the masking code: same outputs and gradients."""
    step = cells.make("gru", H).step
    params = cells.make("gru", H).init(jax.random.key(1), E)
    carry = jnp.zeros((B, H))
    xs, lengths = randn(2, (B, T + 1, E)), jnp.array([T + 1, 3, 1])

    def loss(remat, reverse):
        def f(p, xs):
            final, ys = recurrent.unroll(step, p, carry, xs, lengths=lengths, remat=remat, reverse=reverse)
            return jnp.sum(ys ** 2) + jnp.sum(final ** 3)
        return jax.value_and_grad(f, (0, 1))(params, xs)
    for reverse in (False, True):
        want = loss(None, reverse)
        for remat in (2, 3):
            assert_close(loss(remat, reverse), want)
