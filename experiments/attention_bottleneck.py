"""Why attention was invented: seq2seq without attention, with attention, and a Transformer, against source length.

Bahdanau, Cho & Bengio 2015 ("Neural machine translation by jointly learning to align
and translate") conjecture that squeezing the whole source into the encoder's one
fixed-length vector limits the plain encoder-decoder on long sources, and add
attention to remove that bottleneck; this script measures the effect on small tasks.
Trains three encoder-decoders of similar size on string reversal (sources of 1 to
--train-max-len tokens) and on date normalisation (``tasks.seq2seq_dates``, a fixed
training set), then measures held-out exact match of greedy decodes: for reversal at
every source length 1 .. --eval-max-len (twice the longest training source by
default), for dates per input format and per source length. Writes config.json,
models.csv (parameters, time, final loss), loss_curves.csv and accuracy.csv into
--out, then plots attention_bottleneck.png from those files.

    python experiments/attention_bottleneck.py                    # ~13 min on 2 busy cores
    python experiments/attention_bottleneck.py --quick --out /tmp/ab
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _common
from seqjax import cells, decoding, io, losses, plotting, seq2seq, tasks, train
from seqjax import transformer as tfm

TASKS = ("reverse", "dates")
MODELS = ("rnn_none", "rnn_attention", "transformer")
LABELS = {"rnn_none": "seq2seq, no attention", "rnn_attention": "seq2seq + attention",
          "transformer": "Transformer"}
DATE_EXAMPLE = datetime.date(2026, 11, 23)       # labels the formats: "23 November 2026", ...
DATE_DAYS = (datetime.date(2099, 12, 31) - datetime.date(1900, 1, 1)).days + 1   # tasks.seq2seq_dates' range
QUICK = dict(steps=30, dates_steps=30, batch_size=16, embed_size=8, hidden_size=16, model_size=16,
             num_heads=2, ff_size=32, num_layers=1, warmup=5, train_max_len=4, dates_train_size=256,
             eval_per_length=8, eval_per_format=8, log_every=10)


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved experiment configuration (saved as config.json)."""

    tasks: tuple[str, ...] = TASKS
    models: tuple[str, ...] = MODELS
    train_max_len: int = 20              # reversal sources in training have 1 .. train_max_len tokens
    eval_max_len: int | None = None      # evaluated at 1 .. eval_max_len (None: 2 * train_max_len)
    vocab_size: int = 11                 # reversal: PAD, SOS, EOS and 8 symbols
    cell: str = "lstm"
    embed_size: int = 32
    hidden_size: int = 128
    bidirectional: bool = False
    attention: str = "general"
    model_size: int = 64
    num_heads: int = 4
    ff_size: int = 256
    num_layers: int = 2                  # Transformer encoder and decoder layers (the RNNs have one)
    steps: int = 2500                    # reversal
    dates_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    clip_norm: float = 1.0
    dates_train_size: int = 32000        # the fixed training set of dates
    eval_per_length: int = 200
    eval_per_format: int = 250
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        for t in self.tasks:
            if t not in TASKS:
                raise ValueError(f"tasks: unknown task {t!r}; expected some of {list(TASKS)}")
        for m in self.models:
            if m not in MODELS:
                raise ValueError(f"models: unknown model {m!r}; expected some of {list(MODELS)}")
        for name in ("train_max_len", "embed_size", "hidden_size", "model_size", "num_heads", "ff_size",
                     "num_layers", "steps", "dates_steps", "batch_size", "warmup", "dates_train_size",
                     "eval_per_length", "eval_per_format", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_max_len is not None and self.eval_max_len < self.train_max_len:
            raise ValueError(f"eval_max_len ({self.eval_max_len}) must be >= train_max_len "
                             f"({self.train_max_len})")
        if self.vocab_size < tasks.NUM_SPECIALS + 1:
            raise ValueError(f"vocab_size must be >= {tasks.NUM_SPECIALS + 1} (PAD, SOS, EOS and a symbol), "
                             f"got {self.vocab_size}")
        if self.cell not in cells.CELL_NAMES:
            raise ValueError(f"cell must be one of {list(cells.CELL_NAMES)}, got {self.cell!r}")
        if self.attention not in seq2seq.ATTENTION or self.attention == "none":
            raise ValueError(f"attention must be one of {[a for a in seq2seq.ATTENTION if a != 'none']} "
                             f"(the attention of 'rnn_attention'), got {self.attention!r}")
        if self.model_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide model_size ({self.model_size})")
        if not self.lr > 0 or not self.clip_norm > 0:
            raise ValueError(f"lr and clip_norm must be > 0, got {self.lr} and {self.clip_norm}")
        if self.warmup >= min(self.steps, self.dates_steps):
            raise ValueError(f"warmup ({self.warmup}) must be < steps and dates_steps")

    @property
    def longest(self) -> int:
        """The longest evaluated reversal source."""
        return 2 * self.train_max_len if self.eval_max_len is None else self.eval_max_len


def task_spec(task: str, cfg: Config) -> dict:
    """Vocabulary, the longest source and target, steps, and a training sampler ``data(key) -> batch``."""
    if task == "reverse":
        return dict(vocab=cfg.vocab_size, src_len=cfg.longest, tgt_len=cfg.longest + 1, steps=cfg.steps,
                    data=lambda key: tasks.seq2seq_reverse(key, cfg.batch_size, length=cfg.train_max_len,
                                                           vocab_size=cfg.vocab_size, min_length=1))
    pool = dates_training_set(cfg)   # a fixed set: drawing dates on the host every step would cost more

    @jax.jit
    def draw(key, pool):             # the pool is an argument, not a constant baked into the program
        idx = jax.random.randint(key, (cfg.batch_size,), 0, pool.src.shape[0])
        return jax.tree.map(lambda a: a[idx], pool)
    return dict(vocab=len(tasks.DATE_VOCAB), src_len=tasks.DATE_SOURCE_LENGTH, tgt_len=tasks.DATE_TARGET_LENGTH,
                steps=cfg.dates_steps, data=lambda key: draw(key, pool), pool=pool)


def dates_training_set(cfg: Config) -> tasks.Seq2SeqBatch:
    """The fixed training set: dates_train_size draws of ``tasks.seq2seq_dates`` (its own key stream)."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), 10)
    chunks = [tasks.seq2seq_dates(jax.random.fold_in(key, i), min(4096, cfg.dates_train_size - start))
              for i, start in enumerate(range(0, cfg.dates_train_size, 4096))]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *chunks)


def build_model(arch: str, spec: dict, cfg: Config):
    V = spec["vocab"]
    if arch == "transformer":
        return tfm.transformer(tfm.TransformerConfig(
            V, V, model_size=cfg.model_size, num_heads=cfg.num_heads, ff_size=cfg.ff_size,
            num_encoder_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, dropout=0.0,
            max_len=max(spec["src_len"], spec["tgt_len"]), tie_embeddings=True, share_embeddings=True))
    return seq2seq.seq2seq(seq2seq.Seq2SeqConfig(
        V, V, embed_size=cfg.embed_size, hidden_size=cfg.hidden_size, cell=cfg.cell,
        bidirectional=cfg.bidirectional, attention="none" if arch == "rnn_none" else cfg.attention))


def train_one(arch: str, spec: dict, cfg: Config, progress: bool):
    """(model, params, loss curve rows (mean training loss per log_every steps), seconds):
    Adam, linear warm-up then cosine decay to lr/10, clipped at global norm clip_norm."""
    model = build_model(arch, spec, cfg)

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths)
        return losses.cross_entropy(logits, batch.tgt_out, ignore_id=tasks.PAD), {}

    schedule = train.make_schedule("warmup_cosine", cfg.lr, total_steps=spec["steps"], warmup_steps=cfg.warmup,
                                   end_fraction=0.1)
    trainer = train.trainer(loss_fn, optax.adam(schedule), clip_norm=cfg.clip_norm)
    key = jax.random.key(cfg.seed)
    k_data = jax.random.fold_in(key, 1)
    state = trainer.init(model.init(jax.random.fold_in(key, 0)), jax.random.fold_in(key, 3))
    start = time.perf_counter()
    result = train.fit(trainer, state, lambda step: spec["data"](jax.random.fold_in(k_data, step)),
                       num_steps=spec["steps"], log_every=cfg.log_every, progress=progress,
                       description=arch)
    seconds = time.perf_counter() - start
    loss = np.array([r["loss"] for r in result.history if r["split"] == "train"])            # (steps,)
    ends = list(range(cfg.log_every, spec["steps"], cfg.log_every)) + [spec["steps"]]
    rows = [{"step": e, "loss": float(loss[s:e].mean())} for s, e in zip([0] + ends[:-1], ends)]
    return model, result.state.params, rows, seconds


def reversal_eval_set(cfg: Config) -> tasks.Seq2SeqBatch:
    """About eval_per_length fresh sources of every length 1 .. longest (uniform lengths), in
    one padded batch, so one compiled decode serves every length."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), 2)               # a stream training never uses
    return tasks.seq2seq_reverse(key, cfg.eval_per_length * cfg.longest, length=cfg.longest,
                                 vocab_size=cfg.vocab_size, min_length=1)


def dates_eval_set(cfg: Config, pool: tasks.Seq2SeqBatch):
    """eval_per_format fresh dates in every input format, none of whose source strings is in the
    training set: (src (N, 28), src_lengths, tgt_out (N, 11), formats (N,))."""
    seen = {tasks.decode_chars(row) for row in np.asarray(pool.src)}
    rng = np.random.default_rng(cfg.seed + 1)
    src, src_len, tgt, fmts = [], [], [], []
    for fmt in range(len(tasks.DATE_FORMATS)):
        n = 0
        while n < cfg.eval_per_format:
            date = datetime.date(1900, 1, 1) + datetime.timedelta(days=int(rng.integers(DATE_DAYS)))
            text = tasks.format_date(date, fmt)
            if text in seen:
                continue
            src.append(tasks.encode_chars(text, tasks.DATE_SOURCE_LENGTH))
            src_len.append(len(text))
            tgt.append(np.append(tasks.encode_chars(date.isoformat()), tasks.EOS))
            fmts.append(fmt)
            n += 1
    return np.stack(src), np.asarray(src_len, np.int32), np.stack(tgt), np.asarray(fmts)


def greedy(model, params, src, src_lengths, max_len: int, batch: int = 2048) -> np.ndarray:
    """Greedy decodes (N, max_len), in batches of one shape (one compilation)."""
    fn = jax.jit(lambda p, s, n: decoding.greedy_decode(model, p, s, max_len=max_len, eos_id=tasks.EOS,
                                                        sos_id=tasks.SOS, pad_id=tasks.PAD, src_lengths=n))
    N = src.shape[0]
    pad = (-N) % batch if N > batch else 0
    src = np.concatenate([src, np.repeat(src[:1], pad, 0)])
    src_lengths = np.concatenate([src_lengths, np.repeat(src_lengths[:1], pad, 0)])
    size = min(batch, N)
    out = [np.asarray(fn(params, src[i:i + size], src_lengths[i:i + size])) for i in range(0, len(src), size)]
    return np.concatenate(out)[:N]


def accuracy_rows(task: str, arch: str, group: str, keys: np.ndarray, out: np.ndarray, want: np.ndarray,
                  names=None) -> list[dict]:
    """Exact match and token accuracy (over the target's non-PAD positions) per value of ``keys``."""
    exact = np.all(out == want, axis=1)
    valid = want != tasks.PAD
    tokens = np.sum((out == want) & valid, axis=1) / np.sum(valid, axis=1)
    return [{"task": task, "model": arch, "group": group, "x": int(k),
             "label": names[int(k)] if names else str(int(k)), "n": int(np.sum(keys == k)),
             "exact": float(np.mean(exact[keys == k])), "token_accuracy": float(np.mean(tokens[keys == k]))}
            for k in np.unique(keys)]


def run(cfg: Config, progress: bool = True):
    """Train every (task, model) pair and evaluate it; returns (model rows, loss rows, accuracy rows)."""
    model_rows, loss_rows, acc_rows = [], [], []
    fmt_names = [f"{tasks.format_date(DATE_EXAMPLE, f)}" for f in range(len(tasks.DATE_FORMATS))]
    for task in cfg.tasks:
        spec = task_spec(task, cfg)
        if task == "reverse":
            held_out = reversal_eval_set(cfg)
            src, src_len, want = (np.asarray(a) for a in (held_out.src, held_out.src_lengths, held_out.tgt_out))
        else:
            src, src_len, want, fmts = dates_eval_set(cfg, spec["pool"])
        for arch in cfg.models:
            model, params, curve, seconds = train_one(arch, spec, cfg, progress)
            out = greedy(model, params, src, src_len, spec["tgt_len"])
            if task == "reverse":
                acc_rows += accuracy_rows(task, arch, "length", src_len, out, want)
            else:
                acc_rows += accuracy_rows(task, arch, "format", fmts, out, want, fmt_names)
                acc_rows += accuracy_rows(task, arch, "length", src_len, out, want)
            model_rows.append({"task": task, "model": arch, "label": LABELS[arch],
                               "params": sum(x.size for x in jax.tree.leaves(params)), "steps": spec["steps"],
                               "final_loss": curve[-1]["loss"], "seconds": round(seconds, 1),
                               "exact_overall": float(np.mean(np.all(out == want, axis=1)))})
            loss_rows += [{"task": task, "model": arch, **r} for r in curve]
            print(f"{task:>8} {arch:>13}: {model_rows[-1]['params']} params, loss {curve[-1]['loss']:.4f}, "
                  f"held-out exact {model_rows[-1]['exact_overall']:.1%} in {seconds:.0f}s", flush=True)
    return model_rows, loss_rows, acc_rows


def plot(out_dir) -> Path:
    """attention_bottleneck.png from accuracy.csv and config.json (never recomputes)."""
    out_dir = Path(out_dir)
    cfg = io.load_json(out_dir / "config.json")
    rows = io.load_csv(out_dir / "accuracy.csv")
    titles = {("reverse", "length"): "reversal: exact match by source length",
              ("dates", "format"): "dates: exact match by input format"}
    panels: dict = {}
    for r in rows:
        title = titles.get((r["task"], r["group"]))
        if title is None:       # dates by source length: in accuracy.csv, mostly a proxy for the format
            continue
        xs, ys = panels.setdefault(title, {}).setdefault(LABELS[r["model"]], ([], []))
        xs.append(r["label"] if r["group"] == "format" else int(r["x"]))
        ys.append(float(r["exact"]))
    panels = {t: panels[t] for t in titles.values() if t in panels}
    fig = plotting.accuracy_figure(
        panels, xlabel={titles["reverse", "length"]: "source length (tokens)",
                        titles["dates", "format"]: "input format (the same date in each)"},
        ylabel="held-out exact match (greedy)",
        trained_up_to={titles["reverse", "length"]: cfg["train_max_len"]})
    return io.save_figure(fig, out_dir / "attention_bottleneck.png", dpi=120)


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "attention_bottleneck")
    parser.add_argument("--no-progress", action="store_true")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)         # a bad flag is a usage error naming it
    out_dir = io.ensure_writable_dir(args.out)                                # before any compute
    io.save_json(out_dir / "config.json", {**dataclasses.asdict(cfg), "eval_max_len": cfg.longest,
                                           "labels": LABELS, "backend": jax.default_backend()})
    start = time.perf_counter()
    model_rows, loss_rows, acc_rows = run(cfg, progress=not args.no_progress)
    io.save_csv(out_dir / "models.csv", model_rows)
    io.save_csv(out_dir / "loss_curves.csv", loss_rows)
    io.save_csv(out_dir / "accuracy.csv", acc_rows)
    print(f"{time.perf_counter() - start:.0f}s; figure: {plot(out_dir)}")
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
