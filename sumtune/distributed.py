"""Building the Accelerator the same way in training and evaluation."""

from __future__ import annotations

import torch

from sumtune import tracking
from sumtune.config import RunConfig


def make_accelerator(cfg: RunConfig, grad_accum: int = 1):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # On CPU the process group must be gloo; DeepSpeed otherwise starts alone and fails on its
    # batch-size check (DESIGN.md). GPUs keep Accelerate's default (NCCL).
    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
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
