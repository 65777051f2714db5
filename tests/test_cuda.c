/* test_cuda.c - the CUDA backend against the CPU backend: every op at odd shapes and all weight
 * dtypes, both matmul paths, attention with every mask kind, GQA, several sequences and key
 * splits, 7B-sized operands (2.2 GB weight, 32k-position cache), bad indices refused, overlapping
 * copies, the synthetic-weights mode, and the whole forward pass of every fixture model in
 * tests/data/models (prefill, decode, two sequences in one batch, KV crop and in-place rewrite,
 * copied prefixes, explicit masks), and sampling on the device (td_op_sample,
 * td_model_forward_sample) against the CPU backend's op, and block-quantized GGUF weights (all
 * eight block types: products, embedding rows, a tiny quantized GGUF written here, and the real
 * SmolLM2 Q4_1 model when models/smollm2 holds it) against both CPU backends.
 *
 * Without a CUDA device (or in a build without nvcc) every case checks that the backend refuses
 * to start with a message, then skips; the binary exits 77.
 *
 * Tolerances (docs/cuda.md):
 *  - matmul: per element |gpu - ref| <= u * sum_c |x_c w_rc| + 1e-6, a rounding bound: u = 2^-8
 *    when cuBLAS rounds activations to BF16, 2^-10 for F16, 1e-5 for FP32 activations (GEMV
 *    kernel: auto, n <= 8, untransposed, any shape; SGEMM) where only the summation order differs;
 *  - other ops: |gpu - ref| <= 2e-5 + 2e-5 |ref| (RoPE 1e-4: sincosf vs glibc at large angles);
 *  - forward logits: max |gpu - cpu| <= 2e-3 * max(1, max |cpu|) with FP32 activations (F32
 *    weights everywhere; BF16 weights with at most 8 tokens and untransposed weights, the GEMV
 *    path); 3e-2 * max(1, max |cpu|) for BF16 weights through cuBLAS (activations rounded to BF16,
 *    as HF's bf16 run): more than 8 tokens, GPT-2's transposed weights, or the cuBLAS mode;
 *  - quantized weights: see the section "block-quantized weights" below (exact dequantization
 *    and FP32 activations: 1e-5 x sum |x w| against the CPU reference backend; plus the int8
 *    rounding bound against the CPU backend; skinny products bitwise batch-invariant);
 *  - td_op_sample: greedy ids identical to the CPU op's (td_argmax); the kept-set size identical
 *    (the kept set is a prefix of one rank order, so equal sizes mean equal sets) and the id inside
 *    the CPU's kept set; prob within 1e-6 relative of td_sampling_dist's (the normaliser is summed
 *    in another order); sampled ids equal to the CPU op's for the same seeds in >= 99% of rows
 *    (same counter-based noise; only last-bit log/exp differences can flip a near tie), and a
 *    chi-square test (alpha 1e-3) of the device's draws against td_sampling_dist. */
#include "tests/tdtest.h"

#include "kernels/backend.h"
#include "kernels/backend_impl.h"
#include "kernels/quant.h"
#include "kernels/cuda/backend_cuda.h"
#include "drafter/dflash.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tests/tdstats.h"

#include <cjson/cJSON.h>

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* line-buffered stdout: tools/gpu-check.sh pipes it through tee under a time limit, and a killed
 * run must still show which case it was in */
__attribute__((constructor)) static void s_line_buffered(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

static uint64_t s_rng = 0x2545F4914F6CDD1Dull;
static float s_randf(void) {
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    return (float)((double)(s_rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* A CUDA backend on device 0, or NULL after checking the refusal and marking the case skipped. */
static td_backend_t *s_gpu(int mode) {
    td_err_t err = {0};
    if (td_cuda_device_count() == 0) {
        td_backend_t *be = td_backend_cuda_new(0, &err);
        CHECK_MSG(be == NULL && err.code != 0 && err.msg[0],
                  "no device, yet td_backend_cuda_new did not fail cleanly");
        td_backend_destroy(&be);
        char why[1200];
        snprintf(why, sizeof why, "no CUDA device (%s)", err.msg);
        td_test_skip(why);
        return NULL;
    }
    td_backend_t *be = td_backend_cuda_new(0, &err);
    CHECK_MSG(be != NULL, "td_backend_cuda_new(0): %s", err.msg);
    if (be) td_backend_cuda_set_matmul(be, mode);
    if (be) { /* device memory and a device sampling op, by flags (not by name) */
        CHECK(!td_backend_host_memory(be));
        CHECK(td_backend_caps(be) & TD_BACKEND_CAP_DEVICE_SAMPLE);
    }
    return be;
}

static void s_no_error(td_backend_t *be, const char *what) {
    td_err_t err = {0};
    int rc = td_backend_cuda_error(be, &err);
    CHECK_MSG(rc == TD_OK, "%s: CUDA error %d: %s", what, rc, err.msg);
}

static void *s_dev_copy(td_backend_t *be, const void *host, size_t nbytes) {
    void *d = td_backend_alloc(be, nbytes);
    if (d) td_backend_set(be, d, host, nbytes);
    return d;
}

static void *s_make_host(td_dtype_t dt, int64_t count, float scale) {
    void *p = malloc((size_t)count * td_dtype_size(dt));
    for (int64_t i = 0; i < count; i++) {
        float v = s_randf() * scale;
        if (dt == TD_DTYPE_F32)
            ((float *)p)[i] = v;
        else if (dt == TD_DTYPE_BF16)
            ((uint16_t *)p)[i] = td_f32_to_bf16(v);
        else
            ((uint16_t *)p)[i] = td_f32_to_f16(v);
    }
    return p;
}

static float s_elem(const void *p, td_dtype_t dt, int64_t i) {
    if (dt == TD_DTYPE_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == TD_DTYPE_BF16 ? td_bf16_to_f32(h) : td_f16_to_f32(h);
}

/* max over elements of |a - b| / (atol + rtol |b|); <= 1 passes (NaN fails) */
static double s_worst(const float *a, const float *b, int64_t n, double atol, double rtol) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (atol + rtol * fabs((double)b[i]));
        if (!(e <= w)) w = e;
    }
    return w;
}

/* --- matmul ------------------------------------------------------------------------------------
 */

TD_TEST(cuda_matmul_vs_cpu) {
    const int modes[] = {TD_CUDA_MATMUL_AUTO, TD_CUDA_MATMUL_CUBLAS};
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(ref);
    const td_dtype_t dts[] = {TD_DTYPE_F32, TD_DTYPE_BF16, TD_DTYPE_F16};
    const int ns[] = {1, 2, 3, 8, 9, 17};
    /* odd shapes (cuBLAS only), multiples of 8 (the GEMV kernel), one wide */
    const int64_t shapes[][2] = {{7, 5}, {33, 64}, {130, 257}, {300, 96}, {64, 1024}, {1000, 136}};
    for (int mi = 0; mi < 2; mi++)
        for (int d = 0; d < 3; d++)
            for (int s = 0; s < 6; s++)
                for (int tr = 0; tr < 2; tr++)
                    for (int ni = 0; ni < 6; ni++) {
                        td_backend_cuda_set_matmul(gpu, modes[mi]);
                        const int64_t rows = shapes[s][0], cols = shapes[s][1];
                        const int n = ns[ni];
                        /* every other case is a slice of a wider stored matrix (ld) */
                        const int64_t ld = (tr ? rows : cols) + ((s + ni) & 1 ? 8 : 0);
                        const int64_t stored = (tr ? cols : rows) * ld;
                        void *wh = s_make_host(dts[d], stored, 1.0f),
                             *bh = s_make_host(dts[d], rows, 1.0f);
                        float *x = malloc(sizeof(float) * (size_t)(n * cols));
                        for (int64_t i = 0; i < n * cols; i++) x[i] = s_randf();
                        const size_t es = td_dtype_size(dts[d]);
                        const td_weight_t *bias = NULL;
                        td_weight_t w = {wh, dts[d], rows, cols, tr, ld, 0},
                                    b = {bh, dts[d], 1, rows, 0, 0, 0};
                        float *yr = malloc(sizeof(float) * (size_t)(n * rows)),
                              *yg = malloc(sizeof(float) * (size_t)(n * rows));
                        bias = (ni & 1) ? &b : NULL;
                        td_op_matmul(ref, yr, x, &w, bias, n);
                        /* the rounding bound per element */
                        double *bound = malloc(sizeof(double) * (size_t)(n * rows));
                        /* FP32 activations: F32 weights, or the GEMV kernel (auto, n <= 8,
                         * untransposed; odd shapes take its element-load variant) */
                        double u = dts[d] == TD_DTYPE_F32 ||
                                           (modes[mi] == TD_CUDA_MATMUL_AUTO && n <= 8 && !tr)
                                       ? 1e-5
                                   : dts[d] == TD_DTYPE_BF16 ? 1.0 / 256
                                                             : 1.0 / 1024;
                        for (int t = 0; t < n; t++)
                            for (int64_t r = 0; r < rows; r++) {
                                double sa = 0;
                                for (int64_t c = 0; c < cols; c++)
                                    sa += fabs(x[t * cols + c]) *
                                          fabs(s_elem(wh, dts[d], tr ? c * ld + r : r * ld + c));
                                bound[t * rows + r] = u * sa + 1e-6 + 1e-6 * fabs(yr[t * rows + r]);
                            }
                        void *wd = s_dev_copy(gpu, wh, (size_t)stored * es),
                             *bd = s_dev_copy(gpu, bh, (size_t)rows * es);
                        float *xd = s_dev_copy(gpu, x, sizeof(float) * (size_t)(n * cols));
                        float *yd = td_backend_alloc(gpu, sizeof(float) * (size_t)(n * rows));
                        REQUIRE(wd && bd && xd && yd);
                        td_weight_t wg = w, bg = b;
                        wg.data = wd, bg.data = bd;
                        td_op_matmul(gpu, yd, xd, &wg, bias ? &bg : NULL, n);
                        td_backend_get(gpu, yg, yd, sizeof(float) * (size_t)(n * rows));
                        s_no_error(gpu, "matmul");
                        int64_t bad = -1;
                        for (int64_t i = 0; i < n * rows && bad < 0; i++)
                            if (!(fabs((double)yg[i] - yr[i]) <= bound[i])) bad = i;
                        CHECK_MSG(bad < 0,
                                  "matmul mode %d %s %lldx%lld tr=%d ld=%lld n=%d: y[%lld] = %.7g "
                                  "vs %.7g (bound %.3g)",
                                  modes[mi], td_dtype_name(dts[d]), (long long)rows,
                                  (long long)cols, tr, (long long)ld, n, (long long)bad,
                                  bad >= 0 ? yg[bad] : 0.0, bad >= 0 ? yr[bad] : 0.0,
                                  bad >= 0 ? bound[bad] : 0.0);
                        td_backend_free(gpu, wd), td_backend_free(gpu, bd),
                            td_backend_free(gpu, xd), td_backend_free(gpu, yd);
                        free(wh), free(bh), free(x), free(yr), free(yg), free(bound);
                    }
    td_backend_destroy(&gpu);
    td_backend_destroy(&ref);
}

/* the activations converted for cuBLAS are reused by the next product only while unchanged */
TD_TEST(cuda_matmul_conversion_cache) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_CUBLAS);
    if (!gpu) return;
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(ref);
    const int n = 5, rows = 48, cols = 40;
    void *wh = s_make_host(TD_DTYPE_BF16, rows * cols, 1.0f);
    float x1[5 * 40], x2[5 * 40], y1[5 * 48], y2[5 * 48], g[5 * 48];
    for (int i = 0; i < n * cols; i++) x1[i] = s_randf(), x2[i] = s_randf();
    td_weight_t w = {wh, TD_DTYPE_BF16, rows, cols, 0, 0, 0};
    td_op_matmul(ref, y1, x1, &w, NULL, n);
    td_op_matmul(ref, y2, x2, &w, NULL, n);
    td_weight_t wg = w;
    wg.data = s_dev_copy(gpu, wh, (size_t)rows * cols * 2);
    float *xd = s_dev_copy(gpu, x1, sizeof x1), *x2d = s_dev_copy(gpu, x2, sizeof x2);
    float *yd = td_backend_alloc(gpu, sizeof g), *y2d = td_backend_alloc(gpu, sizeof g);
    REQUIRE(wg.data && xd && x2d && yd && y2d);
    td_op_matmul(gpu, yd, xd, &wg, NULL, n);
    td_op_matmul(gpu, y2d, xd, &wg, NULL, n); /* reuses the conversion */
    td_backend_get(gpu, g, y2d, sizeof g);
    CHECK(s_worst(g, y1, n * rows, 0.05, 0.02) <= 1.0);
    td_backend_copy(gpu, xd, x2d, sizeof x2); /* same pointer, new contents */
    td_op_matmul(gpu, yd, xd, &wg, NULL, n);
    td_backend_get(gpu, g, yd, sizeof g);
    CHECK_MSG(s_worst(g, y2, n * rows, 0.05, 0.02) <= 1.0,
              "stale converted activations after td_backend_copy");
    td_op_add(gpu, xd, x2d, (int64_t)n * cols); /* x = 2 x2 */
    td_op_matmul(gpu, yd, xd, &wg, NULL, n);
    td_backend_get(gpu, g, yd, sizeof g);
    for (int i = 0; i < n * rows; i++) g[i] *= 0.5f;
    CHECK_MSG(s_worst(g, y2, n * rows, 0.05, 0.02) <= 1.0,
              "stale converted activations after td_op_add");
    s_no_error(gpu, "conversion cache");
    td_backend_free(gpu, xd), td_backend_free(gpu, x2d), td_backend_free(gpu, yd),
        td_backend_free(gpu, y2d);
    td_backend_free(gpu, (void *)wg.data);
    free(wh);
    td_backend_destroy(&gpu);
    td_backend_destroy(&ref);
}

/* --- element-wise ops --------------------------------------------------------------------------
 */

static float *s_rand_floats(int64_t n, float scale) {
    float *p = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = s_randf() * scale;
    return p;
}

TD_TEST(cuda_elementwise_vs_cpu) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(ref);
    const int dims[] = {1, 37, 64, 896, 5000};
    for (int di = 0; di < 5; di++)
        for (int dt = 0; dt < 3; dt++) {
            const td_dtype_t dty = dt == 0 ? TD_DTYPE_F32 : dt == 1 ? TD_DTYPE_BF16 : TD_DTYPE_F16;
            const int d = dims[di], n = 3 + di;
            const int64_t cnt = (int64_t)n * d;
            float *x = s_rand_floats(cnt, 3.0f), *x2 = s_rand_floats(cnt, 2.0f);
            float *yr = malloc(sizeof(float) * (size_t)cnt),
                  *yg = malloc(sizeof(float) * (size_t)cnt);
            void *wh = s_make_host(dty, d, 1.0f), *bh = s_make_host(dty, d, 1.0f);
            td_weight_t w = {wh, dty, 1, d, 0, 0, 0}, b = {bh, dty, 1, d, 0, 0, 0}, wg = w, bg = b;
            wg.data = s_dev_copy(gpu, wh, (size_t)d * td_dtype_size(dty));
            bg.data = s_dev_copy(gpu, bh, (size_t)d * td_dtype_size(dty));
            float *xd = s_dev_copy(gpu, x, sizeof(float) * (size_t)cnt),
                  *x2d = s_dev_copy(gpu, x2, sizeof(float) * (size_t)cnt);
            float *yd = td_backend_alloc(gpu, sizeof(float) * (size_t)cnt);
            REQUIRE(wg.data && bg.data && xd && x2d && yd);
#define CMP(what, atol, rtol)                                                                      \
    do {                                                                                           \
        td_backend_get(gpu, yg, yd, sizeof(float) * (size_t)cnt);                                  \
        double wst = s_worst(yg, yr, cnt, atol, rtol);                                             \
        CHECK_MSG(wst <= 1.0, "%s d=%d %s: error %.3g of tolerance", what, d, td_dtype_name(dty),  \
                  wst);                                                                            \
    } while (0)
            td_op_rmsnorm(ref, yr, x, &w, n, d, 1e-6f);
            td_op_rmsnorm(gpu, yd, xd, &wg, n, d, 1e-6f);
            CMP("rmsnorm", 2e-5, 2e-5);
            td_op_layernorm(ref, yr, x, &w, (di & 1) ? &b : NULL, n, d, 1e-5f);
            td_op_layernorm(gpu, yd, xd, &wg, (di & 1) ? &bg : NULL, n, d, 1e-5f);
            CMP("layernorm", 2e-5, 2e-5);
            /* in place */
            memcpy(yr, x, sizeof(float) * (size_t)cnt);
            td_op_rmsnorm(ref, yr, yr, &w, n, d, 1e-5f);
            td_backend_copy(gpu, yd, xd, sizeof(float) * (size_t)cnt);
            td_op_rmsnorm(gpu, yd, yd, &wg, n, d, 1e-5f);
            CMP("rmsnorm in place", 2e-5, 2e-5);
            memcpy(yr, x, sizeof(float) * (size_t)cnt);
            td_op_swiglu(ref, yr, yr, x2, cnt);
            td_backend_copy(gpu, yd, xd, sizeof(float) * (size_t)cnt);
            td_op_swiglu(gpu, yd, yd, x2d, cnt);
            CMP("swiglu", 2e-5, 2e-5);
            memcpy(yr, x, sizeof(float) * (size_t)cnt);
            td_op_gelu_tanh(ref, yr, cnt);
            td_backend_copy(gpu, yd, xd, sizeof(float) * (size_t)cnt);
            td_op_gelu_tanh(gpu, yd, cnt);
            CMP("gelu_tanh", 2e-5, 2e-5);
            memcpy(yr, x, sizeof(float) * (size_t)cnt);
            td_op_add(ref, yr, x2, cnt);
            td_backend_copy(gpu, yd, xd, sizeof(float) * (size_t)cnt);
            td_op_add(gpu, yd, x2d, cnt);
            CMP("add", 1e-6, 1e-6);
            s_no_error(gpu, "elementwise");
            td_backend_free(gpu, (void *)wg.data), td_backend_free(gpu, (void *)bg.data);
            td_backend_free(gpu, xd), td_backend_free(gpu, x2d), td_backend_free(gpu, yd);
            free(x), free(x2), free(yr), free(yg), free(wh), free(bh);
        }
    td_backend_destroy(&gpu);
    td_backend_destroy(&ref);
}

TD_TEST(cuda_rope_get_rows_scatter_vs_cpu) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(ref);
    /* rope: full and partial rotation, positions up to 6000 */
    const int cfg[][3] = {{3, 40, 40}, {5, 64, 32}, {2, 128, 128}, {7, 10, 6}};
    for (int k = 0; k < 8; k++) {
        const int n = 6, nh = cfg[k % 4][0], hd = cfg[k % 4][1], rot = cfg[k % 4][2];
        const td_rope_layout_t lay = k < 4 ? TD_ROPE_HALF : TD_ROPE_INTERLEAVED;
        const int64_t cnt = (int64_t)n * nh * hd;
        int32_t pos[6] = {0, 1, 17, 255, 4095, 6000};
        float *x = s_rand_floats(cnt, 2.0f), *yg = malloc(sizeof(float) * (size_t)cnt);
        float *xd = s_dev_copy(gpu, x, sizeof(float) * (size_t)cnt);
        REQUIRE(xd);
        td_op_rope(ref, x, pos, n, nh, hd, rot, k & 1 ? 10000.0f : 1e6f, lay);
        td_op_rope(gpu, xd, pos, n, nh, hd, rot, k & 1 ? 10000.0f : 1e6f, lay);
        td_backend_get(gpu, yg, xd, sizeof(float) * (size_t)cnt);
        double wst = s_worst(yg, x, cnt, 1e-4, 1e-4);
        CHECK_MSG(wst <= 1.0, "rope nh=%d hd=%d rot=%d layout=%d: error %.3g of tolerance", nh, hd,
                  rot, (int)lay, wst);
        td_backend_free(gpu, xd);
        free(x), free(yg);
    }
    /* get_rows: every dtype, plain, sliced (ld) and transposed tables */
    for (int dt = 0; dt < 3; dt++)
        for (int tr = 0; tr < 2; tr++) {
            const td_dtype_t dty = dt == 0 ? TD_DTYPE_F32 : dt == 1 ? TD_DTYPE_BF16 : TD_DTYPE_F16;
            const int64_t rows = 50, cols = 37, ld = (tr ? rows : cols) + 3;
            const int64_t stored = (tr ? cols : rows) * ld;
            void *th = s_make_host(dty, stored, 1.0f);
            td_weight_t t = {th, dty, rows, cols, tr, ld, 0}, tg = t;
            tg.data = s_dev_copy(gpu, th, (size_t)stored * td_dtype_size(dty));
            int32_t ids[7] = {0, 49, 3, 3, 17, 1, 48};
            float yr[7 * 37], yg[7 * 37];
            float *yd = td_backend_alloc(gpu, sizeof yg);
            REQUIRE(tg.data && yd);
            td_op_get_rows(ref, yr, &t, ids, 7);
            td_op_get_rows(gpu, yd, &tg, ids, 7);
            td_backend_get(gpu, yg, yd, sizeof yg);
            CHECK_MSG(memcmp(yr, yg, sizeof yg) == 0, "get_rows %s tr=%d differs",
                      td_dtype_name(dty), tr);
            td_backend_free(gpu, (void *)tg.data), td_backend_free(gpu, yd);
            free(th);
        }
    /* scatter_rows into a cache with a row stride larger than d */
    {
        const int n = 5, d = 24, stride = 40, nrows = 30;
        float *src = s_rand_floats(n * d, 1.0f), *cache = s_rand_floats(nrows * stride, 1.0f);
        float got[30 * 40];
        int64_t idx[5] = {29, 0, 7, 8, 15};
        float *sd = s_dev_copy(gpu, src, sizeof(float) * n * d),
              *cd = s_dev_copy(gpu, cache, sizeof got);
        REQUIRE(sd && cd);
        td_op_scatter_rows(ref, cache, stride, src, idx, n, d);
        td_op_scatter_rows(gpu, cd, stride, sd, idx, n, d);
        td_backend_get(gpu, got, cd, sizeof got);
        CHECK_MSG(memcmp(got, cache, sizeof got) == 0, "scatter_rows differs");
        td_backend_free(gpu, sd), td_backend_free(gpu, cd);
        free(src), free(cache);
    }
    s_no_error(gpu, "rope/get_rows/scatter");
    td_backend_destroy(&gpu);
    td_backend_destroy(&ref);
}

/* --- attention ---------------------------------------------------------------------------------
 */

static void s_attn_case(td_backend_t *gpu, td_backend_t *ref, int nh, int nkv, int hd, int n_ctx,
                        int n_seq, const int32_t *kv_len, int n, const int32_t *pos,
                        const int32_t *seq, td_attn_kind_t kind, int block, const uint8_t *mask,
                        int64_t mstride) {
    const int64_t cache = (int64_t)n_seq * n_ctx * nkv * hd, qn = (int64_t)n * nh * hd;
    float *kc = s_rand_floats(cache, 1.0f), *vc = s_rand_floats(cache, 1.0f),
          *q = s_rand_floats(qn, 1.0f);
    float *outr = malloc(sizeof(float) * (size_t)qn), *outg = malloc(sizeof(float) * (size_t)qn);
    float *kd = s_dev_copy(gpu, kc, sizeof(float) * (size_t)cache),
          *vd = s_dev_copy(gpu, vc, sizeof(float) * (size_t)cache);
    float *qd = s_dev_copy(gpu, q, sizeof(float) * (size_t)qn),
          *od = td_backend_alloc(gpu, sizeof(float) * (size_t)qn);
    if (kd && vd && qd && od) {
        /* poison the output so unwritten elements show */
        for (int64_t i = 0; i < qn; i++) outg[i] = NAN;
        td_backend_set(gpu, od, outg, sizeof(float) * (size_t)qn);
        td_attn_desc_t a = {.n = n,
                            .n_head = nh,
                            .n_kv_head = nkv,
                            .head_dim = hd,
                            .n_ctx = n_ctx,
                            .pos = pos,
                            .seq = seq,
                            .kv_len = kv_len,
                            .kind = kind,
                            .block_size = block,
                            .mask = mask,
                            .mask_stride = mstride,
                            .scale = 1.0f / sqrtf((float)hd)};
        td_op_attention(ref, outr, q, kc, vc, &a);
        td_op_attention(gpu, od, qd, kd, vd, &a);
        td_backend_get(gpu, outg, od, sizeof(float) * (size_t)qn);
        double wst = s_worst(outg, outr, qn, 2e-5, 2e-5);
        CHECK_MSG(wst <= 1.0, "attention kind %d nh=%d nkv=%d hd=%d n=%d: error %.3g of tolerance",
                  kind, nh, nkv, hd, n, wst);
        s_no_error(gpu, "attention");
    } else {
        CHECK_MSG(0, "device allocation failed");
    }
    td_backend_free(gpu, kd), td_backend_free(gpu, vd), td_backend_free(gpu, qd),
        td_backend_free(gpu, od);
    free(kc), free(vc), free(q), free(outr), free(outg);
}

TD_TEST(cuda_attention_vs_cpu) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(ref);
    /* head shapes: GQA groups of 3, 7 (Qwen2.5), 12 (> one sub-group of 8), MHA; odd head_dim */
    const int heads[][3] = {{6, 2, 8}, {14, 2, 64}, {12, 1, 40}, {4, 4, 128}, {2, 1, 200}};
    for (int hi = 0; hi < 5; hi++) {
        const int nh = heads[hi][0], nkv = heads[hi][1], hd = heads[hi][2];
        /* three sequences of different lengths; queries of two of them in one batch */
        const int n_ctx = 40, n_seq = 3;
        int32_t kv_len[3] = {23, 40, 9};
        int32_t pos[6] = {20, 21, 22, 35, 39, 8}, seq[6] = {0, 0, 0, 1, 1, 2};
        uint8_t mask[6 * 40];
        for (int t = 0; t < 6; t++)
            for (int j = 0; j < 40; j++) mask[t * 40 + j] = (uint8_t)(((j * 7 + t * 3) % 5) != 0);
        memset(mask + 2 * 40, 0, 40); /* a query that sees nothing gets zeros */
        for (int kind = 0; kind < 4; kind++)
            s_attn_case(gpu, ref, nh, nkv, hd, n_ctx, n_seq, kv_len, 6, pos, seq,
                        (td_attn_kind_t)kind, 4, mask, 40);
        /* decode over a long cache: several key splits */
        int32_t kl[1] = {1500}, p1[1] = {1499}, s1[1] = {0};
        s_attn_case(gpu, ref, nh, nkv, hd, 1600, 1, kl, 1, p1, s1, TD_ATTN_CAUSAL, 0, NULL, 0);
        /* a diffusion block: 32 queries, bidirectional over prompt + block */
        int32_t kl2[1] = {300}, p2[32], s2[32];
        for (int i = 0; i < 32; i++) p2[i] = 268 + i, s2[i] = 0;
        s_attn_case(gpu, ref, nh, nkv, hd, 320, 1, kl2, 32, p2, s2, TD_ATTN_BIDIR, 0, NULL, 0);
        s_attn_case(gpu, ref, nh, nkv, hd, 320, 1, kl2, 32, p2, s2, TD_ATTN_BLOCK_CAUSAL, 32, NULL,
                    0);
    }
    td_backend_destroy(&gpu);
    td_backend_destroy(&ref);
}

/* failures inside ops are reported through td_backend_cuda_error, then cleared */
TD_TEST(cuda_errors_reported) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    float *buf = td_backend_alloc(gpu, 4 * 300 * sizeof(float));
    REQUIRE(buf);
    int32_t pos[1] = {0}, seq[1] = {0}, kv_len[1] = {1};
    td_attn_desc_t a = {.n = 1,
                        .n_head = 1,
                        .n_kv_head = 1,
                        .head_dim = 300,
                        .n_ctx = 1,
                        .pos = pos,
                        .seq = seq,
                        .kv_len = kv_len,
                        .kind = TD_ATTN_CAUSAL,
                        .scale = 1.0f};
    td_op_attention(gpu, buf, buf + 300, buf + 600, buf + 900, &a);
    td_err_t err = {0};
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "head_dim 300") != NULL);
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_OK);
    td_backend_free(gpu, buf);
    td_backend_destroy(&gpu);
}

/* bad indices are refused with an error before any kernel could read or write out of bounds, and
 * the backend keeps working afterwards */
TD_TEST(cuda_bad_inputs_reported) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_err_t err = {0};
    const int hd = 16, n_ctx = 8;
    float *buf = td_backend_alloc(gpu, sizeof(float) * 4 * n_ctx * hd);
    REQUIRE(buf);
    /* get_rows: id past the table */
    float table[4 * 16] = {0};
    float *td = s_dev_copy(gpu, table, sizeof table);
    REQUIRE(td);
    td_weight_t t = {td, TD_DTYPE_F32, 4, 16, 0, 0, 0};
    int32_t ids[2] = {1, 4};
    td_op_get_rows(gpu, buf, &t, ids, 2);
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "get_rows") != NULL, "message: %s", err.msg);
    /* attention: kv_len beyond the cache, then an explicit mask shorter than kv_len */
    int32_t pos[1] = {0}, seq[1] = {0}, kv_len[1] = {n_ctx + 1};
    td_attn_desc_t a = {.n = 1,
                        .n_head = 1,
                        .n_kv_head = 1,
                        .head_dim = hd,
                        .n_ctx = n_ctx,
                        .pos = pos,
                        .seq = seq,
                        .kv_len = kv_len,
                        .kind = TD_ATTN_BIDIR,
                        .scale = 1.0f};
    float *q = buf, *k = buf + n_ctx * hd, *v = buf + 2 * n_ctx * hd, *o = buf + 3 * n_ctx * hd;
    td_op_attention(gpu, o, q, k, v, &a);
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "kv_len") != NULL, "message: %s", err.msg);
    uint8_t mask[4] = {1, 1, 1, 1};
    kv_len[0] = 6;
    a.kind = TD_ATTN_EXPLICIT, a.mask = mask, a.mask_stride = 4;
    td_op_attention(gpu, o, q, k, v, &a);
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_ERR_ARG);
    /* scatter: negative row */
    int64_t idx[1] = {-1};
    td_op_scatter_rows(gpu, k, hd, q, idx, 1, hd);
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_ERR_ARG);
    /* still usable: a valid attention call succeeds */
    a.kind = TD_ATTN_BIDIR, a.mask = NULL, a.mask_stride = 0;
    td_op_attention(gpu, o, q, k, v, &a);
    CHECK_EQ_INT(td_backend_cuda_error(gpu, &err), TD_OK);
    td_backend_free(gpu, td);
    td_backend_free(gpu, buf);
    td_backend_destroy(&gpu);
}

/* td_backend_copy between overlapping ranges behaves as memmove (the CPU backend's semantics) */
TD_TEST(cuda_copy_overlap) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    enum { N = 1000 };
    float h[N], want[N], got[N];
    for (int i = 0; i < N; i++) h[i] = (float)i;
    float *d = s_dev_copy(gpu, h, sizeof h);
    REQUIRE(d);
    const int shifts[][3] = {{0, 100, 700}, {300, 0, 650}, {10, 11, 900}, {11, 10, 900}};
    for (int k = 0; k < 4; k++) {
        const int dst = shifts[k][0], src = shifts[k][1], cnt = shifts[k][2];
        memcpy(want, h, sizeof h);
        memmove(want + dst, want + src, sizeof(float) * (size_t)cnt);
        td_backend_set(gpu, d, h, sizeof h);
        td_backend_copy(gpu, d + dst, d + src, sizeof(float) * (size_t)cnt);
        td_backend_get(gpu, got, d, sizeof got);
        CHECK_MSG(memcmp(got, want, sizeof got) == 0, "overlapping copy %d <- %d (%d floats)", dst,
                  src, cnt);
    }
    s_no_error(gpu, "copy overlap");
    td_backend_free(gpu, d);
    td_backend_destroy(&gpu);
}

/* 7B-sized operands: an untied F32 LM head of Qwen2.5-7B (152064 x 3584, 2.2 GB: byte offsets past
 * 2^31) through the GEMV kernel and cuBLAS, checked on a few rows including the last; an
 * embedding row read from its end; attention of a decode and a short block over a 32768-position
 * cache at Qwen2.5-7B's head shape (28 query heads, 4 KV heads, head_dim 128: many key splits). */
TD_TEST(cuda_large_shapes) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_err_t err = {0};
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err);
    REQUIRE(ref);
    const int64_t rows = 152064, cols = 3584, cnt = rows * cols;
    float *w = malloc(sizeof(float) * (size_t)cnt);
    float *x = s_rand_floats(9 * cols, 1.0f);
    float *y = malloc(sizeof(float) * (size_t)(9 * rows));
    REQUIRE(w && x && y);
    for (int64_t i = 0; i < cnt; i++) w[i] = s_randf() * 0.05f;
    float *wd = s_dev_copy(gpu, w, sizeof(float) * (size_t)cnt);
    float *xd = s_dev_copy(gpu, x, sizeof(float) * (size_t)(9 * cols));
    float *yd = td_backend_alloc(gpu, sizeof(float) * (size_t)(9 * rows));
    if (wd && xd && yd) {
        td_weight_t wg = {wd, TD_DTYPE_F32, rows, cols, 0, 0, 0};
        const int64_t check[] = {0, 1, 77777, rows - 2, rows - 1};
        const int ns[] = {1, 3, 9}; /* GEMV, GEMV, cuBLAS */
        for (int ni = 0; ni < 3; ni++) {
            const int n = ns[ni];
            td_op_matmul(gpu, yd, xd, &wg, NULL, n);
            td_backend_get(gpu, y, yd, sizeof(float) * (size_t)(n * rows));
            s_no_error(gpu, "large matmul");
            for (int t = 0; t < n; t++)
                for (int ci = 0; ci < 5; ci++) {
                    const int64_t r = check[ci];
                    double acc = 0, sa = 0;
                    for (int64_t c = 0; c < cols; c++) {
                        acc += (double)x[t * cols + c] * w[r * cols + c];
                        sa += fabs((double)x[t * cols + c] * w[r * cols + c]);
                    }
                    CHECK_MSG(fabs(y[t * rows + r] - acc) <= 1e-5 * sa + 1e-6,
                              "large matmul n=%d row %lld: %.7g vs %.7g", n, (long long)r,
                              y[t * rows + r], acc);
                }
        }
        int32_t ids[2] = {(int32_t)rows - 1, 5};
        float row[2 * 3584];
        td_op_get_rows(gpu, yd, &wg, ids, 2);
        td_backend_get(gpu, row, yd, sizeof row);
        CHECK(memcmp(row, w + (rows - 1) * cols, sizeof(float) * (size_t)cols) == 0);
        CHECK(memcmp(row + cols, w + 5 * cols, sizeof(float) * (size_t)cols) == 0);
    } else {
        CHECK_MSG(0, "device allocation of 2.2 GB failed");
    }
    td_backend_free(gpu, wd), td_backend_free(gpu, xd), td_backend_free(gpu, yd);
    free(w), free(x), free(y);
    /* long-context attention */
    int32_t kl[1] = {32768}, p1[1] = {32767}, s1[1] = {0};
    s_attn_case(gpu, ref, 28, 4, 128, 32768, 1, kl, 1, p1, s1, TD_ATTN_CAUSAL, 0, NULL, 0);
    int32_t kl3[1] = {30000}, p3[3] = {29997, 29998, 29999}, s3[3] = {0, 0, 0};
    s_attn_case(gpu, ref, 28, 4, 128, 32768, 1, kl3, 3, p3, s3, TD_ATTN_CAUSAL, 0, NULL, 0);
    td_backend_destroy(&gpu);
    td_backend_destroy(&ref);
}

/* the synthetic-weights mode (bench_cuda) fills every tensor on the device without reading the
 * checkpoint: finite logits that differ from the real weights'; copy bandwidth and memory info */
TD_TEST(cuda_synthetic_and_bandwidth) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_err_t err = {0};
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/qwen2-bf16", td_test_data());
    td_model_t *real = td_model_load(dir, gpu, &err);
    REQUIRE(real);
    td_backend_cuda_set_synthetic(gpu, 1, 7);
    td_model_t *syn = td_model_load(dir, gpu, &err);
    td_backend_cuda_set_synthetic(gpu, 0, 0);
    REQUIRE(syn);
    const int V = td_model_config(real)->n_vocab;
    td_kv_cache_t *k1 = td_kv_cache_new(real, 1, 16, &err), *k2 = td_kv_cache_new(syn, 1, 16, &err);
    REQUIRE(k1 && k2);
    float *l1 = malloc(sizeof(float) * (size_t)V * 4), *l2 = malloc(sizeof(float) * (size_t)V * 4);
    int32_t tok[4] = {3, 1, 4, 1};
    td_batch_t b = {.n = 4, .tokens = tok, .attn = TD_ATTN_CAUSAL};
    CHECK(td_model_forward(real, k1, &b, l1, &err) == TD_OK);
    CHECK(td_model_forward(syn, k2, &b, l2, &err) == TD_OK);
    int finite = 1;
    for (int i = 0; i < V * 4; i++) finite &= isfinite(l2[i]) != 0;
    CHECK_MSG(finite, "synthetic weights gave non-finite logits");
    CHECK(memcmp(l1, l2, sizeof(float) * (size_t)V * 4) != 0);
    s_no_error(gpu, "synthetic");
    double bw = td_cuda_copy_bandwidth(gpu, (size_t)64 << 20);
#ifdef TD_CUDA_EMU
    /* the emulator's copies are host memcpys on a shared machine: only that it measured something */
    CHECK_MSG(bw > 0, "copy bandwidth %.3g B/s", bw);
#else
    CHECK_MSG(bw > 1e10, "copy bandwidth %.3g B/s", bw);
#endif
    size_t fr = 0, tot = 0;
    CHECK_EQ_INT(td_cuda_mem_info(gpu, &fr, &tot), TD_OK);
    CHECK(tot > 0 && fr <= tot);
    s_no_error(gpu, "bandwidth");
    free(l1), free(l2);
    td_kv_cache_destroy(&k1), td_kv_cache_destroy(&k2);
    td_model_destroy(&real), td_model_destroy(&syn);
    td_backend_destroy(&gpu);
}

/* --- whole forward on the fixture models -------------------------------------------------------
 */

static double s_max_abs(const float *a, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

typedef struct {
    td_model_t *m[2]; /* cpu, gpu */
    td_kv_cache_t *kv[2];
    float *lg[2];
    int vocab, bf16;
    const char *name;
} s_pair_t;

/* Runs batch b on both models and compares the logits of n_out rows. */
static void s_step(s_pair_t *p, const td_batch_t *b, int n_out, double rel, const char *what) {
    td_err_t err = {0};
    for (int k = 0; k < 2; k++) {
        int rc = td_model_forward(p->m[k], p->kv[k], b, p->lg[k], &err);
        CHECK_MSG(rc == TD_OK, "%s %s forward %d: %s", p->name, what, k, err.msg);
        if (rc) return;
    }
    s_no_error(td_model_backend(p->m[1]), what);
    const int64_t cnt = (int64_t)n_out * p->vocab;
    double scale = s_max_abs(p->lg[0], cnt), worst = 0;
    if (scale < 1) scale = 1;
    for (int64_t i = 0; i < cnt; i++) {
        double e = fabs((double)p->lg[1][i] - p->lg[0][i]);
        if (!(e <= worst)) worst = e;
    }
    CHECK_MSG(worst <= rel * scale, "%s %s: max |gpu - cpu| = %.4g > %.3g x %.4g", p->name, what,
              worst, rel, scale);
}

static void s_forward_model(const char *dir, const char *name, int mode) {
    td_err_t err = {0};
    td_backend_t *cpu = td_backend_cpu_new(2, 0, &err);
    td_backend_t *gpu = s_gpu(mode);
    if (!gpu) {
        td_backend_destroy(&cpu);
        return;
    }
    s_pair_t p = {.name = name};
    p.m[0] = td_model_load(dir, cpu, &err);
    CHECK_MSG(p.m[0] != NULL, "%s on cpu: %s", name, err.msg);
    p.m[1] = td_model_load(dir, gpu, &err);
    CHECK_MSG(p.m[1] != NULL, "%s on cuda: %s", name, err.msg);
    if (!p.m[0] || !p.m[1]) goto done;
    const td_config_t *c = td_model_config(p.m[0]);
    p.vocab = c->n_vocab;
    p.bf16 = td_model_dtype(p.m[0]) != TD_DTYPE_F32;
    for (int k = 0; k < 2; k++) {
        p.kv[k] = td_kv_cache_new(p.m[k], 3, 32, &err);
        CHECK_MSG(p.kv[k] != NULL, "%s: %s", name, err.msg);
        p.lg[k] = malloc(sizeof(float) * (size_t)16 * (size_t)p.vocab);
    }
    if (!p.kv[0] || !p.kv[1]) goto done;
    /* FP32 activations (tight) unless BF16/F16 weights go through cuBLAS */
    const double tight = 2e-3, loose = 3e-2;
    /* GPT-2's transposed Conv1D weights always take cuBLAS */
    const int transposed = c->arch == TD_ARCH_GPT2 || c->arch == TD_ARCH_DIFFUGPT;
    const double small = p.bf16 && (mode == TD_CUDA_MATMUL_CUBLAS || transposed) ? loose : tight;
    const double wide = p.bf16 ? loose : tight;
    const td_attn_kind_t def = c->causal ? TD_ATTN_CAUSAL : TD_ATTN_BIDIR;
    int32_t tok[16], pos[16], seq[16];
    for (int i = 0; i < 16; i++) tok[i] = (int32_t)((i * 37 + 11) % p.vocab);
    /* prefill 6, decode 1 */
    td_batch_t b = {.n = 6, .tokens = tok, .attn = def};
    s_step(&p, &b, 6, small, "prefill 6");
    b = (td_batch_t){.n = 1, .tokens = tok + 6, .attn = def};
    s_step(&p, &b, 1, small, "decode 1");
    /* two sequences in one batch: 5 new tokens of slot 1, 2 more of slot 0 */
    for (int i = 0; i < 7; i++) {
        seq[i] = i < 5 ? 1 : 0;
        pos[i] = i < 5 ? i : 7 + (i - 5);
    }
    b = (td_batch_t){.n = 7, .tokens = tok + 3, .pos = pos, .seq = seq, .attn = TD_ATTN_CAUSAL};
    s_step(&p, &b, 7, small, "two sequences");
    /* crop slot 0 to 4 and rewrite positions 4..7 in place, block-causal */
    for (int k = 0; k < 2; k++) td_kv_cache_crop(p.kv[k], 0, 4);
    for (int i = 0; i < 4; i++) pos[i] = 4 + i, seq[i] = 0;
    b = (td_batch_t){.n = 4,
                     .tokens = tok + 9,
                     .pos = pos,
                     .seq = seq,
                     .attn = TD_ATTN_BLOCK_CAUSAL,
                     .block_size = 4};
    s_step(&p, &b, 4, small, "crop and rewrite");
    /* a copied prefix in slot 2, extended under an explicit mask; logits of two rows only */
    for (int k = 0; k < 2; k++) CHECK_EQ_INT(td_kv_cache_copy_seq(p.kv[k], 0, 2, 6), TD_OK);
    uint8_t mask[3 * 32], sel[3] = {1, 0, 1};
    for (int t = 0; t < 3; t++)
        for (int j = 0; j < 32; j++) mask[t * 32 + j] = (uint8_t)(j <= 6 + t && (j + t) % 3 != 1);
    for (int i = 0; i < 3; i++) pos[i] = 6 + i, seq[i] = 2;
    b = (td_batch_t){.n = 3,
                     .tokens = tok + 2,
                     .pos = pos,
                     .seq = seq,
                     .attn = TD_ATTN_EXPLICIT,
                     .mask = mask,
                     .mask_stride = 32,
                     .logits_for = sel};
    s_step(&p, &b, 2, small, "copied prefix, explicit mask");
    /* a 12-token prefill in slot 1 (cuBLAS for every path) */
    for (int k = 0; k < 2; k++) td_kv_cache_crop(p.kv[k], 1, 0);
    for (int i = 0; i < 12; i++) seq[i] = 1;
    b = (td_batch_t){.n = 12, .tokens = tok + 1, .seq = seq, .attn = def};
    s_step(&p, &b, 12, wide, "prefill 12");
done:
    for (int k = 0; k < 2; k++) {
        td_kv_cache_destroy(&p.kv[k]);
        td_model_destroy(&p.m[k]);
        free(p.lg[k]);
    }
    td_backend_destroy(&gpu);
    td_backend_destroy(&cpu);
}

static void s_all_models(int mode) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models", td_test_data());
    DIR *d = opendir(dir);
    REQUIRE(d);
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[1300], cfgp[1400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(cfgp, sizeof cfgp, "%s/config.json", path);
        struct stat st;
        if (stat(cfgp, &st) != 0) continue;
        s_forward_model(path, e->d_name, mode);
        count++;
        if (td_cuda_device_count() == 0) break; /* skipped: once is enough */
    }
    closedir(d);
    CHECK(count > 0);
}

/* The open forward on the device: hidden states (td_batch_t.hidden_layers, rows selected, layers
 * out of order) against the CPU backend's, and input embeddings (the rows of the ids, from the
 * CPU model's L = 0 hidden states) giving the same logits as the ids on the device. */
TD_TEST(cuda_hidden_states_and_embd_vs_cpu) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *cpu = td_backend_cpu_new(2, 0, &err);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/qwen2", td_test_data());
    td_model_t *mc = td_model_load(dir, cpu, &err), *mg = td_model_load(dir, gpu, &err);
    REQUIRE(mc && mg);
    const td_config_t *c = td_model_config(mc);
    const int C = c->n_embd, V = c->n_vocab;
    enum { N = 8 };
    int32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((i * 37 + 11) % V);
    int layers[3] = {c->n_layer, 0, 1};
    uint8_t sel[N] = {1, 0, 0, 1, 0, 1, 0, 1};
    float hc[4 * 3 * 64], hg[4 * 3 * 64];
    REQUIRE(C <= 64);
    float *lc = malloc(sizeof(float) * 4 * (size_t)V), *lg = malloc(sizeof(float) * 4 * (size_t)V);
    td_kv_cache_t *kc = td_kv_cache_new(mc, 1, 32, &err), *kg = td_kv_cache_new(mg, 1, 32, &err);
    td_batch_t bc = {.n = N,
                     .tokens = tok,
                     .attn = TD_ATTN_CAUSAL,
                     .logits_for = sel,
                     .hidden_layers = layers,
                     .n_hidden_layers = 3,
                     .hidden_out = hc};
    td_batch_t bg = bc;
    bg.hidden_out = hg;
    CHECK_EQ_INT(td_model_forward(mc, kc, &bc, lc, &err), TD_OK);
    CHECK_MSG(td_model_forward(mg, kg, &bg, lg, &err) == TD_OK, "cuda: %s", err.msg);
    double w = s_worst(hg, hc, 4 * 3 * (int64_t)C, 2e-3, 2e-3);
    printf("    hidden states cuda vs cpu: worst %.3g\n", w);
    CHECK(w <= 1.0);
    /* embeddings in: the L = 0 rows of every token (hidden states of all rows on the CPU) */
    float *emb = malloc(sizeof(float) * N * (size_t)C);
    int l0 = 0;
    td_batch_t be = {.n = N,
                     .tokens = tok,
                     .attn = TD_ATTN_CAUSAL,
                     .hidden_layers = &l0,
                     .n_hidden_layers = 1,
                     .hidden_out = emb};
    td_kv_cache_crop(kc, 0, 0);
    CHECK_EQ_INT(td_model_forward(mc, kc, &be, NULL, &err), TD_OK);
    td_batch_t bt = {.n = N, .tokens = tok, .attn = TD_ATTN_CAUSAL, .logits_for = sel};
    td_batch_t bm = {.n = N, .embd = emb, .attn = TD_ATTN_CAUSAL, .logits_for = sel};
    td_kv_cache_crop(kg, 0, 0);
    CHECK_EQ_INT(td_model_forward(mg, kg, &bt, lc, &err), TD_OK);
    td_kv_cache_crop(kg, 0, 0);
    CHECK_EQ_INT(td_model_forward(mg, kg, &bm, lg, &err), TD_OK);
    CHECK_MSG(!memcmp(lc, lg, sizeof(float) * 4 * (size_t)V),
              "cuda: embeddings of the ids give other logits than the ids");
    free(emb), free(lc), free(lg);
    td_kv_cache_destroy(&kc);
    td_kv_cache_destroy(&kg);
    td_model_destroy(&mc);
    td_model_destroy(&mg);
    td_backend_destroy(&cpu);
    td_backend_destroy(&gpu);
}

TD_TEST(cuda_forward_fixtures_auto) { s_all_models(TD_CUDA_MATMUL_AUTO); }
TD_TEST(cuda_forward_fixtures_cublas) { s_all_models(TD_CUDA_MATMUL_CUBLAS); }

/* two backends (a drafter and a verifier) on one device, and on a second device when present */
TD_TEST(cuda_two_backends) {
    td_backend_t *a = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!a) return;
    td_err_t err = {0};
    int dev_b = td_cuda_device_count() > 1 ? 1 : 0;
    td_backend_t *b = td_backend_cuda_new(dev_b, &err);
    REQUIRE(b);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/qwen2", td_test_data());
    td_model_t *ma = td_model_load(dir, a, &err), *mb = td_model_load(dir, b, &err);
    REQUIRE(ma && mb);
    td_kv_cache_t *ka = td_kv_cache_new(ma, 1, 32, &err), *kb = td_kv_cache_new(mb, 1, 32, &err);
    REQUIRE(ka && kb);
    const int V = td_model_config(ma)->n_vocab;
    float *la = malloc(sizeof(float) * (size_t)V * 4), *lb = malloc(sizeof(float) * (size_t)V * 4);
    int32_t tok[4] = {5, 9, 2, 7};
    for (int step = 0; step < 3; step++) {
        td_batch_t bt = {.n = 4, .tokens = tok, .attn = TD_ATTN_CAUSAL};
        CHECK(td_model_forward(ma, ka, &bt, la, &err) == TD_OK);
        CHECK(td_model_forward(mb, kb, &bt, lb, &err) == TD_OK);
        /* bitwise equal on one device; another device model may pick other cuBLAS kernels */
        double wst = s_worst(lb, la, (int64_t)V * 4, 1e-4, 1e-4);
        CHECK_MSG(dev_b == 0 ? memcmp(la, lb, sizeof(float) * (size_t)V * 4) == 0 : wst <= 1.0,
                  "two backends disagree at step %d (error %.3g of tolerance)", step, wst);
    }
    char name[256];
    CHECK_EQ_INT(td_cuda_device_name(dev_b, name, sizeof name), TD_OK);
    CHECK(name[0] != '\0');
    s_no_error(a, "backend a");
    s_no_error(b, "backend b");
    free(la), free(lb);
    td_kv_cache_destroy(&ka), td_kv_cache_destroy(&kb);
    td_model_destroy(&ma), td_model_destroy(&mb);
    td_backend_destroy(&a), td_backend_destroy(&b);
}

/* --- block-quantized weights (quant.cu) ----------------------------------------------------------
 * Products against two CPU products on the same blocks:
 *  - the reference backend (each row dequantized by td_dequantize_row, dotted in double): the GPU
 *    uses the bitwise same weights and FP32 activations, so only the summation order differs:
 *    |gpu - ref| <= 1e-5 sum_c |x_c w_rc| + 1e-6 (the float GEMV bound);
 *  - the CPU backend's own product, which rounds each 32-block of activations to int8 with scale
 *    d = amax / 127 (an element moves by at most d / 2): |gpu - cpu| <= 1e-5 sum |x w| +
 *    0.501 sum_c |w_rc| d_blk(c) + 1e-6.
 * Skinny products (n <= 24 in auto mode, any n in the GEMV mode) are batch-invariant: the rows of
 * a token are memcmp-equal to that token's product alone. get_rows is bitwise td_dequantize_row. */

static const td_dtype_t s_qtypes[] = {TD_DTYPE_Q8_0, TD_DTYPE_Q4_0, TD_DTYPE_Q4_1, TD_DTYPE_Q5_0,
                                      TD_DTYPE_Q5_1, TD_DTYPE_Q4_K, TD_DTYPE_Q5_K, TD_DTYPE_Q6_K};
#define S_NQTYPES ((int)(sizeof s_qtypes / sizeof s_qtypes[0]))

/* rows x ld random floats (row scales vary, a few rows with an offset) quantized row by row */
static void *s_quant_host(td_dtype_t dt, int64_t rows, int64_t ld, float scale) {
    const size_t rb = td_dtype_row_bytes(dt, ld);
    uint8_t *q = malloc(rb * (size_t)rows);
    float *f = malloc(sizeof(float) * (size_t)ld);
    for (int64_t r = 0; r < rows; r++) {
        const float rs = scale * (0.25f + (float)(r % 5) * 0.3f), off = r % 7 == 3 ? 0.5f : 0.0f;
        for (int64_t c = 0; c < ld; c++) f[c] = s_randf() * rs + off * scale;
        CHECK_EQ_INT(td_quantize_row(dt, f, q + rb * (size_t)r, ld), TD_OK);
    }
    free(f);
    return q;
}

/* |error| bounds per output element (see above): vs the reference, and vs the CPU's int8 path */
static void s_qbounds(const td_weight_t *w, const float *x, int n, double *b_ref, double *b_cpu) {
    const int64_t rows = w->rows, cols = w->cols, ld = w->ld ? w->ld : cols;
    const size_t rb = td_dtype_row_bytes(w->dtype, ld);
    float *wr = malloc(sizeof(float) * (size_t)ld);
    double *dblk = malloc(sizeof(double) * (size_t)(cols / 32));
    for (int64_t r = 0; r < rows; r++) {
        td_dequantize_row(w->dtype, (const uint8_t *)w->data + rb * (size_t)r, wr, ld);
        for (int t = 0; t < n; t++) {
            const float *xt = x + (int64_t)t * cols;
            for (int64_t k = 0; k < cols / 32; k++) {
                double amax = 0;
                for (int j = 0; j < 32; j++)
                    if (fabs(xt[32 * k + j]) > amax) amax = fabs(xt[32 * k + j]);
                dblk[k] = amax / 127;
            }
            double sa = 0, sq = 0;
            for (int64_t c = 0; c < cols; c++) {
                sa += fabs((double)xt[c] * wr[c]);
                sq += fabs((double)wr[c]) * dblk[c / 32];
            }
            b_ref[t * rows + r] = 1e-5 * sa + 1e-6;
            b_cpu[t * rows + r] = 1e-5 * sa + 0.501 * sq + 1e-6;
        }
    }
    free(wr), free(dblk);
}

static int64_t s_first_over(const float *a, const float *b, const double *bound, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= bound[i])) return i;
    return -1;
}

/* One weight, products at every n of ns (in the given matmul mode) against both CPU backends,
 * and (skinny) the batch invariance against n = 1 products of each token. */
static void s_qcase(td_backend_t *gpu, td_backend_t *ref, td_backend_t *cpu, td_dtype_t dt,
                    int64_t rows, int64_t cols, int64_t ld, int with_bias, int mode, const int *ns,
                    int nn) {
    int nmax = 0;
    for (int i = 0; i < nn; i++) nmax = ns[i] > nmax ? ns[i] : nmax;
    const size_t rb = td_dtype_row_bytes(dt, ld);
    void *wh = s_quant_host(dt, rows, ld, 0.5f);
    float *bh = s_rand_floats(rows, 1.0f);
    float *x = s_rand_floats(nmax * cols, 1.0f);
    for (int64_t i = 0; i < nmax * cols; i += 29) x[i] *= 8.0f; /* outliers inside blocks */
    td_weight_t w = {wh, dt, rows, cols, 0, ld == cols ? 0 : ld, 0},
                b = {bh, TD_DTYPE_F32, 1, rows, 0, 0, 0};
    void *wd = s_dev_copy(gpu, wh, rb * (size_t)rows);
    float *bd = s_dev_copy(gpu, bh, sizeof(float) * (size_t)rows);
    float *xd = s_dev_copy(gpu, x, sizeof(float) * (size_t)(nmax * cols));
    float *yd = td_backend_alloc(gpu, sizeof(float) * (size_t)(nmax * rows));
    float *y1d = td_backend_alloc(gpu, sizeof(float) * (size_t)(nmax * rows));
    float *yr = malloc(sizeof(float) * (size_t)(nmax * rows)),
          *yc = malloc(sizeof(float) * (size_t)(nmax * rows)),
          *yg = malloc(sizeof(float) * (size_t)(nmax * rows)),
          *y1 = malloc(sizeof(float) * (size_t)(nmax * rows));
    double *br = malloc(sizeof(double) * (size_t)(nmax * rows)),
           *bc = malloc(sizeof(double) * (size_t)(nmax * rows));
    REQUIRE(wd && bd && xd && yd && y1d);
    td_weight_t wg = w, bg = b;
    wg.data = wd, bg.data = bd;
    const td_weight_t *bias = with_bias ? &b : NULL, *biasg = with_bias ? &bg : NULL;
    td_backend_cuda_set_matmul(gpu, mode);
    const int skinny_max = mode == TD_CUDA_MATMUL_GEMV   ? 1 << 30
                           : mode == TD_CUDA_MATMUL_AUTO ? 24
                                                         : 0;
    /* every token alone (the batch-invariance reference) */
    for (int t = 0; t < nmax && nmax <= skinny_max; t++)
        td_op_matmul(gpu, y1d + (int64_t)t * rows, xd + (int64_t)t * cols, &wg, biasg, 1);
    td_backend_get(gpu, y1, y1d, sizeof(float) * (size_t)(nmax * rows));
    s_qbounds(&w, x, nmax, br, bc);
    if (with_bias)
        for (int64_t i = 0; i < nmax * rows; i++) {
            br[i] += 1e-6 * fabs(bh[i % rows]);
            bc[i] += 1e-6 * fabs(bh[i % rows]);
        }
    for (int i = 0; i < nn; i++) {
        const int n = ns[i];
        const int64_t cnt = (int64_t)n * rows;
        td_op_matmul(ref, yr, x, &w, bias, n);
        td_op_matmul(cpu, yc, x, &w, bias, n);
        td_op_matmul(gpu, yd, xd, &wg, biasg, n);
        td_backend_get(gpu, yg, yd, sizeof(float) * (size_t)cnt);
        s_no_error(gpu, "quantized matmul");
        int64_t bad = s_first_over(yg, yr, br, cnt);
        CHECK_MSG(
            bad < 0,
            "%s %lldx%lld ld %lld mode %d n=%d: y[%lld] = %.8g vs reference %.8g (bound %.3g)",
            td_dtype_name(dt), (long long)rows, (long long)cols, (long long)ld, mode, n,
            (long long)bad, bad >= 0 ? yg[bad] : 0.0, bad >= 0 ? yr[bad] : 0.0,
            bad >= 0 ? br[bad] : 0.0);
        bad = s_first_over(yg, yc, bc, cnt);
        CHECK_MSG(
            bad < 0,
            "%s %lldx%lld mode %d n=%d: y[%lld] = %.8g vs cpu (int8 activations) %.8g (bound %.3g)",
            td_dtype_name(dt), (long long)rows, (long long)cols, mode, n, (long long)bad,
            bad >= 0 ? yg[bad] : 0.0, bad >= 0 ? yc[bad] : 0.0, bad >= 0 ? bc[bad] : 0.0);
        if (n <= skinny_max)
            CHECK_MSG(memcmp(yg, y1, sizeof(float) * (size_t)cnt) == 0,
                      "%s %lldx%lld mode %d n=%d: not bitwise the tokens' single products",
                      td_dtype_name(dt), (long long)rows, (long long)cols, mode, n);
    }
    td_backend_free(gpu, wd), td_backend_free(gpu, bd), td_backend_free(gpu, xd);
    td_backend_free(gpu, yd), td_backend_free(gpu, y1d);
    free(wh), free(bh), free(x), free(yr), free(yc), free(yg), free(y1), free(br), free(bc);
}

TD_TEST(cuda_quant_matmul_vs_cpu) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *ref = td_backend_cpu_new(1, 1, &err), *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(ref && cpu);
    int all[24];
    for (int i = 0; i < 24; i++) all[i] = i + 1;
    const int some[] = {1, 3, 8, 9, 17, 24}, wide[] = {25, 40}, gemv[] = {2, 11, 40};
    for (int q = 0; q < S_NQTYPES; q++) {
        const td_dtype_t dt = s_qtypes[q];
        const int64_t blk = td_dtype_block_elems(dt);
        /* odd row counts (a clamped last warp row), 3 or 5 blocks per row, a sliced weight */
        const int64_t c0 = blk == 32 ? 96 : 256, c1 = blk == 32 ? 160 : 512;
        s_qcase(gpu, ref, cpu, dt, 37, c0, c0, 0, TD_CUDA_MATMUL_AUTO, all, 24);
        s_qcase(gpu, ref, cpu, dt, 67, c1, c1 + blk, 1, TD_CUDA_MATMUL_AUTO, some, 6);
        s_qcase(gpu, ref, cpu, dt, 67, c1, c1 + blk, 1, TD_CUDA_MATMUL_AUTO, wide, 2);
        s_qcase(gpu, ref, cpu, dt, 37, c0, c0, 0, TD_CUDA_MATMUL_CUBLAS, some, 3);
        s_qcase(gpu, ref, cpu, dt, 37, c0, c0, 1, TD_CUDA_MATMUL_GEMV, gemv, 3);
    }
    td_backend_destroy(&gpu), td_backend_destroy(&ref), td_backend_destroy(&cpu);
}

/* embedding rows of quantized tables: bitwise the reference dequantization (and the CPU op's) */
TD_TEST(cuda_quant_get_rows) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(cpu);
    const int32_t ids[] = {0, 49, 7, 7, 23, 48};
    const int n = 6;
    for (int q = 0; q < S_NQTYPES; q++) {
        const td_dtype_t dt = s_qtypes[q];
        const int64_t blk = td_dtype_block_elems(dt), cols = blk == 32 ? 96 : 512, ld = cols + blk;
        const size_t rb = td_dtype_row_bytes(dt, ld);
        void *th = s_quant_host(dt, 50, ld, 2.0f);
        void *td = s_dev_copy(gpu, th, rb * 50);
        float *yd = td_backend_alloc(gpu, sizeof(float) * (size_t)(n * cols));
        float *yg = malloc(sizeof(float) * (size_t)(n * cols)),
              *yc = malloc(sizeof(float) * (size_t)(n * cols)),
              *yr = malloc(sizeof(float) * (size_t)(n * ld));
        REQUIRE(td && yd);
        td_weight_t t = {th, dt, 50, cols, 0, ld, 0}, tg = t;
        tg.data = td;
        td_op_get_rows(gpu, yd, &tg, ids, n);
        td_backend_get(gpu, yg, yd, sizeof(float) * (size_t)(n * cols));
        s_no_error(gpu, "quantized get_rows");
        td_op_get_rows(cpu, yc, &t, ids, n);
        for (int i = 0; i < n; i++) {
            td_dequantize_row(dt, (const uint8_t *)th + rb * (size_t)ids[i], yr, ld);
            CHECK_MSG(memcmp(yg + (int64_t)i * cols, yr, sizeof(float) * (size_t)cols) == 0,
                      "%s get_rows row %d: not the reference dequantization", td_dtype_name(dt), i);
        }
        CHECK_MSG(memcmp(yg, yc, sizeof(float) * (size_t)(n * cols)) == 0,
                  "%s get_rows: not the CPU backend's rows", td_dtype_name(dt));
        td_backend_free(gpu, td), td_backend_free(gpu, yd);
        free(th), free(yg), free(yc), free(yr);
    }
    /* transposed quantized weights are refused with a message, not computed wrongly */
    {
        void *wh = s_quant_host(TD_DTYPE_Q8_0, 4, 32, 1.0f);
        void *wd = s_dev_copy(gpu, wh, td_dtype_row_bytes(TD_DTYPE_Q8_0, 32) * 4);
        float *xd = td_backend_alloc(gpu, sizeof(float) * 32), *yd = td_backend_alloc(gpu, 64);
        td_weight_t w = {wd, TD_DTYPE_Q8_0, 32, 4, 1, 0, 0}; /* the caller's checks would assert */
        td_backend_cuda_set_matmul(gpu, TD_CUDA_MATMUL_AUTO);
        gpu->iface->matmul(gpu, yd, xd, &w, NULL, 1);
        td_err_t e = {0};
        CHECK_EQ_INT(td_backend_cuda_error(gpu, &e), TD_ERR_UNSUPPORTED);
        CHECK(strstr(e.msg, "transposed") != NULL);
        td_backend_free(gpu, wd), td_backend_free(gpu, xd), td_backend_free(gpu, yd);
        free(wh);
    }
    td_backend_destroy(&gpu), td_backend_destroy(&cpu);
}

/* --- a tiny quantized GGUF (llama, 2 layers, every block type), CUDA vs CPU logits --------------
 */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} s_buf_t;
static void s_bput(s_buf_t *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void s_bu32(s_buf_t *b, uint32_t v) { s_bput(b, &v, 4); } /* little-endian host */
static void s_bu64(s_buf_t *b, uint64_t v) { s_bput(b, &v, 8); }
static void s_bstr(s_buf_t *b, const char *s) {
    s_bu64(b, strlen(s));
    s_bput(b, s, strlen(s));
}
static void s_bpad(s_buf_t *b) {
    const uint8_t z = 0;
    while (b->n % 32) s_bput(b, &z, 1);
}

typedef struct {
    s_buf_t kv, info, data;
    uint64_t n_kv, n_t;
} s_gguf_w_t;

static void s_kv_u32(s_gguf_w_t *g, const char *k, uint32_t v) {
    s_bstr(&g->kv, k), s_bu32(&g->kv, 4 /* UINT32 */), s_bu32(&g->kv, v), g->n_kv++;
}
static void s_kv_f32(s_gguf_w_t *g, const char *k, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    s_bstr(&g->kv, k), s_bu32(&g->kv, 6 /* FLOAT32 */), s_bu32(&g->kv, u), g->n_kv++;
}
static void s_kv_str(s_gguf_w_t *g, const char *k, const char *v) {
    s_bstr(&g->kv, k), s_bu32(&g->kv, 8 /* STRING */), s_bstr(&g->kv, v), g->n_kv++;
}
/* ggml's type ids of td_dtype_t's types */
static uint32_t s_ggml_id(td_dtype_t t) {
    switch (t) {
    case TD_DTYPE_Q4_0:
        return 2;
    case TD_DTYPE_Q4_1:
        return 3;
    case TD_DTYPE_Q5_0:
        return 6;
    case TD_DTYPE_Q5_1:
        return 7;
    case TD_DTYPE_Q8_0:
        return 8;
    case TD_DTYPE_Q4_K:
        return 12;
    case TD_DTYPE_Q5_K:
        return 13;
    case TD_DTYPE_Q6_K:
        return 14;
    default:
        return 0; /* F32 */
    }
}
/* a [rows, cols] tensor (a vector when rows == 0): random, quantized unless dt is F32 */
static void s_gguf_tensor(s_gguf_w_t *g, const char *name, td_dtype_t dt, int64_t rows,
                          int64_t cols, float scale, float offset) {
    s_bpad(&g->data);
    s_bstr(&g->info, name);
    s_bu32(&g->info, rows ? 2 : 1);
    s_bu64(&g->info, (uint64_t)cols);
    if (rows) s_bu64(&g->info, (uint64_t)rows);
    s_bu32(&g->info, s_ggml_id(dt));
    s_bu64(&g->info, g->data.n);
    const int64_t r = rows ? rows : 1;
    if (dt == TD_DTYPE_F32) {
        for (int64_t i = 0; i < r * cols; i++) {
            const float v = offset + scale * s_randf();
            s_bput(&g->data, &v, 4);
        }
    } else {
        void *q = s_quant_host(dt, r, cols, scale);
        s_bput(&g->data, q, td_dtype_row_bytes(dt, cols) * (size_t)r);
        free(q);
    }
    g->n_t++;
}

/* Writes the model; 0 or -1. C 256 (4 heads of 64, 2 KV heads), FFN 512, vocabulary 300. */
static int s_write_quant_gguf(const char *path) {
    const int64_t C = 256, KV = 128, F = 512, V = 300;
    s_gguf_w_t g = {0};
    s_kv_str(&g, "general.architecture", "llama");
    s_kv_u32(&g, "llama.embedding_length", (uint32_t)C);
    s_kv_u32(&g, "llama.block_count", 2);
    s_kv_u32(&g, "llama.feed_forward_length", (uint32_t)F);
    s_kv_u32(&g, "llama.attention.head_count", 4);
    s_kv_u32(&g, "llama.attention.head_count_kv", 2);
    s_kv_u32(&g, "llama.context_length", 256);
    s_kv_f32(&g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    s_kv_f32(&g, "llama.rope.freq_base", 10000.0f);
    /* Q4_1 embeddings as the shipped SmolLM2; every block type in some matrix */
    const td_dtype_t lt[2][7] = {{TD_DTYPE_Q4_K, TD_DTYPE_Q6_K, TD_DTYPE_Q8_0, TD_DTYPE_Q4_0,
                                  TD_DTYPE_Q5_K, TD_DTYPE_Q5_0, TD_DTYPE_Q6_K},
                                 {TD_DTYPE_Q4_1, TD_DTYPE_Q4_0, TD_DTYPE_Q5_1, TD_DTYPE_Q8_0,
                                  TD_DTYPE_Q4_K, TD_DTYPE_Q6_K, TD_DTYPE_Q4_1}};
    s_gguf_tensor(&g, "token_embd.weight", TD_DTYPE_Q4_1, V, C, 1.0f, 0);
    s_gguf_tensor(&g, "output_norm.weight", TD_DTYPE_F32, 0, C, 0.1f, 1.0f);
    s_gguf_tensor(&g, "output.weight", TD_DTYPE_Q8_0, V, C, 0.15f, 0);
    char nm[64];
    for (int l = 0; l < 2; l++) {
        const float s = 0.12f;
#define S_T(suffix, dt, rows, cols, sc, off)                                                       \
    snprintf(nm, sizeof nm, "blk.%d." suffix, l), s_gguf_tensor(&g, nm, dt, rows, cols, sc, off)
        S_T("attn_norm.weight", TD_DTYPE_F32, 0, C, 0.1f, 1.0f);
        S_T("attn_q.weight", lt[l][0], C, C, s, 0);
        S_T("attn_k.weight", lt[l][1], KV, C, s, 0);
        S_T("attn_v.weight", lt[l][2], KV, C, s, 0);
        S_T("attn_output.weight", lt[l][3], C, C, s, 0);
        S_T("ffn_norm.weight", TD_DTYPE_F32, 0, C, 0.1f, 1.0f);
        S_T("ffn_gate.weight", lt[l][4], F, C, s, 0);
        S_T("ffn_up.weight", lt[l][5], F, C, s, 0);
        S_T("ffn_down.weight", lt[l][6], C, F, s * 0.7f, 0);
#undef S_T
    }
    s_buf_t f = {0};
    s_bu32(&f, 0x46554747u), s_bu32(&f, 3), s_bu64(&f, g.n_t), s_bu64(&f, g.n_kv);
    s_bput(&f, g.kv.p, g.kv.n);
    s_bput(&f, g.info.p, g.info.n);
    s_bpad(&f);
    s_bput(&f, g.data.p, g.data.n);
    FILE *fp = fopen(path, "wb");
    int rc = fp && fwrite(f.p, 1, f.n, fp) == f.n ? 0 : -1;
    if (fp && fclose(fp)) rc = -1;
    free(f.p), free(g.kv.p), free(g.info.p), free(g.data.p);
    return rc;
}

/* max |a - b| over n */
static double s_max_diff(const float *a, const float *b, int64_t n) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= w)) w = e;
    }
    return w;
}

/* The whole forward of the tiny quantized GGUF on three backends: CUDA, the CPU reference backend
 * (exact dequantization, FP32 activations, double sums) and the CPU backend (int8 activations on
 * the skinny path). CUDA vs reference: 2e-3 x max(1, max |logit|), the float fixtures' bound (the
 * same weights, FP32 activations: only summation order and the FP32 ops of the layers differ).
 * CUDA vs the CPU backend: no farther than the reference is from it, + 2e-3 x max(1, max |logit|)
 * (the int8 rounding of every activation compounds over the layers: about 0.3-0.5 logits here on
 * the skinny steps, far more than the CUDA-vs-reference difference; a fixed bound would say
 * nothing). Steps: prefill 6 and a 9-token verification (skinny products), decode 1, prefill 30
 * (dequantized panels + SGEMM on both sides). */
typedef struct {
    int t0, n, crop;
    const char *what;
} s_qstep_t;

/* Loads the GGUF at path on gpu, the CPU reference backend and the CPU backend, runs the steps
 * (tokens from tok) on one sequence and checks the bounds above at every step. */
static void s_quant_compare(td_backend_t *gpu, const char *path, const int32_t *tok,
                            const s_qstep_t *steps, int n_steps, int n_ctx, int n_max) {
    td_err_t err = {0};
    td_backend_t *be[3] = {gpu, td_backend_cpu_new(1, 1, &err), td_backend_cpu_new(2, 0, &err)};
    td_model_t *m[3] = {0};
    td_kv_cache_t *kv[3] = {0};
    float *lg[3] = {0};
    int V = 0;
    for (int k = 0; k < 3; k++) {
        REQUIRE(be[k]);
        m[k] = td_model_load(path, be[k], &err);
        CHECK_MSG(m[k] != NULL, "%s on %s: %s", path, td_backend_name(be[k]), err.msg);
        if (!m[k]) goto done;
        V = td_model_config(m[k])->n_vocab;
        /* float32 caches on the CPUs too: the CUDA backend keeps no f16 cache, and a quantized
         * model's CPU default (f16) would move every later int8 step (model/model.h) */
        setenv("TD_KV_TYPE", "f32", 1);
        kv[k] = td_kv_cache_new(m[k], 1, n_ctx, &err);
        unsetenv("TD_KV_TYPE");
        lg[k] = malloc(sizeof(float) * (size_t)n_max * (size_t)V);
        REQUIRE(kv[k] && lg[k]);
    }
    for (int s = 0; s < n_steps; s++) {
        int32_t *t = malloc(sizeof(int32_t) * (size_t)steps[s].n);
        for (int i = 0; i < steps[s].n; i++) t[i] = tok[steps[s].t0 + i] % V;
        td_batch_t b = {.n = steps[s].n, .tokens = t, .attn = TD_ATTN_CAUSAL};
        int rc = TD_OK;
        for (int k = 0; k < 3 && rc == TD_OK; k++) {
            if (steps[s].crop) td_kv_cache_crop(kv[k], 0, 0);
            rc = td_model_forward(m[k], kv[k], &b, lg[k], &err);
            CHECK_MSG(rc == TD_OK, "%s on %s: %s", steps[s].what, td_backend_name(be[k]), err.msg);
        }
        free(t);
        if (rc) goto done;
        s_no_error(gpu, steps[s].what);
        const int64_t cnt = (int64_t)steps[s].n * V;
        double scale = s_max_abs(lg[1], cnt);
        if (scale < 1) scale = 1;
        const double d_ref = s_max_diff(lg[0], lg[1], cnt), d_cpu = s_max_diff(lg[0], lg[2], cnt),
                     d_int8 = s_max_diff(lg[1], lg[2], cnt);
        printf("    %s, %s: max |cuda - reference| %.3g, |cuda - cpu| %.3g, |reference - cpu| "
               "%.3g (max |logit| %.3g)\n",
               path, steps[s].what, d_ref, d_cpu, d_int8, scale);
        CHECK_MSG(d_ref <= 2e-3 * scale, "%s: max |cuda - cpu reference| = %.4g > 2e-3 x %.4g",
                  steps[s].what, d_ref, scale);
        CHECK_MSG(d_cpu <= d_int8 + 2e-3 * scale,
                  "%s: max |cuda - cpu| = %.4g > |reference - cpu| %.4g + 2e-3 x %.4g",
                  steps[s].what, d_cpu, d_int8, scale);
    }
done:
    for (int k = 0; k < 3; k++) {
        td_kv_cache_destroy(&kv[k]);
        td_model_destroy(&m[k]);
        free(lg[k]);
        if (k) td_backend_destroy(&be[k]);
    }
}

TD_TEST(cuda_quant_forward) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    char path[] = "/tmp/td-cuda-quant-XXXXXX.gguf";
    int fd = mkstemps(path, 5);
    REQUIRE(fd >= 0);
    close(fd);
    REQUIRE(s_write_quant_gguf(path) == 0);
    int32_t tok[30];
    for (int i = 0; i < 30; i++) tok[i] = (int32_t)(i * 53 + 7);
    const s_qstep_t steps[] = {{0, 6, 0, "prefill 6"},
                               {6, 1, 0, "decode 1"},
                               {7, 9, 0, "verify 9"},
                               {0, 30, 1, "prefill 30"}};
    s_quant_compare(gpu, path, tok, steps, 4, 64, 30);
    td_backend_destroy(&gpu);
    unlink(path);
}

/* The project's real model (SmolLM2-135M-Instruct Q4_1, Q8_0 embeddings; scripts/get-models.sh),
 * same checks. Skips when absent, and on the emulator (minutes per step) unless
 * TD_CUDA_QUANT_REAL=1. */
TD_TEST(cuda_quant_smollm2) {
    const char *path = getenv("TD_CUDA_QUANT_MODEL");
    if (!path || !*path) path = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (access(path, R_OK) != 0) {
        char why[600];
        snprintf(why, sizeof why, "%s absent (scripts/get-models.sh)", path);
        td_test_skip(why);
        return;
    }
#ifdef TD_CUDA_EMU
    if (!getenv("TD_CUDA_QUANT_REAL")) {
        td_test_skip("the real model on the emulator is slow (TD_CUDA_QUANT_REAL=1 runs it)");
        return;
    }
#endif
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    int32_t tok[40];
    for (int i = 0; i < 40; i++) tok[i] = (int32_t)(i * 977 + 13);
    const s_qstep_t steps[] = {{0, 9, 0, "prefill 9"},
                               {9, 1, 0, "decode 1"},
                               {10, 9, 0, "verify 9"},
                               {0, 40, 1, "prefill 40"}};
    s_quant_compare(gpu, path, tok, steps, getenv("TD_CUDA_QUANT_REAL_STEPS") ? 2 : 4, 64, 40);
    td_backend_destroy(&gpu);
}

/* --- sampling on the device ---------------------------------------------------------------------
 */

/* row kinds: 0 Gaussian-ish, 1 few distinct values (ties), 2 NaN and -inf mixed in, 3 some +inf,
 * 4 nothing finite, 5 a tied maximum, 6 peaked */
static void s_sample_row(float *x, int64_t n, int kind) {
    for (int64_t i = 0; i < n; i++) {
        float u = 0.5f * (s_randf() + 1.0f), g = s_randf();
        switch (kind) {
        case 0:
            x[i] = 2.0f * g * (u + 0.5f);
            break;
        case 1:
            x[i] = floorf(3.0f * g);
            break;
        case 2:
            x[i] = u < 0.15f ? NAN : u < 0.3f ? -INFINITY : 4.0f * g;
            break;
        case 3:
            x[i] = u < 0.001f ? INFINITY : 4.0f * g;
            break;
        case 4:
            x[i] = u < 0.5f ? NAN : -INFINITY;
            break;
        case 5:
            x[i] = i % 97 == 5 ? 3.0f : 2.0f * g;
            break;
        default:
            x[i] = 12.0f * g;
            break;
        }
    }
}

static const td_sample_desc_t s_sample_settings[] = {
    {0.0f, 0, 1.0f}, {NAN, 3, 0.5f},    {1.0f, 0, 1.0f},    {0.7f, 0, 1.0f},  {1.0f, 50, 1.0f},
    {1.0f, 1, 1.0f}, {1.0f, 0, 0.9f},   {0.8f, 0, 0.95f},   {0.7f, 40, 0.9f}, {1.0f, 0, 0.0f},
    {1.0f, 0, 0.3f}, {1e-30f, 0, 0.9f}, {2.0f, 4098, 1.0f}, {1.0f, 0, NAN},   {0.6f, 1000, 0.99f},
};

TD_TEST(cuda_sample_vs_cpu) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(cpu);
    const int vocabs[] = {1, 7, 4099, 151936};
    const int nset = (int)(sizeof s_sample_settings / sizeof s_sample_settings[0]);
    td_rng_t rng;
    td_rng_seed(&rng, 2718);
    long rows_done = 0, sampled = 0, id_diff = 0;
    for (int vi = 0; vi < 4; vi++) {
        const int V = vocabs[vi], R = V > 10000 ? 3 : 8;
        float *x = malloc(sizeof(float) * (size_t)R * V), *dist = malloc(sizeof(float) * V);
        uint64_t seeds[8];
        td_sample_result_t rc_[8], rg[8];
        REQUIRE(x && dist);
        for (int kind = 0; kind < 7; kind++) {
            s_sample_row(x, (int64_t)R * V, kind);
            float *dx = s_dev_copy(gpu, x, sizeof(float) * (size_t)R * V);
            REQUIRE(dx);
            for (int si = 0; si < nset; si++) {
                const td_sample_desc_t *d = &s_sample_settings[si];
                const td_sampling_t sp = {d->temperature, d->top_k, d->top_p};
                const int greedy = !(d->temperature > 0.0f);
                for (int k = 0; k < R; k++) seeds[k] = td_rng_next(&rng);
                CHECK_EQ_INT(td_op_sample(cpu, x, R, V, d, seeds, rc_, &err), TD_OK);
                int rc = td_op_sample(gpu, dx, R, V, d, seeds, rg, &err);
                CHECK_MSG(rc == TD_OK, "V %d kind %d setting %d: %s", V, kind, si, err.msg);
                if (rc != TD_OK) continue;
                for (int k = 0; k < R; k++) {
                    const float *row = x + (size_t)k * V;
                    rows_done++;
                    if (greedy || rc_[k].n_kept == 1) {
                        CHECK_MSG(rg[k].id == rc_[k].id && rg[k].prob == 1.0f && rg[k].n_kept == 1,
                                  "V %d kind %d setting %d row %d: gpu {%d %g %d} cpu {%d %g %d}",
                                  V, kind, si, k, rg[k].id, rg[k].prob, rg[k].n_kept, rc_[k].id,
                                  rc_[k].prob, rc_[k].n_kept);
                        continue;
                    }
                    sampled++;
                    id_diff += rg[k].id != rc_[k].id;
                    REQUIRE(td_sampling_dist(&sp, row, V, dist) == rc_[k].n_kept);
                    const int id = rg[k].id;
                    CHECK_MSG(rg[k].n_kept == rc_[k].n_kept && id >= 0 && id < V &&
                                  dist[id] > 0.0f &&
                                  fabs((double)rg[k].prob - dist[id]) <= 1e-6 * dist[id],
                              "V %d kind %d setting %d row %d: gpu {%d %.9g %d}, cpu kept %d, "
                              "dist[id] %.9g",
                              V, kind, si, k, id, rg[k].prob, rg[k].n_kept, rc_[k].n_kept,
                              id >= 0 && id < V ? dist[id] : -1.0f);
                }
            }
            td_backend_free(gpu, dx);
        }
        free(x), free(dist);
    }
    printf("    %ld rows, %ld sampled: %ld ids differ from the CPU op's (same seeds)\n", rows_done,
           sampled, id_diff);
    CHECK_MSG(id_diff * 100 <= sampled, "%ld of %ld sampled ids differ from the CPU op's", id_diff,
              sampled);
    s_no_error(gpu, "sample");
    td_backend_destroy(&cpu);
    td_backend_destroy(&gpu);
}

/* A row for the chi-square at a large vocabulary: 64 ids spread over it (the last one included)
 * carry almost all the mass, so a few thousand draws give well-filled cells. */
static void s_chi2_row(float *x, int V) {
    for (int i = 0; i < V; i++) x[i] = -8.0f + 0.5f * s_randf();
    for (int j = 0; j < 64; j++) x[(int64_t)j * (V - 1) / 63] = 1.5f + 1.5f * s_randf();
}

/* The CPU emulator (make test-cuda-emu) runs every GPU thread as a fiber: it takes a tenth of the
 * chi-square draws (still thousands per case) so the case stays within minutes. */
#ifdef TD_CUDA_EMU
#define S_CHI2_CALL_DIV 10
#else
#define S_CHI2_CALL_DIV 1
#endif

/* Chi-square of the device's draws (many rows of one logit vector per call, each its own seed)
 * against td_sampling_dist, at V = 4099 and 151936. */
TD_TEST(cuda_sample_chi2) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    const struct {
        int V, rows, calls;
        td_sample_desc_t d;
    } cases[] = {{4099, 2000, 50, {1.0f, 0, 1.0f}},  {4099, 2000, 50, {0.8f, 50, 1.0f}},
                 {4099, 2000, 50, {1.0f, 0, 0.9f}},  {151936, 200, 50, {0.7f, 40, 0.9f}},
                 {151936, 200, 50, {1.0f, 0, 0.5f}}, {151936, 200, 50, {1.3f, 0, 1.0f}}};
    td_rng_t rng;
    td_rng_seed(&rng, 99);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int V = cases[ci].V, R = cases[ci].rows, calls = cases[ci].calls / S_CHI2_CALL_DIV;
        const td_sampling_t sp = {cases[ci].d.temperature, cases[ci].d.top_k, cases[ci].d.top_p};
        float *row = malloc(sizeof(float) * V), *dist = malloc(sizeof(float) * V);
        double *q = malloc(sizeof(double) * V);
        long *obs = calloc((size_t)V, sizeof(long));
        uint64_t *seeds = malloc(sizeof(uint64_t) * R);
        td_sample_result_t *res = malloc(sizeof *res * R);
        float *dx = td_backend_alloc(gpu, sizeof(float) * (size_t)R * V);
        REQUIRE(row && dist && q && obs && seeds && res && dx);
        if (V > 10000)
            s_chi2_row(row, V);
        else
            s_sample_row(row, V, 0);
        for (int k = 0; k < R; k++) td_backend_set(gpu, dx + (size_t)k * V, row, sizeof(float) * V);
        const int kept = td_sampling_dist(&sp, row, V, dist);
        for (int i = 0; i < V; i++) q[i] = dist[i];
        long total = 0;
        for (int call = 0; call < calls; call++) {
            for (int k = 0; k < R; k++) seeds[k] = td_rng_next(&rng);
            int rc = td_op_sample(gpu, dx, R, V, &cases[ci].d, seeds, res, &err);
            CHECK_MSG(rc == TD_OK, "case %zu: %s", ci, err.msg);
            if (rc != TD_OK) break;
            for (int k = 0; k < R; k++)
                if (res[k].id >= 0 && res[k].id < V) obs[res[k].id]++, total++;
        }
        int df = 0;
        double p = td_chisq_pvalue(obs, q, V, total, &df);
        printf("    V=%d T=%g k=%d p=%g: kept %d, %ld draws, chi2 df %d p-value %.3g\n", V,
               sp.temperature, sp.top_k, sp.top_p, kept, total, df, p);
        CHECK_MSG(total == (long)R * calls && df >= 3 && p >= 1e-3,
                  "case %zu: device draws rejected (p %g, %ld draws)", ci, p, total);
        td_backend_free(gpu, dx);
        free(row), free(dist), free(q), free(obs), free(seeds), free(res);
    }
    s_no_error(gpu, "sample chi2");
    td_backend_destroy(&gpu);
}

/* td_model_forward_sample on the GPU: greedy ids equal td_argmax of the GPU's own logits (exactly)
 * and of the CPU's (unless the CPU's top two are within the forward tolerance); sampled ids and
 * probs equal td_sample_seeded on the GPU's logits with the same seeds. */
static void s_forward_sample_model(const char *name) {
    td_err_t err = {0};
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_t *cpu = td_backend_cpu_new(2, 0, &err);
    REQUIRE(cpu);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", td_test_data(), name);
    td_model_t *mc = td_model_load(dir, cpu, &err), *mg = td_model_load(dir, gpu, &err);
    REQUIRE(mc && mg);
    const int V = td_model_config(mc)->n_vocab;
    td_kv_cache_t *kc = td_kv_cache_new(mc, 1, 32, &err), *kg = td_kv_cache_new(mg, 1, 32, &err),
                  *kf = td_kv_cache_new(mg, 1, 32, &err);
    REQUIRE(kc && kg && kf);
    float *lc = malloc(sizeof(float) * (size_t)V * 6), *lf = malloc(sizeof(float) * (size_t)V * 6);
    REQUIRE(lc && lf);
    const td_sampling_t settings[] = {{0.0f, 0, 1.0f}, {0.8f, 20, 0.9f}, {1.0f, 0, 1.0f}};
    int32_t tok[6] = {4, 8, 15, 16, 23, 42}, ids[6];
    float pr[6];
    int near_ties = 0;
    for (int step = 0; step < 6; step++) {
        const td_sampling_t *sp = &settings[step % 3];
        const int n = step == 0 ? 6 : 1;
        for (int i = 0; i < n; i++) tok[i] %= V;
        td_batch_t b = {.n = n, .tokens = tok, .attn = TD_ATTN_CAUSAL};
        REQUIRE(td_model_forward(mc, kc, &b, lc, &err) == TD_OK);
        REQUIRE(td_model_forward(mg, kf, &b, lf, &err) == TD_OK);
        td_rng_t r1, r2;
        td_rng_seed(&r1, 500 + step);
        r2 = r1;
        int rc = td_model_forward_sample(mg, kg, &b, sp, &r1, ids, pr, &err);
        CHECK_MSG(rc == TD_OK, "%s step %d: %s", name, step, err.msg);
        if (rc != TD_OK) break;
        const int greedy = !(sp->temperature > 0.0f);
        for (int k = 0; k < n; k++) {
            const float *rowf = lf + (size_t)k * V, *rowc = lc + (size_t)k * V;
            float prob = 0.0f;
            const int want =
                td_sample_seeded(sp, greedy ? 0 : td_rng_next(&r2), rowf, V, &prob, NULL);
            CHECK_MSG(ids[k] == want && fabs((double)pr[k] - prob) <= 1e-6 * prob,
                      "%s step %d row %d: forward_sample {%d %.9g}, host on the same logits "
                      "{%d %.9g}",
                      name, step, k, ids[k], pr[k], want, prob);
            if (!greedy) continue;
            const int a = td_argmax(rowc, V);
            double scale = s_max_abs(rowc, V), second = -INFINITY;
            for (int i = 0; i < V; i++)
                if (i != a && rowc[i] > second) second = rowc[i];
            if (scale < 1) scale = 1;
            if (rowc[a] - second <= 4e-3 * scale) {
                near_ties++;
                continue;
            }
            CHECK_MSG(ids[k] == a, "%s step %d row %d: gpu greedy %d, cpu argmax %d", name, step, k,
                      ids[k], a);
        }
        tok[0] = ids[n - 1];
    }
    if (near_ties) printf("    %s: %d greedy rows skipped as near ties\n", name, near_ties);
    s_no_error(gpu, name);
    free(lc), free(lf);
    td_kv_cache_destroy(&kc), td_kv_cache_destroy(&kg), td_kv_cache_destroy(&kf);
    td_model_destroy(&mc), td_model_destroy(&mg);
    td_backend_destroy(&gpu), td_backend_destroy(&cpu);
}

TD_TEST(cuda_forward_sample_fixtures) {
    const char *names[] = {"qwen2", "qwen2-bf16", "llama", "gpt2"};
    for (int i = 0; i < 4; i++) {
        s_forward_sample_model(names[i]);
        if (td_cuda_device_count() == 0) break; /* skipped: once is enough */
    }
}

/* The command line on the device, with the bundled models: `tandem generate --device 0` for ar
 * (every step sampled on the device) and for specdiff with both models in one process (the
 * drafter on the last device: --drafter-device), greedy, against the same runs with --device -1
 * (CPU); and a device that does not exist refused with a message naming it. Equal tokens are
 * asserted under the emulator (make test-cuda-emu: deterministic arithmetic, checked to match);
 * on a GPU they are reported, since a near tie may flip (the forward cases above bound the
 * logits). The binary: TD_TANDEM_BIN, else build/bin/tandem. */
static int s_tokens(const char *json, char *out, size_t cap) {
    const char *t = strstr(json, "\"tokens\":[");
    const char *e = t ? strchr(t, ']') : NULL;
    if (!t || !e || (size_t)(e - t) >= cap) return -1;
    memcpy(out, t + 10, (size_t)(e - t - 10));
    out[e - t - 10] = '\0';
    int n = out[0] ? 1 : 0;
    for (const char *c = out; *c; c++) n += *c == ',';
    return n;
}

TD_TEST(cuda_cli_device) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_backend_destroy(&gpu);
    const char *bin = getenv("TD_TANDEM_BIN");
    if (!bin || !*bin) bin = "build/bin/tandem";
    if (access(bin, X_OK) != 0 || access("models/tiny-verifier", R_OK) != 0) {
        char why[600];
        snprintf(why, sizeof why, "no %s or no models/tiny-verifier (run from the repository root)",
                 bin);
        td_test_skip(why);
        return;
    }
    const int nd = td_cuda_device_count();
    static char out[2][65536];
    char cmd[1024], tok[2][4096];
    const char *methods[] = {"ar", "specdiff"};
    for (int mi = 0; mi < 2; mi++) {
        char dev[64];
        for (int side = 0; side < 2; side++) { /* 0: device, 1: CPU */
            if (side == 0 && mi == 1)
                snprintf(dev, sizeof dev, "--device 0 --drafter-device %d", nd - 1);
            else
                snprintf(dev, sizeof dev, "--device %d", side == 0 ? 0 : -1);
            snprintf(cmd, sizeof cmd,
                     "%s generate --method %s --prompt 'And God said' --max-tokens 12 "
                     "--temperature 0 --threads 1 --json %s 2>&1",
                     bin, methods[mi], dev);
            int rc = td_test_run(cmd, out[side], sizeof out[side]);
            CHECK_MSG(rc == 0, "%s: exit %d: %.400s", cmd, rc, out[side]);
            int n = s_tokens(out[side], tok[side], sizeof tok[side]);
            CHECK_MSG(n == 12, "%s: %d tokens: %.400s", cmd, n, out[side]);
            if (n != 12) return;
        }
        const int same = strcmp(tok[0], tok[1]) == 0;
        printf("    %s on the device: %s\n", methods[mi],
               same ? "the CPU's 12 greedy tokens" : "tokens differ from the CPU's");
        if (!same) printf("      device: %s\n      cpu:    %s\n", tok[0], tok[1]);
#ifdef TD_CUDA_EMU
        CHECK_MSG(same, "%s: emulated device and CPU tokens differ", methods[mi]);
#endif
    }
    snprintf(cmd, sizeof cmd, "%s generate --prompt x --max-tokens 2 --device %d 2>&1", bin, nd);
    int rc = td_test_run(cmd, out[0], sizeof out[0]);
    char want[64];
    snprintf(want, sizeof want, "--device %d", nd);
    CHECK_MSG(rc != 0 && strstr(out[0], want), "a missing device accepted: exit %d: %.300s", rc,
              out[0]);
}

/* --- the DFlash drafter on the device ----------------------------------------------------------
 * tests/data/dflash's random-init drafter over models/tiny-verifier (plain, with a draft vocabulary,
 * and with anchor_feature), drafted on the device and on the CPU from the fixture's features: the
 * same -inf ids, logits within the forward tolerance (2e-3 x max |cpu| up to 8 rows of BF16
 * weights, the GEMV path; 3e-2 past it, cuBLAS), and the same greedy drafts where the CPU's top-2
 * margin is clear of that tolerance. */
static void s_dflash_case(td_dflash_t *d[2], const cJSON *cs, const char *what) {
    const cJSON *toks = cJSON_GetObjectItem(cs, "tokens");
    const int n = cJSON_GetArraySize(toks), B = cJSON_GetObjectItem(cs, "block")->valueint;
    char rel[256];
    size_t len = 0;
    snprintf(rel, sizeof rel, "dflash/%s", cJSON_GetObjectItem(cs, "features")->valuestring);
    char *raw = td_test_read(rel, &len);
    REQUIRE(raw);
    const int FD = td_dflash_feature_dim(d[0]);
    REQUIRE(len == (size_t)(n - 1) * FD * sizeof(float));
    float *lg[2] = {NULL, NULL};
    int32_t draft[2][32];
    const int V = 4096;
    for (int k = 0; k < 2; k++) {
        td_err_t err = {0};
        td_dflash_ctx_t *cx = td_dflash_ctx_new(d[k], 64, &err);
        REQUIRE(cx);
        lg[k] = malloc((size_t)(B - 1) * V * sizeof(float));
        td_sampling_t sp = {0};
        CHECK_MSG(td_dflash_ctx_append(cx, (const float *)raw, n - 1, &err) == TD_OK &&
                      td_dflash_draft(cx, cJSON_GetArrayItem(toks, n - 1)->valueint, B, &sp, NULL,
                                      draft[k], NULL, lg[k], &err) == TD_OK,
                  "%s %s: %s", what, k ? "cuda" : "cpu", err.msg);
        td_dflash_ctx_destroy(&cx);
    }
    double scale = 1, worst = 0;
    int inf_bad = 0;
    for (int64_t i = 0; i < (int64_t)(B - 1) * V; i++)
        if (isfinite(lg[0][i]) && fabs(lg[0][i]) > scale) scale = fabs(lg[0][i]);
    const double tol = (B <= 8 ? 2e-3 : 3e-2) * scale;
    for (int64_t i = 0; i < (int64_t)(B - 1) * V; i++) {
        if (isinf(lg[0][i]) || isinf(lg[1][i])) {
            inf_bad += !(isinf(lg[0][i]) && isinf(lg[1][i]));
            continue;
        }
        double dd = fabs((double)lg[0][i] - lg[1][i]);
        if (dd > worst) worst = dd;
    }
    CHECK_MSG(inf_bad == 0, "%s: %d ids -inf on one side only", what, inf_bad);
    CHECK_MSG(worst <= tol, "%s block %d: max |cuda - cpu| %g > %g", what, B, worst, tol);
    for (int r = 0; r < B - 1; r++) {
        const float *row = lg[0] + (size_t)r * V;
        float top = -INFINITY, second = -INFINITY;
        for (int i = 0; i < V; i++)
            if (row[i] > top) second = top, top = row[i];
            else if (row[i] > second) second = row[i];
        if (top - second > 2 * tol)
            CHECK_MSG(draft[0][r] == draft[1][r], "%s row %d: cuda drafts %d, cpu %d", what, r,
                      draft[1][r], draft[0][r]);
    }
    free(lg[0]);
    free(lg[1]);
    free(raw);
}

TD_TEST(cuda_dflash_vs_cpu) {
    td_backend_t *gpu = s_gpu(TD_CUDA_MATMUL_AUTO);
    if (!gpu) return;
    td_err_t err = {0};
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    td_model_t *m[2] = {td_model_load("models/tiny-verifier", cpu, &err), NULL};
    m[1] = m[0] ? td_model_load("models/tiny-verifier", gpu, &err) : NULL;
    CHECK_MSG(m[0] && m[1], "tiny verifier: %s", err.msg);
    char *raw = NULL;
    size_t len = 0;
    cJSON *cases = NULL;
    if (m[0] && m[1] && (raw = td_test_read("dflash/cases.json", &len)))
        cases = cJSON_ParseWithLength(raw, len);
    free(raw);
    CHECK(cases != NULL);
    /* anchor_feature: the fixture drafter's weights under a config that asks for it */
    char af[] = "/tmp/td_cuda_dflashXXXXXX", path[1300], src[1200];
    REQUIRE(mkdtemp(af));
    snprintf(src, sizeof src, "%s/dflash/drafter/config.json", td_test_data());
    if (td_read_file(src, &raw, &len, NULL) == TD_OK) {
        cJSON *o = cJSON_ParseWithLength(raw, len);
        cJSON_AddBoolToObject(o, "anchor_feature", 1);
        char *txt = cJSON_Print(o);
        snprintf(path, sizeof path, "%s/config.json", af);
        FILE *fp = fopen(path, "w");
        if (fp) fputs(txt, fp), fclose(fp);
        free(txt);
        cJSON_Delete(o);
        free(raw);
    }
    char real[1100] = "";
    snprintf(src, sizeof src, "%s/dflash/drafter", td_test_data());
    CHECK(realpath(src, real) != NULL);
    snprintf(src, sizeof src, "%s/model.safetensors", real);
    snprintf(path, sizeof path, "%s/model.safetensors", af);
    CHECK(symlink(src, path) == 0);
    char dirs[3][1200];
    snprintf(dirs[0], sizeof dirs[0], "%s/dflash/drafter", td_test_data());
    snprintf(dirs[1], sizeof dirs[1], "%s/dflash/drafter-vocab", td_test_data());
    snprintf(dirs[2], sizeof dirs[2], "%s", af);
    const char *names[3] = {"dflash", "dflash draft_vocab", "dflash anchor_feature"};
    for (int v = 0; v < 3 && cases; v++) {
        td_dflash_t *d[2] = {td_dflash_load(dirs[v], m[0], 0, 1, &err), NULL};
        if (d[0]) d[1] = td_dflash_load(dirs[v], m[1], 0, 1, &err);
        CHECK_MSG(d[0] && d[1], "%s: %s", names[v], err.msg);
        const cJSON *arr = cJSON_GetObjectItem(cases, "cases");
        for (int ci = 0; d[0] && d[1] && ci < cJSON_GetArraySize(arr); ci++)
            s_dflash_case(d, cJSON_GetArrayItem(arr, ci), names[v]);
        td_dflash_destroy(&d[0]);
        td_dflash_destroy(&d[1]);
    }
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", af);
    unlink(path);
    rmdir(af);
    cJSON_Delete(cases);
    td_model_destroy(&m[0]);
    td_model_destroy(&m[1]);
    td_backend_destroy(&gpu);
    td_backend_destroy(&cpu);
}

TD_TEST_MAIN()
