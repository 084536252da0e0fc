"""The offline demo (not part of the sumtune library): a synthetic dialogue corpus
(``sumtune_demo.corpus``) and the tiny pre-trained base models built from it
(``sumtune_demo.build``).

    python -m sumtune_demo --out demo     # demo/data, demo/model (T5), demo/causal (decoder-only)
"""

from sumtune_demo.build import _causal_tokenizer, _tiny_causal, _tiny_t5, _train_tokenizer, build, main, text_infill

__all__ = ["build", "main", "text_infill", "_causal_tokenizer", "_tiny_causal", "_tiny_t5", "_train_tokenizer"]
