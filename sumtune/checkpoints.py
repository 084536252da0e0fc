"""Run folders: what a finished run leaves behind, loadable without sumtune.

``outputs/<run_name>/`` holds the final model (full: the whole model; LoRA: the adapter only), the
tokenizer, the resolved config (``sumtune_config.yaml``), ``metrics.json`` and ``train_log.jsonl``;
``final/`` links the same files, and ``best/`` (with in-training ROUGE) the best checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from sumtune import faults, methods
from sumtune.config import RLConfig, RunConfig, dump_yaml, to_dict, upgrade
from sumtune.errors import DiskFullError, SumtuneError, is_disk_full

CONFIG_FILE = "sumtune_config.yaml"
METRICS_FILE = "metrics.json"


def is_finished_run(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file() and (run_dir / CONFIG_FILE).is_file()


def check_output_dir(cfg: RunConfig) -> None:
    """Never overwrite a finished run by accident."""
    if is_finished_run(cfg.run_dir) and not cfg.overwrite:
        what = "nothing to resume" if cfg.resume else "choose another run_name or set overwrite=true"
        raise SumtuneError(f"{cfg.run_dir} already holds a finished run; {what}")
    if cfg.resume is None and not cfg.overwrite and complete_checkpoints(cfg.run_dir):
        raise SumtuneError(
            f"{cfg.run_dir} holds checkpoints of an unfinished run; pass resume=auto to continue it, or "
            "overwrite=true to start over (its checkpoints are then deleted)"
        )


# The model files of a run folder: a LoRA run writes the adapter ones, a full run the others. A run
# of the other method over it (overwrite=true) must not leave the earlier ones beside its own: an
# adapter_config.json left there makes the folder load as that old adapter.
MODEL_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "config.json",
               "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def clear_finished(run_dir: Path) -> None:
    """Remove what a finished earlier run left that this run will not rewrite (overwrite=true).
    Model files go only when sumtune wrote the folder as a finished run."""
    if is_finished_run(run_dir):
        for name in MODEL_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for shard in run_dir.glob("model-*-of-*.safetensors"):
            shard.unlink()
    for name in ("best", "final", "best.tmp", "best.old", CHECKPOINTS):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def write_config(cfg: RunConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_yaml(cfg), encoding="utf-8")


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the completely written ``tmp`` beside it: until the rename the old
    folder stays whole, so a crash never leaves a half-written one under the real name."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def save_model(accelerator, model, tokenizer, folder: Path, atomic: bool = False,
               extra_files: dict[str, str] | None = None) -> None:
    """Save from a state dict gathered on every rank (ZeRO-3 shards would otherwise be written as
    empty tensors); only the main process writes, ``extra_files`` (name -> text) included. With
    ``atomic``, the folder is written beside and swapped in when complete. Ends in a barrier."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        _drop_tied_duplicates(accelerator.unwrap_model(model), state_dict)
        target = folder.with_name(folder.name + ".tmp") if atomic else folder
        if atomic and target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True, exist_ok=True)
        net = accelerator.unwrap_model(model)
        net.save_pretrained(target, state_dict=state_dict, safe_serialization=True)
        methods.convert_saved_adapter(net, target)  # PiSSA/OLoRA: an adapter for the original base
        tokenizer.save_pretrained(target)
        for name, text in (extra_files or {}).items():
            (target / name).write_text(text, encoding="utf-8")
        if atomic:
            swap_in(target, folder)
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


# ----------------------------------------------------------------------------- training state

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Changing these between an interrupted run and its resumption cannot change what is trained.
RESUME_HARMLESS = (
    "overwrite", "resume", "run_name", "output_dir", "model.gradient_checkpointing",
    "train.log_every", "train.eval_every", "train.eval_max_batches", "train.rouge_every", "train.rouge_examples",
    "train.best_metric", "train.best_metric_mode", "train.early_stopping_patience", "train.checkpoint_every", "train.keep_checkpoints",
    # the same loss computed another way (tested equal), and the compiled model's padding
    "train.loss", "train.chunk_size", "train.compile", "train.pad_to_multiple", "model.attn_implementation",
    "data.max_eval_examples", "generation.", "eval.", "tracker.", "rl.samples_every", "rl.samples_rows", "rl.max_kl",
)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that were written whole, oldest first (a crash mid-save leaves only a .tmp)."""
    folder = run_dir / CHECKPOINTS
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def save_checkpoint(accelerator, cfg: RunConfig, step: int, state: dict) -> Path:
    """The whole training state (model or adapter, optimizer, scheduler, every rank's RNG, data
    position) through ``accelerator.save_state``, so DeepSpeed shards are saved too. Written to
    ``step-N.tmp`` and renamed when complete; the oldest beyond ``keep_checkpoints`` are removed."""
    folder = cfg.run_dir / CHECKPOINTS / f"step-{step:06d}"
    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    faults.point("save-pause", step)
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    except Exception as err:  # a full disk: torch.save and safetensors each report it their own way
        if not is_disk_full(err, tmp):
            raise
        newest = complete_checkpoints(cfg.run_dir)
        raise DiskFullError(f"no space left on device while saving checkpoint {tmp} (incomplete: resume=auto never "
                            f"picks it); newest complete checkpoint: {newest[-1] if newest else 'none'}; free space "
                            "and start again with resume=auto") from None
    # Every rank writes into tmp (its RNG states; under DeepSpeed its shards), and save_state ends
    # in no barrier: the main process must not mark tmp complete and rename it before all are done.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_config(cfg, tmp)
        faults.point("save", step)
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}) + "\n", encoding="utf-8")  # written last
        swap_in(tmp, folder)
        for old in complete_checkpoints(cfg.run_dir)[: -cfg.train.keep_checkpoints]:
            shutil.rmtree(old)
        # What a save killed midway left (never picked by resume=auto): stale once this one is whole.
        for leftover in folder.parent.glob("step-*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def find_resume_checkpoint(cfg: RunConfig) -> Path | None:
    """The checkpoint to resume from: None for a fresh start."""
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        found = complete_checkpoints(cfg.run_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / STATE_FILE).is_file():
        raise SumtuneError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE}); use resume=auto or "
                           f"a folder under {cfg.run_dir / CHECKPOINTS}")
    return path


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("files", "splits"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys added to the run config after checkpoints were first written, with the value that gives the
# behaviour of the versions without them (group_size: any value, batches were not grouped; a saved
# train.group_by_length is read as train.batching, see config.RENAMED).
KEYS_ADDED_LATER = {"train.batching": "random", "train.group_size": 256, "train.max_tokens": 0, "model.trust_remote_code": False,
                    "model.attn_implementation": None,
                    "model.family": "auto", "data.chat_template": "auto",
                    # Before them no system message was given, dialogues were tokenised as read, and a
                    # template reading a date got today's (not reproducible: the pinned default stands in).
                    "data.system_prompt": None, "data.turn_separator": None, "data.chat_date": "26 Jul 2024",
                    # the RL recipe's section: runs from before it trained without it (its defaults)
                    **_flat({"rl": to_dict(RLConfig())})}
# Settings added with the method registry (2026-12): their defaults are what LoRA did before them.
SECTIONS_ADDED_LATER = ("model.lora.rslora", "model.lora.init", "model.lora.loraplus_lr_ratio", "model.adalora.",
                        "model.ia3.", "model.loha.", "model.lokr.", "model.vera.", "model.prompt.", "model.prefix.")


def _added_later() -> dict:
    defaults = _flat(to_dict(RunConfig()))
    return {**KEYS_ADDED_LATER, **{k: v for k, v in defaults.items() if k.startswith(SECTIONS_ADDED_LATER)}}


def check_resumable(cfg: RunConfig, checkpoint: Path) -> None:
    """Refuse a resumption whose config would train something else than the interrupted run."""
    import yaml

    saved = _flat(upgrade(yaml.safe_load((checkpoint / CONFIG_FILE).read_text(encoding="utf-8")) or {}))
    saved = {**_added_later(), **saved}  # a checkpoint from before a key existed ran with its old behaviour
    now = _flat(to_dict(cfg))
    # The settings of the methods this run does not use change nothing.
    used = methods.get(cfg.model.method).section
    unused = tuple(f"model.{m.section}." for m in methods.METHODS.values() if m.section and m.section != used)
    differ = [k for k in sorted(set(saved) | set(now))
              if saved.get(k) != now.get(k) and not k.startswith(RESUME_HARMLESS + unused)]
    if differ:
        raise SumtuneError(
            f"cannot resume from {checkpoint}: the config differs in {', '.join(differ)}; "
            "resume with the interrupted run's values or start a new run"
        )
