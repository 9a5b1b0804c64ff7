r"""A recurrent unroll with a hand-written backward pass (``jax.custom_vjp``).

Private module behind ``recurrent.layer(..., fused_backward=True)``. Both of its
loops over time are :func:`seqjax.recurrent.unroll` (the one scan, with its padding
semantics); the per-step maths is the cell's own (:mod:`seqjax.cells`): its
``input_proj``, :func:`seqjax.cells.hidden_proj`, ``pointwise`` and
``pointwise_backward``. Nothing here knows which cell it runs: any cell whose
``pointwise_backward`` is not None is supported (:func:`supports`).

Why. Autodiff of ``lax.scan`` accumulates the weight gradients inside the backward
loop (one small ``(E, B) @ (B, G*H)`` and ``(H, B) @ (B, G*H)`` product per step, plus
the bias sums) and stacks every intermediate of the step as a residual. cuDNN
instead runs a backward scan that only carries the state cotangents (dh, and dc
for the LSTM) and emits the pre-activation gradients per step; every weight
gradient and dx is then ONE large matmul over all T*B rows after the loop.
Measured forward + backward against autodiff of the same scan at B=32, T=128,
E=128, H=256 on XLA:CPU: see ``benchmarks/results/recurrent.md``.

Notation. Per step, with x (B, E), carry leaves (B, H), G stacked gates::

    xp = cell.input_proj(params, x)          = x W_ih + b_ih    (B, G*H)
    hp = cells.hidden_proj(params, h)        = h W_hh + b_hh    (B, G*H),  h = cell.output(carry)
    carry', y, res = cell.pointwise(carry, xp, hp)

Backward of one step (reverse scan, carrying dcarry)::

    direct, dxp, dhp = cell.pointwise_backward(res, carry_prev, dcarry, dy)   # dhp None: = dxp
    dcarry_prev = direct + output^T(dhp W_hh^T)

``dhp W_hh^T`` is the vjp of ``cells.hidden_proj`` w.r.t. h (its forward product is
dead code that XLA removes: the compiled backward has the same matmuls as a
hand-written ``dhp @ W_hh.T``), and ``output^T`` is the transpose of the linear map
``cell.output`` (carry -> h), taken with ``jax.linear_transpose``: it puts the
matmul-path cotangent on the carry's h part (an LSTM's ``c`` gets zero) without
knowing the carry's type. After the
backward scan, with X (T*B, E), H_prev (T*B, H) the stacked inputs and previous
hidden states and dXP, dHP (T*B, G*H), the vector-Jacobian products of the two
projections over all rows at once give::

    dW_ih = X^T dXP,  db_ih = sum_rows dXP,  dX = dXP W_ih^T     (vjp of cell.input_proj)
    dW_hh = H_prev^T dHP,  db_hh = sum_rows dHP                  (vjp of cells.hidden_proj)

Padding (``lengths``): exactly :func:`seqjax.recurrent.unroll`'s semantics, because
both loops are that unroll. At a padded step (t >= lengths[b]) the forward carry
passes through and the output is zero; in the backward the carry cotangent passes
through and ``dxp = dhp = 0`` (unroll zeroes a padded step's outputs), so padded
inputs get exactly zero gradient. With ``lengths=None`` no mask is computed at all.

Limitations: ``jax.jvp``, ``jax.jacfwd`` and ``jax.linearize`` applied directly
to a ``custom_vjp`` function raise a TypeError. Second derivatives through
``jax.grad(jax.grad(...))`` or ``jax.hessian`` (forward over reverse) work: JAX
differentiates the forward and backward rules below, which are plain JAX.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from seqjax import cells, recurrent
from seqjax.cells import Cell
from seqjax.types import Array, Carry, Params

__all__ = ["supports", "fused_unroll"]


def supports(cell: Cell) -> bool:
    """Whether ``cell`` has the pieces the fused backward needs (``pointwise`` and
    ``pointwise_backward``); every cell of :func:`seqjax.cells.make` but ``"orthogonal"`` has them."""
    return cell.pointwise is not None and cell.pointwise_backward is not None


def _rows(a: Array) -> Array:
    """(T, B, F) -> (T*B, F): one row per (step, example)."""
    return a.reshape(-1, a.shape[-1])


# The two scan bodies depend on the cell only (params arrive through unroll's params
# argument), and are cached per cell, so recurrent.unroll's jit reuses one compilation.


@functools.lru_cache(maxsize=64)
def _saving_step(cell: Cell) -> Callable:
    """``cell.step`` that also emits what the backward needs: ``(carry', (y, res, carry))``."""
    def step(params: Params, carry: Carry, x_t: Array):
        xp = cell.input_proj(params, x_t)                                 # (B, G*H)
        hp = cells.hidden_proj(params, cell.output(carry))                # (B, G*H)
        new, y, res = cell.pointwise(carry, xp, hp)
        return new, (y, res, carry)
    return step


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
def _make(cell: Cell, reverse: bool) -> Callable:
    """``run(params, carry0, x_tm, lengths) -> (final, ys_tm)`` with its custom VJP.

    x_tm (T, B, E), ys_tm (T, B, H); lengths (B,) ints or None (no masks at all).
    """
    def scan(step, params, carry0, x, lengths):
        return recurrent.unroll(step, params, carry0, x, lengths=lengths, reverse=reverse, time_major=True)

    @jax.custom_vjp
    def run(params, carry0, x, lengths):
        return scan(cell.step, params, carry0, x, lengths)

    def run_fwd(params, carry0, x, lengths):
        final, (ys, res, carries) = scan(_saving_step(cell), params, carry0, x, lengths)
        return (final, ys), (params, x, lengths, res, carries)

    def run_bwd(residuals, cotangents):
        params, x, lengths, res, carries = residuals
        dfinal, dys = cotangents
        dcarry0, (dxp, dhp) = recurrent.unroll(_backward_step(cell), params, dfinal, (res, carries, dys),
                                               lengths=lengths, reverse=not reverse, time_major=True)
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
def _run(cell, params, carry, x_tm, lengths, reverse):
    """Jitted with the cell static so eager calls reuse one compilation."""
    return _make(cell, reverse)(params, carry, x_tm, lengths)


def fused_unroll(cell: Cell, params: Params, carry: Carry, xs: Array, *,
                 lengths: Array | None = None, reverse: bool = False,
                 time_major: bool = False) -> tuple[Carry, Array]:
    """``recurrent.unroll(cell.step, ...)`` with the fused backward.

    Args:
      cell: a :class:`~seqjax.cells.Cell` with a hand-written backward
        (:func:`supports`).
      params: the cell's params: ``w_ih`` (E, G*H), ``w_hh`` (H, G*H), and
        optionally ``b_ih``, ``b_hh`` (G*H,).
      carry: the initial carry, leaves (B, H) (``LSTMState`` for the LSTM).
      xs: (B, T, E), or (T, B, E) with ``time_major=True``.
      lengths: optional (B,) ints; steps t >= lengths[b] are padding (the carry
        passes through, the output is zero).
      reverse: run from the last step to the first.
      time_major: the layout of ``xs`` and of the returned outputs.

    Returns:
      ``(final_carry, ys)``, ys (B, T, H) (or (T, B, H)), equal to
      ``recurrent.unroll(cell.step, ...)``'s result.

    Raises:
      ValueError: the cell has no hand-written backward.
    """
    if not supports(cell):
        raise ValueError(f"the fused backward needs a cell with pointwise and pointwise_backward; "
                         f"the cell {cell.name!r} has pointwise_backward=None")
    x_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    if lengths is not None:
        # Zero the padded inputs outside the custom VJP: its weight gradients multiply
        # every row of x (X^T dXP), and 0 * NaN from a NaN in the padding is NaN.
        valid = jnp.arange(x_tm.shape[0])[:, None] < lengths[None, :]         # (T, B)
        x_tm = jnp.where(valid[..., None], x_tm, jnp.zeros_like(x_tm))
    final, ys = _run(cell, params, carry, x_tm, lengths, bool(reverse))
    return final, (ys if time_major else jnp.swapaxes(ys, 0, 1))
