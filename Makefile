# llama-course: the two commands of the Quickstart, and the helpers behind them.
#   make demo   set up .venv (if missing) and train the tiny model with 2 gloo processes
#   make test   set up .venv (if missing) and run every test
# On a CUDA machine, override the torch pin:  make venv TORCH_SPEC='torch==2.13.0 --index-url ...'

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv system-deps demo test test-fast lint docs grade handout clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(PY) -m llama_course.commands.demo

# Debian's headless Chromium for the docs rendering test (best effort: needs root and apt; without it
# that one test reports the missing browser)
system-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: chromium not installed; the docs screenshot test will say so"; }

test: venv system-deps
	$(PY) -m pytest -q tests
	PY=$(PY) bash scripts/check_exercises.sh

lint: venv
	$(VENV)/bin/ruff check .

docs: venv
	$(PY) scripts/gen_interview_docs.py
	$(PY) scripts/execute_labs.py
	$(VENV)/bin/mkdocs build --strict

grade: venv
	$(PY) -m llama_course grade || true    # the table says what is missing; exit code 1 is for CI

handout:
	$(PYTHON) scripts/make_handout.py

# mutation testing of the graded tests (scripts/mutate.py; docs/instructor.md records the full run):
# every mutant of solutions/ (a benchmark, too slow for CI), or the seeded sample CI runs
.PHONY: mutation mutation-sample
mutation:
	mkdir -p runs && $(PY) scripts/mutate.py --jobs 2 --json runs/mutation.json --min-score 0.95

mutation-sample:
	$(PY) scripts/mutate.py --sample 60 --seed 0 --jobs 2 --min-score 0.95

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
