# OMO — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
GEN    := build/gen/.stamp
PROTOS := $(shell find proto -name '*.proto') proto/generate.py

.PHONY: run test test-unit lint bench gen install clean status demo

run: $(GEN)  ## start Postgres, NATS and the five services, seed, run a demo order; Ctrl-C stops all
	$(BIN)/omo up

test: $(GEN)  ## unit + integration tests against a real Postgres and NATS started by the test session
	$(BIN)/ruff check services tests bench proto
	$(BIN)/lint-imports --no-cache
	$(BIN)/buf lint build/omo.binpb --config proto/buf.yaml
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: $(GEN)
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

lint: $(GEN)  ## ruff, import contracts, buf lint, buf breaking against main
	$(BIN)/ruff check services tests bench proto
	$(BIN)/lint-imports --no-cache
	$(BIN)/buf lint build/omo.binpb --config proto/buf.yaml
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:proto 2>/dev/null; then \
	  rm -rf build/main-proto && mkdir -p build/main-proto && git archive main proto | tar -x -C build/main-proto && \
	  $(PY) proto/generate.py --image-only build/main-proto/proto build/main.binpb && \
	  $(BIN)/buf breaking build/omo.binpb --against build/main.binpb --config proto/buf.yaml && \
	  echo "buf breaking: no breaking change against main"; \
	else echo "buf breaking: main has no proto/ yet, nothing to compare"; fi

bench: $(GEN)  ## load test against a fresh stack; writes bench/results/latest.json
	$(PY) -m bench $(BENCH_ARGS)

status: $(GEN)
	$(BIN)/omo status

demo: $(GEN)
	$(BIN)/omo demo

gen: $(GEN)

$(GEN): $(STAMP) $(PROTOS)
	$(PY) proto/generate.py
	@touch $@

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(PY) -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'omo_gen.pth').write_text(str(pathlib.Path('build/gen').resolve()) + '\n')"
	@touch $@

clean:
	rm -rf build .omo .pytest_cache .ruff_cache .hypothesis
