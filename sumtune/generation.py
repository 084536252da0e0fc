"""Length-sorted, distributed summary generation, for every model family.

How a model decodes is its family's decision (``Family.decoder``, ``sumtune.families.decoding``):
T5's refill decoder or a decoder-only model's continuous decoder for plain greedy search (finished
rows leave, waiting prompts join), else ``model.generate`` over length-sorted batches. This module
encodes the prompts, deals them to the ranks longest first, calls the decoder, turns its rows into
text and gathers them.

The settings a decoder decodes with are sumtune's (``generation.*``) and the ids the model needs,
never what a checkpoint's own generation_config.json adds (see ``Family.generation_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sumtune import families
from sumtune.config import GenerationConfig
from sumtune.data import PromptEncoder, longest_first
from sumtune.families.decoding import make_batches
from sumtune.families.refill import MAX_GROWTH

__all__ = ["MAX_GROWTH", "STRATEGIES", "PromptStats", "decode_summaries", "generate", "make_batches", "settings_used",
           "shard_batches", "shard_prompts"]


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@dataclass
class PromptStats:
    truncated: int = 0  # prompts whose dialogue was cut to fit max_source_length
    shots_dropped: int = 0  # few-shot examples left out because they did not fit
    settings: dict = field(default_factory=dict)  # what generation decoded with (settings_used)
    strategy: str = ""


# What ``generate(strategy=...)`` may ask a family's decoder for besides "auto" (the benchmark
# compares them): its streaming decoder by name, or model.generate over sorted or data-order batches.
STRATEGIES = ("refill", "continuous", "sorted", "data-order")


def shard_batches(lengths: list[int], batch_size: int, rank: int, world: int, sort: bool = True) -> list[list[int]]:
    """This rank's batches: ``make_batches`` dealt round-robin. Every index lands in exactly one
    batch of exactly one rank."""
    return make_batches(lengths, batch_size, sort)[rank::world]


def shard_prompts(lengths: list[int], rank: int, world: int) -> list[int]:
    """This rank's prompts: the length-sorted order (longest first) dealt round-robin, so every rank
    gets as many long prompts as the others."""
    return longest_first(lengths)[rank::world]


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
    ``strategy``: ``auto`` (the family's decoder for these settings), or one of STRATEGIES (the
    benchmark compares them; ``data-order`` is the naive baseline: generate over batches in file
    order). ``stats.strategy`` names the decoder that ran."""
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
    choice = "sorted" if strategy == "auto" and not gen.refill else strategy
    decoder = family.decoder(model, settings, lockstep, choice)
    stats.strategy = decoder.name
    model.eval()
    # Longest first (the streaming decoders take prompts in this order; sorted batches are cut from
    # it), dealt round-robin; data order is the benchmark's baseline.
    order = list(range(len(inputs)))[rank::world] if strategy == "data-order" else shard_prompts(lengths, rank, world)
    show = progress and accelerator.is_main_process
    with tqdm(total=len(order), disable=not show, desc="generate", leave=False) as bar:
        rows = decoder([inputs[i] for i in order], gen.batch_size, accelerator.device, on_done=lambda: bar.update(1))
    mine = list(zip(order, decode_summaries(tokenizer, rows, settings)))
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
