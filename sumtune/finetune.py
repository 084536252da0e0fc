"""setup -> loop -> save, for every method. ``train/finetune.py`` is the thin entry point."""

from __future__ import annotations

import json
import os
import time

import torch

from sumtune import checkpoints, data, loop, models, preemption, tracking
from sumtune.config import RunConfig, to_dict
from sumtune.distributed import check_deepspeed_config, deepspeed_stage, finish, make_accelerator, world_size
from sumtune.errors import SumtuneError
from sumtune.validation import RougeValidator


def run(cfg: RunConfig) -> dict:
    checkpoints.check_output_dir(cfg)
    resume_from = checkpoints.find_resume_checkpoint(cfg)
    if resume_from:
        checkpoints.check_resumable(cfg, resume_from)
    check_deepspeed_config(cfg)
    models.check_model_source(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    # The family (seq2seq or causal) is read from config.json: a model of neither fails here, before weights load.
    family = models.model_family(cfg.model.name_or_path, cfg.model)
    models.check_precision(family, os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    models.check_quantization(cfg.model.quantization, deepspeed_stage())

    def read_splits():
        return (data.load_split(cfg.data, "train", cfg.data.max_train_examples),
                data.load_split(cfg.data, "validation", cfg.data.max_eval_examples))

    # Local files are read now, so a bad file or row is reported before minutes of model loading;
    # hub datasets once the Accelerator exists, the main process first (it downloads).
    splits = read_splits() if cfg.data.source == "local" else None

    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    # The model is built before the Accelerator: under ZeRO-3 a model created after it loses
    # FLAN-T5's untied lm_head (docs/ARCHITECTURE.md).
    tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code, family)
    base = models.load_model(cfg.model.name_or_path, cfg.train.dropout, cfg.model.quantization, cfg.model.trust_remote_code,
                             family)
    model = models.apply_method(base, cfg.model, family)
    accelerator = make_accelerator(cfg, grad_accum=cfg.train.grad_accum)
    say = lambda msg: tracking.say(accelerator, msg)  # noqa: E731

    if splits is None:
        with accelerator.main_process_first():
            splits = read_splits()
    (train_records, train_read), (val_records, val_read) = splits
    train_feats, train_enc = data.encode_records(train_records, tokenizer, cfg.data, family)
    val_feats, val_enc = data.encode_records(val_records, tokenizer, cfg.data, family)
    say(f"train: {train_enc.describe()}; {train_read.skipped} bad rows skipped")
    say(f"validation: {val_enc.describe()}; {val_read.skipped} bad rows skipped")

    plan = loop.plan_steps(len(train_feats), accelerator.num_processes, cfg.train)
    say(f"processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}")
    say(f"plan: {plan.describe()}")
    trainable, total = models.count_parameters(model)
    quant = f", base in {cfg.model.quantization}" if cfg.model.quantization != "none" else ""
    say(f"model: {family.name} family ({family.model_type}); method {cfg.model.method}{quant}: {trainable:,} of {total:,} "
        "parameters trainable")

    collate = data.make_collator(tokenizer)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    train_lengths = data.example_lengths(train_feats, family)
    train_dl = data.train_loader(train_feats, train_lengths, cfg.train, collate, generator)
    say(data.batching_report(train_lengths, cfg.train, cfg.train.seed))
    val_dl = data.validation_loader(val_feats, data.example_lengths(val_feats, family), cfg.train, collate,
                                    accelerator.num_processes)
    optimizer, scheduler = loop.make_optimizer(model, cfg.train, plan)
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    # The scheduler is stepped by the loop, not by Accelerate (see loop.make_optimizer), so it is
    # registered for save_state/load_state by hand.
    accelerator.register_for_checkpointing(scheduler)

    run_dir = cfg.run_dir
    validator = RougeValidator(accelerator, tokenizer, val_records, cfg, family) if cfg.train.rouge_every else None
    start = None
    if resume_from:
        state = json.loads((resume_from / checkpoints.STATE_FILE).read_text())
        if state["num_processes"] != accelerator.num_processes:
            raise SumtuneError(f"cannot resume from {resume_from}: it ran on {state['num_processes']} processes, "
                               f"this launch has {accelerator.num_processes}; the data order would differ")
        accelerator.load_state(str(resume_from))
        start = loop.Position(**state["position"])
        if validator and state.get("validator"):
            validator.restore(state["validator"])
        say(f"resuming from {resume_from} at step {start.step}")
    elif accelerator.is_main_process:
        checkpoints.clear_finished(run_dir)  # only reached for a new run or with overwrite=true
    if accelerator.is_main_process:
        checkpoints.write_config(cfg, run_dir)
    tracking.start(accelerator, cfg.tracker, cfg.run_name, run_dir, to_dict(cfg), job_type="train")
    log = tracking.RunLog(accelerator, run_dir / "train_log.jsonl", resume_step=start.step if start else None)

    def checkpoint(step: int, position: dict) -> str:
        state = {"position": position, "num_processes": accelerator.num_processes,
                 "validator": validator.state() if validator else None}
        return str(checkpoints.save_checkpoint(accelerator, cfg, step, state))

    if accelerator.is_main_process:
        (run_dir / preemption.MARKER).unlink(missing_ok=True)
    signals = preemption.Preemption().install()
    started = time.perf_counter()
    metrics = loop.fit(accelerator, model, optimizer, scheduler, train_dl, val_dl, plan, cfg.train, log, family, validator,
                       checkpoint=checkpoint, start=start, generator=generator, preemption=signals)
    if metrics.get("preempted"):
        if accelerator.is_main_process:
            preemption.mark_preempted(run_dir, metrics["step"], metrics["checkpoint"])
        say(f"{signals.signal_name or 'a preemption signal (on another rank)'} received: checkpoint {metrics['checkpoint']} written at step "
            f"{metrics['step']}; exiting with {preemption.EXIT_PREEMPTED}; start again with resume=auto to continue")
        accelerator.wait_for_everyone()  # the marker is written before any rank exits
        signals.uninstall()
        finish(accelerator, exit_code=preemption.EXIT_PREEMPTED)  # several processes: exits here
        raise SystemExit(preemption.EXIT_PREEMPTED)
    if validator:
        metrics.update(validator.summary())
        say(f"best {cfg.train.best_metric} {validator.best:.4f} at step {validator.best_step} -> {validator.best_dir}")
    metrics.update(
        family=family.name,
        model_type=family.model_type,
        method=cfg.model.method,
        quantization=cfg.model.quantization,
        base_model=cfg.model.name_or_path,
        train_seconds=round(time.perf_counter() - started, 2),
        trainable_parameters=trainable,
        total_parameters=total,
        num_processes=accelerator.num_processes,
        world_size=world_size(),
        truncated={"train": vars(train_enc), "validation": vars(val_enc)},
    )
    checkpoints.save_run(accelerator, model, tokenizer, cfg, metrics)
    tracking.set_summary(accelerator, {"final_train_loss": metrics["train_loss"], "final_val_loss": metrics.get("val_loss"),
                                       **({k: v for k, v in metrics.items() if k.startswith("best_")})})
    speed = metrics["throughput"]
    say(f"training steps: {speed['real_tokens_per_s']:,.0f} real tokens/s, {speed['samples_per_s']:.1f} samples/s, "
        f"{speed['real_token_share']:.1%} of token positions real")
    say(f"saved {run_dir} (train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f})")
    finish(accelerator)  # several processes: exits here, after everything is saved
    return metrics
