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
    """Start a run and SIGKILL the launcher and every worker once ``marker`` exists. (The elastic
    agent starts its workers in sessions of their own: killing the launcher's group alone leaves
    them training.)"""
    pid_dir = marker.parents[2] / "pids"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "SUMTUNE_PID_DIR": str(pid_dir)}
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate" / config),
           str(REPO / "train/finetune.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    workers = [int(p.read_text()) for p in pid_dir.glob("rank-*.pid")]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in workers:  # gone, or a zombie waiting to be reaped
        while True:
            try:
                if "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
                    break
            except FileNotFoundError:
                break
            time.sleep(0.01)


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


def test_sigusr1_to_one_rank_checkpoints_exits_and_resumes(demo, tmp_path):
    """SIGUSR1 reaches ONE worker of a 2-process run (as the sbatch trap delivers it): both ranks
    agree at the next step, checkpoint, exit with 75 (EX_TEMPFAIL) and leave a marker; resume=auto
    (what a requeued job runs) finishes the run with the uninterrupted run's weights."""
    pid_dir = tmp_path / "pids"
    args = overrides(demo, tmp_path, "pre", 1, "train.checkpoint_every=10", "train.keep_checkpoints=3")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "SUMTUNE_PID_DIR": str(pid_dir)}
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
           str(REPO / "train/finetune.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log = tmp_path / "pre" / "train_log.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().strip() and (pid_dir / "rank-0.pid").exists()):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the signal"
        time.sleep(0.02)
    os.kill(int((pid_dir / "rank-1.pid").read_text()), signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0  # the launcher reports the workers' exit 75 as a failure
    assert "a preemption signal (on another rank) received: checkpoint" in out and "exiting with 75" in out
    assert "exitcode  : 75" in out  # both workers, as the launcher reports them
    marker = (tmp_path / "pre" / "preempted").read_text()
    step = int(marker.split(";")[0].split()[1])
    assert 0 < step < STEPS and (pid_dir / "preempted").exists()
    assert (tmp_path / "pre" / "checkpoints" / f"step-{step:06d}" / "trainer_state.json").is_file()
    assert not (tmp_path / "pre" / "metrics.json").exists()
    check(launch("train/finetune.py", *args, "resume=auto", processes=2))
    assert not (tmp_path / "pre" / "preempted").exists()
    check(launch("train/finetune.py", *overrides(demo, tmp_path, "straight", 1), processes=2))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "pre")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
