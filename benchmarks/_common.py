"""Shared benchmark helpers: interleaved timing, machine facts, result writers.

Benchmarks here compare implementations in ONE process. Each round runs every
candidate once (``number`` calls back to back, in an order rotated every round), so
slow drifts of a noisy machine (other jobs, thermal limits) hit every candidate
alike; the statistic is the median over rounds, and tables report ratios of such
medians, which travel across machines better than absolute times.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from seqjax import io

__all__ = ["time_interleaved", "summarize", "machine_info", "machine_line", "markdown_table",
           "write_results"]


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
               group: str) -> list[dict[str, Any]]:
    """One row per ``(group_value, implementation, fn)`` candidate, timed under the key
    ``"<group_value>/<implementation>"``: summary statistics, the raw per-round times and
    the ratio of its median to PyTorch's in the same group (to seqjax's when torch is absent)."""
    rows = [{group: g, "implementation": impl, **summarize(times[f"{g}/{impl}"]),
             "round_ms": [1e3 * t for t in times[f"{g}/{impl}"]]} for g, impl, _ in candidates]
    for row in rows:
        same = {r["implementation"]: r for r in rows if r[group] == row[group]}
        base = same.get("PyTorch", same["seqjax"])
        row["baseline"] = base["implementation"]
        row["ratio"] = row["median_ms"] / base["median_ms"]
    return rows


def baseline_name(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the ratios of :func:`ratio_rows` are relative to: PyTorch, or seqjax without torch."""
    return "PyTorch" if any(r["implementation"] == "PyTorch" for r in rows) else "seqjax"


def ratio_table(rows: Sequence[Mapping[str, Any]], group: str, titles: Mapping[str, str]) -> str:
    """The markdown table of :func:`ratio_rows`: group, implementation, median, IQR, ratio."""
    base = baseline_name(rows)
    return markdown_table(
        [group, "implementation", "median ms", "IQR ms", f"vs {base}"],
        [[titles[r[group]], r["implementation"], r["median_ms"], f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}",
          f"{r['ratio']:.2f}x"] for r in rows])


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


def machine_info(packages: Sequence[str] = ("jax", "jaxlib", "flax", "equinox", "torch", "numpy")
                 ) -> dict[str, Any]:
    """The machine and software a result was measured on (CPU from /proc/cpuinfo)."""
    info: dict[str, Any] = {
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
    except ImportError:
        pass
    if info["versions"].get("torch"):
        import torch
        info["torch_threads"] = torch.get_num_threads()
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One markdown line describing the machine and the versions."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    env = "".join(f", {k}={v}" for k, v in info.get("env", {}).items())
    load = info.get("loadavg_at_start")
    load = f", 1-min load average at start {load[0]:.1f}" if load else ""
    return (f"{info['cpu']}, {info['usable_cpus'] or info['logical_cpus']} CPUs "
            f"({info.get('jax_backend', '?')} backend), Python {info['python']}; {versions}{env}{load}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 2 decimals."""
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, stem: str, payload: Any, markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``<stem>.md`` atomically."""
    out_dir = Path(out_dir)
    return (io.save_json(out_dir / f"{stem}.json", payload),
            io.atomic_write_text(out_dir / f"{stem}.md", markdown))
