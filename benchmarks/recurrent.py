"""Forward+backward time of seqjax's LSTM/GRU/RNN layers against Flax, Equinox and PyTorch.

Every candidate computes the gradient of ``sum(outputs**2)`` with respect to its
parameters for one batch-major input (B, T, I), single layer, unidirectional, no
padding. All candidates run in ONE process, in interleaved rounds (see
``benchmarks/_common.py``); the table reports medians over rounds and their ratio to
PyTorch for the same cell (PyTorch = 1.00x). Run::

    .venv/bin/python benchmarks/recurrent.py                 # B=32, T=128, I=128, H=256
    .venv/bin/python benchmarks/recurrent.py --quick --out /tmp/bench   # smoke test

On a machine shared with other jobs, PyTorch's OpenMP threads spin-wait and its
times explode (seen here: 0.7-4 s instead of ~0.15 s per LSTM call at load average
10 on 2 cores); run with ``OMP_WAIT_POLICY=PASSIVE`` there. The machine line records
such variables and the load average.

Peers, as a user of each library would write them:

- seqjax: ``recurrent.layer(cells.make(name, H))``, ``jax.jit(jax.grad(loss))``: the
  default path, ``backward="jvp"`` (a ``jax.custom_jvp`` that JAX transposes into
  cuDNN's backward: the backward scan only carries dh/dc, then one matmul per weight
  gradient); "seqjax fused" is the same layer with ``backward="vjp"`` (that backward
  written as a ``jax.custom_vjp``, ``fused_backward=True``) and "seqjax autodiff"
  with ``backward="autodiff"`` (autodiff of the scan).
- Flax linen: ``nn.RNN(cell)`` with ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
  ``SimpleCell`` (tanh).
- Equinox: ``eqx.nn.LSTMCell`` / ``GRUCell`` in a ``lax.scan`` over time, ``jax.vmap``
  over the batch (the pattern of Equinox's RNN example); Equinox has no plain RNN cell.
- PyTorch: ``torch.nn.LSTM`` / ``GRU`` / ``RNN(nonlinearity="tanh")``, ``batch_first``,
  eager, default thread count.
"""

from __future__ import annotations

import argparse
import os
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
CELL_TITLES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FUSED = "seqjax fused"
#: The seqjax rows: implementation label -> ``recurrent.layer(..., backward=...)``.
SEQJAX_PATHS = {"seqjax": None, FUSED: "vjp", "seqjax autodiff": "autodiff"}

Candidate = tuple[str, str, Callable[[], Any]]   # (cell, implementation, run-once callable)


def _jax_runner(loss: Callable, params: Any, x: jax.Array) -> _common.CompiledRunner:
    return _common.CompiledRunner(jax.jit(jax.grad(loss)), params, x)


def seqjax_candidate(cell_name: str, x: jax.Array, hidden: int, key: jax.Array,
                     backward: str | None = None) -> Callable[[], Any]:
    """seqjax's public layer: ``layer(cells.make(cell_name, H), backward=...).apply`` (None: the default)."""
    layer = recurrent.layer(cells.make(cell_name, hidden), backward=backward)
    params = layer.init(key, x.shape[-1])

    def loss(params, x):
        outputs, _ = layer.apply(params, x)
        return jnp.sum(outputs ** 2)
    return _jax_runner(loss, params, x)


FLOOR = "XLA matmuls alone (floor)"


def matmul_floor_candidate(cell_name: str, x: jax.Array, hidden: int, key: jax.Array) -> Callable[[], Any]:
    """The matmuls of the default path's forward + backward and nothing else, in its loop structure:
    a forward scan of ``x_t W_ih + h W_hh`` (B, G*H) per step, a reverse scan of ``g_t W_hh^T`` per
    step, then ``X^T G``, ``H^T G`` and ``G W_ih^T`` over all T*B rows. The gate arithmetic is
    replaced by the cheapest use of every column (a sum over the G blocks), so this is what XLA:CPU
    takes for the matmuls alone: a lower bound for that structure built on XLA's matmuls."""
    params = recurrent.layer(cells.make(cell_name, hidden)).init(key, x.shape[-1])["layers"][0]["forward"]
    G = params["w_hh"].shape[1] // hidden

    def floor(w_ih, w_hh, x):
        B = x.shape[0]
        xs = jnp.swapaxes(x, 0, 1)                                            # (T, B, E)

        def forward(h, x_t):
            hp = x_t @ w_ih + h @ w_hh                                        # (B, G*H)
            h = 0.1 * hp.reshape(B, G, hidden).sum(1)                          # every column used
            return h, (h, hp)
        _, (hs, gs) = jax.lax.scan(forward, jnp.zeros((B, hidden), x.dtype), xs)

        def backward(dh, g_t):
            return 0.1 * (dh + g_t @ w_hh.T), None                             # (B, H)
        dh0, _ = jax.lax.scan(backward, jnp.zeros((B, hidden), x.dtype), gs, reverse=True)
        X, Hs, Gr = (a.reshape(-1, a.shape[-1]) for a in (xs, hs, gs))
        return X.T @ Gr, Hs.T @ Gr, Gr @ w_ih.T, dh0
    return _common.CompiledRunner(jax.jit(floor), params["w_ih"], params["w_hh"], x)


def flax_candidates(cell_name: str, x: jax.Array, hidden: int, key: jax.Array) -> dict[str, Callable]:
    """``flax.linen.RNN`` over the matching Flax cell(s)."""
    import flax.linen as nn

    cell_classes = {"lstm": {"Flax LSTMCell": nn.LSTMCell, "Flax OptimizedLSTMCell": nn.OptimizedLSTMCell},
                    "gru": {"Flax GRUCell": nn.GRUCell},
                    "rnn_tanh": {"Flax SimpleCell": nn.SimpleCell}}[cell_name]
    runners = {}
    for label, cls in cell_classes.items():
        model = nn.RNN(cls(features=hidden))
        params = model.init(key, x)

        def loss(params, x, model=model):
            return jnp.sum(model.apply(params, x) ** 2)
        runners[label] = _jax_runner(loss, params, x)
    return runners


def equinox_candidate(cell_name: str, x: jax.Array, hidden: int, key: jax.Array) -> Callable | None:
    """An Equinox cell in ``lax.scan`` over time, ``vmap`` over the batch; None for RNN."""
    import equinox as eqx

    if cell_name not in ("lstm", "gru"):
        return None
    is_lstm = cell_name == "lstm"
    cell = (eqx.nn.LSTMCell if is_lstm else eqx.nn.GRUCell)(x.shape[-1], hidden, key=key)

    def run(cell, xs):                                   # xs (T, I) -> (T, H)
        zeros = jnp.zeros((hidden,), xs.dtype)
        init = (zeros, zeros) if is_lstm else zeros

        def step(carry, x_t):
            carry = cell(x_t, carry)
            return carry, (carry[0] if is_lstm else carry)
        return jax.lax.scan(step, init, xs)[1]

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(cell, x):
        return jnp.sum(jax.vmap(run, in_axes=(None, 0))(cell, x) ** 2)
    return _common.CompiledRunner(grad, cell, x)


def torch_candidate(cell_name: str, x: np.ndarray, hidden: int, seed: int,
                    threads: int | None = None) -> Callable | None:
    """``torch.nn.LSTM``/``GRU``/``RNN`` eager forward + ``backward()``; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    kwargs = dict(input_size=x.shape[-1], hidden_size=hidden, batch_first=True)
    module = {"lstm": lambda: torch.nn.LSTM(**kwargs), "gru": lambda: torch.nn.GRU(**kwargs),
              "rnn_tanh": lambda: torch.nn.RNN(nonlinearity="tanh", **kwargs)}[cell_name]()
    xt = torch.from_numpy(np.array(x, dtype=np.float32))

    def run():
        for p in module.parameters():
            p.grad = None
        outputs, _ = module(xt)
        (outputs ** 2).sum().backward()
        return module.weight_hh_l0.grad
    return run


def build_candidates(cell_names, batch: int, time: int, input_size: int, hidden: int,
                     seed: int = 0, torch_threads: int | None = None) -> list[Candidate]:
    """All (cell, implementation, runner) triples for one workload."""
    key = jax.random.key(seed)
    k_x, k_params = jax.random.split(key)
    x = jax.random.normal(k_x, (batch, time, input_size), jnp.float32)
    x_np = np.asarray(x)
    candidates: list[Candidate] = []
    for name in cell_names:
        kp = jax.random.fold_in(k_params, CELLS.index(name))
        candidates += [(name, label, seqjax_candidate(name, x, hidden, kp, backward))
                       for label, backward in SEQJAX_PATHS.items()]
        candidates.append((name, FLOOR, matmul_floor_candidate(name, x, hidden, kp)))
        candidates += [(name, label, fn) for label, fn in flax_candidates(name, x, hidden, kp).items()]
        eqx_fn = equinox_candidate(name, x, hidden, kp)
        if eqx_fn is not None:
            candidates.append((name, "Equinox", eqx_fn))
        torch_fn = torch_candidate(name, x_np, hidden, seed, torch_threads)
        if torch_fn is not None:
            candidates.append((name, "PyTorch", torch_fn))
    return candidates


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32, help="B (default 32)")
    p.add_argument("--time", type=int, default=128, help="T (default 128)")
    p.add_argument("--input", type=int, default=128, help="I, input features (default 128)")
    p.add_argument("--hidden", type=int, default=256, help="H (default 256)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default 20)")
    p.add_argument("--number", type=int, default=2, help="calls per candidate per round (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first (default 2)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS), help="cells to time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: PyTorch's own default, as users get it)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: B=2, T=8, I=8, H=16, 2 rounds of 1 call, 1 warm-up, 1 torch thread")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output directory for recurrent.json and recurrent.md (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.torch_threads is not None and args.torch_threads < 1:
        p.error(f"--torch-threads must be >= 1, got {args.torch_threads}")
    if args.quick:
        args.batch, args.time, args.input, args.hidden = 2, 8, 8, 16
        args.rounds, args.number, args.warmup = 2, 1, 1
        if args.torch_threads is None:   # a smoke test: avoid OpenMP spin-waits on busy machines
            args.torch_threads = 1
    for name in ("batch", "time", "input", "hidden", "rounds", "number"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def markdown(payload: dict[str, Any]) -> str:
    c = payload["config"]
    base = _common.baseline_name(payload["rows"])
    table = _common.ratio_table(payload["rows"], "cell", CELL_TITLES)
    return (f"### Recurrent layers: forward + backward of `sum(outputs**2)`\n\n"
            f"B={c['batch']}, T={c['time']}, I={c['input']}, H={c['hidden']}, float32, one layer, "
            f"one direction; medians of {c['rounds']} interleaved rounds x {c['number']} calls, "
            f"one process ({base} = 1.00x, lower is better). GFLOP/s: the layer's analytic matmul FLOPs "
            f"(`_common.recurrent_flops`, the same count for every implementation) over the median; % of the "
            f"measured float32 matmul peak; compile s: `jit(...).lower().compile()`.\n\n{table}\n"
            f"Machine: {_common.machine_line(payload['machine'])}; at the end "
            f"{payload['loadavg_at_end'][0]:.1f}.\n\n"
            f"Command: `{payload['command']}`\n")


def main(argv=None) -> dict[str, Any]:
    """Run the benchmark, print the table, write ``recurrent.json`` and ``recurrent.md``."""
    args = parse_args(argv)
    out_dir = io.ensure_writable_dir(args.out, "--out")
    env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_WAIT_POLICY",) if k in os.environ)
    command = env + _common.command_line("recurrent.py", argv)
    torch_threads_before = _torch_threads()
    try:
        candidates = build_candidates(args.cells, args.batch, args.time, args.input, args.hidden, args.seed,
                                      args.torch_threads)
        machine = _common.machine_info()    # after build_candidates: records the torch threads used
        print(f"timing {len(candidates)} candidates: {args.rounds} rounds x {args.number} calls", flush=True)
        times = _common.time_interleaved({f"{c}/{i}": fn for c, i, fn in candidates}, rounds=args.rounds,
                                         number=args.number, warmup=args.warmup)
    finally:     # --torch-threads must not leak into the caller's process (tests run in-process)
        if torch_threads_before is not None:
            import torch
            torch.set_num_threads(torch_threads_before)
    flops = {c: _common.workload_flops(_common.recurrent_flops(_common.cell_gates(c), args.batch, args.time,
                                                               args.input, args.hidden)) for c in args.cells}
    payload = _common.result_record("recurrent", args, command, machine, flops=flops,
                                    rows=_common.ratio_rows(candidates, times, "cell", flops=flops,
                                                            peak=_common.peak_flop_per_s(machine)))
    text = markdown(payload)
    _common.write_results(out_dir, "recurrent", payload, text)
    print(text, flush=True)
    return payload


if __name__ == "__main__":
    main()
