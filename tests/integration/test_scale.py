"""Every launch config really launched, and shown to compute what one process computes.

Reference: ONE process, 4 examples per batch, 2 accumulation steps (global batch 8). Every other
topology runs 2 processes x 4 examples (global batch 8): DDP, ZeRO-1/2/3 and their offload
variants must give the same per-step losses and the same final weights (fp32 CPU, within 1e-5),
and so must ONE process with one batch of 8 (the loss weighs every target token of a step alike).
Random batches, so that every cut of a step holds the same examples. Dropout is off here: each rank draws its own masks, so with dropout the runs differ by design.
"""

import functools
import json
from pathlib import Path

import pytest
from helpers import REPO, check, launch, read_jsonl, run_overrides, two_at_a_time

TOL = 1e-5
TWO = ("--num_processes", "2", "--mixed_precision", "no")
# config -> (launcher args on CPU, per-device batch, accumulation)
TOPOLOGIES = {
    "cpu_1proc.yaml": ((), 4, 2),
    "single_gpu.yaml": (("--cpu", "--mixed_precision", "no"), 4, 2),
    "cpu_2proc.yaml": ((), 4, 1),
    "multi_gpu.yaml": (TWO, 4, 1),
    "deepspeed_zero1.yaml": (TWO, 4, 1),
    "deepspeed_zero2.yaml": (TWO, 4, 1),
    "deepspeed_zero2_offload.yaml": (TWO, 4, 1),
    "deepspeed_zero3.yaml": (TWO, 4, 1),
    "deepspeed_zero3_offload.yaml": (TWO, 4, 1),
}
LAUNCHED_ELSEWHERE = {"multi_node.yaml": "tests/integration/test_slurm.py (two nodes through slurm/launch_node.sh)"}
ACCELERATE_DIR = REPO / "configs" / "accelerate"


def test_every_accelerate_and_deepspeed_config_is_launched_by_a_test():
    files = {p.name for p in ACCELERATE_DIR.glob("*.yaml")}
    missing = files - set(TOPOLOGIES) - set(LAUNCHED_ELSEWHERE)
    assert not missing, f"no test launches {sorted(missing)}: add them to TOPOLOGIES"
    assert not (set(TOPOLOGIES) - files), "TOPOLOGIES names a config that does not exist"
    launched_json = {Path(line.split(":", 1)[1].strip()).name
                     for name in TOPOLOGIES for line in (ACCELERATE_DIR / name).read_text().splitlines()
                     if line.strip().startswith("deepspeed_config_file:")}
    all_json = {p.name for p in (REPO / "configs" / "deepspeed").glob("*.json")}
    assert all_json == launched_json, f"DeepSpeed configs no launched accelerate config uses: {all_json - launched_json}"


def equivalence_run(demo, tmp: Path, config: str, batch_accum: tuple[int, int] | None = None, name: str = "") -> Path:
    args, batch, accum = TOPOLOGIES[config]
    batch, accum = batch_accum or (batch, accum)
    name = name or config.removesuffix(".yaml")
    overrides = [o for o in run_overrides(demo, tmp, name, "full", steps=4) if not o.startswith(("train.log_every",
                                                                                               "train.per_device"))]
    # lr 1e-4: Adam turns reduction-order noise in near-zero gradients into weight differences of up
    # to about lr per step (at 1e-3, ZeRO-3 differed from the reference by 1.2e-5 in one tensor).
    overrides += ["train.lr=1e-4", f"train.per_device_batch_size={batch}", f"train.grad_accum={accum}", "train.log_every=1",
                  "train.dropout=0.0", "train.eval_every=0", "tracker.backend=none",
                  # random batches: a step sees the same 8 examples whether cut 8, 4 x 2 or 2 x 4
                  "train.batching=random"]
    if "zero3" in config:  # generation under ZeRO-3 at the last step (weights gathered layer by layer)
        overrides += ["train.rouge_every=4", "train.rouge_examples=6"]
    proc = check(launch("train/finetune.py", *overrides, config=config, launcher_args=args))
    expected = "DEEPSPEED" if "deepspeed" in config else ("NO" if config in ("cpu_1proc.yaml", "single_gpu.yaml")
                                                          else "MULTI_CPU")
    assert f"(DistributedType.{expected})" in proc.stdout, proc.stdout[-2000:]
    return tmp / name


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """Every equivalence run of this module (each config of TOPOLOGIES, and one process with one
    batch of 8), each in a folder of its own, two at a time: a one-process run leaves a core idle,
    and a two-process launch spends part of its time in one process (the launcher starting, rank 0
    saving). Returns (their folder, config or "batch8" -> a Future of the run folder)."""
    tmp = tmp_path_factory.mktemp("scale")
    jobs = {config: functools.partial(equivalence_run, demo, tmp, config) for config in TOPOLOGIES}
    jobs["batch8"] = functools.partial(equivalence_run, demo, tmp, "cpu_1proc.yaml", (8, 1), "batch8")
    return tmp, two_at_a_time(jobs)


@pytest.fixture(scope="module")
def reference(runs):
    tmp, futures = runs
    return tmp, futures["cpu_1proc.yaml"].result()


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]


def _grad_norms(run: Path) -> list[float]:
    return [r["grad_norm"] for r in read_jsonl(run / "train_log.jsonl") if "grad_norm" in r]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


@pytest.mark.parametrize("config", [c for c in TOPOLOGIES if c != "cpu_1proc.yaml"])
def test_topology_matches_one_process_with_accumulation(config, reference, runs):
    tmp, ref = reference
    run = runs[1][config].result()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["plan"]["effective_batch"] == 8
    assert metrics["world_size"] == (1 if config == "single_gpu.yaml" else 2)
    assert len(_losses(run)) == 4
    assert _losses(run) == pytest.approx(_losses(ref), abs=TOL)
    # Adam hides a gradient scale error (a sum instead of a mean) from the weights; the norm does not.
    assert _grad_norms(run) == pytest.approx(_grad_norms(ref), rel=1e-4)
    a, b = _weights(ref), _weights(run)
    assert set(a) == set(b)
    for key in a:
        assert b[key].numel() > 0, f"{key} saved empty (ZeRO-3 shard written without gathering)"
        assert (a[key] - b[key]).abs().max().item() < TOL, key


def test_one_process_with_batch_8_matches_the_accumulated_reference(reference, runs):
    """The loss is token-weighted over the whole optimizer step, so 4 x 2 accumulation (and with it
    every topology above) trains exactly as one batch of 8 does, summaries of unequal lengths."""
    tmp, ref = reference
    run = runs[1]["batch8"].result()
    assert json.loads((run / "metrics.json").read_text())["plan"]["effective_batch"] == 8
    assert _losses(run) == pytest.approx(_losses(ref), abs=TOL)
    assert _grad_norms(run) == pytest.approx(_grad_norms(ref), rel=TOL)
    a, b = _weights(ref), _weights(run)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < TOL, key


@pytest.mark.parametrize("method", ["full", "lora"])
def test_zero3_saved_model_reloads_and_generates_what_it_generated_in_training(method, reference, runs, demo):
    """A model or adapter saved under ZeRO-3 (gathered from both ranks) loads with plain
    transformers/peft and, prompted the same way, gives the validation ROUGE the run measured in
    training at its last step."""
    from accelerate import Accelerator
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from sumtune import rouge
    from sumtune.config import GenerationConfig
    from sumtune.data import PromptEncoder
    from sumtune.generation import generate

    tmp, _ = reference
    if method == "full":
        run = runs[1]["deepspeed_zero3.yaml"].result()
        model = AutoModelForSeq2SeqLM.from_pretrained(run)
    else:
        from peft import PeftModel

        run = tmp / "zero3-lora"
        check(launch("train/finetune.py", *run_overrides(demo, tmp, "zero3-lora", "lora", steps=4),
                     "train.dropout=0.0", "model.lora.dropout=0.0", "train.rouge_every=4", "train.rouge_examples=6",
                     "tracker.backend=none", config="deepspeed_zero3.yaml", launcher_args=TWO))
        model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(demo["model"]), run)
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and all(p.numel() > 0 for p in lora_b) and any(p.abs().sum() > 0 for p in lora_b)
    logged = next(r for r in read_jsonl(run / "train_log.jsonl") if "val_rougeLsum" in r)
    assert logged["step"] == 4
    tok = AutoTokenizer.from_pretrained(run)
    val = read_jsonl(demo["data"] / "validation.jsonl")[:6]
    preds, _ = generate(Accelerator(cpu=True), model, tok, PromptEncoder(tok, "seed", 192), [r["dialogue"] for r in val],
                        GenerationConfig(max_new_tokens=12, batch_size=8), progress=False)
    means, _ = rouge.score(preds, [r["summary"] for r in val])
    assert means["rougeLsum"] == pytest.approx(logged["val_rougeLsum"], abs=1e-9)
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (run / name).exists():  # best/ (step 4, the only score) is the final model here
            assert (run / "best" / name).read_bytes() == (run / name).read_bytes()


def test_evaluation_runs_under_a_zero3_launch(reference, runs, demo):
    tmp, _ = reference
    run = runs[1]["deepspeed_zero3.yaml"].result()
    out = tmp / "eval-zero3"
    proc = check(launch("eval/evaluate.py", "--out", str(out), "--candidate", f"full={run}",
                        *run_overrides(demo, tmp, "unused", "full"), "tracker.backend=none",
                        config="deepspeed_zero3.yaml", launcher_args=TWO))
    assert "(DistributedType.DEEPSPEED)" in proc.stdout or (out / "comparison.csv").is_file()
    ids = [r["id"] for r in read_jsonl(demo["data"] / "test.jsonl")]
    assert [r["id"] for r in read_jsonl(out / "full" / "predictions.jsonl")] == ids
