"""Every public jitted entry point lowers for GPU (cuda) and TPU, with no host callback.

No accelerator is available here, but ``jax.export`` lowers a function for another
platform on a CPU-only machine: it fails on an op with no lowering there, and on any
host callback (``jax.debug.callback``, ``jax.pure_callback``, ``io_callback``), which would
be a device-to-host round trip in a hot loop. The last test shows the check catching one.

Covered: every recurrent layer configuration (lengths, bidirectional, several layers,
dropout between layers, remat, the ``fused_backward`` fast path, a bfloat16 policy),
attention with dense and structured masks on every implementation (the device kernels
each uses are recorded as the test's ``attention_kernels`` property), the Transformer
and the RNN seq2seq model (forward and gradient), every decoding function, and a
data-parallel ``train_step`` over a 4-device mesh. The cuDNN flash path
(``implementation="cudnn"``) needs cuDNN at lowering time: on a host without it the test
checks the refusal and says so in a warning instead of skipping.
"""

import re
import warnings

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
    "remat": dict(remat=2, lengths=True),
    "remat_bidirectional_2_layers": dict(num_layers=2, bidirectional=True, remat=2, lengths=True),
    "dropout_2_layers": dict(num_layers=2, dropout=0.5, dropout_key=True),
    "bfloat16_policy": dict(precision="bfloat16", lengths=True),
    "bfloat16_fused": dict(precision="bfloat16", fused_backward=True),
}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_recurrent_layer_gradients_lower(cell, name):
    opts = dict(LAYERS[name])
    use_lengths = opts.pop("lengths", False)
    use_key = opts.pop("dropout_key", False)
    layer = recurrent.layer(cells.make(cell, 4), **opts)
    params = layer.init(jax.random.key(0), 3)

    def loss(p, x, n, key):
        return jnp.sum(layer.apply(p, x, lengths=n if use_lengths else None,
                                   dropout_key=key if use_key else None)[0] ** 2)
    lower(jax.grad(loss), params, X, LENGTHS, jax.random.key(1))


def test_state_gradients_lower():
    from seqjax import gradients
    layer = recurrent.layer(cells.lstm(4), num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), 3)
    lower(lambda p, x, n: gradients.state_gradients(layer, p, x, lambda ys: jnp.sum(ys[:, -1] ** 2),
                                                    lengths=n), params, X, LENGTHS)


def test_attention_lowers_and_records_its_kernels(record_property):
    mha = attention.multi_head_attention(num_heads=2, qkv_size=8)
    params = mha.init(jax.random.key(0), 8)
    x = randn(1, (2, 6, 8))
    lengths = jnp.array([6, 3])
    mask = attention.combine_masks(attention.padding_mask(lengths, 6), attention.causal_mask(6))
    recorded = {}
    # implementation=None picks its path from the backend at trace time: here (a CPU host) the
    # reference path; on a GPU/TPU the fast path, which "xla" forces and is lowered here too.
    for implementation in (None, "xla", "reference"):
        layer = attention.multi_head_attention(2, 8, implementation=implementation)
        kernels = lower(lambda p, x: layer.apply(p, x, mask=mask), params, x)
        # the XLA paths lower to plain HLO on both platforms: no vendor kernel is required
        assert kernels == {"cuda": set(), "tpu": set()}, kernels
        recorded[f"mha implementation={implementation} dense mask"] = kernels
    q = randn(2, (2, 16, 2, 8), jnp.bfloat16)
    for implementation in ("xla", "reference"):       # structured masks: what cuDNN's kernel takes
        kernels = lower(lambda q, n: attention.scaled_dot_product_attention(
            q, q, q, is_causal=True, key_lengths=n, implementation=implementation), q, lengths)
        assert kernels == {"cuda": set(), "tpu": set()}, kernels
        recorded[f"sdpa implementation={implementation} is_causal key_lengths bfloat16"] = kernels

    # cuDNN flash attention needs cuDNN at lowering time. With it (a GPU host) it must lower to
    # cuDNN's fused kernel; without it the refusal is checked and reported, never skipped silently.
    def cudnn(q, n):
        return attention.scaled_dot_product_attention(q, q, q, is_causal=True, key_lengths=n,
                                                      implementation="cudnn")
    if jax.default_backend() == "gpu":
        kernels = lower(cudnn, q, lengths, platforms=("cuda",))
        assert any("cudnn" in k for k in kernels["cuda"]), kernels
        recorded["sdpa implementation=cudnn"] = kernels
    else:
        with pytest.raises(RuntimeError, match="cuDNN is not detected"):
            lower(cudnn, q, lengths, platforms=("cuda",))
        recorded["sdpa implementation=cudnn"] = "not lowered: cuDNN is not detected on this host"
        warnings.warn("implementation='cudnn' (cuDNN flash attention) was NOT lowered: this host has no cuDNN "
                      "(checked: jax refuses with 'cuDNN is not detected'); run tests/test_accelerators.py on a "
                      "GPU host to lower it", UserWarning)
    record_property("attention_kernels", {k: v if isinstance(v, str) else {p: sorted(c) for p, c in v.items()}
                                          for k, v in recorded.items()})


SRC, TGT, SRC_LENGTHS = randint(1, (2, 6), 3, V), randint(2, (2, 5), 1, V), jnp.array([6, 3])


def test_transformer_and_decoder_only_lower():
    tfm = T.transformer(T.TransformerConfig(V, V, model_size=8, num_heads=2, ff_size=16, num_encoder_layers=1,
                                            num_decoder_layers=1, max_len=12))
    tp = tfm.init(jax.random.key(0))
    lower(lambda p, s, t, n: tfm.apply(p, s, t, src_lengths=n), tp, SRC, TGT, SRC_LENGTHS)
    lower(lambda p, s, t, n, k: jax.grad(lambda q: jnp.sum(tfm.apply(q, s, t, src_lengths=n, dropout_key=k) ** 2))(p),
          tp, SRC, TGT, SRC_LENGTHS, jax.random.key(1))
    lm = T.decoder_only(T.DecoderOnlyConfig(V, model_size=8, num_heads=2, ff_size=16, num_layers=1, max_len=12))
    lp = lm.init(jax.random.key(0))
    lower(lambda p, t: jax.grad(lambda q: jnp.sum(lm.apply(q, t) ** 2))(p), lp, TGT)


@pytest.mark.parametrize("attention_kind", seq2seq.ATTENTION)
def test_seq2seq_gradients_lower(attention_kind):
    # "dot" scores need encoder states as wide as the decoder's: a unidirectional encoder there
    s2s = seq2seq.seq2seq(seq2seq.Seq2SeqConfig(V, V, embed_size=4, hidden_size=8, attention=attention_kind,
                                                bidirectional=attention_kind != "dot"))
    sp = s2s.init(jax.random.key(0))
    lower(lambda p, s, t, n: jax.grad(lambda q: jnp.sum(s2s.apply(q, s, t, src_lengths=n) ** 2))(p),
          sp, SRC, TGT, SRC_LENGTHS)


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
