# llama-course: the two commands of the Quickstart, and the helpers behind them.
#   make demo   set up .venv with what the demo needs (if missing) and train the tiny model with 2 gloo processes
#   make test   add the development tools to .venv (tests, labs, docs) and run every test
#   make serve  build the docs' generated pages and serve the site at http://127.0.0.1:8000
# torch: the CPU build where nvidia-smi sees no GPU (PyTorch's CPU wheel, ~200 MB, not the multi-GB CUDA
# build the plain package index would pull), the index's default CUDA build where it sees one. Override the
# pin as before, e.g. on a CUDA machine:  make venv TORCH_SPEC='torch==2.13.0 --index-url ...'

PYTHON ?= python3
VENV ?= .venv
DEMO_ARGS ?=
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_CPU_SPEC := torch==$(TORCH_VERSION)+cpu
TORCH_SPEC ?= $(if $(HAS_NVIDIA_GPU),torch==$(TORCH_VERSION),$(TORCH_CPU_SPEC))
TORCH_INSTALL = $(PIP) $(TORCH_SPEC)
# the CPU build from the sources pip already knows (a local wheel, a mirror; pip's "not found" hidden), else
# from PyTorch's CPU index
TORCH_INSTALL_CMD = $(if $(filter $(TORCH_CPU_SPEC),$(TORCH_SPEC)),$(TORCH_INSTALL) 2>/dev/null || $(TORCH_INSTALL) \
	--extra-index-url $(TORCH_CPU_INDEX),$(TORCH_INSTALL))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PIP := $(PY) -m pip install --disable-pip-version-check --no-input

.PHONY: venv venv-dev system-deps demo test test-readme lint docs serve grade handout clean

venv: $(STAMP)

venv-dev: $(DEV_STAMP)

# what `make demo` needs: torch and the runtime dependencies of pyproject.toml, the package in editable mode
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "== [1/3] creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@echo "== [2/3] installing torch ($(TORCH_SPEC))"
	$(TORCH_INSTALL_CMD)
	@echo "== [3/3] installing llama-course (editable) and its runtime dependencies"
	$(PIP) -e .
	@touch $(STAMP)
	@echo "== $(VENV) is ready: 'source $(VENV)/bin/activate' puts llama-course on your PATH"

# the development tools (pyproject's `dev` extra: tests, labs, docs) on top
$(DEV_STAMP): $(STAMP)
	@echo "== installing the development tools (pyproject.toml [dev]: pytest, jupyter, mkdocs, oracles)"
	$(PIP) -e '.[dev]'
	@touch $(DEV_STAMP)

demo: venv
	$(PY) -m llama_course.commands.demo $(DEMO_ARGS)

# Debian's headless Chromium and a CJK font (WenQuanYi Zen Hei) for the docs rendering tests: the site in a
# browser, and the Chinese interview page in real glyphs rather than boxes (best effort: needs root and apt;
# without them those tests report what is missing)
SYSTEM_PACKAGES := chromium fonts-wqy-zenhei
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q . ; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
	  || echo "note: $(SYSTEM_PACKAGES) not installed; the docs rendering tests will say so"; }

# CI runs `make test` (under 30 minutes on 2 cores); the README's fresh-user run (every command line of
# README.md and docs/getting-started.md, in full: ~4 minutes) is `make test-readme`
README_TEST := tests/test_readme.py::test_every_command_line_works_as_written
test: venv-dev system-deps
	$(PY) -m pytest -q tests --deselect $(README_TEST)
	PY=$(PY) bash scripts/check_exercises.sh

test-readme: venv-dev
	$(PY) -m pytest -q $(README_TEST)

lint: venv-dev
	$(VENV)/bin/ruff check .

docs: venv-dev
	$(PY) scripts/gen_interview_docs.py
	$(PY) scripts/execute_labs.py
	$(VENV)/bin/mkdocs build --strict

# the site with live reload; labs show their outputs once `make docs` has executed them (cached after that)
serve: venv-dev
	$(PY) scripts/gen_interview_docs.py
	$(VENV)/bin/mkdocs serve

grade: venv-dev
	$(PY) -m llama_course grade || true    # the table says what is missing; exit code 1 is for CI

handout:
	$(PYTHON) scripts/make_handout.py

# mutation testing of the graded tests (scripts/mutate.py; docs/instructor.md records the full run):
# every mutant of solutions/ (a benchmark, too slow for CI), or the seeded sample CI runs
.PHONY: mutation mutation-sample
mutation:
	mkdir -p runs && $(PY) scripts/mutate.py --jobs 2 --json runs/mutation.json --min-score 0.95

mutation-sample:
	$(PY) scripts/mutate.py --sample 60 --seed 0 --jobs 2 --min-score $${MUTATION_MIN_SCORE:-0.95}

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
