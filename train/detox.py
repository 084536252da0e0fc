"""Detoxify a summariser with reinforcement learning (RLOO) against a toxicity classifier, with a KL
penalty to the supervised model it starts from (a LoRA or full run folder, or a base model).

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml train/detox.py \
        --config configs/train/flan_t5_base_detox_dialogsum.yaml

On CPU (the detox demo): ACCELERATE_USE_CPU=true accelerate launch \
    --config_file configs/accelerate/cpu_2proc.yaml train/detox.py --config configs/train/demo_detox.yaml
"""

from sumtune.cli import config_parser, parse, run_main
from sumtune.config import load_config
from sumtune.recipes.detox import run


def main() -> None:
    args = parse(config_parser(__doc__.splitlines()[0]))
    run(load_config(args.config, args.overrides))


if __name__ == "__main__":
    run_main(main)
