"""The vanishing/exploding phase transition: ||dL/dh_0|| against the recurrent weight's largest singular value.

W_hh = sigma * Q with Q orthogonal (so every singular value is sigma), inputs
x_t ~ N(0, 1), loss L = v . h_T with a unit v. For the linear RNN the answer is exact,
||dL/dh_0|| = sigma^T (dh_T/dh_0 is sigma^T times an orthogonal matrix), drawn as the
analytic line. With |f'| <= gamma the same product gives the bound (gamma sigma)^T:
gamma = 1 for tanh and ReLU (the bound is sigma^T), gamma = 1/4 for the sigmoid (the bound
is (sigma/4)^T, swept over its own range of sigma). Pascanu et al. 2013, Sec. 2.1 (ICML text):
"it is sufficient for λ1 < 1/γ, where λ1 is the largest singular value of W_rec, for the
vanishing gradient problem to occur", the inverted proof gives the necessary condition for
exploding (λ1 > 1/γ), and "For tanh we have γ = 1 while for sigmoid we have γ = 1/4" (ReLU's
gamma = 1 is ours). Writes summary.json and reading.md (the numbers the README quotes) beside
the data.
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
SIGMOID = "sigmoid"                                          # swept on its own range: 1/gamma = 4
INVERSE_GAMMA = {"linear": 1.0, "tanh": 1.0, "relu": 1.0, "sigmoid": 4.0}   # gamma = sup |f'|


@dataclasses.dataclass(frozen=True)
class Config:
    length: int = 100
    hidden_size: int = 32
    batch_size: int = 16
    seeds: int = 3
    sigma_min: float = 0.5
    sigma_max: float = 1.5
    num_sigma: int = 41
    sigmoid_sigma_min: float = 2.0   # the sigmoid RNN's sweep, around its 1/gamma = 4
    sigmoid_sigma_max: float = 6.0

    def __post_init__(self):
        for name in ("length", "hidden_size", "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_sigma < 2:
            raise ValueError(f"num_sigma must be >= 2, got {self.num_sigma}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not 0 < self.sigmoid_sigma_min < self.sigmoid_sigma_max:
            raise ValueError(f"need 0 < sigmoid_sigma_min < sigmoid_sigma_max, got {self.sigmoid_sigma_min}, "
                             f"{self.sigmoid_sigma_max}")


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
    sigma_sigmoid = np.linspace(cfg.sigmoid_sigma_min, cfg.sigmoid_sigma_max, cfg.num_sigma)
    keys = jax.random.split(jax.random.key(0), cfg.seeds)
    arrays = {"sigma": sigma, "analytic_linear": sigma ** cfg.length, "sigma_sigmoid": sigma_sigmoid,
              "bound_sigmoid": (sigma_sigmoid / INVERSE_GAMMA[SIGMOID]) ** cfg.length}
    rows = []
    for act, grid in [(a, sigma) for a in ACTIVATIONS] + [(SIGMOID, sigma_sigmoid)]:
        f = jax.jit(jax.vmap(jax.vmap(lambda s, k, act=act: initial_state_gradient_norm(cfg, act, s, k),
                                      (0, None)), (None, 0)))
        with jax.enable_x64(True):   # float64: sigma^T reaches 1e-31 at T = 100, below where float32 norms are safe
            norms = np.asarray(f(jnp.asarray(grid, jnp.float64), keys))   # (seeds, S)
        arrays[act] = norms
        bound = (grid / INVERSE_GAMMA[act]) ** cfg.length               # (gamma sigma)^T ||v||, ||v|| = 1
        rows += [{"activation": act, "seed": s, "sigma": float(grid[i]), "grad_norm_h0": float(norms[s, i]),
                  "bound": float(bound[i])} for s in range(cfg.seeds) for i in range(len(grid))]
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "inverse_gamma": INVERSE_GAMMA,
                                       "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "spectral_sweep.npz", **arrays)
    io.save_csv(out / "spectral_sweep.csv", rows)
    numbers = summarize(cfg, arrays)
    io.save_json(out / "summary.json", numbers)
    io.atomic_write_text(out / "reading.md", reading(numbers))
    figure = plot(out)
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s; figure: {figure}")
    return out


def summarize(cfg: Config, arrays: dict) -> dict:
    """summary.json: per activation, the largest measured ||dL/dh_0|| over its bound (gamma sigma)^T (<= 1
    means the bound holds; the linear RNN sits on it) and the norms at sigma = 1/gamma's neighbours."""
    out = {"length": cfg.length, "seeds": cfg.seeds, "hidden_size": cfg.hidden_size, "activations": {}}
    for act in (*ACTIVATIONS, SIGMOID):
        grid = arrays["sigma_sigmoid"] if act == SIGMOID else arrays["sigma"]
        bound = (grid / INVERSE_GAMMA[act]) ** cfg.length
        runs = np.asarray(arrays[act], np.float64)
        out["activations"][act] = {
            "inverse_gamma": INVERSE_GAMMA[act], "sigma_min": float(grid[0]), "sigma_max": float(grid[-1]),
            "max_ratio_to_bound": float(np.max(runs / bound)), "min_ratio_to_bound": float(np.min(runs / bound)),
            "norm_at_sigma_min": float(np.max(runs[:, 0])), "norm_at_sigma_max": float(np.max(runs[:, -1])),
            "bound_at_sigma_min": float(bound[0]), "bound_at_sigma_max": float(bound[-1])}
    return out


def reading(summary: dict) -> str:
    """The sweep's numbers as sentences, from summary.json alone (the README quotes them)."""
    T, lines = summary["length"], []
    for act in (a for a in (*ACTIVATIONS, SIGMOID) if a in summary["activations"]):   # JSON sorts keys
        a = summary["activations"][act]
        g = 1.0 / a["inverse_gamma"]
        bound = rf"(sigma/{a['inverse_gamma']:g})^{T}" if g != 1 else f"sigma^{T}"
        holds = "on" if a["min_ratio_to_bound"] > 1 - 1e-9 and a["max_ratio_to_bound"] < 1 + 1e-9 else \
            ("below" if a["max_ratio_to_bound"] <= 1 + 1e-9 else "ABOVE")
        lines.append(f"- {act} RNN (gamma = {g:g}), sigma_max from {a['sigma_min']:g} to {a['sigma_max']:g}: "
                     f"every measured norm is {holds} the bound {bound} (largest ratio to it "
                     f"{a['max_ratio_to_bound']:.3g}); at sigma_max = {a['sigma_min']:g} the largest norm is "
                     f"{a['norm_at_sigma_min']:.1e} (bound {a['bound_at_sigma_min']:.1e}), at {a['sigma_max']:g} "
                     f"{a['norm_at_sigma_max']:.1e} (bound {a['bound_at_sigma_max']:.1e}).")
    return "\n".join(lines) + "\n"


def plot(out_dir) -> Path:
    """Re-make the figure from config.json and spectral_sweep.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "spectral_sweep.npz")
    T = cfg["length"]
    panels = [dict(sigma=data["sigma"], norms={a: data[a] for a in ACTIVATIONS}, bound=data["analytic_linear"],
                   bound_label=rf"$\sigma^{{{T}}}$: exact for linear, bound for tanh/ReLU ($\gamma$ = 1)",
                   inverse_gamma=cfg["inverse_gamma"]["tanh"], title=r"linear, tanh, ReLU: $\gamma$ = 1")]
    if "sigmoid" in data:
        panels.append(dict(sigma=data["sigma_sigmoid"], norms={SIGMOID: data[SIGMOID]}, bound=data["bound_sigmoid"],
                           bound_label=rf"bound $(\sigma/4)^{{{T}}}$ ($\gamma$ = 1/4)",
                           inverse_gamma=cfg["inverse_gamma"][SIGMOID], title=r"sigmoid: $\gamma$ = 1/4"))
    fig = plotting.spectral_panels_figure(panels, length=T)
    return io.save_figure(fig, out_dir / "spectral_sweep.png", dpi=130)


if __name__ == "__main__":
    main(sys.argv[1:])
