"""Building the Accelerator the same way in training and evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sumtune import tracking
from sumtune.config import RunConfig


def make_accelerator(cfg: RunConfig, grad_accum: int = 1):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        # The DeepSpeed JSON says "auto" for these; Accelerate fills them from its plugin, which
        # reads the environment. The run config is the one place they are set.
        os.environ["ACCELERATE_GRADIENT_CLIPPING"] = str(cfg.train.max_grad_norm)
        os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(grad_accum)

    # On CPU the process group must be gloo; DeepSpeed otherwise starts alone and fails on its
    # batch-size check (DESIGN.md). GPUs keep Accelerate's default (NCCL).
    # A single process must not get it: Accelerate would then ask a group that was never formed.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if several and not torch.cuda.is_available() else []
    return Accelerator(
        gradient_accumulation_steps=grad_accum,
        log_with=tracking.log_with(cfg.tracker),
        project_dir=str(cfg.run_dir),
        kwargs_handlers=handlers,
    )


def world_size() -> int:
    """Size of the process group actually formed (1 when none was)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def deepspeed_stage() -> int | None:
    """The ZeRO stage this process was launched with (None without DeepSpeed)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and Path(path).is_file():
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", stage)
    return int(stage) if stage not in (None, "") else None
