"""Run folders: the one reader of what training and export leave on disk.

A run folder is what ``train/finetune.py`` or ``train/detox.py`` writes (its top level, ``final/``
or ``best/``): the resolved config (``sumtune_config.yaml``), the model (an adapter:
``adapter_config.json`` and its weights; full fine-tuning: the whole model), the tokenizer and
``metrics.json``. ``train/export.py`` writes a merged export: a full model with a config that
describes it as one, and ``export.json`` (where it came from). Anything else given where a run
folder may stand (a plain model folder, a hub id) is a base model, prompted with the caller's
settings.

    run = RunFolder("outputs/demo-lora")
    run.kind                              # "adapter" | "full" | "merged" | "base"
    model, tokenizer = run.load(trust_remote_code=False)
    prompts = run.prompting(cfg.data)     # the DataConfig it must be prompted with

Evaluation, inference, export and the report read run folders through this class only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from sumtune import families, methods, models
from sumtune.checkpoints import CONFIG_FILE, KEYS_ADDED_LATER
from sumtune.config import DataConfig, RunConfig, from_dict, load_yaml
from sumtune.errors import ConfigError
from sumtune.families.base import ModelError, looks_local
from sumtune.prompts import resolve_template

EXPORT_FILE = "export.json"
ADAPTER_FILE = "adapter_config.json"
# The prompt settings a run folder is prompted with as it was trained (data.template aside, which a
# caller may override); a folder saved before one existed gets its KEYS_ADDED_LATER value.
PROMPTING = ("chat_template", "system_prompt", "chat_date", "turn_separator")
# What a policy started from a run folder must share with it (train/detox.py refuses otherwise).
PROMPTED_AS_TRAINED = ("template", *PROMPTING, "max_source_length")


class RunFolder:
    """A run folder, a merged export, or a base model (a folder or hub id without a sumtune config).

    ``key`` names where the path came from in one-line errors ("model.name_or_path", "candidate lora")."""

    def __init__(self, path: str | Path, key: str = "model.name_or_path"):
        self.path = str(path)
        self.folder = Path(path)
        self.key = key

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ------------------------------------------------------------------------- what it is

    @property
    def kind(self) -> str:
        """"adapter" (a run of an adapter method), "full" (a full fine-tuning run), "merged" (written
        by train/export.py) or "base" (no sumtune config: a plain model folder or a hub id). A local
        path that does not exist is one line."""
        if not self.folder.exists():
            if looks_local(self.path):
                raise ModelError(f"{self.key}: {self.path} does not exist")
            return "base"
        if (self.folder / ADAPTER_FILE).is_file():
            return "adapter"
        if self.config_file is None:
            return "base"
        return "merged" if (self.folder / EXPORT_FILE).is_file() else "full"

    @property
    def config_file(self) -> Path | None:
        """The saved ``sumtune_config.yaml``, None without one."""
        path = self.folder / CONFIG_FILE
        return path if path.is_file() else None

    @property
    def has_model(self) -> bool:
        """Whether there are weights to load (a run folder of an unfinished run has its config only)."""
        return not self.folder.exists() or any((self.folder / f).is_file() for f in (ADAPTER_FILE, "config.json"))

    @cached_property
    def saved(self) -> dict:
        """The config as saved, untyped ({} without one): which keys it lacks tells its age."""
        return load_yaml(self.config_file) if self.config_file else {}

    @cached_property
    def config(self) -> RunConfig | None:
        """The saved config, typed (defaults for what it lacks); None without one."""
        if not self.saved:
            return None
        try:
            return from_dict(self.saved)
        except ConfigError as err:
            raise ConfigError(f"{self.config_file}: {err}") from None

    @cached_property
    def export_info(self) -> dict:
        """export.json of a merged export (source, method, base_model, ...); {} for any other kind."""
        path = self.folder / EXPORT_FILE
        return json.loads(path.read_text(encoding="utf-8")) if self.kind == "merged" else {}

    @property
    def wandb_group(self) -> str | None:
        """The W&B group of the run that wrote it (tracker.group, else run_name); None without a config."""
        if not self.saved:
            return None
        return self.saved.get("tracker", {}).get("group") or self.saved.get("run_name")

    @property
    def base_model(self) -> str | None:
        """What the weights were trained from: an adapter's base (adapter_config.json, checked
        against the saved config), a full run's starting model, a merged export's base; None for a
        base model."""
        kind = self.kind
        if kind == "adapter":
            return models.adapter_base(self.folder, self.config.model.name_or_path if self.config else None)
        if kind == "merged":
            return self.export_info.get("base_model")
        return self.config.model.name_or_path if kind == "full" else None

    @property
    def quantization(self) -> str:
        """The quantization of the base an adapter was trained on ("none" for other kinds)."""
        return self.config.model.quantization if self.kind == "adapter" and self.config else "none"

    def adapter_method(self) -> methods.Method | None:
        """An adapter's method (from adapter_config.json); None for other kinds."""
        return methods.of_adapter(self.folder) if self.kind == "adapter" else None

    @property
    def method(self) -> str:
        """The method's name: an adapter's, "full" for full and merged folders, "none" for a base."""
        kind = self.kind
        return self.adapter_method().name if kind == "adapter" else "none" if kind == "base" else "full"

    def family(self, trust_remote_code: bool = False, choice: str | None = None) -> families.Family:
        """The model's family (an adapter: its base's), as the saved ``model.family`` asks unless
        ``choice`` is given; no weights are loaded."""
        if choice is None:
            choice = self.config.model.family if self.config else "auto"
        return families.resolve(self.path, choice, trust_remote_code, key=self.key)

    @property
    def tokenizer_source(self) -> str:
        """Where its tokenizer loads from: the folder, or an adapter folder's base when the adapter
        was saved without one."""
        if self.kind == "adapter" and not (self.folder / "tokenizer_config.json").is_file():
            return self.base_model
        return self.path

    # ------------------------------------------------------------------------- prompting

    def prompting(self, cfg_data: DataConfig, template: str | None = None) -> DataConfig:
        """The DataConfig its prompts are built with: ``cfg_data`` with the template (``template``,
        else the one it was trained with, else cfg_data's) and the chat template choice, system
        message, pinned date and turn separator it was trained with. A folder saved before one of
        those settings existed gets the behaviour it had then; a base model, cfg_data's."""
        saved = self.saved.get("data", {})
        chosen = template or saved.get("template") or cfg_data.template
        settings = {}
        for key in PROMPTING:
            if key in saved:
                settings[key] = saved[key]
            elif saved:
                settings[key] = KEYS_ADDED_LATER.get(f"data.{key}", getattr(cfg_data, key))
            else:
                settings[key] = getattr(cfg_data, key)
        return dataclasses.replace(cfg_data, template=resolve_template(chosen), **settings)

    def check_prompted_as_trained(self, cfg: RunConfig, role: str = "the start") -> None:
        """A run that continues from this folder prompts it as it was trained: the same template and
        limits, or one line naming the key."""
        saved = self.saved.get("data", {})
        for key in PROMPTED_AS_TRAINED:
            if key in saved and saved[key] != getattr(cfg.data, key):
                raise ConfigError(f"config key 'data.{key}': {role} {self.path} was trained with {saved[key]!r}, this "
                                  f"run has {getattr(cfg.data, key)!r}; prompt the policy as it was trained "
                                  f"(data.{key}={saved[key]!r})")

    # ------------------------------------------------------------------------- loading

    def load(self, trust_remote_code: bool = False, merge: bool = False, dropout: float | None = None,
             quantization: str | None = None):
        """(model, tokenizer). An adapter loads on its base, quantized as it was trained unless
        ``quantization`` says otherwise; with ``merge`` it is merged into a full-precision base and
        a plain model comes back (refused for a quantized base or a method that changes no weight).
        Other kinds load as they are (``quantization``: none unless given). ``dropout``: the rate set
        in every dropout layer (None: the model's own)."""
        family = self.family(trust_remote_code)
        if self.kind == "adapter":
            if merge:
                self._check_mergeable(quantization or "none")
            bits = quantization or ("none" if merge else self.quantization)
            model = models.load_adapter(self.folder, self.config.model.name_or_path if self.config else None, bits,
                                        trust_remote_code)
            if merge:
                model = model.merge_and_unload()
        else:
            model = models.load_model(self.path, quantization=quantization or "none",
                                      trust_remote_code=trust_remote_code, family=family)
        if dropout is not None:
            models.set_dropout(model, dropout)
        return model, models.load_tokenizer(self.tokenizer_source, trust_remote_code, family)

    def _check_mergeable(self, quantization: str) -> None:
        if quantization != "none":
            raise ConfigError(f"model.quantization={quantization} with a LoRA start ({self.path}): its adapter is merged "
                              "into the base, which cannot be done exactly in 8/4 bits; start from a full model, or use "
                              "model.quantization=none")
        method = self.adapter_method()
        if not method.mergeable:
            raise ConfigError(f"{self.path}: a {method.name} adapter cannot be merged into its base: {method.summary} "
                              "change no weight of the base")


def training_group(paths: Iterable[str | Path]) -> str | None:
    """The W&B group of the first path that is a run folder (see RunFolder.wandb_group), so that
    work on runs (an evaluation, a report) sits beside the training run."""
    for path in paths:
        run = RunFolder(path)
        if run.saved:
            return run.wandb_group
    return None
