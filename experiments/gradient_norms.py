"""Headline: per-step gradient norms ||dL/dh_t|| against distance for RNNs, LSTMs, GRU and Transformers.

One shared task (the adding problem by default, ANCHORS §2), the loss read at the
last step. For recurrent models the curve is the total derivative dL/dh_t of the loss
w.r.t. the state after step t (``seqjax.gradients.state_gradients``; for the LSTM the
whole state (h, c)); for Transformers it is ||dL/dx_t|| w.r.t. the representation of
token t entering the encoder (``input_gradient_norms``). Mean and min-max over seeds
(vmapped: one compilation per architecture), at initialisation and after a short
Adam run. ``python experiments/gradient_norms.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import cells, gradients, io, plotting, tasks, transformer
from seqjax.attention import causal_mask
from seqjax.recurrent import unroll

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "gradient_norms"
README_FIGURE = REPO / "docs" / "figures" / "gradient_norms.png"

ARCHS = {
    "rnn_tanh": "tanh RNN",
    "rnn_relu": "ReLU RNN",
    "lstm_fb0": "LSTM, forget bias 0",
    "lstm_fb1": "LSTM, forget bias 1",
    "gru": "GRU",
    "transformer_post_ln": "Transformer, Post-LN",
    "transformer_pre_ln": "Transformer, Pre-LN",
}
TASKS = ("adding", "copying")
PHASES = ("init", "trained")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the run depends on (saved as config.json)."""

    task: str = "adding"
    length: int = 100            # T (adding: sequence length; copying: the delay)
    hidden_size: int = 64        # H for recurrent cells, D for Transformers
    seeds: int = 3
    steps: int = 120             # training steps between the two measurements
    batch_size: int = 32
    eval_batch_size: int = 32
    learning_rate: float = 1e-3
    transformer_layers: int = 2
    num_heads: int = 4
    archs: tuple[str, ...] = tuple(ARCHS)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        unknown = [a for a in self.archs if a not in ARCHS]
        if unknown or not self.archs:
            raise ValueError(f"archs must be a non-empty list from {list(ARCHS)}, got unknown {unknown or '(none)'}")
        for name in ("length", "hidden_size", "seeds", "batch_size", "eval_batch_size",
                     "transformer_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.task == "adding" and self.length % 2:
            raise ValueError(f"length must be even for the adding problem, got {self.length}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


# ----------------------------------------------------------------------------- task


class Batch(NamedTuple):
    x: jax.Array        # (B, T, E) float inputs (copying: one-hot tokens)
    y: jax.Array        # adding: (B,) targets; copying: (B, T) labels


def sample(cfg: Config, key, batch_size: int) -> Batch:
    if cfg.task == "adding":
        b = tasks.adding(key, batch_size, length=cfg.length)
        return Batch(b.x, b.y)
    b = tasks.copying_memory(key, batch_size, delay=cfg.length)
    return Batch(jax.nn.one_hot(b.x, tasks.COPY_VOCAB_SIZE), b.y)


def io_sizes(cfg: Config) -> tuple[int, int]:
    return (2, 1) if cfg.task == "adding" else (tasks.COPY_VOCAB_SIZE, tasks.COPY_VOCAB_SIZE)


def task_loss(cfg: Config, out: jax.Array, y: jax.Array) -> jax.Array:
    """Training loss (mean): adding, MSE at the last step; copying, cross-entropy over all steps."""
    if cfg.task == "adding":
        return jnp.mean((out[:, -1, 0] - y) ** 2)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))


def last_step_loss(cfg: Config, out_last: jax.Array, y: jax.Array) -> jax.Array:
    """The measured loss: the last step only, summed over examples (so each example's
    gradient is its own loss's gradient). out_last (B, O)."""
    if cfg.task == "adding":
        return jnp.sum((out_last[:, 0] - y) ** 2)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(out_last, y[:, -1]))


# ----------------------------------------------------------------------------- models


class Model(NamedTuple):
    init: Callable          # key -> params
    loss: Callable          # (params, batch) -> scalar training loss
    profile: Callable       # (params, batch) -> (B, T) gradient norm per step


def _dense_init(key, fan_in, fan_out):
    bound = 1.0 / np.sqrt(fan_in)
    k1, k2 = jax.random.split(key)
    return {"kernel": jax.random.uniform(k1, (fan_in, fan_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k2, (fan_out,), jnp.float32, -bound, bound)}


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def recurrent_model(cfg: Config, arch: str) -> Model:
    E, O = io_sizes(cfg)
    H = cfg.hidden_size
    cell = {"rnn_tanh": lambda: cells.simple_rnn(H, "tanh"), "rnn_relu": lambda: cells.simple_rnn(H, "relu"),
            "lstm_fb0": lambda: cells.lstm(H, forget_bias=0.0), "lstm_fb1": lambda: cells.lstm(H, forget_bias=1.0),
            "gru": lambda: cells.gru(H)}[arch]()

    def init(key):
        k_cell, k_out = jax.random.split(key)
        return {"cell": cell.init(k_cell, E), "readout": _dense_init(k_out, H, O)}

    def loss(params, batch):
        carry0 = cell.initial_carry((batch.x.shape[0],))
        _, ys = unroll(cell.step, params["cell"], carry0, batch.x)          # (B, T, H)
        return task_loss(cfg, _dense(params["readout"], ys), batch.y)

    def profile(params, batch):
        g = gradients.state_gradients(
            cell, params["cell"], batch.x,
            lambda ys: last_step_loss(cfg, _dense(params["readout"], ys[:, -1]), batch.y))
        # the norm of the whole state, sqrt(||dL/dh||^2 + ||dL/dc||^2) for the LSTM; safe_norm
        # because squaring a float32 1e-25 would flush to zero
        return gradients.safe_norm(jnp.concatenate(jax.tree.leaves(g), axis=-1), axis=-1)   # (B, T)

    return Model(init, loss, profile)


def transformer_model(cfg: Config, arch: str) -> Model:
    E, O = io_sizes(cfg)
    D = cfg.hidden_size
    pre_ln = arch == "transformer_pre_ln"
    stack = transformer.encoder(transformer.StackConfig(
        model_size=D, num_heads=cfg.num_heads, ff_size=2 * D, num_layers=cfg.transformer_layers,
        dropout=0.0, norm_first=pre_ln, final_norm=pre_ln))
    T = cfg.length if cfg.task == "adding" else cfg.length + 20
    pe = transformer.positional_encoding("sinusoidal", T, D)
    mask = causal_mask(T)                        # causal: the last position reads the whole sequence

    def init(key):
        k_in, k_stack, k_out = jax.random.split(key, 3)
        return {"embed": _dense_init(k_in, E, D), "stack": stack.init(k_stack), "readout": _dense_init(k_out, D, O)}

    def embed(params, x):                        # x_t: the token representation entering the encoder
        return pe.apply({}, _dense(params["embed"], x))                      # (B, T, D)

    def head(params, e):
        return _dense(params["readout"], stack.apply(params["stack"], e, mask=mask))   # (B, T, O)

    def loss(params, batch):
        return task_loss(cfg, head(params, embed(params, batch.x)), batch.y)

    def profile(params, batch):
        return gradients.input_gradient_norms(
            lambda e: head(params, e), embed(params, batch.x), position=-1,
            loss_fn=lambda out_last: last_step_loss(cfg, out_last, batch.y))

    return Model(init, loss, profile)


def make_model(cfg: Config, arch: str) -> Model:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    return transformer_model(cfg, arch) if arch.startswith("transformer") else recurrent_model(cfg, arch)


# ----------------------------------------------------------------------------- run


def run_arch(cfg: Config, arch: str, eval_batch: Batch) -> dict[str, np.ndarray]:
    """All seeds of one architecture in one jitted, vmapped call: profiles and losses."""
    model = make_model(cfg, arch)
    opt = optax.adam(cfg.learning_rate)

    def one_seed(key):
        k_init, k_data = jax.random.split(key)
        params = model.init(k_init)
        g_init = jnp.mean(model.profile(params, eval_batch), axis=0)          # (T,)

        def train_step(state, k):
            params, opt_state = state
            loss, grads = jax.value_and_grad(model.loss)(params, sample(cfg, k, cfg.batch_size))
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(train_step, (params, opt.init(params)),
                                           jax.random.split(k_data, cfg.steps))
        g_trained = jnp.mean(model.profile(params, eval_batch), axis=0)
        return g_init, g_trained, losses, model.loss(params, eval_batch)

    keys = jax.random.split(jax.random.key(0), cfg.seeds)          # the same seeds for every architecture
    g0, g1, losses, eval_loss = jax.jit(jax.vmap(one_seed))(keys)
    # column d = distance T-1-t from the measured (last) step
    return {"init": np.asarray(g0)[:, ::-1], "trained": np.asarray(g1)[:, ::-1],
            "train_loss": np.asarray(losses), "eval_loss": np.asarray(eval_loss)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Config()
    p.add_argument("--task", default=d.task, help=f"one of {list(TASKS)} (default %(default)s)")
    p.add_argument("--length", "-T", type=int, default=d.length, help="T (default %(default)s)")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="H / D (default %(default)s)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--transformer-layers", type=int, default=d.transformer_layers)
    p.add_argument("--archs", default=",".join(d.archs),
                   help=f"comma-separated, from {','.join(ARCHS)} (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default %(default)s)")
    p.add_argument("--readme-figure", type=Path, default=None,
                   help=f"also copy the figure here (default {README_FIGURE.relative_to(REPO)} "
                        "unless --quick; pass '' to skip)")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (T=20, 2 seeds, 5 steps)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    kw = dict(task=args.task, length=args.length, hidden_size=args.hidden_size, seeds=args.seeds,
              steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
              transformer_layers=args.transformer_layers,
              archs=tuple(a.strip() for a in args.archs.split(",") if a.strip()))
    if args.quick:   # small sizes, except where a flag asked for something else
        default = Config()
        quick = dict(length=20, hidden_size=16, seeds=2, steps=5, batch_size=8, eval_batch_size=8,
                     transformer_layers=1)
        kw.update({k: v for k, v in quick.items() if kw.get(k, getattr(default, k)) == getattr(default, k)})
    return Config(**kw)


def main(argv=None) -> Path:
    args = parse_args(argv)
    cfg = config_from_args(args)                                    # unknown names fail here
    out = io.ensure_writable_dir(args.out)                          # before any compute
    figure_copy = args.readme_figure
    if figure_copy is None and not args.quick:
        figure_copy = README_FIGURE
    if figure_copy is not None and str(figure_copy) not in ("", "."):
        io.ensure_writable_dir(Path(figure_copy).parent, "--readme-figure directory")
    else:
        figure_copy = None

    start = time.perf_counter()
    eval_batch = sample(cfg, jax.random.key(12345), cfg.eval_batch_size)
    results, timings = {}, {}
    for arch in cfg.archs:
        t0 = time.perf_counter()
        results[arch] = run_arch(cfg, arch, eval_batch)
        timings[arch] = round(time.perf_counter() - t0, 2)
        print(f"{arch:22s} {timings[arch]:6.1f}s  eval loss after {cfg.steps} steps: "
              f"{np.mean(results[arch]['eval_loss']):.4f}", flush=True)

    T = results[cfg.archs[0]]["init"].shape[1]
    arrays = {"distance": np.arange(T)}
    rows = []
    for arch, r in results.items():
        for key in ("init", "trained", "train_loss", "eval_loss"):
            arrays[f"{arch}/{key}"] = r[key]
        for phase in PHASES:
            for seed in range(cfg.seeds):
                for dist in range(T):
                    rows.append({"arch": arch, "phase": phase, "seed": seed, "distance": dist,
                                 "grad_norm": float(r[phase][seed, dist])})
    summary = [{"arch": a, "label": ARCHS[a], "eval_loss_mean": float(np.mean(r["eval_loss"])),
                "eval_loss_min": float(np.min(r["eval_loss"])), "eval_loss_max": float(np.max(r["eval_loss"])),
                "ratio_far_to_near_init": float(np.exp(np.mean(np.log(np.maximum(r["init"][:, -1], 1e-45))
                                                             - np.log(r["init"][:, 0])))),
                "ratio_far_to_near_trained": float(np.exp(np.mean(np.log(np.maximum(r["trained"][:, -1], 1e-45))
                                                                - np.log(r["trained"][:, 0])))),
                "seconds": timings[a]} for a, r in results.items()]
    baseline = tasks.adding_baseline() if cfg.task == "adding" else tasks.copying_memory_baseline(cfg.length)
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "baseline_loss": baseline,
                                       "jax": jax.__version__, "backend": jax.default_backend(),
                                       "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "gradient_norms.npz", **arrays)
    io.save_csv(out / "gradient_norms.csv", rows)
    io.save_csv(out / "summary.csv", summary)
    figure = plot(out)
    if figure_copy is not None:
        io.atomic_write_bytes(figure_copy, figure.read_bytes())
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s" + (f"; figure copied to {figure_copy}"
                                                                    if figure_copy else ""))
    return out


def plot(out_dir) -> Path:
    """Re-make the figure from config.json and gradient_norms.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "gradient_norms.npz")
    curves = {phase: {a: data[f"{a}/{phase}"] for a in cfg["archs"]} for phase in PHASES}
    labels = {a: ARCHS[a] + (r" ($\|\partial L/\partial x_t\|$)" if a.startswith("transformer") else "")
              for a in cfg["archs"]}
    task = {"adding": "adding problem", "copying": "copying memory"}[cfg["task"]]
    fig = plotting.gradient_norms_figure(
        curves, data["distance"], labels=labels,
        phase_titles={"init": "at initialisation", "trained": f"after {cfg['steps']} Adam steps"},
        title=(f"Gradient of the last-step loss w.r.t. each step's state, {task}, T = {cfg['length']}, "
               f"H = {cfg['hidden_size']} (mean and min-max over {cfg['seeds']} seeds)"),
        ylabel=r"$\|\partial L/\partial h_t\|$ (Transformers: $\|\partial L/\partial x_t\|$)")
    return io.save_figure(fig, out_dir / "gradient_norms.png", dpi=130)


if __name__ == "__main__":
    main(sys.argv[1:])
