"""Data-parallel training equals single-device training (4 fake CPU devices in a subprocess).

The main pytest process keeps its single device: the check runs in a child Python
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and reports JSON. The
multi-process check starts two children joined by ``jax.distributed.initialize`` on
localhost (2 CPU devices each, gloo collectives) and a 4-device single-process reference.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

CHILD = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from seqjax import losses, models, tasks, train

    assert jax.device_count() == 4, jax.devices()
    model = models.sequence_model(models.SequenceModelConfig(
        cell="lstm", hidden_size=8, output_size=2, input_size=1, readout="all"))

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.x, dropout_key=key)
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.accuracy(logits, batch.y)}

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
    # an evaluation batch the 4 devices do not divide is refused before step 1, not at the
    # first evaluation (with eval_every=0 that would be after the last step)
    import tempfile
    out_dir = tempfile.mkdtemp()
    try:
        train.fit(tr, state, data, num_steps=4, out_dir=out_dir, progress=False, checkpoint_every=2,
                  eval_batches=[tasks.running_parity(jax.random.key(3), 6, length=5)])
        eval_error = None
    except ValueError as err:
        eval_error = str(err)
    import os
    print(json.dumps({
        "eval_error": eval_error,
        "files_after_refusal": sorted(os.listdir(out_dir)),
        "param_diff": diff(single.state.params, parallel.state.params),
        "single_devices": len(single.state.params["head"]["kernel"].sharding.device_set),
        "loss_single": [r["loss"] for r in single.history],
        "loss_parallel": [r["loss"] for r in parallel.history],
        "param_devices": len(parallel.state.params["head"]["kernel"].sharding.device_set),
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
    assert "eval_batches[0] has batch size 6, which the 4 devices" in out["eval_error"]
    assert out["files_after_refusal"] in ([], ["checkpoints"])              # no step ran, nothing saved


# ----------------------------------------------------------------------------- two processes

# One script for both roles: ``worker <process_id> <port> <out_dir>`` joins a 2-process
# jax.distributed run (2 CPU devices each, 4 in the global mesh); ``single <out_dir>`` is the
# 1-process reference on 4 devices. Both train the same tiny model for 6 steps into out_dir, the
# worker in two fit calls (3 steps, then resume to 6) so that every process restores the checkpoint.
MULTI = textwrap.dedent("""
    import json, sys
    import jax
    if sys.argv[1] == "worker":
        jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[3], num_processes=2,
                                   process_id=int(sys.argv[2]), initialization_timeout=60)
    import numpy as np
    from seqjax import losses, models, tasks, train

    model = models.sequence_model(models.SequenceModelConfig(
        cell="gru", hidden_size=8, output_size=2, input_size=1, readout="all"))

    def loss_fn(params, batch, key):
        logits = model.apply(params, batch.x, dropout_key=key)
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.accuracy(logits, batch.y)}

    tr = train.trainer(loss_fn, train.make_optimizer("adam", 1e-2), clip_norm=1.0)
    state = tr.init(model.init(jax.random.key(0)), jax.random.key(1))
    data = lambda s: tasks.running_parity(jax.random.fold_in(jax.random.key(2), s), 8, length=5)
    kw = dict(mesh=train.data_mesh(), out_dir=sys.argv[-1], eval_batches=[data(10_000)], eval_every=3,
              checkpoint_every=3, log_every=2, progress=True)
    if sys.argv[1] == "worker":
        train.fit(tr, state, data, num_steps=3, **kw)
        result = train.fit(tr, state, data, num_steps=6, resume=True, **kw)
    else:
        result = train.fit(tr, state, data, num_steps=6, **kw)
    print(json.dumps({
        "process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
        "batch_shards": [list(s.data.shape) for s in
                         train.shard_batch(data(0), kw["mesh"]).x.addressable_shards],
        "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(result.state.params)],
        "history": [[r["split"], r["step"]] for r in result.history],
    }))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_once_and_equal_one_process(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(_free_port())
    shared, ref = tmp_path / "shared", tmp_path / "single"
    cmds = [[sys.executable, "-c", MULTI, "worker", str(i), port, str(shared)] for i in (0, 1)]
    envs = [dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")] * 2
    cmds.append([sys.executable, "-c", MULTI, "single", str(ref)])
    envs.append(dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    procs = [subprocess.Popen(c, env=e, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, e in zip(cmds, envs)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:            # a crashed peer leaves the other waiting on a collective
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    w0, w1, single = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert [w0["process"], w1["process"]] == [0, 1]
    assert w0["processes"] == w1["processes"] == 2 and w0["devices"] == single["devices"] == 4
    assert w0["batch_shards"] == w1["batch_shards"] == [[2, 5, 1]] * 2    # B = 8: 2 rows per device
    flat = lambda r: np.concatenate([np.asarray(x) for x in r["params"]])
    np.testing.assert_array_equal(flat(w0), flat(w1))
    np.testing.assert_allclose(flat(w0), flat(single), rtol=0, atol=1e-5)
    # every file written once: one metrics row per logged (split, step), as in the 1-process run
    expected = [["train", 1], ["train", 2], ["train", 3], ["eval", 3],
                ["train", 4], ["train", 5], ["train", 6], ["eval", 6]]
    assert single["history"] == w0["history"] == w1["history"] == expected
    for out_dir in (shared, ref):
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert [[r["split"], r["step"]] for r in rows] == expected
        assert len((out_dir / "train_metrics.csv").read_text().splitlines()) == 1 + 6
        assert sorted(int(p.name) for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    # progress output comes from process 0 only
    assert "| 6/6 [" in outs[0][1]                      # tqdm: "train: 100%|####| 6/6 [00:01<..."
    assert "| 3/6 [" not in outs[1][1] and "| 6/6 [" not in outs[1][1]
