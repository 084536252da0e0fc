"""GPU benchmark: training throughput, step time, peak memory, MFU and greedy generation speed of
FLAN-T5-base/-large-shaped models and Llama-3.2-1B- and Qwen2.5-1.5B-shaped decoders, full fine-tuning
and LoRA; for the decoders also the training-step variants of issue 19: padded vs packed rows, and
train.loss plain vs chunked, through sumtune's own ``Family.loss``.

    python bench/gpu.py --out bench/gpu_results.md          # one GPU (written for an H200)
    python bench/gpu.py --smoke --out /tmp/gpu_smoke.md     # the same code on CPU, tiny shapes, float32

Models are built from config classes with RANDOM weights (nothing comes from the hub), so the
figures measure the shapes, not checkpoints. Weights are bf16 (``model.to(torch.bfloat16)``,
LoRA adapters included; no fp32 master copy), the optimizer is ``torch.optim.AdamW`` (fused), no
gradient checkpointing, no KV cache in training. Batches are shaped like SAMSum: T5 16 x 512
source x 128 target tokens, the decoder 8 x 640 tokens (a 512-token prompt, masked out of the
loss, + 128 summary tokens). The decoder variants (``--variants``) take ragged batches instead: 8
examples of 128-512 prompt + 32-128 summary tokens (drawn once): "padded" pads them to the longest
(attention mask), "packed" puts them in one row (positions restarting per example, no attention mask:
transformers keeps the examples apart from the positions), "-chunked" computes the loss from the
hidden states, ``chunk_size`` labelled positions at a time (train.loss=chunked); their tokens/s
count real tokens. Generation: greedy, batch 32, 512-token random prompts, exactly 64
new tokens (``min_new_tokens``), ``model.generate``; decoder prompts are left-padded.

Results go to --out (markdown) and the same path with .json, rewritten after every measurement, so
a run cut short keeps what it measured. Each model/method runs in its own try/except: an
out-of-memory error is recorded in its row and the next one runs.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

PEAK_FLOPS = 989e12  # H100 SXM and H200 dense bf16, FLOP/s (1,979 is the sparse figure)

FLOPS_FORMULA = (
    "Model FLOPs per optimizer step, from the linear layers (attention-score matmuls and the embedding "
    "lookup not counted, so MFU is slightly understated): with S = sum over linear layers of weights x "
    "tokens through that layer, and S_t the same sum over trainable layers only, full fine-tuning = 6*S "
    "(forward 2*S, backward 4*S); LoRA = 4*S + 2*S_t (forward 2*S, activation gradients 2*S through every "
    "layer, weight gradients 2*S_t for the adapters only). T5: encoder layers and the decoder's "
    "cross-attention k/v projections see the source tokens, the other decoder layers and lm_head the "
    "target tokens; the decoder: every layer sees every token (padding included), except lm_head under the "
    "chunked loss, which sees the labelled positions only (its recomputation in the backward pass not counted). "
    "MFU = FLOPs / step time / peak.")

# Full shapes (FLAN-T5 configs; Llama-3.2-1B: 1,235,814,400 parameters) and --smoke shapes.
MODELS = {
    "flan-t5-base": dict(family="t5", d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                         num_heads=12, vocab_size=32128),
    "flan-t5-large": dict(family="t5", d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                          num_heads=16, vocab_size=32128),
    "llama-3.2-1b": dict(family="decoder", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         rope_theta=500000.0, max_position_embeddings=131072),
    # Qwen2.5-1.5B: 1,543,714,304 parameters (tied embeddings).
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0,
                         max_position_embeddings=32768),
}
SMOKE_MODELS = {
    "flan-t5-base": dict(family="t5", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                         num_heads=4, vocab_size=512),
    "flan-t5-large": dict(family="t5", d_model=96, d_kv=16, d_ff=192, num_layers=3, num_decoder_layers=3,
                          num_heads=6, vocab_size=512),
    "llama-3.2-1b": dict(family="decoder", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
                         rope_theta=500000.0, max_position_embeddings=1024),
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, rope_theta=1000000.0,
                         max_position_embeddings=1024),
}
DECODERS = ("decoder", "qwen2")
# The decoder training-step variants (--variants): name -> (rows, train.loss).
VARIANTS = {"padded": ("padded", "plain"), "packed": ("packed", "plain"), "padded-chunked": ("padded", "chunked"),
            "packed-chunked": ("packed", "chunked")}
SHAPES = dict(t5_batch=16, source=512, target=128, dec_batch=8, dec_prompt=512, dec_seq=640, ragged_prompt=(128, 512),
              ragged_summary=(32, 128), chunk_size=1024,
              gen_batch=32, gen_prompt=512, gen_new=64, warmup=3, steps=10, gen_rounds=3)
SMOKE_SHAPES = dict(t5_batch=2, source=64, target=16, dec_batch=2, dec_prompt=48, dec_seq=64, ragged_prompt=(16, 48),
                    ragged_summary=(4, 16), chunk_size=8,
                    gen_batch=4, gen_prompt=32, gen_new=8, warmup=1, steps=3, gen_rounds=2)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
PAD, EOS, FIRST_ID = 0, 1, 2  # random token ids are drawn from [FIRST_ID, vocab)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ATTENTION = {"impl": "sdpa"}  # --attn


def build(spec: dict, device: torch.device, dtype: torch.dtype, method: str) -> torch.nn.Module:
    """A model of ``spec``'s shape with random weights, on ``device`` in ``dtype``; LoRA-wrapped if asked."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    kwargs = {k: v for k, v in spec.items() if k != "family"}
    kwargs["attn_implementation"] = ATTENTION["impl"]
    with torch.device(device):  # initialise on the device: a 1.2B init on the CPU takes a while
        if spec["family"] == "t5":
            config = T5Config(**kwargs, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                              decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
            model = T5ForConditionalGeneration(config)
            # transformers 5 ties a T5 built from a config; FLAN-T5's lm_head is its own matrix (no
            # output scaling: a small init keeps the random logits, and the loss, near ln(vocab)).
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * spec["d_model"] ** -0.5)
        elif spec["family"] == "qwen2":
            config = Qwen2Config(**kwargs, tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=FIRST_ID)
            model = Qwen2ForCausalLM(config)
        else:
            config = LlamaConfig(**kwargs, tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=FIRST_ID)
            model = LlamaForCausalLM(config)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        task = "SEQ_2_SEQ_LM" if spec["family"] == "t5" else "CAUSAL_LM"
        model = get_peft_model(model, LoraConfig(task_type=task, **LORA))
    return model.to(dtype)


def linear_token_sums(model: torch.nn.Module, family: str, source_tokens: int, target_tokens: int,
                      label_tokens: int | None = None) -> tuple[int, int]:
    """(S, S_t): sum over linear layers of weights x tokens through the layer, all and trainable only
    (``label_tokens``: the chunked loss applies lm_head to the labelled positions only)."""
    total = trainable = 0
    seen = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        parts = name.split(".")
        if family in DECODERS:
            tokens = label_tokens if label_tokens is not None and parts[-1] == "lm_head" else target_tokens
        elif "encoder" in parts:
            tokens = source_tokens
        elif "EncDecAttention" in parts and parts[parts.index("EncDecAttention") + 1] in ("k", "v"):
            tokens = source_tokens  # cross-attention keys and values are projections of the encoder output
        else:
            tokens = target_tokens
        work = module.weight.numel() * tokens
        total += work
        if module.weight.requires_grad:
            trainable += work
    return total, trainable


def params(model: torch.nn.Module) -> tuple[int, int]:
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.requires_grad)


def train_batch(spec: dict, shapes: dict, device: torch.device) -> tuple[dict, int, int, int]:
    """A random batch, its source and target token counts (per linear layer's view) and its sample count."""
    vocab = spec["vocab_size"]
    g = torch.Generator().manual_seed(0)
    if spec["family"] == "t5":
        b, s, t = shapes["t5_batch"], shapes["source"], shapes["target"]
        batch = {"input_ids": torch.randint(FIRST_ID, vocab, (b, s), generator=g),
                 "attention_mask": torch.ones(b, s, dtype=torch.long),
                 "labels": torch.randint(FIRST_ID, vocab, (b, t), generator=g)}
        return {k: v.to(device) for k, v in batch.items()}, b * s, b * t, b
    b, n, p = shapes["dec_batch"], shapes["dec_seq"], shapes["dec_prompt"]
    ids = torch.randint(FIRST_ID, vocab, (b, n), generator=g)
    labels = ids.clone()
    labels[:, :p] = -100  # the prompt is not learned, the summary is
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, n, dtype=torch.long), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}, 0, b * n, b


def ragged_batch(spec: dict, shapes: dict, device: torch.device, rows: str) -> tuple[dict, int, int, int, int]:
    """The decoder variants' batch: ``dec_batch`` examples of ragged prompt + summary lengths (the
    same draw for every variant), padded (sumtune's PadCollator) or packed into one row (sumtune's
    pack_causal). Returns (batch, token positions computed, real tokens, labelled positions, samples)."""
    from sumtune.data import PadCollator
    from sumtune.families.causal import pack_causal

    g = torch.Generator().manual_seed(0)
    feats = []
    for _ in range(shapes["dec_batch"]):
        p = int(torch.randint(shapes["ragged_prompt"][0], shapes["ragged_prompt"][1] + 1, (), generator=g))
        t = int(torch.randint(shapes["ragged_summary"][0], shapes["ragged_summary"][1] + 1, (), generator=g))
        ids = torch.randint(FIRST_ID, spec["vocab_size"], (p + t,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    batch = pack_causal(feats) if rows == "packed" else PadCollator(PAD)(feats)
    real = sum(len(f["input_ids"]) for f in feats)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    return {k: v.to(device) for k, v in batch.items()}, batch["input_ids"].numel(), real, labelled, len(feats)


def make_optimizer(model: torch.nn.Module, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01, fused=True), "AdamW (fused)"
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01, foreach=True), "AdamW (foreach)"


def measure_training(name: str, spec: dict, method: str, shapes: dict, device: torch.device, dtype: torch.dtype,
                     peak: float, variant: str | None = None) -> dict:
    """One model/method; ``variant`` (a key of VARIANTS, decoders only): the ragged batch padded or
    packed, the loss plain or chunked, computed by sumtune's CausalFamily.loss (what its training
    loop runs); without a variant, the model's own loss on the fixed-shape batch."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build(spec, device, dtype, method)
    model.train()
    n_all, n_trainable = params(model)
    family = loss_of = None
    if variant:
        from sumtune.families.causal import CausalFamily

        rows, loss_kind = VARIANTS[variant]
        batch, positions, real, labelled, samples = ragged_batch(spec, shapes, device, rows)
        source_tokens, target_tokens = 0, positions
        family, chunk = CausalFamily(spec["family"]), shapes["chunk_size"] if loss_kind == "chunked" else 0

        def loss_of(batch):
            loss_sum, tokens = family.loss(model, batch, chunk)
            return loss_sum / tokens
    else:
        batch, source_tokens, target_tokens, samples = train_batch(spec, shapes, device)
        real, labelled = source_tokens + target_tokens, None
    s_all, s_trainable = linear_token_sums(model, spec["family"], source_tokens, target_tokens,
                                           labelled if variant and VARIANTS[variant][1] == "chunked" else None)
    flops = 6 * s_all if method == "full" else 4 * s_all + 2 * s_trainable
    optimizer, optimizer_name = make_optimizer(model, device)
    times, losses = [], []
    for step in range(shapes["warmup"] + shapes["steps"]):
        sync(device)
        start = time.perf_counter()
        loss = loss_of(batch) if variant else model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step >= shapes["warmup"]:
            times.append(elapsed)
        log(f"  {name} {method}{' ' + variant if variant else ''} step {step + 1}/{shapes['warmup'] + shapes['steps']}"
            f"{' (warm-up)' if step < shapes['warmup'] else ''}: {elapsed * 1000:.1f} ms, loss {losses[-1]:.4f}")
    step_time = statistics.median(times)
    tokens = real  # real (non-pad) tokens: the fixed-shape batches have no padding
    return {
        "model": name, "method": method, "variant": variant, "status": "ok",
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "params": n_all, "trainable_params": n_trainable, "optimizer": optimizer_name,
        "tokens_per_step": tokens, "token_positions_per_step": source_tokens + target_tokens,
        "labelled_positions_per_step": labelled, "source_tokens_per_step": source_tokens, "target_tokens_per_step": target_tokens,
        "samples_per_step": samples,
        "step_time_s": step_time, "step_times_s": times,
        "tokens_per_s": tokens / step_time, "samples_per_s": samples / step_time,
        "model_flops_per_step": flops, "achieved_tflops": flops / step_time / 1e12, "mfu": flops / step_time / peak,
        "peak_memory_gib": peak_memory(device),
        "first_loss": losses[0], "last_loss": losses[-1],
    }


def prompts(spec: dict, shapes: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts; decoder prompts are left-padded (all the same length here, so no pad is added,
    but the attention mask and padding side are those of real, ragged batches)."""
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(FIRST_ID, spec["vocab_size"], (shapes["gen_prompt"],), generator=g)
            for _ in range(shapes["gen_batch"])]
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        if spec["family"] == "t5":
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        else:
            ids[i, longest - len(row):], mask[i, longest - len(row):] = row, 1
    return ids.to(device), mask.to(device)


def measure_generation(name: str, spec: dict, shapes: dict, device: torch.device, dtype: torch.dtype) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build(spec, device, dtype, "none")
    model.eval()
    ids, mask = prompts(spec, shapes, device)
    new = shapes["gen_new"]
    times = []
    for round_ in range(1 + shapes["gen_rounds"]):  # the first round is a warm-up
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=PAD, eos_token_id=EOS)
        sync(device)
        elapsed = time.perf_counter() - start
        generated = out.shape[1] - (1 if spec["family"] == "t5" else ids.shape[1])  # T5 starts with its start token
        if generated != new:
            raise RuntimeError(f"generated {generated} new tokens, expected {new}")
        if round_:
            times.append(elapsed)
        log(f"  {name} generate round {round_ + 1}/{1 + shapes['gen_rounds']}{' (warm-up)' if not round_ else ''}: "
            f"{elapsed:.3f} s")
    t = statistics.median(times)
    return {"model": name, "method": "generate", "status": "ok", "params": params(model)[0],
            "batch": shapes["gen_batch"], "prompt_tokens": shapes["gen_prompt"], "new_tokens": new,
            "time_s": t, "times_s": times, "summaries_per_s": shapes["gen_batch"] / t,
            "new_tokens_per_s": shapes["gen_batch"] * new / t, "peak_memory_gib": peak_memory(device)}


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt(value, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU benchmark{' (SMOKE: tiny shapes on ' + env['device'] + ', not figures)' if report['smoke'] else ''}",
        "",
        f"{report['date']} | device: {env['device']} | torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']} | dtype {report['dtype']} | peak {report['peak_flops'] / 1e12:.0f} TFLOP/s",
        "",
        f"Training: {report['setup']}",
        "",
        "| model | method | batch | params | trainable | real tokens/step | step time (median) | real tokens/s | "
        "samples/s | TFLOP/s | MFU | peak memory |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if r["method"] == "generate":
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['method']} | {r.get('variant') or 'fixed'} | failed: {r['error']} ||||||||"
                         "|")
            continue
        lines.append(
            f"| {r['model']} | {r['method']} | {r.get('variant') or 'fixed'} | {r['params'] / 1e6:,.2f}M | {r['trainable_params'] / 1e6:,.2f}M | "
            f"{r['tokens_per_step']:,} | {r['step_time_s'] * 1000:,.1f} ms | {r['tokens_per_s']:,.0f} | "
            f"{r['samples_per_s']:,.1f} | {r['achieved_tflops']:.3g} | {r['mfu'] * 100:.3g}% | "
            f"{fmt(r['peak_memory_gib'], '.1f', ' GiB')} |")
    lines += ["", FLOPS_FORMULA, "",
              f"Generation: greedy, batch {report['shapes']['gen_batch']}, {report['shapes']['gen_prompt']}-token "
              f"random prompts, {report['shapes']['gen_new']} new tokens each, `model.generate` (decoder: left-padded "
              "prompts), median of rounds after one warm-up.", "",
              "| model | summaries/s | new tokens/s | time per batch | peak memory |", "|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        if r["method"] != "generate":
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | failed: {r['error']} ||||")
            continue
        lines.append(f"| {r['model']} | {r['summaries_per_s']:,.1f} | {r['new_tokens_per_s']:,.0f} | "
                     f"{r['time_s']:.3f} s | {fmt(r['peak_memory_gib'], '.1f', ' GiB')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_results.md"), help="markdown; JSON beside it")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, float32, CPU unless a GPU is there")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=["full", "lora", "generate"], default=["full", "lora", "generate"])
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                        help="decoder training-step variants (ragged batch padded/packed, loss plain/chunked); none: --variants")
    parser.add_argument("--variants-only", action="store_true", help="decoders: skip the fixed-shape batch row")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation of the models (e.g. flash_attention_2)")
    parser.add_argument("--steps", type=int, help="measured optimizer steps (default 10; smoke 3)")
    parser.add_argument("--warmup", type=int, help="warm-up steps, not measured (default 3; smoke 1)")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_FLOPS / 1e12, help="the device's dense peak")
    args = parser.parse_args()

    ATTENTION["impl"] = args.attn
    shapes = dict(SMOKE_SHAPES if args.smoke else SHAPES)
    shapes.update({k: v for k, v in (("steps", args.steps), ("warmup", args.warmup)) if v is not None})
    specs = SMOKE_MODELS if args.smoke else MODELS
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device; use --smoke to check the script on CPU")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if device.type == "cpu":
        torch.manual_seed(0)
    import peft
    import transformers

    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke,
        "command": " ".join(sys.argv),
        "environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                        "peft": peft.__version__, "python": platform.python_version()},
        "dtype": str(dtype).removeprefix("torch."), "peak_flops": args.peak_tflops * 1e12, "shapes": shapes,
        "models": {name: specs[name] for name in args.models}, "lora": LORA,
        "setup": (f"attention {args.attn}; weights {str(dtype).removeprefix('torch.')} via model.to() (LoRA adapters included, no fp32 master "
                  f"weights), torch AdamW (fused where available), lr 1e-5, no gradient checkpointing, use_cache=False; "
                  f"T5 batch {shapes['t5_batch']} x {shapes['source']} source + {shapes['target']} target tokens, "
                  f"decoder batch {shapes['dec_batch']} x {shapes['dec_seq']} tokens ({shapes['dec_prompt']} prompt "
                  f"tokens masked from the loss); LoRA r={LORA['r']}, alpha {LORA['lora_alpha']}, all linear layers "
                  f"but lm_head; step time = forward + backward + optimizer step, median of {shapes['steps']} after "
                  f"{shapes['warmup']} warm-up steps, synchronised; tokens/s counts real (non-pad) source + target tokens; "
                  f"decoder variants: {shapes['dec_batch']} examples of {shapes['ragged_prompt']} prompt + "
                  f"{shapes['ragged_summary']} summary tokens, chunk_size {shapes['chunk_size']}"),
        "flops_formula": FLOPS_FORMULA, "results": [],
    }
    out_json = args.out.with_suffix(".json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log(f"device {report['environment']['device']}, dtype {report['dtype']}, out {args.out} (+ {out_json.name})")
    jobs = []
    for name in args.models:
        for method in args.methods:
            decoder_training = method != "generate" and specs[name]["family"] in DECODERS
            if not (decoder_training and args.variants_only):
                jobs.append((name, method, None))
            if decoder_training:
                jobs += [(name, method, v) for v in args.variants]
    for name, method, variant in jobs:
        label = f"{name} {method}{' ' + variant if variant else ''}"
        log(f"{label} ...")
        try:
            if method == "generate":
                result = measure_generation(name, specs[name], shapes, device, dtype)
            else:
                result = measure_training(name, specs[name], method, shapes, device, dtype, args.peak_tflops * 1e12,
                                          variant)
        except Exception as err:  # noqa: BLE001 - one failure (OOM) must not lose the other rows
            first = (str(err).strip().splitlines() or [""])[0][:300]
            result = {"model": name, "method": method, "variant": variant, "status": "error",
                      "error": f"{type(err).__name__}: {first}", "traceback": traceback.format_exc(limit=-3)}
            if device.type == "cuda":
                result["peak_memory_gib"] = peak_memory(device)
        free(device)
        report["results"].append(result)
        if result["status"] == "ok" and method == "generate":
            log(f"{name} generate: {result['summaries_per_s']:,.1f} summaries/s")
        elif result["status"] == "ok":
            log(f"{label}: {result['step_time_s'] * 1000:,.1f} ms/step, {result['tokens_per_s']:,.0f} tokens/s, "
                f"MFU {result['mfu'] * 100:.1f}%, peak {fmt(result['peak_memory_gib'], '.1f', ' GiB')}")
        else:
            log(f"{label} FAILED: {result['error']}")
        out_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        args.out.write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    log(f"wrote {args.out} and {out_json}")


if __name__ == "__main__":
    main()
