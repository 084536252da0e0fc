"""Encoder-decoder models (T5, FLAN-T5, mT5, BART): the prompt goes to the encoder, the summary is
the decoder's sequence."""

from __future__ import annotations

import torch

from sumtune.errors import ConfigError
from sumtune.families.base import Family, PromptFrame, additive_mask, greedy_net, unwrap, wrapping

T5_TYPES = ("t5", "mt5", "umt5")
# T5's decoder sees positions only relative to each other, which is what lets a row join the
# refill decoder mid-way; BART's learned absolute positions would be wrong for such a row.
REFILL_TYPES = ("t5", "mt5")


class Seq2SeqFamily(Family):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    task_type = "SEQ_2_SEQ_LM"

    def check_precision(self, mixed_precision: str) -> None:
        if mixed_precision == "fp16" and self.model_type in T5_TYPES:
            raise ConfigError(
                "mixed_precision fp16 with a T5 model: T5 overflows to NaN in fp16; "
                "use bf16 (GPU) or no mixed precision (fp32) in the accelerate config"
            )

    def lora_targets(self) -> str | list[str]:
        # Every linear layer of T5's blocks (attention and gated feed-forward), not the lm_head.
        return ["q", "k", "v", "o", "wi_0", "wi_1", "wo"] if self.model_type in T5_TYPES else "all-linear"

    def frame(self, tokenizer, template: str, chat_template: str = "never", system_prompt: str | None = None,
              chat_date: str | None = None) -> PromptFrame:
        # The encoder reads the prompt as the tokenizer wraps any text (T5: ... </s>; BART: <s> ... </s>).
        lead, tail = wrapping(tokenizer)
        return PromptFrame(template, lead, tail)

    def target_ids(self, tokenizer, summary: str, max_target_length: int) -> tuple[list[int], bool]:
        ids = tokenizer(summary)["input_ids"]
        if len(ids) <= max_target_length:
            return ids, False
        return ids[: max_target_length - 1] + [tokenizer.eos_token_id], True

    def positions_needed(self, max_source_length: int, max_target_length: int) -> tuple[int, str]:
        # The encoder reads the prompt, the decoder the summary: each within the model's positions.
        if max_source_length >= max_target_length:
            return max_source_length, "data.max_source_length"
        return max_target_length, "data.max_target_length"

    def example(self, prompt: list[int], target: list[int]) -> dict:
        return {"input_ids": prompt, "labels": target}

    def lengths(self, feature: dict) -> tuple[int, int]:
        return len(feature["input_ids"]), len(feature["labels"])

    def count(self, batch: dict) -> tuple[torch.Tensor, int]:
        sources = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()  # packed: no padding
        return sources + (batch["labels"] != -100).sum(), batch["input_ids"].numel() + batch["labels"].numel()

    def examples(self, batch: dict) -> int:
        if "segment_ids" in batch:  # packed: one segment per example
            return int(batch["segment_ids"].max()) + 1
        return super().examples(batch)

    def align(self, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The decoder's input is the labels shifted right, so the output at t predicts labels[t].
        return outputs, labels

    def target_tokens(self, batch: dict) -> torch.Tensor:
        return (batch["labels"] != -100).sum()

    def forward(self, model, batch: dict):
        net = unwrap(model)
        if "segment_ids" in batch:
            return self._packed_forward(model, net, batch)
        decoder_input_ids = net.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=decoder_input_ids, use_cache=False)

    # -- packed rows, T5X-style: several (prompt, summary) pairs per row, kept apart by segment ids
    def packer(self):
        return pack_seq2seq

    def check_packing(self, model, method_config=None) -> None:
        from sumtune.errors import ConfigError

        net = unwrap(model)
        if self.model_type not in T5_TYPES:
            raise ConfigError(f"train.batching=packed with a '{self.model_type}' model: only T5's relative positions are the "
                              "same for an example inside a packed row as alone (BART's absolute positions count from the "
                              "row's start); use train.batching=grouped")
        impl = net.config._attn_implementation
        if impl not in ("eager", "sdpa"):
            raise ConfigError(f"train.batching=packed with T5 needs eager or sdpa attention (its packed masks are dense "
                              f"4D masks), not '{impl}'; use train.batching=grouped")
        super().check_packing(model, method_config)

    def _packed_forward(self, model, net, batch: dict):
        """Encoder: each token attends to its own example; decoder: causally within its own
        example; cross-attention: from a summary to its own dialogue only. The decoder's input is
        each summary shifted right behind its own start token. T5's relative position bias
        depends on offsets only, so an example sees inside its row what it sees alone."""
        enc, dec, labels = batch["segment_ids"], batch["decoder_segment_ids"], batch["labels"]
        dtype = next(p.dtype for p in net.parameters() if p.is_floating_point())
        same = lambda q, k: q[:, None, :, None] == k[:, None, None, :]  # noqa: E731
        causal = torch.ones(dec.shape[1], dec.shape[1], dtype=torch.bool, device=dec.device).tril()
        encoder_mask = additive_mask(same(enc, enc), dtype)
        decoder_mask = additive_mask(same(dec, dec) & causal, dtype)
        cross_mask = additive_mask(same(dec, enc), dtype)
        starts = torch.ones_like(dec, dtype=torch.bool)
        starts[:, 1:] = dec[:, 1:] != dec[:, :-1]
        start_id = self._model_ids(net)["decoder_start_token_id"]
        decoder_input_ids = torch.where(starts, torch.full_like(labels, start_id), labels.roll(1, dims=1))
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, net.config.pad_token_id)

        # The model passes its encoder mask on to the decoder's cross-attention, whose mask must
        # be [summary positions x dialogue positions] instead: swapped on the way in.
        def cross(_module, args, kwargs):
            return args, {**kwargs, "encoder_attention_mask": cross_mask}

        hook = net.get_decoder().register_forward_pre_hook(cross, with_kwargs=True)
        try:
            return model(input_ids=batch["input_ids"], attention_mask=encoder_mask, decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_mask, use_cache=False)
        finally:
            hook.remove()

    def _model_ids(self, net) -> dict:
        config, shipped = net.config, getattr(net, "generation_config", None)
        ids = {}
        for key in ("decoder_start_token_id", "forced_bos_token_id", "bos_token_id"):
            value = getattr(config, key, None)
            if value is None and shipped is not None:
                value = getattr(shipped, key, None)
            if value is not None:
                ids[key] = value
        return ids

    def _streaming_decoder(self, model, settings):
        from sumtune.families.decoding import Refill

        net = greedy_net(model, settings)
        if net is None or getattr(net.config, "model_type", None) not in REFILL_TYPES or settings.decoder_start_token_id is None:
            return None
        return Refill(net, settings)

    def _new_tokens(self, sequences: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return sequences[:, 1:]  # the decoder start token is not generated

    def _summary_forward(self, model, prompt_ids, prompt_mask, summary_ids, summary_mask):
        # The prompt goes to the encoder (padded on the right, masked); the decoder reads the
        # summary shifted right behind its start token. Padding after a summary's end can only be
        # seen by later positions of the causal decoder, which are masked out.
        start = self._model_ids(unwrap(model))["decoder_start_token_id"]
        decoder_input_ids = torch.cat([summary_ids.new_full((summary_ids.shape[0], 1), start), summary_ids[:, :-1]], 1)
        return model(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=decoder_input_ids,
                     use_cache=False), slice(None)


def pack_seq2seq(features: list[dict]) -> dict:
    """One packed row from (prompt, summary) features: the prompts one after the other (the
    encoder's row), the summaries likewise (the decoder's), and each token's example number."""
    sources = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
    targets = [torch.as_tensor(f["labels"], dtype=torch.long) for f in features]
    segments = lambda rows: torch.cat([torch.full((len(r),), k, dtype=torch.long) for k, r in enumerate(rows)])  # noqa: E731
    return {"input_ids": torch.cat(sources)[None], "segment_ids": segments(sources)[None],
            "labels": torch.cat(targets)[None], "decoder_segment_ids": segments(targets)[None]}
