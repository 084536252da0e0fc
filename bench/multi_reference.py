"""Evaluation of a DialogSum-layout split (each dialogue under three rows, one reference each),
row by row vs grouped (each dialogue generated once, scored against its three references).
A tiny random FLAN-T5-shaped model on CPU: the figures are the generation work saved, not scores.

    PYTHONPATH=. .venv/bin/python bench/multi_reference.py [--dialogues 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "unit")]


def main() -> None:
    import zoo
    from accelerate import Accelerator
    from test_multi_reference import dialogsum_rows

    from sumtune import evaluation
    from sumtune.config import from_dict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=60)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    zoo.base_tokenizer(tmp / "tok")
    model = zoo.build_model("t5", tmp / "t5", tmp / "tok", width=64)
    split = tmp / "test.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in dialogsum_rows(args.dialogues)))
    for mode in ("rows", "grouped"):
        cfg = from_dict({"data": {"source": "local", "files": {"test": str(split)}, "max_source_length": 256},
                         "eval": {"references": mode}, "generation": {"max_new_tokens": 32, "batch_size": 16},
                         "tracker": {"backend": "none"}})
        started = time.perf_counter()
        c = evaluation.evaluate_candidates(cfg, [evaluation.parse_candidate(f"m={model}")], tmp / mode,
                                           Accelerator(cpu=True))
        metrics = json.loads((tmp / mode / "m" / "metrics.json").read_text())
        print(f"{mode}: {c.examples} examples generated in {metrics['generation_seconds']:.1f} s "
              f"(evaluation {time.perf_counter() - started:.1f} s); rouge1 {c.means['m']['rouge1']:.4f} "
              f"[{c.ci['m']['rouge1'][0]:.4f}, {c.ci['m']['rouge1'][1]:.4f}], mean over references "
              f"{metrics['mean_over_references']['rouge1']:.4f}", flush=True)


if __name__ == "__main__":
    main()
