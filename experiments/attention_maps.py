"""Attention heatmaps of held-out examples: RNN seq2seq on reversal and dates, every Transformer head on copying.

Trains an RNN seq2seq with attention on reversal (the alignment should be the
anti-diagonal) and on date normalisation, and an encoder-decoder Transformer on the
copy task; decodes held-out sources greedily and saves the attention weights of those
decodes (attention.npz) with metrics.json (exact match, and the attention mass on the
expected alignment: the mirrored source position for reversal, the same position for
each Transformer cross-attention head on copying). Then plots attention_maps.png and
transformer_attention_maps.png from the saved file only.

    python experiments/attention_maps.py                       # ~3 min on 2 cores
    python experiments/attention_maps.py --quick --out /tmp/am
"""

from __future__ import annotations

import dataclasses
import math
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
from seqjax import attention as attn
from seqjax import cells, decoding, io, layers, losses, plotting, seq2seq, tasks, train
from seqjax import transformer as tfm

QUICK = dict(reverse_steps=20, dates_steps=20, copy_steps=20, batch_size=16, hidden_size=16, embed_size=8,
             model_size=16, num_heads=2, ff_size=32, num_layers=1, warmup=5, eval_size=32, length=6)
KINDS = ("encoder self-attention", "decoder self-attention", "decoder cross-attention")


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved experiment configuration (saved as config.json)."""

    length: int = 10                     # reversal (1 .. length tokens) and copy (length tokens)
    vocab_size: int = 11                 # PAD, SOS, EOS and 8 symbols
    cell: str = "gru"
    embed_size: int = 32
    hidden_size: int = 64
    bidirectional: bool = True
    attention: str = "general"
    model_size: int = 64
    num_heads: int = 4
    ff_size: int = 128
    num_layers: int = 2
    reverse_steps: int = 1500
    dates_steps: int = 2500
    copy_steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    clip_norm: float = 1.0
    eval_size: int = 512
    num_examples: int = 3
    seed: int = 0

    def __post_init__(self):
        for name in ("length", "embed_size", "hidden_size", "model_size", "num_heads", "ff_size", "num_layers",
                     "reverse_steps", "dates_steps", "copy_steps", "batch_size", "warmup", "eval_size",
                     "num_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < tasks.NUM_SPECIALS + 1:
            raise ValueError(f"vocab_size must be >= {tasks.NUM_SPECIALS + 1}, got {self.vocab_size}")
        if self.cell not in cells.CELL_NAMES:
            raise ValueError(f"cell must be one of {list(cells.CELL_NAMES)}, got {self.cell!r}")
        if self.attention not in seq2seq.ATTENTION or self.attention == "none":
            raise ValueError(f"attention must be one of {[a for a in seq2seq.ATTENTION if a != 'none']}, "
                             f"got {self.attention!r}")
        if self.model_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide model_size ({self.model_size})")
        if self.num_examples > self.eval_size:
            raise ValueError(f"num_examples ({self.num_examples}) must be <= eval_size ({self.eval_size})")
        if not self.lr > 0 or not self.clip_norm > 0:
            raise ValueError(f"lr and clip_norm must be > 0, got {self.lr} and {self.clip_norm}")
        if self.warmup >= min(self.reverse_steps, self.dates_steps, self.copy_steps):
            raise ValueError(f"warmup ({self.warmup}) must be < every *_steps")


def fit(model, data_fn, steps: int, cfg: Config, name: str, stream: int, progress: bool):
    """Params after ``steps`` of Adam (warm-up, cosine decay to lr/10, clipping) on teacher-forced
    cross-entropy; ``stream`` picks the run's keys."""
    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.src, batch.tgt_in, src_lengths=batch.src_lengths)
        return losses.cross_entropy(logits, batch.tgt_out, ignore_id=tasks.PAD), {}

    schedule = train.make_schedule("warmup_cosine", cfg.lr, total_steps=steps, warmup_steps=cfg.warmup,
                                   end_fraction=0.1)
    trainer = train.trainer(loss_fn, optax.adam(schedule), clip_norm=cfg.clip_norm)
    key = jax.random.fold_in(jax.random.key(cfg.seed), stream)
    k_data = jax.random.fold_in(key, 1)
    state = trainer.init(model.init(jax.random.fold_in(key, 0)), jax.random.fold_in(key, 2))
    result = train.fit(trainer, state, lambda s: data_fn(jax.random.fold_in(k_data, s)), num_steps=steps,
                       log_every=max(1, steps // 20), progress=progress, description=name)
    return result.state.params


def greedy(model, params, batch: tasks.Seq2SeqBatch) -> np.ndarray:
    """Greedy decodes (B, S) as long as the targets (EOS included)."""
    return np.asarray(jax.jit(lambda p, s, n: decoding.greedy_decode(
        model, p, s, max_len=batch.tgt_out.shape[1], eos_id=tasks.EOS, sos_id=tasks.SOS, pad_id=tasks.PAD,
        src_lengths=n))(params, batch.src, batch.src_lengths))


def decoder_inputs(out: np.ndarray) -> np.ndarray:
    """[SOS, out[:-1]]: feeding a model its own greedy output reproduces the decode step by step."""
    return np.concatenate([np.full((out.shape[0], 1), tasks.SOS, out.dtype), out[:, :-1]], axis=1)


def output_lengths(out: np.ndarray) -> np.ndarray:
    """Generated tokens up to and including the first EOS (all of them when there is none)."""
    eos = out == tasks.EOS
    return np.where(eos.any(axis=1), eos.argmax(axis=1) + 1, out.shape[1])


def rnn_maps(task: str, cfg: Config, progress: bool) -> tuple[dict, dict]:
    """Train a seq2seq on ``task`` ("reverse" or "dates"); (arrays of held-out examples, metrics)."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), 100)       # held-out: a stream training never uses
    if task == "reverse":
        V, steps = cfg.vocab_size, cfg.reverse_steps
        data_fn = lambda k: tasks.seq2seq_reverse(k, cfg.batch_size, length=cfg.length,   # noqa: E731
                                                  vocab_size=V, min_length=1)
        held_out = tasks.seq2seq_reverse(key, cfg.eval_size, length=cfg.length, vocab_size=V, min_length=1)
    else:
        V, steps = len(tasks.DATE_VOCAB), cfg.dates_steps
        data_fn = lambda k: tasks.seq2seq_dates(k, cfg.batch_size)                         # noqa: E731
        held_out = tasks.seq2seq_dates(key, cfg.eval_size)
    model = seq2seq.seq2seq(seq2seq.Seq2SeqConfig(
        V, V, embed_size=cfg.embed_size, hidden_size=cfg.hidden_size, cell=cfg.cell,
        bidirectional=cfg.bidirectional, attention=cfg.attention))
    params = fit(model, data_fn, steps, cfg, f"seq2seq {task}", ("reverse", "dates").index(task), progress)
    out = greedy(model, params, held_out)
    _, weights = model.apply(params, held_out.src, jnp.asarray(decoder_inputs(out)),
                             src_lengths=held_out.src_lengths, return_attention=True)   # (B, S, T)
    weights, src_len, out_len = np.asarray(weights), np.asarray(held_out.src_lengths), output_lengths(out)
    metrics = {"exact": float(np.mean(np.all(out == np.asarray(held_out.tgt_out), axis=1)))}
    if task == "reverse":
        # output step s of a correct reversal copies source position len - 1 - s
        mass = [weights[b, s, src_len[b] - 1 - s] for b in range(len(src_len)) for s in range(src_len[b])]
        metrics["anti_diagonal_mass"] = float(np.mean(mass))
    # the examples drawn: the longest sources (reversal), the first ones (dates)
    order = np.argsort(-src_len, kind="stable") if task == "reverse" else np.arange(len(src_len))
    pick = order[:cfg.num_examples]
    arrays = {"src": np.asarray(held_out.src)[pick], "src_lengths": src_len[pick], "out": out[pick],
              "out_lengths": out_len[pick], "weights": weights[pick]}
    return arrays, metrics


def transformer_attention(model: tfm.Transformer, params, src, tgt_in, src_lengths) -> dict:
    """Every attention weight of a teacher-forced Transformer pass, per layer and head.

    :class:`seqjax.transformer.Transformer` returns no attention weights, so they are
    recomputed here from its params with public pieces (the multi-head attention of
    :mod:`seqjax.attention`, the layer norms and dense layers of :mod:`seqjax.layers`),
    following the block equations in :mod:`seqjax.transformer`'s docstring. Each
    recomputed layer output is checked against the library's own ``Layer.apply`` and
    the logits against ``model.apply``, so a drift in the blocks fails loudly here.

    Returns:
      ``{"encoder": (L, B, N, T, T), "decoder": (L, B, N, S, S), "cross": (L, B, N, S, T)}``.
    """
    cfg = model.config
    D, eps = cfg.model_size, cfg.layer_norm_eps
    mha = attn.multi_head_attention(cfg.num_heads, D)          # the blocks' layout and scaling
    pos = tfm.positional_encoding(cfg.positional, cfg.max_len, D)
    enc_layer = tfm.encoder_layer(cfg.stack(cfg.num_encoder_layers))
    dec_layer = tfm.decoder_layer(cfg.stack(cfg.num_decoder_layers))
    T, S = src.shape[1], tgt_in.shape[1]
    src_mask = attn.padding_mask(src_lengths, T)                                      # (B, 1, 1, T)
    tgt_mask = attn.causal_mask(S)                                                    # (1, 1, S, S)

    def residual(norm_p, x, sublayer, *args, **kwargs):
        """Post-LN LN(x + f(x)) or Pre-LN x + f(LN(x)), f = sublayer(., *args, **kwargs);
        returns (output, f's attention weights)."""
        if cfg.norm_first:
            y, w = sublayer(layers.layer_norm(norm_p, x, eps), *args, **kwargs)
            return x + y, w
        y, w = sublayer(x, *args, **kwargs)
        return layers.layer_norm(norm_p, x + y, eps), w

    def attend(q, p, memory=None, *, mask):
        return mha.apply(p, q, memory, memory, mask=mask, return_weights=True)   # self-attention: memory None

    def ff(x, p):
        return layers.dense(p["linear2"], layers.ACTIVATIONS[cfg.activation](layers.dense(p["linear1"], x))), None

    def final(stack_p, x):
        return layers.layer_norm(stack_p["norm"], x, eps) if cfg.final_norm else x

    def check(mine, library, what):
        if not np.allclose(np.asarray(mine), np.asarray(library), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"recomputed {what} differs from the library's; the Transformer blocks "
                               "changed, update transformer_attention")

    def embed(name, tokens):
        return layers.embed(params[name], tokens, scale=math.sqrt(D))                # (B, ., D)

    x = pos.apply(params["src_pos"], embed("src_embed", src))                         # (B, T, D)
    enc_w = []
    for p in params["encoder"]["layers"]:
        h, w = residual(p["norm1"], x, attend, p["self_attn"], mask=src_mask)
        h, _ = residual(p["norm2"], h, ff, p["ff"])
        check(h, enc_layer.apply(p, x, mask=src_mask), "encoder layer")
        x = h
        enc_w.append(w)                                                               # (B, N, T, T)
    memory = final(params["encoder"], x)
    check(memory, model.encode(params, src, src_lengths=src_lengths), "encoder output")
    y = pos.apply(params["tgt_pos"], embed("src_embed" if cfg.share_embeddings else "tgt_embed", tgt_in))
    dec_w, cross_w = [], []
    for p in params["decoder"]["layers"]:
        h, ws = residual(p["norm1"], y, attend, p["self_attn"], mask=tgt_mask)
        h, wc = residual(p["norm2"], h, attend, p["cross_attn"], memory, mask=src_mask)
        h, _ = residual(p["norm3"], h, ff, p["ff"])
        check(h, dec_layer.apply(p, y, memory, tgt_mask=tgt_mask, memory_mask=src_mask), "decoder layer")
        y = h
        dec_w.append(ws)                                                              # (B, N, S, S)
        cross_w.append(wc)                                                            # (B, N, S, T)
    out = params["output"]
    h = final(params["decoder"], y)
    logits = (layers.dense(out, h) if "kernel" in out else
              h @ params["src_embed" if cfg.share_embeddings else "tgt_embed"]["embedding"].T + out["bias"])
    check(logits, model.apply(params, src, tgt_in, src_lengths=src_lengths), "logits")
    return {"encoder": np.stack(enc_w), "decoder": np.stack(dec_w), "cross": np.stack(cross_w)}


def transformer_maps(cfg: Config, progress: bool) -> tuple[dict, dict]:
    """Train a Transformer on copying; (arrays of held-out examples, metrics)."""
    model = tfm.transformer(tfm.TransformerConfig(
        cfg.vocab_size, cfg.vocab_size, model_size=cfg.model_size, num_heads=cfg.num_heads, ff_size=cfg.ff_size,
        num_encoder_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, dropout=0.0,
        max_len=cfg.length + 1, tie_embeddings=True, share_embeddings=True))
    data_fn = lambda k: tasks.seq2seq_copy(k, cfg.batch_size, length=cfg.length,        # noqa: E731
                                           vocab_size=cfg.vocab_size)
    params = fit(model, data_fn, cfg.copy_steps, cfg, "transformer copy", 2, progress)
    held_out = tasks.seq2seq_copy(jax.random.fold_in(jax.random.key(cfg.seed), 101), cfg.eval_size,
                                  length=cfg.length, vocab_size=cfg.vocab_size)
    out = greedy(model, params, held_out)
    w = transformer_attention(model, params, held_out.src, jnp.asarray(decoder_inputs(out)),
                              held_out.src_lengths)
    # output step s of a correct copy reads source position s
    diag = np.mean(np.diagonal(w["cross"][..., :cfg.length, :], axis1=-2, axis2=-1), axis=(1, 3))   # (L, N)
    metrics = {"exact": float(np.mean(np.all(out == np.asarray(held_out.tgt_out), axis=1))),
               "cross_attention_diagonal_mass": diag.tolist()}
    n = cfg.num_examples
    arrays = {"src": np.asarray(held_out.src)[:n], "src_lengths": np.asarray(held_out.src_lengths)[:n],
              "out": out[:n], "out_lengths": output_lengths(out)[:n],
              **{f"weights_{k}": v[:, :n] for k, v in w.items()}}
    return arrays, metrics


def _labels(tokens, vocab=None) -> list[str]:
    """Tick labels: characters for dates ("_" for a space), letters a, b, ... for the symbols 3, 4, ...
    of the synthetic tasks."""
    specials = {tasks.PAD: "<pad>", tasks.SOS: "<sos>", tasks.EOS: "<eos>"}
    if vocab is not None:
        return [specials.get(int(t)) or vocab[int(t)].replace(" ", "_") for t in tokens]
    return [specials.get(int(t)) or chr(ord("a") + int(t) - tasks.NUM_SPECIALS) for t in tokens]


def plot(out_dir) -> list[Path]:
    """attention_maps.png and transformer_attention_maps.png from attention.npz and metrics.json
    (never recomputes)."""
    out_dir = Path(out_dir)
    m = io.load_json(out_dir / "metrics.json")
    with np.load(out_dir / "attention.npz") as z:
        a = {k: z[k] for k in z.files}
    rows = []
    for task, vocab, title in (("reverse", None, "reversal"), ("dates", tasks.DATE_VOCAB, "dates")):
        row = []
        for i in range(len(a[f"{task}_src"])):
            T, S = int(a[f"{task}_src_lengths"][i]), int(a[f"{task}_out_lengths"][i])
            row.append(plotting.AttentionMap(a[f"{task}_weights"][i, :S, :T],
                                             _labels(a[f"{task}_src"][i, :T], vocab),
                                             _labels(a[f"{task}_out"][i, :S], vocab),
                                             f"{title}, held-out example {i + 1}"))
        rows.append(row)
    fig = plotting.attention_maps_figure(
        rows, xlabel="source", ylabel="greedy output",
        title=f"RNN seq2seq with attention: reversal (held-out exact match {m['reverse']['exact']:.0%}, "
              f"{m['reverse']['anti_diagonal_mass']:.1%} of the weight on the mirrored position), "
              f"dates ({m['dates']['exact']:.0%})")
    paths = [io.save_figure(fig, out_dir / "attention_maps.png", dpi=110)]
    T, S = int(a["copy_src_lengths"][0]), int(a["copy_out_lengths"][0])
    src, out = _labels(a["copy_src"][0, :T]), _labels(a["copy_out"][0, :S])
    dec_in = ["<sos>"] + out[:-1]
    rows = []
    for kind, name, (xs, ys) in zip(KINDS, ("encoder", "decoder", "cross"),
                                    ((src, src), (dec_in, out), (src, out))):
        w = a[f"copy_weights_{name}"]                                                 # (L, n, N, Tq, Tk)
        for layer in range(w.shape[0]):
            rows.append([plotting.AttentionMap(w[layer, 0, h, :len(ys), :len(xs)], xs, ys,
                                               f"{kind}\nlayer {layer + 1}, head {h + 1}")
                         for h in range(w.shape[2])])
    fig = plotting.attention_maps_figure(
        rows, xlabel="attended position", ylabel="query position",
        title=f"Transformer on copying, one held-out example (held-out exact match {m['copy']['exact']:.0%})")
    paths.append(io.save_figure(fig, out_dir / "transformer_attention_maps.png", dpi=110))
    return paths


def main(argv=None) -> Path:
    parser = _common.parser(Config, __doc__, "attention_maps")
    parser.add_argument("--no-progress", action="store_true")
    values, args = _common.parse(parser, argv, quick=QUICK)
    cfg = _common.config(parser, Config, values)         # a bad flag is a usage error naming it
    out_dir = io.ensure_writable_dir(args.out)                                # before any compute
    io.save_json(out_dir / "config.json", {**dataclasses.asdict(cfg), "backend": jax.default_backend()})
    start = time.perf_counter()
    arrays, metrics = {}, {}
    runs = {"reverse": lambda: rnn_maps("reverse", cfg, not args.no_progress),
            "dates": lambda: rnn_maps("dates", cfg, not args.no_progress),
            "copy": lambda: transformer_maps(cfg, not args.no_progress)}
    for name, run in runs.items():
        a, m = run()
        arrays.update({f"{name}_{k}": v for k, v in a.items()})
        metrics[name] = m
        print(f"{name}: {m}", flush=True)
    io.save_npz(out_dir / "attention.npz", **arrays)
    io.save_json(out_dir / "metrics.json", {**metrics, "seconds": round(time.perf_counter() - start, 1)})
    print(f"figures: {[str(p) for p in plot(out_dir)]}")
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
