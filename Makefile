# The two set-up-and-run commands of the README. Each creates .venv on first use
# and installs the pinned dependencies from QSMLib/requirements.lock.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): QSMLib/pyproject.toml QSMLib/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r QSMLib/requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e QSMLib
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qsm demo --out demo-output --force

test: $(STAMP)
	$(VENV)/bin/python -m pytest Testing

bench: $(STAMP)
	$(VENV)/bin/python Testing/benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) demo-output
