/* backend_cpu.c - the CPU backend: OpenBLAS SGEMM for wide products, AVX2 kernels that read
 * BF16/F16/F32 weights in place for skinny ones (decode, short verification blocks), plain C for
 * everything else. The reference mode replaces every product by a naive double-accumulating loop
 * on one thread: slow, obviously right, and the ground truth the fast paths are tested against.
 *
 * Threads: OpenMP with the backend's n_threads named in every loop (num_threads clauses, never
 * the process-wide omp_set_num_threads); OpenBLAS single-threaded (a process-wide setting, the
 * only one), called by those threads on separate blocks (one thread pool, no oversubscription).
 *
 * Out of memory while growing a scratch buffer is recorded in the context (the op is skipped)
 * and returned by td_backend_status; nothing here aborts. */
#include "kernels/backend_impl.h"
#include "kernels/cpu_paths.h"
#include "kernels/cpu_quant.h"
#include "kernels/quant.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define TD_AVX2 1
#endif

/* Skinny products (n <= TD_SKINNY_MAX rows of x) stream the weights once and never convert them
 * into a float copy; wider ones convert a panel of weight rows to float and call SGEMM, where the
 * conversion is amortised over n rows. */
#define TD_SKINNY_MAX 24
#define TD_PANEL_ROWS 256
/* Work (elements touched) below which a loop runs on one thread: a parallel region costs a few
 * microseconds when the cores are idle and a scheduler time slice when they are not. */
#define TD_PAR_MIN ((int64_t)1 << 15)
#define TD_PAR(work) ((int64_t)(work) >= TD_PAR_MIN)

/* RoPE tables kept per backend (a drafter and a verifier with different theta may share one), and
 * the largest position they cover: past it the cosines and sines are computed per call. */
#define TD_ROPE_TABS 4
#define TD_ROPE_TAB_MAXPOS (1 << 17)

typedef struct cpu_ctx {
    int reference;
    float *panel;     /* [n_threads][TD_PANEL_ROWS * max cols] conversion scratch */
    size_t panel_cap; /* floats */
    float *att;       /* attention score scratch [n_threads][att_cap] */
    size_t att_cap;
    float *vec; /* norm weights / biases converted to float, reused across calls */
    size_t vec_cap;
    void *xbuf;      /* activations rearranged for the AVX-512 BF16 skinny kernels */
    size_t xbuf_cap; /* bytes */
    int *ati;        /* attention: token order and work items */
    size_t ati_cap;  /* ints */
    /* RoPE cos/sin tables by (theta, rot_dim): positions [0, cap), per position rot_dim / 2
     * cosines then as many sines, each computed exactly as s_rope_cs does */
    struct {
        float theta;
        int rot_dim, cap;
        float *tab;
    } rope[TD_ROPE_TABS];
    int rope_next; /* the slot a new (theta, rot_dim) replaces when all are taken */
    int failed;    /* TD_OK, or the first failure since td_backend_status last asked */
    char why[160]; /* its message */
    struct s_chunk *chunks; /* the weight arena of s_prepare_weight */
    int n_chunks, cap_chunks;
    pthread_mutex_t repack_lock;
} cpu_ctx_t;

/* Records the first failure since the last td_backend_status (later ones are dropped). */
static void s_fail(cpu_ctx_t *c, int code, const char *what, size_t bytes) {
    if (c->failed != TD_OK) return;
    c->failed = code;
    snprintf(c->why, sizeof c->why, "CPU backend: out of memory growing the %s scratch (%zu bytes)",
             what, bytes);
}

static int s_status(td_backend_t *be, td_err_t *err) {
    cpu_ctx_t *c = be->ctx;
    if (c->failed == TD_OK) return TD_OK;
    int code = c->failed;
    c->failed = TD_OK;
    return td_err_set(err, code, "%s", c->why);
}

static inline void s_load_f32(float *dst, const td_weight_t *w, int64_t off, int64_t count);

/* count elements of vector weight w as floats: the stored data itself for F32, else converted
 * into the backend's reusable scratch (no allocation per call once it has grown). slot 0 or 1
 * (a layer norm needs its weight and bias at once). NULL (failure recorded) when out of memory. */
static const float *s_vec(td_backend_t *be, const td_weight_t *w, int64_t count, int slot) {
    cpu_ctx_t *c = be->ctx;
    if (w->dtype == TD_DTYPE_F32 && !w->transposed) return (const float *)w->data;
    size_t need = 2 * (size_t)count;
    if (c->vec_cap < need) {
        free(c->vec);
        c->vec = malloc(need * sizeof(float));
        if (!c->vec) {
            c->vec_cap = 0;
            s_fail(c, TD_ERR_NOMEM, "vector", need * sizeof(float));
            return NULL;
        }
        c->vec_cap = need;
    }
    float *dst = c->vec + (size_t)slot * (size_t)count;
    s_load_f32(dst, w, 0, count);
    return dst;
}

static void *s_alloc(td_backend_t *be, size_t nbytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, nbytes ? nbytes : 64) != 0) return NULL;
    memset(p, 0, nbytes);
    return p;
}
static void s_free(td_backend_t *be, void *p) { free(p); }
static const void *s_weights(td_backend_t *be, const void *host, size_t nbytes) { return host; }
/* --- the weight arena ---------------------------------------------------------------------------
 * s_prepare_weight copies every dense matrix into chunks of anonymous memory on 2 MB boundaries
 * marked MADV_HUGEPAGE: a token streams the whole model, and with 4 KB pages the TLB walks (nested
 * ones in a VM) cap what one core reads: a plain read loop here did 22 GB/s over 4 KB pages and 30
 * over 2 MB ones. Weights are bump-allocated in 32 MB chunks (a larger one gets its own chunk); a
 * chunk is returned when its last weight is freed. */
typedef struct s_chunk {
    char *base;
    size_t cap, used;
    int live; /* weights in it not yet freed */
} s_chunk_t;
#define S_HUGE ((size_t)2 << 20)
#define S_CHUNK ((size_t)32 << 20)

static void *s_arena_alloc(cpu_ctx_t *c, size_t n) {
    n = (n + 63) & ~(size_t)63;
    s_chunk_t *k = c->n_chunks ? &c->chunks[c->n_chunks - 1] : NULL;
    if (!k || n > k->cap - k->used) {
        if (c->n_chunks == c->cap_chunks) {
            const int cap = c->cap_chunks ? 2 * c->cap_chunks : 16;
            s_chunk_t *r = realloc(c->chunks, (size_t)cap * sizeof *r);
            if (!r) return NULL;
            c->chunks = r, c->cap_chunks = cap;
        }
        const size_t cap = n > S_CHUNK / 2 ? (n + S_HUGE - 1) / S_HUGE * S_HUGE : S_CHUNK;
        void *base = NULL;
        if (posix_memalign(&base, S_HUGE, cap)) return NULL;
#ifdef MADV_HUGEPAGE
        madvise(base, cap, MADV_HUGEPAGE); /* a hint: where THP is off, 4 KB pages */
#endif
        /* a big weight gets a chunk of its own, placed before the bump chunk */
        k = &c->chunks[c->n_chunks++];
        if (n > S_CHUNK / 2 && c->n_chunks > 1) {
            *k = c->chunks[c->n_chunks - 2];
            k = &c->chunks[c->n_chunks - 2];
        }
        *k = (s_chunk_t){base, cap, 0, 0};
    }
    void *p = k->base + k->used;
    k->used += n;
    k->live++;
    return p;
}

/* Frees p when it is a weight s_prepare_weight placed (host weights are the caller's). */
static void s_free_weights(td_backend_t *be, const void *p) {
    cpu_ctx_t *c = be->ctx;
    pthread_mutex_lock(&c->repack_lock);
    for (int i = 0; i < c->n_chunks; i++) {
        s_chunk_t *k = &c->chunks[i];
        if ((const char *)p < k->base || (const char *)p >= k->base + k->used) continue;
        if (--k->live == 0) {
            free(k->base);
            c->chunks[i] = c->chunks[--c->n_chunks];
        }
        break;
    }
    pthread_mutex_unlock(&c->repack_lock);
}

/* Every dense matrix into the weight arena (huge pages), as it is or, for Q4_1 / Q8_0 when the
 * AVX-512 VNNI kernels are in use and Q5_0 / Q4_K / Q6_K always, regrouped into 16-row tiles
 * (kernels/cpu_quant.c; the SIMD row tiles of those three exist only in that layout). TD_QREPACK=0: nothing
 * moves; TD_QREPACK=1: every type that fits is regrouped. Not on the reference backend. Results
 * are bitwise the same either way; the VNNI kernels read the tiles much faster (Q4_1 SmolLM2
 * decode 1.6x), the AVX2 ones read Q4_1 / Q8_0 a little slower (bench_quant --repack). */
static int s_prepare_weight(td_backend_t *be, td_weight_t *w) {
    cpu_ctx_t *c = be->ctx;
    const char *env = getenv("TD_QREPACK");
    if (c->reference || (env && !strcmp(env, "0")) || !w->data || w->transposed ||
        w->layout != TD_WLAYOUT_ROWS || (w->ld && w->ld != w->cols) || w->rows <= 0)
        return TD_OK;
    const int tile = td_cpu_qrepack_fits(w) &&
                     (env && *env ? 1
                                  : !strcmp(td_cpu_kernels_name(), "avx512vnni") ||
                                        w->dtype == TD_DTYPE_Q5_0 || w->dtype == TD_DTYPE_Q4_K ||
                                        w->dtype == TD_DTYPE_Q6_K);
    const size_t bytes =
        tile ? td_cpu_qrepack_bytes(w) : (size_t)w->rows * td_dtype_row_bytes(w->dtype, w->cols);
    if (!bytes) return TD_OK;
    pthread_mutex_lock(&c->repack_lock);
    void *t = s_arena_alloc(c, bytes);
    pthread_mutex_unlock(&c->repack_lock);
    if (!t) return TD_ERR_NOMEM;
    if (tile) {
        td_cpu_qrepack_into(w, t);
        w->layout = TD_WLAYOUT_TILE16;
    } else
        memcpy(t, w->data, bytes);
    w->data = t;
    return TD_OK;
}

static void s_memcpy(td_backend_t *be, void *dst, const void *src, size_t n) {
    if (n) memmove(dst, src, n);
}

static void s_destroy(td_backend_t *be) {
    cpu_ctx_t *c = be->ctx;
    free(c->panel);
    free(c->att);
    free(c->vec);
    free(c->xbuf);
    free(c->ati);
    for (int i = 0; i < TD_ROPE_TABS; i++) free(c->rope[i].tab);
    for (int i = 0; i < c->n_chunks; i++) free(c->chunks[i].base);
    free(c->chunks);
    pthread_mutex_destroy(&c->repack_lock);
    free(c);
    free(be);
}

/* Element (r, c) of a weight as float: r indexes output features, c input features. */
static inline float s_w_at(const td_weight_t *w, int64_t r, int64_t c) {
    int64_t ld = w->ld ? w->ld : (w->transposed ? w->rows : w->cols);
    int64_t off = w->transposed ? c * ld + r : r * ld + c;
    switch (w->dtype) {
    case TD_DTYPE_F32:
        return ((const float *)w->data)[off];
    case TD_DTYPE_BF16:
        return td_bf16_to_f32(((const uint16_t *)w->data)[off]);
    default:
        return td_f16_to_f32(((const uint16_t *)w->data)[off]);
    }
}

static inline int64_t s_ld(const td_weight_t *w) {
    return w->ld ? w->ld : (w->transposed ? w->rows : w->cols);
}

/* Converts count consecutive stored elements starting at element off into dst. */
static inline void s_load_f32(float *dst, const td_weight_t *w, int64_t off, int64_t count) {
    if (w->dtype == TD_DTYPE_F32) {
        memcpy(dst, (const float *)w->data + off, (size_t)count * 4);
        return;
    }
    const uint16_t *s = (const uint16_t *)w->data + off;
    int64_t i = 0;
#ifdef TD_AVX2
    if (w->dtype == TD_DTYPE_BF16) {
        for (; i + 8 <= count; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
    } else {
        for (; i + 8 <= count; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    }
#endif
    if (w->dtype == TD_DTYPE_BF16)
        for (; i < count; i++) dst[i] = td_bf16_to_f32(s[i]);
    else
        for (; i < count; i++) dst[i] = td_f16_to_f32(s[i]);
}

static void s_add_bias(td_backend_t *be, float *y, const td_weight_t *bias, int n, int64_t m) {
    if (!bias) return;
    const float *b = s_vec(be, bias, m, 0);
    if (!b) return; /* out of memory: recorded for td_backend_status */
#pragma omp parallel for schedule(static) if (TD_PAR((int64_t)n * m)) num_threads(be->n_threads)
    for (int t = 0; t < n; t++)
        for (int64_t j = 0; j < m; j++) y[(int64_t)t * m + j] += b[j];
}

/* --- reference products ------------------------------------------------------------------------
 */

static void s_matmul_ref(float *y, const float *x, const td_weight_t *w, const td_weight_t *bias,
                         int n) {
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < w->rows; r++) {
            double acc = bias ? (double)s_w_at(bias, 0, r) : 0.0;
            for (int64_t c = 0; c < w->cols; c++)
                acc += (double)x[(int64_t)t * w->cols + c] * (double)s_w_at(w, r, c);
            y[(int64_t)t * w->rows + r] = (float)acc;
        }
}

/* --- skinny products: weights [rows, cols] stored row-major --------------------------------- */

#ifdef TD_AVX2
/* The sum of v's 8 lanes as ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)): the order the 4-row hadd
 * reduction of s_rows_dot uses too, so a dot product rounds the same in every kernel shape. */
static inline float s_hsum(__m256 v) {
    const __m256 t = _mm256_hadd_ps(v, v);
    const __m256 u = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}
#endif

#ifdef TD_AVX2
/* 8 weights at p of dtype DT (a compile-time constant after inlining) as floats. */
static inline __attribute__((always_inline)) __m256 s_ld8(int DT, const void *p) {
    if (DT == TD_DTYPE_BF16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    if (DT == TD_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    return _mm256_loadu_ps((const float *)p);
}

static inline __attribute__((always_inline)) float s_wscalar(int DT, const char *wr, int64_t c) {
    return DT == TD_DTYPE_F32    ? ((const float *)wr)[c]
           : DT == TD_DTYPE_BF16 ? td_bf16_to_f32(((const uint16_t *)wr)[c])
                                 : td_f16_to_f32(((const uint16_t *)wr)[c]);
}

/* NR consecutive weight rows (wr, stride ldb bytes) against NT activation rows (x, stride cols):
 * out[t * NR + r] = dot(W row r, x row t). DT, NR and NT are compile-time constants after
 * inlining (see the dispatch below), so the NR * NT accumulators (at most 12) stay in registers
 * and the inner loop has no branch. Each 8-wide step loads NR weight vectors and NT activation
 * vectors for NR * NT FMAs: 4 x 3 and 2 x 6 keep the loads well below the two FMA pipes' rate,
 * which a single weight row against NT rows (1 + NT loads per NT FMAs) does not.
 *
 * Batch invariance: every (row, token) sum is accumulated in the same order whatever NR, NT and n
 * (one accumulator over the columns in ascending 8-wide steps, lanes reduced as s_hsum does, the
 * scalar tail last), so a token's outputs are bitwise the same alone or in a batch of up to
 * TD_SKINNY_MAX. A speculative verification pass then computes exactly what AR steps compute. */
static inline __attribute__((always_inline)) void s_rows_dot(int DT, int NR, int NT, const char *wr,
                                                             size_t ldb, const float *x,
                                                             int64_t cols, float *out) {
    const size_t es = DT == TD_DTYPE_F32 ? 4 : 2;
    __m256 acc[12];
#pragma GCC unroll 12
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) wv[r] = s_ld8(DT, wr + (size_t)r * ldb + (size_t)c * es);
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * cols + c);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                acc[t * NR + r] = _mm256_fmadd_ps(wv[r], xv, acc[t * NR + r]);
        }
    }
    if (NR == 4) {
        /* four row sums of one token in one vector: two rounds of hadd, then fold the halves */
#pragma GCC unroll 3
        for (int t = 0; t < NT; t++) {
            __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(acc[t * 4], acc[t * 4 + 1]),
                                      _mm256_hadd_ps(acc[t * 4 + 2], acc[t * 4 + 3]));
            _mm_storeu_ps(out + t * 4,
                          _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
        }
    } else {
#pragma GCC unroll 12
        for (int i = 0; i < NR * NT; i++) out[i] = s_hsum(acc[i]);
    }
    for (; c < cols; c++)
        for (int r = 0; r < NR; r++) {
            float wv = s_wscalar(DT, wr + (size_t)r * ldb, c);
            for (int t = 0; t < NT; t++) out[t * NR + r] += wv * x[t * cols + c];
        }
}

/* Calls s_rows_dot with the run-time nt turned into a constant (1 .. MAXT). */
#define TD_NT_CASE(DT, NR, T)                                                                      \
    case T:                                                                                        \
        s_rows_dot(DT, NR, T, wr, ldb, xt, cols, out);                                             \
        break;
#define TD_ROWS_DOT(DT, NR)                                                                        \
    do {                                                                                           \
        if ((NR) == 4) {                                                                           \
            switch (nt) {                                                                          \
                TD_NT_CASE(DT, 4, 1)                                                               \
                TD_NT_CASE(DT, 4, 2) default : s_rows_dot(DT, 4, 3, wr, ldb, xt, cols, out);       \
            }                                                                                      \
        } else {                                                                                   \
            switch (nt) {                                                                          \
                TD_NT_CASE(DT, NR, 1)                                                              \
                TD_NT_CASE(DT, NR, 2)                                                              \
                TD_NT_CASE(DT, NR, 3)                                                              \
                TD_NT_CASE(DT, NR, 4)                                                              \
                TD_NT_CASE(DT, NR, 5)                                                              \
            default:                                                                               \
                s_rows_dot(DT, NR, 6, wr, ldb, xt, cols, out);                                     \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* One block of nr (4, 2 or 1) weight rows starting at row r against all n activation rows, in
 * balanced token groups of at most gmax (3 for 4 rows, 6 otherwise) so no pass is a lone token. */
static inline __attribute__((always_inline)) void s_skinny_block(int DT, int nr, const char *wr,
                                                                 size_t ldb, const float *x,
                                                                 int64_t cols, int n, float *y,
                                                                 int64_t rows, int64_t r) {
    const int gmax = nr == 4 ? 3 : 6, ng = (n + gmax - 1) / gmax;
    float out[24];
    for (int g = 0, t0 = 0; g < ng; g++) {
        const int nt = (n - t0) / (ng - g);
        const float *xt = x + (int64_t)t0 * cols;
        if (nr == 4)
            TD_ROWS_DOT(DT, 4);
        else if (nr == 2)
            TD_ROWS_DOT(DT, 2);
        else
            TD_ROWS_DOT(DT, 1);
        for (int t = 0; t < nt; t++)
            for (int i = 0; i < nr; i++) y[(int64_t)(t0 + t) * rows + r + i] = out[t * nr + i];
        t0 += nt;
    }
}
#endif

/* --- skinny products, AVX-512 (chosen at run time) ------------------------------------------
 * The same products 16 floats wide, in functions compiled for AVX-512 (the build targets x86-64-v3
 * and this code runs only where cpuid reports the features; see td_cpu_float_kernels_select).
 * Weights convert to float in registers (bf16: zero-extend and shift; f16: vcvtph2ps) and meet the
 * float activations in FMAs, like the AVX2 kernels. The column tail is a masked step, not a scalar
 * loop. Its own fixed summation order (one accumulator per (row, token) over ascending 16-wide
 * steps, the masked tail last, lanes reduced by s_hsum16), different from the AVX2 one, so the two
 * paths agree to rounding, not bitwise; within a path every (row, token) sum is the same whatever
 * n and the other rows (batch invariance as above).
 *
 * The "avx512bf16" path (opt-in only) rounds the activations to bf16 once per product and uses
 * vdpbf16ps on BF16 weights: 32 products per instruction, lossy (the activations lose 16 mantissa
 * bits), the way llama.cpp runs BF16 models on such CPUs. Still batch invariant. */
#ifdef TD_AVX2
#define TD_X512 "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"
#define TD_X512_ATTR __attribute__((target(TD_X512), always_inline))
#define TD_XBF_ATTR __attribute__((target(TD_X512 ",avx512bf16"), always_inline))
enum { S_F_AVX2 = 0, S_F_AVX512, S_F_AVX512BF16, S_F_NPATH };
/* clang 14's code generator crashes on the vdpbf16ps kernel ("Do not know how to split the result
 * of this operator"), so the opt-in avx512bf16 path exists only in GCC builds. */
#if defined(__GNUC__) && !defined(__clang__)
#define TD_BFDOT 1
#endif

static inline TD_X512_ATTR float s_hsum16(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s = _mm256_add_ps(lo, hi);
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
}

/* 16 weights at p of dtype DT as floats, lanes outside m zero. */
static inline TD_X512_ATTR __m512 s_ld16(int DT, const void *p, __mmask16 m, int full) {
    if (DT == TD_DTYPE_BF16) {
        const __m256i h =
            full ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(m, p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (DT == TD_DTYPE_F16)
        return _mm512_cvtph_ps(full ? _mm256_loadu_si256((const __m256i *)p)
                                    : _mm256_maskz_loadu_epi16(m, p));
    return full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}

/* NR weight rows against NT activation rows, as s_rows_dot (NR * NT <= 24 accumulators of the 32
 * registers). */
static inline TD_X512_ATTR void s_rows_dot16(int DT, int NR, int NT, const char *wr, size_t ldb,
                                             const float *x, int64_t cols, float *out) {
    const size_t es = DT == TD_DTYPE_F32 ? 4 : 2;
    __m512 acc[24];
#pragma GCC unroll 24
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            _mm_prefetch(wr + (size_t)(r + NR * 6) * ldb + (size_t)c * es, _MM_HINT_T2);
            wv[r] = s_ld16(DT, wr + (size_t)r * ldb + (size_t)c * es, 0, 1);
        }
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m512 xv = _mm512_loadu_ps(x + t * cols + c);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                acc[t * NR + r] = _mm512_fmadd_ps(wv[r], xv, acc[t * NR + r]);
        }
    }
    if (c < cols) {
        const __mmask16 m = (__mmask16)((1u << (cols - c)) - 1u);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            wv[r] = s_ld16(DT, wr + (size_t)r * ldb + (size_t)c * es, m, 0);
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * cols + c);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                acc[t * NR + r] = _mm512_fmadd_ps(wv[r], xv, acc[t * NR + r]);
        }
    }
#pragma GCC unroll 24
    for (int i = 0; i < NR * NT; i++) out[i] = s_hsum16(acc[i]);
}

#ifdef TD_BFDOT
/* NR bf16 weight rows against NT activation rows already rounded to bf16 (xb, stride cols), 32
 * columns per vdpbf16ps. */
static inline TD_XBF_ATTR void s_rows_dotbf(int NR, int NT, const char *wr, size_t ldb,
                                            const uint16_t *xb, int64_t cols, float *out) {
    __m512 acc[24];
#pragma GCC unroll 24
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c < cols; c += 32) {
        const __mmask32 m = cols - c >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (cols - c)) - 1u);
        __m512i wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            wv[r] = _mm512_maskz_loadu_epi16(m, wr + (size_t)r * ldb + (size_t)c * 2);
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m512i xv = _mm512_maskz_loadu_epi16(m, xb + t * cols + c);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                acc[t * NR + r] = _mm512_dpbf16_ps(acc[t * NR + r], (__m512bh)wv[r], (__m512bh)xv);
        }
    }
#pragma GCC unroll 24
    for (int i = 0; i < NR * NT; i++) out[i] = s_hsum16(acc[i]);
}

#endif

/* NR bf16 weight rows against NT float activation rows stored even/odd split (xe, stride xld:
 * per 32 columns, the 16 even ones then the 16 odd ones; zero padded to a multiple of 32). A
 * 32-bit lane of 32 loaded bf16 weights holds an even weight in its low half and the next odd one
 * in its high half: shifting left by 16 gives the even weights as floats and masking the low half
 * off the odd ones, two instructions for 32 conversions instead of a widening move and a shift per
 * 16. Each (row, token) sum: one accumulator, even then odd FMA per 32 columns, ascending. */
static inline TD_X512_ATTR void s_rows_dot_eo(int NR, int NT, const char *wr, size_t ldb,
                                              const float *xe, int64_t xld, int64_t cols,
                                              float *out) {
    __m512 acc[24];
#pragma GCC unroll 24
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm512_setzero_ps();
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t c = 0; c < cols; c += 32) {
        const __mmask32 m = cols - c >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (cols - c)) - 1u);
        __m512 we[4], wo[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            /* the same columns six row blocks ahead, into L2: a one-thread decode streams the
             * weights at ~10 GB/s with the hardware prefetchers alone, ~13 with a prefetch three
             * blocks ahead into L1 (Intel VM, bench/results/bf16-kernels.txt); on the AMD EPYC VM
             * of session 7 the BF16 SmolLM2 step took 26 ms without, 24 into L1 (it evicts lines
             * still in use), 13.2 three blocks ahead into L2, 12.2-12.5 four to six blocks ahead
             * (weights in huge pages). A prefetch past the matrix is a hint, never a fault. */
            _mm_prefetch(wr + (size_t)(r + NR * 6) * ldb + (size_t)c * 2, _MM_HINT_T2);
            const __m512i v = _mm512_maskz_loadu_epi16(m, wr + (size_t)r * ldb + (size_t)c * 2);
            we[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            wo[r] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
        }
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m512 xv0 = _mm512_loadu_ps(xe + t * xld + c),
                         xv1 = _mm512_loadu_ps(xe + t * xld + c + 16);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                acc[t * NR + r] =
                    _mm512_fmadd_ps(wo[r], xv1, _mm512_fmadd_ps(we[r], xv0, acc[t * NR + r]));
        }
    }
#pragma GCC unroll 24
    for (int i = 0; i < NR * NT; i++) out[i] = s_hsum16(acc[i]);
}

#define TD_NT16_CASE(KERNEL, NR, T)                                                                \
    case T:                                                                                        \
        KERNEL(NR, T);                                                                             \
        break;
#define TD_NT16_SWITCH(KERNEL, NR)                                                                 \
    switch (nt) {                                                                                  \
        TD_NT16_CASE(KERNEL, NR, 1)                                                                \
        TD_NT16_CASE(KERNEL, NR, 2)                                                                \
        TD_NT16_CASE(KERNEL, NR, 3)                                                                \
        TD_NT16_CASE(KERNEL, NR, 4)                                                                \
        TD_NT16_CASE(KERNEL, NR, 5)                                                                \
    default:                                                                                       \
        KERNEL(NR, 6);                                                                             \
    }

/* All n <= TD_SKINNY_MAX tokens against every weight row: blocks of 4 rows, then the leftover
 * rows one by one; each block meets the tokens in balanced groups of at most 6 (4 x 6 = 24
 * accumulators). One token (decode) goes one row at a time: one weight stream instead of four
 * interleaved ones reads faster (BF16 SmolLM2 step 13.2 -> 10.3 ms, AMD EPYC VM, session 7), and a
 * row's sum is the same operations either way. NAME is the function, ATTR its target,
 * KERNEL(NR, NT) the inner product. */
// clang-format off
#define TD_SKINNY16_FN(NAME, ATTR, KERNEL, XES)                                                    \
    static ATTR void NAME(int nthreads, float *y, const float *x, const void *xb, int64_t xld,     \
                          const char *data, size_t ldb, int64_t rows, int64_t cols, int n) {       \
        const int64_t nblk = n == 1 ? 0 : rows / 4;                                                \
        const int ng = (n + 5) / 6;                                                                \
        const int par = TD_PAR(rows * cols);                                                       \
        _Pragma("omp parallel for schedule(static) if (par) num_threads(nthreads)")                \
        for (int64_t b = 0; b < nblk + (rows - nblk * 4); b++) {                                   \
            const int64_t r = b < nblk ? b * 4 : nblk * 4 + (b - nblk);                            \
            const int nr = b < nblk ? 4 : 1;                                                       \
            const char *wr = data + (size_t)r * ldb;                                               \
            float out[24];                                                                         \
            for (int g = 0, t0 = 0; g < ng; g++) {                                                 \
                const int nt = (n - t0) / (ng - g);                                                \
                const float *xt = x + (int64_t)t0 * cols;                                          \
                const char *xbt = xb ? (const char *)xb + (size_t)t0 * (size_t)xld * (XES) : NULL; \
                (void)xt, (void)xbt;                                                               \
                if (nr == 4) {                                                                     \
                    TD_NT16_SWITCH(KERNEL, 4)                                                      \
                } else {                                                                           \
                    TD_NT16_SWITCH(KERNEL, 1)                                                      \
                }                                                                                  \
                for (int t = 0; t < nt; t++)                                                       \
                    for (int i = 0; i < nr; i++)                                                   \
                        y[(int64_t)(t0 + t) * rows + r + i] = out[t * nr + i];                     \
                t0 += nt;                                                                          \
            }                                                                                      \
        }                                                                                          \
    }
// clang-format on
#define TD_K_F32(NR, T) s_rows_dot16(TD_DTYPE_F32, NR, T, wr, ldb, xt, cols, out)
#define TD_K_BF16(NR, T) s_rows_dot_eo(NR, T, wr, ldb, (const float *)xbt, xld, cols, out)
#define TD_K_F16(NR, T) s_rows_dot16(TD_DTYPE_F16, NR, T, wr, ldb, xt, cols, out)
TD_SKINNY16_FN(s_skinny16_f32, __attribute__((target(TD_X512))), TD_K_F32, 4)
TD_SKINNY16_FN(s_skinny16_bf16, __attribute__((target(TD_X512))), TD_K_BF16, 4)
TD_SKINNY16_FN(s_skinny16_f16, __attribute__((target(TD_X512))), TD_K_F16, 4)
#ifdef TD_BFDOT
#define TD_K_BFDOT(NR, T) s_rows_dotbf(NR, T, wr, ldb, (const uint16_t *)xbt, cols, out)
TD_SKINNY16_FN(s_skinny16_bfdot, __attribute__((target(TD_X512 ",avx512bf16"))), TD_K_BFDOT, 2)
#endif

/* x [n, cols] into the even/odd split layout of s_rows_dot_eo, rows of xld floats. */
static void s_split_eo(float *xe, const float *x, int n, int64_t cols, int64_t xld) {
    for (int t = 0; t < n; t++) {
        float *d = xe + (int64_t)t * xld;
        memset(d, 0, (size_t)xld * sizeof(float));
        for (int64_t c = 0; c < cols; c++)
            d[(c & ~(int64_t)31) + ((c & 1) << 4) + ((c & 31) >> 1)] = x[(int64_t)t * cols + c];
    }
}
#endif

/* --- float kernel selection ------------------------------------------------------------------ */

#ifdef TD_AVX2
static const char *const s_fpath_names[S_F_NPATH] = {"avx2", "avx512", "avx512bf16"};
#else
enum { S_F_AVX2 = 0, S_F_NPATH };
static const char *const s_fpath_names[S_F_NPATH] = {"scalar"};
#endif
static int s_fpath = -1;

static int s_fpath_ok(int p) {
    if (p == S_F_AVX2) return 1;
#ifdef TD_AVX2
    __builtin_cpu_init();
    const int x512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (p == S_F_AVX512) return x512;
#ifdef TD_BFDOT
    if (p == S_F_AVX512BF16) return x512 && __builtin_cpu_supports("avx512bf16");
#endif
#endif
    return 0;
}

/* auto: the widest exact path; the lossy avx512bf16 one only when named */
static int s_fbest(void) {
#ifdef TD_AVX2
    if (s_fpath_ok(S_F_AVX512)) return S_F_AVX512;
#endif
    return S_F_AVX2;
}

static const td_cpu_paths_t s_fpaths = {.what = "CPU float kernels",
                                        .env = "TD_CPU_FLOAT_KERNELS",
                                        .choices = "auto, avx2, avx512, avx512bf16",
                                        .names = s_fpath_names,
                                        .n = S_F_NPATH,
                                        .ok = s_fpath_ok,
                                        .best = s_fbest,
                                        .cur = &s_fpath};

static int s_get_fpath(void) { return s_fpath >= 0 ? s_fpath : td_cpu_paths_get(&s_fpaths); }

int td_cpu_float_kernels_available(const char *name) {
    return td_cpu_paths_available(&s_fpaths, name);
}

int td_cpu_float_kernels_select(const char *name, td_err_t *err) {
    return td_cpu_paths_select(&s_fpaths, name, err);
}

const char *td_cpu_float_kernels_name(void) { return s_fpath_names[s_get_fpath()]; }

#ifdef TD_AVX2
/* The AVX-512 skinny product; 0 when done, -1 when the caller must run the AVX2 one (path not
 * selected, or out of memory for the bf16 activations). */
static int s_matmul_skinny16(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                             int n, size_t ldb) {
    const int p = s_get_fpath();
    if (p == S_F_AVX2) return -1;
    const int64_t rows = w->rows, cols = w->cols;
    const char *data = (const char *)w->data;
    const int nth = be->n_threads;
    if (w->dtype == TD_DTYPE_BF16) {
        /* scratch: the activations as bf16 (vdpbf16ps) or even/odd split floats (padded rows) */
        cpu_ctx_t *c = be->ctx;
        const int dot = p == S_F_AVX512BF16;
        const int64_t xld = dot ? cols : (cols + 31) & ~(int64_t)31;
        const size_t need = (size_t)n * (size_t)xld * (dot ? sizeof(uint16_t) : sizeof(float));
        if (c->xbuf_cap < need) {
            free(c->xbuf);
            c->xbuf = NULL;
            if (posix_memalign(&c->xbuf, 64, need) != 0) {
                c->xbuf = NULL, c->xbuf_cap = 0;
                s_fail(c, TD_ERR_NOMEM, "activation", need);
                return -1;
            }
            c->xbuf_cap = need;
        }
        if (dot) {
            uint16_t *xb = c->xbuf;
            for (int64_t i = 0; i < (int64_t)n * cols; i++) xb[i] = td_f32_to_bf16(x[i]);
#ifdef TD_BFDOT
            s_skinny16_bfdot(nth, y, x, xb, xld, data, ldb, rows, cols, n);
#endif
        } else {
            s_split_eo(c->xbuf, x, n, cols, xld);
            s_skinny16_bf16(nth, y, x, c->xbuf, xld, data, ldb, rows, cols, n);
        }
    } else if (w->dtype == TD_DTYPE_F16) {
        s_skinny16_f16(nth, y, x, NULL, 0, data, ldb, rows, cols, n);
    } else {
        s_skinny16_f32(nth, y, x, NULL, 0, data, ldb, rows, cols, n);
    }
    return 0;
}
#endif

/* y[t, r] = sum_c x[t, c] W[r, c] for t < n <= TD_SKINNY_MAX. Weight rows go in blocks of 4 (when
 * n splits into groups of 3: n <= 3 or n % 3 == 0) or of 2 (groups of up to 6), each block read
 * from memory once and reused from L1 for every token group; leftover rows one at a time. */
static void s_matmul_skinny(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                            int n) {
    const int64_t rows = w->rows, cols = w->cols, ld = s_ld(w);
    const size_t es = td_dtype_size(w->dtype), ldb = (size_t)ld * es;
#ifdef TD_AVX2
    if (s_matmul_skinny16(be, y, x, w, n, ldb) == 0) return;
    const int dt = w->dtype;
    const int nr = n <= 3 || n % 3 == 0 ? 4 : 2;
    const int64_t nblk = rows / nr;
#pragma omp parallel for schedule(static) if (TD_PAR(rows * cols)) num_threads(be->n_threads)
    for (int64_t b = 0; b < nblk + (rows - nblk * nr); b++) {
        /* blocks of nr rows, then the rows - nblk * nr leftover rows one by one */
        const int64_t r = b < nblk ? b * nr : nblk * nr + (b - nblk);
        const int k = b < nblk ? nr : 1;
        const char *wr = (const char *)w->data + (size_t)r * ldb;
        if (dt == TD_DTYPE_BF16) {
            if (k == 4)
                s_skinny_block(TD_DTYPE_BF16, 4, wr, ldb, x, cols, n, y, rows, r);
            else if (k == 2)
                s_skinny_block(TD_DTYPE_BF16, 2, wr, ldb, x, cols, n, y, rows, r);
            else
                s_skinny_block(TD_DTYPE_BF16, 1, wr, ldb, x, cols, n, y, rows, r);
        } else if (dt == TD_DTYPE_F16) {
            if (k == 4)
                s_skinny_block(TD_DTYPE_F16, 4, wr, ldb, x, cols, n, y, rows, r);
            else if (k == 2)
                s_skinny_block(TD_DTYPE_F16, 2, wr, ldb, x, cols, n, y, rows, r);
            else
                s_skinny_block(TD_DTYPE_F16, 1, wr, ldb, x, cols, n, y, rows, r);
        } else {
            if (k == 4)
                s_skinny_block(TD_DTYPE_F32, 4, wr, ldb, x, cols, n, y, rows, r);
            else if (k == 2)
                s_skinny_block(TD_DTYPE_F32, 2, wr, ldb, x, cols, n, y, rows, r);
            else
                s_skinny_block(TD_DTYPE_F32, 1, wr, ldb, x, cols, n, y, rows, r);
        }
    }
#else
    (void)es, (void)ldb;
#pragma omp parallel for schedule(static) if (TD_PAR(rows * cols)) num_threads(be->n_threads)
    for (int64_t r = 0; r < rows; r++)
        for (int t = 0; t < n; t++) {
            float acc = 0;
            for (int64_t c = 0; c < cols; c++) acc += s_w_at(w, r, c) * x[(int64_t)t * cols + c];
            y[(int64_t)t * rows + r] = acc;
        }
#endif
}

/* Transposed storage W^T [cols, rows] (GPT-2 Conv1D): y[t, :] = sum_c x[t, c] W^T[c, :], split
 * over column blocks of the output so each thread streams its slice of every stored row. */
static void s_matmul_skinny_t(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                              int n) {
    const int64_t rows = w->rows, cols = w->cols, ld = s_ld(w);
    const int64_t blk = 256;
    const int64_t nblk = (rows + blk - 1) / blk;
#pragma omp parallel if (TD_PAR(rows * cols * n)) num_threads(be->n_threads)
    {
        float buf[256];
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nblk; b++) {
            int64_t j0 = b * blk, nj = rows - j0 < blk ? rows - j0 : blk;
            for (int t = 0; t < n; t++) memset(y + (int64_t)t * rows + j0, 0, (size_t)nj * 4);
            for (int64_t c = 0; c < cols; c++) {
                s_load_f32(buf, w, c * ld + j0, nj);
                for (int t = 0; t < n; t++) {
                    float xv = x[(int64_t)t * cols + c];
                    float *yt = y + (int64_t)t * rows + j0;
                    for (int64_t j = 0; j < nj; j++) yt[j] += xv * buf[j];
                }
            }
        }
    }
}

/* Wide products: SGEMM directly on F32 weights; for BF16/F16 convert TD_PANEL_ROWS weight rows
 * at a time into float and SGEMM each panel. */
static int s_panel_reserve(cpu_ctx_t *c, size_t floats) {
    if (c->panel_cap >= floats) return 0;
    free(c->panel);
    c->panel = NULL;
    if (posix_memalign((void **)&c->panel, 64, floats * sizeof(float)) != 0) {
        c->panel_cap = 0;
        return -1;
    }
    c->panel_cap = floats;
    return 0;
}

/* Wide products (prefill, long verification blocks): the output columns are split into blocks of
 * TD_PANEL_ROWS, one OpenMP thread per block, each calling a single-threaded SGEMM on its block
 * (after converting it to float for BF16/F16). One thread pool only: OpenBLAS runs with one
 * thread, since its own pool and OpenMP's would fight over the same cores. */
static void s_matmul_wide(td_backend_t *be, cpu_ctx_t *cx, float *y, const float *x,
                          const td_weight_t *w, int n) {
    const int64_t rows = w->rows, cols = w->cols, ld = s_ld(w), pr = TD_PANEL_ROWS;
    const int64_t nblk = (rows + pr - 1) / pr;
    const int conv = w->dtype != TD_DTYPE_F32, nt = be->n_threads;
    if (conv && s_panel_reserve(cx, (size_t)nt * (size_t)(pr * cols))) {
        s_fail(cx, TD_ERR_NOMEM, "weight panel", (size_t)nt * (size_t)(pr * cols) * sizeof(float));
        return;
    }
    const size_t es = td_dtype_size(w->dtype);
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t r0 = b * pr, nr = rows - r0 < pr ? rows - r0 : pr;
        if (!w->transposed) {
            /* stored rows r0 .. r0+nr of [rows, cols] */
            const float *wp;
            int64_t lda;
            if (conv) {
                float *panel = cx->panel + (size_t)omp_get_thread_num() * (size_t)(pr * cols);
                for (int64_t r = 0; r < nr; r++)
                    s_load_f32(panel + r * cols, w, (r0 + r) * ld, cols);
                wp = panel, lda = cols;
            } else {
                wp = (const float *)w->data + r0 * ld, lda = ld;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)nr, (int)cols, 1.0f, x,
                        (int)cols, wp, (int)lda, 0.0f, y + r0, (int)rows);
        } else {
            /* stored [cols, rows]: the column block r0 .. r0+nr of every stored row */
            const float *wp;
            int64_t ldb;
            if (conv) {
                float *panel = cx->panel + (size_t)omp_get_thread_num() * (size_t)(pr * cols);
                for (int64_t c = 0; c < cols; c++) s_load_f32(panel + c * nr, w, c * ld + r0, nr);
                wp = panel, ldb = nr;
            } else {
                wp = (const float *)((const char *)w->data + (size_t)r0 * es), ldb = ld;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, (int)nr, (int)cols, 1.0f, x,
                        (int)cols, wp, (int)ldb, 0.0f, y + r0, (int)rows);
        }
    }
}

static void s_matmul(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                     const td_weight_t *bias, int n) {
    cpu_ctx_t *c = be->ctx;
    if (td_dtype_is_quantized(w->dtype)) { /* block-quantized weights: cpu_quant.c */
        if (c->reference)
            td_cpu_qmatmul_ref(y, x, w, bias, n);
        else if (td_cpu_qmatmul(be->n_threads, y, x, w, n) == TD_OK)
            s_add_bias(be, y, bias, n, w->rows);
        return;
    }
    if (c->reference) {
        s_matmul_ref(y, x, w, bias, n);
        return;
    }
    if (n <= TD_SKINNY_MAX) {
        if (w->transposed)
            s_matmul_skinny_t(be, y, x, w, n);
        else
            s_matmul_skinny(be, y, x, w, n);
    } else {
        s_matmul_wide(be, c, y, x, w, n);
    }
    s_add_bias(be, y, bias, n, w->rows);
}

/* --- element-wise and normalisation ------------------------------------------------------------
 */

static void s_get_rows(td_backend_t *be, float *y, const td_weight_t *t, const int32_t *ids,
                       int n) {
    if (td_dtype_is_quantized(t->dtype)) {
        td_cpu_qget_rows(y, t, ids, n);
        return;
    }
    for (int i = 0; i < n; i++) {
        if (!t->transposed)
            s_load_f32(y + (int64_t)i * t->cols, t, (int64_t)ids[i] * s_ld(t), t->cols);
        else
            for (int64_t c = 0; c < t->cols; c++)
                y[(int64_t)i * t->cols + c] = s_w_at(t, ids[i], c);
    }
}

/* Threads for an element-wise loop over work elements: 1 (and no OpenMP region at all: entering one
 * costs about a microsecond even when it runs on one thread) below TD_PAR_MIN. */
static inline int s_par_threads(const td_backend_t *be, int64_t work) {
    return TD_PAR(work) && be->n_threads > 1 ? be->n_threads : 1;
}

/* One row of rmsnorm: the sum of squares in double (each square exact), accumulated in 16 double
 * lanes over ascending 16-element steps, the lanes added pairwise, the tail sequentially; then
 * y = w * (x * inv) in float. The same arithmetic for every row, n and thread count. */
static inline void s_rmsnorm_row(float *yt, const float *xt, const float *wf, int d, float eps) {
    int i = 0;
    double ss = 0;
#ifdef TD_AVX2
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    for (; i + 16 <= d; i += 16) {
        const __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(xt + i)),
                      x1 = _mm256_cvtps_pd(_mm_loadu_ps(xt + i + 4)),
                      x2 = _mm256_cvtps_pd(_mm_loadu_ps(xt + i + 8)),
                      x3 = _mm256_cvtps_pd(_mm_loadu_ps(xt + i + 12));
        s0 = _mm256_fmadd_pd(x0, x0, s0);
        s1 = _mm256_fmadd_pd(x1, x1, s1);
        s2 = _mm256_fmadd_pd(x2, x2, s2);
        s3 = _mm256_fmadd_pd(x3, x3, s3);
    }
    const __m256d s = _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3));
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#endif
    for (; i < d; i++) ss += (double)xt[i] * xt[i];
    const float inv = (float)(1.0 / sqrt(ss / d + (double)eps));
    i = 0;
#ifdef TD_AVX2
    const __m256 iv = _mm256_set1_ps(inv);
    for (; i + 8 <= d; i += 8)
        _mm256_storeu_ps(yt + i, _mm256_mul_ps(_mm256_loadu_ps(wf + i),
                                               _mm256_mul_ps(_mm256_loadu_ps(xt + i), iv)));
#endif
    for (; i < d; i++) yt[i] = wf[i] * (xt[i] * inv);
}

static void s_rmsnorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w, int n,
                      int d, float eps) {
    const float *wf = s_vec(be, w, d, 0);
    if (!wf) return; /* out of memory: recorded for td_backend_status */
    const int nt = s_par_threads(be, (int64_t)n * d);
    if (nt == 1) {
        for (int t = 0; t < n; t++)
            s_rmsnorm_row(y + (int64_t)t * d, x + (int64_t)t * d, wf, d, eps);
        return;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < n; t++) s_rmsnorm_row(y + (int64_t)t * d, x + (int64_t)t * d, wf, d, eps);
}

static void s_layernorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                        const td_weight_t *b, int n, int d, float eps) {
    const float *wf = s_vec(be, w, d, 0), *bf = b ? s_vec(be, b, d, 1) : NULL;
    if (!wf || (b && !bf)) return; /* out of memory: recorded for td_backend_status */
#pragma omp parallel for schedule(static) if (TD_PAR((int64_t)n * d)) num_threads(be->n_threads)
    for (int t = 0; t < n; t++) {
        const float *xt = x + (int64_t)t * d;
        float *yt = y + (int64_t)t * d;
        double mean = 0, var = 0;
        for (int i = 0; i < d; i++) mean += xt[i];
        mean /= d;
        for (int i = 0; i < d; i++) var += ((double)xt[i] - mean) * ((double)xt[i] - mean);
        var /= d;
        float inv = (float)(1.0 / sqrt(var + (double)eps));
        for (int i = 0; i < d; i++)
            yt[i] = (float)((xt[i] - mean) * inv) * wf[i] + (bf ? bf[i] : 0.0f);
    }
}

/* inv_freq as HF computes it: in double, rounded to float32 */
static void s_rope_inv_freq(float *inv_freq, int half, int rot_dim, float theta) {
    for (int i = 0; i < half; i++)
        inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)rot_dim));
}

/* The cosines and sines of position p: angle = p * inv_freq in float32 (as HF), then cosf/sinf.
 * The one place they are computed, for the tables and for positions past them alike. */
static void s_rope_cs(float *cs, float *sn, const float *inv_freq, int half, int32_t p) {
    for (int i = 0; i < half; i++) {
        const float ang = (float)p * inv_freq[i];
        cs[i] = cosf(ang);
        sn[i] = sinf(ang);
    }
}

/* The table for (theta, rot_dim) covering positions [0, need), grown (and filled) as needed; NULL
 * when need is past TD_ROPE_TAB_MAXPOS or memory is short (the caller computes per position). */
static const float *s_rope_table(cpu_ctx_t *c, float theta, int rot_dim, int half,
                                 const float *inv_freq, int64_t need) {
    if (need > TD_ROPE_TAB_MAXPOS || half <= 0) return NULL;
    int k = 0;
    while (k < TD_ROPE_TABS && !(c->rope[k].tab && c->rope[k].rot_dim == rot_dim &&
                                 memcmp(&c->rope[k].theta, &theta, sizeof theta) == 0))
        k++;
    if (k == TD_ROPE_TABS) { /* a new pair: a free slot, else the next in turn */
        k = 0;
        while (k < TD_ROPE_TABS && c->rope[k].tab) k++;
        if (k == TD_ROPE_TABS) {
            k = c->rope_next;
            c->rope_next = (c->rope_next + 1) % TD_ROPE_TABS;
        }
        free(c->rope[k].tab);
        c->rope[k].tab = NULL;
        c->rope[k].theta = theta, c->rope[k].rot_dim = rot_dim, c->rope[k].cap = 0;
    }
    if (c->rope[k].cap >= need) return c->rope[k].tab;
    int64_t cap = c->rope[k].cap ? 2 * (int64_t)c->rope[k].cap : 256;
    while (cap < need) cap *= 2;
    if (cap > TD_ROPE_TAB_MAXPOS) cap = TD_ROPE_TAB_MAXPOS;
    float *t = realloc(c->rope[k].tab, (size_t)cap * 2 * (size_t)half * sizeof(float));
    if (!t) return c->rope[k].cap >= need ? c->rope[k].tab : NULL;
    for (int64_t p = c->rope[k].cap; p < cap; p++)
        s_rope_cs(t + p * 2 * half, t + p * 2 * half + half, inv_freq, half, (int32_t)p);
    c->rope[k].tab = t, c->rope[k].cap = (int)cap;
    return t;
}

/* Rotates the n_head heads of one token by the angles whose cosines and sines are cs, sn. Per
 * element a * cs - b * sn and b * cs + a * sn, two products rounded then added (no contraction),
 * in the vector and scalar parts alike. */
static inline void s_rope_token(float *x, int n_head, int head_dim, int half, int interleaved,
                                const float *cs, const float *sn) {
    if (interleaved) { /* pairs (2i, 2i + 1) */
#ifdef TD_AVX2
        /* the cosines and sines each repeated for both members of a pair */
        float c2[2 * half + 8], s2[2 * half + 8];
        for (int i = 0; i < half; i++) c2[2 * i] = c2[2 * i + 1] = cs[i];
        for (int i = 0; i < half; i++) s2[2 * i] = s2[2 * i + 1] = sn[i];
#endif
        for (int h = 0; h < n_head; h++) {
            float *v = x + (int64_t)h * head_dim;
            int i = 0;
#ifdef TD_AVX2
            for (; 2 * i + 8 <= 2 * half; i += 4) {
                const __m256 a = _mm256_loadu_ps(v + 2 * i);  /* a0 b0 a1 b1 ... */
                const __m256 sw = _mm256_permute_ps(a, 0xB1); /* b0 a0 b1 a1 ... */
                /* even lanes a * cs - b * sn, odd lanes b * cs + a * sn */
                _mm256_storeu_ps(v + 2 * i,
                                 _mm256_addsub_ps(_mm256_mul_ps(a, _mm256_loadu_ps(c2 + 2 * i)),
                                                  _mm256_mul_ps(sw, _mm256_loadu_ps(s2 + 2 * i))));
            }
#endif
            for (; i < half; i++) {
                const float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * cs[i] - b * sn[i];
                v[2 * i + 1] = b * cs[i] + a * sn[i];
            }
        }
    } else { /* rotate-half pairs (i, i + half) */
        for (int h = 0; h < n_head; h++) {
            float *v = x + (int64_t)h * head_dim;
            int i = 0;
#ifdef TD_AVX2
            for (; i + 8 <= half; i += 8) {
                const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
                const __m256 c8 = _mm256_loadu_ps(cs + i), s8 = _mm256_loadu_ps(sn + i);
                _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(a, c8), _mm256_mul_ps(b, s8)));
                _mm256_storeu_ps(v + i + half,
                                 _mm256_add_ps(_mm256_mul_ps(b, c8), _mm256_mul_ps(a, s8)));
            }
#endif
            for (; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

/* Token t of s_rope: its angles from the table, or computed when there is none. */
static inline void s_rope_pos(float *x, const int32_t *pos, int t, int n_head, int head_dim,
                              int half, int il, const float *tab, const float *inv_freq) {
    float cs[half], sn[half];
    const float *cp = cs, *sp = sn;
    if (tab)
        cp = tab + (int64_t)pos[t] * 2 * half, sp = cp + half;
    else
        s_rope_cs(cs, sn, inv_freq, half, pos[t]);
    s_rope_token(x + (int64_t)t * n_head * head_dim, n_head, head_dim, half, il, cp, sp);
}

/* RoPE with the cosines and sines of each position from the backend's table for (theta, rot_dim)
 * (filled once, by s_rope_cs, the code that computes positions past it), not per call: the same
 * values bit for bit, so a token's result depends on nothing but its position. */
static void s_rope(td_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                   int rot_dim, float theta, td_rope_layout_t layout) {
    cpu_ctx_t *c = be->ctx;
    const int half = rot_dim / 2, il = layout == TD_ROPE_INTERLEAVED;
    if (half <= 0 || n <= 0) return;
    float inv_freq[half];
    s_rope_inv_freq(inv_freq, half, rot_dim, theta);
    int64_t need = 0;
    for (int t = 0; t < n; t++) {
        if (pos[t] < 0) {
            need = INT64_MAX;
            break;
        }
        if ((int64_t)pos[t] + 1 > need) need = (int64_t)pos[t] + 1;
    }
    const float *tab = s_rope_table(c, theta, rot_dim, half, inv_freq, need);
    const int nt = s_par_threads(be, (int64_t)n * half * n_head);
    if (nt == 1) {
        for (int t = 0; t < n; t++)
            s_rope_pos(x, pos, t, n_head, head_dim, half, il, tab, inv_freq);
        return;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < n; t++) s_rope_pos(x, pos, t, n_head, head_dim, half, il, tab, inv_freq);
}

#ifdef TD_AVX2
static inline __m256 s_exp8(__m256 x);
/* silu(g) * u for 8 elements; every element of every call goes through this same arithmetic
 * (the tail of a call is padded), so an element's result does not depend on count */
static inline void s_swiglu8(float *y, const float *g, const float *u) {
    const __m256 gv = _mm256_loadu_ps(g);
    const __m256 e = s_exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                      _mm256_loadu_ps(u)));
}

#endif

static void s_swiglu(td_backend_t *be, float *y, const float *g, const float *u, int64_t count) {
#ifdef TD_AVX2
    const int64_t nb = count / 8;
    const int nt = s_par_threads(be, count);
    if (nt == 1)
        for (int64_t b = 0; b < nb; b++) s_swiglu8(y + 8 * b, g + 8 * b, u + 8 * b);
    else
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t b = 0; b < nb; b++) s_swiglu8(y + 8 * b, g + 8 * b, u + 8 * b);
    if (count > 8 * nb) {
        float gt[8] = {0}, ut[8] = {0}, yt[8];
        const size_t rest = (size_t)(count - 8 * nb);
        memcpy(gt, g + 8 * nb, rest * sizeof(float));
        memcpy(ut, u + 8 * nb, rest * sizeof(float));
        s_swiglu8(yt, gt, ut);
        memcpy(y + 8 * nb, yt, rest * sizeof(float));
    }
#else
#pragma omp parallel for schedule(static) if (TD_PAR(count)) num_threads(be->n_threads)
    for (int64_t i = 0; i < count; i++) {
        float gv = g[i];
        y[i] = gv / (1.0f + expf(-gv)) * u[i];
    }
#endif
}

static void s_gelu_tanh(td_backend_t *be, float *x, int64_t count) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for schedule(static) if (TD_PAR(count)) num_threads(be->n_threads)
    for (int64_t i = 0; i < count; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

static inline void s_add_range(float *y, const float *x, int64_t i0, int64_t i1) {
    int64_t i = i0;
#ifdef TD_AVX2
    for (; i + 32 <= i1; i += 32) {
        const __m256 a0 = _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i));
        const __m256 a1 = _mm256_add_ps(_mm256_loadu_ps(y + i + 8), _mm256_loadu_ps(x + i + 8));
        const __m256 a2 = _mm256_add_ps(_mm256_loadu_ps(y + i + 16), _mm256_loadu_ps(x + i + 16));
        const __m256 a3 = _mm256_add_ps(_mm256_loadu_ps(y + i + 24), _mm256_loadu_ps(x + i + 24));
        _mm256_storeu_ps(y + i, a0);
        _mm256_storeu_ps(y + i + 8, a1);
        _mm256_storeu_ps(y + i + 16, a2);
        _mm256_storeu_ps(y + i + 24, a3);
    }
    for (; i + 8 <= i1; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
#endif
    for (; i < i1; i++) y[i] += x[i];
}

static void s_add(td_backend_t *be, float *y, const float *x, int64_t count) {
    const int nt = s_par_threads(be, count);
    if (nt == 1) {
        s_add_range(y, x, 0, count);
        return;
    }
    /* blocks of whole 8-float steps per thread (each element is one addition anyway) */
#pragma omp parallel num_threads(nt)
    {
        const int k = omp_get_thread_num(), m = omp_get_num_threads();
        const int64_t nb = (count + 7) / 8, b0 = nb * k / m, b1 = nb * (k + 1) / m;
        s_add_range(y, x, 8 * b0, 8 * b1 < count ? 8 * b1 : count);
    }
}

static void s_scatter_rows(td_backend_t *be, float *dst, int64_t row_stride, const float *src,
                           const int64_t *idx, int n, int d) {
    for (int i = 0; i < n; i++)
        memcpy(dst + idx[i] * row_stride, src + (int64_t)i * d, (size_t)d * sizeof(float));
}

/* The f16 cache's writes: each float rounded to the nearest half (ties to even), as
 * td_f32_to_f16; vcvtps2ph rounds the same way. */
static void s_scatter_rows_f16(td_backend_t *be, uint16_t *dst, int64_t row_stride,
                               const float *src, const int64_t *idx, int n, int d) {
    (void)be;
    for (int i = 0; i < n; i++) {
        uint16_t *o = dst + idx[i] * row_stride;
        const float *x = src + (int64_t)i * d;
        int j = 0;
#ifdef TD_AVX2
        for (; j + 8 <= d; j += 8)
            _mm_storeu_si128((__m128i *)(o + j),
                             _mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; j < d; j++) o[j] = td_f32_to_f16(x[j]);
    }
}

/* --- attention ---------------------------------------------------------------------------------
 */

/* The keys a query at token t can see lie in [0, end). */
static inline int s_att_end(const td_attn_desc_t *a, int t) {
    int end = a->kv_len[a->seq[t]];
    if (a->kind == TD_ATTN_CAUSAL && a->pos[t] + 1 < end) end = a->pos[t] + 1;
    if (a->kind == TD_ATTN_BLOCK_CAUSAL) {
        int64_t e = ((int64_t)a->pos[t] / a->block_size + 1) * a->block_size;
        if (e < end) end = (int)e;
    }
    return end;
}

static inline int s_visible(const td_attn_desc_t *a, int t, int kp) {
    int qp = a->pos[t];
    switch (a->kind) {
    case TD_ATTN_CAUSAL:
        return kp <= qp;
    case TD_ATTN_BIDIR:
        return 1;
    case TD_ATTN_BLOCK_CAUSAL:
        return kp / a->block_size <= qp / a->block_size;
    default:
        return a->mask[(int64_t)t * a->mask_stride + kp] != 0;
    }
}

static inline float s_dot(const float *a, const float *b, int n) {
    int i = 0;
    float d = 0;
#ifdef TD_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    d = s_hsum(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++) d += a[i] * b[i];
    return d;
}

/* Cache element i of p: float32, or IEEE half when the cache is f16 (converted exactly). */
static inline float s_kv1(const void *p, int64_t i, int f16) {
    return f16 ? td_f16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
/* q . (n cache elements from element i of p), as s_dot */
static inline float s_dot_kv(const float *q, const void *p, int64_t i, int n, int f16) {
    if (!f16) return s_dot(q, (const float *)p + i, n);
    int k = 0;
    float d = 0;
#ifdef TD_AVX2
    const uint16_t *h = (const uint16_t *)p + i;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (; k + 16 <= n; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + k))), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k + 8),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + k + 8))), a1);
    }
    for (; k + 8 <= n; k += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + k))), a0);
    d = s_hsum(_mm256_add_ps(a0, a1));
#endif
    for (; k < n; k++) d += q[k] * s_kv1(p, i + k, f16);
    return d;
}
#ifdef TD_AVX2
static inline __attribute__((always_inline)) __m256 s_kv8(const void *p, int64_t i, int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)))
               : _mm256_loadu_ps((const float *)p + i);
}
#endif

#ifdef TD_AVX2
/* e^x for 8 floats: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to degree 7
 * (truncation error < 1e-8 relative), times 2^n built in the exponent bits. -inf gives 0. */
static inline __m256 s_exp8(__m256 x) {
    const __m256 ninf = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); /* ln2 split hi + lo */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(ninf, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* The eight sums of a[0..7] as one vector. */
static inline __m256 s_hsum8x(const __m256 *a) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* The AVX2 attention (head_dim % 8 == 0). Per query head the arithmetic is fixed: the score of a
 * key below end8 (the query's end rounded down to 8) is one accumulator over ascending 8-wide steps
 * of the head dimension, its lanes added as ((0+1)+(2+3)) + ((4+5)+(6+7)), times the scale; a key
 * from end8 on is s_dot_kv's two-accumulator sum; a vectorised softmax; each output element the
 * chain of FMAs over the keys in ascending order. (These are the operations of the earlier
 * one-query-at-a-time kernel, which scored eight keys per s_hsum8x.) What is shared is the data:
 * the queries of one KV head (its group of query heads, several tokens of a sequence) go through
 * the keys and values together, TD_ATT_CHUNK cache rows at a time (they stay in L1 while every
 * query of the item uses them), and the query heads of a token are processed three at a time, so
 * a key or value vector is loaded (and, from an f16 cache, converted) once for three queries and
 * their independent FMA chains overlap. No query's operations depend on what else shares the pass,
 * so a token's output does not depend on n, on the other tokens or on the thread count; an f16
 * cache gives bitwise what a float cache holding the same (exactly converted) values gives. */
#define TD_ATT_CHUNK 128 /* cache rows per block (a multiple of 8) */
#define TD_ATT_TOK 16    /* tokens per work item at most */

/* Scores of query qv against keys [j0, j1) into sc[j]; key j's element d is element
 * (j - jb) * ks + d of kb: floats, or halves when F16 (converted in registers, exactly). */
static inline __attribute__((always_inline)) void s_att_scores(int F16, const float *qv,
                                                               const void *kb, int64_t ks, int jb,
                                                               int j0, int j1, int end8, int hd,
                                                               float scale, float *sc) {
    const __m256 sc8 = _mm256_set1_ps(scale);
    const int jv = j1 < end8 ? j1 : end8;
    int j = j0;
    for (; j + 8 <= jv; j += 8) {
        const int64_t k0 = (int64_t)(j - jb) * ks;
        __m256 acc[8];
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += 8) {
            const __m256 q8 = _mm256_loadu_ps(qv + d);
#pragma GCC unroll 8
            for (int u = 0; u < 8; u++)
                acc[u] = _mm256_fmadd_ps(q8, s_kv8(kb, k0 + u * ks + d, F16), acc[u]);
        }
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(s_hsum8x(acc), sc8));
    }
    for (; j < j1; j++) sc[j] = s_dot_kv(qv, kb, (int64_t)(j - jb) * ks, hd, F16) * scale;
}

/* Keys (and values) this many rows ahead are prefetched: with a cold cache (the weights of the
 * layer's products pass through it between attentions) the loads otherwise wait one miss at a
 * time. */
#define TD_ATT_PF 12

/* Prefetches the hd elements from element i of p (F16: halves, else floats). */
static inline __attribute__((always_inline)) void s_att_prefetch(int F16, const void *p, int64_t i,
                                                                 int hd) {
    const char *c =
        F16 ? (const char *)((const uint16_t *)p + i) : (const char *)((const float *)p + i);
    const int nb = hd * (F16 ? 2 : 4);
    for (int o = 0; o < nb; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
    _mm_prefetch(c + nb - 1, _MM_HINT_T0); /* a row need not start on a line */
}

/* s_att_scores for NQ queries (qv[q] -> sc[q]) at once, four keys at a time: per (query, key) the
 * same accumulator over ascending 8-wide steps and the same reduction (the four-accumulator hadd
 * tree adds each one's lanes as ((0+1)+(2+3)) + ((4+5)+(6+7)), as s_hsum8x does), so the scores
 * are those of s_att_scores bit for bit; a key vector is loaded (converted) once for NQ queries. */
static inline __attribute__((always_inline)) void
s_att_scores_q(int F16, int NQ, int pf, const float *const *qv, const void *kb, int64_t ks, int jb,
               int j0, int j1, int end8, int hd, float scale, float *const *sc) {
    const __m128 sc4 = _mm_set1_ps(scale);
    const int jv = j1 < end8 ? j1 : end8;
    int j = j0;
    for (; j + 4 <= jv; j += 4) {
        const int64_t k0 = (int64_t)(j - jb) * ks;
        if (pf && j + TD_ATT_PF < j1) /* the rows TD_ATT_PF keys on, ahead of need */
            for (int u = 0; u < 4; u++) s_att_prefetch(F16, kb, k0 + (TD_ATT_PF + u) * ks, hd);
        __m256 acc[12];
#pragma GCC unroll 12
        for (int i = 0; i < NQ * 4; i++) acc[i] = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += 8) {
            __m256 kv[4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) kv[u] = s_kv8(kb, k0 + u * ks + d, F16);
#pragma GCC unroll 3
            for (int q = 0; q < NQ; q++) {
                const __m256 q8 = _mm256_loadu_ps(qv[q] + d);
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++)
                    acc[q * 4 + u] = _mm256_fmadd_ps(q8, kv[u], acc[q * 4 + u]);
            }
        }
#pragma GCC unroll 3
        for (int q = 0; q < NQ; q++) {
            const __m256 z = _mm256_hadd_ps(_mm256_hadd_ps(acc[q * 4], acc[q * 4 + 1]),
                                            _mm256_hadd_ps(acc[q * 4 + 2], acc[q * 4 + 3]));
            _mm_storeu_ps(sc[q] + j, _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(z),
                                                           _mm256_extractf128_ps(z, 1)),
                                                sc4));
        }
    }
    for (; j < j1; j++)
        for (int q = 0; q < NQ; q++)
            sc[q][j] = s_dot_kv(qv[q], kb, (int64_t)(j - jb) * ks, hd, F16) * scale;
}

/* Softmax of sc[0 .. end) in place (keys the explicit mask hides get exactly 0). 0 when every key
 * is hidden (the output is then zero). */
static inline int s_att_softmax(const td_attn_desc_t *a, int t, int end, float *sc) {
    int j;
    if (a->kind == TD_ATTN_EXPLICIT)
        for (j = 0; j < end; j++)
            if (!a->mask[(int64_t)t * a->mask_stride + j]) sc[j] = -INFINITY;
    /* the largest score (a maximum is exact in any order; NaNs are skipped, as by the scalar
     * sc[j] > mx: vmaxps returns its second operand when the first is NaN) */
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (j = 0; j + 8 <= end; j += 8) mv = _mm256_max_ps(_mm256_loadu_ps(sc + j), mv);
    float mx = -INFINITY, lanes[8];
    _mm256_storeu_ps(lanes, mv);
    for (int l = 0; l < 8; l++)
        if (lanes[l] > mx) mx = lanes[l];
    for (; j < end; j++)
        if (sc[j] > mx) mx = sc[j];
    if (mx == -INFINITY) return 0;
    const __m256 m8 = _mm256_set1_ps(mx);
    __m256 s8 = _mm256_setzero_ps();
    for (j = 0; j + 8 <= end; j += 8) {
        const __m256 e = s_exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), m8));
        _mm256_storeu_ps(sc + j, e);
        s8 = _mm256_add_ps(s8, e);
    }
    float sum = s_hsum(s8);
    for (; j < end; j++) {
        sc[j] = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mx);
        sum += sc[j];
    }
    const float inv = 1.0f / sum;
    const __m256 i8 = _mm256_set1_ps(inv);
    for (j = 0; j + 8 <= end; j += 8)
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(_mm256_loadu_ps(sc + j), i8));
    for (; j < end; j++) sc[j] *= inv;
    return 1;
}

/* For NQ queries (probabilities sc[q], outputs o[q]) and dims [d0, d0 + 8 NR): o[q] += the sum over
 * keys [j0, j1) of sc[q][j] * value row j (row j at vb + (j - jb) * vs), key by key in ascending
 * order (per output element the chain of FMAs of a single query alone: the NQ * NR chains are only
 * interleaved, so the FMA latency is hidden and a value row is loaded once for NQ queries);
 * first: o starts at zero. */
static inline __attribute__((always_inline)) void
s_att_values(int F16, int NQ, int NR, float *const *sc, const void *vb, int64_t vs, int jb, int j0,
             int j1, int d0, float *const *o, int first, int pfd) {
    __m256 acc[12];
#pragma GCC unroll 12
    for (int i = 0; i < NQ * NR; i++)
        acc[i] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(o[i / NR] + d0 + 8 * (i % NR));
    int64_t vr = (int64_t)(j0 - jb) * vs + d0;
    for (int j = j0; j < j1; j++, vr += vs) {
        if (pfd && j + TD_ATT_PF < j1) s_att_prefetch(F16, vb, vr + TD_ATT_PF * vs, pfd);
        __m256 v[8];
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++) v[r] = s_kv8(vb, vr + 8 * r, F16);
#pragma GCC unroll 3
        for (int q = 0; q < NQ; q++) {
            const __m256 p = _mm256_broadcast_ss(sc[q] + j);
#pragma GCC unroll 8
            for (int r = 0; r < NR; r++)
                acc[q * NR + r] = _mm256_fmadd_ps(p, v[r], acc[q * NR + r]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < NQ * NR; i++) _mm256_storeu_ps(o[i / NR] + d0 + 8 * (i % NR), acc[i]);
}

/* s_att_values over all hd dims for nq (1 .. 3) queries, in chunks that keep every accumulator,
 * value vector and broadcast probability in the 16 registers (a spilled accumulator would chain
 * each FMA through a store and a load): 3 queries x 24 dims, 2 x 32, 1 x 64, then 8 at a time. */
static inline __attribute__((always_inline)) void
s_att_values_q(int F16, int nq, float *const *sc, const void *vb, int64_t vs, int jb, int j0,
               int j1, int hd, float *const *o, int first, int pfd) {
    int d0 = 0;
    if (nq == 3) {
        for (; d0 + 24 <= hd; d0 += 24)
            s_att_values(F16, 3, 3, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
        if (d0 + 16 <= hd) {
            s_att_values(F16, 3, 2, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
            d0 += 16;
        }
        for (; d0 < hd; d0 += 8)
            s_att_values(F16, 3, 1, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
    } else if (nq == 2) {
        for (; d0 + 32 <= hd; d0 += 32)
            s_att_values(F16, 2, 4, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
        for (; d0 < hd; d0 += 8)
            s_att_values(F16, 2, 1, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
    } else {
        for (; d0 + 64 <= hd; d0 += 64)
            s_att_values(F16, 1, 8, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
        if (d0 + 32 <= hd) {
            s_att_values(F16, 1, 4, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
            d0 += 32;
        }
        for (; d0 < hd; d0 += 8)
            s_att_values(F16, 1, 1, sc, vb, vs, jb, j0, j1, d0, o, first, d0 ? 0 : pfd);
    }
}

/* One work item: tokens tok[0 .. nt) (all of one sequence) and the group of query heads of KV head
 * kvh, F16: an f16 cache. scr: this thread's scratch, nt * group score rows of n_ctx floats. */
static inline __attribute__((always_inline)) void
s_att_item_f(int F16, const td_attn_desc_t *a, float *out, const float *q, const void *kc,
             const void *vc, const int *tok, int nt, int kvh, float *scr) {
    const int hd = a->head_dim, nh = a->n_head, group = nh / a->n_kv_head;
    const int64_t row = (int64_t)a->n_kv_head * hd,
                  base = (int64_t)a->seq[tok[0]] * a->n_ctx * row + (int64_t)kvh * hd;
    int end[TD_ATT_TOK], live[TD_ATT_TOK * group], maxend = 0, ipf = 0;
    for (int i = 0; i < nt; i++) {
        end[i] = s_att_end(a, tok[i]);
        if (end[i] > maxend) maxend = end[i], ipf = i; /* it prefetches rows for all */
    }
    /* the rows from j0 on of kc or vc (row j0 + r at element r * row of p) */
#define TD_ATT_ROWS(cache)                                                                         \
    const int64_t ps = row;                                                                        \
    const void *p = F16 ? (const void *)((const uint16_t *)(cache) + base + (int64_t)j0 * row)     \
                        : (const void *)((const float *)(cache) + base + (int64_t)j0 * row);
    /* scores, a block of keys at a time */
    for (int j0 = 0; j0 < maxend; j0 += TD_ATT_CHUNK) {
        const int jn = j0 + TD_ATT_CHUNK < maxend ? j0 + TD_ATT_CHUNK : maxend;
        TD_ATT_ROWS(kc)
        for (int i = 0; i < nt; i++) {
            if (end[i] <= j0) continue;
            const int j1 = jn < end[i] ? jn : end[i];
            /* the token's query heads, three at a time */
            for (int g = 0; g < group; g += 3) {
                const int k = group - g < 3 ? group - g : 3;
                const float *qs[3];
                float *scs[3];
                for (int r = 0; r < k; r++) {
                    qs[r] = q + ((int64_t)tok[i] * nh + kvh * group + g + r) * hd;
                    scs[r] = scr + (size_t)(i * group + g + r) * (size_t)a->n_ctx;
                }
                if (k == 3)
                    s_att_scores_q(F16, 3, i == ipf, qs, p, ps, j0, j0, j1, end[i] & ~7, hd,
                                   a->scale, scs);
                else if (k == 2)
                    s_att_scores_q(F16, 2, i == ipf, qs, p, ps, j0, j0, j1, end[i] & ~7, hd,
                                   a->scale, scs);
                else
                    s_att_scores_q(F16, 1, i == ipf, qs, p, ps, j0, j0, j1, end[i] & ~7, hd,
                                   a->scale, scs);
            }
        }
    }
    for (int i = 0; i < nt; i++)
        for (int g = 0; g < group; g++) {
            float *sc = scr + (size_t)(i * group + g) * (size_t)a->n_ctx;
            live[i * group + g] = s_att_softmax(a, tok[i], end[i], sc);
            if (!live[i * group + g])
                memset(out + ((int64_t)tok[i] * nh + kvh * group + g) * hd, 0,
                       sizeof(float) * (size_t)hd);
        }
    /* the weighted values, a block of rows at a time */
    for (int j0 = 0; j0 < maxend; j0 += TD_ATT_CHUNK) {
        const int jn = j0 + TD_ATT_CHUNK < maxend ? j0 + TD_ATT_CHUNK : maxend;
        TD_ATT_ROWS(vc)
        for (int i = 0; i < nt; i++) {
            if (end[i] <= j0) continue;
            const int j1 = jn < end[i] ? jn : end[i];
            /* the token's live query heads, three at a time */
            float *scs[3], *os[3];
            int k = 0;
            for (int g = 0; g < group; g++) {
                if (!live[i * group + g]) continue;
                scs[k] = scr + (size_t)(i * group + g) * (size_t)a->n_ctx;
                os[k++] = out + ((int64_t)tok[i] * nh + kvh * group + g) * hd;
                if (k == 3) {
                    s_att_values_q(F16, k, scs, p, ps, j0, j0, j1, hd, os, j0 == 0,
                                   i == ipf ? hd : 0);
                    k = 0;
                }
            }
            if (k)
                s_att_values_q(F16, k, scs, p, ps, j0, j0, j1, hd, os, j0 == 0, i == ipf ? hd : 0);
        }
    }
#undef TD_ATT_ROWS
}

static void s_att_item(const td_attn_desc_t *a, float *out, const float *q, const void *kc,
                       const void *vc, const int *tok, int nt, int kvh, float *scr) {
    if (a->kv_f16)
        s_att_item_f(1, a, out, q, kc, vc, tok, nt, kvh, scr);
    else
        s_att_item_f(0, a, out, q, kc, vc, tok, nt, kvh, scr);
}

static int s_cmp_i64(const void *x, const void *y) {
    const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return a < b ? -1 : a > b;
}

/* The AVX2 attention: tokens ordered by sequence (stable), each sequence's tokens cut into
 * balanced parts of at most TD_ATT_TOK (more parts when threads would otherwise idle), one work
 * item per (part, KV head). 0 when out of memory (recorded). */
static int s_attention_avx2(td_backend_t *be, float *out, const float *q, const void *kc,
                            const void *vc, const td_attn_desc_t *a, int nthr) {
    cpu_ctx_t *c = be->ctx;
    const int n = a->n, nkv = a->n_kv_head, group = a->n_head / nkv;
    /* ints: n token indices, then up to 3 per item (start, count, kvh); items <= n * nkv */
    const size_t ineed = (size_t)n + 3 * (size_t)n * (size_t)nkv;
    if (c->ati_cap < ineed) {
        free(c->ati);
        c->ati = malloc(ineed * sizeof(int));
        if (!c->ati) {
            c->ati_cap = 0;
            s_fail(c, TD_ERR_NOMEM, "attention", ineed * sizeof(int));
            return 0;
        }
        c->ati_cap = ineed;
    }
    int *ord = c->ati, *items = c->ati + n, nitem = 0, maxtok = 1;
    int sorted = 1;
    for (int t = 1; t < n; t++)
        if (a->seq[t] < a->seq[t - 1]) sorted = 0;
    for (int t = 0; t < n; t++) ord[t] = t;
    if (!sorted) {
        int64_t *key = malloc(sizeof(int64_t) * (size_t)n);
        if (!key) {
            s_fail(c, TD_ERR_NOMEM, "attention", sizeof(int64_t) * (size_t)n);
            return 0;
        }
        for (int t = 0; t < n; t++) key[t] = ((int64_t)a->seq[t] << 32) | t;
        qsort(key, (size_t)n, sizeof *key, s_cmp_i64);
        for (int t = 0; t < n; t++) ord[t] = (int)(key[t] & 0xffffffff);
        free(key);
    }
    for (int r0 = 0; r0 < n;) {
        int r1 = r0 + 1;
        while (r1 < n && a->seq[ord[r1]] == a->seq[ord[r0]]) r1++;
        const int len = r1 - r0;
        int parts = (len + TD_ATT_TOK - 1) / TD_ATT_TOK;
        if (nthr > 1 && parts * nkv < 2 * nthr) parts = (2 * nthr + nkv - 1) / nkv;
        if (parts > len) parts = len;
        for (int p = 0, s0 = r0; p < parts; p++) {
            const int k = (r1 - s0) / (parts - p);
            if (k > maxtok) maxtok = k;
            for (int h = 0; h < nkv; h++) {
                items[3 * nitem] = s0, items[3 * nitem + 1] = k, items[3 * nitem + 2] = h;
                nitem++;
            }
            s0 += k;
        }
        r0 = r1;
    }
    const size_t per = (size_t)maxtok * group * (size_t)a->n_ctx;
    const size_t need = (size_t)nthr * per;
    if (c->att_cap < need) {
        free(c->att);
        c->att = malloc(need * sizeof(float));
        if (!c->att) {
            c->att_cap = 0;
            s_fail(c, TD_ERR_NOMEM, "attention", need * sizeof(float));
            return 0;
        }
        c->att_cap = need;
    }
    if (nthr == 1) {
        for (int it = 0; it < nitem; it++)
            s_att_item(a, out, q, kc, vc, ord + items[3 * it], items[3 * it + 1], items[3 * it + 2],
                       c->att);
        return 1;
    }
#pragma omp parallel for schedule(static) num_threads(nthr)
    for (int it = 0; it < nitem; it++)
        s_att_item(a, out, q, kc, vc, ord + items[3 * it], items[3 * it + 1], items[3 * it + 2],
                   c->att + (size_t)omp_get_thread_num() * per);
    return 1;
}
#endif

static void s_attention(td_backend_t *be, float *out, const float *q, const void *kc,
                        const void *vc, const td_attn_desc_t *a) {
    cpu_ctx_t *c = be->ctx;
    const int hd = a->head_dim, nh = a->n_head, nkv = a->n_kv_head, group = nh / nkv;
    const int64_t row = (int64_t)nkv * hd;
    int64_t work = 0;
    for (int t = 0; t < a->n; t++) work += (int64_t)a->kv_len[a->seq[t]] * nh * hd;
    int nthr = c->reference || !TD_PAR(work) ? 1 : be->n_threads;
#ifdef TD_AVX2
    if (!c->reference && hd % 8 == 0) {
        s_attention_avx2(be, out, q, kc, vc, a, nthr);
        return;
    }
#endif
    size_t need = (size_t)nthr * (size_t)a->n_ctx;
    if (c->att_cap < need) {
        free(c->att);
        c->att = malloc(need * sizeof(float));
        if (!c->att) {
            c->att_cap = 0;
            s_fail(c, TD_ERR_NOMEM, "attention", need * sizeof(float));
            return;
        }
        c->att_cap = need;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthr)
    for (int t = 0; t < a->n; t++)
        for (int h = 0; h < nh; h++) {
            float *sc = c->att + (size_t)omp_get_thread_num() * (size_t)a->n_ctx;
            const int s = a->seq[t], kvh = h / group, end = s_att_end(a, t);
            const float *qv = q + ((int64_t)t * nh + h) * hd;
            const int64_t base = (int64_t)s * a->n_ctx * row + (int64_t)kvh * hd;
            const int f16 = a->kv_f16;
            float *o = out + ((int64_t)t * nh + h) * hd;
            float mx = -INFINITY;
            for (int j = 0; j < end; j++) {
                if (!s_visible(a, t, j)) {
                    sc[j] = -INFINITY;
                    continue;
                }
                sc[j] = s_dot_kv(qv, kc, base + (int64_t)j * row, hd, f16) * a->scale;
                if (sc[j] > mx) mx = sc[j];
            }
            for (int i = 0; i < hd; i++) o[i] = 0;
            if (mx == -INFINITY) continue;
            double sum = 0;
            for (int j = 0; j < end; j++) {
                float e = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mx);
                sc[j] = e;
                sum += e;
            }
            float inv = (float)(1.0 / sum);
            for (int j = 0; j < end; j++) {
                if (sc[j] == 0.0f) continue;
                const int64_t vv = base + (int64_t)j * row;
                float p = sc[j] * inv;
                for (int i = 0; i < hd; i++) o[i] += p * s_kv1(vc, vv + i, f16);
            }
        }
}

static int s_sample(td_backend_t *be, const float *logits, int n_rows, int n_vocab,
                    const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out,
                    td_err_t *err); /* sampling section at the end of the file */

/* Float weights switch to SGEMM past TD_SKINNY_MAX rows (other summation order); quantized ones
 * take the integer path at every size (cpu_quant.c), as does the plain C reference backend. */
static int s_invariant_rows(const td_backend_t *be, td_dtype_t wdt) {
    const cpu_ctx_t *c = be->ctx;
    return c->reference || td_dtype_is_quantized(wdt) ? INT_MAX : TD_SKINNY_MAX;
}

static const struct td_backend_i s_cpu_iface = {
    .name = "cpu",
    .caps = TD_BACKEND_CAP_HOST_MEMORY | TD_BACKEND_CAP_OWN_THREADS,
    .destroy = s_destroy,
    .alloc = s_alloc,
    .free = s_free,
    .weights = s_weights,
    .free_weights = s_free_weights,
    .prepare_weight = s_prepare_weight,
    .set = s_memcpy,
    .get = s_memcpy,
    .copy = s_memcpy,
    .sync = NULL,
    .matmul = s_matmul,
    .get_rows = s_get_rows,
    .rmsnorm = s_rmsnorm,
    .layernorm = s_layernorm,
    .rope = s_rope,
    .swiglu = s_swiglu,
    .gelu_tanh = s_gelu_tanh,
    .add = s_add,
    .scatter_rows = s_scatter_rows,
    .scatter_rows_f16 = s_scatter_rows_f16,
    .attention = s_attention,
    .status = s_status,
    .sample = s_sample,
    .invariant_rows = s_invariant_rows,
};

td_backend_t *td_backend_cpu_new(int n_threads, int reference, td_err_t *err) {
    td_backend_t *be = calloc(1, sizeof *be);
    cpu_ctx_t *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        td_err_set(err, TD_ERR_NOMEM, "out of memory creating the CPU backend");
        return NULL;
    }
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    if (reference) n_threads = 1;
    c->reference = reference;
    pthread_mutex_init(&c->repack_lock, NULL);
    be->iface = &s_cpu_iface;
    be->ctx = c;
    be->n_threads = n_threads;
    snprintf(be->name, sizeof be->name, "%s", reference ? "cpu-ref" : "cpu");
    /* no omp_set_num_threads: every loop names be->n_threads. OpenBLAS's count is process-wide
     * (no per-call form in the pthread build): 1, as our OpenMP threads call it a block each */
    openblas_set_num_threads(1);
    return be;
}

/* --- sampling (td_op_sample) ------------------------------------------------------------------
 * The rows are host memory already: kernels/sampler.c's td_sample_seeded per row, the reference
 * the CUDA kernels are tested against. */

static int s_sample(td_backend_t *be, const float *logits, int n_rows, int n_vocab,
                    const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out,
                    td_err_t *err) {
    (void)be;
    return td_backend_sample_host(logits, n_rows, n_vocab, sp, seeds, out, err);
}
