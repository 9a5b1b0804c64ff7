"""Headline: per-step gradient norms ||dL/dh_t|| against distance for RNNs, LSTMs, GRU, an orthogonal RNN and Transformers.

One shared task (the adding problem by default; ``seqjax.tasks.adding``), the loss read
at the last step. For recurrent models the curve is the total derivative dL/dh_t of the
loss w.r.t. the state after step t (``seqjax.gradients.state_gradients``; for the LSTM
the whole state (h, c)); for Transformers it is ||dL/dx_t|| w.r.t. the representation
of token t entering the encoder (``input_gradient_norms``). Mean and min-max over seeds
(vmapped: one compilation per architecture), at initialisation and after a short Adam
run through ``seqjax.train`` (the orthogonal RNN: Adam on the exponential map's log,
``cells.orthogonal_optimizer``, so W_hh stays orthogonal). Everything is measured on one
held-out batch (1024 sequences by default), and each evaluation loss is reported beside
two chance levels: the population's (1/6 for adding) and that of the same predictor on
this batch. Writes to results/gradient_norms/, including summary.json and reading.md (the
figure's numbers as sentences, which the README quotes; ``make figures`` copies the
figure and summary.json into docs/). ``python experiments/gradient_norms.py --help``.

``--dtype bfloat16`` runs the same measurement under ``seqjax.precision.policy("bfloat16")``
(params float32, matmuls bfloat16, recurrent carry, softmax and loss float32), and ``--dtype
float64`` under the float64 policy; each writes to its own directory, results/gradient_norms_<dtype>/,
so the float32 headline is never overwritten.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from seqjax import cells, gradients, io, layers, losses, plotting, precision, recurrent, tasks, train, transformer
from seqjax.attention import causal_mask

ARCHS = {  # name: (legend label, cells.make name and options, or "transformer" and its norm_first)
    "rnn_tanh": ("tanh RNN", "rnn_tanh", {}),
    "rnn_relu": ("ReLU RNN", "rnn_relu", {}),
    "lstm_fb0": ("LSTM, forget bias 0", "lstm", {"forget_bias": 0.0}),
    "lstm_fb1": ("LSTM, forget bias 1", "lstm", {"forget_bias": 1.0}),
    "gru": ("GRU", "gru", {}),
    "orthogonal": ("orthogonal RNN (expRNN)", "orthogonal", {}),
    "transformer_post_ln": ("Transformer, Post-LN", "transformer", {"norm_first": False}),
    "transformer_pre_ln": ("Transformer, Pre-LN", "transformer", {"norm_first": True}),
}
TASKS = ("adding", "copying")
PHASES = ("init", "trained")
DTYPES = ("float32", "bfloat16", "float64")   # names of seqjax.precision.policy
QUICK = dict(length=20, hidden_size=16, seeds=2, steps=5, batch_size=8, eval_batch_size=8, transformer_layers=1)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the run depends on (saved as config.json)."""

    task: str = "adding"
    length: int = 100            # T (adding: sequence length; copying: the delay)
    hidden_size: int = 64        # H for recurrent cells, D for Transformers
    seeds: int = 3
    steps: int = 120             # Adam steps between the two measurements
    batch_size: int = 32
    eval_batch_size: int = 1024  # held-out sequences: the losses and every gradient profile
    learning_rate: float = 1e-3  # Adam; the orthogonal RNN's log-orthogonal parameter gets a tenth of it
    transformer_layers: int = 2
    num_heads: int = 4
    archs: tuple[str, ...] = tuple(ARCHS)
    dtype: str = "float32"       # the precision policy: float32, bfloat16 (float32 params) or float64

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
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


class Batch(NamedTuple):
    x: jax.Array        # (B, T, E) float inputs (copying: one-hot tokens)
    y: jax.Array        # adding: (B,) targets; copying: (B, T) labels


def sample(cfg: Config, key, batch_size: int) -> Batch:
    if cfg.task == "adding":
        b = tasks.adding(key, batch_size, length=cfg.length)
        return Batch(b.x, b.y)
    b = tasks.copying_memory(key, batch_size, delay=cfg.length)
    return Batch(jax.nn.one_hot(b.x, tasks.COPY_VOCAB_SIZE), b.y)


def task_loss(cfg: Config, out: jax.Array, y: jax.Array, last_only: bool = False) -> jax.Array:
    """Adding: MSE at the last step; copying: cross-entropy over all steps (``last_only``: the last).
    out (B, T, O), or (B, O) with ``last_only``."""
    if cfg.task == "adding":
        return losses.mse((out if last_only else out[:, -1])[:, 0], y)
    return losses.cross_entropy(out, y[:, -1] if last_only else y)


class Model(NamedTuple):
    init: Callable          # key -> params
    loss: Callable          # (params, batch) -> scalar training loss
    profile: Callable       # (params, batch) -> (B, T) norm of the last-step loss's gradient per step


def make_model(cfg: Config, arch: str) -> Model:
    E, O = (2, 1) if cfg.task == "adding" else (tasks.COPY_VOCAB_SIZE, tasks.COPY_VOCAB_SIZE)
    H, (_, kind, options) = cfg.hidden_size, ARCHS[arch]
    # one policy for every piece: float32 casts nothing, so the headline's numbers are unchanged
    policy = precision.policy(cfg.dtype)
    # the measured loss is summed over examples, so each example's gradient is its own loss's
    last_loss = lambda out_last, y: out_last.shape[0] * task_loss(cfg, out_last, y, last_only=True)  # noqa: E731

    def readout(params, h):      # the dense readout in the compute dtype, its output in the output dtype
        p, h = policy.cast_to_compute((params["readout"], h))
        return policy.cast_to_output(layers.dense(p, h))

    if kind != "transformer":
        cell = cells.make(kind, H, **options)
        # one layer, differentiated as the scan is written (autodiff): the cell's own unroll
        rnn = recurrent.layer(cell, backward="autodiff", precision=policy)
        as_layer = lambda params: {"layers": [{"forward": params["cell"]}]}       # noqa: E731

        def init(key):
            k_cell, k_out = jax.random.split(key)
            return policy.cast_to_param({"cell": cell.init(k_cell, E),
                                         "readout": layers.dense_init(k_out, H, O, init="torch")})

        def loss(params, batch):
            ys, _ = rnn.apply(as_layer(params), batch.x)                            # (B, T, H)
            return task_loss(cfg, readout(params, ys), batch.y)

        def profile(params, batch):
            # dL/dh_t in the layer's carry (float32 under bfloat16 compute: the carry's dtype)
            g = gradients.state_gradients(rnn, as_layer(params), batch.x,
                                          lambda ys: last_loss(readout(params, ys[:, -1]), batch.y))[0]["forward"]
            # the whole state's norm (LSTM: h and c); safe_norm: squaring 1e-25 would flush to zero in float32
            return gradients.safe_norm(jnp.concatenate(jax.tree.leaves(g), axis=-1), axis=-1)
        return Model(init, loss, profile)

    stack = transformer.encoder(transformer.StackConfig(
        model_size=H, num_heads=cfg.num_heads, ff_size=2 * H, num_layers=cfg.transformer_layers,
        dropout=0.0, final_norm=options["norm_first"], **options), precision=policy)
    T = cfg.length if cfg.task == "adding" else cfg.length + 20
    pe, mask = transformer.positional_encoding("sinusoidal", T, H), causal_mask(T)   # the last step reads all

    def init(key):
        k_in, k_stack, k_out = jax.random.split(key, 3)
        return policy.cast_to_param({"embed": layers.dense_init(k_in, E, H, init="torch"),
                                     "stack": stack.init(k_stack),
                                     "readout": layers.dense_init(k_out, H, O, init="torch")})

    def embed(params, x):        # x_t: the token representation entering the encoder, (B, T, D), compute dtype
        p, x = policy.cast_to_compute((params["embed"], x))
        return pe.apply({}, layers.dense(p, x))

    def head(params, e):
        return readout(params, stack.apply(params["stack"], e, mask=mask))          # (B, T, O)

    def profile(params, batch):
        return gradients.input_gradient_norms(lambda e: head(params, e), embed(params, batch.x), position=-1,
                                              loss_fn=lambda out_last: last_loss(out_last, batch.y))
    return Model(init, lambda p, b: task_loss(cfg, head(p, embed(p, b.x)), b.y), profile)


def run_arch(cfg: Config, arch: str, eval_batch: Batch) -> dict[str, np.ndarray]:
    """All seeds of one architecture in one jitted, vmapped call: profiles and losses."""
    model = make_model(cfg, arch)
    optimizer = train.make_optimizer("adam", cfg.learning_rate)
    if ARCHS[arch][1] == "orthogonal":   # W_hh on the orthogonal group (the authors' 10x lower rate there)
        optimizer = cells.orthogonal_optimizer(optimizer, train.make_optimizer("adam", cfg.learning_rate / 10))
    tr = train.trainer(lambda params, batch, key: (model.loss(params, batch), {}), optimizer,
                       precision=cfg.dtype)

    def one_seed(key):
        k_init, k_data = jax.random.split(key)
        state = tr.init(model.init(k_init), k_init)           # no dropout: the trainer's key is unused
        g_init = jnp.mean(model.profile(state.params, eval_batch), axis=0)                     # (T,)
        state, metrics = jax.lax.scan(lambda s, k: tr.train_step(s, sample(cfg, k, cfg.batch_size)),
                                      state, jax.random.split(k_data, cfg.steps))
        g_trained = jnp.mean(model.profile(state.params, eval_batch), axis=0)
        return g_init, g_trained, metrics["loss"], model.loss(state.params, eval_batch)

    keys = jax.random.split(jax.random.key(0), cfg.seeds)          # the same seeds for every architecture
    g0, g1, train_loss, eval_loss = jax.device_get(jax.jit(jax.vmap(one_seed))(keys))
    # column d = distance T-1-t from the measured (last) step
    return {"init": g0[:, ::-1], "trained": g1[:, ::-1], "train_loss": train_loss, "eval_loss": eval_loss}


def _floor(values: np.ndarray) -> float:
    """The value an exact zero counts as in a log: 1e-45 (float32 runs), 5e-324 (float64 runs)."""
    return 5e-324 if np.asarray(values).dtype == np.float64 else 1e-45


def far_to_near(runs: np.ndarray) -> float:
    """Geometric mean over seeds of the far end's norm over the near end's."""
    return float(np.exp(np.mean(np.log(np.maximum(runs[:, -1], _floor(runs))) - np.log(runs[:, 0]))))


def geomean(values: np.ndarray) -> float:
    """The geometric mean over seeds (the centre line of the figure's bands)."""
    return float(np.exp(np.mean(np.log(np.maximum(np.asarray(values, np.float64), _floor(values))))))


def chance_levels(cfg: Config, eval_batch: Batch) -> dict[str, float]:
    """The loss of the best input-blind predictor, for the task's population and for this batch.

    Adding: always predict 1 (the mean of x_i + x_j): MSE 1/6 on the population, mean((y - 1)^2)
    on the batch. Copying: blanks, then a uniform guess over the 8 symbols for the 10 recalled
    steps: 10 ln 8 / (T + 20), the same on every batch.
    """
    if cfg.task == "adding":
        return {"population": tasks.adding_baseline(),
                "batch": float(np.mean((np.asarray(eval_batch.y, np.float64) - 1.0) ** 2))}
    base = tasks.copying_memory_baseline(cfg.length)
    return {"population": base, "batch": base}


def summarize(cfg: Config, results: dict[str, dict], chance: dict[str, float]) -> dict:
    """The numbers the figure is read by (summary.json): per architecture and phase, the centre line
    at distances 0, 1 and T-1 and the mean factor per step, and the evaluation losses."""
    def phase(runs):
        T = runs.shape[1]
        ratio = far_to_near(runs)
        # where some seed fell below the smallest normal number: flushed to zero from there on (XLA on CPU)
        below = np.nonzero((runs < np.finfo(runs.dtype).tiny).any(axis=0))[0]
        return {"distance0": geomean(runs[:, 0]), "distance1": geomean(runs[:, 1]),
                "far": geomean(runs[:, -1]), "far_to_near": ratio, "per_step": ratio ** (1.0 / (T - 1)),
                "floor_distance": int(below[0]) if below.size else None}
    archs = {}
    for arch, r in results.items():
        archs[arch] = {"label": ARCHS[arch][0], "recurrent": not arch.startswith("transformer"),
                       "eval_loss_mean": float(np.mean(r["eval_loss"])),
                       "eval_loss_min": float(np.min(r["eval_loss"])),
                       "eval_loss_max": float(np.max(r["eval_loss"])),
                       "init": phase(r["init"]), "trained": phase(r["trained"])}
    return {"task": cfg.task, "length": cfg.length, "hidden_size": cfg.hidden_size, "steps": cfg.steps,
            "seeds": cfg.seeds, "eval_sequences": cfg.eval_batch_size, "learning_rate": cfg.learning_rate,
            "chance_population": chance["population"], "chance_batch": chance["batch"], "archs": archs,
            "dtype": cfg.dtype, "precision": str(precision.policy(cfg.dtype))}


def _e(x: float) -> str:
    return f"{x:.1e}"


def reading(summary: dict) -> str:
    """The figure's numbers as markdown (a table and sentences), generated from summary.json alone,
    so every number the README quotes is the saved data's. ``tests/test_papers.py`` checks it."""
    T, steps = summary["length"], summary["steps"]
    archs = {a: summary["archs"][a] for a in ARCHS if a in summary["archs"]}   # figure order (JSON sorts keys)
    loss = "MSE" if summary["task"] == "adding" else "cross-entropy"
    far = T - 1
    dtype = summary.get("dtype", "float32")
    lines = [] if dtype == "float32" else [
        f"Precision policy {dtype} ({summary['precision']}; the recurrent carry, softmax, layer-norm "
        "statistics, loss and gradient norms in float32 or wider).", ""]
    lines += [f"Evaluation on {summary['eval_sequences']} held-out sequences after {steps} Adam steps "
              f"(mean and min-max over {summary['seeds']} seeds), beside two chance levels of the input-blind "
              f"predictor: the population's ({summary['chance_population']:.4f}) and this batch's "
              f"({summary['chance_batch']:.4f}).", "",
              f"| model | eval {loss} | population chance | batch chance | below the batch chance in every seed |",
              "|---|---|---|---|---|"]
    for a in archs.values():
        below = a["eval_loss_max"] < summary["chance_batch"]
        lines.append(f"| {a['label']} | {a['eval_loss_mean']:.4f} ({a['eval_loss_min']:.4f}-"
                     f"{a['eval_loss_max']:.4f}) | {summary['chance_population']:.4f} | "
                     f"{summary['chance_batch']:.4f} | {'yes' if below else 'no'} |")
    lines += ["", f"Centre lines of the figure (geometric means over seeds) at distance 0, 1 and {far}, and, for "
              f"the recurrent models, the mean factor per step (the {far}th root of the ratio of distance {far} "
              "to distance 0):", "",
              f"| model | init: d = 0 | d = 1 | d = {far} | factor per step | after {steps} steps: d = 0 | "
              f"d = 1 | d = {far} | factor per step |", "|---|---|---|---|---|---|---|---|---|"]
    for a in archs.values():
        i, t = a["init"], a["trained"]
        fi, ft = (f"{i['per_step']:.3f}", f"{t['per_step']:.3f}") if a["recurrent"] else ("-", "-")
        lines.append(f"| {a['label']} | {_e(i['distance0'])} | {_e(i['distance1'])} | {_e(i['far'])} | {fi} | "
                     f"{_e(t['distance0'])} | {_e(t['distance1'])} | {_e(t['far'])} | {ft} |")
    lines.append("")
    for name, a in archs.items():
        if a["recurrent"]:
            continue
        for ph, when in (("init", "at initialisation"), ("trained", "after training")):
            p = a[ph]
            trend = "rises" if p["far"] > p["distance1"] else "falls"
            lines.append(f"- {a['label']}, {when}: the curve {trend} from {_e(p['distance1'])} at distance 1 to "
                         f"{_e(p['far'])} at distance {far} ({p['far'] / p['distance1']:.1f}x); the read "
                         f"position itself (distance 0) is {p['distance0'] / p['distance1']:.0f}x distance 1.")
    changes = {n: a["trained"]["far"] / a["init"]["far"] for n, a in archs.items() if a["recurrent"]}
    if changes:
        order = sorted(changes, key=lambda n: -abs(np.log(changes[n])))
        described = []
        for n in order:
            a = archs[n]
            described.append(f"{a['label']} {_e(a['init']['far'])} to {_e(a['trained']['far'])} "
                             f"({changes[n]:.2g}x)")
        lines.append(f"- The recurrent curves' far end (distance {far}) at initialisation and after {steps} steps, "
                     f"largest change first: " + "; ".join(described) + ".")
    for a in archs.values():
        for ph, when in (("init", "at initialisation"), ("trained", "after training")):
            d = a[ph].get("floor_distance")
            if d is not None:
                lines.append(f"- {a['label']}, {when}: from distance {d} some seed's gradient is below the smallest "
                             f"normal number of the measurement ({'float64' if dtype == 'float64' else 'float32'}) "
                             "and is flushed to zero; beyond it the curve is that floor, and its factor per step is "
                             "only an upper bound (rerun with --dtype float64).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "gradient_norms")
    parser.set_defaults(out=None)                                   # the default depends on --dtype
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)                    # bad values and names fail here
    # float32 writes the headline's directory; another dtype its own, so it never overwrites it
    default = _common.REPO / "results" / ("gradient_norms" if cfg.dtype == "float32" else f"gradient_norms_{cfg.dtype}")
    out = io.ensure_writable_dir(args.out or default)               # before any compute
    if cfg.dtype != "float64":
        return _run(cfg, out)
    x64 = jax.config.jax_enable_x64                                 # float64 arrays need x64: on for this run only
    jax.config.update("jax_enable_x64", True)
    try:
        return _run(cfg, out)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _run(cfg: Config, out: Path) -> Path:
    start = time.perf_counter()
    eval_batch = sample(cfg, jax.random.key(12345), cfg.eval_batch_size)
    arrays, rows, summary, results = {}, [], [], {}
    for arch in cfg.archs:
        t0 = time.perf_counter()
        r = results[arch] = run_arch(cfg, arch, eval_batch)
        seconds = round(time.perf_counter() - t0, 2)
        print(f"{arch:22s} {seconds:6.1f}s  eval loss after {cfg.steps} steps: {np.mean(r['eval_loss']):.4f}",
              flush=True)
        arrays.update({f"{arch}/{k}": v for k, v in r.items()})
        rows += [{"arch": arch, "phase": phase, "seed": s, "distance": d, "grad_norm": float(r[phase][s, d])}
                 for phase in PHASES for s in range(cfg.seeds) for d in range(r[phase].shape[1])]
        summary.append({"arch": arch, "label": ARCHS[arch][0], "eval_loss_mean": float(np.mean(r["eval_loss"])),
                        "eval_loss_min": float(np.min(r["eval_loss"])), "eval_loss_max": float(np.max(r["eval_loss"])),
                        "ratio_far_to_near_init": far_to_near(r["init"]),
                        "ratio_far_to_near_trained": far_to_near(r["trained"]), "seconds": seconds})
    arrays["distance"] = np.arange(arrays[f"{cfg.archs[0]}/init"].shape[1])
    baseline = tasks.adding_baseline() if cfg.task == "adding" else tasks.copying_memory_baseline(cfg.length)
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "baseline_loss": baseline,
                                       "jax": jax.__version__, "backend": jax.default_backend(),
                                       "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "gradient_norms.npz", **arrays)
    io.save_csv(out / "gradient_norms.csv", rows)
    io.save_csv(out / "summary.csv", summary)
    numbers = summarize(cfg, results, chance_levels(cfg, eval_batch))
    io.save_json(out / "summary.json", numbers)
    io.atomic_write_text(out / "reading.md", reading(numbers))
    figure = plot(out)
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s; figure: {figure}")
    return out


def plot(out_dir) -> Path:
    """Re-make the figure from config.json and gradient_norms.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "gradient_norms.npz")
    curves = {phase: {a: data[f"{a}/{phase}"] for a in cfg["archs"]} for phase in PHASES}
    labels = {a: ARCHS[a][0] + (r" ($\|\partial L/\partial x_t\|$)" if a.startswith("transformer") else "")
              for a in cfg["archs"]}
    task = {"adding": "adding problem", "copying": "copying memory"}[cfg["task"]]
    dtype = cfg.get("dtype", "float32")
    fig = plotting.gradient_norms_figure(
        curves, data["distance"], labels=labels,
        phase_titles={phase: text + ("" if dtype == "float32" else f" ({dtype} compute)") for phase, text in
                      (("init", "at initialisation"), ("trained", f"after {cfg['steps']} Adam steps"))},
        title=(f"Gradient of the last-step loss w.r.t. each step's state, {task}, T = {cfg['length']}, "
               f"H = {cfg['hidden_size']} (mean and min-max over {cfg['seeds']} seeds)"),
        ylabel=r"$\|\partial L/\partial h_t\|$ (Transformers: $\|\partial L/\partial x_t\|$)")
    return io.save_figure(fig, out_dir / "gradient_norms.png", dpi=130)


if __name__ == "__main__":
    main(sys.argv[1:])
