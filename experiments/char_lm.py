"""Character language models (LSTM, GRU or Transformer) on "hello", a text file or the Python standard library.

Reports validation bits per character against the unigram baseline, prints samples at
several temperatures, and writes config.json, results.json, samples.txt and
learning_curve.csv into --out, then plots learning_curve.png from the saved files.

    python experiments/char_lm.py --corpus hello --out results/char_hello       # "hell" -> "o"
    python experiments/char_lm.py --corpus stdlib --model lstm --out results/char_stdlib
    python experiments/char_lm.py --corpus file --path book.txt --encoding latin-1 --out ...
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import io, models, tasks, train

ARCHS = ("lstm", "gru", "transformer")
CORPORA = ("hello", "stdlib", "file")


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
    hidden: int = 256
    model_size: int = 128
    num_layers: int = 1
    lr: float = 3e-3
    clip_norm: float = 1.0
    max_chars: int = 500_000
    eval_batches: int = 4
    eval_points: int = 10
    temperatures: tuple[float, ...] = (0.5, 1.0)
    sample_chars: int = 300
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
        if self.sample_chars < 1:
            raise ValueError(f"sample_chars must be >= 1, got {self.sample_chars}")
        if self.model == "transformer":
            # an empty prompt falls back to one character of the vocabulary
            check_sample_room(max(1, len(self.prompt)), self.sample_chars, self.seq_len)


def load_corpus(cfg: Config) -> tasks.CharCorpus:
    if cfg.corpus == "hello":
        return tasks.hello()
    if cfg.corpus == "stdlib":
        return tasks.stdlib_corpus(max_chars=cfg.max_chars)
    return tasks.text_file(cfg.path, encoding=cfg.encoding)


class LM:
    """A uniform face over the recurrent LM and the decoder-only Transformer."""

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int):
        self.cfg, self.V, self.L = cfg, vocab_size, seq_len
        if cfg.model == "transformer":
            from seqjax import transformer
            self.net = transformer.decoder_only(transformer.DecoderOnlyConfig(
                vocab_size=vocab_size, model_size=cfg.model_size, num_heads=4, ff_size=4 * cfg.model_size,
                num_layers=max(cfg.num_layers, 2), dropout=0.0, max_len=seq_len))
        else:
            self.net = models.recurrent_lm(models.RecurrentLMConfig(
                cell=cfg.model, vocab_size=vocab_size, hidden_size=cfg.hidden, embed_size=64,
                num_layers=cfg.num_layers))

    def init(self, key):
        return self.net.init(key)

    def logits(self, params, x, key=None):
        """x (B, T) -> logits (B, T, V)."""
        if self.cfg.model == "transformer":
            return self.net.apply(params, x, dropout_key=key)
        return self.net.apply(params, x, key=key)[0]

    def sample(self, params, key, prompt, num_chars: int, temperature):
        """(num_chars,) ids continuing ``prompt`` (T0,), one jitted scan.

        Token i is drawn with ``jax.random.split(key, num_chars)[i]`` from
        ``softmax(logits / temperature)`` (``temperature == 0``: argmax; it may be traced).
        The Transformer primes its key/value cache with the whole prompt in one
        ``decode_step`` and then feeds each sampled token back, O(T0 + num_chars) per token
        instead of recomputing the window. Its cache and learned positions hold L
        positions, and the last sampled token is never fed back, so
        ``T0 + num_chars - 1 <= L`` is required (ValueError otherwise).
        """
        if self.cfg.model != "transformer":
            return models.generate(self.net, params, key, prompt, num_chars, temperature=temperature)
        P = int(prompt.shape[0])
        check_sample_room(P, num_chars, self.L)
        keys = jax.random.split(key, num_chars)
        state = self.net.init_decode(params, 1, P + num_chars - 1)
        logits, state = self.net.decode_step(params, state, prompt[None])      # (1, P, V): prefill
        first = models.sample_logits(keys[0], logits[0, -1], temperature)

        def body(carry, k):
            state, tok = carry
            logit, state = self.net.decode_step(params, state, tok[None])      # (1, V), one position
            nxt = models.sample_logits(k, logit[0], temperature)
            return (state, nxt), nxt

        _, rest = jax.lax.scan(body, (state, first), keys[1:])
        return jnp.concatenate([first[None], rest])


def check_sample_room(prompt_len: int, num_chars: int, max_len: int) -> None:
    """The Transformer sampler needs ``prompt_len + num_chars - 1 <= max_len`` cache positions."""
    if prompt_len < 1 or num_chars < 1:
        raise ValueError(f"the prompt and sample_chars must be >= 1, got prompt of {prompt_len} chars and "
                         f"sample_chars={num_chars}")
    if prompt_len + num_chars - 1 > max_len:
        raise ValueError(f"prompt ({prompt_len} chars) + sample_chars ({num_chars}) - 1 = "
                         f"{prompt_len + num_chars - 1} positions exceed the Transformer's max_len = "
                         f"seq_len = {max_len} (its KV cache and learned positions); shorten --prompt, "
                         f"lower --sample-chars or raise --seq-len")


def run(cfg: Config, out_dir: Path, resume: bool, progress: bool) -> dict:
    corpus = load_corpus(cfg)
    V = corpus.vocab.size
    seq_len = min(cfg.seq_len, int(corpus.train.shape[0]) - 1)
    lm = LM(cfg, V, seq_len)
    # characters outside the vocabulary are dropped from the prompt
    prompt_text = "".join(c for c in cfg.prompt if c in corpus.vocab.chars) or corpus.vocab.chars[0]
    prompt = jnp.asarray(corpus.vocab.encode(prompt_text))
    if cfg.model == "transformer":   # a corpus shorter than seq_len + 1 shrinks the window: check before training
        check_sample_room(len(prompt_text), cfg.sample_chars, seq_len)
    key = jax.random.key(cfg.seed)
    k_model, k_train, k_data, k_eval, k_sample = jax.random.split(key, 5)

    def loss_fn(params, batch, key):
        logits = lm.logits(params, batch.x, key)
        ce = models.softmax_cross_entropy(logits, batch.y)
        return ce, {"bits_per_char": ce / math.log(2), "accuracy": models.accuracy(logits, batch.y)}

    trainer = train.trainer(loss_fn, train.make_optimizer("adam", cfg.lr, schedule="cosine",
                                                          total_steps=cfg.steps), clip_norm=cfg.clip_norm)
    state = trainer.init(lm.init(k_model), k_train)
    data_fn = lambda s: tasks.lm_windows(jax.random.fold_in(k_data, s), corpus.train, cfg.batch_size, seq_len)  # noqa: E731
    evals = [tasks.lm_windows(jax.random.fold_in(k_eval, i), corpus.valid, cfg.batch_size, seq_len)
             for i in range(cfg.eval_batches)]
    start = time.perf_counter()
    result = train.fit(trainer, state, data_fn, num_steps=cfg.steps, out_dir=out_dir / "run", eval_batches=evals,
                       eval_every=max(1, cfg.steps // cfg.eval_points), log_every=max(1, min(25, cfg.steps // 4)),
                       resume=resume, progress=progress, config=dataclasses.asdict(cfg), description=cfg.model)
    seconds = time.perf_counter() - start
    params = result.state.params
    unigram = tasks.unigram_bits_per_char(corpus.train, corpus.valid, V)
    eval_rows = [r for r in result.history if r["split"] == "eval"]

    sample = jax.jit(lm.sample, static_argnums=3)   # one compilation for every temperature
    samples = {}
    for i, t in enumerate((0.0,) + tuple(cfg.temperatures)):
        toks = sample(params, jax.random.fold_in(k_sample, i), prompt, cfg.sample_chars, jnp.float32(t))
        samples[str(t)] = prompt_text + corpus.vocab.decode(np.asarray(toks))
    return {"model": cfg.model, "corpus": cfg.corpus, "vocab_size": V, "train_chars": int(corpus.train.shape[0]),
            "valid_chars": int(corpus.valid.shape[0]), "steps": cfg.steps, "seconds": seconds,
            "valid_bits_per_char": eval_rows[-1]["bits_per_char"], "unigram_bits_per_char": unigram,
            "greedy_continuation": samples["0.0"], "samples": samples,
            "curve": [{"step": r["step"], "bits_per_char": r["bits_per_char"]} for r in eval_rows]}


def plot(out_dir) -> Path:
    """learning_curve.png from learning_curve.csv and results.json (no recomputation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    rows = io.load_csv(out_dir / "learning_curve.csv")
    res = io.load_json(out_dir / "results.json")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([int(r["step"]) for r in rows], [float(r["bits_per_char"]) for r in rows], marker="o", ms=3,
            label=f"{res['model']} (validation)")
    ax.axhline(res["unigram_bits_per_char"], color="k", ls="--", lw=1, label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title(f"char LM on {res['corpus']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = io.save_figure(fig, out_dir / "learning_curve.png", dpi=120)
    plt.close(fig)
    return path


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/char_lm", help="output directory")
    p.add_argument("--corpus", choices=CORPORA, default=Config.corpus)
    p.add_argument("--path", help="text file for --corpus file")
    p.add_argument("--encoding", default=Config.encoding, help="text file encoding, e.g. latin-1")
    p.add_argument("--model", default=Config.model, help=f"one of {list(ARCHS)}")
    p.add_argument("--steps", type=int, default=Config.steps)
    p.add_argument("--batch-size", type=int, default=Config.batch_size)
    p.add_argument("--seq-len", type=int, default=Config.seq_len)
    p.add_argument("--hidden", type=int, default=Config.hidden, help="recurrent hidden size H")
    p.add_argument("--model-size", type=int, default=Config.model_size, help="Transformer width D")
    p.add_argument("--num-layers", type=int, default=Config.num_layers)
    p.add_argument("--lr", type=float, default=Config.lr)
    p.add_argument("--max-chars", type=int, default=Config.max_chars, help="stdlib corpus size")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(Config.temperatures))
    p.add_argument("--sample-chars", type=int, default=None,
                   help="characters to sample (default 300; Transformer: at most seq_len - len(prompt) + 1, "
                        "its KV-cache / position limit)")
    p.add_argument("--prompt", default=Config.prompt)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--quick", action="store_true", help="tiny run for tests")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse(argv)
    hello = args.corpus == "hello"
    # on "hello" the task is fixed: read "hell", predict one character
    prompt = "hell" if hello else args.prompt
    common = dict(corpus=args.corpus, path=args.path, encoding=args.encoding, model=args.model, seed=args.seed,
                  temperatures=tuple(args.temperatures), prompt=prompt)
    if args.quick:
        size = dict(steps=8, batch_size=4, seq_len=24, hidden=16, model_size=16, max_chars=5000, eval_batches=1,
                    eval_points=2)
        default_chars = 20
    elif hello:
        common["temperatures"] = ()
        size = dict(steps=min(args.steps, 150), batch_size=1, seq_len=4, hidden=16, model_size=16, lr=1e-2,
                    eval_batches=1)
        default_chars = 1
    else:
        size = dict(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, hidden=args.hidden,
                    model_size=args.model_size, num_layers=args.num_layers, lr=args.lr, max_chars=args.max_chars)
        default_chars = 300
    if hello:
        sample_chars = 1
    elif args.sample_chars is not None:
        sample_chars = args.sample_chars
    elif args.model == "transformer":   # fill the window: prompt + sample_chars - 1 = seq_len
        sample_chars = max(1, min(default_chars, size["seq_len"] - len(prompt) + 1))
    else:
        sample_chars = default_chars
    cfg = Config(**common, **size, sample_chars=sample_chars)
    out_dir = io.ensure_writable_dir(args.out)
    load_corpus(cfg)   # fail on a missing / empty / mis-encoded file before any compute
    io.save_json(out_dir / "config.json", dataclasses.asdict(cfg))
    res = run(cfg, out_dir, args.resume, not args.no_progress)
    io.save_csv(out_dir / "learning_curve.csv", res.pop("curve"))
    io.save_json(out_dir / "results.json", res)
    io.atomic_write_text(out_dir / "samples.txt", "".join(
        f"--- temperature {t} ---\n{s}\n\n" for t, s in res["samples"].items()))
    print(f"{res['model']} on {res['corpus']}: validation {res['valid_bits_per_char']:.3f} bits/char "
          f"(unigram {res['unigram_bits_per_char']:.3f}) in {res['seconds']:.0f}s")
    for t, s in res["samples"].items():
        print(f"--- temperature {t} ---\n{s}\n")
    plot(out_dir)
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
