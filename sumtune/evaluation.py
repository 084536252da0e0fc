"""Evaluation: candidates -> predictions -> metrics (``eval.metrics``: ROUGE and the others of
sumtune/metrics/) -> comparison tables (files and W&B).

A candidate is ``NAME=PATH[,shots=K][,template=T]``: a run folder written by training (an adapter
of any method, or a full model, prompted with the template it was trained with) or a merged export
(``sumtune.runs.RunFolder`` reads them), or a base model (folder or hub id) prompted zero-shot, or
with K examples from the TRAIN split (few-shot).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sumtune import compare, data, families, metrics, models, rouge, tracking
from sumtune.config import RunConfig, to_dict
from sumtune.errors import SumtuneError
from sumtune.prompts import TEMPLATES
from sumtune.runs import RunFolder, training_group


@dataclass
class Candidate:
    name: str
    path: str
    shots: int = 0
    template: str | None = None

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path, key=f"candidate {self.name}")


def parse_candidate(spec: str) -> Candidate:
    name, sep, rest = spec.partition("=")
    path, *options = rest.split(",")
    if not sep or not name.strip() or not path.strip():
        raise SumtuneError(f"--candidate '{spec}': expected NAME=PATH[,shots=K][,template=T], e.g. lora=outputs/demo-lora")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise SumtuneError(f"--candidate '{spec}': the name may hold letters, digits, '-', '_' and '.' only")
    cand = Candidate(name.strip(), path.strip())
    for option in options:
        key, _, value = option.partition("=")
        if key == "shots" and value.isdigit():
            cand.shots = int(value)
        elif key == "template" and (value in TEMPLATES or "{dialogue}" in value):
            cand.template = value
        else:
            raise SumtuneError(
                f"--candidate '{spec}': unknown option '{option}'; use shots=K or template=NAME ({', '.join(TEMPLATES)})"
            )
    return cand


def load_candidate(cand: Candidate, cfg: RunConfig):
    """(model, tokenizer, prompt encoder settings) for one candidate: the model, its tokenizer
    (prepared for its family) and the ``DataConfig`` its prompts are built with. The template: the
    candidate's own option, else the one its run folder was trained with, else the config's; the
    other prompt settings and the family likewise come from the run folder when it has them, and
    an adapter trained on an 8/4-bit base is evaluated on the base it was trained with."""
    run = cand.run
    model, tokenizer = run.load(cfg.model.trust_remote_code)
    return model, tokenizer, run.prompting(cfg.data, cand.template)


def trained_group(candidates: list[Candidate]) -> str | None:
    """The W&B group of the first trained candidate (its tracker.group, else its run name), so
    that an evaluation sits beside the training run it scores."""
    return training_group(c.path for c in candidates)


def draw_shots(train_records: list[dict], k: int, seed: int) -> list[dict]:
    """k examples drawn from the TRAIN split, the same for every evaluated example."""
    if k > len(train_records):
        raise SumtuneError(f"shots={k} but the train split has only {len(train_records)} examples")
    return random.Random(seed).sample(train_records, k)


# ----------------------------------------------------------------------------- running


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def check_out_dir(out: Path, overwrite: bool) -> None:
    if (out / "comparison.csv").exists() and not overwrite:
        raise SumtuneError(f"{out} already holds an evaluation; choose another --out or pass --overwrite")


def evaluate_candidates(cfg: RunConfig, candidates: list[Candidate], out: Path, accelerator) -> compare.Comparison:
    """Generate and score every candidate on ``cfg.eval.split``; main process writes the files."""
    from sumtune.generation import generate

    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise SumtuneError(f"--candidate names must be unique, got {', '.join(names)}")
    with accelerator.main_process_first():
        records, read = data.load_split(cfg.data, cfg.eval.split, cfg.data.max_eval_examples)
        train_records = data.load_split(cfg.data, "train")[0] if any(c.shots for c in candidates) else []
    examples = data.scoring_examples(records, cfg.eval.references)
    tracking.say(accelerator, f"{cfg.eval.split}: {len(records)} rows ({read.skipped} bad rows skipped"
                 f"{read.describe_normalised()}) -> {describe_examples(examples)}")
    names_of_metrics = metrics.configured(cfg.eval)
    scorers = [m for m in metrics.build(names_of_metrics, cfg, accelerator) if m.name != "rouge"]
    for m in scorers:  # a model metric loads its model once, now: one line here if it cannot work
        if hasattr(m, "load"):
            m.load()
    dialogues = [e["dialogue"] for e in examples]
    references = [e["references"] for e in examples]
    results: list[compare.Result] = []
    for cand in candidates:
        model, tokenizer, prompts = load_candidate(cand, cfg)
        models.to_device(model, accelerator.device)
        shots = draw_shots(train_records, cand.shots, cfg.train.seed) if cand.shots else []
        family = families.of_model(model)
        encoder = data.prompt_encoder(family, tokenizer, prompts, shots=shots)
        with_unk = data.prompts_with_unk(encoder, dialogues)
        tracking.say(accelerator, f"{cand.name}: {data.tokenizer_notes(tokenizer, prompts)}; <unk> in "
                     + ("no prompt (the tokenizer has no <unk>)" if with_unk is None else
                        f"{with_unk} of {len(dialogues)} prompts ({with_unk / len(dialogues):.1%})"))
        started = time.perf_counter()
        preds, stats = generate(accelerator, model, tokenizer, encoder, dialogues, cfg.generation)
        seconds = time.perf_counter() - started
        scores = rouge.score_multi(preds, references)
        means = scores.means
        values = {k: np.array([e[k] for e in scores.best]) for k in rouge.ROUGE_TYPES}
        over_refs = {k: np.array([e[k] for e in scores.mean_over_refs]) for k in rouge.ROUGE_TYPES}
        scored = {}
        for m in scorers:
            scored[m.name] = m.score(preds, references, dialogues)
            values.update(scored[m.name].values)
            over_refs.update(scored[m.name].over_refs or {})
        column_means = {k: float(v.mean()) for k, v in values.items()}
        info = {
            **means,
            # With several references per dialogue, the scores above are the multi-reference score
            # (best reference per ROUGE type); these are the mean over each dialogue's references.
            "mean_over_references": scores.means_over_refs,
            "examples": len(examples),
            "rows": len(records),
            "references": sum(len(r) for r in references),
            "eval_references": cfg.eval.references,
            "prompts_truncated": stats.truncated,
            "prompts_with_unk": with_unk,
            "shots": cand.shots,
            "shots_dropped": stats.shots_dropped,
            "shot_ids": [s["id"] for s in shots],
            "summaries_per_second": round(len(examples) / seconds, 3),
            "generation_seconds": round(seconds, 3),
            "candidate": cand.path,
            "kind": cand.run.kind,
            "method": cand.run.method,
            "split": cfg.eval.split,
            "family": family.name,
            "model_type": family.model_type,
            "template": encoder.template,
            "chat_template": encoder.frame.chat,
            "generation": to_dict(cfg.generation),
            # What decoding really used: sumtune's settings win over a checkpoint's generation_config.json.
            "generation_settings": stats.settings,
            "generation_strategy": stats.strategy,
            "metrics": names_of_metrics,
            # Every metric column's mean (ROUGE's too); per-example values of the metrics that need
            # a model are in predictions.jsonl, the others are recomputed from the texts.
            "means": column_means,
            "metric_settings": {m.name: m.settings() for m in scorers if m.settings()},
        }
        note = f"; {stats.shots_dropped} shots dropped as too long" if cand.shots else ""
        if "toxicity" in scored:
            info["toxicity"] = {**info["metric_settings"]["toxicity"],
                                **compare.toxicity_stats(scored["toxicity"].values["toxicity"], seed=cfg.train.seed)}
            note += f"; toxicity {info['toxicity']['mean']:.4f} (share > 0.5: {info['toxicity']['share_above_0_5']:.4f})"
        others = [c.name for m in scorers if m.name != "toxicity" for c in m.columns]
        if others:
            note += "; " + " ".join(f"{k} {column_means[k]:.4f}" for k in others)
        multi = max(len(r) for r in references) > 1
        if multi:
            note += "; mean over references: " + " ".join(f"{k} {scores.means_over_refs[k]:.4f}" for k in rouge.ROUGE_TYPES)
        tracking.say(accelerator, f"{cand.name}: " + ("multi-reference " if multi else "")
                     + " ".join(f"{k} {means[k]:.4f}" for k in rouge.ROUGE_TYPES)
                     + f" ({info['summaries_per_second']} summaries/s{note})")
        accelerator.log({f"{cand.name}/{k}": v for k, v in column_means.items()}
                        | ({f"{cand.name}/{k}{compare.OVER_REFS_SUFFIX}": scores.means_over_refs[k]
                            for k in rouge.ROUGE_TYPES} if multi else {})
                        | ({f"{cand.name}/toxicity_mean": info["toxicity"]["mean"]} if "toxicity" in scored else {}))
        rows = [prediction_row(e, p) for e, p in zip(examples, preds)]
        for m in scorers:
            for i, row in enumerate(rows):
                row.update(m.row_fields(scored[m.name], i))
        results.append(compare.Result(cand.name, rows, per_example=scores.best, extra=info,
                                      per_example_mean=scores.mean_over_refs, metrics=names_of_metrics,
                                      values=values, over_refs=over_refs))
        if accelerator.is_main_process:
            folder = out / cand.name
            folder.mkdir(parents=True, exist_ok=True)
            _write_jsonl(folder / "predictions.jsonl", rows)
            (folder / "metrics.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        del model
    comparison = compare.compare(results, split=cfg.eval.split, seed=cfg.train.seed)
    if accelerator.is_main_process:
        compare.write(out, results, comparison)
    compare.log_to_tracker(accelerator, results, comparison)
    accelerator.wait_for_everyone()
    return comparison


def describe_examples(examples: list[dict]) -> str:
    refs = [len(e["references"]) for e in examples]
    if max(refs) == 1:
        return f"{len(examples)} examples, one reference each"
    return (f"{len(examples)} dialogues with {sum(refs)} references ({min(refs)} to {max(refs)} each): each dialogue is "
            "generated once and scored against all its references")


def prediction_row(example: dict, prediction: str) -> dict:
    """A predictions.jsonl row: one per dialogue, with all its references (and, when it was read
    from several rows, their ids)."""
    row = {"id": example["id"], "dialogue": example["dialogue"], "references": example["references"],
           "prediction": prediction}
    if example["ids"] != [example["id"]]:
        row["row_ids"] = example["ids"]
    return row


def score_file(path: Path) -> tuple[dict[str, float], int]:
    """Score predictions made elsewhere: a jsonl file with id, prediction, and reference (one text)
    or references (a list: the multi-reference score)."""
    preds, refs = [], []
    for lineno, row in data.iter_jsonl(path):
        for key in ("id", "prediction"):
            if key not in row:
                raise SumtuneError(f"{path} line {lineno}: field '{key}' is missing")
        if not isinstance(row["prediction"], str):
            raise SumtuneError(f"{path} line {lineno}: field 'prediction' is not text")
        compare.check_references(row, f"{path} line {lineno}")
        preds.append(row["prediction"])
        refs.append(compare.references_of(row))
    if not preds:
        raise SumtuneError(f"{path}: no rows to score")
    scores = rouge.score_multi(preds, refs)
    means = scores.means
    if max(len(r) for r in refs) > 1:
        means = {**means, **{k + compare.OVER_REFS_SUFFIX: v for k, v in scores.means_over_refs.items()}}
    return means, len(preds)


def run(cfg: RunConfig, candidate_specs: list[str], out: Path, overwrite: bool = False) -> compare.Comparison:
    """Evaluate candidates under the current (possibly multi-process) launch."""
    from sumtune.distributed import deepspeed_config_path, finish, make_accelerator, read_deepspeed_config

    if (ds_json := deepspeed_config_path()) is not None:
        read_deepspeed_config(ds_json)  # missing or broken: one line here, not a traceback from Accelerate
    if not candidate_specs:
        raise SumtuneError("no --candidate given; e.g. --candidate base=google/flan-t5-base --candidate lora=outputs/run")
    candidates = [parse_candidate(s) for s in candidate_specs]
    check_out_dir(out, overwrite)
    accelerator = make_accelerator(cfg)
    if accelerator.distributed_type == "DEEPSPEED":
        # Evaluation trains nothing: each rank holds the whole model and generates its shard.
        # Without this, from_pretrained under a ZeRO-3 launch would load empty parameter shards.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    out.mkdir(parents=True, exist_ok=True)
    cfg.tracker.group = cfg.tracker.group or trained_group(candidates)
    tracking.start(accelerator, cfg.tracker, f"eval-{out.name}", out,
                   {**to_dict(cfg), "candidates": candidate_specs}, job_type="eval")
    comparison = evaluate_candidates(cfg, candidates, out, accelerator)
    if accelerator.is_main_process:
        print(compare.markdown(comparison), flush=True)
    finish(accelerator)  # several processes: exits here, after everything is written
    return comparison


def run_compare(cfg: RunConfig, folders: list[Path], out: Path, baseline: str | None, overwrite: bool = False):
    """Build the comparison from result folders written earlier (no model is loaded)."""
    from accelerate import Accelerator

    check_out_dir(out, overwrite)
    candidates = []
    for folder in folders:
        if (folder / "predictions.jsonl").is_file():
            candidates.append(folder)
        else:  # an evaluation's --out folder: take every candidate in it, in name order
            inner = sorted(p.parent for p in folder.glob("*/predictions.jsonl"))
            if not inner:
                raise SumtuneError(f"{folder}: holds no predictions.jsonl, nor candidate folders with one")
            candidates += inner
    results = [compare.load_result(f) for f in candidates]
    splits = {r.extra.get("split") for r in results if r.extra.get("split")}
    comparison = compare.compare(results, baseline=baseline, split="/".join(sorted(splits)) or "?", seed=cfg.train.seed)
    accelerator = Accelerator(cpu=True, log_with=tracking.log_with(cfg.tracker))
    out.mkdir(parents=True, exist_ok=True)
    compare.write(out, results, comparison)
    tracking.start(accelerator, cfg.tracker, f"compare-{out.name}", out,
                   {"folders": [str(f) for f in candidates], "baseline": comparison.baseline}, job_type="compare")
    compare.log_to_tracker(accelerator, results, comparison)
    print(compare.markdown(comparison), flush=True)
    from sumtune.distributed import finish

    finish(accelerator)
    return comparison


def run_score_only(path: Path, out: Path | None, overwrite: bool = False) -> dict:
    means, n = score_file(path)
    target = (out / "metrics.json") if out else path.with_suffix(".metrics.json")
    if target.exists() and not overwrite:
        raise SumtuneError(f"{target} already exists; pass --overwrite or choose --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({**means, "examples": n, "predictions": str(path)}, indent=2) + "\n", encoding="utf-8")
    print(compare.md_row(compare.TABLE_COLUMNS))
    print(compare.md_row([path.stem, *(f"{means[k]:.4f}" for k in rouge.ROUGE_TYPES)]))
    print(f"[sumtune] {n} examples scored; metrics written to {target}")
    return means
