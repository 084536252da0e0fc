"""Fault injection, a TEST HOOK: kill (or pause) a training process at a named point, so a test can
show that a run killed exactly there resumes exactly. Inert, and free, unless ``SUMTUNE_FAULT`` is set.

``SUMTUNE_FAULT="KIND:STEP[@RANK]"``: STEP is an optimizer step or ``*`` (any); ``@RANK`` limits it
to one process (default: every process that gets there, as when a whole node dies).

  step:N        inside training step N: the optimizer has updated the weights; the step is not yet
                counted, logged or checkpointed (a global optimizer-step hook)
  val:N         during the validation-loss pass after step N, once its first batch has run
  rouge:N       during the ROUGE validation at step N, a few decoding steps into generation
  save:N        during the checkpoint save of step N: the state is in ``step-N.tmp``, but
                ``trainer_state.json`` and the rename are not done (main process)
  save-pause:N  pause inside the checkpoint save of step N until ``$SUMTUNE_PID_DIR/continue``
                exists (60 s at most): a window in which a test sends signals

A kill is SIGKILL to the process itself: no handler runs and nothing is cleaned up. Just before
it (or the pause), the marker ``fault-KIND-N.rankR`` is written to ``$SUMTUNE_PID_DIR`` when set,
so a test can tell that the fault fired where it meant it to. The step and val hooks are installed
by ``arm()``, which ``Preemption.install()`` calls; the others are calls in checkpoints.py and
validation.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

ENV = "SUMTUNE_FAULT"
KINDS = ("step", "val", "rouge", "save", "save-pause")
PAUSE_LIMIT_S = 60
_armed = False
_last_step = 0  # the optimizer steps taken, as the optimizer's state counts them (only while armed)


def _spec() -> tuple[str, int | None, int | None] | None:
    text = os.environ.get(ENV)
    if not text:
        return None
    kind, _, rest = text.partition(":")
    step, _, rank = rest.partition("@")
    if kind not in KINDS or not (step == "*" or step.isdigit()) or not (rank == "" or rank.isdigit()):
        raise ValueError(f"{ENV}={text!r}: expected KIND:STEP[@RANK], KIND one of {', '.join(KINDS)}, "
                         "STEP a number or *")
    return kind, None if step == "*" else int(step), int(rank) if rank else None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def matches(kind: str, step: int) -> bool:
    spec = _spec()
    return spec is not None and spec[0] == kind and spec[1] in (None, step) and spec[2] in (None, _rank())


def _fire(kind: str, step: int) -> None:
    pid_dir = os.environ.get("SUMTUNE_PID_DIR")
    if pid_dir:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"fault-{kind}-{step}.rank{_rank()}").write_text(str(os.getpid()))
    if kind == "save-pause":
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while time.monotonic() < deadline and not (pid_dir and (Path(pid_dir) / "continue").exists()):
            time.sleep(0.05)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def point(kind: str, step: int) -> None:
    """Kill (or pause) here if ``SUMTUNE_FAULT`` names this point."""
    if matches(kind, step):
        _fire(kind, step)


@contextlib.contextmanager
def during(kind: str, step: int, calls: int = 300):
    """Kill at the ``calls``-th module forward inside the block (any module, so it works through
    PEFT and DeepSpeed wrappers) if ``SUMTUNE_FAULT`` names this point."""
    if not matches(kind, step):
        yield
        return
    count = 0

    def hook(_module, _args, _output):
        nonlocal count
        count += 1
        if count == calls:
            _fire(kind, step)

    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def arm() -> None:
    """Install the hooks for the points that live in code this module does not own (the training
    step and the validation-loss pass are in sumtune.engine). Nothing happens unless they are named."""
    global _armed
    spec = _spec()
    if _armed or spec is None or spec[0] not in ("step", "val"):
        return
    _armed = True
    from torch.nn.modules.module import register_module_forward_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def after_optimizer_step(optimizer, _args, _kwargs):
        global _last_step
        # The optimizer's own count survives a resume; it is the run's optimizer step. (DeepSpeed
        # steps its inner optimizer once per parameter group: the first call of step N fires.)
        counts = [int(s["step"]) for s in optimizer.state.values() if "step" in s]
        _last_step = max(counts, default=_last_step + 1)
        point("step", _last_step)

    register_optimizer_step_post_hook(after_optimizer_step)
    if spec[0] == "val":
        def after_forward(module, _args, kwargs, _output):
            # Only the validation-loss pass runs the model in eval mode with labels.
            if not module.training and kwargs.get("labels") is not None:
                point("val", _last_step)

        register_module_forward_hook(after_forward, with_kwargs=True)
