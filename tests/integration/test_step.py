"""The training step as launched: every target token of an optimizer step weighs the same, however
the step is cut (one process with batch 8 = 4 x 2 accumulation = 2 processes x 4 under DDP, ZeRO-2
and ZeRO-3), for a decoder-only model (T5: test_scale.py); packed rows (decoder-only and T5) give
the same training under DDP and ZeRO-3 as one process, and a packed run killed mid-way resumes
exactly. Demo data: summaries of unequal lengths; dropout off; fp32 CPU; random batches, so that
each step sees the same examples whatever the cut.
"""

import functools
from pathlib import Path

import pytest
from helpers import DEEPSPEED_ON_CPU, check, kill_when, launch, read_jsonl, run_overrides, two_at_a_time

TOL = 1e-5
# name -> (accelerate config, launcher args, per-device batch, accumulation)
CUTS = {
    "batch8": ("cpu_1proc.yaml", (), 8, 1),
    "accum": ("cpu_1proc.yaml", (), 4, 2),
    "ddp": ("cpu_2proc.yaml", (), 4, 1),
    "zero2": ("deepspeed_zero2.yaml", DEEPSPEED_ON_CPU, 4, 1),
    "zero3": ("deepspeed_zero3.yaml", DEEPSPEED_ON_CPU, 4, 1),
}


def run(demo, tmp: Path, name: str, cut: str, model: str, *extra: str, steps: int = 4, method: str = "full") -> Path:
    config, launcher, args = launch_args(demo, tmp, name, cut, model, *extra, steps=steps, method=method)
    check(launch("train/finetune.py", *args, config=config, launcher_args=launcher))
    return tmp / name


def launch_args(demo, tmp: Path, name: str, cut: str, model: str, *extra: str, steps: int = 4,
                method: str = "full") -> tuple[str, tuple, list[str]]:
    config, launcher, batch, accum = CUTS[cut]
    overrides = [o for o in run_overrides(demo, tmp, name, method, steps=steps, model=model)
                 if not o.startswith(("train.log_every", "train.per_device", "train.eval_every", "train.lr"))]
    # lr 1e-4: Adam turns reduction-order noise in near-zero gradients into weight differences of
    # up to about lr per step (see test_scale.py).
    overrides += ["train.lr=1e-4", f"train.per_device_batch_size={batch}", f"train.grad_accum={accum}",
                  "train.log_every=1", "train.dropout=0.0", "model.lora.dropout=0.0", "train.eval_every=0",
                  "tracker.backend=none", "train.batching=random", *extra]
    return config, launcher, overrides


def logged(folder: Path, key: str) -> list[float]:
    return [r[key] for r in read_jsonl(folder / "train_log.jsonl") if key in r]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(folder / name)


def same_training(a: Path, b: Path, steps: int) -> None:
    assert len(logged(a, "loss")) == steps
    assert logged(b, "loss") == pytest.approx(logged(a, "loss"), abs=TOL)
    assert logged(b, "grad_norm") == pytest.approx(logged(a, "grad_norm"), rel=TOL)
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for key in wa:
        assert wb[key].numel() > 0 and (wa[key] - wb[key]).abs().max().item() < TOL, key


PACKED = ("train.batching=packed", "train.max_tokens=480")
# The killed packed run and its uninterrupted twin: T5, 2 processes under DDP, dropout ON.
KILLED_STEPS = 12
KILLED_EXTRA = (*PACKED, "train.dropout=0.1", "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.log_every=2")


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """Every run this module compares (each in a folder of its own, under the name it had when each
    test launched its own), two at a time: a one-process run leaves a core idle, and a two-process
    launch spends part of its time in one process (the launcher starting, rank 0 saving).
    key -> a Future of its run folder."""
    def job(key: str, name: str, cut: str, model: str, *extra: str, steps: int = 4, method: str = "full"):
        return functools.partial(run, demo, tmp_path_factory.mktemp(key), name, cut, model, *extra, steps=steps,
                                 method=method)

    lora = (*PACKED, "model.lora.r=4")
    return two_at_a_time({
        "causal-batch8": job("causal-batch8", "batch8", "batch8", "causal"),
        **{f"causal-{cut}": job(f"causal-{cut}", cut, cut, "causal") for cut in ("accum", "ddp", "zero2", "zero3")},
        "causal-zero3-chunked": job("causal-zero3-chunked", "zero3-chunked", "zero3", "causal", "train.loss=chunked",
                                    "train.chunk_size=16"),
        **{f"packed-{model}-accum": job(f"packed-{model}-accum", "accum", "accum", model, *PACKED) for model in ("model", "causal")},
        **{f"packed-{model}-ddp": job(f"packed-{model}-ddp", "ddp", "ddp", model, *PACKED) for model in ("model", "causal")},
        # ZeRO-3 with the chunked loss (T5's untied head)
        **{f"packed-{model}-zero3": job(f"packed-{model}-zero3", "zero3", "zero3", model, *PACKED, "train.loss=chunked")
           for model in ("model", "causal")},
        "packed-lora-accum": job("packed-lora-accum", "accum", "accum", "causal", *lora, method="lora"),
        "packed-lora-zero2": job("packed-lora-zero2", "zero2", "zero2", "causal", *lora, method="lora"),
        "packed-straight": job("packed-straight", "straight", "ddp", "model", *KILLED_EXTRA, steps=KILLED_STEPS),
    })


@pytest.fixture(scope="module")
def causal_batch8(runs):
    return runs["causal-batch8"].result()


@pytest.mark.parametrize("cut", ["accum", "ddp", "zero2", "zero3"])
def test_decoder_only_steps_weigh_every_token_alike_however_cut(cut, causal_batch8, runs):
    same_training(causal_batch8, runs[f"causal-{cut}"].result(), steps=4)


def test_the_chunked_loss_under_zero3_trains_as_the_plain_loss_in_one_process(causal_batch8, runs):
    """Under ZeRO-3 the output layer's weight is a shard outside its module's forward: the chunks
    call the layer itself, so DeepSpeed gathers it each time (and again when a chunk is recomputed
    in the backward pass)."""
    same_training(causal_batch8, runs["causal-zero3-chunked"].result(), steps=4)


def test_the_logged_loss_is_the_steps_token_mean(causal_batch8, demo):
    """Step 1's logged loss, recomputed here: the base model's summed token losses over the first
    8 examples the run drew, over their target tokens."""
    import torch

    from sumtune import data, families, models
    from sumtune.batching import Batching
    from sumtune.config import load_config

    ref = causal_batch8
    cfg = load_config(ref / "sumtune_config.yaml")
    family = families.resolve(demo["causal"])
    tok = models.load_tokenizer(demo["causal"], family=family)
    records, _ = data.load_split(cfg.data, "train")
    feats, _ = data.encode_records(records, tok, cfg.data, family)
    seam = Batching(data.example_lengths(feats, family), cfg.train, family, tok)
    batch = next(iter(seam.loader(feats, torch.Generator().manual_seed(cfg.train.seed))))
    model = family.load(demo["causal"])
    families.set_dropout(model, 0.0)
    with torch.no_grad():
        total, tokens = family.loss(model, batch)
    assert logged(ref, "loss")[0] == pytest.approx(total.item() / tokens.item(), abs=1e-5)


@pytest.mark.parametrize("model", ["model", "causal"])
def test_packed_training_is_the_same_under_ddp_and_zero3_as_one_process(model, runs):
    ref = runs[f"packed-{model}-accum"].result()
    same_training(ref, runs[f"packed-{model}-ddp"].result(), steps=4)
    # ZeRO-3 with the chunked loss (T5's untied head): still the plain, one-process training
    same_training(ref, runs[f"packed-{model}-zero3"].result(), steps=4)


def test_packed_lora_under_zero2_matches_one_process(runs):
    same_training(runs["packed-lora-accum"].result(), runs["packed-lora-zero2"].result(), steps=4)


def test_a_killed_packed_run_resumes_exactly(demo, runs, tmp_path):
    """T5, packed rows, 2 processes under DDP, dropout ON (the RNG states are restored)."""
    steps, extra = KILLED_STEPS, KILLED_EXTRA
    straight = runs["packed-straight"].result()
    _, _, args = launch_args(demo, tmp_path, "killed", "ddp", "model", *extra, steps=steps)
    kill_when(args, "cpu_2proc.yaml", tmp_path / "killed/checkpoints/step-000004")
    assert not (tmp_path / "killed/metrics.json").exists()
    check(launch("train/finetune.py", *args, "resume=auto", config="cpu_2proc.yaml"))
    killed = tmp_path / "killed"
    assert [r["step"] for r in read_jsonl(killed / "train_log.jsonl") if "loss" in r] == list(range(2, steps + 1, 2))
    assert logged(killed, "loss") == pytest.approx(logged(straight, "loss"), abs=1e-6)
    a, b = weights(straight), weights(killed)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
