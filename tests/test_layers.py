"""seqjax.layers: dense initialisers (shapes and statistics), dense, layer norm against a float64
formula, dropout (deterministic without a key, mean-preserving with one), embedding, activations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randint, randn

from seqjax import layers

E, F = 256, 192          # big enough for the initialisers' statistics to be sharp


@pytest.mark.parametrize("init", layers.INITS)
def test_dense_init_shapes_and_statistics(init):
    p = jax.jit(lambda k: layers.dense_init(k, E, F, init=init))(jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(p, {"kernel": jnp.zeros((E, F)), "bias": jnp.zeros((F,))})
    w, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    assert abs(w.mean()) < 0.01 * w.std()
    if init == "xavier":                       # Glorot & Bengio: U(-a, a), a = sqrt(6 / (E + F))
        a = np.sqrt(6.0 / (E + F))
        assert np.abs(w).max() <= a
        np.testing.assert_allclose(w.std(), a / np.sqrt(3.0), rtol=0.02)
        np.testing.assert_array_equal(b, 0.0)
    elif init == "torch":                      # nn.Linear: kernel and bias ~ U(-1/sqrt(E), 1/sqrt(E))
        a = 1.0 / np.sqrt(E)
        assert np.abs(w).max() <= a and np.abs(b).max() <= a
        np.testing.assert_allclose(w.std(), a / np.sqrt(3.0), rtol=0.02)
        assert b.std() > 0.5 * a / np.sqrt(3.0)
    else:                                      # LeCun normal: variance 1/E, a normal truncated at
        np.testing.assert_allclose(w.std(), 1.0 / np.sqrt(E), rtol=0.03)  # 2 sigma, rescaled to that std
        assert np.abs(w).max() <= 2.0 / 0.87962566103423978 / np.sqrt(E) * 1.0001
        np.testing.assert_array_equal(b, 0.0)


def test_dense_init_options_and_bad_input():
    p = layers.dense_init(jax.random.key(0), 3, 4, use_bias=False, init="torch", dtype=jnp.bfloat16)
    chex.assert_trees_all_equal_shapes_and_dtypes(p, {"kernel": jnp.zeros((3, 4), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"init must be one of \['xavier', 'torch', 'lecun'\], got 'he'"):
        layers.dense_init(jax.random.key(0), 3, 4, init="he")
    with pytest.raises(ValueError, match="in_size must be >= 1"):
        layers.dense_init(jax.random.key(0), 0, 4)
    with pytest.raises(TypeError, match="out_size must be an int"):
        layers.dense_init(jax.random.key(0), 3, 4.0)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        layers.dense_init(jax.random.key(0), 3, 4, dtype=jnp.int32)


def test_dense_is_x_kernel_plus_bias():
    p = {"kernel": randn(0, (3, 4)), "bias": randn(1, (4,))}
    x = randn(2, (2, 5, 3))
    y = layers.dense(p, x)
    chex.assert_shape(y, (2, 5, 4))
    want = np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layers.dense({"kernel": p["kernel"]}, x), want - np.asarray(p["bias"]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_layer_norm_matches_float64_formula(x64, use_bias):
    D = 6
    p = layers.layer_norm_init(D, use_bias=use_bias, dtype=jnp.float64)
    assert set(p) == ({"scale", "bias"} if use_bias else {"scale"})
    p = {"scale": randn(0, (D,), jnp.float64), **({"bias": randn(1, (D,), jnp.float64)} if use_bias else {})}
    x = 3.0 * randn(2, (2, 4, D), jnp.float64) + 5.0

    def formula(eps):                          # biased variance, as torch.nn.LayerNorm
        xn = np.asarray(x)
        mean = xn.mean(-1, keepdims=True)
        var = ((xn - mean) ** 2).mean(-1, keepdims=True)
        y = (xn - mean) / np.sqrt(var + eps) * np.asarray(p["scale"])
        return y + np.asarray(p["bias"]) if use_bias else y

    np.testing.assert_allclose(layers.layer_norm(p, x), formula(1e-5), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layers.layer_norm(p, x, eps=0.5), formula(0.5), rtol=1e-12, atol=1e-12)


def test_layer_norm_init_is_the_identity_on_normalised_rows():
    p = layers.layer_norm_init(5)
    chex.assert_trees_all_equal(p, {"scale": jnp.ones(5), "bias": jnp.zeros(5)})
    y = layers.layer_norm(p, randn(0, (3, 5)))
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-4)


def test_dropout_is_deterministic_without_a_key_and_mean_preserving_with_one():
    x = jnp.ones((64, 512))
    assert layers.dropout(x, 0.5, None) is x
    assert layers.dropout(x, 0.0, jax.random.key(0)) is x
    for rate in (0.1, 0.5, 0.9):
        y = np.asarray(layers.dropout(x, rate, jax.random.key(1)))
        kept = y != 0
        np.testing.assert_allclose(y[kept], 1.0 / (1.0 - rate), rtol=1e-6)      # inverted dropout
        np.testing.assert_allclose(kept.mean(), 1.0 - rate, atol=0.01)
        np.testing.assert_allclose(y.mean(), 1.0, atol=0.05 if rate == 0.9 else 0.02)
    a = layers.dropout(x, 0.5, jax.random.key(2))
    chex.assert_trees_all_equal(a, layers.dropout(x, 0.5, jax.random.key(2)))   # same key, same mask
    assert not np.array_equal(a, layers.dropout(x, 0.5, jax.random.key(3)))
    assert layers.dropout(x.astype(jnp.bfloat16), 0.5, jax.random.key(2)).dtype == jnp.bfloat16


def test_sub_key():
    assert layers.sub_key(None, 3) is None
    chex.assert_trees_all_equal(jax.random.key_data(layers.sub_key(jax.random.key(0), 3)),
                                jax.random.key_data(jax.random.fold_in(jax.random.key(0), 3)))


def test_embedding():
    p = layers.embedding_init(jax.random.key(0), 50, 64, std=0.5)
    chex.assert_shape(p["embedding"], (50, 64))
    np.testing.assert_allclose(float(jnp.std(p["embedding"])), 0.5, rtol=0.05)
    tokens = randint(1, (2, 7), 0, 50)
    x = layers.embed(p, tokens)
    chex.assert_shape(x, (2, 7, 64))
    np.testing.assert_array_equal(x, np.asarray(p["embedding"])[np.asarray(tokens)])
    np.testing.assert_allclose(layers.embed(p, tokens, scale=8.0), 8.0 * np.asarray(x), rtol=1e-6)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        layers.embedding_init(jax.random.key(0), 0, 4)


def test_activation_table():
    a = np.linspace(-3, 3, 13)
    want = {"tanh": np.tanh(a), "relu": np.maximum(a, 0), "sigmoid": 1 / (1 + np.exp(-a)), "linear": a}
    for name, values in want.items():
        np.testing.assert_allclose(layers.activation(name)(jnp.asarray(a)), values, rtol=1e-6, atol=1e-7)
    from math import erf
    np.testing.assert_allclose(layers.activation("gelu")(jnp.asarray(a)),
                               [v * 0.5 * (1 + erf(v / np.sqrt(2))) for v in a], rtol=1e-5, atol=1e-6)
    assert layers.activation("gelu_tanh") is layers.ACTIVATIONS["gelu_tanh"]
    with pytest.raises(ValueError, match=r"activation must be one of \['tanh', 'relu'\], got 'gelu'"):
        layers.activation("gelu", ("tanh", "relu"))
    with pytest.raises(ValueError, match=r"ff_activation must be one of"):
        layers.activation("swish", arg="ff_activation")
