r"""Gradient-flow analysis: per-step state gradients, Jacobian norms, input-gradient profiles.

The quantities here are the ones the vanishing/exploding-gradient literature plots
(Bengio et al. 1994; Hochreiter & Schmidhuber 1997; Pascanu et al. 2013):

* :func:`state_gradients`: the **total** derivative :math:`\partial L / \partial h_t`
  of a loss with respect to the recurrent state after every step, in one backward pass.
* :func:`jacobian_norms`: :math:`\| \partial h_T / \partial h_t \|_2` (spectral norm,
  per example, per step), exactly for small H and by power iteration for large H.
* :func:`input_gradient_norms`: :math:`\| \partial L / \partial x_t \|` for any
  sequence-to-sequence function (attention models), with the loss read at one position.
* :func:`safe_norm`: a 2-norm that neither underflows nor overflows.

This module is analysis only: the training metrics (global norm, per-group norms,
gradient statistics) live with training, in :mod:`seqjax.train`.

Everything recurrent goes through :func:`seqjax.recurrent.unroll` (a cell) or
:func:`seqjax.recurrent.layer`'s own layer x direction loop (a layer, through its
``perturbations`` hook); no other loop over time or layers is written here.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import checks
from seqjax.cells import Cell
from seqjax.precision import accumulation_dtype
from seqjax.recurrent import Recurrent, carry_dtype, perturbed_step, unroll
from seqjax.types import Array, Carry, Params, PRNGKey

__all__ = ["state_gradients", "jacobian_norms", "input_gradient_norms", "safe_norm"]


def safe_norm(x: Array, axis=-1) -> Array:
    r"""2-norm over ``axis`` that neither underflows nor overflows: :math:`m \|x/m\|`, m = max|x|.

    Squaring a float32 gradient of 1e-25 gives 1e-50, which flushes to zero, so a plain
    ``sqrt(sum(x**2))`` reports exactly 0 for any vector below about 1e-19 (1e-154 in
    float64). Vanishing-gradient curves reach far below that; this keeps them.

    Args:
      x: any floating array.
      axis: an int or a tuple of ints.

    Returns:
      ``x`` reduced over ``axis``, in at least float32 (a bfloat16 gradient's norm is
      taken in float32: :func:`seqjax.precision.accumulation_dtype`).
    """
    x = x.astype(accumulation_dtype(x.dtype))
    m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
    norm = jnp.squeeze(safe_m, axis) * jnp.sqrt(jnp.sum(jnp.square(x / safe_m), axis=axis))
    return jnp.where(jnp.squeeze(m, axis) > 0, norm, jnp.zeros_like(norm))


# ----------------------------------------------------------------------------- checks


def _check_xs(xs, name: str = "xs") -> None:
    """(B, T >= 1, E) floating, batch-major."""
    checks.check_array(xs, name, 3, "(B, T, E)")
    if xs.shape[1] < 1:
        raise ValueError(f"{name} must have at least one time step (T >= 1), got shape {tuple(xs.shape)}")


def _check_cell_inputs(cell: Cell, params: Params, xs, initial_carry) -> Carry:
    """Validate (cell, params, xs, initial_carry); return the initial carry, (B, H) leaves."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax.cells.Cell or a seqjax.recurrent.Recurrent layer, "
                        f"got {type(cell).__name__}")
    _check_xs(xs)
    try:
        E = params["w_ih"].shape[0]
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError("params must be the dict cell.init returns (with 'w_ih' of shape (E, G*H))") from err
    if xs.shape[-1] != E:
        raise ValueError(f"xs has {xs.shape[-1]} features (shape {tuple(xs.shape)}) but the cell's params "
                         f"were initialised for input_size E={E}")
    B = xs.shape[0]
    ref = cell.initial_carry((B,), carry_dtype(params, xs))
    if initial_carry is None:
        return ref
    return checks.check_tree_like(initial_carry, ref, "initial_carry", "(B, H)")


def _check_scalar_loss(loss_fn: Callable, *args) -> None:
    """Trace ``loss_fn`` abstractly (jax.eval_shape) and insist on a floating scalar."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    out = jax.eval_shape(loss_fn, *args)
    leaves = jax.tree.leaves(out)
    if len(leaves) != 1 or tuple(leaves[0].shape) != ():
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(f"loss_fn must return a scalar (shape ()), got {shapes if len(shapes) != 1 else shapes[0]}"
                         " - reduce it, e.g. with jnp.mean")
    if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a floating scalar, got dtype {leaves[0].dtype}")


# ----------------------------------------------------------------------------- state gradients


def _zeros_with_time(carry: Carry, T: int) -> Carry:
    """(B, H) carry leaves -> (B, T, H) zeros: one perturbation per step."""
    return jax.tree.map(lambda a: jnp.zeros((a.shape[0], T) + a.shape[1:], a.dtype), carry)


def state_gradients(cell: Cell | Recurrent, params: Params, xs: Array,
                    loss_fn: Callable[[Array], Array], *, initial_carry: Carry | None = None,
                    lengths: Array | None = None):
    r"""Total derivative :math:`\partial L/\partial h_t` of a loss w.r.t. every step's state.

    :math:`h_t` is the carry after consuming :math:`x_t` (for an LSTM the whole
    ``LSTMState(h, c)``), and the derivative is the **total** one: it runs through
    every later step,

    .. math::
        \frac{\partial L}{\partial h_t} = \frac{\partial^+ L}{\partial y_t}\frac{\partial y_t}{\partial h_t}
          + \frac{\partial L}{\partial h_{t+1}}\frac{\partial h_{t+1}}{\partial h_t}.

    It is computed in **one** backward pass: a zero perturbation
    :math:`\epsilon_t` is added to the carry at every step (the scan reads
    :math:`(x_t, \epsilon_t)` and carries :math:`h_t + \epsilon_t`), and
    :math:`\partial L/\partial h_t = \partial L/\partial \epsilon_t` at
    :math:`\epsilon = 0`. The cost is about one ``jax.value_and_grad`` of the loss
    (``benchmarks/state_gradients.py`` measures it). The perturbed step is
    :func:`seqjax.recurrent.perturbed_step`; a cell runs it through
    :func:`~seqjax.recurrent.unroll`, a layer through its own
    ``apply(..., perturbations=...)`` hook (so a layer is analysed by the same
    layer x direction loop that trains it; whatever the layer's ``backward`` path,
    that call uses the plain autodiff unroll).

    Why not the gradient w.r.t. the scan *outputs* ``ys``: differentiating
    ``loss_fn(ys)`` w.r.t. ``ys`` treats every :math:`y_t` as an independent leaf, so
    it returns only the *explicit* term :math:`\partial^+ L/\partial y_t`, the effect
    of :math:`y_t` on the loss through the loss function alone, and misses the path
    through :math:`h_{t+1}, h_{t+2}, \dots`. Under a loss on the final step only
    (adding problem, classification) that explicit term is exactly zero for every
    step but the last, which says nothing about vanishing or exploding gradients.
    The perturbation trick measures the total derivative, the quantity of
    Bengio et al. 1994 and Pascanu et al. 2013.

    Args:
      cell: a :class:`seqjax.cells.Cell`, or a multi-layer / bidirectional
        :class:`seqjax.recurrent.Recurrent` layer (analysed without dropout:
        deterministic, no ``dropout_key``).
      params: ``cell.init(...)`` (or ``layer.init(...)``).
      xs: (B, T, E) floating inputs, batch-major, T >= 1.
      loss_fn: maps the per-step outputs to a scalar: (B, T, H) for a cell,
        (B, T, D*H) for a layer (D = 2 if bidirectional). Checked with
        ``jax.eval_shape`` before anything is computed.
      initial_carry: a cell's carry with (B, H) leaves, or a layer's
        ``(L*D, B, H)`` final-state layout; zeros by default.
      lengths: optional (B,) ints in [1, T] (right padding). Padded steps do not
        change the carry, so their state gradient is exactly zero.

    Returns:
      For a cell: the carry's structure with a time axis, (B, T, H) leaves (an
      ``LSTMState(h, c)`` of two (B, T, H) arrays for an LSTM); entry ``[:, t]`` is
      :math:`\partial L/\partial h_t` for the state after ``xs[:, t]``.

      For a layer: a list of length L mirroring ``params["layers"]``: element k is
      ``{"forward": g, "backward": g}`` (``"backward"`` only when bidirectional)
      with ``g`` as for a cell: the gradient w.r.t. layer k's own carries. For the
      backward direction, entry ``[:, t]`` is its state after consuming ``xs[:, t]``
      on its way from the end.

    Raises:
      TypeError / ValueError: on a cell of the wrong type, ``xs`` that is not
      (B, T >= 1, E) with E matching ``params``, a mis-shaped ``initial_carry`` or
      ``lengths``, or a ``loss_fn`` that does not return a floating scalar.
    """
    if isinstance(cell, Recurrent):
        return _layer_state_gradients(cell, params, xs, loss_fn, initial_carry, lengths)
    carry0 = _check_cell_inputs(cell, params, xs, initial_carry)
    B, T, _ = xs.shape
    if lengths is not None:
        lengths = checks.check_lengths(lengths, B, T)
    eps0 = _zeros_with_time(carry0, T)
    step = perturbed_step(cell)

    def loss_of_eps(eps):
        _, ys = unroll(step, params, carry0, (xs, eps), lengths=lengths)  # ys (B, T, H)
        return loss_fn(ys)

    ys_shape = jax.eval_shape(lambda e: unroll(step, params, carry0, (xs, e), lengths=lengths)[1], eps0)
    _check_scalar_loss(loss_fn, ys_shape)
    return jax.grad(loss_of_eps)(eps0)


def _layer_state_gradients(rec: Recurrent, params, xs, loss_fn, initial_carry, lengths):
    """The layer's own forward with zero perturbations (its ``perturbations`` hook), differentiated."""
    _check_xs(xs)

    def outputs(eps):                                                   # (B, T, D*H)
        return rec.apply(params, xs, lengths=lengths, initial_carry=initial_carry, perturbations=eps)[0]

    # The layer's own boundary checks (params layout, E, lengths, initial_carry) run
    # here on shapes only; eval_shape also gives the outputs' shape for the loss check.
    _check_scalar_loss(loss_fn, jax.eval_shape(outputs, None))
    cfg = rec.config
    B, T, _ = xs.shape
    dtype = carry_dtype(params["layers"][0]["forward"], xs, cfg.precision)     # the layer's carry dtype
    eps0 = [{d: cfg.cell.initial_carry((B, T), dtype) for d in cfg.directions}   # (B, T, H) leaves
            for _ in range(cfg.num_layers)]
    return jax.grad(lambda eps: loss_fn(outputs(eps)))(eps0)


# ----------------------------------------------------------------------------- Jacobian norms


def _flatten_carry(carry: Carry) -> Array:
    """Carry leaves (..., H) -> one vector (..., n) with n = (number of leaves) * H."""
    return jnp.concatenate(jax.tree.leaves(carry), axis=-1)


def _unflatten_carry(z: Array, like: Carry) -> Carry:
    leaves, treedef = jax.tree.flatten(like)
    parts = jnp.split(z, len(leaves), axis=-1)
    return jax.tree.unflatten(treedef, parts)


def _per_example_norm(tree: Carry) -> Array:
    """The 2-norm over everything but the leading batch axis (all leaves together): (B,)."""
    flat = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(tree)], axis=1)
    return safe_norm(flat, axis=1)


@functools.lru_cache(maxsize=64)
def _carry_step(cell: Cell) -> Callable:
    """``cell.step`` emitting the new carry as its output (the states h_1..h_T).

    Like every step function here it depends on the cell only: params and inputs
    arrive through :func:`~seqjax.recurrent.unroll`, so eager calls with new params
    reuse one compilation and the jit cache holds no arrays.
    """
    def step(params: Params, carry: Carry, x: Array) -> tuple[Carry, Carry]:
        carry, _ = cell.step(params, carry, x)
        return carry, carry
    return step


@functools.lru_cache(maxsize=64)
def _jacobian_product_step(cell: Cell) -> Callable:
    """Reverse-scan body accumulating M_t = dh_{T-1}/dh_t: scanned input (h_{t-1}, x_t).

    ``step(params, M, (prev, x)) -> (M J_t, ||M||_2)`` with M (B, n, n), ``prev`` the
    carry before step t ((B, H) leaves) and J_t = dh_t/dh_{t-1} formed per example
    with ``jax.jacfwd``. Cached per cell; params come through ``unroll``.
    """
    def flat_step(params: Params, z: Array, x: Array, like: Carry) -> Array:   # z (n,), x (E,)
        return _flatten_carry(cell.step(params, _unflatten_carry(z, like), x)[0])

    def step(params: Params, M: Array, prev_x) -> tuple[Array, Array]:
        # On entry M = dh_{T-1}/dh_t (t = this step); emit its norm, then extend it
        # one step back with J_t = dh_t/dh_{t-1}.
        prev, x = prev_x
        like = jax.tree.map(lambda a: a[0], prev)                              # (H,) leaves: structure only
        jac = jax.vmap(jax.jacfwd(flat_step, argnums=1), in_axes=(None, 0, 0, None))
        norm = jnp.linalg.svd(M, compute_uv=False)[:, 0]                      # (B,)
        return M @ jac(params, _flatten_carry(prev), x, like), norm
    return step


def _exact_jacobian_norms(cell: Cell, params: Params, xs: Array, carry0: Carry) -> Array:
    """Accumulated products M_t = J_{T-1} ... J_{t+1}, spectral norm of each: (B, T)."""
    _, states = unroll(_carry_step(cell), params, carry0, xs)                  # (B, T, H) leaves
    prev = jax.tree.map(lambda s0, s: jnp.concatenate([s0[:, None], s[:, :-1]], axis=1), carry0, states)
    B, n = xs.shape[0], cell.hidden_size * len(jax.tree.leaves(carry0))
    dtype = jax.tree.leaves(carry0)[0].dtype
    eye = jnp.broadcast_to(jnp.eye(n, dtype=dtype), (B, n, n))
    _, norms = unroll(_jacobian_product_step(cell), params, eye, (prev, xs), reverse=True)   # (B, T)
    return norms


@functools.partial(jax.jit, static_argnums=(0, 5))
def _power_jacobian_norms(cell: Cell, params: Params, xs: Array, carry0: Carry, steps: Array,
                          num_iters: int, key: PRNGKey) -> Array:
    """Power iteration on M_t^T M_t with JVPs/VJPs of the final state: (B, len(steps)).

    Jitted with the cell and ``num_iters`` static: the power loop's closures are built
    inside the trace, so repeated calls with new params (same shapes) reuse one
    compilation and nothing they capture stays in a cache.
    """
    T = xs.shape[1]
    step = perturbed_step(cell)
    eps0 = _zeros_with_time(carry0, T)

    def final_state(eps):
        return unroll(step, params, carry0, (xs, eps))[0]                      # (B, H) leaves

    _, f_jvp = jax.linearize(final_state, eps0)                                 # eps -> dh_T
    f_vjp = jax.linear_transpose(f_jvp, eps0)                                   # dh_T -> eps

    def matvec(t, v):     # M_t v: v injected at step t only, carried to T
        return f_jvp(jax.tree.map(lambda z, a: z.at[:, t].set(a), eps0, v))

    def rmatvec(t, u):    # M_t^T u: one VJP gives all steps; keep step t
        return jax.tree.map(lambda g: g[:, t], f_vjp(u)[0])

    def normalise(v):
        norm = _per_example_norm(v)
        safe = jnp.where(norm > 0, norm, 1.0)
        return jax.tree.map(lambda a: a / safe.reshape((-1,) + (1,) * (a.ndim - 1)), v)

    def one_step_norm(t, v0):
        def body(_, v):
            return normalise(rmatvec(t, matvec(t, v)))
        v = jax.lax.fori_loop(0, num_iters, body, normalise(v0))
        return _per_example_norm(matvec(t, v))                                  # (B,)

    like = jax.tree.map(lambda a: jnp.zeros((steps.shape[0],) + a.shape, a.dtype), carry0)
    keys = jax.random.split(key, len(jax.tree.leaves(like)))
    v0 = jax.tree.unflatten(jax.tree.structure(like),
                            [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, jax.tree.leaves(like))])
    norms = jax.vmap(one_step_norm)(steps, v0)                                  # (len(steps), B)
    return norms.T


def jacobian_norms(cell: Cell, params: Params, xs: Array, *, initial_carry: Carry | None = None,
                   method: str = "auto", steps=None, num_iters: int = 100,
                   key: PRNGKey | None = None) -> Array:
    r"""Spectral norms :math:`\|\partial h_T/\partial h_t\|_2` per example and step.

    :math:`h_t` is the state after ``xs[:, t]`` (for an LSTM the whole carry, ``h``
    and ``c`` concatenated, n = 2H; otherwise n = H) and :math:`h_T` the final one, so

    .. math::
        \frac{\partial h_T}{\partial h_t} = J_T J_{T-1}\cdots J_{t+1},\qquad
        J_s = \frac{\partial h_s}{\partial h_{s-1}},

    whose norm bounds how much of any loss gradient at T can reach step t
    (Pascanu et al. 2013, eq. 5-7). The last entry is 1 (the identity).

    Methods:
      - ``"exact"``: forms each per-example J_s (n, n) with ``jax.jacfwd`` inside a
        reverse :func:`~seqjax.recurrent.unroll` that accumulates the products and
        takes one SVD per step; O(T B n^3) time, O(B n^2) memory. Use for small H.
      - ``"power"``: power iteration on :math:`M_t^\top M_t` with ``jax.linearize``
        (JVP) and its transpose (VJP) of the final state w.r.t. a perturbation at
        step t; no Jacobian is ever materialised. Each iteration costs one JVP and one
        VJP through the sequence per requested step, so pass ``steps`` (e.g. a log
        grid) for long sequences. Converges at rate
        :math:`(\sigma_2/\sigma_1)^{2k}`; ``num_iters`` sets k.
      - ``"auto"``: exact when n <= 128, power otherwise.

    Args:
      cell: a :class:`seqjax.cells.Cell`.
      params: ``cell.init(...)``.
      xs: (B, T, E) floating inputs, T >= 1.
      initial_carry: the carry with (B, H) leaves; zeros by default.
      method: ``"auto"``, ``"exact"`` or ``"power"``.
      steps: optional 1-D sequence of step indices in [0, T) to evaluate; all steps by
        default.
      num_iters: power iterations (``"power"`` only), >= 1.
      key: PRNG key for the power iteration's start vectors; ``jax.random.key(0)`` if None.

    Returns:
      (B, len(steps)) norms (B, T) by default) in the dtype of ``xs``.
    """
    carry0 = _check_cell_inputs(cell, params, xs, initial_carry)
    checks.check_choice(method, "method", ("auto", "exact", "power"))
    num_iters = checks.check_int(num_iters, "num_iters")
    T = xs.shape[1]
    if steps is None:
        steps = np.arange(T)
    steps = np.asarray(steps)
    if steps.ndim != 1 or steps.size == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"steps must be a non-empty 1-D sequence of ints, got {steps!r}")
    if steps.min() < 0 or steps.max() >= T:
        raise ValueError(f"steps must lie in [0, T) = [0, {T}), got min {steps.min()} and max {steps.max()}")
    n = cell.hidden_size * len(jax.tree.leaves(carry0))
    if method == "auto":
        method = "exact" if n <= 128 else "power"
    if method == "exact":
        return _exact_jacobian_norms(cell, params, xs, carry0)[:, steps]
    key = jax.random.key(0) if key is None else checks.check_key(key)
    return _power_jacobian_norms(cell, params, xs, carry0, jnp.asarray(steps), num_iters, key)


# ----------------------------------------------------------------------------- attention models


def input_gradient_norms(fn: Callable[[Array], Array], x: Array, *, position: int,
                         loss_fn: Callable[[Array], Array] | None = None) -> Array:
    r"""Per-position input-gradient norms :math:`\|\partial L/\partial x_t\|_2` for a loss at one position.

    For a sequence model ``fn`` (e.g. a Transformer encoder with its params closed
    over), the loss reads only the output at ``position``:
    :math:`L = \ell(f(x)_{:, p})`. With a causal model, :math:`\partial L/\partial x_t`
    is exactly zero for t > p; with attention, every t <= p is one step away from p,
    so the profile over t shows no geometric decay with distance.

    Examples are independent as long as ``fn`` does not mix the batch (LayerNorm and
    attention do not; batch norm would), so the gradient of ``loss_fn`` summed over
    the batch gives every example's own gradient.

    Args:
      fn: ``fn(x) -> y``, x (B, T, D) -> y (B, T, D') (or any trailing shape).
      x: (B, T, D) floating inputs to differentiate with respect to.
      position: the output position p read by the loss, in [-T, T).
      loss_fn: maps ``y[:, p]`` (B, D') to a scalar; by default ``0.5 * sum(y**2)``
        (not ``sum(y)``: after a final LayerNorm the sum over features is a constant,
        so its gradient is identically zero).

    Returns:
      (B, T) norms over the feature axis of :math:`\partial L/\partial x_t` (:func:`safe_norm`).
    """
    _check_xs(x, "x")
    T = x.shape[1]
    position = checks.check_int(position, "position", minimum=-T, maximum=T - 1)
    loss_fn = (lambda y: 0.5 * jnp.sum(y ** 2)) if loss_fn is None else loss_fn
    _check_scalar_loss(lambda y: loss_fn(y[:, position]), jax.eval_shape(fn, x))
    g = jax.grad(lambda x_: loss_fn(fn(x_)[:, position]))(x)                     # (B, T, D)
    return safe_norm(g, axis=-1)
