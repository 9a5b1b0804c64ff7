"""Prototype: a recurrent unroll with a hand-made backward pass (``jax.custom_vjp``).

Autodiff of ``lax.scan`` accumulates dW_ih, dW_hh and the biases inside the backward
loop (one small outer product per step for each) and stacks every intermediate of
the step as a residual. cuDNN-style training instead runs a backward scan that only
propagates dh (and dc) and emits the pre-activation gradients per step, then forms
every weight gradient with ONE large matmul after the loop (ANCHORS §4). This
script measures that idea against seqjax's current unroll (autodiff), forward +
backward of ``sum(outputs**2)``, and checks the gradients against autodiff.

Variants (time-major scan, one direction, no padding in the timing; the gradient
check ``check_gradients`` covers lengths, reverse and a given initial carry):

- ``autodiff``: ``seqjax.recurrent.unroll(cell.step, ...)``, differentiated by JAX.
- ``fused_generic``: :func:`fused_unroll` for any cell written as
  ``pointwise(carry, xp, hp) -> (carry, y)`` with ``xp = x W_ih + b_ih`` and
  ``hp = h W_hh + b_hh``; the forward saves xp, hp and the carries, the backward
  re-runs ``pointwise`` under ``jax.vjp`` per step.
- ``fused_hand``: :func:`fused_unroll` with the per-step backward written by hand
  (:data:`HAND_WRITTEN`), saving only the gate activations (LSTM: i, f, g, o, c).

Run::

    .venv/bin/python benchmarks/fused_backward.py
    .venv/bin/python benchmarks/fused_backward.py --quick --out /tmp/fb
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from functools import partial
from typing import Any, Callable, NamedTuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from seqjax import cells, io, recurrent
from seqjax.cells import LSTMState

CELLS = ("lstm", "gru", "rnn_tanh")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------ pointwise parts of the cells
# The carry-dependent, matmul-free part of each cell's recurrent_step, given
# xp = x W_ih + b_ih and hp = h W_hh + b_hh (same equations as seqjax.cells).

def lstm_pointwise(carry: LSTMState, xp, hp):
    i, f, g, o = jnp.split(xp + hp, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMState(h, c), h


def gru_pointwise(h, xp, hp):
    a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(hp, 3, axis=-1)
    r = jax.nn.sigmoid(a_r + u_r)
    z = jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    h = (1.0 - z) * n + z * h
    return h, h


def rnn_pointwise(h, xp, hp):
    h = jnp.tanh(xp + hp)
    return h, h


POINTWISE = {"lstm": lstm_pointwise, "gru": gru_pointwise, "rnn_tanh": rnn_pointwise}


def _h(carry):
    return carry.h if isinstance(carry, LSTMState) else carry


def _add_h(carry, dh):
    return carry._replace(h=carry.h + dh) if isinstance(carry, LSTMState) else carry + dh


def _select(valid, new, old):
    """Per-example select over a pytree whose leaves are (B, ...)."""
    return jax.tree.map(lambda n, o: jnp.where(valid.reshape(valid.shape + (1,) * (n.ndim - 1)), n, o),
                        new, old)


class FusedCell(NamedTuple):
    """The two per-step halves a fused unroll needs, matmul-free.

    forward(carry, xp, hp) -> (carry, y, res): one step given xp = x W_ih + b_ih and
      hp = h W_hh + b_hh; ``res`` is what the backward half needs.
    backward(res, carry_prev, dcarry, dy) -> (dcarry_prev_direct, dxp, dhp): the
      cotangents of the step's inputs, except the h W_hh path, which the unroll adds
      as ``dhp @ W_hh.T`` to the h field of ``dcarry_prev_direct``.
    """

    forward: Callable
    backward: Callable


def generic_fused(pointwise: Callable) -> FusedCell:
    """Any cell written as ``pointwise(carry, xp, hp) -> (carry, y)``; backward by jax.vjp."""
    def forward(carry, xp, hp):
        new, y = pointwise(carry, xp, hp)
        return new, y, (xp, hp)

    def backward(res, carry_prev, dcarry, dy):
        xp, hp = res
        _, vjp = jax.vjp(pointwise, carry_prev, xp, hp)
        return vjp((dcarry, dy))
    return FusedCell(forward, backward)


def _lstm_forward(carry, xp, hp):
    a_i, a_f, a_g, a_o = jnp.split(xp + hp, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
    c = f * carry.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], -1), c)


def _lstm_backward(res, carry_prev, dcarry, dy):
    act, c = res
    i, f, g, o = jnp.split(act, 4, axis=-1)
    dh = dcarry.h + dy
    tc = jnp.tanh(c)
    dc = dcarry.c + dh * o * (1.0 - tc * tc)
    dgates = jnp.concatenate([dc * g * i * (1.0 - i), dc * carry_prev.c * f * (1.0 - f),
                              dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], -1)
    return LSTMState(jnp.zeros_like(dh), dc * f), dgates, dgates


def _gru_forward(h, xp, hp):
    a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(hp, 3, axis=-1)
    r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    h = (1.0 - z) * n + z * h
    return h, h, jnp.concatenate([r, z, n, u_n], -1)


def _gru_backward(act, h_prev, dh, dy):
    r, z, n, u_n = jnp.split(act, 4, axis=-1)
    dh = dh + dy
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * u_n * r * (1.0 - r)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    return dh * z, jnp.concatenate([dr, dz, dn], -1), jnp.concatenate([dr, dz, dn * r], -1)


def _rnn_forward(h, xp, hp):
    h = jnp.tanh(xp + hp)
    return h, h, h


def _rnn_backward(h, h_prev, dh, dy):
    dpre = (dh + dy) * (1.0 - h * h)
    return jnp.zeros_like(dh), dpre, dpre


HAND_WRITTEN = {"lstm": FusedCell(_lstm_forward, _lstm_backward),
                "gru": FusedCell(_gru_forward, _gru_backward),
                "rnn_tanh": FusedCell(_rnn_forward, _rnn_backward)}


def _weight_grads(params, x, h_prev, dxp, dhp):
    """All parameter gradients and dx from the stacked per-step gradients, one matmul each.

    x (T, B, E), h_prev (T, B, H), dxp and dhp (T, B, G*H).
    """
    grads = {"w_ih": jnp.einsum("tbe,tbg->eg", x, dxp), "w_hh": jnp.einsum("tbh,tbg->hg", h_prev, dhp)}
    if "b_ih" in params:
        grads["b_ih"] = dxp.sum((0, 1))
        grads["b_hh"] = dhp.sum((0, 1))
    return grads, dxp @ params["w_ih"].T


def fused_unroll(fused: FusedCell, unroll: int = 1) -> Callable:
    """``run(params, carry0, x, lengths, reverse) -> (final, ys)``, x (T, B, E) time-major.

    Same contract as ``seqjax.recurrent.unroll(cell.step, ..., time_major=True)``:
    steps t >= lengths[b] leave the carry unchanged and output zero; ``reverse`` runs
    from the end. ``lengths`` (B,) may be None; ``reverse`` is static. The backward
    scan only propagates the carry cotangent and emits dxp, dhp per step; the weight
    gradients and dx are one matmul each after the loop.
    """
    def forward(params, carry0, x, lengths, reverse):
        T, B = x.shape[:2]
        lengths_ = jnp.full((B,), T, jnp.int32) if lengths is None else lengths

        def step(carry, t_x):
            t, x_t = t_x
            xp = x_t @ params["w_ih"] + params.get("b_ih", 0.0)
            hp = _h(carry) @ params["w_hh"] + params.get("b_hh", 0.0)
            new, y, res = fused.forward(carry, xp, hp)
            valid = t < lengths_
            new = _select(valid, new, carry)
            y = jnp.where(valid[:, None], y, 0.0)
            return new, (y, res, carry)
        final, (ys, res, carries) = jax.lax.scan(step, carry0, (jnp.arange(T), x),
                                                 reverse=reverse, unroll=unroll)
        return (final, ys), (params, x, lengths_, res, carries)

    def backward(reverse, residuals, cotangents):
        params, x, lengths_, res, carries = residuals
        dfinal, dys = cotangents
        w_hh_t = params["w_hh"].T

        def step(dcarry, inputs):
            t, res_t, carry_prev, dy = inputs
            direct, dxp, dhp = fused.backward(res_t, carry_prev, dcarry, dy)
            valid = t < lengths_
            dcarry_prev = _select(valid, _add_h(direct, dhp @ w_hh_t), dcarry)
            zero = lambda a: jnp.where(valid[:, None], a, 0.0)  # noqa: E731
            return dcarry_prev, (zero(dxp), zero(dhp))
        T = x.shape[0]
        dcarry0, (dxp, dhp) = jax.lax.scan(step, dfinal, (jnp.arange(T), res, carries, dys),
                                           reverse=not reverse, unroll=unroll)
        grads, dx = _weight_grads(params, x, _h(carries), dxp, dhp)
        return grads, dcarry0, dx, None          # lengths are integers: no cotangent

    @partial(jax.custom_vjp, nondiff_argnums=(4,))
    def run(params, carry0, x, lengths, reverse):
        return forward(params, carry0, x, lengths, reverse)[0]

    def run_fwd(params, carry0, x, lengths, reverse):
        return forward(params, carry0, x, lengths, reverse)

    run.defvjp(run_fwd, backward)

    def call(params, carry0, x, lengths=None, reverse=False):
        if lengths is None:      # custom_vjp needs array arguments: None becomes full length
            lengths = jnp.full((x.shape[1],), x.shape[0], jnp.int32)
        return run(params, carry0, x, lengths, reverse)
    return call


def variants(cell_name: str, unrolls=(1, 2)) -> dict[str, Callable]:
    """``{label: run(params, carry0, x_tm) -> (final, ys)}`` for one cell."""
    cell = cells.make(cell_name, 1)   # only its step is used; H comes from the params

    def autodiff(u):
        return lambda params, carry0, x, lengths=None, reverse=False: recurrent.unroll(
            cell.step, params, carry0, x, lengths=lengths, reverse=reverse, time_major=True, unroll=u)
    out = {}
    for u in unrolls:
        suffix = "" if u == 1 else f" unroll={u}"
        out["autodiff" + suffix] = autodiff(u)
        out["fused_generic" + suffix] = fused_unroll(generic_fused(POINTWISE[cell_name]), u)
        out["fused_hand" + suffix] = fused_unroll(HAND_WRITTEN[cell_name], u)
    return out


def check_gradients(cell_name: str, B: int = 3, T: int = 7, I: int = 5, H: int = 4) -> dict[str, float]:
    """Max relative difference to autodiff of ``recurrent.unroll`` for every fused variant.

    Covers what the layer needs: unsorted lengths including a length-1 sequence, both
    directions, a non-zero initial carry, and a loss on the outputs and the final carry.
    """
    cell = cells.make(cell_name, H)
    k = jax.random.split(jax.random.key(3), 3)
    params = cell.init(k[0], I)
    carry0 = jax.tree.map(lambda a: jax.random.normal(k[1], a.shape), cell.initial_carry((B,)))
    x = jax.random.normal(k[2], (T, B, I))
    lengths = jnp.array([T, 1, T - 2][:B] + [T] * max(0, B - 3), jnp.int32)
    errors = {}
    for reverse in (False, True):
        ref = None
        for label, run in variants(cell_name, (1,)).items():
            def loss(params, carry0, x, run=run):
                final, ys = run(params, carry0, x, lengths, reverse)
                return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(final))
            g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, carry0, x)
            ref = g if ref is None else ref
            err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                      for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)))
            errors[f"{label} reverse={reverse}"] = err
    return errors


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="32,128,128,256", help="B,T,I,H (default %(default)s)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--unrolls", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny workload, 2 rounds")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.workload, args.rounds, args.number, args.unrolls = "2,8,8,16", 2, 1, [1]
    args.workload = tuple(int(v) for v in args.workload.split(","))
    if len(args.workload) != 4 or min(args.workload) < 1:
        p.error(f"--workload must be four integers >= 1, got {args.workload}")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    command = "python benchmarks/fused_backward.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    machine = _common.machine_info(packages=("jax", "jaxlib", "numpy"))   # load average before compute
    B, T, I, H = args.workload
    x_bm = jax.random.normal(jax.random.key(0), (B, T, I), jnp.float32)
    fns, errors = {}, {}
    for name in args.cells:
        cell = cells.make(name, H)
        params = cell.init(jax.random.key(1), I)
        carry0 = cell.initial_carry((B,))

        def make_loss(run):
            def loss(params, x):            # same layout and loss as the layer benchmark
                final, ys = run(params, carry0, jnp.swapaxes(x, 0, 1))
                # include the final carry so its cotangent path is exercised too
                return jnp.sum(ys ** 2) + 0.5 * sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(final))
            return loss
        reference = None
        for label, run in variants(name, args.unrolls).items():
            grad = jax.jit(jax.grad(make_loss(run), argnums=(0, 1)))
            g = grad(params, x_bm)
            if reference is None:
                reference = g
            errors[(name, label)] = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                                        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(reference)))
            fns[f"{name}/{label}"] = lambda grad=grad, p=params: jax.block_until_ready(grad(p, x_bm))
    times = _common.time_interleaved(fns, rounds=args.rounds, number=args.number, warmup=2)
    rows = []
    for key, secs in times.items():
        name, label = key.split("/")
        rows.append({"cell": name, "variant": label, **_common.summarize(secs),
                     "round_ms": [1e3 * s for s in secs], "max_rel_grad_error_vs_autodiff": errors[(name, label)]})
    for row in rows:
        ref = next(r for r in rows if r["cell"] == row["cell"] and r["variant"] == "autodiff")
        row["ratio_to_autodiff"] = row["median_ms"] / ref["median_ms"]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"benchmark": "fused_backward", "config": config, "command": command.strip(),
               "machine": machine, "rows": rows,
               "loadavg_at_end": list(os.getloadavg())}
    table = _common.markdown_table(
        ["cell", "variant", "fwd+bwd ms", "vs autodiff", "max rel. grad error"],
        [[r["cell"], r["variant"], r["median_ms"], f"{r['ratio_to_autodiff']:.2f}x",
          f"{r['max_rel_grad_error_vs_autodiff']:.1e}"] for r in rows])
    text = (f"### Fused backward (custom_vjp) vs autodiff of the scan\n\nB={B}, T={T}, I={I}, H={H}, "
            f"float32, gradient w.r.t. params and x of `sum(outputs**2) + 0.5*|final|^2`; medians of "
            f"{args.rounds} interleaved rounds x {args.number} calls.\n\n{table}\n"
            f"Machine: {_common.machine_line(payload['machine'])}.\n\nCommand: `{payload['command']}`\n")
    _common.write_results(out_dir, "fused_backward", payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
