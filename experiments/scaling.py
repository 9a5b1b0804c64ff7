"""What sequence length costs: an LSTM layer's O(T) against self-attention's O(T^2).

Forward + backward of ``sum(outputs**2)`` w.r.t. the parameters of one LSTM layer
(``recurrent.layer``, H = D) and one Post-LN Transformer encoder layer (D, 4 heads,
FFN 4D, no mask), at T = 64 ... 8192, B = 2. Per point: the median wall time of a few
calls and XLA's accounting of the compiled step's temporary memory
(``compiled.memory_analysis()``, deterministic). The crossover is the first T at which
the Transformer layer costs more than the LSTM layer after costing no more at the previous T (on a
2-core CPU at B = 2 there is none: the Transformer layer costs more from the smallest T, and the
figure says so). Writes config.json,
scaling.csv and scaling.png (plotted from the CSV).
``python experiments/scaling.py --help``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from experiments import _common
from seqjax import cells, io, plotting, recurrent
from seqjax import transformer as tfm

MODELS = ("lstm", "transformer")
QUICK = dict(lengths=(16, 32, 64), width=16, batch_size=2, repeats=1)


@dataclasses.dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    width: int = 128             # LSTM H = Transformer D
    batch_size: int = 2          # at T = 8192 one (B, N, T, T) attention tensor is 2 GiB
    repeats: int = 3
    seed: int = 0


def step_fn(model: str, cfg: Config):
    """(params, jitted gradient of sum(outputs**2)) for one model."""
    key = jax.random.key(cfg.seed)
    if model == "lstm":
        layer = recurrent.layer(cells.lstm(cfg.width))
        params = layer.init(key, cfg.width)
        apply = lambda p, x: layer.apply(p, x)[0]                         # noqa: E731
    else:
        block = tfm.encoder_layer(tfm.StackConfig(model_size=cfg.width, num_heads=4, ff_size=4 * cfg.width,
                                                  num_layers=1, dropout=0.0))
        params = block.init(key)
        apply = block.apply
    return params, jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2)))


def measure(model: str, T: int, cfg: Config) -> dict:
    params, grad = step_fn(model, cfg)
    x = jax.random.normal(jax.random.key(cfg.seed + 1), (cfg.batch_size, T, cfg.width))
    start = time.perf_counter()
    compiled = grad.lower(params, x).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - start)
    return {"model": model, "T": T, "seconds": statistics.median(times), "compile_seconds": compile_s,
            "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20}


def _costlier(rows: list[dict], key: str) -> list[tuple[int, bool]]:
    """``[(T, Transformer costs more than the LSTM at T)]`` in increasing T."""
    by = {(r["model"], int(r["T"])): float(r[key]) for r in rows}
    return [(T, by[("transformer", T)] > by[("lstm", T)]) for T in sorted({int(r["T"]) for r in rows})]


def crossover(rows: list[dict], key: str) -> int | None:
    """The first T at which the Transformer costs more than the LSTM after costing no more at the
    previous measured T; None if that never happens in the range (it may cost more throughout:
    :func:`costlier_throughout`)."""
    flags = _costlier(rows, key)
    return next((T for (_, before), (T, now) in zip(flags, flags[1:]) if now and not before), None)


def costlier_throughout(rows: list[dict], key: str) -> bool:
    """Whether the Transformer costs more than the LSTM at every measured T."""
    return all(now for _, now in _costlier(rows, key))


def plot(out_dir: Path) -> Path:
    """scaling.png from scaling.csv alone."""
    rows = io.load_csv(out_dir / "scaling.csv")
    series = {m: ([int(r["T"]) for r in rows if r["model"] == m],
                  {"seconds": [float(r["seconds"]) for r in rows if r["model"] == m],
                   "temp_mib": [float(r["temp_mib"]) for r in rows if r["model"] == m]}) for m in MODELS}
    marks = {k: crossover(rows, k) for k in ("seconds", "temp_mib")}
    fig = plotting.scaling_figure(series, crossovers=marks, labels={"lstm": "LSTM layer (O(T))",
                                                                   "transformer": "Transformer layer (O(T^2))"})
    Ts = series["lstm"][0]
    for ax, key in zip(fig.axes, ("seconds", "temp_mib")):
        if costlier_throughout(rows, key):       # no crossover to mark: say so rather than mark T_min
            ax.set_title(f"Transformer layer costlier at every T ({min(Ts)}-{max(Ts)})", fontsize=9)
    return io.save_figure(fig, out_dir / "scaling.png", dpi=150, bbox_inches="tight")


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "scaling")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)
    out = io.ensure_writable_dir(args.out)
    start = time.perf_counter()
    rows = []
    for T in cfg.lengths:
        for model in MODELS:
            rows.append(measure(model, T, cfg))
            r = rows[-1]
            print(f"T={T:5d} {model:11s} {r['seconds'] * 1e3:9.1f} ms  temp {r['temp_mib']:9.1f} MiB  "
                  f"compile {r['compile_seconds']:.1f} s", flush=True)
    io.save_csv(out / "scaling.csv", rows)
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "backend": jax.default_backend(),
                                       "device": str(jax.devices()[0]), "jax": jax.__version__,
                                       "crossover_T_time": crossover(rows, "seconds"),
                                       "crossover_T_memory": crossover(rows, "temp_mib"),
                                       "transformer_costlier_throughout_time": costlier_throughout(rows, "seconds"),
                                       "transformer_costlier_throughout_memory": costlier_throughout(rows, "temp_mib"),
                                       "seconds_total": round(time.perf_counter() - start, 1)})
    figure = plot(out)
    for key, what in (("seconds", "time"), ("temp_mib", "memory")):
        where = ("the Transformer layer costs more at every T" if costlier_throughout(rows, key)
                 else f"crossover at T={crossover(rows, key)}")
        print(f"{what}: {where}")
    print(f"figure: {figure}")
    return out


if __name__ == "__main__":
    main()
