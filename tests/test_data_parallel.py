"""Data-parallel training equals single-device training (4 fake CPU devices in a subprocess).

The main pytest process keeps its single device: the check runs in a child Python
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and reports JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from seqjax import models, tasks, train

    assert jax.device_count() == 4, jax.devices()
    model = models.sequence_model(models.SequenceModelConfig(
        cell="lstm", hidden_size=8, output_size=2, input_size=1, readout="all"))

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.x, key=key)
        return models.softmax_cross_entropy(logits, batch.y), {"accuracy": models.accuracy(logits, batch.y)}

    tr = train.trainer(loss_fn, train.make_optimizer("adam", 1e-2), clip_norm=1.0)
    state = tr.init(model.init(jax.random.key(0)), jax.random.key(1))
    data = lambda s: tasks.running_parity(jax.random.fold_in(jax.random.key(2), s), 8, length=5)
    evals = [tasks.running_parity(jax.random.key(3), 8, length=5)]
    run = lambda mesh: train.fit(tr, state, data, num_steps=6, mesh=mesh, progress=False,
                                 eval_batches=evals, log_every=3)
    single = run(train.data_mesh(jax.devices()[:1]))
    parallel = run(None)                       # > 1 device: fit builds the 4-device mesh itself
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    sharded = train.shard_batch(data(0), train.data_mesh())
    try:
        train.shard_batch(tasks.running_parity(jax.random.key(0), 6, length=5), train.data_mesh())
        error = None
    except ValueError as err:
        error = str(err)
    print(json.dumps({
        "param_diff": diff(single.state.params, parallel.state.params),
        "single_devices": len(single.state.params["head"]["w"].sharding.device_set),
        "loss_single": [r["loss"] for r in single.history],
        "loss_parallel": [r["loss"] for r in parallel.history],
        "param_devices": len(parallel.state.params["head"]["w"].sharding.device_set),
        "shard_shapes": sorted({tuple(s.data.shape) for s in sharded.x.addressable_shards}),
        "num_shards": len(sharded.x.addressable_shards),
        "error": error,
    }))
""")


@pytest.mark.slow
def test_data_parallel_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["param_diff"] < 1e-5, out
    assert out["single_devices"] == 1
    assert len(out["loss_single"]) == len(out["loss_parallel"]) > 0
    assert max(abs(a - b) for a, b in zip(out["loss_single"], out["loss_parallel"])) < 1e-5
    assert out["param_devices"] == 4                       # parameters replicated on every device
    assert out["num_shards"] == 4 and out["shard_shapes"] == [[2, 5, 1]]   # B = 8 split 4 ways
    assert "batch size 6 is not divisible by the device count 4" in out["error"]
