"""Bad input as a user meets it under `accelerate launch`: one `sumtune: error:` line, a non-zero
exit, nothing of theirs overwritten; and the security rules: no secret leaves the environment, no
pickled model weights.

What accelerate's launcher adds when a worker fails (its own ChildFailedError traceback) is not
ours to shorten; the tests check the workers' own output for exactly one sumtune line."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN, DEEPSPEED_ON_CPU, REPO, check, free_port, launch, read_jsonl, run_overrides, two_at_a_time

ACCELERATE_DIR = REPO / "configs" / "accelerate"


def sumtune_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode != 0
    return [line for line in proc.stderr.splitlines() if line.startswith("sumtune: error:")]


def deepspeed_yaml(tmp_path: Path, json_path: Path) -> str:
    """An accelerate config like deepspeed_zero2.yaml pointing at ``json_path``. (Named
    deepspeed_*: launch() then runs it without ACCELERATE_USE_CPU, as DeepSpeed needs.)"""
    text = (ACCELERATE_DIR / "deepspeed_zero2.yaml").read_text()
    path = tmp_path / "deepspeed_test.yaml"
    path.write_text(text.replace("configs/deepspeed/zero2.json", str(json_path)))
    return str(path)


# ----------------------------------------------------------------------------- launch configs


def test_a_missing_accelerate_config_is_accelerates_own_error(tmp_path):
    """accelerate itself reads --config_file, before any sumtune code runs: its message is clear,
    but it comes as a traceback we cannot shorten."""
    proc = launch("train/finetune.py", f"output_dir={tmp_path}", config=str(tmp_path / "missing.yaml"))
    assert proc.returncode != 0
    assert f"FileNotFoundError: The passed configuration file `{tmp_path / 'missing.yaml'}` does not exist." in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_missing_deepspeed_json_is_one_line_before_the_model_loads(tmp_path):
    missing = tmp_path / "nope.json"
    proc = launch("train/finetune.py", f"output_dir={tmp_path / 'out'}", config=deepspeed_yaml(tmp_path, missing),
                  launcher_args=DEEPSPEED_ON_CPU)
    assert sumtune_lines(proc) == [f"sumtune: error: DeepSpeed config file {missing} does not exist; fix "
                                   "deepspeed_config_file in the accelerate config"]
    assert not (tmp_path / "out").exists()


def test_a_deepspeed_json_that_contradicts_the_run_config_is_refused(tmp_path):
    ds = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    ds.update(gradient_accumulation_steps=4, train_micro_batch_size_per_gpu=8)
    hard = tmp_path / "hard.json"
    hard.write_text(json.dumps(ds))
    proc = launch("train/finetune.py", f"output_dir={tmp_path / 'out'}", "train.per_device_batch_size=4",
                  config=deepspeed_yaml(tmp_path, hard), launcher_args=DEEPSPEED_ON_CPU)
    assert sumtune_lines(proc) == [
        f'sumtune: error: DeepSpeed config file {hard}: "train_micro_batch_size_per_gpu" is 8 but '
        'train.per_device_batch_size is 4; "gradient_accumulation_steps" is 4 but train.grad_accum is 1; set these to '
        '"auto" in the JSON (the run config is the one place they are set)']
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- adapters


def test_an_adapter_on_a_base_of_another_size_is_one_line(tmp_path):
    """The base folder an adapter names was rebuilt at another width: evaluation says so in one line."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    def tiny(path, d_model):
        T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                            decoder_start_token_id=0)).save_pretrained(path)

    base, run = tmp_path / "base", tmp_path / "run"
    tiny(base, 16)
    get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(base),
                   LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, target_modules=["q", "v"])).save_pretrained(run)
    shutil.rmtree(base)
    tiny(base, 32)
    test = tmp_path / "test.jsonl"
    test.write_text('{"id": "1", "dialogue": "A: hi", "summary": "A says hi."}\n')
    proc = subprocess.run([sys.executable, str(REPO / "eval/evaluate.py"), "--candidate", f"lora={run}",
                           "--out", str(tmp_path / "eval"), "data.source=local", f"data.files={{test: {test}}}",
                           "tracker.backend=none"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert sumtune_lines(proc) == [
        f"sumtune: error: adapter {run} does not fit base model {base}: layer decoder.block.0.layer.0.SelfAttention.q "
        "takes 32 inputs in the base, 16 in the adapter; it was trained on another base: evaluate it with the base it "
        "was trained on"]


# ----------------------------------------------------------------------------- secrets, pickles

SECRETS = {"WANDB_API_KEY": "fake0wandb0key0for0the0leak0test0000000042",
           "HF_TOKEN": "hf_FakeTokenForTheLeakTest0123456789",
           "HUGGING_FACE_HUB_TOKEN": "hf_AnotherFakeHubToken9876543210"}


@pytest.fixture(scope="module")
def secret_runs(demo, tmp_path_factory):
    """Full (2 processes) and LoRA (1 process) runs with checkpoints and W&B offline, with
    credentials in the environment."""
    tmp = tmp_path_factory.mktemp("secrets")
    # Side by side (run folders of their own): the one-process run leaves a core idle.
    futures = two_at_a_time({name: functools.partial(launch, "train/finetune.py", *run_overrides(demo, tmp, name, method, steps=4),
                                                     "train.checkpoint_every=2", "train.keep_checkpoints=2",
                                                     processes=processes, env=SECRETS)
                             for name, method, processes in (("full", "full", 2), ("lora", "lora", 1))})
    return tmp, {name: check(future.result()) for name, future in futures.items()}


def test_no_secret_reaches_the_run_folder_the_logs_or_wandb(secret_runs):
    tmp, procs = secret_runs
    files = [p for p in tmp.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts and p.suffix == ".wandb" for p in files)  # W&B's own run record is among them
    assert any(p.name == "sumtune_config.yaml" for p in files) and any(p.name == "train_log.jsonl" for p in files)
    for value in SECRETS.values():
        for path in files:
            assert value.encode() not in path.read_bytes(), f"{path} holds a secret"
        for proc in procs.values():
            assert value not in proc.stdout and value not in proc.stderr


def test_a_secret_pasted_into_an_override_is_refused_without_echoing_it(demo, tmp_path):
    proc = launch("train/finetune.py", *run_overrides(demo, tmp_path, "r", "lora"), f"tracker.group={SECRETS['HF_TOKEN']}", env=SECRETS)
    assert sumtune_lines(proc) == ["sumtune: error: config key 'tracker.group' holds the value of $HF_TOKEN; credentials "
                                   "stay in the environment (the run config is saved in the run folder and sent to W&B)"]
    assert all(v not in proc.stdout + proc.stderr for v in SECRETS.values())
    assert not (tmp_path / "r").exists()


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


def test_model_weights_are_saved_as_safetensors_only(secret_runs):
    """Weights (run folder, final/, checkpoints) are safetensors. The only pickles are accelerate's
    training state in checkpoints: optimizer moments, the scheduler, RNG states, which accelerate
    itself reads back with torch.load(weights_only=True) except the scheduler (weights_only=False)."""
    import torch
    from accelerate.utils import load

    tmp, _ = secret_runs
    full, lora = tmp / "full", tmp / "lora"
    assert (full / "model.safetensors").is_file() and (full / "final" / "model.safetensors").is_file()
    assert (lora / "adapter_model.safetensors").is_file()
    pickles = sorted(p for p in tmp.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    for path in pickles:
        assert path.parent.parent.name == "checkpoints", f"{path}: a pickle outside a training checkpoint"
        assert path.name in ("optimizer.bin", "custom_checkpoint_0.pkl") or path.name.startswith("random_states_"), path
        state = load(path, map_location="cpu")  # accelerate's loader: weights_only=True
        if path.name == "optimizer.bin":
            assert set(state) == {"state", "param_groups"}  # Adam moments, no module weights
    assert {p.name for p in pickles} == {"optimizer.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl",
                                         "random_states_1.pkl"}
    for checkpoint in (full / "checkpoints").iterdir():
        assert (checkpoint / "model.safetensors").is_file()
    assert torch.load(next(p for p in pickles if p.name == "custom_checkpoint_0.pkl"), weights_only=True)


# ----------------------------------------------------------------------------- full disk


def _can_mount_a_small_filesystem(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
                           capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(demo, tmp_path):
    """A real 32 MiB filesystem (tmpfs in a private mount namespace): the step-2 checkpoint (22 MB:
    weights, Adam moments, RNG) fits, the step-4 one does not. One line; step 2 survives whole and
    the run resumes from it."""
    out, snap = tmp_path / "out", tmp_path / "snapshot"
    out.mkdir()
    snap.mkdir()
    if not _can_mount_a_small_filesystem(out):
        pytest.skip("cannot mount a small filesystem here (needs unshare -rm)")
    args = [*run_overrides(demo, out, "r", "full", steps=4), "train.checkpoint_every=2", "tracker.backend=none"]
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_DIR / "cpu_2proc.yaml"),
           "--main_process_port", str(free_port()), str(REPO / "train/finetune.py"), *args]
    # The filesystem lives only inside the namespace: copy what the run left out of it before leaving.
    script = f'mount -t tmpfs -o size=32m tmpfs {out} && "$@"; rc=$?; cp -a {out}/. {snap}/; exit $rc'
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cmd], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    ckpts = snap / "r" / "checkpoints"
    lines = sumtune_lines(proc)
    # One line; both ranks write into the checkpoint (each its RNG state), so on a busy machine both
    # can meet the full disk before either is stopped: then each says the same line once.
    assert set(lines) == {
        f"sumtune: error: no space left on device while saving checkpoint {out}/r/checkpoints/step-000004.tmp "
        f"(incomplete: resume=auto never picks it); newest complete checkpoint: {out}/r/checkpoints/step-000002; free "
        "space and start again with resume=auto"} and len(lines) <= 2, lines
    # The launcher's ChildFailedError is the only traceback: the other rank, left waiting for the
    # failed one, exits quietly.
    assert proc.stderr.count("Traceback (most recent call last)") == 1 and "ChildFailedError" in proc.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004.tmp"]
    assert not (ckpts / "step-000004.tmp" / "trainer_state.json").exists()
    assert json.loads((ckpts / "step-000002" / "trainer_state.json").read_text())["step"] == 2
    assert not (snap / "r" / "metrics.json").exists()  # not a finished run

    # Space again (the snapshot lies on the real disk): the run resumes from step 2 and finishes.
    resumed = check(launch("train/finetune.py", *run_overrides(demo, snap, "r", "full", steps=4),
                           "train.checkpoint_every=2", "tracker.backend=none", "resume=auto"))
    assert f"resuming from {ckpts / 'step-000002'} at step 2" in resumed.stdout
    assert [r["step"] for r in read_jsonl(snap / "r" / "train_log.jsonl") if "loss" in r] == [2, 4]
    assert (snap / "r" / "metrics.json").is_file()
