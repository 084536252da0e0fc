"""Evaluation: candidates -> predictions -> ROUGE -> comparison tables (files and W&B).

A candidate is ``NAME=PATH``: a run folder written by training (a LoRA adapter or a full model,
with the prompt template it was trained with), or a base model (folder or hub id) scored with the
config's zero-shot template.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from sumtune import data, models, rouge, tracking
from sumtune.checkpoints import CONFIG_FILE
from sumtune.config import RunConfig, to_dict
from sumtune.errors import SumtuneError
from sumtune.prompts import resolve_template

TABLE_COLUMNS = ["model", *rouge.ROUGE_TYPES]


@dataclass
class Candidate:
    name: str
    path: str

    @property
    def folder(self) -> Path:
        return Path(self.path)

    @property
    def kind(self) -> str:
        if (self.folder / "adapter_config.json").is_file():
            return "lora"
        if (self.folder / CONFIG_FILE).is_file():
            return "full"
        return "base"


def parse_candidate(spec: str) -> Candidate:
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise SumtuneError(f"--candidate '{spec}': expected NAME=PATH, e.g. lora=outputs/demo-lora")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise SumtuneError(f"--candidate '{spec}': the name may hold letters, digits, '-', '_' and '.' only")
    return Candidate(name.strip(), path.strip())


def _trained_template(cand: Candidate, default: str) -> str:
    """The template the candidate was trained with (from its run folder), else ``default``."""
    cfg_file = cand.folder / CONFIG_FILE
    if cfg_file.is_file():
        saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        return saved.get("data", {}).get("template", default)
    return default


def load_candidate(cand: Candidate, cfg: RunConfig):
    """(model, tokenizer, template) for one candidate, ready for generation."""
    template = _trained_template(cand, cfg.data.template)
    if cand.kind == "lora":
        from peft import PeftConfig, PeftModel

        base = PeftConfig.from_pretrained(cand.path).base_model_name_or_path
        models.check_model_source(base, key=f"base model of adapter {cand.path}")
        model = PeftModel.from_pretrained(models.load_model(base), cand.path)
        tokenizer = models.load_tokenizer(cand.path if (cand.folder / "tokenizer_config.json").is_file() else base)
    else:
        models.check_model_source(cand.path, key=f"--candidate {cand.name}")
        model = models.load_model(cand.path)
        tokenizer = models.load_tokenizer(cand.path)
    return model, tokenizer, resolve_template(template)


# ----------------------------------------------------------------------------- tables


def comparison_rows(results: dict[str, dict[str, float]]) -> list[dict]:
    return [{"model": name, **{k: scores[k] for k in rouge.ROUGE_TYPES}} for name, scores in results.items()]


def gain_rows(results: dict[str, dict[str, float]], baseline: str) -> list[dict]:
    """Absolute improvement over the baseline row, in percentage points."""
    base = results[baseline]
    return [
        {"model": name, **{k: round(100 * (scores[k] - base[k]), 2) for k in rouge.ROUGE_TYPES}}
        for name, scores in results.items()
        if name != baseline
    ]


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def to_markdown(rows: list[dict], fmt: str) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join([row["model"]] + [format(row[k], fmt) for k in rouge.ROUGE_TYPES]) + " |")
    return "\n".join(lines)


def headline(results: dict[str, dict[str, float]], baseline: str, metric: str = "rouge1") -> list[str]:
    """The seed's style: 'base 0.233 rouge1 -> lora 0.408 (+17.5 pp)'."""
    b = results[baseline][metric]
    return [
        f"{baseline} {b:.3f} {metric} -> {name} {s[metric]:.3f} ({100 * (s[metric] - b):+.1f} pp)"
        for name, s in results.items()
        if name != baseline
    ]


def comparison_markdown(results: dict[str, dict[str, float]], baseline: str, split: str, n: int) -> str:
    return "\n".join([
        f"# ROUGE on the {split} split ({n} examples; F-measure, mean over examples, stemmed)",
        "",
        to_markdown(comparison_rows(results), ".4f"),
        "",
        f"## Absolute gain over `{baseline}` (percentage points)",
        "",
        to_markdown(gain_rows(results, baseline), "+.2f"),
        "",
        *headline(results, baseline),
        "",
    ])


# ----------------------------------------------------------------------------- running


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def check_out_dir(out: Path, overwrite: bool) -> None:
    if (out / "comparison.csv").exists() and not overwrite:
        raise SumtuneError(f"{out} already holds an evaluation; choose another --out or pass --overwrite")


def evaluate_candidates(cfg: RunConfig, candidates: list[Candidate], out: Path, accelerator) -> dict:
    """Generate and score every candidate on ``cfg.eval.split``; main process writes the files."""
    from sumtune.generation import generate

    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise SumtuneError(f"--candidate names must be unique, got {', '.join(names)}")
    with accelerator.main_process_first():
        records, read = data.load_split(cfg.data, cfg.eval.split, cfg.data.max_eval_examples)
    tracking.say(accelerator, f"{cfg.eval.split}: {len(records)} examples ({read.skipped} bad rows skipped)")
    dialogues = [r["dialogue"] for r in records]
    references = [r["summary"] for r in records]
    results: dict[str, dict] = {}
    prediction_rows = []
    for cand in candidates:
        model, tokenizer, template = load_candidate(cand, cfg)
        model.to(accelerator.device)
        encoder = data.PromptEncoder(tokenizer, template, cfg.data.max_source_length)
        started = time.perf_counter()
        preds, truncated = generate(accelerator, model, tokenizer, encoder, dialogues, cfg.generation)
        seconds = time.perf_counter() - started
        means, per_example = rouge.score(preds, references)
        metrics = {
            **means,
            "examples": len(records),
            "prompts_truncated": truncated,
            "summaries_per_second": round(len(records) / seconds, 3),
            "candidate": cand.path,
            "kind": cand.kind,
            "split": cfg.eval.split,
            "template": template,
            "generation": to_dict(cfg.generation),
        }
        results[cand.name] = metrics
        tracking.say(accelerator, f"{cand.name}: " + " ".join(f"{k} {means[k]:.4f}" for k in rouge.ROUGE_TYPES))
        accelerator.log({f"{cand.name}/{k}": means[k] for k in rouge.ROUGE_TYPES})
        if accelerator.is_main_process:
            folder = out / cand.name
            folder.mkdir(parents=True, exist_ok=True)
            _write_jsonl(folder / "predictions.jsonl", [
                {"id": r["id"], "dialogue": r["dialogue"], "reference": r["summary"], "prediction": p}
                for r, p in zip(records, preds)
            ])
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            prediction_rows += [
                [cand.name, r["id"], r["dialogue"], r["summary"], p, s["rougeLsum"]]
                for r, p, s in zip(records, preds, per_example)
            ]
        del model
    baseline = candidates[0].name
    scores = {name: {k: m[k] for k in rouge.ROUGE_TYPES} for name, m in results.items()}
    if accelerator.is_main_process:
        (out / "comparison.csv").write_text(to_csv(comparison_rows(scores)), encoding="utf-8")
        (out / "comparison.md").write_text(comparison_markdown(scores, baseline, cfg.eval.split, len(records)),
                                           encoding="utf-8")
        if len(scores) > 1:
            (out / "gain_pp.csv").write_text(to_csv(gain_rows(scores, baseline)), encoding="utf-8")
    tracking.log_table(accelerator, "predictions", ["candidate", "id", "dialogue", "reference", "prediction", "rougeLsum"],
                       prediction_rows)
    tracking.log_table(accelerator, "comparison", TABLE_COLUMNS,
                       [[r["model"], *[r[k] for k in rouge.ROUGE_TYPES]] for r in comparison_rows(scores)])
    tracking.set_summary(accelerator, {f"{n}/{k}": s[k] for n, s in scores.items() for k in rouge.ROUGE_TYPES})
    accelerator.wait_for_everyone()
    return scores


def score_file(path: Path) -> tuple[dict[str, float], int]:
    """Score predictions made elsewhere: a jsonl file with id, prediction, reference."""
    if not path.is_file():
        raise SumtuneError(f"{path}: file does not exist")
    preds, refs = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SumtuneError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SumtuneError(f"{path} line {lineno}: not valid JSON ({err.msg})") from None
        for key in ("id", "prediction", "reference"):
            if not isinstance(row, dict) or key not in row:
                raise SumtuneError(f"{path} line {lineno}: field '{key}' is missing")
        for key in ("prediction", "reference"):
            if not isinstance(row[key], str):
                raise SumtuneError(f"{path} line {lineno}: field '{key}' is not text")
        preds.append(row["prediction"])
        refs.append(row["reference"])
    if not preds:
        raise SumtuneError(f"{path}: no rows to score")
    means, _ = rouge.score(preds, refs)
    return means, len(preds)


def run(cfg: RunConfig, candidate_specs: list[str], out: Path, overwrite: bool = False) -> dict:
    """Evaluate candidates under the current (possibly multi-process) launch."""
    from sumtune.distributed import make_accelerator

    if not candidate_specs:
        raise SumtuneError("no --candidate given; e.g. --candidate base=google/flan-t5-base --candidate lora=outputs/run")
    candidates = [parse_candidate(s) for s in candidate_specs]
    check_out_dir(out, overwrite)
    accelerator = make_accelerator(cfg)
    out.mkdir(parents=True, exist_ok=True)
    name = f"eval-{out.name}"
    tracking.start(accelerator, cfg.tracker, name, out, {**to_dict(cfg), "candidates": candidate_specs}, job_type="eval")
    scores = evaluate_candidates(cfg, candidates, out, accelerator)
    if accelerator.is_main_process:
        print((out / "comparison.md").read_text(encoding="utf-8"), flush=True)
    accelerator.end_training()
    return scores


def run_score_only(path: Path, out: Path | None, overwrite: bool = False) -> dict:
    means, n = score_file(path)
    target = (out / "metrics.json") if out else path.with_suffix(".metrics.json")
    if target.exists() and not overwrite:
        raise SumtuneError(f"{target} already exists; pass --overwrite or choose --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({**means, "examples": n, "predictions": str(path)}, indent=2) + "\n", encoding="utf-8")
    print(to_markdown(comparison_rows({path.stem: means}), ".4f"))
    print(f"[sumtune] {n} examples scored; metrics written to {target}")
    return means
