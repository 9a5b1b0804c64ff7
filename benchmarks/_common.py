"""Shared benchmark helpers: interleaved timing, machine facts, FLOP counts, result writers.

Benchmarks here compare implementations in ONE process. Each round runs every
candidate once (``number`` calls back to back, in an order rotated every round), so
slow drifts of a noisy machine (other jobs, thermal limits) hit every candidate
alike; the statistic is the median over rounds, and tables report ratios of such
medians, which travel across machines better than absolute times.

Every result file also carries the physical floor of its workloads:

* the machine's **measured matmul peak** (:func:`matmul_peak`: the best of a few large
  square matmuls, once per results file, in ``machine["matmul_peak"]``);
* the **FLOPs of each workload** (:func:`workload_flops`), counted once and shared by
  every implementation of it: XLA's own count of the compiled seqjax program
  (``compiled.cost_analysis()["flops"]``) when that program has no loop, else the
  analytic matmul count of :func:`recurrent_flops` / :func:`attention_flops` /
  :func:`encoder_layer_flops` (XLA's cost analysis counts a ``while`` body once, not once
  per trip, so it undercounts everything built on ``lax.scan``); where both exist they
  agree within a few percent (``tests/test_benchmarks.py``);
* per row, the **achieved FLOP/s** (workload FLOPs / median seconds), its **fraction of
  the peak**, and the **jit compile time** of JAX candidates (``.lower().compile()``,
  timed by :class:`CompiledRunner`).
"""

from __future__ import annotations

import datetime
import importlib
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from seqjax import io

__all__ = ["time_interleaved", "summarize", "ratio_rows", "baseline_name", "ratio_table", "machine_info",
           "machine_line", "markdown_table", "fmt_optional", "command_line", "result_record", "write_results",
           "matmul_peak", "peak_flop_per_s", "CompiledRunner", "xla_flops", "cell_gates", "recurrent_flops", "attention_flops",
           "encoder_layer_flops", "workload_flops", "flop_columns"]


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, rounds: int, number: int = 1,
                     warmup: int = 1, log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Time zero-argument callables in interleaved rounds.

    Each callable must block until its work is done (``jax.block_until_ready`` for
    JAX). Every callable first runs ``warmup`` times (compilation, allocator warm-up);
    then, in each of ``rounds`` rounds, every callable runs ``number`` times back to
    back and the mean seconds per call is recorded. The order of callables rotates
    by one each round.

    Returns:
      ``{name: [seconds per call, one entry per round]}``.
    """
    if rounds < 1 or number < 1 or warmup < 0:
        raise ValueError(f"rounds and number must be >= 1 and warmup >= 0, got "
                         f"rounds={rounds}, number={number}, warmup={warmup}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
        if log is not None:
            log(f"round {r + 1}/{rounds} done")
    return times


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and min of per-call times, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "min_ms": ms[0]}


def ratio_rows(candidates: Sequence[tuple[str, str, Any]], times: Mapping[str, list[float]],
               group: str, *, flops: Mapping[str, Mapping[str, Any]] | None = None,
               peak: float | None = None, baselines: Sequence[str] = ("PyTorch", "seqjax")
               ) -> list[dict[str, Any]]:
    """One row per ``(group_value, implementation, fn)`` candidate, timed under the key
    ``"<group_value>/<implementation>"``: summary statistics, the raw per-round times and
    the ratio of its median to the first of ``baselines`` present in the same group
    (PyTorch's, or seqjax's when torch is absent).

    With ``flops`` (``{group_value: workload_flops(...)}``) and ``peak`` (FLOP/s), each row
    also gets :func:`flop_columns`; every row gets ``compile_s``, the jit compile time of a
    :class:`CompiledRunner` candidate (None for others, e.g. PyTorch's eager calls).
    """
    rows = [{group: g, "implementation": impl, **summarize(times[f"{g}/{impl}"]),
             "round_ms": [1e3 * t for t in times[f"{g}/{impl}"]],
             "compile_s": getattr(fn, "compile_seconds", None)} for g, impl, fn in candidates]
    for row in rows:
        same = {r["implementation"]: r for r in rows if r[group] == row[group]}
        base = same[next((b for b in baselines if b in same), next(iter(same)))]  # else the group's first
        row["baseline"] = base["implementation"]
        row["ratio"] = row["median_ms"] / base["median_ms"]
        if flops is not None:
            row.update(flop_columns(flops[row[group]], row["median_ms"] / 1e3, peak))
    return rows


def baseline_name(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the ratios of :func:`ratio_rows` are relative to: PyTorch, or seqjax without torch."""
    return "PyTorch" if any(r["implementation"] == "PyTorch" for r in rows) else "seqjax"


def fmt_optional(value: float | None, fmt: str) -> str:
    """``format(value, fmt)``, or an en dash for a value not measured (None)."""
    return "–" if value is None else format(value, fmt)


def ratio_table(rows: Sequence[Mapping[str, Any]], group: str, titles: Mapping[str, str],
                base: str | None = None) -> str:
    """The markdown table of :func:`ratio_rows`: group, implementation, median, IQR, ratio (to
    ``base``, by default :func:`baseline_name`) and, when the rows have them, achieved
    GFLOP/s, its percentage of the matmul peak and the jit compile time."""
    base = baseline_name(rows) if base is None else base
    headers = [group, "implementation", "median ms", "IQR ms", f"vs {base}"]
    with_flops = any("gflop_per_s" in r for r in rows)
    if with_flops:
        headers += ["GFLOP/s", "% of peak"]
    headers.append("compile s")
    body = []
    for r in rows:
        line = [titles.get(r[group], r[group]), r["implementation"], r["median_ms"],
                f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}", f"{r['ratio']:.2f}x"]
        if with_flops:
            frac = r.get("fraction_of_peak")
            line += [fmt_optional(r.get("gflop_per_s"), ".1f"),
                     fmt_optional(None if frac is None else 100 * frac, ".1f")]
        line.append(fmt_optional(r.get("compile_s"), ".2f"))
        body.append(line)
    return markdown_table(headers, body)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def machine_info(packages: Sequence[str] = ("jax", "jaxlib", "flax", "equinox", "torch", "numpy"), *,
                 matmul_dtypes: Sequence[str] = ("float32",)) -> dict[str, Any]:
    """The machine and software a result was measured on (CPU from /proc/cpuinfo, the
    device JAX computes on, the date) and its measured matmul peak per dtype of
    ``matmul_dtypes`` (:func:`matmul_peak`; empty for none)."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {name: _version(name) for name in packages},
        # threading knobs change results (e.g. OpenMP spin-waiting under oversubscription)
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "XLA_FLAGS", "JAX_PLATFORMS") if k in os.environ},
    }
    try:
        import jax
        info["jax_backend"] = jax.default_backend()
        info["device_kind"] = jax.devices()[0].device_kind
        info["device_count"] = jax.device_count()
    except ImportError:
        pass
    if info["versions"].get("torch"):
        import torch
        info["torch_threads"] = torch.get_num_threads()
    info["matmul_peak"] = {dtype: matmul_peak(dtype) for dtype in matmul_dtypes}
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One markdown line describing the machine, the device, the versions, the matmul peak
    and the date."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    env = "".join(f", {k}={v}" for k, v in info.get("env", {}).items())
    load = info.get("loadavg_at_start")
    load = f", 1-min load average at start {load[0]:.1f}" if load else ""
    backend = info.get("jax_backend", "?")
    kind = info.get("device_kind")
    device = (f"{backend} backend" if kind in (None, "cpu") else
              f"{backend} backend: {info.get('device_count', 1)} x {kind}")
    peaks = "; ".join(f"measured {dtype} matmul peak {p['flop_per_s'] / 1e9:.1f} GFLOP/s (best of {p['runs']} "
                      f"{p['n']}x{p['n']} products)" for dtype, p in info.get("matmul_peak", {}).items())
    date = f"; {info['date']}" if info.get("date") else ""
    return (f"{info['cpu']}, {info['usable_cpus'] or info['logical_cpus']} CPUs "
            f"({device}), Python {info['python']}; {versions}{env}{load}"
            + (f"; {peaks}" if peaks else "") + date)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 2 decimals."""
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How a benchmark was run, for its result files: ``python benchmarks/<script> <arguments>``,
    the arguments being ``argv`` when ``main(argv)`` is called in-process, else ``sys.argv[1:]``."""
    return f"python benchmarks/{script} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def result_record(benchmark: str, args: Any, command: str, machine: Mapping[str, Any], *,
                  exclude: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    """The record every benchmark writes (``<name>.json``): its name, its arguments (``vars(args)``
    without ``exclude``; paths as strings), the command, the machine, the benchmark's own ``fields``
    and the load average (1, 5, 15 min) at the end."""
    config = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items() if k not in exclude}
    return {"benchmark": benchmark, "config": config, "command": command.strip(), "machine": machine, **fields,
            "loadavg_at_end": list(os.getloadavg())}


def write_results(out_dir: str | os.PathLike, stem: str, payload: Any, markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``<stem>.md`` atomically."""
    out_dir = Path(out_dir)
    return (io.save_json(out_dir / f"{stem}.json", payload),
            io.atomic_write_text(out_dir / f"{stem}.md", markdown))


# ----------------------------------------------------------------------------- FLOPs, peak, compile time


def matmul_peak(dtype: str = "float32", n: int | None = None, runs: int = 5) -> dict[str, Any]:
    """The machine's measured matmul throughput, the physical floor of every workload here.

    Times ``runs`` jitted ``(n, n) @ (n, n)`` products in ``dtype`` on JAX's default
    device (after one untimed call that compiles) and keeps the best: FLOP/s =
    ``2 n^3 / seconds``. ``n`` defaults to 2048 on CPU and 8192 on a GPU or TPU, large
    enough to reach the device's throughput at JAX's default matmul precision (the
    precision every benchmark runs at).

    Returns:
      ``{"dtype", "n", "runs", "best_seconds", "flop_per_s"}``.
    """
    import jax
    import jax.numpy as jnp

    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    ka, kb = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in (ka, kb))
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return {"dtype": str(jnp.dtype(dtype)), "n": n, "runs": runs, "best_seconds": best,
            "flop_per_s": 2.0 * n ** 3 / best}


def peak_flop_per_s(machine: Mapping[str, Any], dtype: str = "float32") -> float | None:
    """The measured matmul peak of ``dtype`` recorded by :func:`machine_info`, or None."""
    peak = machine.get("matmul_peak", {}).get(dtype)
    return None if peak is None else peak["flop_per_s"]


_WHILE = re.compile(r"\bwhile\(")


def xla_flops(compiled: Any) -> float | None:
    """XLA's FLOP count of a compiled program (``cost_analysis()["flops"]``: matmuls and
    elementwise ops), or None when XLA gives none or the program has a ``while`` loop
    (whose body XLA counts once, not once per trip: a ``lax.scan`` over T steps would be
    undercounted T-fold)."""
    try:
        if _WHILE.search(compiled.as_text()):
            return None
        cost = compiled.cost_analysis()
    except Exception:               # noqa: BLE001 -- a backend without cost analysis: no count
        return None
    if isinstance(cost, (list, tuple)):                  # older jax: one dict per device program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class CompiledRunner:
    """A zero-argument callable that runs one ahead-of-time compiled JAX function on
    fixed arguments and blocks until the result is ready.

    ``jitted`` is anything with ``.lower(*args)`` (``jax.jit(f)``, ``eqx.filter_jit(f)``);
    construction compiles it and records ``compile_seconds`` (the time of
    ``.lower(*args).compile()``, tracing included) and ``xla_flops`` (:func:`xla_flops`,
    None for an Equinox-wrapped program).
    """

    def __init__(self, jitted: Any, *args: Any):
        start = time.perf_counter()
        self.compiled = jitted.lower(*args).compile()
        self.compile_seconds = time.perf_counter() - start
        self.args = args
        inner = getattr(self.compiled, "compiled", self.compiled)     # equinox wraps jax's Compiled
        self.xla_flops = xla_flops(inner) if hasattr(inner, "cost_analysis") else None

    def __call__(self) -> Any:
        import jax
        return jax.block_until_ready(self.compiled(*self.args))


def cell_gates(cell_name: str) -> int:
    """G, the number of gate blocks of a seqjax cell (``w_hh`` is (H, G*H)): 4 for the
    LSTM, 3 for the GRU, 1 for the plain RNNs."""
    import jax

    from seqjax import cells
    shape = jax.eval_shape(lambda k: cells.make(cell_name, 1).init(k, 1), jax.random.key(0))["w_hh"].shape
    return int(shape[1])


def recurrent_flops(gates: int, batch: int, time: int, input_size: int, hidden: int, *,
                    directions: int = 1, mode: str = "grad") -> float:
    """Analytic matmul FLOPs of one recurrent layer on x (B, T, E), G gate blocks of width H.

    Forward, per step and direction: ``x_t @ W_ih`` (2·B·E·GH) and ``h @ W_hh``
    (2·B·H·GH). The gradient of a loss w.r.t. the parameters adds ``dW_ih = x_t^T dz``
    (2·B·E·GH), ``dW_hh = h^T dz`` (2·B·H·GH) and the carried ``dh = dz @ W_hh^T``
    (2·B·H·GH); ``dx = dz @ W_ih^T`` is not needed (x is data) and XLA removes it.
    ``mode``: ``"grad"`` (forward + that backward), ``"forward"``, or ``"state_grad"``
    (forward + the dh recursion, no weight gradients: ``seqjax.gradients.state_gradients``).
    Elementwise gate arithmetic (O(B·GH) per step) is not counted, nor is the forward
    recomputed by rematerialisation (these are model FLOPs). Padded steps are counted:
    the scan computes them.
    """
    gh = gates * hidden
    forward = 2 * batch * (input_size + hidden) * gh
    per_step = {"forward": forward, "grad": 2 * forward + 2 * batch * hidden * gh,
                "state_grad": forward + 2 * batch * hidden * gh}[mode]
    return float(per_step * time * directions)


def attention_flops(batch: int, time: int, model: int) -> float:
    """Analytic matmul FLOPs of forward + backward (w.r.t. the parameters) of multi-head
    self-attention on x (B, T, D) with query/key/value width D and output width D.

    Forward: the Q, K, V and output projections (4 · 2·B·T·D²), the scores ``Q K^T`` and
    ``weights @ V`` (2 · 2·B·T²·D, summed over heads since N·K = D). Backward: the 4
    projection weight gradients (8·B·T·D²), the input gradient of the output projection
    (2·B·T·D²), ``d weights`` and ``dV`` from ``weights @ V`` and ``dQ``, ``dK`` from the
    scores (4 · 2·B·T²·D); the input gradients of the Q, K, V projections are not needed
    (x is data). Total ``18·B·T·D² + 12·B·T²·D``; softmax and masking not counted.
    """
    return float(18 * batch * time * model ** 2 + 12 * batch * time ** 2 * model)


def encoder_layer_flops(batch: int, time: int, model: int, ff: int) -> float:
    """Analytic matmul FLOPs of forward + backward (w.r.t. the parameters) of a Transformer
    encoder layer: :func:`attention_flops` plus the feed-forward block's two matmuls
    (2 · 2·B·T·D·F forward), their weight gradients and their input gradients (needed: the
    block's input depends on the attention parameters), ``12·B·T·D·F`` in all. LayerNorm,
    residuals and activations not counted."""
    return attention_flops(batch, time, model) + float(12 * batch * time * model * ff)


def workload_flops(analytic: float, runner: Any = None) -> dict[str, Any]:
    """The FLOPs of one workload, shared by all its implementations: XLA's count of the
    compiled seqjax program (``runner.xla_flops`` of a :class:`CompiledRunner`) when it
    has one (no loop), else the analytic count. Both are recorded."""
    xla = getattr(runner, "xla_flops", None)
    return {"flops": xla if xla else float(analytic), "source": "xla_cost_analysis" if xla else "analytic",
            "xla": xla, "analytic": float(analytic)}


def flop_columns(flops: Mapping[str, Any] | float, seconds: float, peak: float | None) -> dict[str, Any]:
    """``gflop`` (the workload's), ``flops_source``, ``gflop_per_s`` achieved in ``seconds``
    per call, and ``fraction_of_peak`` (of ``peak`` FLOP/s; None without a peak)."""
    if not isinstance(flops, Mapping):
        flops = {"flops": float(flops), "source": "analytic"}
    rate = flops["flops"] / seconds
    return {"gflop": flops["flops"] / 1e9, "flops_source": flops["source"], "gflop_per_s": rate / 1e9,
            "fraction_of_peak": None if not peak else rate / peak}
