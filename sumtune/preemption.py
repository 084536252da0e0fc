"""Preemption: SIGTERM or SIGUSR1 asks the run to checkpoint at the next step boundary and exit.

The signal must reach the training processes themselves: `accelerate launch` (torch's elastic
agent) dies on SIGUSR1 without telling its workers, and kills them ~30 s after forwarding SIGTERM
(docs/ARCHITECTURE.md). So each worker writes its pid to ``$SUMTUNE_PID_DIR`` (the sbatch scripts set it)
for the batch shell to signal, and SLURM's own SIGTERM reaches the workers directly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sumtune import faults

# EX_TEMPFAIL: "try again later". The launcher itself then exits 1; the sbatch scripts look for
# the marker file instead of the code.
EXIT_PREEMPTED = 75
MARKER = "preempted"


class Preemption:
    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def _handler(self, signum, _frame):
        # Only a flag, never an exception: a second signal during the checkpoint save changes
        # nothing (the name kept is the first signal's).
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def install(self) -> Preemption:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)
        pid_dir = os.environ.get("SUMTUNE_PID_DIR")
        if pid_dir:
            Path(pid_dir).mkdir(parents=True, exist_ok=True)
            rank = os.environ.get("RANK", "0")
            (Path(pid_dir) / f"rank-{rank}.pid").write_text(str(os.getpid()))
        faults.arm()  # the tests' kill points inside a step (inert unless SUMTUNE_FAULT is set)
        return self

    def uninstall(self) -> None:
        """Back to the default actions, once the preemption checkpoint is written: a worker that then
        hangs in torch's process-group teardown at exit (seen with gloo, now and then) is ended by
        the launcher's SIGTERM at once, rather than by its SIGKILL 30 s later."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)

    def agreed(self, accelerator) -> bool:
        """Whether any rank was signalled (a collective: every rank must call it at each step)."""
        import torch

        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def mark_preempted(run_dir: Path, step: int, checkpoint: str) -> None:
    """A marker for the sbatch script (requeue) and for the user; the next start removes it."""
    (run_dir / MARKER).write_text(f"step {step}; checkpoint {checkpoint}\n", encoding="utf-8")
    pid_dir = os.environ.get("SUMTUNE_PID_DIR")
    if pid_dir:
        (Path(pid_dir) / MARKER).write_text(str(step))
