# kernels/cuda/cuda.mk - the CUDA backend, included by the root Makefile after its own rules:
#     -include kernels/cuda/cuda.mk
# With nvcc (on PATH, or /usr/local/cuda/bin/nvcc) kernels/cuda/*.cu are compiled for sm_80 and
# sm_90 (plus compute_90 PTX) into $(BUILD)/libtandem-cuda.a, C sources get -DTD_HAVE_CUDA, and every program links
# cudart and cuBLAS. Without nvcc (or with CUDA=0, NVCC=false, or a sanitizer build, SAN set),
# the archive holds kernels/cuda/backend_cuda_stub.c instead: td_backend_cuda_new fails with
# "built without CUDA", td_cuda_device_count returns 0, and nothing depends on CUDA.
# Variables: NVCC (compiler path), CUDA (0 forces the stub), CUDA_ARCHS (gencode list),
# NVCCFLAGS (extra flags), CUDA_HOME (derived from NVCC).

NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA ?= 1
CUDA_LIB := $(BUILD)/libtandem-cuda.a
# SASS for sm_80 and sm_90, plus compute_90 PTX that newer GPUs compile at load time
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
              -gencode arch=compute_90,code=compute_90

# CUDA_EMU=1 (make test-cuda-emu): the same .cu sources built by the host C++ compiler against
# the CPU emulator in tests/cuda_emu/ (fibers for CUDA threads, emulated runtime and cuBLAS), with
# -DTD_CUDA_EMU; sanitizer builds are allowed. For testing the CUDA code without a GPU only.
CUDA_EMU ?= 0

TD_CUDA :=
ifeq ($(CUDA_EMU),1)
  TD_CUDA := emu
else ifeq ($(CUDA),1)
  ifeq ($(SAN),)
    ifneq ($(strip $(NVCC)),)
      TD_CUDA := $(shell $(NVCC) --version >/dev/null 2>&1 && echo yes)
    endif
  endif
endif

ifeq ($(TD_CUDA),emu)
EMU_HDR   := $(wildcard tests/cuda_emu/*.h tests/cuda_emu/include/*.h)
CUDA_SRC  := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ  := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o) $(BUILD)/obj/tests/cuda_emu/emu.o
# the .cuh headers are rewritten too (a launch or an extern __shared__ in a header works); the
# copies under $(BUILD)/emu come first on the include path
EMU_CUH   := $(patsubst %,$(BUILD)/emu/%,$(wildcard kernels/cuda/*.cuh))
CUDA_DEPS := $(EMU_CUH) kernels/cuda/backend_cuda.h kernels/backend_impl.h \
             kernels/backend.h common/td_common.h $(EMU_HDR)
EMU_CXXFLAGS := -std=c++17 $(OPT) -g -D_GNU_SOURCE -I$(BUILD)/emu -I. -Itests/cuda_emu/include -Wall \
                -Wno-unused-parameter -Wno-unknown-pragmas $(SAN)
CFLAGS    += -DTD_HAVE_CUDA -DTD_CUDA_EMU
LDLIBS    += $(CUDA_LIB) $(LIB) -lstdc++
# tests/cuda_emu/rewrite.sed: k<<<grid, block, smem, stream>>>(args) ->
# tdemu::cfg(grid, block, smem, stream).go(k, "k")(args); extern __shared__ T name[]; ->
# T *name = (T *)tdemu::dyn_smem(); `__shared__ T name[n];` -> the same plus its registration
# (filled with 0xff before every block). Line numbers are kept.
EMU_REWRITE = mkdir -p $(dir $@) && { echo '\#line 1 "$<"'; sed -E -f tests/cuda_emu/rewrite.sed $<; } > $@.tmp && mv $@.tmp $@
$(BUILD)/emu/%.cpp: %.cu tests/cuda_emu/rewrite.sed
	$(EMU_REWRITE)
$(BUILD)/emu/%.cuh: %.cuh tests/cuda_emu/rewrite.sed
	$(EMU_REWRITE)
$(BUILD)/obj/kernels/cuda/%.o: $(BUILD)/emu/kernels/cuda/%.cpp $(CUDA_DEPS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(BUILD)/obj/tests/cuda_emu/emu.o: tests/cuda_emu/emu.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(BUILD)/tests/cuda_emu_selftest: $(BUILD)/emu/tests/cuda_emu/selftest.cpp $(BUILD)/obj/tests/cuda_emu/emu.o $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -o $@ $(filter %.cpp %.o,$^) $(LDFLAGS)
else ifeq ($(TD_CUDA),yes)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(realpath $(shell command -v $(NVCC) 2>/dev/null || echo $(NVCC))))
CUDA_SRC  := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ  := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
CUDA_DEPS := $(wildcard kernels/cuda/*.cuh) kernels/cuda/backend_cuda.h kernels/backend_impl.h \
             kernels/backend.h common/td_common.h
CFLAGS    += -DTD_HAVE_CUDA
LDLIBS    += $(CUDA_LIB) $(LIB) -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -ldl -lrt

$(BUILD)/obj/kernels/cuda/%.o: kernels/cuda/%.cu $(CUDA_DEPS)
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 $(CUDA_ARCHS) -lineinfo -I. -Xcompiler -Wall,-Wno-unused-parameter $(NVCCFLAGS) -c $< -o $@
else
CUDA_OBJ  := $(BUILD)/obj/kernels/cuda/backend_cuda_stub.o
LDLIBS    += $(CUDA_LIB) $(LIB)
endif

$(CUDA_LIB): $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# every program links the archive (through LDLIBS)
$(TEST_BIN) $(BENCH_BIN) $(WORKER_BIN) $(BUILD)/bin/tandem: $(CUDA_LIB)

.PHONY: cuda-info test-cuda-emu check-cuda-emu
cuda-info:
	@echo "CUDA backend: $(if $(filter emu,$(TD_CUDA)),emulated on the CPU (tests/cuda_emu),$(if $(TD_CUDA),yes ($(NVCC), CUDA_HOME=$(CUDA_HOME)),no (stub)))"

# The CUDA backend's tests on the CPU emulator (two emulated devices); a skip counts as failure.
EMU_BUILD ?= build/emu
test-cuda-emu:
	$(MAKE) BUILD=$(EMU_BUILD) CUDA_EMU=1 $(EMU_BUILD)/tests/cuda_emu_selftest $(EMU_BUILD)/tests/test_cuda $(EMU_BUILD)/bin/tandem
	$(EMU_BUILD)/tests/cuda_emu_selftest
	TD_CUDA_EMU_DEVICES=2 TD_TANDEM_BIN=$(EMU_BUILD)/bin/tandem $(EMU_BUILD)/tests/test_cuda
	@echo "== the kernel cases again, threads resumed in a random order (races change results)"
	TD_CUDA_EMU_SCHEDULE=shuffle TD_CUDA_EMU_SEED=1 $(EMU_BUILD)/tests/test_cuda cuda_matmul_vs_cpu \
	  cuda_elementwise_vs_cpu cuda_rope_get_rows_scatter_vs_cpu cuda_attention_vs_cpu \
	  cuda_forward_fixtures_auto cuda_sample_vs_cpu cuda_forward_sample_fixtures \
	  cuda_quant_matmul_vs_cpu cuda_quant_get_rows

# The same with AddressSanitizer + UndefinedBehaviorSanitizer: every kernel's access to device
# memory is checked (the emulator reports its fiber switches to ASan). What CI runs.
check-cuda-emu:
	$(MAKE) test-cuda-emu EMU_BUILD=build/emu-san OPT="-O1 -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
