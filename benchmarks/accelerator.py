"""GPU/TPU-sized forward+backward benchmarks of seqjax on whatever device JAX sees, in float32 and bfloat16.

Every candidate computes the gradient of ``sum(outputs**2)`` (summed in float32) with
respect to all its parameters, which are stored in float32; "bfloat16" runs the
matmuls and the element-wise maths in bfloat16 (``seqjax.precision.policy("bfloat16")``).
Three sections, each timed in interleaved rounds in ONE process (``_common.py``):

* ``recurrent``: an LSTM and a GRU layer (``recurrent.layer`` with its default backward,
  ``backward="jvp"``, and with ``"vjp"`` and ``"autodiff"``), B=64, T=512, E=H=1024;
* ``attention``: multi-head self-attention and a Post-LN Transformer encoder layer,
  B=32, T=2048, D=1024, 16 heads, F=4096 (on a GPU also ``implementation="cudnn"``,
  cuDNN's flash attention, for bfloat16);
* ``scaling``: the LSTM layer against the encoder layer (H = D = 1024, 16 heads, F=4D,
  B=4) at T = 256, 1024, 4096: where the O(T^2) attention overtakes the O(T) recurrence
  (``experiments/scaling.py`` draws the same comparison on a CPU).

Each row reports the median, the achieved FLOP/s against the device's measured matmul
peak in the same dtype, and the jit compile time. A candidate that does not compile
or run (out of memory, no cuDNN) is listed with its error instead of stopping the
run. Run::

    python benchmarks/accelerator.py                       # on a GPU or TPU machine
    python benchmarks/accelerator.py --quick --out /tmp/acc   # small shapes: a CPU smoke test
    python benchmarks/accelerator.py --attention 8,2048,1024,16,4096   # a smaller GPU

Writes ``<out>/accelerator-<device>.{json,md}`` (``-quick`` added with ``--quick``),
``<device>`` being JAX's device kind, e.g. ``accelerator-nvidia-a100-sxm4-80gb.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from benchmarks import _common
from seqjax import attention, cells, io, precision, recurrent
from seqjax import transformer as tfm

SECTIONS = ("recurrent", "attention", "scaling")
DTYPES = ("float32", "bfloat16")
RECURRENT_CELLS = ("lstm", "gru")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
LSTM_LAYER, ENCODER_LAYER = "LSTM layer", "Transformer encoder layer"


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The workloads' sizes: defaults for a GPU or TPU, :data:`QUICK` for a CPU smoke test."""

    recurrent: tuple[int, int, int, int] = (64, 512, 1024, 1024)          # B, T, E, H
    attention: tuple[int, int, int, int, int] = (32, 2048, 1024, 16, 4096)  # B, T, D, N, F
    scaling: tuple[int, int, int] = (4, 1024, 16)                          # B, H = D, N (F = 4D)
    scaling_lengths: tuple[int, ...] = (256, 1024, 4096)


QUICK = Shapes(recurrent=(2, 8, 16, 16), attention=(2, 16, 32, 4, 64), scaling=(2, 16, 4), scaling_lengths=(8, 32))

Candidate = tuple[str, str, Callable[[], Any]]      # (case "workload|dtype", implementation, runner)


# ----------------------------------------------------------------------------- candidates


def _takes_precision(factory: Callable) -> bool:
    return "precision" in inspect.signature(factory).parameters


def _grad_runner(apply: Callable, params: Any, x: jax.Array, cast_to: precision.Policy | None
                 ) -> _common.CompiledRunner:
    """Compile ``grad(sum(apply(params, x)**2))``; with ``cast_to``, params and x are cast to its
    compute dtype inside the loss (for components without a ``precision`` argument)."""
    def loss(params, x):
        if cast_to is not None:
            params, x = cast_to.cast_to_compute((params, x))
        return jnp.sum(jnp.square(apply(params, x).astype(jnp.float32)))
    runner = _common.CompiledRunner(jax.jit(jax.grad(loss)), params, x)
    runner()                          # one call inside the caller's try: out-of-memory shows up here
    return runner


def _with_policy(factory: Callable, policy: precision.Policy, *args, **kwargs):
    """``factory(*args, precision=policy, **kwargs)`` when the factory takes a policy, else
    ``factory(*args, **kwargs)``; returns (component, policy for the loss to cast with or None)."""
    if _takes_precision(factory):
        return factory(*args, precision=policy, **kwargs), None
    return factory(*args, **kwargs), policy


def recurrent_runner(cell_name: str, x, hidden: int, policy, key, backward: str | None = None):
    layer, cast = _with_policy(recurrent.layer, policy, cells.make(cell_name, hidden), backward=backward)
    params = layer.init(key, x.shape[-1], jnp.float32)
    return _grad_runner(lambda p, x: layer.apply(p, x)[0], params, x, cast)


def mha_runner(x, heads: int, policy, key, implementation: str | None = None):
    mha, cast = _with_policy(attention.multi_head_attention, policy, heads, x.shape[-1],
                             implementation=implementation)
    params = mha.init(key, x.shape[-1], dtype=jnp.float32)
    return _grad_runner(mha.apply, params, x, cast)


def encoder_layer_runner(x, heads: int, ff: int, policy, key):
    layer, cast = _with_policy(tfm.encoder_layer, policy, tfm.StackConfig(x.shape[-1], heads, ff, 1, dropout=0.0))
    params = layer.init(key, jnp.float32)
    return _grad_runner(layer.apply, params, x, cast)


def precision_paths() -> dict[str, str]:
    """How each component gets its compute dtype: ``"policy"`` (its factory takes
    ``precision=``, :mod:`seqjax.precision`) or ``"cast"`` (no such argument: the loss casts
    params and inputs to the compute dtype, so e.g. a recurrent carry would be bfloat16 too)."""
    factories = {"recurrent.layer": recurrent.layer, "attention.multi_head_attention": attention.multi_head_attention,
                 "transformer.encoder_layer": tfm.encoder_layer}
    return {name: "policy" if _takes_precision(f) else "cast" for name, f in factories.items()}


def build(sections, shapes: Shapes, dtypes, seed: int = 0):
    """Every candidate of the chosen sections and dtypes: ``(candidates, flops, skipped)``.

    ``flops`` maps each case to :func:`_common.workload_flops`; ``skipped`` lists the
    candidates that raised while compiling or on their first call, with the error.
    """
    candidates: list[Candidate] = []
    flops: dict[str, dict] = {}
    skipped: list[dict[str, str]] = []
    k_x, k_p = jax.random.split(jax.random.key(seed))

    def add(case: str, impl: str, make: Callable[[], _common.CompiledRunner]):
        try:
            candidates.append((case, impl, make()))
        except Exception as err:              # noqa: BLE001 -- recorded: OOM, no cuDNN, unsupported dtype
            skipped.append({"case": case, "implementation": impl,
                            "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})
            print(f"skipped {case} {impl}: {skipped[-1]['error']}", flush=True)

    def runner_of(case: str, impl: str):              # None when that candidate was skipped
        return next((fn for c, i, fn in candidates if c == case and i == impl), None)

    for dtype in dtypes:
        policy = precision.policy(dtype)
        if "recurrent" in sections:
            B, T, E, H = shapes.recurrent
            x = jax.random.normal(k_x, (B, T, E), jnp.float32)
            for name in RECURRENT_CELLS:
                case = f"{name}|{dtype}"
                add(case, "seqjax", lambda: recurrent_runner(name, x, H, policy, k_p))
                add(case, "seqjax vjp", lambda: recurrent_runner(name, x, H, policy, k_p, backward="vjp"))
                add(case, "seqjax autodiff", lambda: recurrent_runner(name, x, H, policy, k_p, backward="autodiff"))
                flops[case] = _common.workload_flops(_common.recurrent_flops(_common.cell_gates(name), B, T, E, H))
        if "attention" in sections:
            B, T, D, N, F = shapes.attention
            x = jax.random.normal(k_x, (B, T, D), jnp.float32)
            case = f"mha|{dtype}"
            add(case, "seqjax", lambda: mha_runner(x, N, policy, k_p))
            if jax.default_backend() == "gpu" and dtype != "float32":   # cuDNN flash attention: 16-bit only
                add(case, "seqjax cudnn", lambda: mha_runner(x, N, policy, k_p, implementation="cudnn"))
            flops[case] = _common.workload_flops(_common.attention_flops(B, T, D), runner_of(case, "seqjax"))
            case = f"encoder_layer|{dtype}"
            add(case, "seqjax", lambda: encoder_layer_runner(x, N, F, policy, k_p))
            flops[case] = _common.workload_flops(_common.encoder_layer_flops(B, T, D, F),
                                                 runner_of(case, "seqjax"))
        if "scaling" in sections:
            B, W, N = shapes.scaling
            for T in shapes.scaling_lengths:
                x = jax.random.normal(k_x, (B, T, W), jnp.float32)
                case = f"scaling T={T}|{dtype}"
                add(case, LSTM_LAYER, lambda: recurrent_runner("lstm", x, W, policy, k_p))
                add(case, ENCODER_LAYER, lambda: encoder_layer_runner(x, N, 4 * W, policy, k_p))
                # one count per implementation: the two layers are different workloads
                flops[f"{case}/{LSTM_LAYER}"] = _common.workload_flops(
                    _common.recurrent_flops(_common.cell_gates("lstm"), B, T, W, W))
                flops[f"{case}/{ENCODER_LAYER}"] = _common.workload_flops(
                    _common.encoder_layer_flops(B, T, W, 4 * W), runner_of(case, ENCODER_LAYER))
    return candidates, flops, skipped


# ----------------------------------------------------------------------------- driver


def device_slug(kind: str) -> str:
    """A file-name form of a device kind: ``"NVIDIA A100-SXM4-80GB"`` -> ``"nvidia-a100-sxm4-80gb"``."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def _ints(text: str, n: int, flag: str, p: argparse.ArgumentParser) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or min(values) < 1:
        p.error(f"{flag} must be {n} comma-separated integers >= 1, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Shapes()
    p.add_argument("--recurrent", default=None, help=f"B,T,E,H (default {','.join(map(str, d.recurrent))})")
    p.add_argument("--attention", default=None, help=f"B,T,D,N,F (default {','.join(map(str, d.attention))})")
    p.add_argument("--scaling", default=None, help=f"B,H=D,N (default {','.join(map(str, d.scaling))})")
    p.add_argument("--scaling-lengths", type=int, nargs="+", default=None,
                   help=f"T of the scaling points (default {' '.join(map(str, d.scaling_lengths))})")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    p.add_argument("--number", type=int, default=3, help="calls per candidate per round (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="small shapes for a CPU smoke test (recurrent 2,8,16,16; attention 2,16,32,4,64; scaling "
                        "2,16,4 at T=8,32), 2 rounds of 1 call, 1 warm-up")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output directory for accelerator-<device>.json/.md (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    base = QUICK if args.quick else d
    if args.quick:
        args.rounds, args.number, args.warmup = 2, 1, 1
    shapes = Shapes(
        recurrent=base.recurrent if args.recurrent is None else _ints(args.recurrent, 4, "--recurrent", p),
        attention=base.attention if args.attention is None else _ints(args.attention, 5, "--attention", p),
        scaling=base.scaling if args.scaling is None else _ints(args.scaling, 3, "--scaling", p),
        scaling_lengths=base.scaling_lengths if args.scaling_lengths is None else tuple(args.scaling_lengths))
    if shapes.attention[2] % shapes.attention[3]:
        p.error(f"--attention: N={shapes.attention[3]} heads must divide D={shapes.attention[2]}")
    if shapes.scaling[1] % shapes.scaling[2]:
        p.error(f"--scaling: N={shapes.scaling[2]} heads must divide D={shapes.scaling[1]}")
    if min(shapes.scaling_lengths) < 1:
        p.error(f"--scaling-lengths must be >= 1, got {list(shapes.scaling_lengths)}")
    for name in ("rounds", "number"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    args.shapes = shapes
    return args


def crossovers(rows) -> dict[str, int | None]:
    """Per dtype, the first scaling T at which the encoder layer takes longer than the LSTM layer."""
    out = {}
    for dtype in sorted({r["dtype"] for r in rows if r["workload"].startswith("scaling")}):
        by = {(r["T"], r["implementation"]): r["median_ms"] for r in rows
              if r["workload"].startswith("scaling") and r["dtype"] == dtype}
        Ts = sorted({T for T, _ in by})
        out[dtype] = next((T for T in Ts if (T, ENCODER_LAYER) in by and (T, LSTM_LAYER) in by
                           and by[(T, ENCODER_LAYER)] > by[(T, LSTM_LAYER)]), None)
    return out


def markdown(payload: dict[str, Any]) -> str:
    s, c, dev = payload["shapes"], payload["config"], payload["device"]
    titles = {r["case"]: f"{r['workload']}, {r['dtype']}" for r in payload["rows"]}
    order = {w: i for i, w in enumerate(dict.fromkeys(r["workload"] for r in payload["rows"]))}
    rows = sorted(payload["rows"], key=lambda r: (order[r["workload"]], DTYPES.index(r["dtype"])))  # stable
    main_rows = [r for r in rows if not r["workload"].startswith("scaling")]
    scaling_rows = [r for r in rows if r["workload"].startswith("scaling")]
    paths = payload["precision_paths"]
    how = "; ".join(f"`{k}` " + ("takes a `seqjax.precision` policy" if v == "policy" else
                                 "has no precision argument yet: the loss casts its params and inputs")
                    for k, v in paths.items())
    parts = [f"### seqjax on {dev['kind']} ({dev['platform']}): forward + backward of `sum(outputs**2)`\n",
             f"Parameters float32, compute in the row's dtype (`seqjax.precision`); medians of {c['rounds']} "
             f"interleaved rounds x {c['number']} calls, one process. GFLOP/s: the workload's FLOPs (recurrent: "
             f"analytic matmul count; attention: XLA's cost analysis of the seqjax program) over the median; "
             f"% of peak: of the measured matmul peak in the same dtype; compile s: `jit(...).lower().compile()`. "
             f"Compute dtype: {how}."
             + (" **--quick shapes: a smoke test, not a measurement.**" if c["quick"] else "") + "\n"]
    if main_rows:
        B, T, E, H = s["recurrent"]
        Ba, Ta, D, N, F = s["attention"]
        parts.append(f"Recurrent: B={B}, T={T}, E={E}, H={H}. Attention: B={Ba}, T={Ta}, D={D}, {N} heads, "
                     f"F={F} (encoder layer, Post-LN, ReLU), no mask. Ratios to the default seqjax layer.\n")
        parts.append(_common.ratio_table(main_rows, "case", titles, base="seqjax"))
    if scaling_rows:
        B, W, N = s["scaling"]
        cross = ", ".join(f"{d}: {'T=' + str(t) if t else 'not within the lengths run'}"
                          for d, t in payload["crossover_T"].items())
        parts.append(f"\nScaling: an LSTM layer (H={W}) against an encoder layer (D={W}, {N} heads, F={4 * W}), "
                     f"B={B}; ratios to the LSTM layer. The encoder layer first takes longer at: {cross}.\n")
        parts.append(_common.ratio_table(scaling_rows, "case", titles, base=LSTM_LAYER))
    if payload["skipped"]:
        parts.append("\nNot run (error on compiling or on the first call):\n")
        parts += [f"- {k['case'].replace('|', ', ')}, {k['implementation']}: `{k['error']}`"
                  for k in payload["skipped"]]
        parts.append("")
    parts.append(f"\nMachine: {_common.machine_line(payload['machine'])}.\n\nCommand: `{payload['command']}`\n")
    return "\n".join(parts)


def main(argv=None) -> dict[str, Any]:
    """Run the chosen sections, print the tables, write ``accelerator-<device>.json`` and ``.md``."""
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    command = _common.command_line("accelerator.py", argv)
    device = {"platform": jax.default_backend(), "kind": jax.devices()[0].device_kind,
              "count": jax.device_count(), "name": str(jax.devices()[0])}
    print(f"device: {device['count']} x {device['kind']} ({device['platform']})", flush=True)
    machine = _common.machine_info(("jax", "jaxlib", "numpy", "torch"), matmul_dtypes=args.dtypes)
    candidates, flops, skipped = build(args.sections, args.shapes, args.dtypes, args.seed)
    print(f"timing {len(candidates)} candidates: {args.rounds} rounds x {args.number} calls", flush=True)
    times = _common.time_interleaved({f"{c}/{i}": fn for c, i, fn in candidates}, rounds=args.rounds,
                                     number=args.number, warmup=args.warmup)
    rows = _common.ratio_rows(candidates, times, "case", baselines=("seqjax", LSTM_LAYER))
    for row in rows:
        workload, dtype = row["case"].split("|")
        row.update(workload=workload, dtype=dtype)
        if workload.startswith("scaling"):
            row["T"] = int(workload.split("=")[1])
        count = flops.get(f"{row['case']}/{row['implementation']}", flops.get(row["case"]))
        row.update(_common.flop_columns(count, row["median_ms"] / 1e3, _common.peak_flop_per_s(machine, dtype)))
    payload = _common.result_record("accelerator", args, command, machine, exclude=("shapes",), device=device,
                                    shapes=dataclasses.asdict(args.shapes), precision_paths=precision_paths(),
                                    flops=flops, rows=rows, skipped=skipped, crossover_T=crossovers(rows))
    text = markdown(payload)
    stem = f"accelerator-{device_slug(device['kind'])}" + ("-quick" if args.quick else "")
    _common.write_results(out_dir, stem, payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
