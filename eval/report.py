"""Pictures of training runs and evaluations: one HTML page, PNGs, the numbers as CSV, W&B images.

    python eval/report.py outputs/demo-lora outputs/demo-full outputs/demo-eval --out outputs/demo-report

Each folder is a training run folder (train/finetune.py: training curves, the change of every
weight matrix or adapter update per layer and module, the word-embedding movement) or an
evaluation folder (eval/evaluate.py --out: ROUGE with 95% intervals, gains, summary lengths).
Writes into --out (default: the first folder's report/) report.html, the PNGs and the CSV/JSON
behind them, and logs the figures to W&B (offline without a key) in the first run's group.
Dotted overrides, anywhere on the line, change the tracker settings, e.g. tracker.backend=none.
"""

import argparse
from pathlib import Path

from sumtune.cli import run_main, split_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="+", metavar="FOLDER",
                        help="training run folders and/or evaluation --out folders (and KEY=VALUE overrides)")
    parser.add_argument("--out", type=Path, help="report folder (default: FIRST_FOLDER/report)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    args = parser.parse_intermixed_args()
    folders, overrides = split_overrides(args.items)
    if not folders:
        parser.error("give at least one FOLDER")
    from sumtune.report import build

    build([Path(f) for f in folders], args.out, args.overwrite, overrides)


if __name__ == "__main__":
    run_main(main)
