"""Train an encoder-decoder Transformer on the copy task (vocabulary 11, length 10) and decode held-out inputs.

The Annotated Transformer's first example: the target is the source. Trains through
``seqjax.train``, decodes with ``seqjax.decoding`` (greedy and beam search), and writes
into --out config.json, loss_curve.csv, metrics.json and decodes.csv (held-out sources
with their greedy and beam-search outputs), then plots loss_curve.png from the CSV.

    python experiments/transformer_copy.py                          # ~2-3 min on 2 cores
    python experiments/transformer_copy.py --quick --out /tmp/copy  # the test setting
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
import optax

from experiments import _common
from seqjax import decoding, io, losses, plotting, tasks, train
from seqjax import transformer as tfm

QUICK = dict(steps=400, batch_size=32, lr=3e-3, dropout=0.0, eval_size=64, log_every=50)


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


def run(cfg: Config, progress: bool = True):
    """Adam with linear warm-up and cosine decay to lr/10, clipped at global norm 1; returns
    (model, params, loss_curve rows of the mean training loss per ``log_every`` steps)."""
    model = tfm.transformer(cfg.model_config())
    key = jax.random.key(cfg.seed)

    def loss_fn(params, batch, dropout_key):
        logits = model.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths, dropout_key=dropout_key)
        return losses.cross_entropy(logits, batch.tgt_out, label_smoothing=cfg.label_smoothing,
                                    ignore_id=tasks.PAD), {}

    schedule = train.make_schedule("warmup_cosine", cfg.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup,
                                   end_fraction=0.1)
    trainer = train.trainer(loss_fn, optax.adam(schedule, b2=0.98), clip_norm=1.0)
    k_params, k_data, k_dropout = (jax.random.fold_in(key, i) for i in (0, 1, 3))   # 2: the held-out set
    data_fn = lambda step: tasks.seq2seq_copy(jax.random.fold_in(k_data, step), cfg.batch_size,  # noqa: E731
                                              length=cfg.length, vocab_size=cfg.vocab_size)
    state = trainer.init(model.init(k_params), k_dropout)
    result = train.fit(trainer, state, data_fn, num_steps=cfg.steps, log_every=cfg.log_every,
                       progress=progress, description="copy")
    loss = np.array([r["loss"] for r in result.history if r["split"] == "train"])            # (steps,)
    ends = list(range(cfg.log_every, cfg.steps, cfg.log_every)) + [cfg.steps]
    rows = [{"step": e, "loss": float(loss[s:e].mean())} for s, e in zip([0] + ends[:-1], ends)]
    return model, result.state.params, rows


def evaluate(cfg: Config, model, params):
    """Greedy and beam decodes of held-out sources (a key stream training never uses)."""
    batch = tasks.seq2seq_copy(jax.random.fold_in(jax.random.key(cfg.seed), 2), cfg.eval_size,
                               length=cfg.length, vocab_size=cfg.vocab_size)
    ids = dict(max_len=cfg.length + 1, sos_id=tasks.SOS, eos_id=tasks.EOS, pad_id=tasks.PAD)   # the copy and EOS
    greedy = jax.jit(lambda p, s, n: decoding.greedy_decode(model, p, s, src_lengths=n, **ids))
    beam = jax.jit(lambda p, s, n: decoding.beam_search(model, p, s, beam_size=cfg.beam_size, src_lengths=n,
                                                        length_penalty=cfg.length_penalty, **ids))
    g = np.asarray(greedy(params, batch.src, batch.src_lengths))
    b_tokens, b_scores = jax.device_get(beam(params, batch.src, batch.src_lengths))
    b, want = b_tokens[:, 0], np.asarray(batch.tgt_out)
    metrics = {"greedy_exact": float(np.mean(np.all(g == want, axis=1))),
               "beam_exact": float(np.mean(np.all(b == want, axis=1))),
               "greedy_token_accuracy": float(np.mean(g == want)), "beam_token_accuracy": float(np.mean(b == want)),
               "chance_token_accuracy": tasks.seq2seq_copy_baseline(cfg.length, cfg.vocab_size),
               "eval_size": cfg.eval_size}
    src, fmt = np.asarray(batch.src), lambda row: " ".join(str(int(t)) for t in row)    # noqa: E731
    decodes = [{"source": fmt(src[i]), "greedy": fmt(g[i]), "beam": fmt(b[i]),
                "beam_score": round(float(b_scores[i, 0]), 5),
                "greedy_exact": bool((g[i] == want[i]).all()), "beam_exact": bool((b[i] == want[i]).all())}
               for i in range(min(cfg.num_examples, cfg.eval_size))]
    return metrics, decodes


def plot(out_dir) -> Path:
    """loss_curve.png from loss_curve.csv and metrics.json (never recomputes)."""
    out_dir = Path(out_dir)
    rows = io.load_csv(out_dir / "loss_curve.csv")
    m = io.load_json(out_dir / "metrics.json")
    title = f"copy task: greedy exact {m['greedy_exact']:.0%}, beam exact {m['beam_exact']:.0%}"
    curve = ([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    fig = plotting.learning_curves_figure({title: {"train cross-entropy": curve}}, log=True,
                                          ylabel="loss (mean over the log interval)")
    return io.save_figure(fig, out_dir / "loss_curve.png", dpi=120)


def main(argv=None) -> dict:
    parser = _common.parser(Config, __doc__, "transformer_copy")
    parser.add_argument("--no-progress", action="store_true")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values, zero_ok=("seed", "warmup", "length_penalty"),
                         rates=("dropout", "label_smoothing"))
    out_dir = io.ensure_writable_dir(args.out)                                # before any compute
    io.save_json(out_dir / "config.json", {"experiment": dataclasses.asdict(cfg),
                                           "model": dataclasses.asdict(cfg.model_config())})
    start = time.perf_counter()
    model, params, rows = run(cfg, progress=not args.no_progress)
    io.save_csv(out_dir / "loss_curve.csv", rows)
    metrics, decodes = evaluate(cfg, model, params)
    io.save_json(out_dir / "metrics.json", {**metrics, "seconds": round(time.perf_counter() - start, 1)})
    io.save_csv(out_dir / "decodes.csv", decodes)
    print(f"held-out exact copies: greedy {metrics['greedy_exact']:.1%}, beam {metrics['beam_exact']:.1%} "
          f"(token accuracy {metrics['greedy_token_accuracy']:.1%}; source-blind chance "
          f"{metrics['chance_token_accuracy']:.1%})")
    for d in decodes[:4]:
        print(f"  src {d['source']}  ->  greedy {d['greedy']}  |  beam {d['beam']}")
    print(f"figure: {plot(out_dir)}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
