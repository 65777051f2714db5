/* attention.cu - attention over the KV cache for a batch of queries of several sequences:
 * a flash-attention-style kernel with an online softmax (no score matrix in memory), GQA, the four
 * mask kinds, and a split over the keys (flash-decoding) when the batch alone cannot fill the GPU.
 *
 * Grid: x = (query t, kv head g, sub-group of at most TDC_ATT_GMAX of g's query heads), y = key
 * split. A block of TDC_ATT_WARPS warps loads each visible key/value row once for all the heads of
 * its sub-group; a warp takes every TDC_ATT_WARPS-th key, its lanes split head_dim (DPL dims each),
 * dot products reduce across the warp. Each warp keeps (max, sum, acc) per head; the warps merge
 * in shared memory; with one split the block writes the output, else partials go to a scratch
 * buffer and a second kernel merges the splits. A query that sees no key gets zeros. */
#include "kernels/cuda/cuda_common.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TDC_ATT_WARPS 4
#define TDC_ATT_GMAX 8
#define TDC_ATT_MIN_CHUNK 64

struct att_args {
    const float *q, *kc, *vc;
    float *out;
    float *part;    /* [splits][n][nh][hd] */
    float *part_ml; /* [splits][n][nh][2] */
    const int32_t *pos, *seq, *kv_len;
    const uint8_t *mask;
    int64_t mask_stride;
    int kind, block_size;
    int n, nh, nkv, hd, n_ctx, n_hsub, chunk, splits;
    float scale;
};

/* last key position + 1 query t may see (before the mask itself is applied) */
__device__ __forceinline__ int s_key_end(const att_args &a, int t, int s) {
    int end = a.kv_len[s];
    const int p = a.pos[t];
    if (a.kind == TD_ATTN_CAUSAL && p + 1 < end) end = p + 1;
    if (a.kind == TD_ATTN_BLOCK_CAUSAL) {
        const int64_t e = ((int64_t)p / a.block_size + 1) * a.block_size;
        if (e < end) end = (int)e;
    }
    return end;
}

template <int DPL> __global__ void __launch_bounds__(TDC_ATT_WARPS * 32) k_attention(att_args a) {
    extern __shared__ float sh[]; /* [WARPS][GMAX][hd] acc, then [WARPS][GMAX][2] (m, l) */
    int bid = blockIdx.x;
    const int hsub = bid % a.n_hsub;
    bid /= a.n_hsub;
    const int g = bid % a.nkv, t = bid / a.nkv;
    const int sp = blockIdx.y;
    const int G = a.nh / a.nkv, h0 = g * G + hsub * TDC_ATT_GMAX;
    const int ng = min(TDC_ATT_GMAX, G - hsub * TDC_ATT_GMAX);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int s = a.seq[t], p = a.pos[t], hd = a.hd;
    const int end = s_key_end(a, t, s);
    const int j0 = sp * a.chunk, j1 = min(end, j0 + a.chunk);
    const int64_t row = (int64_t)a.nkv * hd;
    const float *kb = a.kc + (int64_t)s * a.n_ctx * row + (int64_t)g * hd;
    const float *vb = a.vc + (int64_t)s * a.n_ctx * row + (int64_t)g * hd;

    float qr[TDC_ATT_GMAX][DPL], acc[TDC_ATT_GMAX][DPL], m[TDC_ATT_GMAX], l[TDC_ATT_GMAX];
#pragma unroll
    for (int hh = 0; hh < TDC_ATT_GMAX; hh++) {
        m[hh] = -INFINITY;
        l[hh] = 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; d++) {
            const int dd = lane + 32 * d;
            qr[hh][d] =
                hh < ng && dd < hd ? a.q[((int64_t)t * a.nh + h0 + hh) * hd + dd] * a.scale : 0.0f;
            acc[hh][d] = 0.0f;
        }
    }
    for (int j = j0 + warp; j < j1; j += TDC_ATT_WARPS) {
        bool vis = true;
        if (a.kind == TD_ATTN_BLOCK_CAUSAL)
            vis = j / a.block_size <= p / a.block_size;
        else if (a.kind == TD_ATTN_EXPLICIT)
            vis = a.mask[(int64_t)t * a.mask_stride + j] != 0;
        else if (a.kind == TD_ATTN_CAUSAL)
            vis = j <= p;
        if (!vis) continue; /* uniform over the warp */
        float kr[DPL], vr[DPL];
#pragma unroll
        for (int d = 0; d < DPL; d++) {
            const int dd = lane + 32 * d;
            kr[d] = dd < hd ? kb[(int64_t)j * row + dd] : 0.0f;
            vr[d] = dd < hd ? vb[(int64_t)j * row + dd] : 0.0f;
        }
#pragma unroll
        for (int hh = 0; hh < TDC_ATT_GMAX; hh++) {
            if (hh >= ng) break;
            float sc = 0.0f;
#pragma unroll
            for (int d = 0; d < DPL; d++) sc = fmaf(qr[hh][d], kr[d], sc);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sc += __shfl_xor_sync(0xffffffffu, sc, o);
            const float mn = fmaxf(m[hh], sc);
            const float alpha = expf(m[hh] - mn); /* 0 while m is -inf */
            const float pr = expf(sc - mn);
            l[hh] = l[hh] * alpha + pr;
#pragma unroll
            for (int d = 0; d < DPL; d++) acc[hh][d] = fmaf(pr, vr[d], acc[hh][d] * alpha);
            m[hh] = mn;
        }
    }
    /* merge the warps */
    float *sacc = sh, *sml = sh + TDC_ATT_WARPS * TDC_ATT_GMAX * hd;
#pragma unroll
    for (int hh = 0; hh < TDC_ATT_GMAX; hh++) {
        if (hh >= ng) break;
#pragma unroll
        for (int d = 0; d < DPL; d++) {
            const int dd = lane + 32 * d;
            if (dd < hd) sacc[(warp * TDC_ATT_GMAX + hh) * hd + dd] = acc[hh][d];
        }
        if (lane == 0) {
            sml[(warp * TDC_ATT_GMAX + hh) * 2] = m[hh];
            sml[(warp * TDC_ATT_GMAX + hh) * 2 + 1] = l[hh];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ng * hd; e += blockDim.x) {
        const int hh = e / hd, dd = e % hd;
        float M = -INFINITY;
        for (int w = 0; w < TDC_ATT_WARPS; w++) M = fmaxf(M, sml[(w * TDC_ATT_GMAX + hh) * 2]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY)
            for (int w = 0; w < TDC_ATT_WARPS; w++) {
                const float f = expf(sml[(w * TDC_ATT_GMAX + hh) * 2] - M);
                L += sml[(w * TDC_ATT_GMAX + hh) * 2 + 1] * f;
                A += sacc[(w * TDC_ATT_GMAX + hh) * hd + dd] * f;
            }
        const int h = h0 + hh;
        if (a.splits == 1) {
            a.out[((int64_t)t * a.nh + h) * hd + dd] = L > 0.0f ? A / L : 0.0f;
        } else {
            const int64_t pi = ((int64_t)sp * a.n + t) * a.nh + h;
            a.part[pi * hd + dd] = A;
            if (dd == 0) {
                a.part_ml[pi * 2] = M;
                a.part_ml[pi * 2 + 1] = L;
            }
        }
    }
}

/* one thread per output element: merge the splits' (max, sum, acc) */
__global__ void k_attention_merge(att_args a) {
    const int64_t total = (int64_t)a.n * a.nh * a.hd;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t th = e / a.hd; /* t * nh + h */
        const int64_t per = (int64_t)a.n * a.nh;
        float M = -INFINITY;
        for (int sp = 0; sp < a.splits; sp++) M = fmaxf(M, a.part_ml[(sp * per + th) * 2]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY)
            for (int sp = 0; sp < a.splits; sp++) {
                const float f = expf(a.part_ml[(sp * per + th) * 2] - M);
                L += a.part_ml[(sp * per + th) * 2 + 1] * f;
                A += a.part[(sp * per + th) * a.hd + e % a.hd] * f;
            }
        a.out[e] = L > 0.0f ? A / L : 0.0f;
    }
}

/* Uploads the explicit mask, or reuses the device copy when the bytes are those of the last call
 * (the model passes the same mask to every layer). */
static const uint8_t *s_mask(cuda_ctx_t *c, const uint8_t *mask, size_t len) {
    if (c->mask_dev && c->mask_len == len && !memcmp(c->mask_host, mask, len)) return c->mask_dev;
    if (len > c->mask_cap) {
        TDC_CUDA(c, cudaStreamSynchronize(c->stream));
        cudaFree(c->mask_dev);
        free(c->mask_host);
        c->mask_dev = NULL;
        c->mask_cap = 0;
        c->mask_host = (uint8_t *)malloc(len);
        if (!c->mask_host) {
            TDC_FAIL(c, TD_ERR_NOMEM, "out of host memory for a %zu-byte attention mask", len);
            return NULL;
        }
        if (TDC_CUDA(c, cudaMalloc((void **)&c->mask_dev, len))) {
            c->mask_dev = NULL;
            return NULL;
        }
        c->mask_cap = len;
    }
    memcpy(c->mask_host, mask, len);
    c->mask_len = len;
    /* mask_host is ours until the next call, but may be rewritten then: copy synchronously */
    if (TDC_CUDA(c, cudaMemcpyAsync(c->mask_dev, c->mask_host, len, cudaMemcpyHostToDevice,
                                    c->stream)) ||
        TDC_CUDA(c, cudaStreamSynchronize(c->stream))) {
        c->mask_len = 0;
        return NULL;
    }
    return c->mask_dev;
}

void tdc_attention(cuda_ctx_t *c, float *out, const float *q, const float *kc, const float *vc,
                   const td_attn_desc_t *d) {
    const int n = d->n, hd = d->head_dim;
    if (hd > 32 * 8 || hd <= 0) {
        TDC_FAIL(c, TD_ERR_UNSUPPORTED, "attention: head_dim %d is not supported (at most 256)",
                 hd);
        return;
    }
    if (d->kind == TD_ATTN_BLOCK_CAUSAL && d->block_size <= 0) {
        TDC_FAIL(c, TD_ERR_ARG, "attention: block-causal with block_size %d", d->block_size);
        return;
    }
    if (d->n_head <= 0 || d->n_kv_head <= 0 || d->n_head % d->n_kv_head || d->n_ctx <= 0 ||
        (d->kind == TD_ATTN_EXPLICIT && !d->mask)) {
        TDC_FAIL(c, TD_ERR_ARG, "attention: bad descriptor (n_head %d, n_kv_head %d, n_ctx %d%s)",
                 d->n_head, d->n_kv_head, d->n_ctx,
                 d->kind == TD_ATTN_EXPLICIT && !d->mask ? ", explicit mask missing" : "");
        return;
    }
    /* what the kernel would read out of bounds is refused here, with the query named (the CPU
     * backend trusts the model's validation; a device fault would poison the whole context) */
    for (int t = 0; t < n; t++) {
        const int s = d->seq[t];
        const int len = s >= 0 ? d->kv_len[s] : 0;
        if (s < 0 || len < 0 || len > d->n_ctx ||
            (d->kind == TD_ATTN_EXPLICIT && d->mask_stride < len)) {
            TDC_FAIL(c, TD_ERR_ARG,
                     "attention: query %d: sequence %d with kv_len %d (n_ctx %d, mask_stride "
                     "%lld)",
                     t, s, len, d->n_ctx, (long long)d->mask_stride);
            return;
        }
    }
    /* the longest key range of any query decides the split */
    int max_seq = 0, max_end = 0;
    for (int t = 0; t < n; t++)
        if (d->seq[t] + 1 > max_seq) max_seq = d->seq[t] + 1;
    for (int t = 0; t < n; t++) {
        int end = d->kv_len[d->seq[t]];
        if (d->kind == TD_ATTN_CAUSAL && d->pos[t] + 1 < end) end = d->pos[t] + 1;
        if (d->kind == TD_ATTN_BLOCK_CAUSAL) {
            int64_t e = ((int64_t)d->pos[t] / d->block_size + 1) * d->block_size;
            if (e < end) end = (int)e;
        }
        if (end > max_end) max_end = end;
    }
    att_args a;
    memset(&a, 0, sizeof a);
    a.q = q, a.kc = kc, a.vc = vc, a.out = out;
    a.kind = d->kind, a.block_size = d->block_size, a.mask_stride = d->mask_stride;
    a.n = n, a.nh = d->n_head, a.nkv = d->n_kv_head, a.hd = hd, a.n_ctx = d->n_ctx,
    a.scale = d->scale;
    const int G = a.nh / a.nkv;
    a.n_hsub = (G + TDC_ATT_GMAX - 1) / TDC_ATT_GMAX;
    const int64_t base = (int64_t)n * a.nkv * a.n_hsub;
    if (base > INT32_MAX) {
        TDC_FAIL(c, TD_ERR_UNSUPPORTED, "attention: %lld blocks is too many", (long long)base);
        return;
    }
    int splits = 1;
    const int want = 2 * (c->sm_count > 0 ? c->sm_count : 100);
    if (base < want && max_end > TDC_ATT_MIN_CHUNK) {
        splits = (int)((want + base - 1) / base);
        int most = (max_end + TDC_ATT_MIN_CHUNK - 1) / TDC_ATT_MIN_CHUNK;
        if (splits > most) splits = most;
        if (splits > 65535) splits = 65535;
    }
    a.chunk = max_end > 0 ? (max_end + splits - 1) / splits : 1;
    splits = max_end > 0 ? (max_end + a.chunk - 1) / a.chunk : 1;
    a.splits = splits;

    /* index arrays: pos and seq of each query, kv_len of every sequence used */
    int32_t *host = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * n + max_seq));
    if (!host) {
        TDC_FAIL(c, TD_ERR_NOMEM, "out of host memory");
        return;
    }
    memcpy(host, d->pos, sizeof(int32_t) * (size_t)n);
    memcpy(host + n, d->seq, sizeof(int32_t) * (size_t)n);
    memcpy(host + 2 * n, d->kv_len, sizeof(int32_t) * (size_t)max_seq);
    const int32_t *dev =
        (const int32_t *)tdc_upload(c, host, sizeof(int32_t) * (size_t)(2 * n + max_seq));
    free(host);
    if (!dev) return;
    a.pos = dev, a.seq = dev + n, a.kv_len = dev + 2 * n;
    if (d->kind == TD_ATTN_EXPLICIT) {
        a.mask = s_mask(c, d->mask, (size_t)n * (size_t)d->mask_stride);
        if (!a.mask) return;
    }
    if (splits > 1) {
        const size_t per = (size_t)n * a.nh;
        size_t need = (size_t)splits * per * ((size_t)hd + 2) * sizeof(float);
        if (tdc_reserve(c, (void **)&c->att_part, &c->att_part_cap, need)) return;
        a.part = c->att_part;
        a.part_ml = c->att_part + (size_t)splits * per * hd;
    }
    const size_t smem = sizeof(float) * (size_t)TDC_ATT_WARPS * TDC_ATT_GMAX * ((size_t)hd + 2);
    dim3 grid((unsigned)base, (unsigned)splits);
    const int threads = TDC_ATT_WARPS * 32;
    if (hd <= 32)
        k_attention<1><<<grid, threads, smem, c->stream>>>(a);
    else if (hd <= 64)
        k_attention<2><<<grid, threads, smem, c->stream>>>(a);
    else if (hd <= 128)
        k_attention<4><<<grid, threads, smem, c->stream>>>(a);
    else
        k_attention<8><<<grid, threads, smem, c->stream>>>(a);
    if (TDC_LAUNCHED(c)) return;
    if (splits > 1) {
        const int64_t total = (int64_t)n * a.nh * hd;
        k_attention_merge<<<tdc_blocks(total, 256), 256, 0, c->stream>>>(a);
        TDC_LAUNCHED(c);
    }
}
