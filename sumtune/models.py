"""Base model and tokenizer, PEFT wrapping, precision checks."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sumtune.config import ModelConfig
from sumtune.errors import ConfigError, SumtuneError


class ModelError(SumtuneError):
    """A model path or hub id that cannot be loaded."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def check_model_source(name_or_path: str, key: str = "model.name_or_path") -> None:
    """Fail fast, in one line, for a model that cannot be found (no 47 s hub retry offline)."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{key}: {name_or_path} is a folder without config.json; point it at a saved model")
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise ModelError(f"{key}: {name_or_path} does not exist")
    if _hub_offline():
        raise ModelError(
            f"{key}: '{name_or_path}' is not a local folder and HF_HUB_OFFLINE is set; "
            "download it first or give a local path"
        )


def model_type(name_or_path: str) -> str:
    from transformers import AutoConfig

    check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path).model_type
    except OSError as err:
        raise ModelError(f"model.name_or_path: cannot load '{name_or_path}' ({str(err).splitlines()[0]})") from None


def check_quantization(quantization: str, zero_stage: int | None) -> None:
    if quantization != "none" and zero_stage == 3:
        raise ConfigError(
            f"model.quantization={quantization} with DeepSpeed ZeRO-3: ZeRO-3 shards parameters and cannot "
            "shard bitsandbytes' quantized weights; use a ZeRO-2 or DDP accelerate config"
        )


def check_precision(name_or_path: str, mixed_precision: str) -> None:
    """T5 activations overflow fp16 (NaN losses); refuse before any work is done."""
    if mixed_precision == "fp16" and model_type(name_or_path) in ("t5", "mt5", "umt5"):
        raise ConfigError(
            "mixed_precision fp16 with a T5 model: T5 overflows to NaN in fp16; "
            "use bf16 (GPU) or no mixed precision (fp32) in the accelerate config"
        )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path)


def _quantization_kwargs(quantization: str) -> dict:
    """bitsandbytes loading for a frozen LoRA base. Each process loads onto its own device."""
    if quantization == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if torch.cuda.is_available():
        device, compute = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}", torch.bfloat16
    else:
        device, compute = "cpu", torch.float32
    if quantization == "8bit":
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    else:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                 bnb_4bit_use_double_quant=True)
    return {"quantization_config": bnb, "device_map": {"": device}}


def load_model(name_or_path: str, dropout: float | None = None, quantization: str = "none"):
    from transformers import AutoModelForSeq2SeqLM

    check_model_source(name_or_path)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **_quantization_kwargs(quantization))
    except OSError as err:
        raise ModelError(f"cannot load model '{name_or_path}' ({str(err).splitlines()[0]})") from None
    if dropout is not None:
        set_dropout(model, dropout)
    return model


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        # Some layers keep the rate as a plain float read at call time (T5Attention's attention
        # dropout): changing only the nn.Dropout modules would leave those on.
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = p
    if hasattr(model.config, "dropout_rate"):
        model.config.dropout_rate = p


def apply_method(model, cfg: ModelConfig):
    """Wrap the base model for the chosen method. Full fine-tuning trains it as it is."""
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Freezes the base, keeps norms in fp32, and enables input grads for checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    if cfg.method == "full":
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    targets = cfg.lora.target_modules
    lora = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules: {str(err).splitlines()[0]}") from None


def to_device(model, device):
    """Move a model for inference; bitsandbytes models stay where loading placed them."""
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        return model
    return model.to(device)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
