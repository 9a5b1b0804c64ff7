"""Global-norm gradient clipping (Pascanu et al. 2013): a tanh RNN trained with and without it.

A tanh RNN on the adding problem (ANCHORS §2), recurrent weights initialised as
sigma * Q (Q orthogonal, sigma > 1: the regime where exploding gradients are
possible), trained by plain SGD, once as is and once through
``optax.clip_by_global_norm``. Both runs see the same seeds, initialisations and
batches. The global gradient norm is logged *before* clipping, so the spikes are
visible in both runs. ``python experiments/clipping.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import cells, gradients, io, plotting, tasks
from seqjax.recurrent import unroll

REPO = Path(__file__).resolve().parents[1]
RUNS = ("no clipping", "clipped")


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


def train(cfg: Config, clip: bool, key):
    """One seed: per-step (loss, pre-clipping global gradient norm), each (steps,)."""
    H = cfg.hidden_size
    cell = cells.simple_rnn(H, "tanh")
    k_cell, k_q, k_out, k_data = jax.random.split(key, 4)
    q, r = jnp.linalg.qr(jax.random.normal(k_q, (H, H)))
    params = {"cell": dict(cell.init(k_cell, 2), w_hh=cfg.sigma * q * jnp.sign(jnp.diag(r))),
              "readout": {"kernel": jax.random.normal(k_out, (H, 1)) / jnp.sqrt(H), "bias": jnp.ones((1,))}}
    opt = optax.sgd(cfg.learning_rate, momentum=cfg.momentum)
    if clip:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)

    def loss_fn(params, batch):
        _, ys = unroll(cell.step, params["cell"], cell.initial_carry((batch.x.shape[0],)), batch.x)
        pred = ys[:, -1] @ params["readout"]["kernel"] + params["readout"]["bias"]      # (B, 1)
        return jnp.mean((pred[:, 0] - batch.y) ** 2)

    def step(state, k):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, tasks.adding(k, cfg.batch_size, length=cfg.length))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, gradients.global_norm(grads))

    _, (losses, norms) = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(k_data, cfg.steps))
    return losses, norms


def parse_args(argv=None) -> argparse.Namespace:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", "-T", type=int, default=d.length)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--clip-norm", type=float, default=d.clip_norm)
    p.add_argument("--sigma", type=float, default=d.sigma, help="initial largest singular value of W_hh")
    p.add_argument("--out", type=Path, default=REPO / "results" / "clipping")
    p.add_argument("--quick", action="store_true", help="tiny run for tests")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    kw = dict(length=args.length, hidden_size=args.hidden_size, seeds=args.seeds, steps=args.steps,
              learning_rate=args.learning_rate, clip_norm=args.clip_norm, sigma=args.sigma)
    if args.quick:
        # small sizes, except where a flag asked for something other than the default
        quick, default = dict(length=10, hidden_size=8, seeds=2, steps=20), Config()
        kw.update({k: v for k, v in quick.items() if kw[k] == getattr(default, k)})
    cfg = Config(**kw)
    out = io.ensure_writable_dir(args.out)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(0), cfg.seeds)
    arrays, rows = {"step": np.arange(1, cfg.steps + 1)}, []
    for name in RUNS:
        losses, norms = jax.jit(jax.vmap(lambda k, clip=(name == "clipped"): train(cfg, clip, k)))(keys)
        arrays[f"{name}/loss"], arrays[f"{name}/grad_norm"] = np.asarray(losses), np.asarray(norms)
        rows += [{"run": name, "seed": s, "step": i + 1, "loss": float(losses[s, i]),
                  "grad_norm": float(norms[s, i])} for s in range(cfg.seeds) for i in range(cfg.steps)]
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "baseline_loss": tasks.adding_baseline(),
                                       "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "clipping.npz", **arrays)
    io.save_csv(out / "clipping.csv", rows)
    plot(out)
    for name in RUNS:
        print(f"{name:12s} final loss {np.mean(arrays[f'{name}/loss'][:, -20:]):.4f}  "
              f"max grad norm {np.max(arrays[f'{name}/grad_norm']):.3g}")
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
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
