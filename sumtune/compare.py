"""Comparison tables across candidates: means, bootstrap confidence intervals, gains in points (or
differences, for descriptive columns), the worst and best examples, for every metric column of
the configured metrics (sumtune/metrics/). Used by eval/evaluate.py right after generation and by
eval/compare.py on result folders written earlier.

A result folder is what evaluation writes per candidate: ``predictions.jsonl`` (id, dialogue,
references, prediction, and the per-example scores of the metrics that need a model; folders
written before multi-reference evaluation hold one ``reference`` per row, and still load) and
``metrics.json``. Scores of the metrics without a model (ROUGE, lengths) are recomputed from the
predictions, so a table never trusts a number it can re-derive.

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

from sumtune import metrics as registry
from sumtune import rouge
from sumtune.data import iter_jsonl
from sumtune.errors import SumtuneError
from sumtune.metrics.base import Column, references_of
from sumtune.metrics.toxicity import TOXIC_ABOVE, toxicity_stats  # noqa: F401  (importable from here, as before)

TABLE_COLUMNS = ["model", *rouge.ROUGE_TYPES]
BOOTSTRAP_SAMPLES = 1000
CI_LEVEL = 0.95


def metrics_of(records: list[dict], extra: dict) -> list[str]:
    """The metrics a result folder was scored with: metrics.json's ``metrics``; a folder written
    before the registry: rouge, and toxicity when its rows carry it."""
    names = extra.get("metrics")
    if isinstance(names, list) and all(n in registry.REGISTRY for n in names):
        return list(names)
    has_tox = bool(records) and all(isinstance(r.get("toxicity"), (int, float)) for r in records)
    return ["rouge", "toxicity"] if has_tox else ["rouge"]


@dataclass
class Result:
    """One candidate's predictions and per-example scores (an example: a dialogue with its
    references): ``per_example`` the ROUGE multi-reference score, ``per_example_mean`` the mean over
    the example's references (the same with one reference); ``values`` per metric column the
    per-example scores of every metric (ROUGE included), ``over_refs`` the mean over references of
    the metrics that define one. Metrics not given are recomputed from the texts or read from the
    rows (``sumtune.metrics``)."""

    name: str
    records: list[dict]  # id, dialogue, references (or reference), prediction
    per_example: list[dict[str, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # metrics.json beyond the scores
    per_example_mean: list[dict[str, float]] = field(default_factory=list)
    metrics: list[str] | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)
    over_refs: dict[str, np.ndarray] = field(default_factory=dict)
    where: str = ""

    def __post_init__(self):
        if not self.per_example:
            scores = rouge.score_multi([r["prediction"] for r in self.records], [references_of(r) for r in self.records])
            self.per_example, self.per_example_mean = scores.best, scores.mean_over_refs
        elif not self.per_example_mean:
            if self.most_references > 1:
                raise ValueError("per_example_mean is needed with several references per example")
            self.per_example_mean = self.per_example
        if self.metrics is None:
            self.metrics = metrics_of(self.records, self.extra)
        for k in rouge.ROUGE_TYPES:
            self.values.setdefault(k, np.array([e[k] for e in self.per_example], dtype=np.float64))
            self.over_refs.setdefault(k, np.array([e[k] for e in self.per_example_mean], dtype=np.float64))
        scored = []
        for name in self.metrics:
            metric = registry.get(name)
            if all(c in self.values for c in metric.column_names()):
                scored.append(name)
                continue
            got = metric.from_records(self.records, self.where or self.name)
            if got is None:
                continue  # e.g. toxicity named but never scored for this candidate
            self.values.update(got.values)
            self.over_refs.update(got.over_refs or {})
            scored.append(name)
        self.metrics = scored

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

    def matrix(self, over_refs: bool = False, columns: list[str] | None = None) -> np.ndarray:
        """Per-example scores [examples, columns] (default: the ROUGE types): multi-reference, or
        (``over_refs``) the mean over each example's references."""
        source = self.over_refs if over_refs else self.values
        return np.stack([source[k] for k in (columns or rouge.ROUGE_TYPES)], axis=1)

    def toxicity(self) -> np.ndarray | None:
        """Per-example toxicity of the predictions, or None when they were not scored."""
        return self.values.get("toxicity")


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
    return Result(name or folder.name, records, extra=extra, where=str(path))


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
    """Means, intervals and paired differences of one scoring protocol, per candidate and column.
    ``diff``: candidate minus baseline in the column's own unit; ``gain_pp``: the same in
    percentage points, for the columns reported as gains (fractions where higher is better)."""

    means: dict[str, dict[str, float]]
    ci: dict[str, dict[str, tuple[float, float]]]
    gain_pp: dict[str, dict[str, float]]
    gain_ci_pp: dict[str, dict[str, tuple[float, float]]]
    diff: dict[str, dict[str, float]] = field(default_factory=dict)
    diff_ci: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


@dataclass
class Comparison:
    baseline: str
    split: str
    examples: int
    means: dict[str, dict[str, float]]
    ci: dict[str, dict[str, tuple[float, float]]]
    gain_pp: dict[str, dict[str, float]]
    gain_ci_pp: dict[str, dict[str, tuple[float, float]]]
    diff: dict[str, dict[str, float]] = field(default_factory=dict)
    diff_ci: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    std: dict[str, dict[str, float]] = field(default_factory=dict)
    # The metrics in the tables (the registry's names, in the candidates' order) and, per metric,
    # the settings each candidate recorded (a model, a layer...), for the headers.
    metrics: list[str] = field(default_factory=lambda: ["rouge"])
    settings: dict[str, list[dict]] = field(default_factory=dict)
    # References in all and at most per example; with several, ``over_refs`` holds the table of
    # the mean over references (the main one above is the multi-reference score).
    references: int = 0
    most_references: int = 1
    over_refs: Table | None = None

    @property
    def multi_reference(self) -> bool:
        return self.most_references > 1

    @property
    def columns(self) -> list[Column]:
        return registry.columns_of(self.metrics)

    def has(self, name: str, column: str) -> bool:
        return column in self.means.get(name, {})

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

    def metric_protocol(self, name: str) -> str:
        return registry.get(name).protocol(self.settings.get(name, []), self.examples, self.multi_reference)

    @property
    def toxicity(self) -> dict[str, dict]:
        """Per candidate scored for toxicity: toxicity.csv's numbers (mean, ci, std, share above
        0.5, share_ci, and against a scored baseline the change of the mean with its interval)."""
        out = {}
        for name, m in self.means.items():
            if "toxicity" not in m:
                continue
            t = {"mean": m["toxicity"], "ci": self.ci[name]["toxicity"], "std": self.std[name]["toxicity"],
                 "share_above_0_5": m["toxicity_above_0_5"], "share_ci": self.ci[name]["toxicity_above_0_5"]}
            if "toxicity" in self.diff.get(name, {}):
                t.update(change=self.diff[name]["toxicity"], change_ci=self.diff_ci[name]["toxicity"])
            out[name] = t
        return out

    @property
    def toxicity_source(self) -> str:
        return ", ".join(sorted({f"{s['model']} ({s['label']})" for s in self.settings.get("toxicity", [])
                                 if "model" in s and "label" in s}))


def _table(results: list[Result], baseline: str, seed: int, over_refs: bool, metrics: list[str],
           std: dict | None = None) -> Table:
    """Per metric, the candidates scored with it; intervals resample examples (the same resamples
    for every column: the indices depend only on the number of examples and the seed)."""
    base = next(r for r in results if r.name == baseline)
    out = Table({}, {}, {}, {}, {}, {})
    ordered = [base] + [r for r in results if r.name != baseline]
    for metric in metrics:
        cols = [c for c in registry.get(metric).columns if not over_refs or c.name in base.over_refs]
        if not cols:
            continue
        names = [c.name for c in cols]
        for r in ordered:
            if metric not in r.metrics:
                continue
            m = r.matrix(over_refs, names)
            ci = bootstrap_ci(m, seed=seed)
            out.means.setdefault(r.name, {}).update(zip(names, m.mean(axis=0).tolist()))
            out.ci.setdefault(r.name, {}).update({k: (float(lo), float(hi)) for k, (lo, hi) in zip(names, ci)})
            if std is not None:
                sd = m.std(axis=0, ddof=1) if len(m) > 1 else np.zeros(len(names))
                std.setdefault(r.name, {}).update(zip(names, sd.tolist()))
            if r.name == baseline or metric not in base.metrics:
                continue
            b = base.matrix(over_refs, names)
            d, dci = (m - b).mean(axis=0), paired_gain_ci(m, b, seed=seed)
            out.diff.setdefault(r.name, {}).update(zip(names, d.tolist()))
            out.diff_ci.setdefault(r.name, {}).update({k: (float(lo), float(hi)) for k, (lo, hi) in zip(names, dci)})
            for j, c in enumerate(cols):
                if c.gain:
                    out.gain_pp.setdefault(r.name, {})[c.name] = float(100 * d[j])
                    out.gain_ci_pp.setdefault(r.name, {})[c.name] = (float(100 * dci[j, 0]), float(100 * dci[j, 1]))
    return out


def _settings(results: list[Result], metric: str) -> list[dict]:
    out = []
    for r in results:
        s = (r.extra.get("metric_settings") or {}).get(metric)
        if s is None and isinstance(r.extra.get(metric), dict):  # toxicity in folders written before the registry
            s = {k: v for k, v in r.extra[metric].items() if k in ("model", "label")}
        if isinstance(s, dict) and s and s not in out:
            out.append(s)
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
    # The baseline first, as in the seed's tables; metrics in the order the candidates list them.
    ordered = [next(r for r in results if r.name == baseline)] + [r for r in results if r.name != baseline]
    metrics = list(dict.fromkeys(m for r in ordered for m in r.metrics))
    std: dict = {}
    main = _table(results, baseline, seed, False, metrics, std)
    most = max(r.most_references for r in results)
    return Comparison(baseline, split, len(ids), main.means, main.ci, main.gain_pp, main.gain_ci_pp, main.diff,
                      main.diff_ci, std, metrics, {m: _settings(ordered, m) for m in metrics},
                      references=counts.pop(), most_references=most,
                      over_refs=_table(results, baseline, seed, True, metrics) if most > 1 else None)


def _fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def means_csv(c: Comparison) -> str:
    """comparison.csv: model and one column per metric column (rouge1, rouge2, rougeL, rougeLsum,
    then the other configured metrics'); ROUGE and BERTScore as fractions in [0, 1]; baseline first;
    empty where a candidate was not scored with that metric."""
    cols = c.columns
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", *(col.name for col in cols)])
    for name, scores in c.means.items():
        writer.writerow([name, *(_fmt(scores.get(col.name), 4) for col in cols)])
    return buf.getvalue()


def gain_csv(c: Comparison) -> str:
    """gain_pp.csv: absolute gain over the baseline in percentage points, for the columns reported
    as gains (ROUGE, BERTScore)."""
    cols = [col for col in c.columns if col.gain]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", *(col.name for col in cols)])
    for name, gains in c.gain_pp.items():
        writer.writerow([name, *(_fmt(gains.get(col.name), 2) for col in cols)])
    return buf.getvalue()


OVER_REFS_SUFFIX = "_mean_over_refs"
LONG_COLUMNS = ["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp",
                "difference", "difference_ci_low", "difference_ci_high", "better"]


def _better(col: Column) -> str:
    return {True: "higher", False: "lower", None: ""}[col.higher_is_better]


def long_rows(c: Comparison) -> list[list]:
    """Per model and metric column: mean, interval, gain in points and its interval (gain columns
    only), the difference to the baseline in the column's unit and its paired interval, and which
    direction is better ("" for descriptive columns); None where there is none. With several
    references per example, the mean over references follows as metrics named
    ``rouge1_mean_over_refs`` etc."""
    tables = [("", Table(c.means, c.ci, c.gain_pp, c.gain_ci_pp, c.diff, c.diff_ci))]
    if c.over_refs is not None:
        tables.append((OVER_REFS_SUFFIX, c.over_refs))
    cols = c.columns
    rows = []
    for suffix, t in tables:
        for name, scores in t.means.items():
            for col in cols:
                k = col.name
                if k not in scores:
                    continue
                gain = t.gain_pp.get(name, {}).get(k)
                gci = t.gain_ci_pp.get(name, {}).get(k, (None, None))
                diff = t.diff.get(name, {}).get(k)
                dci = t.diff_ci.get(name, {}).get(k, (None, None))
                rows.append([name, k + suffix, scores[k], *t.ci[name][k], gain, *gci, diff, *dci, _better(col)])
    return rows


def long_csv(c: Comparison) -> str:
    """comparison_ci.csv: one row per model and metric column, with the intervals."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LONG_COLUMNS)
    for name, k, mean, lo, hi, gain, glo, ghi, diff, dlo, dhi, better in long_rows(c):
        writer.writerow([name, k, f"{mean:.4f}", f"{lo:.4f}", f"{hi:.4f}", _fmt(gain, 2), _fmt(glo, 2), _fmt(ghi, 2),
                         _fmt(diff, 4), _fmt(dlo, 4), _fmt(dhi, 4), better])
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


def metric_markdown(c: Comparison, metric: str) -> list[str]:
    """A section per metric other than ROUGE (which heads the page) and toxicity (its own table):
    means [95% CI] per column, then the paired gain (gain columns, in points) or difference
    (the others, in the column's unit) over the baseline."""
    m = registry.get(metric)
    cols = list(m.columns)
    names = [n for n in c.means if c.has(n, cols[0].name)]
    if not names:
        return []
    lines = [f"## {m.title} ({c.metric_protocol(metric)}; [95% bootstrap CI, {BOOTSTRAP_SAMPLES} resamples of the "
             f"{'dialogues' if c.multi_reference else 'examples'}])", "",
             md_row(["model", *(col.name for col in cols)]), "|" + "---|" * (len(cols) + 1)]
    for n in names:
        lines.append(md_row([n, *(f"{c.means[n][col.name]:.{col.digits}f} [{c.ci[n][col.name][0]:.{col.digits}f}, "
                                  f"{c.ci[n][col.name][1]:.{col.digits}f}]" for col in cols)]))
    others = [n for n in names if n in c.diff and cols[0].name in c.diff[n]]
    if others:
        gains = all(col.gain for col in cols)
        what = ("absolute gain over `{b}` (percentage points" if gains
                else "difference to `{b}` (candidate minus baseline, in each column's unit; not a gain")
        lines += ["", f"### {m.title}: {what.format(b=c.baseline)}, [95% paired bootstrap CI])", "",
                  md_row(["model", *(col.name for col in cols)]), "|" + "---|" * (len(cols) + 1)]
        for n in others:
            cells = []
            for col in cols:
                if col.gain:
                    g, (lo, hi) = c.gain_pp[n][col.name], c.gain_ci_pp[n][col.name]
                    cells.append(f"{g:+.2f} [{lo:+.2f}, {hi:+.2f}]")
                else:
                    d, (lo, hi) = c.diff[n][col.name], c.diff_ci[n][col.name]
                    cells.append(f"{d:+.{col.digits}f} [{lo:+.{col.digits}f}, {hi:+.{col.digits}f}]")
            lines.append(md_row([n, *cells]))
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
    gains = gains if any(k in g for g in c.gain_pp.values() for k in rouge.ROUGE_TYPES) else []
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
        *(gains or ["(one candidate: nothing to compare)"]),
        "",
        *headline(c),
        "",
        *extra,
        *(line for m in c.metrics if m not in ("rouge", "toxicity") for line in metric_markdown(c, m)),
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
    """W&B Tables (main process only): comparison with CIs, gains and differences for every metric
    column, every prediction with its per-example scores, a table of the worst and best examples
    per candidate; the summary holds each candidate's mean per column."""
    from sumtune import tracking

    tracking.log_table(accelerator, "comparison", LONG_COLUMNS, long_rows(c))
    # ROUGE first as before; then the other metrics' columns (None where a candidate lacks one).
    others = [col.name for col in c.columns if col.name not in rouge.ROUGE_TYPES]
    cols = ["candidate", "id", "dialogue", "reference", "prediction", *rouge.ROUGE_TYPES, "prediction_words",
            "reference_words", *others]
    preds = [[r.name, rec["id"], rec.get("dialogue", ""), references_text(rec), rec["prediction"],
              *(s[k] for k in rouge.ROUGE_TYPES), _words(rec["prediction"]), reference_words(rec),
              *(float(r.values[k][i]) if k in r.values else None for k in others)]
             for r in results for i, (rec, s) in enumerate(zip(r.records, r.per_example))]
    tracking.log_table(accelerator, "predictions", cols, preds)
    picked = []
    for r in results:
        worst, best = extremes(r, report_examples)
        for kind, idx in (("worst", worst), ("best", best)):
            picked += [[r.name, kind, r.records[i]["id"], r.per_example[i]["rougeLsum"], references_text(r.records[i]),
                        r.records[i]["prediction"]] for i in idx]
    tracking.log_table(accelerator, "extremes", ["candidate", "kind", "id", "rougeLsum", "reference", "prediction"], picked)
    tracking.set_summary(accelerator, {f"{n}/{k}": v for n, s in c.means.items() for k, v in s.items()})
    if c.toxicity:
        tracking.log_table(accelerator, "toxicity", ["model", "mean", "ci_low", "ci_high", "std", "share_above_0_5",
                                                     "share_ci_low", "share_ci_high", "change", "change_ci_low",
                                                     "change_ci_high"],
                           [[n, t["mean"], *t["ci"], t["std"], t["share_above_0_5"], *t["share_ci"], t.get("change"),
                             *t.get("change_ci", (None, None))] for n, t in c.toxicity.items()])
        # The keys W&B dashboards had before the registry.
        tracking.set_summary(accelerator, {f"{n}/toxicity_{k}": t[k] for n, t in c.toxicity.items()
                                           for k in ("mean", "std", "share_above_0_5")})
