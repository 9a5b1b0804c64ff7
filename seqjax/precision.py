r"""Mixed precision: which dtype each part of a computation runs in.

A :class:`Policy` names three dtypes, with jmp's names (DeepMind's mixed-precision
library; Flax calls the compute dtype ``dtype`` and the parameter dtype ``param_dtype``):

* ``param_dtype``: the stored parameters (the "master weights"), their gradients and
  the optimiser state;
* ``compute_dtype``: the matmuls and the element-wise maths around them;
* ``output_dtype``: what a layer or model returns (outputs, logits, predictions).

Some quantities stay in float32 whatever the compute dtype: :func:`accumulation_dtype`,
``promote_types(dtype, float32)`` (float32 for bfloat16, float64 for float64). With
``policy("bfloat16")`` (params float32, compute bfloat16, output float32):

=====================================================  ===============  ==========================================
quantity                                               dtype            where
=====================================================  ===============  ==========================================
stored params, their gradients, optimiser state        param_dtype      ``init``; :func:`seqjax.train.trainer`
x W_ih, h W_hh, gate nonlinearities (sigmoid, tanh)    compute_dtype    ``recurrent.layer(precision=...)``
attention projections, q k^T and softmax(.) v operands compute_dtype    ``attention.multi_head_attention``
feed-forward, embeddings, the Transformer residual      compute_dtype    ``transformer.*(precision=...)``
recurrent carry: h, the LSTM cell state c, and the     float32          ``recurrent.layer``; the cells keep
state updates c' = f c + i g, GRU's (1 - z) n + z h    (accumulation)   the carry's dtype
attention logits and softmax (``masked_softmax``)      float32 always   :mod:`seqjax.attention`
layer-norm mean and variance                           float32 always   :func:`seqjax.layers.layer_norm`
the loss: log-softmax, squared error, the mean         float32 always   :mod:`seqjax.losses`; the trainer refuses
                                                                        a narrower loss under a policy
gradient norms and statistics                          float32 always   :func:`seqjax.train.global_norm`
layer and model outputs                                output_dtype     every ``apply`` given a policy
=====================================================  ===============  ==========================================

Why the carry is float32. A recurrence adds to its state T times: the LSTM's
``c' = f c + i g`` with f near 1, the GRU's ``h' = h + (1 - z)(n - h)`` with z near 1.
bfloat16 has an 8-bit significand (unit roundoff u = 2^-8 ~ 3.9e-3), so an update
smaller than about u |c| is rounded away, every step: the constant error carousel stops
carrying small contributions. The carry costs B x H numbers per step, so keeping it
float32 is cheap; the matmuls, where the time goes, stay bfloat16 (h is rounded to
bfloat16 on its way into ``h W_hh``, as a Flax ``Dense(dtype=bfloat16)`` rounds its
input). Softmax, layer-norm statistics and the loss are reductions whose terms span
many magnitudes (a softmax denominator, a variance), so they run in at least float32
with or without a policy.

What bfloat16 does not change: its exponent is float32's (smallest normal 1.2e-38), so a
vanishing gradient reaches the same floor. What it does change: each rounding costs up
to u relative, so a gradient that passes through T bfloat16 matmuls carries a relative
error that grows like sqrt(T) u for random roundings (``experiments/gradient_norms.py
--dtype bfloat16`` measures it).

Tolerances the tests hold (``tests/test_precision.py``), as normwise relative errors
``||a - b|| / ||b||`` of ``policy("bfloat16")`` against float32 on the same params and
inputs: forward outputs within :data:`FORWARD_RTOL` = 8 u = 2^-5 ~ 0.031 and parameter
gradients within :data:`GRADIENT_RTOL` = 32 u = 2^-3 = 0.125, for every cell of
:func:`seqjax.cells.make` (2 layers, T = 12, padded), masked multi-head attention and the
Transformers (2 + 2 layers). One rounding is within u; a chain of n independent roundings
grows like sqrt(n) u (a worst case like n u), and the forward passes chain a few dozen
(measured: up to 2.9 u). The backward pass chains about twice as many, and attention adds a
cancellation: the logits' gradient is ``w * (dw - sum(w dw))``, with dw (the gradient of the
weights, the primal's dtype under autodiff) rounded to bfloat16, so the subtraction of its
weighted mean amplifies that rounding. Measured over 5 seeds: recurrent layers up to 7.3 u
(the orthogonal RNN, whose bfloat16 W_hh is orthogonal only to u), Transformers up to
17.5 u (Post-LN at initialisation, whose first encoder layer's query and key kernels alone
were off by up to 32%: their gradients ride only on that cancellation).

The presets (:func:`policy`): ``"float32"`` (every dtype float32: the same results
as no policy for float32 inputs), ``"bfloat16"`` (params float32, compute bfloat16,
output float32) and ``"float64"`` (needs ``jax_enable_x64``). jmp's string form,
``"params=float32,compute=bfloat16,output=float32"`` (or ``"p=f32,c=bf16,o=f32"``),
names any other combination. float16 is refused: its 5-bit exponent underflows
gradients below 6.1e-5 unless the loss is scaled, and seqjax does not scale losses.

Where a policy goes: ``recurrent.layer(..., precision=...)``,
``attention.multi_head_attention(..., precision=...)``, the Transformer stacks and
models (``transformer.encoder``, ``decoder``, ``encoder_decoder``, ``transformer``,
``decoder_only``), the models of :mod:`seqjax.models`, the RNN ``seq2seq.seq2seq``, and
``train.trainer(..., precision=...)``. A component given a policy casts its params and
floating inputs to the compute dtype on entry (autodiff carries the gradient back to
the stored dtype) and its outputs to the output dtype on exit; ``init`` makes params in
the param dtype. ``precision=None`` (the default) casts nothing: every array keeps its
own dtype, and float32 computations are exactly those of a policy-free seqjax (only the
"float32 always" rows above also apply to bfloat16 arrays given without a policy).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from seqjax import checks
from seqjax.types import DType

__all__ = ["Policy", "policy", "PRESETS", "accumulation_dtype", "cast_floating", "wrap", "FORWARD_RTOL",
           "GRADIENT_RTOL", "BFLOAT16_UNIT_ROUNDOFF"]

#: bfloat16's unit roundoff u = 2^-8: the largest relative error of one rounding (8-bit significand).
BFLOAT16_UNIT_ROUNDOFF = 2.0 ** -8
#: Normwise relative error of a bfloat16-compute forward pass against float32 that the tests allow: 8 u.
FORWARD_RTOL = 8 * BFLOAT16_UNIT_ROUNDOFF
#: Normwise relative error of bfloat16-compute parameter gradients against float32 that the tests allow: 32 u.
GRADIENT_RTOL = 32 * BFLOAT16_UNIT_ROUNDOFF

_SHORT = {"f32": "float32", "bf16": "bfloat16", "f64": "float64", "f16": "float16"}
_KEYS = {"p": "param_dtype", "param": "param_dtype", "params": "param_dtype",
         "c": "compute_dtype", "compute": "compute_dtype",
         "o": "output_dtype", "output": "output_dtype"}


def accumulation_dtype(dtype: DType) -> jnp.dtype:
    """``promote_types(dtype, float32)``: the dtype a reduction or a recurrent carry runs in
    (float32 for bfloat16 and float32, float64 for float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def cast_floating(tree: Any, dtype: DType) -> Any:
    """Every floating array leaf of ``tree`` cast to ``dtype``; integer, boolean and key
    leaves (token ids, lengths, masks, PRNG keys) and non-arrays are returned unchanged."""
    def cast(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf).astype(dtype)
        return leaf
    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The dtypes of a mixed-precision computation (see the module docstring's table).

    Attributes:
      param_dtype: stored params, their gradients and the optimiser state.
      compute_dtype: matmuls and the element-wise maths around them.
      output_dtype: what a component given this policy returns.

    Each is float32, bfloat16 or float64 (a TypeError names the field for a
    non-floating dtype, a ValueError refuses float16). Frozen and hashable, so a
    policy can be a static argument of ``jax.jit``.
    """

    param_dtype: DType = jnp.float32
    compute_dtype: DType = jnp.float32
    output_dtype: DType = jnp.float32

    def __post_init__(self):
        for f in dataclasses.fields(self):
            dtype = checks.check_float_dtype(getattr(self, f.name), f"Policy.{f.name}")
            if dtype == jnp.float16:
                raise ValueError(f"Policy.{f.name}=float16 is not supported: float16's 5-bit exponent underflows "
                                 "gradients below 6.1e-5 without loss scaling, which seqjax does not do; "
                                 "use bfloat16 (float32's exponent range)")
            object.__setattr__(self, f.name, dtype)

    @property
    def accumulation_dtype(self) -> jnp.dtype:
        """The recurrent carry's dtype under this policy: :func:`accumulation_dtype` of the compute dtype."""
        return accumulation_dtype(self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        """Floating leaves to ``param_dtype`` (:func:`cast_floating`)."""
        return cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Floating leaves to ``compute_dtype`` (:func:`cast_floating`)."""
        return cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Floating leaves to ``output_dtype`` (:func:`cast_floating`)."""
        return cast_floating(tree, self.output_dtype)

    def __str__(self) -> str:
        """jmp's form, which :func:`policy` reads back: ``params=float32,compute=bfloat16,output=float32``."""
        return f"params={self.param_dtype.name},compute={self.compute_dtype.name},output={self.output_dtype.name}"


#: The named policies of :func:`policy`.
PRESETS = {
    "float32": Policy(jnp.float32, jnp.float32, jnp.float32),
    "bfloat16": Policy(jnp.float32, jnp.bfloat16, jnp.float32),
    "float64": Policy(jnp.float64, jnp.float64, jnp.float64),
}


def policy(name: str) -> Policy:
    """A policy by name: a preset of :data:`PRESETS` (``"float32"``, ``"bfloat16"``,
    ``"float64"``) or jmp's string form, ``"params=float32,compute=bfloat16,output=float32"``
    (keys ``p``/``params``, ``c``/``compute``, ``o``/``output``; dtypes by name or as
    ``f32``, ``bf16``, ``f64``; a key left out is float32).

    Raises:
      TypeError: ``name`` is not a string.
      ValueError: an unknown preset, key or dtype, or float16.
    """
    if not isinstance(name, str):
        raise TypeError(f"policy name must be a string such as 'bfloat16', got {type(name).__name__}")
    if name in PRESETS:
        return PRESETS[name]
    if "=" not in name:
        raise ValueError(f"unknown precision policy {name!r}: use one of {list(PRESETS)} or the form "
                         "'params=float32,compute=bfloat16,output=float32'")
    fields: dict[str, str] = {}
    for part in name.split(","):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r} in the precision policy {name!r}; keys: params, compute, output")
        fields[_KEYS[key]] = _SHORT.get(value, value)
    try:
        return Policy(**fields)
    except TypeError as err:
        raise ValueError(f"precision policy {name!r}: {err}") from None


#: Values of ``outputs`` in :func:`wrap`.
WRAP_OUTPUTS = ("all", "first", "none")


def wrap(policy: Policy | None, fn: Callable, *, inputs: bool = True, outputs: str = "all") -> Callable:
    """``fn(params, *args, **kwargs)`` run under ``policy``: the one place a model's public
    function meets its policy.

    On entry ``params`` (and, with ``inputs=True``, the floating positional ``args``) are
    cast to the compute dtype; keyword arguments (masks, lengths, keys, carries) are passed
    as given. On exit: ``outputs="all"`` casts every floating output to the output dtype;
    ``"first"`` is for ``fn`` returning ``(outputs, state)``, casting the first and passing
    the state (a KV cache, a recurrent carry) through as ``fn`` made it, because it goes
    back in on the next call; ``"none"`` returns what ``fn`` returns. With ``policy=None``
    it returns ``fn`` itself.
    """
    if policy is None:
        return fn
    if outputs not in WRAP_OUTPUTS:
        raise ValueError(f"outputs must be one of {list(WRAP_OUTPUTS)}, got {outputs!r}")

    @functools.wraps(fn)
    def wrapped(params, *args, **kwargs):
        params = policy.cast_to_compute(params)
        if inputs:
            args = policy.cast_to_compute(args)
        out = fn(params, *args, **kwargs)
        if outputs == "all":
            return policy.cast_to_output(out)
        if outputs == "first":
            return (policy.cast_to_output(out[0]),) + tuple(out[1:])
        return out
    return wrapped
