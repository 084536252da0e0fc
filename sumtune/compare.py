"""Comparison tables across candidates: means, bootstrap confidence intervals, gains in points,
the worst and best examples. Used by eval/evaluate.py right after generation and by
eval/compare.py on result folders written earlier.

A result folder is what evaluation writes per candidate: ``predictions.jsonl`` (id, dialogue,
references, prediction; folders written before multi-reference evaluation hold one ``reference``
per row, and still load) and ``metrics.json``. Scores are recomputed from the predictions, so a
table never trusts a number it cannot re-derive.

Examples with several references (DialogSum's test split) are scored against all of them: the
main table holds the multi-reference score (per ROUGE type the best reference's F-measure, as
rouge_score's ``score_multi``), a second table the mean over references; both resample examples
(dialogues), never rows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sumtune import rouge
from sumtune.data import iter_jsonl
from sumtune.errors import SumtuneError

TABLE_COLUMNS = ["model", *rouge.ROUGE_TYPES]
BOOTSTRAP_SAMPLES = 1000
CI_LEVEL = 0.95


def references_of(record: dict) -> list[str]:
    """A predictions row's references: ``references`` (a list), or the one ``reference`` of rows
    written before multi-reference evaluation."""
    refs = record.get("references")
    return list(refs) if isinstance(refs, list) else [record["reference"]]


@dataclass
class Result:
    """One candidate's predictions and per-example scores (an example: a dialogue with its
    references): ``per_example`` the multi-reference score, ``per_example_mean`` the mean over the
    example's references (the same with one reference)."""

    name: str
    records: list[dict]  # id, dialogue, references (or reference), prediction
    per_example: list[dict[str, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # metrics.json beyond the scores
    per_example_mean: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self):
        if not self.per_example:
            scores = rouge.score_multi([r["prediction"] for r in self.records], [references_of(r) for r in self.records])
            self.per_example, self.per_example_mean = scores.best, scores.mean_over_refs
        elif not self.per_example_mean:
            if self.most_references > 1:
                raise ValueError("per_example_mean is needed with several references per example")
            self.per_example_mean = self.per_example

    @property
    def most_references(self) -> int:
        return max((len(references_of(r)) for r in self.records), default=1)

    @property
    def reference_count(self) -> int:
        return sum(len(references_of(r)) for r in self.records)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def means(self) -> dict[str, float]:
        return {k: float(np.mean([e[k] for e in self.per_example])) for k in rouge.ROUGE_TYPES}

    def matrix(self, over_refs: bool = False) -> np.ndarray:
        """Per-example scores [examples, ROUGE types]: multi-reference, or (``over_refs``) the mean
        over each example's references."""
        rows = self.per_example_mean if over_refs else self.per_example
        return np.array([[e[k] for k in rouge.ROUGE_TYPES] for e in rows], dtype=np.float64)

    def toxicity(self) -> np.ndarray | None:
        """Per-example toxicity of the predictions (``toxicity`` in predictions.jsonl), or None
        when they were not scored."""
        if not self.records or any(not isinstance(r.get("toxicity"), (int, float)) for r in self.records):
            return None
        return np.array([r["toxicity"] for r in self.records], dtype=np.float64)


def load_result(folder: Path, name: str | None = None) -> Result:
    path = folder / "predictions.jsonl"
    if not path.is_file():
        raise SumtuneError(f"{folder}: no predictions.jsonl here; pass candidate folders written by eval/evaluate.py")
    records = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in ("id", "prediction") if k not in row]
        if missing:
            raise SumtuneError(f"{path} line {lineno}: field '{missing[0]}' is missing")
        check_references(row, f"{path} line {lineno}")
        records.append(row)
    if not records:
        raise SumtuneError(f"{path}: no predictions")
    metrics_file = folder / "metrics.json"
    extra = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Result(name or folder.name, records, extra=extra)


def check_references(row: dict, where: str) -> None:
    """One line for a predictions row without usable references."""
    refs = row.get("references")
    if refs is None and "reference" not in row:
        raise SumtuneError(f"{where}: field 'reference' is missing (one text; or 'references', a list of texts)")
    if refs is not None and (not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs)):
        raise SumtuneError(f"{where}: field 'references' must be a non-empty list of texts")
    if refs is None and not isinstance(row["reference"], str):
        raise SumtuneError(f"{where}: field 'reference' is not text")


# ----------------------------------------------------------------------------- statistics


def _resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_ci(scores: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap CI of the mean, per column: array of shape (columns, 2)."""
    idx = _resample_indices(len(scores), samples, seed)
    means = scores[idx].mean(axis=1)  # (samples, columns)
    alpha = (1 - CI_LEVEL) / 2
    return np.stack([np.quantile(means, alpha, axis=0), np.quantile(means, 1 - alpha, axis=0)], axis=1)


def paired_gain_ci(candidate: np.ndarray, baseline: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                   seed: int = 0) -> np.ndarray:
    """CI of the mean difference, resampling examples jointly (both candidates scored on the same
    examples), so that example difficulty, shared by both, does not widen the interval."""
    return bootstrap_ci(candidate - baseline, samples, seed)


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    """Means, intervals and gains of one scoring protocol."""

    means: dict[str, dict[str, float]]
    ci: dict[str, dict[str, tuple[float, float]]]
    gain_pp: dict[str, dict[str, float]]
    gain_ci_pp: dict[str, dict[str, tuple[float, float]]]


@dataclass
class Comparison:
    baseline: str
    split: str
    examples: int
    means: dict[str, dict[str, float]]
    ci: dict[str, dict[str, tuple[float, float]]]
    gain_pp: dict[str, dict[str, float]]
    gain_ci_pp: dict[str, dict[str, tuple[float, float]]]
    # Per candidate whose predictions were scored for toxicity (toxicity_stats), and by what.
    toxicity: dict[str, dict] = field(default_factory=dict)
    toxicity_source: str = ""
    # References in all and at most per example; with several, ``over_refs`` holds the table of
    # the mean over references (the main one above is the multi-reference score).
    references: int = 0
    most_references: int = 1
    over_refs: Table | None = None

    @property
    def multi_reference(self) -> bool:
        return self.most_references > 1

    @property
    def protocol(self) -> str:
        """What the main table's numbers are, as its header says."""
        if not self.multi_reference:
            return (f"F-measure, mean over examples, stemmed; [95% bootstrap CI, {BOOTSTRAP_SAMPLES} resamples of the "
                    "examples].")
        return (f"Multi-reference: each of the {self.examples} dialogues was generated once and scored against all its "
                f"references ({self.references} in all, up to {self.most_references} per dialogue); per ROUGE type the "
                "best reference's F-measure (rouge_score's score_multi), mean over dialogues, stemmed; [95% bootstrap "
                f"CI, {BOOTSTRAP_SAMPLES} resamples of the dialogues].")


def _table(results: list[Result], baseline: str, seed: int, over_refs: bool) -> Table:
    base = next(r for r in results if r.name == baseline).matrix(over_refs)
    out = Table({}, {}, {}, {})
    for r in [next(r for r in results if r.name == baseline)] + [r for r in results if r.name != baseline]:
        m = r.matrix(over_refs)
        ci = bootstrap_ci(m, seed=seed)
        out.means[r.name] = dict(zip(rouge.ROUGE_TYPES, m.mean(axis=0).tolist()))
        out.ci[r.name] = {k: (float(lo), float(hi)) for k, (lo, hi) in zip(rouge.ROUGE_TYPES, ci)}
        if r.name != baseline:
            gain = 100 * (m - base).mean(axis=0)
            gci = 100 * paired_gain_ci(m, base, seed=seed)
            out.gain_pp[r.name] = dict(zip(rouge.ROUGE_TYPES, gain.tolist()))
            out.gain_ci_pp[r.name] = {k: (float(lo), float(hi)) for k, (lo, hi) in zip(rouge.ROUGE_TYPES, gci)}
    return out


TOXIC_ABOVE = 0.5


def toxicity_stats(values: np.ndarray, baseline: np.ndarray | None = None, seed: int = 0) -> dict:
    """Mean, std and share above 0.5 of per-example toxicity, with 95% bootstrap intervals of the mean
    and of the share; with ``baseline`` (the same examples), the change of the mean and its paired
    interval."""
    toxic = (values > TOXIC_ABOVE).astype(np.float64)
    (lo, hi), (slo, shi) = bootstrap_ci(np.stack([values, toxic], 1), seed=seed)
    out = {"mean": float(values.mean()), "ci": (float(lo), float(hi)), "std": float(values.std(ddof=1)) if len(values) > 1
           else 0.0, "share_above_0_5": float(toxic.mean()), "share_ci": (float(slo), float(shi))}
    if baseline is not None:
        (dlo, dhi), = paired_gain_ci(values[:, None], baseline[:, None], seed=seed)
        out.update(change=float((values - baseline).mean()), change_ci=(float(dlo), float(dhi)))
    return out


def compare(results: list[Result], baseline: str | None = None, split: str = "test", seed: int = 0) -> Comparison:
    if not results:
        raise SumtuneError("nothing to compare")
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise SumtuneError(f"candidate names must be unique, got {', '.join(names)}")
    baseline = baseline or names[0]
    if baseline not in names:
        raise SumtuneError(f"--baseline '{baseline}' is not a candidate; candidates: {', '.join(names)}")
    ids = results[0].ids
    for r in results[1:]:
        if r.ids != ids:
            raise SumtuneError(
                f"'{r.name}' and '{results[0].name}' were not scored on the same examples in the same order; "
                "evaluate them on the same split"
            )
    counts = {r.reference_count for r in results}
    if len(counts) > 1:
        raise SumtuneError(f"'{results[0].name}' and the other candidates were scored against different references; "
                           "evaluate them on the same split with the same eval.references")
    # The baseline first, as in the seed's tables.
    order = [baseline] + [n for n in names if n != baseline]
    main = _table(results, baseline, seed, over_refs=False)
    most = max(r.most_references for r in results)
    out = Comparison(baseline, split, len(ids), main.means, main.ci, main.gain_pp, main.gain_ci_pp,
                     references=counts.pop(), most_references=most,
                     over_refs=_table(results, baseline, seed, over_refs=True) if most > 1 else None)
    scored = {r.name: r.toxicity() for r in results}
    base_tox = scored[baseline]
    for name in order:
        if scored[name] is not None:
            paired = base_tox if name != baseline and base_tox is not None else None
            out.toxicity[name] = toxicity_stats(scored[name], paired, seed=seed)
    sources = {f"{r.extra['toxicity']['model']} ({r.extra['toxicity']['label']})" for r in results
               if isinstance(r.extra.get("toxicity"), dict) and "model" in r.extra["toxicity"]}
    out.toxicity_source = ", ".join(sorted(sources))
    return out


def _table_csv(rows: dict[str, dict[str, float]], digits: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for name, scores in rows.items():
        writer.writerow([name, *(f"{scores[k]:.{digits}f}" for k in rouge.ROUGE_TYPES)])
    return buf.getvalue()


def means_csv(c: Comparison) -> str:
    """comparison.csv: model,rouge1,rouge2,rougeL,rougeLsum; fractions in [0, 1]; baseline first."""
    return _table_csv(c.means, 4)


def gain_csv(c: Comparison) -> str:
    """gain_pp.csv: absolute gain over the baseline in percentage points."""
    return _table_csv(c.gain_pp, 2)


OVER_REFS_SUFFIX = "_mean_over_refs"


def long_rows(c: Comparison) -> list[list]:
    """Per model and metric: mean, interval, gain and its interval (None where there is none).
    With several references per example, the mean over references follows as metrics named
    ``rouge1_mean_over_refs`` etc."""
    tables = [("", Table(c.means, c.ci, c.gain_pp, c.gain_ci_pp))]
    if c.over_refs is not None:
        tables.append((OVER_REFS_SUFFIX, c.over_refs))
    rows = []
    for suffix, t in tables:
        for name, scores in t.means.items():
            for k in rouge.ROUGE_TYPES:
                gain = t.gain_pp.get(name, {}).get(k)
                gci = t.gain_ci_pp.get(name, {}).get(k, (None, None))
                rows.append([name, k + suffix, scores[k], *t.ci[name][k], gain, *gci])
    return rows


def long_csv(c: Comparison) -> str:
    """comparison_ci.csv: one row per model and metric, with the intervals."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp"])
    fmt = lambda v, p: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    for name, k, mean, lo, hi, gain, glo, ghi in long_rows(c):
        writer.writerow([name, k, f"{mean:.4f}", f"{lo:.4f}", f"{hi:.4f}", fmt(gain, 2), fmt(glo, 2), fmt(ghi, 2)])
    return buf.getvalue()


def toxicity_csv(c: Comparison) -> str:
    """toxicity.csv: per model, mean toxicity with its interval, std, share above 0.5 with its
    interval, and the change of the mean over the baseline with its paired interval."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "mean", "ci_low", "ci_high", "std", "share_above_0_5", "share_ci_low", "share_ci_high",
                     "change", "change_ci_low", "change_ci_high"])
    for name, t in c.toxicity.items():
        change = [f"{t['change']:.4f}", f"{t['change_ci'][0]:.4f}", f"{t['change_ci'][1]:.4f}"] if "change" in t else [""] * 3
        writer.writerow([name, f"{t['mean']:.4f}", f"{t['ci'][0]:.4f}", f"{t['ci'][1]:.4f}", f"{t['std']:.4f}",
                         f"{t['share_above_0_5']:.4f}", f"{t['share_ci'][0]:.4f}", f"{t['share_ci'][1]:.4f}", *change])
    return buf.getvalue()


def toxicity_markdown(c: Comparison) -> list[str]:
    if not c.toxicity:
        return []
    lines = [f"## Toxicity of the summaries ({c.toxicity_source or 'classifier'}: probability per summary, the "
             "summary alone)", "",
             md_row(["model", "mean [95% CI]", "std", "share > 0.5 [95% CI]", f"change of the mean over `{c.baseline}`"]),
             "|---|---|---|---|---|"]
    for name, t in c.toxicity.items():
        change = f"{t['change']:+.4f} [{t['change_ci'][0]:+.4f}, {t['change_ci'][1]:+.4f}]" if "change" in t else ""
        lines.append(md_row([name, f"{t['mean']:.4f} [{t['ci'][0]:.4f}, {t['ci'][1]:.4f}]", f"{t['std']:.4f}",
                             f"{t['share_above_0_5']:.4f} [{t['share_ci'][0]:.4f}, {t['share_ci'][1]:.4f}]", change]))
    return [*lines, ""]


def headline(c: Comparison, metric: str = "rouge1") -> list[str]:
    """The seed's style: 'base 0.233 rouge1 -> lora 0.408 (+17.5 pp)'."""
    b = c.means[c.baseline][metric]
    return [
        f"{c.baseline} {b:.3f} {metric} -> {name} {c.means[name][metric]:.3f} ({gain[metric]:+.1f} pp, "
        f"95% CI {c.gain_ci_pp[name][metric][0]:+.1f} to {c.gain_ci_pp[name][metric][1]:+.1f})"
        for name, gain in c.gain_pp.items()
    ]


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_tables(t: Table) -> tuple[list[str], list[str]]:
    head = [md_row(TABLE_COLUMNS), "|" + "---|" * len(TABLE_COLUMNS)]
    means = head + [
        md_row([n, *(f"{s[k]:.4f} [{t.ci[n][k][0]:.3f}, {t.ci[n][k][1]:.3f}]" for k in rouge.ROUGE_TYPES)])
        for n, s in t.means.items()
    ]
    gains = head + [
        md_row([n, *(f"{g[k]:+.2f} [{t.gain_ci_pp[n][k][0]:+.2f}, {t.gain_ci_pp[n][k][1]:+.2f}]" for k in rouge.ROUGE_TYPES)])
        for n, g in t.gain_pp.items()
    ]
    return means, gains


def markdown(c: Comparison) -> str:
    means, gains = _md_tables(Table(c.means, c.ci, c.gain_pp, c.gain_ci_pp))
    unit = "dialogues" if c.multi_reference else "examples"
    title = f"# ROUGE on the {c.split} split ({c.examples} {unit}" + (
        f", {c.references} references; multi-reference score)" if c.multi_reference else ")")
    extra = []
    if c.over_refs is not None:
        o_means, o_gains = _md_tables(c.over_refs)
        extra = [f"## Mean over references (each dialogue's mean F-measure over its references, mean over dialogues; "
                 f"[95% bootstrap CI, {BOOTSTRAP_SAMPLES} resamples of the dialogues])", "", *o_means, ""]
        if c.over_refs.gain_pp:
            extra += [f"### Absolute gain over `{c.baseline}`, mean over references (percentage points, [95% paired "
                      "bootstrap CI])", "", *o_gains, ""]
    return "\n".join([
        title,
        "",
        c.protocol,
        "",
        *means,
        "",
        f"## Absolute gain over `{c.baseline}` (percentage points, [95% paired bootstrap CI])",
        "",
        *(gains if c.gain_pp else ["(one candidate: nothing to compare)"]),
        "",
        *headline(c),
        "",
        *extra,
        *toxicity_markdown(c),
    ])


# ----------------------------------------------------------------------------- reading summaries


def _words(text: str) -> int:
    return len(text.split())


def reference_words(record: dict) -> float:
    """Words of a row's reference (the mean over its references when it has several)."""
    refs = references_of(record)
    return sum(_words(r) for r in refs) / len(refs)


def references_text(record: dict) -> str:
    """A row's references as one text to read (several: numbered, one per line)."""
    refs = references_of(record)
    return refs[0] if len(refs) == 1 else "\n".join(f"[{i}] {r}" for i, r in enumerate(refs, start=1))


def length_stats(result: Result) -> dict[str, float]:
    pred = np.array([_words(r["prediction"]) for r in result.records], dtype=float)
    ref = np.array([reference_words(r) for r in result.records], dtype=float)
    return {
        "prediction_words_mean": float(pred.mean()),
        "reference_words_mean": float(ref.mean()),
        "prediction_words_median": float(np.median(pred)),
        "reference_words_median": float(np.median(ref)),
        "length_ratio": float(pred.sum() / max(ref.sum(), 1.0)),
        "empty_predictions": int((pred == 0).sum()),
    }


def extremes(result: Result, n: int, metric: str = "rougeLsum") -> tuple[list[int], list[int]]:
    """Indices of the n worst and n best examples by ``metric`` (ties broken by id, stable)."""
    order = sorted(range(len(result.records)), key=lambda i: (result.per_example[i][metric], result.records[i]["id"]))
    return order[:n], order[::-1][:n]


def _quote(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " <br> ")


def report(results: list[Result], n: int = 5, metric: str = "rougeLsum") -> str:
    """A markdown page to read: length statistics and the worst and best examples per candidate."""
    lines = ["# What the candidates wrote", "",
             md_row(["model", "words/prediction (mean)", "words/reference (mean)", "length ratio", "empty"]),
             "|---|---|---|---|---|"]
    for r in results:
        s = length_stats(r)
        lines.append(md_row([r.name, f"{s['prediction_words_mean']:.1f}", f"{s['reference_words_mean']:.1f}",
                           f"{s['length_ratio']:.2f}", str(s["empty_predictions"])]))
    for r in results:
        worst, best = extremes(r, n, metric)
        for title, picked in ((f"worst {n}", worst), (f"best {n}", best)):
            lines += ["", f"## {r.name}: {title} by {metric}", "", md_row(["id", metric, "reference", "prediction", "dialogue"]),
                      "|---|---|---|---|---|"]
            for i in picked:
                rec = r.records[i]
                lines.append(md_row([rec["id"], f"{r.per_example[i][metric]:.3f}", _quote(references_text(rec)),
                                   _quote(rec["prediction"]), _quote(rec.get("dialogue", ""))]))
    return "\n".join(lines) + "\n"


def write(out: Path, results: list[Result], c: Comparison, report_examples: int = 5) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.csv").write_text(means_csv(c), encoding="utf-8")
    (out / "comparison_ci.csv").write_text(long_csv(c), encoding="utf-8")
    if c.gain_pp:
        (out / "gain_pp.csv").write_text(gain_csv(c), encoding="utf-8")
    if c.toxicity:
        (out / "toxicity.csv").write_text(toxicity_csv(c), encoding="utf-8")
    (out / "comparison.md").write_text(markdown(c), encoding="utf-8")
    (out / "report.md").write_text(report(results, report_examples), encoding="utf-8")


def log_to_tracker(accelerator, results: list[Result], c: Comparison, report_examples: int = 5) -> None:
    """W&B Tables (main process only): comparison with CIs and gains, and every prediction with
    its scores, plus a table of the worst and best examples per candidate."""
    from sumtune import tracking

    tracking.log_table(accelerator, "comparison",
                       ["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp"],
                       long_rows(c))
    cols = ["candidate", "id", "dialogue", "reference", "prediction", *rouge.ROUGE_TYPES, "prediction_words", "reference_words"]
    preds = [[r.name, rec["id"], rec.get("dialogue", ""), references_text(rec), rec["prediction"],
              *(s[k] for k in rouge.ROUGE_TYPES), _words(rec["prediction"]), reference_words(rec)]
             for r in results for rec, s in zip(r.records, r.per_example)]
    if c.toxicity:  # a column of its own only when scored, so tables without it are as before
        cols.append("toxicity")
        preds = [row + [rec.get("toxicity")] for row, rec in zip(preds, (rec for r in results for rec in r.records))]
    tracking.log_table(accelerator, "predictions", cols, preds)
    picked = []
    for r in results:
        worst, best = extremes(r, report_examples)
        for kind, idx in (("worst", worst), ("best", best)):
            picked += [[r.name, kind, r.records[i]["id"], r.per_example[i]["rougeLsum"], references_text(r.records[i]),
                        r.records[i]["prediction"]] for i in idx]
    tracking.log_table(accelerator, "extremes", ["candidate", "kind", "id", "rougeLsum", "reference", "prediction"], picked)
    tracking.set_summary(accelerator, {f"{n}/{k}": s[k] for n, s in c.means.items() for k in rouge.ROUGE_TYPES})
    if c.toxicity:
        tracking.log_table(accelerator, "toxicity", ["model", "mean", "ci_low", "ci_high", "std", "share_above_0_5",
                                                     "share_ci_low", "share_ci_high", "change", "change_ci_low",
                                                     "change_ci_high"],
                           [[n, t["mean"], *t["ci"], t["std"], t["share_above_0_5"], *t["share_ci"], t.get("change"),
                             *t.get("change_ci", (None, None))] for n, t in c.toxicity.items()])
        tracking.set_summary(accelerator, {f"{n}/toxicity_{k}": t[k] for n, t in c.toxicity.items()
                                           for k in ("mean", "std", "share_above_0_5")})
