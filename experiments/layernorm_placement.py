"""Gradients of the FFN matrices at initialisation, Post-LN vs Pre-LN, measured as Xiong et al. 2020 measure them.

An L-L encoder-decoder Transformer (``seqjax.transformer.transformer``: embeddings scaled
by sqrt(D), sinusoidal positions, tied output projection, no dropout; a final LayerNorm on
each stack for Pre-LN only) on a random-token copy task (``seqjax.tasks.seq2seq_copy``),
cross-entropy on the target, at initialisation. For every seed the gradient of the batch's
mean loss (the expected gradient over the batch) is taken, and the Frobenius norm of the
gradient of each FFN matrix is read separately: W1 (D x F, ``ff/linear1/kernel``) and W2
(F x D, ``ff/linear2/kernel``), for every layer of both stacks. Norms are averaged over
``--seeds`` seeds (10: Xiong et al.'s Sec. 3.4 experiments "are repeated ten times using different
random seeds"). A depth sweep (L = 6, 8, ..., 14, as their Fig. 3(c)(d)) reads the last decoder
layer's W2 gradient, the matrix of their Theorem 1 (Sec. 3.3: a bound O(d sqrt(ln d)) for Post-LN,
"which is independent of L", and O(d sqrt(ln d / L)) for Pre-LN), plotted against L with a
1/sqrt(L) reference. Text read: see ``CHECKED_XIONG`` in ``experiments/papers.py``.
Writes summary.json and reading.md (the numbers the README quotes) beside the data.
``python experiments/layernorm_placement.py --help``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from experiments import _common
from seqjax import io, losses, plotting, tasks, transformer

VARIANTS = ("post_ln", "pre_ln")
STACKS = ("encoder", "decoder")
MATRICES = {"W1": "linear1", "W2": "linear2"}
QUICK = dict(model_size=16, ff_size=32, length=6, batch_size=4, seeds=2, num_layers=2, depths=(1, 2))


@dataclasses.dataclass(frozen=True)
class Config:
    num_layers: int = 6                      # encoder layers = decoder layers (a 6-6 model, as Xiong et al.)
    model_size: int = 64
    num_heads: int = 4
    ff_size: int = 256
    length: int = 16
    vocab_size: int = 32
    batch_size: int = 16
    seeds: int = 10
    depths: tuple[int, ...] = (6, 8, 10, 12, 14)

    def __post_init__(self):
        for name in ("num_layers", "model_size", "num_heads", "ff_size", "length", "vocab_size",
                     "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide model_size={self.model_size}")
        if len(self.depths) < 2 or any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be two or more layer counts >= 1, got {self.depths}")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size must be >= 5 (3 special tokens and 2 symbols), got {self.vocab_size}")


def ffn_grad_norms(cfg: Config, variant: str, num_layers: int, key) -> dict[str, jax.Array]:
    """One seed at init: {"<stack>/<W1|W2>": (L,) Frobenius norms of the FFN matrices' gradients}."""
    pre_ln = variant == "pre_ln"
    model = transformer.transformer(transformer.TransformerConfig(
        src_vocab_size=cfg.vocab_size, tgt_vocab_size=cfg.vocab_size, model_size=cfg.model_size,
        num_heads=cfg.num_heads, ff_size=cfg.ff_size, num_encoder_layers=num_layers,
        num_decoder_layers=num_layers, dropout=0.0, norm_first=pre_ln, final_norm=pre_ln,
        max_len=cfg.length + 1))
    k_init, k_data = jax.random.split(key)
    params = model.init(k_init)
    batch = tasks.seq2seq_copy(k_data, cfg.batch_size, length=cfg.length, vocab_size=cfg.vocab_size)

    def loss(params):   # the batch's mean loss: its gradient is the expected gradient over the batch
        logits = model.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths)
        return losses.cross_entropy(logits, batch.tgt_out, ignore_id=tasks.PAD)

    grads = jax.grad(loss)(params)
    return {f"{stack}/{w}": jax.numpy.stack([jax.numpy.linalg.norm(layer["ff"][name]["kernel"])
                                             for layer in grads[stack]["layers"]])
            for stack in STACKS for w, name in MATRICES.items()}


def measure(cfg: Config, variant: str, num_layers: int) -> dict[str, np.ndarray]:
    """Every seed at once (vmapped): {"<stack>/<W>": (seeds, L)}."""
    keys = jax.random.split(jax.random.key(num_layers), cfg.seeds)
    out = jax.jit(jax.vmap(lambda k: ffn_grad_norms(cfg, variant, num_layers, k)))(keys)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def slope(depths, values) -> float:
    """The least-squares exponent b of values ~ c L^b (log-log)."""
    return float(np.polyfit(np.log(np.asarray(depths, np.float64)), np.log(np.asarray(values, np.float64)), 1)[0])


def summarize(cfg: Config, arrays: dict) -> dict:
    """summary.json: mean over seeds per layer, last/first-layer ratios, and the depth sweep's exponent."""
    out = {"num_layers": cfg.num_layers, "seeds": cfg.seeds, "model_size": cfg.model_size, "ff_size": cfg.ff_size,
           "depths": list(cfg.depths), "per_layer": {}, "depth": {}}
    for v in VARIANTS:
        for stack in STACKS:
            for w in MATRICES:
                mean = arrays[f"{v}/{stack}/{w}"].mean(axis=0)
                out["per_layer"][f"{v}/{stack}/{w}"] = {"mean": [float(x) for x in mean],
                                                        "last_over_first": float(mean[-1] / mean[0])}
        mean = arrays[f"{v}/depth"].mean(axis=0)
        out["depth"][v] = {"mean": [float(x) for x in mean], "exponent": slope(cfg.depths, mean),
                           "last_over_first": float(mean[-1] / mean[0])}
    return out


NAMES = {"post_ln": "Post-LN", "pre_ln": "Pre-LN"}


def reading(summary: dict) -> str:
    """The numbers as sentences, from summary.json alone (the README quotes them)."""
    L, seeds, lines = summary["num_layers"], summary["seeds"], []
    for v in VARIANTS:
        for stack in STACKS:
            parts = []
            for w in MATRICES:
                p = summary["per_layer"][f"{v}/{stack}/{w}"]
                parts.append(f"{w} {p['mean'][0]:.3g} to {p['mean'][-1]:.3g} ({p['last_over_first']:.2f}x)")
            lines.append(f"- {NAMES[v]}, {stack} layers 1 to {L} (mean over {seeds} seeds): " + "; ".join(parts) + ".")
    d = summary["depths"]
    for v in VARIANTS:
        p = summary["depth"][v]
        lines.append(f"- {NAMES[v]}, the last decoder layer's W2 for L = {d[0]} to {d[-1]}: {p['mean'][0]:.3g} to "
                     f"{p['mean'][-1]:.3g} ({p['last_over_first']:.2f}x); fitted exponent of L "
                     f"{p['exponent']:+.2f} (1/sqrt(L) is -0.50, independent of L is 0).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "layernorm_placement")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)
    out = io.ensure_writable_dir(args.out)
    start = time.perf_counter()
    arrays, rows = {"layer": np.arange(1, cfg.num_layers + 1), "depths": np.asarray(cfg.depths)}, []
    for variant in VARIANTS:
        measured = {L: measure(cfg, variant, L) for L in sorted({cfg.num_layers, *cfg.depths})}  # one compile per L
        for name, runs in measured[cfg.num_layers].items():
            arrays[f"{variant}/{name}"] = runs                                       # (seeds, L)
            rows += [{"variant": variant, "layers": cfg.num_layers, "matrix": name, "layer": l + 1, "seed": s,
                      "grad_norm": float(runs[s, l])} for s in range(cfg.seeds) for l in range(runs.shape[1])]
        depth = []
        for L in cfg.depths:
            runs = measured[L]["decoder/W2"][:, -1]                                   # (seeds,) the last layer
            depth.append(runs)
            rows += [{"variant": variant, "layers": L, "matrix": "decoder/W2", "layer": L, "seed": s,
                      "grad_norm": float(runs[s])} for s in range(cfg.seeds)]
        arrays[f"{variant}/depth"] = np.stack(depth, axis=1)                          # (seeds, depths)
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "layernorm_placement.npz", **arrays)
    io.save_csv(out / "layernorm_placement.csv", rows)
    numbers = summarize(cfg, arrays)
    io.save_json(out / "summary.json", numbers)
    io.atomic_write_text(out / "reading.md", reading(numbers))
    figure = plot(out)
    print(reading(numbers), end="")
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s; figures: {figure}, {out / 'layernorm_depth.png'}")
    return out


def plot(out_dir) -> Path:
    """Re-make both figures from config.json and layernorm_placement.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "layernorm_placement.npz")
    groups = tuple(f"{stack} {w}" for stack in STACKS for w in MATRICES)
    norms = {f"{stack} {w}": {v: data[f"{v}/{stack}/{w}"] for v in VARIANTS} for stack in STACKS for w in MATRICES}
    fig = plotting.layer_norms_figure(
        data["layer"], norms, groups=groups,
        title=(f"Frobenius norm of the FFN matrices' gradient at initialisation, {cfg['num_layers']}-"
               f"{cfg['num_layers']} encoder-decoder, D = {cfg['model_size']} (Xiong et al. 2020, Fig. 3 setting; "
               f"{cfg['seeds']} seeds)"))
    figure = io.save_figure(fig, out_dir / "layernorm_placement.png", dpi=130)
    depths = np.asarray(data["depths"], np.float64)
    pre = data["pre_ln/depth"].mean(axis=0)
    fig = plotting.depth_sweep_figure(
        depths, {v: data[f"{v}/depth"] for v in VARIANTS}, reference=pre[0] * np.sqrt(depths[0] / depths),
        reference_label=r"$\propto 1/\sqrt{L}$ (through Pre-LN's first point)",
        ylabel=r"$\|\partial L/\partial W^{2}\|_F$ of the last decoder layer",
        title=f"Depth sweep at initialisation (Xiong et al. 2020, Theorem 1; {cfg['seeds']} seeds)")
    io.save_figure(fig, out_dir / "layernorm_depth.png", dpi=130)
    return figure


if __name__ == "__main__":
    main(sys.argv[1:])
