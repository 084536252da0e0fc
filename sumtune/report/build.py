"""Run and evaluation folders -> figures, the numbers behind them, one HTML page, W&B images."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import torch

from sumtune import data, metrics, models, tracking
from sumtune.checkpoints import CONFIG_FILE
from sumtune.config import RunConfig, load_config
from sumtune.errors import SumtuneError
from sumtune.prompts import format_prompt
from sumtune.report import curves, embeddings, scores, weights
from sumtune.report.page import Section, Table, render
from sumtune.runs import RunFolder, training_group

PAGE = "report.html"
MANIFEST = "report.json"


def kind_of(folder: Path) -> str:
    """'run' (a training run folder), 'eval' (an eval/evaluate.py --out folder), or one line why not."""
    if not folder.is_dir():
        raise SumtuneError(f"{folder}: no such folder; give training run folders or evaluation folders")
    if RunFolder(folder).config_file:
        return "run"
    if (folder / "comparison_ci.csv").is_file():
        return "eval"
    raise SumtuneError(f"{folder}: neither a training run folder (it has no {CONFIG_FILE}) nor an evaluation folder "
                       "(no comparison_ci.csv); give folders written by train/finetune.py or eval/evaluate.py")


def _write_csv(path: Path, columns: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        # repr of a float round-trips: a test can compare the file with its own computation exactly.
        writer.writerows([["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows])
    return path


def _names(folders: list[Path]) -> list[str]:
    """A sub-folder name per input: its folder name, numbered when two inputs share one."""
    names: list[str] = []
    for folder in folders:
        name, n = folder.resolve().name, 1
        while name in names:
            n += 1
            name = f"{folder.resolve().name}-{n}"
        names.append(name)
    return names


def _check_out(out: Path, overwrite: bool) -> None:
    manifest = out / MANIFEST
    if (out / PAGE).exists() and not overwrite:
        raise SumtuneError(f"{out} already holds a report; choose another --out or pass --overwrite")
    if manifest.is_file():  # replace our own earlier files only; anything else in the folder stays
        for name in json.loads(manifest.read_text(encoding="utf-8")).get("files", []):
            target = out / name
            if target.is_file() and out.resolve() in target.resolve().parents:
                target.unlink()


# ----------------------------------------------------------------------------- a training run


def _input_embedding_weight(model) -> torch.Tensor:
    layer = model.get_input_embeddings()
    if hasattr(layer, "get_base_layer"):  # a PEFT wrapper (trainable tokens): the frozen table
        layer = layer.get_base_layer()
    return layer.weight.detach().float().clone()


def _token_frequency(cfg: RunConfig, tokenizer, vocab: int, notes: list[str]):
    try:
        records, _ = data.load_split(cfg.data, "train")
    except Exception as err:  # noqa: BLE001 - frequencies only order the projection; the report goes on without
        notes.append(f"token frequencies unavailable: the training data could not be read "
                     f"({str(err).splitlines()[0][:160]})")
        return None
    # The text as the model read it: the prompt (template around the dialogue) and the summary.
    texts = [format_prompt(cfg.data.template, r["dialogue"]) for r in records] + [r["summary"] for r in records]
    return embeddings.token_frequency(tokenizer, texts, vocab)


def inspect_run(folder: Path, name: str, out: Path) -> tuple[Section, dict]:
    """Weight and embedding changes of one run folder (its saved model against its base)."""
    run = RunFolder(folder)
    cfg = run.config
    # A merged export's config names the export itself: its base and method are in export.json.
    what = (f"a merged {run.export_info.get('method')} adapter on" if run.kind == "merged"
            else f"{cfg.model.method} fine-tuning of")
    section = Section(f"run {name}", f"{folder}: {what} {run.base_model}.")
    summary: dict = {"folder": str(folder), "base": run.base_model}
    if not run.has_model:
        section.notes.append("no saved model in this folder (an unfinished run?): only its training curves are shown")
        return section, summary
    kind = "adapter" if run.kind == "adapter" else "full"
    model, tokenizer = run.load(cfg.model.trust_remote_code)
    model.eval()
    rank = None
    if kind == "adapter":
        changes = weights.adapter_changes(model)
        matrices, section.notes[:] = changes.matrices, changes.notes
        rank = getattr(model.peft_config[model.active_adapter], "r", None)
        summary.update(method=changes.method, adapted_layers=changes.adapted_layers)
        before = _input_embedding_weight(model.get_base_model())
        try:
            after = _input_embedding_weight(model.merge_and_unload())
        except Exception:  # noqa: BLE001 - a method PEFT cannot merge leaves the embedding table as it was
            after = before
        base_model = None
    else:
        family = models.model_family(run.base_model, cfg.model)
        base_model = models.load_model(run.base_model, trust_remote_code=cfg.model.trust_remote_code, family=family)
        matrices, notes = weights.full_changes(base_model, model)
        section.notes += notes
        summary["method"] = "full"
        before, after = _input_embedding_weight(base_model), _input_embedding_weight(model)
    sub = out / name
    if matrices:
        path = _write_csv(sub / "weight_change.csv", weights.CSV_COLUMNS, weights.rows(matrices))
        section.files.append(path)
        if any(m.layer for m in matrices):
            section.pictures.append(weights.heatmaps(matrices, sub / "weight_change.png", name, kind))
        if any(m.singular_values for m in matrices):
            spectra = {m.name: m.singular_values for m in matrices}
            (sub / "spectrum.json").write_text(json.dumps(spectra) + "\n", encoding="utf-8")
            section.files.append(sub / "spectrum.json")
            section.pictures.append(weights.spectrum(matrices, sub / "spectrum.png", name, rank))
        outside = [m for m in matrices if not m.layer]
        if outside:
            section.tables.append(Table("Weight matrices outside the numbered layers (embeddings, output head)",
                                        ["matrix", "shape", "||ΔW||_F", "||W||_F", "||ΔW|| / ||W||"],
                                        [[m.name, f"{m.rows} x {m.cols}", m.delta_norm, m.base_norm, m.relative]
                                         for m in outside]))
        rel = [m.relative for m in matrices if not math.isnan(m.relative)]
        summary.update(matrices=len(matrices), mean_relative_change=sum(rel) / len(rel) if rel else None,
                       max_relative_change=max(rel) if rel else None)
    elif kind == "adapter" and not section.notes:
        section.notes.append("the adapter holds no weight update to show")
    if torch.equal(before, after):
        section.notes.append("The input word embeddings did not move: this method leaves the embedding table frozen "
                             "(nothing to plot).")
        summary["embeddings_moved"] = False
    else:
        notes: list[str] = []
        freq = _token_frequency(cfg, tokenizer, before.shape[0], notes)
        e = embeddings.shift(before, after, tokenizer, freq)
        section.notes += notes + e.notes
        section.files.append(_write_csv(sub / "embeddings.csv", embeddings.CSV_COLUMNS, embeddings.rows(e)))
        section.files.append(_write_csv(sub / "embeddings_pca.csv", embeddings.PCA_COLUMNS, embeddings.pca_rows(e)))
        section.pictures.append(embeddings.overview(e, sub / "embeddings.png", name))
        section.pictures.append(embeddings.projection(e, sub / "embeddings_pca.png", name))
        top = e.top_moved()
        section.tables.append(Table(f"The {len(top)} tokens whose input embedding moved most",
                                    ["token id", "token", "occurrences in training data", "||e|| before", "||e|| after",
                                     "moved ||Δe||", "moved / ||e|| before"],
                                    [[i, e.tokens[i], int(e.frequency[i]), float(e.norm_before[i]),
                                      float(e.norm_after[i]), float(e.shift[i]), float(e.relative[i])] for i in top]))
        summary.update(embeddings_moved=True, mean_token_shift=float(e.shift.mean()),
                       max_token_shift=float(e.shift.max()))
    del model, base_model
    return section, summary


# ----------------------------------------------------------------------------- an evaluation


def _interval(row: dict, value: str, low: str, high: str, fmt: str) -> str:
    if row.get(value) is None:
        return "-"
    return f"{row[value]:{fmt}} [{row[low]:{fmt}}, {row[high]:{fmt}}]"


def inspect_eval(folder: Path, name: str, out: Path) -> tuple[Section, dict]:
    s = scores.read(folder)
    sub = out / name
    section = Section(f"evaluation {name}", f"{folder}: {len(s.candidates)} candidates, baseline {s.baseline}.")
    section.files.append(_write_csv(sub / "scores.csv", scores.SCORE_COLUMNS, scores.score_rows(s)))
    others = []
    for metric, cols in scores.metrics_in(s):
        gains = [k for k in cols if any(s.ci[c].get(k, {}).get("gain_pp") is not None for c in s.candidates)]
        diffs = [k for k in cols if k not in gains
                 and any(s.ci[c].get(k, {}).get("difference") is not None for c in s.candidates)]
        what = {"rouge": "ROUGE F-measure", "bertscore": "BERTScore"}.get(metric, metrics.get(metric).title)
        section.tables.append(Table(
            f"{what} [95% bootstrap interval]" + (f"; gain over {s.baseline} in percentage points [95% paired interval]"
                                                  if gains else "")
            + (f"; difference to {s.baseline} [95% paired interval] (not a gain)" if diffs else "")
            + " (from comparison_ci.csv)",
            ["candidate", *cols, *(f"gain {k}" for k in gains), *(f"difference {k}" for k in diffs)],
            [[c, *(_interval(s.ci[c].get(k, {}), "mean", "ci_low", "ci_high", ".4f") for k in cols),
              *(_interval(s.ci[c].get(k, {}), "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp", "+.2f") for k in gains),
              *(_interval(s.ci[c].get(k, {}), "difference", "difference_ci_low", "difference_ci_high", "+.4f")
                for k in diffs)]
             for c in s.candidates if any(k in s.ci[c] for k in cols)]))
        if metric != "rouge":
            others.append((metric, cols))
    section.pictures.append(scores.rouge_bars(s, sub / "rouge.png", name))
    if len(s.candidates) > 1:
        section.pictures.append(scores.gain_bars(s, sub / "gain.png", name))
    for metric, cols in others:
        section.pictures.append(scores.metric_bars(s, metric, cols, sub / f"{metric}_scores.png", name))
    if s.lengths:
        section.files.append(_write_csv(sub / "lengths.csv", scores.LENGTH_COLUMNS, scores.length_rows(s)))
        section.pictures.append(scores.length_histograms(s, sub / "lengths.png", name))
    missing = [c for c in s.candidates if c not in s.lengths]
    if missing:
        section.notes.append(f"no predictions.jsonl for {', '.join(missing)}: no length histogram for them")
    return section, {"folder": str(folder), "baseline": s.baseline, "candidates": s.candidates}


# ----------------------------------------------------------------------------- W&B


def _tracker_config(folders: list[Path], kinds: list[str], overrides: list[str]) -> tuple[RunConfig, str]:
    """The first run's own config (its W&B project and group) with the command line's overrides."""
    runs = [f for f, k in zip(folders, kinds) if k == "run"]
    cfg = load_config(RunFolder(runs[0]).config_file if runs else None, overrides)
    group = cfg.tracker.group or (cfg.run_name if runs else None)
    if group is None:  # evaluations only: the group of the first trained candidate they scored
        paths = []
        for folder in folders:
            for metrics in sorted(folder.glob("*/metrics.json")):
                paths.append(json.loads(metrics.read_text(encoding="utf-8")).get("candidate", ""))
        group = training_group(p for p in paths if p) or "inspect"
    return cfg, group


def _log_to_wandb(cfg: RunConfig, group: str, out: Path, sections: list[Section], folders: list[Path]) -> None:
    from accelerate import Accelerator

    from sumtune.distributed import finish

    cfg.tracker.group = group
    accelerator = Accelerator(cpu=True, log_with=tracking.log_with(cfg.tracker) or None)
    tracking.start(accelerator, cfg.tracker, f"inspect-{out.name}", out, {"folders": [str(f) for f in folders]},
                   job_type="inspect")
    tracking.log_images(accelerator, {f"report/{p.path.relative_to(out).with_suffix('').as_posix()}": (p.path, p.title)
                                      for s in sections for p in s.pictures})
    finish(accelerator)


# ----------------------------------------------------------------------------- all of it


def build(folders: list[Path], out: Path | None = None, overwrite: bool = False, overrides: list[str] | None = None) -> Path:
    """Inspect run and evaluation folders; write figures, CSV/JSON, report.html and W&B images.
    Returns the page's path."""
    if not folders:
        raise SumtuneError("give at least one training run folder or evaluation folder")
    started = time.perf_counter()
    kinds = [kind_of(f) for f in folders]
    names = _names(folders)
    out = out or folders[0] / "report"
    cfg, group = _tracker_config(folders, kinds, list(overrides or []))  # bad overrides fail before any work
    _check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    summary: dict = {"inputs": {}}
    logs = {n: curves.read_log(f / "train_log.jsonl") for f, n, k in zip(folders, names, kinds)
            if k == "run" and (f / "train_log.jsonl").is_file()}
    if logs:
        section = Section("training curves", "From each run's train_log.jsonl.")
        section.files.append(_write_csv(out / "training_curves.csv", ["run", "step", "metric", "value"], curves.rows(logs)))
        section.pictures.append(curves.figure(logs, out / "training_curves.png"))
        sections.append(section)
    for folder, name, kind in zip(folders, names, kinds):
        print(f"[sumtune] inspecting {folder} ({'training run' if kind == 'run' else 'evaluation'})", flush=True)
        section, info = (inspect_run if kind == "run" else inspect_eval)(folder, name, out)
        if kind == "run" and name not in logs:
            section.notes.append("no train_log.jsonl in the run folder: no training curves")
        sections.append(section)
        summary["inputs"][name] = {"kind": kind, **info, "notes": section.notes}
    pictures = [p for s in sections for p in s.pictures]
    page = out / PAGE
    page.write_text(render("sumtune report", f"Folders: {', '.join(str(f) for f in folders)}. Every figure's numbers "
                           "are in the CSV/JSON files beside it.", sections, out), encoding="utf-8")
    summary["figures"] = [{"file": p.path.relative_to(out).as_posix(), "title": p.title, "width": p.width,
                           "height": p.height} for p in pictures]
    summary["files"] = sorted({p.relative_to(out).as_posix() for s in sections for p in s.files}
                              | {f["file"] for f in summary["figures"]} | {PAGE})
    (out / MANIFEST).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _log_to_wandb(cfg, group, out, sections, folders)
    print(f"[sumtune] report: {page} ({len(pictures)} figures, {time.perf_counter() - started:.1f} s)", flush=True)
    return page

