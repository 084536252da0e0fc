"""Tiny random models of every tested architecture, built from the real transformers config
classes (no hub), each saved as a model folder with a tokenizer that fits it.

    build_zoo(tmp) -> {"llama": Path, "qwen2": Path, ..., "bart": Path, "t5": Path}

The tokenizer is the demo's (a SentencePiece-style BPE trained on a few synthetic dialogues). The
decoder-only models get it with a BOS that opens every text (Llama-style); Qwen2's gets no BOS and
pad == eos, as Qwen2's own has no BOS token and many Llama/Mistral set-ups pad with the EOS; BART's
wraps a text in <s> ... </s>; the T5 (FLAN-T5-shaped: gated-gelu, untied lm_head) takes the T5 one.
"""

from __future__ import annotations

from pathlib import Path

import torch

CAUSAL = ("llama", "qwen2", "mistral", "gemma", "phi")
SEQ2SEQ = ("bart", "t5")
ARCHITECTURES = CAUSAL + SEQ2SEQ


def corpus_rows(n: int = 80, seed: int = 5) -> list[dict]:
    from sumtune_demo.corpus import make_corpus

    return make_corpus(seed=seed, sizes={"train": n, "validation": 0, "test": 0})["train"]


def write_data(folder: Path, seed: int = 5, sizes: tuple[int, int, int] = (48, 12, 12)) -> Path:
    """train/validation/test jsonl from the synthetic corpus."""
    from sumtune_demo.corpus import write_corpus

    write_corpus(folder, seed=seed, sizes=dict(zip(("train", "validation", "test"), sizes)))
    return folder


def base_tokenizer(folder: Path, vocab_size: int = 300):
    """The T5-style demo tokenizer (<pad> 0, </s> 1, <unk> 2; ``text </s>``), saved in ``folder``."""
    from transformers import AutoTokenizer

    from sumtune_demo import _train_tokenizer

    rows = corpus_rows()
    tok = _train_tokenizer([r["dialogue"] for r in rows] + [r["summary"] for r in rows], vocab_size)
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _retemplate(tok, single: str, bos: bool):
    from tokenizers import processors

    if bos:
        tok.add_special_tokens({"bos_token": "<s>"})
    specials = [(t, tok.convert_tokens_to_ids(t)) for t in ("<s>", "</s>") if t in single]
    tok._tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return tok


def tokenizer_for(arch: str, base_dir: Path, out: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    if arch == "t5":
        pass
    elif arch == "bart":
        tok = _retemplate(tok, "<s> $A </s>", bos=True)
    elif arch == "qwen2":
        tok = _retemplate(tok, "$A", bos=False)
        tok.pad_token = tok.eos_token  # pad == eos: the EOS label must survive all the same
    else:
        tok = _retemplate(tok, "<s> $A", bos=True)
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def model_config(arch: str, tok, width: int = 32):
    """A tiny config of ``arch``: hidden size ``width``, feed-forward 2 x ``width``, 4 heads, 2 layers
    (bitsandbytes' 4-bit blocks of 64 need a width of 64 or more)."""
    import transformers as tf

    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
           "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id}
    vocab = len(tok)
    small = {"vocab_size": vocab, "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 512, **ids}
    if arch == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **small)
    if arch == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=2, **small)
    if arch == "mistral":
        return tf.MistralConfig(num_key_value_heads=2, sliding_window=None, **small)
    if arch == "gemma":
        return tf.GemmaConfig(num_key_value_heads=2, head_dim=width // 4, **small)
    if arch == "phi":
        return tf.PhiConfig(partial_rotary_factor=0.5, **small)
    if arch == "bart":
        return tf.BartConfig(vocab_size=vocab, d_model=width, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                             decoder_attention_heads=4, encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width,
                             max_position_embeddings=512, decoder_start_token_id=tok.eos_token_id,
                             forced_eos_token_id=tok.eos_token_id, **ids)
    if arch == "t5":
        return tf.T5Config(vocab_size=vocab, d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=2, num_decoder_layers=2,
                           num_heads=4,
                           feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                           decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    raise ValueError(arch)


def untie_lm_head(folder: Path, seed: int = 0) -> None:
    """Give a saved T5 an lm_head of its own, as FLAN-T5 checkpoints have (a T5 built from a fresh
    config is tied; transformers 5 loads a checkpoint whose lm_head differs from the embeddings untied)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    g = torch.Generator().manual_seed(seed)
    weights["lm_head.weight"] = torch.randn(weights["shared.weight"].shape, generator=g) * 0.05
    save_file(weights, path, metadata={"format": "pt"})


def build_model(arch: str, folder: Path, base_dir: Path, seed: int = 0, width: int = 32) -> Path:
    import transformers as tf

    tok = tokenizer_for(arch, base_dir, folder)
    config = model_config(arch, tok, width)
    torch.manual_seed(seed)
    cls = tf.AutoModelForSeq2SeqLM if arch in SEQ2SEQ else tf.AutoModelForCausalLM
    model = cls.from_config(config)
    if arch == "bart":  # as facebook/bart-large-cnn ships it: the summary opens with <s>
        model.generation_config.forced_bos_token_id = tok.bos_token_id
    model.save_pretrained(folder)
    if arch == "t5":
        untie_lm_head(folder, seed)
    return folder


def build_zoo(root: Path, archs=ARCHITECTURES, width: int = 32) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    base = root / "tokenizer"
    base_tokenizer(base)
    return {arch: build_model(arch, root / arch, base, width=width) for arch in archs}
