"""THE training loop. Full fine-tuning and LoRA are the same loop over different models."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from sumtune.config import TrainConfig
from sumtune.data import batches_per_rank
from sumtune.errors import SumtuneError
from sumtune.tracking import RunLog


@dataclass(frozen=True)
class StepPlan:
    examples: int
    num_processes: int
    per_device_batch_size: int
    grad_accum: int
    effective_batch: int
    batches_per_rank_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int

    def describe(self) -> str:
        return (
            f"{self.examples} examples | effective batch {self.effective_batch} = "
            f"{self.per_device_batch_size} per device x {self.num_processes} processes x "
            f"{self.grad_accum} accumulation | {self.steps_per_epoch} optimizer steps per epoch | "
            f"{self.total_steps} steps over {self.epochs} epoch(s) | warmup {self.warmup_steps}"
        )


def plan_steps(examples: int, num_processes: int, cfg: TrainConfig) -> StepPlan:
    """All step arithmetic in one place. An optimizer step is taken every ``grad_accum`` batches
    and at the end of each epoch (Accelerate syncs on the last batch of a dataloader)."""
    per_rank = batches_per_rank(examples, cfg.per_device_batch_size, num_processes)
    steps_per_epoch = math.ceil(per_rank / cfg.grad_accum)
    if cfg.max_steps > 0:
        total = cfg.max_steps
        epochs = math.ceil(total / steps_per_epoch)
    else:
        epochs = cfg.epochs
        total = steps_per_epoch * epochs
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)
    return StepPlan(
        examples=examples,
        num_processes=num_processes,
        per_device_batch_size=cfg.per_device_batch_size,
        grad_accum=cfg.grad_accum,
        effective_batch=cfg.per_device_batch_size * num_processes * cfg.grad_accum,
        batches_per_rank_per_epoch=per_rank,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total,
        warmup_steps=min(warmup, total),
    )


def _fused_adamw(params: list) -> bool | None:
    """The fused AdamW kernel (one pass over all tensors: on CPU several times cheaper per step than
    the per-tensor loop torch picks there by default), except under DeepSpeed, which steps the
    optimizer on its own flattened partitions."""
    from sumtune.distributed import uses_deepspeed

    if uses_deepspeed():
        return None
    ok = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return True if ok and params else None


def make_optimizer(model, cfg: TrainConfig, plan: StepPlan):
    """AdamW without decay on biases and norms; linear warmup then linear decay to 0.

    The scheduler is stepped by the loop once per optimizer step and is NOT passed to
    ``accelerator.prepare``: Accelerate's wrapper steps it once per process, which would make the
    schedule depend on the number of processes.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=_fused_adamw(decay + no_decay))

    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / (plan.warmup_steps + 1)
        remaining = plan.total_steps - plan.warmup_steps
        return max(0.0, (plan.total_steps - step) / max(1, remaining))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def validation_loss(accelerator, model, dataloader, family, max_batches: int = 0) -> float:
    """Token-weighted mean loss over the validation data, agreed across ranks.

    Per-example sums go through ``gather_for_metrics``, which drops the examples Accelerate
    repeats to give every rank the same number of batches, so each example counts once."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for i, batch in enumerate(dataloader):
        if max_batches and i >= max_batches:
            break
        logits = model(**batch, use_cache=False).logits
        per_token, mask = family.token_losses(logits, batch["labels"])  # the causal family shifts
        rows = torch.stack([per_token.sum(1).double(), mask.sum(1).double()], dim=1)
        total += accelerator.gather_for_metrics(rows).sum(0).cpu()
    model.train(was_training)
    return (total[0] / total[1].clamp(min=1)).item()


@dataclass
class Position:
    """Where training stands, as a checkpoint records it: optimizer steps taken, the epoch, the
    batches of that epoch consumed on each rank, and the shuffling generator's state at the
    start of the epoch (re-drawing the same order is what makes skipping batches exact)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    generator_state: list[int] | None = None
    window: list[float] | None = None  # the logging window so far (Meter.carry)


class Meter:
    """Loss and throughput of the training batches, per logging window and over the run.

    Loss sums and real-token counts stay on the device (no host sync per batch); samples and
    token positions (padding included) are known on the host from the shapes. Time spent
    validating or checkpointing (inside ``aside()``) does not count as training time.
    ``window()`` and ``run()`` are collectives: every rank calls them at the same steps.
    """

    def __init__(self, accelerator, family):
        self.acc = accelerator
        self.family = family
        self.sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # loss, batches, real tokens
        self.samples = self.positions = 0
        self.totals = torch.zeros(4, dtype=torch.float64)  # this rank: real tokens, positions, samples, seconds
        self.started, self.paused = time.perf_counter(), 0.0

    def add(self, batch: dict, loss: torch.Tensor) -> None:
        self.sums[0] += loss.detach()
        self.sums[1] += 1
        real, positions = self.family.count(batch)  # each token once (a causal summary is inside its input)
        self.sums[2] += real
        self.samples += batch["input_ids"].shape[0]
        self.positions += positions

    @contextmanager
    def aside(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    def _mine(self) -> torch.Tensor:
        """[loss sum, batches, real tokens, samples, positions, seconds] of this rank's window so far."""
        seconds = time.perf_counter() - self.started - self.paused
        return torch.cat([self.sums.cpu(), torch.tensor([self.samples, self.positions, seconds], dtype=torch.float64)])

    def _close(self) -> torch.Tensor:
        """This rank's window (``_mine``), added to the run's totals; the next window starts."""
        mine = self._mine()
        mine[5] = max(mine[5].item(), 1e-9)
        self.totals += mine[[2, 4, 3, 5]]
        self.sums.zero_()
        self.samples = self.positions = 0
        self.started, self.paused = time.perf_counter(), 0.0
        return mine

    def carry(self) -> list[float]:
        """This logging window so far, summed over ranks (a collective), for a checkpoint: a run
        resumed between two logging steps then logs the same average as an uninterrupted one."""
        carried = self.acc.reduce(self._mine().to(self.acc.device), reduction="sum").cpu().tolist()
        return carried[:5] + [carried[5] / self.acc.num_processes]

    def restore(self, carried: list[float]) -> None:
        self.started -= carried[5]  # every rank: window time is averaged over ranks
        if self.acc.is_main_process:  # the sums over ranks are carried once
            self.sums += torch.tensor(carried[:3], dtype=torch.float64, device=self.sums.device)
            self.samples, self.positions = int(carried[3]), int(carried[4])

    def window(self) -> dict:
        t = self.acc.reduce(self._close().to(self.acc.device), reduction="sum").cpu().tolist()
        seconds = t[5] / self.acc.num_processes
        return {"loss": t[0] / t[1], "tokens_per_s": t[2] / seconds, "samples_per_s": t[3] / seconds,
                "real_token_share": t[2] / max(t[4], 1.0)}

    def run(self) -> dict:
        """Throughput of the training steps of this launch (a resumed run counts from where it
        resumed), validation and checkpoints excluded."""
        if self.samples:  # batches after the last logging step (a stop before total_steps)
            self._close()
        t = self.acc.reduce(self.totals.to(self.acc.device), reduction="sum").cpu().tolist()
        seconds = max(t[3] / self.acc.num_processes, 1e-9)
        return {"real_tokens": int(t[0]), "token_positions": int(t[1]), "samples": int(t[2]),
                "seconds": round(seconds, 3), "real_tokens_per_s": round(t[0] / seconds, 1),
                "samples_per_s": round(t[2] / seconds, 2), "real_token_share": round(t[0] / max(t[1], 1.0), 4)}


class NonFiniteError(SumtuneError):
    """A NaN or inf gradient norm: the run stops before the optimizer applies it."""


def fit(accelerator, model, optimizer, scheduler, train_dl, val_dl, plan: StepPlan, cfg: TrainConfig, log: RunLog,
        family, validate: Callable[[torch.nn.Module, int], tuple[dict, bool]] | None = None,
        checkpoint: Callable[[int, dict], str] | None = None, start: Position | None = None,
        generator: torch.Generator | None = None, preemption=None) -> dict:
    """Train until ``plan.total_steps`` optimizer steps; returns the final metrics.

    ``validate(model, step)`` (ROUGE on validation data) runs every ``cfg.rouge_every`` steps and
    at the end; it may ask to stop early, which every rank must agree on. ``checkpoint(step,
    position)`` runs every ``cfg.checkpoint_every`` steps and at the end. ``start`` resumes from
    a checkpoint's position; ``generator`` is the training data's shuffling generator. When
    ``preemption`` (sumtune.preemption.Preemption) was signalled on any rank, the loop
    checkpoints at the step boundary and returns with ``preempted`` set.
    """
    from tqdm.auto import tqdm

    pos = start or Position()
    bar = tqdm(total=plan.total_steps, initial=pos.step, disable=not accelerator.is_main_process, desc="train",
               dynamic_ncols=True)
    step, epoch, skip = pos.step, pos.epoch, pos.batches_in_epoch
    resume_generator = pos.generator_state
    stopped_early = preempted = False
    last_checkpoint = "none"
    meter = Meter(accelerator, family)
    if pos.window:
        meter.restore(pos.window)
    grad_norm = torch.tensor(0.0)
    last: dict = {}
    model.train()
    while step < plan.total_steps and not (stopped_early or preempted):
        if generator is not None:
            if resume_generator is not None:
                generator.set_state(torch.tensor(resume_generator, dtype=torch.uint8))
                resume_generator = None
            epoch_generator = generator.get_state().tolist()
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        batches_in_epoch, skip = skip, 0
        for batch in loader:
            batches_in_epoch += 1
            with accelerator.accumulate(model):
                loss = model(**batch, use_cache=False).loss  # no KV cache to build in training
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    if grad_norm is None:  # DeepSpeed clips inside its engine and may not report
                        grad_norm = torch.tensor(math.nan)
                    # The norm is reduced over ranks, so every rank takes the same decision here.
                    elif not math.isfinite(float(grad_norm)):  # DeepSpeed returns a float
                        raise NonFiniteError(
                            f"non-finite gradient norm ({float(grad_norm)}) at step {step + 1}; last good checkpoint: "
                            f"{last_checkpoint} (lower train.lr, check the data, or use bf16 rather than fp16)"
                        )
                optimizer.step()
                optimizer.zero_grad()
            meter.add(batch, loss)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == plan.total_steps:
                last = {"epoch": round(step / plan.steps_per_epoch, 4), "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm), **meter.window()}
                log.log(last, step=step)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            with meter.aside():  # validation and checkpoints are not training time
                if val_dl is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < plan.total_steps:
                    log.log({"val_loss": validation_loss(accelerator, model, val_dl, family, cfg.eval_max_batches)}, step=step)
                if validate and (step % cfg.rouge_every == 0 or step == plan.total_steps):
                    scores, stop = validate(model, step)
                    log.log(scores, step=step)
                    if stop:
                        accelerator.set_trigger()
                    # A collective: every rank validates at the same steps, so every rank gets here.
                    if accelerator.check_trigger():
                        stopped_early = True
            preempted = preemption is not None and preemption.agreed(accelerator)
            if checkpoint and (preempted or cfg.checkpoint_every and (
                    step % cfg.checkpoint_every == 0 or step == plan.total_steps or stopped_early)):
                where = Position(step, epoch, batches_in_epoch, epoch_generator if generator is not None else None,
                                 meter.carry())
                with meter.aside():
                    last_checkpoint = checkpoint(step, asdict(where))
            if step >= plan.total_steps or stopped_early or preempted:
                break
        else:
            epoch += 1
    bar.close()
    final = {"step": step, "train_loss": last.get("loss"), "stopped_early": stopped_early, "throughput": meter.run()}
    if preempted:
        return {**final, "preempted": True, "checkpoint": last_checkpoint}
    if val_dl is not None:
        final["val_loss"] = validation_loss(accelerator, model, val_dl, family, cfg.eval_max_batches)
        log.log({"val_loss": final["val_loss"]}, step=step)
    final["plan"] = asdict(plan)
    return final

