"""How far each token's input embedding moved, against how often the training data uses it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PCA_TOKENS = 150  # the most frequent tokens drawn in the 2-D projection
PCA_LABELS = 25  # of which the most frequent are named
TOP_MOVED = 20


@dataclass
class EmbeddingShift:
    tokens: list[str]  # the tokenizer's piece for each id
    frequency: np.ndarray  # occurrences of each id in the training prompts and summaries (-1: unknown)
    norm_before: np.ndarray
    norm_after: np.ndarray
    shift: np.ndarray  # ||e_after - e_before|| per token
    pca_ids: np.ndarray
    pca_before: np.ndarray  # (len(pca_ids), 2)
    pca_after: np.ndarray
    pca_share: tuple[float, float]  # share of the variance the two components explain
    notes: list[str]

    @property
    def relative(self) -> np.ndarray:
        return self.shift / np.maximum(self.norm_before, 1e-12)

    def top_moved(self, n: int = TOP_MOVED) -> list[int]:
        return [int(i) for i in np.argsort(-self.shift, kind="stable")[:n]]


def token_frequency(tokenizer, texts: list[str], vocab: int) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for start in range(0, len(texts), 512):
        for ids in tokenizer(texts[start:start + 512], add_special_tokens=False)["input_ids"]:
            ids = np.asarray(ids, dtype=np.int64)
            counts += np.bincount(ids[ids < vocab], minlength=vocab)
    return counts


def pca_2d(before: torch.Tensor, after: torch.Tensor) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Both point sets in ONE 2-D frame: the two main axes of their union, so that a token's
    arrow from before to after is its movement and not a change of axes."""
    both = torch.cat([before, after]).double()
    centred = both - both.mean(0)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred @ vt[:2].T).numpy()
    var = (s**2).numpy()
    share = (float(var[0] / var.sum()), float(var[1] / var.sum())) if len(var) > 1 else (1.0, 0.0)
    return projected[: len(before)], projected[len(before):], share


def shift(before: torch.Tensor, after: torch.Tensor, tokenizer, frequency: np.ndarray | None) -> EmbeddingShift:
    notes = []
    if before.shape != after.shape:
        n = min(before.shape[0], after.shape[0])
        notes.append(f"the vocabulary changed size ({before.shape[0]} -> {after.shape[0]} rows); the first {n} are "
                     "compared")
        before, after = before[:n], after[:n]
    before, after = before.detach().float().cpu(), after.detach().float().cpu()
    vocab = before.shape[0]
    tokens = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))]
    tokens += [f"<id {i}>" for i in range(len(tokens), vocab)]  # rows past the tokenizer (padding to a multiple)
    if frequency is None:
        notes.append("token frequencies unknown (the training data could not be read); the projection shows the tokens "
                     "that moved most instead of the most frequent")
        frequency = np.full(vocab, -1, dtype=np.int64)
    delta = torch.linalg.norm(after - before, dim=1).numpy()
    order = np.argsort(-(frequency if frequency.max() > 0 else delta), kind="stable")
    pca_ids = order[: min(PCA_TOKENS, vocab)]
    pb, pa, share = pca_2d(before[pca_ids], after[pca_ids])
    return EmbeddingShift(tokens, frequency[:vocab], torch.linalg.norm(before, dim=1).numpy(),
                          torch.linalg.norm(after, dim=1).numpy(), delta, pca_ids, pb, pa, share, notes)


# ----------------------------------------------------------------------------- tables


CSV_COLUMNS = ["token_id", "token", "frequency", "norm_before", "norm_after", "shift", "relative_shift"]
PCA_COLUMNS = ["token_id", "token", "frequency", "x_before", "y_before", "x_after", "y_after"]


def rows(e: EmbeddingShift) -> list[list]:
    rel = e.relative
    return [[i, e.tokens[i], int(e.frequency[i]), float(e.norm_before[i]), float(e.norm_after[i]), float(e.shift[i]),
             float(rel[i])] for i in range(len(e.shift))]


def pca_rows(e: EmbeddingShift) -> list[list]:
    return [[int(i), e.tokens[i], int(e.frequency[i]), *map(float, e.pca_before[k]), *map(float, e.pca_after[k])]
            for k, i in enumerate(e.pca_ids)]


# ----------------------------------------------------------------------------- figures


def overview(e: EmbeddingShift, path, run: str):
    """Shift distribution (seen vs unseen tokens), norms before and after, shift vs frequency."""
    from sumtune.report import plot

    fig, axes = plot.figure(15, 4.4, 1, 3)
    known = e.frequency.max() > 0
    seen = e.frequency > 0
    bins = np.linspace(0, max(float(e.shift.max()), 1e-9), 41)
    ax = axes[0, 0]
    if known:
        ax.hist(e.shift[seen], bins=bins, color=plot.color(0), alpha=0.75, label=f"in the training data ({seen.sum()})")
        ax.hist(e.shift[~seen], bins=bins, color=plot.color(1), alpha=0.75, label=f"never in it ({(~seen).sum()})")
        ax.legend(fontsize=8)
    else:
        ax.hist(e.shift, bins=bins, color=plot.color(0))
    ax.set_xlabel("||e_after − e_before|| (L2 distance)")
    ax.set_ylabel("tokens")
    ax.set_title("how far each token's embedding moved", fontsize=10)

    ax = axes[0, 1]
    top = max(float(e.norm_before.max()), float(e.norm_after.max()))
    low = min(float(e.norm_before.min()), float(e.norm_after.min()))
    nbins = np.linspace(low, top if top > low else low + 1e-9, 41)
    ax.hist(e.norm_before, bins=nbins, histtype="step", linewidth=1.5, color="grey", label="base")
    ax.hist(e.norm_after, bins=nbins, histtype="step", linewidth=1.5, color=plot.color(2), label="fine-tuned")
    ax.set_xlabel("||e|| (L2 norm of the embedding)")
    ax.set_ylabel("tokens")
    ax.set_title("embedding norms before and after", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    if known:
        ax.scatter(e.frequency + 1, e.shift, s=6, alpha=0.5, color=plot.color(0))
        ax.set_xscale("log")
        ax.set_xlabel("occurrences in the training data + 1 (log scale)")
        ax.set_ylabel("||e_after − e_before||")
        ax.set_title("movement against token frequency", fontsize=10)
    else:
        ax.scatter(e.norm_before, e.shift, s=6, alpha=0.5, color=plot.color(0))
        ax.set_xlabel("||e_before||")
        ax.set_ylabel("||e_after − e_before||")
        ax.set_title("movement against the base norm", fontsize=10)
    fig.suptitle(f"{run}: input word embeddings, fine-tuned vs base ({len(e.shift)} tokens)")
    caption = ("Left: distribution of the L2 distance each token's input embedding moved (tokens the training data "
               "uses vs tokens it never uses, which move only through weight decay). Middle: embedding norms of the "
               "base and the fine-tuned model. Right: the distance against how often the token occurs in the training "
               "prompts (template and dialogue) and summaries.")
    return plot.save(fig, path, f"{run}: word-embedding movement", caption)


def projection(e: EmbeddingShift, path, run: str):
    """The most frequent tokens in 2-D (PCA of before and after together), an arrow per token."""
    from sumtune.report import plot

    fig, axes = plot.figure(9, 7.5)
    ax = axes[0, 0]
    ax.scatter(e.pca_before[:, 0], e.pca_before[:, 1], s=12, color="grey", alpha=0.7, label="base")
    ax.scatter(e.pca_after[:, 0], e.pca_after[:, 1], s=12, color=plot.color(3), alpha=0.8, label="fine-tuned")
    for b, a in zip(e.pca_before, e.pca_after):
        ax.annotate("", xy=a, xytext=b, arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6, "alpha": 0.6})
    for k in range(min(PCA_LABELS, len(e.pca_ids))):
        ax.annotate(e.tokens[e.pca_ids[k]], e.pca_after[k], fontsize=8, xytext=(3, 3), textcoords="offset points")
    what = "most frequent" if e.frequency.max() > 0 else "most moved"
    ax.set_xlabel(f"principal component 1 ({e.pca_share[0]:.0%} of the variance)")
    ax.set_ylabel(f"principal component 2 ({e.pca_share[1]:.0%} of the variance)")
    ax.set_title(f"{run}: the {len(e.pca_ids)} {what} tokens, base (grey) -> fine-tuned (red); "
                 f"the {min(PCA_LABELS, len(e.pca_ids))} {what} are named", fontsize=10)
    ax.legend(fontsize=8)
    caption = (f"The {len(e.pca_ids)} {what} tokens' input embeddings before and after fine-tuning, projected on the "
               "two principal components of both sets together (one frame, so a line is a token's own movement).")
    return plot.save(fig, path, f"{run}: word embeddings in 2-D (PCA)", caption)
