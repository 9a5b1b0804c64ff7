"""Is computing the input projection x @ W_ih for all steps outside the scan faster?

The input projection should be hoisted out of the scan if, and only if, it is
measured to be faster. This script measures it for the LSTM, GRU and tanh-RNN
cells, forward+backward of ``sum(outputs**2)`` w.r.t. the params (and the forward
alone, to locate a difference), in one process, interleaved rounds, medians:

- ``inside``: what ``seqjax.recurrent.layer`` does: ``unroll(cell.step, ...)`` over
  batch-major x; every step computes ``x_t @ W_ih + b_ih`` and ``h @ W_hh + b_hh``.
- ``hoisted``: ``xp = cell.input_proj(params, x)`` on (B, T, E) at once, then
  ``unroll(cell.recurrent_step, ...)`` over xp (the minimal change to the layer).
- ``hoisted_tm``: the same, but x is transposed to time-major before the projection
  so the scan reads xp (T, B, G*H) without transposing the larger array.

It also records, from the compiled HLO of each gradient, the bytes carried by the
forward while loop (the stacked per-step residuals autodiff saves), the jit compile
time, and the achieved GFLOP/s: the layer's analytic matmul FLOPs
(``_common.recurrent_flops``, the same count for every variant) over the median. Run::

    .venv/bin/python benchmarks/input_projection.py
    .venv/bin/python benchmarks/input_projection.py --quick --out /tmp/ip
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from benchmarks import _common
from seqjax import cells, io, recurrent

CELLS = ("lstm", "gru", "rnn_tanh")
VARIANTS = ("inside", "hoisted", "hoisted_tm")
DEFAULT_WORKLOADS = ("32,128,128,256", "16,64,64,128")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def variant_loss(cell: cells.Cell, variant: str, batch: int) -> Callable:
    """``loss(params, x) = sum(outputs**2)`` for one way of placing the input projection."""
    carry0 = lambda x: cell.initial_carry((batch,), x.dtype)  # noqa: E731

    def inside(params, x):                           # x (B, T, E)
        _, ys = recurrent.unroll(cell.step, params, carry0(x), x)
        return jnp.sum(ys ** 2)

    def hoisted(params, x):
        xp = cell.input_proj(params, x)              # (B, T, G*H)
        _, ys = recurrent.unroll(cell.recurrent_step, params, carry0(x), xp)
        return jnp.sum(ys ** 2)

    def hoisted_tm(params, x):
        xp = cell.input_proj(params, jnp.swapaxes(x, 0, 1))      # (T, B, G*H)
        _, ys = recurrent.unroll(cell.recurrent_step, params, carry0(x), xp, time_major=True)
        return jnp.sum(ys ** 2)                      # the sum does not care about the layout

    return {"inside": inside, "hoisted": hoisted, "hoisted_tm": hoisted_tm}[variant]


_SHAPE = re.compile(r"(f32|f64|bf16|f16|s32|pred)\[([\d,]*)\]")
_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "pred": 1}


def while_loop_bytes(hlo_text: str) -> list[int]:
    """Bytes of the state tuple of every top-level ``while`` in compiled HLO text."""
    sizes = []
    for line in hlo_text.splitlines():
        m = re.match(r"\s*%\S+ = \((.*?)\) while\(", line)
        if not m:
            continue
        total = 0
        for dtype, dims in _SHAPE.findall(m.group(1)):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            total += n * _BYTES[dtype]
        sizes.append(total)
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS),
                   help="workloads as B,T,I,H (default: %(default)s)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke test: one tiny workload, 2 rounds")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.workloads, args.rounds, args.number = ["2,8,8,16"], 2, 1
    try:
        args.workloads = [tuple(int(v) for v in w.split(",")) for w in args.workloads]
    except ValueError:
        p.error(f"--workloads must be B,T,I,H integers, got {args.workloads}")
    if any(len(w) != 4 or min(w) < 1 for w in args.workloads):
        p.error(f"--workloads must be four integers >= 1 each, got {args.workloads}")
    return args


def run_workload(workload, cell_names, rounds: int, number: int, peak: float | None = None
                 ) -> list[dict[str, Any]]:
    B, T, I, H = workload
    x = jax.random.normal(jax.random.key(0), (B, T, I), jnp.float32)
    fns, hlo = {}, {}
    for name in cell_names:
        cell = cells.make(name, H)
        params = cell.init(jax.random.key(1), I)
        for variant in VARIANTS:
            loss = variant_loss(cell, variant, B)
            grad = _common.CompiledRunner(jax.jit(jax.grad(loss)), params, x)
            hlo[(name, variant)] = while_loop_bytes(grad.compiled.as_text())
            fns[f"{name}/{variant}/fwd+bwd"] = grad
            fns[f"{name}/{variant}/fwd"] = _common.CompiledRunner(jax.jit(loss), params, x)
    times = _common.time_interleaved(fns, rounds=rounds, number=number, warmup=2)
    rows = []
    for key, secs in times.items():
        name, variant, mode = key.split("/")
        stats = _common.summarize(secs)
        flops = _common.workload_flops(_common.recurrent_flops(
            _common.cell_gates(name), B, T, I, H, mode="grad" if mode == "fwd+bwd" else "forward"))
        rows.append({"workload": {"B": B, "T": T, "I": I, "H": H}, "cell": name, "variant": variant,
                     "mode": mode, **stats, "round_ms": [1e3 * s for s in secs],
                     "while_loop_state_bytes": hlo[(name, variant)], "compile_s": fns[key].compile_seconds,
                     **_common.flop_columns(flops, stats["median_ms"] / 1e3, peak)})
    for row in rows:    # ratio to `inside` for the same cell and mode
        ref = next(r for r in rows if r["cell"] == row["cell"] and r["mode"] == row["mode"]
                   and r["variant"] == "inside")
        row["ratio_to_inside"] = row["median_ms"] / ref["median_ms"]
    return rows


def markdown(payload: dict[str, Any]) -> str:
    lines = ["### Input projection inside the scan vs hoisted out of it\n",
             f"Medians of {payload['config']['rounds']} interleaved rounds x "
             f"{payload['config']['number']} calls, float32, one process; ratio < 1 means "
             "faster than computing `x_t @ W_ih` inside each step.\n"]
    for w in payload["config"]["workloads"]:
        B, T, I, H = w
        rows = [r for r in payload["rows"] if tuple(r["workload"][k] for k in "BTIH") == tuple(w)]
        table = []
        for name in payload["config"]["cells"]:
            for variant in VARIANTS:
                fb = next(r for r in rows if r["cell"] == name and r["variant"] == variant
                          and r["mode"] == "fwd+bwd")
                fw = next(r for r in rows if r["cell"] == name and r["variant"] == variant
                          and r["mode"] == "fwd")
                table.append([name, variant, fb["median_ms"], f"{fb['ratio_to_inside']:.2f}x",
                              fw["median_ms"], f"{fw['ratio_to_inside']:.2f}x",
                              f"{sum(fb['while_loop_state_bytes']) / 2**20:.1f}", f"{fb['gflop_per_s']:.1f}",
                              f"{100 * fb['fraction_of_peak']:.1f}", f"{fb['compile_s']:.2f}"])
        lines.append(f"\n**B={B}, T={T}, I={I}, H={H}**\n")
        lines.append(_common.markdown_table(
            ["cell", "variant", "fwd+bwd ms", "vs inside", "fwd ms", "vs inside", "while-loop state MiB",
             "fwd+bwd GFLOP/s", "% of peak", "compile s"],
            table))
    lines.append(f"\nMachine: {_common.machine_line(payload['machine'])}.\n\nCommand: `{payload['command']}`\n")
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    command = _common.command_line("input_projection.py", argv)
    machine = _common.machine_info(packages=("jax", "jaxlib", "numpy", "torch"))   # load average before compute
    rows = []
    for workload in args.workloads:
        print(f"workload B,T,I,H = {workload}", flush=True)
        rows += run_workload(workload, args.cells, args.rounds, args.number, _common.peak_flop_per_s(machine))
    payload = _common.result_record("input_projection", args, command, machine, rows=rows)
    text = markdown(payload)
    _common.write_results(out_dir, "input_projection", payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
