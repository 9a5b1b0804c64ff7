"""Inputs that used to be silently accepted or failed deep inside XLA with an obscure message:
each is now refused at the public boundary, naming the argument, by the one rule in seqjax.checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randn

from seqjax import attention, cells, recurrent, tasks
from seqjax import transformer as T

KEY = jax.random.key(0)


def test_params_of_another_cell_or_width_are_named():
    lstm_params = cells.lstm(4).init(KEY, 3)
    with pytest.raises(ValueError, match=r"params\['w_hh'\] must have shape \(H, G\*H\) = \(4, 12\) for a 'gru'"):
        recurrent.layer(cells.gru(4)).apply({"layers": [{"forward": lstm_params}]}, randn(0, (2, 5, 3)))
    with pytest.raises(ValueError, match="x has 5 features but the cell's params were initialised for input_size E=3"):
        cells.lstm(4).step(lstm_params, cells.lstm(4).initial_carry((2,)), jnp.ones((2, 5)))


def test_unroll_checks_lengths_and_the_carrys_batch():
    cell = cells.gru(4)
    p = cell.init(KEY, 3)
    x = randn(1, (2, 6, 3))
    for bad in ([9, -2], [0, 3]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\] = \[1, 6\]"):
            recurrent.unroll(cell.step, p, cell.initial_carry((2,)), x, lengths=jnp.array(bad))
    with pytest.raises(TypeError, match="lengths must be integers"):
        recurrent.unroll(cell.step, p, cell.initial_carry((2,)), x, lengths=jnp.array([2.5, 3.5]))
    with pytest.raises(ValueError, match=r"carry's leaves must have batch size B=2 .* shape \(3, 4\)"):
        recurrent.unroll(cell.step, p, cell.initial_carry((3,)), x)
    with pytest.raises(ValueError, match=r"carry's leaves must have batch size B=6"):   # wrong time_major
        recurrent.unroll(cell.step, p, cell.initial_carry((2,)), x, time_major=True)


def test_every_path_refuses_the_same_lengths():
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\] = \[1, 5\]"):
        attention.padding_mask(jnp.array([9, -1]), 5)
    model = T.transformer(T.TransformerConfig(7, 7, model_size=8, num_heads=2, ff_size=8, num_encoder_layers=1,
                                              num_decoder_layers=1, max_len=8))
    params = model.init(KEY)
    src, tgt = jnp.full((2, 4), 3), jnp.full((2, 3), 3)
    for bad in ([0, 4], [99, -3]):
        with pytest.raises(ValueError, match=r"src_lengths must lie in \[1, T\] = \[1, 4\]"):
            model.apply(params, src, tgt, src_lengths=jnp.array(bad))


def test_attention_widths_and_keys_are_named():
    add = attention.additive_attention(5)
    p = add.init(KEY, 4, 6)
    with pytest.raises(ValueError, match="query has 3 features .* initialised for query_size=4"):
        add.apply(p, jnp.ones((2, 3)), jnp.ones((2, 7, 6)))
    with pytest.raises(ValueError, match="keys has 2 features .* initialised for key_size=6"):
        add.apply(p, jnp.ones((2, 4)), jnp.ones((2, 7, 2)))
    with pytest.raises(ValueError, match="use score='general'"):
        attention.luong_attention("dot").apply({}, jnp.ones((2, 4)), jnp.ones((2, 7, 6)))
    with pytest.raises(TypeError, match="key must be a jax PRNG key .*got 0 of type int"):
        attention.multi_head_attention(2, 8).init(0, 8)


def test_lm_windows_refuses_float_tokens():
    with pytest.raises(TypeError, match="tokens must be integers"):
        tasks.lm_windows(KEY, jnp.arange(20.0), 2, 4)
    np.testing.assert_array_equal(tasks.lm_windows(KEY, jnp.arange(20), 2, 4).y - 1,
                                  tasks.lm_windows(KEY, jnp.arange(20), 2, 4).x)
