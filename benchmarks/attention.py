"""Forward+backward time of seqjax's multi-head self-attention and encoder layer against Flax, Equinox and PyTorch.

Every candidate computes the gradient of ``sum(outputs**2)`` with respect to its
parameters for one batch-major input x (B, T, D), self-attention, no mask, no
dropout, float32. All candidates run in ONE process, in interleaved rounds (see
``benchmarks/_common.py``); the table reports medians over rounds and their ratio to
PyTorch for the same workload (PyTorch = 1.00x). Run::

    .venv/bin/python benchmarks/attention.py                   # B=16, T=256, D=256, 8 heads
    .venv/bin/python benchmarks/attention.py --quick --out /tmp/bench   # smoke test

Peers, as a user of each library would write them:

- seqjax: ``attention.multi_head_attention(N, D)`` (on CPU its default is
  ``implementation="jvp"``, the written-out head-major path with a hand-written derivative
  whose transpose is flash attention's backward pass; further rows force ``"vjp"`` (that
  backward as a custom VJP), ``"reference"`` (autodiff of the written-out path) and
  ``"xla"`` (``jax.nn.dot_product_attention``)) and
  ``transformer.encoder_layer(StackConfig(...))``; ``jax.jit(jax.grad(loss))``.
- Flax linen: ``nn.MultiHeadDotProductAttention``; the encoder layer is the usual
  linen composition (attention, Dense, LayerNorm; Post-LN, ReLU), as in the Flax examples.
- Equinox: ``eqx.nn.MultiheadAttention`` (one sequence, ``jax.vmap`` over the batch);
  the encoder layer composes it with ``eqx.nn.Linear`` and ``eqx.nn.LayerNorm``.
- PyTorch: ``nn.MultiheadAttention(batch_first=True)`` with ``need_weights=False`` and
  ``nn.TransformerEncoderLayer(batch_first=True, dropout=0)``, eager, training mode,
  default thread count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from seqjax import attention, io
from seqjax import transformer as tfm

WORKLOADS = ("mha", "encoder_layer")
TITLES = {"mha": "multi-head self-attention", "encoder_layer": "encoder layer (Post-LN, ReLU)"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

Candidate = tuple[str, str, Callable[[], Any]]   # (workload, implementation, run-once callable)


def _jax_runner(loss: Callable, params: Any, x: jax.Array) -> _common.CompiledRunner:
    return _common.CompiledRunner(jax.jit(jax.grad(loss)), params, x)


# ----------------------------------------------------------------------------- seqjax


def seqjax_mha(x, heads, key, implementation=None):
    mha = attention.multi_head_attention(heads, x.shape[-1], implementation=implementation)
    params = mha.init(key, x.shape[-1])
    return _jax_runner(lambda p, x: jnp.sum(mha.apply(p, x) ** 2), params, x)


def seqjax_encoder_layer(x, heads, ff, key):
    layer = tfm.encoder_layer(tfm.StackConfig(x.shape[-1], heads, ff, 1, dropout=0.0))
    params = layer.init(key)
    return _jax_runner(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), params, x)


# ----------------------------------------------------------------------------- Flax


def flax_mha(x, heads, key):
    import flax.linen as nn

    model = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=x.shape[-1])
    params = model.init(key, x)
    return _jax_runner(lambda p, x: jnp.sum(model.apply(p, x) ** 2), params, x)


def flax_encoder_layer(x, heads, ff, key):
    import flax.linen as nn

    class EncoderLayer(nn.Module):
        @nn.compact
        def __call__(self, x):
            D = x.shape[-1]
            x = nn.LayerNorm(epsilon=1e-5)(x + nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=D)(x))
            h = nn.Dense(D)(nn.relu(nn.Dense(ff)(x)))
            return nn.LayerNorm(epsilon=1e-5)(x + h)

    model = EncoderLayer()
    params = model.init(key, x)
    return _jax_runner(lambda p, x: jnp.sum(model.apply(p, x) ** 2), params, x)


# ----------------------------------------------------------------------------- Equinox


def _eqx_runner(model, x, fn):
    import equinox as eqx

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(model, x):
        return jnp.sum(jax.vmap(lambda xb: fn(model, xb))(x) ** 2)
    return _common.CompiledRunner(grad, model, x)


def equinox_mha(x, heads, key):
    import equinox as eqx

    mha = eqx.nn.MultiheadAttention(heads, x.shape[-1], key=key)
    return _eqx_runner(mha, x, lambda m, xb: m(xb, xb, xb))


def equinox_encoder_layer(x, heads, ff, key):
    import equinox as eqx

    D = x.shape[-1]
    k1, k2, k3 = jax.random.split(key, 3)
    model = {"attn": eqx.nn.MultiheadAttention(heads, D, key=k1), "lin1": eqx.nn.Linear(D, ff, key=k2),
             "lin2": eqx.nn.Linear(ff, D, key=k3), "ln1": eqx.nn.LayerNorm(D, eps=1e-5),
             "ln2": eqx.nn.LayerNorm(D, eps=1e-5)}

    def layer(m, xb):                                          # xb (T, D)
        xb = jax.vmap(m["ln1"])(xb + m["attn"](xb, xb, xb))
        h = jax.vmap(lambda v: m["lin2"](jax.nn.relu(m["lin1"](v))))(xb)
        return jax.vmap(m["ln2"])(xb + h)
    return _eqx_runner(model, x, layer)


# ----------------------------------------------------------------------------- PyTorch


def _torch_runner(module, xt, call):
    def run():
        for p in module.parameters():
            p.grad = None
        (call(module, xt) ** 2).sum().backward()
        return None
    return run


def torch_mha(x_np, heads, seed, threads=None):
    try:
        import torch
    except ImportError:
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(x_np.shape[-1], heads, batch_first=True)
    xt = torch.from_numpy(np.array(x_np, np.float32))
    return _torch_runner(m, xt, lambda m, x: m(x, x, x, need_weights=False)[0])


def torch_encoder_layer(x_np, heads, ff, seed, threads=None):
    try:
        import torch
    except ImportError:
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    m = torch.nn.TransformerEncoderLayer(x_np.shape[-1], heads, ff, dropout=0.0, batch_first=True).train()
    xt = torch.from_numpy(np.array(x_np, np.float32))
    return _torch_runner(m, xt, lambda m, x: m(x))


# ----------------------------------------------------------------------------- driver


def build_candidates(workloads, batch: int, time: int, model: int, heads: int, ff: int, seed: int = 0,
                     torch_threads: int | None = None) -> list[Candidate]:
    k_x, k_p = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k_x, (batch, time, model), jnp.float32)
    x_np = np.asarray(x)
    out: list[Candidate] = []
    if "mha" in workloads:
        out += [("mha", "seqjax", seqjax_mha(x, heads, k_p)),
                ("mha", "seqjax vjp (custom_vjp, reverse mode only)", seqjax_mha(x, heads, k_p, "vjp")),
                ("mha", "seqjax reference (autodiff)", seqjax_mha(x, heads, k_p, "reference")),
                ("mha", "seqjax via jax.nn.dot_product_attention", seqjax_mha(x, heads, k_p, "xla")),
                ("mha", "Flax", flax_mha(x, heads, k_p)),
                ("mha", "Equinox", equinox_mha(x, heads, k_p))]
        fn = torch_mha(x_np, heads, seed, torch_threads)
        if fn is not None:
            out.append(("mha", "PyTorch", fn))
    if "encoder_layer" in workloads:
        out += [("encoder_layer", "seqjax", seqjax_encoder_layer(x, heads, ff, k_p)),
                ("encoder_layer", "Flax", flax_encoder_layer(x, heads, ff, k_p)),
                ("encoder_layer", "Equinox", equinox_encoder_layer(x, heads, ff, k_p))]
        fn = torch_encoder_layer(x_np, heads, ff, seed, torch_threads)
        if fn is not None:
            out.append(("encoder_layer", "PyTorch", fn))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="B (default 16)")
    p.add_argument("--time", type=int, default=256, help="T (default 256)")
    p.add_argument("--model", type=int, default=256, help="D, model width (default 256)")
    p.add_argument("--heads", type=int, default=8, help="N (default 8)")
    p.add_argument("--ff", type=int, default=1024, help="F, encoder feed-forward width (default 1024)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    p.add_argument("--number", type=int, default=2, help="calls per candidate per round (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first (default 2)")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: PyTorch's own default, as users get it)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: B=2, T=8, D=16, 2 heads, F=32, 2 rounds of 1 call, 1 warm-up")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output directory for attention.json and attention.md (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.time, args.model, args.heads, args.ff = 2, 8, 16, 2, 32
        args.rounds, args.number, args.warmup = 2, 1, 1
    for name in ("batch", "time", "model", "heads", "ff", "rounds", "number"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.model % args.heads:
        p.error(f"--heads {args.heads} must divide --model {args.model}")
    return args


def markdown(payload: dict[str, Any]) -> str:
    c = payload["config"]
    base = _common.baseline_name(payload["rows"])
    table = _common.ratio_table(payload["rows"], "workload", TITLES)
    return (f"### Attention: forward + backward of `sum(outputs**2)`\n\n"
            f"B={c['batch']}, T={c['time']}, D={c['model']}, {c['heads']} heads, F={c['ff']} (encoder layer), "
            f"float32, self-attention, no mask, no dropout; medians of {c['rounds']} interleaved rounds x "
            f"{c['number']} calls, one process ({base} = 1.00x, lower is better). GFLOP/s: the workload's FLOPs "
            f"(XLA's cost analysis of the compiled seqjax gradient, the same count for every implementation) "
            f"over the median; % of the measured float32 matmul peak; compile s: `jit(...).lower().compile()`."
            f"\n\n{table}\n"
            f"Machine: {_common.machine_line(payload['machine'])}; load average (1, 5, 15 min) at the end "
            f"{[round(v, 1) for v in payload['loadavg_at_end']]}.\n\nCommand: `{payload['command']}`\n")


def main(argv=None) -> dict[str, Any]:
    """Run the benchmark, print the table, write ``attention.json`` and ``attention.md``."""
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    command = _common.command_line("attention.py", argv)
    candidates = build_candidates(args.workloads, args.batch, args.time, args.model, args.heads, args.ff,
                                  args.seed, args.torch_threads)
    machine = _common.machine_info()
    print(f"timing {len(candidates)} candidates: {args.rounds} rounds x {args.number} calls", flush=True)
    times = _common.time_interleaved({f"{w}/{i}": fn for w, i, fn in candidates}, rounds=args.rounds,
                                     number=args.number, warmup=args.warmup)
    analytic = {"mha": _common.attention_flops(args.batch, args.time, args.model),
                "encoder_layer": _common.encoder_layer_flops(args.batch, args.time, args.model, args.ff)}
    seqjax_runner = {w: fn for w, i, fn in candidates if i == "seqjax"}
    flops = {w: _common.workload_flops(analytic[w], seqjax_runner[w]) for w in args.workloads}
    payload = _common.result_record("attention", args, command, machine, flops=flops,
                                    rows=_common.ratio_rows(candidates, times, "workload", flops=flops,
                                                            peak=_common.peak_flop_per_s(machine)))
    text = markdown(payload)
    _common.write_results(out_dir, "attention", payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
