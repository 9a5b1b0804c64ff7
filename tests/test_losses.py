"""seqjax.losses: cross-entropy, accuracy and MSE against oracles, with checked labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PAD, V, randint, randn

from seqjax import losses


def test_label_smoothed_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch", reason="the loss oracle is torch.nn.functional.cross_entropy")
    logits = randn(0, (3, 4, V))
    targets = randint(1, (3, 4), 0, V).at[0, 2:].set(PAD)
    for eps in (0.0, 0.1):
        want = torch.nn.functional.cross_entropy(
            torch.tensor(np.asarray(logits)).reshape(-1, V),
            torch.tensor(np.asarray(targets), dtype=torch.long).reshape(-1),
            ignore_index=PAD, label_smoothing=eps)
        got = losses.cross_entropy(logits, targets, label_smoothing=eps, ignore_id=PAD)
        assert float(got) == pytest.approx(want.item(), rel=1e-5)
    # padding contributes no gradient
    g = jax.grad(lambda l: losses.cross_entropy(l, targets, label_smoothing=0.1, ignore_id=PAD))(logits)
    np.testing.assert_array_equal(g[0, 2:], 0.0)


def test_mask_and_ignore_id_select_the_same_entries():
    logits = randn(2, (3, 5, V))
    targets = randint(3, (3, 5), 0, V)
    mask = targets != 4
    a = losses.cross_entropy(logits, targets, mask=mask)
    b = losses.cross_entropy(logits, targets, ignore_id=4)
    logp = jax.nn.log_softmax(logits)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]
    want = nll[np.asarray(mask)].mean()
    assert float(a) == pytest.approx(want, rel=1e-6) and float(b) == pytest.approx(want, rel=1e-6)
    acc = losses.accuracy(logits, targets, mask=mask)
    hits = (np.asarray(jnp.argmax(logits, -1)) == np.asarray(targets))[np.asarray(mask)]
    assert float(acc) == pytest.approx(hits.mean())
    # nothing counted: 0, not NaN
    assert float(losses.cross_entropy(logits, targets, mask=jnp.zeros((3, 5), bool))) == 0.0


def test_mse_with_and_without_mask():
    p, t = randn(4, (4, 3)), randn(5, (4, 3))
    assert float(losses.mse(p, t)) == pytest.approx(float(jnp.mean((p - t) ** 2)), rel=1e-6)
    mask = jnp.array([[1, 0, 1]] * 4, bool)
    want = float(jnp.sum(((p - t) ** 2) * mask) / 8)
    assert float(losses.mse(p, t, mask=mask)) == pytest.approx(want, rel=1e-6)


def test_labels_are_checked():
    logits = jnp.zeros((2, 3, V))
    for bad in (jnp.full((2, 3), V), jnp.full((2, 3), -1)):
        for fn in (losses.cross_entropy, losses.accuracy):
            with pytest.raises(ValueError, match=r"targets must lie in \[0, vocab_size\) = \[0, 7\)"):
                fn(logits, bad.astype(jnp.int32))
    with pytest.raises(ValueError, match="targets must have shape"):
        losses.cross_entropy(logits, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="targets must be integer token ids"):
        losses.cross_entropy(logits, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        losses.cross_entropy(logits, jnp.zeros((2, 3), jnp.int32), label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
        losses.cross_entropy(logits, jnp.zeros((2, 3), jnp.int32), mask=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="predictions and targets must have the same shape"):
        losses.mse(jnp.zeros((2, 3)), jnp.zeros((3,)))
