"""The recipe skeleton: what every training recipe (fine-tuning, RL) does before its loop, after
each of its steps, and after its loop. A recipe reads as

    run = open_run(cfg, checks=[...])        # output-dir and resume checks, the model's family, the
                                             # recipe's own one-line refusals, local data read: all
                                             # before any weights load; the seed set
    ... load the model(s) ...
    accelerator = run.accelerate()           # the Accelerator (after the models: ZeRO-3), hub data
    ... prepare, ``start = run.ctx.begin(accelerator, extras)`` ...
    cadence = Cadence(accelerator, cfg.train, total, ctx.log, meter, model, validate, ctx.checkpoint, ...)
    while ...:                               # the recipe's own loop, one screen
        ... one step ...
        if cadence.after(step, logged, position):
            break
    run.close(model, tokenizer, metrics, cadence, summary, lines)   # preemption exit, or the final
                                             # save, summary, lines and finish
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from sumtune import data, models, tracking
from sumtune.config import RunConfig, TrainConfig
from sumtune.distributed import check_deepspeed_config, deepspeed_stage, make_accelerator, world_size
from sumtune.engine.meter import Meter
from sumtune.engine.run import Position, RunContext


def read_splits(cfg: RunConfig) -> tuple:
    """(train, validation) records and what reading them found (the test split is never read)."""
    return (data.load_split(cfg.data, "train", cfg.data.max_train_examples),
            data.load_split(cfg.data, "validation", cfg.data.max_eval_examples))


@dataclass
class OpenRun:
    cfg: RunConfig
    ctx: RunContext
    family: object
    splits: tuple | None
    accelerator: object = None
    started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        tracking.say(self.accelerator, message)

    def accelerate(self):
        """The Accelerator, made after the models (under ZeRO-3 a model created after it loses
        FLAN-T5's untied lm_head), and the splits of a hub dataset (the main process first: it
        downloads)."""
        self.accelerator = make_accelerator(self.cfg, grad_accum=self.cfg.train.grad_accum)
        if self.splits is None:
            with self.accelerator.main_process_first():
                self.splits = read_splits(self.cfg)
        return self.accelerator

    def begin_loop(self) -> None:
        """Training time counts from here (``train_seconds``)."""
        self.started = time.perf_counter()

    def close(self, model, tokenizer, metrics: dict, summary: dict, lines: list[str], trainable: int, total: int) -> dict:
        """A preempted loop exits here with 75 (after its checkpoint). Otherwise: what every run's
        metrics.json holds, the run folder (metrics.json last), the tracker's summary, the closing
        lines, and ``finish`` (several processes: the process exits there)."""
        ctx, cfg, acc = self.ctx, self.cfg, self.accelerator
        if metrics.get("preempted"):
            ctx.exit_preempted(metrics["step"], metrics["checkpoint"])
        metrics.update(family=self.family.name, model_type=self.family.model_type, method=cfg.model.method,
                       train_seconds=round(time.perf_counter() - self.started, 2), trainable_parameters=trainable,
                       total_parameters=total, num_processes=acc.num_processes, world_size=world_size())
        ctx.save(model, tokenizer, metrics)
        tracking.set_summary(acc, summary)
        for line in lines:
            self.say(line)
        ctx.finish()
        return metrics


def open_run(cfg: RunConfig, checks: list[Callable] = (), positions: bool = True) -> OpenRun:
    """Everything a recipe checks before any weights load, in one line each: the run folder and
    resume (``RunContext``), the DeepSpeed config, the model source and family, precision,
    quantization, learned positions (``positions``), then each of the recipe's ``checks(cfg,
    family)``; local data files are read now (a bad row is one line before minutes of loading).
    Sets the seed (the same fresh adapter on every process)."""
    from accelerate.utils import set_seed

    ctx = RunContext(cfg)
    check_deepspeed_config(cfg)
    m = cfg.model
    models.check_model_source(m.name_or_path, trust_remote_code=m.trust_remote_code)
    # The family (seq2seq or causal) is read from config.json (an adapter folder: its base's).
    family = models.model_family(m.name_or_path, m)
    models.check_precision(family, os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    if positions:
        models.check_positions(m.name_or_path, cfg.data, family, m.trust_remote_code)
    models.check_quantization(m.quantization, deepspeed_stage())
    for check in checks:
        check(cfg, family)
    splits = read_splits(cfg) if cfg.data.source == "local" else None
    set_seed(cfg.train.seed)
    return OpenRun(cfg, ctx, family, splits)


class Cadence:
    """What follows each step of a recipe's loop (an optimizer step in fine-tuning, an RL step in
    RL), on every rank at the same steps: the log window, the recipe's own periodic work
    (``extra(step)``), validation (ROUGE; best/; early stopping, which every rank agrees on),
    preemption (agreed over ranks) and the checkpoint. Validation, ``extra`` and checkpoints are
    set aside from training time.

    ``validate(model, step) -> (scores, stop)``; ``log``, ``checkpoint(step, position)`` and
    ``preemption`` are the run context's (``RunContext.log``/``.checkpoint``/``.preemption``; None
    where a caller trains without a run folder). ``after`` returns True when the loop must end (the last step, an early stop, a
    preemption)."""

    def __init__(self, accelerator, cfg: TrainConfig, total: int, log, meter: Meter, model,
                 validate: Callable | None = None, checkpoint: Callable | None = None, preemption=None,
                 optimizer_step=None, bar=None):
        self.acc, self.cfg, self.total, self.meter, self.model = accelerator, cfg, total, meter, model
        self.log, self.checkpoint, self.preemption = log, checkpoint, preemption
        self.validate, self.optimizer_step, self.bar = validate, optimizer_step, bar
        self.stopped_early = self.preempted = False
        self.last: dict = {}  # the last logged window, and the last validation scores
        self.last_checkpoint = "none"

    def after(self, step: int, logged: Callable[[], dict], position: Callable[[], Position],
              extra: Callable[[int], None] | None = None) -> bool:
        cfg, end = self.cfg, step >= self.total
        if self.bar is not None:
            self.bar.update(1)
        if step % cfg.log_every == 0 or end:
            self.last = logged()
            self.log.log(self.last, step=step)
        with self.meter.aside():
            if extra is not None:
                extra(step)
            if self.validate and (step % cfg.rouge_every == 0 or end):
                scores, stop = self.validate(self.model, step)
                self.log.log(scores, step=step)
                self.last.update(scores)
                if stop:
                    self.acc.set_trigger()
                # A collective: every rank validates at the same steps, so every rank gets here.
                if self.acc.check_trigger():
                    self.stopped_early = True
        self.preempted = self.preemption is not None and self.preemption.agreed(self.acc)
        if self.checkpoint and (self.preempted or cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or end or self.stopped_early)):
            where = position()  # the meter's window is carried with it (a collective)
            with self.meter.aside():
                self.last_checkpoint = self.checkpoint(step, asdict(where))
            if self.optimizer_step is not None:
                self.optimizer_step.last_checkpoint = self.last_checkpoint  # named by a non-finite stop
        return end or self.stopped_early or self.preempted

    def result(self, step: int) -> dict:
        """The loop's ending: the step reached, throughput, and where a preempted run stopped."""
        if self.bar is not None:
            self.bar.close()
        out = {"step": step, "stopped_early": self.stopped_early, "throughput": self.meter.run()}
        if self.preempted:
            out.update(preempted=True, checkpoint=self.last_checkpoint)
        return out
