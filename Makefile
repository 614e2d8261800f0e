# Set-up is implicit: every target creates .venv on first use and installs the project
# editable with the extras it needs; torch is pinned to the local CPU build (constraints.txt).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: demo test bench lint docs clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev,docs]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cptensor demo

test: $(STAMP)
	$(PY) -m ruff check cptensor cptensor_adapters tests benchmarks docs
	# Two pytest workers on two cores: one BLAS/OpenMP thread each, or small GEMMs crawl.
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 -q
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m ruff check cptensor cptensor_adapters tests benchmarks docs
	$(PY) -m ruff format --check cptensor cptensor_adapters tests benchmarks docs

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
