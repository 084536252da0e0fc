"""Helpers for the integration tests: launching, checking, reading."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _launch_command(script: str, args: tuple, config: str, launcher_args: tuple, env: dict | None) -> tuple[list, dict]:
    """`accelerate launch` as a user runs it on CPU. For plain DDP, the config file plus
    ACCELERATE_USE_CPU=true is what forms one gloo group of several processes (docs/ARCHITECTURE.md); a
    DeepSpeed config must run WITHOUT that variable, or Accelerate silently drops DeepSpeed."""
    if "--main_process_port" not in launcher_args:
        # A port of its own: accelerate's default 29500 may be held by another launch on this
        # machine (another test session), and then the launch fails at once.
        launcher_args = (*launcher_args, "--main_process_port", str(free_port()))
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate" / config),
           *launcher_args, str(REPO / script), *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    if "deepspeed" in config:
        full_env.pop("ACCELERATE_USE_CPU", None)
    else:
        full_env["ACCELERATE_USE_CPU"] = "true"
    return cmd, full_env


def launch(script: str, *args: str, processes: int = 2, config: str | None = None, launcher_args: tuple = (),
           cwd: Path = REPO, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` under `accelerate launch` and wait for it (see _launch_command)."""
    if config is None:
        config = "cpu_2proc.yaml" if processes == 2 else "cpu_1proc.yaml"
    cmd, full_env = _launch_command(script, args, config, launcher_args, env)
    # The launcher in a session of its own, so that a timeout can end it and every process under it.
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:  # the timeout, or the test run interrupted: leave no worker behind
        kill_tree(proc.pid)
        out, err = proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            exc.stdout, exc.stderr = out, err  # all of it, as text (subprocess.run does the same)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """parent pid -> its children's pids, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid``, its process group and every process under it. The elastic agent starts its
    workers in sessions of their own, so killing the launcher's group alone would leave them running
    (one grew to 16 GB once): they are found through their parent pids, stopped first so that none
    forks or is re-parented while the tree is read, then killed. Returns the pids killed."""
    seen: list[int] = []
    while True:
        tree, found = _children(), []
        todo = [pid]
        while todo:
            p = todo.pop()
            found.append(p)
            todo.extend(tree.get(p, []))
        new = [p for p in found if p not in seen]
        if not new:
            break
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        seen += new
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return seen


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc



def run_overrides(demo, tmp: Path, name: str, method: str, steps: int = 6, model: str = "model") -> list[str]:
    """A short run on the demo build; ``model``: "model" (the T5) or "causal" (the decoder-only one)."""
    data = demo["data"]
    return [
        f"run_name={name}", f"output_dir={tmp}", f"model.name_or_path={demo[model]}", f"model.method={method}",
        "data.source=local",
        f"data.files={{train: {data}/train.jsonl, validation: {data}/validation.jsonl, test: {data}/test.jsonl}}",
        "data.max_source_length=192", "data.max_target_length=48",
        f"train.max_steps={steps}", "train.per_device_batch_size=4", "train.log_every=2", "train.eval_every=3",
        "train.eval_max_batches=2", "train.warmup_steps=1", "train.lr=1e-3",
        "generation.max_new_tokens=12", "generation.batch_size=8",
        "tracker.project=sumtune-tests", "tracker.mode=offline",
    ]


def two_at_a_time(jobs: dict) -> dict:
    """Start each job (a callable without arguments) in a pool of two threads; returns name -> its
    Future, whose result() waits for it and re-raises what it raised. For runs of ONE process on
    one thread (a script, or a one-process launch: OMP_NUM_THREADS=1): one of them leaves the
    second of this machine's 2 cores idle, so two at a time take about the time of one."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(job) for name, job in jobs.items()}
    POOLS.append(pool)
    return futures


POOLS: list = []


def end_pools() -> None:
    """Cancel the jobs of two_at_a_time() that have not started (a test that would have waited for
    them failed, or was not selected) and wait for those that run: called when a module ends, so that
    no run goes on into the next module or keeps the session from ending."""
    while POOLS:
        POOLS.pop().shutdown(wait=True, cancel_futures=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# Launcher arguments for a DeepSpeed config on CPU: two processes, fp32 (docs/ARCHITECTURE.md).
DEEPSPEED_ON_CPU = ("--num_processes", "2", "--mixed_precision", "no")


def start(script: str, *args: str, pid_dir: Path, config: str, launcher_args: tuple = (),
          env: dict | None = None, quiet: bool = False) -> subprocess.Popen:
    """`accelerate launch` as launch() runs it, without waiting: output (stdout and stderr) in one
    text pipe (discarded when ``quiet``: nobody reads it while the test waits), the launcher in a
    session of its own, each worker's pid in ``pid_dir/rank-N.pid`` (SUMTUNE_PID_DIR; the elastic
    agent starts its workers in sessions of their own, so the pids are what lets a test signal or
    clean up the workers themselves). End it with stop()."""
    for old in pid_dir.glob("rank-*.pid"):  # a pid from an earlier launch is no worker of this one
        old.unlink()
    cmd, full_env = _launch_command(script, args, config, launcher_args, {"SUMTUNE_PID_DIR": str(pid_dir), **(env or {})})
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=output, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def stop_workers(pid_dir: Path, wait_s: float = 10) -> list[int]:
    """Give the workers of the last start() in ``pid_dir`` ``wait_s`` to be gone, then SIGKILL any
    left and wait until they are. Returns the pids that had to be killed (strays)."""
    import signal
    import time

    pids = [int(p.read_text()) for p in pid_dir.glob("rank-*.pid")]
    deadline = time.time() + wait_s
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    strays = [p for p in pids if _alive(p)]
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    while any(_alive(p) for p in strays):
        time.sleep(0.01)
    return strays


def stop(proc: subprocess.Popen, pid_dir: Path, wait_s: float = 5) -> list[int]:
    """End a start()ed run whatever state it is in: SIGKILL the launcher's session if it still
    runs, then stop_workers(). Returns the workers that outlived the launcher (strays)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return stop_workers(pid_dir, wait_s=wait_s)


def wait_for(condition, proc, what: str, timeout: float = 300) -> None:
    import time

    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_into_fault(args: list[str], fault: str, pid_dir: Path, config: str = "cpu_2proc.yaml",
                   launcher_args: tuple = (), script: str = "train/finetune.py") -> str:
    """Run with SUMTUNE_FAULT=fault until a worker kills itself there. Fails unless the fault fired
    (its marker), the run failed, and the launcher left no worker behind. Returns the output."""
    kind, step = fault.split("@")[0].split(":")
    for old in pid_dir.glob("fault-*"):
        old.unlink()
    proc = start(script, *args, pid_dir=pid_dir, config=config, launcher_args=launcher_args,
                 env={"SUMTUNE_FAULT": fault})
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        strays = stop(proc, pid_dir)
    assert list(pid_dir.glob(f"fault-{kind}-{step}.rank*")), f"the fault {fault} never fired\n{out[-4000:]}"
    assert proc.returncode != 0, out[-4000:]
    assert strays == [], "workers outlived the launcher"
    return out


def kill_when(args: list[str], config: str, marker: Path, launcher_args: tuple = ()) -> None:
    """Start a run and SIGKILL every worker once ``marker`` exists, then the launcher. (The elastic
    agent starts its workers in sessions of their own: killing the launcher's group alone leaves
    them training.)"""
    pid_dir = marker.parents[2] / "pids"
    proc = start("train/finetune.py", *args, pid_dir=pid_dir, config=config, launcher_args=launcher_args, quiet=True)
    try:
        wait_for(marker.exists, proc, "a checkpoint to kill at")
        workers = [int(p.read_text()) for p in pid_dir.glob("rank-*.pid")]
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    finally:
        stop(proc, pid_dir)
