"""Run folders: what a finished run leaves behind, loadable without sumtune.

``outputs/<run_name>/`` holds the final model (full: the whole model; LoRA: the adapter only), the
tokenizer, the resolved config (``sumtune_config.yaml``), ``metrics.json`` and ``train_log.jsonl``;
``final/`` links the same files, and ``best/`` (with in-training ROUGE) the best checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
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


def clear_finished(run_dir: Path) -> None:
    """Remove what a finished earlier run left that this run will not rewrite (overwrite=true)."""
    for name in ("best", "final", "best.tmp", "best.old"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def write_config(cfg: RunConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_yaml(cfg), encoding="utf-8")


def save_model(accelerator, model, tokenizer, folder: Path, atomic: bool = False) -> None:
    """Save from a state dict gathered on every rank (ZeRO-3 shards would otherwise be written as
    empty tensors); only the main process writes. With ``atomic``, the folder is written beside
    and swapped in when complete, so a crash leaves the previous one whole. Ends in a barrier."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        _drop_tied_duplicates(accelerator.unwrap_model(model), state_dict)
        target = folder.with_name(folder.name + ".tmp") if atomic else folder
        if atomic and target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(target, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(target)
        if atomic:
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                folder.rename(old)
            target.rename(folder)
            if old.exists():
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _drop_tied_duplicates(model, state_dict: dict) -> None:
    """A gathered state dict (DeepSpeed) holds tied weights (T5's shared embeddings) once per
    name; keep the first name of each shared parameter, as a plain save_pretrained does."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    for group in names.values():
        for name in group[1:]:
            state_dict.pop(name, None)


def link_final(run_dir: Path) -> Path:
    """final/ holds the same files as the run folder's top level, as hard links (no extra disk):
    the top level stays loadable with a plain ``from_pretrained(run_dir)``, and final/ sits
    beside best/."""
    final = run_dir / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            try:
                os.link(path, final / path.name)
            except OSError:  # a filesystem without hard links
                shutil.copy2(path, final / path.name)
    return final


def save_run(accelerator, model, tokenizer, cfg: RunConfig, metrics: dict) -> Path:
    folder = cfg.run_dir
    save_model(accelerator, model, tokenizer, folder)
    if accelerator.is_main_process:
        write_config(cfg, folder)
        # Written last: its presence marks the run as finished.
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        link_final(folder)
    accelerator.wait_for_everyone()
    return folder
