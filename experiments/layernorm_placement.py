"""Per-layer gradient norms at initialisation: Post-LN vs Pre-LN Transformer encoders (Xiong et al. 2020).

A token model (embedding * sqrt(D) + sinusoidal positions -> L-layer encoder ->
vocabulary logits) on random tokens, cross-entropy against random targets, at
initialisation. The gradient of each layer's parameters is reduced with
``seqjax.gradients.grad_norms_by_path`` (the same reduction a training step logs).
Xiong et al. 2020 (Theorem 1, Fig. 3): with Post-LN the gradient norm of the last
layers' parameters is large and grows with the layer index; with Pre-LN it stays
roughly flat across layers. ``python experiments/layernorm_placement.py --help``.
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

from seqjax import gradients, io, plotting, transformer

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("post_ln", "pre_ln")
GROUPS = ("ff", "self_attn", "all")


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
    params = {"embedding": jax.random.normal(k_emb, (V, D)) / jnp.sqrt(D),
              "stack": stack.init(k_stack),
              "output": jax.random.normal(k_out, (D, V)) / jnp.sqrt(D)}
    tokens = jax.random.randint(k_x, (cfg.batch_size, cfg.length), 0, V)
    targets = jax.random.randint(k_y, (cfg.batch_size, cfg.length), 0, V)

    def loss(params):
        h = pe.apply({}, params["embedding"][tokens] * jnp.sqrt(D))                    # (B, T, D)
        logits = stack.apply(params["stack"], h) @ params["output"]                    # (B, T, V)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

    grads = jax.grad(loss)(params)["stack"]
    per_group = gradients.grad_norms_by_path(grads, depth=3)        # grads/layers/<l>/<ff|self_attn|norm1..>
    per_layer = gradients.grad_norms_by_path(grads, depth=2)        # grads/layers/<l>
    return {**per_group, **{f"{k}/all": v for k, v in per_layer.items()}}


def parse_args(argv=None) -> argparse.Namespace:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-layers", type=int, default=d.num_layers)
    p.add_argument("--model-size", type=int, default=d.model_size)
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--out", type=Path, default=REPO / "results" / "layernorm_placement")
    p.add_argument("--quick", action="store_true", help="tiny run for tests")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    kw = dict(num_layers=args.num_layers, model_size=args.model_size, seeds=args.seeds)
    if args.quick:   # 3 layers, not 6, unless --num-layers says otherwise
        kw.update(model_size=16, ff_size=32, length=8, batch_size=4, seeds=2,
                  num_layers=3 if args.num_layers == Config().num_layers else args.num_layers)
    cfg = Config(**kw)
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
    plot(out)
    for variant in VARIANTS:
        print(variant, "ff grad norm per layer:", np.round(np.exp(np.log(arrays[f"{variant}/ff"]).mean(0)), 4))
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
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
