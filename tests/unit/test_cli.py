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
        (["model.name_or_path=someone/unknown-model"], "is not a local folder, nor in the Hugging Face cache, and HF_HUB_OFFLINE is set"),
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


def test_an_encoder_only_model_is_refused_in_one_line_before_any_weight_loads(tmp_path):
    model = tmp_path / "model"
    model.mkdir()  # a config.json and no weights: the refusal must come from the config alone
    (model / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForMaskedLM"]}')
    line = one_error_line(run("train/finetune.py", f"model.name_or_path={model}", f"output_dir={tmp_path / 'out'}"))
    assert f"model.name_or_path: {model} is a 'bert' model, which is neither an encoder-decoder" in line
    assert not (tmp_path / "out").exists()


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


# ----------------------------------------------------------------------------- dotted overrides anywhere

def load_script(script):
    """An entry script as a module, so that its main() can run with the work it calls replaced."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main_of(script, argv, monkeypatch, **replace):
    """Run ``script``'s main() with ``argv``; each name in ``replace`` records its call's arguments."""
    module = load_script(script)
    calls = {}
    for name in replace:
        monkeypatch.setattr(module, name, lambda *a, _name=name: calls.setdefault(_name, a))
    monkeypatch.setattr(sys, "argv", [script, *argv])
    module.main()
    return calls


def test_the_failing_command_line_of_the_issue_now_parses(monkeypatch, tmp_path):
    # --config C A=1 --out D --candidate x=y B=2: argparse used to stop at B=2.
    calls = run_main_of("eval/evaluate.py", ["--config", "configs/train/demo_lora.yaml", "train.seed=7", "--out",
                                             str(tmp_path), "--candidate", "x=y", "generation.max_new_tokens=33"],
                        monkeypatch, run={})
    cfg, candidates, out, overwrite = calls["run"]
    assert (cfg.train.seed, cfg.generation.max_new_tokens) == (7, 33)
    assert cfg.run_name == "demo-lora"  # the YAML is read too
    assert (candidates, out, overwrite) == (["x=y"], tmp_path, False)


def test_evaluate_takes_overrides_before_between_and_after_flags(monkeypatch, tmp_path):
    calls = run_main_of("eval/evaluate.py", ["train.seed=3", "--candidate", "a=b", "data.max_source_length=200",
                                             "--overwrite", "generation.batch_size=5", "--candidate", "c=d",
                                             "--out", str(tmp_path), "generation.max_new_tokens=9"],
                        monkeypatch, run={})
    cfg, candidates, out, overwrite = calls["run"]
    assert (cfg.train.seed, cfg.data.max_source_length, cfg.generation.batch_size,
            cfg.generation.max_new_tokens) == (3, 200, 5, 9)
    assert (candidates, out, overwrite) == (["a=b", "c=d"], tmp_path, True)


def test_the_last_value_of_a_key_wins_wherever_it_stands(monkeypatch, tmp_path):
    calls = run_main_of("eval/evaluate.py", ["train.seed=1", "--candidate", "a=b", "train.seed=2", "--out",
                                             str(tmp_path), "train.seed=3"], monkeypatch, run={})
    assert calls["run"][0].train.seed == 3


def test_summarize_takes_overrides_before_between_and_after_flags(monkeypatch, tmp_path):
    dialogue = tmp_path / "dialogue.txt"
    dialogue.write_text("A: hi\nB: hello", encoding="utf-8")
    calls = run_main_of("eval/summarize.py", ["generation.num_beams=4", "--model", str(tmp_path),
                                              "data.max_source_length=128", "--input", str(dialogue),
                                              "generation.max_new_tokens=20"],
                        monkeypatch, summarize_texts={}, summarize_file={})
    monkeypatch.undo()
    cfg, model, texts = calls["summarize_texts"]
    assert (cfg.generation.num_beams, cfg.data.max_source_length, cfg.generation.max_new_tokens) == (4, 128, 20)
    assert (model, texts) == (str(tmp_path), ["A: hi\nB: hello"])
    assert "summarize_file" not in calls


def test_summarize_jsonl_with_overrides_around_the_flags(monkeypatch, tmp_path):
    calls = run_main_of("eval/summarize.py", ["--jsonl", "in.jsonl", "generation.batch_size=3", "--model",
                                              str(tmp_path), "--out", "o.jsonl", "--overwrite", "generation.refill=false"],
                        monkeypatch, summarize_texts={}, summarize_file={})
    cfg, model, jsonl, out, column, overwrite = calls["summarize_file"]
    assert (cfg.generation.batch_size, cfg.generation.refill) == (3, False)
    assert (model, jsonl, out, column, overwrite) == (str(tmp_path), Path("in.jsonl"), Path("o.jsonl"), "dialogue", True)


def test_compare_takes_an_override_written_after_the_result_folders(monkeypatch, tmp_path):
    calls = run_main_of("eval/compare.py", ["train.seed=4", "--results", "r1", "r2", "tracker.backend=none",
                                            "--baseline", "base", "train.seed=5"], monkeypatch, run_compare={})
    cfg, results, out, baseline, overwrite = calls["run_compare"]
    assert (cfg.train.seed, cfg.tracker.backend) == (5, "none")
    assert (results, baseline) == ([Path("r1"), Path("r2")], "base")


def test_train_takes_overrides_around_config(monkeypatch):
    calls = run_main_of("train/finetune.py", ["train.lr=1e-4", "--config", "configs/train/demo_full.yaml",
                                              "train.max_steps=3"], monkeypatch, run={})
    (cfg,) = calls["run"]
    assert (cfg.train.lr, cfg.train.max_steps, cfg.model.method) == (1e-4, 3, "full")


@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_evaluate_script_checks_an_override_wherever_it_stands(where, tmp_path):
    # As a user runs it: the bad value is found by the config, not refused by argparse.
    args = {"before": ["train.lr=0", "--out", str(tmp_path / "e"), "--candidate", "x=y", "train.seed=2"],
            "between": ["train.seed=2", "--out", str(tmp_path / "e"), "train.lr=0", "--candidate", "x=y"],
            "after": ["--config", "configs/train/demo_lora.yaml", "train.seed=2", "--out", str(tmp_path / "e"),
                      "--candidate", "x=y", "train.lr=0"]}[where]
    assert "config key 'train.lr': must be > 0" in one_error_line(run("eval/evaluate.py", *args))


@pytest.mark.parametrize("args", [["generation.num_beams=0", "--model", "M", "--input", "D"],
                                  ["--model", "M", "generation.num_beams=0", "--input", "D"],
                                  ["--model", "M", "--input", "D", "generation.num_beams=0"]])
def test_summarize_script_checks_an_override_wherever_it_stands(args, tmp_path):
    args = [str(tmp_path) if a == "M" else str(tmp_path / "d.txt") if a == "D" else a for a in args]
    assert "generation.num_beams" in one_error_line(run("eval/summarize.py", *args))


@pytest.mark.parametrize("script, args", [
    ("eval/evaluate.py", ["--out", "E", "stray", "--candidate", "x=y"]),
    ("eval/summarize.py", ["--model", "M", "stray", "generation.num_beams=2"]),
    ("eval/compare.py", ["train.seed=1", "--results", "E", "--overwrite", "stray"]),
    ("train/finetune.py", ["train.seed=1", "stray"]),
])
def test_a_token_that_is_neither_a_flag_value_nor_an_override_fails_in_one_line(script, args, tmp_path):
    args = [str(tmp_path / a) if a in ("E", "M") else a for a in args]
    assert one_error_line(run(script, *args)) == (
        "sumtune: error: unexpected argument 'stray': it is not the value of any flag, nor a dotted override "
        "KEY=VALUE (e.g. train.lr=3e-4); see --help")
    assert not any(tmp_path.iterdir())


def test_an_unknown_flag_still_gets_argparse_usage_and_error(tmp_path):
    proc = run("eval/evaluate.py", "train.seed=1", "--out", str(tmp_path), "--candidates", "x=y", "train.seed=2")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: evaluate.py")
    assert proc.stderr.rstrip().splitlines()[-1].startswith("evaluate.py: error: unrecognized arguments: --candidates")
