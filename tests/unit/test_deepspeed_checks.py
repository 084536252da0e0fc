"""The DeepSpeed JSON holds no hyperparameters: a hard-coded value that contradicts the run config,
or a JSON that is missing, is refused in one line before any model is loaded."""

import json
from pathlib import Path

import pytest

from sumtune.config import load_config
from sumtune.distributed import check_deepspeed_config, deepspeed_config_path
from sumtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CFG = load_config(None, ["train.per_device_batch_size=4", "train.grad_accum=2", "train.max_grad_norm=1.0",
                         "train.lr=3e-4"])


def write_ds(tmp_path, **top) -> Path:
    ds = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    ds.update(top)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return path


def refusal(path, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        check_deepspeed_config(CFG, path, num_processes=2, mixed_precision="no", **kw)
    line = str(err.value)
    assert "\n" not in line and str(path) in line
    return line


@pytest.mark.parametrize("json_path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/deepspeed").glob("*.json")))
def test_the_repos_deepspeed_configs_leave_everything_to_the_run_config(json_path):
    for mixed in ("no", "bf16"):
        check_deepspeed_config(CFG, REPO / json_path, num_processes=8, mixed_precision=mixed)


@pytest.mark.parametrize("key, value, expected", [
    ("train_micro_batch_size_per_gpu", 8, '"train_micro_batch_size_per_gpu" is 8 but train.per_device_batch_size is 4'),
    ("gradient_accumulation_steps", 4, '"gradient_accumulation_steps" is 4 but train.grad_accum is 2'),
    ("gradient_clipping", 0.5, '"gradient_clipping" is 0.5 but train.max_grad_norm is 1.0'),
    ("train_batch_size", 64, '"train_batch_size" is 64 but train.per_device_batch_size x train.grad_accum x 2 processes is 16'),
    ("fp16", {"enabled": True}, '"fp16.enabled" is true but mixed_precision=no (accelerate config) is false'),
])
def test_a_hard_coded_value_that_differs_is_refused_naming_file_key_and_both_values(tmp_path, key, value, expected):
    line = refusal(write_ds(tmp_path, **{key: value}))
    assert expected in line
    assert 'set these to "auto" in the JSON' in line


def test_hard_coded_values_that_agree_pass(tmp_path):
    check_deepspeed_config(CFG, write_ds(tmp_path, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2,
                                         gradient_clipping=1, train_batch_size=16, bf16={"enabled": "true"}),
                           num_processes=2, mixed_precision="bf16")


def test_an_optimizer_section_is_refused_with_the_lr_it_would_set(tmp_path):
    line = refusal(write_ds(tmp_path, optimizer={"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": "auto"}}))
    assert 'remove its "optimizer" section (optimizer.params.lr 0.001 vs train.lr 0.0003)' in line
    line = refusal(write_ds(tmp_path, scheduler={"type": "WarmupLR", "params": {"warmup_num_steps": 10}}))
    assert 'remove its "scheduler" section' in line


def test_missing_broken_or_zero_less_json(tmp_path):
    assert "does not exist; fix deepspeed_config_file in the accelerate config" in refusal(tmp_path / "nope.json")
    rel = refusal(Path("configs/deepspeed/nope.json"))
    assert "relative to the folder accelerate launch ran in" in rel
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2},')
    assert "is not valid JSON" in refusal(broken)
    no_zero = tmp_path / "nozero.json"
    no_zero.write_text('{"train_batch_size": "auto"}')
    assert 'has no "zero_optimization" section' in refusal(no_zero)


def test_the_json_comes_from_the_environment_accelerate_gives_the_worker(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "nope.json"))
    assert deepspeed_config_path() is None  # not a DeepSpeed launch: nothing to check
    check_deepspeed_config(CFG)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert deepspeed_config_path() == tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="does not exist"):
        check_deepspeed_config(CFG)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")  # DeepSpeed settings inline in the yaml
    check_deepspeed_config(CFG)
