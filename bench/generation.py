"""The generation benchmark, on CPU, for both demo models (not a test).

    .venv/bin/python bench/generation.py     # or: make bench-generation  (writes bench/generation_results.md and .json)

Each demo base model (the T5, and the decoder-only Llama-shaped one) is first fine-tuned the way
bench/run.py fine-tunes the T5 (sumtune's loop, full fine-tuning, batch 8, one epoch of the demo's
training dialogues), so its summaries end where a fine-tuned model's end. Then, on the 240
validation dialogues, greedy, up to 64 new tokens, at several `generation.batch_size`s, in turns,
several rounds (medians), summaries/s of:

- data order (the naive baseline): `model.generate` over batches of `generation.batch_size` in file order;
- sorted: `model.generate` over length-sorted batches (what sumtune does for beam search and sampling);
- the family's own decoder (`Family.decoder`): T5's refill decoder, or the decoder-only continuous
  decoder; finished rows leave and waiting prompts join;
- for the decoder-only model also transformers' own continuous batching (`generate_batch`), sized for
  the same number of rows.

"identical" counts summaries equal to the data-order ones. Every figure comes from a worker process of
its own (bench/workers.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import REPO, WORK, run_worker  # noqa: E402

MODELS = (("T5", "model", False), ("decoder-only", "causal", True))


def report(results: dict) -> str:
    lines = [
        "# Generation benchmark",
        "",
        f"Measured {results['date']} on {results['machine']} with `{results['command']}`; load average "
        f"{results['load_before']} before, {results['load_after']} after (the benchmark itself keeps one core busy).",
        "",
        f"{results['dialogues']} validation dialogues of the demo, greedy, up to 64 new tokens, "
        + (f"each model fine-tuned first ({results['args']['steps']} steps of full fine-tuning at batch 8)"
           if results['args']['steps'] else "the demo's base models (not fine-tuned)")
        + f". Summaries/s: median of "
        f"{results['args']['repeats']} rounds, strategies in turns, each family in a worker process of its own. "
        "Decoder steps: forward calls that decode (a decoder-only model's prefill counts). Identical: summaries "
        "equal to the data-order ones.",
        "",
    ]
    for name, row in results["families"].items():
        g = row["generation"]
        own = g["decoder"]
        extra = [k for k in ("generate_batch",) if k in next(iter(g["by_batch_size"].values()))]
        head = ["generation.batch_size", "data order: steps, summaries/s", "sorted: steps, summaries/s",
                f"sumtune ({own}): steps, summaries/s"] + [f"transformers {k}: summaries/s" for k in extra] + [
                f"speed-up vs data order: sorted, **{own}**" + "".join(f", {k}" for k in extra),
                f"identical: sorted, {own}" + "".join(f", {k}" for k in extra)]
        origin = f"fine-tuned from demo/{row['base']}" if results["args"]["steps"] else f"demo/{row['base']} as built"
        lines += [f"## {name} ({g['model_type']}, {origin})", "",
                  "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for size, r in g["by_batch_size"].items():
            base = r["data-order"]["summaries_per_s"]
            cells = [size] + [f"{r[k]['decoder_steps']:,}, {r[k]['summaries_per_s']:.1f}" for k in ("data-order", "sorted", own)]
            cells += [f"{r[k]['summaries_per_s']:.1f}" for k in extra]
            cells.append(f"{r['sorted']['summaries_per_s'] / base:.2f}x, **{r[own]['summaries_per_s'] / base:.2f}x**"
                         + "".join(f", {r[k]['summaries_per_s'] / base:.2f}x" for k in extra))
            cells.append(", ".join(str(r[k]["identical_to_data_order"]) for k in ["sorted", own] + extra)
                         + f" of {g['dialogues']}")
            lines.append("| " + " | ".join(cells) + " |")
        keys = ["data-order", "sorted", own] + extra
        lines += ["", "Per round, seconds (" + " / ".join(keys) + "): " + "; ".join(
            f"batch {size}: " + ", ".join("/".join(f"{r[k]['rounds_s'][i]:.2f}" for k in keys) for i in range(g["rounds"]))
            for size, r in g["by_batch_size"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300,
                        help="fine-tuning steps of each base model (batch 8); 0: the demo's base models as they are")
    parser.add_argument("--families", default="T5,decoder-only")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--out", default=str(REPO / "bench/generation_results"))
    args = parser.parse_args()

    subprocess.run([sys.executable, "-m", "sumtune_demo", "--out", str(REPO / "demo")], cwd=REPO, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.time()
    out: dict = {}
    for name, base, hf_batch in [m for m in MODELS if m[0] in args.families.split(",")]:
        common = {"model": str(REPO / "demo" / base), "data": str(REPO / "demo/data"), "out": str(WORK),
                  "steps": args.steps, "batch": 8, "lr": 1e-3, "warmup": max(1, args.steps // 10), "log_every": 10}
        run_name = f"gen-{base}"
        trained = run_worker("sumtune", {**common, "run_name": run_name, "heldout": False}) if args.steps else {}
        print(f"{name}: fine-tuned, loss {trained['tail_loss']:.4f}" if trained else f"{name}: the base model", flush=True)
        model = str(WORK / run_name) if args.steps else common["model"]
        generation = run_worker("generate", {**common, "run_name": "gen", "model": model,
                                             "gen_batches": [int(x) for x in args.batch_sizes.split(",")],
                                             "repeats": args.repeats, "transformers_batch": hf_batch})
        print(f"{name}: {json.dumps(generation)}", flush=True)
        out[name] = {"base": base, "tail_loss": trained.get("tail_loss"), "generation": generation}
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU only, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "command": ".venv/bin/python bench/generation.py " + " ".join(sys.argv[1:]),
        "load_before": load_before, "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "args": vars(args), "dialogues": next(iter(out.values()))["generation"]["dialogues"], "families": out,
        "wall_seconds": round(time.time() - started),
    }
    path = Path(args.out)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    path.with_suffix(".md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
