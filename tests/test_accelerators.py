"""Every public jitted entry point lowers for GPU (cuda) and TPU, with no host callback.

No accelerator is available here, but ``jax.export`` lowers a function for another
platform on a CPU-only machine: it fails on an op with no lowering there, and on any
host callback (``jax.debug.callback``, ``jax.pure_callback``, ``io_callback``), which would
be a device-to-host round trip in a hot loop. The last test shows the check catching one.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EOS, SOS, V, randint, randn
from jax import export
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax import attention, cells, decoding, losses, models, recurrent, seq2seq, tasks, train
from seqjax import transformer as T

PLATFORMS = ("cuda", "tpu")


def lower(fn, *args, platforms=PLATFORMS) -> dict[str, set[str]]:
    """Export ``jax.jit(fn)(*args)`` for each platform; return the custom-call targets of each.

    Raises whatever the lowering raises (an op without a lowering, a host callback).
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    targets = {}
    for platform in platforms:
        module = export.export(jitted, platforms=[platform])(*args).mlir_module()
        calls = set(re.findall(r'call_target_name = "([^"]+)"', module))
        calls |= set(re.findall(r"stablehlo.custom_call @(\w+)", module))
        assert not any("callback" in c for c in calls), (platform, calls)
        targets[platform] = calls
    return targets


X = randn(0, (2, 5, 3))
LENGTHS = jnp.array([5, 2])
LAYERS = {
    "plain": dict(),
    "lengths": dict(lengths=True),
    "bidirectional_2_layers": dict(num_layers=2, bidirectional=True, lengths=True),
    "fused_backward": dict(fused_backward=True, lengths=True),
    "fused_bidirectional": dict(num_layers=2, bidirectional=True, fused_backward=True),
}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_recurrent_layer_gradients_lower(cell, name):
    opts = dict(LAYERS[name])
    use_lengths = opts.pop("lengths", False)
    layer = recurrent.layer(cells.make(cell, 4), **opts)
    params = layer.init(jax.random.key(0), 3)

    def loss(p, x, n):
        return jnp.sum(layer.apply(p, x, lengths=n if use_lengths else None)[0] ** 2)
    lower(jax.grad(loss), params, X, LENGTHS)


def test_state_gradients_lower():
    from seqjax import gradients
    layer = recurrent.layer(cells.lstm(4), num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), 3)
    lower(lambda p, x, n: gradients.state_gradients(layer, p, x, lambda ys: jnp.sum(ys[:, -1] ** 2),
                                                    lengths=n), params, X, LENGTHS)


def test_attention_lowers_and_records_its_kernels():
    mha = attention.multi_head_attention(num_heads=2, qkv_size=8)
    params = mha.init(jax.random.key(0), 8)
    x = randn(1, (2, 6, 8))
    mask = attention.combine_masks(attention.padding_mask(jnp.array([6, 3]), 6), attention.causal_mask(6))
    for implementation in (None, "xla", "reference"):
        layer = attention.multi_head_attention(2, 8, implementation=implementation)
        kernels = lower(lambda p, x: layer.apply(p, x, mask=mask), params, x)
        # the XLA paths lower to plain HLO on both platforms: no vendor kernel is required
        assert kernels == {"cuda": set(), "tpu": set()}, kernels
    q = randn(2, (2, 16, 2, 8), jnp.bfloat16)
    # cuDNN flash attention needs a GPU with cuDNN at lowering time: say so, do not skip silently
    with pytest.raises(RuntimeError, match="cuDNN is not detected"):
        lower(lambda q: attention.scaled_dot_product_attention(q, q, q, implementation="cudnn"), q,
              platforms=("cuda",))


def test_transformer_seq2seq_and_models_lower():
    tfm = T.transformer(T.TransformerConfig(V, V, model_size=8, num_heads=2, ff_size=16, num_encoder_layers=1,
                                            num_decoder_layers=1, max_len=12))
    tp = tfm.init(jax.random.key(0))
    src, tgt = randint(1, (2, 6), 3, V), randint(2, (2, 5), 1, V)
    lower(lambda p, s, t, n: tfm.apply(p, s, t, src_lengths=n), tp, src, tgt, jnp.array([6, 3]))
    s2s = seq2seq.seq2seq(seq2seq.Seq2SeqConfig(V, V, embed_size=4, hidden_size=8, bidirectional=True,
                                                attention="additive"))
    sp = s2s.init(jax.random.key(0))
    lower(lambda p, s, t, n: jax.grad(lambda q: jnp.sum(s2s.apply(q, s, t, src_lengths=n) ** 2))(p),
          sp, src, tgt, jnp.array([6, 3]))


def _decoders():
    tfm = T.transformer(T.TransformerConfig(V, V, model_size=8, num_heads=2, ff_size=16, num_encoder_layers=1,
                                            num_decoder_layers=1, max_len=12))
    lm = T.decoder_only(T.DecoderOnlyConfig(V, model_size=8, num_heads=2, ff_size=16, num_layers=1, max_len=12))
    rnn_lm = models.recurrent_lm(models.RecurrentLMConfig(cell="gru", vocab_size=V, hidden_size=8, embed_size=4))
    s2s = seq2seq.seq2seq(seq2seq.Seq2SeqConfig(V, V, embed_size=4, hidden_size=8))
    src, prompt = randint(1, (2, 6), 3, V), randint(3, (2, 2), 3, V)
    return {"transformer": (tfm, src, {"sos_id": SOS}), "decoder_only": (lm, prompt, {}),
            "recurrent_lm": (rnn_lm, prompt, {}), "seq2seq": (s2s, src, {"sos_id": SOS})}


@pytest.mark.parametrize("name", ["transformer", "decoder_only", "recurrent_lm", "seq2seq"])
def test_every_decoding_function_lowers(name):
    model, inputs, kw = _decoders()[name]
    params = model.init(jax.random.key(0))
    lower(lambda p, x: decoding.greedy_decode(model, p, x, max_len=5, eos_id=EOS, **kw), params, inputs)
    lower(lambda p, x: decoding.beam_search(model, p, x, beam_size=3, max_len=5, eos_id=EOS, **kw),
          params, inputs)
    lower(lambda p, x, k: decoding.sample(model, p, x, k, max_len=5, temperature=0.7, top_k=3, eos_id=EOS,
                                          **kw), params, inputs, jax.random.key(1))


def test_data_parallel_train_step_lowers_over_a_4_device_mesh():
    model = models.sequence_model(models.SequenceModelConfig(cell="lstm", hidden_size=8, output_size=2,
                                                            input_size=1, readout="all"))

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.x, dropout_key=key)
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.accuracy(logits, batch.y)}

    tr = train.trainer(loss_fn, train.make_optimizer("adam", 1e-3), clip_norm=1.0)
    state = tr.init(model.init(jax.random.key(0)), jax.random.key(1))
    batch = tasks.running_parity(jax.random.key(2), 8, length=6)
    mesh = AbstractMesh((4,), ("data",))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(tr.train_step,
                   in_shardings=(jax.tree.map(lambda _: replicated, state), jax.tree.map(lambda _: sharded, batch)),
                   out_shardings=(jax.tree.map(lambda _: replicated, state), replicated))
    abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)  # noqa: E731
    for platform in PLATFORMS:
        exported = export.export(step, platforms=[platform])(abstract(state), abstract(batch))
        assert exported.nr_devices == 4


def test_the_check_catches_a_host_callback():
    """A deliberately bad entry point: one debug print inside a scan. It must not lower."""
    def bad(x):
        def body(c, xt):
            jax.debug.callback(lambda v: None, xt)
            return c + xt, c
        return jax.lax.scan(body, jnp.zeros(3), x)
    with pytest.raises(Exception, match="platform"):
        lower(bad, np.ones((4, 3), np.float32))
