"""Decoders: what turns a list of prompts (token ids) into generated token rows. A family chooses
one (``Family.decoder``); ``sumtune.generation`` only encodes, shards, sorts, calls it and gathers.

- ``refill`` (greedy T5-family models): ``refill.refill_decode``, finished rows leave and waiting
  prompts join.
- ``continuous`` (greedy decoder-only models): ``continuous.continuous_decode``, the same for a
  decoder-only model's KV cache.
- ``sorted`` / ``data-order``: ``model.generate`` (through ``Family.generate``) over batches,
  length-sorted or in the order given; everything else (beam search, sampling, BART, ZeRO-3's
  lockstep, prompt tuning's uncached path, ``generation.refill=false``) and the benchmark's
  baselines.
"""

from __future__ import annotations

import torch

from sumtune.families.refill import MAX_GROWTH


def make_batches(lengths: list[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Batches of prompt indices. Sorted (the default): longest first, so memory trouble shows at
    once, and each batch holds as many prompts as fit in the token positions of the first batch
    (``batch_size`` x the longest prompt; at most MAX_GROWTH x ``batch_size``), so short dialogues go
    through in fewer, fuller batches. ``sort=False``: data order, ``batch_size`` each (the naive
    baseline the benchmark compares against)."""
    from sumtune.data import longest_first

    if not sort:
        return [list(range(i, min(i + batch_size, len(lengths)))) for i in range(0, len(lengths), batch_size)]
    order = longest_first(lengths)
    budget = batch_size * max(1, lengths[order[0]]) if order else 0
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current and len(current) < MAX_GROWTH * batch_size and (len(current) + 1) * max(1, lengths[current[0]]) <= budget:
            current.append(i)
        else:
            batches.append([i])
    return batches


class Decoder:
    """``decoder(prompts, batch_size, device, on_done)`` -> one row of generated ids per prompt
    (the prompt stripped, the end token included when reached). ``name`` is what metrics.json
    records as ``generation_strategy``. Refill and Continuous take the prompts into their rows in
    the order given: longest first, as generation deals them."""

    name = ""

    def __call__(self, prompts: list[list[int]], batch_size: int, device, on_done=None) -> list[list[int]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Batched(Decoder):
    """``model.generate`` over batches: length-sorted (``sorted``) or in the order given
    (``data-order``). ``lockstep`` (ZeRO-3, where every forward is a collective): every rank makes
    as many generate calls as the rank with the most batches, the others running a dummy batch."""

    def __init__(self, family, model, settings, lockstep: bool = False, sort: bool = True):
        self.family, self.model, self.settings, self.lockstep = family, model, settings, lockstep
        self.name = "sorted" if sort else "data-order"
        self.sort = sort

    def __call__(self, prompts, batch_size, device, on_done=None):
        from sumtune.data import PadCollator

        collate = PadCollator(self.settings.pad_token_id, side=self.family.prompt_padding())
        batches: list = make_batches([len(p) for p in prompts], batch_size, sort=self.sort)
        if self.lockstep:
            calls = torch.tensor([len(batches)], device=device)
            torch.distributed.all_reduce(calls, op=torch.distributed.ReduceOp.MAX)
            batches = batches + [None] * (int(calls.item()) - len(batches))
        rows: list = [None] * len(prompts)
        for batch in batches:
            dummy = batch is None
            chosen = [0] if dummy else batch
            padded = collate([{"input_ids": prompts[i] if prompts else [self.settings.pad_token_id]} for i in chosen])
            out = self.family.generate(self.model, padded["input_ids"].to(device), padded["attention_mask"].to(device),
                                       self.settings, lockstep=self.lockstep)
            if dummy:
                continue
            for i, ids in zip(batch, out.ids):
                rows[i] = ids
                if on_done:
                    on_done()
        return rows


class Refill(Decoder):
    """T5's refill decoder (``refill.refill_decode``) on ``net`` (a LoRA model's base, adapters in place)."""

    name = "refill"

    def __init__(self, net, settings):
        self.net, self.settings = net, settings

    def __call__(self, prompts, batch_size, device, on_done=None):
        from sumtune.families.refill import refill_decode

        return refill_decode(self.net, prompts, batch_size, self.settings.max_new_tokens, self.settings.pad_token_id,
                             device, on_done=on_done, settings=self.settings)


class Continuous(Decoder):
    """The decoder-only continuous decoder (``continuous.continuous_decode``) on ``net``."""

    name = "continuous"

    def __init__(self, net, settings):
        self.net, self.settings = net, settings

    def __call__(self, prompts, batch_size, device, on_done=None):
        from sumtune.families.continuous import continuous_decode

        return continuous_decode(self.net, prompts, batch_size, self.settings.max_new_tokens,
                                 self.settings.pad_token_id, device, self.settings, on_done=on_done)
