"""Type aliases and the one glossary of dimension letters used in every signature.

Dimension letters:
    B   batch                          W   beams per sequence (beam search)
    T   source time (sequence length)  S   target time (decoder inputs or outputs)
    Tq  query positions (attention)    Tk  key/value positions (attention)
    P   prompt length (decoding)       N   attention heads
    E   input features (PyTorch's I)   H   hidden units of a recurrent cell
    D   model width (Transformers)     K   head dimension (D // N); Kv for values
    Eq, Ek, Ev  query, key and value input widths of an attention layer
    Do  the output width of an attention layer
    F   feed-forward hidden width      A   additive-attention (Bahdanau) width
    V   vocabulary size (Vs source, Vt target)
    C   classes or regression outputs  G   stacked gates (1 RNN, 4 LSTM, 3 GRU)
    L   layers                         L*D layers times directions (PyTorch's h_n layout)

Shapes are written in docstrings as ``(B, T, E)``; ``...`` means any batch shape.
Where many ranks meet, names carry their shape as a suffix (``att_BxNxQxT``).
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays: nested dicts with documented key names
Carry = Any  # an array or a NamedTuple of arrays (e.g. LSTMState)
Shape = tuple[int, ...]
DType = Any
