"""What the published tokenizers of the shipped configs' models (FLAN-T5, Qwen2.5-Instruct, BART;
tests/fixtures/tokenizers) do to sumtune's prompts, targets, truncation and decoding, and each trap
they carry, handled: <unk> and lost newlines (reported), line ends and edge whitespace (normalised at
read time), chat templates (system message explicit, date pinned), several end tokens (decoding
stops at any, the token is cut), a tokenizer without a length limit (sumtune's apply; a model's
position limit checked at start-up). Llama 3's traps with a tokenizer built to have them."""

import datetime
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sumtune import data, families, models
from sumtune.config import GenerationConfig, from_dict
from sumtune.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hubcache  # noqa: E402

FAMILY = {"flan-t5": ("seq2seq", "t5"), "qwen2.5": ("causal", "qwen2"), "bart": ("seq2seq", "bart")}


def family_of(kind):
    name, model_type = FAMILY[kind]
    return families.FAMILIES[name](model_type)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Tiny random models of the published configs' classes around the real tokenizers (BART's
    folder without tokenizer_config.json, as facebook/bart-large ships it)."""
    root = tmp_path_factory.mktemp("real")
    return {kind: hubcache.real_model(kind, root / kind, skip=("tokenizer_config.json",) if kind == "bart" else ())
            for kind in FAMILY}


@pytest.fixture(scope="module")
def tokenizers(built):
    return {kind: models.load_tokenizer(str(folder), family=family_of(kind)) for kind, folder in built.items()}


def cfg_data(tmp_path, rows, **data_overrides):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return from_dict({"data": {"source": "local", "files": {"train": str(path)}, **data_overrides}}).data


def test_the_fixtures_are_the_published_tokenizers(tokenizers, built):
    t5, qwen, bart = tokenizers["flan-t5"], tokenizers["qwen2.5"], tokenizers["bart"]
    assert (len(t5), models.load_model(str(built["flan-t5"])).config.vocab_size) == (32100, 32128)
    assert (len(qwen), qwen.bos_token, qwen.eos_token, qwen.pad_token) == (151665, None, "<|im_end|>", "<|endoftext|>")
    assert len(bart) == 50265 and bart.model_max_length > 1e29  # no tokenizer_config.json: no limit of its own
    assert t5("Hi")["input_ids"][-1] == t5.eos_token_id and t5.bos_token_id is None


def test_flan_t5_unk_share_and_lost_newlines_are_reported_and_a_separator_is_an_option(tokenizers, tmp_path):
    t5, qwen = tokenizers["flan-t5"], tokenizers["qwen2.5"]
    rows = [{"id": "1", "dialogue": "Anna: hi <3\nTom: yo", "summary": "Anna greets Tom."},
            {"id": "2", "dialogue": "Anna: see you 😀\nTom: ok", "summary": "They part."},
            {"id": "3", "dialogue": "Anna: lunch?\nTom: yes", "summary": "They will have lunch."}]
    cfg = cfg_data(tmp_path, rows)
    records, _ = data.load_split(cfg, "train")
    _, stats = data.encode_records(records, t5, cfg, family_of("flan-t5"))
    assert stats.with_unk == 2 and "<unk> tokens in 2 (66.7%)" in stats.describe()
    notes = data.tokenizer_notes(t5, cfg)
    assert "newlines become spaces" in notes and "'<', '{', '~', '😀' -> <unk>" in notes
    _, qstats = data.encode_records(records, qwen, cfg, family_of("qwen2.5"))
    assert qstats.with_unk is None and "no <unk> token" in qstats.describe()
    assert "newlines kept" in data.tokenizer_notes(qwen, cfg)
    # FLAN-T5 gives "a\nb" the tokens of "a b": the turn boundary is gone unless a separator is asked for.
    plain = data.prompt_encoder(family_of("flan-t5"), t5, cfg)
    assert plain.encode("Anna: hi\nTom: yo")[0] == plain.encode("Anna: hi Tom: yo")[0]
    sep = data.prompt_encoder(family_of("flan-t5"), t5, cfg_data(tmp_path, rows, turn_separator=" | "))
    ids = sep.encode("Anna: hi\nTom: yo")[0]
    assert ids != plain.encode("Anna: hi\nTom: yo")[0] and "hi | Tom" in t5.decode(ids)
    assert "turns separated by ' | '" in data.tokenizer_notes(t5, cfg_data(tmp_path, rows, turn_separator=" | "))


@pytest.mark.parametrize("kind", list(FAMILY))
def test_crlf_or_lf_and_edge_whitespace_give_the_same_tokens(kind, tokenizers, tmp_path):
    tok, family = tokenizers[kind], family_of(kind)
    rows = [{"id": "lf", "dialogue": "Anna: hi\nTom: yo\nAnna: bye", "summary": "Anna and Tom say hi."},
            {"id": "crlf", "dialogue": "Anna: hi\r\nTom: yo\r\nAnna: bye  ", "summary": " Anna and Tom say hi.\r\n"}]
    cfg = cfg_data(tmp_path, rows)
    records, stats = data.load_split(cfg, "train")
    assert (stats.line_ends, stats.edge_whitespace) == (1, 1)
    features, _ = data.encode_records(records, tok, cfg, family)
    assert features[0] == features[1]
    if kind != "flan-t5":  # left alone, these tokenizers would give the two rows other tokens
        assert tok("a\r\nb", add_special_tokens=False)["input_ids"] != tok("a\nb", add_special_tokens=False)["input_ids"]
        assert tok("Hi.\n", add_special_tokens=False)["input_ids"] != tok("Hi.", add_special_tokens=False)["input_ids"]


def test_qwen_chat_template_system_message_is_explicit_and_the_frame_is_saved(tokenizers, tmp_path):
    qwen, family = tokenizers["qwen2.5"], family_of("qwen2.5")
    rows = [{"id": "1", "dialogue": "Anna: hi", "summary": "Anna says hi."}]
    default = data.prompt_encoder(family, qwen, cfg_data(tmp_path, rows))
    # No system message given: Qwen2.5's template inserts its own default, the same on every run.
    assert default.frame.chat and "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud." in default.template
    own = data.prompt_encoder(family, qwen, cfg_data(tmp_path, rows, system_prompt="You summarise dialogues."))
    assert "<|im_start|>system\nYou summarise dialogues.<|im_end|>" in own.template and "You are Qwen" not in own.template
    text = data.render_example(own, family, qwen, rows[0], cfg_data(tmp_path, rows))
    assert "You summarise dialogues." in text and "Anna: hi" in text and text.rstrip().endswith("Anna says hi.<|im_end|>")


def llama_like(tmp_path: Path) -> Path:
    """A tokenizer with Llama 3's traps: no pad token, and an Instruct-style chat template that puts
    today's date in the system block unless ``date_string`` is given (Qwen's files underneath)."""
    folder = hubcache.copy_tokenizer("qwen2.5", tmp_path / "llama-like")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    config["chat_template"] = (
        "{%- if date_string is not defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
        "<|im_start|>system\nToday Date: {{ date_string }}<|im_end|>\n"
        "{%- for message in messages %}\n<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>"
        "{%- endfor %}{%- if add_generation_prompt %}\n<|im_start|>assistant\n{%- endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").unlink()
    return folder


def test_llama_traps_no_pad_token_and_todays_date_in_the_template(tmp_path):
    tok = AutoTokenizer.from_pretrained(llama_like(tmp_path))
    assert tok.pad_token is None
    family = family_of("qwen2.5")
    family.prepare_tokenizer(tok)
    assert tok.pad_token_id == tok.eos_token_id
    today = datetime.date.today().strftime("%d %b %Y")
    pinned = family.frame(tok, "seed", "auto", None, from_dict({}).data.chat_date)
    assert "Today Date: 26 Jul 2024" in pinned.template and today not in pinned.template
    # Unpinned, the prompt would hold today's date: a run resumed tomorrow would train on other tokens.
    assert f"Today Date: {today}" in family.frame(tok, "seed", "auto", None, None).template


def _always(model, token: int) -> None:
    """Make the model emit ``token`` at every step (a bias on its output layer)."""
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[token] = 1e4
    model.set_output_embeddings(biased)


def test_several_end_tokens_stop_every_decoder_and_are_cut(built, tokenizers):
    from accelerate import Accelerator

    from sumtune.generation import generate

    acc = Accelerator(cpu=True)
    cfg = from_dict({"data": {"max_source_length": 64}}).data
    # Qwen2.5: the generation config lists <|im_end|> and <|endoftext|>; the tokenizer's EOS is the first.
    qwen, tok = models.load_model(str(built["qwen2.5"])), tokenizers["qwen2.5"]
    assert qwen.generation_config.eos_token_id == [151645, 151643]
    _always(qwen, 151643)
    enc = data.prompt_encoder(family_of("qwen2.5"), tok, cfg)
    texts, _ = generate(acc, qwen, tok, enc, ["Anna: hi", "Tom: yo, see you at 5"], GenerationConfig(max_new_tokens=20),
                        progress=False)
    assert texts == ["", ""]
    out = family_of("qwen2.5").generate(qwen, *(t for t in _prompts(enc, ["Anna: hi"])),
                                        family_of("qwen2.5").generation_settings(qwen, tok, GenerationConfig()))
    assert out.ids == [[151643]]  # stopped at once, at the second end token
    # FLAN-T5 with a second end token that is an ordinary word: the refill decoder and generate stop
    # at it, and it is cut from the summary by id (the tokenizer would keep it as text).
    t5, tok = models.load_model(str(built["flan-t5"])), tokenizers["flan-t5"]
    word = tok.convert_tokens_to_ids("▁Hello")
    t5.generation_config.eos_token_id = [1, word]
    _always(t5, word)
    enc = data.prompt_encoder(family_of("flan-t5"), tok, cfg)
    for refill in (True, False):
        texts, stats = generate(acc, t5, tok, enc, ["Anna: hi", "Tom: yo"], GenerationConfig(max_new_tokens=20, refill=refill),
                                progress=False)
        assert texts == ["", ""] and stats.strategy == ("refill" if refill else "sorted")


def _prompts(encoder, dialogues):
    from sumtune.data import PadCollator

    batch = PadCollator(0, side="left")([{"input_ids": encoder.encode_prompt(d)[0]} for d in dialogues])
    return batch["input_ids"], batch["attention_mask"]


def test_a_tokenizer_without_a_limit_is_cut_at_sumtunes_and_positions_are_checked(built, tokenizers, tmp_path):
    bart, family = tokenizers["bart"], family_of("bart")
    cfg = cfg_data(tmp_path, [{"id": "1", "dialogue": "x", "summary": "y"}], max_source_length=64, max_target_length=16)
    enc = data.prompt_encoder(family, bart, cfg)
    ids, cut = enc.encode("Anna: " + "hello there " * 400)
    assert cut and len(ids) == 64 and ids[-1] == bart.eos_token_id
    target, cut = family.target_ids(bart, "word " * 100, cfg.max_target_length)
    assert cut and len(target) == 16 and target[-1] == bart.eos_token_id
    assert "model_max_length 1e+30" in data.tokenizer_notes(bart, cfg)
    too_long = from_dict({"data": {"max_source_length": 2048}}).data
    with pytest.raises(ConfigError, match=r"data.max_source_length = 2048 tokens, but .* has 1024 positions"):
        models.check_positions(str(built["bart"]), too_long, family)
    models.check_positions(str(built["bart"]), from_dict({}).data, family)  # 512: fine
    models.check_positions(str(built["flan-t5"]), too_long, family_of("flan-t5"))  # relative positions: no limit
    qwen_long = from_dict({"data": {"max_source_length": 32768, "max_target_length": 128}}).data
    with pytest.raises(ConfigError, match=r"max_source_length \+ data.max_target_length = 32896 tokens"):
        models.check_positions(str(built["qwen2.5"]), qwen_long, family_of("qwen2.5"))


def test_hub_ids_in_the_cache_pass_the_offline_check_and_others_fail_in_one_line(built, tmp_path, monkeypatch):
    import subprocess

    env = hubcache.hub_cache(tmp_path, {"google/flan-t5-base": built["flan-t5"]})
    code = ("from sumtune.families.base import check_model_source as c\n"
            "c('google/flan-t5-base')\n"
            "try:\n    c('google/flan-t5-xxl')\nexcept Exception as e:\n    print(e)\n")
    import os

    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'google/flan-t5-xxl' is not a local folder, nor in the Hugging Face cache" in proc.stdout
    shutil.rmtree(tmp_path / "hf")
