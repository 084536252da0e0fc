"""Merge a trained adapter into its base and write a plain transformers model folder.

    export(Path("outputs/demo-lora"), Path("outputs/demo-lora-merged"))

The folder holds the merged weights (safetensors), the tokenizer, a generation config with the run's
generation settings (so a plain ``model.generate`` decodes as sumtune's evaluation did), a
``sumtune_config.yaml`` that describes it as a full model (evaluation and the inference CLI take it
as a candidate, prompted with the run's template), and ``export.json`` (where it came from). Only
methods whose update lives in the weights can be merged: prompt learning is refused in one line.

An adapter trained on an 8- or 4-bit base is merged into the FULL-PRECISION base: the result
computes base + adapter without the quantization error the training saw (said in export.json and
printed).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from sumtune import families, methods
from sumtune.checkpoints import CONFIG_FILE, swap_in
from sumtune.config import dump_yaml
from sumtune.errors import SumtuneError
from sumtune.runs import EXPORT_FILE, RunFolder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_exportable(run_dir: Path) -> methods.Method:
    """The adapter's method, or one line saying why ``run_dir`` cannot be merged."""
    run = RunFolder(run_dir)
    if not run_dir.is_dir() or run.kind != "adapter":
        if (run_dir / "config.json").is_file():
            raise SumtuneError(f"{run_dir} holds a full model already (no adapter to merge); use the folder as it is")
        raise SumtuneError(f"{run_dir}: no adapter_config.json; pass a run folder of an adapter method (its top level, "
                           "final/ or best/)")
    method = run.adapter_method()
    if not method.mergeable:
        raise SumtuneError(f"{run_dir}: a {method.name} adapter cannot be merged: {method.summary} change no weight of "
                           "the base; use the run folder itself (evaluation, eval/summarize.py and "
                           "PeftModel.from_pretrained all take it)")
    return method


def export(run_dir: Path, out: Path, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Merge ``run_dir``'s adapter into its base and write the model to ``out``; returns export.json's
    content. Nothing in ``out`` is replaced unless ``overwrite``."""
    run_dir, out = Path(run_dir), Path(out)
    method = check_exportable(run_dir)
    if dtype not in DTYPES:
        raise SumtuneError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SumtuneError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise SumtuneError(f"--out {out} lies inside the run folder {run_dir}; write the merged model elsewhere")
    run = RunFolder(run_dir)
    cfg = run.config
    if cfg is None:
        raise SumtuneError(f"{run_dir}: no {CONFIG_FILE}; export takes a run folder written by train/finetune.py "
                           "(its top level, final/ or best/)")
    quantization = run.quantization
    # Always the full-precision base: a quantized base cannot take the merged weights exactly.
    model, tokenizer = run.load(cfg.model.trust_remote_code, quantization="none")
    family = families.of_model(model)
    model = model.float()
    merged = model.merge_and_unload()
    merged.generation_config = family.generation_settings(merged, tokenizer, cfg.generation)
    merged = merged.to(DTYPES[dtype])

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # A full model at this path, prompted as the run was: what evaluation and inference read.
    as_full = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=str(out), method="full",
                                                                quantization="none"))
    (tmp / CONFIG_FILE).write_text(dump_yaml(as_full), encoding="utf-8")
    info = {
        "source": str(run_dir), "method": method.name, "base_model": run.base_model, "dtype": dtype,
        "trained_quantization": quantization,
        "note": (f"the adapter was trained on a {quantization} base and is merged into the full-precision base: this "
                 "model computes base + adapter without the quantization error seen in training"
                 if quantization != "none" else "base + adapter, merged"),
    }
    (tmp / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        swap_in(tmp, out)
    else:
        tmp.rename(out)
    return info
