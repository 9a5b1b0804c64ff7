"""The four shapes of RNN tasks, one held-out accuracy curve each: one-to-many, many-to-one, many-to-many (two kinds).

* one-to-many (the image-captioning setting): ``models.conditioned_decoder`` starts
  from a state computed from an 8x8 digit image (scikit-learn's digits) and spells
  the digit's English name character by character until EOS; held-out: the 360
  test images, exact name.
* many-to-one: ``tasks.sentiment`` (variable lengths) read at each sentence's last
  valid step (``models.sequence_model(readout="last")`` with lengths).
* aligned many-to-many (frame tagging): ``tasks.running_parity``, one label per step.
* unaligned many-to-many (translation): ``tasks.seq2seq_dates`` with ``seq2seq.seq2seq``
  (attention), exact match of greedy decodes.

Writes config.json, curves.csv (held-out accuracy during training), results.csv and
examples.csv into --out, then plots task_types.png from those files.

    python experiments/task_types.py                      # ~2 min on 2 cores
    python experiments/task_types.py --quick --out /tmp/tt
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from seqjax import cells, decoding, io, losses, models, plotting, seq2seq, tasks, train

TASKS = ("one_to_many", "many_to_one", "aligned", "unaligned")
TITLES = {"one_to_many": "one-to-many: digit image -> its name",
          "many_to_one": "many-to-one: sentiment (last valid step)",
          "aligned": "aligned many-to-many: running parity",
          "unaligned": "unaligned many-to-many: date normalisation"}
METRICS = {"one_to_many": "exact name", "many_to_one": "accuracy", "aligned": "per-step accuracy",
           "unaligned": "exact match (greedy)"}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUICK = dict(steps=20, dates_steps=20, batch_size=16, hidden_size=16, embed_size=8, eval_every=10,
             eval_size=64, parity_length=8)


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved experiment configuration (saved as config.json)."""

    tasks: tuple[str, ...] = TASKS
    cell: str = "lstm"
    hidden_size: int = 64
    embed_size: int = 16
    steps: int = 1000                    # one-to-many, many-to-one and aligned
    dates_steps: int = 2000              # unaligned
    batch_size: int = 64
    lr: float = 3e-3
    clip_norm: float = 1.0
    parity_length: int = 20
    max_clauses: int = 8                 # sentiment sentences have 2 .. max_clauses two-word clauses
    eval_size: int = 1000                # held-out sentences, parity sequences and dates
    eval_every: int = 100
    num_examples: int = 6
    seed: int = 0

    def __post_init__(self):
        for t in self.tasks:
            if t not in TASKS:
                raise ValueError(f"tasks: unknown task {t!r}; expected some of {list(TASKS)}")
        if self.cell not in cells.CELL_NAMES:
            raise ValueError(f"cell must be one of {list(cells.CELL_NAMES)}, got {self.cell!r}")
        for name in ("hidden_size", "embed_size", "steps", "dates_steps", "batch_size", "parity_length",
                     "eval_size", "eval_every", "num_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_clauses < 2:
            raise ValueError(f"max_clauses must be >= 2, got {self.max_clauses}")
        if not self.lr > 0 or not self.clip_norm > 0:
            raise ValueError(f"lr and clip_norm must be > 0, got {self.lr} and {self.clip_norm}")


class CaptionBatch(NamedTuple):
    """features (B, 64) pixel intensities; tgt_in / tgt_out (B, S) characters of the name."""

    features: jax.Array
    tgt_in: jax.Array
    tgt_out: jax.Array


def _names_table() -> tuple[np.ndarray, np.ndarray]:
    """(tgt_in, tgt_out) (10, S): [SOS, name] and [name, EOS] in tasks.DATE_VOCAB characters."""
    S = max(map(len, DIGIT_NAMES)) + 1
    names = np.stack([tasks.encode_chars(n, S - 1) for n in DIGIT_NAMES])              # (10, S-1)
    tgt_in = np.concatenate([np.full((10, 1), tasks.SOS), names], axis=1)
    tgt_out = np.concatenate([names, np.full((10, 1), tasks.PAD)], axis=1)
    tgt_out[np.arange(10), [len(n) for n in DIGIT_NAMES]] = tasks.EOS
    return tgt_in.astype(np.int32), tgt_out.astype(np.int32)


def exact_match(out: jax.Array, want: jax.Array) -> jax.Array:
    """Fraction of rows of greedy decodes (B, S) equal to the targets (B, S) (PAD after EOS)."""
    return jnp.mean(jnp.all(out == want, axis=1))


def majority_string(tgt_out) -> float:
    """Chance exact match: the frequency of the most common target row (B, S), which the best
    predictor blind to the input always emits."""
    return float(np.unique(np.asarray(tgt_out), axis=0, return_counts=True)[1].max() / len(tgt_out))


def one_to_many(cfg: Config, key) -> dict:
    data = tasks.sequential_digits_data()
    names_in, names_out = map(jnp.asarray, _names_table())
    V, S = len(tasks.DATE_VOCAB), names_out.shape[1]
    model = models.conditioned_decoder(models.ConditionedDecoderConfig(
        64, V, cell=cfg.cell, hidden_size=cfg.hidden_size, embed_size=cfg.embed_size))
    x_train, y_train = data.x_train[..., 0], data.y_train                              # (N, 64)

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.features, batch.tgt_in)
        loss = losses.cross_entropy(logits, batch.tgt_out, ignore_id=tasks.PAD)
        if key is not None:
            return loss, {}
        out = decoding.greedy_decode(model, params, batch.features, max_len=S, eos_id=tasks.EOS,
                                     sos_id=tasks.SOS, pad_id=tasks.PAD)
        return loss, {"accuracy": exact_match(out, batch.tgt_out)}

    @jax.jit
    def draw(k, x, y):               # the images are arguments, not constants baked into the program
        idx = jax.random.randint(k, (cfg.batch_size,), 0, y.shape[0])
        return CaptionBatch(x[idx], names_in[y[idx]], names_out[y[idx]])

    test = CaptionBatch(data.x_test[..., 0], names_in[data.y_test], names_out[data.y_test])

    def examples(params):
        out = decoding.greedy_decode(model, params, test.features[:cfg.num_examples], max_len=S,
                                     eos_id=tasks.EOS, sos_id=tasks.SOS, pad_id=tasks.PAD)
        return [{"input": f"image of a {int(data.y_test[i])}", "target": DIGIT_NAMES[int(data.y_test[i])],
                 "output": tasks.decode_chars(out[i])} for i in range(out.shape[0])]
    return dict(model=model, loss_fn=loss_fn, data_fn=lambda k: draw(k, x_train, y_train), eval_batch=test,
                steps=cfg.steps, chance=tasks.majority_accuracy(data.y_test), examples=examples)


def many_to_one(cfg: Config, key) -> dict:
    model = models.sequence_model(models.SequenceModelConfig(
        cell=cfg.cell, hidden_size=cfg.hidden_size, output_size=2, vocab_size=len(tasks.SENTIMENT_VOCAB),
        embed_size=cfg.embed_size, readout="last"))

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.x, lengths=batch.lengths)                       # (B, 2)
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.accuracy(logits, batch.y)}

    test = tasks.sentiment(key, cfg.eval_size, max_clauses=cfg.max_clauses)

    def examples(params):
        n = cfg.num_examples
        pred = np.argmax(np.asarray(model.apply(params, test.x[:n], lengths=test.lengths[:n])), axis=-1)
        x, y, lengths = (np.asarray(a) for a in (test.x, test.y, test.lengths))
        return [{"input": " ".join(tasks.SENTIMENT_VOCAB[t] for t in x[i, :lengths[i]]),
                 "target": ("negative", "positive")[y[i]], "output": ("negative", "positive")[pred[i]]}
                for i in range(len(pred))]
    return dict(model=model, loss_fn=loss_fn, steps=cfg.steps, eval_batch=test,
                data_fn=lambda k: tasks.sentiment(k, cfg.batch_size, max_clauses=cfg.max_clauses),
                chance=tasks.majority_accuracy(test.y), examples=examples)


def aligned(cfg: Config, key) -> dict:
    model = models.sequence_model(models.SequenceModelConfig(
        cell=cfg.cell, hidden_size=cfg.hidden_size, output_size=2, input_size=1, readout="all"))

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.x)                                              # (B, T, 2)
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.accuracy(logits, batch.y)}

    test = tasks.running_parity(key, cfg.eval_size, length=cfg.parity_length)

    def examples(params):
        pred = np.argmax(np.asarray(model.apply(params, test.x[:cfg.num_examples])), axis=-1)
        bits = lambda row: "".join(str(int(b)) for b in np.asarray(row).reshape(-1))      # noqa: E731
        return [{"input": bits(test.x[i]), "target": bits(test.y[i]), "output": bits(pred[i])}
                for i in range(len(pred))]
    return dict(model=model, loss_fn=loss_fn, steps=cfg.steps, eval_batch=test,
                data_fn=lambda k: tasks.running_parity(k, cfg.batch_size, length=cfg.parity_length),
                chance=tasks.running_parity_baseline(), examples=examples)


def unaligned(cfg: Config, key) -> dict:
    V, S = len(tasks.DATE_VOCAB), tasks.DATE_TARGET_LENGTH
    model = seq2seq.seq2seq(seq2seq.Seq2SeqConfig(V, V, embed_size=cfg.embed_size, hidden_size=cfg.hidden_size,
                                                  cell=cfg.cell, attention="general"))

    def decode(params, batch):
        return decoding.greedy_decode(model, params, batch.src, max_len=S, eos_id=tasks.EOS, sos_id=tasks.SOS,
                                      pad_id=tasks.PAD, src_lengths=batch.src_lengths)

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths)
        loss = losses.cross_entropy(logits, batch.tgt_out, ignore_id=tasks.PAD)
        if key is not None:
            return loss, {}
        return loss, {"accuracy": exact_match(decode(params, batch), batch.tgt_out)}

    test = tasks.seq2seq_dates(key, cfg.eval_size)      # fresh draws; a date may also occur in training

    def examples(params):
        out = decode(params, jax.tree.map(lambda a: a[:cfg.num_examples], test))
        return [{"input": tasks.decode_chars(test.src[i]), "target": tasks.decode_chars(test.tgt_out[i]),
                 "output": tasks.decode_chars(out[i])} for i in range(out.shape[0])]
    return dict(model=model, loss_fn=loss_fn, steps=cfg.dates_steps, eval_batch=test,
                data_fn=lambda k: tasks.seq2seq_dates(k, cfg.batch_size), chance=majority_string(test.tgt_out),
                examples=examples)


BUILD = {"one_to_many": one_to_many, "many_to_one": many_to_one, "aligned": aligned, "unaligned": unaligned}


def run_one(task: str, cfg: Config, progress: bool) -> tuple[dict, list[dict], list[dict]]:
    """Train on ``task``; returns (result row, held-out curve rows, example rows)."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), TASKS.index(task))
    k_model, k_train, k_data, k_test = jax.random.split(key, 4)
    spec = BUILD[task](cfg, k_test)
    trainer = train.trainer(spec["loss_fn"], train.make_optimizer("adam", cfg.lr), clip_norm=cfg.clip_norm)
    state = trainer.init(spec["model"].init(k_model), k_train)
    start = time.perf_counter()
    result = train.fit(trainer, state, lambda step: spec["data_fn"](jax.random.fold_in(k_data, step)),
                       num_steps=spec["steps"], eval_batches=[spec["eval_batch"]], eval_every=cfg.eval_every,
                       log_every=cfg.eval_every, progress=progress, description=task)
    seconds = time.perf_counter() - start
    curve = [{"task": task, "step": r["step"], "accuracy": r["accuracy"], "loss": r["loss"]}
             for r in result.history if r["split"] == "eval"]
    row = {"task": task, "title": TITLES[task], "metric": METRICS[task], "steps": spec["steps"],
           "held_out": curve[-1]["accuracy"], "chance": spec["chance"],
           "params": sum(x.size for x in jax.tree.leaves(result.state.params)), "seconds": round(seconds, 1)}
    examples = [{"task": task, **e} for e in spec["examples"](result.state.params)]
    return row, curve, examples


def plot(out_dir) -> Path:
    """task_types.png from curves.csv and results.csv (never recomputes)."""
    out_dir = Path(out_dir)
    cell = io.load_json(out_dir / "config.json")["cell"]
    results = {r["task"]: r for r in io.load_csv(out_dir / "results.csv")}
    panels, ylabel, chance = {}, {}, {}
    for r in io.load_csv(out_dir / "curves.csv"):
        title = results[r["task"]]["title"]
        steps, values = panels.setdefault(title, {}).setdefault(f"{cell}, held-out", ([], []))
        steps.append(int(r["step"]))
        values.append(float(r["accuracy"]))
        ylabel[title], chance[title] = results[r["task"]]["metric"], float(results[r["task"]]["chance"])
    fig = plotting.learning_curves_figure(panels, ylabel=ylabel, baseline=chance, xlabel="training step")
    return io.save_figure(fig, out_dir / "task_types.png", dpi=120)


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "task_types")
    parser.add_argument("--no-progress", action="store_true")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)         # a bad flag is a usage error naming it
    out_dir = io.ensure_writable_dir(args.out)                                # before any compute
    io.save_json(out_dir / "config.json", {**dataclasses.asdict(cfg), "backend": jax.default_backend()})
    start = time.perf_counter()
    rows, curves, examples = [], [], []
    for task in cfg.tasks:
        row, curve, ex = run_one(task, cfg, not args.no_progress)
        rows.append(row)
        curves += curve
        examples += ex
        print(f"{task:>12}: held-out {row['metric']} {row['held_out']:.1%} (chance {row['chance']:.1%}) "
              f"in {row['seconds']:.0f}s", flush=True)
    io.save_csv(out_dir / "results.csv", rows)
    io.save_csv(out_dir / "curves.csv", curves)
    io.save_csv(out_dir / "examples.csv", examples)
    print(f"{time.perf_counter() - start:.0f}s; figure: {plot(out_dir)}")
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
