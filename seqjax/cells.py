"""Recurrent cells as pure functions over explicit parameter pytrees.

Every cell is a :class:`Cell`, a NamedTuple of pure functions made by a factory::

    cell = lstm(hidden_size=64)
    params = cell.init(key, input_size=16)           # nested dict of arrays
    carry = cell.initial_carry((batch,))              # zeros, shape (..., H)
    carry, y = cell.step(params, carry, x)            # x: (..., E) -> y: (..., H)

The equations and the parameter layout are PyTorch's (``torch.nn.RNN``, ``LSTM``,
``GRU``), with weights stored input-major so that a step is ``x @ w_ih``:

    ========  ==============  ==============  ========  ========
    key       shape           PyTorch         RNN G=1   LSTM G=4, GRU G=3
    ========  ==============  ==============  ========  ========
    w_ih      (E, G*H)        weight_ih.T     gate      gates stacked i,f,g,o / r,z,n
    w_hh      (H, G*H)        weight_hh.T
    b_ih      (G*H,)          bias_ih         present only when ``bias=True``
    b_hh      (G*H,)          bias_hh
    ========  ==============  ==============  ========  ========

Default initialisation is PyTorch's: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).

A step works on any batch shape in front of the feature axis and in the dtype of
its inputs (float32, bfloat16 or float64). Each step is also split into
``input_proj(params, x) -> xp`` (the part that does not depend on the carry) and
``recurrent_step(params, carry, xp)``, so that an unroll may compute the input
projection for all time steps at once.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.types import Array, Carry, DType, Params, PRNGKey, Shape

__all__ = ["Cell", "LSTMState", "simple_rnn", "lstm", "gru", "make", "CELL_NAMES", "ACTIVATIONS"]


class LSTMState(NamedTuple):
    """The LSTM carry. Fields in this order: ``h`` (..., H) and ``c`` (..., H)."""

    h: Array
    c: Array


class Cell(NamedTuple):
    """A recurrent cell: pure functions plus the static facts an unroll needs.

    Attributes:
      init: ``init(key, input_size, dtype=float32) -> params``.
      initial_carry: ``initial_carry(batch_shape, dtype=float32) -> carry`` of zeros,
        each leaf of shape ``(*batch_shape, H)``.
      step: ``step(params, carry, x) -> (carry, y)`` with x (..., E), y (..., H).
      input_proj: ``input_proj(params, x) -> xp``, x (..., E) -> xp (..., G*H).
      recurrent_step: ``recurrent_step(params, carry, xp) -> (carry, y)``.
      output: ``output(carry) -> y``, the hidden state h the cell exposes.
      hidden_size: H.
      name: ``"rnn_tanh"``, ``"rnn_relu"``, ``"rnn_linear"``, ``"lstm"`` or ``"gru"``.
      bias: whether ``b_ih`` and ``b_hh`` exist.
    """

    init: Callable[..., Params]
    initial_carry: Callable[..., Carry]
    step: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    input_proj: Callable[[Params, Array], Array]
    recurrent_step: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    output: Callable[[Carry], Array]
    hidden_size: int
    name: str
    bias: bool


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "linear": lambda a: a,
}


def _check_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_float_dtype(dtype, name: str = "dtype") -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype (float32, bfloat16, float64), got {dtype}")
    return dtype


def _uniform_init(key: PRNGKey, input_size: int, hidden_size: int, gates: int, bias: bool,
                  dtype: DType) -> Params:
    """PyTorch's default: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    input_size = _check_size(input_size, "input_size")
    dtype = _check_float_dtype(dtype)
    bound = 1.0 / math.sqrt(hidden_size)
    k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
    u = lambda k, shape: jax.random.uniform(k, shape, dtype, -bound, bound)  # noqa: E731
    params = {"w_ih": u(k_ih, (input_size, gates * hidden_size)),
              "w_hh": u(k_hh, (hidden_size, gates * hidden_size))}
    if bias:
        params["b_ih"] = u(k_bi, (gates * hidden_size,))
        params["b_hh"] = u(k_bh, (gates * hidden_size,))
    return params


def _input_proj(params: Params, x: Array) -> Array:
    """x (..., E) -> x @ w_ih + b_ih, (..., G*H)."""
    xp = x @ params["w_ih"]
    if "b_ih" in params:
        xp = xp + params["b_ih"]
    return xp


def _hidden_proj(params: Params, h: Array) -> Array:
    """h (..., H) -> h @ w_hh + b_hh, (..., G*H)."""
    hp = h @ params["w_hh"]
    if "b_hh" in params:
        hp = hp + params["b_hh"]
    return hp


def _zeros_carry(hidden_size: int):
    def initial_carry(batch_shape: Shape = (), dtype: DType = jnp.float32) -> Array:
        return jnp.zeros((*tuple(batch_shape), hidden_size), _check_float_dtype(dtype))
    return initial_carry


def _identity(carry: Array) -> Array:
    return carry


def _compose(input_proj, recurrent_step):
    def step(params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        return recurrent_step(params, carry, input_proj(params, x))
    return step


def simple_rnn(hidden_size: int, activation: str = "tanh", *, bias: bool = True) -> Cell:
    r"""Elman RNN cell (``torch.nn.RNN``).

    .. math::
        h' = \phi(x W_{ih} + b_{ih} + h W_{hh} + b_{hh}),\qquad y = h'

    with :math:`\phi` one of ``"tanh"``, ``"relu"`` or ``"linear"`` (identity; the
    analysable case of Pascanu et al. 2013). Params: ``w_ih`` (E, H), ``w_hh``
    (H, H), ``b_ih`` (H,), ``b_hh`` (H,). Carry: h (..., H).

    Args:
      hidden_size: H >= 1.
      activation: ``"tanh"``, ``"relu"`` or ``"linear"``.
      bias: whether the two bias vectors exist.
    """
    hidden_size = _check_size(hidden_size, "hidden_size")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        return _uniform_init(key, input_size, hidden_size, 1, bias, dtype)

    def recurrent_step(params: Params, h: Array, xp: Array) -> tuple[Array, Array]:
        h = act(xp + _hidden_proj(params, h))
        return h, h

    return Cell(init, _zeros_carry(hidden_size), _compose(_input_proj, recurrent_step),
                _input_proj, recurrent_step, _identity, hidden_size, f"rnn_{activation}", bias)


def lstm(hidden_size: int, forget_bias: float = 0.0, *, bias: bool = True) -> Cell:
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997; ``torch.nn.LSTM``).

    .. math::
        [i, f, g, o] &= x W_{ih} + b_{ih} + h W_{hh} + b_{hh} \\
        i, f, o &= \sigma(i), \sigma(f), \sigma(o),\qquad g = \tanh(g) \\
        c' &= f \odot c + i \odot g,\qquad h' = o \odot \tanh(c'),\qquad y = h'

    Gates are stacked **i, f, g, o** along the last axis of ``w_ih`` (E, 4H),
    ``w_hh`` (H, 4H), ``b_ih`` (4H,) and ``b_hh`` (4H,). The carry is
    :class:`LSTMState` ``(h, c)``.

    Args:
      hidden_size: H >= 1.
      forget_bias: added to the forget-gate slice of ``b_ih`` at initialisation
        (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1.0). The default 0.0
        keeps PyTorch's initialisation exactly. Requires ``bias=True`` if non-zero.
      bias: whether the two bias vectors exist.
    """
    hidden_size = _check_size(hidden_size, "hidden_size")
    forget_bias = float(forget_bias)
    if not math.isfinite(forget_bias):
        raise ValueError(f"forget_bias must be finite, got {forget_bias}")
    if forget_bias != 0.0 and not bias:
        raise ValueError("forget_bias != 0 needs bias=True: there is no bias to put it in")
    H = hidden_size

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        params = _uniform_init(key, input_size, H, 4, bias, dtype)
        if forget_bias:
            params["b_ih"] = params["b_ih"].at[H:2 * H].add(forget_bias)
        return params

    def initial_carry(batch_shape: Shape = (), dtype: DType = jnp.float32) -> LSTMState:
        zeros = _zeros_carry(H)(batch_shape, dtype)
        return LSTMState(h=zeros, c=zeros)

    def recurrent_step(params: Params, carry: LSTMState, xp: Array) -> tuple[LSTMState, Array]:
        gates = xp + _hidden_proj(params, carry.h)              # (..., 4H)
        i, f, g, o = jnp.split(gates, 4, axis=-1)               # each (..., H)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMState(h, c), h

    return Cell(init, initial_carry, _compose(_input_proj, recurrent_step), _input_proj,
                recurrent_step, lambda carry: carry.h, H, "lstm", bias)


def gru(hidden_size: int, *, bias: bool = True) -> Cell:
    r"""Gated recurrent unit, reset-after form (Cho et al. 2014; ``torch.nn.GRU``).

    .. math::
        [a_r, a_z, a_n] &= x W_{ih} + b_{ih},\qquad [u_r, u_z, u_n] = h W_{hh} + b_{hh} \\
        r &= \sigma(a_r + u_r),\qquad z = \sigma(a_z + u_z) \\
        n &= \tanh(a_n + r \odot u_n) \\
        h' &= (1 - z) \odot n + z \odot h,\qquad y = h'

    ``b_hn`` (the n-slice of ``b_hh``) stays inside the ``r *`` product, as in
    PyTorch, cuDNN and ONNX ``linear_before_reset=1``. Gates are stacked **r, z, n**:
    ``w_ih`` (E, 3H), ``w_hh`` (H, 3H), ``b_ih`` (3H,), ``b_hh`` (3H,). Carry: h (..., H).

    Args:
      hidden_size: H >= 1.
      bias: whether the two bias vectors exist.
    """
    hidden_size = _check_size(hidden_size, "hidden_size")

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        return _uniform_init(key, input_size, hidden_size, 3, bias, dtype)

    def recurrent_step(params: Params, h: Array, xp: Array) -> tuple[Array, Array]:
        a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
        u_r, u_z, u_n = jnp.split(_hidden_proj(params, h), 3, axis=-1)
        r = jax.nn.sigmoid(a_r + u_r)
        z = jax.nn.sigmoid(a_z + u_z)
        n = jnp.tanh(a_n + r * u_n)
        h = (1.0 - z) * n + z * h
        return h, h

    return Cell(init, _zeros_carry(hidden_size), _compose(_input_proj, recurrent_step),
                _input_proj, recurrent_step, _identity, hidden_size, "gru", bias)


_FACTORIES: dict[str, Callable[..., Cell]] = {
    "rnn_tanh": lambda H, **kw: simple_rnn(H, "tanh", **kw),
    "rnn_relu": lambda H, **kw: simple_rnn(H, "relu", **kw),
    "rnn_linear": lambda H, **kw: simple_rnn(H, "linear", **kw),
    "rnn": lambda H, **kw: simple_rnn(H, **kw),
    "lstm": lstm,
    "gru": gru,
}
CELL_NAMES = tuple(_FACTORIES)


def make(name: str, hidden_size: int, **kwargs) -> Cell:
    """A cell by name: ``"rnn"`` (with ``activation=``), ``"rnn_tanh"``, ``"rnn_relu"``,
    ``"rnn_linear"``, ``"lstm"`` or ``"gru"``; ``kwargs`` go to the factory."""
    if name not in _FACTORIES:
        raise ValueError(f"cell name must be one of {list(CELL_NAMES)}, got {name!r}")
    return _FACTORIES[name](hidden_size, **kwargs)
