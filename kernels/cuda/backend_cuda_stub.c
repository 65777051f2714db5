/* backend_cuda_stub.c - the CUDA entry points of a build without nvcc: every constructor fails
 * with "built without CUDA" and no device is ever reported, so callers need no #ifdef. */
#include "kernels/cuda/backend_cuda.h"

int td_cuda_device_count(void) { return 0; }

int td_cuda_device_name(int device, char *buf, size_t cap) {
    if (buf && cap) buf[0] = '\0';
    return TD_ERR_UNSUPPORTED;
}

td_backend_t *td_backend_cuda_new(int device, td_err_t *err) {
    td_err_set(err, TD_ERR_UNSUPPORTED, "cuda:%d: tandem was built without CUDA (stub backend)",
               device);
    return NULL;
}

void td_backend_cuda_set_matmul(td_backend_t *be, int mode) {}

int td_backend_cuda_error(td_backend_t *be, td_err_t *err) {
    return td_err_set(err, TD_ERR_UNSUPPORTED, "tandem was built without CUDA");
}

void td_backend_cuda_set_synthetic(td_backend_t *be, int on, uint64_t seed) {}

double td_cuda_copy_bandwidth(td_backend_t *be, size_t bytes) { return 0.0; }

int td_cuda_mem_info(td_backend_t *be, size_t *free_b, size_t *total_b) {
    if (free_b) *free_b = 0;
    if (total_b) *total_b = 0;
    return TD_ERR_UNSUPPORTED;
}
