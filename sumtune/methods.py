"""The fine-tuning methods: one registry entry per method, so that adding one touches this file.

An entry says how its typed settings (``model.<section>`` in the run config) become a peft config
for a model family, whether it needs a call on every optimizer step (AdaLoRA's budget), whether its
adapter can be merged into the base, and which combinations it refuses, in one line, before any
weight loads (the support matrix in docs/models-and-methods.md is this table's ``refusal`` functions, each with a
test):

    methods.check(cfg, family, zero_stage)                        # at start-up: refuse what cannot work
    model = methods.wrap(base, cfg.model, family, plan.total_steps)  # the base wrapped for training
    scale = methods.lr_scale(cfg.model)                           # LoRA+: a learning-rate factor per parameter
    hook = methods.step_hook(prepared, cfg.model, accelerator)    # AdaLoRA's budget; None for the others
    penalty = methods.loss_penalty(prepared, cfg.model, accelerator)  # AdaLoRA's orthogonality term; or None

Full fine-tuning is the entry with no peft config: the base trains as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sumtune.config import ModelConfig, RunConfig
from sumtune.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    # The ModelConfig attribute holding the settings (dora shares lora's), None for full.
    section: str | None
    summary: str
    # (settings, family, model, cfg, total_steps) -> a peft config; None: full fine-tuning.
    peft_config: Callable | None = None
    # merge_and_unload() gives a plain model that computes what base + adapter computes.
    mergeable: bool = False
    # Virtual tokens in front of the input instead of changed weights (nothing to merge).
    prompt_learning: bool = False
    # (cfg, family, zero_stage) -> why this combination is refused, or None.
    refusal: Callable[[ModelConfig, object, int | None], str | None] | None = None

    @property
    def adapter(self) -> bool:
        return self.peft_config is not None


# ----------------------------------------------------------------------------- peft configs


def _targets(settings, family) -> str | list[str]:
    targets = settings.target_modules
    if targets == ["auto"]:
        return family.lora_targets()
    return "all-linear" if targets == ["all-linear"] else targets


def _lora(dora: bool):
    def build(s, family, model, cfg, total_steps):
        from peft import LoraConfig

        init = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}[s.init]
        return LoraConfig(task_type=family.task_type, r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                          target_modules=_targets(s, family), use_rslora=s.rslora, init_lora_weights=init,
                          use_dora=dora)
    return build


def _adalora(s, family, model, cfg, total_steps):
    from peft import AdaLoraConfig

    tinit = round(s.prune_start * total_steps)
    end = round(s.prune_end * total_steps)
    if end - tinit < 1:
        raise ConfigError(f"model.adalora.prune_start: pruning from step {tinit} to step {end} of {total_steps} covers "
                          "no optimizer step; widen prune_start..prune_end or train for more steps")
    return AdaLoraConfig(task_type=family.task_type, init_r=s.init_r, target_r=s.target_r, lora_alpha=s.alpha,
                         lora_dropout=s.dropout, target_modules=_targets(s, family), total_step=total_steps,
                         tinit=tinit, tfinal=total_steps - end, deltaT=s.delta_t, beta1=s.beta1, beta2=s.beta2,
                         orth_reg_weight=s.orth_reg_weight)


def _ia3(s, family, model, cfg, total_steps):
    from peft import IA3Config

    if s.target_modules == ["auto"]:
        targets, feedforward = family.ia3_modules(model)
    else:
        targets, feedforward = s.target_modules, s.feedforward_modules
    return IA3Config(task_type=family.task_type, target_modules=targets, feedforward_modules=feedforward)


def _loha(s, family, model, cfg, total_steps):
    from peft import LoHaConfig

    return LoHaConfig(task_type=family.task_type, r=s.r, alpha=s.alpha, rank_dropout=s.rank_dropout,
                      module_dropout=s.module_dropout, target_modules=_targets(s, family))


def _lokr(s, family, model, cfg, total_steps):
    from peft import LoKrConfig

    return LoKrConfig(task_type=family.task_type, r=s.r, alpha=s.alpha, rank_dropout=s.rank_dropout,
                      module_dropout=s.module_dropout, target_modules=_targets(s, family),
                      decompose_both=s.decompose_both, decompose_factor=s.decompose_factor)


def _vera(s, family, model, cfg, total_steps):
    from peft import VeraConfig

    return VeraConfig(task_type=family.task_type, r=s.r, d_initial=s.d_initial, vera_dropout=s.dropout,
                      target_modules=_targets(s, family), projection_prng_key=s.projection_seed, save_projection=True)


def _prompt(s, family, model, cfg, total_steps):
    from peft import PromptTuningConfig

    if s.init == "random":
        return PromptTuningConfig(task_type=family.task_type, num_virtual_tokens=s.virtual_tokens)
    # peft loads a tokenizer by this name to embed the text: the base's own folder or hub id, never a
    # name that would need the hub offline.
    return PromptTuningConfig(task_type=family.task_type, num_virtual_tokens=s.virtual_tokens,
                              prompt_tuning_init="TEXT", prompt_tuning_init_text=s.init_text,
                              tokenizer_name_or_path=cfg.name_or_path,
                              tokenizer_kwargs={"trust_remote_code": cfg.trust_remote_code})


def _prefix(s, family, model, cfg, total_steps):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=family.task_type, num_virtual_tokens=s.virtual_tokens,
                              prefix_projection=s.projection)


# ----------------------------------------------------------------------------- refusals (the support matrix)


def _under_deepspeed(stage: int | None) -> bool:
    return stage is not None


def _refuse_lora(cfg: ModelConfig, family, stage):
    if cfg.lora.init in ("pissa", "olora") and cfg.quantization != "none":
        return (f"model.lora.init={cfg.lora.init} starts by moving the base weights' principal directions into the "
                f"adapter, which a {cfg.quantization} base cannot hold exactly (the converted adapter would not match "
                "what was trained); use init=default on a quantized base, or a full-precision base")
    return None


def _refuse_dora(cfg: ModelConfig, family, stage):
    if cfg.quantization == "8bit":
        return ("model.method=dora on an 8-bit base fails in peft's DoRA layer for bitsandbytes 8-bit weights; use a "
                "4-bit base (model.quantization=4bit), or method=lora")
    return _refuse_lora(cfg, family, stage)


def _refuse_adalora(cfg: ModelConfig, family, stage):
    if _under_deepspeed(stage):
        return ("model.method=adalora under DeepSpeed: its rank allocation reads the gradients after the optimizer step, "
                "but DeepSpeed steps and zeroes them inside backward, so the budget would be allocated on nothing; "
                "use a DDP accelerate config (multi_gpu.yaml), or method=lora under DeepSpeed")
    return None


def _refuse_lycoris(cfg: ModelConfig, family, stage):
    if cfg.quantization == "4bit":
        return (f"model.method={cfg.method} on a 4-bit base fails with shape errors in peft's LyCORIS layers (bitsandbytes "
                "packs two 4-bit weights per byte); use an 8-bit base, or method=lora/dora on 4 bits")
    return None


def _refuse_prefix(cfg: ModelConfig, family, stage):
    return ("model.method=prefix: with peft 0.21 and transformers 5.24, generate() ignores the learned prefix "
            "(measured: the summaries are the base model's, while training saw the prefix), so a prefix-tuned model "
            "would be evaluated as its base; use method=prompt (prompt tuning) or lora")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", None, "every weight of the model"),
    Method("lora", "lora", "low-rank update B @ A of the chosen linear layers", _lora(dora=False), mergeable=True,
           refusal=_refuse_lora),
    Method("dora", "lora", "LoRA on the direction of each weight, with a learned magnitude per output", _lora(dora=True),
           mergeable=True, refusal=_refuse_dora),
    Method("adalora", "adalora", "LoRA in SVD form; the rank budget is pruned to the layers that matter", _adalora,
           mergeable=True, refusal=_refuse_adalora),
    Method("ia3", "ia3", "learned scales of keys, values and feed-forward activations", _ia3, mergeable=True),
    Method("loha", "loha", "low-rank Hadamard-product update (LyCORIS)", _loha, mergeable=True, refusal=_refuse_lycoris),
    Method("lokr", "lokr", "Kronecker-product update (LyCORIS)", _lokr, mergeable=True, refusal=_refuse_lycoris),
    Method("vera", "vera", "shared frozen random projections, per-layer trained scaling vectors", _vera, mergeable=True),
    Method("prompt", "prompt", "virtual tokens learned in front of the input (prompt tuning)", _prompt,
           prompt_learning=True),
    Method("prefix", "prefix", "learned keys and values in front of every attention layer (prefix tuning)", _prefix,
           prompt_learning=True, refusal=_refuse_prefix),
)}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"model.method: unknown method '{name}'; one of {', '.join(METHODS)}")
    return METHODS[name]


def settings(cfg: ModelConfig):
    method = get(cfg.method)
    return getattr(cfg, method.section) if method.section else None


def check(run: RunConfig, family, zero_stage: int | None) -> None:
    """Refuse, in one line and before any weight loads, a combination of method, family,
    quantization and DeepSpeed stage that does not work with this library set."""
    cfg = run.model
    method = get(cfg.method)
    why = method.refusal(cfg, family, zero_stage) if method.refusal else None
    if why:
        raise ConfigError(why)
    if method.prompt_learning and cfg.gradient_checkpointing:
        raise ConfigError(f"model.method={cfg.method} with model.gradient_checkpointing=true: peft's prompt learning "
                          "does not support it; turn gradient checkpointing off")
    if method.prompt_learning and zero_stage == 3 and run.train.rouge_every:
        raise ConfigError(f"model.method={cfg.method} with train.rouge_every under DeepSpeed ZeRO-3: peft's "
                          "prompt-tuning generate() gathers the sharded weights out of step across processes (a "
                          "collective mismatch aborts the run); set train.rouge_every=0 and evaluate afterwards with "
                          "eval/evaluate.py, or use ZeRO-2")


# ----------------------------------------------------------------------------- wrapping


def wrap(model, cfg: ModelConfig, family, total_steps: int):
    """The base wrapped for ``cfg.method`` (unchanged for full). ``total_steps`` is the step plan's
    (AdaLoRA's budget schedule is laid out over it)."""
    method = get(cfg.method)
    if not method.adapter:
        return model
    from peft import get_peft_model

    peft_config = method.peft_config(settings(cfg), family, model, cfg, total_steps)
    try:
        wrapped = get_peft_model(model, peft_config)
    except ValueError as err:  # peft's word for it (e.g. target modules the base does not have), in one line
        raise ConfigError(f"model.{method.section}: {str(err).splitlines()[0]}") from None
    if cfg.method in ("lora", "dora") and cfg.lora.init in ("pissa", "olora"):
        remember_initial_adapter(wrapped)
    return wrapped


def remember_initial_adapter(model) -> None:
    """PiSSA and OLoRA move part of each base weight into the adapter before training: the base
    is then W - scale * B0 @ A0. Keep (A0, B0) with the model, so that every saved adapter can be
    turned into one that applies to the ORIGINAL base (``convert_saved_adapter``)."""
    from peft import get_peft_model_state_dict

    model.sumtune_initial_adapter = {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}


def convert_saved_adapter(model, folder: Path) -> None:
    """After a PiSSA/OLoRA adapter was saved into ``folder``: rewrite it as a plain LoRA adapter of
    twice the rank for the original base, since W - B0 A0 + B A = W + [B | -B0] [A ; A0] (the scale
    is kept: alpha doubles with r, or grows by sqrt(2) under rsLoRA). A no-op for other models."""
    initial = getattr(model, "sumtune_initial_adapter", None)
    if not initial:
        return
    from safetensors.torch import load_file, save_file

    weights_file, config_file = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    trained = load_file(str(weights_file))
    out = {}
    for key, tensor in trained.items():
        start = initial[key].to(tensor.dtype)
        if "lora_A" in key:
            out[key] = torch.cat([tensor, start], dim=0).contiguous()
        elif "lora_B" in key:
            out[key] = torch.cat([tensor, -start], dim=1).contiguous()
        else:
            out[key] = tensor
    save_file(out, str(weights_file), metadata={"format": "pt"})
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rslora = config.get("use_rslora", False)
    config.update(r=2 * config["r"], lora_alpha=config["lora_alpha"] * (2 ** 0.5 if rslora else 2), init_lora_weights=True)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- what the loop needs


def lr_scale(cfg: ModelConfig) -> Callable[[str], float] | None:
    """LoRA+: a parameter name -> its learning-rate factor (B matrices ``loraplus_lr_ratio``, the
    rest 1); None when every parameter learns at train.lr."""
    if cfg.method not in ("lora", "dora") or not cfg.lora.loraplus_lr_ratio:
        return None
    ratio = cfg.lora.loraplus_lr_ratio
    return lambda name: ratio if ".lora_B." in name else 1.0


class AdaLoraBudget:
    """AdaLoRA's per-step budget update, as the optimizer step's hook, and the allocator's running
    importance scores as checkpoint state (registered with the accelerator): without them a
    resumed run would allocate ranks from scores restarted at zero."""

    def __init__(self, accelerator, model):
        self.acc = accelerator
        self.model = model

    @property
    def _tuner(self):
        return self.acc.unwrap_model(self.model).base_model

    def __call__(self, step: int) -> None:
        # After backward, clipping and optimizer.step(), before zero_grad (engine.OptimizerStep): the
        # scores read this step's gradients.
        self._tuner.update_and_allocate(step)

    def state_dict(self) -> dict:
        tuner = self._tuner
        allocator = tuner.rankallocator
        config = tuner.peft_config[tuner.trainable_adapter_name]
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": config.rank_pattern}

    def load_state_dict(self, state: dict) -> None:
        tuner = self._tuner
        allocator = tuner.rankallocator
        device = next(iter(tuner.parameters())).device
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})
        tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]


def step_hook(model, cfg: ModelConfig, accelerator) -> AdaLoraBudget | None:
    """The per-optimizer-step call a method needs (AdaLoRA), registered for checkpointing; None
    for the others. ``model`` is the prepared model."""
    if cfg.method != "adalora":
        return None
    budget = AdaLoraBudget(accelerator, model)
    accelerator.register_for_checkpointing(budget)
    return budget


def loss_penalty(model, cfg: ModelConfig, accelerator) -> Callable[[], torch.Tensor] | None:
    """A term a method adds to every micro-batch's training loss, or None. AdaLoRA's: its weight
    (``model.adalora.orth_reg_weight``) times the mean over its A and B matrices of how far their
    Gram matrices are from the identity (Frobenius norm), which keeps the SVD form's singular vectors
    orthogonal. peft adds that term only to a loss the model computes itself from labels; sumtune's
    training loss is computed by the family from the logits (engine.TokenWeightedLoss adds this to
    each micro-batch, so a step's gradient holds it once, as peft's would)."""
    if cfg.method != "adalora" or cfg.adalora.orth_reg_weight <= 0:
        return None
    weight = cfg.adalora.orth_reg_weight

    def penalty() -> torch.Tensor:
        tuner = accelerator.unwrap_model(model).base_model
        name = tuner.trainable_adapter_name
        distances = []
        for key, p in tuner.model.named_parameters():
            if name in key and ("lora_A" in key or "lora_B" in key):
                gram = p @ p.T if "lora_A" in key else p.T @ p  # a rank pruned to 0: an empty Gram, distance 0
                distances.append(torch.norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), p="fro"))
        return weight * torch.stack(distances).mean()

    return penalty


# ----------------------------------------------------------------------------- saved adapters


def of_adapter(folder: Path) -> Method:
    """The method an adapter folder was trained with, from its adapter_config.json."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    kind = str(config.get("peft_type", "")).lower()
    if kind == "lora":
        return METHODS["dora" if config.get("use_dora") else "lora"]
    names = {"adalora": "adalora", "ia3": "ia3", "loha": "loha", "lokr": "lokr", "vera": "vera",
             "prompt_tuning": "prompt", "prefix_tuning": "prefix"}
    if kind not in names:
        raise ConfigError(f"adapter {folder}: peft_type '{config.get('peft_type')}' is not a method sumtune trains "
                          f"({', '.join(m for m in METHODS if m != 'full')})")
    return METHODS[names[kind]]
