"""Batched, length-sorted, distributed summary generation, for every model family.

Two ways to decode, the same summaries:

- ``refill`` (greedy decoding of T5-family models, the default where it applies): the seq2seq
  family's refill decoder (``sumtune.families.refill``), in which finished rows leave and waiting
  prompts join mid-way.
- ``sorted``: ``model.generate`` over length-sorted batches (beam search, sampling, other model
  families, ZeRO-3, or ``generation.refill=false``); decoder-only prompts are padded on the left
  and cut off the output.

The settings ``generate`` decodes with are sumtune's (``generation.*``) and the ids the model
needs, never what a checkpoint's own generation_config.json adds (see ``Family.generation_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sumtune import families
from sumtune.config import GenerationConfig
from sumtune.data import PadCollator, PromptEncoder, longest_first
from sumtune.families.refill import MAX_GROWTH, refill_decode

__all__ = ["MAX_GROWTH", "STRATEGIES", "PromptStats", "decode_summaries", "generate", "make_batches", "refill_decode",
           "refill_model", "settings_used", "shard_batches", "shard_prompts"]


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@dataclass
class PromptStats:
    truncated: int = 0  # prompts whose dialogue was cut to fit max_source_length
    shots_dropped: int = 0  # few-shot examples left out because they did not fit
    settings: dict = field(default_factory=dict)  # what generation decoded with (settings_used)
    strategy: str = ""


STRATEGIES = ("refill", "sorted", "data-order")


def make_batches(lengths: list[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Batches of prompt indices. Sorted (the default): longest first, so memory trouble shows at
    once, and each batch holds as many prompts as fit in the token positions of the first batch
    (``batch_size`` x the longest prompt; at most MAX_GROWTH x ``batch_size``), so short dialogues go
    through in fewer, fuller batches. ``sort=False``: data order, ``batch_size`` each (the naive
    baseline the benchmark compares against)."""
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


def shard_batches(lengths: list[int], batch_size: int, rank: int, world: int, sort: bool = True) -> list[list[int]]:
    """This rank's batches: ``make_batches`` dealt round-robin. Every index lands in exactly one
    batch of exactly one rank."""
    return make_batches(lengths, batch_size, sort)[rank::world]


def shard_prompts(lengths: list[int], rank: int, world: int) -> list[int]:
    """This rank's prompts for the refill decoder: the length-sorted order (longest first) dealt
    round-robin, so every rank gets as many long prompts as the others."""
    return longest_first(lengths)[rank::world]


def refill_model(model, tokenizer, gen: GenerationConfig, lockstep: bool = False):
    """The module the refill decoder runs (a LoRA model's base, with its adapters in place), or None
    where it does not apply and ``model.generate`` decodes instead."""
    if not gen.refill:
        return None
    family = families.of_model(model)
    return family.refill_net(model, family.generation_settings(model, tokenizer, gen), lockstep)


def settings_used(settings) -> dict:
    """The decoding settings, as metrics.json records them (only what differs from transformers'
    defaults, so a reader sees what was asked for)."""
    return {k: v for k, v in sorted(settings.to_diff_dict().items()) if k != "transformers_version"}


def decode_summaries(tokenizer, rows: list[list[int]], settings) -> list[str]:
    """Texts of generated rows, each cut before the end token it stopped at. A model may have
    several end tokens (Qwen2.5's and Llama 3's generation configs list two): decoding stops at
    any of them (every decoder is given them all), and whichever it was is cut here by id, even
    where the tokenizer does not count it as special."""
    ends = settings.eos_token_id if isinstance(settings.eos_token_id, list) else [settings.eos_token_id]
    cut = [row[:-1] if row and row[-1] in ends else row for row in rows]
    return [t.strip() for t in tokenizer.batch_decode(cut, skip_special_tokens=True)]


def generate(accelerator, model, tokenizer, encoder: PromptEncoder, dialogues: list[str], gen: GenerationConfig,
             progress: bool = True, strategy: str = "auto") -> tuple[list[str], PromptStats]:
    """Summaries for ``dialogues`` in their order, on every rank, and what building the prompts cut.
    ``strategy``: ``auto`` (refill where it applies, else sorted), or one of STRATEGIES (the
    benchmark compares them; ``data-order`` is the naive baseline)."""
    # Inference mode skips autograd's bookkeeping (about 8% of the refill decoder's time on the
    # demo model); not under DeepSpeed, whose ZeRO-3 hooks gather weights that training reuses.
    quiet = torch.no_grad() if accelerator.distributed_type == "DEEPSPEED" else torch.inference_mode()
    with quiet:
        return _generate(accelerator, model, tokenizer, encoder, dialogues, gen, progress, strategy)


def _generate(accelerator, model, tokenizer, encoder, dialogues, gen, progress, strategy):
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    encoded = [encoder.encode_prompt(d) for d in dialogues]
    inputs = [ids for ids, _, _ in encoded]
    stats = PromptStats(sum(cut for _, cut, _ in encoded), sum(dropped for _, _, dropped in encoded))
    lengths = [len(x) for x in inputs]
    rank, world = accelerator.process_index, accelerator.num_processes
    # Under ZeRO-3 every forward is a collective (weights are gathered layer by layer): each rank
    # must call generate as often as the others, so a rank short of a batch runs a dummy one.
    lockstep = world > 1 and accelerator.distributed_type == "DEEPSPEED" and _zero3()
    family = families.of_model(model)
    settings = family.generation_settings(model, tokenizer, gen)
    stats.settings = settings_used(settings)
    net = family.refill_net(model, settings, lockstep) if gen.refill and strategy in ("auto", "refill") else None
    if strategy == "refill" and net is None:
        raise ValueError("the refill decoder does not apply here (greedy T5-family models only, not under ZeRO-3)")
    stats.strategy = "refill" if net is not None else ("data-order" if strategy == "data-order" else "sorted")
    model.eval()
    pad = tokenizer.pad_token_id
    show = progress and accelerator.is_main_process
    mine: list[tuple[int, str]] = []
    if net is not None:
        order = shard_prompts(lengths, rank, world)
        with tqdm(total=len(order), disable=not show, desc="generate", leave=False) as bar:
            tokens = refill_decode(net, [inputs[i] for i in order], gen.batch_size, gen.max_new_tokens, pad,
                                   accelerator.device, on_done=lambda: bar.update(1), settings=settings)
        texts = decode_summaries(tokenizer, tokens, settings)
        mine = list(zip(order, texts))
    else:
        collate = PadCollator(pad, side=family.prompt_padding())
        every = make_batches(lengths, gen.batch_size, sort=strategy != "data-order")
        batches = every[rank::world]
        if lockstep:
            calls = -(-len(every) // world)
            batches = batches + [None] * (calls - len(batches))
        for batch in tqdm(batches, disable=not show, desc="generate", leave=False):
            dummy = batch is None
            batch = [0] if dummy else batch
            padded = collate([{"input_ids": inputs[i]} for i in batch])
            out = family.generate(model, padded["input_ids"].to(accelerator.device),
                                  padded["attention_mask"].to(accelerator.device), settings, lockstep=lockstep)
            if dummy:
                continue
            mine.extend(zip(batch, decode_summaries(tokenizer, out.ids, settings)))
    everything = gather_object(mine) if world > 1 else mine
    result: list[str | None] = [None] * len(dialogues)
    for i, text in everything:
        if result[i] is not None:
            raise RuntimeError(f"example {i} was generated twice")
        result[i] = text
    missing = [i for i, t in enumerate(result) if t is None]
    if missing:
        raise RuntimeError(f"{len(missing)} examples were not generated (first: {missing[0]})")
    return result, stats
