# Two commands on a fresh machine with Python 3.11:  make run   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements.lock

.PHONY: setup lock run test test-fast lint format study browser clean-outputs

setup: $(STAMP)

# Reproducible installs: every dependency (dev extras too) at the exact version in $(LOCK),
# then the project itself without resolving anything again. pip, not uv: torch comes from the
# local wheel (find-links) that pip's configuration names.
# setup.py builds ensemble_nn's optional native kernel in place: an edit of its C rebuilds it
NATIVE_SRC := setup.py $(wildcard pipeline/models/solvers/native/*.c pipeline/models/solvers/native/*.h)

$(STAMP): pyproject.toml $(LOCK) $(NATIVE_SRC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate $(LOCK) from pyproject.toml after changing a dependency (every extra is locked).
# torch is written as the public 2.13.0, so pip takes this machine's local build (2.13.0+cpu)
# or PyPI's elsewhere.
lock:
	@test -x $(BIN)/pip-compile || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet pip-tools; }
	$(BIN)/pip-compile --quiet --all-extras --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --output-file $(LOCK) pyproject.toml
	sed -i 's/^torch==\([0-9.]*\)+[a-z0-9]*$$/torch==\1/' $(LOCK)

# The main job: compose pipeline/conf/ into params.yaml, then let DVC run what changed.
run: setup
	$(BIN)/python -m pipeline compose
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Headless Chromium renders the HTML report in a test (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: sudo apt-get install chromium"; exit 1; fi; }

# The suite on TEST_PROCS processes (pytest-xdist), a whole file to each, so that a module's or a
# session's study fixture runs once: 2 halves the suite's wall on 2 cores. More processes than
# cores only contend: every end-to-end test starts its own 2-worker cluster.
TEST_PROCS ?= 2

test: setup browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_PROCS) --dist loadfile

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_PROCS) --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check pipeline tests benchmarks examples
	$(BIN)/ruff format --check pipeline tests benchmarks examples

format: setup
	$(BIN)/ruff format pipeline tests benchmarks examples
	$(BIN)/ruff check --fix pipeline tests benchmarks examples

# The results page's study on real Eurostat data: the seed models, the QRF user model, the
# benchmarks, combo and the calibrated variants (experiment=seed_calibrated; docs/RESULTS.md).
study: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline run experiment=seed_calibrated runtime.progress_bar=false
	$(BIN)/python -m pipeline results --output-dir studies/seed_calibrated --out docs/RESULTS.md \
	  --notes docs/results_notes.md
