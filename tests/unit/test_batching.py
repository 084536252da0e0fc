"""Length-grouped training batches: complete, deterministic, cheap in padding, and exact under
Accelerate's sharding and batch skipping (what resume relies on)."""

import random

import pytest
import torch

from sumtune.batching import Batching, LengthGroupedBatches, real_token_share
from sumtune.config import TrainConfig
from sumtune.data import PadCollator, example_lengths
from sumtune.families import Seq2SeqFamily

T5 = Seq2SeqFamily("t5")


def skewed_lengths(n=403, seed=0):
    """Dialogue-like: most short, a long tail, and summaries loosely following the dialogue."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = int(min(512, 20 + rng.expovariate(1 / 90)))
        out.append((src, max(4, int(src * rng.uniform(0.05, 0.2)))))
    return out


def draw(lengths, bs=8, seed=1, group=16):
    return list(LengthGroupedBatches(lengths, bs, torch.Generator().manual_seed(seed), group))


def test_every_example_once_per_epoch_and_only_the_last_batch_short():
    lengths = skewed_lengths()
    batches = draw(lengths)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [len(b) for b in batches[:-1]] == [8] * (len(batches) - 1) and len(batches[-1]) == 403 % 8
    assert len(batches) == len(LengthGroupedBatches(lengths, 8, torch.Generator(), 16))


def test_same_seed_same_batches_other_seed_other_order_and_next_epoch_differs():
    lengths = skewed_lengths()
    assert draw(lengths, seed=3) == draw(lengths, seed=3)
    assert draw(lengths, seed=3) != draw(lengths, seed=4)
    sampler = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(3), 16)
    assert list(sampler) != list(sampler)  # the generator moves on: a new order every epoch


def test_the_longest_example_comes_first():
    lengths = skewed_lengths()
    longest = max(range(len(lengths)), key=lambda i: sum(lengths[i]))
    for seed in range(5):
        assert longest in draw(lengths, seed=seed)[0]


def test_grouping_removes_most_padding_and_bigger_pools_remove_more():
    lengths = skewed_lengths(n=2000)
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    random_share = real_token_share([perm[i:i + 8] for i in range(0, len(perm), 8)], lengths)
    shares = [real_token_share(draw(lengths, group=g), lengths) for g in (4, 16, TrainConfig().group_size)]
    assert shares[0] < shares[1] < shares[2]
    assert shares[2] > 0.9 and random_share < 0.5
    assert real_token_share([[0]], lengths) == 1.0


def test_batches_still_mix_lengths_across_the_epoch():
    """Grouping sorts within pools, but the order of batches stays random: the first half of the
    epoch is not all short (or all long) dialogues."""
    lengths = skewed_lengths(n=800)
    batches = draw(lengths, group=8)
    means = [sum(lengths[i][0] for i in b) / len(b) for b in batches[1:-1]]
    half = len(means) // 2
    first, second = sum(means[:half]) / half, sum(means[half:]) / (len(means) - half)
    assert abs(first - second) < 0.25 * (first + second) / 2


@pytest.mark.parametrize("world", [2, 3])
def test_accelerate_sharding_gives_each_rank_grouped_batches_of_one_shared_order(world):
    from accelerate.data_loader import BatchSamplerShard

    lengths = skewed_lengths()
    order = draw(lengths)
    shards = [list(BatchSamplerShard(LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(1), 16),
                                     num_processes=world, process_index=r, even_batches=True)) for r in range(world)]
    rounds = len(shards[0])
    assert all(len(s) == rounds for s in shards)
    for r, shard in enumerate(shards):
        assert shard[: rounds - 1] == order[r::world][: rounds - 1]
    seen = {i for s in shards for b in s for i in b}
    assert seen == set(range(len(lengths)))


@pytest.mark.parametrize("extra", [{}, {"max_tokens": 1200}, {"batching": "packed", "max_tokens": 1200}])
def test_restoring_the_generator_and_skipping_batches_continues_the_same_epoch(extra):
    """What resume does: set the shuffling generator back to its state at the epoch's start,
    then skip the batches already consumed (length-grouped, under a token budget, packed rows)."""
    from accelerate.data_loader import skip_first_batches

    feats = [{"input_ids": list(range(1, n + 1)), "labels": [1] * m} for n, m in skewed_lengths(n=120)]
    cfg = TrainConfig(per_device_batch_size=4, group_size=4, **extra)
    gen = torch.Generator().manual_seed(7)
    seam = _seam(feats, cfg)
    list(seam.loader(feats, gen))  # epoch 0
    epoch_start = gen.get_state()
    straight = [b["input_ids"] for b in seam.loader(feats, gen)]
    gen2 = torch.Generator().manual_seed(999)
    gen2.set_state(epoch_start)
    resumed = [b["input_ids"] for b in skip_first_batches(seam.loader(feats, gen2), 5)]
    assert len(resumed) == len(straight) - 5
    assert all(torch.equal(a, b) for a, b in zip(straight[5:], resumed))


def _seam(feats, cfg):
    class Tok:
        pad_token_id = 0

    return Batching(example_lengths(feats, T5), cfg, T5, Tok())


def test_batching_random_is_plain_shuffling():
    feats = [{"input_ids": [1] * n, "labels": [1]} for n, _ in skewed_lengths(n=64)]
    loader = _seam(feats, TrainConfig(per_device_batch_size=8, batching="random")).loader(feats, torch.Generator().manual_seed(0))
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)


def test_pad_collator_matches_transformers_seq2seq_collator():
    from transformers import DataCollatorForSeq2Seq


    feats = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(5, 5 + m))} for n, m in [(4, 2), (7, 5), (1, 1)]]
    ours = PadCollator(0)(feats)
    from sumtune_demo import _train_tokenizer

    tok = _train_tokenizer(["a b c d e f g h i j k l m n o p"] * 20, 60)
    ref = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding=True, return_tensors="pt")(
        [dict(f) for f in feats])
    assert tok.pad_token_id == 0
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], ref[key].long()), key
