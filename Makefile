# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: install demo test lint study clean

# The tested versions (constraints.txt) inside the ranges setup.cfg accepts.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check bc_keras data_tools tests *.py

demo: $(STAMP)
	bash scripts/demo.sh "$(PY)" "$(DEMO_DIR)"

# The report regenerated: make study DATA=BreaKHis_v1.tar.gz [PROFILE=quick|full] [OUT=study]
PROFILE ?= quick
OUT ?= study
study: $(STAMP)
	@test -n "$(DATA)" || { echo "error: pass DATA=<BreaKHis_v1.tar.gz or its folder>" >&2; exit 2; }
	$(PY) -m bc_keras.study "$(DATA)" --profile "$(PROFILE)" --out "$(OUT)" $(STUDY_FLAGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache
