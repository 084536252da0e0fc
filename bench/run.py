"""The performance benchmark, on CPU, with the demo model and data (not a test).

    .venv/bin/python bench/run.py            # or: make bench   (writes bench/results.md and .json)

1. Training: sumtune's loop (length-grouped batches, and random batches) against
   transformers.Seq2SeqTrainer (its defaults, and train_sampling_strategy=group_by_length), same
   model, features, global batch, learning rate, warm-up and optimizer steps, one process each,
   in turns, several rounds. Real (non-pad) tokens/s, samples/s, peak RSS, training loss over the
   last quarter of the steps, and the held-out loss of the final weights.
2. Memory: peak RSS of full vs LoRA vs 8-bit LoRA on a FLAN-T5-small-shaped model (random weights).
3. Generation: sumtune's refill decoder and length-sorted batches vs data-order batches (the naive
   baseline: `model.generate` over the dialogues in file order), same model and dialogues (the T5;
   bench/generation.py measures both families).
4. ROUGE: scoring time for 1,000 pairs, one process vs a pool.

Every figure comes from a worker process of its own (bench/workers.py); peak RSS is that process's
ru_maxrss, read with os.wait4.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work"

TRAIN_VARIANTS = [
    ("sumtune", "sumtune", True),
    ("sumtune, random batches", "sumtune", False),
    ("Seq2SeqTrainer (defaults)", "hf", False),
    ("Seq2SeqTrainer, group_by_length", "hf", True),
]


def run_worker(kind: str, args: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "PYTHONPATH": str(REPO)}
    # stderr (progress bars, warnings) goes to a file: two pipes read one after the other could fill
    # and stall the worker.
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, str(REPO / "bench/workers.py"), kind, json.dumps(args)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        out = proc.stdout.read()
        # wait4 gives this child's own resource usage (peak RSS in KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        errors.seek(0)
        err = errors.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench worker {kind} failed (exit {proc.returncode}):\n{err[-3000:]}")
    line = next(x for x in out.splitlines()[::-1] if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def small_shaped_model(tokenizer_dir: Path) -> Path:
    """A FLAN-T5-small-shaped T5 (random weights) with the demo tokenizer, for the memory table."""
    out = WORK / "t5-small-shaped"
    if (out / "config.json").exists():
        return out
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
                   feed_forward_proj="gated-gelu", pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def median(rows: list[dict], key) -> float:
    return statistics.median(key(r) for r in rows)


def report(results: dict) -> str:
    a = results["args"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['date']} on {results['machine']} with `{results['command']}` "
        f"({a['repeats']} rounds; medians; every figure from a process of its own).",
        "",
        f"## Training: {a['steps']} optimizer steps, global batch {a['batch']}, lr {a['lr']}, demo model and data",
        "",
        "| run | real tokens/s | samples/s | real-token share | peak RSS MiB | train loss (last 25%) | held-out loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    train = results["train"]
    for name, _, _ in TRAIN_VARIANTS:
        rows = train[name]
        lines.append(
            f"| {name} | {median(rows, lambda r: r['train']['real_tokens_per_s']):,.0f} | "
            f"{median(rows, lambda r: r['train']['samples_per_s']):.1f} | "
            f"{median(rows, lambda r: r['train']['real_token_share']):.1%} | {median(rows, lambda r: r['peak_rss_mib']):,.0f} | "
            f"{median(rows, lambda r: r['tail_loss']):.4f} | {median(rows, lambda r: r['heldout_loss']):.4f} |")
    r = results["ratios"]
    lines += [
        "",
        f"- sumtune / Seq2SeqTrainer (defaults), real tokens/s: **{r['vs_hf_default']:.2f}x**; "
        f"vs Seq2SeqTrainer with group_by_length: **{r['vs_hf_grouped']:.2f}x**.",
        f"- Training loss (last 25% of steps), sumtune vs Seq2SeqTrainer defaults: {r['tail_loss_diff']:+.1%}; "
        f"held-out loss: {r['heldout_loss_diff']:+.1%}.",
        f"- Real-token share of sumtune's training batches: {r['share_grouped']:.1%} (random batches: {r['share_random']:.1%}).",
        "",
        "Per round (real tokens/s): " + "; ".join(
            f"{name}: " + ", ".join(f"{x['train']['real_tokens_per_s']:,.0f}" for x in train[name]) for name, _, _ in TRAIN_VARIANTS),
        "",
        "## Memory: FLAN-T5-small-shaped model (random weights), "
        f"{results['memory_args']['steps']} steps at batch {results['memory_args']['batch']}",
        "",
        "Resident memory of the training process: when the training loop starts (model loaded), the peak while it",
        "runs (sampled every 5 ms), and the whole process's peak (loading and saving included). The gradient and",
        "Adam state column is computed (12 bytes per trainable parameter), not measured: it is what LoRA saves. At",
        "this shape and batch the activations dominate the measured peak, and LoRA adds to them (each adapted layer",
        "keeps a dropout copy of its input for the backward pass).",
        "",
        "| method | trainable parameters | grad + Adam state MiB (computed) | RSS at loop start MiB | peak in loop MiB | "
        "added by training MiB | process peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["memory"].items():
        lines.append(f"| {name} | {row['trainable_parameters']:,} | {row['trainable_parameters'] * 12 / 2**20:,.0f} | "
                     f"{row['rss_at_training_start_mib']:,.0f} | "
                     f"{row['rss_peak_in_training_mib']:,.0f} | "
                     f"{row['rss_peak_in_training_mib'] - row['rss_at_training_start_mib']:,.0f} | {row['peak_rss_mib']:,.0f} |")
    g = results["generation"]
    lines += [
        "",
        f"## Generation: {g['dialogues']} validation dialogues, greedy, up to 64 new tokens, the fine-tuned demo model",
        "",
        "- data order (the naive baseline): `model.generate` over batches of `generation.batch_size` in file order.",
        "- sorted: `model.generate` over length-sorted batches, longest first, short prompts packed into the first",
        "  batch's token positions (at most 8x the batch size); what sumtune does for beam search.",
        "- sumtune (refill): greedy decoding in which a finished summary's row goes to the next waiting prompt at",
        "  once, within the same token budget (sumtune's default for greedy T5-family models).",
        "",
        f"Summaries/s: median of {g['rounds']} rounds (strategies in turns); decoder steps: forward calls of the",
        "decoder; identical: summaries equal to the data-order ones.",
        "",
        "| generation.batch_size | data order: steps, summaries/s | sorted: steps, summaries/s | sumtune (refill): steps, "
        "summaries/s | speed-up vs data order: sorted, **sumtune** | identical: sorted, sumtune |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    own = g.get("decoder", "refill")  # the T5 family's own decoder
    for size, row in g["by_batch_size"].items():
        u, s_, r = row["data-order"], row["sorted"], row[own]
        lines.append(f"| {size} | {u['decoder_steps']:,}, {u['summaries_per_s']:.1f} | {s_['decoder_steps']:,}, "
                     f"{s_['summaries_per_s']:.1f} | {r['decoder_steps']:,}, {r['summaries_per_s']:.1f} | "
                     f"{s_['summaries_per_s'] / u['summaries_per_s']:.2f}x, **{r['summaries_per_s'] / u['summaries_per_s']:.2f}x** | "
                     f"{s_['identical_to_data_order']}, {r['identical_to_data_order']} of {g['dialogues']} |")
    lines.append("")
    lines.append("Per round, seconds (data order / sorted / refill): " + "; ".join(
        f"batch {size}: " + ", ".join("/".join(f"{row[k]['rounds_s'][i]:.2f}" for k in ("data-order", "sorted", own))
                                      for i in range(g["rounds"]))
        for size, row in g["by_batch_size"].items()))
    lines += [
        "",
        f"## ROUGE scoring: {results['rouge']['pairs']:,} pairs",
        "",
        f"- one process: {results['rouge']['one_process']['seconds']:.2f} s; a pool of "
        f"{results['rouge_workers']} processes: {results['rouge']['pool']['seconds']:.2f} s (same scores: "
        f"{results['rouge']['pool']['rouge1'] == results['rouge']['one_process']['rouge1']}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    # One epoch of the demo's 2,400 dialogues at batch 8: every run trains on the same examples.
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench/results"))
    args = parser.parse_args()

    subprocess.run([sys.executable, "-m", "sumtune_demo", "--out", str(REPO / "demo")], cwd=REPO, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    WORK.mkdir(parents=True, exist_ok=True)
    base = {"model": str(REPO / "demo/model"), "data": str(REPO / "demo/data"), "out": str(WORK), "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "warmup": max(1, args.steps // 10), "log_every": 5}
    started = time.time()
    train: dict[str, list] = {name: [] for name, _, _ in TRAIN_VARIANTS}
    for round_ in range(args.repeats):
        # Rotate who goes first, so drift in the machine's speed spreads over all variants.
        order = TRAIN_VARIANTS[round_ % len(TRAIN_VARIANTS):] + TRAIN_VARIANTS[: round_ % len(TRAIN_VARIANTS)]
        for name, kind, grouped in order:
            run_name = f"{kind}-{'grouped' if grouped else 'random'}"
            row = run_worker(kind, {**base, "run_name": run_name, "grouped": grouped})
            train[name].append(row)
            print(f"round {round_ + 1} {name}: {row['train']['real_tokens_per_s']:,.0f} real tokens/s, "
                  f"loss {row['tail_loss']:.4f}, held-out {row['heldout_loss']:.4f}, RSS {row['peak_rss_mib']:.0f} MiB",
                  flush=True)

    small = small_shaped_model(REPO / "demo/model")
    memory_args = {**base, "model": str(small), "steps": args.memory_steps, "batch": 4, "warmup": 1, "log_every": 1,
                   "max_source_length": 256, "heldout": False, "sample_memory": True}
    memory = {}
    for name, method, quant in (("full", "full", "none"), ("LoRA", "lora", "none"), ("LoRA, 8-bit base", "lora", "8bit")):
        row = run_worker("sumtune", {**memory_args, "run_name": f"memory-{method}-{quant}", "method": method,
                                     "quantization": quant})
        memory[name] = row
        print(f"memory {name}: loop start {row['rss_at_training_start_mib']:.0f} MiB, peak in loop "
              f"{row['rss_peak_in_training_mib']:.0f} MiB, process peak {row['peak_rss_mib']:.0f} MiB", flush=True)

    generation = run_worker("generate", {**base, "run_name": "gen", "model": str(WORK / "sumtune-grouped"),
                                         "gen_batches": [8, 16, 32], "repeats": args.repeats})
    print(f"generation: {generation}", flush=True)
    from sumtune.rouge import _workers

    workers = _workers(None, 1000)
    rouge = run_worker("rouge", {**base, "run_name": "rouge", "pairs": 1000, "workers": workers})
    print(f"rouge: {rouge}", flush=True)

    def med(name, key):
        return median(train[name], key)

    tps = lambda r: r["train"]["real_tokens_per_s"]  # noqa: E731
    hf = "Seq2SeqTrainer (defaults)"
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU only, torch threads default",
        "command": ".venv/bin/python bench/run.py " + " ".join(sys.argv[1:]),
        "args": vars(args), "memory_args": memory_args, "train": train, "memory": memory,
        "generation": generation, "rouge": rouge, "rouge_workers": workers,
        "wall_seconds": round(time.time() - started),
        "ratios": {
            "vs_hf_default": med("sumtune", tps) / med(hf, tps),
            "vs_hf_grouped": med("sumtune", tps) / med("Seq2SeqTrainer, group_by_length", tps),
            "tail_loss_diff": med("sumtune", lambda r: r["tail_loss"]) / med(hf, lambda r: r["tail_loss"]) - 1,
            "heldout_loss_diff": med("sumtune", lambda r: r["heldout_loss"]) / med(hf, lambda r: r["heldout_loss"]) - 1,
            "share_grouped": med("sumtune", lambda r: r["train"]["real_token_share"]),
            "share_random": med("sumtune, random batches", lambda r: r["train"]["real_token_share"]),
            "generation_speedup": {size: {k: row[k]["summaries_per_s"] / row["data-order"]["summaries_per_s"]
                                          for k in ("sorted", generation.get("decoder", "refill"))}
                                   for size, row in generation["by_batch_size"].items()},
        },
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
