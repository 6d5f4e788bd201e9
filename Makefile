# One entry point for a fresh machine: `make demo` and `make test` create .venv and install the
# pinned dependencies (constraints.txt) when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint proto apidoc install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=23"
	# torch first, from the local CPU wheel, so nothing later pulls a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	# the daemon and the dev tools, the simulations' extra (fiun-sim, bench, most tests), and the model
	# formats' extras (torchvision, transformers: tests publish such models)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,sim,torchvision,hf]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fiun-sim network --framework fl --peers 6 --dataset digits --model mlp --forget 2 --seed 0

test: $(STAMP)
	$(BIN)/ruff check fiun_peer simulations tests bench
	$(BIN)/python -m pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check fiun_peer simulations tests bench

proto: $(STAMP)
	$(BIN)/python -m fiun_peer.rpc.regenerate

# just the .venv with the pinned dependencies (the README walkthrough starts here)
install: $(STAMP)

# docs/admin-api.md from the proto comments (tests/test_apidoc.py fails when it is stale)
apidoc: $(STAMP)
	$(BIN)/python -m fiun_peer.rpc.apidoc

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
