/* test_sampler.c - the sampler against HF transformers' warpers and against its own distribution.
 *
 * hf_dist: td_sampling_dist equals softmax(TopP(TopK(Temperature(logits)))) as computed by
 *   transformers (tests/data/sampler/dist.bin, made by tools/make_sampler_fixtures.py).
 * rng_*: xoshiro256** / splitmix64 outputs against the reference in the same script; seeding.
 * chi2_*: td_sample and td_sample_probs draw from td_sampling_dist (chi-square goodness of fit,
 *   alpha = 1e-3, p-values from a regularized incomplete gamma checked against torch's), and the
 *   same test rejects slightly wrong distributions.
 * greedy_*, log_softmax_*, nan_*: edge cases. timing_v151936 prints the cost at Qwen's vocabulary.
 * seeded_*, op_sample_*: td_sample_seeded and td_op_sample on the CPU backend (the reference of the
 *   device-side sampling): greedy is td_argmax on random rows with ties, NaN and infinities; prob
 *   and the kept count are td_sampling_dist's bit for bit; draws pass the chi-square test against
 *   td_sampling_dist for several settings (and a perturbed distribution is rejected); bad
 *   arguments are refused. forward_sample_*: td_model_forward_sample on a fixture model against
 *   td_model_forward + the host sampler, and td_generate_ar's CPU output unchanged.
 */
#include "kernels/backend.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tests/tdmodel.h"
#include "tests/tdtest.h"
#include "verifier/generate.h"
#include "tests/tdstats.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>

/* ---- small helpers ---- */

static int s_read(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

/* ln Gamma(a) for a > 0 (libm). */

typedef struct chi2_result {
    double stat;
    int df;
    double p;
    double noncentrality; /* N * sum (q_true - q)^2 / q when q_true is given, else 0 */
} chi2_result_t;

/* Goodness of fit of counts[n] (total N) against expected probabilities q[n] (double, summing to
 * 1 over the support). Bins with expected count < 5 are pooled into one bin, and if that pool
 * is still < 5 it joins the smallest regular bin. A count in a bin with q == 0 makes the
 * statistic infinite. */
static chi2_result_t s_chi2(const long *counts, const double *q, int n, long total) {
    chi2_result_t r = {0, 0, 1.0, 0};
    double pool_e = 0.0;
    long pool_c = 0;
    int bins = 0, smallest = -1;
    for (int i = 0; i < n; i++) {
        double e = q[i] * (double)total;
        if (q[i] == 0.0) {
            if (counts[i] > 0) {
                r.stat = INFINITY;
                r.p = 0.0;
                return r;
            }
            continue;
        }
        if (e < 5.0) {
            pool_e += e;
            pool_c += counts[i];
            continue;
        }
        if (smallest < 0 || e < q[smallest] * (double)total) smallest = i;
    }
    double stat = 0.0;
    for (int i = 0; i < n; i++) {
        double e = q[i] * (double)total;
        if (q[i] == 0.0 || e < 5.0) continue;
        double c = (double)counts[i];
        if (pool_e > 0.0 && pool_e < 5.0 && i == smallest) {
            e += pool_e;
            c += (double)pool_c;
        }
        stat += (c - e) * (c - e) / e;
        bins++;
    }
    if (pool_e >= 5.0) {
        stat += ((double)pool_c - pool_e) * ((double)pool_c - pool_e) / pool_e;
        bins++;
    }
    r.stat = stat;
    r.df = bins - 1;
    r.p = r.df > 0 ? td_chi2_sf(stat, r.df) : 1.0;
    return r;
}

#define ALPHA 1e-3
#define NDRAWS 200000L

/* ---- fixtures from HF ---- */

TD_TEST(rng_matches_reference) {
    char path[512];
    snprintf(path, sizeof path, "%s/sampler/rng.bin", td_test_data());
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    char magic[8];
    uint32_t hdr[3];
    REQUIRE(s_read(f, magic, 8) && s_read(f, hdr, sizeof hdr));
    CHECK_MSG(memcmp(magic, "TDRNG001", 8) == 0 && hdr[0] == 1,
              "%s is stale or not an rng fixture: run python tools/make_sampler_fixtures.py", path);
    for (uint32_t s = 0; s < hdr[1]; s++) {
        uint64_t seed, vals[64];
        double unis[64];
        REQUIRE(hdr[2] <= 64);
        REQUIRE(s_read(f, &seed, 8) && s_read(f, vals, 8 * hdr[2]) && s_read(f, unis, 8 * hdr[2]));
        td_rng_t r;
        td_rng_seed(&r, seed);
        for (uint32_t i = 0; i < hdr[2]; i++)
            CHECK_MSG(td_rng_next(&r) == vals[i], "seed %llu value %u", (unsigned long long)seed,
                      i);
        td_rng_seed(&r, seed);
        for (uint32_t i = 0; i < hdr[2]; i++) {
            double u = td_rng_uniform(&r);
            CHECK(u == unis[i] && u >= 0.0 && u < 1.0);
        }
    }
    fclose(f);
}

TD_TEST(hf_dist) {
    char path[512];
    snprintf(path, sizeof path, "%s/sampler/dist.bin", td_test_data());
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    char magic[8];
    uint32_t hdr[2];
    REQUIRE(s_read(f, magic, 8) && s_read(f, hdr, sizeof hdr));
    REQUIRE(memcmp(magic, "TDSAMPL1", 8) == 0);
    CHECK_MSG(hdr[0] == 1,
              "%s has version %u, expected 1: run python tools/make_sampler_fixtures.py", path,
              hdr[0]);
    REQUIRE(hdr[0] == 1 && hdr[1] > 0);
    td_rng_t rng;
    td_rng_seed(&rng, 1);
    for (uint32_t c = 0; c < hdr[1]; c++) {
        uint32_t V, n_kept;
        td_sampling_t sp;
        REQUIRE(s_read(f, &V, 4) && s_read(f, &sp.temperature, 4) && s_read(f, &sp.top_k, 4) &&
                s_read(f, &sp.top_p, 4) && s_read(f, &n_kept, 4));
        float *logits = malloc(V * sizeof *logits), *probs = malloc(V * sizeof *probs);
        float *probs2 = malloc(V * sizeof *probs2);
        double *ref = calloc(V, sizeof *ref);
        char *listed = calloc(V, 1);
        REQUIRE(logits && probs && probs2 && ref && listed);
        REQUIRE(s_read(f, logits, V * sizeof *logits));
        for (uint32_t i = 0; i < n_kept; i++) {
            int32_t id;
            double p;
            REQUIRE(s_read(f, &id, 4) && s_read(f, &p, 8));
            REQUIRE(id >= 0 && (uint32_t)id < V);
            ref[id] = p;
            listed[id] = 1;
        }
        int kept = td_sampling_dist(&sp, logits, (int)V, probs);
        CHECK_MSG(kept == (int)n_kept, "case %u (V=%u T=%g k=%d p=%g): kept %d, HF keeps %u", c, V,
                  sp.temperature, sp.top_k, sp.top_p, kept, n_kept);
        double maxdiff = 0.0, sum = 0.0;
        int outside = 0;
        for (uint32_t i = 0; i < V; i++) {
            double d = fabs((double)probs[i] - ref[i]);
            if (d > maxdiff) maxdiff = d;
            if (!listed[i] && probs[i] != 0.0f) outside++;
            sum += probs[i];
        }
        CHECK_MSG(maxdiff < 1e-6, "case %u: max |p - p_hf| = %g", c, maxdiff);
        CHECK_MSG(outside == 0, "case %u: %d ids outside HF's kept set have mass", c, outside);
        CHECK_NEAR(sum, 1.0, 1e-5);
        /* td_sample reports the same distribution, and draws inside it */
        int id = td_sample(&sp, &rng, logits, (int)V, probs2);
        CHECK(id >= 0 && (uint32_t)id < V && listed[id]);
        CHECK(memcmp(probs, probs2, V * sizeof *probs) == 0);
        free(logits);
        free(probs);
        free(probs2);
        free(ref);
        free(listed);
    }
    fclose(f);
}

static void s_logits(float *x, int n, uint64_t seed, float scale) {
    td_rng_t r;
    td_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        /* Box-Muller */
        double u1 = (td_rng_uniform(&r) + 0x1.0p-54), u2 = td_rng_uniform(&r);
        x[i] = (float)(scale * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}

/* ---- the O(V) selection against a plain full-sort reading of HF's rules ---- */

typedef struct ref_item {
    double v;
    int id;
} ref_item_t;

/* descending value, and among ties descending id (HF's stable ascending sort, reversed) */
static int s_ref_cmp(const void *pa, const void *pb) {
    const ref_item_t *a = pa, *b = pb;
    if (a->v != b->v) return a->v > b->v ? -1 : 1;
    return a->id > b->id ? -1 : a->id < b->id;
}

/* Reference: sort everything, cut at the k-th value (keeping ties), then walk down the sorted
 * list keeping tokens while the mass above them is < top_p. Writes probs, returns kept count. */
static int s_ref_dist(const td_sampling_t *sp, const float *x, int n, double *probs, char *mask) {
    ref_item_t *it = malloc((size_t)n * sizeof *it);
    for (int i = 0; i < n; i++) {
        it[i].v = isnan(x[i]) ? -INFINITY : (double)(x[i] / sp->temperature);
        it[i].id = i;
    }
    qsort(it, (size_t)n, sizeof *it, s_ref_cmp);
    int m = n;
    if (sp->top_k > 0 && sp->top_k < n) {
        double kth = it[sp->top_k - 1].v;
        m = sp->top_k;
        while (m < n && it[m].v == kth) m++;
    }
    while (m > 0 && it[m - 1].v == -INFINITY) m--;
    double z = 0.0;
    for (int i = 0; i < m; i++) z += exp(it[i].v - it[0].v);
    int kept = m;
    if (sp->top_p < 1.0f) {
        double above = 0.0;
        kept = 0;
        while (kept < m && (kept == 0 || above < (double)sp->top_p * z)) {
            above += exp(it[kept].v - it[0].v);
            kept++;
        }
    }
    double zk = 0.0;
    for (int i = 0; i < kept; i++) zk += exp(it[i].v - it[0].v);
    for (int i = 0; i < n; i++) probs[i] = 0.0, mask[i] = 0;
    for (int i = 0; i < kept; i++) {
        probs[it[i].id] = exp(it[i].v - it[0].v) / zk;
        mask[it[i].id] = 1;
    }
    free(it);
    return kept;
}

TD_TEST(selection_matches_full_sort) {
    enum { MAXV = 3000 };
    float *x = malloc(MAXV * sizeof *x), *p = malloc(MAXV * sizeof *p);
    double *ref = malloc(MAXV * sizeof *ref);
    char *mask = malloc(MAXV);
    REQUIRE(x && p && ref && mask);
    td_rng_t r;
    td_rng_seed(&r, 31337);
    int mismatches = 0;
    for (int trial = 0; trial < 400; trial++) {
        int n = 1 + (int)(td_rng_next(&r) % (trial < 300 ? 300 : MAXV));
        int levels = (int)(td_rng_next(&r) % 4); /* 0: continuous, else few distinct values */
        double scale = 0.5 + 4.0 * td_rng_uniform(&r);
        s_logits(x, n, td_rng_next(&r), (float)scale);
        for (int i = 0; i < n; i++) {
            if (levels) x[i] = floorf(x[i] * (float)levels);
            if (td_rng_uniform(&r) < 0.05) x[i] = -INFINITY;
        }
        td_sampling_t sp;
        sp.temperature = (float)(0.3 + 1.5 * td_rng_uniform(&r));
        sp.top_k = (td_rng_next(&r) % 3) ? 0 : 1 + (int)(td_rng_next(&r) % (uint64_t)(n + 5));
        sp.top_p = (td_rng_next(&r) % 4) ? (float)td_rng_uniform(&r) : 1.0f;
        int kept = td_sampling_dist(&sp, x, n, p);
        int want = s_ref_dist(&sp, x, n, ref, mask);
        if (want == 0) continue; /* all -inf: covered by greedy_ties_lowest_id */
        double maxdiff = 0.0;
        int pattern = 0;
        for (int i = 0; i < n; i++) {
            double d = fabs((double)p[i] - ref[i]);
            if (d > maxdiff) maxdiff = d;
            pattern += p[i] != 0.0f && !mask[i]; /* mass outside the kept set */
        }
        if (kept != want || maxdiff > 1e-6 || pattern) {
            if (mismatches++ < 5)
                td_test_fail(__FILE__, __LINE__,
                             "trial %d n=%d T=%g k=%d p=%g: kept %d vs %d, max diff %g, %d "
                             "pattern mismatches",
                             trial, n, sp.temperature, sp.top_k, sp.top_p, kept, want, maxdiff,
                             pattern);
        }
    }
    free(x);
    free(p);
    free(ref);
    free(mask);
}

/* ---- the chi-square machinery itself ---- */

TD_TEST(chi2_pvalues_match_torch) {
    /* torch.special.gammaincc(df/2, x/2) in float64 */
    static const struct {
        int df;
        double x, p;
    } t[] = {
        {1, 10.828, 0.000999765719583},   {10, 29.588, 0.00100011194106},
        {100, 149.449, 0.00100004622177}, {2, 0.5, 0.778800783071},
        {5, 3.0, 0.699985835879},         {31, 20.0, 0.935803620741},
        {31, 80.0, 3.31252855285e-06},    {7, 7.0, 0.428879857553},
        {1000, 1100.0, 0.014614408134},   {60, 200.0, 5.89325969866e-17},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        double p = td_chi2_sf(t[i].x, t[i].df);
        CHECK_MSG(fabs(p - t[i].p) <= 1e-9 * t[i].p + 1e-15, "df %d x %g: %.12g vs %.12g", t[i].df,
                  t[i].x, p, t[i].p);
    }
}

/* ---- statistical exactness ---- */

static void s_to_double(const float *p, double *q, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += p[i];
    for (int i = 0; i < n; i++) q[i] = p[i] / s;
}

#define CV 48

TD_TEST(chi2_sample_matches_dist) {
    static const td_sampling_t settings[] = {
        {1.0f, 0, 1.0f}, {0.7f, 10, 1.0f}, {1.2f, 0, 0.8f}, {0.5f, 20, 0.9f}, {2.0f, 0, 1.0f},
    };
    float logits[CV], probs[CV];
    double q[CV];
    long counts[CV];
    td_rng_t rng;
    td_rng_seed(&rng, 12345);
    for (size_t s = 0; s < sizeof settings / sizeof settings[0]; s++) {
        const td_sampling_t *sp = &settings[s];
        s_logits(logits, CV, 100 + s, 1.5f);
        logits[5] = logits[6] = logits[7]; /* ties */
        REQUIRE(td_sampling_dist(sp, logits, CV, probs) > 1);
        s_to_double(probs, q, CV);
        memset(counts, 0, sizeof counts);
        for (long i = 0; i < NDRAWS; i++) {
            int id = td_sample(sp, &rng, logits, CV, NULL);
            REQUIRE(id >= 0 && id < CV);
            counts[id]++;
        }
        chi2_result_t r = s_chi2(counts, q, CV, NDRAWS);
        printf("    T=%g k=%d p=%g: chi2 %.1f df %d p-value %.3g\n", sp->temperature, sp->top_k,
               sp->top_p, r.stat, r.df, r.p);
        CHECK_MSG(r.p >= ALPHA, "setting %zu: td_sample rejected (chi2 %g, df %d, p %g)", s, r.stat,
                  r.df, r.p);

        /* the same counts against a slightly perturbed distribution: 1% of the mass moved
         * from the most likely kept id to the second one must be rejected */
        int a = td_argmax(probs, CV);
        int b = -1;
        for (int i = 0; i < CV; i++)
            if (i != a && (b < 0 || q[i] > q[b])) b = i;
        double qp[CV];
        memcpy(qp, q, sizeof qp);
        qp[a] -= 0.01;
        qp[b] += 0.01;
        chi2_result_t w = s_chi2(counts, qp, CV, NDRAWS);
        printf("      perturbed by 1%% of mass: chi2 %.1f p-value %.3g\n", w.stat, w.p);
        CHECK_MSG(w.p < ALPHA, "setting %zu: perturbed distribution not rejected (p %g)", s, w.p);
    }
}

/* A sampler that is slightly wrong (temperature 1.05 instead of 1) is caught. */
TD_TEST(chi2_rejects_wrong_temperature) {
    float logits[CV], probs[CV];
    double q[CV];
    long counts[CV] = {0};
    s_logits(logits, CV, 7, 1.5f);
    td_sampling_t want = {1.0f, 0, 1.0f}, used = {1.05f, 0, 1.0f};
    td_sampling_dist(&want, logits, CV, probs);
    s_to_double(probs, q, CV);
    td_rng_t rng;
    td_rng_seed(&rng, 99);
    for (long i = 0; i < NDRAWS; i++) counts[td_sample(&used, &rng, logits, CV, NULL)]++;
    chi2_result_t r = s_chi2(counts, q, CV, NDRAWS);
    printf("    T=1.05 vs T=1: chi2 %.1f df %d p-value %.3g\n", r.stat, r.df, r.p);
    CHECK(r.p < ALPHA);
}

TD_TEST(chi2_sample_probs) {
    float logits[CV], probs[CV];
    double q[CV];
    long counts[CV] = {0};
    s_logits(logits, CV, 3, 1.0f);
    td_sampling_t sp = {1.0f, 0, 0.9f};
    td_sampling_dist(&sp, logits, CV, probs);
    for (int i = 0; i < CV; i++) probs[i] *= 3.0f; /* unnormalised is fine */
    s_to_double(probs, q, CV);
    td_rng_t rng;
    td_rng_seed(&rng, 5);
    for (long i = 0; i < NDRAWS; i++) {
        int id = td_sample_probs(&rng, probs, CV);
        REQUIRE(id >= 0 && id < CV && probs[id] > 0.0f);
        counts[id]++;
    }
    chi2_result_t r = s_chi2(counts, q, CV, NDRAWS);
    printf("    td_sample_probs: chi2 %.1f df %d p-value %.3g\n", r.stat, r.df, r.p);
    CHECK(r.p >= ALPHA);

    float bad[3] = {0.0f, -1.0f, NAN};
    CHECK(td_sample_probs(&rng, bad, 3) < 0);
    float one[4] = {0.0f, 0.0f, 2.0f, 0.0f};
    for (int i = 0; i < 100; i++) CHECK_EQ_INT(td_sample_probs(&rng, one, 4), 2);
}

/* ---- determinism ---- */

TD_TEST(rng_same_seed_same_sequence) {
    float logits[1000];
    s_logits(logits, 1000, 11, 2.0f);
    td_sampling_t sp = {0.8f, 40, 0.95f};
    int a[500], b[500], c[500];
    td_rng_t r1, r2, r3;
    td_rng_seed(&r1, 2024);
    td_rng_seed(&r2, 2024);
    td_rng_seed(&r3, 2025);
    for (int i = 0; i < 500; i++) {
        a[i] = td_sample(&sp, &r1, logits, 1000, NULL);
        b[i] = td_sample(&sp, &r2, logits, 1000, NULL);
        c[i] = td_sample(&sp, &r3, logits, 1000, NULL);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(&r1, &r2, sizeof r1) == 0);
    int differ = 0;
    for (int i = 0; i < 500; i++) differ += a[i] != c[i];
    CHECK_MSG(differ > 100, "seeds 2024 and 2025 agree on %d of 500 draws", 500 - differ);
    td_rng_seed(&r1, 1);
    td_rng_seed(&r2, 2);
    CHECK(td_rng_next(&r1) != td_rng_next(&r2));
}

/* ---- greedy and edge cases ---- */

/* td_argmax on long rows (the vector path, n >= 64) equals the plain first-maximum loop with NaN
 * as -inf: ties, NaN first, infinities, all -inf with a NaN in front, maxima in the tail. */
static int s_argmax_ref(const float *x, int n) {
    int best = 0;
    float bv = isnan(x[0]) ? -INFINITY : x[0];
    for (int i = 1; i < n; i++) {
        const float v = isnan(x[i]) ? -INFINITY : x[i];
        if (v > bv) bv = v, best = i;
    }
    return best;
}

TD_TEST(argmax_long_rows_equal_reference) {
    enum { N = 300 };
    float x[N];
    td_rng_t r;
    td_rng_seed(&r, 77);
    for (int trial = 0; trial < 2000; trial++) {
        const int n = 64 + (int)(td_rng_next(&r) % (N - 63)), kind = trial % 6;
        for (int i = 0; i < n; i++) x[i] = (float)(td_rng_next(&r) % 16) - 8.0f; /* many ties */
        if (kind == 1) x[td_rng_next(&r) % n] = NAN, x[0] = NAN;
        if (kind == 2) x[td_rng_next(&r) % n] = INFINITY, x[td_rng_next(&r) % n] = INFINITY;
        if (kind == 3) {
            for (int i = 0; i < n; i++) x[i] = -INFINITY;
            x[0] = NAN;
            x[td_rng_next(&r) % n] = NAN;
        }
        if (kind == 4) x[n - 1] = 100.0f; /* the maximum in the scalar tail */
        if (kind == 5)
            for (int i = 0; i < n; i++) x[i] = NAN;
        const int got = td_argmax(x, n), want = s_argmax_ref(x, n);
        CHECK_MSG(got == want, "trial %d kind %d n %d: %d, reference %d", trial, kind, n, got,
                  want);
        if (got != want) break;
    }
}

TD_TEST(greedy_ties_lowest_id) {
    float x[10] = {0, 1, 5, 3, 5, NAN, 5, -INFINITY, 2, 1};
    CHECK_EQ_INT(td_argmax(x, 10), 2);
    float probs[10];
    td_sampling_t g = {0.0f, 0, 1.0f};
    CHECK_EQ_INT(td_sampling_dist(&g, x, 10, probs), 1);
    for (int i = 0; i < 10; i++) CHECK(probs[i] == (i == 2 ? 1.0f : 0.0f));
    td_rng_t r, r0;
    td_rng_seed(&r, 3);
    r0 = r;
    CHECK_EQ_INT(td_sample(&g, &r, x, 10, probs), 2);
    CHECK(memcmp(&r, &r0, sizeof r) == 0); /* greedy consumes no randomness */
    float nan_first[3] = {NAN, 1.0f, 1.0f};
    CHECK_EQ_INT(td_argmax(nan_first, 3), 1);
    float all_nan[3] = {NAN, NAN, NAN};
    CHECK_EQ_INT(td_argmax(all_nan, 3), 0);
    td_sampling_t sp = {1.0f, 0, 1.0f};
    CHECK_EQ_INT(td_sampling_dist(&sp, all_nan, 3, probs), 1);
    CHECK(probs[0] == 1.0f);
    CHECK_EQ_INT(td_sample(&sp, &r, all_nan, 3, NULL), 0);
    /* top_p tiny with a tied maximum: HF (stable order) keeps the highest id of the tie */
    float tie[4] = {1.0f, 3.0f, 3.0f, 0.0f};
    td_sampling_t tiny = {1.0f, 0, 1e-8f};
    CHECK_EQ_INT(td_sampling_dist(&tiny, tie, 4, probs), 1);
    CHECK(probs[2] == 1.0f);
    td_sampling_t k1 = {1.0f, 1, 1.0f};
    CHECK_EQ_INT(td_sampling_dist(&k1, tie, 4, probs), 2); /* top-k keeps the whole tie */
    CHECK(probs[1] == 0.5f && probs[2] == 0.5f);
}

TD_TEST(nan_and_inf_logits) {
    float x[6] = {NAN, 0.0f, INFINITY, 1.0f, INFINITY, -INFINITY};
    float probs[6];
    td_sampling_t sp = {1.0f, 0, 1.0f};
    CHECK_EQ_INT(td_sampling_dist(&sp, x, 6, probs), 2);
    CHECK(probs[2] == 0.5f && probs[4] == 0.5f && probs[0] == 0.0f && probs[3] == 0.0f);
    float ls[6];
    td_log_softmax(ls, x, 6);
    CHECK_NEAR(ls[2], -log(2.0), 1e-7);
    CHECK(ls[0] == -INFINITY && ls[1] == -INFINITY);
}

TD_TEST(log_softmax_matches_double) {
    float x[300], out[300];
    s_logits(x, 300, 77, 10.0f);
    x[17] = NAN;
    x[18] = -INFINITY;
    double m = -INFINITY, z = 0.0;
    for (int i = 0; i < 300; i++)
        if (!isnan(x[i]) && x[i] > m) m = x[i];
    for (int i = 0; i < 300; i++)
        if (!isnan(x[i])) z += exp((double)x[i] - m);
    td_log_softmax(out, x, 300);
    for (int i = 0; i < 300; i++) {
        if (i == 17 || i == 18) {
            CHECK(out[i] == -INFINITY);
            continue;
        }
        CHECK_NEAR(out[i], (double)x[i] - m - log(z), 1e-5);
    }
    td_log_softmax(x, x, 300); /* in place */
    CHECK(memcmp(x, out, sizeof out) == 0);
}

/* ---- speed at Qwen's vocabulary ---- */

TD_TEST(timing_v151936) {
    enum { V = 151936 };
    float *logits = malloc(V * sizeof *logits), *probs = malloc(V * sizeof *probs);
    REQUIRE(logits && probs);
    s_logits(logits, V, 8, 2.5f);
    static const td_sampling_t settings[] = {
        {1.0f, 0, 1.0f}, {0.7f, 50, 1.0f}, {0.8f, 0, 0.95f}, {0.7f, 50, 0.9f}, {0.0f, 0, 1.0f},
    };
    td_rng_t rng;
    td_rng_seed(&rng, 1);
    for (size_t s = 0; s < sizeof settings / sizeof settings[0]; s++) {
        const td_sampling_t *sp = &settings[s];
        const int reps = 10;
        double best_dist = INFINITY, best_sample = INFINITY;
        int kept = 0;
        for (int i = 0; i < reps; i++) {
            double t0 = td_time_now();
            kept = td_sampling_dist(sp, logits, V, probs);
            double t1 = td_time_now();
            CHECK(td_sample(sp, &rng, logits, V, NULL) >= 0);
            double t2 = td_time_now();
            if (t1 - t0 < best_dist) best_dist = t1 - t0;
            if (t2 - t1 < best_sample) best_sample = t2 - t1;
        }
        printf("    V=%d T=%g k=%d p=%g: kept %d, best of %d: td_sampling_dist %.2f ms, "
               "td_sample %.2f ms\n",
               V, sp->temperature, sp->top_k, sp->top_p, kept, reps, best_dist * 1e3,
               best_sample * 1e3);
        CHECK(kept >= 1);
    }
    free(logits);
    free(probs);
}

/* ---- counter-based sampling (td_sample_seeded, td_op_sample on the CPU backend) ---- */

/* Random row of kind k: 0 Gaussian, 1 few distinct values (ties), 2 NaN and -inf mixed in,
 * 3 some +inf, 4 nothing finite, 5 a tied maximum, 6 signed zeros and quarters. */
static void s_row(float *x, int n, int kind, td_rng_t *r) {
    for (int i = 0; i < n; i++) {
        double u = td_rng_uniform(r), g = td_rng_uniform(r);
        switch (kind) {
        case 0:
            x[i] = (float)(3.0 * (g - 0.5) * (g + u));
            break;
        case 1:
            x[i] = (float)floor(g * 5.0);
            break;
        case 2:
            x[i] = u < 0.15 ? NAN : u < 0.3 ? -INFINITY : (float)(4.0 * g);
            break;
        case 3:
            x[i] = u < 0.05 ? INFINITY : (float)(4.0 * g);
            break;
        case 4:
            x[i] = u < 0.5 ? NAN : -INFINITY;
            break;
        case 5:
            x[i] = i % 5 == 2 ? 2.5f : (float)(2.0 * g);
            break;
        default:
            x[i] = (float)(floor(g * 4.0) * 0.25) * (u < 0.5 ? -1.0f : 1.0f);
            break;
        }
    }
}

static const td_sampling_t s_settings[] = {
    {1.0f, 0, 1.0f},   {0.7f, 0, 1.0f}, {1.0f, 10, 1.0f}, {1.0f, 1, 1.0f},   {1.0f, 0, 0.9f},
    {0.5f, 0, 0.5f},   {1.0f, 3, 0.8f}, {1.0f, 0, 0.0f},  {1.3f, 50, 0.95f}, {1.0f, 0, 0.3f},
    {1e-30f, 0, 0.9f}, {2.0f, 2, 1.0f}, {1.0f, 0, NAN},   {0.9f, 7, 0.0f},
};
#define N_SETTINGS ((int)(sizeof s_settings / sizeof s_settings[0]))

TD_TEST(seeded_greedy_is_argmax) {
    const td_sampling_t greedy[] = {{0.0f, 0, 1.0f}, {-1.0f, 5, 0.5f}, {NAN, 0, 0.1f}};
    td_err_t err = {0};
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(cpu);
    td_rng_t r;
    td_rng_seed(&r, 77);
    enum { R = 8, NMAX = 300 };
    float x[R * NMAX];
    td_sample_result_t res[R];
    for (int it = 0; it < 400; it++) {
        const int n = 1 + (int)(td_rng_next(&r) % NMAX), kind = it % 7;
        s_row(x, R * n, kind, &r);
        const td_sampling_t *g = &greedy[it % 3];
        const td_sample_desc_t d = {g->temperature, g->top_k, g->top_p};
        REQUIRE(td_op_sample(cpu, x, R, n, &d, NULL, res, &err) == TD_OK); /* no seeds needed */
        for (int k = 0; k < R; k++) {
            const float *row = x + k * n;
            float prob = 0.0f;
            int kept = 0;
            const int want = td_argmax(row, n);
            CHECK_EQ_INT(td_sample_seeded(g, td_rng_next(&r), row, n, &prob, &kept), want);
            CHECK(prob == 1.0f && kept == 1);
            CHECK_MSG(res[k].id == want && res[k].prob == 1.0f && res[k].n_kept == 1,
                      "row %d kind %d n %d: op {%d %g %d}, argmax %d", k, kind, n, res[k].id,
                      res[k].prob, res[k].n_kept, want);
        }
    }
    /* sampling settings on rows with no finite logit: one-hot on td_argmax as well */
    float none[5] = {NAN, -INFINITY, NAN, -INFINITY, NAN};
    float prob = 0.0f;
    int kept = 0;
    CHECK_EQ_INT(td_sample_seeded(&s_settings[0], 1, none, 5, &prob, &kept), 0);
    CHECK(prob == 1.0f && kept == 1);
    td_backend_destroy(&cpu);
}

TD_TEST(seeded_probs_match_dist) {
    td_err_t err = {0};
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(cpu);
    td_rng_t r;
    td_rng_seed(&r, 4242);
    enum { R = 4, NMAX = 700 };
    float x[R * NMAX], probs[NMAX];
    uint64_t seeds[R];
    td_sample_result_t res[R];
    long checked = 0;
    for (int it = 0; it < 60; it++)
        for (int s = 0; s < N_SETTINGS; s++) {
            const td_sampling_t *sp = &s_settings[s];
            const int n = 1 + (int)(td_rng_next(&r) % NMAX), kind = it % 7;
            s_row(x, R * n, kind, &r);
            for (int k = 0; k < R; k++) seeds[k] = td_rng_next(&r);
            const td_sample_desc_t d = {sp->temperature, sp->top_k, sp->top_p};
            REQUIRE(td_op_sample(cpu, x, R, n, &d, seeds, res, &err) == TD_OK);
            for (int k = 0; k < R; k++) {
                const float *row = x + k * n;
                const int kept = td_sampling_dist(sp, row, n, probs);
                REQUIRE(kept >= 1);
                float prob = 0.0f;
                int nk = 0;
                const int id = td_sample_seeded(sp, seeds[k], row, n, &prob, &nk);
                CHECK_MSG(id >= 0 && id < n && probs[id] > 0.0f,
                          "setting %d kind %d n %d: id %d outside the kept set", s, kind, n, id);
                if (id < 0 || id >= n) continue;
                CHECK_MSG(prob == probs[id] && nk == kept,
                          "setting %d kind %d n %d: prob %.9g kept %d, dist %.9g kept %d", s, kind,
                          n, prob, nk, probs[id], kept);
                CHECK(res[k].id == id && res[k].prob == prob && res[k].n_kept == nk);
                checked++;
            }
        }
    CHECK(checked == 60L * N_SETTINGS * R);
    td_backend_destroy(&cpu);
}

/* Draws through td_op_sample (rows of one call share the logits, each has its own seed) pass the
 * chi-square test against td_sampling_dist; the same counts reject a 1%-perturbed distribution. */
TD_TEST(seeded_chi2_matches_dist) {
    static const td_sampling_t settings[] = {
        {1.0f, 0, 1.0f},  {0.7f, 10, 1.0f}, {1.2f, 0, 0.8f},
        {0.5f, 20, 0.9f}, {2.0f, 0, 1.0f},  {1.5f, 5, 0.9f},
    };
    enum { R = 1000 };
    td_err_t err = {0};
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(cpu);
    float *rows = malloc(sizeof(float) * R * CV), probs[CV];
    uint64_t *seeds = malloc(sizeof(uint64_t) * R);
    td_sample_result_t *res = malloc(sizeof *res * R);
    REQUIRE(rows && seeds && res);
    double q[CV];
    long counts[CV];
    td_rng_t rng;
    td_rng_seed(&rng, 31337);
    for (size_t s = 0; s < sizeof settings / sizeof settings[0]; s++) {
        const td_sampling_t *sp = &settings[s];
        const td_sample_desc_t d = {sp->temperature, sp->top_k, sp->top_p};
        s_logits(rows, CV, 200 + s, 1.5f);
        rows[5] = rows[6] = rows[7]; /* ties */
        for (int k = 1; k < R; k++) memcpy(rows + k * CV, rows, sizeof(float) * CV);
        REQUIRE(td_sampling_dist(sp, rows, CV, probs) > 1);
        s_to_double(probs, q, CV);
        memset(counts, 0, sizeof counts);
        for (long done = 0; done < NDRAWS; done += R) {
            for (int k = 0; k < R; k++) seeds[k] = td_rng_next(&rng);
            REQUIRE(td_op_sample(cpu, rows, R, CV, &d, seeds, res, &err) == TD_OK);
            for (int k = 0; k < R; k++) {
                REQUIRE(res[k].id >= 0 && res[k].id < CV);
                counts[res[k].id]++;
            }
        }
        chi2_result_t c = s_chi2(counts, q, CV, NDRAWS);
        printf("    seeded T=%g k=%d p=%g: chi2 %.1f df %d p-value %.3g\n", sp->temperature,
               sp->top_k, sp->top_p, c.stat, c.df, c.p);
        CHECK_MSG(c.p >= ALPHA, "setting %zu: td_op_sample rejected (chi2 %g, df %d, p %g)", s,
                  c.stat, c.df, c.p);
        int a = td_argmax(probs, CV), b = -1;
        for (int i = 0; i < CV; i++)
            if (i != a && (b < 0 || q[i] > q[b])) b = i;
        double qp[CV];
        memcpy(qp, q, sizeof qp);
        qp[a] -= 0.01;
        qp[b] += 0.01;
        chi2_result_t w = s_chi2(counts, qp, CV, NDRAWS);
        CHECK_MSG(w.p < ALPHA, "setting %zu: perturbed distribution not rejected (p %g)", s, w.p);
    }
    /* the stream is td_sample_seeded's, not td_sample's: same distribution, other ids */
    s_logits(rows, CV, 9, 1.5f);
    td_sampling_t sp = {1.0f, 0, 1.0f};
    td_rng_t r1, r2;
    td_rng_seed(&r1, 5);
    td_rng_seed(&r2, 5);
    int same = 0;
    for (int i = 0; i < 1000; i++)
        same += td_sample(&sp, &r1, rows, CV, NULL) ==
                td_sample_seeded(&sp, td_rng_next(&r2), rows, CV, NULL, NULL);
    CHECK_MSG(same < 900, "td_sample and td_sample_seeded agree on %d of 1000 draws", same);
    free(rows), free(seeds), free(res);
    td_backend_destroy(&cpu);
}

TD_TEST(op_sample_bad_arguments) {
    td_err_t err = {0};
    td_backend_t *cpu = td_backend_cpu_new(1, 0, &err);
    REQUIRE(cpu);
    float x[4] = {1, 2, 3, 4};
    uint64_t seed = 1;
    td_sample_result_t res[1] = {{-5, -5.0f, -5}};
    td_sample_desc_t d = {1.0f, 0, 1.0f};
    CHECK_EQ_INT(td_op_sample(cpu, x, 1, 0, &d, &seed, res, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_op_sample(cpu, x, -1, 4, &d, &seed, res, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_op_sample(cpu, x, 1, 4, &d, NULL, res, &err), TD_ERR_ARG); /* no seeds */
    CHECK(strstr(err.msg, "seed") != NULL);
    CHECK_EQ_INT(td_op_sample(cpu, x, 1, 4, NULL, &seed, res, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_op_sample(cpu, NULL, 1, 4, &d, &seed, res, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_op_sample(cpu, x, 1, 4, &d, &seed, NULL, &err), TD_ERR_ARG);
    d.temperature = INFINITY;
    CHECK_EQ_INT(td_op_sample(cpu, x, 1, 4, &d, &seed, res, &err), TD_ERR_ARG);
    CHECK(res[0].id == -5); /* untouched */
    d.temperature = 1.0f;
    CHECK_EQ_INT(td_op_sample(cpu, x, 0, 4, &d, NULL, NULL, &err), TD_OK); /* nothing to do */
    CHECK_EQ_INT(td_op_sample(cpu, x, 1, 4, &d, &seed, res, &err), TD_OK);
    CHECK(res[0].id >= 0 && res[0].id < 4 && res[0].n_kept == 4);
    CHECK(td_backend_host_memory(cpu));
    td_backend_destroy(&cpu);
}

/* td_model_forward_sample on a fixture model: the rows it samples are td_model_forward's rows,
 * sampled by td_sample_seeded with one td_rng_next per row (none for greedy); the cache is written
 * the same way. */
TD_TEST(forward_sample_matches_host) {
    td_err_t err = {0};
    td_backend_t *cpu = NULL;
    td_model_t *m = td_test_load_fixture("qwen2", 2, 0, &cpu);
    REQUIRE(m);
    const int V = td_model_config(m)->n_vocab;
    td_kv_cache_t *ka = td_kv_cache_new(m, 1, 32, &err), *kb = td_kv_cache_new(m, 1, 32, &err);
    REQUIRE(ka && kb);
    float *lg = malloc(sizeof(float) * (size_t)V * 6), *probs = malloc(sizeof(float) * (size_t)V);
    REQUIRE(lg && probs);
    int32_t tok[6] = {3, 14, 15, 9, 2, 6}, ids[6];
    float pr[6];
    uint8_t sel[6] = {1, 0, 0, 1, 0, 1};
    const td_sampling_t settings[] = {{0.0f, 0, 1.0f}, {0.8f, 20, 0.9f}, {1.0f, 0, 1.0f}};
    int pos0 = 0;
    for (int s = 0; s < 3; s++) {
        const td_sampling_t *sp = &settings[s];
        td_batch_t b = {.n = 6, .tokens = tok, .attn = TD_ATTN_CAUSAL, .logits_for = sel};
        int32_t pos[6];
        for (int i = 0; i < 6; i++) pos[i] = pos0 + i;
        b.pos = pos;
        REQUIRE(td_model_forward(m, ka, &b, lg, &err) == TD_OK);
        td_rng_t r1, r2;
        td_rng_seed(&r1, 100 + s);
        r2 = r1;
        REQUIRE(td_model_forward_sample(m, kb, &b, sp, &r1, ids, pr, &err) == TD_OK);
        CHECK_EQ_INT(td_kv_cache_len(ka, 0), td_kv_cache_len(kb, 0));
        for (int k = 0; k < 3; k++) {
            const float *row = lg + (size_t)k * V;
            const int greedy = !(sp->temperature > 0.0f);
            float prob = 0.0f;
            int want = td_sample_seeded(sp, greedy ? 0 : td_rng_next(&r2), row, V, &prob, NULL);
            CHECK_MSG(ids[k] == want && pr[k] == prob,
                      "setting %d row %d: id %d p %g, want %d p %g", s, k, ids[k], pr[k], want,
                      prob);
            if (greedy) CHECK_EQ_INT(ids[k], td_argmax(row, V));
            REQUIRE(td_sampling_dist(sp, row, V, probs) >= 1);
            CHECK(probs[ids[k]] == pr[k]);
        }
        CHECK(memcmp(&r1, &r2, sizeof r1) == 0); /* one draw per row, none for greedy */
        pos0 += 6;
    }
    /* refusals change nothing */
    td_batch_t b = {.n = 1, .tokens = tok, .attn = TD_ATTN_CAUSAL};
    const int len = td_kv_cache_len(kb, 0);
    CHECK_EQ_INT(td_model_forward_sample(m, kb, &b, &settings[1], NULL, ids, NULL, &err),
                 TD_ERR_ARG);
    const td_sampling_t hot = {INFINITY, 0, 1.0f};
    td_rng_t r;
    td_rng_seed(&r, 1);
    CHECK_EQ_INT(td_model_forward_sample(m, kb, &b, &hot, &r, ids, NULL, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_kv_cache_len(kb, 0), len);
    free(lg), free(probs);
    td_kv_cache_destroy(&ka), td_kv_cache_destroy(&kb);
    td_model_destroy(&m);
    td_backend_destroy(&cpu);
}

/* td_generate_ar on the CPU: greedy goes through td_model_forward_sample and gives td_argmax's
 * tokens; sampling keeps td_model_forward + td_sample (the ids for a seed do not change). */
TD_TEST(forward_sample_generate_ar_cpu_unchanged) {
    td_err_t err = {0};
    td_backend_t *cpu = NULL;
    td_model_t *m = td_test_load_fixture("qwen2", 2, 0, &cpu);
    REQUIRE(m);
    const int V = td_model_config(m)->n_vocab;
    float *lg = malloc(sizeof(float) * (size_t)V);
    REQUIRE(lg);
    const int32_t prompt[4] = {5, 9, 2, 7};
    const td_sampling_t settings[] = {{0.0f, 0, 1.0f}, {0.9f, 0, 0.95f}};
    for (int s = 0; s < 2; s++) {
        td_gen_params_t gp = {.max_tokens = 12, .sampling = settings[s], .seed = 42};
        int32_t out[12], want[12];
        td_gen_stats_t st = {0};
        REQUIRE(td_generate_ar(m, prompt, 4, &gp, NULL, NULL, out, &st, &err) == TD_OK);
        CHECK_EQ_INT(st.generated, 12);
        /* the host loop of before */
        td_kv_cache_t *kv = td_kv_cache_new(m, 1, 32, &err);
        REQUIRE(kv);
        td_rng_t rng;
        td_rng_seed(&rng, 42);
        uint8_t last[4] = {0, 0, 0, 1};
        td_batch_t b = {.n = 4, .tokens = prompt, .attn = TD_ATTN_CAUSAL, .logits_for = last};
        REQUIRE(td_model_forward(m, kv, &b, lg, &err) == TD_OK);
        for (int i = 0; i < 12; i++) {
            want[i] = td_sample(&settings[s], &rng, lg, V, NULL);
            td_batch_t d = {.n = 1, .tokens = &want[i], .attn = TD_ATTN_CAUSAL};
            if (i < 11) REQUIRE(td_model_forward(m, kv, &d, lg, &err) == TD_OK);
        }
        CHECK_MSG(memcmp(out, want, sizeof out) == 0, "setting %d: generate_ar differs", s);
        td_kv_cache_destroy(&kv);
    }
    free(lg);
    td_model_destroy(&m);
    td_backend_destroy(&cpu);
}

TD_TEST_MAIN()
