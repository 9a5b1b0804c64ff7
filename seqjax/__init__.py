"""seqjax: pure-function recurrent, attention and Transformer sequence models in JAX.

Modules (``import seqjax`` loads each one on first use)::

    seqjax.cells        RNN / LSTM / GRU cells, PyTorch's equations
    seqjax.recurrent    the one scan unroll; multi-layer, bidirectional, variable-length layers
    seqjax.attention    scaled dot-product and multi-head attention, masks, Bahdanau and Luong
    seqjax.transformer  positional encodings, Post-/Pre-LN blocks, models, KV-cache decoding, beam search
    seqjax.gradients    per-step state gradients, Jacobian norms, gradient statistics
    seqjax.tasks        adding, copying memory, digits, grammar, parity, char LM, seq2seq samplers
    seqjax.models       small sequence models for the tasks
    seqjax.train        pure train_step / eval_step, fit() with checkpoints, resume, data parallelism
    seqjax.interop      from_torch, the Flax linen adapter
    seqjax.plotting     figures from saved results
    seqjax.io           atomic writers for results
"""

import importlib

__all__ = ["attention", "cells", "gradients", "interop", "io", "models", "plotting", "recurrent",
           "tasks", "train", "transformer", "types"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"seqjax.{name}")
    raise AttributeError(f"module 'seqjax' has no attribute {name!r}")
