"""What fine-tuning changed in the weight matrices: per layer and module, with no knowledge of any
model family or PEFT method.

- An adapter run: each adapted layer is asked for its update through PEFT's own
  ``get_delta_weight(adapter)`` (LoRA: ``scaling * B @ A``; AdaLoRA, LoHa, LoKr, VeRA and DoRA's
  directional part likewise), so an additive method PEFT knows needs no code here. Methods without
  an additive update (IA3's scales, prompt learning) get a note instead.
- A full fine-tune: every weight matrix against the same matrix of the base model.

A layer is named by the path up to the first integer of the parameter's name
(``encoder.block.0``, ``model.layers.3``), a module by the rest without integers (``SelfAttention.q``,
``mlp.up_proj``): generic, so T5's encoder and decoder blocks, or a Llama's layers, come out as rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class MatrixChange:
    name: str  # the module's path in the base model (no ".weight")
    layer: str  # "" for a matrix outside the numbered layers (embeddings, heads)
    module: str
    rows: int
    cols: int
    delta_norm: float  # Frobenius norm of the change
    base_norm: float  # Frobenius norm of the frozen (base) weight
    singular_values: list[float] = field(default_factory=list)  # of the change, largest first (adapters)

    @property
    def relative(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm > 0 else math.nan

    @property
    def effective_rank(self) -> float:
        return effective_rank(self.singular_values)

    @property
    def rank_90(self) -> int:
        return energy_rank(self.singular_values, 0.9)


def effective_rank(singular_values: list[float]) -> float:
    """exp of the entropy of the normalised singular values (Roy and Vetterli, 2007): 1 for a
    rank-1 update, r for r equal singular values; NaN for a zero update."""
    s = torch.tensor(singular_values, dtype=torch.float64)
    s = s[s > 0]
    if s.numel() == 0:
        return math.nan
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(singular_values: list[float], share: float) -> int:
    """How many singular values hold ``share`` of the squared Frobenius norm (0 for a zero update)."""
    s2 = torch.tensor(singular_values, dtype=torch.float64) ** 2
    if s2.sum() <= 0:
        return 0
    return int((torch.cumsum(s2, 0) / s2.sum() < share).sum()) + 1


def split_name(name: str) -> tuple[str, str]:
    """(layer, module) of a module path: ``decoder.block.1.layer.2.DenseReluDense.wo`` ->
    (``decoder.block.1``, ``layer.DenseReluDense.wo``); ("", name) when no part is a number."""
    parts = name.removesuffix(".weight").split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1]), ".".join(p for p in parts[i + 1:] if not p.isdigit())
    return "", ".".join(parts)


# Singular values below this share of the largest are float32 round-off of a zero, not directions:
# they are neither kept nor drawn (a rank-16 update of a 4096-wide layer keeps 16 values, not 4096).
NOISE = 1e-6


def _matrix(name: str, delta: torch.Tensor, base: torch.Tensor, spectrum: bool) -> MatrixChange:
    delta, base = delta.detach().float().cpu(), base.detach().float().cpu()
    layer, module = split_name(name)
    rows, cols = delta.shape[0], int(delta[0].numel()) if delta.ndim > 1 else 1
    values = []
    if spectrum and delta.ndim >= 2:
        # float64: exact to the update's own precision, and faster on a busy CPU (measured on the
        # demo's 512 x 128 updates, 2 shared cores: 12 ms against 160 ms for float32).
        s = torch.linalg.svdvals(delta.reshape(rows, -1).double())
        values = s[s >= s[0] * NOISE].tolist() if s.numel() and s[0] > 0 else []
    return MatrixChange(name, layer, module, rows, cols, float(torch.linalg.norm(delta)), float(torch.linalg.norm(base)),
                        values)


# ----------------------------------------------------------------------------- adapters


@dataclass
class AdapterChanges:
    method: str  # PEFT's name for it: LORA, ADALORA, IA3, PROMPT_TUNING...
    matrices: list[MatrixChange]
    notes: list[str]
    adapted_layers: int


def adapter_changes(peft_model, spectrum: bool = True) -> AdapterChanges:
    """The update each adapted layer adds to its frozen weight, through PEFT's ``get_delta_weight``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.integrations import dequantize_module_weight

    adapter = peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    method = str(getattr(config.peft_type, "value", config.peft_type))
    if config.is_prompt_learning:
        return AdapterChanges(method, [], [f"{method} learns virtual tokens put in front of the input; it changes no weight "
                                           "of the model, so there is no weight change to show."], 0)
    matrices, without = [], {}
    adapted = 0
    with torch.no_grad():
        for name, layer in peft_model.get_base_model().named_modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
            if not any(adapter in getattr(layer, attr, {}) for attr in layer.adapter_layer_names):
                continue
            adapted += 1
            base = dequantize_module_weight(layer.get_base_layer())
            try:
                delta = layer.get_delta_weight(adapter)
            except (AttributeError, NotImplementedError):
                without[type(layer).__name__] = without.get(type(layer).__name__, 0) + 1
                continue
            if tuple(delta.shape) != tuple(base.shape):
                without[type(layer).__name__] = without.get(type(layer).__name__, 0) + 1
                continue
            matrices.append(_matrix(name, delta, base, spectrum))
    notes = []
    for kind, count in without.items():
        notes.append(f"{count} adapted layers ({kind}, {method}) add no update to their weight matrix (they scale "
                     "activations or replace rows), so they have no entry in the weight-change heatmap.")
    if getattr(config, "use_dora", False):
        notes.append("DoRA: the heatmap shows the directional update scaling * B @ A; DoRA also rescales each output "
                     "row of the merged weight by its learned magnitude, which is not in these norms.")
    return AdapterChanges(method, matrices, notes, adapted)


# ----------------------------------------------------------------------------- full fine-tuning


def full_changes(base_model, tuned_model) -> tuple[list[MatrixChange], list[str]]:
    """Every weight matrix (2-D parameter) of the tuned model against the base's of the same name."""
    base = dict(base_model.named_parameters())
    matrices, notes, missing = [], [], []
    with torch.no_grad():
        for name, tuned in tuned_model.named_parameters():
            if tuned.ndim != 2:
                continue
            before = base.get(name)
            if before is None or before.shape != tuned.shape:
                missing.append(name)
                continue
            matrices.append(_matrix(name.removesuffix(".weight"), tuned - before, before, spectrum=False))
    if missing:
        notes.append(f"{len(missing)} weight matrices have no counterpart of the same shape in the base (e.g. "
                     f"{missing[0]}) and are left out.")
    return matrices, notes


# ----------------------------------------------------------------------------- tables


CSV_COLUMNS = ["name", "layer", "module", "rows", "cols", "delta_norm", "base_norm", "relative", "effective_rank",
               "rank_90"]


def rows(matrices: list[MatrixChange]) -> list[list]:
    return [[m.name, m.layer, m.module, m.rows, m.cols, m.delta_norm, m.base_norm, m.relative,
             m.effective_rank if m.singular_values else "", m.rank_90 if m.singular_values else ""] for m in matrices]


def _strip_common(labels: list[str]) -> tuple[list[str], str]:
    """Drop the leading dotted parts all labels share (keeping at least one part each)."""
    split = [label.split(".") for label in labels]
    n = 0
    while all(len(s) > n + 1 for s in split) and len({s[n] for s in split}) == 1:
        n += 1
    return [".".join(s[n:]) for s in split], ".".join(split[0][:n])


def grid(matrices: list[MatrixChange], value) -> tuple[list[list[float]], list[str], list[str], str]:
    """(values, row labels, column labels, the common prefix of the rows) of the matrices inside the
    numbered layers, in the order the model holds them; NaN where a layer lacks a module."""
    inside = [m for m in matrices if m.layer]
    layers = list(dict.fromkeys(m.layer for m in inside))
    modules = list(dict.fromkeys(m.module for m in inside))
    table = [[math.nan] * len(modules) for _ in layers]
    for m in inside:
        table[layers.index(m.layer)][modules.index(m.module)] = value(m)
    row_labels, prefix = _strip_common(layers)
    col_labels, _ = _strip_common(modules) if len(modules) > 1 else (modules, "")
    return table, row_labels, col_labels, prefix


# ----------------------------------------------------------------------------- figures


def _panel_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches for one layer x module heatmap: cells readable, room for the rotated module names."""
    return min(20.0, max(8.0, 3.2 + 0.75 * n_cols)), min(12.0, 1.9 + 0.34 * n_rows)


def _layer_axis(ax, prefix: str) -> None:
    ax.set_xlabel("module")
    ax.set_ylabel(f"layer ({prefix}.N)" if prefix else "layer")


def heatmaps(matrices: list[MatrixChange], path, run: str, kind: str):
    """Absolute and relative change per layer x module, one above the other."""
    from sumtune.report import plot

    absolute, rows_, cols, prefix = grid(matrices, lambda m: m.delta_norm)
    relative, _, _, _ = grid(matrices, lambda m: m.relative)
    width, height = _panel_size(len(rows_), len(cols))
    fig, axes = plot.figure(width, 2 * height + 0.5, 2, 1)
    what = "update" if kind == "adapter" else "change"
    plot.heatmap(axes[0, 0], absolute, rows_, cols, "‖ΔW‖_F")
    plot.heatmap(axes[1, 0], relative, rows_, cols, "‖ΔW‖_F / ‖W‖_F", cmap="magma_r")
    axes[0, 0].set_title(f"absolute {what}: Frobenius norm ‖ΔW‖_F", fontsize=10)
    axes[1, 0].set_title(f"{what} relative to the {'frozen' if kind == 'adapter' else 'base'} weight: ‖ΔW‖_F / ‖W‖_F",
                         fontsize=10)
    for ax in axes[:, 0]:
        _layer_axis(ax, prefix)
    fig.suptitle(f"{run}: what {'the adapter adds to' if kind == 'adapter' else 'full fine-tuning changed in'} "
                 "each weight matrix")
    caption = ("Frobenius norm of the update each adapted layer adds to its frozen weight (PEFT's get_delta_weight; "
               "for LoRA scaling * B @ A), above as it is, below divided by the norm of the frozen weight. Grey: the "
               "layer has no such module." if kind == "adapter" else
               "Frobenius norm of (tuned weight - base weight) for every weight matrix inside the numbered layers, "
               "above as it is, below relative to the base weight's norm. Grey: the layer has no such module.")
    return plot.save(fig, path, f"{run}: weight change per layer and module", caption)


def spectrum(matrices: list[MatrixChange], path, run: str, rank: int | None):
    """Effective rank per layer x module, and the normalised singular values of every update."""
    from matplotlib.ticker import MaxNLocator

    from sumtune.report import plot

    inside = [m for m in matrices if m.singular_values]
    ranks, rows_, cols, prefix = grid(inside, lambda m: m.effective_rank)
    width, height = _panel_size(len(rows_), len(cols))
    fig, (top, ax) = plot.stacked(width, [height, 3.6])
    plot.heatmap(top, ranks, rows_, cols, "effective rank", fmt="{:.1f}")
    top.set_title("effective rank of each update ΔW" + (f" (LoRA rank r = {rank})" if rank else ""), fontsize=10)
    _layer_axis(top, prefix)
    modules = list(dict.fromkeys(m.module for m in inside))
    colors = plot.palette(len(modules))
    for m in inside:
        s = torch.tensor(m.singular_values)
        if s.numel() and s[0] > 0:
            s = s / s[0]
            ax.plot(range(1, len(s) + 1), s.tolist(), color=colors[modules.index(m.module)], alpha=0.6, linewidth=1,
                    marker="." if len(s) <= 32 else None, markersize=3)
    for i, label in enumerate(cols):  # the same modules, in the same order, as the heatmap's columns
        ax.plot([], [], color=colors[i], label=label)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"index i of the singular value (values below {NOISE:g} σ_1 are round-off and not drawn)")
    ax.set_ylabel("σ_i / σ_1 (log scale)")
    ax.set_title("singular values of each update, divided by the largest (one line per adapted matrix)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="module", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              ncol=2 if len(cols) > 8 else 1)
    fig.suptitle(f"{run}: how many directions each update uses")
    caption = ("Above: effective rank of every update ΔW, exp of the entropy of its normalised singular values: 1 when "
               "one direction carries the update, r when r directions share it equally. Below: the singular values of "
               "each update divided by its largest (colour = module).")
    return plot.save(fig, path, f"{run}: spectrum and effective rank of the updates", caption)
