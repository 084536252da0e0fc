"""Supervised fine-tuning: setup -> fit -> save, for every method (full fine-tuning and every adapter
method of sumtune.methods, on full-precision or k-bit bases: one loop over different models).
``train/finetune.py`` is the thin entry point; what every recipe shares (resume, checkpoints,
preemption, the optimizer step, the meter) is in ``sumtune.engine``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch

from sumtune import batching, data, methods, models
from sumtune.config import RunConfig, TrainConfig
from sumtune.distributed import deepspeed_stage
from sumtune.engine import (
    Cadence,
    Meter,
    OptimizerStep,
    Position,
    StepPlan,
    TokenWeightedLoss,
    make_optimizer,
    open_run,
    plan_steps,
    validation_loss,
)
from sumtune.tracking import RunLog
from sumtune.validation import RougeValidator


def run(cfg: RunConfig) -> dict:
    # The support matrix (sumtune.methods) is refused in one line, before weights load.
    opened = open_run(cfg, checks=[lambda cfg, family: methods.check(cfg, family, deepspeed_stage())])
    family, say = opened.family, opened.say
    tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code, family)
    base = models.load_model(cfg.model.name_or_path, cfg.train.dropout, cfg.model.quantization, cfg.model.trust_remote_code,
                             family, cfg.model.attn_implementation)
    accelerator = opened.accelerate()
    (train_records, train_read), (val_records, val_read) = opened.splits
    train_feats, train_enc = data.encode_records(train_records, tokenizer, cfg.data, family)
    val_feats, val_enc = data.encode_records(val_records, tokenizer, cfg.data, family)
    say(f"train: {train_enc.describe()}; {train_read.skipped} bad rows skipped{train_read.describe_normalised()}")
    say(f"validation: {val_enc.describe()}; {val_read.skipped} bad rows skipped{val_read.describe_normalised()}")
    say(data.tokenizer_notes(tokenizer, cfg.data))

    seam = batching.Batching(data.example_lengths(train_feats, family), cfg.train, family, tokenizer)
    plan = plan_steps(len(train_feats), accelerator.num_processes, cfg.train, seam.epoch_batches)
    say(f"processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}")
    say(f"plan: {plan.describe()}")
    # Wrapped once the plan exists (AdaLoRA lays its rank budget out over plan.total_steps); peft
    # adds plain modules, so doing it after the Accelerator exists is safe under ZeRO-3 too.
    model = models.apply_method(base, cfg.model, family, plan.total_steps)
    trainable, total = models.count_parameters(model)
    quant = f", base in {cfg.model.quantization}" if cfg.model.quantization != "none" else ""
    say(f"model: {family.name} family ({family.model_type}); method {cfg.model.method}{quant}: {trainable:,} of {total:,} "
        "parameters trainable")

    if cfg.train.batching == "packed":  # refused in one line (a probe runs on every rank) before any step
        family.check_packing(model, getattr(model, "active_peft_config", None))
    generator = torch.Generator().manual_seed(cfg.train.seed)
    train_dl = seam.loader(train_feats, generator)
    say(seam.report())
    # Validation batches stay padded, whatever the training batching: the validation loss means the same.
    val_dl = data.validation_loader(val_feats, data.example_lengths(val_feats, family), cfg.train,
                                    data.make_collator(tokenizer), accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, cfg.train, plan, methods.lr_scale(cfg.model))
    if cfg.train.compile:  # in place: the module (and its saved weights' names) stay as they are
        model.compile()
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    # The scheduler is stepped by the optimizer step, not by Accelerate (see engine.make_optimizer),
    # so it is registered for save_state/load_state by hand.
    accelerator.register_for_checkpointing(scheduler)
    hook = methods.step_hook(model, cfg.model, accelerator)  # AdaLoRA's budget (checkpointed with the run); else None
    penalty = methods.loss_penalty(model, cfg.model, accelerator)  # AdaLoRA's orthogonality term; else None

    validator = RougeValidator(accelerator, tokenizer, val_records, cfg, family) if cfg.train.rouge_every else None
    ctx = opened.ctx
    start = ctx.begin(accelerator, extras={"validator": validator})  # resume, config, tracker, log, signals
    if accelerator.is_main_process:  # what the prompts really were: chat template, system message, date, separators
        (cfg.run_dir / data.PROMPT_EXAMPLE_FILE).write_text(
            data.render_example(data.prompt_encoder(family, tokenizer, cfg.data), family, tokenizer, train_records[0],
                                cfg.data), encoding="utf-8")
    opened.begin_loop()
    metrics = fit(accelerator, model, optimizer, scheduler, train_dl, val_dl, plan, cfg.train, ctx.log, family, validator,
                  checkpoint=ctx.checkpoint, start=start, generator=generator, preemption=ctx.preemption, hook=hook,
                  penalty=penalty)
    if validator and not metrics.get("preempted"):
        metrics.update(validator.summary())
        say(f"best {cfg.train.best_metric} {validator.best:.4f} at step {validator.best_step} -> {validator.best_dir}")
    metrics.update(quantization=cfg.model.quantization, base_model=cfg.model.name_or_path,
                   truncated={"train": vars(train_enc), "validation": vars(val_enc)})
    speed = metrics["throughput"]
    return opened.close(model, tokenizer, metrics, trainable=trainable, total=total, summary={
        "final_train_loss": metrics["train_loss"], "final_val_loss": metrics.get("val_loss"),
        **({k: v for k, v in metrics.items() if k.startswith("best_")})}, lines=[
        f"training steps: {speed['real_tokens_per_s']:,.0f} real tokens/s, {speed['samples_per_s']:.1f} samples/s, "
        f"{speed['real_token_share']:.1%} of token positions real",
        f"saved {cfg.run_dir} (train loss {metrics['train_loss']:.4f}, val loss {metrics.get('val_loss', float('nan')):.4f})"])


def fit(accelerator, model, optimizer, scheduler, train_dl, val_dl, plan: StepPlan, cfg: TrainConfig, log: RunLog,
        family, validate: Callable[[torch.nn.Module, int], tuple[dict, bool]] | None = None,
        checkpoint: Callable[[int, dict], str] | None = None, start: Position | None = None,
        generator: torch.Generator | None = None, preemption=None, hook: Callable[[int], None] | None = None,
        penalty: Callable[[], torch.Tensor] | None = None) -> dict:
    """Train until ``plan.total_steps`` optimizer steps; returns the final metrics.

    ``validate(model, step)`` (ROUGE on validation data) runs every ``cfg.rouge_every`` steps and
    at the end; it may ask to stop early, which every rank must agree on. ``checkpoint(step,
    position)`` runs every ``cfg.checkpoint_every`` steps and at the end. ``start`` resumes from
    a checkpoint's position; ``generator`` is the training data's shuffling generator. When
    ``preemption`` (sumtune.preemption.Preemption) was signalled on any rank, the loop
    checkpoints at the step boundary and returns with ``preempted`` set (engine.Cadence).
    ``hook(step)`` runs on each optimizer step (engine.OptimizerStep); ``penalty()`` is added to
    each micro-batch's loss (engine.TokenWeightedLoss).
    """
    from tqdm.auto import tqdm

    pos = start or Position()
    step, epoch, skip, resume_generator = pos.step, pos.epoch, pos.batches_in_epoch, pos.generator_state
    loss = TokenWeightedLoss(accelerator, model, family, cfg.chunk_size if cfg.loss == "chunked" else 0, penalty)
    optimizer_step = OptimizerStep(accelerator, model, optimizer, scheduler, cfg.max_grad_norm, loss, hook)
    meter = Meter(accelerator, family, weighted=True)
    if pos.window:
        meter.restore(pos.window)
    bar = tqdm(total=plan.total_steps, initial=step, disable=not accelerator.is_main_process, desc="train",
               dynamic_ncols=True)
    cadence = Cadence(accelerator, cfg, plan.total_steps, log, meter, model, validate, checkpoint, preemption,
                      optimizer_step, bar)

    def held_out(step: int) -> None:
        if val_dl is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < plan.total_steps:
            log.log({"val_loss": validation_loss(accelerator, model, val_dl, family, cfg.eval_max_batches)}, step=step)

    done = step >= plan.total_steps
    model.train()
    while not done:
        if generator is not None:
            if resume_generator is not None:
                generator.set_state(torch.tensor(resume_generator, dtype=torch.uint8))
                resume_generator = None
            epoch_generator = generator.get_state().tolist()
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        batches_in_epoch, skip = skip, 0
        for window in accumulation_windows(loader, cfg.grad_accum):
            loss.begin(window)  # the step's target tokens, over every rank, before its first backward
            # The window's last batch completes the optimizer step, however short the window (the
            # end of an epoch): Accelerate's counter is set so that it syncs there.
            accelerator.step = cfg.grad_accum - len(window)
            for batch in window:
                batches_in_epoch += 1
                result = optimizer_step(batch, step)
                meter.add(batch, *loss.last)
            assert result.stepped, "an accumulation window ended without an optimizer step"
            step, grad_norm = step + 1, float(result.grad_norm)
            done = cadence.after(step, lambda: {"epoch": round(step / plan.steps_per_epoch, 4),  # noqa: B023
                                                "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,  # noqa: B023
                                                **meter.window()},
                                 lambda: Position(step, epoch, batches_in_epoch,  # noqa: B023
                                                  epoch_generator if generator is not None else None,  # noqa: B023
                                                  meter.carry()),
                                 held_out)
            if done:
                break
        else:
            epoch += 1
    final = {**cadence.result(step), "train_loss": cadence.last.get("loss")}
    if cadence.preempted:
        return final
    if val_dl is not None:
        final["val_loss"] = validation_loss(accelerator, model, val_dl, family, cfg.eval_max_batches)
        log.log({"val_loss": final["val_loss"]}, step=step)
    final["plan"] = asdict(plan)
    return final


def accumulation_windows(loader, size: int):
    """The loader's batches in lists of ``size`` (the micro-batches of one optimizer step), the
    last one shorter at the end of an epoch. A resumed epoch starts at a window boundary
    (checkpoints are taken after optimizer steps)."""
    window = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window
