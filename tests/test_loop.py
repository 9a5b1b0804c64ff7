"""seqjax.loop: fit (kill and resume bit-identical, NaN guard, checkpoints, refused resumes
that touch nothing, bad inputs) and the batch sharding helpers, reached through
``seqjax.train``'s re-exports as users reach them. Multi-device runs: test_data_parallel.py."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import parity_setup

from seqjax import models, tasks, train

KEY = jax.random.key(0)
_, _, parity_data, TRAINER, fresh_state = parity_setup()

FIT = dict(num_steps=12, checkpoint_every=4, log_every=2, progress=False,
           eval_batches=[tasks.running_parity(jax.random.key(5), 8, length=6)], eval_every=6)


def test_fit_kill_and_resume_is_bit_identical(tmp_path):
    straight = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path / "a", **FIT)

    def killed_at_10(step):
        if step == 10:
            raise KeyboardInterrupt("simulated kill")
        return parity_data(step)

    with pytest.raises(KeyboardInterrupt):
        train.fit(TRAINER, fresh_state(), killed_at_10, out_dir=tmp_path / "b", **FIT)
    ckpts = sorted(int(p.name) for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == 8
    resumed = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path / "b", resume=True, **FIT)
    assert int(resumed.state.step) == 12
    chex.assert_trees_all_equal(straight.state.params, resumed.state.params)
    chex.assert_trees_all_equal(straight.state.opt_state, resumed.state.opt_state)
    # the metric log of the resumed run equals the straight one (replayed rows dropped)
    rows_a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows_a == rows_b
    assert [r["step"] for r in rows_a if r["split"] == "eval"] == [6, 12]
    assert (tmp_path / "a" / "train_metrics.csv").exists() and (tmp_path / "a" / "eval_metrics.csv").exists()
    # a finished run resumed again does nothing more
    again = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path / "b", resume=True, **FIT)
    chex.assert_trees_all_equal(again.state.params, straight.state.params)
    assert again.history == straight.history


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poisoned(step):
        batch = parity_data(step)
        return batch._replace(x=batch.x * jnp.nan) if step == 6 else batch

    with pytest.raises(train.NonFiniteError, match=r"loss became nan at step 7.*last good checkpoint \(step 4\)"):
        train.fit(TRAINER, fresh_state(), poisoned, out_dir=tmp_path, **FIT)
    ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [4]
    restored = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path, resume=True,
                         **{**FIT, "num_steps": 4})
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.state.params))


def _snapshot(root):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_errors_touch_nothing(tmp_path):
    train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path, config={"lr": 2e-2},
              **{**FIT, "num_steps": 4})
    before = _snapshot(tmp_path)
    # existing checkpoints without resume
    with pytest.raises(ValueError, match="already holds checkpoints; pass resume=True"):
        train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path, **FIT)
    # a different model
    other = models.sequence_model(models.SequenceModelConfig(
        cell="gru", hidden_size=9, output_size=2, input_size=1, readout="all"))
    other_state = TRAINER.init(other.init(KEY), KEY)
    with pytest.raises(train.CheckpointError, match="step 4.*different model"):
        train.fit(TRAINER, other_state, parity_data, out_dir=tmp_path, resume=True, **FIT)
    # a different config
    with pytest.raises(train.CheckpointError, match=r"different config \(differs in \['lr'\]"):
        train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path, resume=True,
                  config={"lr": 1e-3}, **FIT)
    assert _snapshot(tmp_path) == before
    # a corrupt checkpoint: garble every array file of step 4
    corrupt = tmp_path.parent / "corrupt"
    shutil.copytree(tmp_path, corrupt)
    for p in (corrupt / "checkpoints" / "4" / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 0 and "metadata" not in p.name:
            p.write_bytes(b"\x00garbage" * 3)
    before = _snapshot(corrupt)
    with pytest.raises(train.CheckpointError, match="step 4.*corrupt"):
        train.fit(TRAINER, fresh_state(), parity_data, out_dir=corrupt, resume=True, **FIT)
    assert _snapshot(corrupt) == before


def test_fit_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        train.fit(TRAINER, fresh_state(), parity_data, num_steps=0)
    with pytest.raises(TypeError, match="log_every must be an int"):
        train.fit(TRAINER, fresh_state(), parity_data, num_steps=1, log_every=1.5)
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        train.fit(TRAINER, fresh_state(), parity_data, num_steps=1, resume=True)
    with pytest.raises(TypeError, match="state must be a TrainState"):
        train.fit(TRAINER, {"params": 1}, parity_data, num_steps=1)
    mesh = train.data_mesh()
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        train.shard_batch(tasks.running_parity(KEY, 1, length=3)._replace(
            x=jnp.zeros((0, 3, 1)), y=jnp.zeros((0, 3), jnp.int32)), mesh)


# ----------------------------------------------------------------------------- reliability


def test_every_flipped_byte_of_a_checkpoint_restores_exactly_or_is_refused(tmp_path):
    """Flip bytes in each file of a saved checkpoint: each flip either restores the
    bit-identical state (redundant metadata) or raises CheckpointError naming the step."""
    run = tmp_path / "run"
    saved = train.fit(TRAINER, fresh_state(), parity_data, out_dir=run, **{**FIT, "num_steps": 4})
    step_dir = run / "checkpoints" / "4"
    files = [p for p in sorted(step_dir.rglob("*")) if p.is_file() and p.stat().st_size > 0]
    assert files
    refused = 0
    for i, path in enumerate(files):
        trial = tmp_path / f"trial{i}"
        shutil.copytree(run, trial)
        target = trial / path.relative_to(run)
        data = bytearray(target.read_bytes())
        for offset in {len(data) // 2, len(data) - 1, 0}:
            data[offset] ^= 0xFF                                  # flip every bit of three bytes
        target.write_bytes(bytes(data))
        try:
            resumed = train.fit(TRAINER, fresh_state(), parity_data, out_dir=trial, resume=True,
                                **{**FIT, "num_steps": 4})
        except train.CheckpointError as err:
            assert "step 4" in str(err)
            refused += 1
            continue
        chex.assert_trees_all_equal(resumed.state, saved.state)
    assert refused >= 1                                           # the array data is guarded


def test_a_corrupt_latest_checkpoint_falls_back_only_when_asked(tmp_path):
    straight = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path / "a", **FIT)
    run = tmp_path / "b"
    train.fit(TRAINER, fresh_state(), parity_data, out_dir=run, **{**FIT, "num_steps": 8})
    biggest = max((p for p in (run / "checkpoints" / "8").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))
    with pytest.raises(train.CheckpointError, match="step 8.*resume_fallback=True"):
        train.fit(TRAINER, fresh_state(), parity_data, out_dir=run, resume=True, **FIT)
    with pytest.warns(UserWarning, match="skipping step 8"):
        resumed = train.fit(TRAINER, fresh_state(), parity_data, out_dir=run, resume=True,
                            resume_fallback=True, **FIT)
    chex.assert_trees_all_equal(resumed.state.params, straight.state.params)
    assert (run / "checkpoints" / "corrupt-8").is_dir()          # set aside, not deleted


def test_inputs_are_checked_before_step_one(tmp_path):
    def scalar_only(params, batch, key):
        return jnp.sum(params["head"]["bias"])

    def not_a_scalar(params, batch, key):
        return jnp.ones(3), {}

    batch = parity_data(0)
    bad_trainers = ((train.trainer(scalar_only, train.make_optimizer("sgd", 0.1)),
                     TypeError, r"loss_fn must return \(loss, metrics\)"),
                    (train.trainer(not_a_scalar, train.make_optimizer("sgd", 0.1)),
                     ValueError, r"loss_fn's loss must be a floating scalar"))
    for tr, kind, message in bad_trainers:
        with pytest.raises(kind, match=message):
            train.fit(tr, tr.init(fresh_state().params, KEY), parity_data, num_steps=2, progress=False,
                      out_dir=tmp_path / "x")
        assert not (tmp_path / "x" / "metrics.jsonl").exists()
    with pytest.raises(TypeError, match=r"eval_batches must be a list of batches, e.g. \[batch\]"):
        train.fit(TRAINER, fresh_state(), parity_data, num_steps=2, eval_batches=batch, progress=False)
    with pytest.raises(TypeError, match="data_fn must be a function"):
        train.fit(TRAINER, fresh_state(), [batch, batch], num_steps=2, progress=False)


def test_seconds_count_the_whole_run_across_a_resume_and_files_get_the_usual_mode(tmp_path):
    first = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path, **{**FIT, "num_steps": 4})
    resumed = train.fit(TRAINER, fresh_state(), parity_data, out_dir=tmp_path, resume=True, **FIT)
    assert resumed.seconds > first.seconds > 0
    umask = os.umask(0)
    os.umask(umask)
    mode = (tmp_path / "train_metrics.csv").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask


def test_metrics_are_standard_json_and_stale_temporaries_are_removed(tmp_path):
    def poisoned(step):
        batch = parity_data(step)
        return batch._replace(x=batch.x * jnp.nan) if step == 2 else batch

    (tmp_path / ".train_metrics.csv.abc123.tmp").write_text("left by a kill")
    with pytest.raises(train.NonFiniteError):
        train.fit(TRAINER, fresh_state(), poisoned, out_dir=tmp_path, **FIT)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    rows = [json.loads(line, parse_constant=refuse)
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bad = rows[-1]
    assert bad["loss"] is None and bad["nonfinite"]["loss"] == "nan"
    assert not list(tmp_path.glob(".*.tmp"))
