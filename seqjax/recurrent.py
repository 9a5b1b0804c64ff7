"""The one scan that owns time, and recurrent layers built on it.

:func:`unroll` runs any step function over a sequence with ``jax.lax.scan``;
:func:`static_unroll` is the same contract as a Python loop, kept as the test
reference. :func:`layer` turns any :class:`~seqjax.cells.Cell` into a multi-layer,
optionally bidirectional, variable-length layer with PyTorch's output layout::

    layer = recurrent.layer(cells.lstm(128), num_layers=2, bidirectional=True)
    params = layer.init(key, input_size=32)
    outputs, final = layer.apply(params, x, lengths=lengths)
    # outputs (B, T, 2*128), zero at padded steps
    # final   LSTMState(h=(2*2, B, 128), c=(2*2, B, 128)), layer-major, forward first

Variable lengths follow ``pack_padded_sequence(..., enforce_sorted=False)``:
sequences are right-padded, the final state of each sequence is its state at its
own last valid step, the reverse direction starts there, and nothing in the padding
can change any valid output (the gradient of valid outputs w.r.t. padded inputs is
exactly zero).

``layer(..., fused_backward=True)`` swaps autodiff of the scan for a hand-written
backward pass (``jax.custom_vjp``, in the private ``seqjax._fused``): the backward
scan only carries dh (and dc) and emits the gate gradients; dW_ih, dW_hh, the
biases and dx are then one large matmul each over all T*B rows, as cuDNN does.
Same forward, same padding semantics, gradients equal to autodiff's up to float
rounding; faster reverse mode (``benchmarks/results/recurrent.md``), but no
forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``).

Measured layout choice: ``x_t @ W_ih`` is computed inside each step: on XLA:CPU
hoisting it out of the scan measured 1.6-1.9x slower for LSTM/GRU forward+backward
at B=32, T=128, I=128, H=256 (``benchmarks/results/input_projection.md``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _fused
from seqjax.cells import Cell, LSTMState
from seqjax.types import Array, Carry, DType, Params, PRNGKey

__all__ = ["unroll", "static_unroll", "Recurrent", "RecurrentConfig", "layer", "validate_lengths", "carry_dtype"]

StepFn = Callable[[Params, Carry, Any], tuple[Carry, Any]]


def _time_mask(valid: Array, leaf: Array) -> Array:
    """Broadcast a batch-shaped boolean to a leaf of shape (*batch, ...)."""
    return valid.reshape(valid.shape + (1,) * (leaf.ndim - valid.ndim))


def _masked(step: StepFn, lengths: Array | None) -> Callable:
    """The scan body: one step, with padded steps (t >= lengths) made no-ops.

    At a padded step the carry is passed through unchanged and the output is zero,
    through ``jnp.where`` (a select), so padded inputs receive exactly zero
    gradient from valid outputs and the final carry is the last valid state.
    """
    def body(params, carry, t_x):
        t, x = t_x
        new_carry, y = step(params, carry, x)
        if lengths is None:
            return new_carry, y
        valid = t < lengths                                        # (*batch,)
        new_carry = jax.tree.map(lambda n, o: jnp.where(_time_mask(valid, n), n, o),
                                 new_carry, carry)
        y = jax.tree.map(lambda a: jnp.where(_time_mask(valid, a), a, jnp.zeros_like(a)), y)
        return new_carry, y
    return body


def _to_time_major(xs, time_major: bool):
    return xs if time_major else jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), xs)


def _num_steps(xs, time_major: bool) -> int:
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError("xs must contain at least one array")
    axis = 0 if time_major else 1
    for leaf in leaves:
        if leaf.ndim <= axis:
            raise ValueError(f"every leaf of xs needs a time axis {axis}; got shape {leaf.shape}")
    return leaves[0].shape[axis]


def unroll(step: StepFn, params: Params, carry: Carry, xs: Any, *,
           lengths: Array | None = None, reverse: bool = False, time_major: bool = False,
           unroll: int = 1) -> tuple[Carry, Any]:
    """Run ``step`` over time with ``jax.lax.scan``: the only loop over time in seqjax.

    Args:
      step: ``step(params, carry, x_t) -> (carry, y_t)``, e.g. ``cell.step``. It is a
        static argument of the jitted scan: pass the same function object each time
        (``cell.step``, or one built once per cell and cached) and put every array it
        needs in ``params``, ``carry`` or ``xs``. A fresh closure per call compiles
        anew in eager mode, and the jit cache keeps it alive with everything it captures.
      params: passed to every step unchanged.
      carry: the initial carry, leaves (B, ...) (any batch shape).
      xs: a pytree of arrays with the time axis at 1 (batch-major, (B, T, ...)) or,
        with ``time_major=True``, at 0 ((T, B, ...)).
      lengths: optional (B,) ints: steps t >= lengths[b] are padding. Their outputs
        are zero and they leave the carry unchanged.
      reverse: run from the last step to the first (outputs stay in input order).
        With ``lengths``, the reverse pass starts at each sequence's last valid step.
      time_major: the layout of ``xs`` and of the returned outputs.
      unroll: passed to ``lax.scan``.

    Returns:
      ``(final_carry, ys)``: the carry after the last (valid) step and the stacked
      per-step outputs in the layout of ``xs``.
    """
    _num_steps(xs, time_major)
    carry, ys = _scan(step, params, carry, _to_time_major(xs, time_major), lengths, reverse, unroll)
    return carry, _to_time_major(ys, time_major)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _scan(step, params, carry, xs_tm, lengths, reverse, unroll):
    """The scan itself, jitted with ``step`` static so that eager calls with the same
    cell and shapes reuse one compilation (under an outer jit it is simply inlined).
    The cache is keyed on (and holds) ``step``: steps must not close over arrays."""
    body = _masked(step, lengths)
    T = jax.tree.leaves(xs_tm)[0].shape[0]
    return jax.lax.scan(lambda c, tx: body(params, c, tx), carry, (jnp.arange(T), xs_tm),
                        reverse=reverse, unroll=unroll)


def static_unroll(step: StepFn, params: Params, carry: Carry, xs: Any, *,
                  lengths: Array | None = None, reverse: bool = False,
                  time_major: bool = False) -> tuple[Carry, Any]:
    """:func:`unroll` as a Python loop over time: the reference the tests compare to."""
    T = _num_steps(xs, time_major)
    body = _masked(step, lengths)
    xs_tm = _to_time_major(xs, time_major)
    ys = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        carry, ys[t] = body(params, carry, (jnp.asarray(t), jax.tree.map(lambda a: a[t], xs_tm)))
    ys = jax.tree.map(lambda *a: jnp.stack(a), *ys)
    return carry, _to_time_major(ys, time_major)


# ----------------------------------------------------------------------------- layers


class RecurrentConfig(NamedTuple):
    """Static facts of a layer: its cell, depth, directions, dropout rate, and
    whether the hand-written backward pass is used (see :func:`layer`)."""

    cell: Cell
    num_layers: int
    bidirectional: bool
    dropout: float
    fused_backward: bool = False

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1


class Recurrent(NamedTuple):
    """A recurrent layer: pure functions over a params pytree.

    Params layout: ``{"layers": [{"forward": cell_params, "backward": cell_params}, ...]}``
    (``"backward"`` only when bidirectional). Layer 0 takes E inputs; layer k > 0
    takes ``num_directions * H``.

    Attributes:
      init: ``init(key, input_size, dtype=float32) -> params``.
      apply: ``apply(params, x, *, lengths=None, initial_carry=None, dropout_key=None,
        deterministic=False) -> (outputs, final)``; see :func:`layer`.
      initial_carry: ``initial_carry(batch_size, dtype=float32) -> final-layout zeros``.
      config: the :class:`RecurrentConfig`.
    """

    init: Callable[..., Params]
    apply: Callable[..., tuple[Array, Carry]]
    initial_carry: Callable[..., Carry]
    config: RecurrentConfig


def validate_lengths(lengths, batch_size: int, T: int, name: str = "lengths") -> Array:
    """Check a (B,) integer lengths array; values are checked when they are concrete.

    Under ``jax.jit`` the values are tracers and only shape and dtype are checked.
    """
    lengths = jnp.asarray(lengths) if not isinstance(lengths, jax.Array) else lengths
    if lengths.shape != (batch_size,):
        raise ValueError(f"{name} must have shape (B,) = ({batch_size},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{name} must be integers, got dtype {lengths.dtype}")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.size and (values.min() < 1 or values.max() > T):
            raise ValueError(f"{name} must lie in [1, T] = [1, {T}], "
                             f"got min {values.min()} and max {values.max()}")
    return lengths


def carry_dtype(cell_params: Params, x: Array) -> jnp.dtype:
    """The dtype a recurrence over ``x`` with ``cell_params`` carries: the promotion of
    the input and recurrent-weight dtypes (bfloat16 inputs with float32 weights carry
    float32), so that the scan's carry keeps one dtype from step to step."""
    return jnp.result_type(x.dtype, cell_params["w_hh"].dtype)


def _final_layout(cell: Cell, finals: list) -> Carry:
    """Per-(layer, direction) carries (B, H) -> PyTorch's (L*D, B, H) stack."""
    return jax.tree.map(lambda *a: jnp.stack(a), *finals)


def _split_initial(initial_carry: Carry, index: int) -> Carry:
    return jax.tree.map(lambda a: a[index], initial_carry)


def layer(cell: Cell, *, num_layers: int = 1, bidirectional: bool = False,
          dropout: float = 0.0, fused_backward: bool = False) -> Recurrent:
    """A multi-layer, optionally bidirectional, variable-length recurrent layer.

    Args:
      cell: any :class:`~seqjax.cells.Cell` (``cells.lstm(64)``, ``cells.make("gru", 64)``).
      num_layers: stacked layers L >= 1.
      bidirectional: also run each layer from the end; outputs concatenate
        [forward, backward] on the feature axis.
      dropout: rate in [0, 1) applied to the outputs of every layer but the last,
        as ``torch.nn.LSTM(dropout=...)`` does in training mode.
      fused_backward: run each (layer, direction) through a scan with a
        hand-written backward pass (``jax.custom_vjp``): the backward scan only
        carries dh (and dc) and emits gate gradients, then dW_ih, dW_hh, the biases
        and dx are one matmul each after the loop (cuDNN's scheme). Same outputs and
        padding semantics; gradients equal autodiff's up to float rounding; faster
        reverse mode (measured in ``benchmarks/results/recurrent.md``). Forward-mode
        differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) through the
        layer is NOT supported with it (a TypeError); second derivatives by reverse
        mode or ``jax.hessian`` still work (JAX differentiates the hand-written
        backward, which is plain JAX). Supported cells:
        ``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``, ``"rnn_linear"``
        (by ``cell.name``); any other cell raises ValueError here.

    Returns:
      A :class:`Recurrent` whose ``apply(params, x, *, lengths=None,
      initial_carry=None, dropout_key=None, deterministic=False)`` maps

      - ``x`` (B, T, E), floating, batch-major;
      - ``lengths`` (B,) ints in [1, T], right padding;
      - ``initial_carry``: the final-state layout, (L*D, B, H) (an ``LSTMState`` of
        two such arrays for LSTM); zeros by default;
      - ``dropout_key``: needed when ``dropout > 0`` unless ``deterministic=True``;

      to ``(outputs, final)``: outputs (B, T, D*H), zero at padded steps, and the
      final state in the layout of ``initial_carry``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax.cells.Cell (e.g. cells.lstm(64)), got {type(cell).__name__}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(fused_backward, (bool, np.bool_)):
        raise TypeError(f"fused_backward must be a bool, got {fused_backward!r}")
    if fused_backward and cell.name not in _fused.SUPPORTED_CELLS:
        raise ValueError(f"fused_backward=True supports the cells {list(_fused.SUPPORTED_CELLS)} "
                         f"(by cell.name), got a cell named {cell.name!r}; use fused_backward=False")
    config = RecurrentConfig(cell, num_layers, bool(bidirectional), dropout, bool(fused_backward))
    directions = ("forward", "backward") if bidirectional else ("forward",)
    H = cell.hidden_size
    ND = len(directions)

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        keys = jax.random.split(key, num_layers * ND).reshape(num_layers, ND)
        layers = []
        for k in range(num_layers):
            in_size = input_size if k == 0 else ND * H
            layers.append({d: cell.init(keys[k, j], in_size, dtype) for j, d in enumerate(directions)})
        return {"layers": layers}

    def initial_carry(batch_size: int, dtype: DType = jnp.float32) -> Carry:
        zeros = cell.initial_carry((num_layers * ND, batch_size), dtype)
        return zeros

    def _check(params: Params, x, lengths, carry0):
        if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
            raise TypeError(f"x must be an array of shape (B, T, E), got {type(x).__name__}")
        if x.ndim != 3:
            raise ValueError(f"x must have shape (B, T, E) (rank 3), got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be floating (float32, bfloat16, float64), got dtype {x.dtype}; "
                            "embed integer tokens first")
        try:
            E = params["layers"][0]["forward"]["w_ih"].shape[0]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError("params do not have the layout layer.init returns "
                             "({'layers': [{'forward': ...}, ...]})") from err
        if len(params["layers"]) != num_layers:
            raise ValueError(f"params has {len(params['layers'])} layers, the layer has {num_layers}")
        B, T, _ = x.shape
        if x.shape[-1] != E:
            raise ValueError(f"x has {x.shape[-1]} features (shape {x.shape}) but params were "
                             f"initialised for input_size={E}")
        if T < 1:
            raise ValueError(f"x must have at least one time step, got shape {x.shape}")
        if lengths is not None:
            lengths = validate_lengths(lengths, B, T)
        if carry0 is not None:
            expected = (num_layers * ND, B, H)
            ref = cell.initial_carry((num_layers * ND, B))
            if jax.tree.structure(carry0) != jax.tree.structure(ref):
                raise ValueError(f"initial_carry must have the structure {jax.tree.structure(ref)}, "
                                 f"got {jax.tree.structure(carry0)}")
            dtype = carry_dtype(params["layers"][0]["forward"], x)
            for leaf in jax.tree.leaves(carry0):
                if tuple(leaf.shape) != expected:
                    raise ValueError(f"initial_carry leaves must have shape (L*D, B, H) = {expected}, "
                                     f"got {tuple(leaf.shape)}")
                if leaf.dtype != dtype:
                    raise TypeError(f"initial_carry must have dtype {dtype} (the promotion of x's {x.dtype} "
                                    f"and the params' {params['layers'][0]['forward']['w_hh'].dtype}), "
                                    f"got {leaf.dtype}")
        return lengths

    def apply(params: Params, x: Array, *, lengths: Array | None = None,
              initial_carry: Carry | None = None, dropout_key: PRNGKey | None = None,
              deterministic: bool = False) -> tuple[Array, Carry]:
        lengths = _check(params, x, lengths, initial_carry)
        use_dropout = dropout > 0.0 and not deterministic and num_layers > 1
        if use_dropout and dropout_key is None:
            raise ValueError(f"dropout={dropout} needs dropout_key=jax.random.key(...), "
                             "or deterministic=True to switch it off (evaluation)")
        B = x.shape[0]
        if initial_carry is None:
            initial_carry = cell.initial_carry((num_layers * ND, B), carry_dtype(params["layers"][0]["forward"], x))
        finals = []
        h = x
        for k in range(num_layers):
            outs = []
            for j, d in enumerate(directions):
                c0 = _split_initial(initial_carry, k * ND + j)
                if fused_backward:
                    final, ys = _fused.fused_unroll(cell.name, params["layers"][k][d], c0, h,
                                                    lengths=lengths, reverse=(d == "backward"))
                else:
                    final, ys = unroll(cell.step, params["layers"][k][d], c0, h,
                                       lengths=lengths, reverse=(d == "backward"))
                finals.append(final)
                outs.append(ys)
            h = outs[0] if ND == 1 else jnp.concatenate(outs, axis=-1)   # (B, T, ND*H)
            if use_dropout and k < num_layers - 1:
                keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, k), 1.0 - dropout, h.shape)
                h = jnp.where(keep, h / (1.0 - dropout), jnp.zeros_like(h))
        return h, _final_layout(cell, finals)

    return Recurrent(init, apply, initial_carry, config)
