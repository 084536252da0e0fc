"""Base model and tokenizer, PEFT wrapping, precision checks."""

from __future__ import annotations

import re
from pathlib import Path

from sumtune import families
from sumtune.config import ModelConfig
from sumtune.errors import ConfigError
from sumtune.families import Family, set_dropout
from sumtune.families.base import ModelError, check_model_source

__all__ = ["ModelError", "apply_method", "check_model_source", "check_precision", "check_quantization",
           "load_adapter", "load_model", "load_tokenizer", "model_family", "set_dropout", "to_device"]




def model_family(name_or_path: str, cfg: ModelConfig | None = None, key: str = "model.name_or_path") -> Family:
    """The family of ``name_or_path`` (its config.json; no weights loaded), as ``model.family`` asks."""
    choice = cfg.family if cfg is not None else "auto"
    trust = cfg.trust_remote_code if cfg is not None else False
    return families.resolve(name_or_path, choice, trust, key=key)


def check_quantization(quantization: str, zero_stage: int | None) -> None:
    if quantization != "none" and zero_stage == 3:
        raise ConfigError(
            f"model.quantization={quantization} with DeepSpeed ZeRO-3: ZeRO-3 shards parameters and cannot "
            "shard bitsandbytes' quantized weights; use a ZeRO-2 or DDP accelerate config"
        )


def check_positions(name_or_path: str, data_cfg, family: Family, trust_remote_code: bool = False) -> None:
    """A model with learned absolute positions (BART: 1,024; max_position_embeddings in its config)
    cannot read more tokens than it has positions: refuse data limits beyond them in one line,
    before weights load. A tokenizer without a limit of its own (a BART folder without
    tokenizer_config.json loads with model_max_length 1e30) would not catch it; T5 has no such
    limit (relative positions)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return
    needed, what = family.positions_needed(data_cfg.max_source_length, data_cfg.max_target_length)
    if needed > limit:
        raise ConfigError(f"{what} = {needed} tokens, but {name_or_path} has {limit} positions "
                          f"(max_position_embeddings); lower data.max_source_length (now {data_cfg.max_source_length})")


def check_precision(family: Family, mixed_precision: str) -> None:
    family.check_precision(mixed_precision)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, family: Family | None = None):
    from transformers import AutoTokenizer

    from sumtune.families.base import remote_code_refused

    check_model_source(name_or_path)
    family = family or families.resolve(name_or_path, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise remote_code_refused(err, name_or_path) from None
    return family.prepare_tokenizer(tokenizer)


def load_model(name_or_path: str, dropout: float | None = None, quantization: str = "none",
               trust_remote_code: bool = False, family: Family | None = None, attn_implementation: str | None = None):
    family = family or families.resolve(name_or_path, trust_remote_code=trust_remote_code)
    model = family.load(name_or_path, quantization, trust_remote_code, attn_implementation)
    if dropout is not None:
        set_dropout(model, dropout)
    return model


def apply_method(model, cfg: ModelConfig, family: Family, total_steps: int | None = None):
    """Prepare the base for training (k-bit preparation, gradient checkpointing) and wrap it for
    the chosen method (sumtune.methods); full fine-tuning trains it as it is. ``total_steps`` (the
    step plan's) is needed by methods that schedule over the run (AdaLoRA)."""
    from sumtune import methods

    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Freezes the base, keeps norms in fp32, and enables input grads for checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        # transformers 5 names it activation checkpointing (non-reentrant; input grads enabled for PEFT).
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    if cfg.method == "adalora" and not total_steps:
        raise ValueError("model.method=adalora needs the step plan's total_steps to lay out its rank budget")
    return methods.wrap(model, cfg, family, total_steps or 0)


def to_device(model, device):
    """Move a model for inference; bitsandbytes models stay where loading placed them."""
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        return model
    return model.to(device)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ----------------------------------------------------------------------------- adapters

_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")


def adapter_base(adapter_dir: Path, trained_base: str | None = None) -> str:
    """The base model an adapter folder was trained on, from adapter_config.json. When the run's
    saved config names another base (``trained_base``), one of the two was edited: refuse."""
    import json

    recorded = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded:
        raise ModelError(f"adapter {adapter_dir}: adapter_config.json names no base_model_name_or_path; "
                         "set it to the base model the adapter was trained on")
    if trained_base and not _same_model(recorded, trained_base):
        raise ModelError(f"adapter {adapter_dir}: adapter_config.json names base model {recorded} but its "
                         f"sumtune_config.yaml says it was trained on {trained_base}; make them agree")
    return recorded


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_adapter_fits(base, adapter_dir: Path, base_name: str) -> None:
    """Compare the adapter's LoRA shapes (read from the file's header, nothing loaded) with the
    base's layers: an adapter trained on another base fails here in one line, not in a 60-line
    state-dict traceback, and a base with layers the adapter never saw is not silently accepted.
    (LoRA, DoRA and AdaLoRA name their matrices lora_A/lora_B; every method's keys are checked
    again once loaded, by ``check_adapter_keys``.)"""
    import json

    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    modules = dict(base.named_modules())
    adapted: set[str] = set()
    problem = None
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            match = _LORA_KEY.match(key)
            if not match:
                continue
            name, which = match.groups()
            adapted.add(name)
            shape = list(f.get_slice(key).get_shape())
            layer = modules.get(name)
            if layer is None:
                problem = f"it adapts layer {name}, which the base does not have"
            elif which == "A" and shape[1] != getattr(layer, "in_features", shape[1]):
                problem = f"layer {name} takes {layer.in_features} inputs in the base, {shape[1]} in the adapter"
            elif which == "B" and shape[0] != getattr(layer, "out_features", shape[0]):
                problem = f"layer {name} gives {layer.out_features} outputs in the base, {shape[0]} in the adapter"
            if problem:
                break
    if problem is None and adapted:
        lora = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        targets = lora.get("target_modules")
        if isinstance(targets, list) and not lora.get("layers_to_transform") and not lora.get("exclude_modules"):
            missing = sorted(n for n, m in modules.items() if n.rsplit(".", 1)[-1] in targets
                             and hasattr(m, "in_features") and n not in adapted)
            if missing:
                problem = f"the base has {len(missing)} targeted layers the adapter has no weights for (e.g. {missing[0]})"
    if problem:
        raise _misfit(adapter_dir, base_name, problem)


def _misfit(adapter_dir: Path, base_name: str, problem: str) -> ModelError:
    return ModelError(f"adapter {adapter_dir} does not fit base model {base_name}: {problem}; it was trained on "
                      "another base: evaluate it with the base it was trained on")


def check_adapter_keys(model, adapter_dir: Path, base_name: str) -> None:
    """Every method: the tensors the adapter file holds must be exactly those the wrapped base
    expects (peft only warns about the others, and a layer left without its weights would run
    with a fresh, untrained adapter)."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    config = model.active_peft_config
    width = model.get_base_model().get_input_embeddings().embedding_dim
    if config.is_prompt_learning and config.token_dim != width:
        # peft builds the virtual tokens at the saved width and would fail only in the first forward.
        raise _misfit(adapter_dir, base_name, f"its virtual tokens are {config.token_dim} wide, the base's embeddings "
                      f"{width}")
    with safe_open(str(weights), "pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(model).keys())
    if saved - expected:
        raise _misfit(adapter_dir, base_name, f"it holds weights for {sorted(saved - expected)[0]}, which the base "
                      f"has no place for ({len(saved - expected)} such tensors)")
    if expected - saved:
        raise _misfit(adapter_dir, base_name, f"the base expects adapter weights the file lacks, e.g. "
                      f"{sorted(expected - saved)[0]} ({len(expected - saved)} missing)")


def load_adapter(adapter_dir: str | Path, trained_base: str | None = None, quantization: str = "none",
                 trust_remote_code: bool = False, key: str | None = None):
    """An adapter run folder (any method) on its base: the base named in adapter_config.json,
    checked against the run's saved config and against the adapter's shapes and tensor names."""
    from peft import PeftModel

    from sumtune import methods

    adapter_dir = Path(adapter_dir)
    base_name = adapter_base(adapter_dir, trained_base)
    method = methods.of_adapter(adapter_dir)
    check_model_source(base_name, key=key or f"base model of adapter {adapter_dir}")
    base = load_model(base_name, quantization=quantization, trust_remote_code=trust_remote_code)
    check_adapter_fits(base, adapter_dir, base_name)
    try:
        # An AdaLoRA model loaded for inference fails on any forward that is given labels (peft reads
        # its trainable adapter's name to add the orthogonality penalty): load it trainable.
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=method.name == "adalora")
    except RuntimeError as err:  # what the shape check above did not foresee: still one line
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err).splitlines()[0]]
        raise _misfit(adapter_dir, base_name, lines[0]) from None
    check_adapter_keys(model, adapter_dir, base_name)
    if method.name == "adalora":
        model.requires_grad_(False)
    return model.eval()
