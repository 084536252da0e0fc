"""Fine-tune a summariser (full or LoRA) with one Accelerate training loop.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml train/finetune.py \
        --config configs/train/flan_t5_base_lora_samsum.yaml train.lr=3e-4

On CPU (the demo): ACCELERATE_USE_CPU=true accelerate launch \
    --config_file configs/accelerate/cpu_2proc.yaml train/finetune.py --config configs/train/demo_lora.yaml
"""

from sumtune.cli import config_parser, parse, run_main
from sumtune.config import load_config
from sumtune.recipes.finetune import run


def main() -> None:
    args = parse(config_parser(__doc__.splitlines()[0]))
    run(load_config(args.config, args.overrides))


if __name__ == "__main__":
    run_main(main)
