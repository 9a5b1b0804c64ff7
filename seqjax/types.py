"""Type aliases and the one glossary of dimension letters used in every signature.

Dimension letters:
    B  batch                    T  source time (sequence length)
    S  target time              E  input features
    H  hidden units             D  model width
    N  attention heads          K  head dimension (D // N)
    V  vocabulary size          L  layers
    G  stacked gates (1 RNN, 4 LSTM, 3 GRU)

Shapes are written in docstrings as ``(B, T, E)``; ``...`` means any batch shape.
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
