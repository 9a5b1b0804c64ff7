"""The experiments' shared command line: one flag per field of the experiment's frozen config dataclass.

    parser = _common.parser(Config, __doc__, "clipping")      # --length, --hidden-size, ..., --out, --quick
    values, args = _common.parse(parser, argv, quick=QUICK)   # --quick's values, then the flags given
    cfg = Config(**values)                                    # the config validates itself (ValueError)

A flag that is not given keeps the config's default, or the value of a preset
(``--quick``'s sizes, say); a flag that is given always wins, so
``--quick --steps 7`` runs 7 steps at the quick sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from seqjax import io

REPO = Path(__file__).resolve().parents[1]


def parser(config_cls, doc: str, name: str, *, skip: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An ArgumentParser with ``--<field>`` per config field (but ``skip``), ``--out`` and ``--quick``.

    Booleans get ``--flag / --no-flag``; tuples take several values (space- or
    comma-separated); ``--out`` defaults to ``results/<name>`` in the repository.
    """
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.config_fields = frozenset(f.name for f in dataclasses.fields(config_cls) if f.name not in skip)
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if isinstance(default, bool):       # type=bool would read the string "False" as True
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"default {default}")
        elif isinstance(default, tuple):
            p.add_argument(flag, nargs="*", default=None, metavar=f.name.upper(), type=_listed(_kind(f.type)),
                           help=f"default {' '.join(map(str, default)) or '(none)'}")
        else:
            p.add_argument(flag, type=_kind(f.type), default=None, help=f"default {default}")
    p.add_argument("--out", type=Path, default=REPO / "results" / name,
                   help="output directory (default: results/%s)" % name)
    p.add_argument("--quick", action="store_true", help="a tiny run for tests")
    return p


def _kind(annotation) -> type:
    """int, float or str from a field's annotation ("int | None", "tuple[float, ...]", or a type)."""
    return next((k for k in (int, float) if re.search(rf"\b{k.__name__}\b", str(annotation))), str)


def _listed(kind):
    def convert(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]
    convert.__name__ = kind.__name__
    return convert


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
          quick: Mapping[str, Any] | None = None,
          preset: Callable[[argparse.Namespace], Mapping[str, Any]] | None = None) -> tuple[dict, argparse.Namespace]:
    """(config values, parsed args): ``quick`` under ``--quick``, then ``preset(args)``, then the flags given."""
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in parser.config_fields and v is not None}
    given = {k: tuple(x for part in v for x in part) if isinstance(v, list) else v for k, v in given.items()}
    values = dict(quick or {}) if args.quick else {}
    values.update(preset(args) if preset is not None else {})
    values.update(given)
    return values, args


def _bad_number(name: str, value, zero_ok: bool, rate: bool) -> str | None:
    """Why ``value`` is not acceptable for the field ``name`` (None if it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if rate:
        return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"
    if zero_ok and value < 0:
        return f"must be >= 0, got {value}"
    if not zero_ok and value <= 0:
        return f"must be {'>= 1' if isinstance(value, int) else '> 0'}, got {value}"
    return None


class FlagError(SystemExit, ValueError):
    """A refused flag: exits with status 2 like ``parser.error`` when uncaught, and is a
    ValueError (whose message names the flag) for callers of ``main(argv)``."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.code = 2
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)


def config(parser: argparse.ArgumentParser, config_cls, values: Mapping[str, Any], *,
           zero_ok: Sequence[str] = ("seed",), rates: Sequence[str] = ()):
    """``config_cls(**values)``, refusing bad values before anything is computed or written.

    The rule for every numeric field (and each number in a tuple field): finite; ints
    >= 1 and floats > 0, or >= 0 for the fields in ``zero_ok``, or in [0, 1) for the
    fields in ``rates``. Then the config's own checks run. Any failure is a command-line
    error naming the flag (``parser.error``: a usage message and exit status 2), so a
    flag a user sets either takes effect or is refused.
    """
    for name, value in values.items():
        for item in (value if isinstance(value, tuple) else (value,)):
            why = _bad_number(name, item, name in zero_ok, name in rates)
            if why is not None:
                raise FlagError(parser, f"--{name.replace('_', '-')} {why}")
    try:
        cfg = config_cls(**values)
    except (ValueError, TypeError) as err:
        raise FlagError(parser, str(err)) from None
    for f in dataclasses.fields(cfg):          # defaults and presets obey the same rule
        value = getattr(cfg, f.name)
        for item in (value if isinstance(value, tuple) else (value,)):
            why = _bad_number(f.name, item, f.name in zero_ok, f.name in rates)
            if why is not None:
                raise FlagError(parser, f"--{f.name.replace('_', '-')} {why}")
    return cfg


def begin(out: Path, config_json: Mapping[str, Any], *, resume: bool) -> Path:
    """Prepare ``out`` for a run that checkpoints, before any compute, changing nothing on refusal.

    Refuses (ValueError) a run whose ``out`` already holds checkpoints unless ``resume``,
    and a resume whose saved ``config.json`` differs from ``config_json``; only then
    writes ``config.json``. So a refused invocation leaves every file as it was.
    """
    out = io.ensure_writable_dir(out)
    has_ckpt = any(p.is_dir() and p.name.isdigit() for c in out.rglob("checkpoints") for p in c.iterdir())
    if has_ckpt and not resume:
        raise ValueError(f"{str(out)!r} already holds checkpoints of a run; pass --resume to continue it, "
                         "or choose another --out")
    saved = out / "config.json"
    new = json.loads(json.dumps(config_json, sort_keys=True, default=io.to_jsonable))
    if resume and saved.exists():
        old = io.load_json(saved)
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if keys:
            raise ValueError(f"--resume with a different config than the run in {str(out)!r} "
                             f"(differs in {keys}: { {k: (old.get(k), new.get(k)) for k in keys[:5]} }); "
                             "nothing was changed")
    io.save_json(saved, new)
    return out
