"""LoRA on an 8-bit or 4-bit (bitsandbytes) base: alone, under DDP and ZeRO-2; refused with ZeRO-3."""

import functools
import json

import pytest
from helpers import check, launch, read_jsonl, run_overrides, two_at_a_time


def quantized(demo, tmp, name, bits, steps=4):
    return [*run_overrides(demo, tmp, name, "lora", steps=steps), f"model.quantization={bits}",
            f"train.rouge_every={steps}", "train.rouge_examples=6", "tracker.backend=none"]


CASES = [
    ("8bit", "cpu_2proc.yaml", (), 2),
    ("8bit", "deepspeed_zero2.yaml", ("--num_processes", "2", "--mixed_precision", "no"), 2),
    ("4bit", "cpu_1proc.yaml", (), 1),
]


@pytest.fixture(scope="module")
def launches(demo, tmp_path_factory):
    """Every case launched, two at a time (run folders of their own): a one-process run leaves a
    core idle, a two-process launch spends part of its time in one process. name -> (its output
    folder, a Future of the launch)."""
    tmp = tmp_path_factory.mktemp("quantized")
    jobs = {f"{bits}-{config.removesuffix('.yaml')}": functools.partial(
        launch, "train/finetune.py", *quantized(demo, tmp, f"{bits}-{config.removesuffix('.yaml')}", bits), config=config,
        launcher_args=args) for bits, config, args, _ in CASES}
    return tmp, two_at_a_time(jobs)


@pytest.mark.parametrize("bits, config, args, world", CASES)
def test_quantized_lora_trains_and_evaluates(bits, config, args, world, launches):
    name = f"{bits}-{config.removesuffix('.yaml')}"
    tmp_path, futures = launches
    proc = check(futures[name].result())
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
