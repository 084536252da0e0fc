"""The model-family seam: which family a model is, and the decoder-only traps done right (labels
masked by position, EOS kept when pad == eos, no double BOS, the dialogue cut and not the
instruction, left-padded generation with the prompt cut off)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

from sumtune import data, families, models  # noqa: E402
from sumtune.batching import real_token_share  # noqa: E402
from sumtune.config import DataConfig, GenerationConfig  # noqa: E402
from sumtune.errors import SumtuneError  # noqa: E402


@pytest.fixture(scope="module")
def models_dir(zoo_build):
    return zoo_build


def load(path):
    family = families.resolve(str(path))
    return family, models.load_model(str(path), family=family).eval(), models.load_tokenizer(str(path), family=family)


RECORDS = [r for r in zoo.corpus_rows(12, seed=9)]


@pytest.mark.parametrize("arch", zoo.ARCHITECTURES)
def test_each_architecture_is_read_as_its_family(arch, models_dir):
    family = families.resolve(str(models_dir[arch]))
    assert family.name == ("causal" if arch in zoo.CAUSAL else "seq2seq")
    assert family.model_type == arch


def test_an_encoder_only_model_is_one_line_before_any_weight_loads(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               architectures=["BertForMaskedLM"]).save_pretrained(tmp_path)  # a config and no weights at all
    with pytest.raises(families.FamilyError) as err:
        models.model_family(str(tmp_path))
    assert str(err.value).startswith(f"model.name_or_path: {tmp_path} is a 'bert' model, which is neither")
    assert "\n" not in str(err.value)


def test_a_family_that_contradicts_the_config_is_refused(models_dir):
    from sumtune.config import ModelConfig

    with pytest.raises(families.FamilyError, match="model.family=seq2seq, but .* is a causal model"):
        models.model_family(str(models_dir["llama"]), ModelConfig(family="seq2seq"))
    assert models.model_family(str(models_dir["llama"]), ModelConfig(family="causal")).name == "causal"


@pytest.mark.parametrize("arch", zoo.CAUSAL)
def test_causal_loss_is_the_mean_over_summary_tokens_and_their_eos_only(arch, models_dir):
    """The loss the model computes from sumtune's features equals a hand computation over the
    summary tokens and the EOS (each predicted from the position before it), prompt positions
    and padding excluded."""
    family, model, tok = load(models_dir[arch])
    cfg = DataConfig(max_source_length=200, max_target_length=128)
    feats, _ = data.encode_records(RECORDS[:3], tok, cfg, family)
    batch = data.make_collator(tok)(feats)
    with torch.no_grad():
        out = model(**batch, use_cache=False)
    logp = out.logits.float().log_softmax(-1)
    nll, n = 0.0, 0
    for row, rec in enumerate(RECORDS[:3]):
        prompt_len = len(data.prompt_encoder(family, tok, cfg).encode(rec["dialogue"])[0])
        summary = tok(rec["summary"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = batch["input_ids"][row].tolist()
        assert ids[prompt_len:prompt_len + len(summary)] == summary
        for k, token in enumerate(summary):
            nll -= logp[row, prompt_len + k - 1, token].item()
            n += 1
    assert out.loss.item() == pytest.approx(nll / n, rel=1e-5)
    # The labels: -100 over the prompt, the summary and its EOS, -100 over the padding.
    for row, feat in enumerate(feats):
        labels = batch["labels"][row].tolist()
        real = len(feat["input_ids"])
        assert labels[real - 1] == tok.eos_token_id  # kept even where pad == eos (qwen2 here)
        assert set(labels[real:]) <= {-100}


def test_pad_equal_to_eos_does_not_hide_the_eos_label(models_dir):
    family, _, tok = load(models_dir["qwen2"])
    assert tok.pad_token_id == tok.eos_token_id
    feats, _ = data.encode_records(RECORDS[:2], tok, DataConfig(), family)
    batch = data.make_collator(tok)(feats)
    per_token, mask = family.token_losses(torch.zeros(*batch["input_ids"].shape, len(tok)), batch["labels"])
    # Every row learns its EOS: one EOS label per row, where the row's real tokens end.
    assert (batch["labels"] == tok.eos_token_id).sum().item() == 2
    assert mask.sum().item() == sum(sum(1 for x in f["labels"] if x != -100) for f in feats)


def test_causal_prompt_has_one_bos_and_no_eos(models_dir):
    family, _, tok = load(models_dir["llama"])
    enc = data.prompt_encoder(family, tok, DataConfig())
    ids = enc.encode(RECORDS[0]["dialogue"])[0]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids  # the summary continues the prompt
    # A tokenizer without a BOS (Qwen2) gets none.
    family, _, qtok = load(models_dir["qwen2"])
    assert qtok.bos_token_id is None
    assert data.prompt_encoder(family, qtok, DataConfig()).lead == []


def test_a_chat_template_is_used_when_asked_and_opens_with_its_own_bos(models_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir["llama"])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    family = families.resolve(str(models_dir["llama"]))
    chat = data.prompt_encoder(family, tok, DataConfig(chat_template="auto"))
    plain = data.prompt_encoder(family, tok, DataConfig(chat_template="never"))
    assert chat.frame.chat and not plain.frame.chat
    ids = chat.encode("Anna: hi")[0]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # the template's BOS, not a second one
    assert chat.template.startswith("<s>user: Summarize the following conversation.") and chat.template.endswith("</s>assistant: ")
    text = tok.decode(ids)
    assert "Anna: hi" in text and text.count("</s>") == 1 and ids.count(tok.eos_token_id) == 1


def test_causal_truncation_cuts_the_dialogue_never_the_instruction_or_the_summary_budget(models_dir):
    family, _, tok = load(models_dir["llama"])
    cfg = DataConfig(max_source_length=60, max_target_length=8)
    long = {"id": "x", "dialogue": "Anna: shall we meet at the library? " * 20, "summary": RECORDS[0]["summary"]}
    feats, stats = data.encode_records([long], tok, cfg, family)
    assert (stats.truncated_source, stats.truncated_target) == (1, 1)
    labels = feats[0]["labels"]
    prompt_len = sum(1 for x in labels if x == -100)
    assert prompt_len == 60 and len(feats[0]["input_ids"]) == 68
    assert labels[-1] == tok.eos_token_id
    text = tok.decode(feats[0]["input_ids"][:prompt_len], skip_special_tokens=True)
    assert text.startswith("Summarize the following conversation.") and text.rstrip().endswith("Summary:")


def test_token_counts_count_a_causal_summary_once(models_dir):
    family, _, tok = load(models_dir["llama"])
    feats, _ = data.encode_records(RECORDS[:4], tok, DataConfig(), family)
    batch = data.make_collator(tok)(feats)
    real, positions = family.count(batch)
    assert real.item() == sum(len(f["input_ids"]) for f in feats)
    assert positions == batch["input_ids"].numel()
    lengths = data.example_lengths(feats, family)
    assert real_token_share([[0, 1, 2, 3]], lengths) == pytest.approx(real.item() / positions)


@pytest.mark.parametrize("arch", zoo.CAUSAL)
def test_left_padded_generation_is_each_prompt_alone_without_the_prompt(arch, models_dir):
    """Batched, left-padded generation gives, row by row, what the model generates from the
    unpadded prompt alone, with the prompt cut off."""
    family, model, tok = load(models_dir[arch])
    enc = data.prompt_encoder(family, tok, DataConfig(max_source_length=120))
    prompts = [enc.encode(r["dialogue"])[0] for r in RECORDS[:4]]
    assert len({len(p) for p in prompts}) > 1
    settings = family.generation_settings(model, tok, GenerationConfig(max_new_tokens=6))
    batch = data.PadCollator(tok.pad_token_id, side=family.prompt_padding())([{"input_ids": p} for p in prompts])
    assert batch["attention_mask"][:, -1].all()  # every prompt ends at the right edge
    with torch.no_grad():
        out = family.generate(model, batch["input_ids"], batch["attention_mask"], settings, logprobs=True)
        for ids, p, lp in zip(out.ids, prompts, out.logprobs):
            alone = model.generate(input_ids=torch.tensor([p]), generation_config=settings)[0, len(p):].tolist()
            assert ids == alone[: len(ids)] and 0 < len(ids) <= 6
            assert lp.shape == (len(ids),) and (lp <= 0).all()


def test_generation_strips_the_prompt_text(models_dir):
    from accelerate import Accelerator

    from sumtune.generation import generate

    family, model, tok = load(models_dir["llama"])
    enc = data.prompt_encoder(family, tok, DataConfig(max_source_length=120))
    texts, stats = generate(Accelerator(cpu=True), model, tok, enc, [r["dialogue"] for r in RECORDS[:4]],
                            GenerationConfig(max_new_tokens=8, batch_size=2), progress=False)
    assert stats.strategy == "continuous"  # greedy decoder-only: the family's continuous decoder
    assert all("Summarize the following" not in t and "Summary:" not in t for t in texts)
    plain, stats = generate(Accelerator(cpu=True), model, tok, enc, [r["dialogue"] for r in RECORDS[:4]],
                            GenerationConfig(max_new_tokens=8, batch_size=2, refill=False), progress=False)
    assert stats.strategy == "sorted" and plain == texts


def test_bart_ids_come_from_its_config_and_a_checkpoints_generation_config_does_not_win(models_dir):
    family, model, tok = load(models_dir["bart"])
    model.generation_config.min_length = 56  # as bart-large-cnn ships it
    model.generation_config.no_repeat_ngram_size = 3
    settings = family.generation_settings(model, tok, GenerationConfig(max_new_tokens=10))
    assert settings.decoder_start_token_id == model.config.decoder_start_token_id == tok.eos_token_id
    assert settings.forced_bos_token_id == tok.bos_token_id
    assert settings.min_length in (0, None) and settings.no_repeat_ngram_size in (0, None)
    assert family.decoder(model, settings).name == "sorted"  # absolute positions: no refill


@pytest.mark.parametrize("arch, expected", [("t5", ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]), ("bart", "all-linear"),
                                            ("llama", "all-linear")])
def test_default_lora_targets(arch, expected, models_dir):
    from sumtune.config import ModelConfig

    family, model, _ = load(models_dir[arch])
    assert family.lora_targets() == expected
    wrapped = models.apply_method(model, ModelConfig(method="lora"), family)
    assert models.count_parameters(wrapped)[0] > 0


def test_dropout_reaches_llama_attention_and_bart_functional_dropouts(models_dir):
    for arch in ("llama", "bart", "phi"):
        model = models.load_model(str(models_dir[arch]), dropout=0.3)
        floats = [getattr(m, n) for m in model.modules() for n in ("attention_dropout", "dropout", "activation_dropout",
                                                                    "resid_pdrop") if isinstance(getattr(m, n, None), float)]
        assert floats and all(f == 0.3 for f in floats), arch
        assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_gradient_checkpointing_trains_a_causal_lora_model(models_dir):
    from sumtune.config import ModelConfig

    family, model, tok = load(models_dir["llama"])
    model.train()
    wrapped = models.apply_method(model, ModelConfig(method="lora", gradient_checkpointing=True), family)
    assert wrapped.base_model.model.model.gradient_checkpointing
    feats, _ = data.encode_records(RECORDS[:2], tok, DataConfig(), family)
    loss = wrapped(**data.make_collator(tok)(feats), use_cache=False).loss
    loss.backward()
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_a_seq2seq_frame_is_what_the_tokenizer_wraps(models_dir):
    family, _, tok = load(models_dir["bart"])
    frame = family.frame(tok, "seed")
    assert frame.lead == [tok.bos_token_id] and frame.tail == [tok.eos_token_id]
    family, _, tok = load(models_dir["t5"])
    frame = family.frame(tok, "seed")
    assert frame.lead == [] and frame.tail == [tok.eos_token_id]


def test_t5_in_fp16_is_refused_bart_is_not(models_dir):
    with pytest.raises(SumtuneError, match="T5 overflows to NaN in fp16"):
        families.resolve(str(models_dir["t5"])).check_precision("fp16")
    families.resolve(str(models_dir["bart"])).check_precision("fp16")


def test_an_adapter_folder_resolves_to_its_base_family(models_dir, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(models_dir["qwen2"])}))
    assert families.resolve(str(tmp_path)).name == "causal"
