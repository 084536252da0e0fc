"""Run folders: what a finished run leaves behind, loadable without sumtune.

``outputs/<run_name>/`` holds the model (full: the whole model; LoRA: the adapter only), the
tokenizer, the resolved config (``sumtune_config.yaml``), ``metrics.json`` and ``train_log.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sumtune.config import RunConfig, dump_yaml
from sumtune.errors import SumtuneError

CONFIG_FILE = "sumtune_config.yaml"
METRICS_FILE = "metrics.json"


def is_finished_run(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file() and (run_dir / CONFIG_FILE).is_file()


def check_output_dir(cfg: RunConfig) -> None:
    """Never overwrite a finished run by accident."""
    if is_finished_run(cfg.run_dir) and not cfg.overwrite:
        raise SumtuneError(
            f"{cfg.run_dir} already holds a finished run; choose another run_name or set overwrite=true"
        )


def write_config(cfg: RunConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_yaml(cfg), encoding="utf-8")


def save_model(accelerator, model, tokenizer, folder: Path) -> None:
    """Save from a state dict gathered on every rank (ZeRO-3 shards would otherwise be written as
    empty tensors); only the main process writes. Ends in a barrier."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()


def save_run(accelerator, model, tokenizer, cfg: RunConfig, metrics: dict) -> Path:
    folder = cfg.run_dir
    save_model(accelerator, model, tokenizer, folder)
    if accelerator.is_main_process:
        write_config(cfg, folder)
        # Written last: its presence marks the run as finished.
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
    return folder
