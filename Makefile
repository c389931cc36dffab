# llama-course: the two commands of the Quickstart, and the helpers behind them.
#   make demo   set up .venv (if missing) and train the tiny model with 2 gloo processes
#   make test   set up .venv (if missing) and run every test
# torch: the CPU build where nvidia-smi sees no GPU (PyTorch's CPU wheel, ~200 MB, not the multi-GB CUDA
# build the plain package index would pull), the index's default CUDA build where it sees one. Override the
# pin as before, e.g. on a CUDA machine:  make venv TORCH_SPEC='torch==2.13.0 --index-url ...'

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_CPU_SPEC := torch==$(TORCH_VERSION)+cpu
TORCH_SPEC ?= $(if $(HAS_NVIDIA_GPU),torch==$(TORCH_VERSION),$(TORCH_CPU_SPEC))
TORCH_INSTALL = $(PY) -m pip install --quiet $(TORCH_SPEC)
# the CPU build from the sources pip already knows (a local wheel, a mirror), else from PyTorch's CPU index
TORCH_INSTALL_CMD = $(if $(filter $(TORCH_CPU_SPEC),$(TORCH_SPEC)),$(TORCH_INSTALL) 2>/dev/null || $(TORCH_INSTALL) \
	--extra-index-url $(TORCH_CPU_INDEX),$(TORCH_INSTALL))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv system-deps demo test test-fast lint docs grade handout clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(TORCH_INSTALL_CMD)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(PY) -m llama_course.commands.demo

# Debian's headless Chromium and a CJK font (WenQuanYi Zen Hei) for the docs rendering tests: the site in a
# browser, and the Chinese interview page in real glyphs rather than boxes (best effort: needs root and apt;
# without them those tests report what is missing)
SYSTEM_PACKAGES := chromium fonts-wqy-zenhei
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q . ; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
	  || echo "note: $(SYSTEM_PACKAGES) not installed; the docs rendering tests will say so"; }

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
