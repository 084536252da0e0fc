"""The decoders the families choose: T5's refill decoder and the decoder-only continuous decoder
give the same tokens as transformers' generate on each prompt alone, within the batch budget; and
generation asks the family which decoder runs."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from sumtune import families, generation
from sumtune.config import GenerationConfig
from sumtune.families import continuous, refill
from sumtune.families.refill import refill_decode
from sumtune.generation import MAX_GROWTH, shard_prompts

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
                   for s in ("refill", "sorted", "data-order")}
        assert results["refill"] == results["sorted"] == results["data-order"]
        assert len(set(results["refill"])) > 10
        assert generation.generate(acc, model, tok, encoder, dialogues, gen, progress=False)[0] == results["refill"]
    finally:
        set_ends(model, saved)


def refill_model(model, tok, gen, lockstep=False):
    """The network the T5 family's refill decoder runs for ``gen``, or None where another decoder runs."""
    family = families.of_model(model)
    decoder = family.decoder(model, family.generation_settings(model, tok, gen), lockstep,
                             "auto" if gen.refill else "sorted")
    return decoder.net if decoder.name == "refill" else None


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


# -- the decoder-only continuous decoder

CAUSAL = ("llama", "qwen2", "mistral", "gemma", "phi", "demo")


@pytest.fixture(scope="module")
def causal_models(zoo_build, tmp_path_factory):
    """Each decoder-only architecture of the zoo, and a model built as the demo builds its
    decoder-only one (Llama-shaped, 4 layers of width 192, the demo's tokenizer with a BOS; random
    weights): {name: (model, tokenizer)}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sumtune_demo import _causal_tokenizer, _tiny_causal, _train_tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import zoo

    loaded = {arch: (AutoModelForCausalLM.from_pretrained(zoo_build[arch]).eval(), AutoTokenizer.from_pretrained(zoo_build[arch]))
              for arch in CAUSAL[:-1]}
    rows = zoo.corpus_rows(60, seed=3)
    folder = tmp_path_factory.mktemp("demo-causal")
    _train_tokenizer([r["dialogue"] + " " + r["summary"] for r in rows], 300).save_pretrained(folder)
    tok = _causal_tokenizer(folder)
    loaded["demo"] = (_tiny_causal(tok, 0).eval(), tok)
    return loaded


def causal_prompts(tok, count=30):
    """Prompts of very different lengths (3 to about 150 tokens), longest first."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import zoo

    rows = zoo.corpus_rows(count, seed=4)
    prompts = [tok(r["dialogue"])["input_ids"][: 3 + (i * 37) % 150] for i, r in enumerate(rows)]
    return sorted(prompts, key=len, reverse=True)


def alone(family, model, prompts, settings):
    """transformers' generate on each prompt alone (no padding), cut after its end token."""
    return [family.generate(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), settings).ids[0]
            for p in prompts]


def causal_ends(family, model, prompts, settings, count=3):
    """End tokens (the real one first) that make the random model stop at many different steps."""
    probe = copy.deepcopy(settings)
    runs = alone(family, model, prompts, probe)
    ends = [settings.eos_token_id]

    def lengths(candidate):
        return {next((k + 1 for k, t in enumerate(seq) if t in candidate), len(seq)) for seq in runs}

    for _ in range(count - 1):
        tokens = {t for seq in runs for t in seq} - set(ends)
        ends.append(max(sorted(tokens), key=lambda t: len(lengths(ends + [t]))))
    return ends


@pytest.mark.parametrize("arch", CAUSAL)
def test_continuous_gives_generates_tokens_prompt_by_prompt(arch, causal_models, monkeypatch):
    model, tok = causal_models[arch]
    family = families.of_model(model)
    prompts = causal_prompts(tok)
    settings = family.generation_settings(model, tok, GenerationConfig(max_new_tokens=16, batch_size=3))
    settings.eos_token_id = causal_ends(family, model, prompts, settings)  # several end tokens
    expected = alone(family, model, prompts, settings)
    lengths = [len(s) for s in expected]
    assert max(lengths) == 16 and min(lengths) < 16  # some reach max_new_tokens, some stop at an end token
    joins = []
    join = continuous._Rows.join

    def watch(rows, new):
        joins.append((len(rows), rows.mask.shape[1]))
        return join(rows, new)

    monkeypatch.setattr(continuous._Rows, "join", watch)
    decoder = family.decoder(model, settings)
    assert decoder.name == "continuous"
    done = []
    got = decoder(prompts, 3, "cpu", on_done=lambda: done.append(1))
    assert got == expected
    assert len(done) == len(prompts) and decoder([], 3, "cpu") == []
    assert any(rows > 0 for rows, _ in joins)  # prompts joined rows that were already decoding


def test_continuous_runs_a_lora_model_through_its_base_with_the_adapters(causal_models):
    from peft import LoraConfig, get_peft_model

    model, tok = causal_models["llama"]
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.eval()
    family = families.of_model(peft)
    settings = family.generation_settings(peft, tok, GenerationConfig(max_new_tokens=10))
    decoder = family.decoder(peft, settings)
    assert decoder.name == "continuous" and decoder.net is peft.get_base_model()
    prompts = causal_prompts(tok, 12)
    got = decoder(prompts, 4, "cpu")
    assert got == alone(family, peft, prompts, settings)
    assert got != alone(family, model, prompts, settings)  # the adapters took part


def test_each_family_chooses_its_decoder(tiny, causal_models):
    from peft import PromptTuningConfig, get_peft_model

    t5, t5_tok, _ = tiny
    llama, tok = causal_models["llama"]
    for model, tokenizer, streaming in ((t5, t5_tok, "refill"), (llama, tok, "continuous")):
        def chosen(lockstep=False, choice="auto", model=model, tokenizer=tokenizer, **gen):
            family = families.of_model(model)
            settings = family.generation_settings(model, tokenizer, GenerationConfig(**gen))
            return family.decoder(model, settings, lockstep, choice).name

        assert chosen() == streaming
        assert chosen(num_beams=3) == chosen(do_sample=True) == chosen(lockstep=True) == "sorted"
        assert chosen(choice="data-order") == "data-order" and chosen(choice="sorted") == "sorted"
        other = "refill" if streaming == "continuous" else "continuous"
        with pytest.raises(ValueError, match=other):
            chosen(choice=other)
        with pytest.raises(ValueError, match=streaming):
            chosen(num_beams=3, choice=streaming)
    # Prompt tuning: the virtual tokens come from the PEFT wrapper's forward (and decode uncached).
    prompted = get_peft_model(copy.deepcopy(llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    family = families.of_model(prompted)
    assert family.decoder(prompted, family.generation_settings(prompted, tok, GenerationConfig())).name == "sorted"
    # A sliding-window cache crops itself, and an architecture not tested token for token may derive
    # its positions itself: both decode through generate.
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    mistral, mistral_tok = causal_models["mistral"]
    config = copy.deepcopy(mistral.config)
    config.sliding_window = 8
    for other in (AutoModelForCausalLM.from_config(config), GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16,
                                                                                        n_layer=1, n_head=2))):
        family = families.of_model(other)
        assert family.decoder(other, family.generation_settings(other, mistral_tok, GenerationConfig())).name == "sorted"


def test_generate_strategies_give_the_same_summaries_decoder_only(causal_models):
    from accelerate import Accelerator

    from sumtune import data
    from sumtune.config import DataConfig

    model, tok = causal_models["qwen2"]
    family = families.of_model(model)
    encoder = data.prompt_encoder(family, tok, DataConfig(max_source_length=120))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import zoo

    dialogues = [r["dialogue"][: 20 + 37 * i % 400] for i, r in enumerate(zoo.corpus_rows(14, seed=6))]
    gen = GenerationConfig(max_new_tokens=12, batch_size=3)
    acc = Accelerator(cpu=True)
    results = {}
    for strategy in ("auto", "continuous", "sorted", "data-order"):
        results[strategy], stats = generation.generate(acc, model, tok, encoder, dialogues, gen, progress=False,
                                                       strategy=strategy)
        assert stats.strategy == ("continuous" if strategy == "auto" else strategy)
    assert results["auto"] == results["continuous"] == results["sorted"] == results["data-order"]
    assert len(set(results["auto"])) > 3


def test_growing_cache_layer_holds_what_dynamic_layer_holds_without_copying_each_step():
    """The continuous decoder's cache layer: after every update (a prefill, single steps, a step
    past its spare room, and keys and values replaced from outside as a compaction does) it holds
    exactly what transformers' DynamicLayer holds; a plain step writes into the same buffer."""
    from transformers.cache_utils import DynamicLayer

    from sumtune.families.continuous import ROOM, _Growing

    torch.manual_seed(0)
    plain, growing = DynamicLayer(), _Growing()
    rows = 3
    for step, width in enumerate([5, 1, 1, 1, ROOM, 1, 1]):
        k, v = torch.randn(rows, 2, width, 4), torch.randn(rows, 2, width, 4)
        before = growing.keys.data_ptr() if growing.is_initialized and growing.keys.dim() == 4 else None
        got, want = growing.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if step in (2, 3, 6):  # a plain step within the room: no new buffer
            assert growing.keys.data_ptr() == before
        if step == 2:  # a compaction: rows dropped, the leading column cut
            keep = torch.tensor([0, 2])
            for layer in (plain, growing):
                layer.batch_select_indices(keep)
                layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]
            rows = 2
            k, v = torch.randn(rows, 2, 1, 4), torch.randn(rows, 2, 1, 4)
            got, want = growing.update(k, v), plain.update(k, v)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
