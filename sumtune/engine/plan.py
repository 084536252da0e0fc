"""Step arithmetic, the optimizer and its learning-rate schedule: the same for every recipe."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sumtune.batching import batches_per_rank
from sumtune.config import TrainConfig
from sumtune.errors import ConfigError


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
    batching: str = "grouped"
    max_tokens: int = 0
    updates_per_step: int = 1  # optimizer steps per step of the recipe's loop (RL: rl.epochs x rl.minibatches)

    @property
    def loop_steps(self) -> int:
        """Steps of the recipe's loop (RL steps); optimizer steps in fine-tuning."""
        return self.total_steps // self.updates_per_step

    def describe(self) -> str:
        if self.batching == "packed":
            batch = (f"effective batch {self.effective_batch} rows of <= {self.max_tokens} tokens = 1 packed row x "
                     f"{self.num_processes} processes x {self.grad_accum} accumulation")
        else:
            budget = f" (<= {self.max_tokens} padded tokens)" if self.max_tokens else ""
            batch = (f"effective batch {self.effective_batch} = {self.per_device_batch_size}{budget} per device x "
                     f"{self.num_processes} processes x {self.grad_accum} accumulation")
        return (f"{self.examples} examples | {batch} | {self.steps_per_epoch} optimizer steps per epoch | "
                f"{self.total_steps} steps over {self.epochs} epoch(s) | warmup {self.warmup_steps}")


def plan_steps(examples: int, num_processes: int, cfg: TrainConfig,
               epoch_batches: Callable[[int], int] | None = None, batches_per_step: int | None = None,
               updates_per_step: int = 1) -> StepPlan:
    """All step arithmetic in one place, for what a recipe's step consumes.

    ``epoch_batches(epoch)``: the micro-batches (over all ranks) the batching strategy yields in
    that epoch (``batching.Batching.epoch_batches``); without it, batches of
    ``per_device_batch_size``. A step of the loop takes ``batches_per_step`` of them on each rank
    (default ``grad_accum``: fine-tuning's optimizer step) and makes ``updates_per_step`` optimizer
    steps (the RL recipe: one batch of prompts per rank, ``rl.epochs x rl.minibatches`` updates).
    An epoch ends with a shorter step (the RL recipe counts only whole batches of prompts in
    ``epoch_batches``). ``train.max_steps`` counts steps of the loop; ``total_steps`` and warmup
    count optimizer steps."""
    if epoch_batches is None:
        epoch_batches = lambda _: math.ceil(examples / cfg.per_device_batch_size)  # noqa: E731
    per_step = batches_per_step or cfg.grad_accum

    def steps_in(epoch: int) -> int:
        return math.ceil(batches_per_rank(epoch_batches(epoch), num_processes) / per_step)

    steps_per_epoch = steps_in(0)
    if steps_per_epoch == 0:
        raise ConfigError(f"config key 'train.per_device_batch_size': {cfg.per_device_batch_size} x {num_processes} "
                          f"processes per step, but the train split has {examples} examples")
    if cfg.max_steps > 0:
        loop_total, epochs = cfg.max_steps, 0
        reached = 0
        while reached < loop_total:
            reached += steps_in(epochs)
            epochs += 1
    else:
        epochs = cfg.epochs
        loop_total = sum(steps_in(e) for e in range(epochs))
    total = loop_total * updates_per_step
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)
    packed = cfg.batching == "packed"
    per_device = 1 if packed else cfg.per_device_batch_size
    return StepPlan(
        examples=examples,
        num_processes=num_processes,
        per_device_batch_size=per_device,
        grad_accum=cfg.grad_accum,
        effective_batch=per_device * num_processes * per_step,
        batches_per_rank_per_epoch=batches_per_rank(epoch_batches(0), num_processes),
        steps_per_epoch=steps_per_epoch * updates_per_step,
        epochs=epochs,
        total_steps=total,
        warmup_steps=min(warmup, total),
        batching=cfg.batching,
        max_tokens=cfg.max_tokens,
        updates_per_step=updates_per_step,
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


def make_optimizer(model, cfg: TrainConfig, plan: StepPlan, lr_scale: Callable[[str], float] | None = None):
    """AdamW without decay on biases and norms; linear warmup then linear decay to 0.

    ``lr_scale(name)`` (LoRA+, see sumtune.methods.lr_scale) gives a parameter a learning rate of
    ``train.lr`` times its factor; weight decay stays as above either way. The first group is always
    the decayed group at ``train.lr`` (the learning rate the loop logs), and no group is empty (DeepSpeed
    drops empty groups, and the scheduler would then hold one factor too many).

    The scheduler is stepped once per optimizer step by ``engine.OptimizerStep`` and is NOT passed
    to ``accelerator.prepare``: Accelerate's wrapper steps it once per process, which would make the
    schedule depend on the number of processes.
    """
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = not (p.ndim < 2 or "norm" in name.lower())
            scale = lr_scale(name) if lr_scale else 1.0
            buckets.setdefault((scale, decays), []).append(p)
    order = sorted(buckets, key=lambda key: (key[0] != 1.0, not key[1], key[0]))
    groups = [{"params": buckets[scale, decays], "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay if decays else 0.0}
              for scale, decays in order]
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=_fused_adamw(params))

    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / (plan.warmup_steps + 1)
        remaining = plan.total_steps - plan.warmup_steps
        return max(0.0, (plan.total_steps - step) / max(1, remaining))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
