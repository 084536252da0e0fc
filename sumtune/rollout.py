"""Rollouts of the RL recipe (train/detox.py): sample summaries from the policy, score them with the
reward model, and compute what the algorithms need, as one named ``Trajectory``.

The policy's log-probs (and, for PPO, its values) are computed in the micro-batches the first
update pass takes, so that pass starts exactly on-policy (ratio 1, the value clip inactive).
The reference is the start itself: the policy with its adapter switched off (a PEFT policy), or a
frozen copy (full training). PPO's value head is a scalar head on the policy's own last hidden
states (``WithValueHead``): one forward gives both log-probs and values, and it costs no second
model in memory (docs/ARCHITECTURE.md says why it is not a separate value model).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from sumtune import data
from sumtune.families.base import unwrap
from sumtune.generation import decode_summaries


class WithValueHead(torch.nn.Module):
    """The policy and a value head (a ``Linear(hidden, 1)``, zero at the start, float32) on the
    hidden state the policy's output layer reads, at every position. ``forward`` is the policy's,
    its output given ``value_estimates`` [rows, positions] (an attribute: a model output is a dict,
    and ``values`` would hide its ``values()``, which DeepSpeed's hooks call). Trained, prepared and checkpointed as one module
    (one optimizer, its state included); the run folder gets the policy alone."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy
        config = unwrap(policy).config.get_text_config()
        width = getattr(config, "hidden_size", None) or config.d_model
        self.value_head = torch.nn.Linear(width, 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def get_base_model(self):
        """The transformers model inside (``families.base.unwrap`` reaches it through this)."""
        return unwrap(self.policy)

    def forward(self, **kwargs):
        seen: dict = {}
        hook = unwrap(self.policy).get_output_embeddings().register_forward_pre_hook(
            lambda _module, args: seen.__setitem__("hidden", args[0]))
        try:
            out = self.policy(**kwargs)
        finally:
            hook.remove()
        out.value_estimates = self.value_head(seen["hidden"].float()).squeeze(-1)
        return out


def policy_of(net: torch.nn.Module) -> torch.nn.Module:
    """The policy itself: inside a ``WithValueHead``, or ``net`` as it is (both unwrapped)."""
    return net.policy if isinstance(net, WithValueHead) else net


class Reference:
    """The frozen start the KL is measured against: the policy with its adapter disabled (a PEFT
    policy on the start), or a frozen copy of the start (full training)."""

    def __init__(self, policy):
        self.copy = None
        if not hasattr(policy, "disable_adapter"):
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device) -> Reference:
        if self.copy is not None:
            self.copy.to(device)
        return self

    @torch.no_grad()
    def logprobs(self, family, policy, batch: dict, temperature: float) -> torch.Tensor:
        """``policy``: the unwrapped policy (a PEFT model's adapters are switched off for the call)."""
        args = (batch["input_ids"], batch["attention_mask"], batch["summary_ids"], batch["summary_mask"])
        if self.copy is not None:
            return family.summary_logprobs(self.copy, *args, temperature=temperature)[0]
        with policy.disable_adapter():
            return family.summary_logprobs(policy, *args, temperature=temperature)[0]


@dataclass
class Trajectory:
    """One RL step's samples on this process, a row per summary (the ``k`` samples of a prompt
    consecutive). Per-token fields are [rows, positions], right-padded to the longest summary;
    prompts are padded as the family pads them for generation."""

    prompt_rows: list[int]  # each row's train prompt
    texts: list[str]  # the summaries, cut at their end token
    input_ids: torch.Tensor  # [rows, prompt positions]
    attention_mask: torch.Tensor
    summary_ids: torch.Tensor  # [rows, positions], the end token included when reached
    summary_mask: torch.Tensor
    logprobs: torch.Tensor  # the sampling policy's, at rl.temperature
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor  # of the policy's next-token distribution
    values: torch.Tensor | None  # PPO: the value head's, before each token
    scores: torch.Tensor  # [rows]: the reward model's score
    lengths: torch.Tensor  # summary tokens before the end token
    ended: torch.Tensor  # whether the end token was reached

    def batch(self, rows) -> dict:
        """The rows ``rows`` (a slice or index tensor) as a micro-batch: the update's inputs and
        ``old_logprobs``/``old_values``, trimmed of the padding no row of it needs."""
        mask = self.summary_mask[rows]
        width = max(1, int(mask.sum(1).max()))
        prompt_mask = self.attention_mask[rows]
        used = prompt_mask.any(0).nonzero().flatten()
        first, last = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, prompt_mask.shape[1])
        out = {"input_ids": self.input_ids[rows][:, first:last], "attention_mask": prompt_mask[:, first:last],
               "summary_ids": self.summary_ids[rows][:, :width], "summary_mask": mask[:, :width],
               "old_logprobs": self.logprobs[rows][:, :width]}
        if self.values is not None:
            out["old_values"] = self.values[rows][:, :width]
        return out

    def kl(self) -> torch.Tensor:
        """Per row: the summed log-ratio policy/reference (``rl.sequence_kl``)."""
        from sumtune.rl import sequence_kl

        return sequence_kl(self.logprobs, self.ref_logprobs, self.summary_mask.float())

    def __len__(self) -> int:
        return len(self.prompt_rows)


def gather_named(accelerator, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-row statistics of every process (one collective), by name."""
    names = list(columns)
    stacked = torch.stack([columns[n].to(accelerator.device, torch.float64) for n in names], 1)
    every = accelerator.gather(stacked).cpu()
    return dict(zip(names, every.unbind(1)))


class RolloutTokens:
    """What the meter counts of an update micro-batch: prompt and summary tokens."""

    @staticmethod
    def count(batch: dict) -> tuple[torch.Tensor, int]:
        real = batch["attention_mask"].sum() + batch["summary_mask"].sum()
        return real, batch["attention_mask"].numel() + batch["summary_mask"].numel()


class Rollout:
    """``rollout(rows) -> Trajectory``: sample ``rl.samples_per_prompt`` summaries of each of the
    train prompts ``rows`` from the policy, score each alone with the reward model, and compute the
    policy's log-probs (values, for PPO) and the reference's in the update's micro-batches of
    ``micro_rows`` rows."""

    def __init__(self, accelerator, policy, reference: Reference, reward, good: int, family, tokenizer, cfg,
                 prompts: list[list[int]], micro_rows: int):
        self.acc, self.policy, self.reference, self.reward, self.good = accelerator, policy, reference, reward, good
        self.family, self.tok, self.cfg, self.r, self.prompts = family, tokenizer, cfg, cfg.rl, prompts
        self.micro_rows = micro_rows
        net = policy_of(accelerator.unwrap_model(policy))
        self.settings = family.sampling_settings(net, tokenizer, self.r.max_new_tokens, self.r.temperature)
        ends = self.settings.eos_token_id
        self.ends = set(ends if isinstance(ends, list) else [ends])
        self.collate = data.PadCollator(tokenizer.pad_token_id, side=family.prompt_padding())

    @torch.no_grad()
    def __call__(self, rows: list[int]) -> Trajectory:
        acc, r, family = self.acc, self.r, self.family
        net = acc.unwrap_model(self.policy)
        policy = policy_of(net)
        net.eval()
        prompt_rows = [i for i in rows for _ in range(r.samples_per_prompt)]  # each prompt's samples consecutive
        summaries: list[list[int]] = []
        width = self.cfg.generation.batch_size
        for first in range(0, len(prompt_rows), width):
            padded = self.collate([{"input_ids": self.prompts[i]} for i in prompt_rows[first:first + width]])
            out = family.sample(policy, padded["input_ids"].to(acc.device), padded["attention_mask"].to(acc.device),
                                self.settings)
            summaries += out.ids
        texts = decode_summaries(self.tok, summaries, self.settings)  # the end token reached, whichever, cut
        ended = torch.tensor([bool(s) and s[-1] in self.ends for s in summaries])
        prompts = self.collate([{"input_ids": self.prompts[i]} for i in prompt_rows])
        most = max(1, max(len(s) for s in summaries))
        ids = torch.tensor([s + [self.tok.pad_token_id] * (most - len(s)) for s in summaries])
        mask = torch.tensor([[1] * len(s) + [0] * (most - len(s)) for s in summaries])
        zeros = torch.zeros(ids.shape, dtype=torch.float32, device=acc.device)
        values = isinstance(net, WithValueHead)
        traj = Trajectory(prompt_rows, texts, prompts["input_ids"].to(acc.device), prompts["attention_mask"].to(acc.device),
                          ids.to(acc.device), mask.to(acc.device), zeros.clone(), zeros.clone(), zeros.clone(),
                          zeros.clone() if values else None,
                          self.reward.scores(texts, self.good, r.reward.score).to(acc.device),
                          (torch.tensor([len(s) for s in summaries]) - ended.long()).to(acc.device), ended.to(acc.device))
        for first in range(0, len(prompt_rows), self.micro_rows):
            part = slice(first, first + self.micro_rows)
            batch = traj.batch(part)
            cols = batch["summary_ids"].shape[1]
            scored = family.score_summaries(net, batch["input_ids"], batch["attention_mask"], batch["summary_ids"],
                                            batch["summary_mask"], r.temperature, entropy=True, values=values)
            traj.logprobs[part, :cols], traj.entropy[part, :cols] = scored.logprobs, scored.entropy
            if values:
                traj.values[part, :cols] = scored.values
            traj.ref_logprobs[part, :cols] = self.reference.logprobs(family, policy, batch, r.temperature)
        return traj


