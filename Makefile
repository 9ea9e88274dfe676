# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo install clean-results bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pip on these machines takes torch/torchvision from local disk; pin them so a resolver never picks a newer build.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) run.py -m +experiment=demo

bench: $(STAMP)
	$(PY) bench/bench_scan.py
