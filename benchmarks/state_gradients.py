"""Cost of ``seqjax.gradients.state_gradients`` at T = 1000 against a plain backward pass and a naive per-step jacrev.

Three ways to look at a loss ``L = mean((h_T @ w - 1)^2)`` of a recurrent cell over T steps:

* ``value_and_grad``: one plain ``jax.value_and_grad`` of L w.r.t. the cell params
  (what a training step pays), the reference.
* ``state_gradients``: dL/dh_t for every t in one backward pass (zero perturbation
  added to the carry at every step). Target: at most 1.5x the reference.
* ``naive jacrev``: for each t, ``jax.jacrev`` of L w.r.t. the state h_t (the scan is
  rerun with h_t substituted): T forward+backward passes, O(T^2). Timed on a few
  steps t and extrapolated to all T steps (reported as such).

All three are jitted; medians of interleaved rounds (benchmarks/_common.py). The first two
also report the jit compile time and the achieved GFLOP/s: analytic matmul FLOPs
(``_common.recurrent_flops``: forward + weight gradients + the dh recursion for
``value_and_grad``, forward + the dh recursion for ``state_gradients``) over the median. Run::

    .venv/bin/python benchmarks/state_gradients.py
    .venv/bin/python benchmarks/state_gradients.py --quick --out /tmp/sg
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from seqjax import cells, gradients, io
from seqjax.recurrent import unroll

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def build(name: str, B: int, T: int, E: int, H: int, naive_steps: int):
    cell = cells.make(name, H)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = cell.init(k1, E)
    xs = jax.random.normal(k2, (B, T, E))
    w = jax.random.normal(k3, (H,)) / jnp.sqrt(H)
    carry0 = cell.initial_carry((B,))

    def loss_of_outputs(ys):                                   # ys (B, T, H): read the last step
        return jnp.mean((ys[:, -1] @ w - 1.0) ** 2)

    def plain_loss(params):
        return loss_of_outputs(unroll(cell.step, params, carry0, xs)[1])

    vg = _common.CompiledRunner(jax.jit(jax.value_and_grad(plain_loss)), params)
    sg = _common.CompiledRunner(jax.jit(lambda p: gradients.state_gradients(cell, p, xs, loss_of_outputs)), params)

    idx = jnp.arange(T)

    def loss_with_state_at(params, t, s):                      # rerun, substituting the carry after step t
        def step(p, c, x_i):
            x, i = x_i
            c, _ = cell.step(p, c, x)
            c = jax.tree.map(lambda a, b: jnp.where((i == t)[:, None], b, a), c, s)   # i (B,)
            return c, cell.output(c)
        return loss_of_outputs(unroll(step, params, carry0, (xs, jnp.broadcast_to(idx, (B, T))))[1])

    states = jax.jit(lambda p: unroll(lambda p_, c, x: (lambda n: (n, n))(cell.step(p_, c, x)[0]),
                                      p, carry0, xs)[1])(params)             # (B, T, H) leaves
    ts = np.linspace(0, T - 1, naive_steps).astype(int)
    naive_one = jax.jit(lambda p, t, s: jax.jacrev(loss_with_state_at, argnums=2)(p, t, s))

    def naive_subset():
        return [naive_one(params, int(t), jax.tree.map(lambda a: a[:, t], states)) for t in ts]

    # correctness: the naive per-step derivative equals state_gradients at the sampled steps
    g = sg()
    err = 0.0
    for t, gn in zip(ts, naive_subset()):
        for a, b in zip(jax.tree.leaves(gn), jax.tree.leaves(jax.tree.map(lambda x: x[:, t], g))):
            scale = float(jnp.max(jnp.abs(b))) or 1.0
            err = max(err, float(jnp.max(jnp.abs(a - b))) / scale)
    fns = {
        "value_and_grad": vg,
        "state_gradients": sg,
        "naive_subset": lambda: jax.block_until_ready(naive_subset()),
    }
    return fns, ts, err


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", "-T", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--cells", default="rnn_tanh,lstm,gru")
    p.add_argument("--naive-steps", type=int, default=5, help="steps t timed for the naive method")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.length, args.batch_size, args.hidden_size, args.rounds, args.naive_steps = 50, 4, 16, 2, 2
    out_dir = io.ensure_writable_dir(args.out)
    info = _common.machine_info(("jax", "jaxlib", "numpy", "torch"))
    peak = _common.peak_flop_per_s(info)
    results, rows = [], []
    T = args.length
    for name in args.cells.split(","):
        fns, ts, err = build(name, args.batch_size, T, args.input_size, args.hidden_size, args.naive_steps)
        times = _common.time_interleaved(fns, rounds=args.rounds)
        s = {k: _common.summarize(v) for k, v in times.items()}
        ref = s["value_and_grad"]["median_ms"]
        naive_total = s["naive_subset"]["median_ms"] / len(ts) * T
        for method, mode in (("value_and_grad", "grad"), ("state_gradients", "state_grad")):
            flops = _common.workload_flops(_common.recurrent_flops(
                _common.cell_gates(name), args.batch_size, T, args.input_size, args.hidden_size, mode=mode))
            s[method].update(compile_s=fns[method].compile_seconds,
                             **_common.flop_columns(flops, s[method]["median_ms"] / 1e3, peak))
        flop_cells = lambda m: [f"{s[m]['gflop_per_s']:.1f}", f"{100 * s[m]['fraction_of_peak']:.1f}",  # noqa: E731
                                f"{s[m]['compile_s']:.2f}"]
        results.append({"cell": name, "timings": s, "naive_steps_timed": ts.tolist(),
                        "naive_extrapolated_ms": naive_total, "max_rel_diff_naive_vs_state_gradients": err,
                        "state_gradients_vs_value_and_grad": s["state_gradients"]["median_ms"] / ref})
        rows += [[name, "value_and_grad (params)", ref, "1.00x", *flop_cells("value_and_grad")],
                 [name, "state_gradients (all t)", s["state_gradients"]["median_ms"],
                  f"{s['state_gradients']['median_ms'] / ref:.2f}x", *flop_cells("state_gradients")],
                 [name, f"naive jacrev per t (x{T}, extrapolated from {len(ts)})", naive_total,
                  f"{naive_total / ref:.0f}x", "–", "–", "–"]]
        print(f"{name}: value_and_grad {ref:.1f} ms, state_gradients {s['state_gradients']['median_ms']:.1f} ms "
              f"({s['state_gradients']['median_ms'] / ref:.2f}x), naive ~{naive_total:.0f} ms; "
              f"naive vs state_gradients max rel diff {err:.1e}", flush=True)
    command = "python benchmarks/state_gradients.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"### state_gradients: all dL/dh_t in one backward pass\n\n"
            f"B={args.batch_size}, T={T}, E={args.input_size}, H={args.hidden_size}, float32, loss on the last "
            f"step; medians of {args.rounds} interleaved rounds. Target: state_gradients <= 1.5x value_and_grad.\n\n"
            + _common.markdown_table(["cell", "method", "ms", "vs value_and_grad", "GFLOP/s", "% of peak",
                                      "compile s"], rows)
            + f"\nMachine: {_common.machine_line(info)} (load average at start {info['loadavg_at_start']}).\n\n"
            f"Command: `{command.strip()}`\n")
    payload = {"benchmark": "state_gradients", "config": vars(args) | {"out": str(args.out)},
               "command": command.strip(), "machine": info, "results": results}
    _common.write_results(out_dir, "state_gradients", payload, text)
    print(text)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
