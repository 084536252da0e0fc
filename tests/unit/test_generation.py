"""The refill decoder: the same tokens as transformers' generate, within the batch budget."""

import copy

import pytest
import torch

from sumtune import generation
from sumtune.config import GenerationConfig
from sumtune.families import refill
from sumtune.generation import MAX_GROWTH, refill_decode, refill_model, shard_prompts

ENDS: list[int] = []  # see varied_ends; set by the fixture


@pytest.fixture(scope="module")
def tiny():
    """A random tiny FLAN-T5-shaped model and prompts of many lengths (8 to 160 tokens)."""
    from sumtune.data import PromptEncoder
    from sumtune_demo import _tiny_t5, _train_tokenizer
    from sumtune_demo.corpus import make_corpus

    rows = make_corpus(seed=3, sizes={"train": 60, "validation": 0, "test": 0})["train"]
    tok = _train_tokenizer([r["dialogue"] + " " + r["summary"] for r in rows], 200)
    model = _tiny_t5(tok, 0).eval()
    encoder = PromptEncoder(tok, "seed", 160)
    full = [encoder.encode_prompt(r["dialogue"])[0] for r in rows]
    prompts = [ids[: 8 + (i * 7) % 153] for i, ids in enumerate(full)]
    ENDS[:] = varied_ends(model, prompts)
    return model, tok, prompts


def reference(model, prompts, max_new_tokens):
    """transformers' generate, one prompt at a time (no padding), without the start token and
    the padding after the end token."""
    pad = model.generation_config.pad_token_id
    out = []
    for ids in prompts:
        seq = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0, 1:].tolist()
        while seq and seq[-1] == pad and len(seq) > 1:
            seq.pop()
        out.append(seq)
    return out


def set_ends(model, ends):
    model.generation_config.eos_token_id = ends


def varied_ends(model, prompts, count=3):
    """End tokens the random model emits at many different steps, so rows finish at different
    times (with the real end token, a random model never stops): chosen one by one, each time the
    token that gives the most distinct summary lengths."""
    runs = reference(model, prompts, 30)
    ends: list[int] = []

    def lengths(candidate):
        return {next((k + 1 for k, t in enumerate(seq) if t in candidate), len(seq)) for seq in runs}

    for _ in range(count):
        tokens = {t for seq in runs for t in seq} - set(ends)
        ends.append(max(sorted(tokens), key=lambda t: len(lengths(ends + [t]))))
    return ends


def test_refill_gives_transformers_greedy_tokens_and_stays_in_the_budget(tiny, monkeypatch):
    model, tok, prompts = tiny
    saved = model.generation_config.eos_token_id
    try:
        set_ends(model, ENDS)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        sorted_prompts = [prompts[i] for i in order]
        expected = reference(model, sorted_prompts, 30)
        lengths = [len(s) for s in expected]
        assert min(lengths) == 1 and max(lengths) == 30 and len(set(lengths)) > 5  # first-token ends, caps, and between

        shapes, steps, joins = [], [], []
        forward = type(model).forward

        def watch(self, *args, **kwargs):
            if kwargs.get("decoder_input_ids") is not None:
                shapes.append(tuple(kwargs["attention_mask"].shape))
                steps.append(kwargs["decoder_attention_mask"].shape[1])
            return forward(self, *args, **kwargs)

        join = refill._Rows.join

        def watch_join(rows, new):
            joins.append((len(rows), len(new), rows.dec_mask.shape[1]))
            return join(rows, new)

        monkeypatch.setattr(type(model), "forward", watch)
        monkeypatch.setattr(refill._Rows, "join", watch_join)
        done = []
        got = refill_decode(model, sorted_prompts, batch_size=3, max_new_tokens=30, pad_id=tok.pad_token_id,
                            device="cpu", on_done=lambda: done.append(1))
        assert got == expected
        assert refill_decode(model, [], 3, 30, tok.pad_token_id, "cpu") == []
        assert len(done) == len(prompts)
        budget = 3 * len(sorted_prompts[0])
        assert all(rows * width <= budget and rows <= MAX_GROWTH * 3 for rows, width in shapes)
        # Prompts joined rows that were already several steps in, more than once.
        assert len([j for j in joins if j[0] > 0 and j[2] > 2]) >= 3
        # The self-attention cache keeps no position every row has left behind: it spans at most
        # the oldest unfinished summary (plus finished rows not yet dropped), not all the steps.
        assert max(steps) <= 2 * 30 < len(steps)
        # Short prompts share the budget: more rows than batch_size at once.
        assert max(rows for rows, _ in shapes) > 3
    finally:
        set_ends(model, saved)


def test_generate_strategies_give_the_same_summaries(tiny):
    from accelerate import Accelerator

    from sumtune.data import PromptEncoder

    model, tok, prompts = tiny
    saved = model.generation_config.eos_token_id
    try:
        set_ends(model, ENDS)
        dialogues = [tok.decode(p[:-1], skip_special_tokens=True) for p in prompts]  # strings again
        encoder = PromptEncoder(tok, "{dialogue}", 160)
        gen = GenerationConfig(max_new_tokens=20, batch_size=4)
        acc = Accelerator(cpu=True)
        results = {s: generation.generate(acc, model, tok, encoder, dialogues, gen, progress=False, strategy=s)[0]
                   for s in generation.STRATEGIES}
        assert results["refill"] == results["sorted"] == results["data-order"]
        assert len(set(results["refill"])) > 10
        assert generation.generate(acc, model, tok, encoder, dialogues, gen, progress=False)[0] == results["refill"]
    finally:
        set_ends(model, saved)


def test_refill_applies_to_plain_greedy_t5_only(tiny):
    from transformers import BartConfig, BartForConditionalGeneration

    model, tok, _ = tiny
    assert refill_model(model, tok, GenerationConfig()) is model
    assert refill_model(model, tok, GenerationConfig(num_beams=4)) is None
    assert refill_model(model, tok, GenerationConfig(refill=False)) is None
    assert refill_model(model, tok, GenerationConfig(do_sample=True)) is None
    assert refill_model(model, tok, GenerationConfig(), lockstep=True) is None
    # A checkpoint's own generation_config.json does not decide how sumtune decodes: its
    # repetition penalty (or bart-large-cnn's min_length 56) is not applied, so refill still applies.
    model.generation_config.repetition_penalty = 1.3
    try:
        assert refill_model(model, tok, GenerationConfig()) is model
        settings = generation.families.of_model(model).generation_settings(model, tok, GenerationConfig())
        assert settings.repetition_penalty in (None, 1.0)
        settings.repetition_penalty = 1.3  # the decoder itself refuses settings it does not apply
        assert refill.plain_greedy(settings) is False
    finally:
        model.generation_config.repetition_penalty = None
    bart = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=16, decoder_ffn_dim=16))
    assert refill_model(bart, tok, GenerationConfig()) is None  # absolute positions: a late row would be off


def test_refill_runs_a_lora_model_through_its_base_with_the_adapters(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok, prompts = tiny
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q", "v"], init_lora_weights=False))
    peft.eval()
    net = refill_model(peft, tok, GenerationConfig())
    assert net is peft.get_base_model()
    some = sorted(prompts[:12], key=len, reverse=True)
    got = refill_decode(net, some, 4, 12, tok.pad_token_id, "cpu")
    assert got == reference(peft, some, 12)
    assert got != reference(model, some, 12)  # the adapters took part


@pytest.mark.parametrize("n,world", [(0, 2), (7, 1), (7, 2), (30, 3)])
def test_prompt_shards_cover_every_prompt_once_and_balance_lengths(n, world):
    lengths = [(i * 37) % 101 for i in range(n)]
    shards = [shard_prompts(lengths, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    for s in shards:
        assert [lengths[i] for i in s] == sorted((lengths[i] for i in s), reverse=True)
    if n >= world:
        assert max(lengths[s[0]] for s in shards) - min(lengths[s[0]] for s in shards) <= max(lengths) - sorted(lengths)[-world]
