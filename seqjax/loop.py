"""Training, the side-effecting part: ``fit``, checkpoints, metric files, data parallelism.

:func:`fit` is the one stateful shell around the pure step of :mod:`seqjax.train`:
progress bar, periodic evaluation, metrics appended to ``metrics.jsonl`` (and
``train_metrics.csv`` / ``eval_metrics.csv``), orbax checkpoints, exact resume and a
NaN/Inf guard. Its data stream is ``data_fn(step)``, a pure function of the step
(e.g. ``lambda s: tasks.adding(jax.random.fold_in(key, s), 64)``), and the dropout
key of step ``s`` is ``fold_in(state.rng, s)``; so a resumed run replays exactly the
batches and keys of an uninterrupted one, and its final parameters are
bit-identical on CPU.

Data parallelism: with more than one device (or an explicit ``mesh``), ``fit``
shards every batch over a 1-D :class:`jax.sharding.Mesh` with axis ``"data"``
(:func:`data_mesh`, :func:`shard_batch`) and replicates the state
(:func:`replicate`); ``jax.jit`` inserts the gradient all-reduce. Multi-process
(multi-host) runs call ``jax.distributed.initialize()`` first and run the same
``fit`` on every process: every process runs every step, only process 0
(``jax.process_index() == 0``) writes metrics files and shows progress, and the
orbax checkpoint of the (replicated, global) ``jax.Array`` state is a collective
save that orbax coordinates over the processes; see the README.

Every name here is also available from :mod:`seqjax.train`, the one import users need.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax import checks, io
from seqjax.train import Trainer, TrainState

__all__ = ["data_mesh", "shard_batch", "replicate", "NonFiniteError", "CheckpointError", "FitResult", "fit"]


# ----------------------------------------------------------------------------- data parallel


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (all devices by default;
    across hosts after ``jax.distributed.initialize()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return Mesh(np.asarray(devices), ("data",))


def _batch_size(batch) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch must contain at least one array")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every batch leaf needs the same leading batch axis B; got shapes "
                         f"{[np.shape(x) for x in leaves]}")
    return sizes.pop()


def _process_rows(sharding: NamedSharding, B: int) -> slice:
    """The rows [start, stop) of a (B, ...) global batch that this process's devices hold."""
    rows = sorted({idx[0].indices(B)[:2] for idx in
                   sharding.addressable_devices_indices_map((B,)).values()})
    if not rows:
        raise ValueError(f"mesh has no device of process {jax.process_index()}: in a multi-process "
                         "run every process must own part of the mesh (use train.data_mesh())")
    start, stop = rows[0][0], rows[-1][1]
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
        raise ValueError(f"mesh puts the devices of process {jax.process_index()} at non-contiguous "
                         f"positions of its 'data' axis (rows {rows}); order the devices by process, "
                         "as train.data_mesh() does")
    return slice(start, stop)


def shard_batch(batch, mesh: Mesh):
    """Split every leaf's batch axis (axis 0) over the mesh's ``"data"`` axis.

    ``batch`` is the global batch (leaves (B, ...)). With one process it is
    ``jax.device_put`` onto the mesh. With several processes
    (``jax.process_count() > 1``) every process must pass the same global batch;
    each one keeps only the rows its own devices hold and the global array is
    assembled with ``jax.make_array_from_process_local_data`` (no cross-host copy).

    Raises:
      ValueError: when B is not divisible by the number of devices in the mesh.
    """
    B = _batch_size(batch)
    n = mesh.shape["data"]
    if B < 1:
        raise ValueError(f"batch size must be >= 1, got {B}")
    if B % n:
        raise ValueError(f"batch size {B} is not divisible by the device count {n}: data-parallel "
                         f"training splits each batch evenly over the devices; use a multiple of {n}")
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    rows = _process_rows(sharding, B)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, x[rows], (B, *np.shape(x)[1:])), batch)


def _replicate_leaf(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    # every process holds the whole value; each contributes it to its own devices
    return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))


def replicate(tree, mesh: Mesh):
    """Place a full copy of every leaf on every device of ``mesh``.

    With several processes every process must pass the same values (it does when
    they come from the same seed, or from a checkpoint).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _replicate_leaf(x, sharding), tree)


# ----------------------------------------------------------------------------- fit


class NonFiniteError(FloatingPointError):
    """Raised by :func:`fit` when the loss or the gradient norm is NaN or Inf."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: corrupt, or written for another model/config."""


class FitResult(NamedTuple):
    """What :func:`fit` returns: the final state, the metric rows (dicts with ``step``
    and ``split`` in {"train", "eval"}) and ``seconds``, the run's total wall time
    including the time before any resume (saved with every checkpoint)."""

    state: TrainState
    history: list[dict]
    seconds: float = 0.0


def _signature(state: TrainState) -> list[list]:
    """[path, shape, dtype] for every leaf: what a checkpoint must match to be resumed."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype")
                                                             else x.dtype)] for p, x in flat]


def _host(x) -> np.ndarray:
    """A host copy of a leaf; for a replicated global array, this process's full copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)


def _checksums(state: TrainState) -> list[str]:
    """sha256 of every leaf's bytes (with its dtype and shape), in tree order.

    orbax stores no checksum of array data, so a flipped byte in a checkpoint would
    restore silently; :meth:`_Checkpoints.restore` compares these instead.
    """
    out = []
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(_host(leaf))
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        out.append(h.hexdigest())
    return out


def _finite_row(row: Mapping[str, Any]) -> str | None:
    for k in ("loss", "grad_norm"):
        if k in row and not math.isfinite(row[k]):
            return k
    return None


class _Checkpoints:
    """orbax CheckpointManager with a JSON ``meta`` item (signature, config) per step.

    The state is saved as ``jax.Array`` leaves, so in a multi-process run every
    process calls ``save`` / ``restore`` and orbax coordinates them (the primary
    process writes the metadata and each replicated array once, behind barriers).
    """

    def __init__(self, directory: Path, max_to_keep: int):
        import orbax.checkpoint as ocp
        self.ocp = ocp
        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        ocp = self.ocp
        state = jax.tree.map(jnp.asarray, state)        # jax.Array leaves (no-op on the usual state)
        meta = {**meta, "checksums": _checksums(state)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, template: TrainState, config: dict | None,
                mesh: Mesh | None = None) -> TrainState:
        ocp = self.ocp
        where = f"checkpoint at step {step} in {str(self.directory)!r}"
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # orbax raises many types for unreadable files
            raise CheckpointError(f"{where} is corrupt or unreadable (its metadata: {err}); "
                                  "nothing was changed. Delete that step's folder to resume from "
                                  "an earlier one, or start a new run.") from err
        if not isinstance(meta, dict) or "signature" not in meta:
            raise CheckpointError(f"{where} is corrupt: its metadata has no parameter signature; "
                                  "nothing was changed")
        expected = _signature(template)
        if meta["signature"] != expected:
            saved = {p: (s, d) for p, s, d in meta["signature"]}
            now = {p: (s, d) for p, s, d in expected}
            diffs = [f"{p}: checkpoint {saved.get(p)} vs now {now.get(p)}"
                     for p in sorted(set(saved) | set(now)) if saved.get(p) != now.get(p)]
            raise CheckpointError(f"{where} was written for a different model or optimiser "
                                  f"({len(diffs)} mismatched leaves, e.g. {diffs[:3]}); nothing was changed")
        if config is not None and meta.get("config") is not None and meta["config"] != _jsonify(config):
            old, new = meta["config"], _jsonify(config)
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CheckpointError(f"{where} was written with a different config (differs in {keys}: "
                                  f"{ {k: (old.get(k), new.get(k)) for k in keys[:5]} }); nothing was changed")
        # restore straight onto the mesh (replicated) when there is one, so every process of a
        # multi-process run gets a global array; else onto the template's own device
        target = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            np.shape(x), x.dtype, sharding=target if target is not None else getattr(x, "sharding", None)),
            template)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
            leaves = jax.tree.leaves(restored)
            if len(leaves) != len(jax.tree.leaves(template)):
                raise ValueError(f"{len(leaves)} arrays, expected {len(jax.tree.leaves(template))}")
        except Exception as err:
            raise CheckpointError(f"{where} is corrupt or unreadable ({type(err).__name__}: {err}); "
                                  "nothing was changed") from err
        state = jax.tree.unflatten(jax.tree.structure(template),
                                   [x if isinstance(x, jax.Array) else jnp.asarray(x) for x in leaves])
        if "checksums" not in meta:
            raise CheckpointError(f"{where} has no checksums (written by an older seqjax?): its data "
                                  "cannot be verified; nothing was changed")
        got = _checksums(state)
        if got != meta["checksums"]:
            paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
            bad = [paths[i] for i, (a, b) in enumerate(zip(got, meta["checksums"])) if a != b]
            raise CheckpointError(f"{where} is corrupt: the data of {len(bad)} array(s) does not match "
                                  f"its checksum (e.g. {bad[:3]}); nothing was changed")
        if int(state.step) != step:
            raise CheckpointError(f"{where} holds step {int(state.step)}, not {step}: corrupt")
        return state, float(meta.get("seconds", 0.0))


def _jsonify(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=io.to_jsonable))


def _read_history(path: Path, max_step: int) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:      # a torn last line from a kill: drop it
                continue
            if row.get("step", 0) <= max_step:
                rows.append(row)
    return rows


def _write_csvs(out_dir: Path, history: list[dict]) -> None:
    for split in ("train", "eval"):
        rows = [r for r in history if r.get("split") == split]
        if rows:
            io.save_csv(out_dir / f"{split}_metrics.csv", rows)


def _mean_metrics(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def fit(trainer: Trainer, state: TrainState, data_fn: Callable[[int], Any], *, num_steps: int,
        out_dir: str | os.PathLike | None = None, eval_batches: Sequence[Any] | None = None,
        eval_every: int = 0, checkpoint_every: int = 0, log_every: int = 10,
        resume: bool = False, config: Mapping[str, Any] | None = None, mesh: Mesh | None = None,
        progress: bool = True, max_to_keep: int = 2, description: str = "train",
        resume_fallback: bool = False) -> FitResult:
    """Train ``num_steps`` optimiser steps: the only stateful shell in seqjax.

    Each step runs ``jax.jit(trainer.train_step)`` on ``data_fn(step)``. Every
    ``log_every`` steps the metrics are fetched from the device, checked by the
    NaN/Inf guard, appended to ``out_dir/metrics.jsonl`` and shown on the tqdm bar.
    Every ``eval_every`` steps (and at the end) ``trainer.eval_step`` runs on each of
    ``eval_batches`` and the mean is logged with ``split="eval"``. Every
    ``checkpoint_every`` steps (and at the end) the state is saved with
    orbax-checkpoint under ``out_dir/checkpoints/<step>`` (written to a temporary
    folder and renamed, so a kill never leaves a half checkpoint), and
    ``train_metrics.csv`` / ``eval_metrics.csv`` are rewritten atomically.

    Resume (``resume=True``): the latest checkpoint is checked against ``state``
    (same leaves, shapes, dtypes) and ``config``, restored, and training continues
    from its step; rows after that step are dropped from ``metrics.jsonl``. Because
    ``data_fn`` is a pure function of the step and the dropout keys are
    ``fold_in(rng, step)``, the final parameters are bit-identical to an
    uninterrupted run on CPU. A corrupt or mismatched checkpoint raises
    :class:`CheckpointError` before anything on disk is touched: every saved array
    carries a sha256 checksum that is verified on restore (orbax stores none), so a
    flipped byte is refused, never restored. With ``resume_fallback=True`` a corrupt
    latest checkpoint is skipped (with a warning) for the newest earlier one that
    verifies.

    Before step 1, every input is checked: the arguments, ``data_fn`` (callable),
    ``eval_batches`` (a sequence of batches, each divisible by the device count on a
    mesh), and one abstract evaluation (``jax.eval_shape``) of ``train_step`` and
    ``eval_step`` on the first batches, so a loss function that does not return
    ``(scalar, dict of scalars)`` fails at once, not after an epoch.

    NaN/Inf guard: when the loss or the gradient norm of any step is not finite,
    training stops with :class:`NonFiniteError` naming the step; no checkpoint is
    written after it, so the last good checkpoint stays the latest.

    Multi-process runs (after ``jax.distributed.initialize()``): start the same
    call on every process with the same ``data_fn``, ``state`` and a shared
    ``out_dir``. Every process runs every step (and the NaN guard, on the same
    replicated metrics); only process 0 (``jax.process_index() == 0``) writes
    ``metrics.jsonl`` and the CSVs and shows the progress bar; checkpoints are a
    collective orbax save of the replicated ``jax.Array`` state, and on resume
    every process restores it from the shared ``out_dir``. Every process returns
    the same :class:`FitResult`.

    Args:
      trainer: from :func:`seqjax.train.trainer` or :func:`seqjax.train.truncated_bptt`.
      state: the initial state (``trainer.init(params, key)``); on resume, the
        template the checkpoint must match.
      data_fn: ``data_fn(step) -> batch``, pure in ``step``.
      num_steps: total optimiser steps of the run (not "more steps").
      out_dir: where metrics and checkpoints go (None: nothing is written, no resume).
      eval_batches: fixed evaluation batches (None: no evaluation).
      eval_every: evaluation period in steps (0: only at the end).
      checkpoint_every: checkpoint period in steps (0: only at the end).
      log_every: metric fetch/log period in steps.
      resume: continue from the latest checkpoint in ``out_dir`` if there is one.
      config: a JSON-able dict stored with each checkpoint and compared on resume.
      mesh: data-parallel mesh (axis ``"data"``); by default :func:`data_mesh` when
        more than one device is present, else no sharding.
      progress: show the tqdm bar (on process 0 only).
      max_to_keep: checkpoints kept on disk.
      description: the progress bar's label.
      resume_fallback: on resume, fall back to the newest earlier checkpoint that
        verifies when the latest is corrupt (otherwise a corrupt latest raises); the
        skipped checkpoints are renamed ``checkpoints/corrupt-<step>``, not deleted.

    Metric rows are written to ``metrics.jsonl`` as standard JSON: a non-finite value
    is ``null``, and its key is listed with its repr under ``"nonfinite"``.

    Returns:
      :class:`FitResult` (final state, all metric rows, total seconds across resumes).

    Raises:
      ValueError: bad arguments; ``out_dir`` holds checkpoints but ``resume=False``;
        the batch size is not divisible by the device count.
      CheckpointError: a corrupt or mismatched checkpoint on resume.
      NonFiniteError: NaN/Inf loss or gradient norm.
    """
    from tqdm.auto import tqdm

    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a seqjax.train.Trainer, got {type(trainer).__name__}")
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState (trainer.init(params, key)), got {type(state).__name__}")
    for name, value, lo in (("num_steps", num_steps, 1), ("eval_every", eval_every, 0),
                            ("checkpoint_every", checkpoint_every, 0), ("log_every", log_every, 1),
                            ("max_to_keep", max_to_keep, 1)):
        checks.check_int(value, name, minimum=lo)
    resume = checks.check_bool(resume, "resume")
    progress = checks.check_bool(progress, "progress")
    resume_fallback = checks.check_bool(resume_fallback, "resume_fallback")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (where the checkpoints are)")
    if mesh is None and jax.device_count() > 1:
        mesh = data_mesh()
    if mesh is not None and "data" not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named 'data', got axes {mesh.axis_names}")
    clock = time.perf_counter()

    writer = jax.process_index() == 0     # the one process that writes metric files and progress
    history: list[dict] = []
    ckpt = None
    metrics_path = None
    seconds_before = 0.0
    if out_dir is not None:
        out_dir = io.ensure_writable_dir(out_dir)
        metrics_path = out_dir / "metrics.jsonl"
        ckpt_dir = out_dir / "checkpoints"
        has_ckpt = ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
        if has_ckpt and not resume:
            raise ValueError(f"out_dir {str(out_dir)!r} already holds checkpoints; pass resume=True "
                             "(--resume) to continue that run, or choose another directory")
        ckpt = _Checkpoints(ckpt_dir, max_to_keep)
        latest = ckpt.latest() if resume else None
        if latest is not None:
            state, seconds_before, latest = _restore(ckpt, state, config, mesh, resume_fallback)
            history = _read_history(metrics_path, latest)
    # every input checked before anything is written or trained
    first_step = int(state.step)
    first_batch = _preflight(trainer, state, data_fn, eval_batches, mesh, first_step, num_steps)
    if out_dir is not None and writer:
        io.remove_stale_temporaries(out_dir)              # left by a kill between write and rename
        if history or metrics_path.exists():
            io.atomic_write_text(metrics_path, "".join(io.json_line(r) for r in history))
    meta_base = {"config": None if config is None else _jsonify(dict(config)),
                 "signature": _signature(state)}

    start = int(state.step)
    if mesh is not None:
        state = replicate(state, mesh)
    train_step = jax.jit(trainer.train_step)
    eval_step = jax.jit(trainer.eval_step)
    pending: list[tuple[int, dict]] = []
    last_ckpt = start if (resume and start > 0) else None
    pbar = tqdm(total=num_steps, initial=start, disable=not (progress and writer), desc=description,
                dynamic_ncols=True)

    def place(batch):
        return shard_batch(batch, mesh) if mesh is not None else batch

    def append(rows: list[dict]) -> None:
        history.extend(rows)
        if writer and metrics_path is not None and rows:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write("".join(io.json_line(r) for r in rows))

    def flush() -> None:
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        rows = []
        for (s, _), m in zip(pending, fetched):
            row = {"step": s, "split": "train", **{k: float(v) for k, v in m.items()}}
            rows.append(row)
            bad = _finite_row(row)
            if bad is not None:
                append(rows)
                pending.clear()
                pbar.close()
                kept = (f"the last good checkpoint (step {last_ckpt}) in {str(out_dir / 'checkpoints')!r} "
                        "is kept" if last_ckpt is not None else "no checkpoint had been written yet")
                raise NonFiniteError(f"{bad} became {row[bad]} at step {s}; training stopped and {kept}. "
                                     "Lower the learning rate, clip gradients (clip_norm) or check the data.")
        pending.clear()
        append(rows)
        pbar.set_postfix(loss=f"{rows[-1]['loss']:.4g}", refresh=False)

    def evaluate(s: int) -> None:
        if not eval_batches:
            return
        outs = jax.device_get([eval_step(state.params, place(b)) for b in eval_batches])
        row = {"step": s, "split": "eval", **_mean_metrics([{k: float(v) for k, v in o.items()}
                                                           for o in outs])}
        append([row])
        pbar.set_postfix(loss=f"{history[-2]['loss'] if len(history) > 1 else float('nan'):.4g}",
                         eval_loss=f"{row['loss']:.4g}", refresh=False)

    def checkpoint(s: int) -> None:
        nonlocal last_ckpt
        if ckpt is None:
            return
        if writer and metrics_path is not None and metrics_path.exists():
            with open(metrics_path, "rb+") as f:
                os.fsync(f.fileno())
        ckpt.save(s, state, {**meta_base, "step": s,       # collective: every process calls it
                             "seconds": seconds_before + time.perf_counter() - clock})
        if writer:
            _write_csvs(out_dir, history)
        last_ckpt = s

    try:
        for step in range(start, num_steps):
            batch = place(first_batch if step == first_step else data_fn(step))
            state, metrics = train_step(state, batch)
            s = step + 1
            pending.append((s, metrics))
            pbar.update(1)
            at_end = s == num_steps
            due_eval = at_end or (eval_every and s % eval_every == 0)
            due_ckpt = at_end or (checkpoint_every and s % checkpoint_every == 0)
            if s % log_every == 0 or due_eval or due_ckpt:
                flush()
            if due_eval:
                evaluate(s)
            if due_ckpt:
                checkpoint(s)
        if start >= num_steps and not any(r["split"] == "eval" and r["step"] == start for r in history):
            evaluate(start)   # a finished run resumed: report its evaluation once
    finally:
        pbar.close()
    if out_dir is not None and writer:
        _write_csvs(out_dir, history)
    return FitResult(state, history, seconds_before + time.perf_counter() - clock)


def _restore(ckpt: _Checkpoints, state: TrainState, config, mesh, fallback: bool):
    """(state, seconds, step) from the latest checkpoint, or with ``fallback`` the newest that verifies."""
    config = None if config is None else dict(config)
    steps = ckpt.all_steps()[::-1]
    first_error = None
    for step in steps if fallback else steps[:1]:
        try:
            restored, seconds = ckpt.restore(step, state, config, mesh)
        except CheckpointError as err:
            first_error = first_error or err
            if fallback:
                warnings.warn(f"resume_fallback: skipping step {step}: {err}", stacklevel=3)
            continue
        skipped = [s for s in steps if s > step]
        for bad in skipped:     # kept for inspection, out of the way of the steps to come
            (ckpt.directory / str(bad)).rename(ckpt.directory / f"corrupt-{bad}")
        if skipped:
            ckpt.manager.reload()
        return restored, seconds, step
    hint = "" if fallback else " Pass resume_fallback=True to resume from the newest earlier checkpoint that verifies."
    raise CheckpointError(f"{first_error}{hint}") from first_error


def _preflight(trainer: Trainer, state: TrainState, data_fn, eval_batches, mesh, start: int, num_steps: int):
    """Check every input of :func:`fit` before step 1; return the first training batch (or None)."""
    if not callable(data_fn):
        raise TypeError(f"data_fn must be a function data_fn(step) -> batch, got {type(data_fn).__name__}")
    if eval_batches is not None:
        if (hasattr(eval_batches, "_fields") or hasattr(eval_batches, "shape")
                or not isinstance(eval_batches, (list, tuple))
                or any(hasattr(b, "shape") for b in eval_batches)):
            raise TypeError("eval_batches must be a list of batches, e.g. [batch]; got "
                            f"{type(eval_batches).__name__} (one batch?)")
    devices = None if mesh is None else mesh.shape["data"]
    first = data_fn(start) if start < num_steps else None
    named = [("the first training batch (data_fn)", first)] if first is not None else []
    named += [(f"eval_batches[{i}]", b) for i, b in enumerate(eval_batches or [])]
    for name, batch in named:
        if devices is not None and _batch_size(batch) % devices:
            raise ValueError(f"{name} has batch size {_batch_size(batch)}, which the {devices} devices of "
                             "the data mesh do not divide; use a multiple of the device count")
    if first is not None:
        jax.eval_shape(trainer.train_step, state, first)
    if eval_batches:
        jax.eval_shape(trainer.eval_step, state.params, eval_batches[0])
    return first
