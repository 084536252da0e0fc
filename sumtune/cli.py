"""What the entry scripts share: argument parsing and the one-line error contract."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sumtune.errors import SumtuneError


def run_main(fn: Callable[[], object]) -> None:
    """Run ``fn``; a ``SumtuneError`` becomes one line on stderr and a non-zero exit."""
    try:
        fn()
    except SumtuneError as err:
        # Every rank hits the same error; one line is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"sumtune: error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


def config_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="run config YAML (defaults come from sumtune/config.py)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=3e-4")
    return parser
