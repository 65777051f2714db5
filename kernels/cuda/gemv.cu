/* gemv.cu - skinny products y[n, rows] = x[n, cols] W^T (+ bias) for n <= 8 activation rows and
 * untransposed weights: the decode and short-verification regime, where reading the weights once
 * is the whole cost.
 *
 * Each warp owns TDC_GEMV_R consecutive weight rows and walks them in 16-byte vectors (8 BF16/F16
 * or 4 F32 elements per lane), streaming the weights past L1 (__ldcs) while the FP32 activations
 * (small, reread by every warp) stay cached. All n activation rows are multiplied with each loaded
 * weight vector, so the weights are read from memory once for the n tokens. Activations stay FP32
 * (no rounding to BF16), products accumulate in FP32 per lane, then across the warp. Shapes the
 * vector loads cannot take (row length or stride not a multiple of 16 bytes, misaligned data) use
 * k_gemv_scalar, same arithmetic with element loads. y must not overlap x. */
#include "kernels/cuda/cuda_common.cuh"

#define TDC_GEMV_R 2
#define TDC_GEMV_THREADS 128
#define TDC_GEMV_MAX_N 8

template <int DT> struct s_vec;
template <> struct s_vec<TD_DTYPE_F32> {
    enum { VE = 4 };
    static __device__ __forceinline__ void cvt(const uint4 &v, float *f) {
        f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y), f[2] = __uint_as_float(v.z),
        f[3] = __uint_as_float(v.w);
    }
};
/* 8 16-bit elements, two per 32-bit word of v (the low half first), to floats through CVT. */
template <float (*CVT)(uint16_t)>
static __device__ __forceinline__ void s_cvt8(const uint4 &v, float *f) {
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = CVT((uint16_t)(u[i] & 0xffffu));
        f[2 * i + 1] = CVT((uint16_t)(u[i] >> 16));
    }
}
template <> struct s_vec<TD_DTYPE_BF16> {
    enum { VE = 8 };
    static __device__ __forceinline__ void cvt(const uint4 &v, float *f) { s_cvt8<tdc_bf16>(v, f); }
};
template <> struct s_vec<TD_DTYPE_F16> {
    enum { VE = 8 };
    static __device__ __forceinline__ void cvt(const uint4 &v, float *f) { s_cvt8<tdc_f16>(v, f); }
};

template <int NT, int DT>
__global__ void __launch_bounds__(TDC_GEMV_THREADS)
    k_gemv(float *__restrict__ y, const float *__restrict__ x, const void *__restrict__ w,
           int64_t ld, int rows, int cols, const void *__restrict__ bias, int bdt) {
    constexpr int VE = s_vec<DT>::VE, R = TDC_GEMV_R;
    const int64_t gw = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t r0 = gw * R;
    if (r0 >= rows) return; /* uniform over the warp */
    const size_t es = DT == TD_DTYPE_F32 ? 4 : 2;
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int64_t rr =
            r0 + r < rows ? r0 + r : rows - 1; /* a clamped duplicate, never written */
        wr[r] = (const uint4 *)((const char *)w + (size_t)rr * (size_t)ld * es);
    }
    float acc[NT][R];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[t][r] = 0.0f;
    const int nvec = cols / VE;
#pragma unroll 2
    for (int k = lane; k < nvec; k += 32) {
        uint4 wv[R];
#pragma unroll
        for (int r = 0; r < R; r++) wv[r] = __ldcs(wr[r] + k);
        float wf[R][VE];
#pragma unroll
        for (int r = 0; r < R; r++) s_vec<DT>::cvt(wv[r], wf[r]);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float4 *xp = (const float4 *)(x + (size_t)t * cols + (size_t)k * VE);
            float xv[VE];
#pragma unroll
            for (int q = 0; q < VE / 4; q++) {
                const float4 f = __ldg(xp + q);
                xv[4 * q] = f.x, xv[4 * q + 1] = f.y, xv[4 * q + 2] = f.z, xv[4 * q + 3] = f.w;
            }
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int e = 0; e < VE; e++) acc[t][r] = fmaf(wf[r][e], xv[e], acc[t][r]);
        }
    }
    tdc_gemv_store<NT, R>(acc, lane, r0, rows, y, bias, bdt);
}

/* Any row length, stride or alignment: each lane reads single elements (coalesced across the
 * warp, two or four bytes each). For shapes the vector kernel cannot take (odd cols, a stride that
 * is not a multiple of 16 bytes, misaligned data), so that every untransposed product with n <= 8
 * keeps FP32 activations whatever its shape. */
template <int NT, int DT>
__global__ void __launch_bounds__(TDC_GEMV_THREADS)
    k_gemv_scalar(float *__restrict__ y, const float *__restrict__ x, const void *__restrict__ w,
                  int64_t ld, int rows, int cols, const void *__restrict__ bias, int bdt) {
    constexpr int R = TDC_GEMV_R;
    const int64_t gw = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t r0 = gw * R;
    if (r0 >= rows) return; /* uniform over the warp */
    int64_t roff[R];
#pragma unroll
    for (int r = 0; r < R; r++) roff[r] = (r0 + r < rows ? r0 + r : rows - 1) * ld;
    float acc[NT][R];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[t][r] = 0.0f;
    for (int k = lane; k < cols; k += 32) {
        float wf[R];
#pragma unroll
        for (int r = 0; r < R; r++) wf[r] = tdc_ld(w, DT, roff[r] + k);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float xv = __ldg(x + (size_t)t * cols + k);
#pragma unroll
            for (int r = 0; r < R; r++) acc[t][r] = fmaf(wf[r], xv, acc[t][r]);
        }
    }
    tdc_gemv_store<NT, R>(acc, lane, r0, rows, y, bias, bdt);
}

/* The 16-byte vector kernel's conditions: whole vectors per row, rows and x 16-byte aligned. */
static int s_vec_ok(const td_weight_t *w, const float *x) {
    const int64_t ve = w->dtype == TD_DTYPE_F32 ? 4 : 8;
    const int64_t ld = w->ld ? w->ld : w->cols;
    return w->cols % ve == 0 && ld % ve == 0 && ((uintptr_t)w->data & 15) == 0 &&
           ((uintptr_t)x & 15) == 0;
}

int tdc_gemv_ok(const td_weight_t *w, const float *x, int n) {
    return n >= 1 && n <= TDC_GEMV_MAX_N && !w->transposed && w->rows <= INT32_MAX &&
           w->cols <= INT32_MAX;
}

template <int DT>
static void s_launch(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
                     const td_weight_t *bias, int n) {
    const int64_t ld = w->ld ? w->ld : w->cols;
    const int rows = (int)w->rows, cols = (int)w->cols;
    const int64_t warps = (rows + TDC_GEMV_R - 1) / TDC_GEMV_R;
    const unsigned blocks = (unsigned)((warps * 32 + TDC_GEMV_THREADS - 1) / TDC_GEMV_THREADS);
    const void *b = bias ? bias->data : NULL;
    const int bdt = bias ? bias->dtype : 0;
    const int vec = s_vec_ok(w, x);
#define TDC_GEMV_CASE(NT)                                                                          \
    case NT:                                                                                       \
        if (vec)                                                                                   \
            k_gemv<NT, DT><<<blocks, TDC_GEMV_THREADS, 0, c->stream>>>(y, x, w->data, ld, rows,    \
                                                                       cols, b, bdt);              \
        else                                                                                       \
            k_gemv_scalar<NT, DT><<<blocks, TDC_GEMV_THREADS, 0, c->stream>>>(y, x, w->data, ld,   \
                                                                              rows, cols, b, bdt); \
        break;
    switch (n) {
        TDC_GEMV_CASE(1)
        TDC_GEMV_CASE(2)
        TDC_GEMV_CASE(3)
        TDC_GEMV_CASE(4)
        TDC_GEMV_CASE(5)
        TDC_GEMV_CASE(6)
        TDC_GEMV_CASE(7)
        TDC_GEMV_CASE(8)
    default:
        TDC_FAIL(c, TD_ERR_ARG, "gemv: n = %d out of range", n);
        return;
    }
#undef TDC_GEMV_CASE
    TDC_LAUNCHED(c);
}

void tdc_gemv(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
              const td_weight_t *bias, int n) {
    switch (w->dtype) {
    case TD_DTYPE_F32:
        s_launch<TD_DTYPE_F32>(c, y, x, w, bias, n);
        break;
    case TD_DTYPE_BF16:
        s_launch<TD_DTYPE_BF16>(c, y, x, w, bias, n);
        break;
    default:
        s_launch<TD_DTYPE_F16>(c, y, x, w, bias, n);
        break;
    }
}
