"""LoRA on an 8-bit or 4-bit (bitsandbytes) base: alone, under DDP and ZeRO-2; refused with ZeRO-3."""

import json

import pytest
from helpers import check, launch, read_jsonl, run_overrides


def quantized(demo, tmp, name, bits, steps=4):
    return [*run_overrides(demo, tmp, name, "lora", steps=steps), f"model.quantization={bits}",
            f"train.rouge_every={steps}", "train.rouge_examples=6", "tracker.backend=none"]


@pytest.mark.parametrize("bits, config, args, world", [
    ("8bit", "cpu_2proc.yaml", (), 2),
    ("8bit", "deepspeed_zero2.yaml", ("--num_processes", "2", "--mixed_precision", "no"), 2),
    ("4bit", "cpu_1proc.yaml", (), 1),
])
def test_quantized_lora_trains_and_evaluates(bits, config, args, world, demo, tmp_path):
    name = f"{bits}-{config.removesuffix('.yaml')}"
    proc = check(launch("train/finetune.py", *quantized(demo, tmp_path, name, bits), config=config, launcher_args=args))
    assert f"method lora, base in {bits}" in proc.stdout
    run = tmp_path / name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["quantization"] == bits and metrics["world_size"] == world
    log = read_jsonl(run / "train_log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [2, 4]
    assert any("val_rougeLsum" in r for r in log)  # generated and scored in training
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()


def test_8bit_with_zero3_is_refused_in_one_line(demo, tmp_path):
    proc = launch("train/finetune.py", *quantized(demo, tmp_path, "q3", "8bit"), config="deepspeed_zero3.yaml",
                  launcher_args=("--num_processes", "2", "--mixed_precision", "no"))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sumtune: error:")]
    assert lines == ["sumtune: error: model.quantization=8bit with DeepSpeed ZeRO-3: ZeRO-3 shards parameters and "
                     "cannot shard bitsandbytes' quantized weights; use a ZeRO-2 or DDP accelerate config"]
    assert not (tmp_path / "q3").exists()
