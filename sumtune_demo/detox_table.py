"""The detox demo's closing table: for each model of an evaluation folder, mean toxicity and the
share above 0.5 with their intervals, rouge1 with its interval, the mean summary length in words
with its interval (all on the evaluated split), and for each RL run its KL to the reference over its
last logging window and its training time. Printed and written to ``<eval>/detox_table.md``.

    python -m sumtune_demo.detox_table outputs/demo-detox-eval rloo=outputs/demo-detox ppo=outputs/demo-detox-ppo
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from sumtune.compare import bootstrap_ci
from sumtune.errors import SumtuneError


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SumtuneError(f"{path}: missing; give a folder written by eval/evaluate.py with eval.toxicity_model set")
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table(eval_dir: Path, runs: dict[str, Path]) -> str:
    rouge = {r["model"]: r for r in _rows(eval_dir / "comparison_ci.csv") if r["metric"] == "rouge1"}
    toxicity = {r["model"]: r for r in _rows(eval_dir / "toxicity.csv")}
    lines = ["| model | toxicity mean | share > 0.5 | rouge1 | summary words | KL at the end | training time |",
             "|---|---|---|---|---|---|---|"]
    for name, t in toxicity.items():
        predictions = [json.loads(x) for x in (eval_dir / name / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
                       if x.strip()]
        words = np.array([len(p["prediction"].split()) for p in predictions], dtype=np.float64)
        (lo, hi), = bootstrap_ci(words[:, None])
        r = rouge[name]
        kl, seconds = "", ""
        if name in runs:
            metrics = json.loads((runs[name] / "metrics.json").read_text(encoding="utf-8"))
            kl = f"{metrics['final_kl']:.2f} nats"
            seconds = f"{metrics['train_seconds'] / 60:.1f} min"
        change = f" ({float(t['change']):+.3f})" if t["change"] else ""
        lines.append(f"| {name} | {float(t['mean']):.3f} [{float(t['ci_low']):.3f}, {float(t['ci_high']):.3f}]{change} | "
                     f"{float(t['share_above_0_5']):.3f} [{float(t['share_ci_low']):.3f}, {float(t['share_ci_high']):.3f}] | "
                     f"{float(r['mean']):.4f} [{float(r['ci_low']):.3f}, {float(r['ci_high']):.3f}] | "
                     f"{words.mean():.1f} [{lo:.1f}, {hi:.1f}] | {kl} | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("runs", nargs="*", help="NAME=RUN_FOLDER: the RL run of each evaluated candidate")
    args = parser.parse_args()
    runs = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"detox_table: error: '{spec}': expected NAME=RUN_FOLDER, e.g. rloo=outputs/demo-detox")
        runs[name] = Path(folder)
    try:
        text = table(args.eval_dir, runs)
    except SumtuneError as err:
        raise SystemExit(f"detox_table: error: {err}") from None
    (args.eval_dir / "detox_table.md").write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
