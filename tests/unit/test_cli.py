"""The entry scripts as a user runs them: bad input gives one line on stderr and exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(script, *args, env=None):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=300)


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sumtune: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train.lr=0"], "config key 'train.lr': must be > 0"),
        (["train.per_device_batch_size=0"], "train.per_device_batch_size': must be >= 1"),
        (["train.lerning_rate=1"], "did you mean 'train.lr'?"),
        (["--config", "configs/train/nope.yaml"], "config file configs/train/nope.yaml does not exist"),
        (["model.name_or_path=./no/such/model"], "model.name_or_path: ./no/such/model does not exist"),
        (["model.name_or_path=someone/unknown-model"], "is not a local folder and HF_HUB_OFFLINE is set"),
    ],
)
def test_train_refuses_bad_input_in_one_line(args, expected, tmp_path):
    proc = run("train/finetune.py", *args, f"output_dir={tmp_path}")
    assert expected in one_error_line(proc)
    assert not any(tmp_path.iterdir())  # nothing written


def test_fp16_with_t5_is_refused_before_any_work(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}')
    proc = run("train/finetune.py", f"model.name_or_path={model}", f"output_dir={tmp_path}",
               env={"ACCELERATE_MIXED_PRECISION": "fp16"})
    assert "T5 overflows to NaN in fp16; use bf16" in one_error_line(proc)


def test_eval_needs_candidates_and_valid_specs(tmp_path):
    assert "no --candidate given" in one_error_line(run("eval/evaluate.py", "--out", str(tmp_path / "e")))
    line = one_error_line(run("eval/evaluate.py", "--candidate", "justapath", "--out", str(tmp_path / "e")))
    assert "expected NAME=PATH" in line


def test_score_only_prints_and_writes_metrics(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "1", "prediction": "Tom will come at 5 pm.", "reference": "Tom will come at 5 pm."}\n')
    proc = run("eval/evaluate.py", "--score-only", str(preds))
    assert proc.returncode == 0, proc.stderr
    assert "| preds | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in proc.stdout
    assert (tmp_path / "preds.metrics.json").is_file()


def test_a_model_that_ships_code_is_refused_unless_trusted(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "custom", "auto_map": {"AutoConfig": "configuration_custom.C"}}')
    proc = run("train/finetune.py", f"model.name_or_path={model}", f"output_dir={tmp_path}")
    assert one_error_line(proc) == (f"sumtune: error: {model} ships its own Python code (auto_map in its config.json), which "
                                    "sumtune does not run unless the config says so; set model.trust_remote_code=true "
                                    "only if you trust it")


def test_data_errors_are_found_before_the_model_is_loaded(tmp_path):
    model = tmp_path / "model"
    model.mkdir()  # a config and no weights: loading it would fail differently
    (model / "config.json").write_text('{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}')
    train = tmp_path / "train.jsonl"
    train.write_text('{"dialogue": "A: hi", "summary": "A says hi."}\n{"dialogue": "A: bye", \n', encoding="utf-8")
    proc = run("train/finetune.py", f"model.name_or_path={model}", f"output_dir={tmp_path / 'out'}", "data.source=local",
               f"data.files={{train: {train}, validation: {train}}}")
    assert one_error_line(proc) == (f"sumtune: error: {train} line 2: not valid JSON (Expecting property name enclosed in "
                                    "double quotes); fix or remove the line")
    assert not (tmp_path / "out").exists()


def test_a_finished_run_is_refused_and_left_as_it_was(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    for name in ("metrics.json", "sumtune_config.yaml", "model.safetensors"):
        (run_dir / name).write_text(name)
    proc = run("train/finetune.py", "run_name=r", f"output_dir={tmp_path}")
    assert one_error_line(proc) == (f"sumtune: error: {run_dir} already holds a finished run; choose another run_name "
                                    "or set overwrite=true")
    assert all((run_dir / name).read_text() == name for name in ("metrics.json", "sumtune_config.yaml", "model.safetensors"))
