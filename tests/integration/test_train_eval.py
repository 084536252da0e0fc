"""End to end: train LoRA and full with two processes, evaluate with two processes, check the files."""

import csv
import functools
import json
import subprocess
import sys

import pytest
from helpers import check, launch, read_jsonl, run_overrides, two_at_a_time

from sumtune import rouge


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """The LoRA and full runs, and LoRA under ZeRO-2 (compared with the LoRA run by the last test),
    launched two at a time, each in a folder of its own: a launch spends part of its time in one
    process (the launcher starting, rank 0 saving)."""
    tmp = tmp_path_factory.mktemp("runs")
    launches = two_at_a_time({
        "lora": functools.partial(launch, "train/finetune.py", *run_overrides(demo, tmp, "lora", "lora")),
        # 21 validation examples: 3 batches of 4 per rank, the last round filled up by repeats.
        "full": functools.partial(launch, "train/finetune.py", *run_overrides(demo, tmp, "full", "full", steps=4),
                                  "data.max_eval_examples=21", "train.eval_max_batches=0"),
        "lora-zero2": functools.partial(launch, "train/finetune.py", *run_overrides(demo, tmp, "lora-zero2", "lora"),
                                        config="deepspeed_zero2.yaml",
                                        launcher_args=("--num_processes", "2", "--mixed_precision", "no")),
    })
    lora, full = check(launches["lora"].result()), check(launches["full"].result())
    return {"tmp": tmp, "lora": tmp / "lora", "full": tmp / "full", "lora_proc": lora, "full_proc": full,
            "lora-zero2": launches["lora-zero2"]}


def test_two_processes_form_one_group_and_the_plan_counts_both(runs):
    for name in ("lora", "full"):
        metrics = json.loads((runs[name] / "metrics.json").read_text())
        assert metrics["world_size"] == 2  # torch.distributed's own answer, not the launcher's intent
        assert metrics["num_processes"] == 2
        assert metrics["plan"]["effective_batch"] == 8  # 4 per device x 2 processes
    assert "effective batch 8 = 4 per device x 2 processes x 1 accumulation" in runs["lora_proc"].stdout


def test_train_log_has_every_field_at_each_interval(runs):
    log = read_jsonl(runs["lora"] / "train_log.jsonl")
    train_rows = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    for row in train_rows:
        assert set(row) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s",
                            "real_token_share"}
        assert 0 < row["real_token_share"] <= 1
        assert row["loss"] > 0 and row["tokens_per_s"] > 0 and row["grad_norm"] > 0
    assert [r["lr"] for r in train_rows] == sorted([r["lr"] for r in train_rows], reverse=True)  # decaying
    val_steps = [r["step"] for r in log if "val_loss" in r]
    assert val_steps == [3, 6]  # every eval_every steps, and at the end


def test_two_ranks_train_on_the_length_grouped_batches_dealt_round_robin(runs, demo):
    """The tokens the run counted are exactly those of the first 6 steps x 2 ranks of the
    sampler's order for this seed: grouping survives Accelerate's sharding, and what is reported
    is what was trained on."""
    import torch

    from sumtune import batching, data, models
    from sumtune.config import load_config

    saved = load_config(runs["lora"] / "sumtune_config.yaml")
    tokenizer = models.load_tokenizer(demo["model"])
    records, _ = data.load_split(saved.data, "train")
    family = models.model_family(demo["model"])
    feats, _ = data.encode_records(records, tokenizer, saved.data, family)
    lengths = data.example_lengths(feats, family)
    order = list(batching.LengthGroupedBatches(lengths, 4, torch.Generator().manual_seed(saved.train.seed),
                                           saved.train.group_size))
    used = order[:12]
    throughput = json.loads((runs["lora"] / "metrics.json").read_text())["throughput"]
    assert throughput["samples"] == 48
    assert throughput["real_tokens"] == sum(sum(lengths[i]) for b in used for i in b)
    assert throughput["real_token_share"] == pytest.approx(batching.real_token_share(used, lengths), abs=1e-4)
    line = next(x for x in runs["lora_proc"].stdout.splitlines() if "batches: length-grouped" in x)
    grouped, random_ = (float(x.split("%")[0].split()[-1]) for x in line.split("real")[:2])
    assert grouped > 90 > random_


def test_validation_loss_counts_every_example_once_across_two_ranks(runs, demo):
    """Accelerate repeats examples so that both ranks get 3 batches of 4 (24 for 21);
    gather_for_metrics drops the repeats: the loss is the token-weighted mean over the 21."""
    from sumtune import data, models
    from sumtune.config import load_config
    from sumtune.engine import validation_loss

    saved = load_config(runs["full"] / "sumtune_config.yaml")
    tokenizer = models.load_tokenizer(str(runs["full"]))
    model = models.load_model(str(runs["full"]))
    records, _ = data.load_split(saved.data, "validation", 21)
    family = models.model_family(str(runs["full"]))
    feats, _ = data.encode_records(records, tokenizer, saved.data, family)
    from accelerate import Accelerator

    direct = validation_loss(Accelerator(cpu=True), model, [data.make_collator(tokenizer)(feats)], family)
    assert json.loads((runs["full"] / "metrics.json").read_text())["val_loss"] == pytest.approx(direct, rel=1e-5)


def test_lora_run_folder_loads_with_plain_peft_and_holds_the_adapter_only(runs, demo):
    run = runs["lora"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                 "sumtune_config.yaml", "metrics.json", "train_log.jsonl"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()
    code = f"""
import sys
from transformers import AutoModelForSeq2SeqLM
from peft import PeftModel
base = AutoModelForSeq2SeqLM.from_pretrained({str(demo['model'])!r})
model = PeftModel.from_pretrained(base, {str(run)!r})
b = [p for n, p in model.named_parameters() if "lora_B" in n]
assert b and any(float(p.abs().sum()) > 0 for p in b), "lora_B still zero: the adapter was not trained"
assert "sumtune" not in sys.modules
print("ok", len(b))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-3000:]


def test_full_run_folder_is_a_plain_transformers_model(runs, demo):
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(runs["full"])
    base = load_file(demo["model"] / "model.safetensors")
    tuned = load_file(runs["full"] / "model.safetensors")
    assert set(base) == set(tuned) and all(tuned[k].numel() == base[k].numel() for k in base)
    assert any(not (tuned[k] == base[k]).all() for k in base)  # weights moved
    assert model.config.model_type == "t5"


def test_wandb_offline_runs_are_written_into_the_run_folder(runs):
    offline = list((runs["lora"] / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # main process only
    assert list(offline[0].glob("run-*.wandb"))


def test_finished_run_is_not_overwritten(runs, demo):
    before = (runs["lora"] / "adapter_model.safetensors").read_bytes()
    proc = launch("train/finetune.py", *run_overrides(demo, runs["tmp"], "lora", "lora"), processes=1)
    assert proc.returncode != 0  # the launcher turns the script's exit 2 into its own 1
    assert "sumtune: error: " in proc.stderr and "already holds a finished run; choose another run_name or set overwrite=true" in proc.stderr
    assert (runs["lora"] / "adapter_model.safetensors").read_bytes() == before


def test_evaluate_two_processes_scores_every_example_once(runs, demo):
    out = runs["tmp"] / "eval"
    proc = check(launch(
        "eval/evaluate.py", "--out", str(out), "--candidate", f"base={demo['model']}",
        "--candidate", f"lora={runs['lora']}", "--candidate", f"full={runs['full']}",
        *run_overrides(demo, runs["tmp"], "eval", "lora"),
    ))
    test_ids = [r["id"] for r in read_jsonl(demo["data"] / "test.jsonl")]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["base", "lora", "full"]
    assert list(rows[0]) == ["model", "rouge1", "rouge2", "rougeL", "rougeLsum"]
    for row in rows:
        name = row["model"]
        preds = read_jsonl(out / name / "predictions.jsonl")
        assert [p["id"] for p in preds] == test_ids  # none dropped, none twice, in order
        assert set(preds[0]) == {"id", "dialogue", "references", "prediction"}  # one reference per demo dialogue
        metrics = json.loads((out / name / "metrics.json").read_text())
        means, _ = rouge.score([p["prediction"] for p in preds], [p["references"][0] for p in preds])
        for k in rouge.ROUGE_TYPES:
            assert 0.0 <= float(row[k]) <= 1.0
            assert float(row[k]) == pytest.approx(means[k], abs=1e-4)
            assert metrics[k] == pytest.approx(means[k])
        assert metrics["summaries_per_second"] > 0
    gain = list(csv.DictReader((out / "gain_pp.csv").open()))
    assert [g["model"] for g in gain] == ["lora", "full"]
    assert float(gain[0]["rouge1"]) == pytest.approx(100 * (float(rows[1]["rouge1"]) - float(rows[0]["rouge1"])), abs=0.02)
    assert "base " in proc.stdout and "-> lora" in proc.stdout
    # W&B offline run of the evaluation holds the predictions and comparison tables.
    (offline,) = list((out / "wandb").glob("offline-run-*"))
    tables = {p.name.split("_")[0] for p in offline.glob("files/media/table/*.table.json")}
    assert {"predictions", "comparison"} <= tables
    table = json.loads(next(offline.glob("files/media/table/comparison_*.table.json")).read_text())
    assert table["columns"][:5] == ["model", "metric", "mean", "ci_low", "ci_high"]
    assert list(dict.fromkeys(r[0] for r in table["data"])) == ["base", "lora", "full"]
    lora_rouge1 = next(r for r in table["data"] if r[:2] == ["lora", "rouge1"])
    assert lora_rouge1[2] == pytest.approx(float(rows[1]["rouge1"]), abs=1e-4)


def test_deepspeed_zero2_computes_what_ddp_computes(runs, demo):
    """Same seed, same data, same 2 ranks: ZeRO-2 must give DDP's loss curve and adapter."""
    from safetensors.torch import load_file

    proc = check(runs["lora-zero2"].result())
    assert "(DistributedType.DEEPSPEED)" in proc.stdout  # really DeepSpeed, not a silent fallback to DDP
    ddp = [r["loss"] for r in read_jsonl(runs["lora"] / "train_log.jsonl") if "loss" in r]
    zero2 = [r["loss"] for r in read_jsonl(runs["tmp"] / "lora-zero2" / "train_log.jsonl") if "loss" in r]
    assert len(ddp) == len(zero2) == 3
    assert zero2 == pytest.approx(ddp, abs=1e-5)
    a = load_file(runs["lora"] / "adapter_model.safetensors")
    b = load_file(runs["tmp"] / "lora-zero2" / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-5, key
