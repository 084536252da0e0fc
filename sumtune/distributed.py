"""Building the Accelerator the same way in training and evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sumtune import tracking
from sumtune.config import RunConfig
from sumtune.errors import ConfigError


def make_accelerator(cfg: RunConfig, grad_accum: int = 1):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        # The DeepSpeed JSON says "auto" for these; Accelerate fills them from its plugin, which
        # reads the environment. The run config is the one place they are set.
        os.environ["ACCELERATE_GRADIENT_CLIPPING"] = str(cfg.train.max_grad_norm)
        os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(grad_accum)

    # On CPU the process group must be gloo; DeepSpeed otherwise starts alone and fails on its
    # batch-size check (docs/ARCHITECTURE.md). GPUs keep Accelerate's default (NCCL).
    # A single process must not get it: Accelerate would then ask a group that was never formed.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if several and not torch.cuda.is_available() else []
    accelerator = Accelerator(
        # Not synced at the end of the DataLoader: the training loop takes each accumulation
        # window whole (its tokens are counted before its first backward), so the last batch is
        # already out of the loader while the window's earlier batches still accumulate; the loop
        # says where each window ends (recipes.finetune.fit).
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        log_with=tracking.log_with(cfg.tracker) or None,  # [] makes Accelerate warn that no tracker is installed
        project_dir=str(cfg.run_dir),
        kwargs_handlers=handlers,
    )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        # Accelerate reads "auto" from the DataLoader's batch_size, which a length-grouped batch
        # sampler leaves at None: the run config gives it instead.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.per_device_batch_size
    return accelerator


def world_size() -> int:
    """Size of the process group actually formed (1 when none was)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def deepspeed_stage() -> int | None:
    """The ZeRO stage this process was launched with (None without DeepSpeed)."""
    if not uses_deepspeed():
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    path = deepspeed_config_path()
    if path is not None and path.is_file():
        stage = json.loads(path.read_text()).get("zero_optimization", {}).get("stage", stage)
    return int(stage) if stage not in (None, "") else None


def uses_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def deepspeed_config_path() -> Path | None:
    """The DeepSpeed JSON this process was launched with (accelerate passes the accelerate config's
    ``deepspeed_config_file`` on in ACCELERATE_DEEPSPEED_CONFIG_FILE), None without one."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    return Path(path) if uses_deepspeed() and path not in ("", "none") else None


def read_deepspeed_config(path: Path) -> dict:
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the folder accelerate launch ran in, {Path.cwd()})"
        raise ConfigError(f"DeepSpeed config file {path}{where} does not exist; fix deepspeed_config_file "
                          "in the accelerate config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"DeepSpeed config file {path} is not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization"), dict):
        raise ConfigError(f"DeepSpeed config file {path} has no \"zero_optimization\" section")
    return config


def _dotted(tree: dict, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def _as_bool(value):
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def check_deepspeed_config(cfg: RunConfig, path: Path | None = None, num_processes: int | None = None,
                           mixed_precision: str | None = None) -> None:
    """Refuse a DeepSpeed JSON that hard-codes a value the run config owns, with a different value.

    Accelerate silently keeps a number written in the JSON over the run config's (it only fills
    "auto"), so a JSON saying gradient_accumulation_steps 4 would train another recipe than the one
    the run config, the printed plan and the saved config describe. An "optimizer" or "scheduler"
    section is refused too: the loop builds its own AdamW and schedule from train.*."""
    path = path or deepspeed_config_path()
    if path is None:
        return
    ds = read_deepspeed_config(path)
    t = cfg.train
    world = num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    mixed = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    owned = {
        "train_micro_batch_size_per_gpu": ("train.per_device_batch_size", t.per_device_batch_size),
        "gradient_accumulation_steps": ("train.grad_accum", t.grad_accum),
        "gradient_clipping": ("train.max_grad_norm", t.max_grad_norm),
        "train_batch_size": (f"train.per_device_batch_size x train.grad_accum x {world} processes",
                             t.per_device_batch_size * t.grad_accum * world),
        "fp16.enabled": (f"mixed_precision={mixed} (accelerate config)", mixed == "fp16"),
        "bf16.enabled": (f"mixed_precision={mixed} (accelerate config)", mixed in ("bf16", "fp8")),
    }
    clashes = [f"\"{key}\" is {json.dumps(value)} but {ours} is {json.dumps(want)}"
               for key, (ours, want) in owned.items() if _clashes(value := _as_bool(_dotted(ds, key)), want)]
    if clashes:
        raise ConfigError(f"DeepSpeed config file {path}: {'; '.join(clashes)}; set these to \"auto\" in the JSON "
                          "(the run config is the one place they are set)")
    for section in ("optimizer", "scheduler"):
        if section in ds:
            own = {"optimizer.params.lr": ("train.lr", t.lr), "optimizer.params.weight_decay": ("train.weight_decay",
                                                                                               t.weight_decay)}
            differ = [f"{key} {json.dumps(value)} vs {ours} {json.dumps(want)}" for key, (ours, want) in own.items()
                      if key.startswith(section) and _clashes(value := _dotted(ds, key), want)]
            note = f" ({', '.join(differ)})" if differ else ""
            raise ConfigError(f"DeepSpeed config file {path}: remove its \"{section}\" section{note}; sumtune builds "
                              "the optimizer (AdamW) and the learning-rate schedule from train.* in the run config")


def _clashes(value, want) -> bool:
    """A hard-coded JSON value that differs from the run config's ("auto" or absent never does)."""
    if value is None or value == "auto" or value == want:
        return False
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, want))
    return not (numbers and abs(value - want) <= 1e-9 * max(1.0, abs(want)))


def finish(accelerator, exit_code: int | None = None) -> None:
    """End a run the same way on every rank: the last thing training and evaluation call.

    In this order: every rank reaches the end (nobody tears down while a peer still talks to it);
    the DeepSpeed engine and optimizer are released (``engine.destroy()``: ZeRO hooks removed, the
    accelerator's references dropped) and collected; trackers finish and the process groups are
    destroyed (``end_training``); stdout and stderr are flushed.

    Then, in a launch of several processes, the process leaves with ``os._exit`` (``exit_code``,
    default 0) instead of returning into interpreter shutdown. Why: ``destroy_process_group()`` does
    not stop torch's gloo worker threads (pt_gloo_runloop, gloo_tcp_loop); they run until the last
    Python reference to the group is gone, and DeepSpeed ZeRO-3 keeps one on every parameter
    (``ds_process_group``), in the caller's model, so they are still running when the interpreter
    finalizes (measured: all 6 of them, on each rank of the ZeRO-3 test, after the teardown above).
    A gloo thread that needs the GIL then (as when it drops the last reference to a collective's
    tensor) is ended by CPython with pthread_exit, and unwinding a noexcept C++ frame calls
    std::terminate: "terminate called without an active exception", SIGABRT, and the launcher
    reports a failed run although everything was saved (about 3 runs in 50 of the ZeRO-3 offload
    test). Everything a run writes is closed by then (sumtune opens its files per write),
    and the trackers were finished above, so skipping interpreter shutdown loses nothing.
    A single process (no group formed: bench workers, notebooks) returns normally.
    """
    import gc
    import sys

    dist = torch.distributed
    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if several:
        accelerator.wait_for_everyone()
    accelerator.free_memory()  # DeepSpeed: engine.destroy(); drops the accelerator's models and optimizers
    gc.collect()
    accelerator.end_training()  # trackers finish; every process group destroyed
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to lose
            pass
    if several:
        # Files written and closed are in the kernel's page cache: they outlive the process.
        os._exit(0 if exit_code is None else exit_code)
