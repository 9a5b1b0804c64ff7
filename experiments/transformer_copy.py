"""Train an encoder-decoder Transformer on the copy task (vocabulary 11, length 10) and decode held-out inputs.

The Annotated Transformer's first example: the target is the source. Writes into --out
config.json, loss_curve.csv, metrics.json and decodes.csv (held-out sources with their
greedy and beam-search outputs), then plots loss_curve.png from the CSV.

    python experiments/transformer_copy.py --out results/transformer_copy     # ~1-2 min on 2 cores
    python experiments/transformer_copy.py --quick --out /tmp/copy            # the test setting
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import io, tasks
from seqjax import transformer as tfm


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved experiment configuration (saved as config.json)."""

    length: int = 10
    vocab_size: int = 11
    model_size: int = 64
    num_heads: int = 4
    ff_size: int = 128
    num_layers: int = 2
    dropout: float = 0.1
    norm_first: bool = False
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    label_smoothing: float = 0.0
    beam_size: int = 4
    length_penalty: float = 0.6
    eval_size: int = 256
    num_examples: int = 8
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("length", "steps", "batch_size", "warmup", "beam_size", "eval_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.beam_size > self.vocab_size - 1:
            raise ValueError(f"beam_size ({self.beam_size}) must be <= vocab_size - 1 = {self.vocab_size - 1} "
                             "(the padding id is never generated)")
        if self.warmup >= self.steps:
            raise ValueError(f"warmup ({self.warmup}) must be < steps ({self.steps}): the cosine "
                             "schedule decays over the steps after warmup")

    def model_config(self) -> tfm.TransformerConfig:
        return tfm.TransformerConfig(
            self.vocab_size, self.vocab_size, model_size=self.model_size, num_heads=self.num_heads,
            ff_size=self.ff_size, num_encoder_layers=self.num_layers, num_decoder_layers=self.num_layers,
            dropout=self.dropout, norm_first=self.norm_first, max_len=self.length + 1,
            tie_embeddings=True, share_embeddings=True)


QUICK = dict(steps=400, batch_size=32, lr=3e-3, dropout=0.0, eval_size=64, log_every=50)


def parse(argv=None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Config):
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            # type=bool would turn the string "False" into True: --flag / --no-flag instead
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {field.default}")
        else:
            parser.add_argument(flag, type=type(field.default), default=None, help=f"default {field.default}")
    parser.add_argument("--quick", action="store_true", help=f"a fast setting for tests: {QUICK}")
    parser.add_argument("--out", default="results/transformer_copy", help="output directory")
    args = parser.parse_args(argv)
    values = dict(QUICK) if args.quick else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                   if getattr(args, f.name) is not None})
    try:
        cfg = Config(**values)
    except ValueError as err:                       # invalid combinations: a usage error, exit 2
        parser.error(str(err))
    return cfg, Path(args.out)


def train(cfg: Config, log=print):
    """Train with Adam and a linear-warmup / cosine schedule; returns (model, params, loss rows)."""
    model = tfm.transformer(cfg.model_config())
    key = jax.random.key(cfg.seed)
    params = model.init(jax.random.fold_in(key, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, cfg.steps, cfg.lr / 10)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule, b2=0.98))
    opt_state = optimizer.init(params)
    data_key = jax.random.fold_in(key, 1)
    # rbg keys for dropout: same statistics, much faster XLA:CPU compiles than threefry
    dropout_key = jax.random.key(cfg.seed, impl="rbg")

    def loss_fn(params, batch, k):
        logits = model.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths, dropout_key=k)
        return tfm.cross_entropy(logits, batch.tgt_out, label_smoothing=cfg.label_smoothing,
                                 ignore_id=tasks.PAD)

    @jax.jit
    def train_step(params, opt_state, step):
        batch = tasks.seq2seq_copy(jax.random.fold_in(data_key, step), cfg.batch_size, length=cfg.length,
                                   vocab_size=cfg.vocab_size)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, jax.random.fold_in(dropout_key, step))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rows, losses, start = [], [], time.time()
    for step in range(cfg.steps):
        params, opt_state, loss = train_step(params, opt_state, step)
        losses.append(loss)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean = float(jnp.mean(jnp.stack(losses)))                          # one host sync per log
            rows.append({"step": step + 1, "loss": mean, "seconds": round(time.time() - start, 2)})
            log(f"step {step + 1:5d}  loss {mean:.4f}  ({rows[-1]['seconds']:.0f}s)")
            losses = []
    return model, params, rows


def evaluate(cfg: Config, model, params):
    """Greedy and beam decodes of held-out sources (a key stream training never uses)."""
    batch = tasks.seq2seq_copy(jax.random.fold_in(jax.random.key(cfg.seed), 2), cfg.eval_size,
                               length=cfg.length, vocab_size=cfg.vocab_size)
    max_len = cfg.length + 1                                                  # the copy and EOS
    greedy = jax.jit(lambda p, s, n: tfm.greedy_decode(model, p, s, max_len=max_len, sos_id=tasks.SOS,
                                                       eos_id=tasks.EOS, pad_id=tasks.PAD, src_lengths=n))
    beam = jax.jit(lambda p, s, n: tfm.beam_search(model, p, s, beam_size=cfg.beam_size, max_len=max_len,
                                                   sos_id=tasks.SOS, eos_id=tasks.EOS, pad_id=tasks.PAD,
                                                   length_penalty=cfg.length_penalty, src_lengths=n))
    g = np.asarray(greedy(params, batch.src, batch.src_lengths))
    b_tokens, b_scores = beam(params, batch.src, batch.src_lengths)
    b = np.asarray(b_tokens[:, 0])
    want = np.asarray(batch.tgt_out)
    metrics = {"greedy_exact": float(np.mean(np.all(g == want, axis=1))),
               "beam_exact": float(np.mean(np.all(b == want, axis=1))),
               "greedy_token_accuracy": float(np.mean(g == want)),
               "beam_token_accuracy": float(np.mean(b == want)),
               "chance_token_accuracy": tasks.seq2seq_copy_baseline(cfg.length, cfg.vocab_size),
               "eval_size": cfg.eval_size}
    src = np.asarray(batch.src)
    fmt = lambda row: " ".join(str(int(t)) for t in row)                      # noqa: E731
    decodes = [{"source": fmt(src[i]), "greedy": fmt(g[i]), "beam": fmt(b[i]),
                "beam_score": round(float(b_scores[i, 0]), 5),
                "greedy_exact": bool((g[i] == want[i]).all()), "beam_exact": bool((b[i] == want[i]).all())}
               for i in range(min(cfg.num_examples, cfg.eval_size))]
    return metrics, decodes


def plot(out_dir) -> Path:
    """loss_curve.png from loss_curve.csv (never recomputes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    rows = io.load_csv(out_dir / "loss_curve.csv")
    metrics = io.load_json(out_dir / "metrics.json")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label="train cross-entropy")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over the log interval)")
    ax.set_title(f"copy task: greedy exact {metrics['greedy_exact']:.0%}, beam exact {metrics['beam_exact']:.0%}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = io.save_figure(fig, out_dir / "loss_curve.png", dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    cfg, out_dir = parse(argv)
    io.ensure_writable_dir(out_dir)                                           # before any compute
    io.save_json(out_dir / "config.json", {"experiment": dataclasses.asdict(cfg),
                                           "model": dataclasses.asdict(cfg.model_config())})
    model, params, rows = train(cfg)
    io.save_csv(out_dir / "loss_curve.csv", rows)
    metrics, decodes = evaluate(cfg, model, params)
    io.save_json(out_dir / "metrics.json", metrics)
    io.save_csv(out_dir / "decodes.csv", decodes)
    plot(out_dir)
    print(f"held-out exact copies: greedy {metrics['greedy_exact']:.1%}, beam {metrics['beam_exact']:.1%} "
          f"(token accuracy {metrics['greedy_token_accuracy']:.1%}; source-blind chance "
          f"{metrics['chance_token_accuracy']:.1%})")
    for d in decodes[:4]:
        print(f"  src {d['source']}  ->  greedy {d['greedy']}  |  beam {d['beam']}")
    return metrics


if __name__ == "__main__":
    main()
