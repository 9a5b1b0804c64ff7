r"""The shared layers: dense, embedding, layer norm, dropout, activations, initialisers.

Every model in seqjax builds its projections, tables and norms from these, so a
parameter layout and an initialiser are written once. Params are nested dicts::

    dense        {"kernel": (E, F), "bias": (F,)}     # "bias" absent when use_bias=False
    embedding    {"embedding": (V, D)}
    layer norm   {"scale": (D,), "bias": (D,)}

Kernels are stored input-major, so a projection is ``x @ kernel + bias`` (the
transpose of PyTorch's ``nn.Linear.weight``).

Initialisers (``init=`` of :func:`dense_init`):

* ``"xavier"``: Glorot & Bengio 2010 uniform kernel, zero bias (Transformers,
  attention, as ``torch.nn.MultiheadAttention``'s in-projection and Flax's examples).
* ``"torch"``: PyTorch ``nn.Linear``'s default, kernel and bias ~ U(-1/sqrt(E), 1/sqrt(E)).
* ``"lecun"``: LeCun normal kernel (Flax ``nn.Dense``'s default), zero bias.

Dropout has one convention everywhere in seqjax: ``dropout_key: PRNGKey | None``;
None means deterministic (evaluation), a key switches dropout on.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from seqjax import checks
from seqjax.precision import accumulation_dtype
from seqjax.types import Array, DType, Params, PRNGKey

__all__ = ["ACTIVATIONS", "activation", "INITS", "dense_init", "dense", "embedding_init", "embed",
           "layer_norm_init", "layer_norm", "dropout", "sub_key"]

#: The one activation table (cells, feed-forward blocks, models).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda a: a,
    "gelu": lambda a: jax.nn.gelu(a, approximate=False),      # exact erf GELU, torch's "gelu"
    "gelu_tanh": lambda a: jax.nn.gelu(a, approximate=True),
}


def activation(name: str, allowed: tuple[str, ...] | None = None,
               arg: str = "activation") -> Callable[[Array], Array]:
    """The activation ``name`` from :data:`ACTIVATIONS` (restricted to ``allowed`` if given)."""
    choices = tuple(ACTIVATIONS) if allowed is None else allowed
    checks.check_choice(name, arg, choices)
    return ACTIVATIONS[name]


#: Values of ``init`` accepted by :func:`dense_init`.
INITS = ("xavier", "torch", "lecun")


def dense_init(key: PRNGKey, in_size: int, out_size: int, *, use_bias: bool = True,
               init: str = "xavier", dtype: DType = jnp.float32) -> Params:
    """Params of a dense layer: ``{"kernel": (E, F), "bias": (F,)}``.

    Args:
      key: PRNG key.
      in_size: E.
      out_size: F.
      use_bias: whether ``"bias"`` exists.
      init: ``"xavier"`` (uniform kernel, zero bias), ``"torch"`` (kernel and bias
        ~ U(-1/sqrt(E), 1/sqrt(E))) or ``"lecun"`` (normal kernel, zero bias).
      dtype: a floating dtype.
    """
    in_size = checks.check_int(in_size, "in_size")
    out_size = checks.check_int(out_size, "out_size")
    checks.check_choice(init, "init", INITS)
    dtype = checks.check_float_dtype(dtype)
    if init == "torch":
        bound = 1.0 / math.sqrt(in_size)
        k_w, k_b = jax.random.split(key)
        p = {"kernel": jax.random.uniform(k_w, (in_size, out_size), dtype, -bound, bound)}
        if use_bias:
            p["bias"] = jax.random.uniform(k_b, (out_size,), dtype, -bound, bound)
        return p
    make = jax.nn.initializers.xavier_uniform() if init == "xavier" else jax.nn.initializers.lecun_normal()
    p = {"kernel": make(key, (in_size, out_size), dtype)}
    if use_bias:
        p["bias"] = jnp.zeros((out_size,), dtype)
    return p


def dense(p: Params, x: Array) -> Array:
    """``x @ kernel + bias``: x (..., E) -> (..., F)."""
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def embedding_init(key: PRNGKey, vocab_size: int, size: int, *, std: float = 1.0,
                   dtype: DType = jnp.float32) -> Params:
    """``{"embedding": (V, D)}`` with entries ~ N(0, std^2)."""
    vocab_size = checks.check_int(vocab_size, "vocab_size")
    size = checks.check_int(size, "size")
    return {"embedding": std * jax.random.normal(key, (vocab_size, size), checks.check_float_dtype(dtype))}


def embed(p: Params, tokens: Array, *, scale: float = 1.0) -> Array:
    """``embedding[tokens] * scale``: tokens (B, T) ints -> (B, T, D).

    Check the ids first (:func:`seqjax.checks.check_tokens`): a gather clamps
    out-of-range ids silently.
    """
    x = jnp.take(p["embedding"], tokens, axis=0)
    return x if scale == 1.0 else x * scale


def layer_norm_init(size: int, *, use_bias: bool = True, dtype: DType = jnp.float32) -> Params:
    """``{"scale": ones (D,), "bias": zeros (D,)}``."""
    p = {"scale": jnp.ones((size,), dtype)}
    if use_bias:
        p["bias"] = jnp.zeros((size,), dtype)
    return p


def layer_norm(p: Params, x: Array, eps: float = 1e-5) -> Array:
    r"""LayerNorm over the last axis (Ba et al. 2016), x (..., D) -> (..., D):

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \mathrm{scale} + \mathrm{bias}

    with the biased variance, as ``torch.nn.LayerNorm``; ``"bias"`` is optional. The
    statistics and the normalisation run in at least float32 (bfloat16 x is promoted
    first: :func:`seqjax.precision.accumulation_dtype`); y is returned in the dtype of
    ``x`` and the params, promoted.
    """
    dtype = jnp.result_type(x, *p.values())
    x = x.astype(accumulation_dtype(x.dtype))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"]
    y = y + p["bias"] if "bias" in p else y
    return y.astype(dtype)


def dropout(x: Array, rate: float, dropout_key: PRNGKey | None) -> Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest by 1/(1-rate).

    Deterministic (the identity) when ``dropout_key`` is None or ``rate == 0``.
    """
    if dropout_key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(dropout_key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def sub_key(key: PRNGKey | None, i: int) -> PRNGKey | None:
    """``fold_in(key, i)``, or None when ``key`` is None (deterministic stays deterministic)."""
    return None if key is None else jax.random.fold_in(key, i)
