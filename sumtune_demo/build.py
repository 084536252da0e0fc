"""The offline demo: synthetic dialogues, a tokenizer trained on them, a tiny pretrained T5 and a
tiny pretrained decoder-only (Llama-style) model, and the tiny encoder the demo's BERTScore uses.

    python -m sumtune_demo --out demo     # builds demo/data, demo/model (T5), demo/causal (cached)

Both base models are pre-trained briefly on the TRAIN split's text only (dialogues and, as separate
documents, summaries): the T5 by denoising (text infilling), the decoder-only model by next-token
prediction. Like FLAN-T5 or a base LLM they know the language of the domain, but neither has been
shown a dialogue next to its summary. Nothing here touches a hub.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

import torch

from sumtune.errors import SumtuneError
from sumtune_demo.corpus import SPLIT_SIZES, write_corpus

BUILD_VERSION = 4
SENTINELS = 16
WINDOW = 128  # tokens of a document seen per pre-training example


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: no order-dependent sums
    special = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(SENTINELS)]
    # SentencePiece-style BPE (Metaspace). Not Unigram, T5's own kind: the Unigram trainer of
    # `tokenizers` breaks score ties in an order that changes from process to process (measured
    # here: 247 of 800 pieces in another order), so the demo model, and its ROUGE, would differ
    # between two builds from the same seed. BPE training gave byte-identical files in 3 processes.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special)
    tok.train_from_iterator(texts, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    # A plain fast tokenizer: transformers 5's T5Tokenizer rebuilds a Unigram model on loading.
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=special[3:])


def _tiny_t5(tokenizer, seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=128,
        d_kv=32,
        d_ff=512,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",  # as FLAN-T5 (T5 v1.1)
        # transformers 5 always ties T5's lm_head to the input embeddings; False here only turns
        # off the original T5's output scaling, as T5 v1.1 / FLAN-T5 configs do.
        tie_word_embeddings=False,
        dropout_rate=0.1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    # The shared embeddings (which are also the output head, unscaled) start with std 1: logits
    # of size ~sqrt(d_model) and a first loss near 30, which a tiny model spends its short
    # pre-training unlearning. Start them at std d_model**-0.5 instead.
    torch.nn.init.normal_(model.lm_head.weight, std=config.d_model**-0.5)
    return model


def text_infill(ids: list[int], rng: random.Random, mask_id: int, eos: int,
                density: float = 0.15, mean_span: float = 3.0) -> dict:
    """BART's text infilling: spans (about ``density`` of the tokens) are each replaced by one
    mask token, and the target is the whole original text. Rebuilding the text teaches the
    decoder to read and copy from the encoder and to fill gaps from context: the skills
    summarising needs, without ever showing a summary of a dialogue."""
    n = len(ids)
    n_spans = max(1, round(n * density / mean_span))
    starts = sorted(rng.sample(range(n), min(n_spans, n)))
    inputs, pos = [], 0
    for start in starts:
        if start < pos:
            continue
        length = max(1, min(round(rng.expovariate(1 / mean_span)), n - start))
        inputs += ids[pos:start] + [mask_id]
        pos = start + length
    inputs += ids[pos:]
    return {"input_ids": inputs + [eos], "labels": ids + [eos]}


def _causal_tokenizer(model_dir: Path):
    """The demo tokenizer for the decoder-only model: the same pieces, plus a BOS token that opens
    every text (as Llama's tokenizer does); no EOS is added to a text (the loss appends it)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def _tiny_causal(tokenizer, seed: int):
    """A Llama-shaped decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention) of about 2M parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _windows(tokenizer, texts: list[str], rng: random.Random):
    """Token ids of each text, a random window of WINDOW tokens of the long ones (short batches).
    A generator: the caller's own draws from ``rng`` interleave with these, text by text."""
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > WINDOW:
            start = rng.randrange(len(ids) - WINDOW)
            ids = ids[start:start + WINDOW]
        if len(ids) >= 4:
            yield ids


def _pretrain(model, tokenizer, texts: list[str], steps: int, seed: int, log_dir: Path, name: str = "pretrain",
              lr: float = 2e-3) -> dict:
    """Pre-training runs through THE training loop, like any fine-tuning: denoising (text infilling)
    for the T5, next-token prediction after a BOS for the decoder-only model; each document alone."""
    from accelerate import Accelerator

    from sumtune import data, engine, families, tracking
    from sumtune.config import TrainConfig
    from sumtune.recipes import finetune

    rng = random.Random(seed)
    family = families.of_model(model)
    if family.name == "seq2seq":
        mask_id = tokenizer.convert_tokens_to_ids("<extra_id_0>")
        feats = [text_infill(ids, rng, mask_id, tokenizer.eos_token_id) for ids in _windows(tokenizer, texts, rng)]
    else:
        feats = [family.example([tokenizer.bos_token_id], ids + [tokenizer.eos_token_id])
                 for ids in _windows(tokenizer, texts, rng)]
    cfg = TrainConfig(lr=lr, weight_decay=0.01, warmup_steps=min(30, steps // 10), max_steps=steps,
                      per_device_batch_size=32, log_every=max(1, steps // 10), seed=seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    plan = engine.plan_steps(len(feats), 1, cfg)
    dl = torch.utils.data.DataLoader(feats, batch_size=cfg.per_device_batch_size, shuffle=True,
                                     collate_fn=data.make_collator(tokenizer),
                                     generator=torch.Generator().manual_seed(seed))
    optimizer, scheduler = engine.make_optimizer(model, cfg, plan)
    model, optimizer, dl = accelerator.prepare(model, optimizer, dl)
    log = tracking.RunLog(accelerator, log_dir / f"{name}_log.jsonl")
    metrics = finetune.fit(accelerator, model, optimizer, scheduler, dl, None, plan, cfg, log, family)
    return {f"{name}_steps": steps, f"{name}_loss": metrics["train_loss"], f"{name}_documents": len(feats)}


def bertscore_encoder(model_dir: Path, out: Path) -> Path:
    """demo/bertscore: the encoder the demo's BERTScore uses (offline: no hub model). A one-layer
    BERT whose word embeddings are the demo T5's pre-trained input embeddings (same pieces, plus
    <s> opening and </s> closing each text, which bert_score weighs 0), with position and segment
    embeddings zeroed; the demo reads layer 0 (eval.bertscore_num_layers: 0), the embeddings
    alone: a soft match of tokens by the T5's embedding similarity, without context. Its numbers
    say how close two texts' pieces are in this tiny model's space, and are not comparable with
    published BERTScore (roberta-large, layer 17)."""
    from tokenizers import processors
    from transformers import AutoTokenizer, BertConfig, BertModel, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_special_tokens({"cls_token": "<s>", "sep_token": "</s>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", tok.cls_token_id), ("</s>", tok.sep_token_id)])
    tok.model_max_length = 512  # bert_score truncates to it; unset it is 1e30, which the tokenizer refuses
    tok.save_pretrained(out)
    t5 = T5EncoderModel.from_pretrained(model_dir)
    shared = t5.get_input_embeddings().weight
    config = BertConfig(vocab_size=len(tok), hidden_size=shared.shape[1], num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=2 * shared.shape[1], max_position_embeddings=512,
                        pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    bert = BertModel(config)  # with its (unused) pooler: AutoModel, which bert_score loads, expects one
    with torch.no_grad():
        bert.embeddings.word_embeddings.weight[: shared.shape[0]] = shared
        bert.embeddings.position_embeddings.weight.zero_()
        bert.embeddings.token_type_embeddings.weight.zero_()
    bert.save_pretrained(out)
    return out


def _toxicity_classifier(tokenizer, seed: int, steps: int = 300, examples: int = 4000) -> tuple[object, dict]:
    """A tiny RoBERTa sequence classifier labelled like facebook/roberta-hate-speech-dynabench-r4-target
    (0 "nothate", 1 "hate"), trained on sentences of a corpus drawn from another seed than the demo's
    (so it never saw the demo's summaries); its accuracy on held-out sentences of a third seed."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from sumtune_demo.corpus import toxicity_sentences

    train, held_out = toxicity_sentences(seed + 1000, examples), toxicity_sentences(seed + 2000, examples // 4)
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=192, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1},
    )
    model = RobertaForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    rng = random.Random(seed)

    def batch(rows):
        enc = tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        return enc, torch.tensor([label for _, label in rows])

    model.train()
    for step in range(steps):
        enc, labels = batch(rng.sample(train, 32))
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 30) * (1 - step / steps)
        model(**enc, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(held_out), 64):
            enc, labels = batch(held_out[i:i + 64])
            right += int((model(**enc).logits.argmax(-1) == labels).sum())
    return model, {"toxicity_steps": steps, "toxicity_examples": len(train),
                   "toxicity_held_out_accuracy": round(right / len(held_out), 4)}


def build(out: str | Path = "demo", seed: int = 0, sizes: dict | None = None, pretrain_steps: int = 200,
          vocab_size: int = 800, force: bool = False, causal_steps: int | None = None,
          toxic_share: float = 0.0, classifier_steps: int = 300) -> dict[str, Path]:
    """Build (or reuse) demo/data/{train,validation,test}.jsonl, demo/model (T5) and demo/causal
    (the decoder-only model; ``causal_steps`` of pre-training, by default 3/4 of the T5's: its
    steps are cheaper but the demo's time budget is shared; 0: no decoder-only model).

    With ``toxic_share`` > 0 (the detox demo), that share of the dialogues carries an insult that
    its summary repeats, and demo/toxicity holds a tiny toxicity classifier (labels nothate/hate)."""
    out = Path(out)
    sizes = dict(sizes or SPLIT_SIZES)
    causal_steps = (3 * pretrain_steps) // 4 if causal_steps is None else causal_steps
    stamp = {"version": BUILD_VERSION, "seed": seed, "sizes": sizes, "pretrain_steps": pretrain_steps,
             "vocab_size": vocab_size, "causal_steps": causal_steps}
    if toxic_share:
        stamp.update(toxic_share=toxic_share, classifier_steps=classifier_steps)
    stamp_file = out / "build.json"
    paths = {"data": out / "data", "model": out / "model"}
    if causal_steps:
        paths["causal"] = out / "causal"
    if toxic_share:
        paths["toxicity"] = out / "toxicity"
    paths["bertscore"] = out / "bertscore"
    if not force and stamp_file.is_file() and all((p / "config.json").is_file() for k, p in paths.items()
                                                  if k not in ("data", "bertscore")):
        if {k: v for k, v in json.loads(stamp_file.read_text()).items() if k in stamp} == stamp:
            if not (paths["bertscore"] / "config.json").is_file():  # a build from before it existed: add it alone
                bertscore_encoder(paths["model"], paths["bertscore"])
            return paths
    if out.exists() and any(out.iterdir()):
        if not stamp_file.is_file():
            raise SumtuneError(f"{out} exists and is not a demo build; choose another --out (nothing was removed)")
        shutil.rmtree(out)
    files = write_corpus(paths["data"], seed=seed, sizes=sizes, toxic_share=toxic_share)
    train = [json.loads(line) for line in files["train"].read_text(encoding="utf-8").splitlines()]
    texts = [r["dialogue"] for r in train] + [r["summary"] for r in train]
    tokenizer = _train_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(paths["model"])
    # Reload, so pre-training sees exactly the tokenizer a user of the folder gets.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    model = _tiny_t5(tokenizer, seed)
    result = _pretrain(model, tokenizer, texts, pretrain_steps, seed, out)
    model.save_pretrained(paths["model"])
    if causal_steps:
        causal_tok = _causal_tokenizer(paths["model"])
        causal_tok.save_pretrained(paths["causal"])
        causal_tok = AutoTokenizer.from_pretrained(paths["causal"])
        causal = _tiny_causal(causal_tok, seed)
        result.update(_pretrain(causal, causal_tok, texts, causal_steps, seed, out, name="causal_pretrain", lr=3e-3))
        causal.save_pretrained(paths["causal"])
    if toxic_share:
        # The demo's pieces with a <s> opening every text: RoBERTa's head reads the first position.
        clf_tok = _causal_tokenizer(paths["model"])
        clf_tok.save_pretrained(paths["toxicity"])
        clf_tok = AutoTokenizer.from_pretrained(paths["toxicity"])
        classifier, scores = _toxicity_classifier(clf_tok, seed, classifier_steps)
        classifier.save_pretrained(paths["toxicity"])
        result.update(scores)
    bertscore_encoder(paths["model"], paths["bertscore"])
    stamp_file.write_text(json.dumps({**stamp, **result}, indent=2) + "\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the offline demo data and tiny base model.")
    parser.add_argument("--out", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--causal-steps", type=int, default=None, help="decoder-only pre-training steps (default: 3/4 of --pretrain-steps)")
    parser.add_argument("--toxic-share", type=float, default=0.0,
                        help="share of dialogues with an insult their summary repeats, and a toxicity classifier "
                             "(the detox demo; default 0: none)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    args = parser.parse_args()
    paths = build(args.out, seed=args.seed, pretrain_steps=args.pretrain_steps, force=args.force,
                  causal_steps=args.causal_steps, toxic_share=args.toxic_share)
    built = [f"{paths['model']} (T5)"] + ([f"{paths['causal']} (decoder-only)"] if "causal" in paths else [])
    extra = f"; toxicity classifier in {paths['toxicity']}" if "toxicity" in paths else ""
    extra += f"; BERTScore encoder in {paths['bertscore']}"
    print(f"[sumtune] demo data in {paths['data']}, base models in {' and '.join(built)}{extra}")


if __name__ == "__main__":
    main()
