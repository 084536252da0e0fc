"""sumtune.engine: the optimizer step (accumulation, the hook, the non-finite guard) and the meter's
named fields (and the older checkpoints' list form)."""

import json

import pytest
import torch

from sumtune.config import TrainConfig
from sumtune.engine import Counts, Meter, NonFiniteError, OptimizerStep, Position, make_optimizer, plan_steps
from sumtune.families import Seq2SeqFamily


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_decoder_layers=1, num_heads=2, dropout_rate=0.0,
                                               decoder_start_token_id=0))


def t5_batches(n: int, size: int, seed: int = 1) -> list[dict]:
    """Batches of equal-length rows (every label real): the loss is a mean over the same number of
    tokens in each, so the mean over two halves is the mean over the whole."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(2, 32, (size, 6), generator=g), "attention_mask": torch.ones(size, 6, dtype=torch.long),
             "labels": torch.randint(2, 32, (size, 4), generator=g)} for _ in range(n)]


def forward(model):
    return lambda batch: model(**batch, use_cache=False).loss


def sgd(model, accelerator):
    """Plain SGD: unlike Adam, its update is proportional to the gradient, so a scale error shows."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler


def train(grad_accum: int, batches: list[dict]) -> tuple[dict, list[float]]:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=grad_accum)
    model, optimizer, scheduler = sgd(tiny_t5(), accelerator)
    step = OptimizerStep(accelerator, model, optimizer, scheduler, max_grad_norm=1e9, loss_fn=forward(model))
    done, norms = 0, []
    for batch in batches:
        result = step(batch, done)
        if result.stepped:
            done += 1
            norms.append(float(result.grad_norm))
    assert done == len(batches) // grad_accum
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}, norms


def test_two_accumulated_half_batches_give_the_weights_of_one_whole_batch():
    halves = t5_batches(4, 4)
    wholes = [{k: torch.cat([a[k], b[k]]) for k in a} for a, b in zip(halves[::2], halves[1::2])]
    accumulated, norms_a = train(2, halves)
    whole, norms_w = train(1, wholes)
    assert norms_a == pytest.approx(norms_w, rel=1e-5) and len(norms_a) == 2
    start = tiny_t5().state_dict()
    assert any((whole[k] - start[k]).abs().max() > 1e-3 for k in start)  # the weights did move
    for key in whole:
        assert (accumulated[key] - whole[key]).abs().max().item() <= 1e-6, key


def test_the_hook_runs_once_per_optimizer_step_with_its_number_while_gradients_exist():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, optimizer, scheduler = sgd(tiny_t5(), accelerator)
    calls = []

    def hook(step: int) -> None:
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        calls.append((step, all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)))

    step = OptimizerStep(accelerator, model, optimizer, scheduler, max_grad_norm=1.0, loss_fn=forward(model), hook=hook)
    done, lrs = 0, []
    for i, batch in enumerate(t5_batches(4, 2)):
        result = step(batch, done)
        assert result.stepped == (i % 2 == 1) and (result.grad_norm is None) == (not result.stepped)
        done += result.stepped
        if result.stepped:  # zeroed once the hook has run
            assert all(p.grad is None or not p.grad.any() for p in model.parameters())
        lrs.append(scheduler.last_epoch)
    assert calls == [(1, True), (2, True)]
    assert lrs == [0, 1, 1, 2]  # the scheduler steps on optimizer steps only


def test_a_nan_loss_stops_the_run_before_the_optimizer_changes_a_weight():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    cfg = TrainConfig(lr=1e-2, max_steps=4, per_device_batch_size=2)
    model = tiny_t5()
    optimizer, scheduler = make_optimizer(model, cfg, plan_steps(8, 1, cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooked = []
    step = OptimizerStep(accelerator, model, optimizer, scheduler, cfg.max_grad_norm,
                         loss_fn=lambda batch: model(**batch, use_cache=False).loss * float("nan"), hook=hooked.append)
    step.last_checkpoint = "outputs/r/checkpoints/step-000004"
    with pytest.raises(NonFiniteError) as err:
        step(t5_batches(1, 2)[0], 4)
    assert str(err.value) == ("non-finite gradient norm (nan) at step 5; last good checkpoint: "
                              "outputs/r/checkpoints/step-000004 (lower train.lr, check the data, or use bf16 rather "
                              "than fp16)")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not optimizer.state and hooked == [] and scheduler.last_epoch == 0


def batch(n: int) -> dict:
    return {"input_ids": torch.zeros(n, 4, dtype=torch.long), "attention_mask": torch.ones(n, 4, dtype=torch.long),
            "labels": torch.ones(n, 2, dtype=torch.long)}


def test_the_carried_window_is_named_and_written_to_the_checkpoint_as_such():
    from accelerate import Accelerator

    meter = Meter(Accelerator(cpu=True), Seq2SeqFamily("t5"))
    meter.add(batch(2), torch.tensor(3.0))
    carried = meter.carry()
    assert list(carried) == ["loss", "batches", "real_tokens", "samples", "positions", "seconds", "loss_tokens"]
    assert {k: v for k, v in carried.items() if k != "seconds"} == {"loss": 3.0, "batches": 1.0, "real_tokens": 12.0,
                                                                      "samples": 2.0, "positions": 12.0, "loss_tokens": 0.0}
    position = Position(**json.loads(json.dumps({"step": 3, "epoch": 0, "batches_in_epoch": 3, "window": carried})))
    assert Counts.read(position.window) == Counts(**carried)


def test_a_window_carried_as_the_older_list_of_six_floats_still_restores():
    """Checkpoints written before the fields had names hold [loss sum, batches, real tokens,
    samples, token positions, seconds] in trainer_state.json's position.window."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    old = Position(**{"step": 3, "epoch": 0, "batches_in_epoch": 3, "generator_state": None,
                      "window": [6.0, 2.0, 24.0, 4.0, 24.0, 0.5]})
    named = dict(zip(Counts.names(), old.window))
    windows, runs = [], []
    for carried in (old.window, named):
        meter = Meter(acc, Seq2SeqFamily("t5"))
        meter.restore(carried)
        meter.add(batch(3), torch.tensor(1.0))
        windows.append(meter.window())
        runs.append(meter.run())
    for w in windows:
        assert (w["loss"], w["real_token_share"]) == ((6.0 + 1.0) / 3, (24 + 18) / (24 + 18))
    assert windows[0]["tokens_per_s"] < (24 + 18) / 0.5  # the carried 0.5 s count as window time
    assert runs[0]["samples"] == runs[1]["samples"] == 7 and runs[0]["real_tokens"] == 42


def test_a_window_saved_before_token_weighting_keeps_its_throughput_but_not_its_loss():
    """A checkpoint from before the loss was token-weighted carries a sum of batch means, which a
    token-weighted meter cannot continue: the window logged after the resume is the token mean of
    the batches since (its real tokens still count)."""
    from accelerate import Accelerator

    meter = Meter(Accelerator(cpu=True), Seq2SeqFamily("t5"), weighted=True)
    meter.restore([6.0, 2.0, 24.0, 4.0, 24.0, 0.5])
    meter.add(batch(3), torch.tensor(9.0), torch.tensor(6))
    window = meter.window()
    assert window["loss"] == 9.0 / 6
    assert meter.run()["real_tokens"] == 24 + 18


def ragged_t5_batches(n: int, size: int, seed: int = 3) -> list[dict]:
    """Rows with 1 to 6 real target tokens (labels -100 after them) and ragged sources."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = torch.randint(2, 32, (size, 6), generator=g)
        keep = torch.randint(1, 7, (size, 1), generator=g)
        labels[torch.arange(6)[None, :] >= keep] = -100
        src = torch.randint(3, 9, (size, 1), generator=g)
        mask = (torch.arange(8)[None, :] < src).long()
        out.append({"input_ids": torch.randint(2, 32, (size, 8), generator=g) * mask, "attention_mask": mask,
                    "labels": labels})
    return out


def token_weighted_train(grad_accum: int, windows: list[list[dict]]) -> tuple[dict, list[float], list[float]]:
    """What recipes.finetune.fit does with each accumulation window, in one process (plain SGD)."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    from sumtune.engine import TokenWeightedLoss

    acc = Accelerator(cpu=True, gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum,
                                                                                        sync_with_dataloader=False))
    model, optimizer, scheduler = sgd(tiny_t5(), acc)
    loss = TokenWeightedLoss(acc, model, Seq2SeqFamily("t5"))
    step = OptimizerStep(acc, model, optimizer, scheduler, max_grad_norm=1e9, loss_fn=loss)
    meter = Meter(acc, Seq2SeqFamily("t5"), weighted=True)
    norms, losses = [], []
    for done, window in enumerate(windows):
        loss.begin(window)
        acc.step = grad_accum - len(window)
        for b in window:
            result = step(b, done)
            meter.add(b, *loss.last)
        assert result.stepped
        norms.append(float(result.grad_norm))
        losses.append(meter.window()["loss"])
    return {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}, norms, losses


def test_token_weighted_accumulation_equals_the_large_batch_with_unequal_lengths():
    """batch 8 = 4 x 2 accumulation (and 3 + 5 cut unevenly) in losses, gradient norms and weights;
    the logged loss is the step's token mean. A mean of per-batch means would differ here."""
    halves = ragged_t5_batches(4, 4)
    cat = lambda a, b: {k: torch.cat([a[k], b[k]]) for k in a}  # noqa: E731
    wholes = [cat(a, b) for a, b in zip(halves[::2], halves[1::2])]
    uneven = [[{k: v[:3] for k, v in w.items()}, {k: v[3:] for k, v in w.items()}] for w in wholes]
    ref, ref_norms, ref_losses = token_weighted_train(1, [[w] for w in wholes])
    for windows in ([[a, b] for a, b in zip(halves[::2], halves[1::2])], uneven):
        got, norms, losses = token_weighted_train(2, windows)
        assert norms == pytest.approx(ref_norms, rel=1e-5)
        assert losses == pytest.approx(ref_losses, rel=1e-6)
        for key in ref:
            assert (got[key] - ref[key]).abs().max().item() <= 1e-6, key
    # the logged loss of step 1 is its token mean, computed by hand
    model = tiny_t5()
    w = wholes[0]
    logits = model(input_ids=w["input_ids"], attention_mask=w["attention_mask"], labels=w["labels"]).logits
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), w["labels"].flatten(), reduction="sum")
    assert ref_losses[0] == pytest.approx(per_token.item() / (w["labels"] != -100).sum().item(), rel=1e-6)
    # and the old mean of means is measurably different on the uneven cut
    means = [model(**h).loss.item() for h in uneven[0]]
    assert abs(sum(means) / 2 - ref_losses[0]) > 1e-3
