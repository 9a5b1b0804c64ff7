"""seqjax: pure-function recurrent, attention and Transformer sequence models in JAX.

Modules (import what you need)::

    seqjax.cells       RNN / LSTM / GRU cells, PyTorch's equations
    seqjax.recurrent   the one scan unroll; multi-layer, bidirectional, variable-length layers
    seqjax.interop     from_torch, the Flax linen adapter
    seqjax.io          atomic writers for results
"""

from seqjax import cells, interop, io, recurrent, types

__all__ = ["cells", "interop", "io", "recurrent", "types"]
__version__ = "0.1.0"
