/* test_backend.c - every fast CPU kernel against the reference mode, at odd shapes and all weight
 * dtypes (the test-backend-ops idea: same op, two implementations, compared with atol + rtol). */
#include "tests/tdtest.h"

#include "kernels/backend.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TD_ASAN 1
#endif
#endif

static uint64_t s_rng = 88172645463325252ull;
static float s_randf(void) {
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    return (float)((double)(s_rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static void *s_make_weight(td_dtype_t dt, int64_t count) {
    void *p = malloc((size_t)count * td_dtype_size(dt));
    for (int64_t i = 0; i < count; i++) {
        float v = s_randf();
        if (dt == TD_DTYPE_F32)
            ((float *)p)[i] = v;
        else if (dt == TD_DTYPE_BF16)
            ((uint16_t *)p)[i] = td_f32_to_bf16(v);
        else
            ((uint16_t *)p)[i] = td_f32_to_f16(v);
    }
    return p;
}

/* max |a-b| / (atol + rtol |b|) <= 1 */
static int s_close(const float *a, const float *b, int64_t n, double atol, double rtol,
                   double *worst) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (atol + rtol * fabs((double)b[i]));
        if (!(e <= w)) w = e; /* NaN propagates as failure */
    }
    *worst = w;
    return w <= 1.0;
}

/* The fast matmul against the reference at every dtype, odd shapes and token counts. Tolerance
 * atol_per_sqrt_col * sqrt(cols) + rtol |want| (the lossy bf16-activation path needs more than the
 * exact ones' 1e-5 / 1e-4). */
static void s_check_matmul(double atol_per_sqrt_col, double rtol, const char *label) {
    td_err_t err = {0};
    td_backend_t *fast = td_backend_cpu_new(2, 0, &err), *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(fast && ref);
    const td_dtype_t dts[] = {TD_DTYPE_F32, TD_DTYPE_BF16, TD_DTYPE_F16};
    /* every skinny token count (each 4-row and 2-row grouping, both leftovers) and two wide ones */
    const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24, 25, 40};
    const int64_t shapes[][2] = {{7, 5}, {33, 64}, {130, 257}, {300, 96}};
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 4; s++)
            for (int tr = 0; tr < 2; tr++)
                for (int ni = 0; ni < (int)(sizeof ns / sizeof ns[0]); ni++) {
                    int64_t rows = shapes[s][0], cols = shapes[s][1];
                    int n = ns[ni];
                    /* a column slice of a wider stored matrix exercises ld */
                    int64_t ld = (tr ? rows : cols) + 3;
                    int64_t stored = (tr ? cols : rows) * ld;
                    void *wd = s_make_weight(dts[d], stored);
                    void *bd = s_make_weight(dts[d], rows);
                    td_weight_t w = {wd, dts[d], rows, cols, tr, ld, 0};
                    td_weight_t b = {bd, dts[d], 1, rows, 0, 0, 0};
                    float *x = malloc(sizeof(float) * (size_t)(n * cols));
                    for (int64_t i = 0; i < n * cols; i++) x[i] = s_randf();
                    float *y1 = malloc(sizeof(float) * (size_t)(n * rows)),
                          *y2 = malloc(sizeof(float) * (size_t)(n * rows));
                    td_op_matmul(fast, y1, x, &w, (ni & 1) ? &b : NULL, n);
                    td_op_matmul(ref, y2, x, &w, (ni & 1) ? &b : NULL, n);
                    double worst;
                    const double atol = atol_per_sqrt_col * sqrt((double)cols);
                    CHECK_MSG(s_close(y1, y2, n * rows, atol, rtol, &worst),
                              "%s: matmul %s %lldx%lld tr=%d n=%d: error %.3g of tolerance", label,
                              td_dtype_name(dts[d]), (long long)rows, (long long)cols, tr, n,
                              worst);
                    free(wd), free(bd), free(x), free(y1), free(y2);
                }
    td_backend_destroy(&fast);
    td_backend_destroy(&ref);
    CHECK(fast == NULL);
}

/* the exact paths: 1e-5 * sqrt(cols) <= 1.6e-4 absolute at 257 columns */
TD_TEST(matmul_fast_matches_reference) { s_check_matmul(1e-5, 1e-4, td_cpu_float_kernels_name()); }

/* Batch invariance of the skinny products: each token's outputs are bitwise the same computed
 * alone (n = 1) or inside any batch up to 24 rows, for every dtype, with leftover rows (7, 33, 130)
 * and column tails (5, 257). */
static void s_check_batch_invariant(const char *label) {
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(2, 0, &err);
    REQUIRE(be);
    const td_dtype_t dts[] = {TD_DTYPE_F32, TD_DTYPE_BF16, TD_DTYPE_F16};
    const int64_t shapes[][2] = {{7, 5}, {33, 64}, {130, 257}, {300, 96}};
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 4; s++) {
            const int64_t rows = shapes[s][0], cols = shapes[s][1];
            void *wd = s_make_weight(dts[d], rows * cols);
            td_weight_t w = {wd, dts[d], rows, cols, 0, 0, 0};
            float *x = malloc(sizeof(float) * (size_t)(24 * cols)),
                  *one = malloc(sizeof(float) * (size_t)(24 * rows)),
                  *y = malloc(sizeof(float) * (size_t)(24 * rows));
            for (int64_t i = 0; i < 24 * cols; i++) x[i] = s_randf();
            for (int t = 0; t < 24; t++)
                td_op_matmul(be, one + (int64_t)t * rows, x + (int64_t)t * cols, &w, NULL, 1);
            for (int n = 2; n <= 24; n++) {
                td_op_matmul(be, y, x, &w, NULL, n);
                int same = !memcmp(y, one, sizeof(float) * (size_t)(n * rows));
                CHECK_MSG(same, "%s: %s %lldx%lld: a batch of %d differs from one token at a time",
                          label, td_dtype_name(dts[d]), (long long)rows, (long long)cols, n);
            }
            free(wd), free(x), free(one), free(y);
        }
    td_backend_destroy(&be);
}

TD_TEST(matmul_batch_invariant) { s_check_batch_invariant(td_cpu_float_kernels_name()); }

/* One BF16 and one F16 skinny product (130 x 257, 5 tokens) on the current float kernels. */
static void s_skinny_sample(td_dtype_t dt, float *y) {
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    REQUIRE(be);
    uint64_t keep = s_rng;
    s_rng = 1234567;
    void *wd = s_make_weight(dt, 130 * 257);
    float x[5 * 257];
    for (int i = 0; i < 5 * 257; i++) x[i] = s_randf();
    s_rng = keep;
    td_weight_t w = {wd, dt, 130, 257, 0, 0, 0};
    td_op_matmul(be, y, x, &w, NULL, 5);
    free(wd);
    td_backend_destroy(&be);
}

/* Every float kernel path this CPU has (avx2; avx512 and the opt-in avx512bf16 where cpuid reports
 * them; the others skip with a message), forced by name: each against the reference and batch
 * invariant bitwise, and each really a different computation from avx2 (some output differs in
 * the last bits; bf16 activations by more). */
TD_TEST(float_kernel_paths) {
    td_err_t err = {0};
    const char *paths[] = {"avx2", "avx512", "avx512bf16"};
    float base_bf[5 * 130], base_h[5 * 130], y[5 * 130];
    int have_base = 0;
    for (int p = 0; p < 3; p++) {
        if (!td_cpu_float_kernels_available(paths[p])) {
            printf("  skip %s: not on this CPU (or build)\n", paths[p]);
            continue;
        }
        REQUIRE(td_cpu_float_kernels_select(paths[p], &err) == TD_OK);
        CHECK_STR(td_cpu_float_kernels_name(), paths[p]);
        if (p == 2)
            s_check_matmul(4e-3, 1e-2, paths[p]); /* activations rounded to 8 significant bits */
        else
            s_check_matmul(1e-5, 1e-4, paths[p]);
        s_check_batch_invariant(paths[p]);
        if (p == 0) {
            s_skinny_sample(TD_DTYPE_BF16, base_bf), s_skinny_sample(TD_DTYPE_F16, base_h);
            have_base = 1;
        } else if (have_base) {
            s_skinny_sample(TD_DTYPE_BF16, y);
            CHECK_MSG(memcmp(y, base_bf, sizeof y) != 0, "%s: BF16 result bitwise equal to avx2's",
                      paths[p]);
            s_skinny_sample(TD_DTYPE_F16, y);
            CHECK_MSG(memcmp(y, base_h, sizeof y) != 0, "%s: F16 result bitwise equal to avx2's",
                      paths[p]);
        }
    }
    CHECK(td_cpu_float_kernels_select("nonsense", &err) == TD_ERR_ARG);
    CHECK(td_cpu_float_kernels_available(td_cpu_float_kernels_name()));
    CHECK(td_cpu_float_kernels_select("auto", &err) == TD_OK);
    /* auto never picks the lossy path */
    CHECK(strcmp(td_cpu_float_kernels_name(), "avx512bf16") != 0);
    printf("  float kernels in use: %s\n", td_cpu_float_kernels_name());
}

/* Attention against a direct softmax(q k^T) v computed here, for every mask kind and GQA, at head
 * sizes that take each CPU path (6: scalar; 8: one 8-wide output chunk; 40: a 32-wide chunk and an
 * 8-wide one), contexts long enough for the 8-key score blocks and their tails, and an explicit
 * mask row that hides every key (output 0). */
static void s_check_attention(td_backend_t *be, int hd) {
    enum { NH = 4, NKV = 2, N_CTX = 29, N_SEQ = 2, N = 6 };
    const int64_t row = NKV * hd;
    float *kc = malloc(sizeof(float) * (size_t)(N_SEQ * N_CTX * row)),
          *vc = malloc(sizeof(float) * (size_t)(N_SEQ * N_CTX * row));
    float *q = malloc(sizeof(float) * (size_t)(N * NH * hd)),
          *out = malloc(sizeof(float) * (size_t)(N * NH * hd));
    for (int64_t i = 0; i < N_SEQ * N_CTX * row; i++) kc[i] = s_randf() * 2, vc[i] = s_randf();
    int32_t pos[N] = {0, 3, 17, 25, 2, 11}, seq[N] = {0, 0, 0, 0, 1, 1}, kv_len[N_SEQ] = {26, 12};
    for (int i = 0; i < N * NH * hd; i++) q[i] = s_randf();
    uint8_t mask[N * N_CTX];
    for (int i = 0; i < N * N_CTX; i++) mask[i] = (uint8_t)(s_randf() > 0);
    memset(mask + 4 * N_CTX, 0, N_CTX); /* query 4 sees nothing under the explicit mask */
    for (int k = 0; k < 4; k++) {
        td_attn_desc_t a = {.n = N,
                            .n_head = NH,
                            .n_kv_head = NKV,
                            .head_dim = hd,
                            .n_ctx = N_CTX,
                            .pos = pos,
                            .seq = seq,
                            .kv_len = kv_len,
                            .kind = (td_attn_kind_t)k,
                            .block_size = 4,
                            .mask = mask,
                            .mask_stride = N_CTX,
                            .scale = 0.35f};
        td_op_attention(be, out, q, kc, vc, &a);
        for (int t = 0; t < N; t++)
            for (int h = 0; h < NH; h++) {
                double sc[N_CTX], mx = -1e300, sum = 0;
                int any = 0;
                const int s = seq[t], kh = h / (NH / NKV);
                for (int j = 0; j < kv_len[s]; j++) {
                    int vis = k == 0   ? j <= pos[t]
                              : k == 1 ? 1
                              : k == 2 ? j / 4 <= pos[t] / 4
                                       : mask[t * N_CTX + j];
                    sc[j] = -1e300;
                    if (!vis) continue;
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += (double)q[(t * NH + h) * hd + i] *
                             kc[(s * N_CTX + j) * row + kh * hd + i];
                    sc[j] = d * 0.35;
                    if (sc[j] > mx) mx = sc[j];
                    any = 1;
                }
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    sum = 0;
                    for (int j = 0; j < kv_len[s]; j++)
                        if (sc[j] > -1e300) {
                            double e = exp(sc[j] - mx);
                            sum += e;
                            o += e * vc[(s * N_CTX + j) * row + kh * hd + i];
                        }
                    double want = any ? o / sum : 0.0;
                    CHECK_NEAR(out[(t * NH + h) * hd + i], want, 1e-5);
                }
            }
    }
    free(kc), free(vc), free(q), free(out);
}

TD_TEST(attention_masks_and_gqa) {
    td_err_t err = {0};
    for (int threads = 1; threads <= 2; threads++) {
        td_backend_t *be = td_backend_cpu_new(threads, 0, &err);
        REQUIRE(be);
        const int hds[] = {6, 8, 40};
        for (int i = 0; i < 3; i++) s_check_attention(be, hds[i]);
        td_backend_destroy(&be);
    }
}

/* An f16 KV cache: td_op_scatter_rows_f16 rounds each value as td_f32_to_f16 does (special
 * values and the non-multiple-of-8 tail included), and attention over it is bitwise the attention
 * over a float cache holding the same rounded values, on every kind, head size, thread count and
 * the reference backend. */
TD_TEST(attention_f16_cache_equals_rounded_float_cache) {
    enum { NH = 6, NKV = 2, N_CTX = 37, N_SEQ = 2, N = 5 };
    td_err_t err = {0};
    const int hds[] = {6, 8, 40, 64};
    for (int bi = 0; bi < 3; bi++) {
        td_backend_t *be = td_backend_cpu_new(bi == 1 ? 2 : 1, bi == 2, &err);
        REQUIRE(be);
        CHECK(td_backend_kv_f16(be));
        for (int hi = 0; hi < 4; hi++) {
            const int hd = hds[hi];
            const int64_t row = NKV * hd, cells = N_SEQ * N_CTX * row;
            uint16_t *kh = calloc((size_t)cells, 2), *vh = calloc((size_t)cells, 2);
            float *kf = calloc((size_t)cells, 4), *vf = calloc((size_t)cells, 4);
            float *src = malloc(sizeof(float) * (size_t)cells);
            int64_t *idx = malloc(sizeof(int64_t) * N_SEQ * N_CTX);
            const float special[] = {65504.0f, -1e-7f, 1.0f + 1.0f / 2048.0f,
                                     -0.0f,    3e-5f,  70000.0f};
            for (int which = 0; which < 2; which++) {
                for (int64_t i = 0; i < cells; i++) src[i] = s_randf() * (which ? 1.0f : 2.5f);
                for (int i = 0; i < 6; i++) src[(i * 97) % cells] = special[i];
                /* rows written in a scrambled order, as a batch of positions would be */
                for (int r = 0; r < N_SEQ * N_CTX; r++) idx[r] = (r * 31) % (N_SEQ * N_CTX);
                td_op_scatter_rows_f16(be, which ? vh : kh, row, src, idx, N_SEQ * N_CTX, (int)row);
                int bad = 0;
                for (int r = 0; r < N_SEQ * N_CTX && !bad; r++)
                    for (int64_t j = 0; j < row; j++) {
                        const uint16_t h = (which ? vh : kh)[idx[r] * row + j];
                        if (h != td_f32_to_f16(src[r * row + j])) bad = 1;
                        (which ? vf : kf)[idx[r] * row + j] = td_f16_to_f32(h);
                    }
                CHECK_MSG(!bad, "hd %d: scatter_rows_f16 differs from td_f32_to_f16", hd);
            }
            float *q = malloc(sizeof(float) * (size_t)(N * NH * hd)),
                  *o16 = malloc(sizeof(float) * (size_t)(N * NH * hd)),
                  *o32 = malloc(sizeof(float) * (size_t)(N * NH * hd));
            for (int i = 0; i < N * NH * hd; i++) q[i] = s_randf();
            int32_t pos[N] = {0, 9, 30, 3, 20}, seq[N] = {0, 0, 0, 1, 1}, kv_len[N_SEQ] = {31, 21};
            uint8_t mask[N * N_CTX];
            for (int i = 0; i < N * N_CTX; i++) mask[i] = (uint8_t)(s_randf() > 0);
            for (int k = 0; k < 4; k++) {
                td_attn_desc_t a = {.n = N, .n_head = NH, .n_kv_head = NKV, .head_dim = hd};
                a.n_ctx = N_CTX, a.pos = pos, a.seq = seq, a.kv_len = kv_len;
                a.kind = (td_attn_kind_t)k, a.block_size = 4, a.scale = 0.3f;
                a.mask = mask, a.mask_stride = N_CTX;
                td_op_attention(be, o32, q, kf, vf, &a);
                a.kv_f16 = 1;
                td_op_attention(be, o16, q, kh, vh, &a);
                CHECK_MSG(memcmp(o16, o32, sizeof(float) * (size_t)(N * NH * hd)) == 0,
                          "backend %d hd %d kind %d: f16 cache != its rounded float cache", bi, hd,
                          k);
            }
            free(q), free(o16), free(o32), free(kh), free(vh), free(kf), free(vf), free(src);
            free(idx);
        }
        td_backend_destroy(&be);
    }
}

TD_TEST(norms_rope_activations) {
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(2, 0, &err);
    REQUIRE(be);
    const int n = 3, d = 37;
    float x[3 * 37], y[3 * 37];
    for (int i = 0; i < n * d; i++) x[i] = s_randf() * 3;
    void *wd = s_make_weight(TD_DTYPE_BF16, d), *bd = s_make_weight(TD_DTYPE_BF16, d);
    td_weight_t w = {wd, TD_DTYPE_BF16, 1, d, 0, 0, 0}, b = {bd, TD_DTYPE_BF16, 1, d, 0, 0, 0};
    td_op_rmsnorm(be, y, x, &w, n, d, 1e-6f);
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < d; i++) ss += x[t * d + i] * x[t * d + i];
        double inv = 1 / sqrt(ss / d + 1e-6);
        for (int i = 0; i < d; i++)
            CHECK_NEAR(y[t * d + i], x[t * d + i] * inv * td_bf16_to_f32(((uint16_t *)wd)[i]),
                       1e-5);
    }
    td_op_layernorm(be, y, x, &w, &b, n, d, 1e-5f);
    for (int t = 0; t < n; t++) {
        double mu = 0, var = 0;
        for (int i = 0; i < d; i++) mu += x[t * d + i];
        mu /= d;
        for (int i = 0; i < d; i++) var += (x[t * d + i] - mu) * (x[t * d + i] - mu);
        var /= d;
        for (int i = 0; i < d; i++)
            CHECK_NEAR(y[t * d + i],
                       (x[t * d + i] - mu) / sqrt(var + 1e-5) *
                               td_bf16_to_f32(((uint16_t *)wd)[i]) +
                           td_bf16_to_f32(((uint16_t *)bd)[i]),
                       1e-5);
    }
    /* RoPE: rotating by position p then by -p is not expressible; check against the formula, in
     * both layouts: rotate-half pairs (i, i + hd/2), interleaved pairs (2i, 2i+1) */
    const int nh = 2, hd = 6;
    float r0[2 * 2 * 6];
    int32_t pos[2] = {0, 5};
    for (int i = 0; i < 24; i++) r0[i] = s_randf();
    for (int interleaved = 0; interleaved < 2; interleaved++) {
        float r[24];
        memcpy(r, r0, sizeof r);
        td_op_rope(be, r, pos, 2, nh, hd, hd, 10000.0f,
                   interleaved ? TD_ROPE_INTERLEAVED : TD_ROPE_HALF);
        for (int t = 0; t < 2; t++)
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < hd / 2; i++) {
                    double ang = pos[t] * pow(10000.0, -2.0 * i / hd);
                    const float *v = r0 + (t * nh + h) * hd;
                    const float *o = r + (t * nh + h) * hd;
                    const int x = interleaved ? 2 * i : i, y = interleaved ? 2 * i + 1 : i + 3;
                    CHECK_NEAR(o[x], v[x] * cos(ang) - v[y] * sin(ang), 1e-5);
                    CHECK_NEAR(o[y], v[y] * cos(ang) + v[x] * sin(ang), 1e-5);
                }
    }
    /* and the two layouts agree exactly through the converter's row permutation: interleaved on
     * permuted rows = permuted (rotate-half on the original), on the fast and reference backends */
    for (int mode = 0; mode < 2; mode++) {
        td_backend_t *bm = mode ? td_backend_cpu_new(1, 1, &err) : be;
        REQUIRE(bm);
        const int nh2 = 3, hd2 = 10, rot2 = 10;
        float a[2 * 3 * 10], p[2 * 3 * 10];
        int32_t pos2[2] = {3, 1000};
        for (int i = 0; i < 60; i++) a[i] = s_randf();
        for (int t = 0; t < 2; t++)
            for (int h = 0; h < nh2; h++)
                for (int i = 0; i < rot2 / 2; i++)
                    for (int s = 0; s < 2; s++)
                        p[(t * nh2 + h) * hd2 + 2 * i + s] =
                            a[(t * nh2 + h) * hd2 + s * rot2 / 2 + i];
        td_op_rope(bm, a, pos2, 2, nh2, hd2, rot2, 1e6f, TD_ROPE_HALF);
        td_op_rope(bm, p, pos2, 2, nh2, hd2, rot2, 1e6f, TD_ROPE_INTERLEAVED);
        for (int t = 0; t < 2; t++)
            for (int h = 0; h < nh2; h++)
                for (int i = 0; i < rot2 / 2; i++)
                    for (int s = 0; s < 2; s++)
                        CHECK(p[(t * nh2 + h) * hd2 + 2 * i + s] ==
                              a[(t * nh2 + h) * hd2 + s * rot2 / 2 + i]);
        if (mode) td_backend_destroy(&bm);
    }
    float g[5] = {-3, -0.5f, 0, 0.5f, 4}, u[5] = {1, 2, 3, 4, 5}, o[5];
    td_op_swiglu(be, o, g, u, 5);
    for (int i = 0; i < 5; i++) CHECK_NEAR(o[i], g[i] / (1 + exp(-g[i])) * u[i], 1e-6);
    td_op_gelu_tanh(be, g, 5);
    const double gin[5] = {-3, -0.5, 0, 0.5, 4};
    for (int i = 0; i < 5; i++)
        CHECK_NEAR(g[i],
                   0.5 * gin[i] *
                       (1 + tanh(0.7978845608028654 * (gin[i] + 0.044715 * pow(gin[i], 3)))),
                   1e-6);
    free(wd), free(bd);
    td_backend_destroy(&be);
}

/* Attention is batch invariant bitwise: each token's output in a batch (tokens of two sequences
 * interleaved, more than one work item per sequence, contexts past one 128-row block) equals its
 * output when it is attended alone, for float and f16 caches, every mask kind, head sizes and GQA
 * groups that take each path (three, two and one query heads at a time), on one and two threads. */
TD_TEST(attention_batch_invariant) {
    enum { N = 37, N_CTX = 300, N_SEQ = 2 };
    td_err_t err = {0};
    td_backend_t *b1 = td_backend_cpu_new(1, 0, &err), *b2 = td_backend_cpu_new(2, 0, &err);
    REQUIRE(b1 && b2);
    const int hds[] = {8, 40, 64, 128}, groups[] = {1, 2, 3, 4, 16};
    int bad = 0;
    for (int hi = 0; hi < 4; hi++)
        for (int gi = 0; gi < 5; gi++) {
            const int hd = hds[hi], nkv = 2, nh = nkv * groups[gi];
            const int64_t row = (int64_t)nkv * hd, cells = (int64_t)N_SEQ * N_CTX * row;
            float *kf = malloc(sizeof(float) * (size_t)cells),
                  *vf = malloc(sizeof(float) * (size_t)cells);
            uint16_t *kh = malloc(2 * (size_t)cells), *vh = malloc(2 * (size_t)cells);
            float *q = malloc(sizeof(float) * (size_t)(N * nh * hd)),
                  *ob = malloc(sizeof(float) * (size_t)(N * nh * hd)),
                  *o2 = malloc(sizeof(float) * (size_t)(N * nh * hd)),
                  *o1 = malloc(sizeof(float) * (size_t)(nh * hd));
            for (int64_t i = 0; i < cells; i++) {
                kf[i] = s_randf() * 2, vf[i] = s_randf();
                kh[i] = td_f32_to_f16(kf[i]), vh[i] = td_f32_to_f16(vf[i]);
            }
            for (int i = 0; i < N * nh * hd; i++) q[i] = s_randf() * 2;
            int32_t pos[N], seq[N], kv_len[N_SEQ] = {290, 141};
            uint8_t *mask = malloc((size_t)N * N_CTX);
            for (int t = 0; t < N; t++) {
                seq[t] = t % 3 == 1;
                pos[t] = kv_len[seq[t]] - 1 - (t * 13) % 37;
                for (int j = 0; j < N_CTX; j++)
                    mask[t * N_CTX + j] = (uint8_t)(t % 11 != 4 && (j * 7 + t) % 5 != 0);
            }
            for (int k = 0; k < 4; k++)
                for (int f16 = 0; f16 < 2; f16++) {
                    td_attn_desc_t a = {.n = N,
                                        .n_head = nh,
                                        .n_kv_head = nkv,
                                        .head_dim = hd,
                                        .n_ctx = N_CTX,
                                        .pos = pos,
                                        .seq = seq,
                                        .kv_len = kv_len,
                                        .kind = (td_attn_kind_t)k,
                                        .block_size = 16,
                                        .mask = mask,
                                        .mask_stride = N_CTX,
                                        .scale = 1.0f / sqrtf((float)hd),
                                        .kv_f16 = f16};
                    const void *kc = f16 ? (const void *)kh : kf, *vc = f16 ? (const void *)vh : vf;
                    td_op_attention(b1, ob, q, kc, vc, &a);
                    td_op_attention(b2, o2, q, kc, vc, &a);
                    bad += memcmp(ob, o2, sizeof(float) * (size_t)(N * nh * hd)) != 0;
                    for (int t = 0; t < N; t++) {
                        td_attn_desc_t a1 = a;
                        a1.n = 1, a1.pos = pos + t, a1.seq = seq + t, a1.mask = mask + t * N_CTX;
                        td_op_attention(b1, o1, q + (int64_t)t * nh * hd, kc, vc, &a1);
                        const int diff = memcmp(o1, ob + (int64_t)t * nh * hd,
                                                sizeof(float) * (size_t)(nh * hd));
                        if (diff && bad++ < 5)
                            printf("    hd %d group %d kind %d f16 %d token %d: alone != batched\n",
                                   hd, groups[gi], k, f16, t);
                    }
                }
            free(kf), free(vf), free(kh), free(vh), free(q), free(ob), free(o2), free(o1);
            free(mask);
        }
    CHECK_EQ_INT(bad, 0);
    CHECK(td_backend_status(b1, &err) == TD_OK && td_backend_status(b2, &err) == TD_OK);
    td_backend_destroy(&b1);
    td_backend_destroy(&b2);
}

/* RoPE reads its cosines and sines from per-backend tables (by theta and rot_dim) grown as
 * positions grow: the results are bitwise those of the formula computed here per position (inv_freq
 * rounded to float, angle in float, cosf/sinf, two rounded products added), across table growth,
 * for more (theta, rot_dim) pairs than the backend keeps tables (replacement and refill), for
 * positions past the tables, in both layouts, with odd pair counts, dims past rot_dim untouched,
 * each token alone as in the batch, on the fast and reference backends and two threads. */
TD_TEST(rope_tables_equal_the_formula) {
    td_err_t err = {0};
    td_backend_t *bes[3] = {td_backend_cpu_new(1, 0, &err), td_backend_cpu_new(2, 0, &err),
                            td_backend_cpu_new(1, 1, &err)};
    REQUIRE(bes[0] && bes[1] && bes[2]);
    enum { NH = 3, HD = 72, N = 40 };
    const float thetas[] = {10000.0f, 100000.0f, 1e6f, 500000.0f, 10000.0f, 1234.5f};
    const int rots[] = {64, 72, 10, 22, 64, 72};
    /* rising positions (the tables grow between calls), then one far past the tables */
    const int32_t starts[] = {0, 200, 1000, 300, 5000, (1 << 17) + 5};
    int bad = 0;
    float *x = malloc(sizeof(float) * N * NH * HD), *y = malloc(sizeof(float) * N * NH * HD),
          *z = malloc(sizeof(float) * NH * HD);
    for (int bi = 0; bi < 3; bi++)
        for (int round = 0; round < 2; round++)
            for (int ti = 0; ti < 6; ti++)
                for (int si = 0; si < 6; si++)
                    for (int il = 0; il < 2; il++) {
                        const int rot = rots[ti], half = rot / 2;
                        const float theta = thetas[(ti + round) % 6];
                        int32_t pos[N];
                        for (int t = 0; t < N; t++) pos[t] = starts[si] + (t * 37) % 301;
                        for (int i = 0; i < N * NH * HD; i++) x[i] = y[i] = s_randf() * 3;
                        const td_rope_layout_t lay = il ? TD_ROPE_INTERLEAVED : TD_ROPE_HALF;
                        td_op_rope(bes[bi], y, pos, N, NH, HD, rot, theta, lay);
                        for (int t = 0; t < N; t++) {
                            memcpy(z, x + t * NH * HD, sizeof(float) * NH * HD);
                            td_op_rope(bes[bi], z, pos + t, 1, NH, HD, rot, theta, lay);
                            bad += memcmp(z, y + t * NH * HD, sizeof(float) * NH * HD) != 0;
                            for (int i = 0; i < half; i++) {
                                const float inv = (float)(1.0 / pow((double)theta,
                                                                    (double)(2 * i) / (double)rot));
                                const float ang = (float)pos[t] * inv;
                                const float cs = cosf(ang), sn = sinf(ang);
                                for (int h = 0; h < NH; h++) {
                                    const float *v = x + (t * NH + h) * HD;
                                    const float *o = y + (t * NH + h) * HD;
                                    const int e0 = il ? 2 * i : i, e1 = il ? 2 * i + 1 : i + half;
                                    const float a = v[e0], b = v[e1];
                                    const float w0 = a * cs - b * sn, w1 = b * cs + a * sn;
                                    if ((memcmp(&w0, o + e0, 4) || memcmp(&w1, o + e1, 4)) &&
                                        bad++ < 5)
                                        printf("    backend %d theta %g rot %d pos %d pair %d: "
                                               "%.9g %.9g want %.9g %.9g\n",
                                               bi, theta, rot, pos[t], i, o[e0], o[e1], w0, w1);
                                }
                            }
                            for (int h = 0; h < NH; h++)
                                bad += memcmp(x + (t * NH + h) * HD + 2 * half,
                                              y + (t * NH + h) * HD + 2 * half,
                                              sizeof(float) * (size_t)(HD - 2 * half)) != 0;
                        }
                    }
    CHECK_EQ_INT(bad, 0);
    free(x), free(y), free(z);
    for (int bi = 0; bi < 3; bi++) td_backend_destroy(&bes[bi]);
}

/* rmsnorm against a double reference (within a few float roundings), bitwise the same for a row
 * alone as in a batch and on one or two threads (70 x 576 is past the one-thread threshold), at
 * sizes with and without a tail after the 16-wide steps; add against a plain loop; swiglu per
 * element the same in any count (special values included). */
TD_TEST(rmsnorm_add_swiglu) {
    td_err_t err = {0};
    td_backend_t *b1 = td_backend_cpu_new(1, 0, &err), *b2 = td_backend_cpu_new(2, 0, &err);
    REQUIRE(b1 && b2);
    enum { N = 70 };
    const int ds[] = {1, 7, 16, 37, 576, 1001};
    int bad = 0;
    for (int di = 0; di < 6; di++) {
        const int d = ds[di];
        float *x = malloc(sizeof(float) * N * d), *y1 = malloc(sizeof(float) * N * d),
              *y2 = malloc(sizeof(float) * N * d), *yr = malloc(sizeof(float) * d),
              *w = malloc(sizeof(float) * d);
        for (int i = 0; i < N * d; i++) x[i] = s_randf() * (i % 13 == 0 ? 300.0f : 2.0f);
        for (int i = 0; i < d; i++) w[i] = s_randf();
        td_weight_t wt = {w, TD_DTYPE_F32, 1, d, 0, 0};
        td_op_rmsnorm(b1, y1, x, &wt, N, d, 1e-5f);
        td_op_rmsnorm(b2, y2, x, &wt, N, d, 1e-5f);
        bad += memcmp(y1, y2, sizeof(float) * N * d) != 0;
        for (int t = 0; t < N; t++) {
            td_op_rmsnorm(b1, yr, x + t * d, &wt, 1, d, 1e-5f);
            bad += memcmp(yr, y1 + t * d, sizeof(float) * d) != 0;
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)x[t * d + i] * x[t * d + i];
            const double inv = 1.0 / sqrt(ss / d + 1e-5);
            for (int i = 0; i < d; i++) {
                const double want = (double)w[i] * x[t * d + i] * inv;
                CHECK_NEAR(y1[t * d + i], want, 4e-7 * fabs(want) + 1e-30);
            }
        }
        free(x), free(y1), free(y2), free(yr), free(w);
    }
    CHECK_EQ_INT(bad, 0);
    /* add: counts with and without tails, one and two threads (40000 is past the threshold) */
    const int64_t counts[] = {1, 7, 8, 33, 577, 40000, 40003};
    float *a = malloc(sizeof(float) * 40003), *b = malloc(sizeof(float) * 40003),
          *c = malloc(sizeof(float) * 40003), *g = malloc(sizeof(float) * 40003);
    for (int ci = 0; ci < 7; ci++)
        for (int bi = 0; bi < 2; bi++) {
            const int64_t n = counts[ci];
            for (int64_t i = 0; i < 40003; i++) a[i] = c[i] = s_randf(), b[i] = s_randf();
            td_op_add(bi ? b2 : b1, a, b, n);
            for (int64_t i = 0; i < 40003; i++) {
                const float want = i < n ? c[i] + b[i] : c[i];
                if (memcmp(&want, a + i, 4) && bad++ < 5)
                    printf("    add count %lld: element %lld\n", (long long)n, (long long)i);
            }
            /* swiglu: an element's result does not depend on the count or the threads (nor on
             * how the blocks were split between threads; special values included) */
            const float special[] = {-INFINITY, 200.0f, -200.0f, -0.0f, 1e-40f, 88.5f, -87.5f};
            for (int64_t i = 0; i < 40003; i++)
                g[i] = i % 61 < 7 ? special[i % 61] : s_randf() * (i % 3 ? 8.0f : 90.0f);
            td_op_swiglu(bi ? b2 : b1, c, g, b, n);
            for (int64_t i = 0; i < n; i++) {
                float one;
                td_op_swiglu(b1, &one, g + i, b + i, 1);
                bad += memcmp(&one, c + i, 4) != 0;
            }
        }
    CHECK_EQ_INT(bad, 0);
    free(a), free(b), free(c), free(g);
    td_backend_destroy(&b1);
    td_backend_destroy(&b2);
}

TD_TEST(dtype_conversions) {
    /* bf16 round-to-nearest-even and f16 round trips, including subnormals and infinities */
    CHECK_EQ_INT(td_f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(td_f32_to_bf16(1.00390625f), 0x3f80); /* exactly half way: to even */
    CHECK_EQ_INT(td_f32_to_bf16(1.01171875f), 0x3f82); /* half way above an odd mantissa: up */
    const float vals[] = {0.0f,     -0.0f,          1.0f,           -2.5f,
                          65504.0f, 6.1035156e-05f, 5.9604645e-08f, 3.14159f};
    for (int i = 0; i < 8; i++) {
        float back = td_f16_to_f32(td_f32_to_f16(vals[i]));
        CHECK_NEAR(back, vals[i], fabs(vals[i]) * 1e-3 + 1e-12);
    }
    CHECK(isinf(td_f16_to_f32(td_f32_to_f16(1e6f))));
    CHECK_EQ_INT(td_f32_to_f16(5.9604645e-08f), 1); /* smallest subnormal */
}

/* Capabilities are flags, not names: both CPU backends (the reference one is named "cpu-ref")
 * have host memory and their own threads; NULL has none. */
TD_TEST(capability_flags) {
    td_err_t err = {0};
    td_backend_t *fast = td_backend_cpu_new(2, 0, &err), *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(fast && ref);
    CHECK(strcmp(td_backend_name(ref), "cpu") != 0);
    for (int k = 0; k < 2; k++) {
        td_backend_t *be = k ? ref : fast;
        CHECK(td_backend_caps(be) & TD_BACKEND_CAP_HOST_MEMORY);
        CHECK(td_backend_caps(be) & TD_BACKEND_CAP_OWN_THREADS);
        CHECK(!(td_backend_caps(be) & TD_BACKEND_CAP_DEVICE_SAMPLE));
        CHECK(td_backend_host_memory(be));
    }
    CHECK_EQ_INT((int)td_backend_caps(NULL), 0);
    CHECK(!td_backend_host_memory(NULL));
    td_backend_destroy(&fast);
    td_backend_destroy(&ref);
}

/* Creating a backend does not change the process's OpenMP default, and two backends keep their
 * own counts. */
TD_TEST(threads_are_per_backend) {
    td_err_t err = {0};
    omp_set_num_threads(3);
    td_backend_t *a = td_backend_cpu_new(1, 0, &err), *b = td_backend_cpu_new(2, 0, &err);
    REQUIRE(a && b);
    CHECK_EQ_INT(omp_get_max_threads(), 3);
    CHECK_EQ_INT(td_backend_n_threads(a), 1);
    CHECK_EQ_INT(td_backend_n_threads(b), 2);
    td_backend_destroy(&a);
    td_backend_destroy(&b);
}

/* Out of memory inside an op is an error reported by td_backend_status, not an abort: in a child
 * whose address space is capped, an attention whose scratch cannot be allocated returns, the
 * status says TD_ERR_NOMEM once (then clears), and the backend keeps working. Not under ASan
 * (its shadow memory needs the address space). */
TD_TEST(out_of_memory_is_a_status_not_an_abort) {
#ifdef TD_ASAN
    td_test_skip("address space limits and ASan do not mix");
#else
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        td_err_t err = {0};
        td_backend_t *be = td_backend_cpu_new(1, 0, &err);
        if (!be) _exit(10);
        long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (!f || fscanf(f, "%ld", &pages) != 1) _exit(11);
        fclose(f);
        struct rlimit rl = {(rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (256u << 20),
                            RLIM_INFINITY};
        rl.rlim_max = rl.rlim_cur;
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(12);
        enum { HD = 4 };
        float q[HD] = {1, 0, 0, 0}, k[HD] = {1, 0, 0, 0}, v[HD] = {1, 2, 3, 4}, o[HD];
        int32_t pos = 0, seq = 0, kv_len = 1;
        /* one key, but a cache capacity that asks for 4 GiB of score scratch */
        td_attn_desc_t d = {.n = 1,
                            .n_head = 1,
                            .n_kv_head = 1,
                            .head_dim = HD,
                            .n_ctx = 1 << 30,
                            .pos = &pos,
                            .seq = &seq,
                            .kv_len = &kv_len,
                            .kind = TD_ATTN_CAUSAL,
                            .scale = 1.0f};
        td_op_attention(be, o, q, k, v, &d);
        int rc = td_backend_status(be, &err);
        if (rc != TD_ERR_NOMEM || !strstr(err.msg, "out of memory")) _exit(13);
        if (td_backend_status(be, &err) != TD_OK) _exit(14); /* cleared */
        d.n_ctx = 1;
        td_op_attention(be, o, q, k, v, &d);
        if (td_backend_status(be, &err) != TD_OK) _exit(15);
        for (int i = 0; i < HD; i++)
            if (o[i] != v[i]) _exit(16);
        td_backend_destroy(&be);
        _exit(0);
    }
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: %s %d",
              WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
#endif
}

TD_TEST_MAIN()
