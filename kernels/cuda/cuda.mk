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

TD_CUDA :=
ifeq ($(CUDA),1)
  ifeq ($(SAN),)
    ifneq ($(strip $(NVCC)),)
      TD_CUDA := $(shell $(NVCC) --version >/dev/null 2>&1 && echo yes)
    endif
  endif
endif

ifeq ($(TD_CUDA),yes)
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

.PHONY: cuda-info
cuda-info:
	@echo "CUDA backend: $(if $(TD_CUDA),yes ($(NVCC), CUDA_HOME=$(CUDA_HOME)),no (stub))"
