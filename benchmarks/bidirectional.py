"""Prototype: run both directions of a bidirectional layer as ONE vmapped scan.

seqjax's layer runs the forward and the backward direction as two scans, one after
the other. Stacking the two directions' params on a leading axis of size 2 and
``jax.vmap``-ing one scan over it runs both in the same loop (batched matmuls per
step, half the loop trips). The backward direction reads each sequence reversed
within its own length (a gather), so padding semantics are kept. This script
measures forward+backward of ``sum(outputs**2)`` for both forms and checks that the
outputs and gradients agree. Run::

    .venv/bin/python benchmarks/bidirectional.py
    .venv/bin/python benchmarks/bidirectional.py --quick --out /tmp/bd
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from benchmarks import _common
from seqjax import cells, io, recurrent

CELLS = ("lstm", "gru", "rnn_tanh")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def reverse_within_lengths(x, lengths):
    """x (B, T, ...) -> each sequence's valid prefix reversed in place; padding stays put."""
    T = x.shape[1]
    t = jnp.arange(T)[None, :]                                     # (1, T)
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)   # (B, T)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def vmapped_bidirectional(cell: cells.Cell):
    """apply(params_fb, x, lengths) -> outputs (B, T, 2H) with one vmapped scan.

    ``params_fb`` is ``{"forward": p, "backward": p}``; both directions run as a forward
    scan over [x, x reversed within lengths], then the second output is reversed back.
    """
    def apply(params_fb, x, lengths):
        B = x.shape[0]
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params_fb["forward"], params_fb["backward"])
        xs = jnp.stack([x, reverse_within_lengths(x, lengths)])       # (2, B, T, E)
        carry0 = cell.initial_carry((B,), x.dtype)

        def one(params, xd):
            return recurrent.unroll(cell.step, params, carry0, xd, lengths=lengths)[1]
        ys = jax.vmap(one)(stacked, xs)                                # (2, B, T, H)
        return jnp.concatenate([ys[0], reverse_within_lengths(ys[1], lengths)], axis=-1)
    return apply


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="32,128,128,256", help="B,T,I,H (default %(default)s)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--number", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.workload, args.rounds, args.number = "3,8,8,16", 2, 1
    args.workload = tuple(int(v) for v in args.workload.split(","))
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    command = "python benchmarks/bidirectional.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    machine = _common.machine_info(packages=("jax", "jaxlib", "numpy"))   # load average before compute
    B, T, I, H = args.workload
    x = jax.random.normal(jax.random.key(0), (B, T, I), jnp.float32)
    lengths = jnp.maximum(1, T - jnp.arange(B) * (T // (2 * B) or 1)).astype(jnp.int32)  # varied, max T
    fns, errors = {}, {}
    for name in args.cells:
        cell = cells.make(name, H)
        layer = recurrent.layer(cell, bidirectional=True)
        params = layer.init(jax.random.key(1), I)
        vm = vmapped_bidirectional(cell)
        losses = {"two scans (seqjax layer)": lambda p, x: jnp.sum(layer.apply(p, x, lengths=lengths)[0] ** 2),
                  "one vmapped scan": lambda p, x: jnp.sum(vm(p["layers"][0], x, lengths) ** 2)}
        grads = {}
        for label, loss in losses.items():
            g = jax.jit(jax.grad(loss))
            grads[label] = g(params, x)
            fns[f"{name}/{label}"] = lambda g=g, p=params: jax.block_until_ready(g(p, x))
        a, b = (jax.tree.leaves(v) for v in grads.values())
        errors[name] = max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30)) for u, v in zip(a, b))
    times = _common.time_interleaved(fns, rounds=args.rounds, number=args.number, warmup=2)
    rows = []
    for key, secs in times.items():
        name, label = key.split("/")
        rows.append({"cell": name, "variant": label, **_common.summarize(secs),
                     "round_ms": [1e3 * s for s in secs], "max_rel_grad_diff": errors[name]})
    for row in rows:
        ref = next(r for r in rows if r["cell"] == row["cell"] and r["variant"].startswith("two"))
        row["ratio"] = row["median_ms"] / ref["median_ms"]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"benchmark": "bidirectional", "config": config, "command": command.strip(),
               "machine": machine, "rows": rows,
               "lengths": lengths, "loadavg_at_end": list(os.getloadavg())}
    table = _common.markdown_table(["cell", "variant", "fwd+bwd ms", "vs two scans", "max rel. grad diff"],
                                   [[r["cell"], r["variant"], r["median_ms"], f"{r['ratio']:.2f}x",
                                     f"{r['max_rel_grad_diff']:.1e}"] for r in rows])
    text = (f"### Bidirectional layer: two scans vs one vmapped scan\n\nB={B}, T={T}, I={I}, H={H}, "
            f"varied lengths, float32; medians of {args.rounds} interleaved rounds x {args.number} calls."
            f"\n\n{table}\nMachine: {_common.machine_line(payload['machine'])}.\n\n"
            f"Command: `{payload['command']}`\n")
    _common.write_results(out_dir, "bidirectional", payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
