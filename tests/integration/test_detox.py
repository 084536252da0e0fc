"""The RL recipe (train/detox.py) under real launches, RLOO and PPO alike: two processes over DDP
killed mid-run and resumed exactly (sampling RNG, KL coefficient, logging window, validation and
PPO's value head and its optimizer state included), DeepSpeed ZeRO-2 on a decoder-only model with a
frozen reference, and the one-line refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEEPSPEED_ON_CPU, REPO, check, launch, read_jsonl, run_into_fault, two_at_a_time

STEPS = 6


@pytest.fixture(scope="module")
def detox_demo(demo, tmp_path_factory):
    """The integration tests' demo build, a tiny toxicity classifier on its tokenizer (as the detox
    demo builds one), and a LoRA run folder on its T5 standing for the supervised summariser (an
    adapter with non-zero weights, saved as train/finetune.py saves one)."""
    from transformers import AutoTokenizer

    from sumtune import checkpoints, families, models
    from sumtune.config import load_config
    from sumtune_demo.build import _causal_tokenizer, _toxicity_classifier

    out = tmp_path_factory.mktemp("detox")
    _causal_tokenizer(demo["model"]).save_pretrained(out / "toxicity")
    classifier, _ = _toxicity_classifier(AutoTokenizer.from_pretrained(out / "toxicity"), seed=1, steps=40, examples=400)
    classifier.save_pretrained(out / "toxicity")
    cfg = load_config(None, [f"model.name_or_path={demo['model']}", "model.method=lora", "run_name=sft",
                             f"output_dir={out}", "data.max_source_length=192"])
    family = families.resolve(str(demo["model"]))
    torch.manual_seed(0)
    model = models.apply_method(models.load_model(str(demo["model"]), family=family), cfg.model, family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(out / "sft")
    models.load_tokenizer(str(demo["model"]), family=family).save_pretrained(out / "sft")
    checkpoints.write_config(cfg, out / "sft")
    return {**demo, "toxicity": out / "toxicity", "sft": out / "sft"}


def rl_args(demo, tmp: Path, name: str, start: str, *extra: str) -> list[str]:
    data = demo["data"]
    return [
        f"run_name={name}", f"output_dir={tmp}", f"model.name_or_path={start}", "data.source=local",
        f"data.files={{train: {data}/train.jsonl, validation: {data}/validation.jsonl, test: {data}/test.jsonl}}",
        "data.max_source_length=192", f"train.max_steps={STEPS}", "train.per_device_batch_size=2", "train.grad_accum=2",
        "train.lr=2e-3", "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=2",
        "train.rouge_every=3", "train.rouge_examples=4", "generation.max_new_tokens=8", "generation.batch_size=4",
        "rl.samples_per_prompt=2", "rl.max_new_tokens=10", "rl.samples_every=3", "rl.samples_rows=2",
        "rl.kl_target=0.5", "rl.kl_horizon=50", f"rl.reward.model={demo['toxicity']}", "tracker.backend=none", *extra,
    ]


# PPO: one sample per prompt is enough; two mini-batches per pass, two passes (the second shuffled).
ALGORITHMS = {"rloo": (), "ppo": ("rl.algorithm=ppo", "rl.samples_per_prompt=1", "train.per_device_batch_size=4",
                                  "rl.minibatches=2", "train.grad_accum=1", "rl.epochs=2")}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_two_processes_killed_mid_run_resume_exactly(detox_demo, tmp_path, algorithm):
    """The same steps, logged values and final weights as an uninterrupted run: the ranks' sampling
    RNGs, the adaptive KL coefficient, the logging window and the optimizer (PPO: the value head and
    its optimizer state) all come back."""
    extra = ALGORITHMS[algorithm]
    # The uninterrupted run trains beside the killed one (the two share nothing but the CPU).
    straight = two_at_a_time({"straight": lambda: check(launch(
        "train/detox.py", *rl_args(detox_demo, tmp_path, "straight", detox_demo["sft"], *extra)))})["straight"]
    killed = rl_args(detox_demo, tmp_path, "killed", detox_demo["sft"], *extra)
    updates = 4 if algorithm == "ppo" else 1  # optimizer steps per RL step: killed inside RL step 5
    run_into_fault(killed, f"step:{4 * updates + 1}", tmp_path / "pids", script="train/detox.py")
    assert sorted(p.name for p in (tmp_path / "killed/checkpoints").iterdir()) == ["step-000002", "step-000004"]
    resumed = check(launch("train/detox.py", *killed, "resume=auto"))
    assert "resuming from" in resumed.stdout and "at step 4" in resumed.stdout
    straight = straight.result()
    assert "adapter merged" in straight.stdout and "reference: the policy's adapter disabled" in straight.stdout
    assert f"algorithm: {algorithm}" in straight.stdout

    a, b = read_jsonl(tmp_path / "straight/train_log.jsonl"), read_jsonl(tmp_path / "killed/train_log.jsonl")
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b):
        for key, value in x.items():
            if key in ("tokens_per_s", "samples_per_s"):
                continue
            if isinstance(value, float):
                assert y[key] == pytest.approx(value, abs=1e-6), (x["step"], key)
            else:
                assert y[key] == value, (x["step"], key)
    steps = [r for r in a if "kl" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert steps[0]["kl"] == 0.0  # the first samples come from the start itself: the policy is the reference
    assert len({r["kl_coef"] for r in steps}) > 2  # the adaptive coefficient moved (and was restored)
    assert [r["step"] for r in a if "samples" in r] == [3, 6] and [r["step"] for r in a if "val_rouge1" in r] == [0, 3, 6]
    assert {"score", "reward", "entropy", "length", "short_share", "no_eos_share", "advantage_mean", "advantage_std",
            "loss", "grad_norm"} <= set(steps[0])
    if algorithm == "ppo":  # the value head (zero at the start) learns and travels in the checkpoint
        assert {"value_loss", "value_clipped_share", "clipped_share"} <= set(steps[0]) and steps[0]["value_loss"] > 0
        assert json.loads((tmp_path / "straight/metrics.json").read_text())["plan"]["total_steps"] == STEPS * 4
        from safetensors.torch import load_file as load

        state = load(tmp_path / "killed/checkpoints/step-000004/model.safetensors")
        assert state["value_head.weight"].abs().max().item() > 0 and state["value_head.weight"].shape[0] == 1

    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "straight/model.safetensors"), load_file(tmp_path / "killed/model.safetensors")
    assert all((wa[k] - wb[k]).abs().max().item() <= 1e-6 for k in wa)
    assert not any("value_head" in k for k in wa)  # the run folder holds the summariser alone
    metrics = json.loads((tmp_path / "straight/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["num_processes"] == 2
    assert metrics["saved"].startswith("full model") and not (tmp_path / "straight/adapter_config.json").exists()
    # The merged policy left the supervised start behind, and loads with plain transformers.
    from transformers import AutoModelForSeq2SeqLM

    from sumtune import models

    start = models.load_adapter(detox_demo["sft"]).merge_and_unload().state_dict()
    trained = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "straight").state_dict()
    assert any((trained[k] - start[k]).abs().max().item() > 1e-4 for k in start if k in trained)


@pytest.mark.parametrize("algorithm", ["rloo", "ppo"])
def test_zero2_trains_a_decoder_only_model_against_a_frozen_copy(detox_demo, tmp_path, algorithm):
    """DeepSpeed ZeRO-2, two processes, full training of the decoder-only base (the reference a frozen
    copy; PPO: with its value head), two update passes per step (the second one clipped), W&B offline
    with the samples table."""
    args = rl_args(detox_demo, tmp_path, "zero2", detox_demo["causal"], "model.method=full", "train.max_steps=3",
                   "rl.epochs=2", "train.lr=1e-3", "tracker.backend=wandb", "tracker.mode=offline", "train.rouge_every=0",
                   "train.checkpoint_every=0", f"rl.algorithm={algorithm}")
    proc = check(launch("train/detox.py", *args, config="deepspeed_zero2.yaml", launcher_args=DEEPSPEED_ON_CPU))
    assert "reference: a frozen copy" in proc.stdout and "DEEPSPEED" in proc.stdout
    log = [r for r in read_jsonl(tmp_path / "zero2/train_log.jsonl") if "kl" in r]
    assert [r["step"] for r in log] == [1, 2, 3] and log[0]["kl"] == 0.0
    assert all("clipped_share" in r for r in log)
    assert all(("value_loss" in r) == (algorithm == "ppo") for r in log)
    metrics = json.loads((tmp_path / "zero2/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["saved"] == "full model" and metrics["plan"]["total_steps"] == 6
    offline = next((tmp_path / "zero2/wandb").glob("offline-run-*"))
    assert list(offline.glob("files/media/table/samples_*.table.json"))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "zero2")


def one_line_error(*args: str, env: dict | None = None) -> str:
    import os

    proc = subprocess.run([sys.executable, str(REPO / "train/detox.py"), *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("sumtune: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_bad_input_is_one_line_before_the_policy_loads(detox_demo, tmp_path):
    args = rl_args(detox_demo, tmp_path, "bad", detox_demo["sft"])
    line = one_line_error(*args, "rl.reward.label=not_hate")
    assert f"rl.reward.label: 'not_hate' is not a label of {detox_demo['toxicity']}; its labels are nothate, hate" in line
    assert not (tmp_path / "bad").exists()
    line = one_line_error(*args, env={"ACCELERATE_USE_DEEPSPEED": "true",
                                      "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(REPO / "configs/deepspeed/zero3.json")})
    assert "train/detox.py with DeepSpeed ZeRO-3" in line and "use a ZeRO-2 or DDP accelerate config" in line
    line = one_line_error(*args, "data.max_source_length=128")
    assert "config key 'data.max_source_length': the start" in line and "was trained with 192" in line
