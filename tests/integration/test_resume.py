"""Exact resume: a run killed with SIGKILL and resumed from its newest complete checkpoint logs the
same losses and ends with the same weights as a run that was never interrupted (dropout ON: the
RNG states of every rank are restored)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import BIN, REPO, check, launch, read_jsonl, run_overrides

STEPS = 30


def overrides(demo, tmp: Path, name: str, accum: int, *extra: str) -> list[str]:
    base = [o for o in run_overrides(demo, tmp, name, "full", steps=STEPS)
            if not o.startswith(("train.log_every", "train.eval_every"))]
    return [*base, "train.log_every=2", "train.eval_every=0", "train.checkpoint_every=2", "train.keep_checkpoints=2",
            f"train.grad_accum={accum}", "tracker.backend=none", *extra]


def kill_when(args: list[str], config: str, marker: Path) -> None:
    """Start a run and SIGKILL its whole process group once ``marker`` exists."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate" / config),
           str(REPO / "train/finetune.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


@pytest.mark.parametrize("config, accum", [("cpu_1proc.yaml", 2), ("cpu_2proc.yaml", 1)])
def test_killed_run_resumes_exactly(config, accum, demo, tmp_path):
    check(launch("train/finetune.py", *overrides(demo, tmp_path, "straight", accum), config=config))
    kill_when(overrides(demo, tmp_path, "killed", accum), config, tmp_path / "killed/checkpoints/step-000006")
    run = tmp_path / "killed"
    assert not (run / "metrics.json").exists()
    proc = check(launch("train/finetune.py", *overrides(demo, tmp_path, "killed", accum, "resume=auto"), config=config))
    assert "resuming from" in proc.stdout
    straight = [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "straight/train_log.jsonl") if "loss" in r]
    resumed = [(r["step"], r["loss"]) for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]
    assert [s for s, _ in resumed] == [s for s, _ in straight] == list(range(2, STEPS + 1, 2))
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-6)
    a, b = _weights(tmp_path / "straight"), _weights(run)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [f"step-{STEPS - 2:06d}", f"step-{STEPS:06d}"]  # the newest 2, no .tmp left
    state = json.loads((run / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["num_processes"] == (2 if config == "cpu_2proc.yaml" else 1)


def test_resume_refuses_a_config_that_trains_something_else(demo, tmp_path):
    kill_when(overrides(demo, tmp_path, "r", 2), "cpu_1proc.yaml", tmp_path / "r/checkpoints/step-000002")
    proc = launch("train/finetune.py", *overrides(demo, tmp_path, "r", 2, "resume=auto", "train.lr=5e-4",
                                                  "train.per_device_batch_size=2"), processes=1)
    assert proc.returncode != 0
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("sumtune: error:")]
    assert "the config differs in train.lr, train.per_device_batch_size" in line
    # A harmless change (how often to compute the validation loss) is allowed.
    check(launch("train/finetune.py", *overrides(demo, tmp_path, "r", 2, "resume=auto", "train.eval_every=4"),
                 processes=1))
    assert (tmp_path / "r/metrics.json").is_file()
