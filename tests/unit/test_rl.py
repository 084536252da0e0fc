"""The RL arithmetic (sumtune.rl) on toy batches computed by hand, and the recipe's pure parts."""

import math

import pytest
import torch

from sumtune import rl
from sumtune.config import load_config
from sumtune.errors import ConfigError
from sumtune.recipes import detox

# Two prompts, k = 3 samples each (rows of one prompt consecutive).
REWARDS = torch.tensor([1.0, 3.0, 0.0, 2.0, 4.0, 6.0])
# By hand: each reward minus the mean of the other two of its prompt.
#   prompt 1: 1 - (3+0)/2 = -0.5;  3 - (1+0)/2 = 2.5;  0 - (1+3)/2 = -2
#   prompt 2: 2 - (4+6)/2 = -3;    4 - (2+6)/2 = 0;    6 - (2+4)/2 = 3
ADVANTAGES = [-0.5, 2.5, -2.0, -3.0, 0.0, 3.0]


def test_leave_one_out_advantages_by_hand():
    assert rl.rloo_advantages(REWARDS, 3).tolist() == ADVANTAGES
    # k = 2: each sample against the other one
    assert rl.rloo_advantages(torch.tensor([1.0, 4.0]), 2).tolist() == [-3.0, 3.0]


def test_rloo_loss_and_gradient_on_policy_by_hand():
    """On fresh samples (ratio 1) the loss is -mean(A_i * |y_i|) over rows and the gradient of each
    real token's log-prob is -A_i / rows: REINFORCE with the leave-one-out baseline."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float)
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0], [-1.0, -1.0, -1.0],
                         [-2.0, -0.1, 0.0], [-0.3, 0.0, 0.0], [-1.5, -0.2, -0.7]], requires_grad=True)
    adv = torch.tensor(ADVANTAGES)
    loss, clipped = rl.policy_loss(logp, logp.detach(), mask, adv, clip=0.2)
    lengths = [2, 1, 3, 2, 1, 3]
    by_hand = sum(-a * n for a, n in zip(ADVANTAGES, lengths)) / 6  # = (1 - 2.5 + 6 + 6 - 0 - 9) / 6
    assert by_hand == pytest.approx(0.25)
    assert loss.item() == pytest.approx(by_hand)
    assert clipped.item() == 0
    loss.backward()
    expected = torch.tensor(ADVANTAGES)[:, None] * -1 / 6 * mask
    assert torch.allclose(logp.grad, expected)


def test_clipped_ratio_by_hand():
    """Later passes (off-policy): a ratio beyond 1 +- clip stops the gradient on the side where it
    would push further, as PPO's clipped surrogate does."""
    old = torch.zeros(2, 1)
    new = torch.tensor([[0.5], [0.5]], requires_grad=True)  # ratio e^0.5 = 1.6487 for both rows
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    loss, clipped = rl.policy_loss(new, old, mask, adv, clip=0.2)
    r = math.exp(0.5)
    # row 1 (A = +1): max(-1.6487, -1.2) = -1.2 (clipped: no gradient); row 2 (A = -1): max(1.6487, 1.2) = 1.6487
    assert loss.item() == pytest.approx((-1.2 + r) / 2)
    assert clipped.item() == 1.0
    loss.backward()
    assert new.grad[0, 0].item() == 0.0
    assert new.grad[1, 0].item() == pytest.approx(r / 2)


def test_sequence_kl_sums_log_ratios_and_is_zero_for_the_same_model():
    logp = torch.tensor([[-1.0, -2.0, -5.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.1], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert rl.sequence_kl(logp, ref, mask).tolist() == [0.5 + -1.0, 0.0 + 1.0]
    assert rl.sequence_kl(logp, logp.clone(), mask).tolist() == [0.0, 0.0]


def test_length_penalties_by_hand():
    lengths = torch.tensor([0, 2, 3, 10])
    ended = torch.tensor([True, True, True, False])
    penalty, short = rl.length_penalties(lengths, ended, min_tokens=3, short_penalty=2.0, missing_eos_penalty=0.5)
    assert short.tolist() == [True, True, False, False]
    assert penalty.tolist() == [2.0, 2.0, 0.0, 0.5]


def test_adaptive_kl_coefficient_by_hand_and_fixed_when_no_target():
    fixed = rl.KLController(0.1)
    fixed.update(kl=50.0, samples=64)
    assert fixed.coef == 0.1
    ctl = rl.KLController(0.1, target=2.0, horizon=100)
    ctl.update(kl=3.0, samples=10)  # error clip(3/2 - 1) = 0.2 -> x (1 + 0.2 * 10 / 100)
    assert ctl.coef == pytest.approx(0.1 * 1.02)
    ctl.update(kl=1.9, samples=10)  # error -0.05 -> x (1 - 0.005)
    assert ctl.coef == pytest.approx(0.1 * 1.02 * 0.995)
    again = rl.KLController(0.1, target=2.0, horizon=100)
    again.restore(ctl.state())
    assert again.coef == ctl.coef


def test_step_prompts_cover_each_epoch_once_split_over_ranks_and_depend_on_the_step_only():
    n, per_step, world = 23, 6, 2
    epoch0 = [detox.step_prompts(s, n, per_step, rank, world, seed=1) for s in range(3) for rank in range(world)]
    flat = [i for rows in epoch0 for i in rows]
    assert len(flat) == len(set(flat)) == 18 and all(len(rows) == 3 for rows in epoch0)
    assert detox.step_prompts(1, n, per_step, 1, world, seed=1) == epoch0[3]  # recomputed: the same
    assert detox.step_prompts(3, n, per_step, 0, world, seed=1) != detox.step_prompts(0, n, per_step, 0, world, seed=1)


def test_plan_counts_rl_steps_and_optimizer_steps():
    cfg = load_config(None, ["train.per_device_batch_size=4", "train.max_steps=10", "rl.epochs=2", "train.warmup_ratio=0.1"])
    plan = detox.rl_plan(100, 2, cfg)
    assert plan.loop_steps == 10 and plan.total_steps == 20 and plan.warmup_steps == 2 and plan.effective_batch == 8
    assert plan.batches_per_rank_per_epoch == 100 // 8 and plan.steps_per_epoch == 2 * (100 // 8)
    cfg = load_config(None, ["train.per_device_batch_size=4", "train.epochs=2", "rl.epochs=3", "rl.minibatches=2",
                             "rl.samples_per_prompt=4"])
    plan = detox.rl_plan(100, 2, cfg)
    assert plan.loop_steps == 2 * (100 // 8) and plan.total_steps == 6 * plan.loop_steps
    with pytest.raises(ConfigError, match="the train split has 5"):
        detox.rl_plan(5, 2, cfg)


def test_recipe_config_errors_are_one_line():
    with pytest.raises(ConfigError) as err:
        detox.check_config(load_config(None, ["train.per_device_batch_size=3", "rl.samples_per_prompt=3",
                                              "train.grad_accum=2"]))
    assert "must divide the summaries each process samples per step" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="runs without dropout"):
        detox.check_config(load_config(None, ["train.dropout=0.1"]))
    detox.check_config(load_config(None, ["train.dropout=0"]))
    with pytest.raises(ConfigError, match="model.method': train/detox.py trains full or lora, got 'ia3'"):
        detox.check_config(load_config(None, ["model.method=ia3"]))
    with pytest.raises(ConfigError, match="model.lora.init': pissa rewrites the base weights"):
        detox.check_config(load_config(None, ["model.method=lora", "model.lora.init=pissa"]))
    with pytest.raises(ConfigError, match="rl.samples_per_prompt': must be >= 2 with rl.algorithm=rloo"):
        load_config(None, ["rl.samples_per_prompt=1"])
    load_config(None, ["rl.samples_per_prompt=1", "rl.algorithm=ppo"])  # PPO needs no second sample
    with pytest.raises(ConfigError) as err:  # 2 prompts x 3 samples cannot be cut into 2 mini-batches x 2 micro-batches
        detox.check_config(load_config(None, ["train.per_device_batch_size=2", "rl.samples_per_prompt=3",
                                              "train.grad_accum=2", "rl.minibatches=2"]))
    assert "rl.minibatches=2 must divide the summaries" in str(err.value)
    for bad, message in (("rl.gamma=1.5", "rl.gamma': must be in [0, 1]"), ("rl.lam=-0.1", "rl.lam': must be in [0, 1]"),
                         ("rl.value_coef=0", "rl.value_coef': must be > 0"), ("rl.minibatches=0", "rl.minibatches'"),
                         ("rl.algorithm=a2c", "rl.algorithm")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, ["rl.algorithm=ppo", bad])
    with pytest.raises(ConfigError, match="unknown config key 'rl.top_k'"):
        load_config(None, ["rl.top_k=50"])


def test_the_meter_logs_the_means_of_named_statistics_and_carries_them():
    """The RL recipe's per-step statistics go through the engine's meter: the window logs each one's
    mean over its steps, and a checkpoint's carried window brings them back."""
    from accelerate import Accelerator

    from sumtune.engine import Meter
    from sumtune.rollout import RolloutTokens

    acc = Accelerator(cpu=True)
    batch = {"attention_mask": torch.ones(2, 3), "summary_mask": torch.ones(2, 2), "input_ids": torch.ones(2, 3)}
    meter = Meter(acc, RolloutTokens())
    meter.add(batch, torch.tensor(1.0))
    meter.stats({"kl": 1.0, "score": 2.0})
    meter.stats({"kl": 3.0, "score": 0.0})
    carried = meter.carry()
    other = Meter(acc, RolloutTokens())
    other.restore(carried)
    a, b = meter.window(), other.window()
    assert a["kl"] == b["kl"] == 2.0 and a["score"] == b["score"] == 1.0 and a["loss"] == b["loss"] == 1.0
    meter.stats({"kl": 5.0})
    assert meter.window()["kl"] == 5.0 and "score" not in meter.window()  # a new window starts empty


def test_a_start_adapter_that_cannot_be_merged_is_refused(tmp_path):
    """The RL recipe merges the supervised adapter into its base; a prompt-tuning run has nothing to merge."""
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    with pytest.raises(ConfigError, match="is a prompt adapter, which cannot be merged"):
        detox.check_config(load_config(None, [f"model.name_or_path={tmp_path}", "model.method=lora"]))
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    detox.check_config(load_config(None, [f"model.name_or_path={tmp_path}", "model.method=lora"]))


# ----------------------------------------------------------------------------- PPO


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_on_every_token():
    logp, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards = rl.token_rewards(logp, ref, mask, torch.tensor([2.0]), kl_coef=0.1)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 2.0, 0.0]]))
    # A row's rewards sum to RLOO's reward: score - kl_coef x the summed log-ratio.
    assert rewards.sum().item() == pytest.approx(2.0 - 0.1 * rl.sequence_kl(logp, ref, mask).item())


def test_gae_by_hand_and_padding_values_do_not_leak():
    # Row 1, gamma 1, lambda 0.5: deltas 0.6, 0.2, -0.3 from the end; A = 0.6, 0.2 + 0.5 x 0.6, -0.3 + 0.5 x 0.5.
    # Row 2, gamma 0.9, lambda 1 (Monte Carlo): returns 1 + 0.9 x 2 = 2.8 and 2; its padded value 9 must not count.
    adv, ret = rl.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]]), torch.ones(1, 3), 1.0, 0.5)
    assert torch.allclose(adv, torch.tensor([[-0.05, 0.5, 0.6]])) and torch.allclose(ret, torch.tensor([[0.45, 0.7, 1.0]]))
    adv, ret = rl.gae(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 9.0]]), torch.tensor([[1, 1, 0]]), 0.9, 1.0)
    assert torch.allclose(adv, torch.tensor([[1.8, 1.0, 0.0]])) and torch.allclose(ret, torch.tensor([[2.8, 2.0, 0.0]]))


def test_whitening_over_masked_tokens_and_over_ranks():
    x, mask = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = rl.whiten(x, mask)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(5 / 3)
    assert torch.allclose(out[mask.bool()], expected, atol=1e-6) and (out[~mask.bool()] == 0).all()
    # Two ranks holding one row each whiten as one rank holding both (reduce sums their totals).
    def totals(v, m):
        m = m.float()
        return torch.stack([(v * m).sum(), (v.square() * m).sum(), m.sum()])

    other = totals(x[1:], mask[1:])
    first = rl.whiten(x[:1], mask[:1], reduce=lambda t: t + other)
    assert torch.allclose(first, out[:1], atol=1e-6)


def test_clipped_value_loss_by_hand():
    # Token 1: unclipped (1 - 2)^2 = 1, clipped (0.5 + 0.2 - 2)^2 = 1.69 -> 0.845; token 2: 0.5 x (0 - 1)^2 = 0.5.
    loss, share = rl.value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]]),
                                torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx((0.845 + 0.5) / 2) and share.item() == pytest.approx(0.5)


def test_per_token_advantages_give_the_token_mean_surrogate():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    adv, mask = torch.tensor([[1.0, -2.0], [3.0, 5.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, clipped = rl.policy_loss(logp, logp.detach(), mask, adv, clip=0.2)
    assert loss.item() == pytest.approx(-(1 - 2 + 3) / 3) and clipped.item() == 0.0
    loss.backward()  # on-policy: d loss / d logp = -A / tokens on real tokens, nothing through padding
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 3, 2 / 3], [-1.0, 0.0]]))
