"""Packed rows and the chunked loss, on every architecture of the zoo.

Packed: each example inside a packed row gets the per-token losses it gets alone (1e-5), and
changing one example of a row changes no other example's logits; what cannot be packed correctly
(BART, prompt tuning) is refused in one line. Chunked: the loss and its gradients equal the plain
loss (1e-5), T5's untied and tied heads and a LoRA-adapted head included. The batching seam:
best-fit decreasing rows within their budget, token-budget batches, and the step plan counting what
the strategy yields.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

from sumtune import families
from sumtune.batching import Batching, LengthGroupedBatches, PackedRows, pack_rows
from sumtune.config import DataConfig, TrainConfig
from sumtune.data import PadCollator, encode_records
from sumtune.engine import plan_steps
from sumtune.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

PACKABLE = ("llama", "qwen2", "mistral", "gemma", "phi", "t5")


@pytest.fixture(scope="module")
def built(zoo_build, tmp_path_factory):
    return {**zoo_build, "data": zoo.write_data(tmp_path_factory.mktemp("data"), sizes=(12, 2, 2))}


def load(built, arch: str):
    from transformers import AutoTokenizer

    family = families.resolve(str(built[arch]))
    model = family.load(str(built[arch]))
    families.set_dropout(model, 0.0)
    tok = family.prepare_tokenizer(AutoTokenizer.from_pretrained(built[arch]))
    return family, model, tok


def features(built, family, tok, n: int = 6) -> list[dict]:
    from sumtune.data import load_split

    cfg = DataConfig(source="local", files={"train": str(built["data"] / "train.jsonl")}, max_source_length=96,
                     max_target_length=24)
    records, _ = load_split(cfg, "train", n)
    return encode_records(records, tok, cfg, family)[0]


def example_losses(family, model, feats: list[dict]) -> list[torch.Tensor]:
    """Per-token losses of each example alone (a batch of one, no padding)."""
    out = []
    for f in feats:
        batch = PadCollator(0)([f])
        per_token, mask = family.token_losses(family.forward(model, batch).logits, batch["labels"])
        out.append(per_token[mask])
    return out


def packed_losses(family, model, feats: list[dict]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-token losses of each example inside one packed row, and the row's logits."""
    batch = family.packer()(feats)
    logits = family.forward(model, batch).logits
    per_token, mask = family.token_losses(logits, batch["labels"])
    flat = per_token[mask]
    counts = [(torch.tensor(f["labels"]) != -100).sum().item() for f in feats]
    if family.name == "causal":  # an example's first token is never a target
        counts = [c - (f["labels"][0] != -100) for c, f in zip(counts, feats)]
    return list(flat.split(counts)), logits


@pytest.mark.parametrize("arch", PACKABLE)
def test_each_example_in_a_packed_row_gets_the_losses_it_gets_alone(built, arch):
    family, model, tok = load(built, arch)
    model.eval()
    feats = features(built, family, tok, n=4)
    with torch.no_grad():
        alone = example_losses(family, model, feats)
        packed, _ = packed_losses(family, model, feats)
    assert [len(x) for x in packed] == [len(x) for x in alone]
    for a, p in zip(alone, packed):
        assert (a - p).abs().max().item() < 1e-5
    family.check_packing(model)  # the start-up probe agrees
    assert family.examples(family.packer()(feats)) == len(feats) == family.examples(PadCollator(0)(feats))


@pytest.mark.parametrize("arch", PACKABLE)
def test_changing_one_example_of_a_row_changes_no_other_examples_logits(built, arch):
    family, model, tok = load(built, arch)
    model.eval()
    feats = features(built, family, tok, n=3)
    changed = [dict(f) for f in feats]
    ids = list(changed[1]["input_ids"])
    ids[len(ids) // 2] = (ids[len(ids) // 2] + 7) % len(tok)
    changed[1]["input_ids"] = ids
    with torch.no_grad():
        before = family.packer()(feats)
        a = family.forward(model, before).logits
        b = family.forward(model, family.packer()(changed)).logits
    # rows of the decoder (T5: the summaries; decoder-only: the sequences) by example
    segments = before["decoder_segment_ids"][0] if "decoder_segment_ids" in before else torch.cat(
        [torch.full((len(f["input_ids"]),), k) for k, f in enumerate(feats)])
    for k in (0, 2):
        rows = segments == k
        assert (a[0, rows] - b[0, rows]).abs().max().item() < 1e-5, f"example {k} saw example 1's change"
    assert (a[0, segments == 1] - b[0, segments == 1]).abs().max().item() > 1e-4  # the change itself shows


def test_bart_and_prompt_tuning_are_refused_in_one_line(built):
    family, model, _ = load(built, "bart")
    with pytest.raises(ConfigError, match="BART's absolute positions") as err:
        family.check_packing(model)
    assert "\n" not in str(err.value)
    from peft import PromptTuningConfig, get_peft_model

    family, model, _ = load(built, "llama")
    peft = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ConfigError, match="prompt tuning"):
        family.check_packing(peft, peft.active_peft_config)


def test_an_attention_that_crosses_the_boundaries_fails_the_probe(built):
    """The probe is what refuses an architecture transformers cannot pack: a causal model given a
    mask (which turns the packed-sequence detection off) lets examples attend across."""
    family, model, _ = load(built, "llama")

    class Leaky(type(family)):
        def forward(self, model, batch):
            if "position_ids" in batch:
                ones = torch.ones_like(batch["input_ids"])
                return model(input_ids=batch["input_ids"], attention_mask=ones, position_ids=batch["position_ids"],
                             use_cache=False)
            return super().forward(model, batch)

    with pytest.raises(ConfigError, match="crosses the examples' boundaries"):
        Leaky(family.model_type).check_packing(model)


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch, variant", [("llama", "plain"), ("qwen2", "packed"), ("gemma", "plain"), ("t5", "untied"),
                                           ("t5", "tied"), ("t5", "packed"), ("bart", "plain"), ("llama", "lora-head")])
def test_the_chunked_loss_equals_the_plain_loss_with_its_gradients(built, arch, variant):
    family, model, tok = load(built, arch)
    if variant == "tied":  # T5 built tied: the decoder output is scaled before the head
        from transformers import T5ForConditionalGeneration

        config = model.config
        config.tie_word_embeddings = True
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(type(config)(**{**config.to_dict(), "tie_word_embeddings": True}))
        families.set_dropout(model, 0.0)
        assert model.lm_head.weight is model.shared.weight
    if variant == "lora-head":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0,
                                                 init_lora_weights="gaussian"))
    feats = features(built, family, tok, n=4)
    batch = family.packer()(feats) if variant == "packed" else PadCollator(0)(feats)
    results = []
    for chunk in (0, 5):
        model.zero_grad()
        total, tokens = family.loss(model, batch, chunk_size=chunk)
        (total / tokens).backward()
        results.append((total.item(), tokens.item(), grads(model)))
    (plain, n, g0), (chunked, m, g1) = results
    assert n == m == family.target_tokens(batch).item() > 5
    assert chunked == pytest.approx(plain, rel=1e-5)
    assert set(g0) == set(g1) and g0
    for name in g0:
        assert (g0[name] - g1[name]).abs().max().item() <= 1e-5 * max(1.0, g0[name].abs().max().item()), name
    if variant == "lora-head":
        assert any("lm_head" in n and "lora" in n for n in g1)


# ----------------------------------------------------------------------------- the seam


def test_best_fit_decreasing_fills_rows_within_the_budget_with_every_item_once():
    import random

    rng = random.Random(0)
    sizes = [rng.randint(5, 120) for _ in range(500)]
    rows = pack_rows(sizes, 256)
    assert sorted(i for r in rows for i in r) == list(range(500))
    assert all(sum(sizes[i] for i in r) <= 256 for r in rows)
    lower = -(-sum(sizes) // 256)
    assert len(rows) <= lower * 1.05 + 1  # best-fit decreasing is near the bound
    assert pack_rows([200, 100, 60, 56, 40], 256) == [[0, 3], [1, 2, 4]]  # 200+56; 100+60+40
    with pytest.raises(ValueError):
        pack_rows([300], 256)


def test_packed_rows_shuffle_per_epoch_longest_row_first_and_resume_by_generator_state():
    lengths = [(30 + (i * 7) % 50, 5 + i % 9) for i in range(200)]
    g = torch.Generator().manual_seed(3)
    sampler = PackedRows(lengths, 128, g)
    first, second = list(sampler), list(sampler)
    assert first != second and sorted(map(sorted, first)) == sorted(map(sorted, second))
    assert sampler.tokens(first[0]) == max(sampler.tokens(r) for r in first)
    assert all(sampler.tokens(r) <= 128 for r in first)


def test_token_budget_batches_stay_within_it_and_the_plan_counts_them():
    lengths = [(20 + (i * 37) % 300, 4 + i % 30) for i in range(300)]
    cfg = TrainConfig(per_device_batch_size=16, batching="grouped", max_tokens=1024, group_size=4, grad_accum=2,
                      epochs=3, seed=5)
    sampler = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(5), 4, max_tokens=1024)
    epochs = [sampler._draw(sampler.generator) for _ in range(3)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(300))
        assert all(len(b) <= 16 and len(b) * (max(lengths[i][0] for i in b) + max(lengths[i][1] for i in b)) <= 1024
                   for b in batches)
    seam = Batching(lengths, cfg, families.Seq2SeqFamily("t5"), tokenizer=type("T", (), {"pad_token_id": 0})())
    assert [seam.epoch_batches(e) for e in range(3)] == [len(b) for b in epochs]
    plan = plan_steps(300, 2, cfg, seam.epoch_batches)
    assert plan.total_steps == sum(math.ceil(math.ceil(len(b) / 2) / 2) for b in epochs)
    packed = TrainConfig(batching="packed", max_tokens=1024, grad_accum=1, epochs=2)
    seam = Batching(lengths, packed, families.Seq2SeqFamily("t5"), tokenizer=None)
    rows = len(PackedRows(lengths, 1024, torch.Generator()))
    assert plan_steps(300, 2, packed, seam.epoch_batches).total_steps == 2 * math.ceil(rows / 2)
    assert "packed" in seam.report() and "rows of at most 1024" in seam.report()


def test_validation_refuses_what_a_budget_cannot_mean():
    from sumtune.config import load_config

    with pytest.raises(ConfigError, match="train.max_tokens"):
        load_config(None, ["train.batching=packed"])
    with pytest.raises(ConfigError, match="longest possible example"):
        load_config(None, ["train.batching=packed", "train.max_tokens=100"])
    with pytest.raises(ConfigError, match="not random"):
        load_config(None, ["train.batching=random", "train.max_tokens=4096"])
    # a saved config from before train.batching existed still loads, meaning what it meant
    assert load_config(None, ["train.group_by_length=false"]).train.batching == "random"
    assert load_config(None, ["train.group_by_length=true"]).train.batching == "grouped"


# ----------------------------------------------------------------------------- with the recipe


@pytest.mark.parametrize("arch, method, extra", [
    ("llama", "lora", ("model.quantization=8bit", "train.loss=chunked")),
    ("t5", "adalora", ("model.adalora.init_r=4", "model.adalora.target_r=2", "model.adalora.delta_t=1",
                       "model.adalora.prune_start=0.25", "model.adalora.prune_end=0.75")),
    ("qwen2", "dora", ()),
    ("t5", "full", ("train.loss=chunked", "train.rouge_every=3", "train.rouge_examples=2")),
])
def test_packed_training_runs_every_kind_of_method_and_validates_as_always(built, tmp_path, arch, method, extra):
    """Packed rows through the real recipe: adapter methods (AdaLoRA's per-step hook), an 8-bit
    base, the chunked loss; the validation loss and in-training ROUGE are computed on padded
    batches as always."""
    import json

    from sumtune.config import load_config
    from sumtune.recipes.finetune import run

    d = built["data"]
    cfg = load_config(None, [
        "run_name=packed", f"output_dir={tmp_path}", f"model.name_or_path={built[arch]}", f"model.method={method}",
        "data.source=local", f"data.files={{train: {d}/train.jsonl, validation: {d}/validation.jsonl}}",
        "data.max_source_length=96", "data.max_target_length=24", "train.max_steps=3", "train.batching=packed",
        "train.max_tokens=256", "train.log_every=1", "train.lr=1e-3", "tracker.backend=none", "model.lora.r=4",
        "model.lora.dropout=0.0", "generation.max_new_tokens=4", *extra])
    metrics = run(cfg)
    assert metrics["step"] == 3 and metrics["plan"]["batching"] == "packed"
    assert torch.isfinite(torch.tensor([metrics["train_loss"], metrics["val_loss"]])).all()
    log = [json.loads(x) for x in (tmp_path / "packed" / "train_log.jsonl").read_text().splitlines()]
    assert len([r for r in log if "loss" in r]) == 3
    assert metrics["throughput"]["real_token_share"] == 1.0  # no padding in packed rows
    if "train.rouge_every=3" in extra:
        assert any("val_rougeLsum" in r for r in log)


@pytest.mark.parametrize("kind", ["packed", "budget"])
def test_accelerate_deals_whole_rows_and_budget_batches_to_each_rank(kind):
    """Accelerate's sharding treats a batch shorter than the sampler's batch_size as incomplete
    and fills it up from the epoch's start: samplers of varying batch sizes must say None. Each
    rank gets whole batches, round-robin, ceil(n / ranks) each, the last round completed from the
    first batches."""
    from accelerate.data_loader import BatchSamplerShard

    from sumtune.batching import batches_per_rank

    lengths = [(20 + (i * 37) % 200, 4 + i % 30) for i in range(101)]
    make = (lambda: PackedRows(lengths, 512, torch.Generator().manual_seed(1))) if kind == "packed" else (
        lambda: LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(1), 4, max_tokens=700))
    batches = list(make())
    for world in (2, 3):
        dealt = [list(BatchSamplerShard(make(), num_processes=world, process_index=r, even_batches=True))
                 for r in range(world)]
        for rank, got in enumerate(dealt):
            assert len(got) == batches_per_rank(len(batches), world)
            assert got[:len(batches[rank::world])] == batches[rank::world]
            assert all(b in batches for b in got)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_adaloras_orthogonality_penalty_is_in_the_loss_as_peft_adds_it(built, arch):
    """peft adds AdaLoRA's orthogonality term only to a loss the model computes from labels;
    sumtune's loss is computed from the logits, so methods.loss_penalty adds it: token mean +
    penalty equals peft's own loss on the same batch (one micro-batch, one process), gradients too."""
    from accelerate import Accelerator
    from peft import AdaLoraConfig, get_peft_model

    from sumtune import methods
    from sumtune.config import ModelConfig

    family, model, tok = load(built, arch)
    cfg = ModelConfig(method="adalora")
    targets = ["q", "v"] if arch == "t5" else ["q_proj", "v_proj"]
    peft = get_peft_model(model, AdaLoraConfig(init_r=4, target_r=2, lora_dropout=0.0, target_modules=targets,
                                               orth_reg_weight=cfg.adalora.orth_reg_weight, total_step=10,
                                               task_type="SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM"))
    with torch.no_grad():  # B starts at zero: move it so the penalty and its gradient are not trivial
        for name, p in peft.named_parameters():
            if "lora_B" in name or "lora_E" in name:
                p.normal_(0, 0.3)
    penalty = methods.loss_penalty(peft, cfg, Accelerator(cpu=True))
    assert methods.loss_penalty(peft, ModelConfig(method="lora"), Accelerator(cpu=True)) is None
    batch = PadCollator(0)(features(built, family, tok, n=3))
    peft.zero_grad()
    theirs = peft(**batch, use_cache=False).loss
    theirs.backward()
    g_theirs = grads(peft)
    peft.zero_grad()
    total, tokens = family.loss(peft, batch)
    ours = total / tokens + penalty()
    ours.backward()
    assert penalty().item() > 1e-3
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    for name, g in g_theirs.items():
        assert (grads(peft)[name] - g).abs().max().item() <= 1e-6 * max(1.0, g.abs().max().item()), name
