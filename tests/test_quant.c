/* test_quant.c - GGUF block formats: dequantization against hand-decoded blocks and against the
 * gguf Python package (committed fixture), the reference quantizers, and the CPU backend's
 * quantized products on every kernel path this CPU has: against the dequantize-then-double-dot
 * reference within the bound of 8-bit activation quantization, the paths bitwise against each
 * other, and batch invariance bitwise (a token's outputs alone = inside any batch); Q4_1 and Q8_0
 * (row tiles) also bitwise against a plain-C statement of their arithmetic. */
#include "tests/tdtest.h"

#include "kernels/backend.h"
#include "kernels/cpu_quant.h"
#include "kernels/quant.h"

#include <stdlib.h>
#include <unistd.h>

static uint64_t s_rng = 0x9e3779b97f4a7c15ull;
static uint64_t s_next(void) {
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    return s_rng;
}
static float s_randf(void) {
    return (float)((double)(s_next() >> 11) / 9007199254740992.0) * 2 - 1;
}

static const td_dtype_t s_qtypes[] = {TD_DTYPE_Q8_0, TD_DTYPE_Q4_0, TD_DTYPE_Q4_1, TD_DTYPE_Q5_0,
                                      TD_DTYPE_Q5_1, TD_DTYPE_Q4_K, TD_DTYPE_Q5_K, TD_DTYPE_Q6_K};
#define NQT ((int)(sizeof s_qtypes / sizeof s_qtypes[0]))

/* Offsets of the f16 scales inside a block of type t (-1 ends). */
static const int *s_scale_offs(td_dtype_t t) {
    static const int d0[] = {0, -1}, dm[] = {0, 2, -1}, q6[] = {208, -1};
    switch (t) {
    case TD_DTYPE_Q4_1:
    case TD_DTYPE_Q5_1:
    case TD_DTYPE_Q4_K:
    case TD_DTYPE_Q5_K:
        return dm;
    case TD_DTYPE_Q6_K:
        return q6;
    default:
        return d0;
    }
}

/* nblocks random blocks: every byte random, the f16 scales random finite in +-[2^-7, 2^-3). */
static void s_random_blocks(td_dtype_t t, uint8_t *p, int64_t nblocks) {
    const size_t bb = td_dtype_block_bytes(t);
    for (int64_t b = 0; b < nblocks; b++) {
        uint8_t *blk = p + (size_t)b * bb;
        for (size_t i = 0; i < bb; i++) blk[i] = (uint8_t)s_next();
        for (const int *o = s_scale_offs(t); *o >= 0; o++) {
            float v = ldexpf(1.0f + 0.5f * (s_randf() + 1), -7 + (int)(s_next() % 4));
            if (s_next() & 1) v = -v;
            uint16_t h = td_f32_to_f16(v);
            memcpy(blk + *o, &h, 2);
        }
    }
}

TD_TEST(dequant_hand_checked_blocks) {
    float y[256];
    const uint16_t half = td_f32_to_f16(0.5f), two = td_f32_to_f16(2.0f), m1 = td_f32_to_f16(-1.0f);
    { /* Q8_0: d * q */
        td_block_q8_0 b = {half, {0}};
        b.qs[0] = -128, b.qs[31] = 127, b.qs[5] = 3;
        td_dequantize_row(TD_DTYPE_Q8_0, &b, y, 32);
        CHECK(y[0] == -64.0f && y[31] == 63.5f && y[5] == 1.5f && y[1] == 0.0f);
    }
    { /* Q4_0: element j low nibble of qs[j], j + 16 its high nibble; d * (q - 8) */
        td_block_q4_0 b = {half, {0}};
        b.qs[0] = 0x1f, b.qs[15] = 0x80;
        td_dequantize_row(TD_DTYPE_Q4_0, &b, y, 32);
        CHECK(y[0] == 3.5f && y[16] == -3.5f && y[15] == -4.0f && y[31] == 0.0f && y[1] == -4.0f);
    }
    { /* Q4_1: d * q + m */
        td_block_q4_1 b = {two, m1, {0}};
        b.qs[2] = 0xf3;
        td_dequantize_row(TD_DTYPE_Q4_1, &b, y, 32);
        CHECK(y[2] == 5.0f && y[18] == 29.0f && y[0] == -1.0f);
    }
    { /* Q5_0: bit j of qh (little-endian) is bit 4 of element j */
        td_block_q5_0 b = {half, {0x01, 0x00, 0x01, 0x80}, {0}};
        b.qs[0] = 0x2f;
        td_dequantize_row(TD_DTYPE_Q5_0, &b, y, 32);
        CHECK(y[0] == 7.5f);  /* 31 - 16 */
        CHECK(y[16] == 1.0f); /* bit 16 set: 2 | 16 = 18 -> 2 */
        CHECK(y[31] == 0.0f); /* bit 31 set: 0 | 16 -> 0 */
        CHECK(y[1] == -8.0f); /* 0 - 16 */
    }
    { /* Q5_1 */
        td_block_q5_1 b = {two, m1, {0x00, 0x00, 0x00, 0x40}, {0}};
        b.qs[14] = 0x51;
        td_dequantize_row(TD_DTYPE_Q5_1, &b, y, 32);
        CHECK(y[14] == 1.0f && y[30] == 2 * 21 - 1.0f);
    }
    { /* Q4_K: sub-block 1 = high nibbles of qs[0..31]; sub-block 5 scale/min from the packed bits
       */
        td_block_q4_k b;
        memset(&b, 0, sizeof b);
        b.d = two, b.dmin = half;
        b.scales[1] = 3;     /* sc1 = 3 */
        b.scales[5] = 4;     /* m1 = 4 */
        b.scales[9] = 0x21;  /* sc5 low 4 = 1, m5 low 4 = 2 */
        b.scales[1] |= 0x40; /* sc5 bit 4 -> sc5 = 17 */
        b.scales[5] |= 0x80; /* m5 bit 5 -> m5 = 34 */
        b.qs[0] = 0x70;      /* sub-block 0 elem 0 = 0, sub-block 1 elem 0 = 7 */
        b.qs[64 + 3] = 0x90; /* sub-block 5 elem 3 = 9 */
        td_dequantize_row(TD_DTYPE_Q4_K, &b, y, 256);
        CHECK(y[32] == 2.0f * 3 * 7 - 0.5f * 4);
        CHECK(y[5 * 32 + 3] == 2.0f * 17 * 9 - 0.5f * 34);
        CHECK(y[0] == 0.0f);
    }
    { /* Q5_K: bit j of qh[l] is bit 4 of element l of sub-block j */
        td_block_q5_k b;
        memset(&b, 0, sizeof b);
        b.d = two, b.dmin = half;
        b.scales[2] = 1; /* sc2 = 1, m2 = 0 */
        b.qh[7] = 1 << 2;
        b.qs[32 + 7] = 0x05; /* sub-block 2 elem 7 low nibble 5 */
        td_dequantize_row(TD_DTYPE_Q5_K, &b, y, 256);
        CHECK(y[64 + 7] == 2.0f * 21);
    }
    { /* Q6_K: unit 6 (half 1, quarter 2) = high nibbles of ql[64..95] | qh[32..63] bits 4-5 */
        td_block_q6_k b;
        memset(&b, 0, sizeof b);
        b.d = half;
        b.scales[12] = 4, b.scales[13] = -2;
        b.ql[64 + 1] = 0xa0, b.qh[32 + 1] = 0x20;   /* q = 10 | 2 << 4 = 42 */
        b.ql[64 + 17] = 0x00, b.qh[32 + 17] = 0x00; /* q = 0 */
        td_dequantize_row(TD_DTYPE_Q6_K, &b, y, 256);
        CHECK(y[192 + 1] == 0.5f * 4 * (42 - 32));
        CHECK(y[192 + 17] == 0.5f * -2 * (0 - 32));
    }
}

/* tests/data/quant/blocks.bin (tools/make_quant_fixtures.py): the gguf package's dequantization of
 * random blocks of every type; ours must give the same floats, and td_to_f32 too (the hook). */
TD_TEST(dequant_matches_gguf_python) {
    char path[1024], *data = NULL;
    size_t len = 0;
    td_path_join(path, sizeof path, td_test_data(), "quant/blocks.bin");
    td_err_t err = {0};
    REQUIRE(td_read_file(path, &data, &len, &err) == TD_OK);
    size_t off = 0;
    int seen = 0;
    while (off + 20 <= len) {
        char name[9] = {0};
        uint32_t nblk, bb, be;
        memcpy(name, data + off, 8);
        memcpy(&nblk, data + off + 8, 4), memcpy(&bb, data + off + 12, 4),
            memcpy(&be, data + off + 16, 4);
        off += 20;
        const int t = td_dtype_from_name(name);
        REQUIRE(t >= 0 && td_dtype_is_quantized(t));
        CHECK_EQ_INT(bb, td_dtype_block_bytes(t));
        CHECK_EQ_INT(be, td_dtype_block_elems(t));
        const size_t n = (size_t)nblk * be;
        REQUIRE(off + nblk * bb + n * 4 <= len);
        const uint8_t *blocks = (const uint8_t *)data + off;
        float *want = malloc(n * 4), *got = malloc(n * 4), *got2 = malloc(n * 4);
        memcpy(want, data + off + nblk * bb, n * 4);
        td_dequantize_row(t, blocks, got, (int64_t)n);
        td_to_f32(got2, blocks, t, (int64_t)n);
        int64_t bad = 0, first = -1;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&got[i], &want[i], 4) != 0 || memcmp(&got2[i], &want[i], 4) != 0) {
                if (first < 0) first = (int64_t)i;
                bad++;
            }
        CHECK_MSG(bad == 0, "%s: %lld of %zu elements differ from gguf's, first at %lld: %g vs %g",
                  name, (long long)bad, n, (long long)first, first >= 0 ? got[first] : 0.0,
                  first >= 0 ? want[first] : 0.0);
        free(want), free(got), free(got2);
        off += nblk * bb + n * 4;
        seen++;
    }
    CHECK_EQ_INT(seen, NQT);
    free(data);
}

/* Quantize -> dequantize stays within each type's step; the K types reproduce the shape. */
TD_TEST(quantize_roundtrip) {
    const int64_t n = 512;
    float x[512], y[512];
    uint8_t buf[512 * 2];
    for (int64_t i = 0; i < n; i++) x[i] = s_randf() * (1 + (float)(i % 7));
    for (int q = 0; q < NQT; q++) {
        const td_dtype_t t = s_qtypes[q];
        REQUIRE(td_quantize_row(t, x, buf, n) == TD_OK);
        td_dequantize_row(t, buf, y, n);
        /* per 32 elements: allowed error = the range / levels (one step), plus f16 scale rounding
         */
        const double levels = t == TD_DTYPE_Q8_0   ? 254
                              : t == TD_DTYPE_Q6_K ? 60
                              : (t == TD_DTYPE_Q5_0 || t == TD_DTYPE_Q5_1 || t == TD_DTYPE_Q5_K)
                                  ? 31
                                  : 15;
        double worst = 0;
        for (int64_t b = 0; b < n; b += 32) {
            float lo = x[b], hi = x[b];
            for (int i = 1; i < 32; i++) lo = fminf(lo, x[b + i]), hi = fmaxf(hi, x[b + i]);
            const double range = fmax(hi - lo, fmax(fabs(lo), fabs(hi)) * 2);
            for (int i = 0; i < 32; i++) {
                const double e = fabs((double)y[b + i] - x[b + i]) / (range / levels);
                if (e > worst) worst = e;
            }
        }
        /* K types fit 6-bit scales to a super-block maximum: up to two steps */
        /* Q4_0 / Q5_0 map the largest magnitude to -half: the other sign clips by up to a step */
        const double lim = t == TD_DTYPE_Q4_K || t == TD_DTYPE_Q5_K || t == TD_DTYPE_Q6_K ? 2.0
                           : t == TD_DTYPE_Q4_0 || t == TD_DTYPE_Q5_0                     ? 1.0
                                                                                          : 0.52;
        CHECK_MSG(worst <= lim, "%s: round-trip error %.3f steps (limit %.2f)", td_dtype_name(t),
                  worst, lim);
    }
    CHECK(td_quantize_row(TD_DTYPE_F32, x, buf, 32) == TD_ERR_ARG);
    CHECK(td_quantize_row(TD_DTYPE_Q4_0, x, buf, 31) == TD_ERR_ARG);
}

/* --- products -----------------------------------------------------------------------------------
 */

static const char *const s_paths[] = {"scalar", "avx2", "avx512vnni"};

/* A random quantized matrix [rows, ld] (ld elements per stored row; the product uses cols). */
static uint8_t *s_qmatrix(td_dtype_t t, int64_t rows, int64_t ld) {
    const int64_t nb = rows * (ld / td_dtype_block_elems(t));
    uint8_t *p = malloc((size_t)nb * td_dtype_block_bytes(t));
    s_random_blocks(t, p, nb);
    return p;
}

/* |y - ref| within the error 8-bit activation quantization can cause (each x off by at most
 * amax(block) / 254, times |w|) plus float rounding. */
static int s_check_bound(const float *y, const float *ref, const float *x, const float *wd,
                         int64_t rows, int64_t cols, int n, double *worst) {
    *worst = 0;
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            double bound = 0, mag = 0;
            for (int64_t b = 0; b < cols; b += 32) {
                float amax = 0;
                for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[t * cols + b + i]));
                double sw = 0;
                for (int i = 0; i < 32; i++) {
                    sw += fabs(wd[r * cols + b + i]);
                    mag += fabs(wd[r * cols + b + i] * x[t * cols + b + i]);
                }
                bound += sw * amax / 254.0;
            }
            bound = bound * 1.001 + 2e-6 * mag + 1e-30;
            const double e = fabs((double)y[t * rows + r] - ref[t * rows + r]) / bound;
            if (!(e <= *worst)) *worst = e;
        }
    return *worst <= 1.0;
}

/* Q8_0 rows quantized the reference way (the block's largest magnitude at +-127) come back bit
 * for bit when dequantized and quantized again: what lets a DFlash draft vocabulary gather a Q8_0
 * LM head's rows (drafter/dflash.c) without changing them. Scales over many binades. */
TD_TEST(q8_0_requantize_is_exact) {
    const int64_t n = 4096;
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    uint8_t *a = malloc((size_t)td_dtype_row_bytes(TD_DTYPE_Q8_0, n)),
            *b = malloc((size_t)td_dtype_row_bytes(TD_DTYPE_Q8_0, n));
    REQUIRE(x && y && a && b);
    for (int64_t i = 0; i < n; i++) x[i] = s_randf() * ldexpf(1.0f, (int)(i / 32 % 24) - 12);
    REQUIRE(td_quantize_row(TD_DTYPE_Q8_0, x, a, n) == TD_OK);
    td_dequantize_row(TD_DTYPE_Q8_0, a, y, n);
    REQUIRE(td_quantize_row(TD_DTYPE_Q8_0, y, b, n) == TD_OK);
    CHECK(!memcmp(a, b, (size_t)td_dtype_row_bytes(TD_DTYPE_Q8_0, n)));
    free(x);
    free(y);
    free(a);
    free(b);
}

TD_TEST(matmul_every_type_and_path_vs_reference) {
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(2, 0, &err), *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(be && ref);
    const int ns[] = {1, 2, 3, 5, 9, 24, 25, 40};
    const int64_t rows_s[] = {1, 7, 33, 130};
    int n_paths = 0;
    for (int p = 0; p < 3; p++) {
        if (!td_cpu_kernels_available(s_paths[p])) {
            printf("  (kernels %s not available on this CPU: skipped)\n", s_paths[p]);
            continue;
        }
        n_paths++;
        REQUIRE(td_cpu_kernels_select(s_paths[p], &err) == TD_OK);
        CHECK_STR(td_cpu_kernels_name(), s_paths[p]);
        for (int q = 0; q < NQT; q++) {
            const td_dtype_t t = s_qtypes[q];
            const int be_ = td_dtype_block_elems(t);
            const int64_t cols = be_ == 32 ? 160 : 512;
            for (int s = 0; s < 4; s++)
                for (int sl = 0; sl < 2; sl++) {
                    const int64_t rows = rows_s[s], ld = cols + (sl ? be_ : 0);
                    uint8_t *wq = s_qmatrix(t, rows, ld);
                    td_weight_t w = {wq, t, rows, cols, 0, sl ? ld : 0, 0};
                    float *wd = malloc((size_t)(rows * cols) * 4);
                    for (int64_t r = 0; r < rows; r++)
                        td_dequantize_row(t, wq + (size_t)r * td_dtype_row_bytes(t, ld),
                                          wd + r * cols, cols);
                    const int nmax = 40;
                    float *x = malloc((size_t)(nmax * cols) * 4);
                    for (int64_t i = 0; i < nmax * cols; i++) x[i] = s_randf() * (1 + i % 3);
                    float *y = malloc((size_t)(nmax * rows) * 4),
                          *yr = malloc((size_t)(nmax * rows) * 4);
                    for (int ni = 0; ni < (int)(sizeof ns / sizeof ns[0]); ni++) {
                        const int n = ns[ni];
                        td_op_matmul(be, y, x, &w, NULL, n);
                        td_op_matmul(ref, yr, x, &w, NULL, n);
                        double worst;
                        int ok;
                        ok = s_check_bound(y, yr, x, wd, rows, cols, n, &worst);
                        CHECK_MSG(ok, "%s %s %lldx%lld ld %lld n=%d: error %.3g of the bound",
                                  s_paths[p], td_dtype_name(t), (long long)rows, (long long)cols,
                                  (long long)ld, n, worst);
                    }
                    free(wq), free(wd), free(x), free(y), free(yr);
                }
        }
    }
    CHECK(n_paths >= 1);
    td_cpu_kernels_select("auto", &err);
    /* bias with a quantized weight, fast and reference */
    {
        const int64_t rows = 9, cols = 64;
        uint8_t *wq = s_qmatrix(TD_DTYPE_Q8_0, rows, cols);
        float bias[9], x[64], y[9], y2[9], yr[9], yr2[9];
        for (int i = 0; i < 9; i++) bias[i] = (float)i;
        for (int i = 0; i < 64; i++) x[i] = s_randf();
        td_weight_t w = {wq, TD_DTYPE_Q8_0, rows, cols, 0, 0, 0},
                    b = {bias, TD_DTYPE_F32, 1, rows, 0, 0, 0};
        td_op_matmul(be, y, x, &w, &b, 1);
        td_op_matmul(be, y2, x, &w, NULL, 1);
        td_op_matmul(ref, yr, x, &w, &b, 1);
        td_op_matmul(ref, yr2, x, &w, NULL, 1);
        for (int i = 0; i < 9; i++) {
            CHECK(y[i] == y2[i] + bias[i]);
            CHECK_NEAR(yr[i] - yr2[i], bias[i], 1e-5 * (1 + fabs(yr2[i])));
        }
        free(wq);
    }
    td_backend_destroy(&be);
    td_backend_destroy(&ref);
}

/* The kernel paths agree bitwise (same integer dot products, same float operations), and every
 * token's outputs are bitwise the same alone as in any batch up to 24, on 1 or 2 threads. */
TD_TEST(matmul_paths_bitwise_and_batch_invariant) {
    td_err_t err = {0};
    td_backend_t *b2 = td_backend_cpu_new(2, 0, &err), *b1 = td_backend_cpu_new(1, 0, &err);
    REQUIRE(b2 && b1);
    for (int q = 0; q < NQT; q++) {
        const td_dtype_t t = s_qtypes[q];
        const int64_t rows = 67, cols = td_dtype_block_elems(t) == 32 ? 96 : 256;
        uint8_t *wq = s_qmatrix(t, rows, cols);
        td_weight_t w = {wq, t, rows, cols, 0, 0, 0};
        const int nmax = 40; /* past TD_SKINNY_MAX: prefill batches take the same arithmetic */
        float *x = malloc((size_t)(nmax * cols) * 4);
        for (int64_t i = 0; i < nmax * cols; i++) x[i] = s_randf();
        float *yb = malloc((size_t)(nmax * rows) * 4), *y1 = malloc((size_t)(nmax * rows) * 4),
              *yp = malloc((size_t)(nmax * rows) * 4);
        int have_first = 0;
        for (int p = 0; p < 3; p++) {
            if (!td_cpu_kernels_available(s_paths[p])) continue;
            REQUIRE(td_cpu_kernels_select(s_paths[p], &err) == TD_OK);
            /* each token alone, on one thread */
            for (int tk = 0; tk < nmax; tk++)
                td_op_matmul(b1, y1 + tk * rows, x + tk * cols, &w, NULL, 1);
            for (int n = 2; n <= nmax; n++) {
                /* tokens 0..n-1 as one batch, and a batch that starts at token nmax - n */
                td_op_matmul(b2, yb, x, &w, NULL, n);
                CHECK_MSG(!memcmp(yb, y1, (size_t)(n * rows) * 4),
                          "%s %s: a batch of %d differs from one token at a time", s_paths[p],
                          td_dtype_name(t), n);
                td_op_matmul(b2, yb, x + (nmax - n) * cols, &w, NULL, n);
                CHECK_MSG(!memcmp(yb, y1 + (nmax - n) * rows, (size_t)(n * rows) * 4),
                          "%s %s: a shifted batch of %d differs", s_paths[p], td_dtype_name(t), n);
            }
            if (!have_first) {
                memcpy(yp, y1, (size_t)(nmax * rows) * 4);
                have_first = 1;
            } else {
                CHECK_MSG(!memcmp(yp, y1, (size_t)(nmax * rows) * 4),
                          "%s %s: not bitwise equal to the scalar path", s_paths[p],
                          td_dtype_name(t));
            }
        }
        free(wq), free(x), free(yb), free(y1), free(yp);
    }
    td_cpu_kernels_select("auto", &err);
    td_backend_destroy(&b2);
    td_backend_destroy(&b1);
}

/* Q4_1, Q8_0 and Q5_0 skinny products (cpu_quant.c, "row tiles"), written out here from their
 * definition: activations to int8 per 32 (d = amax / 127, nearest even), per unit the exact
 * integer sum S of the 32 products, acc = fmaf(S, d_w * d_x, acc), Q4_1's min term
 * macc = fmaf(m_w, d_x * sum(q), macc), out = acc + macc. Every kernel path must give these bits
 * for full tiles of 16 rows, leftover rows, a zero activation unit, and more tokens than one pass
 * over a tile takes (40 > 24). */
static float s_tile_def(td_dtype_t t, const uint8_t *row, const float *x, int64_t cols) {
    float acc = 0, macc = 0;
    for (int64_t k = 0; k < cols / 32; k++) {
        const float *v = x + 32 * k;
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
        const float dx = amax / 127.0f, id = dx > 0 ? 1.0f / dx : 0.0f;
        int32_t sum = 0, sq = 0, s6[2] = {0, 0};
        uint16_t h;
        for (int i = 0; i < 32; i++) {
            int q = (int)rintf(v[i] * id);
            q = q > 127 ? 127 : q < -127 ? -127 : q;
            int w;
            if (t == TD_DTYPE_Q6_K) { /* 6 bits (4 from ql, 2 from qh) - 32, per half of 16 */
                const uint8_t *b = row + 210 * (k / 8);
                const int j = (int)(k % 8), hh = j >> 2, qq = j & 3;
                w = ((b[64 * hh + 32 * (qq & 1) + i] >> (4 * (qq >> 1))) & 15) |
                    ((b[128 + 32 * hh + i] >> (2 * qq)) & 3) << 4;
                s6[i >> 4] += (w - 32) * q;
                continue;
            }
            if (t == TD_DTYPE_Q8_0)
                w = (int8_t)row[34 * k + 2 + i];
            else if (t == TD_DTYPE_Q5_0) { /* d, qh (32 bits), 16 bytes of nibbles; w - 16 */
                const uint8_t *b = row + 22 * k;
                const uint32_t qh = b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 |
                                    (uint32_t)b[5] << 24;
                w = (i < 16 ? b[6 + i] & 15 : b[6 + i - 16] >> 4) | (int)((qh >> i) & 1) << 4;
                w -= 16;
            } else if (t == TD_DTYPE_Q4_K) /* sub-block k % 8 of super-block k / 8 */
                w = (row[144 * (k / 8) + 16 + 32 * (k % 8 / 2) + i] >> (4 * (k % 2))) & 15;
            else
                w = i < 16 ? row[20 * k + 4 + i] & 15 : row[20 * k + 4 + i - 16] >> 4;
            sum += w * q, sq += q;
        }
        if (t == TD_DTYPE_Q6_K) { /* f = d * scale of the half; the halves in order */
            const uint8_t *b = row + 210 * (k / 8);
            uint16_t hd;
            memcpy(&hd, b + 208, 2);
            const int8_t *sc = (const int8_t *)(b + 192) + 2 * (k % 8);
            acc = fmaf((float)s6[0], td_f16_to_f32(hd) * (float)sc[0] * dx, acc);
            acc = fmaf((float)s6[1], td_f16_to_f32(hd) * (float)sc[1] * dx, acc);
            continue;
        }
        if (t == TD_DTYPE_Q4_K) { /* fw = d * sc, mw = -(dmin * m) */
            const uint8_t *b = row + 144 * (k / 8);
            uint16_t hd, hm;
            int sc, m;
            memcpy(&hd, b, 2), memcpy(&hm, b + 2, 2);
            td_q4k_scale_min(b + 4, (int)(k % 8), &sc, &m);
            acc = fmaf((float)sum, td_f16_to_f32(hd) * (float)sc * dx, acc);
            macc = fmaf(-(td_f16_to_f32(hm) * (float)m), dx * (float)sq, macc);
            continue;
        }
        memcpy(&h, row + (t == TD_DTYPE_Q8_0 ? 34 : t == TD_DTYPE_Q5_0 ? 22 : 20) * k, 2);
        acc = fmaf((float)sum, td_f16_to_f32(h) * dx, acc);
        if (t == TD_DTYPE_Q4_1) {
            memcpy(&h, row + 20 * k + 2, 2);
            macc = fmaf(td_f16_to_f32(h), dx * (float)sq, macc);
        }
    }
    return acc + macc;
}

TD_TEST(row_tiles_match_their_definition) {
    const td_dtype_t types[5] = {TD_DTYPE_Q4_1, TD_DTYPE_Q8_0, TD_DTYPE_Q5_0, TD_DTYPE_Q4_K,
                                 TD_DTYPE_Q6_K};
    const int64_t rows = 37, cols = 128, ld = 160; /* 2 tiles + 5 rows; rows padded in memory */
    const int n = 40;
    float *x = malloc((size_t)(n * cols) * 4), *y = malloc((size_t)(n * rows) * 4);
    REQUIRE(x && y);
    for (int64_t i = 0; i < n * cols; i++) x[i] = s_randf() * (float)(1 + i % 5);
    for (int i = 0; i < 32; i++) x[3 * cols + 64 + i] = 0; /* token 3, unit 2: all zero */
    x[5 * cols + 7] = 1e4f;                                /* a unit dominated by one element */
    td_err_t err = {0};
    int n_paths = 0;
    for (int q = 0; q < 3; q++) /* (Q4_K: 256-column rows, the layout test below) */ {
        const td_dtype_t t = types[q];
        uint8_t *wq = s_qmatrix(t, rows, ld);
        const size_t ldb = (size_t)td_dtype_row_bytes(t, ld);
        td_weight_t w = {wq, t, rows, cols, 0, ld, 0};
        for (int p = 0; p < 3; p++) {
            if (!td_cpu_kernels_available(s_paths[p])) continue;
            REQUIRE(td_cpu_kernels_select(s_paths[p], &err) == TD_OK);
            n_paths++;
            memset(y, 0xff, (size_t)(n * rows) * 4);
            REQUIRE(td_cpu_qmatmul(2, y, x, &w, n) == TD_OK);
            int bad = 0;
            for (int tk = 0; tk < n; tk++)
                for (int64_t r = 0; r < rows; r++) {
                    const float want = s_tile_def(t, wq + (size_t)r * ldb, x + tk * cols, cols);
                    if (memcmp(&want, &y[tk * rows + r], 4) && bad++ < 3)
                        printf("    %s %s token %d row %lld: %.9g, definition %.9g\n", s_paths[p],
                               td_dtype_name(t), tk, (long long)r, y[tk * rows + r], want);
                }
            CHECK_MSG(!bad, "%s %s: %d outputs differ from the definition", s_paths[p],
                      td_dtype_name(t), bad);
        }
        free(wq);
    }
    CHECK(n_paths >= 2);
    td_cpu_kernels_select("auto", &err);
    free(x), free(y);
}

/* The 16-row tile layout the CPU backend loads Q4_1 / Q8_0 / Q5_0 / Q4_K / Q6_K matrices in
 * (td_cpu_qrepack): every
 * path gives bitwise what it gives on the file's rows (products for batches of 1 .. 40 tokens,
 * the embedding lookup, the reference), and every path equals the definition there too. */
TD_TEST(tile16_layout_gives_the_same_bits) {
    const td_dtype_t types[5] = {TD_DTYPE_Q4_1, TD_DTYPE_Q8_0, TD_DTYPE_Q5_0, TD_DTYPE_Q4_K,
                                 TD_DTYPE_Q6_K};
    const int64_t rows = 48, cols = 1536; /* 3 tiles, 48 units a row (an FFN down product) */
    const int ns[] = {1, 2, 3, 4, 5, 7, 9, 16, 24, 25, 40};
    float *x = malloc((size_t)(40 * cols) * 4), *y0 = malloc((size_t)(5 * cols) * 4),
          *y1 = malloc((size_t)(5 * cols) * 4); /* (5 looked-up rows > 40 x 48 outputs) */
    REQUIRE(x && y0 && y1);
    for (int64_t i = 0; i < 40 * cols; i++) x[i] = s_randf() * (float)(1 + i % 7);
    td_err_t err = {0};
    for (int q = 0; q < 5; q++) {
        const td_dtype_t t = types[q];
        uint8_t *wq = s_qmatrix(t, rows, cols);
        const size_t ldb = (size_t)td_dtype_row_bytes(t, cols);
        const td_weight_t w = {.data = wq, .dtype = t, .rows = rows, .cols = cols};
        CHECK(td_cpu_qrepack_fits(&w));
        td_weight_t odd = w;
        odd.rows = 40; /* not whole tiles: stays in rows */
        CHECK(!td_cpu_qrepack_fits(&odd) && !td_cpu_qrepack(&odd));
        void *tp = td_cpu_qrepack(&w);
        REQUIRE(tp);
        td_weight_t wt = w;
        wt.data = tp, wt.layout = TD_WLAYOUT_TILE16;
        CHECK(!td_cpu_qrepack_fits(&wt)); /* never twice */
        for (int p = 0; p < 3; p++) {
            if (!td_cpu_kernels_available(s_paths[p])) continue;
            REQUIRE(td_cpu_kernels_select(s_paths[p], &err) == TD_OK);
            for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
                const int n = ns[k];
                if (p == 0 && n > 9) continue; /* the scalar path is slow */
                memset(y0, 0xff, (size_t)(n * rows) * 4);
                memset(y1, 0x7f, (size_t)(n * rows) * 4);
                REQUIRE(td_cpu_qmatmul(2, y0, x, &w, n) == TD_OK);
                REQUIRE(td_cpu_qmatmul(2, y1, x, &wt, n) == TD_OK);
                CHECK_MSG(!memcmp(y0, y1, (size_t)(n * rows) * 4),
                          "%s %s n=%d: the tile layout changed the products", s_paths[p],
                          td_dtype_name(t), n);
                if (n == 9) { /* and both are the definition */
                    int bad = 0;
                    for (int tk = 0; tk < n; tk++)
                        for (int64_t r = 0; r < rows; r++) {
                            const float want = s_tile_def(t, wq + r * ldb, x + tk * cols, cols);
                            bad += memcmp(&want, &y1[tk * rows + r], 4) != 0;
                        }
                    CHECK_MSG(!bad, "%s %s: %d outputs differ from the definition", s_paths[p],
                              td_dtype_name(t), bad);
                }
            }
        }
        td_cpu_kernels_select("auto", &err);
        int32_t ids[5] = {0, 17, 47, 16, 31};
        td_cpu_qget_rows(y0, &w, ids, 5);
        td_cpu_qget_rows(y1, &wt, ids, 5);
        CHECK_MSG(!memcmp(y0, y1, (size_t)(5 * cols) * 4), "%s: lookups differ",
                  td_dtype_name(t));
        td_cpu_qmatmul_ref(y0, x, &w, NULL, 3);
        td_cpu_qmatmul_ref(y1, x, &wt, NULL, 3);
        CHECK_MSG(!memcmp(y0, y1, (size_t)(3 * rows) * 4), "%s: references differ",
                  td_dtype_name(t));
        free(tp);
        free(wq);
    }
    free(x), free(y0), free(y1);
}

TD_TEST(kernel_selection) {
    td_err_t err = {0};
    CHECK(td_cpu_kernels_available("scalar"));
    CHECK(td_cpu_kernels_select("nonsense", &err) == TD_ERR_ARG);
    CHECK(strstr(err.msg, "nonsense") != NULL);
    CHECK(td_cpu_kernels_select("scalar", &err) == TD_OK);
    CHECK_STR(td_cpu_kernels_name(), "scalar");
    CHECK(td_cpu_kernels_select("auto", &err) == TD_OK);
    printf("  kernels in use: %s\n", td_cpu_kernels_name());
}

/* Helper case for the next one: prints the kernels chosen at first use (run alone). */
TD_TEST(print_kernels) { printf("  kernels in use: %s\n", td_cpu_kernels_name()); }

/* TD_CPU_KERNELS forces a path in a fresh process; an unknown or unavailable name falls back to
 * the best the CPU has. */
TD_TEST(env_var_selects_kernels) {
    char self[1024], cmd[1400], out[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(len > 0);
    self[len] = 0;
    for (int p = 0; p < 3; p++) {
        if (!td_cpu_kernels_available(s_paths[p])) continue;
        snprintf(cmd, sizeof cmd, "TD_CPU_KERNELS=%s '%s' print_kernels", s_paths[p], self);
        CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
        char want[64];
        snprintf(want, sizeof want, "kernels in use: %s\n", s_paths[p]);
        CHECK_MSG(strstr(out, want) != NULL, "%s gave: %s", cmd, out);
    }
    snprintf(cmd, sizeof cmd, "TD_CPU_KERNELS=bogus TD_LOG=error '%s' print_kernels", self);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    const char *best = td_cpu_kernels_available("avx512vnni") ? "avx512vnni"
                       : td_cpu_kernels_available("avx2")     ? "avx2"
                                                              : "scalar";
    CHECK_MSG(strstr(out, best) != NULL, "bogus name gave: %s (want %s)", out, best);
}

TD_TEST(get_rows_quantized) {
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err), *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(be && ref);
    for (int q = 0; q < NQT; q++) {
        const td_dtype_t t = s_qtypes[q];
        const int64_t rows = 11, cols = td_dtype_block_elems(t) == 32 ? 64 : 256;
        uint8_t *wq = s_qmatrix(t, rows, cols);
        td_weight_t w = {wq, t, rows, cols, 0, 0, 0};
        const int32_t ids[3] = {10, 0, 4};
        float y[3 * 256], yr[3 * 256], want[256];
        td_op_get_rows(be, y, &w, ids, 3);
        td_op_get_rows(ref, yr, &w, ids, 3);
        for (int i = 0; i < 3; i++) {
            td_dequantize_row(t, wq + (size_t)ids[i] * td_dtype_row_bytes(t, cols), want, cols);
            CHECK(!memcmp(y + i * cols, want, (size_t)cols * 4));
            CHECK(!memcmp(yr + i * cols, want, (size_t)cols * 4));
        }
        free(wq);
    }
    td_backend_destroy(&be);
    td_backend_destroy(&ref);
}

TD_TEST_MAIN()
