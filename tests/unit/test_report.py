"""eval/report.py's library (sumtune.report) on run folders built here: a full fine-tune really
trained for a few steps, a LoRA and an IA3 adapter saved with save_pretrained, an evaluation folder
written by sumtune.compare. Each statistic the report writes is recomputed from the saved tensors."""

import csv
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

from sumtune import compare  # noqa: E402
from sumtune.config import dump_yaml, from_dict  # noqa: E402
from sumtune.errors import SumtuneError  # noqa: E402
from sumtune.prompts import format_prompt  # noqa: E402
from sumtune.report import build  # noqa: E402
from sumtune.report.weights import MatrixChange, grid, split_name  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
LORA_TARGETS = ["q", "v", "wi_0", "wo"]


def _config(root: Path, name: str, method: str, base: Path) -> dict:
    files = {s: str(root / "data" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    return {"run_name": name, "output_dir": str(root / "runs"),
            "model": {"name_or_path": str(base), "method": method, "lora": {"r": 4, "alpha": 8}},
            "data": {"source": "local", "files": files, "max_source_length": 96, "max_target_length": 24},
            "train": {"lr": 1e-2, "max_steps": 4, "per_device_batch_size": 8, "log_every": 1, "eval_every": 2,
                      "eval_max_batches": 1, "rouge_every": 2, "rouge_examples": 2, "dropout": 0.0},
            "generation": {"max_new_tokens": 4}, "tracker": {"backend": "none", "group": "inspect-group-7"}}


def _adapter_run(root: Path, name: str, base: Path, peft_config, seed: int) -> Path:
    """An adapter folder as training leaves it, its trainable weights drawn at random (LoRA's B
    starts at zero, which would make every update 0)."""
    from peft import get_peft_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = root / "runs" / name
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(base), peft_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if "lora_B" in pname else 1.0) + ("ia3" in pname))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    cfg = from_dict(_config(root, name, "lora", base))
    (folder / "sumtune_config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    return folder


def _eval_folder(root: Path) -> Path:
    """What eval/evaluate.py --out writes, for three candidates of made-up predictions."""
    out = root / "eval"
    rows = [json.loads(line) for line in (root / "data" / "test.jsonl").read_text().splitlines()]
    make = {"zero": lambda r: r["dialogue"].split("\n")[0], "lora": lambda r: " ".join(r["summary"].split()[:5]),
            "full": lambda r: r["summary"]}
    results = []
    for name, predict in make.items():
        records = [{"id": r["id"], "dialogue": r["dialogue"], "reference": r["summary"], "prediction": predict(r)}
                   for r in rows]
        results.append(compare.Result(name, records))
        (out / name).mkdir(parents=True)
        (out / name / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / name / "metrics.json").write_text(json.dumps({**results[-1].means, "split": "test"}))
    compare.write(out, results, compare.compare(results, split="test"))
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from peft import LoraConfig, PromptTuningConfig

    from sumtune.recipes import finetune

    root = tmp_path_factory.mktemp("report")
    base = zoo.build_zoo(root / "zoo", archs=("t5",))["t5"]
    zoo.write_data(root / "data", sizes=(32, 8, 8))
    finetune.run(from_dict(_config(root, "full", "full", base)))  # a real, short training: a real train_log.jsonl
    lora = _adapter_run(root, "lora", base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS), seed=1)
    shutil.copy(root / "runs/full/train_log.jsonl", lora / "train_log.jsonl")
    prompt = _adapter_run(root, "prompt", base, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4),
                          seed=2)
    return {"root": root, "base": base, "full": root / "runs/full", "lora": lora, "prompt": prompt,
            "eval": _eval_folder(root)}


@pytest.fixture(scope="module")
def report(folders):
    out = folders["root"] / "report"
    page = build([folders["lora"], folders["full"], folders["prompt"], folders["eval"]], out,
                 overrides=["tracker.backend=wandb", "tracker.mode=offline"])
    return {"out": out, "page": page, "manifest": json.loads((out / "report.json").read_text())}


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def _close(a: float, b: float, tol: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def test_lora_update_norms_and_ranks_match_scale_b_at_a_from_the_saved_tensors(folders, report):
    adapter = load_file(folders["lora"] / "adapter_model.safetensors")
    settings = json.loads((folders["lora"] / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    base = load_file(folders["base"] / "model.safetensors")
    rows = _csv(report["out"] / "lora" / "weight_change.csv")
    names = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight") for k in adapter if "lora_A" in k}
    assert {r["name"] for r in rows} == names and len(names) == 2 * 4 + 2 * 6  # decoders: q, v twice
    for r in rows:
        a = adapter[f"base_model.model.{r['name']}.lora_A.weight"].double()
        b = adapter[f"base_model.model.{r['name']}.lora_B.weight"].double()
        delta, w = scale * b @ a, base[f"{r['name']}.weight"].double()
        s = torch.linalg.svdvals(delta)
        p = s[s > 0] / s[s > 0].sum()
        assert _close(float(r["delta_norm"]), float(torch.linalg.norm(delta)))
        assert _close(float(r["base_norm"]), float(torch.linalg.norm(w)))
        assert _close(float(r["relative"]), float(torch.linalg.norm(delta) / torch.linalg.norm(w)))
        assert _close(float(r["effective_rank"]), float(torch.exp(-(p * p.log()).sum())), 1e-4)
        assert 1 <= float(r["effective_rank"]) <= 4  # at most r for a rank-4 update
    spectra = json.loads((report["out"] / "lora" / "spectrum.json").read_text())
    assert sorted(len(v) for v in spectra.values()) == [4] * len(names)  # rank r exactly: the round-off is left out
    layers = {r["layer"] for r in rows}
    assert layers == {"encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"}
    assert {r["module"] for r in rows} >= {"layer.SelfAttention.q", "layer.EncDecAttention.q", "layer.DenseReluDense.wo"}


def test_full_fine_tuning_change_of_every_matrix_and_the_embedding_shift_match_the_two_checkpoints(folders, report):
    before = load_file(folders["base"] / "model.safetensors")
    after = load_file(folders["full"] / "model.safetensors")
    rows = _csv(report["out"] / "full" / "weight_change.csv")
    matrices = {k.removesuffix(".weight") for k, v in after.items() if v.ndim == 2}
    assert {r["name"] for r in rows} <= matrices
    assert {r["name"] for r in rows if r["layer"]} == {k for k in matrices if any(p.isdigit() for p in k.split("."))}
    for r in rows:
        w0, w1 = before[f"{r['name']}.weight"].double(), after[f"{r['name']}.weight"].double()
        assert _close(float(r["delta_norm"]), float(torch.linalg.norm(w1 - w0)))
        assert _close(float(r["relative"]), float(torch.linalg.norm(w1 - w0) / torch.linalg.norm(w0)))
    assert all(float(r["relative"]) > 0 for r in rows if "layer_norm" not in r["name"])  # it trained
    emb = _csv(report["out"] / "full" / "embeddings.csv")
    e0, e1 = before["shared.weight"].double(), after["shared.weight"].double()
    shift = torch.linalg.norm(e1 - e0, dim=1)
    assert len(emb) == e0.shape[0]
    for r in emb:
        i = int(r["token_id"])
        assert _close(float(r["shift"]), float(shift[i]))
        assert _close(float(r["norm_before"]), float(torch.linalg.norm(e0[i])))
    # Token frequencies: the training prompts and summaries through the run's tokenizer, counted here again.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folders["full"])
    train = [json.loads(line) for line in (folders["root"] / "data/train.jsonl").read_text().splitlines()]
    texts = [format_prompt("seed", r["dialogue"]) for r in train] + [r["summary"] for r in train]
    counts = np.bincount(np.concatenate([tok(t, add_special_tokens=False)["input_ids"] for t in texts]),
                         minlength=e0.shape[0])
    assert [int(r["frequency"]) for r in emb] == counts.tolist()
    pca = _csv(report["out"] / "full" / "embeddings_pca.csv")
    assert [int(r["token_id"]) for r in pca][:5] == np.argsort(-counts, kind="stable")[:5].tolist()


def test_methods_that_leave_embeddings_or_change_no_weight_say_so(folders, report):
    notes = report["manifest"]["inputs"]
    assert any("did not move" in n for n in notes["lora"]["notes"])
    assert not (report["out"] / "lora" / "embeddings.png").exists()
    assert notes["prompt"]["method"] == "PROMPT_TUNING"
    assert any("changes no weight of the model" in n for n in notes["prompt"]["notes"])
    assert not list((report["out"] / "prompt").glob("*.png"))
    html = report["page"].read_text()
    assert "changes no weight of the model" in html and "did not move" in html


def test_any_additive_peft_method_is_asked_for_its_own_update_and_ia3_gets_a_note(folders):
    """Through peft's get_delta_weight: DoRA's directional update is LoRA's scaling * B @ A (and a
    note says the magnitude is not in it); IA3 scales activations and adds nothing."""
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    from sumtune.report.weights import adapter_changes

    dora = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(folders["base"]),
                          LoraConfig(r=2, lora_alpha=6, target_modules=["o"], use_dora=True))
    torch.manual_seed(0)
    for layer in (m for m in dora.modules() if hasattr(m, "lora_B")):
        torch.nn.init.normal_(layer.lora_B["default"].weight)
    changes = adapter_changes(dora)
    assert changes.method == "LORA" and len(changes.matrices) == changes.adapted_layers == 6  # o: 2 + 2x2 attentions
    layer = dora.get_submodule("base_model.model.encoder.block.0.layer.0.SelfAttention.o")
    by_hand = 3.0 * layer.lora_B["default"].weight.detach() @ layer.lora_A["default"].weight.detach()
    got = next(m for m in changes.matrices if m.name == "encoder.block.0.layer.0.SelfAttention.o")
    assert _close(got.delta_norm, float(torch.linalg.norm(by_hand)))
    assert any("DoRA" in n for n in changes.notes)
    ia3 = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(folders["base"]),
                         IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"]))
    changes = adapter_changes(ia3)
    assert changes.method == "IA3" and changes.matrices == [] and changes.adapted_layers == 16
    assert changes.notes == ["16 adapted layers (Linear, IA3) add no update to their weight matrix (they scale "
                             "activations or replace rows), so they have no entry in the weight-change heatmap."]


def test_training_curves_overlay_both_logs_as_they_were_written(folders, report):
    rows = _csv(report["out"] / "training_curves.csv")
    for run in ("lora", "full"):
        log = [json.loads(line) for line in (folders[run] / "train_log.jsonl").read_text().splitlines()]
        losses = [(rec["step"], rec["loss"]) for rec in log if "loss" in rec]
        assert [(int(r["step"]), float(r["value"])) for r in rows if r["run"] == run and r["metric"] == "loss"] == losses
    assert {r["metric"] for r in rows} >= {"loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "val_rouge1"}


def test_evaluation_charts_plot_the_evaluations_own_intervals_and_lengths(folders, report):
    plotted = {(r["model"], r["metric"]): r for r in _csv(report["out"] / "eval" / "scores.csv")}
    written = _csv(folders["eval"] / "comparison_ci.csv")
    assert len(plotted) == len(written) == 12
    for w in written:
        p = plotted[(w["model"], w["metric"])]
        for key in ("mean", "ci_low", "ci_high", "gain_pp"):
            assert (p[key] == "" == w[key]) or _close(float(p[key]), float(w[key]))
    lengths = _csv(report["out"] / "eval" / "lengths.csv")
    preds = [json.loads(line) for line in (folders["eval"] / "lora/predictions.jsonl").read_text().splitlines()]
    assert [int(r["prediction_words"]) for r in lengths if r["candidate"] == "lora"] == [
        len(p["prediction"].split()) for p in preds]


def test_every_figure_is_a_real_png_of_its_size_referenced_by_the_page_and_logged_to_wandb(report):
    from base64 import b64encode

    from matplotlib.image import imread

    out, html = report["out"], report["page"].read_text()
    figures = report["manifest"]["figures"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if "wandb" not in p.parts)
    assert sorted(f["file"] for f in figures) == on_disk
    assert {"training_curves.png", "lora/weight_change.png", "lora/spectrum.png", "full/weight_change.png",
            "full/embeddings.png", "full/embeddings_pca.png", "eval/rouge.png", "eval/gain.png", "eval/lengths.png"} == set(on_disk)
    for f in figures:
        data = (out / f["file"]).read_bytes()
        assert data[:8] == PNG and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (f["width"], f["height"])
        pixels = imread(out / f["file"])
        assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01  # decodes, and is not blank
        assert f'href="{f["file"]}"' in html and b64encode(data).decode() in html  # linked and embedded
    sizes = {f["file"]: (f["width"], f["height"]) for f in figures}
    assert sizes["training_curves.png"] == (1500, 800) and sizes["full/embeddings.png"] == (1500, 440)
    (offline,) = list((out / "wandb").glob("offline-run-*"))
    assert len(list(offline.glob("files/media/images/**/*.png"))) == len(figures)
    assert b"inspect-group-7" in next(offline.glob("run-*.wandb")).read_bytes()  # the runs' own W&B group


def test_bad_folders_and_an_existing_report_are_one_line_and_nothing_is_overwritten(folders, report, tmp_path):
    with pytest.raises(SumtuneError, match="neither a training run folder"):
        build([folders["root"] / "data"], tmp_path / "r")
    with pytest.raises(SumtuneError, match="no such folder"):
        build([tmp_path / "missing"], tmp_path / "r")
    before = report["page"].read_bytes()
    with pytest.raises(SumtuneError, match="already holds a report; choose another --out or pass --overwrite"):
        build([folders["eval"]], report["out"])
    assert report["page"].read_bytes() == before
    proc = subprocess.run([sys.executable, str(REPO / "eval/report.py"), str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"sumtune: error: {tmp_path / 'missing'}: no such folder; give training run folders or evaluation folders"]


def test_layer_and_module_come_from_the_name_alone():
    assert split_name("decoder.block.1.layer.2.DenseReluDense.wo.weight") == ("decoder.block.1", "layer.DenseReluDense.wo")
    assert split_name("model.layers.11.self_attn.q_proj") == ("model.layers.11", "self_attn.q_proj")
    assert split_name("shared.weight") == ("", "shared")
    llama = [MatrixChange(f"model.layers.{i}.{m}", *split_name(f"model.layers.{i}.{m}"), 4, 4, 1.0 + i, 2.0)
             for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")]
    values, rows, cols, prefix = grid(llama + [MatrixChange("lm_head", "", "lm_head", 4, 4, 9.0, 1.0)], lambda m: m.delta_norm)
    assert (rows, cols, prefix, values) == (["0", "1"], ["self_attn.q_proj", "mlp.down_proj"], "model.layers",
                                            [[1.0, 1.0], [2.0, 2.0]])


def test_a_merged_export_is_compared_with_the_base_it_was_merged_into(folders, tmp_path):
    from sumtune.export import export
    from sumtune.report.build import inspect_run

    merged = tmp_path / "merged"
    export(folders["lora"], merged)  # its config names the export itself as the model
    section, summary = inspect_run(merged, "merged", tmp_path / "out")
    assert summary["base"] == str(folders["base"]) and summary["method"] == "full"
    assert section.intro == f"{merged}: a merged lora adapter on {folders['base']}."
    # Against the base, the LoRA update shows; against itself every change would be 0.
    assert summary["max_relative_change"] > 1e-3
