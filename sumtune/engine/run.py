"""The run context every recipe uses: resume, checkpoints, preemption, tracker, final save, finish.

A recipe's ``run(cfg)`` reads as

    ctx = RunContext(cfg)                      # output-dir and resume checks, before any model loads
    ... build the model, the Accelerator, the data ...
    start = ctx.begin(accelerator, extras={"validator": validator})  # resume, config, tracker, log, signals
    metrics = fit(..., checkpoint=ctx.checkpoint, start=start, preemption=ctx.preemption, log=ctx.log)
    if metrics.get("preempted"):
        ctx.exit_preempted(metrics["step"], metrics["checkpoint"])  # marker, exit 75
    ctx.save(model, tokenizer, metrics)        # the run folder; metrics.json last
    ctx.finish()                               # the last call (several processes: exits there)

``extras`` are the recipe's own resumable objects (name -> an object with ``state()`` and
``restore(state)``, or None): their states go into every checkpoint's ``trainer_state.json`` under
their names, and come back on resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sumtune import checkpoints, preemption, tracking
from sumtune.config import RunConfig, to_dict
from sumtune.distributed import finish
from sumtune.errors import SumtuneError


@dataclass
class Position:
    """Where training stands, as a checkpoint records it: optimizer steps taken, the epoch, the
    batches of that epoch consumed on each rank, and the shuffling generator's state at the
    start of the epoch (re-drawing the same order is what makes skipping batches exact)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    generator_state: list[int] | None = None
    # The logging window so far (Meter.carry): named fields; a list of 6 floats in older checkpoints.
    window: dict[str, float] | list[float] | None = None


class RunContext:
    def __init__(self, cfg: RunConfig, job_type: str = "train"):
        """Never overwrite a finished run by accident; find the checkpoint to resume from and
        refuse one whose config would train something else. All before any model loads."""
        checkpoints.check_output_dir(cfg)
        self.resume_from: Path | None = checkpoints.find_resume_checkpoint(cfg)
        if self.resume_from:
            checkpoints.check_resumable(cfg, self.resume_from)
        self.cfg = cfg
        self.job_type = job_type
        self.run_dir = cfg.run_dir
        self.accelerator = None
        self.extras: dict = {}
        self.log: tracking.RunLog | None = None
        self.preemption: preemption.Preemption | None = None

    def say(self, message: str) -> None:
        """Rank-zero printing, once ``begin`` has the accelerator."""
        tracking.say(self.accelerator, message)

    def begin(self, accelerator, extras: dict | None = None) -> Position | None:
        """Once the model and its optimizer are prepared: load the checkpoint's state (or clear what
        a finished earlier run left), write the config, start the tracker and the log, and install
        the preemption handlers. Returns where to resume (None: from the start)."""
        acc = self.accelerator = accelerator
        self.extras = dict(extras or {})
        start = None
        if self.resume_from:
            state = json.loads((self.resume_from / checkpoints.STATE_FILE).read_text())
            if state["num_processes"] != acc.num_processes:
                raise SumtuneError(f"cannot resume from {self.resume_from}: it ran on {state['num_processes']} processes, "
                                   f"this launch has {acc.num_processes}; the data order would differ")
            acc.load_state(str(self.resume_from))
            start = Position(**state["position"])
            for name, extra in self.extras.items():
                if extra and state.get(name):
                    extra.restore(state[name])
            self.say(f"resuming from {self.resume_from} at step {start.step}")
        elif acc.is_main_process:
            checkpoints.clear_finished(self.run_dir)  # only reached for a new run or with overwrite=true
        if acc.is_main_process:
            checkpoints.write_config(self.cfg, self.run_dir)
        tracking.start(acc, self.cfg.tracker, self.cfg.run_name, self.run_dir, to_dict(self.cfg), job_type=self.job_type)
        self.log = tracking.RunLog(acc, self.run_dir / "train_log.jsonl", resume_step=start.step if start else None)
        if acc.is_main_process:
            (self.run_dir / preemption.MARKER).unlink(missing_ok=True)
        self.preemption = preemption.Preemption().install()
        return start

    def checkpoint(self, step: int, position: dict) -> str:
        """The whole training state at ``step`` (a collective); returns the folder written."""
        state = {"position": position, "num_processes": self.accelerator.num_processes,
                 **{name: extra.state() if extra else None for name, extra in self.extras.items()}}
        return str(checkpoints.save_checkpoint(self.accelerator, self.cfg, step, state))

    def exit_preempted(self, step: int, checkpoint: str) -> NoReturn:
        """After the preemption checkpoint: leave the marker, say so, and exit with 75 on every rank."""
        acc, signals = self.accelerator, self.preemption
        if acc.is_main_process:
            preemption.mark_preempted(self.run_dir, step, checkpoint)
        self.say(f"{signals.signal_name or 'a preemption signal (on another rank)'} received: checkpoint {checkpoint} "
                 f"written at step {step}; exiting with {preemption.EXIT_PREEMPTED}; start again with resume=auto to "
                 "continue")
        acc.wait_for_everyone()  # the marker is written before any rank exits
        signals.uninstall()
        finish(acc, exit_code=preemption.EXIT_PREEMPTED)  # several processes: exits here
        raise SystemExit(preemption.EXIT_PREEMPTED)

    def save(self, model, tokenizer, metrics: dict) -> Path:
        """The finished run's folder: model (or adapter), tokenizer, config, metrics.json last."""
        return checkpoints.save_run(self.accelerator, model, tokenizer, self.cfg, metrics)

    def finish(self) -> None:
        """The last call of a run (several processes: the process exits here, after everything is saved)."""
        finish(self.accelerator)
