"""THE training loop. Full fine-tuning and LoRA are the same loop over different models."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)

    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / (plan.warmup_steps + 1)
        remaining = plan.total_steps - plan.warmup_steps
        return max(0.0, (plan.total_steps - step) / max(1, remaining))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def validation_loss(accelerator, model, dataloader, max_batches: int = 0) -> float:
    """Token-weighted mean loss over the validation data, agreed across ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for i, batch in enumerate(dataloader):
        if max_batches and i >= max_batches:
            break
        tokens = (batch["labels"] != -100).sum()
        loss = model(**batch).loss
        total += torch.stack([loss.double() * tokens, tokens.double()])
    total = accelerator.reduce(total, reduction="sum")
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


class NonFiniteError(SumtuneError):
    """A NaN or inf gradient norm: the run stops before the optimizer applies it."""


def fit(accelerator, model, optimizer, scheduler, train_dl, val_dl, plan: StepPlan, cfg: TrainConfig, log: RunLog,
        validate: Callable[[torch.nn.Module, int], tuple[dict, bool]] | None = None,
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
    window = torch.zeros(4, device=accelerator.device, dtype=torch.float64)  # loss sum, batches, tokens, samples
    window_start = time.perf_counter()
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
                loss = model(**batch).loss
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
            tokens = batch["attention_mask"].sum() + (batch["labels"] != -100).sum()
            window += torch.stack(
                [loss.detach().double(), torch.ones((), dtype=torch.float64, device=loss.device),
                 tokens.double(), torch.tensor(float(batch["input_ids"].shape[0]), dtype=torch.float64, device=loss.device)]
            )
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == plan.total_steps:
                totals = accelerator.reduce(window, reduction="sum")
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                last = {
                    "epoch": round(step / plan.steps_per_epoch, 4),
                    "loss": (totals[0] / totals[1]).item(),
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": totals[2].item() / elapsed,
                    "samples_per_s": totals[3].item() / elapsed,
                }
                log.log(last, step=step)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                window.zero_()
                window_start = time.perf_counter()
            if val_dl is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < plan.total_steps:
                log.log({"val_loss": validation_loss(accelerator, model, val_dl, cfg.eval_max_batches)}, step=step)
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
                where = Position(step, epoch, batches_in_epoch, epoch_generator if generator is not None else None)
                last_checkpoint = checkpoint(step, asdict(where))
            if step >= plan.total_steps or stopped_early or preempted:
                break
        else:
            epoch += 1
    bar.close()
    final = {"step": step, "train_loss": last.get("loss"), "stopped_early": stopped_early}
    if preempted:
        return {**final, "preempted": True, "checkpoint": last_checkpoint}
    if val_dl is not None:
        final["val_loss"] = validation_loss(accelerator, model, val_dl, cfg.eval_max_batches)
        log.log({"val_loss": final["val_loss"]}, step=step)
    final["plan"] = asdict(plan)
    return final

