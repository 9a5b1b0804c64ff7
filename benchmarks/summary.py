"""The README's benchmark tables, generated from the result files of one `make bench` run.

Reads ``<results>/<name>.json`` for every benchmark of ``make bench`` and writes
``<results>/summary.md``: the recurrent and attention results as wide tables (one row
per workload, one column per implementation, ``median ms (ratio)``, plus seqjax's
achieved GFLOP/s, its share of the measured matmul peak and its compile time), then
every other result's own table, each with the command, date and machine it was
measured with. Nothing is measured here. Run::

    python benchmarks/summary.py                      # after `make bench`
    python benchmarks/summary.py --results /tmp/bench
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common
from seqjax import io

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
#: The result files of `make bench`, in the order of the Makefile (accelerator-<device> is globbed).
STEMS = ("recurrent", "attention", "bidirectional", "input_projection", "state_gradients", "long_sequences")
WIDE = {"recurrent": ("cell", {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)"}),
        "attention": ("workload", {"mha": "multi-head self-attention", "encoder_layer": "encoder layer"})}


def wide_table(payload: dict[str, Any], group: str, titles: dict[str, str]) -> str:
    """One row per workload, one column per implementation: ``median ms (ratio)``; then the
    seqjax row's GFLOP/s, % of the matmul peak and compile seconds."""
    rows = payload["rows"]
    impls = list(dict.fromkeys(r["implementation"] for r in rows))
    groups = list(dict.fromkeys(r[group] for r in rows))
    by = {(r[group], r["implementation"]): r for r in rows}
    body = []
    for g in groups:
        line = [titles.get(g, g)]
        for impl in impls:
            r = by.get((g, impl))
            line.append("–" if r is None else f"{r['median_ms']:.1f} ms ({r['ratio']:.2f}x)")
        s = by.get((g, "seqjax"), {})
        frac = s.get("fraction_of_peak")
        line += [_common.fmt_optional(s.get("gflop_per_s"), ".1f"),
                 _common.fmt_optional(None if frac is None else 100 * frac, ".1f"),
                 _common.fmt_optional(s.get("compile_s"), ".2f")]
        body.append(line)
    return _common.markdown_table([group, *impls, "seqjax GFLOP/s", "seqjax % of peak", "seqjax compile s"], body)


def _section(stem: str, payload: dict[str, Any], md: str) -> str:
    machine = payload.get("machine", {})
    head = (f"## {stem}\n\n`{payload.get('command', '?')}`, {machine.get('date', 'date not recorded')}\n\n")
    if stem in WIDE:
        group, titles = WIDE[stem]
        cfg = payload["config"]
        shape = ", ".join(f"{k}={cfg[k]}" for k in ("batch", "time", "input", "hidden", "model", "heads", "ff")
                          if k in cfg)
        return (head + f"{shape}; ratios to {_common.baseline_name(payload['rows'])}.\n\n"
                + wide_table(payload, group, titles) + f"\nMachine: {_common.machine_line(machine)}.\n")
    body = md.split("\n", 1)[1] if md.startswith("#") else md       # its own table, without its title
    return head + body.strip() + "\n"


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help=f"directory of the result files, where summary.md goes (default {DEFAULT_RESULTS})")
    args = p.parse_args(argv)
    results = args.results
    stems = list(STEMS) + sorted(f.stem for f in results.glob("accelerator-*.json"))
    sections, missing = [], []
    for stem in stems:
        path = results / f"{stem}.json"
        if not path.exists():
            missing.append(stem)
            continue
        payload = json.loads(path.read_text())
        md_path = results / f"{stem}.md"
        sections.append(_section(stem, payload, md_path.read_text() if md_path.exists() else ""))
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = (f"# Benchmark results\n\nGenerated {now} by `python benchmarks/summary.py` (the last step of "
            f"`make bench`) from the result files in this directory; each section names the command and the "
            f"date of its own run. Forward + backward of `sum(outputs**2)` w.r.t. the parameters, medians of "
            f"interleaved rounds in one process. GFLOP/s: the workload's FLOPs over the median; % of peak: of "
            f"the machine's measured matmul peak (`benchmarks/_common.py`).\n\n"
            + (f"Not found: {', '.join(missing)}.\n\n" if missing else "") + "\n".join(sections))
    out = io.atomic_write_text(results / "summary.md", text)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
