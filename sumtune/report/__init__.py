"""Pictures of runs and evaluations: training curves, what fine-tuning changed in the weights and
the word embeddings, ROUGE charts; one HTML page, the numbers as CSV/JSON, the figures in W&B.

    from sumtune.report import build
    build([Path("outputs/demo-lora"), Path("outputs/demo-eval")], out=Path("outputs/demo-report"))

``eval/report.py`` is the command-line entry point.
"""

from sumtune.report.build import build, kind_of

__all__ = ["build", "kind_of"]
