"""What every training recipe shares (docs/ARCHITECTURE.md): recipes import from here and do not
copy each other.

- ``run.py``: ``RunContext`` (resume, checkpoints, preemption, tracker and log, final save,
  ``finish``) and ``Position`` (where a checkpoint stands in the data);
- ``step.py``: ``OptimizerStep`` (accumulation, backward, clipping, the non-finite guard, the
  optimizer and scheduler, a per-step hook) and ``NonFiniteError``;
- ``meter.py``: ``Meter`` (loss and throughput per logging window and per run, named fields);
- ``plan.py``: ``plan_steps``/``StepPlan`` (step arithmetic) and ``make_optimizer`` (AdamW and
  its schedule);
- ``heldout.py``: ``validation_loss``;
- ``recipe.py``: the recipe skeleton: ``open_run`` (the checks before any weights load, the
  Accelerator, the wrap-up in ``OpenRun.close``) and ``Cadence`` (log, validation, early stop,
  preemption and checkpoint after each step of a recipe's loop).
"""

from sumtune.engine.heldout import validation_loss
from sumtune.engine.meter import Counts, Meter
from sumtune.engine.plan import StepPlan, make_optimizer, plan_steps
from sumtune.engine.recipe import Cadence, OpenRun, open_run, read_splits
from sumtune.engine.run import Position, RunContext
from sumtune.engine.step import NonFiniteError, OptimizerStep, StepResult, TokenWeightedLoss

__all__ = ["Cadence", "Counts", "Meter", "OpenRun", "NonFiniteError", "OptimizerStep", "Position", "RunContext", "StepPlan", "StepResult",
           "TokenWeightedLoss", "make_optimizer", "open_run", "plan_steps", "read_splits",
           "validation_loss"]
