# The three commands a new user needs: set up, run, test.
.PHONY: setup run test bench soak fuzz clean

VENV ?= .venv
PY := $(VENV)/bin/python

setup:
	bash deploy/setup.sh

run: $(PY)
	$(PY) -m controlplane.cli up

test: $(PY)
	$(PY) -m pytest -q

# The API fuzzed deeply (tests/test_fuzz.py; the suite runs a quick profile): more examples, a new seed each run.
fuzz: $(PY)
	HELIX_FUZZ_PROFILE=deep HELIX_FUZZ_EXAMPLES=$${HELIX_FUZZ_EXAMPLES:-200} HELIX_FUZZ_SEED=$${HELIX_FUZZ_SEED:-random} $(PY) -m pytest -q tests/test_fuzz.py

bench: $(PY)
	$(PY) -m bench.run $(BENCH)

# The platform under mixed load and faults for SOAK_MINUTES (default 30); the suite runs a short profile.
soak: $(PY)
	$(PY) -m bench.soak --minutes $${SOAK_MINUTES:-30} --output soak.json

$(PY):
	@echo "no $(VENV) yet: run 'make setup' first" >&2; exit 1

clean:
	rm -rf .helix/postgres .helix/valkey .helix/filestore .helix/env
