"""The batching seam: how training examples become micro-batches, for the loader, the step plan
and resume alike.

``train.batching`` picks the strategy:

- ``grouped``: length-grouped batches (``LengthGroupedBatches``), optionally under a token budget
  (``train.max_tokens``: padded token positions per batch);
- ``random``: plain shuffled batches of ``train.per_device_batch_size``;
- ``packed``: several examples per row, no padding (``PackedRows``): rows of at most
  ``train.max_tokens`` tokens filled once by best-fit decreasing, shuffled each epoch; a
  micro-batch is one row, and the model family builds the row's inputs (positions restarting per
  example, masks that keep examples apart).

Every strategy is a batch sampler whose draws come from one ``torch.Generator`` only, so restoring
the generator's state at the start of an epoch and skipping the batches already consumed resumes
exactly, and the number of micro-batches of any epoch can be known in advance by drawing the same
epochs from a generator with the same seed (``Batching.epoch_batches``: what the step plan counts).
Accelerate deals micro-batch i of an epoch to rank i mod N.
"""

from __future__ import annotations

import bisect
import math

import torch

from sumtune.config import TrainConfig
from sumtune.data import longest_first


def _padded(lengths: list[tuple[int, int]], batch: list[int]) -> int:
    """Token positions of a padded batch: its size times its longest source plus longest target."""
    return len(batch) * (max(lengths[i][0] for i in batch) + max(lengths[i][1] for i in batch))


class LengthGroupedBatches:
    """Per-device batches of examples of similar length, deterministic from ``generator``.

    Each epoch: a random permutation is cut into pools of ``group_size`` batches; each pool is
    sorted by (source length, target length) and cut into batches; the full batches are
    shuffled, the one holding the longest example goes first (a run that will run out of
    memory does so at its first step), and a short last batch, if any, stays last.

    With a token budget (``max_tokens`` > 0) a batch also ends where one more example would take
    its padded size (examples x (longest source + longest target)) past the budget, so short
    examples travel in larger batches; the batch with the largest padded size goes first, and
    the number of batches of an epoch depends on its draw.

    Accelerate shards a batch sampler by handing batch i to rank i mod N, so every rank's
    batches are length-grouped too, and all ranks draw the same order from the same seed. The
    order is drawn from ``generator`` when iteration starts, so restoring the generator's state
    at the start of an epoch and skipping consumed batches resumes exactly.
    """

    def __init__(self, lengths: list[tuple[int, int]], batch_size: int, generator, group_size: int = 64,
                 max_tokens: int = 0):
        self.lengths = lengths
        self.size = batch_size
        # What Accelerate's BatchSamplerShard reads: a batch shorter than ``batch_size`` counts as
        # incomplete there (and is completed from the epoch's start), so batches of a budget,
        # whose sizes vary by design, declare None ("batches of dynamic length").
        self.batch_size = None if max_tokens else batch_size
        self.generator = generator
        self.group_size = group_size
        self.max_tokens = max_tokens
        self.drop_last = False

    def __len__(self) -> int:
        if self.max_tokens:  # depends on the draw: the count of a draw from a copy of the generator
            copy = torch.Generator().manual_seed(0)
            copy.set_state(self.generator.get_state())
            return len(self._draw(copy))
        return math.ceil(len(self.lengths) / self.size)

    def _cut(self, ranked: list[int]) -> list[list[int]]:
        if not self.max_tokens:
            return [ranked[j:j + self.size] for j in range(0, len(ranked), self.size)]
        batches: list[list[int]] = []
        current: list[int] = []
        src = tgt = 0
        for i in ranked:
            s, t = self.lengths[i]
            grown = (len(current) + 1) * (max(src, s) + max(tgt, t))
            if current and (len(current) == self.size or grown > self.max_tokens):
                batches.append(current)
                current, src, tgt = [], 0, 0
            current.append(i)
            src, tgt = max(src, s), max(tgt, t)
        return batches + [current] if current else batches

    def _draw(self, generator) -> list[list[int]]:
        n, bs = len(self.lengths), self.size
        perm = torch.randperm(n, generator=generator).tolist()
        pool = bs * self.group_size
        full, short = [], []
        for start in range(0, n, pool):
            members = perm[start:start + pool]
            ranked = [members[k] for k in longest_first([self.lengths[i] for i in members])]
            cut = self._cut(ranked)
            if self.max_tokens:  # budget-limited batches are all "full" but the very last one
                full += cut
            else:
                for batch in cut:
                    (full if len(batch) == bs else short).append(batch)
        if self.max_tokens and full:
            short = [full.pop()]
        order = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if order:
            if self.max_tokens:
                biggest = max(range(len(order)), key=lambda k: _padded(self.lengths, order[k]))
            else:
                biggest = max(range(len(order)),
                              key=lambda k: max(self.lengths[i][0] + self.lengths[i][1] for i in order[k]))
            order.insert(0, order.pop(biggest))
        return order + short

    def __iter__(self):
        return iter(self._draw(self.generator))


def pack_rows(sizes: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: items (by size, largest first, ties in index order) each go into the
    open row with the least room left that still holds them, else into a new row. Returns rows
    of item indices, each row in index order, rows in the order they were opened."""
    rows: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in longest_first(sizes):
        size = sizes[i]
        if size > capacity:
            raise ValueError(f"an item of {size} does not fit a row of {capacity}")
        k = bisect.bisect_left(rooms, (size, -1))
        if k < len(rooms):
            room, row = rooms.pop(k)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(rooms, (room - size, row))
    return [sorted(r) for r in rows]


class PackedRows:
    """Rows of examples packed once by best-fit decreasing into at most ``max_tokens`` tokens
    (source and target together), one row per micro-batch, the rows' order drawn from
    ``generator`` each epoch (the longest row first)."""

    def __init__(self, lengths: list[tuple[int, int]], max_tokens: int, generator):
        self.lengths = lengths
        self.max_tokens = max_tokens
        self.generator = generator
        self.rows = pack_rows([s + t for s, t in lengths], max_tokens)
        self.batch_size = None  # rows hold different numbers of examples (see LengthGroupedBatches)
        self.drop_last = False

    def __len__(self) -> int:
        return len(self.rows)

    def tokens(self, row: list[int]) -> int:
        return sum(self.lengths[i][0] + self.lengths[i][1] for i in row)

    def __iter__(self):
        order = [self.rows[i] for i in torch.randperm(len(self.rows), generator=self.generator).tolist()]
        if order:
            longest = max(range(len(order)), key=lambda k: self.tokens(order[k]))
            order.insert(0, order.pop(longest))
        return iter(order)


def real_token_share(batches, lengths: list[tuple[int, int]]) -> float:
    """Share of the token positions in these batches that are not padding (sources and targets
    together; each batch is padded to its longest source and its longest target)."""
    real = padded = 0
    for batch in batches:
        real += sum(lengths[i][0] + lengths[i][1] for i in batch)
        padded += _padded(lengths, batch)
    return real / max(padded, 1)


def batches_per_rank(n_batches: int, num_processes: int) -> int:
    """Batches each rank sees in an epoch of ``n_batches`` under Accelerate's sharding
    (even_batches: the last round is completed from the start of the data)."""
    return math.ceil(n_batches / num_processes)


class Batching:
    """The seam: ``Batching(lengths, cfg, family, tokenizer)`` -> ``loader(features, generator)``
    (the training DataLoader), ``epoch_batches(epoch)`` (micro-batches in that epoch, over all
    ranks, for the step plan) and ``report()`` (one line for the start-up log)."""

    def __init__(self, lengths: list[tuple[int, int]], cfg: TrainConfig, family, tokenizer):
        from sumtune.data import make_collator

        self.lengths, self.cfg, self.family = lengths, cfg, family
        self.strategy = cfg.batching
        if self.strategy == "packed":
            self.collate = family.packer()
        else:
            self.collate = make_collator(tokenizer, cfg.pad_to_multiple if cfg.compile else 1)
        self._counts: list[int] = []

    def sampler(self, generator):
        cfg = self.cfg
        if self.strategy == "packed":
            return PackedRows(self.lengths, cfg.max_tokens, generator)
        if self.strategy == "grouped":
            return LengthGroupedBatches(self.lengths, cfg.per_device_batch_size, generator, cfg.group_size, cfg.max_tokens)
        return None

    def loader(self, features: list[dict], generator):
        """The DataLoader, every draw from ``generator`` (the run's data generator, checkpointed)."""
        sampler = self.sampler(generator)
        if sampler is None:
            return torch.utils.data.DataLoader(features, batch_size=self.cfg.per_device_batch_size, shuffle=True,
                                               collate_fn=self.collate, generator=generator)
        # A generator of its own: without one, every pass over the DataLoader draws its base seed
        # from the global RNG, which resume restores, so a resumed run would draw different
        # dropout masks from then on.
        return torch.utils.data.DataLoader(features, batch_sampler=sampler, collate_fn=self.collate,
                                           generator=torch.Generator())

    def epoch_batches(self, epoch: int) -> int:
        """Micro-batches (over all ranks) of epoch ``epoch`` (0-based) of a run seeded with
        ``train.seed``: drawn here from a generator of that seed, as the loader will draw them."""
        fixed = self.strategy != "grouped" or not self.cfg.max_tokens
        if fixed:
            if not self._counts:
                sampler = self.sampler(torch.Generator().manual_seed(self.cfg.seed))
                self._counts = [len(sampler) if sampler is not None
                                else math.ceil(len(self.lengths) / self.cfg.per_device_batch_size)]
            return self._counts[0]
        if len(self._counts) <= epoch:
            generator = torch.Generator().manual_seed(self.cfg.seed)
            sampler = self.sampler(generator)
            self._counts = [len(sampler._draw(generator)) for _ in range(epoch + 1)]
        return self._counts[epoch]

    def report(self) -> str:
        """What padding the first epoch's batches cost (grouped or packed vs random), for the log."""
        cfg, lengths = self.cfg, self.lengths
        bs = cfg.per_device_batch_size
        perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        random_share = real_token_share([perm[i:i + bs] for i in range(0, len(perm), bs)], lengths)
        if self.strategy == "random":
            return f"batches: random; {random_share:.1%} of token positions are real (not padding)"
        sampler = self.sampler(torch.Generator().manual_seed(cfg.seed))
        batches = list(sampler)
        if self.strategy == "packed":
            fill = sum(sampler.tokens(r) for r in batches) / (len(batches) * cfg.max_tokens)
            return (f"batches: packed, {len(lengths)} examples in {len(batches)} rows of at most {cfg.max_tokens} tokens "
                    f"({fill:.1%} full, no padding; random batches of {bs}: {random_share:.1%} of token positions real)")
        budget = f", at most {cfg.max_tokens} padded tokens each" if cfg.max_tokens else ""
        return (f"batches: length-grouped (pools of {cfg.group_size}{budget}); {len(batches)} in the first epoch; "
                f"{real_token_share(batches, lengths):.1%} of token positions are real (random batches: {random_share:.1%})")
