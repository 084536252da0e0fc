"""sumtune: fine-tune and evaluate dialogue summarisers with Accelerate."""

__version__ = "0.1.0"
