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
    hp = h W_hh + b_hh                  #                    (..., G*H), in xp's dtype
    carry', y, res = pointwise(carry, xp, hp)               # no matmul

(:func:`pointwise_step`: h is rounded to xp's dtype for its matmul, and carry' keeps at
least the carry's dtype, so a float32 carry with bfloat16 params and inputs stays
float32: the mixed precision of :mod:`seqjax.precision`.)

``pointwise`` holds the cell's equations, once. ``step`` and ``recurrent_step``
are built from it, and so are the hand-written derivatives of ``recurrent.layer``
(``backward="jvp"``, its default, and ``"vjp"``), which also use the cell's
``pointwise_backward``: the derivative of ``pointwise`` written out (each
cell's docstring states it), checked against autodiff in the tests.

The registry :func:`make` is the only table of cells by name in seqjax:
``"rnn_tanh"``, ``"rnn_relu"``, ``"rnn_linear"``, ``"rnn_sigmoid"``, ``"rnn"``
(with ``activation=``), ``"irnn"``, ``"lstm"``, ``"gru"`` and ``"orthogonal"`` (expRNN's
orthogonal RNN with modReLU, trained on the orthogonal group by :func:`orthogonal_optimizer`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from seqjax import checks, layers
from seqjax.types import Array, Carry, DType, Params, PRNGKey, Shape

__all__ = ["Cell", "LSTMState", "simple_rnn", "irnn", "lstm", "gru", "orthogonal_rnn", "make", "CELL_NAMES",
           "check_params", "hidden_proj", "pointwise_step", "skew", "block_rotation", "trivialization", "TrivializationState",
           "orthogonal_labels", "orthogonal_optimizer", "expm", "SKEW_INITS", "ORTHOGONAL_ACTIVATIONS",
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
        backward; ``recurrent.layer`` then defaults to ``backward="autodiff"`` and
        refuses ``"jvp"`` and ``"vjp"``.
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


def pointwise_step(pointwise: Callable, output: Callable, params: Params, carry: Carry,
                   xp: Array) -> tuple[Carry, Array, Any]:
    """Everything in a step after the input projection, written once (every cell's
    ``recurrent_step`` and the fused backward's forward use it).

    ``hp = h W_hh + b_hh`` with h = ``output(carry)`` rounded to the dtype of ``xp``, so
    both projections run in one dtype (a mixed-precision policy's compute dtype), then
    ``pointwise(carry, xp, hp) -> (carry', y, res)`` with carry' promoted back to at
    least the carry's own dtypes: a float32 carry stays float32 when the gates are
    bfloat16 (:mod:`seqjax.precision`). With one dtype throughout, both casts are no-ops.
    """
    hp = hidden_proj(params, output(carry).astype(xp.dtype))
    new, y, res = pointwise(carry, xp, hp)
    new = jax.tree.map(lambda n, c: n.astype(jnp.promote_types(n.dtype, c.dtype)), new, carry)
    return new, y, res


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
        carry, y, _ = pointwise_step(pointwise, output, params, carry, xp)
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


# ----------------------------------------------------------------------------- orthogonal RNN (expRNN)

#: Skew-symmetric initialisations of :func:`orthogonal_rnn` (Lezcano-Casado's ``initialization.py``).
SKEW_INITS = ("henaff", "cayley")
#: Nonlinearities of :func:`orthogonal_rnn`: modReLU (the authors' code's) or none (the analysable linear case).
ORTHOGONAL_ACTIVATIONS = ("modrelu", "linear")


def skew(a: Array) -> Array:
    """(H, H) -> the skew-symmetric matrix ``triu(a, 1) - triu(a, 1)^T`` built from a's strict upper triangle.

    expRNN's map from an unconstrained matrix to the Lie algebra so(H) (``orthogonal.py``,
    ``Orthogonal.retraction`` in ``Lezcano/expRNN``): only the upper triangle is a parameter.
    """
    upper = jnp.triu(a, 1)
    return upper - upper.T


def _skew_angles(key: PRNGKey, hidden_size: int, how: str, dtype) -> Array:
    """The H//2 angles theta_k of the block-diagonal skew initialisation (each 2x2 block [[0, t], [-t, 0]]).

    henaff: theta ~ U(-pi, pi) (``henaff_init_``); cayley: u ~ U(0, pi/2), theta = -sqrt((1 - cos u) /
    (1 + cos u)) = -tan(u/2) (``cayley_init_``), both from ``initialization.py`` in ``Lezcano/expRNN``.
    """
    n = hidden_size // 2
    if how == "henaff":
        return jax.random.uniform(key, (n,), dtype, -math.pi, math.pi)
    u = jax.random.uniform(key, (n,), dtype, 0.0, math.pi / 2)
    return -jnp.sqrt((1.0 - jnp.cos(u)) / (1.0 + jnp.cos(u)))


def block_rotation(angles: Array, hidden_size: int) -> Array:
    """expm of the block-diagonal skew matrix with blocks [[0, t_k], [-t_k, 0]]: blocks [[cos, sin], [-sin, cos]].

    ``angles`` (H//2,); for odd H the last row and column are those of the identity. Written
    out rather than through ``expm`` so the initial W_hh is orthogonal to rounding.
    """
    c, s = jnp.cos(angles), jnp.sin(angles)
    i = 2 * jnp.arange(angles.shape[0])                                  # the blocks' first rows
    w = jnp.eye(hidden_size, dtype=angles.dtype)
    return w.at[i, i].set(c).at[i + 1, i + 1].set(c).at[i, i + 1].set(s).at[i + 1, i].set(-s)


def orthogonal_rnn(hidden_size: int, *, skew_init: str = "henaff", activation: str = "modrelu") -> Cell:
    r"""Orthogonal RNN with modReLU: the cell of expRNN (Lezcano-Casado & Martinez-Rubio 2019).

    modReLU is Arjovsky et al. 2016's :math:`\sigma_{\mathrm{ReLU}}(|z| + b)\, z / |z|` (their
    LaTeX in ``amarshah/complex_RNN``, "Input to Hidden, Nonlinearity, Hidden to Output"),
    written for real z as in ``modrelu`` of the expRNN code:

    .. math::
        z = x W_{ih} + h W_{hh},\qquad h' = \mathrm{modReLU}(z) = \mathrm{sign}(z)\,\mathrm{relu}(|z| + b),
        \qquad y = h'

    with :math:`W_{hh}` orthogonal, so :math:`\|v W_{hh}^T\| = \|v\|`: through the linear
    part a gradient keeps its norm over any number of steps, and modReLU's derivative
    (0 or 1 element-wise, 1 wherever :math:`|z| + b > 0`) can only shorten it. With
    ``activation="linear"`` (:math:`h' = z`), :math:`\|\partial L/\partial h_t\|` is exactly
    the same at every t for a loss on the last state (the oracle in the tests).

    Params (the equations and initialisation of ``OrthogonalRNN`` and ``modrelu`` in
    ``orthogonal.py`` of the authors' code, ``Lezcano/expRNN`` read at commit 830ec83; the
    paper's own text beyond its abstract was not found):

    ========  ========  ==========================================================
    key       shape     initialisation
    ========  ========  ==========================================================
    w_ih      (E, H)    ``kaiming_normal_(nonlinearity="relu")``: N(0, 2/E); no input bias
    w_hh      (H, H)    expm(S), S block-diagonal skew (``skew_init``, see :func:`block_rotation`)
    b_mod     (H,)      U(-0.01, 0.01), the modReLU bias
    ========  ========  ==========================================================

    ``w_hh`` is the orthogonal matrix itself, so the cell runs through every path of seqjax
    (``recurrent.layer``, ``gradients.state_gradients``, models by name). It stays
    orthogonal during training only when it is trained on the manifold: use
    :func:`orthogonal_optimizer`, the exponential-map trivialisation of the authors' code.
    Any plain optimiser treats ``w_hh`` as a free matrix. ``b_mod`` marks the cell's params
    for that optimiser. There is no hand-written backward (``pointwise`` depends on
    ``b_mod``), so layers of this cell are differentiated by autodiff (``backward="jvp"``
    or ``"vjp"`` is refused).

    Args:
      hidden_size: H >= 1.
      skew_init: ``"henaff"`` (angles U(-pi, pi); ``--init`` default of the authors' copying
        script ``1_copying.py``) or ``"cayley"`` (the ``--init`` default of their ``2_mnist.py``).
      activation: ``"modrelu"`` (the authors' code's) or ``"linear"`` (no nonlinearity; for analysis).
    """
    H = checks.check_int(hidden_size, "hidden_size")
    checks.check_choice(skew_init, "skew_init", SKEW_INITS)
    checks.check_choice(activation, "activation", ORTHOGONAL_ACTIVATIONS)

    def init(key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> Params:
        input_size = checks.check_int(input_size, "input_size")
        dtype = checks.check_float_dtype(dtype)
        checks.check_key(key)
        k_ih, k_hh, k_b = jax.random.split(key, 3)
        return {"w_ih": math.sqrt(2.0 / input_size) * jax.random.normal(k_ih, (input_size, H), dtype),
                "w_hh": block_rotation(_skew_angles(k_hh, H, skew_init, dtype), H),
                "b_mod": jax.random.uniform(k_b, (H,), dtype, -0.01, 0.01)}

    def recurrent_step(params: Params, h: Array, xp: Array) -> tuple[Array, Array]:
        def pointwise(h, xp, hp):                                           # b_mod: no Cell.pointwise
            z = xp + hp                                                     # (..., H)
            if activation == "modrelu":
                z = jnp.sign(z) * jax.nn.relu(jnp.abs(z) + params["b_mod"])
            return z, z, None
        h, y, _ = pointwise_step(pointwise, _identity, params, h, xp)
        return h, y

    def step(params: Params, h: Array, x: Array) -> tuple[Array, Array]:
        check_params(params, H, 1, "orthogonal", x.shape[-1])            # trace time only
        got = tuple(params["b_mod"].shape) if "b_mod" in params else None
        if got != (H,):
            raise ValueError(f"params['b_mod'] must have shape (H,) = ({H},) for an 'orthogonal' cell, got "
                             f"{got if got is not None else 'no b_mod (params of another cell?)'}")
        return recurrent_step(params, h, _input_proj(params, x))

    return Cell(init, _zeros_carry(H), step, _input_proj, recurrent_step, _identity, H, "orthogonal",
                False, None, None)


def _expm_taylor(a: Array) -> Array:
    """expm by scaling and squaring: a / 2^s with ||a / 2^s||_1 <= 1/2, Taylor to degree 12 (a relative
    error below 1e-14 there), then s squarings. s is computed at run time (``fori_loop``), so it is
    differentiated only through :func:`expm`'s own rule."""
    norm = jnp.max(jnp.sum(jnp.abs(a), axis=-2))                       # the 1-norm
    s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30))) + 1, 0, 60).astype(jnp.int32)
    x = a / (2.0 ** s).astype(a.dtype)
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    w = eye
    for k in range(12, 0, -1):                                         # Horner: I + x/1 (I + x/2 (I + ...))
        w = eye + (x @ w) / k
    return jax.lax.fori_loop(0, s, lambda _, m: m @ m, w)


@jax.custom_vjp
def expm(a: Array) -> Array:
    r"""The matrix exponential of a square (H, H) ``a``, with a cheap reverse-mode rule.

    The forward pass is scaling and squaring with a degree-12 Taylor polynomial. The VJP is the
    adjoint of the Frechet derivative, :math:`L(a^T, G)`, read off one exponential of a block
    matrix, :math:`\exp\begin{pmatrix} a^T & G \\ 0 & a^T\end{pmatrix} = \begin{pmatrix} e^{a^T} &
    L(a^T, G) \\ 0 & e^{a^T}\end{pmatrix}`, as ``trivializations.py`` of the authors' code
    (``Lezcano/expRNN``) does. ``jax.scipy.linalg.expm`` gives the same values; its autodiff rule
    measured about 40x slower here (64 x 64, vmapped over 6 matrices).
    """
    return _expm_taylor(a)


def _expm_fwd(a):
    return _expm_taylor(a), a


def _expm_bwd(a, g):
    n = a.shape[-1]
    at = a.T
    block = jnp.block([[at, g.astype(a.dtype)], [jnp.zeros_like(a), at]])      # (2H, 2H)
    return (_expm_taylor(block)[:n, n:],)


expm.defvjp(_expm_fwd, _expm_bwd)


class TrivializationState(NamedTuple):
    """State of :func:`trivialization`, one entry per orthogonal leaf W (each (H, H)).

    Attributes:
      base: the base point B (orthogonal); W = B expm(skew(A)).
      log: A, the unconstrained parameter (its strict upper triangle is used).
      inner: the state of the optimiser that updates A.
      count: () int32, updates done (the base moves every ``rebase_every`` of them).
    """

    base: Any
    log: Any
    inner: Any
    count: Array


def trivialization(inner, *, rebase_every: int | None = 100):
    r"""Optimise orthogonal matrices through the exponential map (expRNN / dynamic trivialisation).

    Every leaf of the params it sees is an orthogonal matrix W = B expm(skew(A)). The
    gradient G of the loss w.r.t. W is pulled back to A by the chain rule
    (``jax.vjp`` of A -> B expm(skew(A)), once per step, outside any scan), ``inner``
    (an optax transformation) updates A as an ordinary Euclidean parameter, and the update
    handed back is ``W_new - W`` with ``W_new = B expm(skew(A_new))``: W stays on the
    orthogonal group to rounding (the rounding does not accumulate, W_new is recomputed
    from A every step; :func:`expm`). Every ``rebase_every`` updates the base moves, B <- W_new
    (one Newton-Schulz step towards its polar factor keeps rounding from accumulating over
    rebases), and A <- 0: Lezcano-Casado 2019's dynamic
    trivialisation ``dtriv``, the default ``--mode`` of the authors' copying script
    (``1_copying.py``: ``dtriv`` with ``K=100``). ``rebase_every=None`` never moves the base:
    W = W_0 expm(skew(A)), A from 0 (the static parametrisation around the initial W_0).

    The state starts from the params it is given (B = W_0, A = 0), so no logarithm is ever
    computed. Use it for the orthogonal leaves only (:func:`orthogonal_optimizer` builds the
    ``optax.multi_transform``).

    Args:
      inner: an ``optax.GradientTransformation`` for A (the authors: RMSprop with the
        orthogonal learning rate, 10x below the other parameters').
      rebase_every: K >= 1 (the base moves every K updates), or None (never).
    """
    if rebase_every is not None:
        rebase_every = checks.check_int(rebase_every, "rebase_every")

    def chart(base, a):
        return base @ expm(skew(a))

    def init(params):
        log = jax.tree.map(jnp.zeros_like, params)
        return TrivializationState(base=params, log=log, inner=inner.init(log), count=jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("trivialization needs params in update(grads, state, params)")
        grads_log = jax.tree.map(lambda b, a, g: jax.vjp(lambda a_: chart(b, a_), a)[1](g)[0],
                                 state.base, state.log, grads)
        step, inner_state = inner.update(grads_log, state.inner, state.log)
        log = optax.apply_updates(state.log, step)
        new = jax.tree.map(chart, state.base, log)
        count = state.count + 1
        base = state.base
        if rebase_every is not None:
            def orthogonalize(w):          # one Newton-Schulz step towards the polar factor (w is orthogonal
                return w @ (1.5 * jnp.eye(w.shape[-1], dtype=w.dtype) - 0.5 * (w.T @ w))   # to rounding already)
            move = count % rebase_every == 0                # B <- W_new, A <- 0: W is unchanged
            base = jax.tree.map(lambda b, w: jnp.where(move, orthogonalize(w), b), base, new)
            log = jax.tree.map(lambda a: jnp.where(move, jnp.zeros_like(a), a), log)
        updates = jax.tree.map(lambda w, p: (w - p).astype(p.dtype), new, params)
        return updates, TrivializationState(base, log, inner_state, count)

    return optax.GradientTransformation(init, update)


def orthogonal_labels(params: Params) -> Any:
    """A labels pytree for ``optax.multi_transform``: ``"orthogonal"`` for the ``w_hh`` of every
    :func:`orthogonal_rnn` cell (a dict holding ``b_mod``), ``"other"`` for every other leaf."""
    def label(node):
        if isinstance(node, dict):
            orth = "b_mod" in node and "w_hh" in node
            return {k: ("orthogonal" if orth and k == "w_hh" else label(v)) for k, v in node.items()}
        if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
            return type(node)(label(v) for v in node)
        return jax.tree.map(lambda _: "other", node)
    return label(params)


def orthogonal_optimizer(optimizer, orthogonal, *, rebase_every: int | None = 100):
    """``optimizer`` for every parameter but the orthogonal ``w_hh`` of :func:`orthogonal_rnn` cells,
    which :func:`trivialization` (with ``orthogonal`` updating its log) keeps orthogonal.

    The two-optimiser recipe of the authors' code (``Lezcano/expRNN``, ``1_copying.py``: RMSprop,
    ``--lr 2e-4`` and ``--lr_orth 2e-5``), as one ``optax.multi_transform`` that
    :func:`seqjax.train.trainer` takes like any optimiser::

        opt = cells.orthogonal_optimizer(train.make_optimizer("rmsprop", 2e-4),
                                         train.make_optimizer("rmsprop", 2e-5))
    """
    return optax.multi_transform({"orthogonal": trivialization(orthogonal, rebase_every=rebase_every),
                                  "other": optimizer}, orthogonal_labels)


_FACTORIES: dict[str, Callable[..., Cell]] = {
    "rnn_tanh": lambda H, **kw: simple_rnn(H, "tanh", **kw),
    "rnn_relu": lambda H, **kw: simple_rnn(H, "relu", **kw),
    "rnn_linear": lambda H, **kw: simple_rnn(H, "linear", **kw),
    "rnn_sigmoid": lambda H, **kw: simple_rnn(H, "sigmoid", **kw),
    "rnn": lambda H, **kw: simple_rnn(H, **kw),
    "irnn": irnn,
    "lstm": lstm,
    "gru": gru,
    "orthogonal": orthogonal_rnn,
}
#: Every name :func:`make` accepts.
CELL_NAMES = tuple(_FACTORIES)


def make(name: str, hidden_size: int, **options) -> Cell:
    """A cell by name: the one registry of cells in seqjax.

    Names: ``"rnn"`` (with ``activation=``), ``"rnn_tanh"``, ``"rnn_relu"``,
    ``"rnn_linear"``, ``"rnn_sigmoid"``, ``"irnn"`` (``input_std=``), ``"lstm"``
    (``forget_bias=``, default :data:`DEFAULT_FORGET_BIAS`), ``"gru"`` and ``"orthogonal"``
    (``skew_init=``, ``activation=``); ``options`` go to the factory (:func:`simple_rnn`,
    :func:`irnn`, :func:`lstm`, :func:`gru`, :func:`orthogonal_rnn`),
    and an option the factory does not take is refused with a TypeError naming it.
    """
    checks.check_choice(name, "cell name", CELL_NAMES)
    try:
        return _FACTORIES[name](hidden_size, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"cell {name!r} does not take the option(s) {sorted(options)}: {err}") from None
        raise
