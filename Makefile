# The two commands of the README. Everything they need is installed here, from the registries,
# honouring your pip configuration.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2

.PHONY: setup run test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Command 1: the default grid, end to end -> results/almanac.duckdb
run: setup
	$(VENV)/bin/snakemake --cores $(CORES)

# Command 2: the whole test suite, including one real end-to-end Snakemake run on vLLM-CPU.
test: setup
	$(VENV)/bin/python -m pytest -v -rA
