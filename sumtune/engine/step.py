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
