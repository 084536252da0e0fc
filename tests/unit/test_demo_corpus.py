"""Tests for sumtune_demo.corpus (synthetic dialogue-summarisation corpus)."""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter

import pytest

from sumtune_demo import corpus as dc

SPLITS = ("train", "validation", "test")
SMALL = {"train": 60, "validation": 10, "test": 10}


def _word_re(value: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])" + re.escape(value) + r"(?![\w])", re.IGNORECASE)


def _mentions(text: str, value: str) -> bool:
    return _word_re(value).search(text) is not None


def _speakers(dialogue: str) -> list[str]:
    return [line.split(":", 1)[0] for line in dialogue.split("\n")]


@pytest.fixture(scope="module")
def corpus():
    return dc.make_corpus(seed=0)


@pytest.fixture(scope="module")
def full_corpus():
    """(record, example-metadata) pairs of the default corpus."""
    full = dc._make_corpus_full(seed=0)
    return [pair for split in SPLITS for pair in full[split]]


@pytest.fixture(scope="module")
def other_seeds():
    """Extra examples from several other seeds, for the per-example invariants."""
    pairs = []
    for seed in range(1, 6):
        full = dc._make_corpus_full(seed=seed, sizes={"train": 800, "validation": 0, "test": 0})
        pairs += full["train"]
    return pairs


@pytest.fixture(scope="module")
def records(corpus):
    return [rec for split in SPLITS for rec in corpus[split]]


# --- API, sizes, ids -------------------------------------------------------

def test_split_sizes_constant():
    assert dc.SPLIT_SIZES == {"train": 2400, "validation": 240, "test": 240}


def test_default_sizes(corpus):
    assert list(corpus) == list(SPLITS)
    assert {k: len(v) for k, v in corpus.items()} == dc.SPLIT_SIZES


def test_custom_sizes_and_missing_splits_default():
    c = dc.make_corpus(seed=3, sizes={"train": 5, "validation": 0})
    assert len(c["train"]) == 5
    assert c["validation"] == []
    assert len(c["test"]) == dc.SPLIT_SIZES["test"]


def test_split_content_independent_of_other_split_sizes():
    small = dc.make_corpus(seed=4, sizes={"train": 3, "validation": 2, "test": 7})
    other = dc.make_corpus(seed=4, sizes={"train": 50, "validation": 9, "test": 4})
    assert other["test"] == small["test"][:4]
    assert small["validation"] == other["validation"][:2]


@pytest.mark.parametrize("sizes", [{"dev": 3}, {"train": -1}, {"train": 2.5}, {"test": True}])
def test_invalid_sizes_rejected(sizes):
    with pytest.raises(ValueError):
        dc.make_corpus(seed=0, sizes=sizes)


def test_record_keys_and_types(records):
    for rec in records:
        assert set(rec) == {"id", "dialogue", "summary"}
        assert all(isinstance(v, str) and v for v in rec.values())


def test_ids_unique_and_formatted(corpus):
    ids = [rec["id"] for split in SPLITS for rec in corpus[split]]
    assert len(ids) == len(set(ids))
    for split in SPLITS:
        for i, rec in enumerate(corpus[split]):
            assert rec["id"] == f"{split}-{i:05d}"


# --- determinism -----------------------------------------------------------

def test_same_seed_identical(corpus):
    assert dc.make_corpus(seed=0) == corpus


def test_different_seed_differs(corpus):
    other = dc.make_corpus(seed=1)
    for split in SPLITS:
        assert other[split] != corpus[split]
    same = sum(a == b for a, b in zip(other["train"], corpus["train"], strict=True))
    assert same < 0.05 * len(corpus["train"])


def test_global_random_state_untouched():
    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    dc.make_corpus(seed=0, sizes=SMALL)
    assert random.random() == expected


def test_write_corpus_byte_identical(tmp_path):
    a = dc.write_corpus(tmp_path / "a", seed=7, sizes=SMALL)
    b = dc.write_corpus(tmp_path / "b", seed=7, sizes=SMALL)
    c = dc.write_corpus(tmp_path / "c", seed=8, sizes=SMALL)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()


# --- write_corpus ----------------------------------------------------------

def test_write_corpus_roundtrip(tmp_path):
    out = tmp_path / "nested" / "corpus"
    paths = dc.write_corpus(str(out), seed=5, sizes=SMALL)
    expected = dc.make_corpus(seed=5, sizes=SMALL)
    assert set(paths) == set(SPLITS)
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl",
                                                     "validation.jsonl"]
    for split in SPLITS:
        assert paths[split] == out / f"{split}.jsonl"
        text = paths[split].read_text(encoding="utf-8")
        assert text.endswith("\n")
        lines = text.split("\n")[:-1]
        loaded = [json.loads(line) for line in lines]
        assert loaded == expected[split]
        assert all(list(obj) == ["id", "dialogue", "summary"] for obj in loaded)


def test_write_corpus_empty_split(tmp_path):
    paths = dc.write_corpus(tmp_path, seed=0, sizes={"train": 2, "validation": 0, "test": 1})
    assert paths["validation"].read_text(encoding="utf-8") == ""


def test_generate_one():
    rec, scenario = dc._generate_one(random.Random(0), 42)
    assert rec["id"] == "train-00042"
    assert set(rec) == {"id", "dialogue", "summary"}
    assert scenario in dc.SCENARIO_NAMES


# --- dialogue shape ----------------------------------------------------------

def test_turn_counts(records):
    counts = [len(rec["dialogue"].split("\n")) for rec in records]
    assert min(counts) >= 2 and max(counts) <= 30
    assert sum(c <= 3 for c in counts) >= 0.05 * len(counts)
    assert sum(c >= 20 for c in counts) >= 0.02 * len(counts)
    assert sum(4 <= c <= 14 for c in counts) >= 0.7 * len(counts)
    assert 5 <= statistics.median(counts) <= 11


def test_dialogue_lines_well_formed(records):
    for rec in records:
        speakers = _speakers(rec["dialogue"])
        assert 2 <= len(set(speakers)) <= 3, rec
        assert set(speakers) <= set(dc.NAMES)
        for line in rec["dialogue"].split("\n"):
            name, sep, text = line.partition(": ")
            assert sep and text.strip() == text and text, line
        assert rec["dialogue"].isascii() and rec["summary"].isascii()


def test_some_three_speaker_dialogues(records):
    n3 = sum(len(set(_speakers(rec["dialogue"]))) == 3 for rec in records)
    assert 0.1 * len(records) <= n3 <= 0.35 * len(records)


def test_lengths_in_words(records):
    dlg = [len(rec["dialogue"].split()) for rec in records]
    summ = [len(rec["summary"].split()) for rec in records]
    assert min(dlg) >= 12 and max(dlg) <= 450
    assert min(summ) >= 8 and max(summ) <= 45
    assert 10 <= statistics.median(summ) <= 30


# --- summaries ---------------------------------------------------------------

def test_summary_sentences(records):
    for rec in records:
        s = rec["summary"]
        assert s.endswith(".")
        sentences = re.split(r"(?<=\.) ", s)
        assert 1 <= len(sentences) <= 3, s
        assert all(x.endswith(".") and x[0].isupper() for x in sentences), s


def test_summary_names_come_from_dialogue(records):
    for rec in records:
        speakers = set(_speakers(rec["dialogue"]))
        named = {n for n in dc.NAMES if re.search(rf"\b{n}\b", rec["summary"])}
        assert named & speakers, rec
        for n in named:
            assert re.search(rf"\b{n}\b", rec["dialogue"]), (n, rec)


def test_summaries_mostly_distinct(records):
    assert len({rec["summary"] for rec in records}) >= 0.95 * len(records)


def test_no_constant_summary_wins(records):
    # The most frequent summary word sequence (minus names) must not dominate:
    # slot values vary, so a fixed sentence cannot match many examples.
    stripped = Counter(re.sub(r"\b(" + "|".join(dc.NAMES) + r")\b", "X", rec["summary"])
                       for rec in records)
    assert stripped.most_common(1)[0][1] < 0.01 * len(records)


def test_facts_in_summary_and_dialogue(full_corpus, other_seeds):
    for rec, ex in full_corpus + other_seeds:
        assert ex.facts
        for fact in ex.facts:
            assert _mentions(rec["summary"], fact), (fact, rec)
            assert _mentions(rec["dialogue"], fact), (fact, rec)


def test_mid_chat_changes_use_final_value(full_corpus, other_seeds):
    changed = [(rec, ex) for rec, ex in full_corpus if ex.change is not None]
    assert 0.12 * len(full_corpus) <= len(changed) <= 0.30 * len(full_corpus)
    changed += [(rec, ex) for rec, ex in other_seeds if ex.change is not None]
    for rec, ex in changed:
        old, new = ex.change
        assert old != new
        assert _mentions(rec["dialogue"], old) and _mentions(rec["dialogue"], new)
        assert _mentions(rec["summary"], new), rec
        assert not _mentions(rec["summary"], old), rec
        # The new value is introduced after the old one.
        d = rec["dialogue"].lower()
        assert d.index(old.lower()) < d.rindex(new.lower())


# --- scenarios ------------------------------------------------------------------

def test_at_least_12_scenarios_used(full_corpus):
    used = Counter(ex.scenario for _, ex in full_corpus)
    assert len(used) >= 12
    assert set(used) == set(dc.SCENARIO_NAMES)
    assert min(used.values()) >= 0.03 * len(full_corpus)


def test_scenario_templates_sane():
    assert len(dc.SCENARIOS) >= 12
    assert len(set(dc.SCENARIO_NAMES)) == len(dc.SCENARIOS)
    for sc in dc.SCENARIOS:
        assert len(sc.brief) >= 2 and len(sc.full) >= 2 and sc.summaries
        for variant in sc.brief:
            assert len(variant) == 2
        for variant in sc.brief + sc.full:
            assert {r for r, _ in variant} == {"a", "b"}, sc.name
        assert all(len(s) <= 2 for s in sc.summaries), sc.name
        slots, pools = sc.sample(random.Random(0))
        for kind, key in sc.changes:
            assert kind in dc.CHANGES
            assert key in slots and len(pools[key]) >= 3, (sc.name, key)


def test_pools_have_no_nested_values():
    pools = [dc.NAMES, dc.DAYS, dc.TIMES, dc.PLACES, dc.OBJECTS, dc.CITIES,
             dc.PRICES, dc.GIFTS, dc.DISHES, dc.COUNTS, dc.GROCERIES,
             dc.TRAVEL_MODES, dc.MOVE_BRINGS, dc.TASKS]
    for pool in pools:
        assert len(pool) == len(set(pool))
        for a in pool:
            for b in pool:
                if a != b:
                    assert not _mentions(b, a), (a, b)


def test_no_value_nested_in_another_pool_value():
    # e.g. a dish "the sushi" inside a restaurant "the sushi bar" would make
    # "old value absent from summary" ambiguous.
    pools = [dc.NAMES, dc.DAYS, dc.TIMES, dc.PLACES, dc.VENUES, dc.OBJECTS,
             dc.CITIES, dc.PRICES, dc.GIFTS, dc.DISHES, dc.COUNTS, dc.GROCERIES,
             dc.TRAVEL_MODES, dc.MOVE_BRINGS, dc.TASKS, dc.RESTAURANTS, dc.SHOPS,
             dc.MEET_ITEMS, dc.TOPICS, dc.BUY_ITEMS, dc.ADDRESSES, dc.FILMS,
             dc.BANDS, dc.FILM_VENUES, dc.CONCERT_VENUES, dc.MEALS,
             dc.APPOINTMENTS, [s for s, _ in dc.STATIONS],
             [v for _, v, _ in dc.SPORTS], [g for _, _, g in dc.SPORTS]]
    values = sorted({v for pool in pools for v in pool})
    for a in values:
        for b in values:
            if a != b:
                assert not _mentions(b, a), (a, b)


def test_pool_sizes():
    assert len(dc.NAMES) >= 35
    assert len(dc.PLACES) >= 25
    assert len(dc.OBJECTS) >= 25


def test_vocabulary_moderate(records):
    words = {w for rec in records
             for w in re.findall(r"[a-z]+", (rec["dialogue"] + " " + rec["summary"]).lower())}
    assert 200 <= len(words) <= 900


def test_demo_tokenizer_is_the_same_in_every_process(tmp_path):
    """Two builds from one seed must give one model: the tokenizer is trained in two separate
    processes (hash seeds differ between processes) and must come out byte-identical."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sumtune_demo import _train_tokenizer\n"
        "from sumtune_demo.corpus import make_corpus\n"
        "c = make_corpus(3, {'train': 300, 'validation': 0, 'test': 0})['train']\n"
        "t = _train_tokenizer([r['dialogue'] for r in c] + [r['summary'] for r in c], 400)\n"
        "open(sys.argv[1], 'w').write(t.backend_tokenizer.to_str())\n"
    )
    outs = []
    for i in range(2):
        path = tmp_path / f"tok{i}.json"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]
