"""Reinforcement learning against a reward model (detoxification), as ``train/detox.py`` runs it:
RLOO (REINFORCE with a leave-one-out baseline, no value model) with a KL penalty to the frozen
supervised summariser the run starts from; for seq2seq and causal models, full or LoRA.

One step, on every process: take ``train.per_device_batch_size`` train prompts, sample
``rl.samples_per_prompt`` summaries of each from the policy, score each summary alone with the
reward model, compute the per-token log-ratio to the reference, turn score - KL penalty - length
penalties into leave-one-out advantages, and update the policy (``rl.epochs`` optimizer steps, each
over ``train.grad_accum`` micro-batches). Resume, checkpoints, preemption, tracking and the final
save are the engine's (``sumtune.engine``); the arithmetic is in ``sumtune.rl``.

The reference is the start itself: for a LoRA run folder, its adapter is merged into the base and a
fresh adapter is trained, so the reference is the policy with the adapter disabled (no extra
memory); for full training it is a frozen copy. Dropout is off in the policy and the reference
(the log-probs must be those of the model that sampled).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from sumtune import checkpoints, data, methods, models, rl, rouge, tracking
from sumtune.config import RunConfig
from sumtune.distributed import check_deepspeed_config, deepspeed_stage, make_accelerator, world_size
from sumtune.engine import Meter, NonFiniteError, OptimizerStep, Position, RunContext, StepPlan, make_optimizer
from sumtune.errors import ConfigError, SumtuneError
from sumtune.generation import decode_summaries
from sumtune.rewards import Classifier


class KLBlowUp(SumtuneError):
    """The policy drifted further from the reference than ``rl.max_kl`` allows."""


# ----------------------------------------------------------------------------- set-up


def check_config(cfg: RunConfig) -> None:
    """What the RL recipe needs of the shared config, in one line each, before any model loads."""
    t, r = cfg.train, cfg.rl
    if deepspeed_stage() == 3:
        raise ConfigError("train/detox.py with DeepSpeed ZeRO-3: the frozen reference, the merged start and the "
                          "rollouts are not sharded through DeepSpeed here; use a ZeRO-2 or DDP accelerate config")
    rows = t.per_device_batch_size * r.samples_per_prompt
    if rows % t.grad_accum:
        raise ConfigError(f"config key 'train.grad_accum': {t.grad_accum} must divide the summaries each process samples "
                          f"per step (train.per_device_batch_size x rl.samples_per_prompt = {rows})")
    if t.dropout not in (None, 0.0):
        raise ConfigError("config key 'train.dropout': the RL recipe runs without dropout (the log-probs must be those "
                          "of the model that sampled); leave it unset or 0")
    m = cfg.model
    if m.method not in ("full", "lora"):
        raise ConfigError(f"config key 'model.method': train/detox.py trains full or lora, got {m.method!r} (the other "
                          "methods are fine-tuning only for now); use model.method=lora")
    if m.method == "lora" and m.lora.init in ("pissa", "olora"):
        raise ConfigError(f"config key 'model.lora.init': {m.lora.init} rewrites the base weights, so the policy with "
                          "its adapter switched off would no longer be the reference; use model.lora.init=default")
    if start_kind(m.name_or_path) == "lora" and not methods.of_adapter(Path(m.name_or_path)).mergeable:
        raise ConfigError(f"config key 'model.name_or_path': the start {m.name_or_path} is a "
                          f"{methods.of_adapter(Path(m.name_or_path)).name} adapter, which cannot be merged into its "
                          "base; start from a LoRA (or other mergeable) run folder or a full model")


def start_kind(path: str) -> str:
    """"lora" (a LoRA run folder: an adapter), "full" (a run folder or a base model)."""
    return "lora" if (Path(path) / "adapter_config.json").is_file() else "full"


def check_prompting(cfg: RunConfig) -> None:
    """A run folder is prompted as it was trained: the same template and limits, or one line."""
    trained = Path(cfg.model.name_or_path) / checkpoints.CONFIG_FILE
    if not trained.is_file():
        return
    import yaml

    saved = (yaml.safe_load(trained.read_text(encoding="utf-8")) or {}).get("data", {})
    for key in ("template", "chat_template", "system_prompt", "chat_date", "turn_separator", "max_source_length"):
        if key in saved and saved[key] != getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}': the start {cfg.model.name_or_path} was trained with "
                              f"{saved[key]!r}, this run has {getattr(cfg.data, key)!r}; prompt the policy as it was "
                              f"trained (data.{key}={saved[key]!r})")


def load_start(cfg: RunConfig, family):
    """(model, tokenizer) of the summariser the run starts from, as one plain model: a LoRA run
    folder's adapter merged into its base, a full run folder or a base model as it is."""
    path, m = cfg.model.name_or_path, cfg.model
    if start_kind(path) == "lora":
        if m.quantization != "none":
            raise ConfigError(f"model.quantization={m.quantization} with a LoRA start ({path}): its adapter is merged into "
                              "the base, which cannot be done exactly in 8/4 bits; start from a full model, or use "
                              "model.quantization=none")
        trained = (Path(path) / checkpoints.CONFIG_FILE)
        import yaml

        base = (yaml.safe_load(trained.read_text(encoding="utf-8")) or {}).get("model", {}).get("name_or_path") \
            if trained.is_file() else None
        start = models.load_adapter(path, base, trust_remote_code=m.trust_remote_code).merge_and_unload()
        tokenizer_from = path if (Path(path) / "tokenizer_config.json").is_file() else start.name_or_path
    else:
        start = models.load_model(path, 0.0, m.quantization, m.trust_remote_code, family)
        tokenizer_from = path
    models.set_dropout(start, 0.0)
    return start, models.load_tokenizer(tokenizer_from, m.trust_remote_code, family)


class Reference:
    """The frozen start the KL is measured against: the policy with its adapter disabled (a PEFT
    policy on the start), or a frozen copy of the start (full training)."""

    def __init__(self, policy):
        self.copy = None
        if not hasattr(policy, "disable_adapter"):
            import copy

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


def rl_plan(prompts: int, num_processes: int, cfg: RunConfig) -> tuple[StepPlan, int]:
    """(the optimizer's plan, RL steps). An RL step takes per_device_batch_size prompts on each
    process (an epoch is a pass over the train prompts; the last partial step is dropped) and makes
    rl.epochs optimizer steps."""
    t = cfg.train
    per_step = t.per_device_batch_size * num_processes
    steps_per_epoch = prompts // per_step
    if steps_per_epoch == 0:
        raise ConfigError(f"config key 'train.per_device_batch_size': {t.per_device_batch_size} prompts x "
                          f"{num_processes} processes per step, but the train split has {prompts}")
    steps = t.max_steps or t.epochs * steps_per_epoch
    total = steps * cfg.rl.epochs
    warmup = t.warmup_steps or int(t.warmup_ratio * total)
    plan = StepPlan(examples=prompts, num_processes=num_processes, per_device_batch_size=t.per_device_batch_size,
                    grad_accum=t.grad_accum, effective_batch=per_step, batches_per_rank_per_epoch=steps_per_epoch,
                    steps_per_epoch=steps_per_epoch * cfg.rl.epochs, epochs=math.ceil(steps / steps_per_epoch),
                    total_steps=total, warmup_steps=min(warmup, total))
    return plan, steps


def step_prompts(step: int, prompts: int, per_step: int, rank: int, world: int, seed: int) -> list[int]:
    """This process's prompts at RL step ``step``: a function of the step alone (each epoch a fresh
    permutation from the seed), so a resumed run takes the same prompts with nothing to restore."""
    steps_per_epoch = prompts // per_step
    epoch, index = divmod(step, steps_per_epoch)
    order = torch.randperm(prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[index * per_step:(index + 1) * per_step][rank::world]


class _Tokens:
    """What the meter counts of an update micro-batch: prompt and summary tokens."""

    @staticmethod
    def count(batch: dict) -> tuple[torch.Tensor, int]:
        real = batch["attention_mask"].sum() + batch["summary_mask"].sum()
        return real, batch["attention_mask"].numel() + batch["summary_mask"].numel()


class Window:
    """The RL statistics of the logging window so far (means of the steps' means); it travels in
    checkpoints, so a run resumed between two logging steps logs what an uninterrupted one does."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def close(self) -> dict[str, float]:
        out = {key: value / self.steps for key, value in self.sums.items()}
        self.sums, self.steps = {}, 0
        return out

    def state(self) -> dict:
        return {"sums": self.sums, "steps": self.steps}

    def restore(self, state: dict) -> None:
        self.sums, self.steps = dict(state["sums"]), int(state["steps"])


# ----------------------------------------------------------------------------- the run


def run(cfg: RunConfig) -> dict:
    ctx = RunContext(cfg)  # output-dir and resume checks, before anything loads
    check_deepspeed_config(cfg)
    check_config(cfg)
    check_prompting(cfg)
    models.check_model_source(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    family = models.model_family(cfg.model.name_or_path, cfg.model)  # an adapter folder: its base's family
    models.check_precision(family, os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    models.check_quantization(cfg.model.quantization, deepspeed_stage())
    splits = None
    if cfg.data.source == "local":  # a bad file is one line before minutes of model loading
        splits = (data.load_split(cfg.data, "train", cfg.data.max_train_examples),
                  data.load_split(cfg.data, "validation", cfg.data.max_eval_examples))

    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)  # the same fresh adapter on every process
    r = cfg.rl
    reward = Classifier(r.reward.model, key="rl.reward.model", batch_size=r.reward.batch_size,
                        max_length=r.reward.max_length, trust_remote_code=cfg.model.trust_remote_code)
    good = reward.label(r.reward.label, key="rl.reward.label")
    # Models are built before the Accelerator (docs/ARCHITECTURE.md: ZeRO-3's untied lm_head).
    start, tokenizer = load_start(cfg, family)
    policy = models.apply_method(start, cfg.model, family)
    models.set_dropout(policy, 0.0)  # LoRA's dropout too
    reference = Reference(policy)
    accelerator = make_accelerator(cfg, grad_accum=cfg.train.grad_accum)
    say = lambda msg: tracking.say(accelerator, msg)  # noqa: E731
    reward.to(accelerator.device)
    reference.to(accelerator.device)

    if splits is None:
        with accelerator.main_process_first():
            splits = (data.load_split(cfg.data, "train", cfg.data.max_train_examples),
                      data.load_split(cfg.data, "validation", cfg.data.max_eval_examples))
    (train_records, train_read), (val_records, _) = splits
    encoder = data.prompt_encoder(family, tokenizer, cfg.data)
    encoded = [encoder.encode(rec["dialogue"]) for rec in train_records]
    prompts = [ids for ids, _ in encoded]
    say(f"train: {len(prompts)} prompts; dialogue truncated in {sum(cut for _, cut in encoded)}; "
        f"{train_read.skipped} bad rows skipped")

    plan, steps = rl_plan(len(prompts), accelerator.num_processes, cfg)
    say(f"processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}")
    say(f"plan: {steps} RL steps of {plan.effective_batch} prompts x {r.samples_per_prompt} samples "
        f"({plan.per_device_batch_size} prompts per process); {plan.total_steps} optimizer steps "
        f"({r.epochs} per RL step, each over {cfg.train.grad_accum} micro-batches); {plan.batches_per_rank_per_epoch} "
        f"RL steps per pass over the prompts; warmup {plan.warmup_steps}")
    trainable, total = models.count_parameters(policy)
    what = "the policy's adapter disabled" if reference.copy is None else "a frozen copy"
    say(f"model: {family.name} family ({family.model_type}); start {cfg.model.name_or_path} ({start_kind(cfg.model.name_or_path)}"
        f"{', adapter merged' if start_kind(cfg.model.name_or_path) == 'lora' else ''}); method {cfg.model.method}: "
        f"{trainable:,} of {total:,} parameters trainable; reference: {what}; dropout off")
    say(f"reward: {r.reward.model} ({r.reward.score} of '{r.reward.label}'; labels {', '.join(reward.names)})")

    optimizer, scheduler = make_optimizer(policy, cfg.train, plan, methods.lr_scale(cfg.model))  # LoRA+
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by the optimizer step, not by Accelerate

    kl = rl.KLController(r.kl_coef, r.kl_target, r.kl_horizon)
    window = Window()
    start_at = ctx.begin(accelerator, extras={"kl_controller": kl, "rl_window": window})
    if start_at is None:
        set_seed(cfg.train.seed, device_specific=True)  # each process samples its own summaries
    loop = Loop(accelerator, policy, optimizer, scheduler, reference, reward, good, family, tokenizer, cfg, prompts,
                [rec["dialogue"] for rec in train_records], kl, window, ctx.log)
    validate = Validator(accelerator, tokenizer, val_records, cfg, family, reward, good) if cfg.train.rouge_every else None
    started = time.perf_counter()
    metrics = loop.fit(plan, steps, start_at, ctx.checkpoint, ctx.preemption, validate)
    if metrics.get("preempted"):
        ctx.exit_preempted(metrics["step"], metrics["checkpoint"])  # exits with 75
    merged = start_kind(cfg.model.name_or_path) == "lora" and hasattr(accelerator.unwrap_model(policy), "merge_and_unload")
    metrics.update(
        family=family.name, model_type=family.model_type, method=cfg.model.method, start=cfg.model.name_or_path,
        reward_model=r.reward.model, reward_label=r.reward.label, kl_coef_final=kl.coef,
        saved="full model (the start's adapter and the trained one merged)" if merged else
        ("adapter" if hasattr(accelerator.unwrap_model(policy), "disable_adapter") else "full model"),
        train_seconds=round(time.perf_counter() - started, 2), trainable_parameters=trainable, total_parameters=total,
        num_processes=accelerator.num_processes, world_size=world_size(), plan=asdict(plan), rl_steps=steps,
    )
    # A fresh adapter on a merged start is meaningless without that start, which exists nowhere on
    # disk: the run folder gets the whole merged model instead (loadable without sumtune).
    final = accelerator.unwrap_model(policy).merge_and_unload() if merged else policy
    ctx.save(final, tokenizer, metrics)
    tracking.set_summary(accelerator, {k: v for k, v in metrics.items() if k.startswith(("final_", "val_"))})
    say(f"saved {cfg.run_dir} ({metrics['saved']}; {steps} RL steps, final KL coefficient {kl.coef:.4g})")
    ctx.finish()  # several processes: exits here, after everything is saved
    return metrics


@dataclass
class Rollout:
    """One step's samples on this process: the update's micro-batches and per-row statistics."""

    batches: list[dict]
    texts: list[str]
    prompt_rows: list[int]
    stats: torch.Tensor  # [rows, len(STAT_COLUMNS)]


STAT_COLUMNS = ("score", "reward", "kl", "length", "short", "no_eos", "advantage", "entropy_sum", "tokens")


class Loop:
    """The RL loop and what it needs. ``fit`` is THE loop; ``rollout`` makes one step's samples."""

    def __init__(self, accelerator, policy, optimizer, scheduler, reference, reward, good, family, tokenizer,
                 cfg: RunConfig, prompts, dialogues, kl, window, log):
        self.acc, self.policy, self.optimizer, self.scheduler = accelerator, policy, optimizer, scheduler
        self.reference, self.reward, self.good, self.family, self.tok = reference, reward, good, family, tokenizer
        self.cfg, self.r, self.prompts, self.dialogues = cfg, cfg.rl, prompts, dialogues
        self.kl, self.window, self.log = kl, window, log
        net = accelerator.unwrap_model(policy)
        self.settings = family.sampling_settings(net, tokenizer, self.r.max_new_tokens, self.r.temperature)
        ends = self.settings.eos_token_id
        self.ends = set(ends if isinstance(ends, list) else [ends])
        self.collate = data.PadCollator(tokenizer.pad_token_id, side=family.prompt_padding())

    def fit(self, plan: StepPlan, steps: int, start: Position | None, checkpoint, preemption, validate) -> dict:
        from tqdm.auto import tqdm

        acc, cfg, r = self.acc, self.cfg, self.r
        step = start.step if start else 0
        updates = step * r.epochs
        clipped: list[torch.Tensor] = []

        def loss_fn(batch: dict) -> torch.Tensor:
            logp, _ = self.family.summary_logprobs(self.policy, batch["input_ids"], batch["attention_mask"],
                                                   batch["summary_ids"], batch["summary_mask"], r.temperature)
            loss, share = rl.policy_loss(logp, batch["old_logprobs"], batch["summary_mask"], batch["advantages"], r.clip)
            clipped.append(share.detach())
            return loss

        optimizer_step = OptimizerStep(acc, self.policy, self.optimizer, self.scheduler, cfg.train.max_grad_norm, loss_fn)
        meter = Meter(acc, _Tokens())
        if start and start.window:
            meter.restore(start.window)
        bar = tqdm(total=steps, initial=step, disable=not acc.is_main_process, desc="rl", dynamic_ncols=True)
        preempted, last, grad_norm = False, {}, math.nan
        if validate and step == 0:  # the start's scores, for the before/after on validation data
            with meter.aside():
                self.log.log(validate(self.policy, 0), step=0)
        while step < steps and not preempted:
            rows = step_prompts(step, len(self.prompts), plan.effective_batch, acc.process_index, acc.num_processes,
                                cfg.train.seed)
            rollout = self.rollout(rows)
            self.policy.train()
            for _ in range(r.epochs):
                for batch in rollout.batches:
                    result = optimizer_step(batch, updates)
                    meter.add(batch, result.loss)
                    if result.stepped:
                        updates, grad_norm = updates + 1, float(result.grad_norm)
            step += 1
            bar.update(1)
            stats = self.step_stats(rollout, clipped)
            clipped.clear()
            self.window.add(stats)
            if r.max_kl and stats["kl"] > r.max_kl:
                raise KLBlowUp(f"mean KL to the reference reached {stats['kl']:.3g} per summary at step {step}, above "
                               f"rl.max_kl={r.max_kl:g}; last checkpoint: {optimizer_step.last_checkpoint} (lower train.lr "
                               "or raise rl.kl_coef, or set rl.kl_target)")
            self.kl.update(stats["kl"], len(rollout.texts) * acc.num_processes)
            if step % cfg.train.log_every == 0 or step == steps:
                last = {"epoch": round(step / plan.batches_per_rank_per_epoch, 4), "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm, **self.window.close(), "kl_coef": self.kl.coef, **meter.window()}
                self.log.log(last, step=step)
                bar.set_postfix(score=f"{last['score']:.3f}", kl=f"{last['kl']:.3f}")
            if r.samples_every and (step % r.samples_every == 0 or step == steps):
                self.samples_table(rollout, step)
            with meter.aside():
                if validate and (step % cfg.train.rouge_every == 0 or step == steps):
                    scores = validate(self.policy, step)
                    self.log.log(scores, step=step)
                    last.update(scores)
            preempted = preemption is not None and preemption.agreed(acc)
            if checkpoint and (preempted or cfg.train.checkpoint_every and (
                    step % cfg.train.checkpoint_every == 0 or step == steps)):
                with meter.aside():
                    optimizer_step.last_checkpoint = checkpoint(step, asdict(Position(step=step, window=meter.carry())))
        bar.close()
        final = {"step": step, "throughput": meter.run(), **{f"final_{k}": v for k, v in last.items()}}
        if preempted:
            return {**final, "preempted": True, "checkpoint": optimizer_step.last_checkpoint}
        return final

    @torch.no_grad()
    def rollout(self, rows: list[int]) -> Rollout:
        """Sample, score and compare to the reference: the micro-batches of the update."""
        acc, r, family = self.acc, self.r, self.family
        net = acc.unwrap_model(self.policy)
        net.eval()
        prompt_rows = [i for i in rows for _ in range(r.samples_per_prompt)]  # each prompt's samples consecutive
        summaries: list[list[int]] = []
        width = self.cfg.generation.batch_size
        for first in range(0, len(prompt_rows), width):
            padded = self.collate([{"input_ids": self.prompts[i]} for i in prompt_rows[first:first + width]])
            out = family.sample(net, padded["input_ids"].to(acc.device), padded["attention_mask"].to(acc.device),
                                self.settings)
            summaries += out.ids
        texts = decode_summaries(self.tok, summaries, self.settings)  # the end token reached, whichever, cut
        ended = torch.tensor([bool(s) and s[-1] in self.ends for s in summaries])
        lengths = torch.tensor([len(s) for s in summaries]) - ended.long()
        scores = self.reward.scores(texts, self.good, r.reward.score)

        size = len(prompt_rows) // self.cfg.train.grad_accum
        batches = []
        for first in range(0, len(prompt_rows), size):
            part = slice(first, first + size)
            batch = self.collate([{"input_ids": self.prompts[i]} for i in prompt_rows[part]])
            ids = summaries[part]
            most = max(1, max(len(s) for s in ids))
            batch["summary_ids"] = torch.tensor([s + [self.tok.pad_token_id] * (most - len(s)) for s in ids])
            batch["summary_mask"] = torch.tensor([[1] * len(s) + [0] * (most - len(s)) for s in ids])
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            batch["old_logprobs"], entropy = family.summary_logprobs(
                net, batch["input_ids"], batch["attention_mask"], batch["summary_ids"], batch["summary_mask"],
                r.temperature, entropy=True)
            batch["ref_logprobs"] = self.reference.logprobs(family, net, batch, r.temperature)
            batch["entropy"] = entropy
            batches.append(batch)

        joined = {key: torch.cat([_pad_to(b[key], max(b[key].shape[1] for b in batches)) for b in batches]).cpu()
                  for key in ("summary_mask", "old_logprobs", "ref_logprobs", "entropy")}
        mask, logp, ref, entropy = (joined["summary_mask"].float(), joined["old_logprobs"], joined["ref_logprobs"],
                                    joined["entropy"])
        kl = rl.sequence_kl(logp, ref, mask)
        penalty, short = rl.length_penalties(lengths, ended, r.min_tokens, r.short_penalty, r.missing_eos_penalty)
        rewards = scores - self.kl.coef * kl - penalty
        advantages = rl.rloo_advantages(rewards, r.samples_per_prompt)
        for first, batch in zip(range(0, len(prompt_rows), size), batches):
            batch["advantages"] = advantages[first:first + size].to(acc.device)
            for key in ("ref_logprobs", "entropy"):
                del batch[key]
        stats = torch.stack([scores, rewards, kl, lengths.float(), short.float(), (~ended).float(), advantages,
                             entropy.sum(1), mask.sum(1)], 1).double()
        return Rollout(batches, texts, prompt_rows, stats)

    def step_stats(self, rollout: Rollout, clipped: list[torch.Tensor]) -> dict[str, float]:
        """The step's statistics over every process's samples (a collective). Non-finite values
        stop the run here, on every process alike."""
        every = self.acc.gather(rollout.stats.to(self.acc.device)).cpu()
        columns = dict(zip(STAT_COLUMNS, every.unbind(1)))
        if not torch.isfinite(every).all():
            bad = [name for name, col in columns.items() if not torch.isfinite(col).all()]
            raise NonFiniteError(f"non-finite {', '.join(bad)} in the samples of the last step; lower train.lr, check the "
                                 "reward model, or use bf16 rather than fp16")
        out = {"score": columns["score"].mean().item(), "score_std": columns["score"].std().item(),
               "reward": columns["reward"].mean().item(), "kl": columns["kl"].mean().item(),
               "entropy": (columns["entropy_sum"].sum() / columns["tokens"].sum().clamp(min=1)).item(),
               "length": columns["length"].mean().item(), "short_share": columns["short"].mean().item(),
               "no_eos_share": columns["no_eos"].mean().item(), **rl.describe(columns["advantage"], "advantage")}
        if self.r.epochs > 1 and clipped:
            out["clipped_share"] = self.acc.reduce(torch.stack(clipped).mean().to(self.acc.device), "mean").item()
        return out

    def samples_table(self, rollout: Rollout, step: int) -> None:
        """A few of the main process's samples: dialogue, summary, score, KL, advantage."""
        if not self.acc.is_main_process:
            return
        rows = []
        for i in range(min(self.r.samples_rows, len(rollout.texts))):
            score, _, kl, _, _, _, advantage, _, _ = rollout.stats[i].tolist()
            rows.append([step, self.dialogues[rollout.prompt_rows[i]], rollout.texts[i], score, kl, advantage])
        self.log.table("samples", ["step", "dialogue", "summary", "score", "kl", "advantage"], rows, step=step)


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


class Validator:
    """Greedy summaries of the first ``train.rouge_examples`` validation dialogues: their reward
    score, the share the reward model calls bad, and ROUGE (the test split is never read)."""

    def __init__(self, accelerator, tokenizer, val_records, cfg: RunConfig, family, reward, good):
        self.acc, self.tok, self.cfg, self.reward, self.good = accelerator, tokenizer, cfg, reward, good
        # Several rows of one dialogue (DialogSum): generated once, scored against all its references.
        self.records = data.scoring_examples(val_records, cfg.eval.references)[:cfg.train.rouge_examples]
        self.encoder = data.prompt_encoder(family, tokenizer, cfg.data)

    def __call__(self, model, step: int) -> dict[str, float]:
        from sumtune.generation import generate

        gen = replace(self.cfg.generation, do_sample=False)
        preds, _ = generate(self.acc, self.acc.unwrap_model(model), self.tok, self.encoder,
                            [r["dialogue"] for r in self.records], gen, progress=False)
        model.train()
        logits = self.reward.logits(preds)
        kind = self.cfg.rl.reward.score
        score = logits[:, self.good] if kind == "logit" else logits.softmax(-1)[:, self.good]
        means = rouge.score_multi(preds, [r["references"] for r in self.records]).means
        scores = {"val_score": score.mean().item(),
                  "val_bad_share": (logits.softmax(-1)[:, self.good] < 0.5).float().mean().item(),
                  **{f"val_{k}": v for k, v in means.items()}}
        self.log_step(scores, step)
        return scores

    def log_step(self, scores: dict, step: int) -> None:
        tracking.say(self.acc, f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
