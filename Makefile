# The three commands a new user needs: set up, run, test.
.PHONY: setup run test bench clean

VENV ?= .venv
PY := $(VENV)/bin/python

setup:
	bash deploy/setup.sh

run:
	$(PY) -m controlplane.cli up

test:
	$(PY) -m pytest -q

clean:
	rm -rf .helix/postgres .helix/valkey .helix/filestore .helix/env
