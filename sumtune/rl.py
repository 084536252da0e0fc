"""The arithmetic of reinforcement learning from a reward model (train/detox.py), as plain functions
of tensors: the reward each sampled summary gets, the leave-one-out advantages (RLOO), per-token
rewards, generalised advantage estimation, whitening and the clipped value loss (PPO), the clipped
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
    probability ratio new/old policy and ``A`` the advantage.

    - ``advantages`` [rows] (RLOO: one per summary): summed over the summary's tokens (the
      summary's log-probability, as in REINFORCE) and averaged over rows. On the first pass over
      fresh samples ``r`` is 1 and the gradient is exactly RLOO's, ``-mean(A * grad log p(summary))``.
    - ``advantages`` [rows, positions] (PPO: one per token): the mean over the micro-batch's tokens.

    Later passes (``rl.epochs`` > 1, or several mini-batches) are off-policy; the clip bounds how
    far they move."""
    ratio = torch.exp(logprobs - old_logprobs)
    per_token_adv = advantages.dim() == 2
    adv = advantages if per_token_adv else advantages[:, None]
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)) * mask
    tokens = mask.sum().clamp(min=1)
    clipped = (((ratio - 1).abs() > clip).float() * mask).sum() / tokens
    return (per_token.sum() / tokens if per_token_adv else per_token.sum(1).mean()), clipped


def token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, final: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """PPO's per-token rewards [rows, positions] (Ziegler et al. 2019): ``-kl_coef x`` the sampled
    token's log-ratio policy/reference at every token, and the row's ``final`` reward (the reward
    model's score less the length penalties) added at its last token. A row's rewards sum to RLOO's
    ``score - kl_coef x KL - penalty``; a row without tokens gets nothing."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    has = mask.sum(1) > 0
    rewards[torch.arange(len(final)), last] += torch.where(has, final.to(rewards.dtype), torch.zeros_like(final, dtype=rewards.dtype))
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation (Schulman et al. 2016) over each
    row's summary tokens: ``delta_t = r_t + gamma V_(t+1) - V_t`` with ``V`` 0 after the last
    token (the episode ends there), ``A_t = delta_t + gamma lam A_(t+1)``, returns ``A_t + V_t``.
    Masked positions get 0; rows are right-padded (a row's tokens come first)."""
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    following = torch.zeros_like(values[:, 0])  # A_(t+1)
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        following = (delta + gamma * lam * following) * mask[:, t]
        advantages[:, t] = following
        next_value = values[:, t] * mask[:, t]
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, reduce=None) -> torch.Tensor:
    """``values`` normalised to mean 0 and variance 1 over the masked entries (of every rank, when
    ``reduce(tensor)`` sums a tensor over ranks); masked entries stay 0."""
    mask = mask.to(values.dtype)
    totals = torch.stack([(values * mask).sum(), (values.square() * mask).sum(), mask.sum()])
    if reduce is not None:
        totals = reduce(totals)
    total, squares, count = totals.unbind()
    mean = total / count.clamp(min=1)
    variance = (squares / count.clamp(min=1) - mean.square()).clamp(min=0)
    if count > 1:  # the unbiased variance, as torch.var
        variance = variance * count / (count - 1)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of tokens whose value was clipped): PPO's clipped value loss, per token
    ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2)``, averaged over the tokens."""
    mask = mask.to(values.dtype)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - returns).square(), (clipped_values - returns).square())
    tokens = mask.sum().clamp(min=1)
    share = (((values - old_values).abs() > clip).to(values.dtype) * mask).sum() / tokens
    return (per_token * mask).sum() / tokens, share


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
