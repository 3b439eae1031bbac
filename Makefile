# text2sql-rlhf developer entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv, install torch (CPU build unless a CUDA GPU is present), the project and its
# dev extras, and the helm/kubectl binaries the chart tests use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# CPU machines get the CPU wheel; on a GPU machine install a CUDA torch into .venv first
# (see README) and this step keeps it.
TORCH_VERSION ?= 2.13.0
PYTEST_WORKERS ?= 2
DEMO_DIR ?= demo

.PHONY: install test test-training test-quality test-fast demo lint clean tools schema

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "CUDA GPU found: install a CUDA build of torch into $(VENV) first (see README), then rerun"; exit 1; \
	else \
	  $(PY) -m pip install --quiet torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

tools: install
	bash .ci/install-tools.sh

# everything but the well-trained policy's quality targets (see test-quality)
test: install tools
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal -p no:cacheprovider -m "not quality"

# only the tests on trained tiny policies (the under-trained one: SFT, RM, PPO/GRPO/DPO gains)
test-training: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -m "training and not quality"

# the well-trained policy's targets: SFT EX >= 0.8 on the demo dev split, RM held-out accuracy
# (1500 SFT steps and a 600-step reward model: about 20 CPU-minutes)
test-quality: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -m quality

# everything but those (about 5 minutes)
test-fast: install tools
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -m "not training"

lint: install
	$(BIN)/ruff check text2sql_core tests benchmarks charts/text2sql-rlhf/hack

# regenerate the chart's values.schema.json and run graphs after a change to the run config models or the registry
schema: install
	$(PY) charts/text2sql-rlhf/hack/gen-schema.py
	$(PY) charts/text2sql-rlhf/hack/gen-steps.py

demo: install
	$(BIN)/t2s demo-data --out $(DEMO_DIR)/data --seed 0
	$(BIN)/t2s pipeline run --config examples/demo.yaml

clean:
	rm -rf .t2s $(DEMO_DIR) .pytest_cache
