# The two set-up commands of the README: `make demo` and `make test`. Both create .venv when missing and install
# what they need at the versions of constraints.txt: `demo` hrlm with the serve extra, `test` every extra and the
# test tools. `pip install hrlm` alone trains and predicts; `make lean` proves it in a clean virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
INSTALL := $(PIP) install -q -c $(CONSTRAINTS)
PYTEST_ARGS ?=

.PHONY: demo test lint lean format install install-serve install-test labelstudio constraints clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per set of extras, redone when the dependencies or their pins change.
$(VENV)/.installed: $(PY) pyproject.toml $(CONSTRAINTS)
	$(INSTALL) -e .
	@touch $@

$(VENV)/.installed-serve: $(PY) pyproject.toml $(CONSTRAINTS)
	$(INSTALL) -e '.[serve]'
	@touch $@

$(VENV)/.installed-test: $(PY) pyproject.toml $(CONSTRAINTS)
	$(INSTALL) -e '.[all,test]'
	@touch $@

# Label Studio, for the test of hrlm as its ML backend (tests/e2e/test_labelstudio.py; CI makes it): a virtual
# environment of its own, since label-studio pins packages hrlm does not (.ci/labelstudio-constraints.txt)
LABEL_STUDIO := .ci/labelstudio
$(LABEL_STUDIO)/.installed: .ci/labelstudio-constraints.txt
	$(PYTHON) -m venv $(LABEL_STUDIO)
	$(LABEL_STUDIO)/bin/python -m pip install -q --disable-pip-version-check -c .ci/labelstudio-constraints.txt label-studio==1.23.2
	@touch $@

labelstudio: $(LABEL_STUDIO)/.installed

install: $(VENV)/.installed

install-serve: $(VENV)/.installed-serve

install-test: $(VENV)/.installed-test

# trains, evaluates and serves: the service needs the serve extra
demo: install-serve
	$(VENV)/bin/hrlm demo

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: install-test
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; fi; exit $$rc

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

# `pip install hrlm` without extras, in a clean virtual environment: train, predict, and `hrlm serve` names its extra
lean:
	PYTHON=$(PYTHON) .ci/lean-install

format: install-test
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

# Re-pin after changing a dependency in pyproject.toml: installs without the old pins, then freezes .venv
# (hrlm itself left out; torch without its +cpu label, so that PyPI's wheel matches where no CPU wheel is offered).
constraints: $(PY)
	$(PIP) install -q -e '.[all,test]'
	{ grep '^#' $(CONSTRAINTS); $(PIP) freeze --exclude-editable | grep -iv '^hrlm[=@ ]' \
		| sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
