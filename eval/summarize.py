"""Summarise dialogues with a trained run folder (LoRA or full) or a base model.

    python eval/summarize.py --model outputs/demo-lora < dialogue.txt
    python eval/summarize.py --model outputs/demo-lora --input dialogue.txt
    python eval/summarize.py --model outputs/demo-lora --jsonl dialogues.jsonl --out summaries.jsonl

The prompt template, max source length and generation settings are those the run was trained
with (its sumtune_config.yaml); dotted overrides change them (generation.num_beams=4).
"""

import sys
from pathlib import Path

from sumtune.cli import config_parser, parse, run_main
from sumtune.inference import summarize_file, summarize_texts, summarizer_config


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder, or a base model (folder or hub id)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, help="a text file holding one dialogue (default: stdin)")
    source.add_argument("--jsonl", type=Path, help="a jsonl file of dialogues, summarised in batches")
    parser.add_argument("--column", default="dialogue", help="the dialogue field in --jsonl (default: dialogue)")
    parser.add_argument("--out", type=Path, help="where --jsonl summaries go (jsonl: id, summary)")
    parser.add_argument("--overwrite", action="store_true")
    args = parse(parser)
    cfg = summarizer_config(args.model, args.config, args.overrides)
    if args.jsonl:
        summarize_file(cfg, args.model, args.jsonl, args.out, args.column, args.overwrite)
        return
    text = args.input.read_text(encoding="utf-8") if args.input else sys.stdin.read()
    print(summarize_texts(cfg, args.model, [text])[0])


if __name__ == "__main__":
    run_main(main)
