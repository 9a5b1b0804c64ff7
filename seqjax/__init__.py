"""seqjax: pure-function recurrent, attention and Transformer sequence models in JAX.

Modules (``import seqjax`` loads each one on first use)::

    seqjax.types        array aliases and the glossary of dimension letters
    seqjax.checks       every validation rule of the public boundary, once
    seqjax.layers       dense, embedding, layer norm, dropout, activations, initialisers
    seqjax.losses       cross-entropy, accuracy, mean squared error
    seqjax.precision    mixed precision: the Policy (params / compute / output dtypes), what stays float32
    seqjax.cells        RNN / IRNN / LSTM / GRU cells (PyTorch's equations); cells.make, the registry
    seqjax.recurrent    the one scan unroll; multi-layer, bidirectional, variable-length layers
    seqjax.attention    scaled dot-product and multi-head attention, masks, Bahdanau and Luong
    seqjax.transformer  positional encodings, Post-/Pre-LN blocks, models, KV-cache decode steps
    seqjax.decoding     greedy, beam search and sampling for any model with the decode protocol
    seqjax.models       small sequence models and the recurrent language model
    seqjax.gradients    per-step state gradients and Jacobian norms (analysis only)
    seqjax.tasks        adding, copying memory, digits, grammar, parity, char LM, seq2seq samplers
    seqjax.train        pure train_step / eval_step, optimisers, truncated BPTT, gradient metrics;
                        re-exports the loop (seqjax.loop: fit, checkpoints, data parallelism)
    seqjax.interop      from_torch, the Flax linen adapter
    seqjax.plotting     figures from saved results
    seqjax.io           atomic writers for results
"""

import importlib

__all__ = ["attention", "cells", "checks", "decoding", "gradients", "interop", "io", "layers", "loop",
           "losses", "models", "plotting", "precision", "recurrent", "tasks", "train", "transformer", "types"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"seqjax.{name}")
    raise AttributeError(f"module 'seqjax' has no attribute {name!r}")
