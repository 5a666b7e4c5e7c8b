# The two set-up-and-run commands of the README. Each creates .venv on first use
# and installs the pinned dependencies from QSMLib/requirements.lock.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed-stamp

# `make test` also runs the library's tests on the Python stacks that 3D Slicer bundles
# (Python, numpy, scipy and pydicom exactly as Slicer pins them), one venv per release:
# .venv-slicer-5.8/ from QSMLib/requirements-slicer-5.8.lock, and so on. Slicer 5.6 and 5.8
# bundle Python 3.9, Slicer 5.10 and 5.12 Python 3.12; the newest pyenv build of each is
# taken unless PYTHON3_9 / PYTHON3_12 name an interpreter.
SLICER_STACKS := 5.6 5.8 5.10 5.12
PYENV_ROOT    ?= $(HOME)/.pyenv
find_python    = $(or $(shell ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V | tail -n 1),$(shell command -v python$(1)))
PYTHON3_9     ?= $(call find_python,3.9)
PYTHON3_12    ?= $(call find_python,3.12)
SLICER_PYTHON_VERSION_5.6  := 3.9
SLICER_PYTHON_VERSION_5.8  := 3.9
SLICER_PYTHON_VERSION_5.10 := 3.12
SLICER_PYTHON_VERSION_5.12 := 3.12
# The Slicer modules' tests need slicer-core (Python >= 3.10, not Slicer's numpy); the main suite runs them.
# No pytest cache: the stacks neither share one nor overwrite the main suite's (pytest --lf).
# Nor the web app's (trame-slicer and Playwright need Python >= 3.10 and are not in Slicer's stacks).
SLICER_STACK_PYTEST_ARGS ?= --ignore-glob='Testing/test_slicer_*' --ignore-glob='Testing/test_web_*' -p no:cacheprovider
# The venvs are built one at a time, then this many stacks run their tests at once, each
# stack's output printed whole when it ends. A test run spends about 60 % of its CPU time
# in one thread (the rest in FFT threads), so two at once keep both cores busier.
SLICER_STACK_JOBS ?= 2

.PHONY: demo test test-main chromium test-slicer-stacks slicer-check $(SLICER_STACKS:%=test-slicer-%) bench bench-web clean

$(STAMP): QSMLib/pyproject.toml QSMLib/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r QSMLib/requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e QSMLib
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qsm demo --out demo-output --force

test: test-main test-slicer-stacks

test-main: $(STAMP) chromium
	$(VENV)/bin/python -m pytest Testing

# The web app's browser tests drive Debian's Chromium (Testing/test_web_app.py); installed when missing.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install -y chromium (for the browser tests of qsm web)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || exit 1; \
	  else \
	    echo "make: the browser tests of qsm web need Debian's Chromium at $(CHROMIUM);" \
	         "install it (sudo apt-get install -y chromium) and run make test again" >&2; \
	    exit 1; \
	  fi; \
	fi

test-slicer-stacks: $(SLICER_STACKS:%=.venv-slicer-%/.installed-stamp)
	@$(MAKE) --no-print-directory --keep-going -j$(SLICER_STACK_JOBS) --output-sync=target $(SLICER_STACKS:%=test-slicer-%)

$(SLICER_STACKS:%=test-slicer-%): test-slicer-%: .venv-slicer-%/.installed-stamp
	@.venv-slicer-$*/bin/python -c 'import platform; from importlib.metadata import version; \
	  print("== library tests on the stack of Slicer $*: Python", platform.python_version(), \
	        *("%s %s" % (name, version(name)) for name in ("numpy", "scipy", "pydicom")))'
	.venv-slicer-$*/bin/python -m pytest $(SLICER_STACK_PYTEST_ARGS) Testing

# In the recipes below, $* is the Slicer release: its Python version, and the variable naming its interpreter.
stack_py_version = $(SLICER_PYTHON_VERSION_$*)
stack_py_var     = PYTHON$(subst .,_,$(stack_py_version))

.PRECIOUS: .venv-slicer-%/.installed-stamp
.venv-slicer-%/.installed-stamp: QSMLib/pyproject.toml QSMLib/requirements-slicer-%.lock
	@python="$($(stack_py_var))"; \
	if [ -z "$$python" ]; then \
	  echo "make: Slicer $* bundles Python $(stack_py_version), and none was found: looked for" \
	       "$(PYENV_ROOT)/versions/$(stack_py_version).*/bin/python$(stack_py_version) and python$(stack_py_version) on PATH." \
	       "Install it (pyenv install $(stack_py_version)) or name it: make $(stack_py_var)=/path/to/python$(stack_py_version)" >&2; \
	  exit 1; \
	fi; \
	if [ "$$("$$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != $(stack_py_version) ]; then \
	  echo "make: $(stack_py_var)=$$python is not a working Python $(stack_py_version), which Slicer $* bundles" >&2; \
	  exit 1; \
	fi; \
	echo "$$python -m venv --clear .venv-slicer-$*"; "$$python" -m venv --clear .venv-slicer-$*
	.venv-slicer-$*/bin/python -m pip install --quiet --disable-pip-version-check -r QSMLib/requirements-slicer-$*.lock
	.venv-slicer-$*/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e QSMLib
	touch $@

# The Slicer modules' tests on Slicer's own Python layer of every supported release,
# read from a git clone of Slicer with its tags (README, "How the modules are tested").
SLICER_SOURCE ?=
slicer-check: $(STAMP)
	@if [ -z "$(SLICER_SOURCE)" ]; then \
	  echo "make slicer-check: give a git clone of Slicer with its release tags," \
	       "e.g. git clone https://github.com/Slicer/Slicer.git ../Slicer && make slicer-check SLICER_SOURCE=../Slicer" >&2; \
	  exit 2; \
	fi
	$(VENV)/bin/python Testing/slicer_check.py --slicer-source "$(SLICER_SOURCE)"

# Times, FFT pairs and peak memory per stage at 2, 1, 0.7 and 0.5 mm; writes the README's table.
bench: $(STAMP)
	$(VENV)/bin/python Testing/benchmarks/bench_pipeline.py --write-readme

# qsm web against qsm run on the 1 mm head: time and memory (README, "In the browser").
bench-web: $(STAMP) chromium
	$(VENV)/bin/python Testing/benchmarks/bench_web.py --write-readme

clean:
	rm -rf $(VENV) $(SLICER_STACKS:%=.venv-slicer-%) demo-output
