"""Summarise new dialogues with a run folder or a base model, as evaluation would."""

from __future__ import annotations

import json
from pathlib import Path

from sumtune import families, models
from sumtune.config import RunConfig, load_config
from sumtune.data import iter_jsonl, normalise_text, prompt_encoder
from sumtune.errors import DataError, SumtuneError
from sumtune.runs import RunFolder

CHUNK = 256  # dialogues generated (length-sorted) and written per round


def summarizer_config(model: str, config: str | None, overrides: list[str]) -> RunConfig:
    """The run folder's own config (template, lengths, generation) unless --config is given."""
    return load_config(config or RunFolder(model).config_file, overrides)


class Summarizer:
    def __init__(self, cfg: RunConfig, model_path: str):
        import torch
        from accelerate import Accelerator

        self.cfg = cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        run = RunFolder(model_path, key="--model")
        self.model, self.tok = run.load(cfg.model.trust_remote_code)
        models.to_device(self.model, self.acc.device)
        self.encoder = prompt_encoder(families.of_model(self.model), self.tok, run.prompting(cfg.data))

    def __call__(self, dialogues: list[str]) -> list[str]:
        from sumtune.generation import generate

        # Line ends and edge whitespace as training read them (data.normalise_text): the same tokens.
        dialogues = [normalise_text(d)[0] for d in dialogues]
        return generate(self.acc, self.model, self.tok, self.encoder, dialogues, self.cfg.generation, progress=False)[0]


def summarize_texts(cfg: RunConfig, model_path: str, texts: list[str]) -> list[str]:
    texts = [t.strip() for t in texts]
    if not all(texts):
        raise SumtuneError("the dialogue is empty: pass it on stdin or with --input FILE")
    return Summarizer(cfg, model_path)(texts)


def read_dialogues(path: Path, column: str) -> list[tuple[str, str]]:
    rows = []
    for lineno, row in iter_jsonl(path):
        text = row.get(column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path} line {lineno}: '{column}' is missing, empty or not text (see --column)")
        rows.append((str(row.get("id", lineno)), text))
    if not rows:
        raise DataError(f"{path}: no dialogues")
    return rows


def summarize_file(cfg: RunConfig, model_path: str, path: Path, out: Path | None, column: str, overwrite: bool) -> Path:
    from tqdm.auto import tqdm

    rows = read_dialogues(path, column)
    out = out or path.with_suffix(".summaries.jsonl")
    if out.exists() and not overwrite:
        raise SumtuneError(f"{out} already exists; pass --overwrite or choose --out")
    summarize = Summarizer(cfg, model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f, tqdm(total=len(rows), desc="summarize", unit="dialogue") as bar:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            for (rid, _), summary in zip(chunk, summarize([t for _, t in chunk])):
                f.write(json.dumps({"id": rid, "summary": summary}, ensure_ascii=False) + "\n")
            f.flush()  # summaries of finished chunks are on disk even if a later chunk fails
            bar.update(len(chunk))
    print(f"[sumtune] {len(rows)} summaries written to {out}")
    return out
