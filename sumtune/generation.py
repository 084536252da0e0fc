"""Batched, length-sorted, distributed summary generation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sumtune.config import GenerationConfig
from sumtune.data import PromptEncoder


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@dataclass
class PromptStats:
    truncated: int = 0  # prompts whose dialogue was cut to fit max_source_length
    shots_dropped: int = 0  # few-shot examples left out because they did not fit


# A batch of short prompts holds at most this many times generation.batch_size prompts: the
# decoder's own cache grows with the number of prompts, not with their length.
MAX_GROWTH = 8


def make_batches(lengths: list[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Batches of prompt indices. Sorted (the default): longest first, so memory trouble shows at
    once, and each batch holds as many prompts as fit in the token positions of the first batch
    (``batch_size`` x the longest prompt; at most MAX_GROWTH x ``batch_size``), so short dialogues go
    through in fewer, fuller batches. ``sort=False``: data order, ``batch_size`` each (the naive
    baseline the benchmark compares against)."""
    if not sort:
        return [list(range(i, min(i + batch_size, len(lengths)))) for i in range(0, len(lengths), batch_size)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = batch_size * max(1, lengths[order[0]]) if order else 0
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current and len(current) < MAX_GROWTH * batch_size and (len(current) + 1) * max(1, lengths[current[0]]) <= budget:
            current.append(i)
        else:
            batches.append([i])
    return batches


def shard_batches(lengths: list[int], batch_size: int, rank: int, world: int, sort: bool = True) -> list[list[int]]:
    """This rank's batches: ``make_batches`` dealt round-robin. Every index lands in exactly one
    batch of exactly one rank."""
    return make_batches(lengths, batch_size, sort)[rank::world]


@torch.no_grad()
def generate(accelerator, model, tokenizer, encoder: PromptEncoder, dialogues: list[str], gen: GenerationConfig,
             progress: bool = True, sort: bool = True) -> tuple[list[str], PromptStats]:
    """Summaries for ``dialogues`` in their order, on every rank, and what building the prompts cut."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    encoded = [encoder.encode_prompt(d) for d in dialogues]
    inputs = [ids for ids, _, _ in encoded]
    stats = PromptStats(sum(cut for _, cut, _ in encoded), sum(dropped for _, _, dropped in encoded))
    every = make_batches([len(x) for x in inputs], gen.batch_size, sort)
    batches = every[accelerator.process_index::accelerator.num_processes]
    # Under ZeRO-3 every forward is a collective (weights are gathered layer by layer): each rank
    # must call generate as often as the others, so a rank short of a batch runs a dummy one.
    lockstep = accelerator.num_processes > 1 and accelerator.distributed_type == "DEEPSPEED" and _zero3()
    if lockstep:
        calls = -(-len(every) // accelerator.num_processes)
        batches = batches + [None] * (calls - len(batches))
    model.eval()
    pad = tokenizer.pad_token_id
    mine: list[tuple[int, str]] = []
    bar = tqdm(batches, disable=not (progress and accelerator.is_main_process), desc="generate", leave=False)
    for batch in bar:
        dummy = batch is None
        batch = [0] if dummy else batch
        width = max(len(inputs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
            mask[row, : len(inputs[i])] = 1
        out = model.generate(
            input_ids=ids.to(accelerator.device),
            attention_mask=mask.to(accelerator.device),
            num_beams=gen.num_beams,
            max_new_tokens=gen.max_new_tokens,
            do_sample=False,
            synced_gpus=lockstep,
        )
        if dummy:
            continue
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        mine.extend(zip(batch, (t.strip() for t in texts)))
    everything = gather_object(mine) if accelerator.num_processes > 1 else mine
    result: list[str | None] = [None] * len(dialogues)
    for i, text in everything:
        if result[i] is not None:
            raise RuntimeError(f"example {i} was generated twice")
        result[i] = text
    missing = [i for i, t in enumerate(result) if t is None]
    if missing:
        raise RuntimeError(f"{len(missing)} examples were not generated (first: {missing[0]})")
    return result, stats
