"""Data: sources, validation, prompt formatting, tokenisation and collation.

A record is ``{"id": str, "dialogue": str, "summary": str}``, whatever the source. Local files
(jsonl, json, csv, parquet) are read here by hand rather than through ``datasets`` so that every
error can name the file, the row and the column, and so that ids stay strings ("007" stays "007").
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sumtune.config import DataConfig
from sumtune.errors import DataError
from sumtune.prompts import format_prompt, resolve_template, split_template

HUB_IDS = {"samsum": "knkarthick/samsum", "dialogsum": "knkarthick/dialogsum"}
LOCAL_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class SplitStats:
    rows: int = 0
    skipped: int = 0


# ----------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (bad byte at offset {err.start}); re-save the file as UTF-8"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; every problem named by file and line."""
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {lineno}: not valid JSON ({err.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object with named fields")
        yield lineno, row


def _rows_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, row in iter_jsonl(path):
        yield f"line {lineno}", row


def _rows_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path} record {i}: expected a JSON object with named fields")
        yield f"record {i}", row


def _rows_csv(path: Path) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(_read_text(path).splitlines(keepends=True))
    for i, row in enumerate(reader, start=1):
        yield f"row {i}", row


def _rows_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"row {i}", row


_READERS = {"jsonl": _rows_jsonl, "json": _rows_json, "csv": _rows_csv, "parquet": _rows_parquet}


def _local_rows(path: Path) -> Iterator[tuple[str, dict]]:
    fmt = LOCAL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(LOCAL_FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: data file does not exist; check data.files in the config")
    return _READERS[fmt](path)


def _hub_rows(hub_id: str, split: str) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # hub, network and cache errors all end here
        raise DataError(
            f"{hub_id} [{split}]: could not be loaded ({str(err).splitlines()[0][:200]}); "
            "without network access use data.source=local with data.files"
        ) from None
    for i, row in enumerate(ds, start=1):
        yield f"row {i}", row


# ----------------------------------------------------------------------------- validation


def read_records(rows: Iterator[tuple[str, dict]], origin: str, cfg: DataConfig) -> tuple[list[dict], SplitStats]:
    """Validate rows into records. ``origin`` names the file (or hub split) in messages."""
    cols = cfg.columns
    records: list[dict] = []
    stats = SplitStats()
    seen_ids: dict[str, str] = {}
    checked_columns = False
    for where, row in rows:
        stats.rows += 1
        if not checked_columns:
            for name in ("dialogue", "summary"):
                col = getattr(cols, name)
                if col not in row:
                    raise DataError(
                        f"{origin}: column '{col}' not found (set data.columns.{name}); "
                        f"columns present: {', '.join(map(str, row)) or 'none'}"
                    )
            checked_columns = True
        bad = None
        for name in ("dialogue", "summary"):
            value = row.get(getattr(cols, name))
            if value is None:
                bad = f"'{getattr(cols, name)}' is null"
            elif not isinstance(value, str):
                bad = f"'{getattr(cols, name)}' is not text ({type(value).__name__})"
            elif not value.strip():
                bad = f"'{getattr(cols, name)}' is empty"
            if bad:
                break
        if bad:
            if cfg.on_bad_row == "fail":
                raise DataError(f"{origin} {where}: {bad}; fix the row or set data.on_bad_row=skip")
            stats.skipped += 1
            continue
        raw_id = row.get(cols.id) if cols.id else None
        rid = str(raw_id) if raw_id is not None and str(raw_id).strip() else f"{Path(origin).stem}-{stats.rows}"
        if rid in seen_ids:
            raise DataError(f"{origin} {where}: id '{rid}' already used at {seen_ids[rid]}; ids must be unique")
        seen_ids[rid] = where
        records.append({"id": rid, "dialogue": row[cols.dialogue], "summary": row[cols.summary]})
    if not records:
        reason = f"all {stats.rows} rows were skipped as bad" if stats.rows else "it has no rows"
        raise DataError(f"{origin}: no usable examples ({reason})")
    return records, stats


def load_split(cfg: DataConfig, split: str, limit: int = 0) -> tuple[list[dict], SplitStats]:
    """Records of one sumtune split ("train", "validation" or "test")."""
    if cfg.source == "local":
        if split not in cfg.files:
            raise DataError(f"no file for split '{split}': add data.files.{split} to the config")
        path = Path(cfg.files[split])
        records, stats = read_records(_local_rows(path), str(path), cfg)
    else:
        hub_id = HUB_IDS[cfg.source]
        name = cfg.splits.get(split, split)
        records, stats = read_records(_hub_rows(hub_id, name), f"{hub_id} [{name}]", cfg)
    if limit:
        records = records[:limit]
    return records, stats


# ----------------------------------------------------------------------------- tokenisation


@dataclass
class EncodeStats:
    examples: int = 0
    truncated_source: int = 0
    truncated_target: int = 0

    def describe(self) -> str:
        return (
            f"{self.examples} examples; dialogue truncated in {self.truncated_source}, "
            f"summary truncated in {self.truncated_target}"
        )


class PromptEncoder:
    """Turns dialogues into token ids through the instruction template, optionally after a few
    solved examples ("shots": dicts with dialogue and summary).

    The ``frame`` (from the model family) says what wraps the prompt: T5's closing EOS, a
    decoder-only model's BOS, a chat template rendered around the instruction. Without one, the
    prompt is wrapped as the tokenizer wraps any text. When a prompt is too long, the dialogue is
    cut, never the instruction around it nor the wrapping. Shots come first (after a BOS) and never
    push the dialogue out: a shot that does not fit in what is left is dropped whole, and counted.
    """

    def __init__(self, tokenizer, template: str, max_source_length: int, shots: list[dict] | tuple = (),
                 frame=None):
        from sumtune.families.base import PromptFrame, wrapping

        self.tok = tokenizer
        self.max_len = max_source_length
        if frame is None:
            frame = PromptFrame(resolve_template(template), *wrapping(tokenizer))
        self.frame = frame
        self.template = frame.template
        prefix, suffix = split_template(self.template)
        self.prefix_ids = self._ids(prefix)
        self.suffix_ids = self._ids(suffix)
        self.lead, self.tail = list(frame.lead), list(frame.tail)
        fixed = len(self.lead) + len(self.prefix_ids) + len(self.suffix_ids) + len(self.tail)
        room = max_source_length - fixed
        if room < 8:
            raise DataError(
                f"the prompt template alone takes {fixed} tokens; "
                f"raise data.max_source_length (now {max_source_length})"
            )
        self.room = room
        self.shot_ids = [self._ids(format_prompt(self.template, s["dialogue"]) + s["summary"] + "\n\n") for s in shots]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, dialogue: str) -> tuple[list[int], bool]:
        """(ids, whether the dialogue was cut)."""
        full = self.lead + self._ids(format_prompt(self.template, dialogue)) + self.tail
        if len(full) <= self.max_len:
            return full, False
        body = self._ids(dialogue)[: self.room]
        return self.lead + self.prefix_ids + body + self.suffix_ids + self.tail, True

    def encode_prompt(self, dialogue: str) -> tuple[list[int], bool, int]:
        """(ids, whether the dialogue was cut, how many shots were dropped)."""
        target, cut = self.encode(dialogue)
        room = self.max_len - len(target)
        used: list[int] = []
        dropped = 0
        for shot in self.shot_ids:
            if len(shot) <= room:
                used += shot
                room -= len(shot)
            else:
                dropped += 1
        lead = len(self.lead)
        return target[:lead] + used + target[lead:], cut, dropped


def prompt_encoder(family, tokenizer, cfg: DataConfig, template: str | None = None, shots: list[dict] | tuple = ()):
    """The PromptEncoder a model family uses for the config's template (or ``template``)."""
    template = template or cfg.template
    return PromptEncoder(tokenizer, template, cfg.max_source_length, shots=shots,
                         frame=family.frame(tokenizer, template, cfg.chat_template))


def encode_records(records: list[dict], tokenizer, cfg: DataConfig, family) -> tuple[list[dict], EncodeStats]:
    """Training features (the family decides their shape) and what truncation cut."""
    enc = prompt_encoder(family, tokenizer, cfg)
    stats = EncodeStats(examples=len(records))
    features = []
    for rec in records:
        src, cut_src = enc.encode(rec["dialogue"])
        tgt, cut_tgt = family.target_ids(tokenizer, rec["summary"], cfg.max_target_length)
        stats.truncated_source += cut_src
        stats.truncated_target += cut_tgt
        features.append(family.example(src, tgt))
    return features, stats


class PadCollator:
    """Pads a list of features into a batch: input_ids with the pad id and an attention mask,
    labels with -100 so the loss ignores them. Features are lists of ids (or 1-d tensors);
    padding goes through ``pad_sequence`` in C++, which is several times cheaper per batch
    than ``DataCollatorForSeq2Seq``'s Python padding."""

    def __init__(self, pad_token_id: int, side: str = "right", multiple: int = 1):
        self.pad_id = pad_token_id
        self.side = side  # "left" for decoder-only prompts to generate from
        self.multiple = multiple  # lengths padded up to a multiple of this (few shapes for torch.compile)

    def _pad(self, rows: list, value: int):
        from torch.nn.functional import pad
        from torch.nn.utils.rnn import pad_sequence

        out = pad_sequence(rows, batch_first=True, padding_value=value)
        extra = -out.shape[1] % self.multiple
        return pad(out, (0, extra), value=value) if extra else out

    def __call__(self, features: list[dict]) -> dict:
        import torch

        inputs = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        lengths = torch.tensor([len(x) for x in inputs])
        if self.side == "left":
            input_ids = self._pad([x.flip(0) for x in inputs], self.pad_id).flip(1)
            positions = torch.arange(input_ids.shape[1] - 1, -1, -1)
        else:
            input_ids = self._pad(inputs, self.pad_id)
            positions = torch.arange(input_ids.shape[1])
        batch = {
            "input_ids": input_ids,
            "attention_mask": (positions[None, :] < lengths[:, None]).long(),
        }
        if "labels" in features[0]:
            labels = [torch.as_tensor(f["labels"], dtype=torch.long) for f in features]
            batch["labels"] = self._pad(labels, -100)
        return batch


def make_collator(tokenizer, multiple: int = 1) -> PadCollator:
    """Dynamic padding per batch (on the right, as training wants for every family), up to a
    multiple of ``multiple`` tokens; label padding is -100 so the loss ignores it."""
    return PadCollator(tokenizer.pad_token_id, multiple=multiple)


# ----------------------------------------------------------------------------- lengths and validation batches


def example_lengths(features: list[dict], family) -> list[tuple[int, int]]:
    """(source, target) lengths of each feature as its family counts them (a decoder-only
    feature is one sequence: (length, 0)); a batch is padded to their maxima."""
    return [family.lengths(f) for f in features]


def longest_first(lengths: list) -> list[int]:
    """Indices ordered longest first (lengths are ints, or (source, target) tuples compared source
    first), ties in index order: the one ordering every length-sorted pass uses (length-grouped
    pools, validation batches, generation batches and shards)."""
    return sorted(range(len(lengths)), key=lambda i: (_descending(lengths[i]), i))


def _descending(length) -> tuple:
    return tuple(-x for x in length) if isinstance(length, tuple) else (-length,)


def validation_loader(features: list[dict], lengths: list[tuple[int, int]], cfg, collate, num_processes: int):
    """Batches for the validation loss: the first ``cfg.eval_max_batches`` rounds' worth of
    examples in file order (or all), sorted longest first, so that similar lengths share a batch
    and memory trouble shows at once. The token-weighted loss does not depend on the order."""
    import torch

    cap = cfg.eval_max_batches * cfg.per_device_batch_size * num_processes
    chosen = len(features[:cap] if cap else features)
    ordered = [features[i] for i in longest_first(lengths[:chosen])]
    return torch.utils.data.DataLoader(ordered, batch_size=cfg.per_device_batch_size, collate_fn=collate)
