r"""Losses and metrics, written once: cross-entropy, accuracy, mean squared error.

Every function takes an optional ``mask`` (True or 1 = counted) and returns the
mean over the counted entries (0 when none is counted), reduced in at least
float32 (:func:`seqjax.precision.accumulation_dtype`: the loss of a bfloat16 model is float32). Labels are checked: out-of-range class ids raise ``ValueError`` when they
are concrete, because a gather would silently clamp them (or wrap -1 to the last
class).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax import checks
from seqjax.precision import accumulation_dtype
from seqjax.types import Array

__all__ = ["cross_entropy", "accuracy", "mse"]


def _weights(shape: tuple[int, ...], dtype, mask: Array | None, targets: Array | None,
             ignore_id: int | None) -> Array:
    """(...) weights: ``mask`` AND ``targets != ignore_id``, as ``dtype``."""
    w = jnp.ones(shape, dtype)
    if mask is not None:
        checks.check_array(mask, "mask", None, str(shape), kind=None)
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(f"mask must have shape {tuple(shape)} (the targets' shape), "
                             f"got {tuple(mask.shape)}")
        w = w * mask.astype(dtype)
    if ignore_id is not None:
        w = w * (targets != ignore_id).astype(dtype)
    return w


def _mean(values: Array, weights: Array) -> Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _check_targets(logits, targets, name: str = "targets") -> Array:
    checks.check_array(logits, "logits", tuple(range(1, 8)), "(..., V)")
    if not hasattr(targets, "shape") or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{name} must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
                         f"got {tuple(getattr(targets, 'shape', ()))}")
    return checks.check_tokens(targets, logits.shape[-1], name, (targets.ndim,))


def cross_entropy(logits: Array, targets: Array, *, mask: Array | None = None,
                  ignore_id: int | None = None, label_smoothing: float = 0.0) -> Array:
    r"""Mean (label-smoothed) cross-entropy in nats over the counted targets.

    With smoothing :math:`\epsilon` and V classes the target distribution is
    :math:`(1-\epsilon)\,\mathrm{onehot}(y) + \epsilon / V` (Szegedy et al. 2016;
    ``torch.nn.functional.cross_entropy(label_smoothing=eps, ignore_index=...)``):

    .. math::
        \ell = (1 - \epsilon)(-\log p_y) + \frac{\epsilon}{V}\sum_v (-\log p_v)

    Args:
      logits: (..., V) float, e.g. (B, S, V).
      targets: (...) int class ids in [0, V), e.g. (B, S).
      mask: optional (...) bool or 0/1: which targets count.
      ignore_id: targets equal to it (padding, e.g. ``tasks.PAD``) do not count.
      label_smoothing: epsilon in [0, 1).

    Returns:
      () the mean over counted targets (0 when there are none).
    """
    targets = _check_targets(logits, targets)
    eps = checks.check_rate(label_smoothing, "label_smoothing")
    logp = jax.nn.log_softmax(logits.astype(accumulation_dtype(logits.dtype)), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    loss = (1.0 - eps) * nll + eps * (-jnp.mean(logp, axis=-1)) if eps else nll
    return _mean(loss, _weights(loss.shape, loss.dtype, mask, targets, ignore_id))


def accuracy(logits: Array, targets: Array, *, mask: Array | None = None,
             ignore_id: int | None = None) -> Array:
    """Fraction of ``argmax(logits)`` (..., V) equal to ``targets`` (...), over the counted entries."""
    targets = _check_targets(logits, targets)
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return _mean(hit, _weights(hit.shape, hit.dtype, mask, targets, ignore_id))


def mse(predictions: Array, targets: Array, *, mask: Array | None = None) -> Array:
    """Mean squared error over the counted entries; predictions and targets of one shape."""
    checks.check_array(predictions, "predictions", None, "(...)")
    checks.check_array(targets, "targets", None, "(...)")
    if tuple(predictions.shape) != tuple(targets.shape):
        raise ValueError(f"predictions and targets must have the same shape, got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
    acc = accumulation_dtype(predictions.dtype)
    err = jnp.square(predictions.astype(acc) - targets.astype(acc))
    return _mean(err, _weights(err.shape, err.dtype, mask, None, None))
