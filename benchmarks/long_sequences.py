"""Memory and time of an LSTM gradient against sequence length, with and without rematerialisation.

One LSTM layer (H=128, B=8, E=128 by default), the gradient of ``sum(outputs**2)``
with respect to the parameters, at T = 1,024 ... 65,536, through
``recurrent.layer(cell)`` and ``recurrent.layer(cell, remat=K)`` (segments of K steps
under ``jax.checkpoint``). Each (T, variant) runs in its own subprocess, so its peak
resident memory is its own. Reported per point:

* ``xla_temp_gib``: XLA's accounting of the compiled gradient's temporary buffers
  (``compiled.memory_analysis()``), deterministic;
* ``peak_rss_gib``: the subprocess's peak resident set size (``ru_maxrss``), which also
  holds the Python interpreter, JAX and the inputs;
* ``seconds``: median wall time of one gradient call over ``--repeats`` calls, and the
  jit compile time (``.lower().compile()``);
* ``gflop_per_s``: the layer's analytic matmul FLOPs (``_common.recurrent_flops``; the
  forward recomputed under remat is not counted) over ``seconds``, and its fraction of the
  float32 matmul peak measured once in the parent process.

Run::

    .venv/bin/python benchmarks/long_sequences.py                  # writes results/long_sequences.{json,md}
    .venv/bin/python benchmarks/long_sequences.py --quick --out /tmp/ls
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def measure(T: int, remat: int | None, B: int, E: int, H: int, repeats: int) -> dict:
    """One point, in this process: compile, time and measure the gradient (call in a subprocess)."""
    import resource

    import jax
    import jax.numpy as jnp

    from seqjax import cells, recurrent

    layer = recurrent.layer(cells.lstm(H), remat=remat)
    params = layer.init(jax.random.key(0), E)
    x = jax.random.normal(jax.random.key(1), (B, T, E))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x)[0] ** 2)))
    start = time.perf_counter()
    compiled = grad.lower(params, x).compile()
    compile_s = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss        # KiB on Linux
    return {"T": T, "remat": remat, "xla_temp_gib": temp / 2**30, "peak_rss_gib": peak_kib / 2**20,
            "seconds": statistics.median(times), "compile_seconds": compile_s}


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--remat", type=int, default=256, help="segment length K of the remat variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for tests")
    parser.add_argument("--point", help=argparse.SUPPRESS)               # internal: one point, JSON on stdout
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.remat, args.batch, args.input_size, args.hidden, args.repeats = [64, 256], 16, 2, 8, 8, 1
    for name in ("remat", "batch", "input_size", "hidden", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(t < 1 for t in args.lengths):
        parser.error(f"--lengths must be >= 1, got {args.lengths}")
    if args.point:
        T, remat = json.loads(args.point)
        print(json.dumps(measure(T, remat, args.batch, args.input_size, args.hidden, args.repeats)))
        return args.out

    info = _common.machine_info(packages=("jax", "jaxlib", "numpy", "torch"))
    peak = _common.peak_flop_per_s(info)
    gates = _common.cell_gates("lstm")
    rows = []
    for T in args.lengths:
        for remat in (None, args.remat):
            cmd = [sys.executable, __file__, "--point", json.dumps([T, remat]), "--batch", str(args.batch),
                   "--input-size", str(args.input_size), "--hidden", str(args.hidden),
                   "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            r.update(_common.flop_columns(_common.recurrent_flops(gates, args.batch, T, args.input_size,
                                                                  args.hidden), r["seconds"], peak))
            print(f"T={T:6d} remat={str(remat):>5}: XLA temp {r['xla_temp_gib']:.3f} GiB, peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB, {r['seconds']:.2f} s/grad, compile {r['compile_seconds']:.1f} s",
                  flush=True)
    command = "python benchmarks/long_sequences.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    md = (f"# LSTM gradient memory and time against T\n\n`{command}`; H={args.hidden}, B={args.batch}, "
          f"E={args.input_size}, remat segment K={args.remat}.\n\nMachine: {_common.machine_line(info)}\n\n"
          + _common.markdown_table(
              ["T", "remat", "XLA temp (GiB)", "peak RSS (GiB)", "s / gradient", "GFLOP/s", "% of peak",
               "compile (s)"],
              [[r["T"], r["remat"] or "-", f"{r['xla_temp_gib']:.3f}", f"{r['peak_rss_gib']:.2f}",
                f"{r['seconds']:.2f}", f"{r['gflop_per_s']:.1f}", f"{100 * r['fraction_of_peak']:.1f}",
                f"{r['compile_seconds']:.1f}"] for r in rows]))
    stem = "long_sequences" + ("_quick" if args.quick else "")
    _common.write_results(args.out, stem, {"benchmark": "long_sequences", "command": command, "machine": info,
                                            "rows": rows,
                                            "config": {k: v for k, v in vars(args).items() if k != "out"}},
                          md)
    print(f"wrote {args.out / (stem + '.md')}")
    return args.out


if __name__ == "__main__":
    main()
