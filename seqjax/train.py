"""Training, the pure part: optimisers, schedules, ``TrainState``, ``train_step``, truncated BPTT, gradient metrics.

The pieces, from the inside out::

    opt = train.make_optimizer("adam", 1e-3, schedule="cosine", total_steps=1000)
    tr = train.trainer(loss_fn, opt, clip_norm=1.0)     # pure functions, no I/O
    state = tr.init(params, jax.random.key(0))
    state, metrics = tr.train_step(state, batch)       # jit it at the call site
    result = train.fit(tr, state, data_fn, num_steps=1000, out_dir="runs/x")

``loss_fn(params, batch, key) -> (loss, metrics)`` is the only thing a model
supplies: a scalar loss and a flat dict of scalar metrics (accuracy, ...). ``key``
is a PRNG key during training (for dropout) and ``None`` in evaluation.

Everything in this module is a pure function of its arguments, usable inside
``jax.jit``, ``jax.vmap`` (e.g. over seeds) and ``lax.scan``. Norms and clipping
are optax's (``optax.tree.norm``, ``optax.clip_by_global_norm``); the gradient
metrics (:func:`global_norm`, :func:`grad_norms_by_path`,
:func:`gradient_statistics`) are pytree reductions returning flat
``{"<prefix>/<path>": value}`` dicts from inside the jitted step.

The side-effecting loop around the step (:func:`fit`, :class:`FitResult`,
:class:`NonFiniteError`, :class:`CheckpointError`, checkpoints, metric files and the
data-parallel helpers :func:`data_mesh`, :func:`shard_batch`, :func:`replicate`)
lives in :mod:`seqjax.loop`; its names are re-exported here, so ``seqjax.train`` is
the one import a user needs.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from seqjax import checks
from seqjax.precision import Policy, accumulation_dtype
from seqjax.types import Array, Carry, Params, PRNGKey

#: Names defined in :mod:`seqjax.loop` and re-exported here on first use.
_LOOP_NAMES = ("data_mesh", "shard_batch", "replicate", "NonFiniteError", "CheckpointError",
               "FitResult", "fit")

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "make_schedule", "make_optimizer",
    "TrainState", "Trainer", "trainer", "truncated_bptt",
    "global_norm", "grad_norms_by_path", "gradient_statistics",
    *_LOOP_NAMES,
]

LossFn = Callable[[Params, Any, "PRNGKey | None"], tuple[Array, Mapping[str, Array]]]


def __getattr__(name: str):
    # The loop imports this module (Trainer, TrainState), so it is loaded lazily.
    if name in _LOOP_NAMES:
        return getattr(importlib.import_module("seqjax.loop"), name)
    raise AttributeError(f"module 'seqjax.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LOOP_NAMES))


# ----------------------------------------------------------------------------- optimisers

#: Optimiser names accepted by :func:`make_optimizer` (each is the optax function of that name).
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adamax", "nadam", "radam",
              "lamb", "lion", "adafactor", "adabelief", "novograd", "yogi")
#: Schedule names accepted by :func:`make_schedule`.
SCHEDULES = ("constant", "linear", "cosine", "warmup_cosine", "exponential")


def _check_lr(learning_rate) -> float:
    return checks.check_float(learning_rate, "learning_rate", minimum=0.0, strict_minimum=True)


def make_schedule(name: str, learning_rate: float, *, total_steps: int | None = None,
                  warmup_steps: int = 0, end_fraction: float = 0.0,
                  decay_rate: float = 0.5) -> optax.Schedule:
    """A learning-rate schedule by name, from optax.

    Args:
      name: ``"constant"``; ``"linear"`` (peak -> ``end_fraction * peak`` over
        ``total_steps``); ``"cosine"`` (cosine decay over ``total_steps``);
        ``"warmup_cosine"`` (linear warm-up over ``warmup_steps`` then cosine decay);
        ``"exponential"`` (``decay_rate`` per ``total_steps``).
      learning_rate: the peak rate, > 0.
      total_steps: needed by every schedule but ``"constant"``, >= 1.
      warmup_steps: for ``"warmup_cosine"``, in [0, total_steps).
      end_fraction: final rate as a fraction of the peak, >= 0.
      decay_rate: for ``"exponential"``, > 0.

    Returns:
      ``schedule(step) -> learning rate``, a scalar.
    """
    lr = _check_lr(learning_rate)
    checks.check_choice(name, "schedule", SCHEDULES)
    if name == "constant":
        return optax.constant_schedule(lr)
    if total_steps is None:
        raise ValueError(f"schedule {name!r} needs total_steps >= 1, got None")
    total_steps = checks.check_int(total_steps, "total_steps")
    end_fraction = checks.check_float(end_fraction, "end_fraction", minimum=0.0)
    if name == "linear":
        return optax.linear_schedule(lr, lr * end_fraction, total_steps)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps, alpha=end_fraction)
    if name == "warmup_cosine":
        warmup_steps = checks.check_int(warmup_steps, "warmup_steps", minimum=0, maximum=total_steps - 1)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps,
                                                  end_value=lr * end_fraction)
    decay_rate = checks.check_float(decay_rate, "decay_rate", minimum=0.0, strict_minimum=True)
    return optax.exponential_decay(lr, total_steps, decay_rate)


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, *, schedule: str = "constant",
                   total_steps: int | None = None, warmup_steps: int = 0,
                   **optimizer_kwargs) -> optax.GradientTransformation:
    """An optax optimiser by name with a schedule by name.

    Gradient clipping is not part of it: :func:`trainer` chains
    ``optax.clip_by_global_norm`` in front of it and reports the norm before clipping.

    Args:
      name: one of :data:`OPTIMIZERS`.
      learning_rate: peak learning rate, > 0.
      schedule: one of :data:`SCHEDULES` (see :func:`make_schedule`).
      total_steps, warmup_steps: for the schedule.
      **optimizer_kwargs: passed to the optax function (e.g. ``b1=0.9``,
        ``weight_decay=1e-4``, ``momentum=0.9``).

    Raises:
      ValueError: unknown optimiser or schedule name, or ``learning_rate <= 0``.
    """
    lr = _check_lr(learning_rate)
    checks.check_choice(name, "optimizer", OPTIMIZERS)
    sched = make_schedule(schedule, lr, total_steps=total_steps, warmup_steps=warmup_steps)
    return getattr(optax, name)(learning_rate=sched, **optimizer_kwargs)


# ----------------------------------------------------------------------------- gradient metrics


def _at_least_float32(tree: Any) -> Any:
    """Leaves promoted to at least float32 (bfloat16 gradients are reduced in float32)."""
    def promote(a):
        a = jnp.asarray(a)
        return a.astype(accumulation_dtype(a.dtype))
    return jax.tree.map(promote, tree)


def global_norm(tree: Any) -> Array:
    r"""Global 2-norm of a pytree, :math:`\sqrt{\sum_\ell \|g_\ell\|^2}`: ``optax.tree.norm``.

    Reduced in at least float32 (bfloat16 leaves are promoted first). Pure: usable
    inside ``jax.jit``. An empty tree has norm 0.

    Returns:
      () float scalar.
    """
    return optax.tree.norm(_at_least_float32(tree))


def _key_name(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def grad_norms_by_path(grads: Any, *, prefix: str = "grads", depth: int | None = None) -> dict[str, Array]:
    r"""2-norms of a gradient pytree's parts, as a flat ``{"<prefix>/<path>": norm}`` dict.

    Paths join the pytree keys with ``/`` (dict keys, list indices, NamedTuple field
    names): ``{"layers": [{"attn": {"w_q": g}}]}`` gives ``"grads/layers/0/attn/w_q"``.
    With ``depth=k``, leaves sharing their first k path components are grouped and
    the group's norm is their :func:`global_norm`, :math:`\sqrt{\sum \|g\|^2}`:
    ``depth=2`` on the example gives one norm per layer, ``"grads/layers/0"``. Pure
    pytree reduction: call it inside the jitted step and return the dict as metrics
    (nanodo style).

    Args:
      grads: any pytree of arrays.
      prefix: the metric-name prefix.
      depth: group by this many leading path components (>= 1); None = every leaf.

    Returns:
      dict from name to a () float scalar, in pytree order.
    """
    if depth is not None:
        depth = checks.check_int(depth, "depth")
    groups: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        path = tuple(_key_name(e) for e in path)
        name = "/".join((prefix,) + (path if depth is None else path[:depth]))
        groups.setdefault(name, []).append(leaf)
    return {name: global_norm(leaves) for name, leaves in groups.items()}


def gradient_statistics(grads: Any, *, prefix: str = "grads", depth: int | None = None) -> dict[str, Array]:
    """Training metrics of a gradient pytree: global norm, max |g|, non-finite count, per-path norms.

    Returns a flat dict of () scalars (pure, jittable):

    - ``"<prefix>/global_norm"``: :func:`global_norm`;
    - ``"<prefix>/max_abs"``: the largest absolute entry;
    - ``"<prefix>/nonfinite"``: the number of NaN/inf entries (int32);
    - ``"<prefix>/<path>"``: :func:`grad_norms_by_path` with ``depth``.
    """
    leaves = jax.tree.leaves(grads)
    stats = {f"{prefix}/global_norm": global_norm(grads)}
    if leaves:
        stats[f"{prefix}/max_abs"] = optax.tree.max(jax.tree.map(jnp.abs, _at_least_float32(leaves)))
        stats[f"{prefix}/nonfinite"] = sum(jnp.sum(~jnp.isfinite(a)).astype(jnp.int32) for a in leaves)
    stats.update(grad_norms_by_path(grads, prefix=prefix, depth=depth))
    return stats


# ----------------------------------------------------------------------------- train step


class TrainState(NamedTuple):
    """Everything a training run carries from step to step.

    Attributes:
      step: () int32, ``train_step`` calls (batches) done so far.
      params: the model's params pytree.
      opt_state: the state of ``Trainer.optimizer`` (the clip chained before the
        optimiser when ``clip_norm`` is set).
      rng: (2,) uint32 raw key data (``jax.random.key_data``); the dropout key of step
        ``s`` is ``fold_in(wrap_key_data(rng), s)``, a pure function of the step.
    """

    step: Array
    params: Params
    opt_state: Any
    rng: Array


class Trainer(NamedTuple):
    """Pure training functions (jit them at the call site; :func:`fit` does).

    Attributes:
      init: ``init(params, key) -> TrainState``.
      train_step: ``train_step(state, batch) -> (state, metrics)``; metrics are ()
        scalars: ``loss``, ``grad_norm`` (global norm before clipping),
        ``grad_norm/<group>`` (per top-level key of a dict of params),
        ``update_norm`` and the loss function's own metrics.
      eval_step: ``eval_step(params, batch) -> metrics`` (``loss`` plus the loss
        function's metrics, with ``key=None``).
      optimizer: the optax transformation applied to the gradients:
        ``optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)`` with
        clipping, else the optimiser itself.
    """

    init: Callable[[Params, PRNGKey], TrainState]
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]
    eval_step: Callable[[Params, Any], dict]
    optimizer: optax.GradientTransformation


def _with_clipping(optimizer, clip_norm) -> optax.GradientTransformation:
    """``optimizer`` behind optax's global-norm clip (Pascanu et al. 2013): g * min(1, c / ||g||)."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    if clip_norm is None:
        return optimizer
    clip_norm = checks.check_float(clip_norm, "clip_norm", minimum=0.0, strict_minimum=True)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def _init_state(optimizer, precision: Policy | None = None):
    def init(params: Params, key: PRNGKey) -> TrainState:
        key = checks.check_key(key)
        raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        if precision is not None:
            params = precision.cast_to_param(params)                # the stored (master) params
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                          jnp.asarray(raw, jnp.uint32))
    return init


def _with_precision(loss_fn: Callable, precision: Policy | None, where: str) -> Callable:
    """``loss_fn(params, *rest)`` under a policy: the params it sees are cast to the compute
    dtype (autodiff returns their gradients in the param dtype), and its loss must be float32
    or wider (a ValueError at trace time otherwise). ``loss_fn`` itself without a policy."""
    if precision is None:
        return loss_fn

    def mixed(params, *rest):
        out = loss_fn(precision.cast_to_compute(params), *rest)
        loss = out[0]
        if accumulation_dtype(loss.dtype) != loss.dtype:
            raise ValueError(f"with precision={precision}, {where} must return a float32 (or wider) loss, got "
                             f"{loss.dtype}: reduce in float32 (seqjax.losses does) or give the model an "
                             "output_dtype of float32")
        return out
    return mixed


def _step_key(state: TrainState) -> PRNGKey:
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def _group_norms(grads) -> dict[str, Array]:
    """``grad_norm/<key>`` for each top-level key of a dict of params (nanodo style)."""
    if isinstance(grads, Mapping):
        return grad_norms_by_path(grads, prefix="grad_norm", depth=1)
    return {}


def _apply_grads(optimizer, state: TrainState, grads, loss, metrics, steps: int = 1):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"loss": loss, "grad_norm": global_norm(grads), **_group_norms(grads),
           "update_norm": global_norm(updates), **metrics}
    return TrainState(state.step + steps, params, opt_state, state.rng), out


def _checked_metrics(metrics, where: str) -> Mapping[str, Array]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{where} must return its metrics as a dict of scalars (may be empty: {{}}), got "
                        f"{type(metrics).__name__}")
    for k, v in metrics.items():
        if getattr(v, "shape", ()) != ():
            raise ValueError(f"{where}'s metric {k!r} must be a scalar, got shape {tuple(v.shape)}")
    return metrics


def _checked_loss(loss, where: str) -> Array:
    if not hasattr(loss, "shape") or loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(f"{where}'s loss must be a floating scalar (shape ()), got "
                         f"{getattr(loss, 'shape', type(loss).__name__)}: reduce it, e.g. with jnp.mean")
    return loss


def _checked_loss_fn(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` with its output checked at trace time: ``(scalar loss, dict of scalars)``."""
    def checked(params, batch, key):
        out = loss_fn(params, batch, key)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError("loss_fn must return (loss, metrics): a scalar and a dict of scalars, e.g. "
                            f"(loss, {{}}); got {type(out).__name__}")
        return _checked_loss(out[0], "loss_fn"), _checked_metrics(out[1], "loss_fn")
    return checked


def _checked_chunk_loss_fn(chunk_loss_fn: ChunkLossFn) -> ChunkLossFn:
    """``chunk_loss_fn`` with its output checked at trace time: ``(loss, (carry, metrics))``."""
    def checked(params, carry, chunk, key):
        out = chunk_loss_fn(params, carry, chunk, key)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
            raise TypeError("chunk_loss_fn must return (loss, (carry, metrics)); got "
                            f"{type(out).__name__}")
        loss, (carry, metrics) = out
        return _checked_loss(loss, "chunk_loss_fn"), (carry, _checked_metrics(metrics, "chunk_loss_fn"))
    return checked


def trainer(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
            clip_norm: float | None = None, precision: Policy | str | None = None) -> Trainer:
    """Pure ``train_step`` / ``eval_step`` for a loss function and an optax optimiser.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` with a () loss
        and a dict of () metrics; ``key`` is None in evaluation.
      optimizer: an optax ``GradientTransformation`` (see :func:`make_optimizer`).
      clip_norm: clip the global gradient norm to this value, > 0, with
        ``optax.clip_by_global_norm`` (None: no clipping). The ``grad_norm`` metric
        is the norm before clipping.
      precision: None (params and loss in whatever dtypes they have), or a mixed-precision
        policy (:mod:`seqjax.precision`): ``init`` casts the params to its param dtype (the
        stored master weights, which the optimiser updates, with their gradients and
        optimiser state in that dtype), ``loss_fn`` receives them cast to its compute
        dtype, and its loss must be float32 or wider (a ValueError otherwise). The batch is
        passed as given: build the model with the same policy (``precision=``) so that it
        casts its inputs and keeps its recurrent carry, softmax and layer-norm statistics
        in float32.

    Returns:
      A :class:`Trainer`.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    precision = checks.check_precision(precision)
    loss_fn = _with_precision(_checked_loss_fn(loss_fn), precision, "loss_fn")
    optimizer = _with_clipping(optimizer, clip_norm)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, _step_key(state))
        return _apply_grads(optimizer, state, grads, loss, metrics)

    def eval_step(params: Params, batch) -> dict:
        loss, metrics = loss_fn(params, batch, None)
        return {"loss": loss, **metrics}

    return Trainer(_init_state(optimizer, precision), train_step, eval_step, optimizer)


# ----------------------------------------------------------------------------- truncated BPTT

ChunkLossFn = Callable[[Params, Carry, Any, "PRNGKey | None"], tuple[Array, tuple[Carry, dict]]]


def _chunks(batch, chunk_length: int):
    """Leaves (B, T, ...) -> (T // K, B, K, ...): the scan axis first."""
    leaves = jax.tree.leaves(batch)
    T = leaves[0].shape[1] if leaves and leaves[0].ndim >= 2 else None
    for leaf in leaves:
        if leaf.ndim < 2 or leaf.shape[1] != T:
            raise ValueError("every batch leaf must have shape (B, T, ...) with the same T; "
                             f"got shapes {[x.shape for x in leaves]}")
    if T % chunk_length:
        raise ValueError(f"the sequence length T = {T} must be a multiple of chunk_length = {chunk_length}")
    n = T // chunk_length

    def split(x):
        x = x.reshape(x.shape[0], n, chunk_length, *x.shape[2:])   # (B, n, K, ...)
        return jnp.moveaxis(x, 1, 0)                                 # (n, B, K, ...)
    return jax.tree.map(split, batch), n


def truncated_bptt(chunk_loss_fn: ChunkLossFn, optimizer: optax.GradientTransformation, *,
                   chunk_length: int, initial_carry: Callable[[Any], Carry],
                   clip_norm: float | None = None, update_every_chunk: bool = False,
                   precision: Policy | str | None = None) -> Trainer:
    r"""Truncated backpropagation through time (Williams & Peng 1990; k1 = k2 = K).

    A batch of long sequences (leaves (B, T, ...), T a multiple of K) is cut into
    T / K chunks. The carry flows forward from chunk to chunk, but gradients stop at
    every chunk boundary (``stop_gradient`` on the incoming carry), so memory and
    the gradient's reach are bounded by K steps. With ``update_every_chunk=False``
    the per-chunk gradients are averaged into one update per batch (and the loss is
    the mean of chunk losses); with ``True`` each chunk is an optimiser step (the
    classic char-RNN scheme; ``state.step`` still counts batches, the optimiser
    state counts updates). When
    K = T there is one chunk and the result equals full BPTT exactly.

    Args:
      chunk_loss_fn: ``f(params, carry, chunk, key) -> (loss, (carry, metrics))``
        on one chunk (leaves (B, K, ...)).
      optimizer: optax transformation.
      chunk_length: K >= 1.
      initial_carry: ``initial_carry(batch) -> carry`` for the first chunk.
      clip_norm: global-norm clipping threshold, > 0, applied with
        ``optax.clip_by_global_norm`` to each update's gradient (None: none).
      update_every_chunk: see above.
      precision: as :func:`trainer` (``chunk_loss_fn`` receives compute-dtype params; the
        carry is passed as the model returns it).

    Returns:
      A :class:`Trainer`; its ``train_step(state, batch)`` starts each batch from
      ``initial_carry(batch)`` and its ``eval_step`` averages chunk losses.
    """
    chunk_length = checks.check_int(chunk_length, "chunk_length")
    update_every_chunk = checks.check_bool(update_every_chunk, "update_every_chunk")
    if not callable(chunk_loss_fn):
        raise TypeError(f"chunk_loss_fn must be callable, got {type(chunk_loss_fn).__name__}")
    precision = checks.check_precision(precision)
    chunk_loss_fn = _with_precision(_checked_chunk_loss_fn(chunk_loss_fn), precision, "chunk_loss_fn")
    optimizer = _with_clipping(optimizer, clip_norm)
    grad_fn = jax.value_and_grad(chunk_loss_fn, has_aux=True)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        chunks, n = _chunks(batch, chunk_length)
        carry0 = initial_carry(batch)
        key = _step_key(state)

        if update_every_chunk:
            def body(c, chunk_i):
                st, carry = c
                chunk, i = chunk_i
                carry = jax.lax.stop_gradient(carry)          # the truncation
                (loss, (carry, m)), g = grad_fn(st.params, carry, chunk, jax.random.fold_in(key, i))
                st, out = _apply_grads(optimizer, st, g, loss, m, steps=0)
                return (st, carry), out
            (state, _), outs = jax.lax.scan(body, (state, carry0), (chunks, jnp.arange(n)))
            return state._replace(step=state.step + 1), jax.tree.map(jnp.mean, outs)

        def body(c, chunk_i):
            carry, gsum = c
            chunk, i = chunk_i
            carry = jax.lax.stop_gradient(carry)              # the truncation
            (loss, (carry, m)), g = grad_fn(state.params, carry, chunk, jax.random.fold_in(key, i))
            return (carry, jax.tree.map(jnp.add, gsum, g)), (loss, m)
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (_, gsum), (losses, ms) = jax.lax.scan(body, (carry0, zeros), (chunks, jnp.arange(n)))
        grads = jax.tree.map(lambda g: g / n, gsum)
        return _apply_grads(optimizer, state, grads, jnp.mean(losses),
                            jax.tree.map(jnp.mean, ms))

    def eval_step(params: Params, batch) -> dict:
        chunks, _ = _chunks(batch, chunk_length)

        def body(carry, chunk):
            loss, (carry, m) = chunk_loss_fn(params, carry, chunk, None)
            return carry, (loss, m)
        _, (losses, ms) = jax.lax.scan(body, initial_carry(batch), chunks)
        return {"loss": jnp.mean(losses), **jax.tree.map(jnp.mean, ms)}

    return Trainer(_init_state(optimizer, precision), train_step, eval_step, optimizer)
