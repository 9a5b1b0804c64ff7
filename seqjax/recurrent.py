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

How a layer is differentiated is ``layer(..., backward=...)`` (:data:`BACKWARDS`; the
rules live in the private ``seqjax._fused``). The default, ``"jvp"``, gives each
(layer, direction) a ``jax.custom_jvp`` built from the cell's pieces: JAX transposes
it into cuDNN's backward pass (a backward scan that only carries dh, and dc, then
dW_ih, dW_hh, the biases and dx as one large matmul each over all T*B rows), and
forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) keeps working.
``"vjp"`` (also spelled ``fused_backward=True``) is the same backward written as a
``jax.custom_vjp`` (reverse mode only); ``"autodiff"`` differentiates the scan as
written. Same forward, same padding semantics, gradients equal up to float rounding;
measured in ``benchmarks/results/fast_path.md``. Cells without a hand-written
derivative (``cell.pointwise_backward is None``, e.g. ``"orthogonal"``) default to
``"autodiff"``.

``layer(...).apply(..., perturbations=...)`` is the hook of gradient analysis: it
adds a given (B, T, H) perturbation to every (layer, direction, step) carry
(:func:`perturbed_step`), so :func:`seqjax.gradients.state_gradients` differentiates
this module's own layer x direction loop instead of a copy of it.

Measured layout choice: ``x_t @ W_ih`` is computed inside each step: on XLA:CPU
hoisting it out of the scan measured 1.2-1.9x slower for LSTM/GRU forward+backward (two runs)
at B=32, T=128, I=128, H=256 (``benchmarks/results/input_projection.md``), and still
slower inside the ``"jvp"`` path (``benchmarks/results/fast_path.md``: the hoisted
product writes a fresh (T*B, G*H) array and a separate bias pass, where the in-step
product's (B, G*H) output stays in cache).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import checks, layers
from seqjax.cells import Cell
from seqjax.precision import Policy
from seqjax.types import Array, Carry, DType, Params, PRNGKey

__all__ = ["unroll", "static_unroll", "perturbed_step", "Recurrent", "RecurrentConfig", "layer",
           "carry_dtype", "BACKWARDS"]

StepFn = Callable[[Params, Carry, Any], tuple[Carry, Any]]

#: How :func:`layer` can differentiate a recurrence: ``"jvp"`` (a ``jax.custom_jvp`` that JAX
#: transposes into cuDNN's backward; forward mode works; the default for every cell with a
#: hand-written derivative), ``"vjp"`` (the same backward as a ``jax.custom_vjp``; reverse mode
#: only) and ``"autodiff"`` (the scan as written; every cell).
BACKWARDS = ("jvp", "vjp", "autodiff")


def _time_mask(valid: Array, leaf: Array) -> Array:
    """Broadcast a batch-shaped boolean to a leaf of shape (*batch, ...)."""
    return valid.reshape(valid.shape + (1,) * (leaf.ndim - valid.ndim))


def _masked(step: StepFn, lengths: Array | None) -> Callable:
    """The scan body: one step, with padded steps (t >= lengths) made no-ops.

    At a padded step the carry is passed through unchanged and the output is zero,
    through ``jnp.where`` (a select), so padded inputs receive exactly zero
    gradient from valid outputs and the final carry is the last valid state.

    The padded input is also replaced by zeros *before* the step (the "double
    where"): otherwise a NaN or Inf in the padding makes the discarded step's
    partial derivatives NaN, and the zero cotangent the select sends back times
    NaN is NaN, which would reach every parameter's gradient.
    """
    def body(params, carry, t_x):
        t, x = t_x
        if lengths is None:
            return step(params, carry, x)
        valid = t < lengths                                        # (*batch,)
        x = jax.tree.map(lambda a: jnp.where(_time_mask(valid, a), a, jnp.zeros_like(a)), x)
        new_carry, y = step(params, carry, x)
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


def _check_unroll(carry, xs, lengths, time_major: bool):
    """T from xs; the carry's and lengths' batch size B against xs's; lengths by the one rule."""
    T = _num_steps(xs, time_major)
    B = jax.tree.leaves(xs)[0].shape[1 if time_major else 0]
    for leaf in jax.tree.leaves(xs):
        if leaf.shape[1 if time_major else 0] != B:
            raise ValueError(f"every leaf of xs must have the same batch size; got shapes "
                             f"{[tuple(a.shape) for a in jax.tree.leaves(xs)]}")
    for leaf in jax.tree.leaves(carry):
        if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] != B:
            raise ValueError(f"the carry's leaves must have batch size B={B} (the batch of xs), "
                             f"got a leaf of shape {tuple(leaf.shape)}")
    if lengths is not None:
        lengths = checks.check_lengths(lengths, B, T)
    return T, lengths


def unroll(step: StepFn, params: Params, carry: Carry, xs: Any, *,
           lengths: Array | None = None, reverse: bool = False, time_major: bool = False,
           unroll: int = 1, remat: int | None = None) -> tuple[Carry, Any]:
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
      lengths: optional (B,) ints in [1, T] (:func:`seqjax.checks.check_lengths`; values
        checked when concrete): steps t >= lengths[b] are padding. Their outputs are
        zero, they leave the carry unchanged, and their inputs are never read (a NaN
        there cannot reach any output or gradient).
      reverse: run from the last step to the first (outputs stay in input order).
        With ``lengths``, the reverse pass starts at each sequence's last valid step.
      time_major: the layout of ``xs`` and of the returned outputs.
      unroll: passed to ``lax.scan``.
      remat: None, or K >= 1: rematerialise in segments of K steps (``jax.checkpoint``),
        so reverse-mode memory is O(T/K + K) states instead of O(T); same values and
        gradients. K near sqrt(T) minimises memory; each step is computed twice.

    Returns:
      ``(final_carry, ys)``: the carry after the last (valid) step and the stacked
      per-step outputs in the layout of ``xs``.
    """
    _, lengths = _check_unroll(carry, xs, lengths, time_major)
    checks.check_int(unroll, "unroll")
    if remat is not None:
        remat = checks.check_int(remat, "remat")
    carry, ys = _scan(step, params, carry, _to_time_major(xs, time_major), lengths, bool(reverse), unroll,
                      remat)
    return carry, _to_time_major(ys, time_major)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _scan(step, params, carry, xs_tm, lengths, reverse, unroll, remat):
    """The scan itself, jitted with ``step`` static so that eager calls with the same
    cell and shapes reuse one compilation (under an outer jit it is simply inlined).
    The cache is keyed on (and holds) ``step``: steps must not close over arrays.

    With ``lengths``, the semantics of :func:`_masked` (the body :func:`static_unroll`
    runs), organised for linearisation: the padded inputs are zeroed for all steps at
    once before the loop, the per-step validity (T, B) is computed before the loop and
    scanned as an input, and the carry and output selects run under ``jax.checkpoint``
    (:func:`_keep_valid`). Then differentiating the scan (autodiff, or the transpose of
    ``seqjax._fused``'s tangent scan, whose inputs include primal residuals) finds no
    primal work in the body to split off: written per step, the zeroing of the known
    inputs and the (B, H) mask broadcasts became a separate loop over time that stacked
    them, one more loop per (layer, direction) than without lengths (measured: the
    2-layer bidirectional LSTM with lengths ran 0.83-0.95x the time of the per-step form,
    ``benchmarks/results/attention_experiments.md``).

    With ``remat=K`` (< T) time runs as an outer scan over ceil(T/K) segments, each an
    inner scan of K steps under ``jax.checkpoint``: reverse mode keeps only the carries
    at segment boundaries and recomputes one segment's intermediates at a time, so
    memory is O(T/K + K) states instead of O(T). A T that K does not divide is padded
    with masked steps (carry passed through, output dropped)."""
    T = jax.tree.leaves(xs_tm)[0].shape[0]
    B = jax.tree.leaves(xs_tm)[0].shape[1]
    n = 1 if remat is None or remat >= T else -(-T // remat)              # segments
    Tp = T if n == 1 else n * remat
    if Tp != T:
        lengths = jnp.full((B,), T, jnp.int32) if lengths is None else lengths
        xs_tm = jax.tree.map(lambda a: jnp.pad(a, [(0, Tp - T)] + [(0, 0)] * (a.ndim - 1)), xs_tm)
    valid = None
    if lengths is not None:
        valid = jnp.arange(Tp)[:, None] < lengths[None, :]                   # (Tp, B)
        xs_tm = jax.tree.map(lambda a: jnp.where(_time_mask(valid, a), a, jnp.zeros((), a.dtype)), xs_tm)

    def body(c, v_x):
        v, x = v_x
        new_carry, y = step(params, c, x)
        if v is None:
            return new_carry, y
        return _keep_valid(v, new_carry, c), _keep_valid(v, y, jax.tree.map(jnp.zeros_like, y))

    if n == 1:
        return jax.lax.scan(body, carry, (valid, xs_tm), reverse=reverse, unroll=unroll)
    split = lambda a: a.reshape((n, remat) + a.shape[1:])                 # noqa: E731  (n, K, B, ...)

    @jax.checkpoint
    def segment(c, seg):
        return jax.lax.scan(body, c, seg, reverse=reverse, unroll=unroll)

    carry, ys = jax.lax.scan(segment, carry, jax.tree.map(split, (valid, xs_tm)), reverse=reverse)
    return carry, jax.tree.map(lambda a: a.reshape((Tp,) + a.shape[2:])[:T], ys)


@jax.checkpoint
def _keep_valid(valid: Array, new: Any, old: Any) -> Any:
    """``new`` where ``valid`` (B,), else ``old``, leaf by leaf ((B, ...) leaves). Under
    ``jax.checkpoint`` so that linearising a scan keeps only ``valid`` (a scanned input)
    as the residual and re-broadcasts it in the transposed loop."""
    return jax.tree.map(lambda a, b: jnp.where(_time_mask(valid, a), a, b), new, old)


def static_unroll(step: StepFn, params: Params, carry: Carry, xs: Any, *,
                  lengths: Array | None = None, reverse: bool = False,
                  time_major: bool = False) -> tuple[Carry, Any]:
    """:func:`unroll` as a Python loop over time: the reference the tests compare to."""
    T, lengths = _check_unroll(carry, xs, lengths, time_major)
    body = _masked(step, lengths)
    xs_tm = _to_time_major(xs, time_major)
    ys = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        carry, ys[t] = body(params, carry, (jnp.asarray(t), jax.tree.map(lambda a: a[t], xs_tm)))
    ys = jax.tree.map(lambda *a: jnp.stack(a), *ys)
    return carry, _to_time_major(ys, time_major)


# ----------------------------------------------------------------------------- perturbed step


@functools.lru_cache(maxsize=64)
def perturbed_step(cell: Cell) -> StepFn:
    r"""``cell.step`` with a perturbation added to the new carry; the scanned input is ``(x_t, eps_t)``.

    ``step(params, carry, (x_t, eps_t)) -> (carry', y_t)`` with ``carry' = cell.step(...)[0]
    + eps_t`` (eps_t has the carry's structure, (B, H) leaves) and ``y_t =
    cell.output(carry')``: the output is re-read from the perturbed carry, so eps_t
    reaches a loss through every path the state takes (its own output and all later
    steps), and :math:`\partial L/\partial \epsilon_t` at :math:`\epsilon = 0` is the
    total :math:`\partial L/\partial h_t`. With eps = 0 it is ``cell.step`` exactly.

    This is the hook :func:`seqjax.gradients.state_gradients` differentiates, for a
    cell through :func:`unroll` and for a layer through ``apply(...,
    perturbations=...)``. It depends on the cell only and is cached per cell, so
    eager calls with new params reuse :func:`unroll`'s compilation.
    """
    def step(params: Params, carry: Carry, x_eps) -> tuple[Carry, Array]:
        x, eps = x_eps
        carry, _ = cell.step(params, carry, x)
        carry = jax.tree.map(jnp.add, carry, eps)
        return carry, cell.output(carry)
    return step


# ----------------------------------------------------------------------------- layers


class RecurrentConfig(NamedTuple):
    """Static facts of a layer: its cell, depth, directions, dropout rate, how it is
    differentiated (``backward``, one of :data:`BACKWARDS`, resolved), the
    rematerialisation segment and the mixed-precision policy (see :func:`layer`)."""

    cell: Cell
    num_layers: int
    bidirectional: bool
    dropout: float
    backward: str = "autodiff"
    remat: int | None = None
    precision: Policy | None = None

    @property
    def fused_backward(self) -> bool:
        """The older spelling of ``backward == "vjp"``."""
        return self.backward == "vjp"

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def directions(self) -> tuple[str, ...]:
        """The params keys of one layer: ``("forward",)`` or ``("forward", "backward")``."""
        return ("forward", "backward") if self.bidirectional else ("forward",)


class Recurrent(NamedTuple):
    """A recurrent layer: pure functions over a params pytree.

    Params layout: ``{"layers": [{"forward": cell_params, "backward": cell_params}, ...]}``
    (``"backward"`` only when bidirectional). Layer 0 takes E inputs; layer k > 0
    takes ``num_directions * H``.

    Attributes:
      init: ``init(key, input_size, dtype=float32) -> params`` (dtype: a policy's param_dtype).
      apply: ``apply(params, x, *, lengths=None, initial_carry=None, dropout_key=None,
        perturbations=None) -> (outputs, final)``: x (B, T, E) -> outputs (B, T, D*H)
        and the final state, (L*D, B, H) leaves; see :func:`layer`.
      initial_carry: ``initial_carry(batch_size, dtype=float32) -> final-layout zeros``
        (dtype: a policy's accumulation dtype).
      config: the :class:`RecurrentConfig`.
    """

    init: Callable[..., Params]
    apply: Callable[..., tuple[Array, Carry]]
    initial_carry: Callable[..., Carry]
    config: RecurrentConfig


def carry_dtype(cell_params: Params, x: Array, precision: Policy | None = None) -> jnp.dtype:
    """The dtype a recurrence over ``x`` with ``cell_params`` carries, so that the scan's
    carry keeps one dtype from step to step.

    Without a policy: the promotion of the input and recurrent-weight dtypes (bfloat16
    inputs with float32 weights carry float32). With a :class:`~seqjax.precision.Policy`:
    its ``accumulation_dtype`` (float32 for bfloat16 compute), whatever ``x`` and the
    params are, because the layer casts both to the compute dtype.
    """
    if precision is not None:
        return precision.accumulation_dtype
    return jnp.result_type(x.dtype, cell_params["w_hh"].dtype)


def _resolve_backward(cell: Cell, backward: str | None, fused_backward: bool) -> tuple[str, str]:
    """``layer``'s ``backward`` and ``fused_backward`` -> (one of :data:`BACKWARDS`, the flag as the
    caller spelled it, for messages). None picks ``"jvp"`` when the cell has a hand-written
    derivative, else ``"autodiff"``; a path the cell cannot take is refused, never ignored."""
    from seqjax import _fused                     # imported here: _fused is built on this module's unroll
    fused_backward = checks.check_bool(fused_backward, "fused_backward")
    if backward is not None:
        checks.check_choice(backward, "backward", BACKWARDS)
    if fused_backward:
        if backward not in (None, "vjp"):
            raise ValueError(f"fused_backward=True is backward='vjp'; it cannot be combined with "
                             f"backward={backward!r}")
        backward, flag = "vjp", "fused_backward=True"
    elif backward is None:
        return ("jvp" if _fused.supports(cell) else "autodiff"), "backward=None"
    else:
        flag = f"backward={backward!r}"
    if backward != "autodiff" and not _fused.supports(cell):
        raise ValueError(f"{flag} needs a cell with a hand-written backward (cell.pointwise_backward), "
                         f"but the cell {cell.name!r} has none; use backward='autodiff'")
    return backward, flag


def layer(cell: Cell, *, num_layers: int = 1, bidirectional: bool = False,
          dropout: float = 0.0, backward: str | None = None, fused_backward: bool = False,
          remat: int | None = None, precision: Policy | str | None = None) -> Recurrent:
    """A multi-layer, optionally bidirectional, variable-length recurrent layer.

    Args:
      cell: any :class:`~seqjax.cells.Cell` (``cells.lstm(64)``, ``cells.make("gru", 64)``).
      num_layers: stacked layers L >= 1.
      bidirectional: also run each layer from the end; outputs concatenate
        [forward, backward] on the feature axis.
      dropout: rate in [0, 1) applied to the outputs of every layer but the last,
        as ``torch.nn.LSTM(dropout=...)`` does in training mode (only when ``apply``
        gets a ``dropout_key``).
      backward: how each (layer, direction) is differentiated, one of
        :data:`BACKWARDS`, or None (the default): ``"jvp"`` when the cell has a
        hand-written derivative (``cell.pointwise_backward is not None``: every cell
        of :func:`seqjax.cells.make` but ``"orthogonal"``), else ``"autodiff"``.

        - ``"jvp"``: a ``jax.custom_jvp`` whose rule computes the tangents of the
          input-driven projections as one matmul over all T*B rows and scans only the
          state tangents; JAX transposes it into cuDNN's scheme (a backward scan that
          carries dh, and dc, and emits gate gradients; dW_ih, dW_hh, the biases and
          dx one matmul each after the loop). Forward mode (``jax.jvp``,
          ``jax.jacfwd``, ``jax.linearize``), second derivatives and ``remat`` work.
        - ``"vjp"``: the same backward written as a ``jax.custom_vjp``; forward mode
          through the layer raises a TypeError, ``remat`` is refused.
        - ``"autodiff"``: JAX differentiates the scan as written.

        All three give the same outputs and padding semantics and gradients equal up
        to float rounding; speed in ``benchmarks/results/fast_path.md``. ``"jvp"`` or
        ``"vjp"`` with a cell that has no hand-written derivative is a ValueError. A
        call with ``perturbations`` runs the autodiff unroll whatever ``backward`` is.
      fused_backward: True is the older spelling of ``backward="vjp"`` (with any
        other ``backward`` a ValueError).
      remat: None, or K >= 1: every (layer, direction) runs time in segments of K
        steps, each recomputed in the backward pass (``jax.checkpoint``; see
        :func:`unroll`), so gradient memory is O(T/K + K) states instead of O(T)
        per layer. Same values and gradients; about one extra forward pass of
        compute. Works with lengths, bidirectional and multi-layer layers, with
        ``backward="jvp"`` and ``"autodiff"``; not with ``"vjp"`` (a ValueError: its
        hand-written backward stores every step).
      precision: None (every array keeps its dtype; the carry is the promotion of the
        input and weight dtypes, :func:`carry_dtype`), or a mixed-precision policy
        (:func:`seqjax.precision.policy` name or :class:`~seqjax.precision.Policy`, checked
        by :func:`seqjax.checks.check_precision`). With a policy, ``init`` makes params in
        its ``param_dtype``; ``apply`` casts params and x (and each layer's input) to its
        ``compute_dtype`` (the matmuls and gates), carries the state (h, and the LSTM's c)
        in its ``accumulation_dtype`` (float32 for bfloat16: ``initial_carry`` and
        ``perturbations`` must have it), and returns outputs in its ``output_dtype``; the
        final state stays in the accumulation dtype. Works with every other option.

    Returns:
      A :class:`Recurrent` whose ``apply(params, x, *, lengths=None,
      initial_carry=None, dropout_key=None, perturbations=None)`` maps

      - ``x`` (B, T, E), floating, batch-major;
      - ``lengths`` (B,) ints in [1, T], right padding;
      - ``initial_carry``: the final-state layout, (L*D, B, H) (an ``LSTMState`` of
        two such arrays for LSTM); zeros by default;
      - ``dropout_key``: a PRNG key switches dropout between layers on; None (the
        default) is deterministic (evaluation);
      - ``perturbations``: the hook of :func:`seqjax.gradients.state_gradients`:
        None, or a list mirroring ``params["layers"]``, element k
        ``{direction: p}`` with ``p`` the carry's structure with a time axis,
        (B, T, H) leaves (``cell.initial_carry((B, T))``); ``p[:, t]`` is added to
        that (layer, direction)'s carry after it consumes step t
        (:func:`perturbed_step`), so zeros change nothing and the gradient of a loss
        w.r.t. ``p[:, t]`` is the total dL/dh_t of that state;

      to ``(outputs, final)``: outputs (B, T, D*H), zero at padded steps, and the
      final state in the layout of ``initial_carry``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax.cells.Cell (e.g. cells.lstm(64)), got {type(cell).__name__}")
    num_layers = checks.check_int(num_layers, "num_layers")
    bidirectional = checks.check_bool(bidirectional, "bidirectional")
    dropout = checks.check_rate(dropout, "dropout")
    backward, flag = _resolve_backward(cell, backward, fused_backward)
    from seqjax import _fused                     # imported here: _fused is built on this module's unroll
    if remat is not None:
        remat = checks.check_int(remat, "remat")
        if backward == "vjp":
            raise ValueError(f"remat and {flag} cannot be combined: the hand-written custom_vjp backward "
                             "stores every step's gate values; use backward='jvp' (which composes with remat) "
                             "or no remat")
    precision = checks.check_precision(precision)
    config = RecurrentConfig(cell, num_layers, bidirectional, dropout, backward, remat, precision)
    directions = config.directions
    H = cell.hidden_size
    ND = len(directions)
    param_dtype = jnp.float32 if precision is None else precision.param_dtype
    state_dtype = jnp.float32 if precision is None else precision.accumulation_dtype

    def init(key: PRNGKey, input_size: int, dtype: DType = param_dtype) -> Params:
        keys = jax.random.split(checks.check_key(key), num_layers * ND).reshape(num_layers, ND)
        return {"layers": [{d: cell.init(keys[k, j], input_size if k == 0 else ND * H, dtype)
                            for j, d in enumerate(directions)} for k in range(num_layers)]}

    def initial_carry(batch_size: int, dtype: DType = state_dtype) -> Carry:
        return cell.initial_carry((num_layers * ND, batch_size), dtype)

    def _check(params: Params, x, lengths, carry0, dropout_key, perturbations):
        checks.check_array(x, "x", 3, "(B, T, E)")
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
            lengths = checks.check_lengths(lengths, B, T)
        if dropout_key is not None:
            checks.check_key(dropout_key, "dropout_key")
        dtype = carry_dtype(params["layers"][0]["forward"], x, precision)
        if carry0 is None:
            carry0 = cell.initial_carry((num_layers * ND, B), dtype)
        else:
            checks.check_tree_like(carry0, jax.eval_shape(lambda: cell.initial_carry((num_layers * ND, B), dtype)),
                                   "initial_carry", "(L*D, B, H)")
        if perturbations is not None:
            per_step = jax.eval_shape(lambda: cell.initial_carry((B, T), dtype))
            checks.check_tree_like(perturbations, [{d: per_step for d in directions}] * num_layers,
                                   "perturbations", "(B, T, H)")
        return lengths, carry0

    def apply(params: Params, x: Array, *, lengths: Array | None = None,
              initial_carry: Carry | None = None, dropout_key: PRNGKey | None = None,
              perturbations: list | None = None) -> tuple[Array, Carry]:
        lengths, carry0 = _check(params, x, lengths, initial_carry, dropout_key, perturbations)
        if precision is not None:
            params = precision.cast_to_compute(params)
        finals = []
        h = x                                                              # (B, T, E)
        for k in range(num_layers):
            if precision is not None:
                h = precision.cast_to_compute(h)                           # each layer's matmuls
            outs = []
            for j, d in enumerate(directions):
                p, c0, rev = params["layers"][k][d], jax.tree.map(lambda a: a[k * ND + j], carry0), d == "backward"
                if perturbations is not None:
                    final, ys = unroll(perturbed_step(cell), p, c0, (h, perturbations[k][d]), remat=remat,
                                       lengths=lengths, reverse=rev)
                elif backward == "jvp":
                    final, ys = _fused.jvp_unroll(cell, p, c0, h, lengths=lengths, reverse=rev, remat=remat)
                elif backward == "vjp":
                    final, ys = _fused.fused_unroll(cell, p, c0, h, lengths=lengths, reverse=rev)
                else:
                    final, ys = unroll(cell.step, p, c0, h, lengths=lengths, reverse=rev, remat=remat)
                finals.append(final)                                       # (B, H) leaves
                outs.append(ys)                                            # (B, T, H)
            h = outs[0] if ND == 1 else jnp.concatenate(outs, axis=-1)    # (B, T, ND*H)
            if k < num_layers - 1:
                h = layers.dropout(h, dropout, layers.sub_key(dropout_key, k))
        if precision is not None:
            h = precision.cast_to_output(h)
        # per-(layer, direction) (B, H) leaves -> PyTorch's (L*D, B, H), layer-major, forward first
        return h, jax.tree.map(lambda *a: jnp.stack(a), *finals)

    return Recurrent(init, apply, initial_carry, config)
