# The two set-up commands of README.md. Each creates what it needs on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
STUDY   ?= studies/fashion-mnist-quick.yaml
FMNIST   = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint env data test-tools

# Two stamps, one venv: `make demo` installs the package alone (with the torch this Makefile pins for its own
# .venv; the package itself asks only for a range), `make test` adds the dev and postgres extras. Either may run
# first; a changed pyproject.toml or Makefile re-installs both.
$(VENV)/.demo-stamp: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-stamp: $(VENV)/.demo-stamp
	$(BIN)/pip install -q -e '.[dev,postgres]'
	touch $@

env: $(VENV)/.demo-stamp

# Fashion-MNIST, from Debian's package when root: all the demo needs besides the venv.
data:
	@if [ ! -f $(FMNIST) ] && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); fi
	@test -f $(FMNIST) || echo "note: Fashion-MNIST not in /usr/share/datasets; set KDBENCH_DATA or data.download: true"

# The test suite's own tools: chromium and pdflatex, for the report's browser and LaTeX tests; pgbouncer for
# tests/test_postgres.py's test through PgBouncer and bench/store_load.py --pgbouncer.
test-tools:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)); fi
	@command -v chromium >/dev/null || echo "note: no chromium; the report's browser test is skipped"
	@if ! command -v pdflatex >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq texlive-latex-recommended || (apt-get update -qq && apt-get install -y -qq texlive-latex-recommended)); fi
	@command -v pdflatex >/dev/null || echo "note: no pdflatex; the report's LaTeX table test is skipped"
	@if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq pgbouncer || (apt-get update -qq && apt-get install -y -qq pgbouncer)); fi
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || echo "note: no pgbouncer; the PgBouncer test is skipped and bench/store_load.py --pgbouncer cannot run"

# The shipped studies' file names are their study names.
demo: env data
	@start=$$(date +%s); set -e; \
	echo "$(BIN)/kdbench sweep $(STUDY)"; $(BIN)/kdbench sweep $(STUDY); \
	echo "$(BIN)/kdbench report $(basename $(notdir $(STUDY)))"; $(BIN)/kdbench report $(basename $(notdir $(STUDY))); \
	echo "make demo: sweep and report took $$(( $$(date +%s) - start )) s (set-up excluded)"

# A throwaway PostgreSQL server for the multi-worker tests (see .ci/postgres.sh); they skip without one.
test: $(VENV)/.test-stamp data test-tools
	bash .ci/postgres.sh $(BIN)/python -m pytest -q --durations=15

lint: $(VENV)/.test-stamp
	$(BIN)/ruff check kdbench tests
	$(BIN)/mypy

# The docs site (mkdocs.yml, docs/), built strictly into a throwaway folder: a stale study reference, a broken link
# or a docstring mkdocstrings cannot read fails the build. `.venv/bin/mkdocs serve` shows the pages live.
.PHONY: docs
docs: env
	$(BIN)/pip install -q -e '.[docs]'
	site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d "$$site"
