"""One measurement of ``bench/step.py`` per process: ``python bench/step_workers.py KIND '<json args>'``.

Prints one line ``RESULT {json}``; the parent adds the process's peak RSS (``os.wait4``). Kinds:

- ``sumtune``: ``sumtune.recipes.finetune.run`` (what train/finetune.py calls) on the demo's T5 or
  decoder-only model, with ``train.batching`` / ``train.max_tokens`` / ``train.loss`` as given.
- ``trl``: trl's ``SFTTrainer`` on the demo's decoder-only model, fed sumtune's own encoding of the
  same examples (prompt and completion ids from ``sumtune.data.encode_records``) in trl's processed
  prompt-completion form (``input_ids`` + ``completion_mask``, ``completion_only_loss=True``).
- ``seq2seq``: transformers' ``Seq2SeqTrainer`` on the demo T5, the same features.
- ``memory``: ONE training step (sumtune's ``Family.loss``, backward, AdamW step) of a Qwen2-shaped
  model with a 151,936-token vocabulary, ``train.loss`` plain or chunked.

The training clock is the same span for everyone: from the start of the training loop (sumtune:
``finetune.fit`` is entered, after the model, data and optimizer are set up; the Trainers: their
``on_train_begin`` callback, also after set-up) to the end of the last optimizer step (sumtune: the
final validation pass ``fit`` starts after its loop; the Trainers: ``on_train_end``). Real tokens are
the non-pad tokens of the training batches (a decoder-only example once: prompt + summary; a T5
example: dialogue + summary), counted from the batches each framework built.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def config(args: dict):
    """The demo config (full fine-tuning) with the benchmark's overrides: training steps only."""
    from sumtune.config import load_config

    data = args["data"]
    return load_config(REPO / "configs/train/demo_full.yaml", [
        f"model.name_or_path={args['model']}", "model.method=full",
        f"data.files={{train: {data}/train.jsonl, validation: {data}/validation.jsonl, test: {data}/test.jsonl}}",
        f"data.max_train_examples={args.get('examples', 0)}", "data.max_eval_examples=8",
        f"run_name={args['run_name']}", f"output_dir={args['out']}", "overwrite=true",
        f"train.max_steps={args['steps']}", f"train.per_device_batch_size={args['batch']}",
        f"train.grad_accum={args.get('grad_accum', 1)}",
        f"train.lr={args['lr']}", f"train.warmup_steps={args['warmup']}", "train.log_every=1",
        f"train.batching={args.get('batching', 'grouped')}", f"train.max_tokens={args.get('max_tokens', 0)}",
        f"train.loss={args.get('loss', 'plain')}", f"train.chunk_size={args.get('chunk_size', 1024)}",
        f"train.compile={str(args.get('compile', False)).lower()}",
        "train.rouge_every=0", "train.eval_every=0", "train.eval_max_batches=1", "train.checkpoint_every=0",
        "tracker.backend=none",
    ])


def features(cfg):
    """(tokenizer, family, training features) exactly as sumtune's recipe builds them."""
    from sumtune import data, models

    family = models.model_family(cfg.model.name_or_path, cfg.model)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code, family)
    records, _ = data.load_split(cfg.data, "train", cfg.data.max_train_examples)
    return tokenizer, family, data.encode_records(records, tokenizer, cfg.data, family)[0]


HELDOUT = 96  # validation examples every run's final weights are scored on


def heldout_loss(cfg, model) -> float:
    """The token-weighted loss of the final weights on the first HELDOUT validation examples, the
    same examples, padded batches and function (sumtune.engine.validation_loss) for every
    framework: the like-for-like quality check (the runs' training losses are over different batches)."""
    import dataclasses

    from sumtune import data, families, models
    from sumtune.engine import validation_loss

    class OneProcess:  # what validation_loss asks of an Accelerator, for one process
        @staticmethod
        def gather_for_metrics(rows):
            return rows

    family = families.of_model(model)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code, family)
    records, _ = data.load_split(cfg.data, "validation", HELDOUT)
    feats, _ = data.encode_records(records, tokenizer, cfg.data, family)
    loader = data.validation_loader(feats, data.example_lengths(feats, family),
                                    dataclasses.replace(cfg.train, eval_max_batches=0), data.make_collator(tokenizer), 1)
    return validation_loss(OneProcess(), model, loader, family)


def tail_loss(losses: list[float]) -> float:
    """Mean of the per-step training losses over the last quarter of the steps."""
    keep = losses[-max(1, len(losses) // 4):]
    return sum(keep) / len(keep)


def attention(model) -> str:
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(net.config, "_attn_implementation", "?"))


def run_sumtune(args: dict) -> dict:
    from sumtune import families
    from sumtune.recipes import finetune

    cfg = config(args)
    clock, seen = {}, {}
    fit, validation_loss = finetune.fit, finetune.validation_loss

    def timed_fit(accelerator, model, *a, **k):
        seen["attention"] = attention(families.base.unwrap(model))
        seen["model"] = model
        clock["start"] = time.perf_counter()
        try:
            return fit(accelerator, model, *a, **k)
        finally:
            clock.setdefault("end", time.perf_counter())

    def timed_validation(*a, **k):  # fit's loop is over when its final validation pass starts
        clock.setdefault("end", time.perf_counter())
        return validation_loss(*a, **k)

    finetune.fit, finetune.validation_loss = timed_fit, timed_validation  # looked up at call time
    metrics = finetune.run(cfg)
    log = [json.loads(x) for x in (cfg.run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in log if "loss" in r]
    seconds = clock["end"] - clock["start"]
    meter = metrics["throughput"]
    return {"seconds": round(seconds, 3), "real_tokens": meter["real_tokens"], "samples": meter["samples"],
            "token_positions": meter["token_positions"], "real_tokens_per_s": round(meter["real_tokens"] / seconds, 1),
            "own_meter_real_tokens_per_s": meter["real_tokens_per_s"], "steps": len(losses),
            "tail_loss": tail_loss(losses), "losses": losses, "attention": seen.get("attention"),
            "heldout_loss": heldout_loss(cfg, seen["model"])}


class Counter:
    """Counts the real tokens, positions and samples of the batches a Trainer trains on, read in its
    ``compute_loss`` (not in the collate function, which may be called for batches never trained on);
    ``seq2seq``: the summaries, not part of the input, count too."""

    def __init__(self, trainer, seq2seq: bool = False):
        self.seq2seq = seq2seq
        self.real = self.positions = self.samples = 0
        compute_loss = trainer.compute_loss

        def counted(model, inputs, *a, **k):
            if model.training:
                self.add(inputs)
            return compute_loss(model, inputs, *a, **k)

        trainer.compute_loss = counted

    def add(self, batch) -> None:
        if "attention_mask" not in batch:  # padding-free: one flat row, every token real
            self.real += batch["input_ids"].numel()
            self.samples += int((batch["position_ids"] == 0).sum())
        else:
            self.real += int(batch["attention_mask"].sum())
            self.samples += batch["input_ids"].shape[0]
        self.positions += batch["input_ids"].numel()
        if self.seq2seq:
            self.real += int((batch["labels"] != -100).sum())
            self.positions += batch["labels"].numel()


def trainer_clock():
    from transformers import TrainerCallback

    clock = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            clock["end"] = time.perf_counter()

    return clock, Clock()


def trainer_result(trainer, counter: Counter, clock: dict, model, cfg) -> dict:
    seconds = clock["end"] - clock["start"]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"seconds": round(seconds, 3), "real_tokens": counter.real, "samples": counter.samples,
            "token_positions": counter.positions, "real_tokens_per_s": round(counter.real / seconds, 1),
            "steps": trainer.state.global_step, "tail_loss": tail_loss(losses), "losses": losses,
            "attention": attention(model), "heldout_loss": heldout_loss(cfg, model)}


def run_trl(args: dict) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sumtune import models

    cfg = config(args)
    torch.manual_seed(cfg.train.seed)
    tokenizer, family, feats = features(cfg)
    model = models.load_model(cfg.model.name_or_path, cfg.train.dropout, "none", False, family)
    # trl's processed prompt-completion form: the ids of prompt + completion (sumtune's, EOS included)
    # and which of them are the completion; completion_only_loss turns the mask into labels.
    rows = [{"input_ids": f["input_ids"], "completion_mask": [int(x != -100) for x in f["labels"]]} for f in feats]
    train = datasets.Dataset.from_list(rows)
    packed = args["packed"]
    clock, callback = trainer_clock()
    sft = SFTConfig(
        output_dir=str(Path(args["out"]) / args["run_name"]), bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=False,  # trl's default is on; sumtune does not checkpoint activations
        completion_only_loss=True, packing=packed, packing_strategy="bfd", max_length=args["max_tokens"] if packed else None,
        per_device_train_batch_size=1 if packed else cfg.train.per_device_batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        max_steps=cfg.train.max_steps, warmup_steps=cfg.train.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=cfg.train.max_grad_norm, logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
        seed=cfg.train.seed, disable_tqdm=True, dataset_num_proc=None,
        train_sampling_strategy="random" if packed else "group_by_length",
    )
    trainer = SFTTrainer(model=model, args=sft, train_dataset=train, processing_class=tokenizer, callbacks=[callback])
    counter = Counter(trainer)
    trainer.train()
    return {**trainer_result(trainer, counter, clock, model, cfg), "padding_free": bool(trainer.padding_free),
            "packed_rows": len(trainer.train_dataset) if packed else None}


def run_seq2seq(args: dict) -> dict:
    import datasets
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from sumtune import models

    cfg = config(args)
    torch.manual_seed(cfg.train.seed)
    tokenizer, family, feats = features(cfg)
    model = models.load_model(cfg.model.name_or_path, cfg.train.dropout, "none", False, family)
    train = datasets.Dataset.from_list(feats)
    collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    clock, callback = trainer_clock()
    targs = Seq2SeqTrainingArguments(
        output_dir=str(Path(args["out"]) / args["run_name"]), per_device_train_batch_size=cfg.train.per_device_batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        max_steps=cfg.train.max_steps, warmup_steps=cfg.train.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=cfg.train.max_grad_norm, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to=[], seed=cfg.train.seed, use_cpu=True, disable_tqdm=True, train_sampling_strategy="group_by_length",
    )
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=train, data_collator=collate,
                             processing_class=tokenizer, callbacks=[callback])
    counter = Counter(trainer, seq2seq=True)
    trainer.train()
    return trainer_result(trainer, counter, clock, model, cfg)


def run_memory(args: dict) -> dict:
    """Peak memory of one training step at a Qwen2.5-sized vocabulary (random weights).

    Resident memory is read from /proc: VmHWM (the high-water mark) is reset by writing 5 to
    /proc/self/clear_refs just before the step, so the peak it reports afterwards is the step's."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sumtune.families.causal import CausalFamily

    torch.manual_seed(0)
    shape = args["shape"]
    config_ = Qwen2Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["hidden"] * 4,
                          num_hidden_layers=shape["layers"], num_attention_heads=4, num_key_value_heads=2,
                          tie_word_embeddings=True, max_position_embeddings=4096)
    model = Qwen2ForCausalLM(config_)
    model.train()
    family = CausalFamily("qwen2")
    b, n, t = shape["batch"], shape["seq"], shape["labelled"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab"], (b, n), generator=g)
    labels = ids.clone()
    labels[:, : n - t] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, n, dtype=torch.long), "labels": labels}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    chunk = shape["chunk_size"] if args["loss"] == "chunked" else 0
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = status_kib("VmRSS")
    start = time.perf_counter()
    loss_sum, tokens = family.loss(model, batch, chunk)
    (loss_sum / tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    return {"loss": args["loss"], "chunk_size": chunk, "mean_loss": float(loss_sum / tokens), "target_tokens": int(tokens),
            "rss_before_step_mib": round(before / 1024, 1), "step_peak_rss_mib": round(peak / 1024, 1),
            "added_by_step_mib": round((peak - before) / 1024, 1) if reset else None, "hwm_reset": reset,
            "seconds": round(seconds, 2), "parameters": sum(p.numel() for p in model.parameters()),
            "attention": attention(model)}


if __name__ == "__main__":
    kind, raw = sys.argv[1], json.loads(sys.argv[2])
    runs = {"sumtune": run_sumtune, "trl": run_trl, "seq2seq": run_seq2seq, "memory": run_memory}
    emit({"kind": kind, **runs[kind](raw)})
