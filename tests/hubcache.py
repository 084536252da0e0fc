"""The published tokenizers of the shipped configs' models, tiny random models of their real config
classes around them, and a Hugging Face cache laid out as a download on a login node leaves it, so
that a config runs offline (HF_HUB_OFFLINE=1) with its hub ids unchanged.

    real_model("flan-t5", out)             # FLAN-T5's tokenizer + a tiny T5 (vocab 32,128, gated-gelu, untied)
    env = hub_cache(root, {"google/flan-t5-base": folder}, datasets=("samsum",))

The tokenizer files are in tests/fixtures/tokenizers/ (provenance, checksums and licences in its
PROVENANCE.md and NOTICE.md). No weights are published there: each model is random, of the
published config's class and vocabulary, shrunk (d_model 16, one layer) because the embedding
matrices of these vocabularies are large.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizers"
REAL = {"flan-t5": "flan-t5", "qwen2.5": "qwen2.5-0.5b-instruct", "bart": "bart-large-cnn"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model", "vocab.json",
                   "merges.txt", "added_tokens.json")
# A snapshot revision: any 40 hex digits (huggingface_hub resolves refs/main to it).
REVISION = "0123456789abcdef0123456789abcdef01234567"

# The shapes of the published configs, shrunk; vocabularies and shape flags as published.
_SHRINK = {
    "flan-t5": {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4},
    "qwen2.5": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "max_window_layers": 1},
    # bart-large-cnn's published config has vocab_size 50,264 (the fixture's, from a fine-tune, was resized to 50,265).
    "bart": {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "vocab_size": 50264},
}


def tokenizer_dir(kind: str) -> Path:
    return FIXTURES / REAL[kind]


def copy_tokenizer(kind: str, out: Path, skip: tuple[str, ...] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = tokenizer_dir(kind) / name
        if src.is_file() and name not in skip:
            shutil.copyfile(src, out / name)
    return out


def real_model(kind: str, out: Path, seed: int = 0, skip: tuple[str, ...] = ()) -> Path:
    """``out``: the published tokenizer files of ``kind`` (less ``skip``) and a tiny random model of
    the published config's class (and the published generation_config.json where there is one)."""
    import transformers as tf

    src = tokenizer_dir(kind)
    values = {k: v for k, v in json.loads((src / "config.json").read_text()).items()
              if k not in ("_name_or_path", "transformers_version", "torch_dtype", "architectures")}
    values.update(_SHRINK[kind])
    config = tf.AutoConfig.for_model(**values)
    config.architectures = json.loads((src / "config.json").read_text())["architectures"]
    torch.manual_seed(seed)
    cls = tf.AutoModelForCausalLM if kind == "qwen2.5" else tf.AutoModelForSeq2SeqLM
    model = cls.from_config(config)
    model.save_pretrained(out)
    if (src / "generation_config.json").is_file():
        shutil.copyfile(src / "generation_config.json", out / "generation_config.json")
    if kind == "flan-t5":
        _untie(out, seed)
    copy_tokenizer(kind, out, skip)
    return out


def _untie(folder: Path, seed: int) -> None:
    """FLAN-T5's lm_head is not its embedding matrix (a T5 built from a config is tied)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    g = torch.Generator().manual_seed(seed)
    weights["lm_head.weight"] = torch.randn(weights["shared.weight"].shape, generator=g) * 0.05
    save_file(weights, path, metadata={"format": "pt"})


# ----------------------------------------------------------------------------- the cache


def _put_files(repo_dir: Path, files: dict[str, Path]) -> Path:
    """A repo in the hub cache as huggingface_hub writes it: blobs named by content hash, a
    snapshot of symlinks to them, refs/main naming the snapshot."""
    snapshot = repo_dir / "snapshots" / REVISION
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    for name, src in files.items():
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        blob = repo_dir / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(Path("../..") / ("../" * name.count("/")) / "blobs" / digest)
    return snapshot


def put_model(hub: Path, repo_id: str, folder: Path) -> Path:
    return _put_files(hub / f"models--{repo_id.replace('/', '--')}", {p.name: p for p in folder.iterdir() if p.is_file()})


# The hub datasets the configs name: their files, columns and id styles (a few rows each).
DATASETS = {
    "samsum": ("knkarthick/samsum", ("id", "dialogue", "summary")),
    "dialogsum": ("knkarthick/dialogsum", ("id", "dialogue", "summary", "topic")),
}


def dataset_rows(name: str, split: str, n: int = 6) -> list[dict]:
    """Rows in the hub dataset's layout. SAMSum: ids like 13728057-1 and plain numbers, line ends
    mixed ("\\r\\n" and "\\n"), edge whitespace, a few FLAN-T5 unknowns ("<", "{", emoji). DialogSum:
    #Person1#: turns; its test split holds each dialogue three times (ids test_<i>_1..3)."""
    from sumtune_demo.corpus import make_corpus

    base = make_corpus(seed=7 + len(split), sizes={"train": n, "validation": 0, "test": 0})["train"]
    rows = []
    for i, r in enumerate(base):
        if name == "samsum":
            dialogue = r["dialogue"].replace("\n", "\r\n") if i % 2 else r["dialogue"]
            if i % 3 == 0:
                dialogue += "\r\nAnna: <3 {see you} 😀"
            rows.append({"id": f"1372{i:04d}-{i % 3 + 1}" if i % 2 else f"1381{i:04d}", "dialogue": dialogue,
                         "summary": r["summary"] + (" \n" if i % 2 else "")})
        else:
            dialogue = "\n".join(f"#Person{j % 2 + 1}#: {line.split(': ', 1)[-1]}"
                                 for j, line in enumerate(r["dialogue"].splitlines()))
            refs = [r["summary"], r["summary"] + " They agree.", "#Person1# and #Person2# talk."] if split == "test" \
                else [r["summary"]]
            for k, ref in enumerate(refs, start=1):
                rid = f"{split}_{i}_{k}" if split == "test" else f"{split}_{i}"
                rows.append({"id": rid, "dialogue": dialogue, "summary": ref, "topic": "plans"})
    return rows


def put_dataset(hub: Path, datasets_cache: Path, name: str, work: Path, n: int = 6) -> None:
    """The dataset as `load_dataset(repo_id)` on a node with network access leaves it: the hub's
    CSV files in the hub cache, and the prepared Arrow files in the datasets cache
    (``<namespace>___<name>/default/0.0.0/<revision>/``), which is what `datasets` 5.2 reads with
    HF_HUB_OFFLINE=1 (its CachedDatasetModuleFactory; the hub cache alone is not consulted
    offline). Built with datasets' own CSV builder, configured as for a hub repository."""
    import csv

    from datasets.data_files import DataFilesDict
    from datasets.load import configure_builder_class
    from datasets.packaged_modules.csv.csv import Csv, CsvConfig

    repo_id, columns = DATASETS[name]
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "validation", "test"):
        path = work / f"{split}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(dataset_rows(name, split, n))
        files[f"{split}.csv"] = path
    snapshot = _put_files(hub / f"datasets--{repo_id.replace('/', '--')}", files)
    data_files = DataFilesDict.from_patterns({s: [str(snapshot / f"{s}.csv")] for s in ("train", "validation", "test")},
                                             base_path=str(snapshot))
    builder_cls = configure_builder_class(Csv, [CsvConfig(name="default", data_files=data_files)], None,
                                          dataset_name=name)
    # Prepared from the snapshot's local files (a builder given a repo_id wants hf:// paths, which
    # would need the hub), then moved where a download for ``repo_id`` puts it.
    scratch = work / "prepared"
    builder = builder_cls(cache_dir=str(scratch), dataset_name=name, hash=REVISION, base_path=str(snapshot))
    builder.download_and_prepare()
    target = datasets_cache / f"{repo_id.split('/')[0]}___{name}" / "default" / "0.0.0"
    target.mkdir(parents=True, exist_ok=True)
    shutil.move(str(scratch / name / "default" / "0.0.0" / REVISION), str(target / REVISION))


def hub_cache(root: Path, models: dict[str, Path], datasets: tuple[str, ...] = ()) -> dict[str, str]:
    """A Hugging Face cache under ``root`` holding ``models`` (hub id -> model folder) and the hub
    ``datasets``; returns the environment that points a run at it, offline."""
    home = root / "hf"
    hub, datasets_cache = home / "hub", home / "datasets"
    for repo_id, folder in models.items():
        put_model(hub, repo_id, folder)
    for name in datasets:
        put_dataset(hub, datasets_cache, name, root / "csv" / name)
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(hub), "HF_DATASETS_CACHE": str(datasets_cache),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
