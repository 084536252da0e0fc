"""What every training recipe shares (docs/ARCHITECTURE.md): recipes import from here and do not
copy each other.

- ``run.py``: ``RunContext`` (resume, checkpoints, preemption, tracker and log, final save,
  ``finish``) and ``Position`` (where a checkpoint stands in the data);
- ``step.py``: ``OptimizerStep`` (accumulation, backward, clipping, the non-finite guard, the
  optimizer and scheduler, a per-step hook) and ``NonFiniteError``;
- ``meter.py``: ``Meter`` (loss and throughput per logging window and per run, named fields);
- ``plan.py``: ``plan_steps``/``StepPlan`` (step arithmetic) and ``make_optimizer`` (AdamW and
  its schedule);
- ``heldout.py``: ``validation_loss``.
"""

from sumtune.engine.heldout import validation_loss
from sumtune.engine.meter import Counts, Meter
from sumtune.engine.plan import StepPlan, make_optimizer, plan_steps
from sumtune.engine.run import Position, RunContext
from sumtune.engine.step import NonFiniteError, OptimizerStep, StepResult, TokenWeightedLoss

__all__ = ["Counts", "Meter", "NonFiniteError", "OptimizerStep", "Position", "RunContext", "StepPlan", "StepResult",
           "TokenWeightedLoss", "make_optimizer", "plan_steps", "validation_loss"]
