/* quant.cu - products and embedding lookups on GGUF block-quantized weights (Q8_0, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; layouts in kernels/quant.h), uploaded as the file stores them:
 * no dequantized copy of a weight is kept on the device.
 *
 * Every kernel works on pieces of 8 consecutive elements of a row (a piece never crosses a 32- or
 * 16-element scale group). s_deq8 turns a piece into floats with exactly the float operations of
 * the reference dequantization (kernels/quant.c), written with __fmul_rn / __fadd_rn so the
 * device compiler cannot fuse them into an FMA: a dequantized element is bitwise the CPU's.
 *
 * Skinny products (k_qgemv: decode and verification blocks, n <= TDC_QGEMV_MAX_N tokens, taken 8
 * at a time): each warp owns TDC_QG_R weight rows; lane l dequantizes pieces l, l + 32, ... of
 * each row in registers and multiplies every piece with the FP32 activations of all the tokens
 * of the launch (weights read once per 8 tokens), accumulating with fmaf in FP32; then the warp
 * sums its 32 lanes by the xor tree. The order of every (row, token) sum is fixed by the row
 * length alone - not by the number of tokens, by which launch a token lands in, or by the other
 * rows - so a token's outputs are bitwise the same alone or in a batch: batch invariance, as the
 * CPU backend's skinny products. Activations are not quantized (the CPU path rounds them to int8
 * per 32): on the GPU the product is memory bound and dequantizing in registers costs little,
 * and FP32 activations keep the result within summation-order rounding of the exact product.
 *
 * Wide products (prefill): panels of at most TDC_QPANEL_BYTES of dequantized FP32 rows in a
 * scratch buffer, then cublasSgemm (no TF32) per panel: the same exact weights, FP32 activations.
 * y must not overlap x. */
#include "kernels/cuda/cuda_common.cuh"

#define TDC_QG_R 2
#define TDC_QG_THREADS 128
#define TDC_QG_NT 8 /* tokens per skinny launch */
#define TDC_QPANEL_BYTES ((int64_t)64 << 20)

__device__ __forceinline__ float s_h(const uint8_t *p) {
    return tdc_f16((uint16_t)(p[0] | (uint16_t)p[1] << 8));
}
__device__ __forceinline__ uint32_t s_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (td_q4k_scale_min) */
__device__ __forceinline__ void s_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Elements e0 .. e0 + 7 (e0 a multiple of 8) of the quantized row at row, as floats. */
template <int DT> __device__ __forceinline__ void s_deq8(const uint8_t *row, int e0, float *o) {
    if (DT == TD_DTYPE_Q8_0) {
        const uint8_t *b = row + (size_t)(e0 >> 5) * 34;
        const float d = s_h(b);
        const int8_t *q = (const int8_t *)(b + 2) + (e0 & 31);
#pragma unroll
        for (int i = 0; i < 8; i++) o[i] = __fmul_rn((float)q[i], d);
    } else if (DT == TD_DTYPE_Q4_0 || DT == TD_DTYPE_Q4_1) {
        const int bb = DT == TD_DTYPE_Q4_0 ? 18 : 20, qo = DT == TD_DTYPE_Q4_0 ? 2 : 4;
        const uint8_t *b = row + (size_t)(e0 >> 5) * bb;
        const float d = s_h(b), m = DT == TD_DTYPE_Q4_1 ? s_h(b + 2) : 0.0f;
        const int j = e0 & 31, sh = j < 16 ? 0 : 4;
        const uint8_t *q = b + qo + (j & 15);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int v = (q[i] >> sh) & 15;
            if (DT == TD_DTYPE_Q4_0)
                o[i] = __fmul_rn(d, (float)(v - 8));
            else
                o[i] = __fadd_rn(__fmul_rn(d, (float)v), m);
        }
    } else if (DT == TD_DTYPE_Q5_0 || DT == TD_DTYPE_Q5_1) {
        const int bb = DT == TD_DTYPE_Q5_0 ? 22 : 24, ho = DT == TD_DTYPE_Q5_0 ? 2 : 4;
        const uint8_t *b = row + (size_t)(e0 >> 5) * bb;
        const float d = s_h(b), m = DT == TD_DTYPE_Q5_1 ? s_h(b + 2) : 0.0f;
        const uint32_t qh = s_le32(b + ho);
        const int j = e0 & 31, sh = j < 16 ? 0 : 4;
        const uint8_t *q = b + ho + 4 + (j & 15);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int v = ((q[i] >> sh) & 15) | (int)((qh >> (j + i)) & 1) << 4;
            if (DT == TD_DTYPE_Q5_0)
                o[i] = __fmul_rn(d, (float)(v - 16));
            else
                o[i] = __fadd_rn(__fmul_rn(d, (float)v), m);
        }
    } else if (DT == TD_DTYPE_Q4_K || DT == TD_DTYPE_Q5_K) {
        const int bb = DT == TD_DTYPE_Q4_K ? 144 : 176, qo = DT == TD_DTYPE_Q4_K ? 16 : 48;
        const uint8_t *b = row + (size_t)(e0 >> 8) * bb;
        const float d = s_h(b), dmin = s_h(b + 2);
        const int w = e0 & 255, j = w >> 5, l = w & 31, sh = 4 * (j & 1);
        int sc, mi;
        s_scale_min(b + 4, j, &sc, &mi);
        const float ds = __fmul_rn(d, (float)sc), dm = __fmul_rn(dmin, (float)mi);
        const uint8_t *q = b + qo + 32 * (j >> 1) + l;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int v = (q[i] >> sh) & 15;
            if (DT == TD_DTYPE_Q5_K) v |= ((b[16 + l + i] >> j) & 1) << 4;
            o[i] = __fadd_rn(__fmul_rn(ds, (float)v), -dm);
        }
    } else { /* Q6_K: ql[128] qh[64] scales[16] d */
        const uint8_t *b = row + (size_t)(e0 >> 8) * 210;
        const float d = s_h(b + 208);
        const int w = e0 & 255, u = w >> 5, l = w & 31, h = u >> 2, k = u & 3;
        const uint8_t *ql = b + 64 * h + 32 * (k & 1) + l, *qh = b + 128 + 32 * h + l;
        const float ds = __fmul_rn(d, (float)((const int8_t *)(b + 192))[2 * u + (l >> 4)]);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int v = ((ql[i] >> (4 * (k >> 1))) & 15) | ((qh[i] >> (2 * k)) & 3) << 4;
            o[i] = __fmul_rn(ds, (float)(v - 32));
        }
    }
}

/* y[t * rows + r] = sum_c x[t * cols + c] W[r, c] (+ bias[r]) for t < NT. */
template <int NT, int DT>
__global__ void __launch_bounds__(TDC_QG_THREADS)
    k_qgemv(float *__restrict__ y, const float *__restrict__ x, const uint8_t *__restrict__ w,
            int64_t rb, int rows, int cols, const void *__restrict__ bias, int bdt) {
    constexpr int R = TDC_QG_R;
    const int64_t gw = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t r0 = gw * R;
    if (r0 >= rows) return; /* uniform over the warp */
    const uint8_t *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        wr[r] = w + (size_t)(r0 + r < rows ? r0 + r : rows - 1) * (size_t)rb; /* clamped: unused */
    float acc[NT][R];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[t][r] = 0.0f;
    const int np = cols >> 3;
    for (int p = lane; p < np; p += 32) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) s_deq8<DT>(wr[r], p << 3, wf[r]);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float *xp = x + (size_t)t * cols + ((size_t)p << 3);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float xv = __ldg(xp + e);
#pragma unroll
                for (int r = 0; r < R; r++) acc[t][r] = fmaf(wf[r][e], xv, acc[t][r]);
            }
        }
    }
    tdc_gemv_store<NT, R>(acc, lane, r0, rows, y, bias, bdt);
}

/* dst[i, :] = row (ids ? ids[i] : r0 + i) of w dequantized, for i < n; cols floats per row. */
template <int DT>
__global__ void k_qrows(float *__restrict__ dst, const uint8_t *__restrict__ w, int64_t rb,
                        const int32_t *__restrict__ ids, int64_t r0, int64_t n, int cols) {
    const int64_t pr = cols >> 3, total = n * pr;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / pr;
        const int p = (int)(i - r * pr);
        const int64_t src = ids ? (int64_t)ids[r] : r0 + r;
        float o[8];
        s_deq8<DT>(w + (size_t)src * (size_t)rb, p << 3, o);
        float *d = dst + (size_t)r * cols + ((size_t)p << 3);
#pragma unroll
        for (int e = 0; e < 8; e++) d[e] = o[e];
    }
}

/* --- launchers ------------------------------------------------------------------------------ */

#define TDC_QSWITCH(dt, CALL)                                                                      \
    switch (dt) {                                                                                  \
    case TD_DTYPE_Q8_0:                                                                            \
        CALL(TD_DTYPE_Q8_0);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q4_0:                                                                            \
        CALL(TD_DTYPE_Q4_0);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q4_1:                                                                            \
        CALL(TD_DTYPE_Q4_1);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q5_0:                                                                            \
        CALL(TD_DTYPE_Q5_0);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q5_1:                                                                            \
        CALL(TD_DTYPE_Q5_1);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q4_K:                                                                            \
        CALL(TD_DTYPE_Q4_K);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q5_K:                                                                            \
        CALL(TD_DTYPE_Q5_K);                                                                       \
        break;                                                                                     \
    case TD_DTYPE_Q6_K:                                                                            \
        CALL(TD_DTYPE_Q6_K);                                                                       \
        break;                                                                                     \
    default:                                                                                       \
        break;                                                                                     \
    }

static int64_t s_row_bytes(const td_weight_t *w) {
    return (int64_t)td_dtype_row_bytes(w->dtype, w->ld ? w->ld : w->cols);
}

/* The checks every quantized operand passes before a launch. 0, or -1 with the failure recorded. */
static int s_check(cuda_ctx_t *c, const td_weight_t *w, const char *op) {
    if (!td_dtype_is_quantized(w->dtype))
        return TDC_FAIL(c, TD_ERR_ARG, "%s: %s is not a quantized type", op,
                        td_dtype_name(w->dtype));
    const int be = td_dtype_block_elems(w->dtype);
    if (w->transposed)
        return TDC_FAIL(c, TD_ERR_UNSUPPORTED, "%s: transposed %s weights are not supported", op,
                        td_dtype_name(w->dtype));
    if (w->cols % be || w->ld % be || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return TDC_FAIL(c, TD_ERR_ARG, "%s: %s weight of %lld x %lld (ld %lld): not whole blocks",
                        op, td_dtype_name(w->dtype), (long long)w->rows, (long long)w->cols,
                        (long long)w->ld);
    return 0;
}

template <int DT>
static void s_gemv(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
                   const td_weight_t *bias, int n) {
    const int64_t rb = s_row_bytes(w);
    const int rows = (int)w->rows, cols = (int)w->cols;
    const int64_t warps = (rows + TDC_QG_R - 1) / TDC_QG_R;
    const unsigned blocks = (unsigned)((warps * 32 + TDC_QG_THREADS - 1) / TDC_QG_THREADS);
    const void *b = bias ? bias->data : NULL;
    const int bdt = bias ? bias->dtype : 0;
    const uint8_t *wd = (const uint8_t *)w->data;
    for (int t0 = 0; t0 < n; t0 += TDC_QG_NT) {
        const int nt = n - t0 < TDC_QG_NT ? n - t0 : TDC_QG_NT;
        float *yt = y + (size_t)t0 * rows;
        const float *xt = x + (size_t)t0 * cols;
// clang-format off: the emulator's launch rewrite wants the kernel name and its chevrons on one line
#define TDC_QG_CASE(NT)                                                                            \
    case NT:                                                                                       \
        k_qgemv<NT, DT><<<blocks, TDC_QG_THREADS, 0, c->stream>>>(yt, xt, wd, rb, rows, cols, b,   \
                                                                  bdt);                            \
        break;
        // clang-format on
        switch (nt) {
            TDC_QG_CASE(1)
            TDC_QG_CASE(2)
            TDC_QG_CASE(3)
            TDC_QG_CASE(4)
            TDC_QG_CASE(5)
            TDC_QG_CASE(6)
            TDC_QG_CASE(7)
            TDC_QG_CASE(8)
        }
#undef TDC_QG_CASE
        if (TDC_LAUNCHED(c)) return;
    }
}

template <int DT>
static void s_rows(cuda_ctx_t *c, float *dst, const td_weight_t *w, const int32_t *ids, int64_t r0,
                   int64_t n) {
    const int64_t pieces = n * (w->cols / 8);
    k_qrows<DT><<<tdc_blocks(pieces, 256), 256, 0, c->stream>>>(
        dst, (const uint8_t *)w->data, s_row_bytes(w), ids, r0, n, (int)w->cols);
    TDC_LAUNCHED(c);
}

/* Panels of dequantized rows, then SGEMM: Y^T[r0 .. r0 + nr) (column-major, ldc rows) =
 * panel^T(cols x nr, lda cols, op T) . X^T (cols x n, ldb cols). */
static void s_wide(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w, int n) {
    const int64_t rows = w->rows, cols = w->cols;
    int64_t pr = TDC_QPANEL_BYTES / (cols * 4);
    if (pr < 1) pr = 1;
    if (pr > rows) pr = rows;
    if (tdc_reserve(c, &c->qdeq, &c->qdeq_cap, (size_t)(pr * cols * 4))) return;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < rows; r0 += pr) {
        const int64_t nr = rows - r0 < pr ? rows - r0 : pr;
#define TDC_QROWS(DT) s_rows<DT>(c, (float *)c->qdeq, w, NULL, r0, nr)
        TDC_QSWITCH(w->dtype, TDC_QROWS)
#undef TDC_QROWS
        if (TDC_BLAS(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, n, (int)cols, &one,
                                    (const float *)c->qdeq, (int)cols, x, (int)cols, &zero, y + r0,
                                    (int)rows)))
            return;
    }
}

void tdc_qmatmul(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
                 const td_weight_t *bias, int n) {
    if (s_check(c, w, "matmul")) return;
    const int skinny = c->matmul_mode == TD_CUDA_MATMUL_GEMV ||
                       (c->matmul_mode == TD_CUDA_MATMUL_AUTO && n <= TDC_QGEMV_MAX_N);
    if (skinny) {
#define TDC_QGEMV(DT) s_gemv<DT>(c, y, x, w, bias, n)
        TDC_QSWITCH(w->dtype, TDC_QGEMV)
#undef TDC_QGEMV
    } else {
        s_wide(c, y, x, w, n);
        if (bias) tdc_add_bias(c, y, bias, n, w->rows);
    }
}

void tdc_qget_rows(cuda_ctx_t *c, float *y, const td_weight_t *t, const int32_t *ids_dev, int n) {
    if (s_check(c, t, "get_rows")) return;
#define TDC_QGET(DT) s_rows<DT>(c, y, t, ids_dev, 0, n)
    TDC_QSWITCH(t->dtype, TDC_QGET)
#undef TDC_QGET
}
