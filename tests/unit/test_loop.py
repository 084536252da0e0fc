import pytest
import torch

from sumtune.config import TrainConfig
from sumtune.engine import make_optimizer, plan_steps


def test_plan_by_epochs():
    plan = plan_steps(1000, 2, TrainConfig(per_device_batch_size=8, grad_accum=4, epochs=3, warmup_ratio=0.1))
    assert plan.effective_batch == 64
    assert plan.batches_per_rank_per_epoch == 63  # ceil(ceil(1000/8)/2)
    assert plan.steps_per_epoch == 16  # ceil(63/4): the last, shorter accumulation still steps
    assert plan.total_steps == 48 and plan.epochs == 3
    assert plan.warmup_steps == 4


def test_plan_by_max_steps_wins_over_epochs():
    plan = plan_steps(100, 1, TrainConfig(per_device_batch_size=10, grad_accum=1, epochs=1, max_steps=25, warmup_steps=5))
    assert plan.steps_per_epoch == 10 and plan.total_steps == 25 and plan.epochs == 3 and plan.warmup_steps == 5
    assert "effective batch 10 = 10 per device x 1 processes x 1 accumulation" in plan.describe()


def test_same_global_batch_gives_the_same_plan_for_accumulation_and_processes():
    one = plan_steps(999, 1, TrainConfig(per_device_batch_size=8, grad_accum=2, epochs=2))
    two = plan_steps(999, 2, TrainConfig(per_device_batch_size=8, grad_accum=1, epochs=2))
    assert one.effective_batch == two.effective_batch == 16
    assert one.total_steps == two.total_steps


def test_schedule_warms_up_linearly_then_decays_to_zero():
    model = torch.nn.Linear(4, 4)
    cfg = TrainConfig(lr=1.0, max_steps=10, warmup_steps=4, per_device_batch_size=1)
    plan = plan_steps(100, 1, cfg)
    opt, sched = make_optimizer(model, cfg, plan)
    lrs = []
    for _ in range(plan.total_steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(1 / 6)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert sched.get_last_lr()[0] == pytest.approx(0.0)


def test_no_weight_decay_on_biases():
    model = torch.nn.Linear(4, 4)
    opt, _ = make_optimizer(model, TrainConfig(weight_decay=0.1), plan_steps(10, 1, TrainConfig()))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.weight)] == 0.1 and decays[id(model.bias)] == 0.0


def test_set_dropout_reaches_every_dropout_of_t5_including_attention():
    from transformers import T5Config, T5ForConditionalGeneration

    from sumtune.models import set_dropout

    model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                num_decoder_layers=1, num_heads=2, dropout_rate=0.3,
                                                decoder_start_token_id=0))
    set_dropout(model, 0.0)
    model.train()
    ids = torch.tensor([[3, 4, 5, 1]])
    torch.manual_seed(0)
    a = model(input_ids=ids, labels=ids).loss
    torch.manual_seed(1)
    b = model(input_ids=ids, labels=ids).loss
    assert torch.equal(a, b)  # no randomness left in training mode
    rates = [m.dropout for m in model.modules() if isinstance(getattr(m, "dropout", None), float)]
    assert rates and all(r == 0.0 for r in rates)


def test_meter_counts_real_tokens_padding_and_leaves_out_time_set_aside():
    import time

    import torch
    from accelerate import Accelerator

    from sumtune.engine import Meter
    from sumtune.families import Seq2SeqFamily

    meter = Meter(Accelerator(cpu=True), Seq2SeqFamily("t5"))
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
             "labels": torch.tensor([[3, 4, 1], [3, 1, -100]])}
    meter.add(batch, torch.tensor(2.0))
    meter.add(batch, torch.tensor(4.0))
    with meter.aside():
        time.sleep(0.3)
    window = meter.window()
    assert window["loss"] == 3.0
    assert window["real_token_share"] == (7 + 5) / (10 + 6)
    assert window["samples_per_s"] > 4 / 0.3  # the 0.3 s set aside is not in the denominator
    meter.add(batch, torch.tensor(1.0))  # after the last window: still counted in the run
    run = meter.run()
    assert (run["samples"], run["real_tokens"], run["token_positions"]) == (6, 36, 48)


def test_a_logging_window_carried_through_a_checkpoint_logs_what_an_unbroken_one_does():
    import torch
    from accelerate import Accelerator

    from sumtune.engine import Meter
    from sumtune.families import Seq2SeqFamily

    def batch(n):
        return {"input_ids": torch.zeros(n, 4, dtype=torch.long), "attention_mask": torch.ones(n, 4, dtype=torch.long),
                "labels": torch.ones(n, 2, dtype=torch.long)}

    acc = Accelerator(cpu=True)
    unbroken, before = Meter(acc, Seq2SeqFamily("t5")), Meter(acc, Seq2SeqFamily("t5"))
    for m in (unbroken, before):
        m.add(batch(2), torch.tensor(3.0))
    carried = before.carry()  # the checkpoint between two logging steps
    after = Meter(acc, Seq2SeqFamily("t5"))  # the resumed process
    after.restore(carried)
    for m in (unbroken, after):
        m.add(batch(3), torch.tensor(1.0))
    a, b = unbroken.window(), after.window()
    assert (a["loss"], a["real_token_share"]) == (b["loss"], b["real_token_share"]) == (2.0, 1.0)
    assert after.run()["samples"] == 5
