/* sample.cu - td_op_sample on the device: per row of logits, the greedy argmax or a draw from
 * td_sampling_dist (kernels/sampler.c) with counter-based Gumbel noise, and only
 * {id, prob, n_kept} (12 bytes) copied back.
 *
 * One block of TDC_SAMPLE_THREADS threads per row, in passes over the row (all from L2 after the
 * first):
 *  1. argmax of clean(x) (NaN = -inf, ties to the lowest id): the greedy answer, and
 *     vmax = xmax / T (division by T > 0 is monotone, so this is the largest scaled value);
 *  2. top-k (0 < k < V): the k-th largest scaled value t by radix selection over an orderable
 *     32-bit key, 4 levels of 8 bits with a 256-bin count histogram each;
 *  3. top-p (p < 1): candidate weights w_i = exp(v_i - vmax) in double (1 in +inf mode) stored in
 *     a per-row scratch row, Z = their sum; the cut is the lowest-ranked candidate whose mass
 *     ranked strictly above it is < p Z (HF's rule; the rank order is "higher value, or equal
 *     value and higher id"). Found by radix selection weighted by mass over the value key
 *     (4 levels: the lowest non-empty bin whose mass above is < p Z), then among the m ids that
 *     share the selected value: the first r (by descending id) with acc + j w < p Z, j < r, and the
 *     r-th largest of their ids by a count radix selection (skipped when r == m);
 *  4. over the kept ids (eligible and at or above the cut): Z' = sum of (float) exp(v - vmax) in
 *     double (as sampler.c's s_write_probs), the count, and argmax of (v - vmax) + Gumbel(U_i) with
 *     U_i from td_sample_bits(seed, i) (kernels/sampler.h); prob = w_id / Z'.
 * Every comparison that decides the kept set is the one sampler.c makes on the same float values
 * (IEEE division, no fast math), so the kept set is the CPU's except when a top-p boundary mass
 * equals p Z within double rounding (sums run in another order). */
#include "kernels/cuda/cuda_common.cuh"

#include <limits.h>
#include <math.h>

#ifndef TDC_SAMPLE_THREADS
#define TDC_SAMPLE_THREADS 512
#endif
#define TDC_SAMPLE_WARPS (TDC_SAMPLE_THREADS / 32)

typedef struct s_sh {
    unsigned cnt[256];
    double mass[256];
    double lane_mass[32];
    /* reduction scratch, one slot per warp */
    float rv[TDC_SAMPLE_WARPS];
    int ri[TDC_SAMPLE_WARPS];
    double rd[TDC_SAMPLE_WARPS];
    double rs[TDC_SAMPLE_WARPS];
    float rw[TDC_SAMPLE_WARPS];
    int rc[TDC_SAMPLE_WARPS];
    /* broadcast */
    int sel;
    unsigned rem;
    double acc;
    float bv;
    int bi;
    double bd;
    float bw;
    int bc;
} s_sh_t;

/* must equal td_sample_bits in kernels/sampler.h */
__device__ __forceinline__ uint64_t d_bits(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float d_clean(float x) { return isnan(x) ? -INFINITY : x; }

/* Orderable key of a non-NaN float: unsigned order = float order, -0 and +0 one key. */
__device__ __forceinline__ unsigned d_key(float v) {
    if (v == 0.0f) v = 0.0f;
    unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float d_unkey(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* a beats b: larger value, or equal value and lower id */
__device__ __forceinline__ bool d_better(float va, int ia, float vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}
__device__ __forceinline__ bool d_better_d(double va, int ia, double vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}

/* Block argmax of (v, i) pairs (ties to the lower id); every thread gets it in *v, *i. */
__device__ void d_block_argmax(float *v, int *i, s_sh_t *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float bv = *v;
    int bi = *i;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (d_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    __syncthreads();
    if (lane == 0) sh->rv[warp] = bv, sh->ri[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < TDC_SAMPLE_WARPS; w++)
            if (d_better(sh->rv[w], sh->ri[w], bv, bi)) bv = sh->rv[w], bi = sh->ri[w];
        sh->bv = bv;
        sh->bi = bi;
    }
    __syncthreads();
    *v = sh->bv;
    *i = sh->bi;
}

/* Block sum of a double (fixed order given the per-thread values). */
__device__ double d_block_sum(double x, s_sh_t *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if (lane == 0) sh->rd[warp] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < TDC_SAMPLE_WARPS; w++) t += sh->rd[w];
        sh->bd = t;
    }
    __syncthreads();
    return sh->bd;
}

__device__ void d_clear_hist(s_sh_t *sh) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        sh->cnt[b] = 0;
        sh->mass[b] = 0.0;
    }
}

/* Histogram adds with a per-thread run cache: consecutive hits on one bin are added once (the
 * first levels put most of a row in one bin; plain shared atomics would serialise on it). */
struct d_run {
    int bin;
    unsigned n;
    double m;
    __device__ void add(s_sh_t *sh, int b, double w) {
        if (b != bin) {
            flush(sh);
            bin = b;
        }
        n++;
        m += w;
    }
    __device__ void flush(s_sh_t *sh) {
        if (bin >= 0 && n) {
            atomicAdd(&sh->cnt[bin], n);
            atomicAdd(&sh->mass[bin], m);
        }
        n = 0;
        m = 0.0;
    }
};

/* Warp 0: the bin where the count from the top (bin 255 down) first reaches kk (1 <= kk <= the
 * histogram's total); sh->sel = that bin, sh->rem = kk minus the count in the bins above it. */
__device__ void d_pick_count(s_sh_t *sh, unsigned kk) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x, hi = 255 - 8 * lane;
    unsigned s = 0;
    for (int j = 0; j < 8; j++) s += sh->cnt[hi - j];
    unsigned inc = s;
    for (int o = 1; o < 32; o <<= 1) {
        unsigned t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
    }
    const unsigned ex = inc - s;
    const bool mine = ex < kk && kk <= inc;
    const unsigned bal = __ballot_sync(0xffffffffu, mine);
    if (mine) {
        unsigned cum = ex;
        for (int j = 0; j < 8; j++) {
            const int b = hi - j;
            if (cum + sh->cnt[b] >= kk) {
                sh->sel = b;
                sh->rem = kk - cum;
                break;
            }
            cum += sh->cnt[b];
        }
    }
    if (bal == 0 && lane == 0) { /* cannot happen (kk <= total); stay defined */
        sh->sel = 255;
        sh->rem = 1;
    }
}

/* Warp 0: the lowest non-empty bin b whose mass above (acc + the masses of bins > b) is < target
 * (acc < target and a non-empty histogram: the highest non-empty bin qualifies); sh->sel = b,
 * sh->acc = its mass above. */
__device__ void d_pick_mass(s_sh_t *sh, double acc, double target) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x, hi = 255 - 8 * lane;
    double s = 0.0;
    int top = -1;
    for (int j = 0; j < 8; j++) {
        s += sh->mass[hi - j];
        if (top < 0 && sh->cnt[hi - j]) top = hi - j;
    }
    sh->lane_mass[lane] = s;
    __syncwarp();
    double f = acc; /* every lane sums the lanes above it in the same order */
    for (int j = 0; j < lane; j++) f += sh->lane_mass[j];
    int cand = -1;
    double fc = 0.0;
    for (int j = 0; j < 8; j++) {
        const int b = hi - j;
        if (!(f < target)) break;
        if (sh->cnt[b]) {
            cand = b;
            fc = f;
        }
        f += sh->mass[b];
    }
    const unsigned bal = __ballot_sync(0xffffffffu, cand >= 0);
    if (bal) {
        if (lane == 31 - __clz((int)bal)) {
            sh->sel = cand;
            sh->acc = fc;
        }
    } else { /* rounding only: fall back to the highest non-empty bin */
        const unsigned tb = __ballot_sync(0xffffffffu, top >= 0);
        if (tb && lane == __ffs((int)tb) - 1) {
            sh->sel = top;
            sh->acc = acc;
        }
    }
}

struct d_row {
    const float *x;
    int n;
    float temp;
    __device__ float v(int i) const { return d_clean(x[i]) / temp; }
};

/* The kk-th largest key (1-based) among ids i < n where pred(i, &key) holds; kk <= that count. */
template <class P> __device__ unsigned d_select_kth(const P &pred, int n, unsigned kk, s_sh_t *sh) {
    unsigned prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        __syncthreads();
        d_clear_hist(sh);
        __syncthreads();
        d_run run = {-1, 0, 0.0};
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            unsigned k;
            if (pred(i, &k) && (k & mask) == prefix) run.add(sh, (int)((k >> shift) & 255u), 0.0);
        }
        run.flush(sh);
        __syncthreads();
        d_pick_count(sh, kk);
        __syncthreads();
        prefix |= (unsigned)sh->sel << shift;
        mask |= 255u << shift;
        kk = sh->rem;
    }
    return prefix;
}

struct p_all_values { /* top-k: every scaled value */
    d_row r;
    __device__ bool operator()(int i, unsigned *k) const {
        *k = d_key(r.v(i));
        return true;
    }
};
struct p_tied_ids { /* top-p ties: the ids of the candidates whose value is exactly vkey */
    d_row r;
    const double *w;
    unsigned vkey;
    __device__ bool operator()(int i, unsigned *k) const {
        *k = (unsigned)i;
        return w[i] >= 0.0 && d_key(r.v(i)) == vkey;
    }
};

__global__ void __launch_bounds__(TDC_SAMPLE_THREADS)
    k_sample(const float *logits, int n, float temp, int top_k, float top_p, int greedy,
             const uint64_t *seeds, double *wbuf, td_sample_result_t *out) {
    __shared__ s_sh_t sh;
    const int row = blockIdx.x;
    const d_row r = {logits + (int64_t)row * n, n, temp};

    /* 1. argmax of the cleaned logits */
    float bx = -INFINITY;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = d_clean(r.x[i]);
        if (x > bx || bi == INT_MAX) bx = x, bi = i;
    }
    d_block_argmax(&bx, &bi, &sh);
    if (greedy || bx == -INFINITY) {
        if (threadIdx.x == 0) out[row] = td_sample_result_t{bi, 1.0f, 1};
        return;
    }
    const float vmax = bx / temp;
    const bool inf_mode = vmax == INFINITY;

    /* 2. top-k threshold (kept: value >= t) */
    float vc = -INFINITY; /* the cut: kept = eligible and (v > vc or (v == vc and i >= idc)) */
    int idc = -1;
    if (top_k > 0 && top_k < n)
        vc = d_unkey(d_select_kth(p_all_values{r}, n, (unsigned)top_k, &sh));

    /* 3. top-p */
    if (top_p < 1.0f) {
        double *w = wbuf + (int64_t)row * n;
        double z = 0.0;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = r.v(i);
            const bool cand = (inf_mode ? v == INFINITY : v > -INFINITY) && v >= vc;
            const double wi = !cand ? -1.0 : inf_mode ? 1.0 : exp((double)v - (double)vmax);
            w[i] = wi;
            if (cand) z += wi;
        }
        z = d_block_sum(z, &sh); /* ends with __syncthreads: w is visible to the block */
        const double target = (top_p > 0.0f ? (double)top_p : 0.0) * z;
        unsigned vkey;
        if (!(target > 0.0)) {
            /* top_p <= 0 keeps the top-ranked candidate only: value vmax, the highest such id */
            vkey = d_key(vmax);
            int hid = -1;
            for (int i = threadIdx.x; i < n; i += blockDim.x)
                if (w[i] >= 0.0 && d_key(r.v(i)) == vkey) hid = i; /* ascending per thread */
            float one = 0.0f;
            int neg = hid >= 0 ? -hid : INT_MAX; /* lowest -id = highest id */
            d_block_argmax(&one, &neg, &sh);
            idc = -neg;
        } else {
            unsigned prefix = 0, mask = 0, m = 0;
            double acc = 0.0;
            for (int shift = 24; shift >= 0; shift -= 8) {
                __syncthreads();
                d_clear_hist(&sh);
                __syncthreads();
                d_run run = {-1, 0, 0.0};
                for (int i = threadIdx.x; i < n; i += blockDim.x) {
                    const double wi = w[i];
                    if (wi < 0.0) continue;
                    const unsigned k = d_key(r.v(i));
                    if ((k & mask) == prefix) run.add(&sh, (int)((k >> shift) & 255u), wi);
                }
                run.flush(&sh);
                __syncthreads();
                d_pick_mass(&sh, acc, target);
                __syncthreads();
                prefix |= (unsigned)sh.sel << shift;
                mask |= 255u << shift;
                acc = sh.acc;
                m = sh.cnt[sh.sel];
            }
            vkey = prefix;
            /* the m candidates of value vkey, by descending id: the j-th has mass acc + j wv
             * above it; keep the first r of them, those with acc + j wv < target */
            const double wv = inf_mode ? 1.0 : exp((double)d_unkey(vkey) - (double)vmax);
            unsigned keep = m;
            if (wv > 0.0) {
                double q = (target - acc) / wv; /* j < q */
                unsigned j = !(q > 1.0) ? 1u : q >= (double)m ? m : (unsigned)ceil(q);
                /* exact check around the estimate: j = number of j' with acc + j' wv < target */
                while (j > 1 && !(acc + (double)(j - 1) * wv < target)) j--;
                while (j < m && acc + (double)j * wv < target) j++;
                keep = j < 1 ? 1 : j;
            }
            idc = -1;
            if (keep < m) idc = (int)d_select_kth(p_tied_ids{r, w, vkey}, n, keep, &sh);
        }
        vc = d_unkey(vkey);
        __syncthreads();
    }

    /* 4. the draw over the kept ids */
    const uint64_t seed = seeds[row];
    double z = 0.0, bs = -INFINITY;
    int best = INT_MAX, count = 0;
    float bw = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = r.v(i);
        const bool elig = inf_mode ? v == INFINITY : v > -INFINITY;
        if (!(elig && (v > vc || (v == vc && i >= idc)))) continue;
        const double lw = inf_mode ? 0.0 : (double)v - (double)vmax;
        const float wf = (float)exp(lw);
        z += (double)wf;
        count++;
        const double u = ((double)(d_bits(seed, (uint64_t)i) >> 11) + 0.5) * 0x1.0p-53;
        const double score = lw - log(-log(u));
        if (best == INT_MAX || score > bs) bs = score, best = i, bw = wf;
    }
    /* block reduction of (score, id, weight), the count and the sum */
    {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        for (int o = 16; o > 0; o >>= 1) {
            const double os = __shfl_xor_sync(0xffffffffu, bs, o);
            const int oi = __shfl_xor_sync(0xffffffffu, best, o);
            const float ow = __shfl_xor_sync(0xffffffffu, bw, o);
            if (oi != INT_MAX && (best == INT_MAX || d_better_d(os, oi, bs, best)))
                bs = os, best = oi, bw = ow;
            count += __shfl_xor_sync(0xffffffffu, count, o);
        }
        __syncthreads();
        if (lane == 0) {
            sh.rs[warp] = bs;
            sh.ri[warp] = best;
            sh.rw[warp] = bw;
            sh.rc[warp] = count;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int c = count;
            for (int w = 1; w < TDC_SAMPLE_WARPS; w++) {
                c += sh.rc[w];
                if (sh.ri[w] != INT_MAX &&
                    (best == INT_MAX || d_better_d(sh.rs[w], sh.ri[w], bs, best)))
                    bs = sh.rs[w], best = sh.ri[w], bw = sh.rw[w];
            }
            sh.bi = best;
            sh.bw = bw;
            sh.bc = c;
        }
    }
    z = d_block_sum(z, &sh); /* its barriers publish sh.bi / bw / bc too */
    if (threadIdx.x == 0)
        out[row] = td_sample_result_t{sh.bi, (float)((double)sh.bw * (1.0 / z)), sh.bc};
}

int tdc_sample(cuda_ctx_t *c, const float *logits, int n_rows, int n_vocab,
               const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out) {
    const int greedy = !(sp->temperature > 0.0f);
    const uint64_t *dseeds = NULL;
    double *wbuf = NULL;
    if (!greedy) {
        dseeds = (const uint64_t *)tdc_upload(c, seeds, (size_t)n_rows * sizeof *seeds);
        if (!dseeds) return -1;
        if (sp->top_p < 1.0f) {
            if (tdc_reserve(c, &c->samp_w, &c->samp_w_cap,
                            (size_t)n_rows * (size_t)n_vocab * sizeof(double)))
                return -1;
            wbuf = (double *)c->samp_w;
        }
    }
    if (tdc_reserve(c, &c->samp_out, &c->samp_out_cap, (size_t)n_rows * sizeof *out)) return -1;
    td_sample_result_t *dout = (td_sample_result_t *)c->samp_out;
    k_sample<<<n_rows, TDC_SAMPLE_THREADS, 0, c->stream>>>(
        logits, n_vocab, sp->temperature, sp->top_k, sp->top_p, greedy, dseeds, wbuf, dout);
    if (TDC_LAUNCHED(c)) return -1;
    if (TDC_CUDA(c, cudaMemcpyAsync(out, dout, (size_t)n_rows * sizeof *out, cudaMemcpyDeviceToHost,
                                    c->stream)))
        return -1;
    return TDC_CUDA(c, cudaStreamSynchronize(c->stream));
}
