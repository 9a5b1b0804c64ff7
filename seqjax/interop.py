"""Interoperability with PyTorch and Flax.

``from_torch(module) -> (layer, params)`` converts a PyTorch module into a seqjax
layer that computes the same function with seqjax's conventions (batch-major
inputs, boolean masks True = attend):

- ``torch.nn.RNN``, ``LSTM``, ``GRU``: any ``num_layers``, ``bidirectional``,
  ``bias``, ``batch_first`` and ``nonlinearity``. The returned
  :class:`~seqjax.recurrent.Recurrent` layer is always batch-major: feed it
  ``x`` of shape (B, T, E) whatever the module's ``batch_first`` was.
  ``proj_size > 0`` is not supported. The module's inter-layer ``dropout`` is
  carried over; as for every recurrent layer, a rate > 0 then needs
  ``dropout_key=`` (training) or ``deterministic=True`` (evaluation, what
  ``module.eval()`` computes).
- ``torch.nn.MultiheadAttention`` and the ``Transformer*`` modules (see
  :mod:`seqjax._torch_transformer`): deterministic unless given a dropout key.

Torch is imported lazily; without it, :func:`from_torch` tells the user which
extra to install.

``FlaxLayer`` wraps any seqjax component with ``init``/``apply`` as a
``flax.linen.Module`` whose params live under the module's own scope.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from seqjax import cells, recurrent
from seqjax._torch_transformer import CONVERTERS, to_jax
from seqjax.types import Array, Params

__all__ = ["from_torch", "FlaxLayer", "flax_cell_params"]


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError("seqjax.interop.from_torch needs PyTorch: install the extra with "
                          "`pip install 'seqjax[torch]'` (CPU: `pip install torch`)") from err
    return torch


def _rnn_from_torch(module) -> tuple[recurrent.Recurrent, Params]:
    """torch.nn.RNN / LSTM / GRU -> (Recurrent layer, params)."""
    kind = type(module).__name__
    if getattr(module, "proj_size", 0):
        raise ValueError(f"torch.nn.LSTM with proj_size={module.proj_size} is not supported by "
                         "seqjax: only proj_size=0 converts")
    name = {"LSTM": "lstm", "GRU": "gru"}.get(kind) or f"rnn_{module.nonlinearity}"
    cell = cells.make(name, module.hidden_size, bias=bool(module.bias))
    layer = recurrent.layer(cell, num_layers=module.num_layers, bidirectional=module.bidirectional,
                            dropout=module.dropout)
    directions = [("forward", "")] + ([("backward", "_reverse")] if module.bidirectional else [])
    layers = []
    for k in range(module.num_layers):
        entry = {}
        for name, suffix in directions:
            get = lambda w: getattr(module, f"{w}_l{k}{suffix}")  # noqa: E731
            p = {"w_ih": to_jax(get("weight_ih")).T, "w_hh": to_jax(get("weight_hh")).T}
            if module.bias:
                p["b_ih"] = to_jax(get("bias_ih"))
                p["b_hh"] = to_jax(get("bias_hh"))
            entry[name] = p
        layers.append(entry)
    return layer, {"layers": layers}


_RECURRENT = {"RNN": _rnn_from_torch, "LSTM": _rnn_from_torch, "GRU": _rnn_from_torch}


def _converters() -> dict[str, Callable[[Any], tuple[Any, Params]]]:
    return {**_RECURRENT, **CONVERTERS}


def from_torch(module) -> tuple[Any, Params]:
    """Convert a PyTorch module into ``(layer, params)`` computing the same function.

    Args:
      module: a ``torch.nn.RNN``, ``LSTM``, ``GRU``, ``MultiheadAttention``,
        ``TransformerEncoderLayer``, ``TransformerDecoderLayer``,
        ``TransformerEncoder``, ``TransformerDecoder`` or ``Transformer``.

    Returns:
      ``(layer, params)``: a seqjax component and its params (float32 arrays
      copied from the module's weights).

    Raises:
      ImportError: PyTorch is not installed.
      TypeError: ``module`` is not one of the supported classes.
      ValueError: an unsupported configuration (e.g. ``proj_size > 0``).
    """
    torch = _require_torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    converters = _converters()
    kind = type(module).__name__
    if kind not in converters:
        raise TypeError(f"from_torch does not convert {kind}; supported: {sorted(converters)}")
    return converters[kind](module)


# ----------------------------------------------------------------------------- Flax


class FlaxLayer(nn.Module):
    """A seqjax recurrent layer (anything with ``init(key, input_size, dtype)`` and
    ``apply(params, x, **kwargs)``, such as :func:`seqjax.recurrent.layer`) as a
    ``flax.linen.Module``.

    The component's params live under this module's scope as one param named
    ``"params"``, so they are saved, updated and partitioned with the rest of the
    Flax model. Call it like the component's ``apply`` without params::

        class Model(nn.Module):
            @nn.compact
            def __call__(self, x, lengths):
                outputs, _ = FlaxLayer(recurrent.layer(cells.lstm(32)))(x, lengths=lengths)
                return nn.Dense(1)(outputs[:, -1])

    Attributes:
      layer: the seqjax component, e.g. a :class:`~seqjax.recurrent.Recurrent`.
      param_dtype: dtype of the created params.
    """

    layer: Any
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, **kwargs):
        params = self.param("params", lambda key: self.layer.init(key, x.shape[-1], self.param_dtype))
        return self.layer.apply(params, x, **kwargs)


def flax_cell_params(flax_params: Params, kind: str) -> Params:
    """Map the params of a Flax linen cell to the seqjax cell computing the same function.

    Args:
      flax_params: the ``params`` collection of ``nn.SimpleCell``, ``nn.LSTMCell`` or
        ``nn.GRUCell`` (keys ``"i"``/``"h"``; ``"ii","if",...``; ``"ir","iz",...``).
      kind: ``"simple"``, ``"lstm"`` or ``"gru"``.

    Returns:
      seqjax cell params ``{"w_ih", "w_hh", "b_ih", "b_hh"}`` (absent Flax biases
      become zeros). Note Flax's LSTM carry is ``(c, h)``; seqjax's is ``LSTMState(h, c)``.
    """
    p = flax_params.get("params", flax_params)

    def dense(name, width):
        kernel = p[name]["kernel"]
        bias = p[name].get("bias", jnp.zeros((width,), kernel.dtype))
        return kernel, bias

    gates = {"simple": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
    if kind not in gates:
        raise ValueError(f"kind must be one of {sorted(gates)}, got {kind!r}")
    H = p["h" + gates[kind][0]]["kernel"].shape[-1]
    ih = [dense("i" + g, H) for g in gates[kind]]
    hh = [dense("h" + g, H) for g in gates[kind]]
    return {"w_ih": jnp.concatenate([k for k, _ in ih], -1), "w_hh": jnp.concatenate([k for k, _ in hh], -1),
            "b_ih": jnp.concatenate([b for _, b in ih], -1), "b_hh": jnp.concatenate([b for _, b in hh], -1)}
