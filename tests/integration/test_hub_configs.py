"""Every shipped training config whose model's tokenizer is among the test fixtures trains 2 steps
and evaluates offline, by its hub ids: model.name_or_path and data.source are NOT overridden.

As docs/scale-out.md tells SLURM users: a Hugging Face cache filled beforehand (here laid out as a
download leaves it: the published tokenizer files, a tiny random model of the published config's
class, the hub dataset's files, columns and prepared Arrow cache), and HF_HUB_OFFLINE=1.
"""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, read_jsonl, two_at_a_time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hubcache  # noqa: E402

# Hub id -> the fixture tokenizer it ships (FLAN-T5 base and large share theirs; bart-large and
# bart-large-cnn share BART's vocabulary; Qwen2.5 base and Instruct share Qwen2.5's).
FIXTURE_OF = {"google/flan-t5-base": "flan-t5", "google/flan-t5-large": "flan-t5", "facebook/bart-large": "bart",
              "Qwen/Qwen2.5-1.5B": "qwen2.5"}
# BART laid out without tokenizer_config.json: its tokenizer loads with model_max_length 1e30 (sumtune's limits apply).
SKIP_FILES = {"facebook/bart-large": ("tokenizer_config.json",)}


def _configs() -> list[Path]:
    return sorted(p for p in (REPO / "configs" / "train").glob("*.yaml")
                  if yaml.safe_load(p.read_text()).get("model", {}).get("name_or_path") in FIXTURE_OF)


CONFIGS = _configs()


def test_the_configs_with_fixture_tokenizers_are_all_here():
    names = {p.stem for p in CONFIGS}
    assert {"flan_t5_base_full_samsum", "flan_t5_base_lora_dialogsum", "flan_t5_large_lora_dialogsum",
            "bart_large_full_samsum", "qwen2_5_1_5b_lora_samsum"} <= names, names


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    built = {}
    for hub_id, kind in FIXTURE_OF.items():
        built[hub_id] = hubcache.real_model(kind, root / "models" / hub_id.replace("/", "--"),
                                            skip=SKIP_FILES.get(hub_id, ()))
    return root, hubcache.hub_cache(root, built, datasets=("samsum", "dialogsum"))


def _run(script: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    import os

    full = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


SMALL = ["train.max_steps=2", "train.per_device_batch_size=2", "train.log_every=1", "train.eval_max_batches=1",
         "data.max_train_examples=4", "data.max_eval_examples=9", "generation.max_new_tokens=8", "generation.batch_size=4",
         "tracker.backend=none"]


def _train_and_evaluate(config: Path, env: dict, tmp: Path) -> tuple:
    """train/finetune.py with the shipped config, then eval/evaluate.py on its hub id and the run."""
    hub_id = yaml.safe_load(config.read_text())["model"]["name_or_path"]
    train = _run("train/finetune.py", ["--config", str(config), "run_name=run", f"output_dir={tmp}", *SMALL], env, tmp)
    evaluated = _run("eval/evaluate.py", ["--config", str(config), "--out", str(tmp / "eval"), "--candidate",
                                          f"base={hub_id}", "--candidate", f"trained={tmp / 'run'}", *SMALL], env, tmp)
    return train, evaluated


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory):
    """Every config trained and evaluated by its own script runs, two configs at a time (each run is
    one process on one thread): config -> (its folder, a Future of (train, evaluate))."""
    _, env = cache
    folders = {config: tmp_path_factory.mktemp(config.stem) for config in CONFIGS}
    futures = two_at_a_time({config: functools.partial(_train_and_evaluate, config, env, folder)
                             for config, folder in folders.items()})
    return {config: (folders[config], futures[config]) for config in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_trains_and_evaluates_offline_by_its_hub_ids(config, runs):
    tmp_path, future = runs[config]
    shipped = yaml.safe_load(config.read_text())
    hub_id, source = shipped["model"]["name_or_path"], shipped["data"]["source"]
    train, _ = future.result()
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "sumtune_config.yaml").read_text())
    assert (saved["model"]["name_or_path"], saved["data"]["source"]) == (hub_id, source)
    assert json.loads((run / "metrics.json").read_text())["step"] == 2
    # What the real tokenizer does to the data is reported at start-up, per split.
    assert "train: 4 examples" in train.stdout and "<unk>" in train.stdout and "tokenizer: " in train.stdout
    if source == "samsum":  # its rows mix \r\n and \n and carry edge whitespace: normalised, and counted
        assert "normalised: " in train.stdout and "line ends made" in train.stdout
    frame = (run / "prompt_example.txt").read_text()
    assert "{dialogue}" not in frame and "Summarize" in frame

    out = tmp_path / "eval"
    rows = read_jsonl(out / "trained" / "predictions.jsonl")
    metrics = json.loads((out / "trained" / "metrics.json").read_text())
    if source == "dialogsum":  # 9 rows of the test split: 3 dialogues x 3 references, generated once each
        assert [r["id"] for r in rows] == ["test_0", "test_1", "test_2"]
        assert all(len(r["references"]) == 3 for r in rows)
        assert (metrics["examples"], metrics["rows"]) == (3, 9)
        assert "multi-reference score" in (out / "comparison.md").read_text()
    else:
        assert len(rows) == 6 and all(len(r["references"]) == 1 for r in rows)
        # Two of the six SAMSum rows hold "<3 {see you} 😀": <unk> for FLAN-T5; byte-level BPE knows every character.
        assert metrics["prompts_with_unk"] == {"flan-t5": 2, "bart": 0, "qwen2.5": None}[FIXTURE_OF[hub_id]]
        assert all("\r" not in r["dialogue"] and r["references"][0] == r["references"][0].strip() for r in rows)
    assert metrics["family"] == ("causal" if hub_id.startswith("Qwen") else "seq2seq")
