# Two commands do everything on a fresh clone (Python 3.10+ is all they need):
#   make demo    set up .venv, build the offline demo, train T5 LoRA and full and a decoder-only LoRA, print the
#                tables (ROUGE, BERTScore on the demo's tiny encoder, lengths), write the report with the pictures
#                (outputs/demo-report/report.html)
#   make test    set up .venv, run the whole test suite (unit + multi-process integration)
# and, beside them:
#   make detox-demo  the RL detoxification demo: toxic corpus + toxicity classifier, supervised fine-tuning, then
#                    RLOO and PPO against the classifier; toxicity, ROUGE, length and KL of the three on the test split
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sumtune-installed
# Offline by design: no hub lookups at run time; W&B falls back to offline without a key.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed compiles its ops on first use (about a minute on CPU); keep them where the next run,
# CI included, finds them.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/sumtune/torch_extensions
CPU_LAUNCH := ACCELERATE_USE_CPU=true $(BIN)/accelerate launch --config_file configs/accelerate/cpu_2proc.yaml

.PHONY: setup demo detox-demo test bench bench-step bench-generation compare-methods lint clean

setup: $(STAMP)

# CPU torch first (a bare `torch` requirement would pull a multi-GB CUDA build), then the pins.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python -m sumtune_demo --out demo
	$(CPU_LAUNCH) train/finetune.py --config configs/train/demo_lora.yaml overwrite=true
	$(CPU_LAUNCH) train/finetune.py --config configs/train/demo_full.yaml overwrite=true
	$(CPU_LAUNCH) train/finetune.py --config configs/train/demo_causal_lora.yaml overwrite=true
	$(CPU_LAUNCH) eval/evaluate.py --config configs/train/demo_lora.yaml --out outputs/demo-eval --overwrite \
		--candidate zero-shot=demo/model --candidate one-shot=demo/model,shots=1 --candidate few-shot=demo/model,shots=3 \
		--candidate lora=outputs/demo-lora --candidate full=outputs/demo-full \
		--candidate causal-zero-shot=demo/causal --candidate causal-lora=outputs/demo-causal-lora
	$(BIN)/python eval/report.py outputs/demo-lora outputs/demo-full outputs/demo-causal-lora outputs/demo-eval \
		--out outputs/demo-report --overwrite

# The detox demo in its own folders (demo-detox/, outputs/demo-detox*): `make demo` stays as it is.
detox-demo: $(STAMP)
	$(BIN)/python -m sumtune_demo --out demo-detox --toxic-share 0.5 --causal-steps 0
	$(CPU_LAUNCH) train/finetune.py --config configs/train/demo_detox_sft.yaml overwrite=true
	$(CPU_LAUNCH) train/detox.py --config configs/train/demo_detox.yaml overwrite=true
	$(CPU_LAUNCH) train/detox.py --config configs/train/demo_detox_ppo.yaml overwrite=true
	$(CPU_LAUNCH) eval/evaluate.py --config configs/train/demo_detox.yaml --out outputs/demo-detox-eval --overwrite \
		--candidate sft=outputs/demo-detox-sft --candidate rloo=outputs/demo-detox --candidate ppo=outputs/demo-detox-ppo
	$(BIN)/python -m sumtune_demo.detox_table outputs/demo-detox-eval rloo=outputs/demo-detox ppo=outputs/demo-detox-ppo

test: $(STAMP)
	$(BIN)/ruff check sumtune sumtune_demo train eval tests bench
	$(BIN)/python -m pytest -q

# The performance benchmark (not a test: about 10 minutes on 2 cores); writes bench/results.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The training step against trl's SFTTrainer and Seq2SeqTrainer, and the chunked loss's memory (not a
# test: about 15 minutes on 2 shared cores; `bench/step.py --quick` is a 2-minute smoke run); builds the
# demo if missing; writes bench/step_results.md and .json.
bench-step: $(STAMP)
	$(BIN)/python bench/step.py

# Generation of both demo models (each fine-tuned first): data-order and sorted batches vs the family's
# own decoder (T5's refill, the decoder-only continuous decoder) and transformers' generate_batch (not a
# test: 7.5 minutes on 2 cores, 2026-12-05); builds the demo if missing; writes bench/generation_results.md and .json.
bench-generation: $(STAMP)
	$(BIN)/python bench/generation.py

# Full fine-tuning and every adapter method side by side on the demo (not a test: about 20 minutes on
# 2 cores; needs the demo build); writes bench/methods_results.md and .json.
compare-methods: $(STAMP)
	test -f demo/model/config.json || $(BIN)/python -m sumtune_demo --out demo
	$(BIN)/python bench/methods.py

lint: $(STAMP)
	$(BIN)/ruff check sumtune sumtune_demo train eval tests bench

clean:
	rm -rf outputs demo demo-detox wandb
