"""Character language models (LSTM, GRU or Transformer) on "hello", a text file or the Python standard library.

Reports validation bits per character against the unigram baseline, prints samples at
several temperatures (``seqjax.decoding.sample``), and writes config.json,
results.json, samples.txt and learning_curve.csv into --out, then plots
learning_curve.png from the saved files.

    python experiments/char_lm.py --corpus hello                                # "hell" -> "o"
    python experiments/char_lm.py --corpus stdlib --model lstm --out results/char_stdlib
    python experiments/char_lm.py --corpus file --path book.txt --encoding latin-1 --out ...
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from seqjax import decoding, io, losses, models, plotting, tasks, train, transformer

ARCHS = ("lstm", "gru", "transformer")
CORPORA = ("hello", "stdlib", "file")
QUICK = dict(steps=8, batch_size=4, seq_len=24, hidden=16, model_size=16, max_chars=5000, eval_batches=1,
             eval_points=2, sample_chars=20)
# on "hello" the task is fixed: read "hell", predict one character
HELLO = dict(steps=150, batch_size=1, seq_len=4, hidden=16, model_size=16, lr=1e-2, eval_batches=1,
             temperatures=(), prompt="hell", sample_chars=1)


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved configuration (saved as config.json)."""

    corpus: str = "stdlib"
    path: str | None = None
    encoding: str = "utf-8"
    model: str = "lstm"
    steps: int = 1500
    batch_size: int = 32
    seq_len: int = 64
    hidden: int = 256            # recurrent H
    model_size: int = 128        # Transformer D
    num_layers: int = 1
    lr: float = 3e-3
    clip_norm: float = 1.0
    max_chars: int = 500_000     # stdlib corpus size
    eval_batches: int = 4
    eval_points: int = 10
    temperatures: tuple[float, ...] = (0.5, 1.0)
    sample_chars: int | None = None   # None: 300, or as many as the Transformer's window holds
    prompt: str = "def "
    seed: int = 0

    def __post_init__(self):
        if self.model not in ARCHS:
            raise ValueError(f"unknown architecture {self.model!r}; expected one of {list(ARCHS)}")
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; expected one of {list(CORPORA)}")
        if self.corpus == "file" and not self.path:
            raise ValueError("--corpus file needs --path to a text file")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be >= 0, got {self.temperatures}")
        if self.sample_chars is None:   # resolve the default, so config.json records the number used
            fill = self.seq_len - max(1, len(self.prompt)) + 1
            object.__setattr__(self, "sample_chars", max(1, min(300, fill)) if self.model == "transformer" else 300)
        if self.sample_chars < 1:
            raise ValueError(f"sample_chars must be >= 1, got {self.sample_chars}")
        if self.model == "transformer":   # an empty prompt falls back to one character of the vocabulary
            check_sample_room(max(1, len(self.prompt)), self.sample_chars, self.seq_len)


def check_sample_room(prompt_len: int, num_chars: int, max_len: int) -> None:
    """The Transformer's KV cache and learned positions hold ``max_len`` positions, and the last
    sampled token is never fed back: ``prompt_len + num_chars - 1 <= max_len``."""
    if prompt_len + num_chars - 1 > max_len:
        raise ValueError(f"prompt ({prompt_len} chars) + sample_chars ({num_chars}) - 1 = "
                         f"{prompt_len + num_chars - 1} positions exceed the Transformer's max_len = "
                         f"seq_len = {max_len} (its KV cache and learned positions); shorten --prompt, "
                         f"lower --sample-chars or raise --seq-len")


def load_corpus(cfg: Config) -> tasks.CharCorpus:
    if cfg.corpus == "hello":
        return tasks.hello()
    if cfg.corpus == "stdlib":
        return tasks.stdlib_corpus(max_chars=cfg.max_chars)
    return tasks.text_file(cfg.path, encoding=cfg.encoding)


def make_lm(cfg: Config, vocab_size: int, seq_len: int):
    """The recurrent LM or the decoder-only Transformer: both offer ``init``, ``apply`` and decoding."""
    if cfg.model == "transformer":
        return transformer.decoder_only(transformer.DecoderOnlyConfig(
            vocab_size=vocab_size, model_size=cfg.model_size, num_heads=4, ff_size=4 * cfg.model_size,
            num_layers=max(cfg.num_layers, 2), dropout=0.0, max_len=seq_len))
    return models.recurrent_lm(models.RecurrentLMConfig(
        cell=cfg.model, vocab_size=vocab_size, hidden_size=cfg.hidden, embed_size=64, num_layers=cfg.num_layers,
        forget_bias=1.0 if cfg.model == "lstm" else None))


def run(cfg: Config, out_dir: Path, resume: bool, progress: bool) -> dict:
    corpus = load_corpus(cfg)
    V = corpus.vocab.size
    seq_len = min(cfg.seq_len, int(corpus.train.shape[0]) - 1)
    lm = make_lm(cfg, V, seq_len)
    # characters outside the vocabulary are dropped from the prompt
    prompt_text = "".join(c for c in cfg.prompt if c in corpus.vocab.chars) or corpus.vocab.chars[0]
    prompt = jnp.asarray(corpus.vocab.encode(prompt_text))[None]                  # (1, P)
    if cfg.model == "transformer":   # a corpus shorter than seq_len + 1 shrinks the window: check before training
        check_sample_room(len(prompt_text), cfg.sample_chars, seq_len)
    k_model, k_train, k_data, k_eval, k_sample = jax.random.split(jax.random.key(cfg.seed), 5)

    def loss_fn(params, batch, key):
        out = lm.apply(params, batch.x, dropout_key=key)
        logits = out if cfg.model == "transformer" else out[0]                     # (B, T, V)
        ce = losses.cross_entropy(logits, batch.y)
        return ce, {"bits_per_char": ce / math.log(2), "accuracy": losses.accuracy(logits, batch.y)}

    trainer = train.trainer(loss_fn, train.make_optimizer("adam", cfg.lr, schedule="cosine",
                                                          total_steps=cfg.steps), clip_norm=cfg.clip_norm)
    data_fn = lambda s: tasks.lm_windows(jax.random.fold_in(k_data, s), corpus.train, cfg.batch_size, seq_len)  # noqa: E731
    evals = [tasks.lm_windows(jax.random.fold_in(k_eval, i), corpus.valid, cfg.batch_size, seq_len)
             for i in range(cfg.eval_batches)]
    result = train.fit(trainer, trainer.init(lm.init(k_model), k_train), data_fn, num_steps=cfg.steps,
                       out_dir=out_dir / "run", eval_batches=evals, eval_every=max(1, cfg.steps // cfg.eval_points),
                       log_every=max(1, min(25, cfg.steps // 4)), resume=resume, progress=progress,
                       config=dataclasses.asdict(cfg), description=cfg.model)
    seconds = result.seconds                     # total training time, across resumes
    eval_rows = [r for r in result.history if r["split"] == "eval"]
    # temperature is traced: one compilation for every temperature (0: greedy)
    sample = jax.jit(lambda p, k, t: decoding.sample(lm, p, prompt, k, max_len=cfg.sample_chars, temperature=t))
    samples = {str(t): prompt_text + corpus.vocab.decode(np.asarray(
        sample(result.state.params, jax.random.fold_in(k_sample, i), jnp.float32(t))[0]))
        for i, t in enumerate((0.0,) + tuple(cfg.temperatures))}
    return {"model": cfg.model, "corpus": cfg.corpus, "vocab_size": V, "train_chars": int(corpus.train.shape[0]),
            "valid_chars": int(corpus.valid.shape[0]), "steps": cfg.steps, "seconds": seconds,
            "valid_bits_per_char": eval_rows[-1]["bits_per_char"],
            "unigram_bits_per_char": tasks.unigram_bits_per_char(corpus.train, corpus.valid, V),
            "greedy_continuation": samples["0.0"], "samples": samples,
            "curve": [{"step": r["step"], "bits_per_char": r["bits_per_char"]} for r in eval_rows]}


def plot(out_dir) -> Path:
    """learning_curve.png from learning_curve.csv and results.json (no recomputation)."""
    out_dir = Path(out_dir)
    rows = io.load_csv(out_dir / "learning_curve.csv")
    res = io.load_json(out_dir / "results.json")
    title = f"char LM on {res['corpus']}"
    curve = ([int(r["step"]) for r in rows], [float(r["bits_per_char"]) for r in rows])
    fig = plotting.learning_curves_figure({title: {f"{res['model']} (validation)": curve}},
                                          ylabel="bits per character", baseline={title: res["unigram_bits_per_char"]},
                                          baseline_label="unigram baseline")
    return io.save_figure(fig, out_dir / "learning_curve.png", dpi=120)


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "char_lm")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--no-progress", action="store_true")
    values, args = _common.parse(parser, argv, quick=QUICK, preset=lambda a: HELLO if a.corpus == "hello" else {})
    cfg = _common.config(parser, Config, values, zero_ok=("seed", "temperatures"))
    load_corpus(cfg)   # fail on a missing / empty / mis-encoded file before any compute
    out_dir = _common.begin(args.out, dataclasses.asdict(cfg), resume=args.resume)
    res = run(cfg, out_dir, args.resume, not args.no_progress)
    io.save_csv(out_dir / "learning_curve.csv", res.pop("curve"))
    io.save_json(out_dir / "results.json", res)
    io.atomic_write_text(out_dir / "samples.txt", "".join(
        f"--- temperature {t} ---\n{s}\n\n" for t, s in res["samples"].items()))
    print(f"{res['model']} on {res['corpus']}: validation {res['valid_bits_per_char']:.3f} bits/char "
          f"(unigram {res['unigram_bits_per_char']:.3f}) in {res['seconds']:.0f}s")
    for t, s in res["samples"].items():
        print(f"--- temperature {t} ---\n{s}\n")
    print(f"figure: {plot(out_dir)}")
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
