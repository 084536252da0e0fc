"""Every file under configs/ is loaded and checked (a recursive glob, never a hand-kept list)."""

import json
from pathlib import Path

import pytest

from sumtune.config import load_config

ROOT = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in ROOT.rglob("*") if p.is_file())
KNOWN_DIRS = {"train", "accelerate", "deepspeed"}
# Values the run config owns: a DeepSpeed JSON must leave them to it ("auto").
RUN_CONFIG_OWNS = ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"]


def test_every_config_file_is_of_a_known_kind():
    assert ALL
    for path in ALL:
        kind = path.relative_to(ROOT).parts[0]
        assert kind in KNOWN_DIRS, f"{path}: no test knows how to check files under configs/{kind}"
        assert path.suffix == {"train": ".yaml", "accelerate": ".yaml", "deepspeed": ".json"}[kind], path


@pytest.mark.parametrize("path", [p for p in ALL if p.relative_to(ROOT).parts[0] == "train"], ids=lambda p: p.name)
def test_train_config_loads_and_opens_with_its_command(path):
    cfg = load_config(path)
    head = path.read_text().splitlines()[:3]
    assert head[0].startswith("#") and any("finetune.py" in line or "accelerate launch" in line for line in head), path
    assert cfg.run_name


@pytest.mark.parametrize("path", [p for p in ALL if p.relative_to(ROOT).parts[0] == "accelerate"], ids=lambda p: p.name)
def test_accelerate_config_is_valid_for_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    text = path.read_text()
    assert text.startswith("#"), f"{path}: open with a comment that says when to use it"
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1
    assert cfg.mixed_precision in ("no", "bf16"), f"{path}: fp16 overflows T5"
    if cfg.deepspeed_config:
        ds = ROOT.parent / cfg.deepspeed_config["deepspeed_config_file"]
        assert ds.is_file(), f"{path}: {ds} does not exist"


@pytest.mark.parametrize("path", [p for p in ALL if p.relative_to(ROOT).parts[0] == "deepspeed"], ids=lambda p: p.name)
def test_deepspeed_json_leaves_hyperparameters_to_the_run_config(path):
    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] in (0, 1, 2, 3)
    for key in RUN_CONFIG_OWNS:
        assert ds.get(key) == "auto", f"{path}: {key} must be \"auto\" (the run config owns it)"
    for section in ("optimizer", "scheduler"):
        params = ds.get(section, {}).get("params", {})
        assert all(v == "auto" for v in params.values()), f"{path}: {section} params must be \"auto\""
