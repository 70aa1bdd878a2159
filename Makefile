# Two commands do all set-up on a fresh machine:
#   make run    install, start the local platform on 127.0.0.1:8779 and demonstrate it
#   make test   install, make sure the test servers run, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A real Keystone for the tests, in its own venv (its pins clash with ours).
KEYSTONE_VENV  := .venv-keystone
KEYSTONE_STAMP := $(KEYSTONE_VENV)/.installed

.PHONY: install keystone run up test services bench-cold-start bench-provision bench-backup clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

keystone: $(KEYSTONE_STAMP)

$(KEYSTONE_STAMP): infra/dev/keystone-requirements.txt
	test -x $(KEYSTONE_VENV)/bin/python || $(PYTHON) -m venv $(KEYSTONE_VENV)
	$(KEYSTONE_VENV)/bin/python -m pip install --quiet -r infra/dev/keystone-requirements.txt
	touch $(KEYSTONE_STAMP)

run: install
	bash infra/dev/run.sh

up: install
	$(BIN)/troveless up

services:
	bash infra/dev/ensure-services.sh

test: install keystone services
	$(BIN)/python -m pytest -q

bench-cold-start: install
	$(BIN)/python bench/cold_start.py

bench-provision: install
	$(BIN)/python bench/provision.py

bench-backup: install services
	$(BIN)/python bench/backup.py

clean:
	rm -rf $(VENV) $(KEYSTONE_VENV) .pytest_cache
