"""T5's refill decoder: greedy decoding in which finished rows leave and waiting prompts join.

Prompts are taken longest first into one set of rows; a row whose summary is finished is dropped,
and when enough rows are free the next waiting prompts are encoded and join the others mid-way.
The decoder then runs about (summary tokens / rows) steps instead of one batch's longest summary
per batch. T5's decoder sees positions only relative to each other (relative attention bias), so
a row that joins late is the same as one that started alone: its cache is padded on the left and
masked. This reads T5 internals (the decoder blocks' EncDecAttention projections), which is why it
lives in the seq2seq family and applies to T5-family models only.
"""

from __future__ import annotations

import torch

from sumtune.data import PadCollator

# A batch (or the refill decoder's set of rows) holds at most this many times
# generation.batch_size prompts: the decoder's own cache grows with the number of prompts, not with
# their length.
MAX_GROWTH = 8

# The refill decoder takes in waiting prompts once they would make up at least this share of its
# rows: each intake costs an encoder pass of its own and a copy of the cache. On the demo model
# (batch sizes 8/16/32, vs data-order batches) 0.25 gave 2.24-2.27x, 0.1 2.08-2.12x, 0.5 2.20-2.25x.
REFILL_SHARE = 0.25

# Finished rows are dropped from the decoder's batch once they are this share of it (dropping
# copies the whole cache).
COMPACT_SHARE = 0.25

# Generation settings that add logits processors or stopping rules to greedy search, with the value
# that leaves it plain. The refill decoder is plain greedy search; any other value goes to generate.
_PLAIN_GREEDY = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0, "guidance_scale": 1.0,
    "remove_invalid_values": False, "bad_words_ids": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "watermarking_config": None, "stop_strings": None,
    "max_time": None, "prompt_lookup_num_tokens": None, "assistant_early_exit": None,
}


def plain_greedy(settings) -> bool:
    """Whether ``settings`` (a transformers GenerationConfig) is plain greedy search."""
    if settings.do_sample or settings.num_beams != 1 or settings.eos_token_id is None:
        return False
    for key, plain in _PLAIN_GREEDY.items():
        value = getattr(settings, key, None)
        if value is not None and value != plain and value != []:
            return False
    return True


def _pad(x: torch.Tensor, width: int, dim: int, left: bool = False) -> torch.Tensor:
    """``x`` zero-padded along ``dim`` to ``width``."""
    extra = width - x.shape[dim]
    if extra <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    zeros = x.new_zeros(shape)
    return torch.cat([zeros, x] if left else [x, zeros], dim=dim)


class _Rows:
    """The prompts being decoded together, one row each: encoder output and mask, the decoder's
    cache (self-attention over the row's own tokens, left-padded for rows that joined late;
    cross-attention over its prompt, right-padded), the last token, and how many tokens it has."""

    def __init__(self, prompts: list[int], hidden, enc_mask, cache, last: torch.Tensor):
        self.prompts = torch.tensor(prompts)
        self.hidden, self.enc_mask, self.cache, self.last = hidden, enc_mask, cache, last
        self.dec_mask = enc_mask.new_zeros(len(prompts), 0)  # no token in the self-attention cache yet
        self.made = torch.zeros(len(prompts), dtype=torch.long)
        self.live = [True] * len(prompts)  # False: finished, not yet dropped (see compact)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def width(self) -> int:
        return self.enc_mask.shape[1]

    def _layers(self, attention: str):
        return getattr(self.cache, attention).layers

    def join(self, new: _Rows) -> None:
        """Add ``new``'s rows (not started: nothing in their self-attention cache) to these."""
        width, steps = max(self.width, new.width), self.dec_mask.shape[1]
        self.hidden = torch.cat([_pad(self.hidden, width, 1), _pad(new.hidden, width, 1)])
        self.enc_mask = torch.cat([_pad(self.enc_mask, width, 1), _pad(new.enc_mask, width, 1)])
        self.dec_mask = torch.cat([self.dec_mask, self.dec_mask.new_zeros(len(new), steps)])
        for name in ("prompts", "last", "made"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(new, name)]))
        self.live = self.live + new.live
        for layer in self._layers("self_attention_cache"):
            heads, _, dim = layer.keys.shape[1:]
            zeros = layer.keys.new_zeros(len(new), heads, steps, dim)
            layer.keys, layer.values = torch.cat([layer.keys, zeros]), torch.cat([layer.values, zeros])
        for mine, theirs in zip(self._layers("cross_attention_cache"), new._layers("cross_attention_cache")):
            mine.keys = torch.cat([_pad(mine.keys, width, -2), _pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_pad(mine.values, width, -2), _pad(theirs.values, width, -2)])

    def compact(self) -> None:
        """Drop the finished rows; then cut cache columns no remaining row uses (leading
        self-attention positions of rows that left, trailing prompt positions beyond the longest
        remaining prompt)."""
        rows = [row for row, live in enumerate(self.live) if live]
        if len(rows) == len(self.live):
            return
        self.live = [True] * len(rows)
        index = torch.tensor(rows, dtype=torch.long)
        on_device = index.to(self.enc_mask.device)
        self.prompts, self.made = self.prompts[index], self.made[index]
        self.hidden, self.enc_mask = self.hidden[on_device], self.enc_mask[on_device]
        self.dec_mask, self.last = self.dec_mask[on_device], self.last[on_device]
        self.cache.batch_select_indices(on_device)
        if not rows:
            return
        lead = int(self.dec_mask.any(0).int().argmax())  # first position some row uses
        if lead:
            self.dec_mask = self.dec_mask[:, lead:]
            for layer in self._layers("self_attention_cache"):
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
        width = int(self.enc_mask.sum(1).max())
        if width < self.width:
            self.hidden, self.enc_mask = self.hidden[:, :width], self.enc_mask[:, :width]
            for layer in self._layers("cross_attention_cache"):
                layer.keys, layer.values = layer.keys[:, :, :width], layer.values[:, :, :width]


class Stream:
    """What both streaming decoders (this one and the decoder-only ``continuous`` one) share: the
    prompts, longest first; the budget (at most ``batch_size`` x the longest prompt's token
    positions, and MAX_GROWTH x ``batch_size`` rows, at once); when to take in waiting prompts; and
    each prompt's tokens as its row makes them. A decoder's row set has ``prompts`` (indices),
    ``last`` (each row's newest token), ``made`` (tokens so far) and ``live``."""

    def __init__(self, prompts: list[list[int]], batch_size: int, max_new_tokens: int, settings, on_done=None):
        eos = settings.eos_token_id
        self.ends = eos if isinstance(eos, list) else [eos]
        self.prompts, self.max_new_tokens, self.on_done = prompts, max_new_tokens, on_done
        self.budget = batch_size * max(1, len(prompts[0])) if prompts else 0
        self.most = MAX_GROWTH * batch_size
        self.done: list[list[int]] = [[] for _ in prompts]
        self.waiting = 0  # prompts[waiting:] have not started

    def intake(self, count: int, width: int) -> int | None:
        """With ``count`` rows decoding, the longest of their prompts ``width`` tokens: the end of
        the waiting prompts to take in now (``prompts[waiting:end]``: as many as fit the budget), or
        None when too few would fit to be worth an intake (REFILL_SHARE)."""
        take, prompts = self.waiting, self.prompts
        while take < len(prompts) and count + take - self.waiting < self.most:
            wider = max(width, len(prompts[take]))
            if (count + take - self.waiting + 1) * wider > self.budget:
                break
            width, take = wider, take + 1
        joining = take - self.waiting
        if joining and (not count or joining >= REFILL_SHARE * (count + joining) or take == len(prompts)):
            return take
        return None

    def record(self, rows) -> None:
        """Append each live row's newest token; mark the rows that finished."""
        for row, (i, token, made) in enumerate(zip(rows.prompts.tolist(), rows.last.tolist(), rows.made.tolist())):
            if not rows.live[row]:
                continue
            self.done[i].append(token)
            if token in self.ends or made >= self.max_new_tokens:
                rows.live[row] = False
                if self.on_done:
                    self.on_done()

    def run(self, begin, step, width, first_from_begin: bool) -> list[list[int]]:
        """The streaming loop both decoders share. ``begin(first, last)``: the row set of
        prompts[first:last], ready to decode (with their first token when ``first_from_begin``:
        a decoder-only prefill makes it); ``step(rows)``: one forward of every row, setting each
        row's ``last`` and ``made``; ``width(rows)``: the longest prompt still decoding. Returns
        each prompt's tokens."""
        rows = None
        while rows is not None or self.waiting < len(self.prompts):
            take = self.intake(sum(rows.live), width(rows)) if rows is not None else self.intake(0, 0)
            if take is not None:
                new = begin(self.waiting, take)
                self.waiting = take
                if first_from_begin:
                    self.record(new)
                if rows is None:
                    rows = new
                else:
                    rows.compact()
                    rows.join(new)
            if rows is None or not any(rows.live):
                rows = None
                continue
            step(rows)
            self.record(rows)
            # Finished rows ride along (their tokens are ignored) until enough of them can go at once.
            if len(rows) - sum(rows.live) >= COMPACT_SHARE * len(rows):
                rows.compact()
                if not len(rows):
                    rows = None
        return self.done


@torch.no_grad()
def refill_decode(net, prompts: list[list[int]], batch_size: int, max_new_tokens: int, pad_id: int,
                  device, on_done=None, settings=None) -> list[list[int]]:
    """Greedy summaries (token ids, end token included) of ``prompts``, which must be sorted longest
    first. At most ``batch_size`` x the longest prompt token positions and MAX_GROWTH x ``batch_size``
    rows are decoded at once: never more than the first batch of sorted ``generate`` holds."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    settings = settings if settings is not None else net.generation_config
    start = settings.decoder_start_token_id
    stream = Stream(prompts, batch_size, max_new_tokens, settings, on_done)
    collate = PadCollator(pad_id)

    def begin(first: int, last: int) -> _Rows:
        """Encode prompts[first:last] and fill their cross-attention cache (each decoder layer's
        keys and values of the prompt, as T5's attention computes them on its first step); their
        first decoder step is the next step of all rows."""
        padded = collate([{"input_ids": ids} for ids in prompts[first:last]])
        ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
        hidden = net.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        cross = DynamicCache(config=net.config)
        for index, block in enumerate(net.get_decoder().block):
            attention = block.layer[1].EncDecAttention
            shape = (*hidden.shape[:-1], -1, attention.key_value_proj_dim)
            cross.update(attention.k(hidden).view(shape).transpose(1, 2), attention.v(hidden).view(shape).transpose(1, 2),
                         index)
        cache = EncoderDecoderCache(DynamicCache(config=net.config), cross)
        starts = torch.full((last - first,), start, dtype=torch.long, device=device)
        return _Rows(list(range(first, last)), hidden, mask, cache, starts)

    def step(rows: _Rows) -> None:
        dec_mask = torch.cat([rows.dec_mask, rows.dec_mask.new_ones(len(rows), 1)], 1)
        out = net(encoder_outputs=BaseModelOutput(last_hidden_state=rows.hidden), attention_mask=rows.enc_mask,
                  decoder_input_ids=rows.last[:, None], decoder_attention_mask=dec_mask, cache=rows.cache,
                  use_cache=True)
        rows.dec_mask, rows.last, rows.made = dec_mask, out.logits[:, -1].argmax(-1), rows.made + 1

    return stream.run(begin, step, lambda rows: rows.width, first_from_begin=False)
