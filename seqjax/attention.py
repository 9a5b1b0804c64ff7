r"""Attention: scaled dot-product, multi-head, additive (Bahdanau) and Luong.

Layout. Every per-head tensor is batch-major and head-minor, the layout of
``jax.nn.dot_product_attention`` and of cuDNN flash attention::

    q (B, Tq, N, K)    k (B, Tk, N, K)    v (B, Tk, N, K)    out (B, Tq, N, K)
    weights (B, N, Tq, Tk)         masks and biases broadcastable to (B, N, Tq, Tk)

Masks are boolean with **True = attend** (Flax's and JAX's convention; the
opposite of PyTorch's ``key_padding_mask`` and boolean ``attn_mask``). A query whose
every key is masked out gets an output of **zeros** and zero attention weights,
never NaN (the failure of PyTorch issues 41508 and 103749).

Paths that compute :func:`scaled_dot_product_attention` (its ``implementation``):

* ``"xla"`` / ``"cudnn"``, the fast path: ``jax.nn.dot_product_attention`` (the
  argument is passed through, so ``"cudnn"`` runs flash attention on GPU);
* ``"reference"``: the maths written out below with heads moved in front of time,
  differentiated by JAX's autodiff; it can return the weights and apply dropout to them;
* ``"jvp"``: the reference forward pass with a hand-written derivative, a
  ``jax.custom_jvp`` whose transpose (reverse mode) is flash attention's backward pass
  kept dense, every matmul but one laid out for XLA:CPU (:func:`_attention_jvp`); forward
  mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) works;
* ``"vjp"``: the same backward pass written as a ``jax.custom_vjp``, with the one
  remaining transposed matmul (dK) laid out as well (:func:`_attention_vjp`); reverse
  mode only.

``implementation=None`` (the default) takes the fast path on GPU/TPU and ``"jvp"`` on
CPU. Forward + backward of multi-head self-attention (B=16, T=256, D=256, 8 heads) on
XLA:CPU: ``"jvp"`` 0.83-0.91x the time of ``"reference"``, ``"vjp"`` within 6% of
``"jvp"`` (1-6% faster on the shared machine, 5% slower in the quiet ``make bench`` of
2026-12-01), ``"reference"`` about 0.85-0.88x ``jax.nn.dot_product_attention``
(``benchmarks/attention.py``,
``benchmarks/results/attention_experiments.md``); ``"jvp"`` is the default because it
keeps forward mode working, as the recurrent layers' default does
(:data:`seqjax.recurrent.BACKWARDS`). Returning weights and attention dropout always use
the reference path; float64 (whose softmax ``jax.nn.dot_product_attention`` rounds to
float32) never takes the fast path. The tests check every path against the reference
and its derivatives against autodiff's.

Multi-head attention (Vaswani et al. 2017, "Attention is all you need", §3.2.2):

.. math::
    \mathrm{MHA}(Q, K, V) = [\mathrm{head}_1; \dots; \mathrm{head}_N] W^O,\qquad
    \mathrm{head}_i = \mathrm{softmax}\!\left(\frac{Q W^Q_i (K W^K_i)^\top}{\sqrt{d_k}}\right) V W^V_i.

Its params are a nested dict, kernels stored input-major so a projection is
``x @ kernel + bias``; head ``i`` owns columns ``i*K:(i+1)*K`` of the D = N*K
projected features (PyTorch's ``in_proj_weight`` split order)::

    {"query": {"kernel": (Eq, D), "bias": (D,)},
     "key":   {"kernel": (Ek, D), "bias": (D,)},
     "value": {"kernel": (Ev, D), "bias": (D,)},
     "out":   {"kernel": (D, Do), "bias": (Do,)}}     # "bias" absent when use_bias=False
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import checks, layers
from seqjax.checks import check_mask
from seqjax.layers import dense
from seqjax.precision import Policy, accumulation_dtype
from seqjax.types import Array, DType, Params, PRNGKey

__all__ = [
    "scaled_dot_product_attention", "masked_softmax", "padding_mask", "causal_mask", "combine_masks",
    "MultiHeadAttention", "MHAConfig", "multi_head_attention",
    "AdditiveAttention", "additive_attention", "LuongAttention", "luong_attention",
    "IMPLEMENTATIONS",
]

#: Values of ``implementation``: "xla"/"cudnn" go to ``jax.nn.dot_product_attention`` when
#: possible, "reference" forces the written-out path differentiated by autodiff, "vjp"/"jvp"
#: the written-out forward with a hand-written derivative, None picks by backend (module docstring).
IMPLEMENTATIONS = (None, "xla", "cudnn", "reference", "vjp", "jvp")
_CPU_DEFAULT = "jvp"        # what implementation=None means on CPU


# ----------------------------------------------------------------------------- masks


def padding_mask(lengths: Array, max_len: int) -> Array:
    """Key padding mask from lengths: True at valid (attendable) key positions.

    Args:
      lengths: (B,) ints in [1, max_len] (the rule of :func:`seqjax.checks.check_lengths`);
        valid positions are ``t < lengths[b]`` (right padding).
      max_len: Tk, the padded length.

    Returns:
      (B, 1, 1, Tk) boolean, broadcastable to (B, N, Tq, Tk).
    """
    max_len = checks.check_int(max_len, "max_len")
    if isinstance(lengths, (list, tuple)):
        lengths = np.asarray(lengths)
    checks.check_array(lengths, "lengths", 1, "(B,)", kind="integer")
    lengths = checks.check_lengths(lengths, lengths.shape[0], max_len)
    valid = jnp.arange(max_len)[None, :] < lengths[:, None]                 # (B, Tk)
    return valid[:, None, None, :]


def causal_mask(num_queries: int, num_keys: int | None = None, *, offset: int | Array = 0) -> Array:
    """Causal mask: query i may attend key j iff ``j <= i + offset``.

    Args:
      num_queries: Tq.
      num_keys: Tk (default Tq).
      offset: the position of query 0 among the keys; a scalar int, may be traced
        (incremental decoding attends from position ``offset`` over a cache).

    Returns:
      (1, 1, Tq, Tk) boolean, lower-triangular when ``offset == 0``.
    """
    num_queries = checks.check_int(num_queries, "num_queries")
    num_keys = num_queries if num_keys is None else checks.check_int(num_keys, "num_keys")
    i = jnp.arange(num_queries)[:, None] + offset
    j = jnp.arange(num_keys)[None, :]
    return (j <= i)[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of boolean masks (None entries are ignored; all None gives None).

    Every mask must be boolean; the result has their broadcast shape.
    """
    present = [m for m in masks if m is not None]
    for i, m in enumerate(present):
        if not hasattr(m, "dtype") or m.dtype != jnp.bool_:
            raise TypeError(f"masks[{i}] must be boolean (True = attend), got "
                            f"{getattr(m, 'dtype', type(m).__name__)}")
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


# ----------------------------------------------------------------------------- SDPA


def _large_negative(dtype) -> float:
    return -0.7 * float(min(jnp.finfo(dtype).max, jnp.finfo(jnp.float32).max))


def masked_softmax(scores: Array, mask: Array | None) -> Array:
    """Softmax over the last axis of ``scores`` where ``mask`` (True = attend) allows.

    Args:
      scores: (..., Tk) float logits, e.g. (B, N, Tq, Tk) or (B, S, T).
      mask: None or boolean broadcastable to ``scores``.

    Returns:
      weights of ``scores``' shape and dtype: exactly 0 at masked positions, summing to 1
      over the allowed ones; a row with no allowed position is all zeros (never NaN).
      The softmax itself runs in at least float32 (bfloat16 scores are promoted first:
      :func:`seqjax.precision.accumulation_dtype`).
    """
    dtype = scores.dtype
    scores = scores.astype(accumulation_dtype(dtype))
    if mask is not None:
        # finite, so a fully masked row stays NaN-free through softmax and its gradient
        scores = jnp.where(mask, scores, _large_negative(scores.dtype))
    weights = jax.nn.softmax(scores, axis=-1)
    if mask is not None:
        # a fully masked row softmaxes to uniform over large negatives: zero it
        weights = jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)
    return weights.astype(dtype)


def _weights(q_scaled_BxNxQxK, k_BxNxTxK, bias, mask) -> Array:
    """softmax(q k^T + bias) where mask, over heads-front arrays (q already scaled):
    (B, N, Tq, Tk) in the accumulation dtype (float32 for bfloat16 q)."""
    logits = jnp.einsum("bnqk,bntk->bnqt", q_scaled_BxNxQxK, k_BxNxTxK,
                        preferred_element_type=accumulation_dtype(q_scaled_BxNxQxK.dtype))
    if bias is not None:
        logits = logits + bias
    return masked_softmax(logits, mask)


def _reference_attention(q, k, v, mask, bias, scale, dropout_rate, dropout_key):
    """Written-out attention; returns (out (B, Tq, N, Kv), weights (B, N, Tq, Tk)).

    Heads are moved in front of time first (``att_BxNxQxT``), so both products are
    plain batched matmuls over (B, N); on XLA:CPU this measured ~20% faster (forward
    + backward) than ``jax.nn.dot_product_attention`` (benchmarks/attention.py).
    """
    q_BxNxQxK = jnp.swapaxes(q, 1, 2) * jnp.asarray(scale, q.dtype)         # scale the smaller operand
    k_BxNxTxK = jnp.swapaxes(k, 1, 2)
    v_BxNxTxK = jnp.swapaxes(v, 1, 2)
    weights = _weights(q_BxNxQxK, k_BxNxTxK, bias, mask).astype(v.dtype)
    dropped = weights
    if dropout_rate > 0.0 and dropout_key is not None:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
        dropped = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0).astype(v.dtype)
    out_BxNxQxK = jnp.einsum("bnqt,bntk->bnqk", dropped, v_BxNxTxK)
    return jnp.swapaxes(out_BxNxQxK, 1, 2), weights


# The reference forward with hand-written derivatives (implementation "vjp" and "jvp"). Both
# work on heads-front arrays q (B, N, Tq, K), k (B, N, Tk, K), v (B, N, Tk, Kv); mask and bias
# broadcast to (B, N, Tq, Tk); scale is a static float. No dropout, weights not returned.


def _unbroadcast(x: Array, shape: tuple[int, ...]) -> Array:
    """Sum ``x`` over the axes along which ``shape`` (right-aligned) was broadcast to x's."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


def _heads_forward(q, k, v, bias, mask, scale):
    """out (B, N, Tq, Kv) and the residuals of both derivative rules."""
    qs = q * jnp.asarray(scale, q.dtype)
    weights = _weights(qs, k, bias, mask)                                  # (B, N, Tq, Tk), float32 or wider
    out = jnp.einsum("bnqt,bntk->bnqk", weights.astype(v.dtype), v)
    return out, (qs, k, v, weights, out, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_vjp(q, k, v, bias, mask, scale):
    r"""``softmax(scale q k^T + bias, where mask) v`` with a written-out VJP.

    The backward pass is flash attention's (Dao 2023, "FlashAttention-2", Algorithm 2)
    kept dense. With W the weights, O the output and dO its cotangent:

    .. math::
        dW = dO\,V^\top,\quad \delta = \mathrm{rowsum}(dO \odot O),\quad
        dS = W \odot (dW - \delta),\quad dQ = s\,dS\,K,\quad dK = s\,dS^\top Q,\quad dV = W^\top dO

    (``rowsum(W * dW) = rowsum(dO * O)``: the softmax's backward reads no second
    (Tq, Tk) tensor; the bias gets dS summed over its broadcast axes). dV and dK are
    computed transposed (``(dO^T W)^T``, ``(Q^T dS)^T``) so that every matmul contracts
    its left operand's last axis: XLA:CPU hands that form to YNNPACK and runs a
    transposed left operand as a slower batched loop (about 2x on these shapes;
    ``benchmarks/results/attention_experiments.md``). Masked positions and fully masked
    rows have W = 0, hence dS = 0. Reverse mode only: ``jax.jvp`` of a ``custom_vjp``
    raises a TypeError (``"jvp"`` and ``"reference"`` support forward mode).
    """
    return _heads_forward(q, k, v, bias, mask, scale)[0]


def _attention_vjp_bwd(scale, res, dout):
    qs, k, v, weights, out, bias = res
    acc = weights.dtype
    # dV = W^T dO as (dO^T W)^T: per head a (Kv, Tq) x (Tq, Tk) matmul
    dv = jnp.swapaxes(jnp.einsum("bnkq,bnqt->bnkt", jnp.swapaxes(dout, 2, 3), weights.astype(v.dtype)), 2, 3)
    dweights = jnp.einsum("bnqk,bntk->bnqt", dout, v, preferred_element_type=acc)          # (B, N, Tq, Tk)
    delta = jnp.sum(dout.astype(acc) * out.astype(acc), axis=-1, keepdims=True)           # rowsum(W * dW)
    dlogits = weights * (dweights - delta)                                                  # (B, N, Tq, Tk)
    ds = dlogits.astype(qs.dtype)
    dq = jnp.einsum("bnqt,bntk->bnqk", ds, k) * jnp.asarray(scale, qs.dtype)
    dk = jnp.swapaxes(jnp.einsum("bnkq,bnqt->bnkt", jnp.swapaxes(qs, 2, 3), ds), 2, 3)     # (Q^T dS)^T
    dbias = None if bias is None else _unbroadcast(dlogits, bias.shape).astype(bias.dtype)
    # (the boolean mask gets no cotangent; the casts are no-ops unless q, k, v differ in dtype)
    return dq.astype(qs.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias, None


_attention_vjp.defvjp(_heads_forward, _attention_vjp_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _attention_jvp(q, k, v, bias, mask, scale):
    r"""The function of :func:`_attention_vjp` with a custom JVP instead.

    With A = W ⊙ dS (dS the tangent of the logits) and r = rowsum(A), the tangent of the
    output is written as

    .. math:: dO = A\,V - O \odot r + W\,dV

    (``W ⊙ (dS - r)`` times V, with ``r W V = r ⊙ O``). JAX transposes it into the
    backward pass of :func:`_attention_vjp`: the ``O ⊙ r`` term becomes ``δ =
    rowsum(dO ⊙ O)``, and ``W dV`` is written as ``(dV^T W^T)^T`` so its transpose is
    ``(dO^T W)^T``. Only dK keeps a transposed left operand (JAX's transpose of a
    ``dot_general`` puts the cotangent dS first, contracted on its query axis): multi-head
    self-attention measured 1-6% slower than with ``"vjp"``; in exchange forward mode and
    ``jax.hessian`` work. The CPU default.
    """
    return _heads_forward(q, k, v, bias, mask, scale)[0]


@_attention_jvp.defjvp
def _attention_jvp_rule(scale, primals, tangents):
    q, k, v, bias, mask = primals
    dq, dk, dv, dbias, _ = tangents                                        # the mask's tangent is float0
    out, (qs, _, _, weights, _, _) = _heads_forward(q, k, v, bias, mask, scale)
    acc = weights.dtype
    dlogits = (jnp.einsum("bnqk,bntk->bnqt", dq * jnp.asarray(scale, q.dtype), k, preferred_element_type=acc)
               + jnp.einsum("bnqk,bntk->bnqt", qs, dk, preferred_element_type=acc))
    if bias is not None:
        dlogits = dlogits + dbias
    a = weights * dlogits                                                  # A = W * dS
    r = jnp.sum(a, axis=-1, keepdims=True)
    w_dv = jnp.swapaxes(jnp.einsum("bnkt,bnqt->bnkq", jnp.swapaxes(dv, 2, 3), weights.astype(v.dtype)), 2, 3)
    dout = jnp.einsum("bnqt,bntk->bnqk", a.astype(v.dtype), v) - out * r.astype(out.dtype) + w_dv
    return out, dout


def _custom_attention(q, k, v, mask, bias, scale, rule):
    """(B, Tq, N, K) in and out through :func:`_attention_vjp` (``rule="vjp"``) or
    :func:`_attention_jvp` (``"jvp"``)."""
    f = _attention_vjp if rule == "vjp" else _attention_jvp
    out = f(jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), bias, mask, scale)
    return jnp.swapaxes(out, 1, 2)


def scaled_dot_product_attention(q: Array, k: Array, v: Array, *, mask: Array | None = None,
                                 is_causal: bool = False, key_lengths: Array | None = None,
                                 bias: Array | None = None, dropout_rate: float = 0.0,
                                 dropout_key: PRNGKey | None = None, return_weights: bool = False,
                                 implementation: str | None = None, scale: float | None = None):
    r"""Scaled dot-product attention (Vaswani et al. 2017, eq. 1).

    .. math::
        \mathrm{out} = \mathrm{softmax}\!\left(\frac{q k^\top}{\sqrt{K}} + \mathrm{bias}
        \ \text{where mask, else } -\infty\right) v

    Args:
      q: (B, Tq, N, K) queries.
      k: (B, Tk, N, K) keys.
      v: (B, Tk, N, Kv) values.
      mask: boolean, True = attend, broadcastable to (B, N, Tq, Tk) (rank <= 4;
        missing leading axes are 1). A fully masked query row outputs zeros.
      is_causal: query i attends key j only if ``j <= i`` (top-left aligned when
        Tq != Tk), the same as ``mask=causal_mask(Tq, Tk)``.
      key_lengths: (B,) ints in [1, Tk]: key j of batch b is attended only if
        ``j < key_lengths[b]``, the same as ``mask=padding_mask(key_lengths, Tk)``.
        On the fast path ``is_causal`` and ``key_lengths`` go to
        ``jax.nn.dot_product_attention`` as ``is_causal`` and
        ``key_value_seq_lengths``, so no (B, N, Tq, Tk) mask or bias is built and
        cuDNN's flash kernel can run (a dense ``mask`` becomes a materialised bias there).
      bias: float, broadcastable to (B, N, Tq, Tk), added to the scaled logits
        (must be finite; use ``mask`` to forbid positions).
      dropout_rate: attention-weight dropout in [0, 1); applied only when
        ``dropout_key`` is given (so the default is deterministic).
      dropout_key: PRNG key for dropout.
      return_weights: also return the (undropped) weights (B, N, Tq, Tk).
      implementation: None (the fast path on GPU/TPU, ``"jvp"`` on CPU), ``"xla"`` or
        ``"cudnn"`` (``jax.nn.dot_product_attention``, passed through), ``"reference"``
        (autodiff of the written-out maths), ``"jvp"`` (a custom JVP whose transpose is
        flash attention's backward; forward mode works) or ``"vjp"`` (that backward as a
        custom VJP; reverse mode only). See the module docstring.
      scale: logit scale, default ``1/sqrt(K)``.

    Returns:
      out (B, Tq, N, Kv), or ``(out, weights)`` with ``return_weights=True``.

    Raises:
      TypeError / ValueError naming the argument for wrong ranks, dtypes, a non-boolean
      mask, a mask or bias that does not broadcast, or mismatched key/value lengths.
    """
    checks.check_array(q, "q", 4, "(B, Tq, N, K)")
    checks.check_array(k, "k", 4, "(B, Tk, N, K)")
    checks.check_array(v, "v", 4, "(B, Tk, N, Kv)")
    checks.check_choice(implementation, "implementation", IMPLEMENTATIONS)
    B, Tq, N, K = q.shape
    if k.shape[0] != B or k.shape[2:] != (N, K):
        raise ValueError(f"k must have shape (B, Tk, N, K) = ({B}, Tk, {N}, {K}) to match q "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k and v must have the same (B, Tk, N); got key length/shape "
                         f"{tuple(k.shape)} and value {tuple(v.shape)}")
    Tk = k.shape[1]
    target = (B, N, Tq, Tk)
    mask = check_mask(mask, target)
    is_causal = checks.check_bool(is_causal, "is_causal")
    if key_lengths is not None:
        if isinstance(key_lengths, (list, tuple)):
            key_lengths = np.asarray(key_lengths)
        checks.check_array(key_lengths, "key_lengths", 1, "(B,)", kind="integer")
        key_lengths = checks.check_lengths(key_lengths, B, Tk, "key_lengths")
    bias = checks.check_bias(bias, target)
    dropout_rate = checks.check_rate(dropout_rate, "dropout_rate")
    scale = 1.0 / math.sqrt(K) if scale is None else float(scale)

    def structured():                       # is_causal and key_lengths as a boolean mask
        return combine_masks(causal_mask(Tq, Tk) if is_causal else None,
                             None if key_lengths is None else padding_mask(key_lengths, Tk))

    use_dropout = dropout_rate > 0.0 and dropout_key is not None
    if implementation is None and jax.default_backend() == "cpu":
        implementation = _CPU_DEFAULT
    if implementation in ("vjp", "jvp") and not (return_weights or use_dropout):
        return _custom_attention(q, k, v, combine_masks(mask, structured()), bias, scale, implementation)
    fast = implementation in ("xla", "cudnn") or (implementation is None and jax.default_backend() != "cpu")
    # jax.nn.dot_product_attention computes its softmax in float32: float64 stays on the reference.
    if not fast or return_weights or use_dropout or v.shape[-1] != K or q.dtype == jnp.float64:
        out, weights = _reference_attention(q, k, v, combine_masks(mask, structured()), bias, scale,
                                            dropout_rate, dropout_key)
        return (out, weights) if return_weights else out

    lengths = None if key_lengths is None else key_lengths.astype(jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
                                       key_value_seq_lengths=lengths, implementation=implementation)
    if mask is not None:
        # jax.nn.dot_product_attention averages v over a fully masked row: zero it. (is_causal
        # and key_lengths alone never mask a whole row: key 0 is always attended.)
        row_valid = jnp.any(combine_masks(mask, structured()), axis=-1)     # (B|1, N|1, Tq)
        row_valid = jnp.transpose(row_valid, (0, 2, 1))[..., None]           # (B|1, Tq, N|1, 1)
        out = jnp.where(row_valid, out, jnp.zeros((), out.dtype))
    return out


# ----------------------------------------------------------------------------- MHA


class MHAConfig(NamedTuple):
    """Static facts of a multi-head attention layer."""

    num_heads: int          # N
    qkv_size: int           # D = N * K, the projected width
    out_size: int | None    # Do (None: the query width Eq, fixed at init)
    use_bias: bool
    dropout: float          # attention-weight dropout
    implementation: str | None
    precision: Policy | None = None   # mixed precision (seqjax.precision); None: the inputs' dtypes

    @property
    def head_size(self) -> int:
        return self.qkv_size // self.num_heads


class MultiHeadAttention(NamedTuple):
    """Multi-head attention: pure functions over the params layout in the module docstring.

    Attributes:
      init: ``init(key, query_size, key_size=None, value_size=None, dtype=float32) -> params``
        (``key_size`` defaults to ``query_size``, ``value_size`` to ``key_size``).
      apply: ``apply(params, q, k=None, v=None, *, mask=None, is_causal=False,
        key_lengths=None, bias=None, return_weights=False, dropout_key=None)``: q (B, Tq, Eq), k (B, Tk, Ek),
        v (B, Tk, Ev) (``k`` defaults to ``q``, ``v`` to ``k``: self-attention) ->
        out (B, Tq, Do), or ``(out, weights)`` with weights (B, N, Tq, Tk).
        Deterministic unless ``dropout_key`` is given. ``is_causal`` and ``key_lengths``
        (B,) are the structured masks of :func:`scaled_dot_product_attention`.
      apply_jit: ``jax.jit(apply)`` with ``return_weights`` static.
      heads: ``heads(params, name, x) -> (B, T, N, K)``, the projection ``name`` in
        {"query", "key", "value"} split into heads.
      attend: ``attend(params, qh, kh, vh, *, mask=None, is_causal=False, key_lengths=None,
        bias=None, return_weights=False, dropout_key=None)``: attention over projected heads, then W^O. ``apply`` is
        ``attend(heads(q), heads(k), heads(v))``; a key/value cache calls it directly.
      config: the :class:`MHAConfig`.
    """

    init: Callable[..., Params]
    apply: Callable[..., Any]
    apply_jit: Callable[..., Any]
    heads: Callable[[Params, str, Array], Array]
    attend: Callable[..., Any]
    config: MHAConfig


def multi_head_attention(num_heads: int, qkv_size: int, *, out_size: int | None = None,
                         use_bias: bool = True, dropout: float = 0.0,
                         implementation: str | None = None,
                         precision: Policy | str | None = None) -> MultiHeadAttention:
    """Multi-head attention (Vaswani et al. 2017 §3.2.2) for self- and cross-attention.

    Args:
      num_heads: N >= 1; must divide ``qkv_size``.
      qkv_size: D, the total projected width; each head has K = D // N features.
      out_size: Do, the width of W^O's output (default: the query input width Eq,
        as in ``torch.nn.MultiheadAttention`` and Flax).
      use_bias: biases on the four projections.
      dropout: attention-weight dropout rate in [0, 1), active only when ``apply``
        gets a ``dropout_key``.
      implementation: see :func:`scaled_dot_product_attention`.
      precision: None (every array keeps its dtype), or a mixed-precision policy
        (:mod:`seqjax.precision`): ``init`` makes params in its param dtype, ``apply``
        casts params, q, k and v to its compute dtype (the projections and both
        attention products; the logits and softmax are float32 either way) and returns
        ``out`` (and the weights) in its output dtype. ``heads`` and ``attend``, the
        pieces a key/value cache calls, run in the dtype of what they are given.

    Returns:
      A :class:`MultiHeadAttention`.

    Example::

        mha = multi_head_attention(num_heads=8, qkv_size=256)
        params = mha.init(key, query_size=256)
        y = mha.apply_jit(params, x, x, x, mask=causal_mask(T))          # (B, T, 256)
    """
    num_heads = checks.check_int(num_heads, "num_heads")
    qkv_size = checks.check_int(qkv_size, "qkv_size")
    if qkv_size % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide qkv_size (the model width D)={qkv_size}")
    if out_size is not None:
        out_size = checks.check_int(out_size, "out_size")
    checks.check_choice(implementation, "implementation", IMPLEMENTATIONS)
    precision = checks.check_precision(precision)
    config = MHAConfig(num_heads, qkv_size, out_size, checks.check_bool(use_bias, "use_bias"),
                       checks.check_rate(dropout, "dropout"), implementation, precision)
    N, K = num_heads, qkv_size // num_heads
    param_dtype = jnp.float32 if precision is None else precision.param_dtype

    def init(key: PRNGKey, query_size: int, key_size: int | None = None,
             value_size: int | None = None, dtype: DType = param_dtype) -> Params:
        checks.check_key(key)
        query_size = checks.check_int(query_size, "query_size")
        key_size = query_size if key_size is None else checks.check_int(key_size, "key_size")
        value_size = key_size if value_size is None else checks.check_int(value_size, "value_size")
        Do = query_size if out_size is None else out_size
        kq, kk, kv, ko = jax.random.split(key, 4)
        dense_init = functools.partial(layers.dense_init, use_bias=use_bias, init="xavier", dtype=dtype)
        return {"query": dense_init(kq, query_size, qkv_size), "key": dense_init(kk, key_size, qkv_size),
                "value": dense_init(kv, value_size, qkv_size), "out": dense_init(ko, qkv_size, Do)}

    def _width(params, name):
        try:
            return params[name]["kernel"].shape[0]
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"params must have the layout multi_head_attention.init returns "
                             f"({{'query', 'key', 'value', 'out'}} each {{'kernel', 'bias'}}); "
                             f"missing {name!r}") from err

    def heads(params: Params, name: str, x: Array) -> Array:
        y = dense(params[name], x)                                            # (B, T, D)
        return y.reshape(*x.shape[:-1], N, K)                                 # (B, T, N, K)

    def attend(params: Params, qh: Array, kh: Array, vh: Array, *, mask=None, is_causal: bool = False,
               key_lengths=None, bias=None, return_weights: bool = False, dropout_key: PRNGKey | None = None):
        res = scaled_dot_product_attention(qh, kh, vh, mask=mask, is_causal=is_causal,
                                           key_lengths=key_lengths, bias=bias,
                                           dropout_rate=config.dropout, dropout_key=dropout_key,
                                           return_weights=return_weights,
                                           implementation=implementation)
        o, w = res if return_weights else (res, None)
        out = dense(params["out"], o.reshape(*o.shape[:-2], N * K))          # (B, Tq, Do)
        return (out, w) if return_weights else out

    def apply(params: Params, q: Array, k: Array | None = None, v: Array | None = None, *,
              mask: Array | None = None, is_causal: bool = False, key_lengths: Array | None = None,
              bias: Array | None = None, return_weights: bool = False, dropout_key: PRNGKey | None = None):
        k = q if k is None else k
        v = k if v is None else v
        for name, x, size, layout in (("q", q, "query", "(B, Tq, Eq)"), ("k", k, "key", "(B, Tk, Ek)"),
                                      ("v", v, "value", "(B, Tk, Ev)")):
            checks.check_array(x, name, 3, layout)
            E = _width(params, size)
            if x.shape[-1] != E:
                raise ValueError(f"{name} has {x.shape[-1]} features (shape {tuple(x.shape)}) but "
                                 f"params were initialised for {size}_size={E}")
        if k.shape[:2] != v.shape[:2]:
            raise ValueError(f"k and v must have the same batch and length (B, Tk); got key shape "
                             f"{tuple(k.shape)} and value shape {tuple(v.shape)}")
        if q.shape[0] != k.shape[0]:
            raise ValueError(f"q and k must have the same batch size; got {q.shape[0]} and {k.shape[0]}")
        check_mask(mask, (q.shape[0], N, q.shape[1], k.shape[1]))
        if precision is not None:
            params, q, k, v = precision.cast_to_compute((params, q, k, v))
        # (A fused (E, 3D) QKV projection for self-attention, the kernels concatenated inside the
        # jit, measured no faster on XLA:CPU: benchmarks/results/attention_experiments.md.)
        qh, kh, vh = heads(params, "query", q), heads(params, "key", k), heads(params, "value", v)
        out = attend(params, qh, kh, vh, mask=mask, is_causal=is_causal, key_lengths=key_lengths,
                     bias=bias, return_weights=return_weights, dropout_key=dropout_key)
        return out if precision is None else precision.cast_to_output(out)

    apply_jit = jax.jit(apply, static_argnames=("return_weights",))
    return MultiHeadAttention(init, apply, apply_jit, heads, attend, config)


# ----------------------------------------------------------------------------- RNN attention


def _query_keys(query, keys, values, mask):
    """Normalise (B, Eq) | (B, S, Eq) queries; check keys/values/mask. Returns squeeze flag."""
    checks.check_array(query, "query", (2, 3), "(B, Eq) or (B, S, Eq)")
    checks.check_array(keys, "keys", 3, "(B, T, Ek)")
    values = keys if values is None else values
    checks.check_array(values, "values", 3, "(B, T, Ev)")
    if keys.shape[:2] != values.shape[:2]:
        raise ValueError(f"keys and values must have the same (B, T); got key shape "
                         f"{tuple(keys.shape)} and value shape {tuple(values.shape)}")
    if query.shape[0] != keys.shape[0]:
        raise ValueError(f"query and keys must have the same batch size; got {query.shape[0]} "
                         f"and {keys.shape[0]}")
    single = query.ndim == 2
    if single:
        query = query[:, None, :]
    B, T = keys.shape[:2]
    if mask is not None:
        mask = check_mask(mask, (B, query.shape[1], T), "mask")
    return query, values, mask, single


def _check_width(x: Array, name: str, width: int, init_arg: str) -> None:
    if x.shape[-1] != width:
        raise ValueError(f"{name} has {x.shape[-1]} features (shape {tuple(x.shape)}) but the params "
                         f"were initialised for {init_arg}={width}")


class AdditiveAttention(NamedTuple):
    """Bahdanau attention: see :func:`additive_attention`.

    Attributes:
      init: ``init(key, query_size, key_size, dtype=float32) -> params``.
      apply: ``apply(params, query, keys, values=None, *, mask=None, projected_keys=None)
        -> (context, weights)``.
      project_keys: ``project_keys(params, keys) -> (B, T, A)``, the query-independent
        part, computed once per source sequence and passed back as ``projected_keys``.
      hidden_size: A, the attention MLP width.
    """

    init: Callable[..., Params]
    apply: Callable[..., tuple[Array, Array]]
    project_keys: Callable[[Params, Array], Array]
    hidden_size: int


def additive_attention(hidden_size: int) -> AdditiveAttention:
    r"""Additive attention (Bahdanau, Cho & Bengio 2015, "Neural machine translation by
    jointly learning to align and translate", eq. 6 and appendix A.1.2).

    .. math::
        e_{t} = v^\top \tanh(W_q q + W_k k_t + b),\qquad
        \alpha = \mathrm{softmax}(e),\qquad c = \textstyle\sum_t \alpha_t v_t

    Params: ``{"query": {"kernel": (Eq, A)}, "key": {"kernel": (Ek, A), "bias": (A,)},
    "energy": {"kernel": (A, 1)}}``.

    ``apply(params, query, keys, values=None, *, mask=None, projected_keys=None)``:
    query (B, Eq) (one decoder step) or (B, S, Eq); keys (B, T, Ek); values (B, T, Ev)
    (default keys); mask boolean broadcastable to (B, S, T) (e.g. ``(B, 1, T)`` source
    padding), True = attend. Returns context (B, Ev) and weights (B, T) for a (B, Eq)
    query, or (B, S, Ev) and (B, S, T). A fully masked row gives zeros.
    """
    A = checks.check_int(hidden_size, "hidden_size")

    def init(key: PRNGKey, query_size: int, key_size: int, dtype: DType = jnp.float32) -> Params:
        checks.check_key(key)
        kq, kk, ke = jax.random.split(key, 3)
        query_size = checks.check_int(query_size, "query_size")
        key_size = checks.check_int(key_size, "key_size")
        return {"query": layers.dense_init(kq, query_size, A, use_bias=False, dtype=dtype),
                "key": layers.dense_init(kk, key_size, A, use_bias=True, dtype=dtype),
                "energy": layers.dense_init(ke, A, 1, use_bias=False, dtype=dtype)}

    def project_keys(params: Params, keys: Array) -> Array:
        return dense(params["key"], keys)                                     # (B, T, A)

    def apply(params: Params, query: Array, keys: Array, values: Array | None = None, *,
              mask: Array | None = None, projected_keys: Array | None = None):
        query, values, mask, single = _query_keys(query, keys, values, mask)
        _check_width(query, "query", params["query"]["kernel"].shape[0], "query_size")
        _check_width(keys, "keys", params["key"]["kernel"].shape[0], "key_size")
        pk = project_keys(params, keys) if projected_keys is None else projected_keys
        pq = dense(params["query"], query)                                    # (B, S, A)
        e = dense(params["energy"], jnp.tanh(pq[:, :, None, :] + pk[:, None, :, :]))[..., 0]
        w = masked_softmax(e, mask)                                          # (B, S, T)
        ctx = jnp.einsum("bst,bte->bse", w, values)
        return (ctx[:, 0], w[:, 0]) if single else (ctx, w)

    return AdditiveAttention(init, apply, project_keys, A)


class LuongAttention(NamedTuple):
    """Luong attention: see :func:`luong_attention`.

    Attributes:
      init: ``init(key, query_size, key_size, dtype=float32) -> params`` ({} for "dot").
      apply: ``apply(params, query, keys, values=None, *, mask=None) -> (context, weights)``.
      score: ``"dot"`` or ``"general"``.
    """

    init: Callable[..., Params]
    apply: Callable[..., tuple[Array, Array]]
    score: str


def luong_attention(score: str = "general", *, scale: bool = False) -> LuongAttention:
    r"""Multiplicative attention (Luong, Pham & Manning 2015, "Effective approaches to
    attention-based neural machine translation", eq. 8).

    .. math::
        \mathrm{score}(q, k_t) = q^\top k_t \ (\texttt{"dot"}),\qquad
        q^\top W_a k_t \ (\texttt{"general"})

    followed by a (masked) softmax over t and the context ``c = sum_t alpha_t v_t``.
    ``"dot"`` needs Eq == Ek and has no params; ``"general"`` has
    ``{"kernel": (Eq, Ek)}`` so the score is ``(q @ kernel) . k``.

    Args:
      score: ``"dot"`` or ``"general"``.
      scale: divide scores by sqrt(Ek) (scaled dot product).

    ``apply`` takes and returns the shapes of :func:`additive_attention`.
    """
    if score not in ("dot", "general"):
        raise ValueError(f"score must be 'dot' or 'general', got {score!r}")

    def init(key: PRNGKey, query_size: int, key_size: int, dtype: DType = jnp.float32) -> Params:
        checks.check_key(key)
        query_size = checks.check_int(query_size, "query_size")
        key_size = checks.check_int(key_size, "key_size")
        if score == "dot":
            if query_size != key_size:
                raise ValueError(f"score='dot' needs query_size == key_size, got {query_size} "
                                 f"and {key_size}; use score='general'")
            return {}
        return {"kernel": jax.nn.initializers.xavier_uniform()(key, (query_size, key_size), dtype)}

    def apply(params: Params, query: Array, keys: Array, values: Array | None = None, *,
              mask: Array | None = None):
        query, values, mask, single = _query_keys(query, keys, values, mask)
        if score == "general":
            _check_width(query, "query", params["kernel"].shape[0], "query_size")
            _check_width(keys, "keys", params["kernel"].shape[1], "key_size")
        q = query @ params["kernel"] if score == "general" else query         # (B, S, Ek)
        if q.shape[-1] != keys.shape[-1]:
            raise ValueError(f"query width {q.shape[-1]} does not match keys width "
                             f"{keys.shape[-1]} for score={score!r}; use score='general' for "
                             "different widths")
        e = jnp.einsum("bse,bte->bst", q, keys)
        if scale:
            e = e / math.sqrt(keys.shape[-1])
        w = masked_softmax(e, mask)
        ctx = jnp.einsum("bst,bte->bse", w, values)
        return (ctx[:, 0], w[:, 0]) if single else (ctx, w)

    return LuongAttention(init, apply, score)
