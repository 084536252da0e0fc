"""Reinforcement learning against a reward model (detoxification), as ``train/detox.py`` runs it, for
seq2seq and causal models, full or LoRA, with a KL penalty to the frozen supervised summariser the
run starts from. ``rl.algorithm`` chooses what is made of each step's samples:

- ``rloo``: REINFORCE with a leave-one-out baseline (the other samples of the same prompt), one
  advantage per summary, no value model;
- ``ppo``: a value head on the policy, the KL as a per-token reward penalty, generalised advantage
  estimation over the summary's tokens, whitened advantages, clipped policy and value losses.

One step, on every process: ``train.per_device_batch_size`` train prompts, ``rl.samples_per_prompt``
summaries of each sampled, scored and compared to the reference (``sumtune.rollout``: a named
``Trajectory``); the algorithm turns it into advantages; ``rl.epochs`` passes over the samples, each
of ``rl.minibatches`` optimizer steps of ``train.grad_accum`` micro-batches (rows shuffled between
passes). The run's skeleton (checks, set-up, the cadence after each step, the wrap-up) is the
engine's (``sumtune.engine``); the arithmetic is in ``sumtune.rl``.

The reference is the start itself: for a LoRA run folder, its adapter is merged into the base and a
fresh adapter is trained, so the reference is the policy with the adapter disabled (no extra
memory); for full training it is a frozen copy. Dropout is off in the policy and the reference
(the log-probs must be those of the model that sampled).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from sumtune import data, methods, models, rl
from sumtune.config import RLConfig, RunConfig
from sumtune.distributed import deepspeed_stage
from sumtune.engine import Cadence, Meter, NonFiniteError, OptimizerStep, Position, make_optimizer, open_run, plan_steps
from sumtune.errors import ConfigError, SumtuneError
from sumtune.rewards import Classifier
from sumtune.rollout import Reference, Rollout, RolloutTokens, Trajectory, WithValueHead, gather_named, policy_of
from sumtune.runs import RunFolder
from sumtune.validation import RougeValidator


class KLBlowUp(SumtuneError):
    """The policy drifted further from the reference than ``rl.max_kl`` allows."""


# ----------------------------------------------------------------------------- checks


def check_config(cfg: RunConfig, family=None) -> None:
    """What the RL recipe needs of the shared config, in one line each, before any model loads."""
    t, r = cfg.train, cfg.rl
    if deepspeed_stage() == 3:
        raise ConfigError("train/detox.py with DeepSpeed ZeRO-3: the frozen reference, the merged start and the "
                          "rollouts are not sharded through DeepSpeed here; use a ZeRO-2 or DDP accelerate config")
    rows = t.per_device_batch_size * r.samples_per_prompt
    if rows % (t.grad_accum * r.minibatches):
        raise ConfigError(f"config key 'train.grad_accum': {t.grad_accum} micro-batches x rl.minibatches={r.minibatches} "
                          f"must divide the summaries each process samples per step (train.per_device_batch_size x "
                          f"rl.samples_per_prompt = {rows})")
    if t.dropout not in (None, 0.0):
        raise ConfigError("config key 'train.dropout': the RL recipe runs without dropout (the log-probs must be those "
                          "of the model that sampled); leave it unset or 0")
    m = cfg.model
    if m.method not in ("full", "lora"):
        raise ConfigError(f"config key 'model.method': train/detox.py trains full or lora, got {m.method!r} (the other "
                          "methods are fine-tuning only for now); use model.method=lora")
    if m.lora.init in ("pissa", "olora") and m.method == "lora":
        raise ConfigError(f"config key 'model.lora.init': {m.lora.init} rewrites the base weights, so the policy with "
                          "its adapter switched off would no longer be the reference; use model.lora.init=default")
    start = RunFolder(m.name_or_path)
    if start.kind == "adapter" and not start.adapter_method().mergeable:
        raise ConfigError(f"config key 'model.name_or_path': the start {m.name_or_path} is a "
                          f"{start.adapter_method().name} adapter, which cannot be merged into its "
                          "base; start from a LoRA (or other mergeable) run folder or a full model")
    start.check_prompted_as_trained(cfg)


# ----------------------------------------------------------------------------- the run


def run(cfg: RunConfig) -> dict:
    opened = open_run(cfg, checks=[check_config], positions=False)
    family, r, say = opened.family, cfg.rl, opened.say
    reward = Classifier(r.reward.model, key="rl.reward.model", batch_size=r.reward.batch_size,
                        max_length=r.reward.max_length, trust_remote_code=cfg.model.trust_remote_code)
    good = reward.label(r.reward.label, key="rl.reward.label")
    # The start as one plain model: a LoRA run folder's adapter merged into its base.
    start, tokenizer = RunFolder(cfg.model.name_or_path).load(cfg.model.trust_remote_code, merge=True, dropout=0.0,
                                                              quantization=cfg.model.quantization)
    policy = models.apply_method(start, cfg.model, family)
    models.set_dropout(policy, 0.0)  # LoRA's dropout too
    reference = Reference(policy)
    if r.algorithm == "ppo":
        policy = WithValueHead(policy)
    accelerator = opened.accelerate()
    reward.to(accelerator.device)
    reference.to(accelerator.device)
    (train_records, train_read), (val_records, _) = opened.splits
    encoder = data.prompt_encoder(family, tokenizer, cfg.data)
    encoded = [encoder.encode(rec["dialogue"]) for rec in train_records]
    prompts = [ids for ids, _ in encoded]
    say(f"train: {len(prompts)} prompts; dialogue truncated in {sum(cut for _, cut in encoded)}; "
        f"{train_read.skipped} bad rows skipped")

    plan = rl_plan(len(prompts), accelerator.num_processes, cfg)
    say(f"processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}")
    say(f"plan: {plan.loop_steps} RL steps of {plan.effective_batch} prompts x {r.samples_per_prompt} samples "
        f"({plan.per_device_batch_size} prompts per process); {plan.total_steps} optimizer steps ({r.epochs} passes x "
        f"{r.minibatches} mini-batches per RL step, each over {cfg.train.grad_accum} micro-batches); "
        f"{plan.batches_per_rank_per_epoch} RL steps per pass over the prompts; warmup {plan.warmup_steps}")
    trainable, total = models.count_parameters(policy)
    kind, what = RunFolder(cfg.model.name_or_path).kind, "the policy's adapter disabled" if reference.copy is None else \
        "a frozen copy"
    say(f"model: {family.name} family ({family.model_type}); start {cfg.model.name_or_path} ({kind}"
        f"{', adapter merged' if kind == 'adapter' else ''}); method {cfg.model.method}: {trainable:,} of {total:,} "
        f"parameters trainable{' (the value head included)' if r.algorithm == 'ppo' else ''}; reference: {what}; "
        "dropout off")
    say(f"algorithm: {r.algorithm}; reward: {r.reward.model} ({r.reward.score} of '{r.reward.label}'; labels "
        f"{', '.join(reward.names)})")

    optimizer, scheduler = make_optimizer(policy, cfg.train, plan, methods.lr_scale(cfg.model))  # LoRA+
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by the optimizer step, not by Accelerate

    kl = rl.KLController(r.kl_coef, r.kl_target, r.kl_horizon)
    start_at = opened.ctx.begin(accelerator, extras={"kl_controller": kl})
    if start_at is None:
        from accelerate.utils import set_seed

        set_seed(cfg.train.seed, device_specific=True)  # each process samples its own summaries
    rows = cfg.train.per_device_batch_size * r.samples_per_prompt
    rollout = Rollout(accelerator, policy, reference, reward, good, family, tokenizer, cfg, prompts,
                      micro_rows=rows // (r.minibatches * cfg.train.grad_accum))

    def reward_scores(predictions: list[str]) -> dict:
        logits = reward.logits(predictions)
        score = logits[:, good] if r.reward.score == "logit" else logits.softmax(-1)[:, good]
        return {"val_score": score.mean().item(), "val_bad_share": (logits.softmax(-1)[:, good] < 0.5).float().mean().item()}

    validator = RougeValidator(accelerator, tokenizer, val_records, cfg, family, extra=reward_scores, keep_best=False,
                               generation=replace(cfg.generation, do_sample=False)) if cfg.train.rouge_every else None
    opened.begin_loop()
    metrics = fit(accelerator, policy, optimizer, scheduler, rollout, plan, cfg, kl, opened.ctx, validator, start_at,
                  [rec["dialogue"] for rec in train_records])
    net = accelerator.unwrap_model(policy)
    merged = kind == "adapter" and hasattr(policy_of(net), "merge_and_unload")
    metrics.update(start=cfg.model.name_or_path, algorithm=r.algorithm, reward_model=r.reward.model,
                   reward_label=r.reward.label, kl_coef_final=kl.coef, plan=asdict(plan), rl_steps=plan.loop_steps,
                   saved="full model (the start's adapter and the trained one merged)" if merged else
                   ("adapter" if hasattr(policy_of(net), "disable_adapter") else "full model"))
    # A fresh adapter on a merged start is meaningless without that start, which exists nowhere on
    # disk: the run folder gets the whole merged model instead (loadable without sumtune). A value
    # head stays behind (the run folder holds the summariser).
    final = policy_of(net).merge_and_unload() if merged else (policy_of(net) if r.algorithm == "ppo" else policy)
    return opened.close(final, tokenizer, metrics, trainable=trainable, total=total,
                        summary={k: v for k, v in metrics.items() if k.startswith(("final_", "val_"))},
                        lines=[f"saved {cfg.run_dir} ({metrics.get('saved')}; {plan.loop_steps} RL steps, final KL "
                               f"coefficient {kl.coef:.4g})"])


def rl_plan(prompts: int, num_processes: int, cfg: RunConfig):
    """The step plan of what an RL step consumes: ``per_device_batch_size`` prompts on each process
    (an epoch is a pass over the train prompts; the last partial step is dropped), and
    ``rl.epochs x rl.minibatches`` optimizer steps made of them. ``train.max_steps`` counts RL steps."""
    per_step = cfg.train.per_device_batch_size * num_processes
    return plan_steps(prompts, num_processes, cfg.train, epoch_batches=lambda _: prompts // per_step * num_processes,
                      batches_per_step=1, updates_per_step=cfg.rl.epochs * cfg.rl.minibatches)


def step_prompts(step: int, prompts: int, per_step: int, rank: int, world: int, seed: int) -> list[int]:
    """This process's prompts at RL step ``step``: a function of the step alone (each epoch a fresh
    permutation from the seed), so a resumed run takes the same prompts with nothing to restore."""
    steps_per_epoch = prompts // per_step
    epoch, index = divmod(step, steps_per_epoch)
    order = torch.randperm(prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[index * per_step:(index + 1) * per_step][rank::world]


def fit(accelerator, policy, optimizer, scheduler, rollout: Rollout, plan, cfg: RunConfig, kl: rl.KLController, ctx,
        validate, start: Position | None, dialogues: list[str]) -> dict:
    """THE loop: rollout -> the algorithm's advantages -> updates, and the engine's cadence."""
    from tqdm.auto import tqdm

    acc, r, algorithm = accelerator, cfg.rl, ALGORITHMS[cfg.rl.algorithm]
    step = start.step if start else 0
    update = Update(acc, policy, rollout.family, r, cfg.train.grad_accum, cfg.train.seed)
    optimizer_step = OptimizerStep(acc, policy, optimizer, scheduler, cfg.train.max_grad_norm, update.loss)
    meter = Meter(acc, RolloutTokens())
    if start and start.window:
        meter.restore(start.window)
    bar = tqdm(total=plan.loop_steps, initial=step, disable=not acc.is_main_process, desc="rl", dynamic_ncols=True)
    summariser = policy_of(acc.unwrap_model(policy))  # what validation generates with (no value head)
    cadence = Cadence(acc, cfg.train, plan.loop_steps, ctx.log, meter, summariser, validate, ctx.checkpoint,
                      ctx.preemption, optimizer_step, bar)
    if validate and step == 0:  # the start's scores, for the before/after on validation data
        with meter.aside():
            ctx.log.log(validate(summariser, 0)[0], step=0)
    done, grad_norm = step >= plan.loop_steps, math.nan
    while not done:
        traj = rollout(step_prompts(step, len(rollout.prompts), plan.effective_batch, acc.process_index,
                                    acc.num_processes, cfg.train.seed))
        advantages = algorithm(traj, r, kl.coef, acc)
        policy.train()
        stepped = update.run(traj, advantages, optimizer_step, meter, step, plan.updates_per_step)
        grad_norm = grad_norm if stepped is None else stepped
        step += 1
        stats = step_stats(acc, traj, advantages, update.collected(), r)
        meter.stats(stats)
        if r.max_kl and stats["kl"] > r.max_kl:
            raise KLBlowUp(f"mean KL to the reference reached {stats['kl']:.3g} per summary at step {step}, above "
                           f"rl.max_kl={r.max_kl:g}; last checkpoint: {optimizer_step.last_checkpoint} (lower train.lr "
                           "or raise rl.kl_coef, or set rl.kl_target)")
        kl.update(stats["kl"], len(traj) * acc.num_processes)
        done = cadence.after(step, lambda: {"epoch": round(step / plan.batches_per_rank_per_epoch, 4),  # noqa: B023
                                            "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,  # noqa: B023
                                            "kl_coef": kl.coef, **meter.window()},
                             lambda: Position(step=step, window=meter.carry()),  # noqa: B023
                             lambda s: samples_table(acc, ctx.log, traj, advantages, dialogues, s, r,  # noqa: B023
                                                     s == plan.loop_steps))
    return {**cadence.result(step), **{f"final_{k}": v for k, v in cadence.last.items()}}


# ----------------------------------------------------------------------------- the algorithms


@dataclass
class Advantages:
    """What an algorithm makes of a trajectory."""

    advantages: torch.Tensor  # [rows] (one per summary) or [rows, positions] (one per token)
    returns: torch.Tensor | None  # [rows, positions]: the value head's targets (PPO)
    rewards: torch.Tensor  # [rows]: score - kl_coef x KL - length penalties
    row_advantage: torch.Tensor  # [rows]: per summary (PPO: the mean over its tokens, before whitening)
    kl: torch.Tensor  # [rows]: the summed log-ratio to the reference
    short: torch.Tensor  # [rows]: too short (rl.min_tokens)


def _penalised(traj: Trajectory, r: RLConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score less the length penalties, KL per row, too short) of each row."""
    penalty, short = rl.length_penalties(traj.lengths, traj.ended, r.min_tokens, r.short_penalty, r.missing_eos_penalty)
    return traj.scores - penalty.to(traj.scores.device), traj.kl(), short


def rloo(traj: Trajectory, r: RLConfig, kl_coef: float, accelerator) -> Advantages:
    final, kl, short = _penalised(traj, r)
    rewards = final - kl_coef * kl
    advantages = rl.rloo_advantages(rewards, r.samples_per_prompt)
    return Advantages(advantages, None, rewards, advantages, kl, short)


def ppo(traj: Trajectory, r: RLConfig, kl_coef: float, accelerator) -> Advantages:
    final, kl, short = _penalised(traj, r)
    mask = traj.summary_mask.float()
    rewards = rl.token_rewards(traj.logprobs, traj.ref_logprobs, mask, final, kl_coef)
    advantages, returns = rl.gae(rewards, traj.values, mask, r.gamma, r.lam)
    row = (advantages * mask).sum(1) / mask.sum(1).clamp(min=1)
    reduce = (lambda t: accelerator.reduce(t, reduction="sum")) if accelerator.num_processes > 1 else None
    return Advantages(rl.whiten(advantages, mask, reduce), returns, rewards.sum(1), row, kl, short)


ALGORITHMS = {"rloo": rloo, "ppo": ppo}


class Update:
    """The passes over a step's samples: ``run`` takes ``rl.epochs`` passes of ``rl.minibatches``
    optimizer steps each (the first pass in the order the samples were scored in, later ones
    shuffled by a generator of the seed and step); ``loss(batch)`` is the clipped policy loss
    (+ ``rl.value_coef`` x the clipped value loss)."""

    def __init__(self, accelerator, policy, family, r: RLConfig, grad_accum: int, seed: int):
        self.acc, self.policy, self.family, self.r, self.grad_accum, self.seed = accelerator, policy, family, r, grad_accum, seed
        self.parts: list[dict[str, torch.Tensor]] = []

    def run(self, traj: Trajectory, adv: Advantages, optimizer_step, meter, step: int, updates_per_step: int) -> float | None:
        rows, r = len(traj), self.r
        micro = rows // (r.minibatches * self.grad_accum)
        updates, grad_norm = step * updates_per_step, None
        for epoch in range(r.epochs):
            order = torch.arange(rows) if epoch == 0 else torch.randperm(
                rows, generator=torch.Generator().manual_seed(self.seed * 100003 + step * 101 + epoch))
            for first in range(0, rows, micro):
                index = order[first:first + micro].to(traj.summary_ids.device)
                batch = traj.batch(index)
                width = batch["summary_ids"].shape[1]
                batch["advantages"] = adv.advantages[index][:, :width] if adv.advantages.dim() == 2 else adv.advantages[index]
                if adv.returns is not None:
                    batch["returns"] = adv.returns[index][:, :width]
                result = optimizer_step(batch, updates)
                meter.add(batch, result.loss)
                if result.stepped:
                    updates, grad_norm = updates + 1, float(result.grad_norm)
        return grad_norm

    def loss(self, batch: dict) -> torch.Tensor:
        r, ppo = self.r, "returns" in batch
        scored = self.family.score_summaries(self.policy, batch["input_ids"], batch["attention_mask"],
                                             batch["summary_ids"], batch["summary_mask"], r.temperature, values=ppo)
        loss, clipped = rl.policy_loss(scored.logprobs, batch["old_logprobs"], batch["summary_mask"], batch["advantages"],
                                       r.clip)
        parts = {"clipped_share": clipped.detach()}
        if ppo:
            value, value_clipped = rl.value_loss(scored.values, batch["old_values"], batch["returns"], batch["summary_mask"],
                                                 r.value_clip)
            loss = loss + r.value_coef * value
            parts.update(value_loss=value.detach(), value_clipped_share=value_clipped.detach())
        self.parts.append(parts)
        return loss

    def collected(self) -> dict[str, float]:
        """The means of the step's loss parts over its micro-batches and the processes (a collective)."""
        if not self.parts:
            return {}
        names = list(self.parts[0])
        means = torch.stack([torch.stack([p[n] for p in self.parts]).mean() for n in names]).to(self.acc.device)
        self.parts = []
        return dict(zip(names, self.acc.reduce(means, "mean").tolist()))


def step_stats(acc, traj: Trajectory, adv: Advantages, parts: dict[str, float], r: RLConfig) -> dict[str, float]:
    """The step's statistics over every process's samples (a collective). Non-finite values stop
    the run here, on every process alike."""
    cols = gather_named(acc, {"score": traj.scores, "reward": adv.rewards, "kl": adv.kl, "length": traj.lengths,
                              "short": adv.short, "no_eos": ~traj.ended, "advantage": adv.row_advantage,
                              "entropy_sum": traj.entropy.sum(1), "tokens": traj.summary_mask.sum(1)})
    bad = [name for name, col in cols.items() if not torch.isfinite(col).all()]
    if bad:
        raise NonFiniteError(f"non-finite {', '.join(bad)} in the samples of the last step; lower train.lr, check the "
                             "reward model, or use bf16 rather than fp16")
    out = {"score": cols["score"].mean().item(), "score_std": cols["score"].std().item(),
           "reward": cols["reward"].mean().item(), "kl": cols["kl"].mean().item(),
           "entropy": (cols["entropy_sum"].sum() / cols["tokens"].sum().clamp(min=1)).item(),
           "length": cols["length"].mean().item(), "short_share": cols["short"].mean().item(),
           "no_eos_share": cols["no_eos"].mean().item(), **rl.describe(cols["advantage"], "advantage")}
    keep = ("value_loss", "value_clipped_share") + (("clipped_share",) if r.epochs * r.minibatches > 1 else ())
    return {**out, **{k: v for k, v in parts.items() if k in keep}}


def samples_table(acc, log, traj: Trajectory, adv: Advantages, dialogues: list[str], step: int, r: RLConfig,
                  last: bool) -> None:
    """A few of the main process's samples (every ``rl.samples_every`` steps and at the last):
    dialogue, summary, score, KL, advantage."""
    if not r.samples_every or (step % r.samples_every and not last) or not acc.is_main_process:
        return
    rows = [[step, dialogues[traj.prompt_rows[i]], traj.texts[i], traj.scores[i].item(), adv.kl[i].item(),
             adv.row_advantage[i].item()] for i in range(min(r.samples_rows, len(traj)))]
    log.table("samples", ["step", "dialogue", "summary", "score", "kl", "advantage"], rows, step=step)
