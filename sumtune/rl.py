"""The arithmetic of reinforcement learning from a reward model (train/detox.py), as plain functions
of tensors: the reward each sampled summary gets, the leave-one-out advantages (RLOO), the clipped
policy loss, and the adaptive KL coefficient. ``sumtune.recipes.detox`` runs the loop around them.

Shapes: a step's samples are rows, the ``k`` samples of one prompt consecutive; per-token tensors
are [rows, summary positions] with a mask of the real tokens (the end token included).
"""

from __future__ import annotations

import torch


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: the sampled tokens' log-ratio policy/reference summed over the summary, an unbiased
    estimate of KL(policy || reference) over whole summaries when they were sampled from the policy
    itself (zero when policy and reference are the same model)."""
    return ((logprobs - ref_logprobs) * mask).sum(1)


def length_penalties(lengths: torch.Tensor, ended: torch.Tensor, min_tokens: int, short_penalty: float,
                     missing_eos_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty per row, whether the row is too short). ``lengths``: summary tokens before the end
    token; ``ended``: whether the end token was reached. A summary shorter than ``min_tokens``
    (an empty one included) loses ``short_penalty``, one that never ended ``missing_eos_penalty``:
    without them the KL term, which grows with every token, pays the policy to say nothing."""
    short = lengths < min_tokens
    penalty = short.float() * short_penalty + (~ended).float() * missing_eos_penalty
    return penalty, short


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out advantages: each sample's reward minus the mean reward of the other ``k - 1``
    samples of the same prompt (rows grouped by prompt, ``k`` consecutive rows each)."""
    grouped = rewards.view(-1, k)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of tokens whose ratio was clipped) of a micro-batch.

    Per token, the clipped surrogate ``max(-A * r, -A * clip(r, 1 - clip, 1 + clip))`` with ``r`` the
    probability ratio new/old policy and ``A`` the row's advantage; summed over the summary's tokens
    (the summary's log-probability, as in REINFORCE) and averaged over rows. On the first pass over
    fresh samples ``r`` is 1 and the gradient is exactly RLOO's, ``-mean(A * grad log p(summary))``;
    later passes (``rl.epochs`` > 1) are off-policy and the clip bounds how far they move."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)) * mask
    clipped = (((ratio - 1).abs() > clip).float() * mask).sum() / mask.sum().clamp(min=1)
    return per_token.sum(1).mean(), clipped


class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019, "Fine-Tuning Language Models
    from Human Preferences"): after each step, with ``e = clip(KL / target - 1, -0.2, 0.2)``, the
    coefficient is multiplied by ``1 + e * samples / horizon``. Its value travels in checkpoints."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * samples / self.horizon

    def state(self) -> dict:
        return {"coef": self.coef}

    def restore(self, state: dict) -> None:
        self.coef = float(state["coef"])


def describe(values: torch.Tensor, name: str) -> dict[str, float]:
    """Mean, std, min and max of a 1-d tensor, as ``name_mean`` ... (float, for the log)."""
    values = values.double()
    std = values.std().item() if values.numel() > 1 else 0.0
    return {f"{name}_mean": values.mean().item(), f"{name}_std": std, f"{name}_min": values.min().item(),
            f"{name}_max": values.max().item()}
