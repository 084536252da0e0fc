"""What the entry scripts share: argument parsing and the one-line error contract."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sumtune.config import redact_text
from sumtune.errors import DiskFullError, SumtuneError, is_disk_full


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
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="run config YAML (defaults come from sumtune/config.py)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=3e-4")
    return parser


def _peer_lost(err: BaseException) -> bool:
    """A collective failed because another rank is gone (only said of ranks other than 0)."""
    text = str(err)
    return os.environ.get("RANK", "0") != "0" and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "remote worker crashing"))
