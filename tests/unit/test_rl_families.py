"""The family seam of the RL recipe: sampling from the model's own distribution, and the
log-probabilities of given summaries, checked against a hand computation row by row (seq2seq: the
prompt to the encoder, the summary to the decoder; causal: the summary after a left-padded prompt)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

from sumtune import data, families, models  # noqa: E402
from sumtune.config import DataConfig  # noqa: E402

ARCHS = ("t5", "bart", "llama")


@pytest.fixture(scope="module")
def models_dir(zoo_build):
    return zoo_build  # the session's zoo (tests/conftest.py), built once


def load(path):
    family = families.resolve(str(path))
    return family, models.load_model(str(path), family=family).eval(), models.load_tokenizer(str(path), family=family)


def prompts(family, tok, n=3):
    """Prompts of different lengths (so that padding is exercised), as the recipe encodes them."""
    enc = data.prompt_encoder(family, tok, DataConfig(max_source_length=120))
    rows = zoo.corpus_rows(12, seed=9)
    ids = sorted((enc.encode(r["dialogue"])[0] for r in rows), key=len)
    return [ids[0], ids[len(ids) // 2], ids[-1]][:n]


def sample(family, model, tok, prompt_ids, seed=0, max_new_tokens=12):
    pad = data.PadCollator(tok.pad_token_id, side=family.prompt_padding())([{"input_ids": p} for p in prompt_ids])
    settings = family.sampling_settings(model, tok, max_new_tokens)
    torch.manual_seed(seed)
    return family.sample(model, pad["input_ids"], pad["attention_mask"], settings).ids, pad


def summary_batch(summaries, pad_id):
    width = max(len(s) for s in summaries)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in summaries])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in summaries])
    return ids, mask


def by_hand(family, model, prompt, summary) -> torch.Tensor:
    """Log-probs of one summary after one prompt, the model run on that row alone, no padding."""
    with torch.no_grad():
        if family.name == "seq2seq":
            start = model.config.decoder_start_token_id
            logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[start] + summary[:-1]])).logits[0]
        else:
            logits = model(input_ids=torch.tensor([prompt + summary])).logits[0, len(prompt) - 1:-1]
    return logits.float().log_softmax(-1)[torch.arange(len(summary)), torch.tensor(summary)]


@pytest.mark.parametrize("arch", ARCHS)
def test_summary_logprobs_equal_each_row_scored_alone(arch, models_dir):
    family, model, tok = load(models_dir[arch])
    prompt_ids = prompts(family, tok)
    summaries, pad = sample(family, model, tok, prompt_ids)
    summaries[0] = summaries[0][:2]  # rows of different lengths: the padding after a summary is masked
    assert len({len(s) for s in summaries}) > 1
    ids, mask = summary_batch(summaries, tok.pad_token_id)
    with torch.no_grad():
        logp, entropy = family.summary_logprobs(model, pad["input_ids"], pad["attention_mask"], ids, mask, entropy=True)
    assert logp.shape == ids.shape and entropy.shape == ids.shape
    for row, (prompt, summary) in enumerate(zip(prompt_ids, summaries)):
        expected = by_hand(family, model, prompt, summary)
        assert torch.allclose(logp[row, :len(summary)], expected, atol=1e-5), arch
        assert (logp[row, len(summary):] == 0).all() and (entropy[row, len(summary):] == 0).all()
        assert (entropy[row, :len(summary)] > 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_temperature_scales_the_logits_before_the_softmax(arch, models_dir):
    family, model, tok = load(models_dir[arch])
    prompt_ids = prompts(family, tok, n=2)
    summaries, pad = sample(family, model, tok, prompt_ids, max_new_tokens=6)
    ids, mask = summary_batch(summaries, tok.pad_token_id)
    with torch.no_grad():
        hot, _ = family.summary_logprobs(model, pad["input_ids"], pad["attention_mask"], ids, mask, temperature=2.0)
        out, positions = family._summary_forward(model, pad["input_ids"], pad["attention_mask"], ids, mask)
        logits = out.logits[:, positions]
    expected = (logits.float() / 2.0).log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask
    assert torch.allclose(hot, expected, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_tokens_log_probs_match_what_generation_saw(arch, models_dir):
    """The summaries' log-probs recomputed in one forward pass equal the ones generation reported
    while sampling them token by token (KV cache): the ids line up with the model's steps."""
    family, model, tok = load(models_dir[arch])
    prompt_ids = prompts(family, tok)
    pad = data.PadCollator(tok.pad_token_id, side=family.prompt_padding())([{"input_ids": p} for p in prompt_ids])
    settings = family.sampling_settings(model, tok, 10)
    torch.manual_seed(3)
    out = family.generate(model, pad["input_ids"], pad["attention_mask"], settings, logprobs=True)
    ids, mask = summary_batch(out.ids, tok.pad_token_id)
    with torch.no_grad():
        logp, _ = family.summary_logprobs(model, pad["input_ids"], pad["attention_mask"], ids, mask)
    for row, seen in enumerate(out.logprobs):
        assert torch.allclose(logp[row, :len(seen)], seen, atol=1e-4), arch


def test_gradients_through_left_padded_prompts_are_finite(models_dir):
    """Left padding leaves rows of the attention with nothing to attend to; their gradients must
    not turn into NaN in the weights."""
    family, model, tok = load(models_dir["llama"])
    prompt_ids = prompts(family, tok)
    summaries, pad = sample(family, model, tok, prompt_ids, max_new_tokens=6)
    assert not bool(pad["attention_mask"].all())  # there is left padding
    ids, mask = summary_batch(summaries, tok.pad_token_id)
    model.train()
    logp, _ = family.summary_logprobs(model, pad["input_ids"], pad["attention_mask"], ids, mask)
    (-logp.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_a_right_padded_causal_prompt_is_refused(models_dir):
    family, model, tok = load(models_dir["llama"])
    pad = data.PadCollator(tok.pad_token_id, side="right")([{"input_ids": p} for p in prompts(family, tok)])
    ids, mask = summary_batch([[5, 6], [7], [8, 9]], tok.pad_token_id)
    with pytest.raises(ValueError, match="padded on the left"):
        family.summary_logprobs(model, pad["input_ids"], pad["attention_mask"], ids, mask)


@pytest.mark.parametrize("arch", ("t5", "llama"))
def test_sampling_ignores_what_a_checkpoint_generation_config_adds(arch, models_dir):
    """A checkpoint's generation_config.json fills every setting generate is not given. Here it
    suppresses every token but the end token: plain generate obeys it (the trap), sampling does not."""
    family, model, tok = load(models_dir[arch])
    prompt_ids = prompts(family, tok)
    model.generation_config.suppress_tokens = [i for i in range(len(tok)) if i != tok.eos_token_id]
    pad = data.PadCollator(tok.pad_token_id, side=family.prompt_padding())([{"input_ids": p} for p in prompt_ids])
    settings = family.sampling_settings(model, tok, 8)
    shipped = model.generation_config
    trapped = family.generate(model, pad["input_ids"], pad["attention_mask"], settings).ids
    assert all(row == [tok.eos_token_id] for row in trapped)
    own = family.sample(model, pad["input_ids"], pad["attention_mask"], settings).ids
    assert any(len(row) > 1 for row in own)
    assert model.generation_config is shipped  # put back
    assert settings.top_k == 0 and settings.top_p == 1.0 and settings.do_sample and settings.num_beams == 1


@pytest.mark.parametrize("arch, method", [("t5", "lora"), ("t5", "full"), ("llama", "lora"), ("llama", "full")])
def test_kl_to_the_reference_is_zero_while_the_policy_is_the_start(arch, method, models_dir):
    """The recipe's reference (the adapter disabled, or a frozen copy) scores sampled summaries
    exactly as the untrained policy does: KL 0. One update later it does not, and a frozen copy
    stays the start."""
    from sumtune import rl
    from sumtune.config import ModelConfig
    from sumtune.rollout import Reference

    family, model, tok = load(models_dir[arch])
    policy = models.apply_method(model, ModelConfig(method=method), family)
    reference = Reference(policy)
    assert (reference.copy is None) == (method == "lora")
    prompt_ids = prompts(family, tok)
    summaries, pad = sample(family, policy, tok, prompt_ids)
    ids, mask = summary_batch(summaries, tok.pad_token_id)
    batch = {"input_ids": pad["input_ids"], "attention_mask": pad["attention_mask"], "summary_ids": ids, "summary_mask": mask}

    def kl():
        with torch.no_grad():
            logp, _ = family.summary_logprobs(policy, *batch.values())
        return rl.sequence_kl(logp, reference.logprobs(family, policy, batch, 1.0), mask)

    assert kl().tolist() == [0.0] * len(summaries)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in (reference.copy or policy).parameters()]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    (-family.summary_logprobs(policy, *batch.values())[0].sum()).backward()
    optimizer.step()
    assert (kl().abs() > 1e-4).all()
    if reference.copy is not None:
        assert all(torch.equal(a, b) for a, b in zip(start, reference.copy.parameters()))


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_the_value_head_reads_the_hidden_state_of_the_output_layer_row_by_row(arch, models_dir):
    """PPO's value head: the policy's logits untouched, values 0 at the start, then (a trained head)
    the head applied to the very hidden state the output layer reads, the same for a row in a padded
    batch as alone, with gradients reaching the head."""
    from sumtune.rollout import WithValueHead

    family, model, tok = load(models_dir[arch])
    net = WithValueHead(model)
    prompt_ids = prompts(family, tok)
    summaries, pad = sample(family, model, tok, prompt_ids)
    ids, mask = summary_batch(summaries, tok.pad_token_id)
    args = (pad["input_ids"], pad["attention_mask"], ids, mask)
    with torch.no_grad():
        scored = family.score_summaries(net, *args, values=True)
        assert torch.equal(scored.logprobs, family.summary_logprobs(model, *args)[0])
        assert scored.values.abs().max().item() == 0.0
        torch.nn.init.normal_(net.value_head.weight, std=0.5)
        net.value_head.bias.fill_(0.25)
        scored = family.score_summaries(net, *args, values=True)
    if arch == "llama":  # the head reads the final (normed) hidden state: hidden_states[-1]
        with torch.no_grad():
            row = prompt_ids[0] + summaries[0]
            hidden = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states[-1][0]
            expected = net.value_head(hidden[len(prompt_ids[0]) - 1:-1]).squeeze(-1)
        assert torch.allclose(scored.values[0, :len(summaries[0])], expected, atol=1e-5)
    for i, (prompt, summary) in enumerate(zip(prompt_ids, summaries)):
        alone = family.score_summaries(net, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                       torch.tensor([summary]), torch.ones(1, len(summary), dtype=torch.long), values=True)
        assert torch.allclose(scored.values[i, :len(summary)], alone.values[0].detach(), atol=1e-5)
        assert (scored.values[i, len(summary):] == 0).all()
    alone.values.sum().backward()
    assert net.value_head.weight.grad.abs().sum() > 0


def test_a_trajectory_batch_is_what_collating_its_rows_gives():
    """The update's micro-batches come out of the rollout's padded tensors: trimmed to what their
    rows need, they equal the rows collated on their own (left-padded prompts, right-padded summaries)."""
    from sumtune.rollout import Trajectory

    prompt_rows = [[5, 6, 7, 8], [9], [3, 4], [2, 2, 2]]
    summary_rows = [[1, 2], [3, 4, 5, 6], [7], [8, 9]]
    left = data.PadCollator(0, side="left")
    p = left([{"input_ids": x} for x in prompt_rows])
    s_ids, s_mask = summary_batch(summary_rows, 0)
    logp = torch.randn(s_ids.shape) * s_mask
    traj = Trajectory(list(range(4)), ["a"] * 4, p["input_ids"], p["attention_mask"], s_ids, s_mask, logp, logp, logp,
                      None, torch.zeros(4), torch.zeros(4), torch.ones(4, dtype=torch.bool))
    for rows in ([1, 2], [2, 3], [0], [3, 1]):
        batch = traj.batch(torch.tensor(rows))
        alone = left([{"input_ids": prompt_rows[i]} for i in rows])
        ids, mask = summary_batch([summary_rows[i] for i in rows], 0)
        assert torch.equal(batch["input_ids"], alone["input_ids"]) and torch.equal(batch["attention_mask"],
                                                                                   alone["attention_mask"])
        assert torch.equal(batch["summary_ids"], ids) and torch.equal(batch["summary_mask"], mask)
        assert torch.equal(batch["old_logprobs"], logp[rows][:, :ids.shape[1]]) and "old_values" not in batch
