"""Evaluate summarisers with ROUGE and the metrics of eval.metrics; write comparison tables (files and W&B).

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml eval/evaluate.py \
        --config configs/train/flan_t5_base_lora_samsum.yaml --out outputs/eval-samsum \
        --candidate base=google/flan-t5-base --candidate lora=outputs/flan-t5-base-lora-samsum

The first candidate is the baseline of the gain table. Score predictions made elsewhere
(jsonl with id, prediction, reference) without loading a model:

    python eval/evaluate.py --score-only predictions.jsonl
"""

from pathlib import Path

from sumtune.cli import config_parser, parse, run_main
from sumtune.config import load_config
from sumtune.evaluation import run, run_score_only


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--candidate", "-c", action="append", default=[], metavar="NAME=PATH",
                        help="a run folder, or a base model scored zero-shot; repeat for several")
    parser.add_argument("--out", type=Path, help="results folder (default: outputs/eval)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    parser.add_argument("--score-only", type=Path, metavar="FILE.jsonl", help="score existing predictions")
    args = parse(parser)
    if args.score_only:
        run_score_only(args.score_only, args.out, args.overwrite)
        return
    run(load_config(args.config, args.overrides), args.candidate, args.out or Path("outputs/eval"), args.overwrite)


if __name__ == "__main__":
    run_main(main)
