"""Every fine-tuning method through the whole path, per model family, in one process: the real
recipe (sumtune.recipes.finetune.run) trains it, the run folder reloads with plain peft, sumtune's
generation decodes what the model's own uncached forward says, the merged export computes what
base + adapter computes; and each combination the support matrix refuses is one line.

Multi-process topologies (DDP, ZeRO-2, ZeRO-3) are in tests/integration/test_methods_scale.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

from sumtune import data, families, methods, models  # noqa: E402
from sumtune.config import DataConfig, GenerationConfig, load_config  # noqa: E402
from sumtune.errors import ConfigError, SumtuneError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARCHS = ("t5", "bart", "llama")
ADAPTERS = [name for name, m in methods.METHODS.items() if m.adapter and name != "prefix"]
MERGEABLE = [name for name in ADAPTERS if methods.METHODS[name].mergeable]
# Small settings, so that a few steps move every method's weights on the tiny models.
SMALL = ["model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0", "model.adalora.init_r=6",
         "model.adalora.target_r=3", "model.adalora.dropout=0.0", "model.adalora.delta_t=1",
         "model.adalora.prune_start=0.25", "model.adalora.prune_end=0.75", "model.loha.r=4", "model.lokr.r=4",
         "model.vera.r=16", "model.prompt.virtual_tokens=4"]
STEPS = 4


@pytest.fixture(scope="module")
def zoo_models(zoo_build, tmp_path_factory):
    return {**{arch: zoo_build[arch] for arch in ARCHS}, "data": zoo.write_data(tmp_path_factory.mktemp("data"),
                                                                                  sizes=(16, 6, 6))}


def overrides(zoo_models, out: Path, arch: str, method: str, *extra: str) -> list[str]:
    d = zoo_models["data"]
    return [f"run_name={arch}-{method}", f"output_dir={out}", f"model.name_or_path={zoo_models[arch]}",
            f"model.method={method}", "data.source=local",
            f"data.files={{train: {d}/train.jsonl, validation: {d}/validation.jsonl, test: {d}/test.jsonl}}",
            "data.max_source_length=128", "data.max_target_length=32", "data.max_eval_examples=4",
            f"train.max_steps={STEPS}", "train.per_device_batch_size=4", "train.log_every=1", "train.lr=1e-2",
            "train.warmup_steps=0", "generation.max_new_tokens=6", "generation.batch_size=4", "tracker.backend=none",
            *SMALL, *extra]


@pytest.fixture(scope="module")
def trained(zoo_models, tmp_path_factory):
    """(arch, method, *extra overrides) -> its run folder, trained once by the real recipe."""
    from sumtune.recipes.finetune import run

    out = tmp_path_factory.mktemp("runs")
    cache: dict = {}

    def get(arch: str, method: str, *extra: str) -> Path:
        key = (arch, method, *extra)
        if key not in cache:
            name = "-".join(x.split("=")[-1] for x in (arch, method, *extra))
            cfg = load_config(None, [*overrides(zoo_models, out, arch, method, *extra), f"run_name={name}"])
            metrics = run(cfg)
            assert metrics["method"] == method and metrics["step"] == STEPS
            cache[key] = out / name
        return cache[key]

    return get


def greedy_uncached(model, family, prompt: list[int], n: int, end: int) -> list[int]:
    """Greedy decoding by the model's plain forward over the whole sequence at every step (no
    cache, no generate): what the adapter computes in training."""
    with torch.no_grad():
        if family.name == "seq2seq":
            net = model.get_base_model() if hasattr(model, "get_base_model") else model
            start = net.config.decoder_start_token_id
            decoded = [start]
            # BART's first token is forced (bart-large-cnn's generation config; the zoo's BART likewise).
            forced = getattr(net.generation_config, "forced_bos_token_id", None) or getattr(net.config, "forced_bos_token_id",
                                                                                           None)
            for i in range(n):
                logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([decoded]),
                               use_cache=False).logits
                token = forced if i == 0 and forced is not None else int(logits[0, -1].argmax())
                decoded.append(token)
                if token == end:
                    break
            return decoded[1:]
        seq = list(prompt)
        for _ in range(n):
            logits = model(input_ids=torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                           use_cache=False).logits
            seq.append(int(logits[0, -1].argmax()))
            if seq[-1] == end:
                break
        return seq[len(prompt):]


def reload(run: Path):
    """The run folder through sumtune's loader (every check), and its family, tokenizer, prompts."""
    from sumtune.evaluation import Candidate, load_candidate

    cfg = load_config(run / "sumtune_config.yaml")
    model, tok, prompts = load_candidate(Candidate("x", str(run)), cfg)
    return model.eval(), tok, data.prompt_encoder(families.of_model(model), tok, prompts), cfg


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ADAPTERS)
def test_each_method_trains_reloads_with_plain_peft_and_generates_what_its_forward_computes(method, arch, trained):
    from accelerate import Accelerator
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from sumtune.generation import generate

    run = trained(arch, method)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"] / 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in map(json.loads, (run / "train_log.jsonl").open())
               if "loss" in r)
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert methods.of_adapter(run).name == method
    assert not (run / "model.safetensors").exists()  # the adapter alone, not the base

    # Trained: the adapter differs from the same method freshly wrapped (same seed, same init).
    cfg = load_config(run / "sumtune_config.yaml")
    family = models.model_family(cfg.model.name_or_path)
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    fresh = models.apply_method(models.load_model(cfg.model.name_or_path, family=family), cfg.model, family, STEPS)
    from peft import get_peft_model_state_dict

    start, saved = get_peft_model_state_dict(fresh), load_file(str(run / "adapter_model.safetensors"))
    assert set(start) == set(saved)
    assert any(not torch.equal(start[k], saved[k]) for k in saved), "no adapter weight moved in training"

    # Plain transformers + peft, no sumtune: the same model as sumtune's loader gives.
    model, tok, encoder, cfg = reload(run)
    cls = AutoModelForSeq2SeqLM if family.name == "seq2seq" else AutoModelForCausalLM
    plain = PeftModel.from_pretrained(cls.from_pretrained(adapter["base_model_name_or_path"]), str(run)).eval()
    records = zoo.corpus_rows(3, seed=11)
    prompts = [encoder.encode_prompt(r["dialogue"])[0] for r in records]
    batch = data.PadCollator(tok.pad_token_id, side=family.prompt_padding())([{"input_ids": p} for p in prompts])
    with torch.no_grad():
        if family.name == "seq2seq":
            batch["decoder_input_ids"] = torch.full((len(prompts), 3), model.get_base_model().config.decoder_start_token_id)
        assert torch.allclose(model(**batch).logits, plain(**batch).logits, atol=1e-5)

    # sumtune's batched generation = the model's own uncached forward, prompt by prompt.
    gen = GenerationConfig(max_new_tokens=6, batch_size=4)
    texts, _ = generate(Accelerator(cpu=True), model, tok, encoder, [r["dialogue"] for r in records], gen, progress=False)
    expected = [tok.decode(greedy_uncached(model, family, p, 6, tok.eos_token_id), skip_special_tokens=True).strip()
                for p in prompts]
    assert texts == expected


@pytest.mark.parametrize("arch", ["t5", "llama"])
@pytest.mark.parametrize("method", MERGEABLE)
def test_the_merged_export_computes_what_base_plus_adapter_computes(method, arch, trained, tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from sumtune.export import export
    from sumtune.generation import generate

    run = trained(arch, method)
    info = export(run, tmp_path / "merged")
    assert info["method"] == method and not (tmp_path / "merged.tmp").exists()
    model, tok, encoder, cfg = reload(run)
    family = families.of_model(model)
    cls = AutoModelForSeq2SeqLM if family.name == "seq2seq" else AutoModelForCausalLM
    merged = cls.from_pretrained(tmp_path / "merged").eval()  # plain transformers: no peft, no sumtune
    assert not any("lora" in n or "ia3" in n or "hada" in n or "lokr" in n or "vera" in n
                   for n, _ in merged.named_parameters())
    records = zoo.corpus_rows(4, seed=12)
    prompts = [encoder.encode_prompt(r["dialogue"])[0] for r in records]
    batch = data.PadCollator(tok.pad_token_id, side=family.prompt_padding())([{"input_ids": p} for p in prompts])
    with torch.no_grad():
        if family.name == "seq2seq":
            batch["decoder_input_ids"] = torch.tensor([[0, 5, 9, 14]] * len(prompts))
        assert (model(**batch).logits - merged(**batch).logits).abs().max().item() < 1e-5
    gen = GenerationConfig(max_new_tokens=8, batch_size=4)
    dialogues = [r["dialogue"] for r in records]
    merged_encoder = data.prompt_encoder(family, tok, load_config(tmp_path / "merged/sumtune_config.yaml").data)
    a, _ = generate(Accelerator(cpu=True), model, tok, encoder, dialogues, gen, progress=False)
    b, _ = generate(Accelerator(cpu=True), merged, tok, merged_encoder, dialogues, gen, progress=False)
    assert a == b
    # The merged folder decodes with the run's settings even through a plain model.generate.
    assert merged.generation_config.max_new_tokens == cfg.generation.max_new_tokens


def test_export_is_a_command_that_refuses_what_it_cannot_merge_in_one_line(trained, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent)}

    def export_cli(*args):
        return subprocess.run([sys.executable, str(REPO / "train/export.py"), *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    lora = trained("t5", "lora")
    ok = export_cli(lora, "--out", tmp_path / "m", "--dtype", "bfloat16")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "merged the lora adapter" in ok.stdout
    assert json.loads((tmp_path / "m/config.json").read_text())["dtype"] == "bfloat16"
    prompt = export_cli(trained("t5", "prompt"), "--out", tmp_path / "p")
    assert prompt.returncode == 2
    last = prompt.stderr.strip().splitlines()[-1]
    assert last.startswith("sumtune: error: ") and "a prompt adapter cannot be merged" in last
    assert not (tmp_path / "p").exists()

    from sumtune.export import export

    before = (tmp_path / "m/model.safetensors").read_bytes()
    with pytest.raises(SumtuneError, match=f"^{tmp_path / 'm'} exists and is not empty; choose another --out or pass "
                                           "--overwrite$"):
        export(lora, tmp_path / "m")
    assert (tmp_path / "m/model.safetensors").read_bytes() == before
    with pytest.raises(SumtuneError, match="lies inside the run folder"):
        export(lora, lora / "merged")
    with pytest.raises(SumtuneError, match="holds a full model already"):
        export(tmp_path / "m", tmp_path / "again")


@pytest.mark.parametrize("init, arch", [("pissa", "llama"), ("olora", "llama"), ("pissa", "bart"), ("olora", "t5")])
def test_pissa_and_olora_adapters_are_saved_for_the_original_base(init, arch, trained, zoo_models):
    """PiSSA and OLoRA train on a base with part of each weight moved into the adapter; the saved
    adapter (rank 2r) on the ORIGINAL base gives what the trained model gives. Checked against the
    training checkpoint, which holds the trained model itself (changed base and adapter)."""
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    run = trained(arch, "lora", f"model.lora.init={init}", "train.checkpoint_every=4", "train.rouge_every=2",
                  "train.rouge_examples=2")
    for folder in (run, run / "best"):  # best/ (saved mid-run by the in-training ROUGE) is converted too
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["init_lora_weights"] is True
    cfg = load_config(run / "sumtune_config.yaml")
    family = models.model_family(cfg.model.name_or_path)
    set_seed(cfg.train.seed)
    as_trained = models.apply_method(models.load_model(cfg.model.name_or_path, family=family), cfg.model, family, STEPS)
    state = load_file(str(run / "checkpoints/step-000004/model.safetensors"))
    missing, unexpected = as_trained.load_state_dict(state, strict=False)
    owners: dict = {}
    for name, p in as_trained.named_parameters(remove_duplicate=False):
        owners.setdefault(p.data_ptr(), []).append(name)
    tied = {n for names in owners.values() if len(names) > 1 for n in names}
    assert not unexpected and set(missing) <= tied  # a tied weight is stored once
    saved, tok, encoder, _ = reload(run)
    ids = torch.tensor([encoder.encode_prompt(r["dialogue"])[0][:40] for r in zoo.corpus_rows(2, seed=3)])
    inputs = {"input_ids": ids, **({"decoder_input_ids": ids[:, :5]} if family.name == "seq2seq" else {})}
    with torch.no_grad():
        assert (as_trained.eval()(**inputs).logits - saved(**inputs).logits).abs().max() < 1e-5
        base = models.load_model(cfg.model.name_or_path, family=family)
        assert (base(**inputs).logits - saved(**inputs).logits).abs().max() > 1e-4  # it did learn


@pytest.mark.parametrize("init, expected", [("default", True), ("gaussian", "gaussian")])
def test_lora_settings_reach_peft(init, expected, zoo_models):
    cfg = load_config(None, [f"model.name_or_path={zoo_models['t5']}", f"model.lora.init={init}", "model.lora.rslora=true",
                             "model.lora.r=4", "model.lora.alpha=8", "model.lora.target_modules=[q,v]"])
    family = models.model_family(cfg.model.name_or_path)
    peft = models.apply_method(models.load_model(cfg.model.name_or_path, family=family), cfg.model, family, 4).peft_config
    config = peft["default"]
    assert (config.init_lora_weights, config.use_rslora, config.r, config.lora_alpha) == (expected, True, 4, 8)
    assert set(config.target_modules) == {"q", "v"}


def test_target_modules_the_base_lacks_and_an_empty_adalora_window_are_one_line(zoo_models):
    family = families.resolve(str(zoo_models["t5"]))
    base = models.load_model(str(zoo_models["t5"]), family=family)
    cfg = load_config(None, ["model.lora.target_modules=[q_proj]"])
    with pytest.raises(ConfigError) as err:
        models.apply_method(base, cfg.model, family, 10)
    assert str(err.value).startswith("model.lora: ") and "q_proj" in str(err.value) and "\n" not in str(err.value)
    cfg = load_config(None, ["model.method=adalora", "model.adalora.prune_start=0.5", "model.adalora.prune_end=0.6"])
    with pytest.raises(ConfigError, match="^model.adalora.prune_start: pruning from step 2 to step 2 of 4 covers no"):
        models.apply_method(base, cfg.model, family, 4)


def test_adalora_prunes_its_budget_to_target_r_and_the_ranks_survive_reloading(trained):
    run = trained("t5", "adalora")
    adapter = json.loads((run / "adapter_config.json").read_text())
    pattern = adapter["rank_pattern"]
    assert pattern, "the budget was never allocated"
    kept = sum(sum(v) for v in pattern.values())
    assert kept == adapter["target_r"] * len(pattern) < adapter["init_r"] * len(pattern)
    model, *_ = reload(run)
    # Loaded for inference, a forward WITH labels still works (peft's orthogonality penalty needs
    # the adapter loaded trainable), and nothing is left trainable.
    ids = torch.tensor([[5, 6, 7, 8, 1]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    assert not any(p.requires_grad for p in model.parameters())


def test_lora_plus_gives_the_b_matrices_their_ratio_and_keeps_weight_decay(zoo_models):
    from sumtune.config import TrainConfig
    from sumtune.engine import make_optimizer, plan_steps

    cfg = load_config(None, [f"model.name_or_path={zoo_models['llama']}", "model.lora.loraplus_lr_ratio=16"])
    family = models.model_family(cfg.model.name_or_path)
    model = models.apply_method(models.load_model(cfg.model.name_or_path, family=family), cfg.model, family, 10)
    train = TrainConfig(lr=1e-3, weight_decay=0.1, max_steps=10, warmup_steps=2)
    optimizer, scheduler = make_optimizer(model, train, plan_steps(40, 1, train), methods.lr_scale(cfg.model))
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    b = [n for n in named if ".lora_B." in n and named[n].requires_grad]
    a = [n for n in named if ".lora_A." in n and named[n].requires_grad]
    assert b and a and all(g["params"] for g in optimizer.param_groups)
    assert [by_param[id(named[n])]["lr"] for n in b] == pytest.approx([16e-3 / 3] * len(b))  # warm-up factor 1/3
    assert [by_param[id(named[n])]["lr"] for n in a] == pytest.approx([1e-3 / 3] * len(a))
    assert {by_param[id(named[n])]["weight_decay"] for n in a + b} == {0.1}
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 / 3)  # the first group is train.lr's


@pytest.mark.parametrize("arch, expected", [("t5", (["k", "v", "wo"], ["wo"])), ("bart", (["k_proj", "v_proj", "fc2"], ["fc2"])),
                                            ("llama", (["k_proj", "v_proj", "down_proj"], ["down_proj"]))])
def test_ia3_scales_keys_values_and_the_feed_forward_activation_of_each_family(arch, expected, zoo_models):
    family = families.resolve(str(zoo_models[arch]))
    assert family.ia3_modules(models.load_model(str(zoo_models[arch]), family=family)) == expected


# ----------------------------------------------------------------------------- the refusals of the support matrix


REFUSED = [
    ("prefix", "none", None, "generate() ignores the learned prefix"),
    ("adalora", "none", 2, "under DeepSpeed: its rank allocation reads the gradients"),
    ("adalora", "none", 3, "under DeepSpeed: its rank allocation reads the gradients"),
    ("dora", "8bit", None, "on an 8-bit base fails in peft's DoRA layer"),
    ("loha", "4bit", None, "on a 4-bit base fails with shape errors"),
    ("lokr", "4bit", None, "on a 4-bit base fails with shape errors"),
    ("lora:pissa", "8bit", None, "which a 8bit base cannot hold exactly"),
    ("lora:olora", "4bit", None, "which a 4bit base cannot hold exactly"),
    ("dora:pissa", "4bit", None, "which a 4bit base cannot hold exactly"),
]


@pytest.mark.parametrize("method, quantization, stage, why", REFUSED)
def test_each_refused_combination_is_one_line_before_any_weight_loads(method, quantization, stage, why, zoo_models):
    name, _, init = method.partition(":")
    cfg = load_config(None, [f"model.method={name}", f"model.quantization={quantization}",
                             *([f"model.lora.init={init}"] if init else [])])
    with pytest.raises(ConfigError) as err:
        methods.check(cfg, families.resolve(str(zoo_models["t5"])), stage)
    assert why in str(err.value) and "\n" not in str(err.value)


def test_prompt_learning_with_gradient_checkpointing_or_zero3_generation_is_refused():
    cfg = load_config(None, ["model.method=prompt", "model.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="prompt learning does not support it"):
        methods.check(cfg, None, None)
    cfg = load_config(None, ["model.method=prompt", "train.rouge_every=10"])
    methods.check(cfg, None, 2)
    with pytest.raises(ConfigError, match="set train.rouge_every=0 and evaluate afterwards"):
        methods.check(cfg, None, 3)
    methods.check(load_config(None, ["model.method=prompt"]), None, 3)


def test_the_refused_prefix_tuning_stops_the_training_script_in_one_line(zoo_models, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train/finetune.py"), *overrides(zoo_models, tmp_path, "llama", "prefix")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sumtune: error: " + methods.METHODS["prefix"].refusal(None, None, None)]
    assert not (tmp_path / "llama-prefix").exists()


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_why_prefix_is_refused_generate_ignores_the_prefix_it_trained_with(arch, zoo_models):
    """The measured reason behind the refusal. When a peft or transformers upgrade makes this test
    fail, prefix tuning generates with its prefix: lift the refusal (methods._refuse_prefix)."""
    from peft import PrefixTuningConfig, get_peft_model

    family = families.resolve(str(zoo_models[arch]))
    tok = models.load_tokenizer(str(zoo_models[arch]), family=family)
    base = models.load_model(str(zoo_models[arch]), family=family).eval()
    model = get_peft_model(models.load_model(str(zoo_models[arch]), family=family),
                           PrefixTuningConfig(task_type=family.task_type, num_virtual_tokens=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)  # a prefix far from nothing
    prompt = data.prompt_encoder(family, tok, DataConfig()).encode_prompt(zoo.corpus_rows(1, seed=2)[0]["dialogue"])[0]
    settings = family.generation_settings(base, tok, GenerationConfig(max_new_tokens=6))
    settings.eos_token_id = None  # six tokens each, whatever they are
    with torch.no_grad():
        ids = torch.tensor([prompt])
        forward = model(input_ids=ids, **({"decoder_input_ids": torch.tensor([[0]])} if family.name == "seq2seq" else {}))
        plain = base(input_ids=ids, **({"decoder_input_ids": torch.tensor([[0]])} if family.name == "seq2seq" else {}))
        assert (forward.logits - plain.logits).abs().max() > 1e-3  # the training forward sees the prefix
        tuned = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings)
        untuned = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings)
    assert tuned.tolist() == untuned.tolist()  # ... and generate() does not


# ----------------------------------------------------------------------------- adapters on the wrong base


@pytest.mark.parametrize("method", ADAPTERS)
def test_an_adapter_of_any_method_on_another_base_is_one_line(method, trained, zoo_models, tmp_path):
    """A llama adapter moved onto a wider llama (its recorded base edited, as a user might): one
    line, whatever the method, never a state-dict traceback or a silently fresh adapter."""
    wide = zoo.build_model("llama", tmp_path / "wide", zoo_models["llama"].parent / "tokenizer", width=64)
    run = trained("llama", method)
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (moved / f.name).write_bytes(f.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(wide)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SumtuneError) as err:
        models.load_adapter(moved)
    assert str(err.value).startswith(f"adapter {moved} does not fit base model {wide}: ")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- quantized bases

QUANTIZED = [(method, bits) for method in ADAPTERS for bits in ("8bit", "4bit")
             if (method, bits) not in {("dora", "8bit"), ("loha", "4bit"), ("lokr", "4bit")}]


@pytest.fixture(scope="module")
def wide_zoo(tmp_path_factory):
    """The zoo at width 64: bitsandbytes quantizes 4-bit weights in blocks of 64."""
    root = tmp_path_factory.mktemp("wide")
    return {**zoo.build_zoo(root, archs=("t5", "llama"), width=64), "data": zoo.write_data(root / "data", sizes=(16, 6, 6))}


@pytest.mark.parametrize("arch", ["t5", "llama"])
@pytest.mark.parametrize("method, bits", QUANTIZED)
def test_each_method_trains_on_an_8_and_4_bit_base_and_is_evaluated_on_it(method, bits, arch, wide_zoo, tmp_path):
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from sumtune.generation import generate
    from sumtune.recipes.finetune import run

    cfg = load_config(None, [*overrides(wide_zoo, tmp_path, arch, method), f"model.quantization={bits}",
                             "train.max_steps=2"])
    metrics = run(cfg)
    assert metrics["quantization"] == bits and metrics["method"] == method
    saved = tmp_path / f"{arch}-{method}"
    assert all(torch.isfinite(t).all() for t in load_file(str(saved / "adapter_model.safetensors")).values())
    model, tok, encoder, _ = reload(saved)  # on the base it was trained with: quantized again
    net = model.get_base_model()
    assert getattr(net, f"is_loaded_in_{bits}")
    texts, _ = generate(Accelerator(cpu=True), model, tok, encoder, [r["dialogue"] for r in zoo.corpus_rows(2, seed=4)],
                        GenerationConfig(max_new_tokens=4, batch_size=2), progress=False)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    if method == "lora" and arch == "t5":
        # Exported: merged into the FULL-PRECISION base, and said so; what base + adapter computes in fp32.
        from transformers import AutoModelForSeq2SeqLM

        from sumtune.export import export

        info = export(saved, tmp_path / "merged")
        assert info["trained_quantization"] == bits and "full-precision base" in info["note"]
        full_precision = models.load_adapter(saved)  # the same adapter on the fp32 base
        merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
        inputs = {"input_ids": torch.tensor([[4, 5, 6, 7, 1]]), "decoder_input_ids": torch.tensor([[0, 8, 9]])}
        with torch.no_grad():
            assert (full_precision(**inputs).logits - merged(**inputs).logits).abs().max().item() < 1e-5
