"""Per-layer gradient norms at initialisation: Post-LN vs Pre-LN Transformer encoders (Xiong et al. 2020).

A token model (embedding * sqrt(D) + sinusoidal positions -> L-layer encoder ->
vocabulary logits) on random tokens, cross-entropy against random targets, at
initialisation. The gradient of each layer's parameters is reduced with
``seqjax.train.grad_norms_by_path`` (the same reduction a training step logs).
Xiong et al. 2020 (Theorem 1, Fig. 3): with Post-LN the gradient norm of the last
layers' parameters is large and grows with the layer index; with Pre-LN it stays
roughly flat across layers. ``python experiments/layernorm_placement.py --help``.
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
from seqjax import io, layers, losses, plotting, train, transformer

VARIANTS = ("post_ln", "pre_ln")
GROUPS = ("ff", "self_attn", "all")
QUICK = dict(model_size=16, ff_size=32, length=8, batch_size=4, seeds=2, num_layers=3)


@dataclasses.dataclass(frozen=True)
class Config:
    num_layers: int = 6
    model_size: int = 64
    num_heads: int = 4
    ff_size: int = 256
    length: int = 32
    vocab_size: int = 32
    batch_size: int = 16
    seeds: int = 5

    def __post_init__(self):
        for name in ("num_layers", "model_size", "num_heads", "ff_size", "length", "vocab_size",
                     "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide model_size={self.model_size}")


def layer_grad_norms(cfg: Config, variant: str, key) -> dict[str, jax.Array]:
    """One seed: flat {"grads/layers/<l>/<group>": norm} of the encoder's gradient at init."""
    pre_ln = variant == "pre_ln"
    stack = transformer.encoder(transformer.StackConfig(
        model_size=cfg.model_size, num_heads=cfg.num_heads, ff_size=cfg.ff_size, num_layers=cfg.num_layers,
        dropout=0.0, norm_first=pre_ln, final_norm=pre_ln))
    pe = transformer.positional_encoding("sinusoidal", cfg.length, cfg.model_size)
    k_emb, k_stack, k_out, k_x, k_y = jax.random.split(key, 5)
    D, V = cfg.model_size, cfg.vocab_size
    params = {"embed": layers.embedding_init(k_emb, V, D, std=1 / np.sqrt(D)),
              "stack": stack.init(k_stack),
              "output": {"kernel": jax.random.normal(k_out, (D, V)) / jnp.sqrt(D)}}    # N(0, 1/D), no bias
    tokens = jax.random.randint(k_x, (cfg.batch_size, cfg.length), 0, V)
    targets = jax.random.randint(k_y, (cfg.batch_size, cfg.length), 0, V)

    def loss(params):
        h = pe.apply({}, layers.embed(params["embed"], tokens, scale=np.sqrt(D)))        # (B, T, D)
        logits = layers.dense(params["output"], stack.apply(params["stack"], h))       # (B, T, V)
        return losses.cross_entropy(logits, targets)

    grads = jax.grad(loss)(params)["stack"]
    per_group = train.grad_norms_by_path(grads, depth=3)        # grads/layers/<l>/<ff|self_attn|norm1..>
    per_layer = train.grad_norms_by_path(grads, depth=2)        # grads/layers/<l>
    return {**per_group, **{f"{k}/all": v for k, v in per_layer.items()}}


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "layernorm_placement")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)
    out = io.ensure_writable_dir(args.out)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(0), cfg.seeds)
    arrays, rows = {"layer": np.arange(1, cfg.num_layers + 1)}, []
    for variant in VARIANTS:
        norms = jax.jit(jax.vmap(lambda k, v=variant: layer_grad_norms(cfg, v, k)))(keys)   # name -> (seeds,)
        for group in GROUPS:
            runs = np.stack([np.asarray(norms[f"grads/layers/{l}/{group}"]) for l in range(cfg.num_layers)], axis=1)
            arrays[f"{variant}/{group}"] = runs                                               # (seeds, L)
        rows += [{"variant": variant, "seed": s, "name": name, "grad_norm": float(v[s])}
                 for name, v in norms.items() for s in range(cfg.seeds)]
    io.save_json(out / "config.json", {**dataclasses.asdict(cfg), "seconds_total": round(time.perf_counter() - start, 2)})
    io.save_npz(out / "layernorm_placement.npz", **arrays)
    io.save_csv(out / "layernorm_placement.csv", rows)
    figure = plot(out)
    for variant in VARIANTS:
        print(variant, "ff grad norm per layer:", np.round(np.exp(np.log(arrays[f"{variant}/ff"]).mean(0)), 4))
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s; figure: {figure}")
    return out


def plot(out_dir) -> Path:
    """Re-make the figure from config.json and layernorm_placement.npz alone."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    data = np.load(out_dir / "layernorm_placement.npz")
    norms = {g: {v: data[f"{v}/{g}"] for v in VARIANTS} for g in GROUPS}
    fig = plotting.layer_norms_figure(
        data["layer"], norms, groups=GROUPS,
        title=(f"Gradient norm per layer at initialisation, {cfg['num_layers']}-layer encoder, "
               f"D = {cfg['model_size']} (Xiong et al. 2020; {cfg['seeds']} seeds)"))
    return io.save_figure(fig, out_dir / "layernorm_placement.png", dpi=130)


if __name__ == "__main__":
    main(sys.argv[1:])
