"""The optimizer step, one batch at a time: the same for every recipe.

Accumulation is Accelerate's (``accumulate``, ``sync_gradients``), never counted by hand. On the
batch that completes an accumulation (a "sync" batch) the gradients are clipped, their norm is
checked, the optimizer steps, the hook runs, the gradients are zeroed and the scheduler steps. The
prepared optimizer skips ``step``/``zero_grad`` by itself on the other batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sumtune.errors import SumtuneError


class NonFiniteError(SumtuneError):
    """A NaN or inf gradient norm: the run stops before the optimizer applies it."""


@dataclass
class StepResult:
    loss: torch.Tensor  # this batch's loss, detached, on the device (no host sync)
    stepped: bool  # whether this batch completed an optimizer step
    grad_norm: torch.Tensor | float | None = None  # on an optimizer step: the norm before clipping (NaN: unknown)


class OptimizerStep:
    """``step = OptimizerStep(accelerator, model, optimizer, scheduler, max_grad_norm, loss_fn)``,
    then for each batch ``result = step(batch, steps_done)``; ``loss_fn(batch)`` runs the forward pass
    and returns the loss to minimise (inside ``accumulate``: DDP must see the forward inside
    ``no_sync`` too). ``steps_done`` is the number of optimizer steps taken before this batch.

    ``hook(step)``, if given, runs on every optimizer step with that step's number (``steps_done +
    1``, the number it is logged under), after backward, clipping and ``optimizer.step()`` and
    before ``zero_grad``: the gradients of the step still exist (what AdaLoRA's budget update
    reads). DeepSpeed caveat: under DeepSpeed, Accelerate's ``backward`` already steps the engine
    (optimizer step and gradient zeroing included, gradients partitioned under ZeRO-2/3), so the
    hook sees the updated weights but no gradients, and the non-finite guard comes after the update
    (DeepSpeed reports the norm it computed while stepping, or none).
    """

    def __init__(self, accelerator, model, optimizer, scheduler, max_grad_norm: float,
                 loss_fn: Callable[[dict], torch.Tensor], hook: Callable[[int], None] | None = None):
        self.acc = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_norm = max_grad_norm if max_grad_norm > 0 else math.inf  # 0: no clipping, the norm is still read
        self.loss_fn = loss_fn
        self.hook = hook
        self.last_checkpoint = "none"  # named by the error; the recipe updates it after each checkpoint

    def __call__(self, batch, steps_done: int) -> StepResult:
        acc = self.acc
        grad_norm = None
        with acc.accumulate(self.model):
            loss = self.loss_fn(batch)
            acc.backward(loss)
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.max_norm)
                if grad_norm is None:  # DeepSpeed clips inside its engine and may not report
                    grad_norm = torch.tensor(math.nan)
                # The norm is reduced over ranks, so every rank takes the same decision here.
                elif not math.isfinite(float(grad_norm)):  # DeepSpeed returns a float
                    raise NonFiniteError(
                        f"non-finite gradient norm ({float(grad_norm)}) at step {steps_done + 1}; last good checkpoint: "
                        f"{self.last_checkpoint} (lower train.lr, check the data, or use bf16 rather than fp16)"
                    )
            self.optimizer.step()
            if acc.sync_gradients and self.hook is not None:
                self.hook(steps_done + 1)
            self.optimizer.zero_grad()
        stepped = acc.sync_gradients
        if stepped:
            self.scheduler.step()
        return StepResult(loss.detach(), stepped, grad_norm)


class TokenWeightedLoss:
    """The supervised loss of an optimizer step: the sum of its target tokens' losses divided by
    the number of target tokens in the WHOLE step (every micro-batch of the accumulation window,
    every rank), so that each target token weighs the same however the step is cut into
    micro-batches and ranks (a mean of per-batch means would weigh a batch of short summaries as
    much as one of long ones).

    ``begin(window)`` counts the window's target tokens on this rank and sums them over ranks
    (one all-reduce) before the window's first backward; each micro-batch's loss is then its sum
    times ``accumulation x processes / window tokens``: Accelerate (or DeepSpeed) divides the
    loss by the accumulation steps and DDP (or ZeRO) averages the ranks' gradients, which undoes
    those two factors. ``last`` holds the micro-batch's (loss sum, target tokens) for the meter.
    ``penalty()`` (a method's regularisation term, methods.loss_penalty) is added to every
    micro-batch's loss as it is: after the same division and averaging, a step's gradient holds it once.
    """

    def __init__(self, accelerator, model, family, chunk_size: int = 0,
                 penalty: Callable[[], torch.Tensor] | None = None):
        self.acc, self.model, self.family, self.chunk_size = accelerator, model, family, chunk_size
        self.penalty = penalty
        self.scale = torch.ones(())
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def begin(self, window: list[dict]) -> torch.Tensor:
        mine = torch.stack([self.family.target_tokens(b) for b in window]).sum().to(self.acc.device, torch.float64)
        total = self.acc.reduce(mine, reduction="sum") if self.acc.num_processes > 1 else mine
        self.scale = (self.acc.gradient_accumulation_steps * self.acc.num_processes / total.clamp(min=1)).float()
        return total

    def __call__(self, batch: dict) -> torch.Tensor:
        loss_sum, tokens = self.family.loss(self.model, batch, self.chunk_size)
        self.last = (loss_sum.detach(), tokens)
        loss = loss_sum * self.scale.to(loss_sum.device)
        return loss + self.penalty() if self.penalty is not None else loss
