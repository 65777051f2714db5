/* cuda_fp16.h for the CUDA emulator: see tests/cuda_emu/td_cuda_emu.h */
#include "tests/cuda_emu/td_cuda_emu.h"
