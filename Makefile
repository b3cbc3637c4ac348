# Developer shortcuts. Run inside the environment that has nfold installed
# (pip install -e ".[dev]").
PYTHON ?= python

.PHONY: help test check lint format typecheck bench bench-quick bench-fixed-cost docs fuzz

help:
	@echo "make test        run the test suite (pytest)"
	@echo "make check       lint + format check (ruff) and type check (mypy)"
	@echo "make format      reformat src/ and tests/ with ruff"
	@echo "make bench       full benchmark suite -> benchmarks/results.{md,png,json}"
	@echo "make bench-quick reduced benchmark suite (about a minute on 2 idle cores, 2-3 when busy)"
	@echo "make bench-fixed-cost  issue 12's targets only: small calls and small layers"
	@echo "make docs        regenerate docs/api.md and docs/conv_as_matmul.png"
	@echo "make fuzz        long differential fuzz (10,000 cases; exits 1 on a mismatch)"

test:
	$(PYTHON) -m pytest -q

check: lint typecheck

lint:
	ruff check src tests docs
	ruff format --check src tests docs

typecheck:
	mypy src

format:
	ruff format src tests docs
	ruff check --fix src tests docs

bench:
	$(PYTHON) benchmarks/run.py

bench-quick:
	$(PYTHON) benchmarks/run.py --quick

bench-fixed-cost:
	$(PYTHON) benchmarks/fixed_cost.py

docs:
	$(PYTHON) docs/make_api.py
	$(PYTHON) docs/make_figure.py

fuzz:
	$(PYTHON) tests/fuzz.py --cases 10000 --seed 1
