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
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

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
