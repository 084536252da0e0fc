"""Continuous batching for decoder-only models: greedy decoding in which finished rows leave and
waiting prompts join, the causal counterpart of T5's refill decoder (``refill.py``).

Prompts are taken longest first into one set of rows. A row whose summary is finished leaves; when
enough rows are free, the next waiting prompts are prefilled together (left-padded among
themselves) and their KV cache joins the others' mid-way. Every row's cache is aligned on the right
(its newest token in the last column) and padded on the left, the padding masked; each row carries
its own position ids, counting its real tokens only, so a RoPE model sees positions 0..n-1 for a
row's prompt and summary whatever padding sits in front of them: each row decodes as
``model.generate`` decodes its prompt alone.

transformers 5.24's own continuous batching (``generate_batch``) gave the same tokens on the tested
architectures, but on CPU it attends every query over the cache of the whole batch (one flat
sequence with a dense mask) and sizes its paged cache from the device's memory: 0.47-1.43x
data-order batches on the demo models, against this decoder's 1.66-2.84x (docs/performance.md).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from sumtune.families.refill import Stream, _pad

# Decoder-only architectures whose forward takes per-row position ids with a left-padded cache and
# mask (tested token for token against model.generate on each prompt alone). An architecture that
# derives positions itself, or keeps a sliding-window or hybrid cache, decodes through generate.
CONTINUOUS_TYPES = ("llama", "qwen2", "mistral", "gemma", "phi")


# Spare cache columns a layer keeps beyond what it holds: a decode step writes its new key and
# value there instead of concatenating (a copy of the whole cache) every step.
ROOM = 32


def full_attention_cache(net):
    """A fresh DynamicCache for ``net`` whose layers append into spare room (``_Growing``), or None
    when any of its layers is not a plain full-attention layer (a sliding window crops the cache,
    which the column bookkeeping here cannot follow)."""
    cache = DynamicCache(config=net.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [_Growing() for _ in cache.layers]
    return cache


class _Growing(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with ROOM spare columns: an update
    writes into them, and only a full buffer, or keys and values replaced from outside (a join, a
    compaction), is copied into a new one. Measured on the fine-tuned demo decoder-only model: 4-10%
    less time than DynamicLayer's concatenation per step, the same tokens."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        need = held + key_states.shape[-2]
        buffers = getattr(self, "_buffers", None)
        if (buffers is None or not held or buffers[0].shape[-2] < need or buffers[0].shape[0] != key_states.shape[0]
                or buffers[0].data_ptr() != self.keys.data_ptr() or buffers[1].data_ptr() != self.values.data_ptr()):
            shape = (*key_states.shape[:2], need + ROOM, key_states.shape[-1])
            buffers = (key_states.new_empty(shape), value_states.new_empty(shape))
            if held:
                buffers[0][:, :, :held] = self.keys
                buffers[1][:, :, :held] = self.values
            self._buffers = buffers
        buffers[0][:, :, held:need] = key_states
        buffers[1][:, :, held:need] = value_states
        self.keys, self.values = buffers[0][:, :, :need], buffers[1][:, :, :need]
        return self.keys, self.values


class _Rows:
    """The prompts being decoded together, one row each: the KV cache (aligned on the right, padded
    on the left), its mask, each row's next position id, last token and number of tokens made."""

    def __init__(self, prompts: list[int], cache, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor):
        self.prompts = torch.tensor(prompts)
        self.cache, self.mask, self.positions, self.last = cache, mask, positions, last
        self.made = torch.ones(len(prompts), dtype=torch.long)  # the prefill made the first token
        self.live = [True] * len(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def join(self, new: _Rows) -> None:
        """Add ``new``'s rows; both caches are padded on the left to the wider one."""
        width = max(self.mask.shape[1], new.mask.shape[1])
        self.mask = torch.cat([_pad(self.mask, width, 1, left=True), _pad(new.mask, width, 1, left=True)])
        for name in ("prompts", "positions", "last", "made"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(new, name)]))
        self.live = self.live + new.live
        for mine, theirs in zip(self.cache.layers, new.cache.layers):
            mine.keys = torch.cat([_pad(mine.keys, width, -2, left=True), _pad(theirs.keys, width, -2, left=True)])
            mine.values = torch.cat([_pad(mine.values, width, -2, left=True), _pad(theirs.values, width, -2, left=True)])

    def compact(self) -> None:
        """Drop the finished rows; then cut the leading cache columns no remaining row uses."""
        rows = [row for row, live in enumerate(self.live) if live]
        if len(rows) == len(self.live):
            return
        self.live = [True] * len(rows)
        index = torch.tensor(rows, dtype=torch.long)
        on_device = index.to(self.mask.device)
        self.prompts, self.made = self.prompts[index], self.made[index]
        self.mask, self.positions, self.last = self.mask[on_device], self.positions[on_device], self.last[on_device]
        self.cache.batch_select_indices(on_device)
        if not rows:
            return
        lead = int(self.mask.any(0).int().argmax())  # first column some row uses
        if lead:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]


@torch.no_grad()
def continuous_decode(net, prompts: list[list[int]], batch_size: int, max_new_tokens: int, pad_id: int, device,
                      settings, on_done=None) -> list[list[int]]:
    """Greedy summaries (token ids, end token included) of ``prompts``, which must be sorted longest
    first. At most ``batch_size`` x the longest prompt's token positions of prompts and MAX_GROWTH x
    ``batch_size`` rows are decoded at once, as the refill decoder does."""
    stream = Stream(prompts, batch_size, max_new_tokens, settings, on_done)

    def begin(first: int, last: int) -> _Rows:
        """Prefill prompts[first:last] (left-padded, positions counting real tokens only); their
        first summary token comes out of it."""
        group = prompts[first:last]
        width = max(len(ids) for ids in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, prompt in enumerate(group):
            if prompt:
                ids[row, -len(prompt):] = torch.tensor(prompt)
                mask[row, -len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = full_attention_cache(net)
        out = net(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                  logits_to_keep=1)
        return _Rows(list(range(first, last)), out.cache, mask, mask.sum(-1), out.logits[:, -1].argmax(-1))

    def step(rows: _Rows) -> None:
        mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows), 1)], 1)
        out = net(input_ids=rows.last[:, None], attention_mask=mask, position_ids=rows.positions[:, None],
                  cache=rows.cache, use_cache=True)
        live = torch.tensor(rows.live, device=mask.device)
        # A finished row rides along until it is dropped; its position stays where it ended.
        rows.mask, rows.positions = mask, rows.positions + live
        rows.last, rows.made = out.logits[:, -1].argmax(-1), rows.made + 1

    def width(rows: _Rows) -> int:
        """The longest prompt still decoding (rows are in prompt order, longest first)."""
        return next((len(prompts[i]) for i, live in zip(rows.prompts.tolist(), rows.live) if live), 0)

    return stream.run(begin, step, width, first_from_begin=True)
