"""Fine-tuning methods side by side on the demo (not a test): `make compare-methods`.

    .venv/bin/python bench/methods.py          # writes bench/methods_results.md and .json

Full fine-tuning and every adapter method train the demo's T5 (built by `python -m sumtune_demo`,
as `make demo` does) through the real entry script, one process each, in turn: the same data,
optimizer steps, batch, warm-up, schedule and seed; each method at its own learning rate (the
methods' good learning rates differ by orders of magnitude: prompt tuning's is ~10x LoRA's, full
fine-tuning's lower; one rate for all would compare learning rates, not methods). Then one
evaluation launch per split (validation, then test) scores every final model with ROUGE and
95% bootstrap intervals. Nothing here picks a model: every row is the model after the last step.

Per method: trainable parameters, what the run folder holds on disk (the adapter, or the whole
model for full fine-tuning), the peak resident memory of the training process (os.wait4's
ru_maxrss: loading and saving included), real tokens/s of the training steps (metrics.json),
validation and test ROUGE.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "methods"

# name -> (overrides, learning rate). Settings are each method's defaults unless named here.
RUNS: dict[str, tuple[list[str], float]] = {
    "full": (["model.method=full"], 1e-3),
    "lora": (["model.method=lora"], 3e-3),
    "lora, rsLoRA": (["model.method=lora", "model.lora.rslora=true"], 3e-3),
    "lora, PiSSA init": (["model.method=lora", "model.lora.init=pissa"], 3e-3),
    "lora+ (ratio 16)": (["model.method=lora", "model.lora.loraplus_lr_ratio=16"], 1.5e-3),
    "dora": (["model.method=dora"], 3e-3),
    "adalora": (["model.method=adalora"], 3e-3),
    "ia3": (["model.method=ia3"], 3e-2),
    "loha": (["model.method=loha"], 3e-3),
    "lokr": (["model.method=lokr"], 3e-3),
    "vera": (["model.method=vera"], 1e-2),
    "prompt": (["model.method=prompt"], 3e-2),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def train(name: str, overrides: list[str], lr: float, args) -> dict:
    """One training run as a process of its own; its peak RSS from os.wait4."""
    run_name = slug(name)
    cmd = [sys.executable, str(REPO / "train/finetune.py"), "--config", str(REPO / "configs/train/demo_lora.yaml"),
           f"run_name={run_name}", f"output_dir={OUT}", "overwrite=true", *overrides, f"train.lr={lr}",
           f"train.max_steps={args.steps}", f"train.per_device_batch_size={args.batch}", "train.warmup_steps=20",
           "train.rouge_every=0", "train.eval_every=0", "train.log_every=10", "tracker.backend=none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            sys.exit(f"training {name} failed:\n{log.read()[-3000:]}")
    folder = OUT / run_name
    metrics = json.loads((folder / "metrics.json").read_text())
    weights = [p for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors"]
    return {"run": str(folder.relative_to(REPO)), "lr": lr, "overrides": overrides,
            "trainable_parameters": metrics["trainable_parameters"], "total_parameters": metrics["total_parameters"],
            "weights_on_disk_bytes": sum(p.stat().st_size for p in weights),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - started, 1),
            "real_tokens_per_s": metrics["throughput"]["real_tokens_per_s"], "train_loss": metrics["train_loss"],
            "val_loss": metrics["val_loss"]}


def evaluate(split: str, runs: dict[str, dict]) -> dict[str, dict]:
    """Every final model on ``split`` in one 2-process evaluation; means and 95% intervals."""
    out = OUT / f"eval-{split}"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO / "configs/accelerate/cpu_2proc.yaml"), str(REPO / "eval/evaluate.py"),
           "--config", str(REPO / "configs/train/demo_lora.yaml"), "--out", str(out), "--overwrite",
           f"eval.split={split}", "tracker.backend=none",
           *[a for name, r in runs.items() for a in ("--candidate", f"{slug(name)}={REPO / r['run']}")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"evaluation on {split} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    scores: dict[str, dict] = {}
    with (out / "comparison_ci.csv").open() as f:
        for row in csv.DictReader(f):
            scores.setdefault(row["model"], {})[row["metric"]] = {
                "mean": float(row["mean"]), "ci": [float(row["ci_low"]), float(row["ci_high"])]}
    return {name: scores[slug(name)] for name in runs}


def size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def report(results: dict) -> str:
    a = results["args"]
    lines = [
        "# Fine-tuning methods side by side (demo T5, synthetic dialogues)",
        "",
        f"Measured {results['date']} on {results['machine']} with `{results['command']}` ({results['minutes']:.1f} min).",
        f"Each run: {a['steps']} optimizer steps at batch {a['batch']} in one process, warm-up 20 steps then linear "
        "decay, seed 42, the demo's data and prompt; evaluation of the final weights (greedy, up to 64 new tokens) on "
        "the 240 validation and 240 test dialogues, ROUGE F-measure with [95% bootstrap interval].",
        "",
        "| method | lr | trainable parameters | on disk | peak RSS MiB | real tokens/s | validation rouge1 | "
        "validation rougeLsum | test rouge1 | test rougeLsum |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        v, t = results["validation"][name], results["test"][name]

        def cell(s, k):
            return f"{s[k]['mean']:.4f} [{s[k]['ci'][0]:.3f}, {s[k]['ci'][1]:.3f}]"

        lines.append(f"| {name} | {r['lr']:g} | {r['trainable_parameters']:,} ({r['trainable_parameters'] / r['total_parameters']:.2%}) | "
                     f"{size(r['weights_on_disk_bytes'])} | {r['peak_rss_mib']:,.0f} | {r['real_tokens_per_s']:,.0f} | "
                     f"{cell(v, 'rouge1')} | {cell(v, 'rougeLsum')} | {cell(t, 'rouge1')} | {cell(t, 'rougeLsum')} |")
    lines += ["", "Settings: each method's defaults in sumtune/config.py (LoRA and DoRA r 16, alpha 32, T5's q, k, v, o, "
              "wi_0, wi_1, wo; AdaLoRA 12 -> 8; LoHa/LoKr r 8; VeRA r 256; prompt tuning 20 virtual tokens from the "
              "instruction's text), with the overrides in methods_results.json. Prefix tuning is refused (see the support "
              "matrix in docs/models-and-methods.md)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--only", nargs="*", help="a subset of the methods (names as in the table)")
    args = parser.parse_args()
    if not (REPO / "demo/model/config.json").is_file():
        sys.exit("no demo build: run `python -m sumtune_demo --out demo` (or make demo) first")
    started = time.perf_counter()
    chosen = {k: v for k, v in RUNS.items() if not args.only or k in args.only}
    runs = {}
    for name, (overrides, lr) in chosen.items():
        runs[name] = train(name, overrides, lr, args)
        print(f"[methods] {name}: {runs[name]['seconds']} s, {runs[name]['trainable_parameters']:,} trainable, "
              f"train loss {runs[name]['train_loss']:.4f}", flush=True)
    results = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "command": "make compare-methods", "args": vars(args), "runs": runs}
    for split in ("validation", "test"):
        results[split] = evaluate(split, runs)
        print(f"[methods] evaluated on {split}", flush=True)
    results["minutes"] = (time.perf_counter() - started) / 60
    (REPO / "bench/methods_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (REPO / "bench/methods_results.md").write_text(report(results), encoding="utf-8")
    print(report(results))


if __name__ == "__main__":
    main()
