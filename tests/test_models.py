"""seqjax.models: input checks at the public apply boundary of the token models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models

V = 5
KEY = jax.random.key(0)
CONFIGS = {
    "rnn": lambda: models.sequence_model(models.SequenceModelConfig(
        cell="gru", hidden_size=3, vocab_size=V, embed_size=2)),
    "transformer": lambda: models.transformer_sequence_model(models.TransformerSequenceConfig(
        vocab_size=V, model_size=4, num_heads=1, ff_size=4, num_layers=1, max_len=4)),
    "lm": lambda: models.recurrent_lm(models.RecurrentLMConfig(
        cell="gru", vocab_size=V, hidden_size=3, embed_size=2)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_models_check_ids_and_array_inputs(name):
    model = CONFIGS[name]()
    params = model.init(KEY)
    arg = "tokens" if name == "lm" else "x"
    ok = jnp.array([[0, V - 1, 2]], jnp.int32)
    out = model.apply(params, ok)
    out = out[0] if name == "lm" else out
    assert np.isfinite(np.asarray(out)).all()
    # a gather would clamp V to V - 1 (and wrap -1) silently: refuse out-of-range ids
    for bad in (ok.at[0, 1].set(V), ok.at[0, 0].set(-1)):
        with pytest.raises(ValueError, match=rf"{arg} must lie in \[0, vocab_size\) = \[0, {V}\)"):
            model.apply(params, bad)
    with pytest.raises(TypeError, match=rf"{arg} must be an array .*got list"):
        model.apply(params, [[0, 1, 2]])
    with pytest.raises(TypeError, match=f"{arg} must be integer token ids"):
        model.apply(params, ok.astype(jnp.float32))
    with pytest.raises(ValueError, match=rf"{arg} must have shape \(B, T\)"):
        model.apply(params, ok[0])


def test_float_input_model_rejects_non_arrays():
    model = models.sequence_model(models.SequenceModelConfig(cell="gru", hidden_size=3, input_size=2))
    with pytest.raises(TypeError, match="x must be an array .*got NoneType"):
        model.apply(model.init(KEY), None)
