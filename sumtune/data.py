"""Data: sources, validation, prompt formatting, tokenisation and collation.

A record is ``{"id": str, "dialogue": str, "summary": str}``, whatever the source. Local files
(jsonl, json, csv, parquet) are read here by hand rather than through ``datasets`` so that every
error can name the file, the row and the column, and so that ids stay strings ("007" stays "007").
"""

from __future__ import annotations

import csv
import json
import re
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
    # Rows changed by read-time normalisation (normalise_text): Windows/old-Mac line ends made
    # "\n" (in the dialogue or the summary), and leading/trailing whitespace removed.
    line_ends: int = 0
    edge_whitespace: int = 0

    def describe_normalised(self) -> str:
        """'; ...' naming what normalisation changed, or '' when nothing."""
        parts = [f"{n} with {what}" for n, what in ((self.line_ends, "\\r\\n or \\r line ends made \\n"),
                                                    (self.edge_whitespace, "edge whitespace stripped")) if n]
        return "; normalised: " + ", ".join(parts) if parts else ""


def normalise_text(text: str) -> tuple[str, bool, bool]:
    """(text with every line end "\\n" and no leading/trailing whitespace, whether a line end
    changed, whether edge whitespace went). SAMSum mixes "\\r\\n" and "\\n": left alone, one
    dialogue would become different tokens depending on its line ends (Qwen2.5 keeps "\\r\\n" as a
    token of its own), and a summary's trailing space or newline would be learned as target tokens."""
    unified = text.replace("\r\n", "\n").replace("\r", "\n")
    stripped = unified.strip()
    return stripped, unified != text, stripped != unified


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
        dialogue, ends_d, edge_d = normalise_text(row[cols.dialogue])
        summary, ends_s, edge_s = normalise_text(row[cols.summary])
        stats.line_ends += ends_d or ends_s
        stats.edge_whitespace += edge_d or edge_s
        records.append({"id": rid, "dialogue": dialogue, "summary": summary})
    if not records:
        reason = f"all {stats.rows} rows were skipped as bad" if stats.rows else "it has no rows"
        raise DataError(f"{origin}: no usable examples ({reason})")
    return records, stats


_NUMBERED = re.compile(r"^(.+)_(\d+)$")


def group_references(records: list[dict]) -> list[dict]:
    """Examples with all their references: rows holding the same dialogue text (after read-time
    normalisation) become one example ``{"id", "dialogue", "references": [...], "ids": [...]}``,
    in the order of their first row. DialogSum's hub test split holds each dialogue three times
    (ids ``test_<i>_1..3``, one reference each): its example id is the ids' shared stem
    (``test_<i>``); otherwise the first row's id. A dialogue seen once is an example with one
    reference and its own id."""
    groups: dict[str, dict] = {}
    for rec in records:
        group = groups.setdefault(rec["dialogue"], {"dialogue": rec["dialogue"], "references": [], "ids": []})
        group["references"].append(rec["summary"])
        group["ids"].append(rec["id"])
    out, used = [], set()
    for group in groups.values():
        ids = group["ids"]
        stems = {m.group(1) if (m := _NUMBERED.match(i)) else None for i in ids}
        gid = stems.pop() if len(ids) > 1 and len(stems) == 1 and None not in stems else ids[0]
        if gid in used:  # a stem shared by two different dialogues: keep the rows' own id
            gid = ids[0]
        used.add(gid)
        out.append({"id": gid, **group})
    return out


def scoring_examples(records: list[dict], references: str) -> list[dict]:
    """What evaluation and ROUGE during training generate for and score: ``{"id", "dialogue",
    "references", "ids"}`` per distinct dialogue (``eval.references=grouped``: its rows' summaries are
    its references; group_references), or per row (``rows``)."""
    if references == "grouped":
        return group_references(records)
    return [{"id": r["id"], "dialogue": r["dialogue"], "references": [r["summary"]], "ids": [r["id"]]} for r in records]


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
    # Examples whose prompt or summary holds the tokenizer's <unk> (None: it has none, as byte-level
    # BPE tokenizers such as Qwen's and Llama's encode every character).
    with_unk: int | None = 0

    def describe(self) -> str:
        if self.with_unk is None:
            unk = "no <unk> token (every character is encoded)"
        else:
            unk = f"<unk> tokens in {self.with_unk} ({self.with_unk / max(self.examples, 1):.1%})"
        return (
            f"{self.examples} examples; dialogue truncated in {self.truncated_source}, "
            f"summary truncated in {self.truncated_target}; {unk}"
        )


# Characters a tokenizer may not know (FLAN-T5's maps each to <unk>), probed at start-up.
_PROBED = ("<", "{", "~", "\U0001F600")


def tokenizer_notes(tokenizer, cfg: DataConfig) -> str:
    """One start-up line: what the tokenizer does to turn separators (line ends), which probed
    characters become <unk>, and whose length limits apply."""
    ids = tokenizer("Anna: hi\nTom: yo", add_special_tokens=False)["input_ids"]
    kept = "\n" in tokenizer.decode(ids)
    if cfg.turn_separator is not None:
        turns = f"turns separated by {cfg.turn_separator!r} (data.turn_separator)"
    elif kept:
        turns = "newlines kept"
    else:
        turns = ("newlines become spaces (turns survive only through the speaker names; data.turn_separator sets a "
                 "separator)")
    unk_id = tokenizer.unk_token_id
    lost = [c for c in _PROBED if unk_id is not None and unk_id in tokenizer(c, add_special_tokens=False)["input_ids"]]
    unknown = f"{', '.join(repr(c) for c in lost)} -> <unk>" if lost else "no probed character becomes <unk>"
    limit = getattr(tokenizer, "model_max_length", None)
    own = (f"model_max_length {limit:.0e}" if isinstance(limit, (int, float)) and limit > 1e6 else f"model_max_length {limit}")
    return (f"tokenizer: {turns}; {unknown}; {own}, sumtune cuts at data.max_source_length {cfg.max_source_length} "
            f"and max_target_length {cfg.max_target_length}")


def prompts_with_unk(encoder: PromptEncoder, dialogues: list[str]) -> int | None:
    """How many of these dialogues' prompts hold the tokenizer's <unk> (None: it has none)."""
    unk = encoder.tok.unk_token_id
    return None if unk is None else sum(unk in encoder.encode(d)[0] for d in dialogues)


PROMPT_EXAMPLE_FILE = "prompt_example.txt"


def render_example(encoder: PromptEncoder, family, tokenizer, record: dict, cfg: DataConfig) -> str:
    """The first example as the model sees it (special tokens shown), for prompt_example.txt: a run
    folder says what its prompts were (chat template, system message, date, separators)."""
    prompt, _ = encoder.encode(record["dialogue"])
    target, _ = family.target_ids(tokenizer, record["summary"], cfg.max_target_length)
    return (f"# id {record['id']}: the prompt ({len(prompt)} tokens) and the target ({len(target)} tokens), decoded\n"
            f"{tokenizer.decode(prompt)}\n# target\n{tokenizer.decode(target)}\n")


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
                 frame=None, turn_separator: str | None = None):
        from sumtune.families.base import PromptFrame, wrapping

        self.tok = tokenizer
        self.turn_separator = turn_separator
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
        self.shot_ids = [self._ids(format_prompt(self.template, self.turns(s["dialogue"])) + s["summary"] + "\n\n")
                         for s in shots]

    def turns(self, dialogue: str) -> str:
        """The dialogue as tokenised: its line ends replaced by ``data.turn_separator`` when one is set."""
        return dialogue.replace("\n", self.turn_separator) if self.turn_separator is not None else dialogue

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, dialogue: str) -> tuple[list[int], bool]:
        """(ids, whether the dialogue was cut)."""
        dialogue = self.turns(dialogue)
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
                         frame=family.frame(tokenizer, template, cfg.chat_template, cfg.system_prompt, cfg.chat_date),
                         turn_separator=cfg.turn_separator)


def encode_records(records: list[dict], tokenizer, cfg: DataConfig, family) -> tuple[list[dict], EncodeStats]:
    """Training features (the family decides their shape) and what truncation cut."""
    enc = prompt_encoder(family, tokenizer, cfg)
    unk = tokenizer.unk_token_id
    stats = EncodeStats(examples=len(records), with_unk=None if unk is None else 0)
    features = []
    for rec in records:
        src, cut_src = enc.encode(rec["dialogue"])
        tgt, cut_tgt = family.target_ids(tokenizer, rec["summary"], cfg.max_target_length)
        stats.truncated_source += cut_src
        stats.truncated_target += cut_tgt
        if unk is not None:
            stats.with_unk += unk in src or unk in tgt
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
