"""Decoder-only models (Llama, Qwen2, Mistral, Gemma, Phi, ...): prompt and summary are one
sequence, ``prompt + summary + EOS``, and only the summary and its EOS are learned.

The traps this file exists for (each silent in other toolkits):

- labels are masked by POSITION (the prompt's), never by comparing ids with the pad id: with
  pad == eos (Llama, Mistral) the latter would mask the real EOS too, and the model would never
  learn to stop;
- the EOS is always appended to the summary, whatever the tokenizer's post-processor does;
- a BOS is put in front only when the tokenizer adds one by default, and not when a chat template
  already starts with it (no double BOS);
- prompts are padded on the LEFT for generation, so every row's last prompt token is where
  decoding continues, and the prompt is cut off the output.
"""

from __future__ import annotations

import copy

import torch

from sumtune.errors import DataError
from sumtune.families.base import Family, GenerationOutput, PromptFrame, greedy_net, wrapping
from sumtune.prompts import PLACEHOLDER, resolve_template

_MARK = "<<sumtune-dialogue>>"


class CausalFamily(Family):
    name = "causal"
    auto_class = "AutoModelForCausalLM"
    task_type = "CAUSAL_LM"

    def frame(self, tokenizer, template: str, chat_template: str = "auto", system_prompt: str | None = None,
              chat_date: str | None = None) -> PromptFrame:
        template = resolve_template(template)
        chat = False
        if chat_template == "auto" and getattr(tokenizer, "chat_template", None):
            # The instruction (with the dialogue) is the user's turn; the summary is the assistant's.
            # The system message only when one is configured: without one a template does what its
            # authors chose (Qwen2.5's inserts a default one), the same on every run.
            message = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
            message.append({"role": "user", "content": template.replace(PLACEHOLDER, _MARK).strip()})
            # date_string: Llama 3's template reads it, and without it puts today's date in the prompt.
            dated = {"date_string": chat_date} if chat_date else {}
            rendered = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True, **dated)
            if isinstance(rendered, str) and rendered.count(_MARK) == 1:
                template, chat = rendered.replace(_MARK, PLACEHOLDER), True
        lead, _ = wrapping(tokenizer)
        starts = tokenizer(template.split(PLACEHOLDER)[0], add_special_tokens=False)["input_ids"][:len(lead)]
        if lead and starts == lead:
            lead = []  # the (chat) template opens with the BOS itself
        return PromptFrame(template, lead, [], chat)

    def target_ids(self, tokenizer, summary: str, max_target_length: int) -> tuple[list[int], bool]:
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no end-of-sequence token: a decoder-only model could not learn where a "
                            "summary ends; set eos_token in its tokenizer_config.json")
        ids = tokenizer(summary, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) <= max_target_length:
            return ids, False
        return ids[: max_target_length - 1] + [tokenizer.eos_token_id], True

    def positions_needed(self, max_source_length: int, max_target_length: int) -> tuple[int, str]:
        return max_source_length + max_target_length, "data.max_source_length + data.max_target_length"

    def example(self, prompt: list[int], target: list[int]) -> dict:
        return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target}

    def lengths(self, feature: dict) -> tuple[int, int]:
        return len(feature["input_ids"]), 0

    def count(self, batch: dict) -> tuple[torch.Tensor, int]:
        # Labels sit inside the input sequence: counting them as well would count the summary twice.
        real = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()  # packed
        return real, batch["input_ids"].numel()

    def examples(self, batch: dict) -> int:
        if "position_ids" in batch:  # packed: each example's positions start at 0
            return int((batch["position_ids"] == 0).sum())
        return super().examples(batch)

    def align(self, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Prompt tuning puts virtual tokens in front of the input, and their outputs in front of the
        # sequence's: the last len(labels) positions are the sequence's own. Position t predicts token t + 1.
        outputs = outputs[:, outputs.shape[1] - labels.shape[1]:]
        return outputs[:, :-1], labels[:, 1:]

    def target_tokens(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != -100).sum()

    def forward(self, model, batch: dict):
        if "position_ids" in batch:
            # Packed: no attention mask and no cache, so that transformers finds the examples'
            # boundaries in the restarting positions and keeps each to itself (with a cache, or a
            # mask, it silently would not); flash-attention variants read the same positions.
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)

    def packer(self):
        return pack_causal

    def prompt_padding(self) -> str:
        return "left"

    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings, lockstep: bool = False,
                 logprobs: bool = False, sampled: bool = False) -> GenerationOutput:
        """A prompt-tuned model (peft 0.21, transformers 5.24) decodes wrongly in two ways, both
        measured against its own uncached forward, i.e. what it was trained to compute: with a KV
        cache, every token after the first gets a position that leaves out the virtual tokens; and
        with left padding, the virtual tokens sit in front of the padding (peft drops the position
        ids generate derives from the mask), so a padded row's prompt sits further from them than
        in training. Such a model therefore decodes without a cache (a full forward per token),
        each group of equal-length prompts unpadded."""
        config = getattr(model, "active_peft_config", None)
        if not getattr(config, "is_prompt_learning", False):
            return super().generate(model, input_ids, attention_mask, settings, lockstep, logprobs, sampled)
        if lockstep:
            raise ValueError("prompt-learning generation cannot run in lockstep (refused under ZeRO-3 by methods.check)")
        settings = copy.deepcopy(settings)
        settings.use_cache = False
        lengths = attention_mask.sum(1).tolist()
        ids: list = [None] * len(lengths)
        scores: list = [None] * len(lengths)
        for n in sorted(set(lengths), reverse=True):
            rows = [i for i, length in enumerate(lengths) if length == n]
            out = super().generate(model, input_ids[rows][:, -n:], attention_mask[rows][:, -n:], settings, False, logprobs,
                                   sampled)
            for j, i in enumerate(rows):
                ids[i] = out.ids[j]
                scores[i] = out.logprobs[j] if logprobs else None
        return GenerationOutput(ids, scores if logprobs else None)

    def _streaming_decoder(self, model, settings):
        from sumtune.families.continuous import CONTINUOUS_TYPES, full_attention_cache
        from sumtune.families.decoding import Continuous

        net = greedy_net(model, settings)
        if net is None or getattr(net.config, "model_type", None) not in CONTINUOUS_TYPES or full_attention_cache(net) is None:
            return None
        return Continuous(net, settings)

    def _new_tokens(self, sequences: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return sequences[:, input_ids.shape[1]:]

    def _summary_forward(self, model, prompt_ids, prompt_mask, summary_ids, summary_mask):
        # One sequence per row: the prompt, padded on the LEFT (every prompt ends at the same
        # column, as in generation), then the summary, padded on the right. Position ids count
        # real tokens only, as generate counts them for left-padded prompts, so a row is scored as
        # if alone; the logits at the prompt's last column predict the summary's first token.
        if not bool(prompt_mask[:, -1].all()):
            raise ValueError("decoder-only prompts must be padded on the left")
        ids = torch.cat([prompt_ids, summary_ids], 1)
        mask = torch.cat([prompt_mask, summary_mask.to(prompt_mask.dtype)], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return out, slice(prompt_ids.shape[1] - 1, -1)


def pack_causal(features: list[dict]) -> dict:
    """One packed row from decoder-only features (prompt + summary + EOS each): the sequences one
    after the other, positions restarting at 0 for each, and no label on an example's first token
    (it would be predicted from the end of the example before it)."""
    ids = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
    labels = [torch.as_tensor(f["labels"], dtype=torch.long).clone() for f in features]
    for row in labels:
        row[0] = -100
    return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat([torch.arange(len(x)) for x in ids])[None],
            "labels": torch.cat(labels)[None]}
