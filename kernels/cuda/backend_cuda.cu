/* backend_cuda.cu - the CUDA backend's table: device memory, uploads, cuBLAS products and the
 * dispatch to our kernels (kernels_elem.cu, gemv.cu, attention.cu).
 *
 * One non-blocking stream and one cuBLAS handle per backend; every entry point first selects the
 * backend's device, so backends on different devices can share a thread. Host index arrays are
 * staged through a pinned ring and copied asynchronously on the stream (no cudaMalloc per call);
 * td_backend_get synchronises. Failures are logged and remembered (td_backend_cuda_error). */
#include "kernels/cuda/cuda_common.cuh"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TDC_RING_MIN ((size_t)1 << 20)
#define TDC_ALIGN 256

/* --- errors -------------------------------------------------------------------------------- */

int tdc_fail(cuda_ctx_t *c, int code, const char *file, int line, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    td_log(TD_LOG_ERROR, "cuda:%d: %s (%s:%d)", c ? c->device : -1, msg, file, line);
    if (c && c->err_code == TD_OK) {
        c->err_code = code;
        snprintf(c->err_msg, sizeof c->err_msg, "cuda:%d: %s (%s:%d)", c->device, msg, file, line);
    }
    return -1;
}

int tdc_check_cuda(cuda_ctx_t *c, cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return 0;
    return tdc_fail(c, e == cudaErrorMemoryAllocation ? TD_ERR_NOMEM : TD_ERR, file, line,
                    "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

int tdc_check_blas(cuda_ctx_t *c, cublasStatus_t s, const char *what, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    return tdc_fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? TD_ERR_NOMEM : TD_ERR, file, line,
                    "%s: cuBLAS %s", what, cublasGetStatusString(s));
}

static cuda_ctx_t *s_ctx(td_backend_t *be) {
    cuda_ctx_t *c = (cuda_ctx_t *)be->ctx;
    cudaSetDevice(c->device);
    return c;
}

/* --- scratch and uploads --------------------------------------------------------------------- */

int tdc_reserve(cuda_ctx_t *c, void **buf, size_t *cap, size_t nbytes) {
    if (*cap >= nbytes && *buf) return 0;
    size_t want = *cap * 2 > nbytes ? *cap * 2 : nbytes;
    if (*buf) {
        TDC_CUDA(c, cudaStreamSynchronize(c->stream));
        cudaFree(*buf);
        *buf = NULL;
        *cap = 0;
    }
    if (TDC_CUDA(c, cudaMalloc(buf, want))) {
        *buf = NULL;
        return -1;
    }
    *cap = want;
    return 0;
}

static int s_ring_grow(cuda_ctx_t *c, size_t need) {
    size_t cap = c->ring_cap ? c->ring_cap : TDC_RING_MIN;
    while (cap < need) cap *= 2;
    if (c->ring_host || c->ring_dev) {
        TDC_CUDA(c, cudaStreamSynchronize(c->stream));
        cudaFreeHost(c->ring_host);
        cudaFree(c->ring_dev);
        c->ring_host = c->ring_dev = NULL;
        c->ring_cap = 0;
    }
    if (TDC_CUDA(c, cudaMallocHost((void **)&c->ring_host, cap))) return -1;
    if (TDC_CUDA(c, cudaMalloc((void **)&c->ring_dev, cap))) {
        cudaFreeHost(c->ring_host);
        c->ring_host = NULL;
        return -1;
    }
    c->ring_cap = cap;
    c->ring_off = 0;
    return 0;
}

const void *tdc_upload(cuda_ctx_t *c, const void *host, size_t nbytes) {
    size_t need = (nbytes + TDC_ALIGN - 1) & ~(size_t)(TDC_ALIGN - 1);
    if (need == 0) need = TDC_ALIGN;
    if (need > c->ring_cap) {
        if (s_ring_grow(c, need * 4)) return NULL;
    } else if (c->ring_off + need > c->ring_cap) {
        /* the host side of the ring is about to be reused: earlier copies must have left it */
        if (TDC_CUDA(c, cudaStreamSynchronize(c->stream))) return NULL;
        c->ring_off = 0;
    }
    char *h = c->ring_host + c->ring_off, *d = c->ring_dev + c->ring_off;
    c->ring_off += need;
    if (nbytes) {
        memcpy(h, host, nbytes);
        if (TDC_CUDA(c, cudaMemcpyAsync(d, h, nbytes, cudaMemcpyHostToDevice, c->stream)))
            return NULL;
    }
    return d;
}

/* --- memory ---------------------------------------------------------------------------------- */

static void *s_alloc(td_backend_t *be, size_t nbytes) {
    cuda_ctx_t *c = s_ctx(be);
    void *p = NULL;
    if (TDC_CUDA(c, cudaMalloc(&p, nbytes ? nbytes : 16))) return NULL;
    if (TDC_CUDA(c, cudaMemsetAsync(p, 0, nbytes, c->stream))) {
        cudaFree(p);
        return NULL;
    }
    c->gen++;
    return p;
}

static void s_free(td_backend_t *be, void *p) {
    cuda_ctx_t *c = s_ctx(be);
    TDC_CUDA(c, cudaStreamSynchronize(c->stream));
    TDC_CUDA(c, cudaFree(p));
    c->gen++;
}

static const void *s_weights(td_backend_t *be, const void *host, size_t nbytes) {
    cuda_ctx_t *c = s_ctx(be);
    void *p = NULL;
    if (c->wlist_n == c->wlist_cap) {
        size_t cap = c->wlist_cap ? c->wlist_cap * 2 : 256;
        void **nl = (void **)realloc(c->wlist, cap * sizeof *nl);
        if (!nl) {
            TDC_FAIL(c, TD_ERR_NOMEM, "out of host memory tracking weights");
            return NULL;
        }
        c->wlist = nl;
        c->wlist_cap = cap;
    }
    if (TDC_CUDA(c, cudaMalloc(&p, nbytes ? (nbytes + 15) & ~(size_t)15 : 16))) {
        TDC_FAIL(c, TD_ERR_NOMEM, "cannot allocate %zu bytes of device memory for a weight",
                 nbytes);
        return NULL;
    }
    if (c->synthetic) {
        tdc_fill_synthetic(c, p, nbytes, c->synth_seed + 0x9E3779B97F4A7C15ull * ++c->synth_count);
        if (TDC_CUDA(c, cudaStreamSynchronize(c->stream))) {
            cudaFree(p);
            return NULL;
        }
    } else if (nbytes &&
               (TDC_CUDA(c, cudaMemcpyAsync(p, host, nbytes, cudaMemcpyHostToDevice, c->stream)) ||
                TDC_CUDA(c, cudaStreamSynchronize(c->stream)))) {
        /* on the backend's stream, not cudaMemcpy: a pageable copy on the legacy stream may still
         * be in flight when it returns, and our non-blocking stream does not wait for it */
        cudaFree(p);
        return NULL;
    }
    c->wlist[c->wlist_n++] = p;
    c->gen++;
    return p;
}

static void s_free_weights(td_backend_t *be, const void *p) {
    cuda_ctx_t *c = s_ctx(be);
    for (size_t i = 0; i < c->wlist_n; i++)
        if (c->wlist[i] == p) {
            TDC_CUDA(c, cudaStreamSynchronize(c->stream));
            TDC_CUDA(c, cudaFree(c->wlist[i]));
            c->wlist[i] = c->wlist[--c->wlist_n];
            c->gen++;
            return;
        }
    TDC_FAIL(c, TD_ERR_ARG, "td_backend_free_weights: %p is not a weight of this backend", p);
}

static void s_set(td_backend_t *be, void *dst, const void *src, size_t n) {
    cuda_ctx_t *c = s_ctx(be);
    if (!n) return;
    TDC_CUDA(c, cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream));
    TDC_CUDA(c, cudaStreamSynchronize(c->stream)); /* the caller may reuse src at once */
    c->gen++;
}

static void s_get(td_backend_t *be, void *dst, const void *src, size_t n) {
    cuda_ctx_t *c = s_ctx(be);
    if (n) TDC_CUDA(c, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream));
    TDC_CUDA(c, cudaStreamSynchronize(c->stream));
}

static int s_ranges_overlap(const void *a, size_t an, const void *b, size_t bn);

static void s_copy(td_backend_t *be, void *dst, const void *src, size_t n) {
    cuda_ctx_t *c = s_ctx(be);
    if (!n || dst == src) return;
    if (s_ranges_overlap(dst, n, src, n)) {
        /* memmove semantics, as the CPU backend: cudaMemcpy's ranges must not overlap */
        if (tdc_reserve(c, &c->copy_tmp, &c->copy_tmp_cap, n)) return;
        if (TDC_CUDA(c, cudaMemcpyAsync(c->copy_tmp, src, n, cudaMemcpyDeviceToDevice, c->stream)))
            return;
        src = c->copy_tmp;
    }
    TDC_CUDA(c, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, c->stream));
    c->gen++;
}

static void s_sync(td_backend_t *be) {
    cuda_ctx_t *c = s_ctx(be);
    TDC_CUDA(c, cudaStreamSynchronize(c->stream));
}

static void s_destroy(td_backend_t *be) {
    cuda_ctx_t *c = s_ctx(be);
    cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < c->wlist_n; i++) cudaFree(c->wlist[i]);
    free(c->wlist);
    cudaFree(c->xconv);
    cudaFree(c->copy_tmp);
    cudaFree(c->qdeq);
    cudaFree(c->att_part);
    cudaFree(c->samp_w);
    cudaFree(c->samp_out);
    cudaFree(c->mask_dev);
    free(c->mask_host);
    cudaFree(c->ring_dev);
    cudaFreeHost(c->ring_host);
    if (c->blas) cublasDestroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
    free(be);
}

/* --- matmul ---------------------------------------------------------------------------------- */

static cudaDataType_t s_cuda_type(int dt) {
    return dt == TD_DTYPE_F32 ? CUDA_R_32F : dt == TD_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

static int s_ranges_overlap(const void *a, size_t an, const void *b, size_t bn) {
    const char *pa = (const char *)a, *pb = (const char *)b;
    return pa < pb + bn && pb < pa + an;
}

/* y[n, rows] = x[n, cols] W^T. Column-major view: Y^T (rows x n, ldc rows) = op(A) X^T where the
 * stored weight is, column-major, W^T (cols x rows, lda = ld) -> op = T, or for transposed storage
 * W itself (rows x cols, lda = ld) -> op = N; X^T is x as stored (cols x n, ldb = cols). */
static void s_matmul_blas(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w, int n) {
    const int64_t rows = w->rows, cols = w->cols;
    const int64_t ld = w->ld ? w->ld : (w->transposed ? rows : cols);
    const cublasOperation_t op = w->transposed ? CUBLAS_OP_N : CUBLAS_OP_T;
    const float one = 1.0f, zero = 0.0f;
    if (w->dtype == TD_DTYPE_F32) {
        TDC_BLAS(c,
                 cublasSgemm(c->blas, op, CUBLAS_OP_N, (int)rows, n, (int)cols, &one,
                             (const float *)w->data, (int)ld, x, (int)cols, &zero, y, (int)rows));
        return;
    }
    const int64_t count = (int64_t)n * cols;
    if (!(c->xconv_src == x && c->xconv_count == count && c->xconv_dtype == (int)w->dtype &&
          c->xconv_gen == c->gen)) {
        if (tdc_reserve(c, &c->xconv, &c->xconv_cap, (size_t)count * 2)) return;
        tdc_convert(c, c->xconv, w->dtype, x, count);
        c->xconv_src = x;
        c->xconv_count = count;
        c->xconv_dtype = (int)w->dtype;
        c->xconv_gen = c->gen;
    }
    const cudaDataType_t t = s_cuda_type(w->dtype);
    TDC_BLAS(c, cublasGemmEx(c->blas, op, CUBLAS_OP_N, (int)rows, n, (int)cols, &one, w->data, t,
                             (int)ld, c->xconv, t, (int)cols, &zero, y, CUDA_R_32F, (int)rows,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void s_matmul(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                     const td_weight_t *bias, int n) {
    cuda_ctx_t *c = s_ctx(be);
    if (w->rows > INT32_MAX || w->cols > INT32_MAX) {
        TDC_FAIL(c, TD_ERR_UNSUPPORTED, "matmul: %lldx%lld weight exceeds int32 dimensions",
                 (long long)w->rows, (long long)w->cols);
        return;
    }
    if (td_dtype_is_quantized(w->dtype)) {
        tdc_qmatmul(c, y, x, w, bias, n);
    } else if (c->matmul_mode != TD_CUDA_MATMUL_CUBLAS && tdc_gemv_ok(w, x, n)) {
        tdc_gemv(c, y, x, w, bias, n);
    } else {
        s_matmul_blas(c, y, x, w, n);
        if (bias) tdc_add_bias(c, y, bias, n, w->rows);
    }
    /* the converted activations stay valid when y did not overwrite their source */
    int keep = c->xconv_gen == c->gen && !s_ranges_overlap(y, (size_t)n * w->rows * 4, c->xconv_src,
                                                           (size_t)c->xconv_count * 4);
    c->gen++;
    if (keep) c->xconv_gen = c->gen;
}

/* --- ops with host index arrays ------------------------------------------------------------- */

static void s_get_rows(td_backend_t *be, float *y, const td_weight_t *t, const int32_t *ids,
                       int n) {
    cuda_ctx_t *c = s_ctx(be);
    if (n <= 0) return;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->rows) {
            TDC_FAIL(c, TD_ERR_ARG, "get_rows: id %d (row %d) outside the table's %lld rows",
                     (int)ids[i], i, (long long)t->rows);
            return;
        }
    const int32_t *d = (const int32_t *)tdc_upload(c, ids, (size_t)n * sizeof *ids);
    if (d && td_dtype_is_quantized(t->dtype))
        tdc_qget_rows(c, y, t, d, n);
    else if (d)
        tdc_get_rows(c, y, t, d, n);
    c->gen++;
}

static void s_rope(td_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                   int rot_dim, float theta, td_rope_layout_t layout) {
    cuda_ctx_t *c = s_ctx(be);
    if (n <= 0 || rot_dim <= 0) return;
    const int32_t *d = (const int32_t *)tdc_upload(c, pos, (size_t)n * sizeof *pos);
    if (d) tdc_rope(c, x, d, n, n_head, head_dim, rot_dim, theta, layout == TD_ROPE_INTERLEAVED);
    c->gen++;
}

static void s_scatter_rows(td_backend_t *be, float *dst, int64_t row_stride, const float *src,
                           const int64_t *idx, int n, int d) {
    cuda_ctx_t *c = s_ctx(be);
    if (n <= 0 || d <= 0) return;
    for (int i = 0; i < n; i++)
        if (idx[i] < 0) {
            TDC_FAIL(c, TD_ERR_ARG, "scatter_rows: negative row index %lld (row %d)",
                     (long long)idx[i], i);
            return;
        }
    const int64_t *di = (const int64_t *)tdc_upload(c, idx, (size_t)n * sizeof *idx);
    if (di) tdc_scatter_rows(c, dst, row_stride, src, di, n, d);
    c->gen++;
}

static void s_attention(td_backend_t *be, float *out, const float *q, const void *kc,
                        const void *vc, const td_attn_desc_t *a) {
    cuda_ctx_t *c = s_ctx(be);
    /* float32 caches only: no scatter_rows_f16 here, so kv_f16 is never set for this backend */
    if (a->n > 0) tdc_attention(c, out, q, (const float *)kc, (const float *)vc, a);
    c->gen++;
}

/* --- element-wise ---------------------------------------------------------------------------- */

static void s_rmsnorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w, int n,
                      int d, float eps) {
    cuda_ctx_t *c = s_ctx(be);
    if (n > 0) tdc_rmsnorm(c, y, x, w, n, d, eps);
    c->gen++;
}
static void s_layernorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                        const td_weight_t *b, int n, int d, float eps) {
    cuda_ctx_t *c = s_ctx(be);
    if (n > 0) tdc_layernorm(c, y, x, w, b, n, d, eps);
    c->gen++;
}
static void s_swiglu(td_backend_t *be, float *y, const float *g, const float *u, int64_t count) {
    cuda_ctx_t *c = s_ctx(be);
    if (count > 0) tdc_swiglu(c, y, g, u, count);
    c->gen++;
}
static void s_gelu_tanh(td_backend_t *be, float *x, int64_t count) {
    cuda_ctx_t *c = s_ctx(be);
    if (count > 0) tdc_gelu_tanh(c, x, count);
    c->gen++;
}
static void s_add(td_backend_t *be, float *y, const float *x, int64_t count) {
    cuda_ctx_t *c = s_ctx(be);
    if (count > 0) tdc_add(c, y, x, count);
    c->gen++;
}

static int s_status(td_backend_t *be, td_err_t *err) { return td_backend_cuda_error(be, err); }

/* td_op_sample: the kernels of sample.cu; returns the first failure since the last status check
 * (an op of the forward before it, or this one) */
static int s_sample(td_backend_t *be, const float *logits, int n_rows, int n_vocab,
                    const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out,
                    td_err_t *err) {
    cuda_ctx_t *c = s_ctx(be);
    tdc_sample(c, logits, n_rows, n_vocab, sp, seeds, out);
    return td_backend_cuda_error(be, err);
}

/* Designated initializers (C++20, accepted by nvcc's and g++'s C++17 modes): every member in
 * declaration order, so a field added to td_backend_i cannot shift the others. */
static const struct td_backend_i s_cuda_iface = {
    .name = "cuda",
    .caps = TD_BACKEND_CAP_DEVICE_SAMPLE,
    .destroy = s_destroy,
    .alloc = s_alloc,
    .free = s_free,
    .weights = s_weights,
    .free_weights = s_free_weights,
    .set = s_set,
    .get = s_get,
    .copy = s_copy,
    .sync = s_sync,
    .matmul = s_matmul,
    .get_rows = s_get_rows,
    .rmsnorm = s_rmsnorm,
    .layernorm = s_layernorm,
    .rope = s_rope,
    .swiglu = s_swiglu,
    .gelu_tanh = s_gelu_tanh,
    .add = s_add,
    .scatter_rows = s_scatter_rows,
    .attention = s_attention,
    .status = s_status,
    .sample = s_sample,
    .invariant_rows = NULL, /* no promise: gemv up to TDC_GEMV_MAX_N rows, cuBLAS beyond */
};

/* --- public ---------------------------------------------------------------------------------- */

extern "C" int td_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear it: no driver or no device is not an error here */
        return 0;
    }
    return n;
}

extern "C" int td_cuda_device_name(int device, char *buf, size_t cap) {
    if (buf && cap) buf[0] = '\0';
    cudaDeviceProp p;
    if (device < 0 || device >= td_cuda_device_count()) return TD_ERR_ARG;
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return TD_ERR;
    if (buf && cap) snprintf(buf, cap, "%s", p.name);
    return TD_OK;
}

extern "C" td_backend_t *td_backend_cuda_new(int device, td_err_t *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        td_err_set(err, TD_ERR_UNSUPPORTED, "cuda:%d: no usable CUDA device (%s)", device,
                   cudaGetErrorString(e));
        return NULL;
    }
    if (device < 0 || device >= count) {
        td_err_set(err, TD_ERR_ARG, "cuda:%d: no such device (%d CUDA device%s)", device, count,
                   count == 1 ? "" : "s");
        return NULL;
    }
    td_backend_t *be = (td_backend_t *)calloc(1, sizeof *be);
    cuda_ctx_t *c = (cuda_ctx_t *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        td_err_set(err, TD_ERR_NOMEM, "out of memory creating the CUDA backend");
        return NULL;
    }
    c->device = device;
    c->xconv_dtype = -1;
    c->xconv_gen = ~(uint64_t)0;
    be->iface = &s_cuda_iface;
    be->ctx = c;
    be->n_threads = 1;
    snprintf(be->name, sizeof be->name, "cuda:%d", device);
    cudaDeviceProp p;
    const char *stage = "cudaSetDevice";
    if ((e = cudaSetDevice(device)) != cudaSuccess) goto fail;
    stage = "cudaGetDeviceProperties";
    if ((e = cudaGetDeviceProperties(&p, device)) != cudaSuccess) goto fail;
    c->sm_count = p.multiProcessorCount;
    stage = "cudaStreamCreateWithFlags";
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
        goto fail;
    {
        cublasStatus_t s = cublasCreate(&c->blas);
        if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->blas, c->stream);
        if (s != CUBLAS_STATUS_SUCCESS) {
            td_err_set(err, TD_ERR, "cuda:%d: cuBLAS initialisation failed: %s", device,
                       cublasGetStatusString(s));
            s_destroy(be);
            return NULL;
        }
        /* plain FP32 SGEMM for F32 weights: no TF32 */
        cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    }
    if (s_ring_grow(c, TDC_RING_MIN)) {
        td_err_set(err, TD_ERR_NOMEM, "%s", c->err_msg);
        s_destroy(be);
        return NULL;
    }
    {
        const char *mm = getenv("TD_CUDA_MATMUL");
        if (mm && !strcmp(mm, "cublas"))
            c->matmul_mode = TD_CUDA_MATMUL_CUBLAS;
        else if (mm && !strcmp(mm, "gemv"))
            c->matmul_mode = TD_CUDA_MATMUL_GEMV;
    }
    return be;
fail:
    td_err_set(err, TD_ERR, "cuda:%d: %s failed: %s", device, stage, cudaGetErrorString(e));
    s_destroy(be);
    return NULL;
}

static cuda_ctx_t *s_cuda_or_null(td_backend_t *be) {
    return be && be->iface == &s_cuda_iface ? s_ctx(be) : NULL;
}

extern "C" void td_backend_cuda_set_matmul(td_backend_t *be, int mode) {
    cuda_ctx_t *c = s_cuda_or_null(be);
    if (c && mode >= TD_CUDA_MATMUL_AUTO && mode <= TD_CUDA_MATMUL_GEMV) c->matmul_mode = mode;
}

extern "C" int td_backend_cuda_error(td_backend_t *be, td_err_t *err) {
    cuda_ctx_t *c = s_cuda_or_null(be);
    if (!c) return td_err_set(err, TD_ERR_ARG, "not a CUDA backend");
    TDC_CUDA(c, cudaStreamSynchronize(c->stream));
    int code = c->err_code;
    if (code != TD_OK) td_err_set(err, code, "%s", c->err_msg);
    c->err_code = TD_OK;
    c->err_msg[0] = '\0';
    return code;
}

extern "C" void td_backend_cuda_set_synthetic(td_backend_t *be, int on, uint64_t seed) {
    cuda_ctx_t *c = s_cuda_or_null(be);
    if (!c) return;
    c->synthetic = on;
    c->synth_seed = seed;
    c->synth_count = 0;
}

extern "C" double td_cuda_copy_bandwidth(td_backend_t *be, size_t bytes) {
    cuda_ctx_t *c = s_cuda_or_null(be);
    if (!c || bytes < 1024) return 0;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = 0;
    if (TDC_CUDA(c, cudaMalloc(&a, bytes)) || TDC_CUDA(c, cudaMalloc(&b, bytes))) goto done;
    TDC_CUDA(c, cudaMemsetAsync(a, 1, bytes, c->stream));
    TDC_CUDA(c, cudaMemsetAsync(b, 2, bytes, c->stream));
    if (TDC_CUDA(c, cudaEventCreate(&e0)) || TDC_CUDA(c, cudaEventCreate(&e1))) goto done;
    for (int rep = 0; rep < 12; rep++) {
        float ms = 0;
        if (TDC_CUDA(c, cudaEventRecord(e0, c->stream)) ||
            TDC_CUDA(c, cudaMemcpyAsync(rep & 1 ? a : b, rep & 1 ? b : a, bytes,
                                        cudaMemcpyDeviceToDevice, c->stream)) ||
            TDC_CUDA(c, cudaEventRecord(e1, c->stream)) || TDC_CUDA(c, cudaEventSynchronize(e1)) ||
            TDC_CUDA(c, cudaEventElapsedTime(&ms, e0, e1))) {
            best = 0;
            goto done;
        }
        if (!(ms > 0)) continue; /* below the timer's resolution: no number */
        double bw = 2.0 * (double)bytes / (ms * 1e-3);
        if (rep >= 2 && bw > best) best = bw; /* the first copies warm up */
    }
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return best;
}

extern "C" int td_cuda_mem_info(td_backend_t *be, size_t *free_b, size_t *total_b) {
    cuda_ctx_t *c = s_cuda_or_null(be);
    if (!c) return TD_ERR_ARG;
    size_t f = 0, t = 0;
    if (TDC_CUDA(c, cudaMemGetInfo(&f, &t))) return TD_ERR;
    if (free_b) *free_b = f;
    if (total_b) *total_b = t;
    return TD_OK;
}
