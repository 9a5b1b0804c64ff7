"""Global-norm gradient clipping (Pascanu et al. 2013): a tanh RNN trained with and without it.

A tanh RNN on the adding problem (``seqjax.tasks.adding``), recurrent weights
initialised as sigma * Q (Q orthogonal, sigma > 1: the regime where exploding
gradients are possible), trained by SGD with momentum through ``seqjax.train``, once
with ``clip_norm=None`` and once with ``clip_norm=cfg.clip_norm``. Both runs see the
same seeds, initialisations and batches. The trainer logs the global gradient norm
*before* clipping, so the spikes are visible in both runs.
``python experiments/clipping.py --help``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from seqjax import cells, io, layers, losses, plotting, tasks, train
from seqjax.recurrent import unroll

RUNS = ("no clipping", "clipped")
QUICK = dict(length=10, hidden_size=8, seeds=2, steps=20)


@dataclasses.dataclass(frozen=True)
class Config:
    length: int = 50
    hidden_size: int = 32
    batch_size: int = 32
    seeds: int = 3
    steps: int = 400
    learning_rate: float = 0.05
    momentum: float = 0.9
    clip_norm: float = 1.0
    sigma: float = 1.5          # initial largest singular value of W_hh

    def __post_init__(self):
        for name in ("length", "hidden_size", "batch_size", "seeds", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.length % 2:
            raise ValueError(f"length must be even for the adding problem, got {self.length}")
        for name in ("learning_rate", "clip_norm", "sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


def run(cfg: Config, clip_norm: float | None, key):
    """One seed: per-step (loss, global gradient norm before clipping), each (steps,)."""
    H = cfg.hidden_size
    cell = cells.make("rnn_tanh", H)
    k_cell, k_q, k_out, k_data = jax.random.split(key, 4)
    q, r = jnp.linalg.qr(jax.random.normal(k_q, (H, H)))
    # readout: bias 1 starts at the chance-level prediction of the sum's mean
    params = {"cell": dict(cell.init(k_cell, 2), w_hh=cfg.sigma * q * jnp.sign(jnp.diag(r))),
              "readout": {"kernel": jax.random.normal(k_out, (H, 1)) / jnp.sqrt(H), "bias": jnp.ones((1,))}}

    def loss_fn(params, batch, key):
        _, ys = unroll(cell.step, params["cell"], cell.initial_carry((batch.x.shape[0],)), batch.x)
        return losses.mse(layers.dense(params["readout"], ys[:, -1])[:, 0], batch.y), {}   # ys (B, T, H)

    tr = train.trainer(loss_fn, train.make_optimizer("sgd", cfg.learning_rate, momentum=cfg.momentum),
                       clip_norm=clip_norm)
    step = lambda state, k: tr.train_step(state, tasks.adding(k, cfg.batch_size, length=cfg.length))  # noqa: E731
    _, metrics = jax.lax.scan(step, tr.init(params, key), jax.random.split(k_data, cfg.steps))
    return metrics["loss"], metrics["grad_norm"]


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "clipping")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values, rates=("momentum",))
    out = io.ensure_writable_dir(args.out)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(0), cfg.seeds)
    arrays, rows = {"step": np.arange(1, cfg.steps + 1)}, []
    for name, clip_norm in zip(RUNS, (None, cfg.clip_norm)):
        loss, norms = jax.device_get(jax.jit(jax.vmap(lambda k, c=clip_norm: run(cfg, c, k)))(keys))
        arrays[f"{name}/loss"], arrays[f"{name}/grad_norm"] = loss, norms
        rows += [{"run": name, "seed": s, "step": i + 1, "loss": float(loss[s, i]),
                  "grad_norm": float(norms[s, i])} for s in range(cfg.seeds) for i in range(cfg.steps)]
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "baseline_loss": tasks.adding_baseline(),
                                       "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "clipping.npz", **arrays)
    io.save_csv(out / "clipping.csv", rows)
    figure = plot(out)
    for name in RUNS:
        print(f"{name:12s} final loss {np.mean(arrays[f'{name}/loss'][:, -20:]):.4f}  "
              f"max grad norm {np.max(arrays[f'{name}/grad_norm']):.3g}")
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s; figure: {figure}")
    return out


def plot(out_dir) -> Path:
    """Re-make the figure from config.json and clipping.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "clipping.npz")
    fig = plotting.clipping_figure(data["step"], {n: data[f"{n}/grad_norm"] for n in RUNS},
                                   {n: data[f"{n}/loss"] for n in RUNS}, clip_norm=cfg["clip_norm"],
                                   baseline=cfg["baseline_loss"])
    fig.suptitle(f"tanh RNN, adding problem T = {cfg['length']}, SGD lr {cfg['learning_rate']:g} "
                 f"momentum {cfg['momentum']:g}, init $\\sigma_{{max}}(W_{{hh}})$ = {cfg['sigma']:g} "
                 f"({cfg['seeds']} seeds, min-max band)")
    return io.save_figure(fig, out_dir / "clipping.png", dpi=130)


if __name__ == "__main__":
    main(sys.argv[1:])
