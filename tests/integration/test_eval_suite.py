"""In-training ROUGE with best/ and early stopping, prompt baselines, comparison (ROUGE, BERTScore on
the demo's tiny encoder, lengths), inference CLI."""

import csv
import functools
import json
import os
import subprocess

import pytest
from helpers import BIN, REPO, check, launch, read_jsonl, run_overrides, two_at_a_time


def overrides(demo, tmp, name, *extra):
    # The test split points at a file that does not exist: training must never read it.
    base = [o for o in run_overrides(demo, tmp, name, "lora") if not o.startswith("data.files=")]
    data = demo["data"]
    return [*base, f"data.files={{train: {data}/train.jsonl, validation: {data}/validation.jsonl, "
                   f"test: {tmp}/no-such-test.jsonl}}", *extra]


EARLY_STOP = ("train.rouge_every=1", "train.rouge_examples=4", "train.early_stopping_patience=1",
              # A learning rate too small to change any summary: no new best after the first score.
              "train.lr=1e-12", "train.max_steps=20")


def bertscore(demo):
    """The demo's tiny BERTScore encoder (its layer 0: the T5's embeddings)."""
    return [f"eval.bertscore_model={demo['bertscore']}", "eval.bertscore_num_layers=0"]


@pytest.fixture(scope="module")
def launches(demo, tmp_path_factory):
    """The run with in-training ROUGE and the early-stopping run, launched two at a time (folders
    of their own): a launch spends part of its time in one process (the launcher starting, rank 0
    saving). name -> (its output folder, a Future of the launch)."""
    folders = {"rouge": tmp_path_factory.mktemp("suite"), "stop": tmp_path_factory.mktemp("stop")}
    futures = two_at_a_time({
        "rouge": functools.partial(launch, "train/finetune.py", *overrides(
            demo, folders["rouge"], "lora-rouge", "train.rouge_every=2", "train.rouge_examples=8", "train.lr=3e-3")),
        # best/ chosen by BERTScore: both ranks score their share of the validation summaries and gather
        "stop": functools.partial(launch, "train/finetune.py", *overrides(
            demo, folders["stop"], "stop", *EARLY_STOP, "eval.metrics=[rouge,bertscore]", *bertscore(demo),
            "train.best_metric=bertscore_f1")),
    })
    return {name: (folders[name], futures[name]) for name in folders}


@pytest.fixture(scope="module")
def rouge_run(launches):
    tmp, future = launches["rouge"]
    check(future.result())
    return tmp, tmp / "lora-rouge"


# A bare environment (no PATH), but the sumtune under test: a checkout run with PYTHONPATH keeps it.
BARE_ENV = {"HF_HUB_OFFLINE": "1", "PATH": "", **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}

def test_best_is_the_step_with_the_highest_validation_score(rouge_run, demo):
    _, run = rouge_run
    log = read_jsonl(run / "train_log.jsonl")
    scored = [(r["step"], r["val_rougeLsum"]) for r in log if "val_rougeLsum" in r]
    assert [s for s, _ in scored] == [2, 4, 6]
    best_value = max(v for _, v in scored)
    best_step = next(s for s, v in scored if v == best_value)  # the first to reach it
    info = json.loads((run / "best" / "best.json").read_text())
    assert info["step"] == best_step and info["val_rougeLsum"] == pytest.approx(best_value)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_step"] == best_step
    for folder in (run, run / "best", run / "final"):
        assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert (run / "final" / "adapter_model.safetensors").read_bytes() == (run / "adapter_model.safetensors").read_bytes()
    assert not (run / "best.tmp").exists() and not (run / "best.old").exists()


def test_early_stopping_is_agreed_across_ranks(launches):
    tmp_path, future = launches["stop"]
    proc = check(future.result())
    metrics = json.loads((tmp_path / "stop" / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and metrics["step"] == 2 and metrics["world_size"] == 2
    assert "saved" in proc.stdout
    scored = [r for r in read_jsonl(tmp_path / "stop" / "train_log.jsonl") if "val_bertscore_f1" in r]
    assert [r["step"] for r in scored] == [1, 2] and "val_rougeLsum" in scored[0]
    assert metrics["best_step"] == 1 and metrics["best_val_bertscore_f1"] == pytest.approx(scored[0]["val_bertscore_f1"])


@pytest.fixture(scope="module")
def evaluated(rouge_run, demo):
    tmp, run = rouge_run
    out = tmp / "eval"
    check(launch(
        "eval/evaluate.py", "--out", str(out),
        "--candidate", f"zero={demo['model']}", "--candidate", f"one={demo['model']},shots=1",
        "--candidate", f"few={demo['model']},shots=3", "--candidate", f"lora={run}",
        *run_overrides(demo, tmp, "eval", "lora"), "data.max_source_length=160",
        "eval.metrics=[rouge,bertscore,lengths]", *bertscore(demo),
    ))
    return out


def test_prompt_baselines_take_shots_from_train_only_and_report_drops(evaluated, demo):
    train_ids = {r["id"] for r in read_jsonl(demo["data"] / "train.jsonl")}
    test_ids = {r["id"] for r in read_jsonl(demo["data"] / "test.jsonl")}
    zero = json.loads((evaluated / "zero" / "metrics.json").read_text())
    few = json.loads((evaluated / "few" / "metrics.json").read_text())
    one = json.loads((evaluated / "one" / "metrics.json").read_text())
    assert zero["shots"] == 0 and zero["shot_ids"] == [] and zero["shots_dropped"] == 0
    assert len(few["shot_ids"]) == 3 and set(few["shot_ids"]) <= train_ids and not set(few["shot_ids"]) & test_ids
    assert len(one["shot_ids"]) == 1 and set(one["shot_ids"]) <= train_ids
    # 3 shots and the dialogue cannot all fit in 160 tokens: some shots are dropped and counted...
    assert few["shots_dropped"] > 0
    # ...while every evaluated dialogue was cut no more than zero-shot cut it.
    assert few["prompts_truncated"] == zero["prompts_truncated"]


def test_comparison_has_intervals_gains_and_a_report(evaluated):
    rows = list(csv.DictReader((evaluated / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["zero", "one", "few", "lora"]
    bert = ["bertscore_precision", "bertscore_recall", "bertscore_f1"]
    lengths = ["summary_words", "compression_ratio", "novel_unigrams", "novel_bigrams", "repeated_trigrams"]
    assert list(rows[0]) == ["model", "rouge1", "rouge2", "rougeL", "rougeLsum", *bert, *lengths]
    ci = list(csv.DictReader((evaluated / "comparison_ci.csv").open()))
    assert len(ci) == 4 * 12
    for row in ci:
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
        if row["model"] != "zero":
            lo, diff, hi = (float(row[k]) for k in ("difference_ci_low", "difference", "difference_ci_high"))
            assert lo - 1e-4 <= diff <= hi + 1e-4
            if row["metric"] in lengths:  # descriptive: a difference, never a gain
                assert row["gain_pp"] == "" and row["better"] == ""
            else:
                assert float(row["gain_ci_low_pp"]) <= float(row["gain_pp"]) <= float(row["gain_ci_high_pp"])
    # every row of predictions.jsonl keeps its BERTScore (eval/compare.py has no model to recompute it)
    preds = read_jsonl(evaluated / "lora" / "predictions.jsonl")
    assert all(0 < p["bertscore_f1"] <= 1 for p in preds)
    metrics = json.loads((evaluated / "lora" / "metrics.json").read_text())
    assert metrics["metrics"] == ["rouge", "bertscore", "lengths"]
    assert metrics["metric_settings"]["bertscore"]["num_layers"] == 0
    md = (evaluated / "comparison.md").read_text()
    assert "## BERTScore (bert-score " in md and "layer 0, not rescaled" in md and "## Length and abstractiveness" in md
    report = (evaluated / "report.md").read_text()
    assert "## lora: worst 5 by rougeLsum" in report and "## zero: best 5 by rougeLsum" in report
    (offline,) = list((evaluated / "wandb").glob("offline-run-*"))
    tables = {p.name.split("_")[0] for p in offline.glob("files/media/table/*.table.json")}
    assert {"predictions", "comparison", "extremes"} <= tables
    (table,) = offline.glob("files/media/table/predictions_*.table.json")
    assert {"bertscore_f1", "summary_words", "novel_bigrams"} <= set(json.loads(table.read_text())["columns"])
    record = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"lora/bertscore_f1" in record and b"lora/repeated_trigrams" in record  # the summary and the logged means


def test_compare_cli_rebuilds_the_table_from_folders_with_another_baseline(evaluated, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([str(BIN / "python"), str(REPO / "eval/compare.py"), "tracker.mode=offline",
                           "--results", str(evaluated), "--baseline", "lora", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["lora", "few", "one", "zero"]  # baseline first, then folder order
    original = {r["model"]: r for r in csv.DictReader((evaluated / "comparison.csv").open())}
    for r in rows:
        assert r == original[r["model"]]  # the same numbers, re-derived from the predictions
    gains = {r["model"]: float(r["rouge1"]) for r in csv.DictReader((out / "gain_pp.csv").open())}
    assert gains["zero"] == pytest.approx(100 * (float(original["zero"]["rouge1"]) - float(original["lora"]["rouge1"])), abs=0.02)
    assert list((out / "wandb").glob("offline-run-*/files/media/table/comparison_*.table.json"))


def test_inference_cli_gives_the_evaluation_summaries(evaluated, rouge_run, demo, tmp_path):
    _, run = rouge_run
    out = tmp_path / "summaries.jsonl"
    sorted_out = tmp_path / "sorted.jsonl"
    evaluation = read_jsonl(evaluated / "lora" / "predictions.jsonl")
    first = evaluation[0]

    def summarize(*args: str, stdin: str | None = None):
        return functools.partial(subprocess.run, [str(BIN / "python"), str(REPO / "eval/summarize.py"), "--model", str(run),
                                                  *args], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=300,
                                 env=BARE_ENV)

    # Each run is one process: two at a time. The last one needs the first one's output file.
    runs = two_at_a_time({
        "jsonl": summarize("--jsonl", str(demo["data"] / "test.jsonl"), "--out", str(out), "data.max_source_length=160"),
        # model.generate over length-sorted batches, in one process
        "sorted": summarize("--jsonl", str(demo["data"] / "test.jsonl"), "--out", str(sorted_out),
                            "data.max_source_length=160", "generation.refill=false"),
        # one dialogue on stdin
        "stdin": summarize("data.max_source_length=160", stdin=first["dialogue"]),
    })
    proc = runs["jsonl"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    # nothing the user has is overwritten
    again = summarize("--jsonl", str(demo["data"] / "test.jsonl"), "--out", str(out))()
    assert again.returncode == 2 and "already exists" in again.stderr
    cli = read_jsonl(out)
    assert [r["id"] for r in cli] == [r["id"] for r in evaluation]
    assert [r["summary"] for r in cli] == [r["prediction"] for r in evaluation]
    # model.generate over length-sorted batches, in one process, gives what the refill decoder gave in two
    proc = runs["sorted"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["summary"] for r in read_jsonl(sorted_out)] == [r["prediction"] for r in evaluation]
    one = runs["stdin"].result()
    assert one.returncode == 0, one.stderr[-3000:]
    assert one.stdout.strip() == first["prediction"]
