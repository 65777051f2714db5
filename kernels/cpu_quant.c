/* cpu_quant.c - products on block-quantized weights for the CPU backend, with kernels chosen at
 * run time from cpuid: AVX-512 VNNI, AVX2, or plain C. No weight is ever dequantized into a copy:
 * every product reads the blocks in place.
 *
 * One arithmetic for every batch size (decode, verification blocks and prefill alike, like
 * llama.cpp's int8 activations): a float SGEMM path for wide batches would give a token other bits
 * when it shares a pass with many rows than when it is alone, and batch invariance is what makes
 * a verification pass equal to the AR steps and a served request equal to its solo run. (It is
 * also faster here: a 400-token prefill of the Q4_1 SmolLM2 took half the time of the
 * dequantize-panels-then-SGEMM path it replaced.) Each activation row is quantized to int8 per 32
 * elements (scale amax / 127, round to nearest even), with per-block sums when the weight type
 * needs them. A weight block is read as 32 unsigned bytes and per-lane scales (cpu_quant_simd.h
 * explains the arithmetic); the integer dot products are exact, and the float accumulation of an
 * output element follows one fixed order (ascending blocks, 8 lanes, one fold), whatever the batch
 * size, the grouping of rows and tokens, or the thread count: batch invariance. The scalar path
 * does the very same float operations (fmaf per lane), so the three paths agree bitwise, which the
 * tests check. Q4_1 and Q8_0 (the shipped SmolLM2 GGUF) use row tiles instead (TD_QTILE_ROWS
 * below): 16 rows unpacked once per unit for the whole batch, one fmaf per unit on its exact
 * integer sum; the same invariance and bitwise agreement hold for them.
 *
 * The SIMD functions carry target attributes; the rest of the program is built for the baseline
 * (x86-64-v3), so one binary runs on AVX2-only machines. AMX is never used (these VMs list it in
 * cpuid but fault on it). */
#include "kernels/cpu_quant.h"
#include "kernels/cpu_paths.h"

#include "kernels/quant.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TD_QX86 1
#endif

#define TD_QPAR_MIN ((int64_t)1 << 15)

/* Quantized activations of n rows: q [n][cols] int8, d [n][nu] scales (dv: each repeated 8
 * times, for 512-bit loads), per unit the int32 lane corrections (corr [n][nu][8]; offset
 * types), the integer sum of the unit's q (qsum; the Q8_0 row tiles' w + 128 correction), and
 * d * sum(q) with tokens innermost (s [nu][ns]; min types; ns >= n + 3 so 4 tokens load at
 * once). */
typedef struct td_qx {
    int64_t nu; /* 32-element units per row */
    int64_t ns;
    int8_t *q;
    float *d, *dv;
    int32_t *corr;
    int32_t *qsum; /* [n][nu] the sum of the 32 q of a unit */
    float *s;
} td_qx_t;

/* Row tiles: Q4_1 and Q8_0 (the shipped SmolLM2 GGUF's types) go through kernels that take 16
 * weight rows at a time and unpack each unit of them once for every token of the batch, so a
 * verification block costs little more than a decode step. Their arithmetic, per weight row and
 * token, differs from the other types': for each unit k in ascending order the EXACT integer sum
 * S = sum of the 32 products w * q (Q4_1: nibbles 0..15; Q8_0: signed bytes; |S| < 2^24, so
 * (float)S is exact) enters as
 *     acc = fmaf((float)S, d_w * d_x, acc);   macc = fmaf(m_w, s_x, macc)   (Q4_1)
 * and the output is acc + macc. The scalar path (s_tile_scalar) defines it; both SIMD paths
 * (cpu_quant_simd.h, "row tiles") compute S by whatever exact integer route suits them and then
 * do these very float operations, lane by lane. Rows beyond the last full tile use the scalar
 * path on every kernel path. */
#define TD_QTILE_ROWS 16
#define TD_QTILE_NT 24 /* tokens per pass over a tile (more: another pass) */
static inline int s_is_tiled(int dt) {
    return dt == TD_DTYPE_Q4_1 || dt == TD_DTYPE_Q8_0 || dt == TD_DTYPE_Q5_0 ||
           dt == TD_DTYPE_Q4_K || dt == TD_DTYPE_Q6_K;
}
/* The row tiles of Q5_0, Q4_K and Q6_K: the SIMD paths have them only in the tile layout
 * (td_cpu_qrepack, which the CPU backend applies to them on every path); in the file's rows they
 * run the scalar definition. Q6_K's unit has two scales (per 16 elements): two integer sums and
 * two fmaf per unit, halves in order. */
static inline int s_row_tile_simd(int dt) { return dt == TD_DTYPE_Q4_1 || dt == TD_DTYPE_Q8_0; }
/* the tile types with a min term (Q4_1: m; Q4_K: -(dmin * m_j)) */
static inline int s_tile_min(int dt) { return dt == TD_DTYPE_Q4_1 || dt == TD_DTYPE_Q4_K; }

/* The 16-row tile layout (TD_WLAYOUT_TILE16, made once at load by td_cpu_qrepack): the same
 * bytes as the file, regrouped so that unit k (32 elements) of 16 consecutive rows is one
 * contiguous, 64-byte-aligned block of 16 x the type's block size, already in the order the
 * kernels multiply in. Tile b, unit k is at data + (b * nu + k) * TD_T16_BYTES(dt). Within it,
 * "dword i of vector j" (64 bytes per vector) is bytes 4j .. 4j+3 of row i's quants:
 *   Q4_1 (320 B): d[16] (f16), m[16] (f16), then 4 vectors of the packed nibbles;
 *   Q8_0 (544 B): 8 vectors of the signed bytes stored + 128 (unsigned), then d[16] (f16);
 *   Q5_0 (352 B): d[16] (f16), one vector of the rows' 32 high bits (dword i = row i's qh), then
 *   4 vectors of the packed low nibbles as Q4_1;
 *   Q4_K: per super-block (8 units, 2304 B) d[16], dmin[16] (f16), the 12 scale bytes (byte c of
 *   row i at 64 + 16c + i), then 8 units of 4 nibble vectors packed as Q4_1's (elements e and
 *   e + 16 in one byte). Its unit arithmetic is Q4_1's with fw = d * sc_j, mw = -(dmin * m_j);
 *   Q6_K: per super-block (3360 B) 8 units of 384 B (4 vectors of the low 4 bits packed as
 *   Q4_1's, then 2 vectors H[p] of the high 2 bits: byte c of dword i holds, from bit 0, those of
 *   elements 4p + c, 16 + 4p + c, 4(p + 2) + c, 16 + 4(p + 2) + c), then d[16] (f16), then the 16
 *   int8 scales (scale s of row i at 16s + i).
 * The kernels then load a unit with 5 (Q4_1) or 9 (Q8_0) plain vector loads, where the file's
 * layout needs 16 row loads, a gather and a transpose per unit, and the weights stream from one
 * address range. No value changes: every path computes what it computes on the file's layout. */
#ifndef TD_T16_PF
#define TD_T16_PF 1
#endif
#define TD_T16_BYTES(dt)                                                                           \
    ((dt) == TD_DTYPE_Q8_0   ? 544                                                                 \
     : (dt) == TD_DTYPE_Q5_0 ? 352                                                                 \
     : (dt) == TD_DTYPE_Q4_K ? 288                                                                 \
     : (dt) == TD_DTYPE_Q6_K ? 420                                                                 \
                             : 320)
static inline int s_t16_bb(int dt) {
    return dt == TD_DTYPE_Q8_0   ? 34
           : dt == TD_DTYPE_Q5_0 ? 22
           : dt == TD_DTYPE_Q4_K ? 144
           : dt == TD_DTYPE_Q6_K ? 210
                                 : 20;
}

/* Offset types: the weight bytes are q and the element is d * (q - offset); the correction
 * - offset * sum(activations) goes into the integer lanes (Q4_0's row blocks) or starts the
 * integer sums (Q6_K's tiles: per 16, lanes 0 and 4). Q5_0's tiles take theirs from qsum. */
static inline int s_has_corr(int dt) { return dt == TD_DTYPE_Q4_0 || dt == TD_DTYPE_Q6_K; }
/* Min types: element = fw * q + mw; the mw term is mw * (dx * sum(activations)) = mw * s. */
static inline int s_has_min(int dt) {
    return dt == TD_DTYPE_Q4_1 || dt == TD_DTYPE_Q5_1 || dt == TD_DTYPE_Q4_K || dt == TD_DTYPE_Q5_K;
}

/* Byte offset of unit k (32 elements) in a row: where its block starts (K types: 8 units per
 * block). */
static inline size_t s_unit_off(int dt, int64_t k) { /* (the row-block types) */
    return dt == TD_DTYPE_Q5_K ? (size_t)(k >> 3) * 176 : (size_t)k * (dt == TD_DTYPE_Q4_0 ? 18 : 24);
}

/* Software prefetch distance of the kernels, in row blocks: the weights two blocks ahead
 * (a few KB) are requested while this block computes. The hardware prefetchers alone left the
 * decode products about a third slower on these VMs (bench_quant, cold weights). */
#define TD_QPF_BLOCKS 2

/* Q4_K / Q5_K sub-block j: fw = d * sc, mw = -(dmin * m). */
static inline void s_k_scales(const uint8_t *scales, int j, float d, float dmin, float *fw,
                              float *mw) {
    int sc, m;
    td_q4k_scale_min(scales, j, &sc, &m);
    *fw = d * (float)sc;
    *mw = -(dmin * (float)m);
}

static inline float s_f16p(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return td_f16_to_f32(v);
}

/* --- activations ---------------------------------------------------------------------------- */

static int s_qx_alloc(td_qx_t *xa, int n, int64_t cols, int dt) {
    memset(xa, 0, sizeof *xa);
    xa->nu = cols / 32;
    xa->ns = (n + 3 + 3) / 4 * 4;
    const size_t nu = (size_t)n * (size_t)xa->nu, qb = ((size_t)n * (size_t)cols + 63) / 64 * 64;
    const int corr = s_has_corr(dt), smin = s_has_min(dt);
    const size_t sb = smin ? ((size_t)xa->nu * (size_t)xa->ns * 4 + 63) / 64 * 64 : 0;
    size_t bytes = qb + nu * 32 + (corr ? nu * 32 : 0) + sb + 2 * ((nu * 4 + 63) / 64 * 64);
    char *p = NULL;
    if (posix_memalign((void **)&p, 64, bytes)) return -1;
    xa->q = (int8_t *)p;
    p += qb;
    xa->dv = (float *)p, p += nu * 32;
    if (corr) xa->corr = (int32_t *)p, p += nu * 32;
    if (smin) {
        xa->s = (float *)p;
        memset(p, 0, sb);
        p += sb;
    }
    xa->d = (float *)p;
    p += (nu * 4 + 63) / 64 * 64;
    xa->qsum = (int32_t *)p;
    return 0;
}

/* Row t of x into xa for weight type dt. One plain-C routine for every path (identical input). */
static void s_qx_row(td_qx_t *xa, const float *x, int t, int dt) {
    const int64_t nu = xa->nu;
    for (int64_t k = 0; k < nu; k++) {
        const float *v = x + 32 * k;
        int8_t *q = xa->q + (size_t)t * (size_t)nu * 32 + 32 * k;
        float amax = 0;
#ifdef __AVX2__ /* the same values as the plain loops below (exact max; one product, rounded) */
        const __m256 sgn = _mm256_set1_ps(-0.0f);
        const __m256 a01 = _mm256_max_ps(_mm256_andnot_ps(sgn, _mm256_loadu_ps(v)),
                                         _mm256_andnot_ps(sgn, _mm256_loadu_ps(v + 8)));
        const __m256 a23 = _mm256_max_ps(_mm256_andnot_ps(sgn, _mm256_loadu_ps(v + 16)),
                                         _mm256_andnot_ps(sgn, _mm256_loadu_ps(v + 24)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(_mm256_max_ps(a01, a23)),
                               _mm256_extractf128_ps(_mm256_max_ps(a01, a23), 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i qv[4];
        for (int j = 0; j < 4; j++) {
            const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * j), idv),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            qv[j] =
                _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127)),
                                 _mm256_set1_epi32(-127));
        }
        /* int32 -> int8 with saturating packs (values are in range), then undo their lane order */
        const __m256i p16 =
            _mm256_packs_epi16(_mm256_packs_epi32(qv[0], qv[1]), _mm256_packs_epi32(qv[2], qv[3]));
        _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(
                                              p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        /* the sums of elements 0..15 and 16..31 (exact integers, any order) */
        const __m256i h01 = _mm256_add_epi32(qv[0], qv[1]), h23 = _mm256_add_epi32(qv[2], qv[3]);
        const __m256i hs = _mm256_hadd_epi32(h01, h23); /* lane pairs: 01 01 23 23 | 01 01 23 23 */
        const __m128i h4 =
            _mm_add_epi32(_mm256_castsi256_si128(hs), _mm256_extracti128_si256(hs, 1));
        const __m128i h2 = _mm_hadd_epi32(h4, h4);
        const int sa = _mm_cvtsi128_si32(h2), sb = _mm_extract_epi32(h2, 1);
#else
        for (int i = 0; i < 32; i++) {
            const float a = fabsf(v[i]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        int lane[8] = {0};
        for (int i = 0; i < 32; i++) {
            const int qi = (int)rintf(v[i] * id); /* nearest, ties to even */
            q[i] = (int8_t)(qi > 127 ? 127 : qi < -127 ? -127 : qi);
            lane[i / 4] += q[i];
        }
        const int sa = lane[0] + lane[1] + lane[2] + lane[3],
                  sb = lane[4] + lane[5] + lane[6] + lane[7];
#endif
        const int64_t tk = (int64_t)t * nu + k;
        xa->d[tk] = d;
        xa->qsum[tk] = sa + sb;
        for (int i = 0; i < 8; i++) xa->dv[8 * tk + i] = d;
        if (xa->corr) {
            int32_t *c = xa->corr + 8 * tk;
            memset(c, 0, 32);
            if (dt == TD_DTYPE_Q6_K)
                c[0] = -32 * sa, c[4] = -32 * sb;
            else
                c[0] = -8 * (sa + sb); /* Q4_0 */
        }
        if (xa->s) xa->s[k * xa->ns + t] = d * (float)(sa + sb);
    }
}

/* --- scalar path ------------------------------------------------------------------------------ */

/* Unit k of a row as 32 integer weights (signed for Q8_0, the unsigned bytes otherwise), fw[8]
 * and mw: the values the SIMD unit loaders produce. */
static void s_unit_scalar(int dt, const uint8_t *row, int64_t k, int *w, float *fw, float *mw) {
    float f = 0;
    *mw = 0;
    switch (dt) {
    case TD_DTYPE_Q8_0: {
        const uint8_t *b = row + 34 * k;
        f = s_f16p(b);
        for (int i = 0; i < 32; i++) w[i] = (int8_t)b[2 + i];
    } break;
    case TD_DTYPE_Q4_0:
    case TD_DTYPE_Q4_1:
    case TD_DTYPE_Q5_0:
    case TD_DTYPE_Q5_1: {
        const int bb = dt == TD_DTYPE_Q4_0   ? 18
                       : dt == TD_DTYPE_Q4_1 ? 20
                       : dt == TD_DTYPE_Q5_0 ? 22
                                             : 24;
        const int has_m = dt == TD_DTYPE_Q4_1 || dt == TD_DTYPE_Q5_1;
        const int five = dt == TD_DTYPE_Q5_0 || dt == TD_DTYPE_Q5_1;
        const uint8_t *b = row + bb * k, *qh = b + (has_m ? 4 : 2), *qs = qh + (five ? 4 : 0);
        f = s_f16p(b);
        if (has_m) *mw = s_f16p(b + 2);
        uint32_t h = 0;
        if (five)
            h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
                (uint32_t)qh[3] << 24;
        for (int i = 0; i < 16; i++) {
            w[i] = (qs[i] & 15) | (int)((h >> i) & 1) << 4;
            w[i + 16] = (qs[i] >> 4) | (int)((h >> (i + 16)) & 1) << 4;
        }
    } break;
    case TD_DTYPE_Q4_K:
    case TD_DTYPE_Q5_K: {
        const int five = dt == TD_DTYPE_Q5_K, j = (int)(k & 7);
        const uint8_t *b = row + (five ? 176 : 144) * (k >> 3);
        s_k_scales(b + 4, j, s_f16p(b), s_f16p(b + 2), &f, mw);
        const uint8_t *qs = b + (five ? 48 : 16) + 32 * (j >> 1);
        for (int l = 0; l < 32; l++)
            w[l] = ((qs[l] >> (4 * (j & 1))) & 15) | (five ? ((b[16 + l] >> j) & 1) << 4 : 0);
    } break;
    default: { /* Q6_K */
        const int j = (int)(k & 7), h = j >> 2, q = j & 3;
        const uint8_t *b = row + 210 * (k >> 3);
        const float d = s_f16p(b + 208);
        const int8_t *sc = (const int8_t *)(b + 192) + 2 * j;
        const float f0 = d * (float)sc[0], f1 = d * (float)sc[1];
        for (int i = 0; i < 8; i++) fw[i] = i < 4 ? f0 : f1;
        const uint8_t *ql = b + 64 * h + 32 * (q & 1), *qh = b + 128 + 32 * h;
        for (int l = 0; l < 32; l++)
            w[l] = ((ql[l] >> (4 * (q >> 1))) & 15) | ((qh[l] >> (2 * q)) & 3) << 4;
        return;
    }
    }
    for (int i = 0; i < 8; i++) fw[i] = f;
}

static inline float s_fold8(const float *a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

static void s_block_scalar(int dt, int nr, int nt, const uint8_t *w0, size_t ldb, const td_qx_t *xa,
                           int t0, float *out) {
    const int64_t nu = xa->nu, cols = nu * 32;
    const int corr = s_has_corr(dt);               /* Q8_0 multiplies signed weights directly */
    float acc[2][16][8] = {{{0}}}, macc[16] = {0}; /* [unit parity][t * nr + r][lane] */
    for (int64_t k = 0; k < nu; k++)
        for (int r = 0; r < nr; r++) {
            int w[32];
            float fw[8], mw;
            s_unit_scalar(dt, w0 + (size_t)r * ldb, k, w, fw, &mw);
            for (int t = 0; t < nt; t++) {
                const int64_t tk = (int64_t)(t0 + t) * nu + k;
                const int8_t *q = xa->q + (t0 + t) * cols + 32 * k;
                float *a = acc[k & 1][t * nr + r];
                for (int i = 0; i < 8; i++) {
                    int32_t is = corr ? xa->corr[8 * tk + i] : 0;
                    for (int e = 4 * i; e < 4 * i + 4; e++) is += w[e] * q[e];
                    const float f = fw[i] * xa->d[tk];
                    a[i] = fmaf((float)is, f, a[i]);
                }
                if (xa->s)
                    macc[t * nr + r] = fmaf(mw, xa->s[k * xa->ns + t0 + t], macc[t * nr + r]);
            }
        }
    for (int i = 0; i < nr * nt; i++) {
        float e[8];
        for (int l = 0; l < 8; l++) e[l] = acc[0][i][l] + acc[1][i][l];
        out[i] = s_fold8(e) + macc[i];
    }
}

/* The row tiles' arithmetic for unit k of one weight row (w, fw, mw as s_unit_scalar gives them)
 * and token t: the exact integer sum (Q5_0: w - 16, Q6_K: w - 32 per half of 16 through the
 * activation sums), one fmaf with the two scales (Q6_K: two, halves in order), and the min term. */
static inline void s_tile_unit(int dt, const int *w, const float *fw, float mw, const td_qx_t *xa,
                               int t, int64_t k, float *acc, float *macc) {
    const int64_t tk = (int64_t)t * xa->nu + k;
    const int8_t *q = xa->q + tk * 32;
    if (dt == TD_DTYPE_Q6_K) {
        int32_t h0 = xa->corr[8 * tk], h1 = xa->corr[8 * tk + 4];
        for (int e = 0; e < 16; e++) h0 += w[e] * q[e], h1 += w[16 + e] * q[16 + e];
        *acc = fmaf((float)h0, fw[0] * xa->d[tk], *acc);
        *acc = fmaf((float)h1, fw[4] * xa->d[tk], *acc);
        return;
    }
    int32_t is = dt == TD_DTYPE_Q5_0 ? -16 * xa->qsum[tk] : 0;
    for (int e = 0; e < 32; e++) is += w[e] * q[e];
    *acc = fmaf((float)is, fw[0] * xa->d[tk], *acc);
    if (s_tile_min(dt)) *macc = fmaf(mw, xa->s[k * xa->ns + t], *macc);
}

/* Row tiles (see TD_QTILE_ROWS): rows r0 .. r0+nr-1 against tokens t0 .. t0+nt-1, out[t * nr +
 * i]. The definition of their arithmetic. */
static void s_tile_scalar(int dt, int nr, const uint8_t *w0, size_t ldb, const td_qx_t *xa, int t0,
                          int nt, float *out) {
    const int64_t nu = xa->nu;
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) {
            float acc = 0, macc = 0;
            for (int64_t k = 0; k < nu; k++) {
                int w[32];
                float fw[8], mw;
                s_unit_scalar(dt, w0 + (size_t)r * ldb, k, w, fw, &mw);
                s_tile_unit(dt, w, fw, mw, xa, t0 + t, k, &acc, &macc);
            }
            out[t * nr + r] = acc + macc;
        }
}

/* A "piece" of the tile layout: one unit (32 elements), or for Q4_K one super-block of 8 units
 * (its scales are shared); s_t16_bb(dt) bytes of a row in the file, 16 times that in the tile. */
static inline int s_t16_upp(int dt) { return dt == TD_DTYPE_Q4_K || dt == TD_DTYPE_Q6_K ? 8 : 1; }

/* Row i of tile piece t <-> the file's bytes of that row's piece (blk). */
static void s_t16_piece(int dt, uint8_t *t, int i, uint8_t *blk, int pack) {
#define S_MV(tp, bp) (pack ? (void)(*(tp) = *(bp)) : (void)(*(bp) = *(tp)))
    if (dt == TD_DTYPE_Q8_0) {
        for (int c = 0; c < 2; c++) S_MV(t + 512 + 2 * i + c, blk + c);
        for (int e = 0; e < 32; e++) {
            uint8_t *tp = t + 64 * (e >> 2) + 4 * i + (e & 3);
            if (pack)
                *tp = blk[2 + e] ^ 0x80;
            else
                blk[2 + e] = *tp ^ 0x80;
        }
    } else if (dt == TD_DTYPE_Q6_K) {
        for (int c = 0; c < 2; c++) S_MV(t + 3072 + 2 * i + c, blk + 208 + c);
        for (int c = 0; c < 16; c++) S_MV(t + 3104 + 16 * c + i, blk + 192 + c);
        if (!pack) memset(blk, 0, 192);
        for (int j = 0; j < 8; j++) {
            const int h = j >> 2, q = j & 3;
            uint8_t *ql = blk + 64 * h + 32 * (q & 1), *qh = blk + 128 + 32 * h, *u = t + 384 * j;
            if (pack) {
                for (int p = 0; p < 16; p++) u[64 * (p >> 2) + 4 * i + (p & 3)] = 0;
                for (int p = 0; p < 2; p++)
                    for (int c = 0; c < 4; c++) u[256 + 64 * p + 4 * i + c] = 0;
            }
            for (int e = 0; e < 32; e++) {
                const int pp = e & 15, hi = e >> 4, jj = pp >> 2, c = pp & 3;
                uint8_t *nb = u + 64 * jj + 4 * i + c, *hb = u + 256 + 64 * (jj & 1) + 4 * i + c;
                const int nsh = 4 * hi, hsh = 2 * (2 * (jj >> 1) + hi);
                const int qsh = 4 * (q >> 1), hqsh = 2 * q;
                if (pack) {
                    const int w = ((ql[e] >> qsh) & 15) | ((qh[e] >> hqsh) & 3) << 4;
                    *nb |= (uint8_t)((w & 15) << nsh);
                    *hb |= (uint8_t)((w >> 4) << hsh);
                } else {
                    const int w = ((*nb >> nsh) & 15) | ((*hb >> hsh) & 3) << 4;
                    ql[e] |= (uint8_t)((w & 15) << qsh);
                    qh[e] |= (uint8_t)((w >> 4) << hqsh);
                }
            }
        }
    } else if (dt == TD_DTYPE_Q4_K) {
        for (int c = 0; c < 2; c++) S_MV(t + 2 * i + c, blk + c), S_MV(t + 32 + 2 * i + c, blk + 2 + c);
        for (int c = 0; c < 12; c++) S_MV(t + 64 + 16 * c + i, blk + 4 + c);
        if (!pack) memset(blk + 16, 0, 128);
        for (int j = 0; j < 8; j++) /* unit j: elements e, e + 16 in one byte as Q4_1 */
            for (int p = 0; p < 16; p++) {
                uint8_t *tp = t + 256 + 256 * j + 64 * (p >> 2) + 4 * i + (p & 3);
                uint8_t *q = blk + 16 + 32 * (j >> 1);
                const int sh = 4 * (j & 1);
                if (pack)
                    *tp = (uint8_t)(((q[p] >> sh) & 15) | ((q[p + 16] >> sh) & 15) << 4);
                else
                    q[p] |= (uint8_t)((*tp & 15) << sh), q[p + 16] |= (uint8_t)((*tp >> 4) << sh);
            }
    } else {
        const int q5 = dt == TD_DTYPE_Q5_0, hdr = q5 ? 6 : 4, qoff = q5 ? 96 : 64;
        for (int c = 0; c < 2; c++) S_MV(t + 2 * i + c, blk + c);
        for (int c = 0; c < hdr - 2; c++) S_MV(t + 32 + (hdr - 2) * i + c, blk + 2 + c);
        for (int e = 0; e < 16; e++) S_MV(t + qoff + 64 * (e >> 2) + 4 * i + (e & 3), blk + hdr + e);
    }
#undef S_MV
}

int td_cpu_qrepack_fits(const td_weight_t *w) {
    return w && w->data && s_is_tiled(w->dtype) && w->layout == TD_WLAYOUT_ROWS &&
           !w->transposed && w->rows > 0 && w->rows % 16 == 0 && w->cols > 0 &&
           w->cols % (32 * s_t16_upp(w->dtype)) == 0 && (w->ld == 0 || w->ld == w->cols);
}

size_t td_cpu_qrepack_bytes(const td_weight_t *w) {
    return td_cpu_qrepack_fits(w) ? (size_t)(w->rows / 16) * (size_t)(w->cols / 32) *
                                        TD_T16_BYTES(w->dtype)
                                  : 0;
}

void *td_cpu_qrepack(const td_weight_t *w) {
    const size_t bytes = td_cpu_qrepack_bytes(w);
    void *out = NULL;
    if (!bytes || posix_memalign(&out, 64, bytes)) return NULL;
    td_cpu_qrepack_into(w, out);
    return out;
}

void td_cpu_qrepack_into(const td_weight_t *w, void *dst) {
    const int dt = w->dtype, bb = s_t16_bb(dt), upp = s_t16_upp(dt);
    const int64_t np = w->cols / 32 / upp, ntile = w->rows / 16;
    const size_t ldb = (size_t)np * (size_t)bb, tpb = (size_t)TD_T16_BYTES(dt) * (size_t)upp;
    for (int64_t b = 0; b < ntile; b++)
        for (int64_t k = 0; k < np; k++)
            for (int i = 0; i < 16; i++)
                s_t16_piece(dt, (uint8_t *)dst + (size_t)(b * np + k) * tpb, i,
                            (uint8_t *)w->data + (size_t)(16 * b + i) * ldb + (size_t)k * bb, 1);
}

/* Row r of a TD_WLAYOUT_TILE16 weight in the file's format (row: its ldb bytes). */
static void s_t16_row(const td_weight_t *w, int64_t r, uint8_t *row) {
    const int dt = w->dtype, bb = s_t16_bb(dt), upp = s_t16_upp(dt);
    const int64_t np = w->cols / 32 / upp;
    const size_t tpb = (size_t)TD_T16_BYTES(dt) * (size_t)upp;
    uint8_t *tile = (uint8_t *)w->data + (size_t)(r / 16) * (size_t)np * tpb;
    for (int64_t k = 0; k < np; k++) s_t16_piece(dt, tile + (size_t)k * tpb, (int)(r % 16), row + k * bb, 0);
}

/* s_tile_scalar on a TD_WLAYOUT_TILE16 tile (w0: its first unit): the very same operations. */
static void s_t16_scalar(int dt, const uint8_t *w0, const td_qx_t *xa, int t0, int nt,
                         float *out) {
    const int64_t nu = xa->nu;
    for (int r = 0; r < 16; r++)
        for (int t = 0; t < nt; t++) {
            float acc = 0, macc = 0;
            const int upp = s_t16_upp(dt);
            for (int64_t k = 0; k < nu; k++) {
                uint8_t blk[210];
                int w[32];
                float fw[8], mw;
                s_t16_piece(dt, (uint8_t *)w0 + (size_t)(k / upp * upp) * TD_T16_BYTES(dt), r, blk, 0);
                s_unit_scalar(dt, blk, k % upp, w, fw, &mw);
                s_tile_unit(dt, w, fw, mw, xa, t0 + t, k, &acc, &macc);
            }
            out[t * 16 + r] = acc + macc;
        }
}

/* --- SIMD paths ------------------------------------------------------------------------------- */

#ifdef TD_QX86
#define TQ_ATTR __attribute__((target("avx2,fma,f16c")))
#define TQ_FN(name) s_avx2_##name
#define TQ_VNNI 0
#include "kernels/cpu_quant_simd.h"
#undef TQ_ATTR
#undef TQ_FN
#undef TQ_VNNI

#define TQ_ATTR __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define TQ_FN(name) s_vnni_##name
#define TQ_VNNI 1
#include "kernels/cpu_quant_simd.h"
#undef TQ_ATTR
#undef TQ_FN
#undef TQ_VNNI
#endif

/* --- kernel selection ------------------------------------------------------------------------- */

typedef void (*s_block_fn)(int dt, int nr, int nt, const uint8_t *w0, size_t ldb, const td_qx_t *xa,
                           int t0, float *out);
typedef void (*s_tile_fn)(int dt, const uint8_t *w0, size_t ldb, const td_qx_t *xa, int t0, int nt,
                          float *out, const uint8_t *pf, size_t pfn);
typedef void (*s_t16_fn)(int dt, const uint8_t *w0, const td_qx_t *xa, int t0, int nt, float *out,
                         const uint8_t *pf, size_t pfn);
enum { S_SCALAR = 0, S_AVX2, S_VNNI, S_NPATH };
static const char *const s_path_names[S_NPATH] = {"scalar", "avx2", "avx512vnni"};
static int s_path = -1;

static int s_path_ok(int p) {
    if (p == S_SCALAR) return 1;
#ifdef TD_QX86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (p == S_AVX2) return avx2;
    if (p == S_VNNI)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

static int s_best(void) {
    for (int p = S_NPATH - 1; p > 0; p--)
        if (s_path_ok(p)) return p;
    return S_SCALAR;
}

static const td_cpu_paths_t s_paths = {.what = "CPU kernels",
                                       .env = "TD_CPU_KERNELS",
                                       .choices = "auto, scalar, avx2, avx512vnni",
                                       .names = s_path_names,
                                       .n = S_NPATH,
                                       .ok = s_path_ok,
                                       .best = s_best,
                                       .cur = &s_path};

static int s_get_path(void) { return s_path >= 0 ? s_path : td_cpu_paths_get(&s_paths); }

int td_cpu_kernels_available(const char *name) { return td_cpu_paths_available(&s_paths, name); }

int td_cpu_kernels_select(const char *name, td_err_t *err) {
    return td_cpu_paths_select(&s_paths, name, err);
}

const char *td_cpu_kernels_name(void) { return s_path_names[s_get_path()]; }

static void s_t16_scalar_fn(int dt, const uint8_t *w0, const td_qx_t *xa, int t0, int nt,
                            float *out, const uint8_t *pf, size_t pfn) {
    (void)pf, (void)pfn;
    s_t16_scalar(dt, w0, xa, t0, nt, out);
}

/* The kernels of path p: the row-block product (scalar when p has none), the 16-row tile
 * product (NULL when p has none) and the product on TD_WLAYOUT_TILE16 tiles. */
static void s_kernels_for(int p, s_block_fn *block, s_tile_fn *tile, s_t16_fn *t16) {
    *block = s_block_scalar;
    *tile = NULL;
    *t16 = s_t16_scalar_fn;
#ifdef TD_QX86
    if (p == S_VNNI) *block = s_vnni_block, *tile = s_vnni_tile, *t16 = s_vnni_t16;
    if (p == S_AVX2) *block = s_avx2_block, *tile = s_avx2_tile, *t16 = s_avx2_t16;
#endif
    (void)p;
}

/* --- products --------------------------------------------------------------------------------- */

static int s_check(const td_weight_t *w) {
    const int be = td_dtype_block_elems(w->dtype);
    const int64_t ld = w->ld ? w->ld : w->cols;
    if (w->layout == TD_WLAYOUT_TILE16) /* what td_cpu_qrepack makes */
        return s_is_tiled(w->dtype) && !w->transposed && w->rows % 16 == 0 && w->cols % 32 == 0 &&
               ld == w->cols;
    return w->layout == TD_WLAYOUT_ROWS && td_dtype_is_quantized(w->dtype) && !w->transposed &&
           w->cols > 0 && w->cols % be == 0 && ld % be == 0 && ld >= w->cols;
}

static size_t s_ldb(const td_weight_t *w) {
    return (size_t)td_dtype_row_bytes(w->dtype, w->ld ? w->ld : w->cols);
}

static int s_integer(int n_threads, float *y, const float *x, const td_weight_t *w, int n) {
    const int dt = w->dtype;
    const int64_t rows = w->rows, cols = w->cols;
    const size_t ldb = s_ldb(w);
    td_qx_t xa;
    if (s_qx_alloc(&xa, n, cols, dt)) return TD_ERR_NOMEM;
    for (int t = 0; t < n; t++) s_qx_row(&xa, x + (int64_t)t * cols, t, dt);
    const int path = s_get_path();
    s_block_fn fn;
    s_tile_fn tf;
    s_t16_fn t16;
    s_kernels_for(path, &fn, &tf, &t16);
    if (w->layout == TD_WLAYOUT_TILE16) {
        const int64_t ntile = rows / 16;
        const size_t tbytes = (size_t)xa.nu * TD_T16_BYTES(dt);
        const uint8_t *base = w->data;
#pragma omp parallel for schedule(static) if (rows * cols >= TD_QPAR_MIN) num_threads(n_threads)
        for (int64_t b = 0; b < ntile; b++) {
            const uint8_t *w0 = base + (size_t)b * tbytes;
            float out[16 * TD_QTILE_NT];
            for (int t0 = 0; t0 < n; t0 += TD_QTILE_NT) {
                const int nt = n - t0 < TD_QTILE_NT ? n - t0 : TD_QTILE_NT;
                /* prefetch: the next tile, during the first pass over this one */
                t16(dt, w0, &xa, t0, nt, out, w0 + TD_T16_PF * tbytes,
                    t0 == 0 && b + TD_T16_PF < ntile ? tbytes : 0);
                for (int t = 0; t < nt; t++)
                    memcpy(y + (int64_t)(t0 + t) * rows + 16 * b, out + 16 * t, 16 * sizeof(float));
            }
        }
        free(xa.q);
        return TD_OK;
    }
    if (s_is_tiled(dt)) {
        /* (the VNNI kernel gathers with 32-bit offsets up to 15 rows away) */
        const int64_t ntile =
                          tf && s_row_tile_simd(dt) && ldb < ((size_t)1 << 27) ? rows / TD_QTILE_ROWS : 0,
                      nitems = ntile + (rows - ntile * 16);
        const uint8_t *base = w->data;
        const size_t tbytes = (size_t)TD_QTILE_ROWS * ldb;
#pragma omp parallel for schedule(static) if (rows * cols >= TD_QPAR_MIN) num_threads(n_threads)
        for (int64_t b = 0; b < nitems; b++) {
            /* tiles of 16 rows, then the leftover rows one by one */
            const int64_t r = b < ntile ? TD_QTILE_ROWS * b : TD_QTILE_ROWS * ntile + (b - ntile);
            const int nr = b < ntile ? TD_QTILE_ROWS : 1;
            const uint8_t *w0 = base + (size_t)r * ldb;
            float out[TD_QTILE_ROWS * TD_QTILE_NT];
            for (int t0 = 0; t0 < n; t0 += TD_QTILE_NT) {
                const int nt = n - t0 < TD_QTILE_NT ? n - t0 : TD_QTILE_NT;
                if (b < ntile) /* prefetch: the next tile, during the first pass over this one */
                    tf(dt, w0, ldb, &xa, t0, nt, out, w0 + tbytes,
                       t0 == 0 && b + 1 < ntile ? tbytes : 0);
                else
                    s_tile_scalar(dt, nr, w0, ldb, &xa, t0, nt, out);
                for (int t = 0; t < nt; t++) /* (a 64-byte copy per token for a full tile) */
                    memcpy(y + (int64_t)(t0 + t) * rows + r, out + t * nr,
                           sizeof(float) * (size_t)nr);
            }
        }
        free(xa.q);
        return TD_OK;
    }
    /* rows x tokens per pass over a block of rows: what the path's registers hold (AVX2: 16
     * vectors, two accumulators per output; VNNI: 32) */
    const int nrb = path == S_AVX2 && n > 1 ? 2 : 4;
    const int ntmax = path == S_VNNI ? 3 : path == S_AVX2 ? 2 : 4, ng = (n + ntmax - 1) / ntmax;
    const int64_t nblk = rows / nrb, nitems = nblk + (rows - nblk * nrb);
    const uint8_t *base = w->data;
#pragma omp parallel for schedule(static) if (rows * cols >= TD_QPAR_MIN) num_threads(n_threads)
    for (int64_t b = 0; b < nitems; b++) {
        /* blocks of 4 rows, then the leftover rows one by one; tokens in pairs, then one */
        const int64_t r = b < nblk ? nrb * b : nrb * nblk + (b - nblk);
        const int nr = b < nblk ? nrb : 1;
        float out[16];
        for (int g = 0, t0 = 0; g < ng; g++) {
            const int nt = (n - t0) / (ng - g); /* balanced groups of at most ntmax tokens */
            fn(dt, nr, nt, base + (size_t)r * ldb, ldb, &xa, t0, out);
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < nr; i++) y[(int64_t)(t0 + t) * rows + r + i] = out[t * nr + i];
            t0 += nt;
        }
    }
    free(xa.q);
    return TD_OK;
}

int td_cpu_qmatmul(int n_threads, float *y, const float *x, const td_weight_t *w, int n) {
    int rc = TD_ERR_UNSUPPORTED;
    if (n <= 0) return TD_OK;
    if (s_check(w)) rc = s_integer(n_threads, y, x, w, n);
    if (rc != TD_OK) {
        td_log(TD_LOG_ERROR, "quantized matmul (%s %lldx%lld%s) failed: %s",
               td_dtype_name(w->dtype), (long long)w->rows, (long long)w->cols,
               w->transposed ? ", transposed" : "",
               rc == TD_ERR_NOMEM ? "out of memory" : "unsupported layout");
        memset(y, 0, (size_t)n * (size_t)w->rows * sizeof(float));
    }
    return rc;
}

void td_cpu_qmatmul_ref(float *y, const float *x, const td_weight_t *w, const td_weight_t *bias,
                        int n) {
    const int64_t rows = w->rows, cols = w->cols;
    float *row = malloc((size_t)cols * sizeof(float)), *bv = NULL;
    if (bias) bv = malloc((size_t)rows * sizeof(float));
    if (!row || (bias && !bv) || !s_check(w)) {
        td_log(TD_LOG_ERROR, "reference quantized matmul: unsupported layout or out of memory");
        memset(y, 0, (size_t)n * (size_t)rows * sizeof(float));
        free(row);
        free(bv);
        return;
    }
    if (bias) td_to_f32(bv, bias->data, bias->dtype, rows);
    const size_t ldb = s_ldb(w);
    uint8_t *raw = w->layout == TD_WLAYOUT_TILE16 ? malloc(ldb) : NULL;
    if (w->layout == TD_WLAYOUT_TILE16 && !raw) {
        td_log(TD_LOG_ERROR, "reference quantized matmul: out of memory");
        memset(y, 0, (size_t)n * (size_t)rows * sizeof(float));
        free(row);
        free(bv);
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)r * ldb;
        if (raw) s_t16_row(w, r, raw), src = raw;
        td_dequantize_row(w->dtype, src, row, cols);
        for (int t = 0; t < n; t++) {
            double acc = bv ? (double)bv[r] : 0.0;
            for (int64_t c = 0; c < cols; c++)
                acc += (double)x[(int64_t)t * cols + c] * (double)row[c];
            y[(int64_t)t * rows + r] = (float)acc;
        }
    }
    free(raw);
    free(row);
    free(bv);
}

void td_cpu_qget_rows(float *y, const td_weight_t *t, const int32_t *ids, int n) {
    const size_t ldb = s_ldb(t);
    for (int i = 0; i < n; i++) {
        if (!s_check(t)) {
            memset(y + (int64_t)i * t->cols, 0, (size_t)t->cols * sizeof(float));
            continue;
        }
        if (t->layout == TD_WLAYOUT_TILE16) { /* piece by piece, back in the file's format */
            const int upp = s_t16_upp(t->dtype);
            const int64_t np = t->cols / 32 / upp;
            const size_t tpb = (size_t)TD_T16_BYTES(t->dtype) * (size_t)upp;
            uint8_t *tile = (uint8_t *)t->data + (size_t)(ids[i] / 16) * (size_t)np * tpb;
            for (int64_t k = 0; k < np; k++) {
                uint8_t blk[210];
                s_t16_piece(t->dtype, tile + (size_t)k * tpb, ids[i] % 16, blk, 0);
                td_dequantize_row(t->dtype, blk, y + (int64_t)i * t->cols + 32 * upp * k, 32 * upp);
            }
            continue;
        }
        td_dequantize_row(t->dtype, (const uint8_t *)t->data + (size_t)ids[i] * ldb,
                          y + (int64_t)i * t->cols, t->cols);
    }
}
