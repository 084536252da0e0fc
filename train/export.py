"""Merge a trained adapter (LoRA, DoRA, AdaLoRA, IA3, LoHa, LoKr, VeRA) into its base model and write
a plain transformers model folder (safetensors, tokenizer, generation config).

    python train/export.py outputs/demo-lora --out outputs/demo-lora-merged
    python train/export.py outputs/demo-lora/best --out outputs/demo-lora-best-merged --dtype bfloat16

The result loads with AutoModelForSeq2SeqLM / AutoModelForCausalLM.from_pretrained alone, and is a
candidate for eval/evaluate.py and eval/summarize.py like any full model. Prompt tuning has no
weights to merge and is refused. One process; no accelerate launch needed.
"""

import argparse
from pathlib import Path

from sumtune.cli import run_main
from sumtune.export import DTYPES, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder of an adapter method (its top level, final/ or best/)")
    parser.add_argument("--out", type=Path, required=True, help="where the merged model is written")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights' dtype (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    args = parser.parse_args()
    info = export(args.run_dir, args.out, args.dtype, args.overwrite)
    print(f"[sumtune] merged the {info['method']} adapter of {info['source']} into {info['base_model']} -> {args.out} "
          f"({info['dtype']})")
    if info["trained_quantization"] != "none":
        print(f"[sumtune] note: {info['note']}")


if __name__ == "__main__":
    run_main(main)
