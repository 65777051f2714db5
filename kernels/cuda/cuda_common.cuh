/* cuda_common.cuh - what the CUDA backend's translation units share: the backend context, the
 * error-check macros (file/line into a logged, remembered error; never exit), the upload ring
 * for the small host index arrays, and the kernel launchers each .cu file defines. */
#ifndef TD_CUDA_COMMON_CUH
#define TD_CUDA_COMMON_CUH

#include "kernels/backend_impl.h"
#include "kernels/cuda/backend_cuda.h"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

typedef struct cuda_ctx {
    int device;
    int sm_count;
    cudaStream_t stream;
    cublasHandle_t blas;
    int matmul_mode;
    int synthetic;
    uint64_t synth_seed, synth_count;
    /* upload ring: pinned host staging + device mirror, used front to back, synchronised on wrap */
    char *ring_host, *ring_dev;
    size_t ring_cap, ring_off;
    /* activations rounded to BF16/F16 for cuBLAS, reused while the source is unchanged */
    void *xconv;
    size_t xconv_cap;
    const float *xconv_src;
    int64_t xconv_count;
    int xconv_dtype;
    uint64_t xconv_gen;
    uint64_t gen; /* bumped by every write to device memory */
    /* dequantized FP32 weight panels for the wide products on quantized weights (quant.cu) */
    void *qdeq;
    size_t qdeq_cap;
    /* staging for td_backend_copy between overlapping ranges */
    void *copy_tmp;
    size_t copy_tmp_cap;
    /* explicit attention mask: last upload kept on the device with a host copy to compare */
    uint8_t *mask_dev, *mask_host;
    size_t mask_cap, mask_len;
    /* attention split-K partials */
    float *att_part;
    size_t att_part_cap;
    /* td_op_sample: top-p weights [rows, n_vocab] (double) and the results (sample.cu) */
    void *samp_w, *samp_out;
    size_t samp_w_cap, samp_out_cap;
    /* weights uploaded and not yet freed (freed at destroy) */
    void **wlist;
    size_t wlist_n, wlist_cap;
    /* first failure since td_backend_cuda_error */
    int err_code;
    char err_msg[768];
} cuda_ctx_t;

/* Records and logs a failure (first one kept). Returns -1. */
int tdc_fail(cuda_ctx_t *c, int code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int tdc_check_cuda(cuda_ctx_t *c, cudaError_t e, const char *what, const char *file, int line);
int tdc_check_blas(cuda_ctx_t *c, cublasStatus_t s, const char *what, const char *file, int line);

#define TDC_CUDA(c, call) tdc_check_cuda((c), (call), #call, __FILE__, __LINE__)
#define TDC_BLAS(c, call) tdc_check_blas((c), (call), #call, __FILE__, __LINE__)
/* after every kernel launch */
#define TDC_LAUNCHED(c) tdc_check_cuda((c), cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
#define TDC_FAIL(c, code, ...) tdc_fail((c), (code), __FILE__, __LINE__, __VA_ARGS__)

/* Copies nbytes of host memory into the ring and returns its device address (valid for kernels
 * enqueued on c->stream from now until the ring wraps, which synchronises the stream first).
 * NULL on failure (logged). */
const void *tdc_upload(cuda_ctx_t *c, const void *host, size_t nbytes);

/* Grows *buf (device) to at least nbytes; keeps nothing. 0 or -1 (logged). */
int tdc_reserve(cuda_ctx_t *c, void **buf, size_t *cap, size_t nbytes);

static inline int tdc_blocks(int64_t count, int threads) {
    int64_t b = (count + threads - 1) / threads;
    if (b > 65535LL * 32) b = 65535LL * 32;
    return (int)(b < 1 ? 1 : b);
}

/* --- device helpers ---------------------------------------------------------------------- */

__device__ __forceinline__ float tdc_bf16(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ float tdc_f16(uint16_t h) {
    return __half2float(__ushort_as_half((unsigned short)h));
}
/* element i of a linear F32/F16/BF16 array */
__device__ __forceinline__ float tdc_ld(const void *p, int dt, int64_t i) {
    if (dt == TD_DTYPE_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == TD_DTYPE_BF16 ? tdc_bf16(h) : tdc_f16(h);
}

/* The end of a product with one warp per R weight rows (gemv.cu, quant.cu): each lane's partial
 * sums acc[t][r] added across the warp (butterfly), then lane 0 writes
 * y[t * rows + r0 + r] = sum + bias[r0 + r] (dtype bdt; 0 without bias) for the rows that exist. */
template <int NT, int R>
__device__ __forceinline__ void tdc_gemv_store(float (&acc)[NT][R], int lane, int64_t r0, int rows,
                                               float *__restrict__ y, const void *__restrict__ bias,
                                               int bdt) {
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                acc[t][r] += __shfl_xor_sync(0xffffffffu, acc[t][r], o);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r0 + r >= rows) break;
            const float b = bias ? tdc_ld(bias, bdt, r0 + r) : 0.0f;
#pragma unroll
            for (int t = 0; t < NT; t++) y[(size_t)t * rows + r0 + r] = acc[t][r] + b;
        }
    }
}

/* --- launchers (kernels_elem.cu, gemv.cu, attention.cu) --------------------------------- */

void tdc_get_rows(cuda_ctx_t *c, float *y, const td_weight_t *t, const int32_t *ids_dev, int n);
void tdc_rmsnorm(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w, int n, int d,
                 float eps);
void tdc_layernorm(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
                   const td_weight_t *b, int n, int d, float eps);
void tdc_rope(cuda_ctx_t *c, float *x, const int32_t *pos_dev, int n, int n_head, int head_dim,
              int rot_dim, float theta, int interleaved);
void tdc_swiglu(cuda_ctx_t *c, float *y, const float *g, const float *u, int64_t count);
void tdc_gelu_tanh(cuda_ctx_t *c, float *x, int64_t count);
void tdc_add(cuda_ctx_t *c, float *y, const float *x, int64_t count);
void tdc_scatter_rows(cuda_ctx_t *c, float *dst, int64_t row_stride, const float *src,
                      const int64_t *idx_dev, int n, int d);
/* out[n, m] += bias[m] */
void tdc_add_bias(cuda_ctx_t *c, float *y, const td_weight_t *bias, int n, int64_t m);
/* dst (BF16 or F16 bits) = src rounded to nearest even; F16 saturates at +-65504 */
void tdc_convert(cuda_ctx_t *c, void *dst, int dt, const float *src, int64_t count);
void tdc_fill_synthetic(cuda_ctx_t *c, void *dst, size_t nbytes, uint64_t seed);

/* 1 if the GEMV kernel handles this product (else use cuBLAS) */
int tdc_gemv_ok(const td_weight_t *w, const float *x, int n);
void tdc_gemv(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
              const td_weight_t *bias, int n);

/* Block-quantized weights (quant.cu). Products with n <= TDC_QGEMV_MAX_N tokens (auto mode;
 * any n in the GEMV mode) dequantize in registers, batch-invariant; wider ones (or the cuBLAS
 * mode) dequantize FP32 panels for SGEMM. Transposed or partial-block weights are refused. */
#define TDC_QGEMV_MAX_N 24
void tdc_qmatmul(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
                 const td_weight_t *bias, int n);
/* y[i, :] = dequantized row ids_dev[i] of t (ids already checked against t->rows) */
void tdc_qget_rows(cuda_ctx_t *c, float *y, const td_weight_t *t, const int32_t *ids_dev, int n);

void tdc_attention(cuda_ctx_t *c, float *out, const float *q, const float *k_cache,
                   const float *v_cache, const td_attn_desc_t *a);

/* td_op_sample (sample.cu): launches one block per row, copies out[n_rows] (host) back and waits.
 * 0, or -1 with the failure recorded. seeds (host) may be NULL for greedy settings. */
int tdc_sample(cuda_ctx_t *c, const float *logits, int n_rows, int n_vocab,
               const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out);

#endif
