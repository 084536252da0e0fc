"""Every adapter method under every multi-process topology it is offered for (the support matrix in
docs/models-and-methods.md): 2 processes x 4 examples under DDP, DeepSpeed ZeRO-2 and ZeRO-3 compute what ONE
process computes with 2 accumulation steps (losses and saved adapter within 1e-5, fp32 CPU, dropout
off), and the ZeRO-3 runs generate in lockstep for in-training ROUGE. AdaLoRA (refused under
DeepSpeed) runs under DDP, and a 2-process AdaLoRA run killed mid-way resumes exactly, its rank
budget's running scores included.
"""

import functools
import json
import sys
from concurrent.futures import wait
from pathlib import Path

import pytest
import torch
from helpers import DEEPSPEED_ON_CPU, REPO, check, launch, read_jsonl, run_into_fault, two_at_a_time

sys.path.insert(0, str(REPO / "tests"))
import zoo  # noqa: E402

TOL = 1e-5
TOPOLOGIES = ("cpu_2proc.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml")
# cell -> (model.method, the variant's overrides); each runs under every topology in TOPOLOGIES.
CELLS = {
    # LoRA with PiSSA's start (the base changed, the saved adapter converted), rsLoRA and LoRA+'s
    # parameter groups; OLoRA's start; plain LoRA under every topology: test_scale.py and test_train_eval.py.
    "lora-pissa-rslora-loraplus": ("lora", ("model.lora.init=pissa", "model.lora.rslora=true",
                                            "model.lora.loraplus_lr_ratio=4")),
    "lora-olora": ("lora", ("model.lora.init=olora",)),
    "dora": ("dora", ()),
    "ia3": ("ia3", ()),
    "loha": ("loha", ()),
    "lokr": ("lokr", ()),
    "vera": ("vera", ()),
    "prompt": ("prompt", ()),
}
SMALL = ["model.lora.r=4", "model.lora.dropout=0.0", "model.adalora.init_r=6", "model.adalora.target_r=3",
         "model.adalora.dropout=0.0", "model.adalora.delta_t=1", "model.adalora.prune_start=0.25",
         "model.adalora.prune_end=0.75", "model.loha.r=4", "model.lokr.r=4", "model.vera.r=16",
         "model.prompt.virtual_tokens=4"]


@pytest.fixture(scope="module")
def t5(zoo_build, tmp_path_factory):
    return {"t5": zoo_build["t5"], "data": zoo.write_data(tmp_path_factory.mktemp("data"), sizes=(32, 8, 8))}


def overrides(t5, out: Path, name: str, method: str, steps: int, *extra: str) -> list[str]:
    d = t5["data"]
    # lr 1e-4: Adam turns reduction-order noise in near-zero gradients into weight differences of up
    # to about lr per step, which must stay inside the tolerance (see test_scale.py).
    return [f"run_name={name}", f"output_dir={out}", f"model.name_or_path={t5['t5']}", f"model.method={method}",
            "data.source=local", f"data.files={{train: {d}/train.jsonl, validation: {d}/validation.jsonl, test: {d}/test.jsonl}}",
            "data.max_source_length=128", "data.max_target_length=32", "data.max_eval_examples=4",
            f"train.max_steps={steps}", "train.per_device_batch_size=4", "train.log_every=1", "train.lr=1e-4",
            "train.warmup_steps=0", "train.dropout=0.0", "generation.max_new_tokens=6", "generation.batch_size=4",
            "tracker.backend=none", *SMALL, *extra]


def one_process(args: list[str]) -> None:
    """The reference, in this process: the same recipe, one process, 2 accumulation steps."""
    from sumtune.config import load_config
    from sumtune.recipes.finetune import run

    run(load_config(None, [*args, "train.grad_accum=2"]))


def two_processes(args: list[str], config: str):
    launcher = DEEPSPEED_ON_CPU if "deepspeed" in config else ()
    return check(launch("train/finetune.py", *args, config=config, launcher_args=launcher))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter_model.safetensors"))


def assert_same(run: Path, ref: Path) -> None:
    assert losses(run) == pytest.approx(losses(ref), abs=TOL)
    a, b = adapter(ref), adapter(run)
    assert set(a) == set(b)
    for key in a:
        assert b[key].numel() == a[key].numel() > 0, f"{key} saved empty or reshaped"
        assert (a[key] - b[key]).abs().max().item() < TOL, key


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_method_under_ddp_zero2_and_zero3_computes_what_one_process_computes(cell, t5, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForSeq2SeqLM

    from sumtune import methods, models
    from sumtune.config import load_config

    method, extra = CELLS[cell]

    def rouge(config: str) -> list[str]:
        # ZeRO-3 also generates (every rank in lockstep); prompt tuning is refused that (methods.check).
        return ["train.rouge_every=3", "train.rouge_examples=4"] if "zero3" in config and method != "prompt" else []

    # The three launches (each run in a folder of its own) two at a time, the reference meanwhile
    # in this process: a launch spends part of its time in one process (the launcher starting,
    # rank 0 saving), and none of these runs reads another's files.
    launches = two_at_a_time({config: functools.partial(two_processes, overrides(t5, tmp_path, config.removesuffix(".yaml"),
                                                                                 method, 3, *extra, *rouge(config)), config)
                              for config in TOPOLOGIES})
    try:
        one_process(overrides(t5, tmp_path, "one", method, 3, *extra))
        ref = tmp_path / "one"
        # The reference moved the adapter by far more than the tolerance: the comparison means something.
        cfg = load_config(ref / "sumtune_config.yaml")
        family = models.model_family(cfg.model.name_or_path)
        from accelerate.utils import set_seed

        set_seed(cfg.train.seed)
        start = get_peft_model_state_dict(methods.wrap(models.load_model(cfg.model.name_or_path, family=family),
                                                       cfg.model, family, 3))
        trained = adapter(ref)
        # (PiSSA's saved adapter is converted to rank 2r: its first r rows of A, columns of B, are the trained ones.)
        moved = [(trained[k][: v.shape[0], : v.shape[1]] if v.ndim == 2 else trained[k]) - v for k, v in start.items()]
        assert max(d.abs().max().item() for d in moved) > 10 * TOL
        for config in TOPOLOGIES:
            proc = launches[config].result()
            assert "DistributedType.DEEPSPEED" in proc.stdout if "deepspeed" in config else "MULTI_CPU" in proc.stdout
            run = tmp_path / config.removesuffix(".yaml")
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["world_size"] == 2 and metrics["method"] == method
            assert_same(run, ref)
            if rouge(config):  # the in-training ROUGE under ZeRO-3 saved a best/
                assert metrics["best_step"] == 3 and (run / "best/adapter_model.safetensors").is_file()
    finally:
        wait(launches.values())  # none left running into the next test
    # The adapter saved under ZeRO-3 is a plain peft folder, and merges into what base + adapter computes.
    zero3 = tmp_path / "deepspeed_zero3"
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(t5["t5"]), str(zero3)).eval()
    inputs = {"input_ids": torch.tensor([[4, 5, 6, 7, 8, 1]] * 2), "decoder_input_ids": torch.tensor([[0, 9, 10]] * 2)}
    if methods.METHODS[method].mergeable:
        from sumtune.export import export

        export(zero3, tmp_path / "merged")
        merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
        with torch.no_grad():
            assert (loaded(**inputs).logits - merged(**inputs).logits).abs().max().item() < 1e-5


def test_adalora_under_ddp_computes_what_one_process_computes_and_resumes_exactly_after_a_kill(t5, tmp_path):
    """Killed inside step 5 of 8 (after the optimizer step, before the budget update is logged or
    checkpointed): resume=auto from the step-4 checkpoint ends with the losses, the adapter and the
    rank pattern of the run never interrupted."""
    # The uninterrupted run launched beside the reference and the killed run (folders of their own).
    straight_run = two_at_a_time({"straight": functools.partial(
        launch, "train/finetune.py", *overrides(t5, tmp_path, "straight", "adalora", 8), "train.checkpoint_every=2")})
    try:
        one_process(overrides(t5, tmp_path, "one", "adalora", 8))
        killed = [*overrides(t5, tmp_path, "killed", "adalora", 8), "train.checkpoint_every=2"]
        run_into_fault(killed, "step:5", tmp_path / "pids")
        proc = check(launch("train/finetune.py", *killed, "resume=auto"))
        check(straight_run["straight"].result())
    finally:
        wait(straight_run.values())
    assert_same(tmp_path / "straight", tmp_path / "one")
    assert "at step 4" in proc.stdout
    straight, resumed = tmp_path / "straight", tmp_path / "killed"
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-6)
    a, b = adapter(straight), adapter(resumed)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    patterns = [json.loads((r / "adapter_config.json").read_text())["rank_pattern"] for r in (straight, resumed)]
    assert patterns[0] and patterns[0] == patterns[1]
