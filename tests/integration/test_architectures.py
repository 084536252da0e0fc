"""Every model family through the whole path: tiny random Llama, Qwen2, Mistral, Gemma, Phi, BART
and a FLAN-T5-shaped T5 (untied lm_head) each train 2 steps, are evaluated, and their run folders
load with plain transformers/peft; the decoder-only demo model computes under DDP, ZeRO-2 and
ZeRO-3 what one process computes, and resumes exactly after a kill; a T5 with its own lm_head
saved under ZeRO-3 reloads with both matrices."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEEPSPEED_ON_CPU, REPO, check, launch, read_jsonl, run_into_fault, run_overrides, two_at_a_time

sys.path.insert(0, str(REPO / "tests"))
import zoo  # noqa: E402

PY = [sys.executable]
ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def zoo_models(zoo_build, tmp_path_factory):
    return {**zoo_build, "data": zoo.write_data(tmp_path_factory.mktemp("data"))}


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([*PY, str(REPO / script), *args], cwd=REPO, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=600)


def zoo_overrides(models, tmp: Path, arch: str, method: str) -> list[str]:
    data = models["data"]
    return [f"run_name={arch}-{method}", f"output_dir={tmp}", f"model.name_or_path={models[arch]}",
            f"model.method={method}", "data.source=local",
            f"data.files={{train: {data}/train.jsonl, validation: {data}/validation.jsonl, test: {data}/test.jsonl}}",
            "data.max_source_length=160", "data.max_target_length=40", "data.max_eval_examples=6",
            "train.max_steps=2", "train.per_device_batch_size=4", "train.log_every=1", "train.lr=1e-3",
            "train.warmup_steps=0", "generation.max_new_tokens=8", "generation.batch_size=4", "tracker.backend=none"]


def _plain_load(arch: str, folder: Path, lora: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForCausalLM if arch in zoo.CAUSAL else AutoModelForSeq2SeqLM
    if not lora:
        return cls.from_pretrained(folder)
    from peft import PeftModel

    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(cls.from_pretrained(base), folder)


CASES = [(arch, "lora") for arch in zoo.ARCHITECTURES] + [("bart", "full"), ("t5", "full"), ("llama", "full")]


def _train_and_evaluate(models, tmp: Path, arch: str, method: str) -> tuple:
    """train/finetune.py, then (if it trained) eval/evaluate.py on the base and the run folder."""
    train = run_script("train/finetune.py", *zoo_overrides(models, tmp, arch, method))
    if train.returncode != 0:
        return train, None
    evaluated = run_script("eval/evaluate.py", *zoo_overrides(models, tmp, arch, method), "--out", str(tmp / "eval"),
                           "--candidate", f"base={models[arch]}", "--candidate", f"tuned={tmp / f'{arch}-{method}'}")
    return train, evaluated


@pytest.fixture(scope="module")
def case_runs(zoo_models, tmp_path_factory):
    """Every case of CASES trained and evaluated by its own script runs, two cases at a time (each
    run is one process on one thread): case -> (its folder, a Future of (train, evaluate))."""
    root = tmp_path_factory.mktemp("cases")
    folders = {case: root / "-".join(case) for case in CASES}
    for folder in folders.values():
        folder.mkdir()
    futures = two_at_a_time({case: functools.partial(_train_and_evaluate, zoo_models, folders[case], *case)
                             for case in CASES})
    return {case: (folders[case], futures[case]) for case in CASES}


@pytest.mark.parametrize("arch, method", CASES, ids=[f"{a}-{m}" for a, m in CASES])
def test_each_architecture_trains_evaluates_and_reloads_with_plain_libraries(arch, method, zoo_models, case_runs):
    from sumtune import families

    tmp_path, future = case_runs[(arch, method)]
    train, evaluated = future.result()
    proc = check(train)
    family = "causal" if arch in zoo.CAUSAL else "seq2seq"
    assert f"model: {family} family ({arch})" in proc.stdout
    run = tmp_path / f"{arch}-{method}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["family"], metrics["model_type"], metrics["step"]) == (family, arch, 2)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_jsonl(run / "train_log.jsonl") if "loss" in r)

    out = tmp_path / "eval"
    check(evaluated)
    for name in ("base", "tuned"):
        scored = json.loads((out / name / "metrics.json").read_text())
        assert scored["examples"] == 6 and scored["family"] == family and 0 <= scored["rouge1"] <= 1
        assert scored["generation_settings"]["max_new_tokens"] == 8
        predictions = read_jsonl(out / name / "predictions.jsonl")
        assert len(predictions) == 6
        # No prompt text in what was generated.
        assert not any("Summarize the following" in p["prediction"] for p in predictions)

    reloaded = _plain_load(arch, run, lora=method == "lora").eval()
    assert families.of_model(reloaded).name == family
    original = _plain_load(arch, zoo_models[arch], lora=False)
    if method == "lora":
        trained_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
        assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # trained away from its zero init
    else:
        before, after = dict(original.named_parameters()), dict(reloaded.named_parameters())
        assert any((before[k] - after[k]).abs().max() > 0 for k in before)
        if arch == "t5":  # FLAN-T5's own lm_head survives save and reload, trained, untied
            assert not torch.equal(after["lm_head.weight"], after["shared.weight"])
            assert not torch.equal(after["lm_head.weight"], before["lm_head.weight"])


def _quantized_run(demo, tmp: Path, bits: str) -> tuple:
    args = [*run_overrides(demo, tmp, "llama-q", "lora", steps=2, model="causal"), f"model.quantization={bits}",
            "tracker.backend=none", "data.max_eval_examples=6"]
    train = run_script("train/finetune.py", *args)
    if train.returncode != 0:
        return train, None
    return train, run_script("eval/evaluate.py", *args, "--out", str(tmp / "eval"), "--candidate", f"q={tmp / 'llama-q'}")


@pytest.fixture(scope="module")
def quantized_runs(demo, tmp_path_factory):
    """Both bit widths trained and evaluated by their own script runs, side by side (one thread each)."""
    folders = {bits: tmp_path_factory.mktemp(f"quantized-{bits}") for bits in ("8bit", "4bit")}
    futures = two_at_a_time({bits: functools.partial(_quantized_run, demo, folder, bits) for bits, folder in folders.items()})
    return {bits: (folders[bits], futures[bits]) for bits in folders}


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_causal_lora_trains_and_evaluates(bits, quantized_runs):
    # The demo's decoder-only model (hidden size 192): bitsandbytes quantizes 4-bit weights in blocks
    # of 64, which the zoo's 32-wide layers are too narrow for.
    tmp_path, future = quantized_runs[bits]
    train, evaluated = future.result()
    check(train)
    metrics = json.loads((tmp_path / "llama-q" / "metrics.json").read_text())
    assert metrics["quantization"] == bits and metrics["family"] == "causal"
    check(evaluated)
    assert json.loads((tmp_path / "eval/q/metrics.json").read_text())["examples"] == 6


# ----------------------------------------------------------------------------- the decoder-only demo model at scale

TOL = 1e-5
TWO = ("--num_processes", "2", "--mixed_precision", "no")
CAUSAL_TOPOLOGIES = {"cpu_1proc.yaml": ((), 4, 2), "cpu_2proc.yaml": ((), 4, 1), "deepspeed_zero2.yaml": (TWO, 4, 1),
                     "deepspeed_zero3.yaml": (TWO, 4, 1)}


def causal_run(demo, tmp: Path, config: str) -> Path:
    args, batch, accum = CAUSAL_TOPOLOGIES[config]
    name = "causal-" + config.removesuffix(".yaml")
    overrides = [o for o in run_overrides(demo, tmp, name, "full", steps=4, model="causal")
                 if not o.startswith(("train.log_every", "train.per_device"))]
    overrides += ["train.lr=1e-4", f"train.per_device_batch_size={batch}", f"train.grad_accum={accum}", "train.log_every=1",
                  "train.dropout=0.0", "train.eval_every=0", "tracker.backend=none"]
    if "zero3" in config:  # decoder-only generation in lockstep under ZeRO-3
        overrides += ["train.rouge_every=4", "train.rouge_examples=6"]
    check(launch("train/finetune.py", *overrides, config=config, launcher_args=args))
    return tmp / name


@pytest.fixture(scope="module")
def causal_runs(demo, tmp_path_factory):
    """Every config of CAUSAL_TOPOLOGIES launched, two at a time (run folders of their own): the
    one-process reference leaves a core idle, a two-process launch spends part of its time in one
    process. config -> a Future of the run folder."""
    tmp = tmp_path_factory.mktemp("causal-scale")
    return two_at_a_time({config: functools.partial(causal_run, demo, tmp, config) for config in CAUSAL_TOPOLOGIES})


@pytest.mark.parametrize("config", ["cpu_2proc.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_causal_topology_matches_one_process_with_accumulation(config, causal_runs):
    from safetensors.torch import load_file

    ref, run = causal_runs["cpu_1proc.yaml"].result(), causal_runs[config].result()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["family"] == "causal" and metrics["plan"]["effective_batch"] == 8
    losses = [[r["loss"] for r in read_jsonl(x / "train_log.jsonl") if "loss" in r] for x in (ref, run)]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], abs=TOL)
    norms = [[r["grad_norm"] for r in read_jsonl(x / "train_log.jsonl") if "grad_norm" in r] for x in (ref, run)]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert b[key].numel() > 0, key
        assert (a[key] - b[key]).abs().max().item() < TOL, key
    if "zero3" in config:
        assert "best_val_rougeLsum" in metrics


def test_causal_run_killed_and_resumed_ends_as_the_uninterrupted_one(demo, tmp_path):
    """SIGKILL inside step 5 of a 2-process decoder-only LoRA run (dropout on), resume=auto: the
    same logged losses and the same adapter as a run never interrupted."""
    from safetensors.torch import load_file

    def overrides(name, *extra):
        base = [o for o in run_overrides(demo, tmp_path, name, "lora", steps=8, model="causal")
                if not o.startswith(("train.log_every", "train.eval_every"))]
        return [*base, "train.log_every=2", "train.eval_every=0", "train.checkpoint_every=2", "tracker.backend=none",
                *extra]

    # The uninterrupted run launched beside the killed one (folders of their own).
    straight_run = two_at_a_time({"straight": functools.partial(launch, "train/finetune.py", *overrides("straight"))})
    try:
        run_into_fault(overrides("killed"), "step:5@1", tmp_path / "pids")
        run = tmp_path / "killed"
        assert not (run / "metrics.json").exists()
        proc = check(launch("train/finetune.py", *overrides("killed", "resume=auto")))
    finally:
        check(straight_run["straight"].result())
    assert "resuming from" in proc.stdout and "at step 4" in proc.stdout
    straight = [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "straight/train_log.jsonl") if "loss" in r]
    resumed = [(r["step"], r["loss"]) for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]
    assert [s for s, _ in resumed] == [s for s, _ in straight] == [2, 4, 6, 8]
    assert [x for _, x in resumed] == pytest.approx([x for _, x in straight], abs=1e-6)
    a, b = load_file(tmp_path / "straight/adapter_model.safetensors"), load_file(run / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key


def test_untied_t5_saved_under_zero3_reloads_with_its_own_lm_head(zoo_models, tmp_path):
    """FLAN-T5's lm_head is not the embedding matrix: under ZeRO-3 both are gathered and saved, and
    the reloaded model equals the same training in one process."""
    from safetensors.torch import load_file

    def args(name, accum):
        return [*zoo_overrides(zoo_models, tmp_path, "t5", "full"), f"run_name={name}", "train.dropout=0.0",
                "train.lr=1e-4", f"train.grad_accum={accum}", "train.per_device_batch_size=2"]

    # Side by side (run folders of their own): the one-process run leaves a core idle.
    for future in two_at_a_time({
        "one": functools.partial(launch, "train/finetune.py", *args("one", 2), config="cpu_1proc.yaml"),
        "zero3": functools.partial(launch, "train/finetune.py", *args("zero3", 1), config="deepspeed_zero3.yaml",
                                   launcher_args=DEEPSPEED_ON_CPU),
    }).values():
        check(future.result())
    one, z3 = load_file(tmp_path / "one/model.safetensors"), load_file(tmp_path / "zero3/model.safetensors")
    assert "lm_head.weight" in z3 and z3["lm_head.weight"].numel() > 0
    assert not torch.equal(z3["lm_head.weight"], z3["shared.weight"])
    for key in one:
        assert (one[key] - z3[key]).abs().max().item() < TOL, key
