/* kernels_elem.cu - the CUDA backend's small kernels: embedding rows, RMSNorm, LayerNorm, RoPE,
 * SwiGLU, GELU, residual and bias adds, KV-cache scatter, activation rounding for cuBLAS and the
 * synthetic weight fill. Each mirrors its backend_cpu.c counterpart (same formulas, FP32 where
 * the CPU uses double only for sums). */
#include "kernels/cuda/cuda_common.cuh"

#include <math.h>

#define TDC_THREADS 256

/* --- reductions ------------------------------------------------------------------------------ */

__device__ __forceinline__ float s_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
__device__ float s_block_sum(float v, float *sh /* [33] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = s_warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = s_warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

/* --- embedding ------------------------------------------------------------------------------- */

__global__ void k_get_rows(float *y, const void *data, int dt, int64_t ld, int transposed,
                           int64_t cols, const int32_t *ids) {
    const int i = blockIdx.y;
    const int64_t r = ids[i];
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)gridDim.x * blockDim.x) {
        int64_t off = transposed ? c * ld + r : r * ld + c;
        y[(int64_t)i * cols + c] = tdc_ld(data, dt, off);
    }
}

void tdc_get_rows(cuda_ctx_t *c, float *y, const td_weight_t *t, const int32_t *ids, int n) {
    if (n > 65535) {
        for (int i0 = 0; i0 < n; i0 += 65535)
            tdc_get_rows(c, y + (int64_t)i0 * t->cols, t, ids + i0,
                         n - i0 < 65535 ? n - i0 : 65535);
        return;
    }
    int64_t ld = t->ld ? t->ld : (t->transposed ? t->rows : t->cols);
    dim3 grid((unsigned)((t->cols + TDC_THREADS - 1) / TDC_THREADS), (unsigned)n);
    k_get_rows<<<grid, TDC_THREADS, 0, c->stream>>>(y, t->data, t->dtype, ld, t->transposed,
                                                    t->cols, ids);
    TDC_LAUNCHED(c);
}

/* --- norms ----------------------------------------------------------------------------------- */

__global__ void k_rmsnorm(float *y, const float *x, const void *w, int wdt, int d, float eps) {
    __shared__ float sh[33];
    const float *xt = x + (int64_t)blockIdx.x * d;
    float *yt = y + (int64_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xt[i] * xt[i];
    ss = s_block_sum(ss, sh);
    const float inv = (float)(1.0 / sqrt((double)ss / d + (double)eps));
    for (int i = threadIdx.x; i < d; i += blockDim.x) yt[i] = tdc_ld(w, wdt, i) * (xt[i] * inv);
}

void tdc_rmsnorm(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w, int n, int d,
                 float eps) {
    const int threads = d >= 4096 ? 1024 : d >= 1024 ? 512 : d >= 256 ? 256 : 64;
    for (int i0 = 0; i0 < n; i0 += 65535 * 32) {
        int nb = n - i0 < 65535 * 32 ? n - i0 : 65535 * 32;
        k_rmsnorm<<<nb, threads, 0, c->stream>>>(y + (int64_t)i0 * d, x + (int64_t)i0 * d, w->data,
                                                 w->dtype, d, eps);
        TDC_LAUNCHED(c);
    }
}

__global__ void k_layernorm(float *y, const float *x, const void *w, int wdt, const void *b,
                            int bdt, int d, float eps) {
    __shared__ float sh[33];
    const float *xt = x + (int64_t)blockIdx.x * d;
    float *yt = y + (int64_t)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xt[i];
    const float mean = s_block_sum(s, sh) / d;
    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v += (xt[i] - mean) * (xt[i] - mean);
    const float var = s_block_sum(v, sh) / d;
    const float inv = (float)(1.0 / sqrt((double)var + (double)eps));
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        yt[i] = ((xt[i] - mean) * inv) * tdc_ld(w, wdt, i) + (b ? tdc_ld(b, bdt, i) : 0.0f);
}

void tdc_layernorm(cuda_ctx_t *c, float *y, const float *x, const td_weight_t *w,
                   const td_weight_t *b, int n, int d, float eps) {
    const int threads = d >= 4096 ? 1024 : d >= 1024 ? 512 : d >= 256 ? 256 : 64;
    for (int i0 = 0; i0 < n; i0 += 65535 * 32) {
        int nb = n - i0 < 65535 * 32 ? n - i0 : 65535 * 32;
        k_layernorm<<<nb, threads, 0, c->stream>>>(y + (int64_t)i0 * d, x + (int64_t)i0 * d,
                                                   w->data, w->dtype, b ? b->data : NULL,
                                                   b ? b->dtype : 0, d, eps);
        TDC_LAUNCHED(c);
    }
}

/* --- rotary embedding ------------------------------------------------------------------------ */

/* one thread per (token, head, pair i < half): pairs (i, i + half) of the first rot_dim dims, or
 * (2i, 2i + 1) when interleaved */
__global__ void k_rope(float *x, const int32_t *pos, int n, int n_head, int head_dim, int rot_dim,
                       float theta, int interleaved) {
    const int half = rot_dim / 2;
    const int s0 = interleaved ? 2 : 1, s1 = interleaved ? 1 : half;
    const int64_t total = (int64_t)n * n_head * half;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)(e % half);
        const int64_t th = e / half; /* token * n_head + head */
        const int t = (int)(th / n_head);
        /* as HF and the CPU backend: inv_freq rounded to float, angle = pos * inv_freq in float */
        const float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)rot_dim));
        const float ang = (float)pos[t] * inv_freq;
        float sn, cs;
        sincosf(ang, &sn, &cs);
        float *v = x + th * head_dim;
        const float a = v[i * s0], b = v[i * s0 + s1];
        v[i * s0] = a * cs - b * sn;
        v[i * s0 + s1] = b * cs + a * sn;
    }
}

void tdc_rope(cuda_ctx_t *c, float *x, const int32_t *pos, int n, int n_head, int head_dim,
              int rot_dim, float theta, int interleaved) {
    const int64_t total = (int64_t)n * n_head * (rot_dim / 2);
    k_rope<<<tdc_blocks(total, TDC_THREADS), TDC_THREADS, 0, c->stream>>>(
        x, pos, n, n_head, head_dim, rot_dim, theta, interleaved);
    TDC_LAUNCHED(c);
}

/* --- element-wise ---------------------------------------------------------------------------- */

#define TDC_GRID_STRIDE(i, count)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (count);                  \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ void k_swiglu(float *y, const float *g, const float *u, int64_t count) {
    TDC_GRID_STRIDE(i, count) {
        const float gv = g[i];
        y[i] = gv / (1.0f + expf(-gv)) * u[i];
    }
}
void tdc_swiglu(cuda_ctx_t *c, float *y, const float *g, const float *u, int64_t count) {
    k_swiglu<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>(y, g, u, count);
    TDC_LAUNCHED(c);
}

__global__ void k_gelu_tanh(float *x, int64_t count) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    TDC_GRID_STRIDE(i, count) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}
void tdc_gelu_tanh(cuda_ctx_t *c, float *x, int64_t count) {
    k_gelu_tanh<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>(x, count);
    TDC_LAUNCHED(c);
}

__global__ void k_add(float *y, const float *x, int64_t count) {
    TDC_GRID_STRIDE(i, count) y[i] += x[i];
}
void tdc_add(cuda_ctx_t *c, float *y, const float *x, int64_t count) {
    k_add<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>(y, x, count);
    TDC_LAUNCHED(c);
}

__global__ void k_add_bias(float *y, const void *b, int bdt, int64_t m, int64_t count) {
    TDC_GRID_STRIDE(i, count) y[i] += tdc_ld(b, bdt, i % m);
}
void tdc_add_bias(cuda_ctx_t *c, float *y, const td_weight_t *bias, int n, int64_t m) {
    const int64_t count = (int64_t)n * m;
    k_add_bias<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>(
        y, bias->data, bias->dtype, m, count);
    TDC_LAUNCHED(c);
}

__global__ void k_scatter_rows(float *dst, int64_t row_stride, const float *src, const int64_t *idx,
                               int n, int d) {
    const int64_t total = (int64_t)n * d;
    TDC_GRID_STRIDE(e, total) {
        const int64_t i = e / d, j = e % d;
        dst[idx[i] * row_stride + j] = src[e];
    }
}
void tdc_scatter_rows(cuda_ctx_t *c, float *dst, int64_t row_stride, const float *src,
                      const int64_t *idx, int n, int d) {
    const int64_t total = (int64_t)n * d;
    k_scatter_rows<<<tdc_blocks(total, TDC_THREADS), TDC_THREADS, 0, c->stream>>>(dst, row_stride,
                                                                                  src, idx, n, d);
    TDC_LAUNCHED(c);
}

/* --- conversions ----------------------------------------------------------------------------- */

__device__ __forceinline__ uint16_t s_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__global__ void k_to_bf16(uint16_t *dst, const float *src, int64_t count) {
    TDC_GRID_STRIDE(i, count) dst[i] = s_to_bf16(src[i]);
}
__global__ void k_to_f16(__half *dst, const float *src, int64_t count) {
    TDC_GRID_STRIDE(i, count) {
        const float v = src[i]; /* saturate, but let a NaN through as the FP32 path would */
        dst[i] = __float2half_rn(v != v ? v : fminf(fmaxf(v, -65504.0f), 65504.0f));
    }
}

void tdc_convert(cuda_ctx_t *c, void *dst, int dt, const float *src, int64_t count) {
    if (dt == TD_DTYPE_BF16)
        k_to_bf16<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>((uint16_t *)dst,
                                                                                 src, count);
    else
        k_to_f16<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>((__half *)dst, src,
                                                                                count);
    TDC_LAUNCHED(c);
}

/* splitmix64 of (seed, index) -> a BF16 value in [-0.03, 0.03]; read as F32 the pairs give
 * numbers of the same size, so the fill is finite whatever dtype the tensor has */
__global__ void k_fill_synth(uint16_t *p, int64_t count, uint64_t seed) {
    TDC_GRID_STRIDE(i, count) {
        uint64_t z = seed + (uint64_t)i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        p[i] = s_to_bf16((u * 2.0f - 1.0f) * 0.03f);
    }
}

void tdc_fill_synthetic(cuda_ctx_t *c, void *dst, size_t nbytes, uint64_t seed) {
    const int64_t count = (int64_t)((nbytes + 1) / 2);
    k_fill_synth<<<tdc_blocks(count, TDC_THREADS), TDC_THREADS, 0, c->stream>>>((uint16_t *)dst,
                                                                                count, seed);
    TDC_LAUNCHED(c);
}
