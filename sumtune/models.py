"""Base model and tokenizer, PEFT wrapping, precision checks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from sumtune.config import ModelConfig
from sumtune.errors import ConfigError, SumtuneError


class ModelError(SumtuneError):
    """A model path or hub id that cannot be loaded."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def check_model_source(name_or_path: str, key: str = "model.name_or_path", trust_remote_code: bool | None = None) -> None:
    """Fail fast, in one line, for a model that cannot be found (no 47 s hub retry offline), and,
    given ``trust_remote_code=False``, for a local model that would run its own code."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{key}: {name_or_path} is a folder without config.json; point it at a saved model")
        if trust_remote_code is False and (path / "config.json").is_file():
            import json

            try:
                auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
            except (ValueError, AttributeError):
                auto_map = None  # transformers names what is wrong with it when loading
            if auto_map:
                raise _remote_code_refused(ValueError("trust_remote_code"), name_or_path)
        return
    # "outputs/run-typo" is a hub id in form; with a local outputs/ folder it is a path that does not exist.
    looks_local = (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
                   or (name_or_path.count("/") == 1 and path.parent.is_dir()))
    if looks_local:
        raise ModelError(f"{key}: {name_or_path} does not exist")
    if _hub_offline():
        raise ModelError(
            f"{key}: '{name_or_path}' is not a local folder and HF_HUB_OFFLINE is set; "
            "download it first or give a local path"
        )


def _remote_code_refused(err: ValueError, name_or_path: str) -> ModelError:
    if "trust_remote_code" not in str(err):
        raise err
    return ModelError(f"{name_or_path} ships its own Python code (auto_map in its config.json), which sumtune does "
                      "not run unless the config says so; set model.trust_remote_code=true only if you trust it")


def model_type(name_or_path: str, trust_remote_code: bool = False) -> str:
    from transformers import AutoConfig

    check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    except OSError as err:
        raise ModelError(f"model.name_or_path: cannot load '{name_or_path}' ({str(err).splitlines()[0]})") from None
    except ValueError as err:
        raise _remote_code_refused(err, name_or_path) from None


def check_quantization(quantization: str, zero_stage: int | None) -> None:
    if quantization != "none" and zero_stage == 3:
        raise ConfigError(
            f"model.quantization={quantization} with DeepSpeed ZeRO-3: ZeRO-3 shards parameters and cannot "
            "shard bitsandbytes' quantized weights; use a ZeRO-2 or DDP accelerate config"
        )


def check_precision(name_or_path: str, mixed_precision: str, trust_remote_code: bool = False) -> None:
    """T5 activations overflow fp16 (NaN losses); refuse before any work is done."""
    if mixed_precision == "fp16" and model_type(name_or_path, trust_remote_code) in ("t5", "mt5", "umt5"):
        raise ConfigError(
            "mixed_precision fp16 with a T5 model: T5 overflows to NaN in fp16; "
            "use bf16 (GPU) or no mixed precision (fp32) in the accelerate config"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise _remote_code_refused(err, name_or_path) from None


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


def load_model(name_or_path: str, dropout: float | None = None, quantization: str = "none",
               trust_remote_code: bool = False):
    from transformers import AutoModelForSeq2SeqLM

    check_model_source(name_or_path)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                      **_quantization_kwargs(quantization))
    except OSError as err:
        raise ModelError(f"cannot load model '{name_or_path}' ({str(err).splitlines()[0]})") from None
    except ValueError as err:
        raise _remote_code_refused(err, name_or_path) from None
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
    state-dict traceback, and a base with layers the adapter never saw is not silently accepted."""
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
    if problem is None:
        lora = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        targets = lora.get("target_modules")
        if isinstance(targets, list) and not lora.get("layers_to_transform") and not lora.get("exclude_modules"):
            missing = sorted(n for n, m in modules.items() if n.rsplit(".", 1)[-1] in targets
                             and hasattr(m, "in_features") and n not in adapted)
            if missing:
                problem = f"the base has {len(missing)} targeted layers the adapter has no weights for (e.g. {missing[0]})"
    if problem:
        raise ModelError(f"adapter {adapter_dir} does not fit base model {base_name}: {problem}; it was trained on "
                         "another base: evaluate it with the base it was trained on")


def load_adapter(adapter_dir: str | Path, trained_base: str | None = None, quantization: str = "none",
                 trust_remote_code: bool = False, key: str | None = None):
    """A LoRA run folder on its base: the base named in adapter_config.json, checked against the
    run's saved config and, layer by layer, against the adapter's shapes."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    base_name = adapter_base(adapter_dir, trained_base)
    check_model_source(base_name, key=key or f"base model of adapter {adapter_dir}")
    base = load_model(base_name, quantization=quantization, trust_remote_code=trust_remote_code)
    check_adapter_fits(base, adapter_dir, base_name)
    try:
        return PeftModel.from_pretrained(base, str(adapter_dir))
    except RuntimeError as err:  # what the shape check above did not foresee: still one line
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err).splitlines()[0]]
        raise ModelError(f"adapter {adapter_dir} does not fit base model {base_name}: {lines[0]}") from None
