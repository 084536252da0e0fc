"""What both families share, and the interface each one fills in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sumtune.errors import ConfigError, SumtuneError


class ModelError(SumtuneError):
    """A model path or hub id that cannot be loaded."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def check_model_source(name_or_path: str, key: str = "model.name_or_path", trust_remote_code: bool | None = None) -> None:
    """Fail fast, in one line, for a model that cannot be found (no 47 s hub retry offline), and,
    given ``trust_remote_code=False``, for a local model that would run its own code."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{key}: {name_or_path} is a folder without config.json; point it at a saved model")
        if trust_remote_code is False and (path / "config.json").is_file():
            try:
                auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
            except (ValueError, AttributeError):
                auto_map = None  # transformers names what is wrong with it when loading
            if auto_map:
                raise remote_code_refused(ValueError("trust_remote_code"), name_or_path)
        return
    if looks_local(name_or_path):
        raise ModelError(f"{key}: {name_or_path} does not exist")
    if _hub_offline() and not in_hub_cache(name_or_path):
        raise ModelError(
            f"{key}: '{name_or_path}' is not a local folder, nor in the Hugging Face cache, and HF_HUB_OFFLINE is "
            "set; download it first (on a node with network access, into the same HF_HOME) or give a local path"
        )


def looks_local(name_or_path: str) -> bool:
    """Whether a name that is not on disk was meant as a local path. "outputs/run-typo" is a hub id
    in form; with a local outputs/ folder it is a path that does not exist."""
    return (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
            or (name_or_path.count("/") == 1 and Path(name_or_path).parent.is_dir()))


def in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache (HF_HOME / HF_HUB_CACHE) holds the model's config.json, as a
    download on a login node leaves it for offline compute nodes (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json") or try_to_load_from_cache(repo_id, "adapter_config.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def remote_code_refused(err: ValueError, name_or_path: str) -> ModelError:
    if "trust_remote_code" not in str(err):
        raise err
    return ModelError(f"{name_or_path} ships its own Python code (auto_map in its config.json), which sumtune does "
                      "not run unless the config says so; set model.trust_remote_code=true only if you trust it")


# Dropout rates kept as plain floats (read at call time) by some architectures: T5's attention
# dropout, Llama/Qwen/Mistral's attention_dropout, BART's functional dropouts, Phi's resid_pdrop.
# Changing only the nn.Dropout modules would leave those on.
_FLOAT_DROPOUTS = ("dropout", "attention_dropout", "activation_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop",
                   "hidden_dropout", "dropout_rate")
_CONFIG_DROPOUTS = _FLOAT_DROPOUTS + ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
            continue
        for name in _FLOAT_DROPOUTS:
            if isinstance(getattr(module, name, None), float) and not isinstance(getattr(module, name), bool):
                setattr(module, name, p)
    config = getattr(model, "config", None)
    for name in _CONFIG_DROPOUTS:
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, p)


def quantization_kwargs(quantization: str) -> dict:
    """bitsandbytes loading for a frozen LoRA base. Each process loads onto its own device."""
    if quantization == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if torch.cuda.is_available():
        device, compute = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}", torch.bfloat16
    else:
        device, compute = "cpu", torch.float32
    if quantization == "8bit":
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    else:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                 bnb_4bit_use_double_quant=True)
    return {"quantization_config": bnb, "device_map": {"": device}}


@dataclass
class PromptFrame:
    """How a prompt is wrapped: the template (possibly rendered through a chat template), the ids
    that open it (BOS) and close it (T5's EOS; nothing for a causal prompt, which the summary
    continues)."""

    template: str
    lead: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)
    chat: bool = False


@dataclass
class GenerationOutput:
    """Generated tokens per prompt (the prompt stripped; the end token, when reached, included),
    and, when asked, each token's log-probability under the model (float32, same lengths)."""

    ids: list[list[int]]
    logprobs: list[torch.Tensor] | None = None


def wrapping(tokenizer, probe: str = "hello world") -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after a text by default (T5: [] and [EOS];
    BART: [BOS] and [EOS]; Llama: [BOS] and []; Qwen2: [] and [])."""
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    specials = set(tokenizer.all_special_ids)
    lead = [i for i in full[:1] if i in specials]
    tail = [i for i in full[-1:] if i in specials and i not in lead]
    return lead, tail


# What Family.decoder can be asked for (generation's strategies).
DECODERS = ("auto", "refill", "continuous", "sorted", "data-order")


def greedy_net(model, settings):
    """The network a streaming decoder runs for plain greedy ``settings`` (a LoRA model's base: its
    adapters run inside the base's forward), or None: other settings, and prompt-learning adapters
    (prompt tuning, prefix), whose virtual tokens only the PEFT wrapper's own forward adds."""
    from sumtune.families.refill import plain_greedy

    if not plain_greedy(settings):
        return None
    net = getattr(model, "module", model)  # DDP
    if hasattr(net, "peft_config"):
        if net.active_peft_config.is_prompt_learning:
            return None
        net = net.get_base_model()
    return net


# Layer names of the key, value and feed-forward output projections, most specific first.
_IA3_NAMES = (("k_proj", "k", "key"), ("v_proj", "v", "value"), ("down_proj", "fc2", "wo", "w2", "dense_4h_to_h"))


class Family:
    """The interface. ``model_type`` is the model's config type ("t5", "llama", ...)."""

    name = ""
    auto_class = ""
    task_type = ""

    def __init__(self, model_type: str):
        self.model_type = model_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_type!r})"

    # -- loading
    def load(self, name_or_path: str, quantization: str = "none", trust_remote_code: bool = False,
             attn_implementation: str | None = None):
        import transformers

        check_model_source(name_or_path)
        cls = getattr(transformers, self.auto_class)
        chosen = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            return cls.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                       **quantization_kwargs(quantization), **chosen)
        except OSError as err:
            raise ModelError(f"cannot load model '{name_or_path}' ({str(err).splitlines()[0]})") from None
        except ValueError as err:
            raise remote_code_refused(err, name_or_path) from None

    def prepare_tokenizer(self, tokenizer):
        """Fill in what the family needs of a tokenizer (a pad token), in place."""
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ModelError(f"the tokenizer of this {self.model_type} model has neither a pad nor an end-of-sequence "
                                 "token; add one to its tokenizer_config.json")
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def check_precision(self, mixed_precision: str) -> None:
        """Refuse a precision the architecture is known to fail in, before any work is done."""

    def lora_targets(self) -> str | list[str]:
        return "all-linear"

    def ia3_modules(self, model) -> tuple[list[str], list[str]]:
        """IA3's (target, feed-forward) modules: the attention keys and values and the feed-forward
        block's output projection, whose INPUT (the feed-forward activation) IA3 scales. Found by
        the layer names the architectures use (T5: k, v, wo; BART and Phi: k_proj, v_proj, fc2;
        Llama, Qwen2, Mistral, Gemma: k_proj, v_proj, down_proj)."""
        present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        found = [next((n for n in names if n in present), None) for names in _IA3_NAMES]
        if None in found:
            raise ConfigError(f"model.ia3: no {', '.join(w for w, f in zip(('key', 'value', 'feed-forward output'), found) if f is None)} "
                              f"projection found by name in this {self.model_type} model; set model.ia3.target_modules "
                              "and model.ia3.feedforward_modules")
        return found, found[2:]

    # -- data
    def frame(self, tokenizer, template: str, chat_template: str = "never", system_prompt: str | None = None,
              chat_date: str | None = None) -> PromptFrame:
        raise NotImplementedError

    def target_ids(self, tokenizer, summary: str, max_target_length: int) -> tuple[list[int], bool]:
        raise NotImplementedError

    def example(self, prompt: list[int], target: list[int]) -> dict:
        """A training feature from prompt and target ids."""
        raise NotImplementedError

    def lengths(self, feature: dict) -> tuple[int, int]:
        """(source, target) lengths of a feature: what a batch is padded to is their maxima summed."""
        raise NotImplementedError

    def count(self, batch: dict) -> tuple[torch.Tensor, int]:
        """(real tokens as a device tensor, token positions) of a collated batch: each token once."""
        raise NotImplementedError

    def examples(self, batch: dict) -> int:
        """Examples in a training batch: its rows, or, in a packed row, the examples packed into it."""
        return batch["input_ids"].shape[0]

    def align(self, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, labels) cut so that ``outputs[:, t]`` (logits or the output layer's input)
        predicts ``labels[:, t]``."""
        raise NotImplementedError

    def token_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy (0 where masked) and the mask, aligned so position t's logits
        predict its label."""
        logits, labels = self.align(logits, labels)
        per_token = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                      reduction="none").view(labels.shape)
        return per_token, labels != -100

    # -- the training loss (every recipe that trains on labels; engine.TokenWeightedLoss weighs it)
    def target_tokens(self, batch: dict) -> torch.Tensor:
        """Tokens with a label in a training batch (padded or packed): what the loss is a sum over."""
        raise NotImplementedError

    def forward(self, model, batch: dict):
        """The model's output on a training batch, padded or packed (``packer``); labels are not
        passed, so the model computes no loss of its own."""
        raise NotImplementedError

    def loss(self, model, batch: dict, chunk_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the target tokens' cross-entropy, number of target tokens) of a training batch.

        ``chunk_size`` > 0: the output layer is applied to the positions with a label only,
        ``chunk_size`` at a time, each chunk recomputed in the backward pass (``chunked_loss``), so
        the logits of the whole batch never exist; the same sum (float32)."""
        labels = batch["labels"]
        if not chunk_size:
            # Only the labelled positions go through the float32 cross-entropy (a decoder-only
            # batch is mostly prompt): no float32 copy of the whole logits.
            logits, labels = self.align(self.forward(model, batch).logits, labels)
            keep = labels != -100
            total = torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
            return total, keep.sum()
        net = unwrap(model)
        with head_input(net) as captured:
            self.forward(model, batch)
        hidden, labels = self.align(captured["hidden"], labels)
        return chunked_loss(captured["head"], hidden, labels, chunk_size,
                            getattr(net.config, "final_logit_softcapping", None))

    def packer(self):
        """The collate function of packed rows (``train.batching=packed``)."""
        raise NotImplementedError

    def check_packing(self, model, method_config=None) -> None:
        """Refuse, in one line, a model that cannot be trained on packed rows correctly. Beyond what
        is known, a probe: two short examples packed into one row must each get the per-token
        losses they get alone (an architecture whose attention ignores the row's boundaries fails
        it). Every rank runs the probe (under ZeRO-3 a forward is a collective)."""
        if getattr(method_config, "is_prompt_learning", False):
            raise ConfigError("train.batching=packed with prompt tuning: the virtual tokens are put in front of a whole "
                              "row, so only its first example would follow them; use train.batching=grouped")
        from sumtune.data import PadCollator

        net = unwrap(model)
        examples = [self.example(list(range(5, 12)), list(range(12, 16))), self.example(list(range(20, 24)), [24, 25, 26])]
        device = next(p.device for p in model.parameters())
        on = lambda batch: {k: v.to(device) for k, v in batch.items()}  # noqa: E731
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                alone = []
                for ex in examples:
                    batch = on(PadCollator(0)([ex]))
                    per_token, mask = self.token_losses(self.forward(model, batch).logits, batch["labels"])
                    alone.append(per_token[mask])
                batch = on(self.packer()(examples))
                per_token, mask = self.token_losses(self.forward(model, batch).logits, batch["labels"])
        finally:
            model.train(was_training)
        packed, expected = per_token[mask].float(), torch.cat(alone).float()
        half = next(p.dtype for p in net.parameters() if p.is_floating_point()) != torch.float32
        tol = 5e-2 if half else 1e-4
        if packed.shape != expected.shape or (packed - expected).abs().max().item() > tol * max(1.0, expected.abs().max().item()):
            raise ConfigError(f"train.batching=packed: this '{self.model_type}' model ({net.config._attn_implementation} "
                              "attention) gives an example inside a packed row other losses than alone (its attention "
                              "crosses the examples' boundaries); use train.batching=grouped")

    def positions_needed(self, max_source_length: int, max_target_length: int) -> tuple[int, str]:
        """(positions one training example may use, what they are, for messages)."""
        raise NotImplementedError

    def prompt_padding(self) -> str:
        """"right" or "left": how prompts are padded for generation."""
        return "right"

    # -- generation
    def generation_settings(self, model, tokenizer, gen):
        """The ``transformers.GenerationConfig`` generation uses: sumtune's settings, the ids the model
        needs, and nothing else a checkpoint's generation_config.json would add (bart-large-cnn's
        min_length 56 forces 60-token summaries where SAMSum's references have 20)."""
        from transformers import GenerationConfig as HFGenerationConfig

        net = model.get_base_model() if hasattr(model, "get_base_model") else model
        shipped = getattr(net, "generation_config", None)
        ends = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        extra = getattr(shipped, "eos_token_id", None)
        for end in extra if isinstance(extra, list) else [extra]:
            if end is not None and end not in ends:
                ends.append(end)
        settings = {
            "max_new_tokens": gen.max_new_tokens, "num_beams": gen.num_beams, "do_sample": gen.do_sample,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": ends if len(ends) > 1 else (ends or [None])[0],
        }
        if gen.do_sample:
            settings.update(temperature=gen.temperature, top_k=gen.top_k or None, top_p=gen.top_p)
        settings.update(self._model_ids(net))
        return HFGenerationConfig(**settings)

    def _model_ids(self, net) -> dict:
        return {}

    def decoder(self, model, settings, lockstep: bool = False, choice: str = "auto"):
        """The ``decoding.Decoder`` that turns prompts into generated rows with ``settings``: this
        family's streaming decoder (finished rows leave, waiting prompts join: T5's ``refill``, a
        decoder-only model's ``continuous``) where it applies, else ``model.generate`` over
        length-sorted batches (``sorted``). ``choice``: ``auto``, or one decoder by name (the
        benchmark compares them; ``data-order`` is generate over batches in the order given, the
        naive baseline; ``sorted`` is also what ``generation.refill=false`` asks for). ``lockstep``
        (ZeRO-3): every rank must make the same forward calls, which only batched generate keeps."""
        from sumtune.families.decoding import Batched

        if choice not in DECODERS:
            raise ValueError(f"unknown decoder {choice!r}; one of {', '.join(DECODERS)}")
        fast = None if lockstep or choice in ("sorted", "data-order") else self._streaming_decoder(model, settings)
        if choice in ("refill", "continuous") and (fast is None or fast.name != choice):
            raise ValueError(f"the {choice} decoder does not apply here ({self.model_type}, these settings"
                             f"{', lockstep' if lockstep else ''}): {fast.name if fast else 'generate'} decodes instead")
        return fast or Batched(self, model, settings, lockstep, sort=choice != "data-order")

    def _streaming_decoder(self, model, settings):
        """The family's refill/continuous decoder for ``model`` and ``settings``, or None."""
        return None

    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings, lockstep: bool = False,
                 logprobs: bool = False, sampled: bool = False) -> GenerationOutput:
        """``sampled``: every token of a row that never reached its end token was drawn (none is
        padding), so none is stripped (a sampled pad id stays, as sampled)."""
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=settings,
                             synced_gpus=lockstep, return_dict_in_generate=True, output_logits=logprobs)
        new = self._new_tokens(out.sequences, input_ids)
        ends = settings.eos_token_id if isinstance(settings.eos_token_id, list) else [settings.eos_token_id]
        ids = [_until_end(row, ends, None if sampled else settings.pad_token_id) for row in new.tolist()]
        if not logprobs:
            return GenerationOutput(ids)
        if settings.num_beams != 1:
            raise ConfigError("log-probabilities of generated tokens need generation.num_beams=1")
        steps = torch.stack(out.logits, 1).float().log_softmax(-1)  # [batch, new tokens, vocab]
        picked = steps.gather(-1, new[:, : steps.shape[1], None]).squeeze(-1)
        return GenerationOutput(ids, [picked[i, : len(row)].cpu() for i, row in enumerate(ids)])

    def _new_tokens(self, sequences: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- sampling and the log-probabilities of given summaries (reinforcement learning)
    def sampling_settings(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0):
        """Settings that sample from the model's own next-token distribution (at ``temperature``):
        no top-k, top-p or other truncation, no penalty, no forced minimum length. The log-probs and
        the KL of the RL recipe are those of this distribution; any of those processors would make
        the samples come from another one (the KL estimate then drifts, even below zero)."""
        from sumtune.config import GenerationConfig

        gen = GenerationConfig(num_beams=1, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
        settings = self.generation_settings(model, tokenizer, gen)
        settings.top_k, settings.top_p = 0, 1.0
        return settings

    def sample(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings,
               lockstep: bool = False) -> GenerationOutput:
        """``generate`` with ``settings`` alone. ``model.generate`` fills every setting left unset
        (None) from the checkpoint's own generation_config.json, which may ship a repetition penalty,
        bad words or a minimum length; for sampling that would change the distribution sampled from,
        so the checkpoint's generation config is set aside for the call."""
        from transformers import GenerationConfig as HFGenerationConfig

        net = unwrap(model)
        shipped = net.generation_config
        net.generation_config = HFGenerationConfig()
        try:
            return self.generate(model, input_ids, attention_mask, settings, lockstep=lockstep, sampled=True)
        finally:
            net.generation_config = shipped

    def summary_logprobs(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, summary_ids: torch.Tensor,
                         summary_mask: torch.Tensor, temperature: float = 1.0,
                         entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The log-probability of each token of ``summary_ids`` given its prompt under ``model``, at
        ``temperature`` (float32, [rows, summary positions], 0 where ``summary_mask`` is 0); with
        gradients when autograd records. Prompts are padded as ``prompt_padding()`` says, summaries
        on the right (their end token included, as sampled). With ``entropy``, also the entropy of
        the model's next-token distribution at each summary position (0 where masked)."""
        scored = self.score_summaries(model, prompt_ids, prompt_mask, summary_ids, summary_mask, temperature, entropy)
        return scored.logprobs, scored.entropy

    def score_summaries(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, summary_ids: torch.Tensor,
                        summary_mask: torch.Tensor, temperature: float = 1.0, entropy: bool = False,
                        values: bool = False) -> SummaryScores:
        """``summary_logprobs`` as named fields, and with ``values`` the value of the state before
        each summary token (a policy with a value head, ``sumtune.rollout.WithValueHead``: its
        output's ``value_estimates``, float32, 0 where masked)."""
        out, positions = self._summary_forward(model, prompt_ids, prompt_mask, summary_ids, summary_mask)
        logp = (out.logits[:, positions].float() / temperature).log_softmax(-1)
        mask = summary_mask.to(logp.dtype)
        picked = logp.gather(-1, summary_ids[..., None]).squeeze(-1) * mask
        spread = -(logp.exp() * logp).sum(-1) * mask if entropy else None
        value = out.value_estimates[:, positions].float() * mask if values else None
        return SummaryScores(picked, spread, value)

    def _summary_forward(self, model, prompt_ids, prompt_mask, summary_ids, summary_mask) -> tuple[object, slice]:
        """(the model's output, the slice of its sequence positions that predict ``summary_ids``
        one by one: logits [rows, that slice, vocab])."""
        raise NotImplementedError


@dataclass
class SummaryScores:
    logprobs: torch.Tensor  # [rows, summary positions]
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4D attention mask as eager and sdpa attention both add it to the scores: 0 where attending
    is allowed, the dtype's most negative value where not."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class head_input:
    """``with head_input(net) as captured: net(...)``: the model's output layer (``lm_head``, or the
    adapter module that replaced it) does not run; ``captured["hidden"]`` is what it was given
    (after any scaling the model applies before it, T5's included) and ``captured["head"]`` is the
    layer, to be applied by the caller. Its forward is swapped on the instance for the call only:
    every wrapper (DDP, DeepSpeed's ZeRO-3 hooks, PEFT) still runs around the model's own forward."""

    def __init__(self, net):
        self.head = net.get_output_embeddings()
        if self.head is None:
            raise ConfigError(f"train.loss=chunked: this {type(net).__name__} has no output layer to apply in chunks; "
                              "use train.loss=plain")
        self.captured: dict = {"head": self.head}

    def __enter__(self) -> dict:
        def stash(hidden, *args, **kwargs):
            self.captured["hidden"] = hidden
            return hidden[..., :1]  # a stand-in for the logits nobody reads (no labels were passed)

        self.own = self.head.__dict__.get("forward")
        self.head.forward = stash
        return self.captured

    def __exit__(self, *exc) -> None:
        if self.own is not None:
            self.head.forward = self.own
        else:
            del self.head.forward


def _chunk_loss(head, hidden: torch.Tensor, labels: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def chunked_loss(head, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int,
                 softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, tokens) of the positions with a label, the output layer applied
    ``chunk_size`` positions at a time under activation checkpointing: only one chunk's logits
    exist at a time, forward or backward."""
    from torch.utils.checkpoint import checkpoint

    keep = labels != -100
    hidden, labels = hidden[keep], labels[keep]
    chunks = -(-labels.shape[0] // chunk_size)
    if any(hasattr(p, "ds_id") for p in head.parameters()):
        # DeepSpeed ZeRO-3: each call of the layer gathers its weight from every rank (a
        # collective), so every rank must make as many calls, forward and in the backward pass's
        # recomputation: the ranks agree on the most chunks any of them needs; the others get
        # empty chunks (a loss of 0).
        count = torch.tensor([chunks], device=hidden.device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        chunks = int(count.item())
    total = hidden.new_zeros((), dtype=torch.float32)
    for k in range(chunks):
        part = slice(k * chunk_size, (k + 1) * chunk_size)
        total = total + checkpoint(_chunk_loss, head, hidden[part], labels[part], softcap, use_reentrant=False)
    return total, keep.sum()


def unwrap(model):
    """The transformers model inside DDP, a DeepSpeed engine and a PEFT wrapper."""
    net = getattr(model, "module", model)
    return net.get_base_model() if hasattr(net, "get_base_model") else net


def _until_end(row: list[int], ends: list[int], pad: int | None) -> list[int]:
    """A generated row up to and including its first end token; padding after it removed."""
    for i, token in enumerate(row):
        if token in ends:
            return row[: i + 1]
    while row and pad is not None and row[-1] == pad and pad not in ends:
        row = row[:-1]
    return row
