/* backend_cuda.h - the CUDA backend: the plain C boundary between tandem and kernels/cuda/.
 *
 * Built from the .cu files of kernels/cuda/ when nvcc is present (kernels/cuda/cuda.mk); otherwise
 * backend_cuda_stub.c provides the same functions and td_backend_cuda_new fails with "built
 * without CUDA". The returned td_backend_t is used through kernels/backend.h like the CPU one:
 * activations, KV caches and weights live in device memory, the small index arrays of the ops
 * (ids, pos, seq, kv_len, masks, scatter indices) stay host pointers and are uploaded per call.
 * See docs/cuda.md for the design and the precision of each path. */
#ifndef TD_BACKEND_CUDA_H
#define TD_BACKEND_CUDA_H

#include "common/td_common.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is none, no driver, or the build has no CUDA. */
int td_cuda_device_count(void);

/* Writes the name of device `device` ("NVIDIA H100 80GB HBM3") into buf. Returns TD_OK, or
 * TD_ERR_ARG / TD_ERR_UNSUPPORTED (no such device, no CUDA) with buf set to "". */
int td_cuda_device_name(int device, char *buf, size_t cap);

/* A backend on CUDA device `device` (0-based) with its own stream and cuBLAS handle; name
 * "cuda:N". NULL with err set when there is no such device or the build has no CUDA. The
 * environment variable TD_CUDA_MATMUL (auto|cublas|gemv) sets the initial matmul path. */
td_backend_t *td_backend_cuda_new(int device, td_err_t *err);

/* Matmul paths. AUTO: our GEMV kernel (FP32 activations, weights read in place; 16-byte vector
 * loads when the row length, stride and addresses allow, element loads otherwise) for n <= 8
 * activation rows with untransposed weights, cuBLAS otherwise. CUBLAS: always cuBLAS (activations
 * rounded to the weight dtype, FP32 accumulation). GEMV: the kernel wherever it applies (same
 * conditions as AUTO). */
enum { TD_CUDA_MATMUL_AUTO = 0, TD_CUDA_MATMUL_CUBLAS = 1, TD_CUDA_MATMUL_GEMV = 2 };
/* Selects the matmul path of a CUDA backend; no effect on other backends. */
void td_backend_cuda_set_matmul(td_backend_t *be, int mode);

/* Ops return nothing, so a CUDA failure (launch error, bad argument the kernels cannot handle,
 * out of device memory in a scratch buffer) is logged with file and line and remembered. This
 * returns TD_OK when nothing failed since the last call, else the first failure's code and
 * message in err, and clears it. Synchronizes the backend's stream first (device faults surface
 * there). */
int td_backend_cuda_error(td_backend_t *be, td_err_t *err);

/* Benchmark mode: when on, td_backend_weights allocates device memory and fills it with
 * pseudo-random BF16 values in [-0.03, 0.03] generated on the device from seed, without reading
 * the host data (which may be an untouched sparse file). For speed measurements at real shapes
 * only: the numbers computed are meaningless. */
void td_backend_cuda_set_synthetic(td_backend_t *be, int on, uint64_t seed);

/* Device memory bandwidth measured by device-to-device cudaMemcpy of `bytes` (best of several
 * copies), in bytes per second counting the bytes read plus the bytes written. 0 on failure. */
double td_cuda_copy_bandwidth(td_backend_t *be, size_t bytes);

/* Free and total device memory of the backend's device, in bytes; TD_OK or a negative code. */
int td_cuda_mem_info(td_backend_t *be, size_t *free_b, size_t *total_b);

#ifdef __cplusplus
}
#endif
#endif
