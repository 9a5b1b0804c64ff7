r"""The fast recurrent paths: a cell's unroll with a hand-written derivative.

Private module behind ``recurrent.layer(..., backward=...)``. Two derivative rules
for the same unroll, both built from the cell's own pieces (:mod:`seqjax.cells`: its
``input_proj``, :func:`seqjax.cells.hidden_proj`, ``pointwise`` and
``pointwise_backward``; nothing here knows which cell it runs, any cell with those
pieces is supported, :func:`supports`), and both looping over time with
:func:`seqjax.recurrent.unroll` (the one scan, with its padding semantics):

- ``"jvp"`` (:func:`jvp_unroll`, the default of ``recurrent.layer``): a
  ``jax.custom_jvp``. Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``)
  works, and JAX transposes the rule into the cuDNN-style backward pass.
- ``"vjp"`` (:func:`fused_unroll`, ``fused_backward=True``): a ``jax.custom_vjp``
  with that backward pass written out; reverse mode only.

Why. Autodiff of ``lax.scan`` accumulates the weight gradients inside the backward
loop (one small ``(E, B) @ (B, G*H)`` and ``(H, B) @ (B, G*H)`` product per step, plus
the bias sums) and stacks every intermediate of the step as a residual. cuDNN
instead runs a backward scan that only carries the state cotangents (dh, and dc
for the LSTM) and emits the pre-activation gradients per step; every weight
gradient and dx is then ONE large matmul over all T*B rows after the loop.
Measured forward + backward against autodiff and PyTorch at B=32, T=128, E=128,
H=256 on XLA:CPU: ``benchmarks/results/fast_path.md``.

Notation. Per step, with x (B, E), carry leaves (B, H), G stacked gates::

    xp = cell.input_proj(params, x)          = x W_ih + b_ih    (B, G*H)
    hp = cells.hidden_proj(params, h)        = h W_hh + b_hh    (B, G*H),  h = cell.output(carry)
    carry', y, res = cell.pointwise(carry, xp, hp)               (cells.pointwise_step)

``pointwise_backward(res, carry_prev, dcarry', dy) -> (direct, dxp, dhp)`` is the VJP
of ``pointwise`` w.r.t. (carry, xp, hp) (``dhp`` None when it equals ``dxp``, i.e.
``pointwise`` reads xp + hp only); ``direct`` is the cotangent of the carry not
through hp.

The JVP rule (``"jvp"``). With X (T*B, E) and H_prev (T*B, H) the stacked inputs and
previous hidden states (H_prev from the forward scan, a primal), the tangents of the
two projections split into a part driven from outside the recurrence and the part
through the state::

    dXP = dX W_ih + X dW_ih + db_ih           one matmul over all T*B rows (jvp of input_proj)
    dHP = H_prev dW_hh + db_hh  + dh_prev W_hh           (jvp of hidden_proj)
          \_____ one matmul, all rows ____/  \_ per step _/

and a ``lax.scan`` over time carries only the state tangents (dh, dc)::

    dcarry', dy = J_t (dcarry, dXP_t, dHP_t)

where ``J_t``, the JVP of ``pointwise`` at step t, is the transpose of the linear map
``(dcarry', dy) -> pointwise_backward(res_t, carry_prev_t, dcarry', dy)``
(``jax.linear_transpose``). Transposing this rule (reverse mode) gives exactly the
cuDNN backward: a reverse scan that carries (dh, dc) and runs ``pointwise_backward``
and ``dHP_t W_hh^T`` per step, then ``dW_ih = X^T dXP``, ``dW_hh = H_prev^T dHP`` and
``dX = dXP W_ih^T`` as one matmul each. Two details make that transpose fast:

- ``J_t`` runs under ``jax.checkpoint``, so linearisation does not move the gate
  derivatives it computes from ``res_t`` (a known, primal computation) into a loop
  of their own with a residual per factor: the backward scan recomputes them from
  ``res_t``, as the hand-written backward does (without it the LSTM took 1.17x the
  CPU time, ``benchmarks/results/fast_path.md``).
- ``dh_prev W_hh`` is one ``dot_general`` against W_hh^T, materialised once before
  the loop (:func:`_times_w_hh`): its transpose in the backward scan, ``dHP_t W_hh^T``,
  then reads a row-major (G*H, H) matrix (on XLA:CPU a scan of that matmul alone took
  0.78x the CPU time of contracting W_hh's long axis in place).

The VJP rule (``"vjp"``). The backward scan calls ``pointwise_backward`` and adds
``output^T(dhp W_hh^T)`` to the carry cotangent (the vjp of ``cells.hidden_proj``;
``output^T`` is ``jax.linear_transpose(cell.output)``, which puts the matmul-path
cotangent on the carry's h part without knowing the carry's type), then the same
one-matmul weight gradients as the vjps of the projections over all rows.

Padding (``lengths``): exactly :func:`seqjax.recurrent.unroll`'s semantics, because
every loop is that unroll. At a padded step (t >= lengths[b]) the forward carry
passes through and the output is zero; its tangent does the same, and in the
backward the carry cotangent passes through with ``dxp = dhp = 0``, so padded inputs
get exactly zero gradient. Padded inputs are zeroed before either rule sees them:
the weight gradients multiply every row of x (``X^T dXP``), and 0 * NaN is NaN.

Second derivatives (``jax.grad(jax.grad(...))``, ``jax.hessian``) work on both paths:
the rules are plain JAX, which JAX differentiates again. ``jax.checkpoint`` around a
``"jvp"`` unroll works too (``remat`` of :func:`jvp_unroll`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from seqjax import cells, recurrent
from seqjax.cells import Cell
from seqjax.types import Array, Carry, Params

__all__ = ["supports", "jvp_unroll", "fused_unroll"]


def supports(cell: Cell) -> bool:
    """Whether ``cell`` has the pieces both fast paths need (``pointwise`` and
    ``pointwise_backward``); every cell of :func:`seqjax.cells.make` but ``"orthogonal"`` has them."""
    return cell.pointwise is not None and cell.pointwise_backward is not None


def _rows(a: Array) -> Array:
    """(T, B, F) -> (T*B, F): one row per (step, example)."""
    return a.reshape(-1, a.shape[-1])


def _check_cell(cell: Cell, path: str) -> None:
    if not supports(cell):
        raise ValueError(f"the {path} path needs a cell with pointwise and pointwise_backward; "
                         f"the cell {cell.name!r} has pointwise_backward=None")


def _time_major_zero_padded(xs: Array, lengths: Array | None, time_major: bool) -> Array:
    """xs as (T, B, E), with padded steps (t >= lengths[b]) set to zero."""
    x_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    if lengths is None:
        return x_tm
    valid = jnp.arange(x_tm.shape[0])[:, None] < lengths[None, :]             # (T, B)
    return jnp.where(valid[..., None], x_tm, jnp.zeros_like(x_tm))


def _unroll_time_major(step: Callable, params, carry0: Carry, x, lengths: Array | None, *,
                       reverse: bool):
    """The one loop of both rules: :func:`seqjax.recurrent.unroll` over time-major ``x`` (T, B, ...)."""
    return recurrent.unroll(step, params, carry0, x, lengths=lengths, reverse=reverse, time_major=True)


# The scan bodies depend on the cell only (arrays arrive through unroll's params
# argument), and are cached per cell, so recurrent.unroll's jit reuses one compilation.


@functools.lru_cache(maxsize=64)
def _saving_step(cell: Cell) -> Callable:
    """``cell.step`` that also emits what the derivative needs: ``(carry', (y, res, carry))``."""
    def step(params: Params, carry: Carry, x_t: Array):
        xp = cell.input_proj(params, x_t)                                 # (B, G*H)
        new, y, res = cells.pointwise_step(cell.pointwise, cell.output, params, carry, xp)
        return new, (y, res, carry)
    return step


# ----------------------------------------------------------------------------- "jvp": jax.custom_jvp


def _times_w_hh(dh: Array, w_hh_t: Array) -> Array:
    """``dh @ W_hh`` from ``w_hh_t = W_hh^T`` (G*H, H): the tangent of :func:`seqjax.cells.hidden_proj`
    w.r.t. h, written as one ``dot_general`` contracting ``w_hh_t``'s last axis, so that its
    transpose (``ct @ w_hh_t``, the backward scan's per-step matmul) reads a row-major matrix.
    The operands are promoted as ``h @ w_hh`` promotes them."""
    dtype = jnp.result_type(dh, w_hh_t)
    return jax.lax.dot_general(dh.astype(dtype), w_hh_t.astype(dtype), (((dh.ndim - 1,), (1,)), ((), ())))


def _separate_dhp(cell: Cell, res, carry: Carry, y: Array) -> bool:
    """Whether ``pointwise`` reads hp apart from xp (``pointwise_backward`` returns a dhp, e.g. the
    GRU's ``r * u_n``), from the abstract shapes of one step (no computation)."""
    step = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (res, carry, y))
    _, _, dhp = jax.eval_shape(lambda r, c, h: cell.pointwise_backward(r, c, c, h), *step)
    return dhp is not None


@functools.lru_cache(maxsize=64)
def _tangent_step(cell: Cell, separate_dhp: bool) -> Callable:
    """Tangent-scan body: ``step(w_hh_t, dcarry, (res, carry_prev, dxp, dhp)) -> (dcarry', dy)``.

    ``dxp`` and ``dhp`` are the tangents of the projections from outside the recurrence
    (dhp is None when ``pointwise`` reads xp + hp only: then ``dxp`` holds their sum).
    """
    @jax.checkpoint           # the gate derivatives are recomputed from res in the backward scan
    def pointwise_tangent(res, carry_prev, dcarry, dxp, dhp):
        y = cell.output(carry_prev)                                       # an example: shape and dtype
        backward = functools.partial(cell.pointwise_backward, res, carry_prev)
        want = jax.eval_shape(backward, carry_prev, y)                    # (direct, dxp, dhp) avals
        tangents = jax.tree.map(lambda t, w: t.astype(w.dtype), (dcarry, dxp, dhp), want)
        return jax.linear_transpose(backward, carry_prev, y)(tangents)    # (dcarry', dy)

    def step(w_hh_t: Array, dcarry: Carry, inputs):
        res, carry_prev, dxp, dhp = inputs
        # the recurrent part of dHP_t, in the dtype of the forward's hp (pointwise_step rounds h to xp's)
        through_h = _times_w_hh(cell.output(dcarry).astype(dxp.dtype), w_hh_t)   # (B, G*H)
        if separate_dhp:
            return pointwise_tangent(res, carry_prev, dcarry, dxp, dhp + through_h)
        return pointwise_tangent(res, carry_prev, dcarry, dxp + through_h, None)
    return step


@functools.lru_cache(maxsize=64)
def _make_jvp(cell: Cell, reverse: bool) -> Callable:
    """``run(params, carry0, x_tm, lengths) -> (final, ys_tm)`` with its custom JVP.

    x_tm (T, B, E), ys_tm (T, B, H); lengths (B,) ints or None (no masks at all).
    """
    scan = functools.partial(_unroll_time_major, reverse=reverse)

    @jax.custom_jvp
    def run(params, carry0, x, lengths):
        return scan(cell.step, params, carry0, x, lengths)

    @run.defjvp
    def run_jvp(primals, tangents):
        params, carry0, x, lengths = primals
        dparams, dcarry0, dx, _ = tangents                              # lengths are integers: no tangent
        final, (ys, res, carries) = scan(_saving_step(cell), params, carry0, x, lengths)
        T, B = x.shape[:2]
        # (1) the projections' tangents from outside the recurrence: one matmul over all T*B rows each
        dxp = jax.jvp(cell.input_proj, (params, _rows(x)), (dparams, _rows(dx)))[1]      # (T*B, G*H)
        h_rows = _rows(cell.output(carries)).astype(dxp.dtype)         # H_prev, as pointwise_step rounds it
        dhp = jax.jvp(lambda p: cells.hidden_proj(p, h_rows), (params,), (dparams,))[1]
        dxp, dhp = dxp.reshape(T, B, -1), dhp.reshape(T, B, -1)         # (T, B, G*H)
        separate = _separate_dhp(cell, res, carries, ys)
        if not separate:
            dxp, dhp = dxp + dhp.astype(dxp.dtype), None
        # (2) the state tangents, step by step
        w_hh_t = jax.lax.optimization_barrier(params["w_hh"].T)        # (G*H, H), materialised once
        dfinal, dys = scan(_tangent_step(cell, separate), w_hh_t, dcarry0, (res, carries, dxp, dhp), lengths)
        as_primal = lambda t, p: t.astype(p.dtype)                     # noqa: E731
        return (final, ys), (jax.tree.map(as_primal, dfinal, final), as_primal(dys, ys))

    return run


@functools.partial(jax.jit, static_argnames=("cell", "reverse", "remat"))
def _run_jvp(cell, params, carry, x_tm, lengths, reverse, remat):
    """Jitted with the cell static so eager calls reuse one compilation. With ``remat=K``
    time runs in segments of K steps, each under ``jax.checkpoint`` (as in
    :func:`seqjax.recurrent.unroll`): reverse mode keeps the carries at segment
    boundaries and recomputes one segment's forward scan at a time."""
    run = _make_jvp(cell, reverse)
    T, B = x_tm.shape[:2]
    if remat is None or remat >= T:
        return run(params, carry, x_tm, lengths)
    n = -(-T // remat)                                                    # segments
    if n * remat != T:                                                    # pad with masked steps
        lengths = jnp.full((B,), T, jnp.int32) if lengths is None else lengths
        x_tm = jnp.pad(x_tm, [(0, n * remat - T), (0, 0), (0, 0)])
    segments = x_tm.reshape((n, remat) + x_tm.shape[1:])                 # (n, K, B, E)
    starts = jnp.arange(n) * remat                                        # (n,)

    @jax.checkpoint
    def segment(c, start_x):
        start, x_seg = start_x
        # step t of the segment is step start + t of the sequence: valid iff t < lengths - start
        return run(params, c, x_seg, None if lengths is None else lengths - start)

    carry, ys = jax.lax.scan(segment, carry, (starts, segments), reverse=reverse)
    return carry, ys.reshape((n * remat,) + ys.shape[2:])[:T]


def jvp_unroll(cell: Cell, params: Params, carry: Carry, xs: Array, *,
               lengths: Array | None = None, reverse: bool = False, time_major: bool = False,
               remat: int | None = None) -> tuple[Carry, Array]:
    """``recurrent.unroll(cell.step, ...)`` with the custom-JVP derivative (the module docstring).

    Args:
      cell: a :class:`~seqjax.cells.Cell` with ``pointwise_backward`` (:func:`supports`).
      params: the cell's params: ``w_ih`` (E, G*H), ``w_hh`` (H, G*H), and
        optionally ``b_ih``, ``b_hh`` (G*H,).
      carry: the initial carry, leaves (B, H) (``LSTMState`` for the LSTM).
      xs: (B, T, E), or (T, B, E) with ``time_major=True``.
      lengths: optional (B,) ints; steps t >= lengths[b] are padding (the carry
        passes through, the output is zero).
      reverse: run from the last step to the first.
      time_major: the layout of ``xs`` and of the returned outputs.
      remat: None, or K >= 1: rematerialise in segments of K steps (``jax.checkpoint``),
        as :func:`seqjax.recurrent.unroll` does.

    Returns:
      ``(final_carry, ys)``, ys (B, T, H) (or (T, B, H)), equal to
      ``recurrent.unroll(cell.step, ...)``'s result; so are its derivatives, in
      forward and reverse mode, up to float rounding.

    Raises:
      ValueError: the cell has no ``pointwise_backward``.
    """
    _check_cell(cell, "jvp")
    x_tm = _time_major_zero_padded(xs, lengths, time_major)
    final, ys = _run_jvp(cell, params, carry, x_tm, lengths, bool(reverse), remat)
    return final, (ys if time_major else jnp.swapaxes(ys, 0, 1))


# ----------------------------------------------------------------------------- "vjp": jax.custom_vjp


@functools.lru_cache(maxsize=64)
def _backward_step(cell: Cell) -> Callable:
    """Reverse-scan body: ``step(params, dcarry, (res, carry_prev, dy)) -> (dcarry_prev, (dxp, dhp))``."""
    def step(params: Params, dcarry: Carry, inputs):
        res, carry_prev, dy = inputs
        direct, dxp, dhp = cell.pointwise_backward(res, carry_prev, dcarry, dy)
        h_prev = cell.output(carry_prev)                                  # (B, H)
        hp, hidden_vjp = jax.vjp(functools.partial(cells.hidden_proj, params), h_prev)
        dh = hidden_vjp((dxp if dhp is None else dhp).astype(hp.dtype))[0]          # dhp W_hh^T (B, H)
        through_h = jax.linear_transpose(cell.output, carry_prev)(dh)[0]  # dh on the carry's h part
        return jax.tree.map(jnp.add, direct, through_h), (dxp, dhp)
    return step


@functools.lru_cache(maxsize=64)
def _make_vjp(cell: Cell, reverse: bool) -> Callable:
    """``run(params, carry0, x_tm, lengths) -> (final, ys_tm)`` with its custom VJP.

    x_tm (T, B, E), ys_tm (T, B, H); lengths (B,) ints or None (no masks at all).
    """
    scan = functools.partial(_unroll_time_major, reverse=reverse)

    @jax.custom_vjp
    def run(params, carry0, x, lengths):
        return scan(cell.step, params, carry0, x, lengths)

    def run_fwd(params, carry0, x, lengths):
        final, (ys, res, carries) = scan(_saving_step(cell), params, carry0, x, lengths)
        return (final, ys), (params, x, lengths, res, carries)

    def run_bwd(residuals, cotangents):
        params, x, lengths, res, carries = residuals
        dfinal, dys = cotangents
        dcarry0, (dxp, dhp) = _unroll_time_major(_backward_step(cell), params, dfinal, (res, carries, dys),
                                                 lengths, reverse=not reverse)
        dhp = dxp if dhp is None else dhp
        # every weight gradient and dx: one matmul over all T*B rows, as the vjps of the projections
        x_rows, h_rows = _rows(x), _rows(cell.output(carries))
        xp_rows, in_vjp = jax.vjp(cell.input_proj, params, x_rows)
        hp_rows, hid_vjp = jax.vjp(cells.hidden_proj, params, h_rows)
        d_in, dx_rows = in_vjp(_rows(dxp).astype(xp_rows.dtype))
        d_hid, _ = hid_vjp(_rows(dhp).astype(hp_rows.dtype))
        grads = jax.tree.map(jnp.add, d_in, d_hid)
        return grads, dcarry0, dx_rows.reshape(x.shape), None        # lengths are integers: no cotangent

    run.defvjp(run_fwd, run_bwd)
    return run


@functools.partial(jax.jit, static_argnames=("cell", "reverse"))
def _run_vjp(cell, params, carry, x_tm, lengths, reverse):
    """Jitted with the cell static so eager calls reuse one compilation."""
    return _make_vjp(cell, reverse)(params, carry, x_tm, lengths)


def fused_unroll(cell: Cell, params: Params, carry: Carry, xs: Array, *,
                 lengths: Array | None = None, reverse: bool = False,
                 time_major: bool = False) -> tuple[Carry, Array]:
    """``recurrent.unroll(cell.step, ...)`` with the custom-VJP backward (reverse mode only).

    Arguments and result as :func:`jvp_unroll` (no ``remat``: this backward stores every
    step's residuals by construction). ``jax.jvp``, ``jax.jacfwd`` and ``jax.linearize``
    applied to it raise a TypeError (JAX cannot run a ``custom_vjp`` forward).

    Raises:
      ValueError: the cell has no ``pointwise_backward``.
    """
    _check_cell(cell, "fused (vjp)")
    x_tm = _time_major_zero_padded(xs, lengths, time_major)
    final, ys = _run_vjp(cell, params, carry, x_tm, lengths, bool(reverse))
    return final, (ys if time_major else jnp.swapaxes(ys, 0, 1))
