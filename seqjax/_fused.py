r"""A recurrent unroll with a hand-written backward pass (``jax.custom_vjp``).

Private module behind ``recurrent.layer(..., fused_backward=True)``. The forward is
the same scan as :func:`seqjax.recurrent.unroll` over the same cell equations
(:mod:`seqjax.cells`), with the same padding semantics; only the backward differs.

Why. Autodiff of ``lax.scan`` accumulates the weight gradients inside the backward
loop (one small ``(E, B) @ (B, G*H)`` and ``(H, B) @ (B, G*H)`` product per step, plus
the bias sums) and stacks every intermediate of the step as a residual. cuDNN
instead runs a backward scan that only carries the state cotangents (dh, and dc
for the LSTM) and emits the pre-activation gradients per step; every weight
gradient and dx is then ONE large matmul over all T*B rows after the loop
(ANCHORS §4). Measured forward + backward against autodiff of the same scan at
B=32, T=128, I=128, H=256 on XLA:CPU: see ``benchmarks/results/recurrent.md``.

Notation. Per step, with x (B, E), h and c (B, H), G gates (RNN 1, GRU 3, LSTM 4)::

    xp = x W_ih + b_ih            (B, G*H)
    hp = h W_hh + b_hh            (B, G*H)

the cell is a matmul-free pointwise map ``(carry, xp, hp) -> (carry', y)``. Given
the cotangent of the new carry and of the output, each cell's backward gives the
pre-activation cotangents ``dxp``, ``dhp`` (B, G*H) and the *direct* part of the
previous carry's cotangent; the unroll adds the path through the matmul,
``dh += dhp W_hh^T``. After the backward scan, with X (T*B, E), H_prev (T*B, H)
the stacked inputs and previous hidden states and dXP, dHP (T*B, G*H)::

    dW_ih = X^T dXP     db_ih = sum_rows dXP     dX = dXP W_ih^T
    dW_hh = H_prev^T dHP  db_hh = sum_rows dHP

Per-step backward, with d = dh' + dy the total cotangent of the new hidden state:

- RNN, ``h' = phi(a)``, ``a = xp + hp``: ``da = d * phi'(a)`` with phi' read off
  the output (tanh: ``1 - h'^2``; relu: ``[h' > 0]``; linear: 1);
  ``dxp = dhp = da``; direct dh = 0.
- LSTM (gates i, f, g, o; ``c' = f c + i g``, ``h' = o tanh(c')``):
  ``dc' = dc_in + d o (1 - tanh^2 c')``;
  ``da_i = dc' g i(1-i)``, ``da_f = dc' c f(1-f)``, ``da_g = dc' i (1-g^2)``,
  ``da_o = d tanh(c') o(1-o)``; ``dxp = dhp = da``; ``dc = dc' f``; direct dh = 0.
- GRU, reset-after (``n = tanh(a_n + r u_n)``, ``h' = (1-z) n + z h``):
  ``dn = d (1-z)(1-n^2)``, ``dz = d (h - n) z(1-z)``, ``dr = dn u_n r(1-r)``;
  ``dxp = [dr, dz, dn]``, ``dhp = [dr, dz, dn r]``; direct dh = ``d z``.

Padding (``lengths``): exactly :func:`seqjax.recurrent.unroll`'s semantics. At a
padded step (t >= lengths[b]) the carry passes through, the output is zero; in
the backward the carry cotangent passes through and ``dxp = dhp = 0``, so padded
inputs get exactly zero gradient. With ``lengths=None`` no mask is computed at all.

Limitations: ``jax.jvp``, ``jax.jacfwd`` and ``jax.linearize`` applied directly
to a ``custom_vjp`` function raise a TypeError. Second derivatives through
``jax.grad(jax.grad(...))`` or ``jax.hessian`` (forward over reverse) work: JAX
differentiates the forward and backward rules below, which are plain JAX.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells import LSTMState
from seqjax.types import Array, Carry, Params

__all__ = ["SUPPORTED_CELLS", "fused_unroll"]


# ----------------------------------------------------------------------------- per-cell halves


class _FusedCell(NamedTuple):
    """The matmul-free halves of one step.

    forward(carry, xp, hp) -> (carry', y, res): ``res`` is what backward needs.
    backward(res, carry_prev, dcarry, dy) -> (dcarry_direct, dxp, dhp): ``dhp`` is
      None when it equals ``dxp`` (RNN, LSTM), which saves a (T, B, G*H) stack.
    """

    forward: Callable
    backward: Callable


def _rnn(activation: str) -> _FusedCell:
    act = {"tanh": jnp.tanh, "relu": jax.nn.relu, "linear": lambda a: a}[activation]

    def forward(h, xp, hp):
        h = act(xp + hp)
        return h, h, h

    def backward(h_new, h_prev, dh, dy):
        d = dh + dy
        if activation == "tanh":
            da = d * (1.0 - h_new * h_new)
        elif activation == "relu":                      # jax.nn.relu'(0) = 0, as here
            da = jnp.where(h_new > 0, d, jnp.zeros_like(d))
        else:
            da = d
        return jnp.zeros_like(dh), da, None
    return _FusedCell(forward, backward)


def _lstm_forward(carry: LSTMState, xp, hp):
    a_i, a_f, a_g, a_o = jnp.split(xp + hp, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
    c = f * carry.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], axis=-1), c)


def _lstm_backward(res, carry_prev: LSTMState, dcarry: LSTMState, dy):
    gates, c = res
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    d = dcarry.h + dy
    tc = jnp.tanh(c)
    dc = dcarry.c + d * o * (1.0 - tc * tc)
    da = jnp.concatenate([dc * g * i * (1.0 - i), dc * carry_prev.c * f * (1.0 - f),
                          dc * i * (1.0 - g * g), d * tc * o * (1.0 - o)], axis=-1)
    return LSTMState(jnp.zeros_like(d), dc * f), da, None


def _gru_forward(h, xp, hp):
    a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(hp, 3, axis=-1)
    r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    h = (1.0 - z) * n + z * h
    return h, h, jnp.concatenate([r, z, n, u_n], axis=-1)


def _gru_backward(res, h_prev, dh, dy):
    r, z, n, u_n = jnp.split(res, 4, axis=-1)
    d = dh + dy
    dn = d * (1.0 - z) * (1.0 - n * n)
    dz = d * (h_prev - n) * z * (1.0 - z)
    dr = dn * u_n * r * (1.0 - r)
    return d * z, jnp.concatenate([dr, dz, dn], axis=-1), jnp.concatenate([dr, dz, dn * r], axis=-1)


_CELLS: dict[str, _FusedCell] = {
    "lstm": _FusedCell(_lstm_forward, _lstm_backward),
    "gru": _FusedCell(_gru_forward, _gru_backward),
    "rnn_tanh": _rnn("tanh"),
    "rnn_relu": _rnn("relu"),
    "rnn_linear": _rnn("linear"),
}
SUPPORTED_CELLS: tuple[str, ...] = tuple(_CELLS)


# ----------------------------------------------------------------------------- the unroll


def _h(carry: Carry) -> Array:
    return carry.h if isinstance(carry, LSTMState) else carry


def _add_h(carry: Carry, dh: Array) -> Carry:
    return carry._replace(h=carry.h + dh) if isinstance(carry, LSTMState) else carry + dh


def _where_valid(valid: Array, new, old):
    """Per-example select over a pytree of (B, ...) leaves: ``new`` where valid."""
    return jax.tree.map(lambda n, o: jnp.where(valid.reshape(valid.shape + (1,) * (n.ndim - 1)), n, o),
                        new, old)


def _projections(params: Params, x_t: Array, h: Array) -> tuple[Array, Array]:
    xp = x_t @ params["w_ih"]
    hp = h @ params["w_hh"]
    if "b_ih" in params:
        xp = xp + params["b_ih"]
        hp = hp + params["b_hh"]
    return xp, hp


def _rows(a: Array) -> Array:
    """(T, B, F) -> (T*B, F): one row per (step, example)."""
    return a.reshape(-1, a.shape[-1])


@functools.lru_cache(maxsize=None)
def _make(kind: str, reverse: bool) -> Callable:
    """``run(params, carry0, x_tm, lengths) -> (final, ys_tm)`` with its custom VJP.

    x_tm (T, B, E), ys_tm (T, B, H); lengths (B,) ints or None (no masks at all).
    """
    cell = _CELLS[kind]

    def scan_forward(params, carry0, x, lengths, save: bool):
        T = x.shape[0]

        def step(carry, t_x):
            t, x_t = t_x
            xp, hp = _projections(params, x_t, _h(carry))
            new, y, res = cell.forward(carry, xp, hp)
            if lengths is not None:
                valid = t < lengths                                   # (B,)
                new = _where_valid(valid, new, carry)
                y = jnp.where(valid[:, None], y, jnp.zeros_like(y))
            return new, ((y, res, carry) if save else y)
        return jax.lax.scan(step, carry0, (jnp.arange(T), x), reverse=reverse)

    @jax.custom_vjp
    def run(params, carry0, x, lengths):
        return scan_forward(params, carry0, x, lengths, save=False)

    def run_fwd(params, carry0, x, lengths):
        final, (ys, res, carries) = scan_forward(params, carry0, x, lengths, save=True)
        return (final, ys), (params, x, lengths, res, carries)

    def run_bwd(residuals, cotangents):
        params, x, lengths, res, carries = residuals
        dfinal, dys = cotangents
        w_hh_t = params["w_hh"].T
        T = x.shape[0]

        def step(dcarry, inputs):
            t, res_t, carry_prev, dy = inputs
            direct, dxp, dhp = cell.backward(res_t, carry_prev, dcarry, dy)
            dcarry_prev = _add_h(direct, (dxp if dhp is None else dhp) @ w_hh_t)
            if lengths is not None:   # padded step: cotangent passes through, no gate gradient
                valid = t < lengths
                dcarry_prev = _where_valid(valid, dcarry_prev, dcarry)
                dxp = jnp.where(valid[:, None], dxp, jnp.zeros_like(dxp))
                dhp = None if dhp is None else jnp.where(valid[:, None], dhp, jnp.zeros_like(dhp))
            return dcarry_prev, (dxp, dhp)
        dcarry0, (dxp, dhp) = jax.lax.scan(step, dfinal, (jnp.arange(T), res, carries, dys),
                                           reverse=not reverse)
        dhp = dxp if dhp is None else dhp
        # every weight gradient and dx: one matmul over all T*B rows
        dxp_rows, dhp_rows = _rows(dxp), _rows(dhp)
        grads = {"w_ih": _rows(x).T @ dxp_rows, "w_hh": _rows(_h(carries)).T @ dhp_rows}
        if "b_ih" in params:
            grads["b_ih"] = dxp_rows.sum(0)
            grads["b_hh"] = dhp_rows.sum(0)
        grads = {k: grads[k].astype(params[k].dtype) for k in params}
        dx = (dxp @ params["w_ih"].T).astype(x.dtype)
        return grads, dcarry0, dx, None        # lengths are integers: no cotangent

    run.defvjp(run_fwd, run_bwd)
    return run


@functools.partial(jax.jit, static_argnames=("kind", "reverse"))
def _run(kind, params, carry, x_tm, lengths, reverse):
    """Jitted with the cell kind static so eager calls reuse one compilation."""
    return _make(kind, reverse)(params, carry, x_tm, lengths)


def fused_unroll(kind: str, params: Params, carry: Carry, xs: Array, *,
                 lengths: Array | None = None, reverse: bool = False,
                 time_major: bool = False) -> tuple[Carry, Array]:
    """:func:`seqjax.recurrent.unroll` of a known cell, with the fused backward.

    Args:
      kind: the cell's name, one of :data:`SUPPORTED_CELLS`.
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
    """
    if kind not in _CELLS:
        raise ValueError(f"kind must be one of {list(SUPPORTED_CELLS)}, got {kind!r}")
    x_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    final, ys = _run(kind, params, carry, x_tm, lengths, bool(reverse))
    return final, (ys if time_major else jnp.swapaxes(ys, 0, 1))

