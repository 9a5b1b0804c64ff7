"""Every validation rule of seqjax's public boundary, written once.

Each function checks one kind of argument and raises a ``TypeError`` (wrong kind
or dtype) or ``ValueError`` (wrong value or shape) whose message names the
argument, what was expected and what was received, before anything is traced
deep into XLA. Every module imports its checks from here; none writes its own.

Values that only exist at run time (lengths, token ids, decode positions) are
checked when they are concrete; under ``jax.jit`` they are tracers and only their
shape and dtype can be checked.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.types import Array

__all__ = [
    "check_int", "check_rate", "check_float", "check_bool", "check_choice", "check_float_dtype",
    "check_array", "check_lengths", "check_mask", "check_bias", "broadcast_to_rank",
    "check_tokens", "check_token_id", "check_key", "check_tree_like", "concrete_int", "is_concrete",
    "check_precision",
]


def check_int(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An int (Python or NumPy, not bool) in ``[minimum, maximum]``; returns ``int(value)``."""
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int {bounds}, got {value!r} of type {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


def check_float(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                strict_minimum: bool = False) -> float:
    """A finite real number (int or float, not bool or str) within the bounds; returns ``float(value)``.

    ``strict_minimum=True`` makes the lower bound exclusive (``> minimum``).
    """
    lo = "" if minimum is None else (f"> {minimum}" if strict_minimum else f">= {minimum}")
    hi = "" if maximum is None else f"<= {maximum}"
    want = "a finite number" + (f" {lo}" if lo else "") + (" and " if lo and hi else " " if hi else "") + hi
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if not (isinstance(value, jax.Array) and value.shape == () and not isinstance(value, jax.core.Tracer)):
            raise TypeError(f"{name} must be {want.strip()}, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {want.strip()}, got {value}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        raise ValueError(f"{name} must be {want.strip()}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be {want.strip()}, got {value}")
    return value


def check_rate(value: Any, name: str) -> float:
    """A probability-like rate in ``[0, 1)`` (dropout, label smoothing)."""
    value = check_float(value, name, minimum=0.0)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """A Python or NumPy bool (not an int, not a string such as ``"False"``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_float_dtype(dtype: Any, name: str = "dtype") -> jnp.dtype:
    """A floating dtype (float32, bfloat16, float16, float64)."""
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{name} must be a floating dtype (float32, bfloat16, float64), got {dtype!r}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype (float32, bfloat16, float64), got {dtype}")
    return dtype


def check_array(x: Any, name: str, ndim: int | tuple[int, ...] | None, layout: str, *,
                kind: str | None = "floating") -> Any:
    """An array (JAX or NumPy) of one of the ranks ``ndim`` and of the dtype ``kind``.

    Args:
      x: the argument.
      name: its name in error messages.
      ndim: the allowed rank(s); None allows any rank.
      layout: the expected shape in the glossary's letters, e.g. ``"(B, T, E)"``.
      kind: ``"floating"``, ``"integer"`` or None (any dtype).

    Returns:
      ``x`` unchanged.
    """
    if not hasattr(x, "ndim") or not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array of shape {layout}, got {type(x).__name__}")
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in ndims:
            raise ValueError(f"{name} must have shape {layout} (rank {' or '.join(map(str, ndims))}), "
                             f"got shape {tuple(x.shape)}")
    if kind == "floating" and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating (float32, bfloat16, float64), got dtype {x.dtype}")
    if kind == "integer" and not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be integers, got dtype {x.dtype}")
    return x


def is_concrete(x: Any) -> bool:
    """True unless ``x`` is (or holds) a tracer, i.e. its values can be read now."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def concrete_int(x: Any) -> int | None:
    """``int(x)`` for a concrete scalar (Python int or array), None when ``x`` is traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    return int(np.asarray(x))


def check_lengths(lengths: Any, batch_size: int, max_len: int, name: str = "lengths") -> Array:
    """The one rule for sequence lengths: (B,) integers in ``[1, max_len]`` (right padding).

    Every path that takes lengths (recurrent layers, attention padding masks,
    Transformer and seq2seq sources) calls this, so a length of 0 (an empty
    sequence), a negative length or one beyond the padded size is refused the same
    way everywhere. Values are checked when concrete.

    Returns:
      ``lengths`` as a JAX array.
    """
    if isinstance(lengths, (list, tuple)):
        lengths = np.asarray(lengths)
    if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
        raise TypeError(f"{name} must be a (B,) integer array, got {type(lengths).__name__}")
    if tuple(lengths.shape) != (batch_size,):
        raise ValueError(f"{name} must have shape (B,) = ({batch_size},), got shape {tuple(lengths.shape)}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{name} must be integers, got dtype {lengths.dtype}")
    if is_concrete(lengths):
        values = np.asarray(lengths)
        if values.size and (values.min() < 1 or values.max() > max_len):
            raise ValueError(f"{name} must lie in [1, T] = [1, {max_len}], "
                             f"got min {values.min()} and max {values.max()}")
    return jnp.asarray(lengths)


def broadcast_to_rank(x: Array, target: tuple[int, ...], name: str) -> Array:
    """``x`` reshaped with leading 1s to ``len(target)`` dims; ValueError if it does not broadcast."""
    ok = x.ndim <= len(target)
    shape = tuple(x.shape)
    if ok:
        shape = (1,) * (len(target) - x.ndim) + shape
        ok = all(s in (1, t) for s, t in zip(shape, target))
    if not ok:
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast to {tuple(target)}")
    return x.reshape(shape)


def check_mask(mask: Any, target: tuple[int, ...], name: str = "mask") -> Array | None:
    """A boolean mask (True = attend) that broadcasts to ``target``; None passes.

    Returns:
      None, or ``mask`` reshaped with leading 1s to ``len(target)`` dimensions.
    """
    if mask is None:
        return None
    if not hasattr(mask, "ndim") or not hasattr(mask, "dtype"):
        raise TypeError(f"{name} must be a boolean array (True = attend), got {type(mask).__name__}")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{name} must be boolean (True = attend), got dtype {mask.dtype}; "
                        f"convert an additive float mask with `{name} == 0` or pass it as bias")
    return broadcast_to_rank(mask, target, name)


def check_bias(bias: Any, target: tuple[int, ...], name: str = "bias") -> Array | None:
    """A floating array that broadcasts to ``target``; None passes."""
    if bias is None:
        return None
    if not hasattr(bias, "ndim") or not jnp.issubdtype(bias.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array broadcastable to {tuple(target)}, got "
                        f"{getattr(bias, 'dtype', type(bias).__name__)}")
    return broadcast_to_rank(bias, target, name)


def check_tokens(tokens: Any, vocab_size: int, name: str = "tokens",
                 ndim: tuple[int, ...] = (2,)) -> Array:
    """Integer token ids of one of the ranks ``ndim``, in ``[0, vocab_size)`` when concrete.

    A gather clamps out-of-range ids silently, so they are refused here instead.
    JAX and NumPy arrays are accepted; lists and float arrays are refused.
    """
    if not hasattr(tokens, "ndim") or not hasattr(tokens, "dtype"):
        raise TypeError(f"{name} must be an array of integer token ids (JAX or NumPy), "
                        f"got {type(tokens).__name__}")
    if tokens.ndim not in ndim:
        layout = {0: "()", 1: "(B,)", 2: "(B, T)", 3: "(B, W, T)"}
        raise ValueError(f"{name} must have shape {' or '.join(layout.get(n, f'rank {n}') for n in ndim)}, "
                         f"got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    if is_concrete(tokens) and tokens.size:
        values = np.asarray(tokens)
        lo, hi = values.min(), values.max()
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} must lie in [0, vocab_size) = [0, {vocab_size}), got min {lo} "
                             f"and max {hi}")
    return jnp.asarray(tokens)


def check_token_id(value: Any, name: str, vocab_size: int, *, optional: bool = False) -> int | None:
    """One token id (an int in ``[0, vocab_size)``), e.g. ``eos_id``; None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {value!r}")
    return int(value)


def check_key(key: Any, name: str = "key") -> Any:
    """One PRNG key: typed (``jax.random.key(0)``) or legacy raw (uint32 (2,), ``jax.random.PRNGKey``).

    Ints, float arrays and batches of keys are refused with their type, dtype and shape.
    """
    if not isinstance(key, jax.Array):
        raise TypeError(f"{name} must be a jax PRNG key (jax.random.key(0)), got {key!r} "
                        f"of type {type(key).__name__}")
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if not (typed and key.shape == ()) and not (key.dtype == jnp.uint32 and key.shape == (2,)):
        raise TypeError(f"{name} must be a single jax PRNG key (jax.random.key(0)), got an array of "
                        f"dtype {key.dtype} and shape {key.shape}")
    return key


def check_tree_like(value: Any, like: Any, name: str, layout: str) -> Any:
    """A pytree with the structure, leaf shapes and leaf dtypes of ``like`` (e.g. a carry).

    Args:
      value: the argument, e.g. an ``initial_carry``.
      like: the expected pytree of arrays or ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``).
      name: its name in error messages.
      layout: the expected leaf shape in the glossary's letters, e.g. ``"(L*D, B, H)"``.

    Returns:
      ``value`` unchanged.
    """
    if jax.tree.structure(value) != jax.tree.structure(like):
        raise ValueError(f"{name} must have the structure {jax.tree.structure(like)}, "
                         f"got {jax.tree.structure(value)}")
    for leaf, ref in zip(jax.tree.leaves(value), jax.tree.leaves(like)):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"{name} leaves must be arrays of shape {layout}, got {type(leaf).__name__}")
        if tuple(leaf.shape) != tuple(ref.shape):
            raise ValueError(f"{name} leaves must have shape {layout} = {tuple(ref.shape)}, "
                             f"got {tuple(leaf.shape)}")
        if leaf.dtype != ref.dtype:
            raise TypeError(f"{name} must have dtype {ref.dtype}, got {leaf.dtype}")
    return value


def check_precision(value: Any, name: str = "precision") -> Any:
    """A mixed-precision policy: None (no policy), a :class:`seqjax.precision.Policy`, or a
    name :func:`seqjax.precision.policy` knows (``"float32"``, ``"bfloat16"``, ``"float64"``,
    ``"params=float32,compute=bfloat16,output=float32"``). Returns the Policy, or None.

    A policy with a float64 dtype needs ``jax_enable_x64``: without it JAX would make
    float32 arrays and the policy would silently not take effect, so it is refused.
    """
    from seqjax import precision                 # imported here: seqjax.precision builds on this module
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = precision.policy(value)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    if not isinstance(value, precision.Policy):
        raise TypeError(f"{name} must be None, a seqjax.precision.Policy or a policy name "
                        f"{list(precision.PRESETS)}, got {value!r} of type {type(value).__name__}")
    wide = [f for f in ("param_dtype", "compute_dtype", "output_dtype") if getattr(value, f) == jnp.float64]
    if wide and not jax.config.jax_enable_x64:
        raise ValueError(f"{name}={value} needs float64, which JAX makes only with jax_enable_x64 "
                         "(jax.config.update('jax_enable_x64', True)); without it every array would be float32")
    return value
