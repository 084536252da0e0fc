"""The held-out (validation) loss, as every recipe that trains on labels computes it."""

from __future__ import annotations

import torch


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
