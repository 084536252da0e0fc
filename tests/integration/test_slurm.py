"""SLURM scripts: the multi-node launch line really run as two "nodes" on 127.0.0.1, and the sbatch files checked.

No SLURM here: the test plays srun's part, starting slurm/launch_node.sh once per "node" with the
environment srun and train_multi_node.sbatch give each task. One CPU process per node; with
ACCELERATE_USE_CPU=true the MULTI_GPU config forms one gloo group across both launchers.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, read_jsonl, run_overrides

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
LAUNCH_NODE = SLURM / "launch_node.sh"
SBATCH = sorted(SLURM.glob("*.sbatch"))
TIMEOUT = 300


def node_env(rank: int, nnodes: int, port: int, **extra: str) -> dict:
    """What one srun task sees: its own SLURM_NODEID, and what the sbatch script exported."""
    env = {**os.environ, "SLURM_NODEID": str(rank), "SLURM_NNODES": str(nnodes), "SLURM_JOB_ID": "4242",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NPROC_PER_NODE": "1",
           "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "LAUNCH_ARGS": "--mixed_precision no"}  # fp32 on CPU (the template says bf16, for GPUs)
    env.update(extra)
    return env


def test_two_nodes_form_one_group_through_launch_node(demo, tmp_path):
    port = free_port()
    args = ["bash", str(LAUNCH_NODE), "train/finetune.py", *run_overrides(demo, tmp_path, "mn", "lora", steps=4)]
    procs, logs = [], []
    try:
        for rank in (0, 1):
            log = open(tmp_path / f"node{rank}.log", "w+")  # files, not pipes: a full pipe would stall a rank
            logs.append(log)
            procs.append(subprocess.Popen(args, cwd=REPO, env=node_env(rank, 2, port),
                                          stdout=log, stderr=subprocess.STDOUT, text=True))
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            # one node failing leaves the other waiting at rendezvous or in a collective: stop early
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    codes = [p.returncode for p in procs]
    report = "\n".join(f"--- node {r} (exit {c})\n{out[-5000:]}" for r, (c, out) in enumerate(zip(codes, outputs)))
    assert codes == [0, 0], report

    run = tmp_path / "mn"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2, report  # torch.distributed's own answer: the two launchers met
    assert metrics["num_processes"] == 2
    loss_rows = [r for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]
    assert loss_rows and all(r["loss"] > 0 for r in loss_rows)
    assert (run / "adapter_model.safetensors").is_file() and (run / "adapter_config.json").is_file()
    assert "node 1 of 2" in outputs[1] and "node 0 of 2" in outputs[0]


def test_launch_node_reads_each_nodes_rank_and_passes_the_total_process_count():
    port = free_port()
    for rank in (0, 2):
        out = subprocess.run(["bash", str(LAUNCH_NODE), "train/finetune.py", "--config", "x.yaml", "train.lr=1e-4"],
                             cwd=REPO, env=node_env(rank, 3, port, NPROC_PER_NODE="8", DRY_RUN="1"),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        cmd = out.stdout.split()
        opt = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
        assert opt["--machine_rank"] == str(rank)
        assert opt["--num_machines"] == "3" and opt["--num_processes"] == "24"  # total over machines
        assert opt["--main_process_ip"] == "127.0.0.1" and opt["--main_process_port"] == str(port)
        assert opt["--config_file"].endswith("configs/accelerate/multi_node.yaml")
        assert cmd[-4:] == ["train/finetune.py", "--config", "x.yaml", "train.lr=1e-4"]
        assert opt["--mixed_precision"] == "no"  # LAUNCH_ARGS reach the launcher, before the script


def test_slurm_scripts_parse_and_stay_offline():
    scripts = [LAUNCH_NODE, *SBATCH]
    assert {p.name for p in SBATCH} >= {"train_single_node.sbatch", "train_multi_node.sbatch", "eval.sbatch"}
    for path in scripts:
        out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
    for path in SBATCH:
        text = path.read_text()
        head = text.splitlines()[:8]
        assert head[0].startswith("#!") and any("sbatch slurm/" + path.name in line for line in head), path.name
        assert "launch_node.sh" in text or "accelerate launch" in text, path.name
        assert re.search(r"^export HF_HUB_OFFLINE=1$", text, re.M), path.name
        assert re.search(r"^export WANDB_MODE=offline$", text, re.M), path.name
        assert "wandb sync" in text and 'cd "$SLURM_SUBMIT_DIR"' in text, path.name
        assert "#SBATCH --output=slurm-%x-%j.out" in text, path.name
        # The classic bug: a rank expanded once by the batch shell gives every node rank 0.
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"\$\{?SLURM_(NODEID|PROCID|LOCALID)", code), f"{path.name}: read the rank inside the task"
    multi = (SLURM / "train_multi_node.sbatch").read_text()
    assert re.search(r"^sumtune_run_preemptible srun .*\\\n\s*bash slurm/launch_node.sh train/finetune.py", multi, re.M)
    for name in ("train_single_node.sbatch", "train_multi_node.sbatch"):
        text = (SLURM / name).read_text()
        # Time limit and preemption: signal the batch shell ahead, requeue, resume by itself.
        assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text, name
        assert "source slurm/preemptible.sh" in text and "resume=auto" in text, name


@pytest.mark.parametrize("missing", ["SLURM_NODEID", "SLURM_NNODES", "MASTER_ADDR"])
def test_launch_node_without_its_environment_fails_in_one_line(missing):
    env = node_env(0, 2, 29500)
    env.pop(missing)
    out = subprocess.run(["bash", str(LAUNCH_NODE), "train/finetune.py"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0], out.stderr
    assert out.stdout == ""


def test_batch_shell_forwards_usr1_to_the_workers_and_requeues_after_a_checkpoint(tmp_path):
    """slurm/preemptible.sh as the batch shell runs it: SIGUSR1 to the SHELL (what
    `--signal=B:USR1@300` sends) reaches the worker through its pid file, and the worker's
    'preempted' marker makes the shell end well (and requeue, inside a SLURM job)."""
    import signal

    worker = (
        "import os, signal, time, pathlib\n"
        "d = pathlib.Path(os.environ['SUMTUNE_PID_DIR']); d.mkdir(parents=True, exist_ok=True)\n"
        "hit = []\n"
        "signal.signal(signal.SIGUSR1, lambda *a: hit.append(1))\n"
        "(d / 'rank-0.pid').write_text(str(os.getpid()))\n"
        "for _ in range(3000):\n"
        "    if hit:\n"
        "        (d / 'preempted').write_text('7'); raise SystemExit(75)\n"
        "    time.sleep(0.01)\n"
        "raise SystemExit(3)\n"
    )
    script = (f'source "{REPO}/slurm/preemptible.sh"\n'
              f'sumtune_run_preemptible "{sys.executable}" -c "$WORKER"\n'
              'echo "status=$?"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SUMTUNE_PID_DIR=str(tmp_path / "pids"), WORKER=worker)
    shell = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "pids" / "rank-0.pid").exists():
        assert shell.poll() is None and time.time() < deadline
        time.sleep(0.02)
    shell.send_signal(signal.SIGUSR1)
    out, err = shell.communicate(timeout=60)
    assert "asking the workers to checkpoint" in err
    assert "preempted at step 7: checkpoint written; requeueing" in err
    assert out.strip().endswith("status=0")
