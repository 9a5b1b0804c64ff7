"""Atomic writes for results: nothing a user saved is ever left half-written.

Every writer here writes to a temporary file in the destination's folder, flushes
and fsyncs it, then ``os.replace``s it over the destination, so an interrupted run
leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "to_jsonable", "save_json", "load_json", "save_csv",
           "load_csv", "save_npz", "save_figure", "ensure_writable_dir", "remove_stale_temporaries", "json_line"]


def ensure_writable_dir(path: str | os.PathLike, name: str = "output directory") -> Path:
    """Create ``path`` if needed and prove it writable, before any compute is spent.

    Raises:
      ValueError: naming the directory when it cannot be created or written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{name} {str(path)!r} is not writable: {err.strerror or err}") from err
    return path


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes 0600; a result file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer of this module left in ``directory``.

    They are named ``.<file>.<random>.tmp`` beside their destination; a kill between
    creating one and renaming it leaves it behind. Returns the removed paths.
    """
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        if tmp.is_file() and not tmp.name.startswith(".write-check-"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def json_line(row: Mapping[str, Any]) -> str:
    """One standard-JSON line for a metrics row: non-finite floats become null, and their
    keys are listed under ``"nonfinite"`` (JSON has no NaN or Infinity)."""
    bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
    clean = {k: (None if k in bad else v) for k, v in row.items()}
    if bad:
        clean["nonfinite"] = {k: repr(row[k]) for k in bad}
    return json.dumps(clean, allow_nan=False, default=to_jsonable) + "\n"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); returns ``path``."""
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any):
    """The ``default=`` hook of ``json.dumps`` for results: NumPy/JAX scalars become Python
    numbers, arrays nested lists, paths strings, sets and tuples lists.

    Raises:
      TypeError: for any other type (as ``json.dumps`` expects of its hook).
    """
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy/JAX scalars and arrays become lists)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=to_jsonable) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
             fieldnames: Sequence[str] | None = None) -> Path:
    """Write a list of dicts as CSV with a header row."""
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(rows[0]) if rows else []
        for row in rows:
            fieldnames += [k for k in row if k not in fieldnames]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: to_jsonable(v) if isinstance(v, np.generic) else v for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def load_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file with a header row as a list of dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez`` of host copies of ``arrays``, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` atomically; the format comes from ``path``'s suffix."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return atomic_write_bytes(path, buf.getvalue())
