"""One benchmark measurement per process: ``python bench/workers.py KIND '<json args>'``.

Each worker prints one JSON line (prefixed ``RESULT``) for ``bench/run.py``. Kinds:

- ``sumtune``: sumtune's own training (``sumtune.recipes.finetune.run``, what train/finetune.py calls).
- ``hf``: the same model, features, batch, learning rate and steps through
  ``transformers.Seq2SeqTrainer`` (its defaults, or ``train_sampling_strategy=group_by_length``).
- ``generate``: the generation strategies (data-order batches, length-sorted batches, the family's
  own decoder: refill or continuous; optionally transformers' ``generate_batch``), same model and
  dialogues, in turns, several rounds.
- ``rouge``: ROUGE scoring time for N pairs, one process vs a pool.

Both training workers start from the same demo base model and the same tokenised features
(sumtune.data.encode_records), and end by computing the held-out loss of their final weights with
the same function, so "same quality" is checked on data neither trained on.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class TrainingMemory:
    """Resident memory while ``sumtune.recipes.finetune.fit`` runs, sampled every 5 ms by a thread: what
    training adds (gradients, optimizer states, activations) on top of the loaded model,
    without the peaks of loading or saving."""

    def __init__(self):
        self.at_start = self.peak = 0.0

    def wrap(self, fit):
        import threading

        def measured(*args, **kwargs):
            self.at_start = self.peak = rss_mib()
            done = threading.Event()

            def sample():
                while not done.wait(0.005):
                    self.peak = max(self.peak, rss_mib())

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                return fit(*args, **kwargs)
            finally:
                done.set()
                thread.join()
                self.peak = max(self.peak, rss_mib())

        return measured


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def bench_config(args: dict):
    """The demo full fine-tuning config with the benchmark's overrides: nothing but training steps
    (no ROUGE, no validation passes, no checkpoints, no tracker)."""
    from sumtune.config import load_config

    return load_config(REPO / "configs/train/demo_full.yaml", [
        f"model.name_or_path={args['model']}", f"model.method={args.get('method', 'full')}",
        f"model.quantization={args.get('quantization', 'none')}",
        f"data.files={{train: {args['data']}/train.jsonl, validation: {args['data']}/validation.jsonl, "
        f"test: {args['data']}/test.jsonl}}",
        f"data.max_source_length={args.get('max_source_length', 384)}",
        f"run_name={args['run_name']}", f"output_dir={args['out']}", "overwrite=true",
        f"train.max_steps={args['steps']}", f"train.per_device_batch_size={args['batch']}",
        f"train.lr={args['lr']}", f"train.warmup_steps={args['warmup']}", f"train.log_every={args['log_every']}",
        f"train.batching={'grouped' if args.get('grouped', True) else 'random'}",
        "train.rouge_every=0", "train.eval_every=0", "train.checkpoint_every=0", "tracker.backend=none",
    ])


def heldout_loss(model, features: list[dict], collate, batch_size: int = 32) -> float:
    """Token-weighted mean loss over ``features`` (the validation split), as sumtune's loop
    computes its validation loss."""
    from accelerate import Accelerator

    from sumtune.engine import validation_loss

    batches = (collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size))
    from sumtune import families

    return validation_loss(Accelerator(cpu=True), model, batches, families.of_model(model))


def features(cfg, tokenizer, split: str):
    from sumtune import data, models

    records, _ = data.load_split(cfg.data, split)
    return data.encode_records(records, tokenizer, cfg.data, models.model_family(cfg.model.name_or_path, cfg.model))[0]


def tail_loss(losses: list[float]) -> float:
    """Mean of the logged training losses over the last quarter of the run."""
    keep = losses[-max(1, len(losses) // 4):]
    return sum(keep) / len(keep)


def run_sumtune(args: dict) -> dict:
    from sumtune import data, models
    from sumtune.recipes import finetune

    cfg = bench_config(args)
    memory = TrainingMemory()
    if args.get("sample_memory"):  # only in the memory runs: the sampling thread costs training time
        finetune.fit = memory.wrap(finetune.fit)  # run() looks fit up in its module at call time
    metrics = finetune.run(cfg)
    log = [json.loads(x) for x in (cfg.run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    tokenizer = models.load_tokenizer(str(cfg.run_dir))
    result = {"train": metrics["throughput"], "tail_loss": tail_loss([r["loss"] for r in log if "loss" in r]),
              "trainable_parameters": metrics["trainable_parameters"],
              **({"rss_at_training_start_mib": round(memory.at_start, 1), "rss_peak_in_training_mib": round(memory.peak, 1)}
                 if args.get("sample_memory") else {})}
    if args.get("heldout", True) and args.get("method", "full") == "full":
        model = models.load_model(str(cfg.run_dir))
        result["heldout_loss"] = heldout_loss(model, features(cfg, tokenizer, "validation"), data.make_collator(tokenizer))
    return result


def run_hf(args: dict) -> dict:
    import datasets
    from step_workers import trainer_clock  # bench/ is this script's folder, first on sys.path
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from sumtune import data, models

    cfg = bench_config(args)
    torch.manual_seed(cfg.train.seed)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model = models.load_model(cfg.model.name_or_path)
    train = datasets.Dataset.from_list(features(cfg, tokenizer, "train"))
    # As run_summarization.py builds it: the model makes the decoder inputs from the labels.
    base_collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    counts = {"real_tokens": 0, "token_positions": 0, "samples": 0}

    def collate(feats):
        batch = base_collate(feats)
        counts["real_tokens"] += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
        counts["token_positions"] += batch["input_ids"].numel() + batch["labels"].numel()
        counts["samples"] += batch["input_ids"].shape[0]
        return batch

    clock, callback = trainer_clock()  # the same clock as the step benchmark's Trainers

    targs = Seq2SeqTrainingArguments(
        output_dir=str(Path(args["out"]) / args["run_name"]), per_device_train_batch_size=cfg.train.per_device_batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        max_steps=cfg.train.max_steps, warmup_steps=cfg.train.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=cfg.train.max_grad_norm, logging_steps=cfg.train.log_every, save_strategy="no", eval_strategy="no",
        report_to=[], seed=cfg.train.seed, use_cpu=True, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if args.get("grouped") else "random",
    )
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=train, data_collator=collate,
                             processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    seconds = clock["end"] - clock["start"]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train": {**counts, "seconds": round(seconds, 3),
                      "real_tokens_per_s": round(counts["real_tokens"] / seconds, 1),
                      "samples_per_s": round(counts["samples"] / seconds, 2),
                      "real_token_share": round(counts["real_tokens"] / counts["token_positions"], 4)},
            "tail_loss": tail_loss(losses),
            "heldout_loss": heldout_loss(model, features(cfg, tokenizer, "validation"), data.make_collator(tokenizer))
            if args.get("heldout", True) else None}


def transformers_generate_batch(model, tokenizer, prompts: list[list[int]], settings, batch_size: int) -> list[str]:
    """transformers' own continuous batching (``generate_batch``, decoder-only models), sized for
    ``batch_size`` rows: its paged cache is otherwise sized from the device's memory (on CPU, the
    machine's RAM), and every query attends over the whole cache (a dense mask)."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from sumtune import generation

    page = 64
    longest = max(len(p) for p in prompts) + settings.max_new_tokens
    config = ContinuousBatchingConfig(page_size=page, num_blocks=-(-batch_size * longest // page) + batch_size,
                                      max_batch_tokens=32 * batch_size, max_requests_per_batch=batch_size)
    out = model.generate_batch(prompts, generation_config=settings, continuous_batching_config=config,
                               progress_bar=False, warmup=False)
    rows = [out[f"req_{i}"].generated_tokens for i in range(len(prompts))]
    return generation.decode_summaries(tokenizer, rows, settings)


def run_generate(args: dict) -> dict:
    """The family's own decoder (T5: refill; decoder-only: continuous) against model.generate over
    length-sorted and data-order batches; with ``transformers_batch``, also transformers'
    ``generate_batch`` (decoder-only models)."""
    from accelerate import Accelerator

    from sumtune import data, families, generation, models
    from sumtune.config import GenerationConfig

    cfg = bench_config(args)
    tokenizer = models.load_tokenizer(args["model"])
    model = models.load_model(args["model"])
    family = families.of_model(model)
    records, _ = data.load_split(cfg.data, "validation")
    dialogues = [r["dialogue"] for r in records]
    encoder = data.prompt_encoder(models.model_family(args["model"]), tokenizer, cfg.data)
    accelerator = Accelerator(cpu=True)
    # Decoder steps: forward calls that decode (an encoder-decoder's encoder runs through get_encoder;
    # a decoder-only model's prefill counts as one).
    steps = [0]
    forward = type(model).forward
    seq2seq = model.config.is_encoder_decoder

    def counted(self, *a, **k):
        steps[0] += k.get("decoder_input_ids") is not None or not seq2seq
        return forward(self, *a, **k)

    type(model).forward = counted
    strategies = ["data-order", "sorted", "auto"] + (["generate_batch"] if args.get("transformers_batch") else [])
    prompts = [encoder.encode_prompt(d)[0] for d in dialogues]

    def run(strategy, gen, texts=dialogues):
        if strategy == "generate_batch":
            settings = family.generation_settings(model, tokenizer, gen)
            with torch.inference_mode():
                return transformers_generate_batch(model, tokenizer, prompts[: len(texts)], settings, gen.batch_size), strategy
        out, stats = generation.generate(accelerator, model, tokenizer, encoder, texts, gen, progress=False,
                                         strategy=strategy)
        return out, stats.strategy

    warm = GenerationConfig(num_beams=1, max_new_tokens=64, batch_size=8)
    names = {s: run(s, warm, dialogues[:16])[1] for s in strategies}  # warm-up; "auto" -> the decoder's name
    sizes = {}
    for size in args["gen_batches"]:
        gen = GenerationConfig(num_beams=1, max_new_tokens=64, batch_size=size)
        runs: dict[str, list] = {s: [] for s in strategies}
        texts = {}
        for round_ in range(args["repeats"]):
            k = round_ % len(strategies)
            for strategy in strategies[k:] + strategies[:k]:  # in turns: drift spreads over all of them
                steps[0] = 0
                start = time.perf_counter()
                texts[strategy], _ = run(strategy, gen)
                runs[strategy].append({"seconds": time.perf_counter() - start, "decoder_steps": steps[0]})
        out = {}
        for strategy, rounds in runs.items():
            seconds = statistics.median(r["seconds"] for r in rounds)
            out[names[strategy]] = {"seconds": round(seconds, 3), "summaries_per_s": round(len(dialogues) / seconds, 2),
                                    "rounds_s": [round(r["seconds"], 3) for r in rounds],
                                    "decoder_steps": rounds[-1]["decoder_steps"],
                                    "identical_to_data_order": sum(a == b for a, b in zip(texts[strategy],
                                                                                          texts["data-order"]))}
        sizes[str(size)] = out
    return {"dialogues": len(dialogues), "rounds": args["repeats"], "decoder": names["auto"],
            "model_type": model.config.model_type, "by_batch_size": sizes}


def run_rouge(args: dict) -> dict:
    from sumtune import rouge

    rows = [json.loads(x) for x in (Path(args["data"]) / "train.jsonl").read_text().splitlines() if x.strip()]
    refs = [r["summary"] for r in rows[: args["pairs"]]]
    preds = [r["summary"] for r in rows[1: args["pairs"] + 1]]  # another summary: realistic overlap
    out = {}
    for name, workers in (("one_process", 1), ("pool", args.get("workers", 0))):
        start = time.perf_counter()
        means, _ = rouge.score(preds, refs, workers=workers)
        out[name] = {"seconds": round(time.perf_counter() - start, 3), "rouge1": round(means["rouge1"], 6)}
    return {"pairs": len(refs), **out}


if __name__ == "__main__":
    kind, raw = sys.argv[1], json.loads(sys.argv[2])
    emit({"kind": kind, **{"sumtune": run_sumtune, "hf": run_hf, "generate": run_generate, "rouge": run_rouge}[kind](raw)})
