"""Build one comparison table from evaluation result folders written earlier (no model is loaded).

    python eval/compare.py --results outputs/demo-eval outputs/eval-other/lora --baseline base --out outputs/compare

Each folder is an eval/evaluate.py --out folder (all its candidates are taken) or one candidate
folder holding predictions.jsonl. Writes comparison.md/.csv, comparison_ci.csv (95% bootstrap
intervals), gain_pp.csv and report.md to --out, and the tables to W&B (offline without a key).
"""

from pathlib import Path

from sumtune.cli import config_parser, parse, run_main
from sumtune.config import load_config
from sumtune.evaluation import run_compare


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="+", type=Path, required=True, metavar="FOLDER",
                        help="evaluation --out folders or candidate folders")
    parser.add_argument("--baseline", help="candidate the gains are measured against (default: the first)")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    parser.add_argument("--overwrite", action="store_true")
    args = parse(parser)
    run_compare(load_config(args.config, args.overrides), args.results, args.out, args.baseline, args.overwrite)


if __name__ == "__main__":
    run_main(main)
