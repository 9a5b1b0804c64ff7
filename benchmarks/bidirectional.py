"""Forward+backward time of a multi-layer bidirectional recurrent layer with variable lengths.

Workload: a stack of L bidirectional layers (default L=2: the issue's 2-layer
bidirectional LSTM) on x (B, T, I) with right padding, ``lengths`` (B,) varied from T
down to about T/2; the loss is ``sum(outputs**2)`` over the last layer's (B, T, 2H)
outputs (zero at padded steps) and the gradient is taken w.r.t. every parameter. All
candidates run in ONE process, interleaved (``benchmarks/_common.py``); ratios are to
PyTorch's median (to seqjax's without torch). Run::

    .venv/bin/python benchmarks/bidirectional.py                      # LSTM, GRU, RNN; B=32 T=128 I=128 H=256
    .venv/bin/python benchmarks/bidirectional.py --cells lstm
    .venv/bin/python benchmarks/bidirectional.py --quick --out /tmp/bd

Candidates, as a user of each library would write them:

- seqjax: ``recurrent.layer(cells.make(cell, H), num_layers=L, bidirectional=True)``,
  ``apply(params, x, lengths=lengths)`` (default ``backward``), ``jax.jit(jax.grad(loss))``.
- seqjax one vmapped scan (a prototype, not the library): both directions of a layer
  as ONE scan ``jax.vmap``-ed over the two directions' stacked params; the backward
  direction reads each sequence reversed within its own length (a gather), runs a
  forward scan and is reversed back. Autodiff of the scan.
- Flax linen (LSTM only): ``nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(H)),
  nn.RNN(nn.OptimizedLSTMCell(H)))`` per layer with ``seq_lengths``; Flax does not zero
  outputs at padded steps, so its loss masks them (the same function).
- PyTorch (LSTM only): ``torch.nn.LSTM(num_layers=L, bidirectional=True,
  batch_first=True)`` on ``pack_padded_sequence(x, lengths, enforce_sorted=False)``,
  ``pad_packed_sequence(..., total_length=T)``, eager, default thread count. Packing
  skips padded steps; the JAX candidates run all T steps with masks.

The JAX candidates and PyTorch run on the same weights (``seqjax.interop.from_torch``),
so their gradients are compared (max relative difference to seqjax's, per parameter
leaf); Flax has its own initialisation (not compared). GFLOP/s: analytic matmul FLOPs
of the stack (``_common.recurrent_flops`` per layer and direction, plus the input
gradient of every layer above the first; padded steps included) over the median.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from seqjax import cells, io, recurrent

CELLS = ("lstm", "gru", "rnn_tanh")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TORCH_MODULES = {"lstm": "LSTM"}           # cells with a PyTorch (and Flax) peer here


def reverse_within_lengths(x, lengths):
    """x (B, T, ...) -> each sequence's valid prefix reversed in place; padding stays put."""
    T = x.shape[1]
    t = jnp.arange(T)[None, :]                                     # (1, T)
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)   # (B, T)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def vmapped_bidirectional(cell: cells.Cell):
    """apply(params, x, lengths) -> outputs (B, T, 2H) of a stack, each layer one vmapped scan.

    ``params`` is the layout of ``recurrent.layer(cell, bidirectional=True)``; per layer both
    directions run as a forward scan over [x, x reversed within lengths], then the second
    output is reversed back.
    """
    def one_layer(params_fb, x, lengths):
        B = x.shape[0]
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params_fb["forward"], params_fb["backward"])
        xs = jnp.stack([x, reverse_within_lengths(x, lengths)])       # (2, B, T, E)
        carry0 = cell.initial_carry((B,), x.dtype)

        def one(params, xd):
            return recurrent.unroll(cell.step, params, carry0, xd, lengths=lengths)[1]
        ys = jax.vmap(one)(stacked, xs)                                # (2, B, T, H)
        return jnp.concatenate([ys[0], reverse_within_lengths(ys[1], lengths)], axis=-1)

    def apply(params, x, lengths):
        for params_fb in params["layers"]:
            x = one_layer(params_fb, x, lengths)
        return x
    return apply


def stack_flops(cell_name: str, B: int, T: int, I: int, H: int, num_layers: int) -> float:
    """Analytic matmul FLOPs of forward + backward of the bidirectional stack (padded steps included)."""
    gh = _common.cell_gates(cell_name) * H
    total = _common.recurrent_flops(_common.cell_gates(cell_name), B, T, I, H, directions=2)
    for _ in range(num_layers - 1):             # input 2H; its gradient dx = dz W_ih^T is needed here
        total += _common.recurrent_flops(_common.cell_gates(cell_name), B, T, 2 * H, H, directions=2)
        total += 2 * 2 * B * T * (2 * H) * gh
    return float(total)


# ----------------------------------------------------------------------------- peers


def torch_module(cell_name: str, I: int, H: int, num_layers: int, seed: int, threads: int | None = None):
    """The PyTorch module of the workload, or None without torch (or without a peer for the cell)."""
    try:
        import torch
    except ImportError:
        return None
    if cell_name not in TORCH_MODULES:
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return getattr(torch.nn, TORCH_MODULES[cell_name])(I, H, num_layers=num_layers, bidirectional=True,
                                                       batch_first=True)


def torch_runner(module, x_np: np.ndarray, lengths_np: np.ndarray) -> Callable[[], Any]:
    """Eager forward + ``backward()`` through ``pack_padded_sequence``."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.from_numpy(np.array(x_np, np.float32))
    lt = torch.from_numpy(np.array(lengths_np, np.int64))
    T = xt.shape[1]

    def run():
        for p in module.parameters():
            p.grad = None
        packed = pack_padded_sequence(xt, lt, batch_first=True, enforce_sorted=False)
        out, _ = module(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)      # zeros at padded steps
        (out ** 2).sum().backward()
        return None
    return run


def torch_grads(module) -> Any:
    """The module's ``.grad`` tensors in seqjax's params layout (a copy of the module holding them)."""
    import torch

    from seqjax import interop

    holder = copy.deepcopy(module)
    with torch.no_grad():
        for p, src in zip(holder.parameters(), module.parameters()):
            p.copy_(src.grad)
    return interop.from_torch(holder)[1]


def flax_runner(cell_name: str, x, lengths, H: int, num_layers: int, key) -> Callable[[], Any]:
    """Flax linen: per layer ``nn.Bidirectional`` of two ``nn.RNN(OptimizedLSTMCell)`` with seq_lengths."""
    import flax.linen as nn

    cell_cls = {"lstm": nn.OptimizedLSTMCell}[cell_name]

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x, seq_lengths):
            for _ in range(num_layers):
                x = nn.Bidirectional(nn.RNN(cell_cls(H)), nn.RNN(cell_cls(H)))(x, seq_lengths=seq_lengths)
            return x

    model = Stack()
    params = model.init(key, x, lengths)
    valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]      # (B, T, 1)

    def loss(params, x):
        return jnp.sum(jnp.where(valid, model.apply(params, x, lengths), 0.0) ** 2)
    return _common.CompiledRunner(jax.jit(jax.grad(loss)), params, x)


# ----------------------------------------------------------------------------- driver


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="32,128,128,256", help="B,T,I,H (default %(default)s)")
    p.add_argument("--layers", type=int, default=2, help="L, stacked bidirectional layers (default 2)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--number", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peers", action="store_true", help="only the seqjax candidates (no Flax, no PyTorch)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: PyTorch's own default, as users get it)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: B=3, T=8, I=8, H=16, 2 rounds of 1 call, 1 torch thread")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.workload, args.rounds, args.number = "3,8,8,16", 2, 1
        if args.torch_threads is None:   # a smoke test: avoid OpenMP spin-waits on busy machines
            args.torch_threads = 1
    args.workload = tuple(int(v) for v in args.workload.split(","))
    if len(args.workload) != 4 or min(args.workload) < 1 or args.layers < 1:
        p.error(f"--workload needs four positive ints B,T,I,H and --layers >= 1, got {args.workload}, "
                f"{args.layers}")
    return args


def _rel_diff(grads, ref) -> float:
    return max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
               for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)))


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    command = _common.command_line("bidirectional.py", argv)
    machine = _common.machine_info(packages=("jax", "jaxlib", "flax", "numpy", "torch"))  # load before compute
    B, T, I, H = args.workload
    L = args.layers
    kx, kp, kf = jax.random.split(jax.random.key(args.seed), 3)
    x = jax.random.normal(kx, (B, T, I), jnp.float32)
    lengths = jnp.maximum(1, T - jnp.arange(B) * (T // (2 * B) or 1)).astype(jnp.int32)  # varied, max T
    x_np, lengths_np = np.asarray(x), np.asarray(lengths)
    candidates, diffs, flops = [], {}, {}
    for name in args.cells:
        cell = cells.make(name, H)
        layer = recurrent.layer(cell, num_layers=L, bidirectional=True)
        module = None if args.no_peers else torch_module(name, I, H, L, args.seed, args.torch_threads)
        if module is not None:
            from seqjax import interop
            params = interop.from_torch(module)[1]                     # the same weights as PyTorch
        else:
            params = layer.init(kp, I)
        vm = vmapped_bidirectional(cell)
        losses = {"seqjax one vmapped scan": lambda p, x: jnp.sum(vm(p, x, lengths) ** 2),
                  "seqjax": lambda p, x: jnp.sum(layer.apply(p, x, lengths=lengths)[0] ** 2)}
        grads = {}
        for label, loss in losses.items():
            runner = _common.CompiledRunner(jax.jit(jax.grad(loss)), params, x)
            grads[label] = runner()
            candidates.append((name, label, runner))
        if module is not None:
            candidates.append((name, "Flax", flax_runner(name, x, lengths, H, L, kf)))
            run = torch_runner(module, x_np, lengths_np)
            run()
            grads["PyTorch"] = torch_grads(module)
            candidates.append((name, "PyTorch", run))
        diffs[name] = {label: _rel_diff(g, grads["seqjax"]) for label, g in grads.items()}
        flops[name] = _common.workload_flops(stack_flops(name, B, T, I, H, L))
    print(f"timing {len(candidates)} candidates: {args.rounds} rounds x {args.number} calls", flush=True)
    times = _common.time_interleaved({f"{c}/{i}": fn for c, i, fn in candidates}, rounds=args.rounds,
                                     number=args.number, warmup=2)
    rows = _common.ratio_rows(candidates, times, "cell", flops=flops, peak=_common.peak_flop_per_s(machine))
    for row in rows:
        row["max_rel_grad_diff"] = diffs[row["cell"]].get(row["implementation"])
    payload = _common.result_record("bidirectional", args, command, machine, flops=flops, rows=rows,
                                    lengths=lengths_np.tolist())
    table = _common.ratio_table(rows, "cell", {})
    checks = "; ".join(f"{r['cell']} {r['implementation']} {_common.fmt_optional(r['max_rel_grad_diff'], '.1e')}"
                       for r in rows if r["implementation"] != "seqjax")
    text = (f"### Bidirectional {L}-layer stack with variable lengths: forward + backward of `sum(outputs**2)`"
            f"\n\nB={B}, T={T}, I={I}, H={H}, lengths {int(lengths_np.min())}..{int(lengths_np.max())} "
            f"(mean {lengths_np.mean():.1f}), float32; medians of {args.rounds} interleaved rounds x "
            f"{args.number} calls, one process ({_common.baseline_name(rows)} = 1.00x, lower is better). "
            f"PyTorch packs the batch (`pack_padded_sequence`) and skips padded steps; the JAX candidates "
            f"scan all T steps with masks. GFLOP/s count padded steps.\n\n{table}\n"
            f"Max relative gradient difference to seqjax (same weights; Flax not compared): {checks}.\n\n"
            f"Machine: {_common.machine_line(payload['machine'])}; load average (1, 5, 15 min) at the end "
            f"{[round(v, 1) for v in payload['loadavg_at_end']]}.\n\nCommand: `{payload['command']}`\n")
    _common.write_results(out_dir, "bidirectional", payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
