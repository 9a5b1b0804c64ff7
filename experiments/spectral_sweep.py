"""The vanishing/exploding phase transition: ||dL/dh_0|| against the recurrent weight's largest singular value.

W_hh = sigma * Q with Q orthogonal (so every singular value is sigma), inputs
x_t ~ N(0, 1), loss L = v . h_T with a unit v. For the linear RNN the answer is exact,
||dL/dh_0|| = sigma^T (dh_T/dh_0 is sigma^T times an orthogonal matrix), drawn as the
analytic line. For tanh and ReLU (|f'| <= gamma = 1) it is an upper bound; Pascanu et
al. 2013 show sigma < 1/gamma is sufficient for vanishing and sigma > 1/gamma
necessary for exploding.
``python experiments/spectral_sweep.py --help``.
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
from seqjax import cells, gradients, io, plotting
from seqjax.recurrent import unroll

QUICK = dict(length=20, hidden_size=8, batch_size=4, seeds=2, num_sigma=5)
ACTIVATIONS = ("linear", "tanh", "relu")
INVERSE_GAMMA = {"linear": 1.0, "tanh": 1.0, "relu": 1.0}   # gamma = sup |f'|


@dataclasses.dataclass(frozen=True)
class Config:
    length: int = 100
    hidden_size: int = 32
    batch_size: int = 16
    seeds: int = 3
    sigma_min: float = 0.5
    sigma_max: float = 1.5
    num_sigma: int = 41

    def __post_init__(self):
        for name in ("length", "hidden_size", "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_sigma < 2:
            raise ValueError(f"num_sigma must be >= 2, got {self.num_sigma}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


def initial_state_gradient_norm(cfg: Config, activation: str, sigma, key):
    """Mean over the batch of ||dL/dh_0|| for one sigma and one seed (a scalar)."""
    H = cfg.hidden_size
    cell = cells.make(f"rnn_{activation}", H, bias=False)
    k_cell, k_q, k_x, k_v = jax.random.split(key, 4)
    params = cell.init(k_cell, H, sigma.dtype)
    q, r = jnp.linalg.qr(jax.random.normal(k_q, (H, H), sigma.dtype))
    params["w_hh"] = sigma * q * jnp.sign(jnp.diag(r))                 # every singular value = sigma
    xs = jax.random.normal(k_x, (cfg.batch_size, cfg.length, H), sigma.dtype)
    v = jax.random.normal(k_v, (H,), sigma.dtype)
    v = v / jnp.linalg.norm(v)

    def loss(h0):                                                      # sum over examples of v . h_T
        final, _ = unroll(cell.step, params, h0, xs)
        return jnp.sum(final @ v)

    g = jax.grad(loss)(jnp.zeros((cfg.batch_size, H), xs.dtype))       # (B, H): each example's dL/dh_0
    return jnp.mean(gradients.safe_norm(g, axis=-1))


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "spectral_sweep")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)
    out = io.ensure_writable_dir(args.out)
    start = time.perf_counter()
    sigma = np.linspace(cfg.sigma_min, cfg.sigma_max, cfg.num_sigma)
    keys = jax.random.split(jax.random.key(0), cfg.seeds)
    arrays = {"sigma": sigma, "analytic_linear": sigma ** cfg.length}
    rows = []
    for act in ACTIVATIONS:
        f = jax.jit(jax.vmap(jax.vmap(lambda s, k, act=act: initial_state_gradient_norm(cfg, act, s, k),
                                      (0, None)), (None, 0)))
        with jax.enable_x64(True):   # float64: sigma^T reaches 1e-31 at T = 100, below where float32 norms are safe
            norms = np.asarray(f(jnp.asarray(sigma, jnp.float64), keys))   # (seeds, S)
        arrays[act] = norms
        rows += [{"activation": act, "seed": s, "sigma": float(sigma[i]), "grad_norm_h0": float(norms[s, i]),
                  "analytic_linear": float(sigma[i] ** cfg.length)}
                 for s in range(cfg.seeds) for i in range(len(sigma))]
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "inverse_gamma": INVERSE_GAMMA,
                                       "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "spectral_sweep.npz", **arrays)
    io.save_csv(out / "spectral_sweep.csv", rows)
    figure = plot(out)
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s; figure: {figure}")
    return out


def plot(out_dir) -> Path:
    """Re-make the figure from config.json and spectral_sweep.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "spectral_sweep.npz")
    fig = plotting.spectral_sweep_figure(data["sigma"], {a: data[a] for a in ACTIVATIONS}, data["analytic_linear"],
                                         length=cfg["length"], inverse_gamma=cfg["inverse_gamma"])
    return io.save_figure(fig, out_dir / "spectral_sweep.png", dpi=130)


if __name__ == "__main__":
    main(sys.argv[1:])
