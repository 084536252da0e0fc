"""What the entry scripts share: argument parsing and the one-line error contract."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import PurePath

from sumtune.config import redact_text
from sumtune.errors import ConfigError, DiskFullError, SumtuneError, is_disk_full

# A dotted override: section.key=value (or a top-level key=value). The key is made of identifiers.
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


def run_main(fn: Callable[[], object]) -> None:
    """Run ``fn``; a ``SumtuneError`` becomes one line on stderr and a non-zero exit."""
    try:
        try:
            fn()
        except SumtuneError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised unless it is one of the two below
            if _peer_lost(err):
                # Another process stopped (with its own one-line error, or killed); the launcher
                # names it. A traceback here would bury that line.
                sys.exit(1)
            # A full disk anywhere a save did not report it itself (sumtune.checkpoints does).
            if not is_disk_full(err):
                raise
            where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
            raise DiskFullError(f"no space left on device{where}; free some space and start again "
                                "(training: resume=auto continues from the newest complete checkpoint)") from None
    except SumtuneError as err:
        # Every rank hits the same error; one line is enough. Credentials never reach the line.
        if os.environ.get("RANK", "0") == "0" or getattr(err, "any_rank", False):
            print(f"sumtune: error: {redact_text(str(err))}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


def config_parser(description: str) -> argparse.ArgumentParser:
    """The entry scripts' parser: ``--config`` and dotted overrides. Parse it with :func:`parse`,
    which takes the overrides from anywhere on the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="run config YAML (defaults come from sumtune/config.py)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.lr=3e-4, anywhere on the command line")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line with the dotted overrides before, between and after the flags.

    ``parser.parse_args`` takes only one contiguous run of positionals, so ``--config C A=1 --out D
    B=2`` failed on ``B=2``; intermixed parsing collects them all, in order. An unknown ``--flag``
    still gets argparse's usage and error. A token that is neither a flag's value nor ``KEY=VALUE``
    stops the script in one line (a ``SumtuneError``, as ``run_main`` prints it). A flag that takes
    several values (``--results A B``) would swallow an override written after its values, so such
    a value that looks like ``section.key=value`` is taken back as an override (a folder of that
    name can still be given as ``./section.key=value``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    taken_back = False
    for action in parser._actions:  # noqa: SLF001 - argparse exposes no public list of its actions
        values = getattr(args, action.dest, None)
        if not action.option_strings or action.nargs not in ("+", "*") or not isinstance(values, list):
            continue
        kept = [v for v in values if not _looks_like_override(v)]
        if len(kept) == len(values):
            continue
        if action.nargs == "+" and not kept:
            parser.error(f"argument {'/'.join(action.option_strings)}: expected at least one argument")
        overrides += [str(v) for v in values if _looks_like_override(v)]
        setattr(args, action.dest, kept)
        taken_back = True
    if taken_back:  # the same order as on the command line: the last value of a key wins
        overrides = _in_order(overrides, argv)
    for item in overrides:
        if not _OVERRIDE.match(item):
            raise ConfigError(f"unexpected argument '{item}': it is not the value of any flag, nor a dotted "
                              "override KEY=VALUE (e.g. train.lr=3e-4); see --help")
    args.overrides = overrides
    return args


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(plain arguments, dotted overrides) of a free list of positionals, for a script whose own
    positionals are paths: an existing path is a path even when its name holds an ``=``."""
    plain, overrides = [], []
    for item in items:
        (overrides if _looks_like_override(item) and not os.path.exists(item) else plain).append(item)
    return plain, overrides


def _looks_like_override(value: object) -> bool:
    return isinstance(value, (str, PurePath)) and bool(_OVERRIDE.match(str(value)))


def _in_order(items: list[str], argv: list[str]) -> list[str]:
    """``items`` (tokens of ``argv``) sorted by where they stand in ``argv``."""
    left = list(items)
    ordered = []
    for token in argv:
        if token in left:
            left.remove(token)
            ordered.append(token)
    return ordered + left


def _peer_lost(err: BaseException) -> bool:
    """A collective failed because another rank is gone (only said of ranks other than 0)."""
    text = str(err)
    return os.environ.get("RANK", "0") != "0" and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "remote worker crashing"))
