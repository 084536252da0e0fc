"""Training recipes: short explicit loops over ``sumtune.engine`` (docs/ARCHITECTURE.md).

- ``finetune.py``: supervised fine-tuning (full, LoRA, k-bit LoRA), what ``train/finetune.py`` runs.
"""
