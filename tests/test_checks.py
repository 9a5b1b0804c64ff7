"""seqjax.checks: every validation rule accepts what it should, and refuses the rest with a
TypeError (wrong kind) or ValueError (wrong value or shape) whose message names the argument,
what was expected and what was received."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, checks


def test_check_int():
    assert checks.check_int(3, "n") == 3 and type(checks.check_int(np.int64(3), "n")) is int
    assert checks.check_int(0, "n", minimum=0) == 0
    assert checks.check_int(5, "n", 1, 5) == 5
    with pytest.raises(ValueError, match=r"^n must be >= 1, got 0$"):
        checks.check_int(0, "n")
    with pytest.raises(ValueError, match=r"^n must be in \[1, 5\], got 6$"):
        checks.check_int(6, "n", 1, 5)
    for bad in (2.0, "3", True, None, jnp.array(3)):
        with pytest.raises(TypeError, match=rf"^n must be an int >= 1, got .* of type {type(bad).__name__}$"):
            checks.check_int(bad, "n")


def test_check_float():
    assert checks.check_float(1, "lr") == 1.0 and checks.check_float(np.float32(0.5), "lr") == 0.5
    assert checks.check_float(jnp.array(0.25), "lr") == 0.25          # a concrete JAX scalar
    assert checks.check_float(0.0, "lr", minimum=0.0) == 0.0
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0.0, got 0.0$"):
        checks.check_float(0.0, "lr", minimum=0.0, strict_minimum=True)
    with pytest.raises(ValueError, match=r"^lr must be a finite number >= 0.0, got -1.0$"):
        checks.check_float(-1, "lr", minimum=0.0)
    with pytest.raises(ValueError, match=r"^lr must be a finite number >= 0 and <= 1, got 2.0$"):
        checks.check_float(2.0, "lr", minimum=0, maximum=1)
    for bad in (float("nan"), float("inf"), -np.inf):
        with pytest.raises(ValueError, match=r"^lr must be a finite number, got"):
            checks.check_float(bad, "lr")
    for bad in ("1e-3", True, None, [1.0], jnp.ones(2)):
        with pytest.raises(TypeError, match=r"^lr must be a finite number, got .* of type"):
            checks.check_float(bad, "lr")
    with pytest.raises(TypeError, match="lr must be a finite number"):              # traced: no value
        jax.jit(lambda a: checks.check_float(a, "lr"))(1.0)


def test_check_rate():
    assert checks.check_rate(0, "dropout") == 0.0 and checks.check_rate(0.999, "dropout") == 0.999
    with pytest.raises(ValueError, match=r"^dropout must be in \[0, 1\), got 1.0$"):
        checks.check_rate(1.0, "dropout")
    with pytest.raises(ValueError, match=r"^dropout must be a finite number >= 0.0, got -0.1$"):
        checks.check_rate(-0.1, "dropout")
    with pytest.raises(TypeError, match=r"^dropout must be a finite number"):
        checks.check_rate("0.1", "dropout")


def test_check_bool():
    assert checks.check_bool(True, "flag") is True and checks.check_bool(np.bool_(False), "flag") is False
    for bad in (1, 0, "False", None):
        with pytest.raises(TypeError, match=rf"^flag must be a bool, got .* of type {type(bad).__name__}$"):
            checks.check_bool(bad, "flag")


def test_check_choice():
    assert checks.check_choice("b", "mode", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"^mode must be one of \['a', 'b'\], got 'c'$"):
        checks.check_choice("c", "mode", ("a", "b"))


def test_check_float_dtype():
    for ok in (jnp.float32, "bfloat16", np.float64, jnp.float16):
        assert jnp.issubdtype(checks.check_float_dtype(ok), jnp.floating)
    with pytest.raises(TypeError, match=r"^dtype must be a floating dtype .*got int32$"):
        checks.check_float_dtype(jnp.int32)
    with pytest.raises(TypeError, match=r"^param_dtype must be a floating dtype .*got 'floaty'$"):
        checks.check_float_dtype("floaty", "param_dtype")


def test_check_array():
    x = jnp.zeros((2, 3, 4))
    assert checks.check_array(x, "x", 3, "(B, T, E)") is x
    assert checks.check_array(np.zeros((2, 3)), "x", (2, 3), "(B, E) or (B, T, E)").shape == (2, 3)
    assert checks.check_array(jnp.zeros((2,), jnp.int32), "ids", None, "(...)", kind="integer") is not None
    assert checks.check_array(jnp.zeros((2,), jnp.int32), "any", 1, "(B,)", kind=None) is not None
    with pytest.raises(TypeError, match=r"^x must be an array of shape \(B, T, E\), got list$"):
        checks.check_array([[1.0]], "x", 3, "(B, T, E)")
    with pytest.raises(ValueError, match=r"^x must have shape \(B, T, E\) \(rank 3\), got shape \(2, 3\)$"):
        checks.check_array(jnp.zeros((2, 3)), "x", 3, "(B, T, E)")
    with pytest.raises(ValueError, match=r"\(rank 2 or 3\), got shape \(2,\)$"):
        checks.check_array(jnp.zeros((2,)), "x", (2, 3), "(B, E) or (B, T, E)")
    with pytest.raises(TypeError, match=r"^x must be floating \(float32, bfloat16, float64\), got dtype int32$"):
        checks.check_array(jnp.zeros((2, 3, 4), jnp.int32), "x", 3, "(B, T, E)")
    with pytest.raises(TypeError, match=r"^ids must be integers, got dtype float32$"):
        checks.check_array(jnp.zeros((2,)), "ids", 1, "(B,)", kind="integer")


def test_is_concrete_and_concrete_int():
    assert checks.is_concrete(jnp.ones(2)) and checks.is_concrete({"a": 1, "b": np.ones(1)})
    assert checks.concrete_int(jnp.array(4)) == 4 and checks.concrete_int(np.int32(2)) == 2
    seen = {}

    def probe(a):
        seen["concrete"], seen["int"] = checks.is_concrete({"a": a}), checks.concrete_int(a)
        return a
    jax.jit(probe)(jnp.array(3))
    assert seen == {"concrete": False, "int": None}


def test_check_lengths():
    got = checks.check_lengths([3, 1], 2, 3)
    assert isinstance(got, jax.Array) and got.tolist() == [3, 1]
    assert checks.check_lengths(np.array([2, 2], np.int64), 2, 2).tolist() == [2, 2]
    for bad in ([0, 2], [2, 4], [-1, 2], [9, -2]):
        with pytest.raises(ValueError, match=r"^src_lengths must lie in \[1, T\] = \[1, 3\], got min"):
            checks.check_lengths(jnp.array(bad), 2, 3, "src_lengths")
    with pytest.raises(TypeError, match=r"^lengths must be integers, got dtype float"):
        checks.check_lengths([2.5, 3.5], 2, 4)
    with pytest.raises(TypeError, match=r"^lengths must be a \(B,\) integer array, got int$"):
        checks.check_lengths(3, 1, 4)
    with pytest.raises(ValueError, match=r"^lengths must have shape \(B,\) = \(2,\), got shape \(3,\)$"):
        checks.check_lengths(jnp.array([1, 2, 3]), 2, 4)
    with pytest.raises(ValueError, match=r"^lengths must have shape \(B,\) = \(2,\), got shape \(2, 1\)$"):
        checks.check_lengths(jnp.ones((2, 1), jnp.int32), 2, 4)
    # traced: shape and dtype are checked, values cannot be
    out = jax.jit(lambda n: checks.check_lengths(n, 2, 3))(jnp.array([7, 0]))
    assert out.tolist() == [7, 0]
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\)"):
        jax.jit(lambda n: checks.check_lengths(n, 3, 3))(jnp.array([1, 2]))


def test_broadcast_to_rank_and_masks():
    target = (2, 1, 3, 4)
    assert checks.broadcast_to_rank(jnp.ones((3, 4)), target, "m").shape == (1, 1, 3, 4)
    assert checks.broadcast_to_rank(jnp.ones((2, 1, 1, 4)), target, "m").shape == (2, 1, 1, 4)
    with pytest.raises(ValueError, match=r"^m of shape \(5, 4\) does not broadcast to \(2, 1, 3, 4\)$"):
        checks.broadcast_to_rank(jnp.ones((5, 4)), target, "m")
    with pytest.raises(ValueError, match=r"^m of shape \(1, 2, 1, 3, 4\) does not broadcast"):
        checks.broadcast_to_rank(jnp.ones((1, 2, 1, 3, 4)), target, "m")
    assert checks.check_mask(None, target) is None
    assert checks.check_mask(jnp.ones((3, 4), bool), target).shape == (1, 1, 3, 4)
    with pytest.raises(TypeError, match=r"^tgt_mask must be boolean \(True = attend\), got dtype float32; "
                                        r"convert an additive float mask with `tgt_mask == 0`"):
        checks.check_mask(jnp.ones((3, 4)), target, "tgt_mask")
    with pytest.raises(TypeError, match=r"^mask must be a boolean array \(True = attend\), got list$"):
        checks.check_mask([[True]], target)
    with pytest.raises(ValueError, match=r"^mask of shape \(3, 5\) does not broadcast"):
        checks.check_mask(jnp.ones((3, 5), bool), target)
    assert checks.check_bias(None, target) is None
    assert checks.check_bias(jnp.zeros((2, 1, 1, 4)), target).shape == (2, 1, 1, 4)
    with pytest.raises(TypeError, match=r"^bias must be a floating array broadcastable to \(2, 1, 3, 4\), got bool"):
        checks.check_bias(jnp.ones((3, 4), bool), target)
    with pytest.raises(ValueError, match=r"^bias of shape \(2, 3, 3, 4\) does not broadcast"):
        checks.check_bias(jnp.zeros((2, 3, 3, 4)), target)


def test_check_tokens():
    ok = jnp.array([[0, 4, 2]], jnp.int32)
    assert checks.check_tokens(ok, 5).tolist() == [[0, 4, 2]]
    assert checks.check_tokens(np.array([1, 2]), 5, ndim=(1, 2)).shape == (2,)
    assert checks.check_tokens(jnp.zeros((1, 0), jnp.int32), 5).shape == (1, 0)      # empty: no values
    for bad in (ok.at[0, 1].set(5), ok.at[0, 0].set(-1)):
        with pytest.raises(ValueError, match=r"^src must lie in \[0, vocab_size\) = \[0, 5\), "
                                             r"got min -?\d+ and max \d+$"):
            checks.check_tokens(bad, 5, "src")
    with pytest.raises(TypeError, match=r"^tokens must be an array of integer token ids \(JAX or NumPy\), got list$"):
        checks.check_tokens([[0, 1]], 5)
    with pytest.raises(TypeError, match=r"^tokens must be integer token ids, got dtype float32$"):
        checks.check_tokens(ok.astype(jnp.float32), 5)
    with pytest.raises(ValueError, match=r"^tokens must have shape \(B, T\), got shape \(3,\)$"):
        checks.check_tokens(ok[0], 5)
    with pytest.raises(ValueError, match=r"^prompt must have shape \(B,\) or \(B, T\), got shape \(1, 1, 3\)$"):
        checks.check_tokens(ok[None], 5, "prompt", ndim=(1, 2))
    # traced ids: dtype and rank only
    assert jax.jit(lambda t: checks.check_tokens(t, 5))(ok.at[0, 0].set(9)).shape == (1, 3)


def test_check_token_id():
    assert checks.check_token_id(2, "eos_id", 5) == 2 and checks.check_token_id(np.int32(0), "eos_id", 5) == 0
    assert checks.check_token_id(None, "pad_id", 5, optional=True) is None
    for bad in (5, -1, 1.0, True, None, "2"):
        with pytest.raises(ValueError, match=rf"^eos_id must be a token id in \[0, 5\), got {bad!r}$"):
            checks.check_token_id(bad, "eos_id", 5)


def test_check_key():
    typed, raw = jax.random.key(0), jax.random.PRNGKey(0)
    assert checks.check_key(typed) is typed and checks.check_key(raw) is raw
    with pytest.raises(TypeError, match=r"^dropout_key must be a jax PRNG key \(jax.random.key\(0\)\), "
                                        r"got 0 of type int$"):
        checks.check_key(0, "dropout_key")
    with pytest.raises(TypeError, match=r"^key must be a single jax PRNG key .*got an array of dtype float32 "
                                        r"and shape \(2,\)$"):
        checks.check_key(jnp.zeros(2), "key")
    with pytest.raises(TypeError, match=r"^key must be a single jax PRNG key .* and shape \(3,\)$"):
        checks.check_key(jax.random.split(typed, 3), "key")
    with pytest.raises(TypeError, match=r"^key must be a jax PRNG key .*of type ndarray$"):
        checks.check_key(np.zeros(2, np.uint32))


def test_check_tree_like():
    like = jax.eval_shape(lambda: cells.LSTMState(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4))))
    ok = cells.LSTMState(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)))
    assert checks.check_tree_like(ok, like, "initial_carry", "(L*D, B, H)") is ok
    with pytest.raises(ValueError, match=r"^initial_carry must have the structure .*LSTMState.*, got PyTreeDef\(\*\)$"):
        checks.check_tree_like(jnp.ones((2, 3, 4)), like, "initial_carry", "(L*D, B, H)")
    with pytest.raises(ValueError, match=r"^initial_carry leaves must have shape \(L\*D, B, H\) = \(2, 3, 4\), "
                                         r"got \(2, 3, 5\)$"):
        checks.check_tree_like(cells.LSTMState(jnp.ones((2, 3, 5)), jnp.ones((2, 3, 5))), like, "initial_carry",
                               "(L*D, B, H)")
    with pytest.raises(TypeError, match=r"^initial_carry must have dtype float32, got bfloat16$"):
        checks.check_tree_like(jax.tree.map(lambda a: a.astype(jnp.bfloat16), ok), like, "initial_carry",
                               "(L*D, B, H)")
    with pytest.raises(TypeError, match=r"^initial_carry leaves must be arrays of shape \(L\*D, B, H\), got float$"):
        checks.check_tree_like(cells.LSTMState(1.0, 2.0), like, "initial_carry", "(L*D, B, H)")


def test_check_precision():
    from seqjax import precision
    assert checks.check_precision(None) is None
    assert checks.check_precision("bfloat16") == precision.Policy(compute_dtype=jnp.bfloat16)
    assert checks.check_precision("p=f32,c=bf16,o=f32", "cfg.precision") == precision.policy("bfloat16")
    with pytest.raises(ValueError, match=r"^cfg.precision: unknown precision policy 'fp8'"):
        checks.check_precision("fp8", "cfg.precision")
    with pytest.raises(TypeError, match=r"^precision must be None, a seqjax.precision.Policy or a policy name "
                                        r"\['float32', 'bfloat16', 'float64'\], got 16 of type int$"):
        checks.check_precision(16)
    with pytest.raises(ValueError, match=r"needs float64, which JAX makes only with jax_enable_x64"):
        checks.check_precision("float64")


def test_every_rule_is_tested_here():
    """A new rule in checks.__all__ needs a test in this file (the names are asserted, not scanned)."""
    tested = {"check_int", "check_rate", "check_float", "check_bool", "check_choice", "check_float_dtype",
              "check_array", "check_lengths", "check_mask", "check_bias", "broadcast_to_rank", "check_tokens",
              "check_token_id", "check_key", "check_tree_like", "concrete_int", "is_concrete", "check_precision"}
    assert set(checks.__all__) == tested
