"""The one typed run config.

The dataclasses below are the single source of defaults. A YAML file and dotted command-line
overrides (``train.lr=3e-4``) only override them. Anything unknown, mistyped or impossible fails
at start-up with one line naming the key (and, for a typo, the closest valid key).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sumtune.errors import ConfigError
from sumtune.prompts import TEMPLATES, resolve_template

# Parameter-efficient methods (sumtune/methods.py holds the registry). Only the section of the chosen
# model.method is read; target_modules ["auto"] means the model family's default (T5: q, k, v, o,
# wi_0, wi_1, wo; every other model: "all-linear", every linear layer except the output head).


@dataclass
class LoraSettings:
    """model.method lora and dora (DoRA: LoRA with the weight split into magnitude and direction)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    # Rank-stabilised scaling (rsLoRA): alpha / sqrt(r) instead of alpha / r.
    rslora: bool = False
    # How A and B start: "default" (A random, B zero: the model starts as the base), "gaussian", or
    # "pissa" / "olora", which start from the base weights' principal (PiSSA: SVD; OLoRA: QR)
    # directions and move them out of the base; the saved adapter is converted so that it applies
    # to the original base.
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"
    # LoRA+: the B matrices learn loraplus_lr_ratio times faster than A (0: off). The LoRA+ paper
    # suggests 16, with train.lr about half of plain LoRA's.
    loraplus_lr_ratio: float = 0.0


@dataclass
class AdaLoraSettings:
    """model.method adalora: LoRA in SVD form whose rank budget moves to the layers that matter."""

    init_r: int = 12
    # The average rank left once the budget has been pruned.
    target_r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    # The budget is pruned from prune_start to prune_end (fractions of the optimizer steps); the
    # ranks are then fixed for the rest of the run.
    prune_start: float = 0.1
    prune_end: float = 0.8
    # Re-allocate every delta_t optimizer steps.
    delta_t: int = 10
    beta1: float = 0.85
    beta2: float = 0.85
    # Weight of the penalty that keeps the singular vectors orthogonal (added to the training loss).
    orth_reg_weight: float = 0.5


@dataclass
class IA3Settings:
    """model.method ia3: learned scales of the attention keys and values and of the feed-forward
    activations."""

    # ["auto"]: the family's choice (T5: k, v, wo; BART: k_proj, v_proj, fc2; Llama-style:
    # k_proj, v_proj, down_proj); feedforward_modules must be a subset of target_modules.
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["auto"])


@dataclass
class LohaSettings:
    """model.method loha: a low-rank Hadamard product update (LyCORIS)."""

    r: int = 8
    alpha: int = 16
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["auto"])


@dataclass
class LokrSettings:
    """model.method lokr: a Kronecker-product update (LyCORIS)."""

    r: int = 8
    alpha: int = 16
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    # Also factor the larger Kronecker factor into two low-rank matrices.
    decompose_both: bool = False
    # -1: the factor closest to the square root of each dimension.
    decompose_factor: int = -1


@dataclass
class VeraSettings:
    """model.method vera: frozen random projections shared by all layers, with trained per-layer
    scaling vectors."""

    r: int = 256
    d_initial: float = 0.1
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    # Seed of the shared random projections (they are saved in the adapter).
    projection_seed: int = 0


@dataclass
class PromptSettings:
    """model.method prompt: virtual tokens learned in front of the input (prompt tuning)."""

    virtual_tokens: int = 20
    # "text": start from the embeddings of init_text's tokens (repeated to fill); "random".
    init: Literal["text", "random"] = "text"
    init_text: str = "Summarize the following conversation."


@dataclass
class PrefixSettings:
    """model.method prefix: learned keys and values in front of every attention layer. Refused at
    start-up with this library set (see methods.py)."""

    virtual_tokens: int = 20
    projection: bool = False


@dataclass
class ModelConfig:
    name_or_path: str = "google/flan-t5-base"
    # "auto": read from the model's config.json (encoder-decoder -> seq2seq, decoder-only -> causal).
    family: Literal["auto", "seq2seq", "causal"] = "auto"
    # full: every weight; the others train a small adapter on a frozen base (see the sections below
    # and the support matrix in docs/models-and-methods.md).
    method: Literal["full", "lora", "dora", "adalora", "ia3", "loha", "lokr", "vera", "prompt", "prefix"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    adalora: AdaLoraSettings = field(default_factory=AdaLoraSettings)
    ia3: IA3Settings = field(default_factory=IA3Settings)
    loha: LohaSettings = field(default_factory=LohaSettings)
    lokr: LokrSettings = field(default_factory=LokrSettings)
    vera: VeraSettings = field(default_factory=VeraSettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)
    # Load the frozen base in 8 or 4 bits (bitsandbytes) under an adapter method; not with DeepSpeed ZeRO-3.
    quantization: Literal["none", "8bit", "4bit"] = "none"
    gradient_checkpointing: bool = False
    # The attention kernel for training (transformers' attn_implementation: "sdpa", "eager",
    # "flex_attention", "flash_attention_2" on a GPU with flash-attn installed...); null: the
    # model's default. With train.batching=packed, flash-attention variants take the examples'
    # boundaries from the positions (varlen kernels: no masked work at all).
    attn_implementation: str | None = None
    # Run Python code shipped with a model (a config.json with "auto_map"): only for models you trust.
    trust_remote_code: bool = False


@dataclass
class ColumnMap:
    dialogue: str = "dialogue"
    summary: str = "summary"
    id: str | None = "id"


@dataclass
class DataConfig:
    # "samsum" | "dialogsum" (hub datasets), or "local" with files below.
    source: str = "samsum"
    # split name -> local file (jsonl, json, csv or parquet); only for source "local".
    files: dict[str, str] = field(default_factory=dict)
    columns: ColumnMap = field(default_factory=ColumnMap)
    # sumtune split -> split name in the source ("validation": "val", ...).
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    # A literal template with {dialogue}, or a name from sumtune.prompts.TEMPLATES.
    template: str = "seed"
    # Decoder-only models: "auto" wraps the instruction in the tokenizer's chat template when it has
    # one (the assistant's turn holds the summary); "never" always uses the plain template.
    chat_template: Literal["auto", "never"] = "auto"
    # The system message of a chat template (null: none is given, and the template does what it
    # does without one: Qwen2.5's inserts its default "You are Qwen, created by Alibaba Cloud. You
    # are a helpful assistant."). The rendered first example is saved as prompt_example.txt.
    system_prompt: str | None = None
    # The date a chat template that reads one is rendered with (Llama 3's Instruct template puts
    # today's date in every prompt otherwise: a run resumed tomorrow would train on other tokens).
    chat_date: str = "26 Jul 2024"
    # Dialogue line ends replaced by this text before tokenising (null: the text is left as read).
    # FLAN-T5's tokenizer turns newlines into spaces, so turns survive only through the speaker
    # names; a separator it keeps (e.g. " | ") marks them. Off by default: the model sees the text.
    turn_separator: str | None = None
    max_source_length: int = 512
    max_target_length: int = 128
    # What to do with a row whose dialogue or summary is empty, null or not text.
    on_bad_row: Literal["fail", "skip"] = "fail"
    # Use at most this many rows of a split (0: all); handy for smoke runs.
    max_train_examples: int = 0
    max_eval_examples: int = 0


@dataclass
class TrainConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    epochs: int = 3
    # Optimizer steps; when > 0 it wins over epochs.
    max_steps: int = 0
    per_device_batch_size: int = 8
    grad_accum: int = 1
    # How examples become micro-batches (sumtune/batching.py):
    # "grouped": length-grouped batches: examples are drawn in random pools of group_size batches,
    #   each pool sorted by length and cut into batches, and the batches shuffled, so little of a
    #   step is spent on padding;
    # "random": plain random batches of per_device_batch_size;
    # "packed": several examples per row without padding (best-fit decreasing into rows of at most
    #   max_tokens tokens, once; the rows shuffled each epoch), each example attending only to
    #   itself; a micro-batch is one row (per_device_batch_size is not used). Decoder-only models
    #   and T5; not BART.
    batching: Literal["grouped", "random", "packed"] = "grouped"
    group_size: int = 256
    # A token budget per micro-batch, padding included (fairseq's max_tokens; 0: none). grouped:
    # a batch holds at most per_device_batch_size examples AND at most max_tokens padded token
    # positions (source and target). packed: the length of a row (required there).
    max_tokens: int = 0
    # The training loss. "plain": the model's logits over every position; "chunked": the output
    # layer applied only to positions with a label, chunk_size positions at a time, each chunk
    # recomputed in the backward pass, so the [tokens x vocabulary] logits never exist whole (the
    # largest tensors of a LoRA step with a 150k vocabulary). Same loss and gradients.
    loss: Literal["plain", "chunked"] = "plain"
    chunk_size: int = 1024
    # torch.compile the model for training; batches are padded to a multiple of pad_to_multiple
    # tokens so that few distinct shapes (recompilations) occur.
    compile: bool = False
    pad_to_multiple: int = 64
    max_grad_norm: float = 1.0
    seed: int = 42
    log_every: int = 10
    # Validation loss every N optimizer steps (0: only at the end).
    eval_every: int = 0
    # Cap on validation batches per rank for in-training validation loss (0: all).
    eval_max_batches: int = 0
    # Set the model's dropout probabilities to this value (None: keep the checkpoint's).
    dropout: float | None = None
    # ROUGE on a fixed validation subset every N optimizer steps and at the end (0: off); the
    # best checkpoint by best_metric is kept as best/ in the run folder.
    rouge_every: int = 0
    rouge_examples: int = 64
    # Any column of a configured metric (eval.metrics): rouge1..rougeLsum, bertscore_f1, toxicity,
    # summary_words, ... Validation scores ROUGE and, when this names another metric's column, that
    # metric too (its model loaded at the first validation, not before).
    best_metric: str = "rougeLsum"
    # "auto": the column's own direction (higher is better for ROUGE and BERTScore, lower for
    # toxicity); a descriptive column (the lengths metric) has none and needs "max" or "min".
    best_metric_mode: Literal["auto", "max", "min"] = "auto"
    # Stop after this many ROUGE evaluations without a new best (0: never).
    early_stopping_patience: int = 0
    # Save the whole training state every N optimizer steps and at the end (0: never), into
    # checkpoints/step-NNNNNN/ of the run folder; keep the newest keep_checkpoints of them.
    checkpoint_every: int = 0
    keep_checkpoints: int = 2


@dataclass
class GenerationConfig:
    num_beams: int = 1
    max_new_tokens: int = 64
    batch_size: int = 16
    # Greedy decoding of T5-family models (the refill decoder) and decoder-only Llama, Qwen2,
    # Mistral, Gemma, Phi (the continuous decoder): a finished summary's row is handed to the next
    # waiting prompt at once, instead of idling until the longest summary of its batch is done
    # (same summaries as transformers' generate). false: generate over length-sorted batches.
    refill: bool = True
    # Sampling instead of greedy/beam search (off for evaluation; the RL recipe samples).
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class EvalConfig:
    split: Literal["validation", "test"] = "test"
    # "grouped": rows holding the same dialogue are ONE example with several references (DialogSum's
    # test split: each dialogue three times, ids test_<i>_1..3): it is generated once and scored
    # against all of them, both as the multi-reference score (the best reference per ROUGE type,
    # rouge_score's score_multi) and as the mean over its references; intervals resample
    # dialogues. A split with one row per dialogue scores as before. "rows": every row is an
    # example of its own (the same dialogue generated once per row). ROUGE during training follows it.
    references: Literal["grouped", "rows"] = "grouped"
    # Toxicity of each candidate's summaries (the summary alone, not dialogue + summary), scored by a
    # sequence classifier (hub id or path; None: not scored): the softmax probability of the label
    # named here, per summary; mean, std, share above 0.5 and a bootstrap interval per candidate.
    toxicity_model: str | None = None
    toxicity_label: str = "hate"
    toxicity_batch_size: int = 64
    # The metrics of the comparison tables, W&B and the report, from the registry in
    # sumtune/metrics/: rouge, bertscore, lengths, toxicity (rouge is always among them). None:
    # [rouge]; toxicity is added whenever toxicity_model is set.
    metrics: list[str] | None = None
    # BERTScore (the bert-score package): the encoder (hub id or a local folder), the layer whose
    # output is used (None: bert_score's tuned layer for the model; a model it does not know needs
    # one), and rescaling with bert_score's baseline (only for the models it ships one for).
    bertscore_model: str = "roberta-large"
    bertscore_num_layers: int | None = None
    bertscore_rescale: bool = False
    bertscore_batch_size: int = 64


@dataclass
class RewardSettings:
    """The reward model of the RL recipe: any sequence classifier, by hub id or path."""

    model: str = "facebook/roberta-hate-speech-dynabench-r4-target"
    # The "good" label, by its name in the classifier's id2label ("nothate" for the default model).
    label: str = "nothate"
    # "logit": the good label's logit (the classic detoxification recipe); "probability": its
    # softmax probability.
    score: Literal["logit", "probability"] = "logit"
    batch_size: int = 64
    max_length: int = 128  # classifier tokens per summary


@dataclass
class RLConfig:
    """Reinforcement learning from a reward model (train/detox.py). Each step samples
    ``samples_per_prompt`` summaries for each of ``train.per_device_batch_size`` train prompts per
    process, scores them, and updates the policy; ``train.max_steps`` counts these steps."""

    # "rloo": REINFORCE with the leave-one-out baseline of the other samples of the same prompt (no
    # value model; samples_per_prompt >= 2). "ppo": a value head on the policy, the KL as a per-token
    # reward penalty, GAE over the summary's tokens, whitened advantages, clipped policy and value
    # losses (samples_per_prompt may be 1).
    algorithm: Literal["rloo", "ppo"] = "rloo"
    samples_per_prompt: int = 4
    # Rollouts sample from the policy's own distribution (at this temperature; log-probs and the KL
    # are computed at the same temperature). No top-k/top-p: a truncated sampler makes the KL
    # estimate biased, and it can go negative.
    temperature: float = 1.0
    max_new_tokens: int = 64
    # reward = score - kl_coef * KL(policy || reference) summed over the summary's tokens.
    kl_coef: float = 0.05
    # Adaptive KL coefficient (Ziegler et al. 2019): steer kl_coef so that the mean KL per summary
    # tends to kl_target (None: fixed kl_coef); kl_horizon sets how fast.
    kl_target: float | None = None
    kl_horizon: int = 10000
    # Stop the run (one line, non-zero exit) when the mean KL per summary exceeds this (0: never).
    max_kl: float = 0.0
    # Update passes over each step's samples; passes after the first are off-policy and use the
    # clipped importance ratio (clip).
    epochs: int = 1
    clip: float = 0.2
    # Optimizer steps per pass over a step's samples (each over train.grad_accum micro-batches); the
    # rows are shuffled between passes.
    minibatches: int = 1
    # PPO: discount and GAE's lambda over the summary's tokens; the value loss's weight and clip.
    gamma: float = 1.0
    lam: float = 0.95
    value_coef: float = 0.1
    value_clip: float = 0.2
    # Against reward hacking by short or empty summaries: a summary of fewer than min_tokens tokens
    # (its end token not counted) has short_penalty taken off its reward; one that never ends
    # (max_new_tokens reached) has missing_eos_penalty taken off.
    min_tokens: int = 3
    short_penalty: float = 2.0
    missing_eos_penalty: float = 0.0
    # A table of sampled summaries (dialogue, summary, score, KL) every samples_every steps (0: never),
    # samples_rows rows from the main process, to W&B and train_log.jsonl.
    samples_every: int = 50
    samples_rows: int = 8
    reward: RewardSettings = field(default_factory=RewardSettings)


@dataclass
class TrackerConfig:
    # "wandb" or "none"
    backend: Literal["wandb", "none"] = "wandb"
    project: str = "sumtune"
    group: str | None = None
    # "auto": online when a W&B API key is set and the server is reachable, else offline.
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


@dataclass
class RunConfig:
    run_name: str = "run"
    output_dir: str = "outputs"
    # Refuse to write into a folder that already holds a finished run unless this is true.
    overwrite: bool = False
    # Continue an interrupted run: "auto" (the newest complete checkpoint in the run folder, or a
    # fresh start if there is none) or the path of a checkpoint folder.
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


# ----------------------------------------------------------------------------- parsing


# Names users bring from the transformers Trainer and other tools -> ours.
_ALIASES = {
    "learning_rate": "lr",
    "batch_size": "per_device_batch_size",
    "per_device_train_batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs",
    "logging_steps": "log_every",
    "eval_steps": "eval_every",
    "model_name_or_path": "name_or_path",
    "output": "output_dir",
}


def _closest(key: str, options: list[str], prefix: str) -> str:
    alias = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.8)
    match = [_ALIASES[alias[0]]] if alias and _ALIASES[alias[0]] in options else []
    match = match or difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{prefix}{match[0]}'?)"
    return f" (valid keys under '{prefix or '.'}': {', '.join(sorted(options))})"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of settings, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_closest(str(key), names, prefix)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.lr=3e-4)")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    value = _fix_yaml_floats(value)
    tree: dict = {}
    node = tree
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


_SCI_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _fix_yaml_floats(node: Any) -> Any:
    """PyYAML follows YAML 1.1, where 3e-4 (no dot) is a string; users mean a number."""
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str) and _SCI_FLOAT.match(node.strip()):
        return float(node)
    return node


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings at the top level")
    return _fix_yaml_floats(data)


# Keys that were renamed: old dotted key -> (new dotted key, old value -> new value). A saved config or
# a user's YAML with the old key still loads (and means what it meant).
RENAMED = {"train.group_by_length": ("train.batching", lambda grouped: "grouped" if grouped else "random")}


def upgrade(values: dict) -> dict:
    """``values`` (a config tree) with renamed keys moved to their new names; the new key wins
    when both are given."""
    out = dict(values)
    for old, (new, convert) in RENAMED.items():
        (section, key), (_, new_key) = old.split("."), new.split(".")  # renamed within their section
        node = out.get(section)
        if isinstance(node, dict) and key in node:
            node = dict(node)
            value = node.pop(key)
            node.setdefault(new_key, convert(value))
            out[section] = node
    return out


def from_dict(values: dict) -> RunConfig:
    cfg = _build(RunConfig, upgrade(values))
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    values = load_yaml(path) if path else {}
    for item in overrides or []:
        values = _merge(values, _parse_override(item))
    return from_dict(values)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as saved in run and checkpoint folders (secrets redacted)."""
    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------- secrets

# Credentials a run may find in its environment. Any other variable whose name says it holds one
# (GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY, ...) counts too.
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
_SECRET_ENV_NAME = re.compile(r"(^|_)(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|ACCESS_KEY)(_|$)", re.IGNORECASE)
# Mapping keys whose text values are credentials (not max_new_tokens, not pad_token_id: those hold numbers).
_SECRET_KEY = re.compile(r"(^|[_.-])(token|api_?key|secret|password|passwd|access_key)($|[_.-])", re.IGNORECASE)
REDACTED = "***"


def secret_values() -> dict[str, str]:
    """Credentials in the environment: variable name -> value. Values under 8 characters are left
    out: redacting "1" or "true" everywhere would mangle everything else."""
    return {name: value for name, value in os.environ.items()
            if (name in SECRET_ENV or _SECRET_ENV_NAME.search(name)) and len(value.strip()) >= 8}


def redact_text(text: str) -> str:
    for value in secret_values().values():
        text = text.replace(value, REDACTED)
    return text


def redact(node: Any) -> Any:
    """A copy of ``node`` (dicts, lists, strings) fit to save or log: the environment's credentials
    replaced by ``***`` wherever they appear, and the text of secret-looking keys (token, api_key,
    password, secret) replaced whole."""
    if isinstance(node, dict):
        return {k: REDACTED if isinstance(v, str) and v and _SECRET_KEY.search(str(k)) else redact(v)
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact(v) for v in node]
    if isinstance(node, str):
        return redact_text(node)
    return node


def _check_no_secrets(tree: dict, prefix: str = "") -> None:
    """A credential pasted into the run config would be saved into every run folder and sent to
    W&B; refuse it, naming the key and the variable, never the value."""
    secrets = secret_values()
    for key, value in tree.items():
        if isinstance(value, dict):
            _check_no_secrets(value, f"{prefix}{key}.")
            continue
        for item in value if isinstance(value, list) else [value]:
            for name, secret in secrets.items():
                if isinstance(item, str) and secret in item:
                    raise ConfigError(
                        f"config key '{prefix}{key}' holds the value of ${name}; credentials stay in the environment "
                        "(the run config is saved in the run folder and sent to W&B)"
                    )


# ----------------------------------------------------------------------------- validation


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {message}")


def validate(cfg: RunConfig) -> None:
    t, d, m, g = cfg.train, cfg.data, cfg.model, cfg.generation
    _check_no_secrets(to_dict(cfg))
    _require(bool(cfg.run_name.strip()) and "/" not in cfg.run_name, "run_name", "must be a non-empty folder name")
    _require(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _require(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
    _require(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    _require(
        not (t.warmup_steps and t.warmup_ratio),
        "train.warmup_steps",
        "set either warmup_steps or warmup_ratio, not both",
    )
    _require(t.epochs >= 1 or t.max_steps > 0, "train.epochs", "must be >= 1 (or set train.max_steps)")
    _require(t.max_steps >= 0, "train.max_steps", f"must be >= 0, got {t.max_steps}")
    _require(t.per_device_batch_size >= 1, "train.per_device_batch_size", f"must be >= 1, got {t.per_device_batch_size}")
    _require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _require(t.group_size >= 1, "train.group_size", f"must be >= 1 (batches per length-sorted pool), got {t.group_size}")
    _require(t.max_tokens >= 0, "train.max_tokens", f"must be >= 0 (0: no token budget), got {t.max_tokens}")
    _require(t.batching != "packed" or t.max_tokens > 0, "train.max_tokens",
             "train.batching=packed needs the length of a packed row, e.g. train.max_tokens=2048")
    _require(t.batching != "random" or t.max_tokens == 0, "train.max_tokens",
             "a token budget applies to train.batching=grouped or packed, not random")
    longest = d.max_source_length + d.max_target_length
    _require(t.max_tokens == 0 or t.max_tokens >= longest, "train.max_tokens",
             f"{t.max_tokens} is less than the longest possible example (data.max_source_length + "
             f"data.max_target_length = {longest}); raise it or lower those")
    _require(t.chunk_size >= 1, "train.chunk_size", f"must be >= 1, got {t.chunk_size}")
    _require(t.pad_to_multiple >= 1, "train.pad_to_multiple", f"must be >= 1, got {t.pad_to_multiple}")
    _require(t.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (0 turns clipping off), got {t.max_grad_norm}")
    _require(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    _require(t.eval_every >= 0, "train.eval_every", f"must be >= 0, got {t.eval_every}")
    _require(t.dropout is None or 0 <= t.dropout < 1, "train.dropout", f"must be in [0, 1), got {t.dropout}")
    _require(t.rouge_every >= 0, "train.rouge_every", f"must be >= 0, got {t.rouge_every}")
    _require(t.rouge_examples >= 1, "train.rouge_examples", f"must be >= 1, got {t.rouge_examples}")
    _require(t.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
    _require(
        not t.early_stopping_patience or t.rouge_every,
        "train.early_stopping_patience",
        "needs train.rouge_every > 0 (it counts ROUGE evaluations without a new best)",
    )
    _require(t.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {t.checkpoint_every}")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    _require(
        t.checkpoint_every % t.log_every == 0,
        "train.checkpoint_every",
        f"must be a multiple of train.log_every ({t.log_every}) so that a resumed run logs the same windows",
    )
    _require(d.max_source_length >= 8, "data.max_source_length", f"must be >= 8, got {d.max_source_length}")
    _require(d.max_target_length >= 2, "data.max_target_length", f"must be >= 2, got {d.max_target_length}")
    _require(
        "{dialogue}" in resolve_template(d.template),
        "data.template",
        f"must contain the placeholder {{dialogue}} or be one of {', '.join(TEMPLATES)}",
    )
    _require(d.source in ("samsum", "dialogsum", "local"), "data.source", f"must be samsum, dialogsum or local, got {d.source!r}")
    if d.source == "local":
        _require(bool(d.files), "data.files", "source 'local' needs files, e.g. {train: data/train.jsonl}")
    _require(
        m.quantization == "none" or m.method != "full",
        "model.quantization",
        f"{m.quantization} needs an adapter method such as model.method=lora (a quantized base cannot be fully "
        "fine-tuned)",
    )
    _validate_method(m)
    _require(g.num_beams >= 1, "generation.num_beams", f"must be >= 1, got {g.num_beams}")
    _require(g.max_new_tokens >= 1, "generation.max_new_tokens", f"must be >= 1, got {g.max_new_tokens}")
    _require(g.batch_size >= 1, "generation.batch_size", f"must be >= 1, got {g.batch_size}")
    _require(g.temperature > 0, "generation.temperature", f"must be > 0, got {g.temperature}")
    _require(g.top_k >= 0, "generation.top_k", f"must be >= 0 (0: off), got {g.top_k}")
    _require(0 < g.top_p <= 1, "generation.top_p", f"must be in (0, 1], got {g.top_p}")
    e, rl = cfg.eval, cfg.rl
    _require(e.toxicity_model is None or bool(e.toxicity_model.strip()), "eval.toxicity_model",
             "must name a classifier (hub id or path), or be null")
    _require(bool(e.toxicity_label.strip()), "eval.toxicity_label", "must name a label of the classifier")
    _require(e.toxicity_batch_size >= 1, "eval.toxicity_batch_size", f"must be >= 1, got {e.toxicity_batch_size}")
    _validate_metrics(cfg)
    _require(rl.samples_per_prompt >= 2 or rl.algorithm == "ppo" and rl.samples_per_prompt >= 1, "rl.samples_per_prompt",
             f"must be >= 2 with rl.algorithm={rl.algorithm} (the leave-one-out baseline needs another sample; "
             f"rl.algorithm=ppo takes 1), got {rl.samples_per_prompt}")
    _require(rl.minibatches >= 1, "rl.minibatches", f"must be >= 1, got {rl.minibatches}")
    _require(0 <= rl.gamma <= 1, "rl.gamma", f"must be in [0, 1], got {rl.gamma}")
    _require(0 <= rl.lam <= 1, "rl.lam", f"must be in [0, 1], got {rl.lam}")
    _require(rl.value_coef > 0, "rl.value_coef", f"must be > 0 (the value head learns from it), got {rl.value_coef}")
    _require(rl.value_clip > 0, "rl.value_clip", f"must be > 0, got {rl.value_clip}")
    _require(rl.temperature > 0, "rl.temperature", f"must be > 0, got {rl.temperature}")
    _require(rl.max_new_tokens >= 1, "rl.max_new_tokens", f"must be >= 1, got {rl.max_new_tokens}")
    _require(rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {rl.kl_coef}")
    _require(rl.kl_target is None or rl.kl_target > 0, "rl.kl_target", f"must be > 0 or null, got {rl.kl_target}")
    _require(rl.kl_target is None or rl.kl_coef > 0, "rl.kl_coef", "must be > 0 with rl.kl_target (it adapts it)")
    _require(rl.kl_horizon >= 1, "rl.kl_horizon", f"must be >= 1, got {rl.kl_horizon}")
    _require(rl.max_kl >= 0, "rl.max_kl", f"must be >= 0 (0: no stop), got {rl.max_kl}")
    _require(rl.epochs >= 1, "rl.epochs", f"must be >= 1, got {rl.epochs}")
    _require(0 < rl.clip < 1, "rl.clip", f"must be in (0, 1), got {rl.clip}")
    _require(rl.min_tokens >= 0, "rl.min_tokens", f"must be >= 0, got {rl.min_tokens}")
    _require(rl.short_penalty >= 0, "rl.short_penalty", f"must be >= 0, got {rl.short_penalty}")
    _require(rl.missing_eos_penalty >= 0, "rl.missing_eos_penalty", f"must be >= 0, got {rl.missing_eos_penalty}")
    _require(rl.samples_every >= 0, "rl.samples_every", f"must be >= 0, got {rl.samples_every}")
    _require(rl.samples_rows >= 1, "rl.samples_rows", f"must be >= 1, got {rl.samples_rows}")
    _require(bool(rl.reward.model.strip()), "rl.reward.model", "must name a sequence classifier (hub id or path)")
    _require(bool(rl.reward.label.strip()), "rl.reward.label", "must name the classifier's good label")
    _require(rl.reward.batch_size >= 1, "rl.reward.batch_size", f"must be >= 1, got {rl.reward.batch_size}")
    _require(rl.reward.max_length >= 2, "rl.reward.max_length", f"must be >= 2, got {rl.reward.max_length}")


def _validate_metrics(cfg: RunConfig) -> None:
    from sumtune import metrics

    e, t = cfg.eval, cfg.train
    known = ", ".join(metrics.REGISTRY)
    for name in e.metrics or []:
        _require(name in metrics.REGISTRY, "eval.metrics", f"unknown metric '{name}'; known metrics: {known}")
    _require(e.metrics is None or len(set(e.metrics)) == len(e.metrics), "eval.metrics", f"names a metric twice: {e.metrics}")
    _require(e.metrics is None or "rouge" in e.metrics, "eval.metrics",
             f"must include rouge (the headline, the extremes and validation use it), got {e.metrics}")
    _require("toxicity" not in (e.metrics or []) or bool(e.toxicity_model), "eval.metrics",
             "toxicity needs eval.toxicity_model (a sequence classifier: hub id or path)")
    _require(bool(e.bertscore_model.strip()), "eval.bertscore_model", "must name an encoder (hub id or path)")
    _require(e.bertscore_num_layers is None or e.bertscore_num_layers >= 0, "eval.bertscore_num_layers",
             f"must be >= 0 or null, got {e.bertscore_num_layers}")
    _require(e.bertscore_batch_size >= 1, "eval.bertscore_batch_size", f"must be >= 1, got {e.bertscore_batch_size}")
    names = metrics.configured(e)
    if "bertscore" in names:
        from sumtune.metrics.bertscore import check_settings, default_layers

        layers = e.bertscore_num_layers if e.bertscore_num_layers is not None else default_layers(e.bertscore_model)
        check_settings(e.bertscore_model, layers, e.bertscore_rescale)
    owner = metrics.column_owner(t.best_metric, names)
    if owner is None:
        columns = ", ".join(c.name for c in metrics.columns_of(names))
        other = metrics.column_owner(t.best_metric, list(metrics.REGISTRY))
        hint = f"; add {other.name} to eval.metrics" if other is not None else ""
        raise ConfigError(f"config key 'train.best_metric': no configured metric provides '{t.best_metric}' "
                          f"(eval.metrics gives {columns}){hint}")
    column = next(c for c in owner.columns if c.name == t.best_metric)
    _require(column.higher_is_better is not None or t.best_metric_mode != "auto", "train.best_metric_mode",
             f"'{t.best_metric}' is descriptive (no better direction); set train.best_metric_mode=max or min")


def _validate_method(m: ModelConfig) -> None:
    """The chosen method's section (the others are not read)."""
    key = f"model.{m.method}"
    if m.method in ("lora", "dora"):
        lo, key = m.lora, "model.lora"
        _require(lo.r >= 1, f"{key}.r", f"must be >= 1, got {lo.r}")
        _require(lo.alpha > 0, f"{key}.alpha", f"must be > 0, got {lo.alpha}")
        _require(0 <= lo.dropout < 1, f"{key}.dropout", f"must be in [0, 1), got {lo.dropout}")
        _require(lo.loraplus_lr_ratio == 0 or lo.loraplus_lr_ratio >= 1, f"{key}.loraplus_lr_ratio",
                 f"must be 0 (off) or >= 1 (B learns that many times faster than A), got {lo.loraplus_lr_ratio}")
    elif m.method == "adalora":
        a = m.adalora
        _require(a.init_r >= 1, f"{key}.init_r", f"must be >= 1, got {a.init_r}")
        _require(1 <= a.target_r <= a.init_r, f"{key}.target_r", f"must be in [1, init_r={a.init_r}], got {a.target_r}")
        _require(a.alpha > 0, f"{key}.alpha", f"must be > 0, got {a.alpha}")
        _require(0 <= a.dropout < 1, f"{key}.dropout", f"must be in [0, 1), got {a.dropout}")
        _require(0 <= a.prune_start < a.prune_end <= 1, f"{key}.prune_start",
                 f"needs 0 <= prune_start < prune_end <= 1, got {a.prune_start} and {a.prune_end}")
        _require(a.delta_t >= 1, f"{key}.delta_t", f"must be >= 1, got {a.delta_t}")
        for name in ("beta1", "beta2"):
            _require(0 < getattr(a, name) < 1, f"{key}.{name}", f"must be in (0, 1), got {getattr(a, name)}")
        _require(a.orth_reg_weight >= 0, f"{key}.orth_reg_weight", f"must be >= 0, got {a.orth_reg_weight}")
    elif m.method == "ia3":
        targets, ff = m.ia3.target_modules, m.ia3.feedforward_modules
        _require((targets == ["auto"]) == (ff == ["auto"]), f"{key}.feedforward_modules",
                 "set both target_modules and feedforward_modules, or leave both at [auto]")
        _require(set(ff) <= set(targets), f"{key}.feedforward_modules",
                 f"must be a subset of target_modules {targets}, got {ff}")
    elif m.method in ("loha", "lokr"):
        ly = getattr(m, m.method)
        _require(ly.r >= 1, f"{key}.r", f"must be >= 1, got {ly.r}")
        _require(ly.alpha > 0, f"{key}.alpha", f"must be > 0, got {ly.alpha}")
        for name in ("rank_dropout", "module_dropout"):
            _require(0 <= getattr(ly, name) < 1, f"{key}.{name}", f"must be in [0, 1), got {getattr(ly, name)}")
    elif m.method == "vera":
        _require(m.vera.r >= 1, f"{key}.r", f"must be >= 1, got {m.vera.r}")
        _require(m.vera.d_initial > 0, f"{key}.d_initial", f"must be > 0, got {m.vera.d_initial}")
        _require(0 <= m.vera.dropout < 1, f"{key}.dropout", f"must be in [0, 1), got {m.vera.dropout}")
    elif m.method in ("prompt", "prefix"):
        n = getattr(m, m.method).virtual_tokens
        _require(n >= 1, f"{key}.virtual_tokens", f"must be >= 1, got {n}")
        _require(m.method != "prompt" or m.prompt.init != "text" or bool(m.prompt.init_text.strip()),
                 f"{key}.init_text", "must not be empty with init: text")
    section = getattr(m, "lora" if m.method == "dora" else m.method, None)
    targets = getattr(section, "target_modules", None)
    if targets is not None:
        _require(bool(targets), f"model.{'lora' if m.method == 'dora' else m.method}.target_modules",
                 "must name at least one module (or [auto])")
