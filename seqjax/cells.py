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
its inputs (float32, bfloat16 or float64). Each step is split into three parts::

    xp = input_proj(params, x)          # x W_ih + b_ih      (..., G*H), no carry
    hp = h W_hh + b_hh                  #                    (..., G*H)
    carry', y, res = pointwise(carry, xp, hp)               # no matmul

``pointwise`` holds the cell's equations, once. ``step`` and ``recurrent_step``
are built from it, and so is the hand-written backward pass of
``recurrent.layer(..., fused_backward=True)``, which also uses the cell's
``pointwise_backward``: the derivative of ``pointwise`` written out (each
cell's docstring states it), checked against autodiff in the tests.

The registry :func:`make` is the only table of cells by name in seqjax:
``"rnn_tanh"``, ``"rnn_relu"``, ``"rnn_linear"``, ``"rnn_sigmoid"``, ``"rnn"``
(with ``activation=``), ``"irnn"``, ``"lstm"`` and ``"gru"``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import checks, layers
from seqjax.types import Array, Carry, DType, Params, PRNGKey, Shape

__all__ = ["Cell", "LSTMState", "simple_rnn", "irnn", "lstm", "gru", "make", "CELL_NAMES", "check_params",
           "hidden_proj",
           "RNN_ACTIVATIONS", "DEFAULT_FORGET_BIAS"]


#: The forget-gate bias :func:`lstm` adds at initialisation unless told otherwise: 0.0,
#: PyTorch's initialisation exactly. Models and experiments that want Gers et al.'s
#: 1.0 pass ``forget_bias=1.0``; this is the only place the default is stated.
DEFAULT_FORGET_BIAS = 0.0

#: Activations a :func:`simple_rnn` accepts (their derivatives are in ``pointwise_backward``).
RNN_ACTIVATIONS = ("tanh", "relu", "linear", "sigmoid")


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
      output: ``output(carry) -> y``, the hidden state h the cell exposes (linear in the carry).
      hidden_size: H.
      name: the registry name (``"rnn_tanh"``, ``"irnn"``, ``"lstm"``, ...).
      bias: whether ``b_ih`` and ``b_hh`` exist.
      pointwise: ``pointwise(carry, xp, hp) -> (carry', y, res)``: the cell's equations
        given both projections (..., G*H); ``res`` is what ``pointwise_backward`` needs.
      pointwise_backward: ``pointwise_backward(res, carry_prev, dcarry, dy) ->
        (dcarry_direct, dxp, dhp)``: cotangents of the previous carry *not* through
        ``hp`` (the unroll adds ``dhp @ W_hh^T`` to its h), of ``xp`` and of ``hp``
        (``dhp`` is None when it equals ``dxp``). None: the cell has no hand-written
        backward and ``fused_backward=True`` refuses it.
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
    pointwise: Callable[..., tuple[Carry, Array, Any]] | None = None
    pointwise_backward: Callable[..., tuple[Carry, Array, Array | None]] | None = None


def _uniform_init(key: PRNGKey, input_size: int, hidden_size: int, gates: int, bias: bool,
                  dtype: DType) -> Params:
    """PyTorch's default: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    input_size = checks.check_int(input_size, "input_size")
    dtype = checks.check_float_dtype(dtype)
    checks.check_key(key)
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


def hidden_proj(params: Params, h: Array) -> Array:
    """h (..., H) -> h @ w_hh + b_hh, (..., G*H): the only matmul that depends on the carry."""
    hp = h @ params["w_hh"]
    if "b_hh" in params:
        hp = hp + params["b_hh"]
    return hp


def _zeros_carry(hidden_size: int):
    def initial_carry(batch_shape: Shape = (), dtype: DType = jnp.float32) -> Array:
        return jnp.zeros((*tuple(batch_shape), hidden_size), checks.check_float_dtype(dtype))
    return initial_carry


def _identity(carry: Array) -> Array:
    return carry


def check_params(params: Params, hidden_size: int, gates: int, name: str,
                 input_size: int | None = None) -> None:
    """Shape-check a cell's params: ``w_hh`` (H, G*H), ``w_ih`` (E, G*H), biases (G*H,).

    Static shapes only (free under ``jit``). Catches params of another cell or width
    (LSTM params in a GRU, H=64 params in an H=32 cell) before an obscure matmul or
    split error from deep inside the scan.
    """
    want = gates * hidden_size
    try:
        w_ih, w_hh = params["w_ih"], params["w_hh"]
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"params of a {name!r} cell must be the dict cell.init returns, with 'w_ih' "
                         f"(E, {gates}*H) and 'w_hh' (H, {gates}*H); got {type(params).__name__} "
                         f"{sorted(params) if isinstance(params, dict) else ''}") from err
    if tuple(w_hh.shape) != (hidden_size, want):
        raise ValueError(f"params['w_hh'] must have shape (H, G*H) = ({hidden_size}, {want}) for a "
                         f"{name!r} cell with H={hidden_size}, got {tuple(w_hh.shape)} (params of "
                         "another cell or hidden size?)")
    if w_ih.ndim != 2 or w_ih.shape[1] != want:
        raise ValueError(f"params['w_ih'] must have shape (E, G*H) = (E, {want}), got {tuple(w_ih.shape)}")
    if input_size is not None and w_ih.shape[0] != input_size:
        raise ValueError(f"x has {input_size} features but the cell's params were initialised for "
                         f"input_size E={w_ih.shape[0]}")


def _build(init, initial_carry, output, pointwise, pointwise_backward, hidden_size: int, name: str,
           bias: bool, gates: int) -> Cell:
    """A :class:`Cell` whose ``recurrent_step`` and ``step`` are ``pointwise`` after the projections."""
    def recurrent_step(params: Params, carry: Carry, xp: Array) -> tuple[Carry, Array]:
        carry, y, _ = pointwise(carry, xp, hidden_proj(params, output(carry)))
        return carry, y

    def step(params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        check_params(params, hidden_size, gates, name, x.shape[-1])         # trace time only
        return recurrent_step(params, carry, _input_proj(params, x))

    return Cell(init, initial_carry, step, _input_proj, recurrent_step, output, hidden_size, name, bias,
                pointwise, pointwise_backward)


def simple_rnn(hidden_size: int, activation: str = "tanh", *, bias: bool = True) -> Cell:
    r"""Elman RNN cell (``torch.nn.RNN``).

    .. math::
        h' = \phi(a),\qquad a = x W_{ih} + b_{ih} + h W_{hh} + b_{hh},\qquad y = h'

    with :math:`\phi` one of ``"tanh"``, ``"relu"``, ``"linear"`` (identity; the
    analysable case of Pascanu et al. 2013) or ``"sigmoid"``. Params: ``w_ih`` (E, H),
    ``w_hh`` (H, H), ``b_ih`` (H,), ``b_hh`` (H,). Carry: h (..., H).

    Backward (``pointwise_backward``), with d = dh' + dy:
    ``da = d * phi'(a)``, phi' read off the output (tanh ``1 - h'^2``, relu
    ``[h' > 0]``, linear 1, sigmoid ``h'(1 - h')``); ``dxp = dhp = da``.

    Args:
      hidden_size: H >= 1.
      activation: one of :data:`RNN_ACTIVATIONS`.
      bias: whether the two bias vectors exist.
    """
    hidden_size = checks.check_int(hidden_size, "hidden_size")
    act = layers.activation(activation, RNN_ACTIVATIONS)
    bias = checks.check_bool(bias, "bias")

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        return _uniform_init(key, input_size, hidden_size, 1, bias, dtype)

    def pointwise(h, xp, hp):
        h = act(xp + hp)
        return h, h, h

    def pointwise_backward(h_new, h_prev, dh, dy):
        d = dh + dy
        if activation == "tanh":
            da = d * (1.0 - h_new * h_new)
        elif activation == "relu":                      # jax.nn.relu'(0) = 0, as here
            da = jnp.where(h_new > 0, d, jnp.zeros_like(d))
        elif activation == "sigmoid":
            da = d * h_new * (1.0 - h_new)
        else:
            da = d
        return jnp.zeros_like(dh), da, None

    return _build(init, _zeros_carry(hidden_size), _identity, pointwise, pointwise_backward,
                  hidden_size, f"rnn_{activation}", bias, 1)


def irnn(hidden_size: int, *, input_std: float = 1e-3) -> Cell:
    r"""IRNN: a ReLU RNN with the identity recurrent initialisation (Le, Jaitly & Hinton 2015).

    The equations of :func:`simple_rnn` with ``"relu"``; only ``init`` differs:
    ``w_hh = I``, both biases 0, ``w_ih ~ N(0, input_std^2)``.

    Args:
      hidden_size: H >= 1.
      input_std: the standard deviation of the input weights at initialisation, > 0.
    """
    base = simple_rnn(hidden_size, "relu")
    input_std = checks.check_float(input_std, "input_std", minimum=0.0, strict_minimum=True)

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        params = base.init(key, input_size, dtype)
        return {"w_ih": input_std * jax.random.normal(key, params["w_ih"].shape, params["w_ih"].dtype),
                "w_hh": jnp.eye(hidden_size, dtype=params["w_hh"].dtype),
                "b_ih": jnp.zeros_like(params["b_ih"]), "b_hh": jnp.zeros_like(params["b_hh"])}

    return base._replace(init=init, name="irnn")


def lstm(hidden_size: int, forget_bias: float = DEFAULT_FORGET_BIAS, *, bias: bool = True) -> Cell:
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997; ``torch.nn.LSTM``).

    .. math::
        [a_i, a_f, a_g, a_o] &= x W_{ih} + b_{ih} + h W_{hh} + b_{hh} \\
        i, f, o &= \sigma(a_i), \sigma(a_f), \sigma(a_o),\qquad g = \tanh(a_g) \\
        c' &= f \odot c + i \odot g,\qquad h' = o \odot \tanh(c'),\qquad y = h'

    Gates are stacked **i, f, g, o** along the last axis of ``w_ih`` (E, 4H),
    ``w_hh`` (H, 4H), ``b_ih`` (4H,) and ``b_hh`` (4H,). The carry is
    :class:`LSTMState` ``(h, c)``.

    Backward, with d = dh' + dy: ``dc' = dc_in + d o (1 - tanh^2 c')``;
    ``da_i = dc' g i(1-i)``, ``da_f = dc' c f(1-f)``, ``da_g = dc' i (1-g^2)``,
    ``da_o = d tanh(c') o(1-o)``; ``dxp = dhp = da``; direct ``dc = dc' f``, direct dh 0.

    Args:
      hidden_size: H >= 1.
      forget_bias: added to the forget-gate slice of ``b_ih`` at initialisation
        (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1.0). The default,
        :data:`DEFAULT_FORGET_BIAS` = 0.0, keeps PyTorch's initialisation exactly.
        Requires ``bias=True`` if non-zero.
      bias: whether the two bias vectors exist.
    """
    H = checks.check_int(hidden_size, "hidden_size")
    forget_bias = checks.check_float(forget_bias, "forget_bias")
    bias = checks.check_bool(bias, "bias")
    if forget_bias != 0.0 and not bias:
        raise ValueError("forget_bias != 0 needs bias=True: there is no bias to put it in")

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        params = _uniform_init(key, input_size, H, 4, bias, dtype)
        if forget_bias:
            params["b_ih"] = params["b_ih"].at[H:2 * H].add(forget_bias)
        return params

    def initial_carry(batch_shape: Shape = (), dtype: DType = jnp.float32) -> LSTMState:
        zeros = _zeros_carry(H)(batch_shape, dtype)
        return LSTMState(h=zeros, c=zeros)

    def pointwise(carry: LSTMState, xp, hp):
        a_i, a_f, a_g, a_o = jnp.split(xp + hp, 4, axis=-1)                # each (..., H)
        i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
        c = f * carry.c + i * g
        h = o * jnp.tanh(c)
        return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], axis=-1), c)

    def pointwise_backward(res, carry_prev: LSTMState, dcarry: LSTMState, dy):
        gates, c = res
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        d = dcarry.h + dy
        tc = jnp.tanh(c)
        dc = dcarry.c + d * o * (1.0 - tc * tc)
        da = jnp.concatenate([dc * g * i * (1.0 - i), dc * carry_prev.c * f * (1.0 - f),
                              dc * i * (1.0 - g * g), d * tc * o * (1.0 - o)], axis=-1)
        return LSTMState(jnp.zeros_like(d), dc * f), da, None

    return _build(init, initial_carry, lambda carry: carry.h, pointwise, pointwise_backward, H, "lstm", bias, 4)


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

    Backward, with d = dh' + dy: ``dn = d (1-z)(1-n^2)``, ``dz = d (h - n) z(1-z)``,
    ``dr = dn u_n r(1-r)``; ``dxp = [dr, dz, dn]``, ``dhp = [dr, dz, dn r]``; direct dh ``d z``.

    Args:
      hidden_size: H >= 1.
      bias: whether the two bias vectors exist.
    """
    hidden_size = checks.check_int(hidden_size, "hidden_size")
    bias = checks.check_bool(bias, "bias")

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        return _uniform_init(key, input_size, hidden_size, 3, bias, dtype)

    def pointwise(h, xp, hp):
        a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
        u_r, u_z, u_n = jnp.split(hp, 3, axis=-1)
        r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
        n = jnp.tanh(a_n + r * u_n)
        h = (1.0 - z) * n + z * h
        return h, h, jnp.concatenate([r, z, n, u_n], axis=-1)

    def pointwise_backward(res, h_prev, dh, dy):
        r, z, n, u_n = jnp.split(res, 4, axis=-1)
        d = dh + dy
        dn = d * (1.0 - z) * (1.0 - n * n)
        dz = d * (h_prev - n) * z * (1.0 - z)
        dr = dn * u_n * r * (1.0 - r)
        return d * z, jnp.concatenate([dr, dz, dn], axis=-1), jnp.concatenate([dr, dz, dn * r], axis=-1)

    return _build(init, _zeros_carry(hidden_size), _identity, pointwise, pointwise_backward,
                  hidden_size, "gru", bias, 3)


_FACTORIES: dict[str, Callable[..., Cell]] = {
    "rnn_tanh": lambda H, **kw: simple_rnn(H, "tanh", **kw),
    "rnn_relu": lambda H, **kw: simple_rnn(H, "relu", **kw),
    "rnn_linear": lambda H, **kw: simple_rnn(H, "linear", **kw),
    "rnn_sigmoid": lambda H, **kw: simple_rnn(H, "sigmoid", **kw),
    "rnn": lambda H, **kw: simple_rnn(H, **kw),
    "irnn": irnn,
    "lstm": lstm,
    "gru": gru,
}
#: Every name :func:`make` accepts.
CELL_NAMES = tuple(_FACTORIES)


def make(name: str, hidden_size: int, **options) -> Cell:
    """A cell by name: the one registry of cells in seqjax.

    Names: ``"rnn"`` (with ``activation=``), ``"rnn_tanh"``, ``"rnn_relu"``,
    ``"rnn_linear"``, ``"rnn_sigmoid"``, ``"irnn"`` (``input_std=``), ``"lstm"``
    (``forget_bias=``, default :data:`DEFAULT_FORGET_BIAS`) and ``"gru"``; ``options``
    go to the factory (:func:`simple_rnn`, :func:`irnn`, :func:`lstm`, :func:`gru`),
    and an option the factory does not take is refused with a TypeError naming it.
    """
    checks.check_choice(name, "cell name", CELL_NAMES)
    try:
        return _FACTORIES[name](hidden_size, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"cell {name!r} does not take the option(s) {sorted(options)}: {err}") from None
        raise
