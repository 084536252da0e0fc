"""Comparison tables across candidates: means, bootstrap confidence intervals, gains in points,
the worst and best examples. Used by eval/evaluate.py right after generation and by
eval/compare.py on result folders written earlier.

A result folder is what evaluation writes per candidate: ``predictions.jsonl`` (id, dialogue,
reference, prediction) and ``metrics.json``. Scores are recomputed from the predictions, so a
table never trusts a number it cannot re-derive.
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


@dataclass
class Result:
    """One candidate's predictions and per-example scores."""

    name: str
    records: list[dict]  # id, dialogue, reference, prediction
    per_example: list[dict[str, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # metrics.json beyond the scores

    def __post_init__(self):
        if not self.per_example:
            _, self.per_example = rouge.score([r["prediction"] for r in self.records],
                                              [r["reference"] for r in self.records])

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def means(self) -> dict[str, float]:
        return {k: float(np.mean([e[k] for e in self.per_example])) for k in rouge.ROUGE_TYPES}

    def matrix(self) -> np.ndarray:
        return np.array([[e[k] for k in rouge.ROUGE_TYPES] for e in self.per_example], dtype=np.float64)

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
        missing = [k for k in ("id", "prediction", "reference") if k not in row]
        if missing:
            raise SumtuneError(f"{path} line {lineno}: field '{missing[0]}' is missing")
        records.append(row)
    if not records:
        raise SumtuneError(f"{path}: no predictions")
    metrics_file = folder / "metrics.json"
    extra = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Result(name or folder.name, records, extra=extra)


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
    base = next(r for r in results if r.name == baseline).matrix()
    out = Comparison(baseline, split, len(ids), {}, {}, {}, {})
    for r in results:
        m = r.matrix()
        ci = bootstrap_ci(m, seed=seed)
        out.means[r.name] = dict(zip(rouge.ROUGE_TYPES, m.mean(axis=0).tolist()))
        out.ci[r.name] = {k: (float(lo), float(hi)) for k, (lo, hi) in zip(rouge.ROUGE_TYPES, ci)}
        if r.name != baseline:
            gain = 100 * (m - base).mean(axis=0)
            gci = 100 * paired_gain_ci(m, base, seed=seed)
            out.gain_pp[r.name] = dict(zip(rouge.ROUGE_TYPES, gain.tolist()))
            out.gain_ci_pp[r.name] = {k: (float(lo), float(hi)) for k, (lo, hi) in zip(rouge.ROUGE_TYPES, gci)}
    # The baseline first, as in the seed's tables.
    order = [baseline] + [n for n in names if n != baseline]
    out.means = {n: out.means[n] for n in order}
    out.ci = {n: out.ci[n] for n in order}
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


def long_csv(c: Comparison) -> str:
    """comparison_ci.csv: one row per model and metric, with the intervals."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp"])
    for name, scores in c.means.items():
        for k in rouge.ROUGE_TYPES:
            lo, hi = c.ci[name][k]
            gain = c.gain_pp.get(name, {}).get(k)
            glo, ghi = c.gain_ci_pp.get(name, {}).get(k, (None, None))
            fmt = lambda v, p: "" if v is None else f"{v:.{p}f}"  # noqa: E731
            writer.writerow([name, k, f"{scores[k]:.4f}", f"{lo:.4f}", f"{hi:.4f}", fmt(gain, 2), fmt(glo, 2), fmt(ghi, 2)])
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


def markdown(c: Comparison) -> str:
    head = [md_row(TABLE_COLUMNS), "|" + "---|" * len(TABLE_COLUMNS)]
    means = head + [
        md_row([n, *(f"{s[k]:.4f} [{c.ci[n][k][0]:.3f}, {c.ci[n][k][1]:.3f}]" for k in rouge.ROUGE_TYPES)])
        for n, s in c.means.items()
    ]
    gains = head + [
        md_row([n, *(f"{g[k]:+.2f} [{c.gain_ci_pp[n][k][0]:+.2f}, {c.gain_ci_pp[n][k][1]:+.2f}]" for k in rouge.ROUGE_TYPES)])
        for n, g in c.gain_pp.items()
    ]
    return "\n".join([
        f"# ROUGE on the {c.split} split ({c.examples} examples)",
        "",
        "F-measure, mean over examples, stemmed; [95% bootstrap CI, "
        f"{BOOTSTRAP_SAMPLES} resamples of the examples].",
        "",
        *means,
        "",
        f"## Absolute gain over `{c.baseline}` (percentage points, [95% paired bootstrap CI])",
        "",
        *(gains if c.gain_pp else ["(one candidate: nothing to compare)"]),
        "",
        *headline(c),
        "",
        *toxicity_markdown(c),
    ])


# ----------------------------------------------------------------------------- reading summaries


def _words(text: str) -> int:
    return len(text.split())


def length_stats(result: Result) -> dict[str, float]:
    pred = np.array([_words(r["prediction"]) for r in result.records], dtype=float)
    ref = np.array([_words(r["reference"]) for r in result.records], dtype=float)
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
                lines.append(md_row([rec["id"], f"{r.per_example[i][metric]:.3f}", _quote(rec["reference"]),
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

    rows = []
    for name, scores in c.means.items():
        for k in rouge.ROUGE_TYPES:
            gain = c.gain_pp.get(name, {}).get(k)
            gci = c.gain_ci_pp.get(name, {}).get(k, (None, None))
            rows.append([name, k, scores[k], *c.ci[name][k], gain, *gci])
    tracking.log_table(accelerator, "comparison",
                       ["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp"], rows)
    cols = ["candidate", "id", "dialogue", "reference", "prediction", *rouge.ROUGE_TYPES, "prediction_words", "reference_words"]
    preds = [[r.name, rec["id"], rec.get("dialogue", ""), rec["reference"], rec["prediction"],
              *(s[k] for k in rouge.ROUGE_TYPES), _words(rec["prediction"]), _words(rec["reference"])]
             for r in results for rec, s in zip(r.records, r.per_example)]
    if c.toxicity:  # a column of its own only when scored, so tables without it are as before
        cols.append("toxicity")
        preds = [row + [rec.get("toxicity")] for row, rec in zip(preds, (rec for r in results for rec in r.records))]
    tracking.log_table(accelerator, "predictions", cols, preds)
    picked = []
    for r in results:
        worst, best = extremes(r, report_examples)
        for kind, idx in (("worst", worst), ("best", best)):
            picked += [[r.name, kind, r.records[i]["id"], r.per_example[i]["rougeLsum"], r.records[i]["reference"],
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
