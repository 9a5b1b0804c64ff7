"""Prototype: a recurrent unroll with a hand-made backward pass (``jax.custom_vjp``).

Autodiff of ``lax.scan`` accumulates dW_ih, dW_hh and the biases inside the backward
loop (one small outer product per step for each) and stacks every intermediate of
the step as a residual. cuDNN-style training instead runs a backward scan that only
propagates dh (and dc) and emits the pre-activation gradients per step, then forms
every weight gradient with ONE large matmul after the loop (ANCHORS §4). This
script measures that idea against seqjax's current unroll (autodiff), forward +
backward of ``sum(outputs**2)``, and checks the gradients against autodiff.

Variants (time-major scan, no padding, one direction):

- ``autodiff``: ``seqjax.recurrent.unroll(cell.step, ...)``, differentiated by JAX.
- ``fused_generic``: custom_vjp for any cell written as
  ``pointwise(carry, xp, hp) -> (carry, y)`` with ``xp = x W_ih + b_ih`` and
  ``hp = h W_hh + b_hh``; the forward saves xp, hp and the carries, the backward
  re-runs ``pointwise`` under ``jax.vjp`` per step.
- ``fused_lstm`` / ``fused_gru`` / ``fused_rnn``: the same with the per-step
  backward written by hand, saving only the gate activations (LSTM: i, f, g, o and c).

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
from typing import Any, Callable

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


def _weight_grads(params, x, h_prev, dxp, dhp):
    """All parameter gradients and dx from the stacked per-step gradients, one matmul each.

    x (T, B, E), h_prev (T, B, H), dxp and dhp (T, B, G*H).
    """
    grads = {"w_ih": jnp.einsum("tbe,tbg->eg", x, dxp), "w_hh": jnp.einsum("tbh,tbg->hg", h_prev, dhp)}
    if "b_ih" in params:
        grads["b_ih"] = dxp.sum((0, 1))
        grads["b_hh"] = dhp.sum((0, 1))
    return grads, dxp @ params["w_ih"].T


def _projections(params, x_t, h):
    xp = x_t @ params["w_ih"] + params.get("b_ih", 0.0)
    hp = h @ params["w_hh"] + params.get("b_hh", 0.0)
    return xp, hp


def fused_generic(pointwise: Callable, unroll: int = 1) -> Callable:
    """``run(params, carry0, x) -> (final, ys)`` for x (T, B, E), with the fused backward."""

    def forward(params, carry0, x):
        def step(carry, x_t):
            xp, hp = _projections(params, x_t, _h(carry))
            new, y = pointwise(carry, xp, hp)
            return new, (y, xp, hp, carry)
        final, (ys, xps, hps, carries) = jax.lax.scan(step, carry0, x, unroll=unroll)
        return (final, ys), (params, x, xps, hps, carries)

    def backward(res, cotangents):
        params, x, xps, hps, carries = res
        dfinal, dys = cotangents
        w_hh_t = params["w_hh"].T

        def step(dcarry, inputs):
            xp, hp, carry, dy = inputs
            _, vjp = jax.vjp(pointwise, carry, xp, hp)
            dcarry_prev, dxp, dhp = vjp((dcarry, dy))
            return _add_h(dcarry_prev, dhp @ w_hh_t), (dxp, dhp)
        dcarry0, (dxps, dhps) = jax.lax.scan(step, dfinal, (xps, hps, carries, dys),
                                             reverse=True, unroll=unroll)
        grads, dx = _weight_grads(params, x, _h(carries), dxps, dhps)
        return grads, dcarry0, dx

    run = jax.custom_vjp(lambda params, carry0, x: forward(params, carry0, x)[0])
    run.defvjp(forward, backward)
    return run


def fused_lstm(unroll: int = 1) -> Callable:
    """LSTM with a hand-written backward; residuals: activated gates (T, B, 4H) and c (T, B, H)."""

    def forward(params, carry0, x):
        def step(carry, x_t):
            xp, hp = _projections(params, x_t, carry.h)
            a_i, a_f, a_g, a_o = jnp.split(xp + hp, 4, axis=-1)
            i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
            c = f * carry.c + i * g
            h = o * jnp.tanh(c)
            return LSTMState(h, c), (h, jnp.concatenate([i, f, g, o], -1), c)
        final, (ys, acts, cs) = jax.lax.scan(step, carry0, x, unroll=unroll)
        return (final, ys), (params, x, carry0, ys, acts, cs)

    def backward(res, cotangents):
        params, x, carry0, ys, acts, cs = res
        dfinal, dys = cotangents
        c_prev = jnp.concatenate([carry0.c[None], cs[:-1]])
        h_prev = jnp.concatenate([carry0.h[None], ys[:-1]])
        w_hh_t = params["w_hh"].T

        def step(dcarry, inputs):
            act, c, cp, dy = inputs
            i, f, g, o = jnp.split(act, 4, axis=-1)
            dh = dcarry.h + dy
            tc = jnp.tanh(c)
            dc = dcarry.c + dh * o * (1.0 - tc * tc)
            dgates = jnp.concatenate([dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f),
                                      dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], -1)
            return LSTMState(dgates @ w_hh_t, dc * f), dgates
        dcarry0, dgates = jax.lax.scan(step, dfinal, (acts, cs, c_prev, dys), reverse=True, unroll=unroll)
        grads, dx = _weight_grads(params, x, h_prev, dgates, dgates)
        return grads, dcarry0, dx

    run = jax.custom_vjp(lambda params, carry0, x: forward(params, carry0, x)[0])
    run.defvjp(forward, backward)
    return run


def fused_gru(unroll: int = 1) -> Callable:
    """GRU with a hand-written backward; residuals r, z, n and u_n = (h W_hh + b_hh)_n."""

    def forward(params, carry0, x):
        def step(h, x_t):
            xp, hp = _projections(params, x_t, h)
            a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
            u_r, u_z, u_n = jnp.split(hp, 3, axis=-1)
            r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
            n = jnp.tanh(a_n + r * u_n)
            h = (1.0 - z) * n + z * h
            return h, (h, jnp.concatenate([r, z, n, u_n], -1))
        final, (ys, acts) = jax.lax.scan(step, carry0, x, unroll=unroll)
        return (final, ys), (params, x, carry0, ys, acts)

    def backward(res, cotangents):
        params, x, carry0, ys, acts = res
        dfinal, dys = cotangents
        h_prev = jnp.concatenate([carry0[None], ys[:-1]])
        w_hh_t = params["w_hh"].T

        def step(dh, inputs):
            act, hp_, dy = inputs
            r, z, n, u_n = jnp.split(act, 4, axis=-1)
            dh = dh + dy
            dn = dh * (1.0 - z) * (1.0 - n * n)
            dr = dn * u_n * r * (1.0 - r)
            dz = dh * (hp_ - n) * z * (1.0 - z)
            dhp = jnp.concatenate([dr, dz, dn * r], -1)
            return dh * z + dhp @ w_hh_t, (jnp.concatenate([dr, dz, dn], -1), dhp)
        dh0, (dxp, dhp) = jax.lax.scan(step, dfinal, (acts, h_prev, dys), reverse=True, unroll=unroll)
        grads, dx = _weight_grads(params, x, h_prev, dxp, dhp)
        return grads, dh0, dx

    run = jax.custom_vjp(lambda params, carry0, x: forward(params, carry0, x)[0])
    run.defvjp(forward, backward)
    return run


def fused_rnn(unroll: int = 1) -> Callable:
    """tanh RNN with a hand-written backward; residuals: the outputs only."""

    def forward(params, carry0, x):
        def step(h, x_t):
            xp, hp = _projections(params, x_t, h)
            h = jnp.tanh(xp + hp)
            return h, h
        final, ys = jax.lax.scan(step, carry0, x, unroll=unroll)
        return (final, ys), (params, x, carry0, ys)

    def backward(res, cotangents):
        params, x, carry0, ys = res
        dfinal, dys = cotangents
        w_hh_t = params["w_hh"].T

        def step(dh, inputs):
            h, dy = inputs
            dpre = (dh + dy) * (1.0 - h * h)
            return dpre @ w_hh_t, dpre
        dh0, dpre = jax.lax.scan(step, dfinal, (ys, dys), reverse=True, unroll=unroll)
        h_prev = jnp.concatenate([carry0[None], ys[:-1]])
        grads, dx = _weight_grads(params, x, h_prev, dpre, dpre)
        return grads, dh0, dx

    run = jax.custom_vjp(lambda params, carry0, x: forward(params, carry0, x)[0])
    run.defvjp(forward, backward)
    return run


HAND_WRITTEN = {"lstm": fused_lstm, "gru": fused_gru, "rnn_tanh": fused_rnn}


def variants(cell_name: str, unrolls=(1, 2)) -> dict[str, Callable]:
    """``{label: run(params, carry0, x_tm) -> (final, ys)}`` for one cell."""
    cell = cells.make(cell_name, 1)   # only its step is used; H comes from the params

    def autodiff(u):
        return lambda params, carry0, x: recurrent.unroll(cell.step, params, carry0, x,
                                                          time_major=True, unroll=u)
    out = {}
    for u in unrolls:
        suffix = "" if u == 1 else f" unroll={u}"
        out["autodiff" + suffix] = autodiff(u)
        out["fused_generic" + suffix] = fused_generic(POINTWISE[cell_name], u)
        out["fused_hand" + suffix] = HAND_WRITTEN[cell_name](u)
    return out


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
               "machine": _common.machine_info(packages=("jax", "jaxlib", "numpy")), "rows": rows,
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
