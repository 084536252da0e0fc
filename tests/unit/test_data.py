import json
import math

import pytest

from sumtune.batching import batches_per_rank
from sumtune.config import DataConfig
from sumtune.data import encode_records, load_split, make_collator
from sumtune.errors import DataError
from sumtune.families import Seq2SeqFamily


def local_cfg(path, **kw):
    return DataConfig(source="local", files={"train": str(path)}, **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = [{"id": "007", "dialogue": "A: hi\nB: hello", "summary": "A greets B."},
        {"id": 8, "dialogue": "A: bye", "summary": "A leaves."}]


def test_jsonl_csv_json_parquet_give_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jl = write_jsonl(tmp_path / "d.jsonl", GOOD)
    (tmp_path / "d.json").write_text(json.dumps(GOOD))
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('id,dialogue,summary\n007,"A: hi\nB: hello",A greets B.\n8,A: bye,A leaves.\n')
    pq.write_table(pa.Table.from_pylist([{**r, "id": str(r["id"])} for r in GOOD]), tmp_path / "d.parquet")
    expected = [{"id": "007", "dialogue": "A: hi\nB: hello", "summary": "A greets B."},
                {"id": "8", "dialogue": "A: bye", "summary": "A leaves."}]
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet"):
        records, stats = load_split(local_cfg(tmp_path / name), "train")
        assert records == expected, name
        assert stats.rows == 2 and stats.skipped == 0
    assert jl.exists()


def test_column_mapping_and_generated_ids(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"chat": "A: hi", "tldr": "A says hi."}])
    cfg = local_cfg(path)
    cfg.columns.dialogue, cfg.columns.summary = "chat", "tldr"
    records, _ = load_split(cfg, "train")
    assert records == [{"id": "mine-1", "dialogue": "A: hi", "summary": "A says hi."}]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"dialogue": "a", "summary": "b"}\n{"dialogue": "a", \n', "line 2: not valid JSON"),
        ('{"dialog": "a", "summary": "b"}\n', "column 'dialogue' not found (set data.columns.dialogue); columns present: dialog, summary"),
        ('{"dialogue": "a", "summary": "b"}\n{"dialogue": "  ", "summary": "b"}\n', "line 2: 'dialogue' is empty"),
        ('{"dialogue": "a", "summary": null}\n', "line 1: 'summary' is null"),
        ('{"dialogue": 5, "summary": "x"}\n', "line 1: 'dialogue' is not text (int)"),
        ('{"id": "x", "dialogue": "a", "summary": "b"}\n{"id": "x", "dialogue": "c", "summary": "d"}\n', "id 'x' already used at line 1"),
        ("\n", "no usable examples (it has no rows)"),
    ],
)
def test_bad_rows_name_file_row_and_column(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_split(local_cfg(path), "train")
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", GOOD + [{"dialogue": "", "summary": "x"}, {"dialogue": "a", "summary": None}])
    records, stats = load_split(local_cfg(path, on_bad_row="skip"), "train")
    assert len(records) == 2 and stats.skipped == 2 and stats.rows == 4
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [{"dialogue": "", "summary": "x"}])
    with pytest.raises(DataError, match="all 1 rows were skipped"):
        load_split(local_cfg(only_bad, on_bad_row="skip"), "train")


def test_missing_file_non_utf8_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="data file does not exist"):
        load_split(local_cfg(tmp_path / "nope.jsonl"), "train")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"dialogue": "caf\xe9", "summary": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_split(local_cfg(latin), "train")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        load_split(local_cfg(tmp_path / "x.txt"), "train")
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_split(local_cfg(tmp_path / "x.jsonl"), "test")


def test_csv_missing_column_names_the_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,text,summary\n1,hello,hi\n")
    with pytest.raises(DataError, match=r"t.csv: column 'dialogue' not found"):
        load_split(local_cfg(path), "train")


@pytest.fixture(scope="module")
def tokenizer():
    from sumtune_demo import _train_tokenizer

    texts = ["Anna: shall we meet at the library at 5 pm on Friday?", "Tom: yes, I will bring the notes.",
             "Summarize the following conversation. Summary:"] * 30
    return _train_tokenizer(texts, 150)


def test_truncation_cuts_the_dialogue_not_the_instruction_and_is_counted(tokenizer):
    cfg = DataConfig(max_source_length=60, max_target_length=6)
    long_dialogue = "Anna: shall we meet at the library? " * 20
    feats, stats = encode_records(
        [{"id": "1", "dialogue": long_dialogue, "summary": "Anna and Tom will meet at the library at 5 pm."},
         {"id": "2", "dialogue": "Tom: yes", "summary": "Tom."}],
        tokenizer, cfg, Seq2SeqFamily("t5"))
    assert stats.truncated_source == 1 and stats.truncated_target == 1
    src = feats[0]["input_ids"]
    assert len(src) == 60 and src[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(src, skip_special_tokens=True).rstrip().endswith("Summary:")
    assert tokenizer.decode(src, skip_special_tokens=True).startswith("Summarize the following conversation.")
    assert len(feats[0]["labels"]) == 6 and feats[0]["labels"][-1] == tokenizer.eos_token_id
    assert len(feats[1]["input_ids"]) < 60


def test_collator_pads_dynamically_and_masks_label_padding(tokenizer):
    collate = make_collator(tokenizer)
    batch = collate([{"input_ids": [5, 6, 7, 1], "labels": [8, 1]}, {"input_ids": [5, 1], "labels": [8, 9, 10, 1]}])
    assert batch["input_ids"].shape == (2, 4)  # padded to the longest in the batch, not a fixed length
    assert batch["input_ids"][1].tolist() == [5, 1, tokenizer.pad_token_id, tokenizer.pad_token_id]
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0]
    assert batch["labels"].tolist() == [[8, 1, -100, -100], [8, 9, 10, 1]]


@pytest.mark.parametrize("n, bs, world, expected", [(100, 8, 1, 13), (100, 8, 2, 7), (16, 8, 2, 1), (17, 8, 2, 2)])
def test_batches_per_rank(n, bs, world, expected):
    assert batches_per_rank(math.ceil(n / bs), world) == expected


@pytest.mark.parametrize("n, bs, world", [(100, 8, 2), (17, 8, 2), (33, 4, 3), (5, 8, 2)])
def test_batches_per_rank_matches_accelerates_own_sharding(n, bs, world):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    for rank in range(world):
        shard = BatchSamplerShard(BatchSampler(SequentialSampler(range(n)), bs, False), num_processes=world,
                                  process_index=rank, even_batches=True)
        assert len(list(shard)) == batches_per_rank(math.ceil(n / bs), world)


def test_few_shot_prompt_keeps_the_dialogue_and_drops_shots_that_do_not_fit(tokenizer):
    from sumtune.data import PromptEncoder

    short = {"id": "s", "dialogue": "Tom: yes", "summary": "Tom."}
    long = {"id": "l", "dialogue": "Anna: shall we meet at the library? " * 10, "summary": "Anna."}
    probe = PromptEncoder(tokenizer, "seed", 1000, shots=[long, short])
    target = len(probe.encode("Tom: I will bring the notes")[0])
    budget = target + len(probe.shot_ids[1]) + 2  # room for the short shot only
    assert len(probe.shot_ids[0]) > len(probe.shot_ids[1]) + 2
    enc = PromptEncoder(tokenizer, "seed", budget, shots=[long, short])
    alone, cut = enc.encode("Tom: I will bring the notes")
    ids, cut2, dropped = enc.encode_prompt("Tom: I will bring the notes")
    assert dropped == 1  # the long shot does not fit: dropped whole, and counted
    assert not cut and not cut2
    assert ids[-len(alone):] == alone  # the evaluated dialogue's prompt is intact, at the end
    assert len(ids) == len(alone) + len(probe.shot_ids[1]) <= budget
    assert "Tom." in tokenizer.decode(ids[: len(ids) - len(alone)])
    zero = PromptEncoder(tokenizer, "seed", budget)
    assert zero.encode_prompt("Tom: yes") == (*zero.encode("Tom: yes"), 0)


def test_an_unreadable_file_names_the_file_and_the_reason(tmp_path, monkeypatch):
    import pathlib

    path = write_jsonl(tmp_path / "locked.jsonl", GOOD)
    real = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):  # as root (CI containers) chmod 000 still reads: make it fail
        if self == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    with pytest.raises(DataError) as err:
        load_split(local_cfg(path), "train")
    assert str(err.value) == f"{path}: cannot be read (Permission denied)"
