"""Encoder-decoder models (T5, FLAN-T5, mT5, BART): the prompt goes to the encoder, the summary is
the decoder's sequence."""

from __future__ import annotations

import torch

from sumtune.errors import ConfigError
from sumtune.families.base import Family, PromptFrame, unwrap, wrapping

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
        real = batch["attention_mask"].sum() + (batch["labels"] != -100).sum()
        return real, batch["input_ids"].numel() + batch["labels"].numel()

    def token_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The decoder's input is the labels shifted right (the model does it), so logits at t predict labels[t].
        per_token = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                      reduction="none").view(labels.shape)
        return per_token, labels != -100

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

    def refill_net(self, model, settings, lockstep: bool):
        from sumtune.families.refill import plain_greedy

        if lockstep or settings.num_beams != 1 or not plain_greedy(settings):
            return None
        net = model
        if hasattr(model, "peft_config"):
            if model.active_peft_config.is_prompt_learning:
                return None
            net = model.get_base_model()
        if getattr(net.config, "model_type", None) not in REFILL_TYPES or settings.decoder_start_token_id is None:
            return None
        return net

    def _new_tokens(self, sequences: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return sequences[:, 1:]  # the decoder start token is not generated

    def _summary_logits(self, model, prompt_ids, prompt_mask, summary_ids, summary_mask) -> torch.Tensor:
        # The prompt goes to the encoder (padded on the right, masked); the decoder reads the
        # summary shifted right behind its start token. Padding after a summary's end can only be
        # seen by later positions of the causal decoder, which are masked out.
        start = self._model_ids(unwrap(model))["decoder_start_token_id"]
        decoder_input_ids = torch.cat([summary_ids.new_full((summary_ids.shape[0], 1), start), summary_ids[:, :-1]], 1)
        return model(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=decoder_input_ids,
                     use_cache=False).logits
