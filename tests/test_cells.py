"""seqjax.cells: each cell's equations against NumPy, the hand-written backward against
autodiff, initialisations, the one registry ``cells.make``, and the shape checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from conftest import assert_close, randn

from seqjax import cells

H, E, B = 5, 3, 4
CELLS = {name: cells.make(name, H) for name in cells.CELL_NAMES}
CELLS["lstm"] = cells.lstm(H, forget_bias=1.0)
#: The cells with PyTorch's parameter layout and initialisation (the module docstring's table).
TORCH_LAYOUT = ("rnn_tanh", "rnn_relu", "rnn_linear", "rnn_sigmoid", "rnn", "irnn", "lstm", "gru")

_sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
_NUMPY_ACTIVATIONS = {"rnn_tanh": np.tanh, "rnn": np.tanh, "rnn_relu": lambda a: np.maximum(a, 0),
                      "irnn": lambda a: np.maximum(a, 0), "rnn_linear": lambda a: a, "rnn_sigmoid": _sig}


def cell_params(p):
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


# ----------------------------------------------------------------------------- equations


@pytest.mark.parametrize("name", TORCH_LAYOUT)
def test_step_equations_against_numpy(name):
    """Each cell's step written out by hand in NumPy from its docstring equations
    (the orthogonal RNN's: test_orthogonal_step_equations_against_numpy)."""
    cell = CELLS[name]
    p = {k: np.asarray(v, np.float64) for k, v in cell.init(jax.random.key(2), E).items()}
    x = np.asarray(randn(3, (B, E)), np.float64)
    h = np.asarray(randn(4, (B, H)), np.float64)
    c = np.asarray(randn(5, (B, H)), np.float64)
    p["b_ih"] = p["b_ih"] + 0.1                     # irnn starts with zero biases: make them matter
    p["b_hh"] = p["b_hh"] - 0.2
    xp, hp = x @ p["w_ih"] + p["b_ih"], h @ p["w_hh"] + p["b_hh"]
    if name == "lstm":
        i, f, g, o = np.split(xp + hp, 4, axis=-1)
        c_new = _sig(f) * c + _sig(i) * np.tanh(g)
        want = (_sig(o) * np.tanh(c_new), c_new)
        carry, y = cell.step(cell_params(p), cells.LSTMState(jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)),
                             jnp.asarray(x, jnp.float32))
        assert_close((carry.h, carry.c), want, rtol=1e-5, atol=1e-5)
        assert_close(y, want[0], rtol=1e-5, atol=1e-5)
        return
    if name == "gru":
        (a_r, a_z, a_n), (u_r, u_z, u_n) = np.split(xp, 3, -1), np.split(hp, 3, -1)
        r, z = _sig(a_r + u_r), _sig(a_z + u_z)
        n = np.tanh(a_n + r * u_n)
        want = (1 - z) * n + z * h
    else:
        want = _NUMPY_ACTIVATIONS[name](xp + hp)
    carry, y = cell.step(cell_params(p), jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))
    assert_close(carry, want, rtol=1e-5, atol=1e-5)
    assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CELLS)
def test_step_is_pointwise_after_the_two_projections(name):
    """``step = recurrent_step(input_proj(x))``, the output is ``cell.output`` of the new carry,
    and, for a cell with ``pointwise``, ``recurrent_step = pointwise(xp, hidden_proj(h))``."""
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), E)
    carry = jax.tree.map(lambda a: randn(1, a.shape), cell.initial_carry((B,)))
    x = randn(2, (B, E))
    new, y = cell.step(params, carry, x)
    xp = cell.input_proj(params, x)
    chex.assert_shape(xp, (B, params["w_hh"].shape[1]))
    assert_close(cell.recurrent_step(params, carry, xp), (new, y))
    assert_close(cell.output(new), y)
    if cell.pointwise is not None:                   # optional: the cell's equations given both projections
        new2, y2, _ = cell.pointwise(carry, xp, cells.hidden_proj(params, cell.output(carry)))
        assert_close((new2, y2), (new, y))


@pytest.mark.parametrize("name", [name for name, cell in CELLS.items() if cell.pointwise_backward is not None])
def test_pointwise_backward_equals_autodiff(x64, name):
    """The hand-written derivative of ``pointwise`` (used by ``fused_backward=True``) is its VJP:
    ``dcarry_direct`` is the carry's cotangent not through ``hp``; ``dhp`` None means ``dhp == dxp``."""
    cell = CELLS[name]
    G = cell.init(jax.random.key(0), E)["w_hh"].shape[1] // H
    carry = jax.tree.map(lambda a: randn(1, a.shape, jnp.float64), cell.initial_carry((B,)))
    xp, hp = randn(2, (B, G * H), jnp.float64), randn(3, (B, G * H), jnp.float64)
    dcarry = jax.tree.map(lambda a: randn(4, a.shape, jnp.float64), carry)
    dy = randn(5, (B, H), jnp.float64)
    (new, y, res), vjp = jax.vjp(cell.pointwise, carry, xp, hp)
    want_carry, want_xp, want_hp = vjp((dcarry, dy, jax.tree.map(jnp.zeros_like, res)))
    got_carry, got_xp, got_hp = cell.pointwise_backward(res, carry, dcarry, dy)
    assert_close(got_carry, want_carry, rtol=1e-12, atol=1e-12)
    assert_close(got_xp, want_xp, rtol=1e-12, atol=1e-12)
    assert_close(got_xp if got_hp is None else got_hp, want_hp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "gru"])
def test_any_batch_shape(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), E)
    x = randn(1, (2, 3, E))
    carry, y = cell.step(params, cell.initial_carry((2, 3)), x)
    chex.assert_shape(y, (2, 3, H))
    flat_carry, flat_y = cell.step(params, cell.initial_carry((6,)), x.reshape(6, E))
    assert_close(y.reshape(6, H), flat_y)
    scalar_carry, scalar_y = cell.step(params, cell.initial_carry(()), x[0, 0])
    chex.assert_shape(scalar_y, (H,))
    assert_close(scalar_y, y[0, 0])


class StepVariantsTest(chex.TestCase):
    """Every cell's step, with and without jit (chex variants), on a batch == one example at a time."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*cells.CELL_NAMES)
    def test_step_batched_equals_per_example(self, name):
        cell = CELLS[name]
        params = cell.init(jax.random.key(0), E)
        carry = jax.tree.map(lambda a: randn(1, a.shape), cell.initial_carry((B,)))
        x = randn(2, (B, E))
        got = self.variant(cell.step)(params, carry, x)
        chex.assert_trees_all_equal_shapes_and_dtypes(got, (carry, cell.output(carry)))
        one_by_one = [cell.step(params, jax.tree.map(lambda a, b=b: a[b], carry), x[b]) for b in range(B)]
        chex.assert_trees_all_close(got, jax.tree.map(lambda *a: jnp.stack(a), *one_by_one), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- initialisation


def test_lstm_forget_bias_and_default_init():
    H_big = 64
    default = cells.lstm(H_big).init(jax.random.key(0), 7)
    bound = 1 / np.sqrt(H_big)
    for leaf in jax.tree.leaves(default):
        assert float(jnp.abs(leaf).max()) <= bound
    shifted = cells.lstm(H_big, forget_bias=1.0).init(jax.random.key(0), 7)
    delta = np.asarray(shifted["b_ih"] - default["b_ih"])
    np.testing.assert_allclose(delta[H_big:2 * H_big], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(delta, np.s_[H_big:2 * H_big]), 0.0)
    # the default is stated once, and the registry uses it
    assert cells.DEFAULT_FORGET_BIAS == 0.0
    chex.assert_trees_all_equal(cells.make("lstm", H_big).init(jax.random.key(0), 7), default)


@pytest.mark.parametrize("name", TORCH_LAYOUT)
def test_init_shapes_dtypes_and_pytorch_bounds(name):
    """PyTorch's layout (w_ih (E, G*H), w_hh (H, G*H), biases (G*H,)) and U(-1/sqrt(H), 1/sqrt(H))."""
    G = {"lstm": 4, "gru": 3}.get(name, 1)
    for dtype in (jnp.float32, jnp.bfloat16):
        params = jax.jit(cells.make(name, 16).init, static_argnums=(1, 2))(jax.random.key(1), 7, dtype)
        chex.assert_trees_all_equal_shapes_and_dtypes(params, {
            "w_ih": jnp.zeros((7, G * 16), dtype), "w_hh": jnp.zeros((16, G * 16), dtype),
            "b_ih": jnp.zeros((G * 16,), dtype), "b_hh": jnp.zeros((G * 16,), dtype)})
        if name != "irnn":
            assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(params)) <= 1 / 4
    if name != "irnn":
        no_bias = jax.eval_shape(lambda k: cells.make(name, 16, bias=False).init(k, 7), jax.random.key(1))
        assert set(no_bias) == {"w_ih", "w_hh"}


def test_irnn_init():
    """Le et al. 2015: identity recurrence, zero biases, small Gaussian input weights."""
    cell = cells.make("irnn", 4)
    p = cell.init(jax.random.key(0), 3)
    np.testing.assert_array_equal(np.asarray(p["w_hh"]), np.eye(4))
    assert float(jnp.abs(p["b_ih"]).max()) == 0.0 and float(jnp.std(p["w_ih"])) < 3e-3
    assert float(jnp.abs(p["b_hh"]).max()) == 0.0
    wide = cells.irnn(64, input_std=0.5).init(jax.random.key(1), 64)["w_ih"]
    np.testing.assert_allclose(float(jnp.std(wide)), 0.5, rtol=0.05)
    assert cell.name == "irnn"


# ----------------------------------------------------------------------------- the registry


def test_make_by_name():
    assert cells.make("rnn_relu", 3).name == "rnn_relu"
    assert cells.make("rnn", 3, activation="linear").name == "rnn_linear"
    assert cells.make("gru", 3).hidden_size == 3
    assert {cells.make(name, 3).name for name in cells.CELL_NAMES} >= {"rnn_tanh", "irnn", "lstm", "gru"}
    assert set(TORCH_LAYOUT) <= set(cells.CELL_NAMES)
    # the registry builds what the factory builds
    for name, factory in [("rnn_sigmoid", lambda: cells.simple_rnn(3, "sigmoid")), ("gru", lambda: cells.gru(3)),
                          ("lstm", lambda: cells.lstm(3, forget_bias=0.5))]:
        made = cells.make(name, 3, **({"forget_bias": 0.5} if name == "lstm" else {}))
        chex.assert_trees_all_equal(made.init(jax.random.key(0), 2), factory().init(jax.random.key(0), 2))
    with pytest.raises(TypeError, match=r"cell 'gru' does not take the option\(s\) \['forget_bias'\]"):
        cells.make("gru", 3, forget_bias=1.0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make, exc, match", [
    (lambda: cells.simple_rnn(4, "softplus"), ValueError, "activation must be one of"),
    (lambda: cells.make("lstmm", 4), ValueError, "cell name must be one of"),
    (lambda: cells.lstm(0), ValueError, "hidden_size must be >= 1"),
    (lambda: cells.gru(2.5), TypeError, "hidden_size must be an int"),
    (lambda: cells.gru(4).init(jax.random.key(0), 0), ValueError, "input_size must be >= 1"),
    (lambda: cells.gru(4).init(jax.random.key(0), 3, jnp.int32), TypeError, "dtype must be a floating"),
    (lambda: cells.gru(4).init(0, 3), TypeError, "key must be a jax PRNG key"),
    (lambda: cells.lstm(4, forget_bias="abc"), TypeError, "forget_bias must be a finite number"),
    (lambda: cells.lstm(4, forget_bias=1.0, bias=False), ValueError, "forget_bias != 0 needs bias=True"),
    (lambda: cells.irnn(4, input_std=0.0), ValueError, "input_std must be a finite number > 0"),
    (lambda: cells.gru(4, bias="yes"), TypeError, "bias must be a bool"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_check_params_catches_params_of_another_cell_or_width():
    gru = cells.gru(4)
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"params\['w_hh'\] must have shape \(H, G\*H\) = \(4, 12\) for a "
                                         r"'gru' cell with H=4, got \(4, 16\)"):
        gru.step(cells.lstm(4).init(jax.random.key(0), 3), gru.initial_carry((2,)), x)
    with pytest.raises(ValueError, match=r"params\['w_hh'\] must have shape .* got \(8, 24\)"):
        gru.step(cells.gru(8).init(jax.random.key(0), 3), gru.initial_carry((2,)), x)
    with pytest.raises(ValueError, match=r"x has 5 features but the cell's params were initialised for "
                                         r"input_size E=3"):
        gru.step(gru.init(jax.random.key(0), 3), gru.initial_carry((2,)), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"params of a 'gru' cell must be the dict cell.init returns"):
        gru.step({"kernel": jnp.zeros((3, 12))}, gru.initial_carry((2,)), x)
    with pytest.raises(ValueError, match=r"params\['w_ih'\] must have shape \(E, G\*H\) = \(E, 12\), got \(3, 8\)"):
        cells.check_params({"w_ih": jnp.zeros((3, 8)), "w_hh": jnp.zeros((4, 12))}, 4, 3, "gru")
    # under jit the check runs at trace time, on static shapes
    with pytest.raises(ValueError, match=r"params\['w_hh'\] must have shape"):
        jax.jit(gru.step)(cells.lstm(4).init(jax.random.key(0), 3), gru.initial_carry((2,)), x)


# ----------------------------------------------------------------------------- the orthogonal RNN (expRNN)


@pytest.mark.parametrize("skew_init", cells.SKEW_INITS)
def test_orthogonal_init_follows_the_authors_code(skew_init):
    """Lezcano/expRNN's OrthogonalRNN: w_hh = expm(block-diagonal skew) is orthogonal with det 1,
    w_ih ~ N(0, 2/E) (kaiming_normal_, relu), modReLU bias ~ U(-0.01, 0.01), no other bias."""
    cell = cells.make("orthogonal", 64, skew_init=skew_init)
    params = cell.init(jax.random.key(0), 40)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, {
        "w_ih": jnp.zeros((40, 64)), "w_hh": jnp.zeros((64, 64)), "b_mod": jnp.zeros((64,))})
    w = np.asarray(params["w_hh"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(64), atol=1e-6)
    assert abs(np.linalg.det(w) - 1.0) < 1e-4
    # the 2x2 rotation blocks: henaff angles in (-pi, pi), cayley's -tan(u/2) in (-1, 0]
    angles = np.arctan2(w[0::2, 1::2].diagonal(), w[0::2, 0::2].diagonal())
    assert np.all(np.abs(angles) < np.pi)
    if skew_init == "cayley":
        assert np.all((angles <= 0) & (angles > -1.0))
    assert np.abs(w - np.kron(np.eye(32), np.ones((2, 2))) * w).max() == 0.0     # block diagonal
    assert 0.8 < float(np.std(params["w_ih"])) * np.sqrt(40 / 2) < 1.2
    assert float(jnp.abs(params["b_mod"]).max()) <= 0.01
    # odd H: the last row and column are the identity's
    w5 = np.asarray(cells.make("orthogonal", 5).init(jax.random.key(1), 3)["w_hh"])
    np.testing.assert_allclose(w5.T @ w5, np.eye(5), atol=1e-6)
    assert w5[4, 4] == 1.0


def test_orthogonal_step_equations_against_numpy():
    """h' = sign(z) relu(|z| + b) with z = x W_ih + h W_hh (modReLU), and z itself when linear."""
    cell = cells.make("orthogonal", H)
    p = cell.init(jax.random.key(2), E)
    p = {**p, "b_mod": jnp.linspace(-0.5, 0.5, H)}
    x, h = randn(3, (B, E)), randn(4, (B, H))
    z = np.asarray(x, np.float64) @ np.asarray(p["w_ih"], np.float64) + \
        np.asarray(h, np.float64) @ np.asarray(p["w_hh"], np.float64)
    want = np.sign(z) * np.maximum(np.abs(z) + np.asarray(p["b_mod"], np.float64), 0.0)
    carry, y = cell.step(p, h, x)
    assert_close(carry, want, rtol=1e-5, atol=1e-6)
    assert_close(y, want, rtol=1e-5, atol=1e-6)
    linear = cells.make("orthogonal", H, activation="linear")
    assert_close(linear.step(p, h, x)[0], z, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"params\['b_mod'\] must have shape \(H,\) = \(5,\)"):
        cell.step(cells.make("rnn_linear", H, bias=False).init(jax.random.key(0), E), h, x)
    with pytest.raises(ValueError, match="fused_backward=True needs a cell with a hand-written backward"):
        from seqjax import recurrent
        recurrent.layer(cell, fused_backward=True)


@pytest.mark.parametrize("bias", [None, 0.5])
def test_orthogonal_linear_rnn_preserves_the_gradient_norm_exactly(x64, bias):
    """The analytic oracle: with W_hh orthogonal and no nonlinearity, h_T = h_t W^(T-t) + (inputs), so
    for L = v . h_T every ||dL/dh_t|| = ||v W^T ... W^T|| = ||v||, at every distance, to rounding.
    modReLU with b > 0 has derivative 1 wherever z != 0, so it preserves the norm exactly too."""
    from seqjax import gradients
    T = 300
    cell = cells.make("orthogonal", 16, activation="linear" if bias is None else "modrelu")
    params = cell.init(jax.random.key(0), 3, jnp.float64)
    if bias is not None:
        params["b_mod"] = jnp.full((16,), bias, jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (4, T, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(2), (16,), jnp.float64)
    g = gradients.state_gradients(cell, params, xs, lambda ys: jnp.sum(ys[:, -1] @ v))      # (B, T, H)
    norms = np.asarray(jnp.linalg.norm(g, axis=-1))
    np.testing.assert_allclose(norms, float(jnp.linalg.norm(v)), rtol=1e-12)
    # a tanh RNN with the same (orthogonal) W_hh loses the norm: the nonlinearity, not W, decides
    tanh = cells.make("rnn_tanh", 16, bias=False)
    tp = {"w_ih": params["w_ih"], "w_hh": params["w_hh"]}
    g_tanh = gradients.state_gradients(tanh, tp, xs, lambda ys: jnp.sum(ys[:, -1] @ v))
    assert float(jnp.linalg.norm(g_tanh[:, 0], axis=-1).max()) < 1e-3 * float(jnp.linalg.norm(v))


def test_orthogonal_modrelu_never_grows_the_gradient_norm(x64):
    """modReLU's derivative is 0 or 1 element-wise: ||dL/dh_t|| is non-increasing going back in time."""
    from seqjax import gradients
    cell = cells.make("orthogonal", 16)
    params = cell.init(jax.random.key(3), 3, jnp.float64)
    params["b_mod"] = jnp.linspace(-0.3, 0.1, 16)
    xs = jax.random.normal(jax.random.key(4), (4, 60, 3), jnp.float64)
    g = gradients.state_gradients(cell, params, xs, lambda ys: jnp.sum(ys[:, -1]))
    norms = np.asarray(jnp.linalg.norm(g, axis=-1))                                        # (B, T)
    assert np.all(np.diff(norms, axis=1) >= -1e-12)             # norms[t] <= norms[t + 1]
    assert norms[:, 0].max() < norms[:, -1].min()               # and some units are cut off


def test_trivialization_keeps_w_hh_orthogonal_and_follows_the_chain_rule(x64):
    """cells.orthogonal_optimizer: W_hh stays orthogonal through training steps and rebases, the
    other params get the plain optimiser, and A's gradient is the chain rule through B expm(skew(A))."""
    import optax
    cell = cells.make("orthogonal", 8)
    params = {"cell": cell.init(jax.random.key(0), 3, jnp.float64), "head": {"kernel": jnp.ones((8, 1))}}
    assert cells.orthogonal_labels(params) == {"cell": {"w_ih": "other", "w_hh": "orthogonal", "b_mod": "other"},
                                               "head": {"kernel": "other"}}
    xs = jax.random.normal(jax.random.key(1), (4, 20, 3), jnp.float64)

    def loss(p):
        h = jnp.zeros((4, 8), jnp.float64)
        for t in range(xs.shape[1]):
            h, _ = cell.step(p["cell"], h, xs[:, t])
        return jnp.mean((h @ p["head"]["kernel"] - 1.0) ** 2)

    opt = cells.orthogonal_optimizer(optax.sgd(1e-2), optax.sgd(1e-2), rebase_every=3)
    state = opt.init(params)
    losses_ = []
    value_and_grad, grad = jax.jit(jax.value_and_grad(loss)), jax.jit(jax.grad(loss))   # one compilation each
    for _ in range(7):
        value, grads = value_and_grad(params)
        losses_.append(float(value))
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        w = params["cell"]["w_hh"]
        np.testing.assert_allclose(np.asarray(w.T @ w), np.eye(8), atol=1e-12)
    assert losses_[-1] < losses_[0]
    # one SGD step from A = 0 on the chart A -> B expm(skew(A)): A' = -lr * d/dA L(B expm(skew(A)))
    params0 = {"cell": cell.init(jax.random.key(0), 3, jnp.float64), "head": {"kernel": jnp.ones((8, 1))}}
    base = params0["cell"]["w_hh"]
    g_w = grad(params0)["cell"]["w_hh"]
    g_a = jax.grad(lambda a: jnp.sum(base @ jax.scipy.linalg.expm(cells.skew(a)) * g_w))(jnp.zeros((8, 8)))
    want = base @ jax.scipy.linalg.expm(cells.skew(-1e-2 * g_a))
    updates, _ = opt.update(grad(params0), opt.init(params0), params0)
    np.testing.assert_allclose(np.asarray(params0["cell"]["w_hh"] + updates["cell"]["w_hh"]), np.asarray(want),
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(updates["cell"]["b_mod"]),
                               np.asarray(-1e-2 * grad(params0)["cell"]["b_mod"]), atol=1e-15)


def test_expm_and_its_vjp_equal_scipys(x64):
    """cells.expm (Taylor + squaring, block-matrix VJP as in Lezcano/expRNN) against jax.scipy.linalg.expm,
    values and reverse-mode gradients, for a small skew matrix, a large one and a general matrix."""
    g = jax.random.normal(jax.random.key(9), (12, 12), jnp.float64)
    for scale, skew in ((0.01, True), (3.0, True), (2.0, False)):
        a = scale * jax.random.normal(jax.random.key(int(scale * 100)), (12, 12), jnp.float64)
        a = cells.skew(a) if skew else a
        want = jax.scipy.linalg.expm(a)
        np.testing.assert_allclose(np.asarray(cells.expm(a)), np.asarray(want), rtol=1e-12,
                                   atol=1e-12 * float(jnp.abs(want).max()))
        got_g = jax.grad(lambda x: jnp.sum(cells.expm(x) * g))(a)
        want_g = jax.grad(lambda x: jnp.sum(jax.scipy.linalg.expm(x) * g))(a)
        np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), rtol=1e-10,
                                   atol=1e-10 * float(jnp.abs(want_g).max()))
