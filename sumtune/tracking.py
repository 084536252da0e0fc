"""Rank-zero output in one place: W&B through Accelerate's trackers, train_log.jsonl, printing.

W&B runs offline by itself when there is no API key or the server cannot be reached, so a missing
network never fails a run; `wandb sync <run_dir>/wandb/offline-run-*` uploads it later.
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import sys
from pathlib import Path

from sumtune.config import TrackerConfig, redact, redact_text


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str = "api.wandb.ai", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wandb_mode(cfg: TrackerConfig) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_api_key() and _reachable() else "offline"


def log_with(cfg: TrackerConfig) -> list[str]:
    return ["wandb"] if cfg.backend == "wandb" and wandb_mode(cfg) != "disabled" else []


def start(accelerator, cfg: TrackerConfig, run_name: str, run_dir: Path, config: dict, job_type: str) -> None:
    """Start the trackers (main process only, as Accelerate does)."""
    if not accelerator.log_with:
        return
    mode = wandb_mode(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Nothing W&B stores may hold a credential: the config, the group, and the command line, which
    # W&B records from sys.argv in the run's metadata.
    config = redact(config)
    sys.argv[:] = [redact_text(arg) for arg in sys.argv]
    init = {
        "wandb": {
            "name": run_name,
            "dir": str(run_dir),
            "mode": mode,
            "group": redact_text(cfg.group or run_name),
            "job_type": job_type,
        }
    }
    try:
        accelerator.init_trackers(cfg.project, config=config, init_kwargs=init)
    except Exception as err:  # noqa: BLE001 - W&B raises many types; a tracker must never fail a run
        if mode == "offline":
            raise
        print(f"[sumtune] W&B {mode} start failed ({redact_text(str(err).splitlines()[0])[:120]}); "
              "logging offline instead")
        init["wandb"]["mode"] = mode = "offline"
        accelerator.trackers.clear()
        accelerator.init_trackers(cfg.project, config=config, init_kwargs=init)
    if accelerator.is_main_process and mode == "offline":
        print(f"[sumtune] W&B offline: upload later with `wandb sync {run_dir}/wandb/offline-run-*`")


def wandb_run(accelerator):
    """The raw W&B run on the main process, or None (other ranks, or W&B not in use)."""
    if not accelerator.is_main_process or "wandb" not in [t.name for t in accelerator.trackers]:
        return None
    return accelerator.get_tracker("wandb", unwrap=True)


def log_table(accelerator, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
    """Tables exist only in W&B, so only the main process may log them. A table logged during
    training gives its step: W&B drops anything logged later at an earlier step."""
    run = wandb_run(accelerator)
    if run is None:
        return
    import wandb

    run.log({key: wandb.Table(columns=columns, data=rows)}, **({"step": step} if step is not None else {}))


def log_images(accelerator, images: dict[str, tuple[Path, str]]) -> None:
    """PNG files as W&B images, ``key -> (path, caption)`` (main process only, as tables)."""
    run = wandb_run(accelerator)
    if run is None or not images:
        return
    import wandb

    run.log({key: wandb.Image(str(path), caption=caption) for key, (path, caption) in images.items()})


def set_summary(accelerator, values: dict) -> None:
    run = wandb_run(accelerator)
    if run is not None:
        for k, v in values.items():
            run.summary[k] = v


class RunLog:
    """Metrics to the trackers and to ``train_log.jsonl``; console line on the main process."""

    def __init__(self, accelerator, path: Path, resume_step: int | None = None):
        """A new log; or, resuming, the old one cut after ``resume_step`` (what an interrupted run
        logged after its last checkpoint is done again)."""
        self.acc = accelerator
        self.path = path
        if accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = ""
            if resume_step is not None and path.is_file():
                lines = path.read_text(encoding="utf-8").splitlines()
                kept = "".join(line + "\n" for line in lines if line.strip() and json.loads(line)["step"] <= resume_step)
            path.write_text(kept, encoding="utf-8")

    def log(self, record: dict, step: int) -> None:
        self.acc.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self.acc.is_main_process:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        """A table (main process only): a W&B Table, and one train_log.jsonl line holding its rows."""
        log_table(self.acc, key, columns, rows, step=step)
        if self.acc.is_main_process:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, key: [dict(zip(columns, row)) for row in rows]}) + "\n")


def say(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(f"[sumtune] {redact_text(message)}", flush=True)
