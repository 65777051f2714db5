/* test_accept.c - statistical exactness of the acceptance rules (verifier/accept.c).
 *
 * A synthetic "target" p(.|context) and "drafter" q(.|context) over a small vocabulary are
 * derived from a hash of the context (random weights with random zeros, so q can be 0 where p is
 * positive and the other way round). Whole speculative generations are simulated until two tokens
 * are out, and the joint distribution of those two tokens is compared with p(a) p(b|a) by a
 * chi-square test (p-value from the regularized upper incomplete gamma function, alpha = 1e-3,
 * fixed seeds). Deliberately wrong rules must fail the same test (the test has power). APD's
 * sparse decisions are checked against full-row decisions. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/sampler.h"
#include "tests/tdtest.h"
#include "tests/tdstats.h"
#include "verifier/accept.h"

#define ALPHA 1e-3
#define NSAMP 50000
#define MAXV 8
#define MAXG 4

TD_TEST(chisq_pvalue_known_values) {
    /* Reference values of the chi-square survival function (the last two from
     * torch.special.gammaincc in float64). */
    CHECK_NEAR(td_gamma_q(0.5 * 1, 0.5 * 3.841458820694124), 0.05, 1e-9);
    CHECK_NEAR(td_gamma_q(0.5 * 10, 0.5 * 18.307038053275146), 0.05, 1e-9);
    CHECK_NEAR(td_gamma_q(0.5 * 35, 0.5 * 66.61925536014), 0.000999887152530914, 1e-12);
    CHECK_NEAR(td_gamma_q(0.5 * 4, 0.5 * 2.0), exp(-1.0) * 2.0, 1e-12); /* Q(2,1) = 2/e */
    CHECK_NEAR(td_gamma_q(0.5 * 35, 0.5 * 34.0), 0.5162331993560392, 1e-12);
}

/* ---- synthetic conditional distributions ---- */

static uint64_t s_hash(const int32_t *ctx, int n, uint64_t salt) {
    uint64_t h = 0xcbf29ce484222325ull ^ salt;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)(ctx[i] + 1);
        h *= 0x100000001b3ull;
    }
    h ^= (uint64_t)n * 0x9e3779b97f4a7c15ull;
    return h;
}

/* A distribution over V tokens determined by (ctx, salt): each entry 0 with probability 0.3,
 * else a weight in [0.2, 1]; at least one entry positive. */
static void s_dist(const int32_t *ctx, int n, uint64_t salt, int V, float *out) {
    td_rng_t r;
    td_rng_seed(&r, s_hash(ctx, n, salt));
    double sum = 0.0;
    for (int t = 0; t < V; t++) {
        double z = td_rng_uniform(&r), w = 0.2 + 0.8 * td_rng_uniform(&r);
        out[t] = z < 0.3 ? 0.0f : (float)w;
        sum += out[t];
    }
    if (sum == 0.0) {
        out[td_rng_next(&r) % (uint64_t)V] = 1.0f;
        sum = 1.0;
    }
    for (int t = 0; t < V; t++) out[t] = (float)(out[t] / sum);
}

#define SALT_P 0x1111ull
#define SALT_Q 0x2222ull

typedef enum {
    RULE_REJ,
    RULE_REJ_SPARSE,
    RULE_MATCH,
    RULE_WRONG_RESAMPLE_P,
    RULE_WRONG_NO_RATIO
} rule_t;
typedef enum { DRAFT_LEFT, DRAFT_RIGHT_TO_LEFT } draft_kind_t;

/* The drafter: gamma tokens, q row j recorded when x_j is sampled. LEFT: q_j = q(.|ctx, x_<j).
 * RIGHT_TO_LEFT: x_{gamma-1} first from q(.|ctx, salt 7), then x_j ~ q(.|ctx, x_{j+1}) - a draft
 * whose token j depends on a later position (like confidence-ordered unmasking). */
static void s_draft(const int32_t *ctx, int n, int gamma, int V, draft_kind_t kind, td_rng_t *rng,
                    int32_t *x, float *q) {
    int32_t buf[64];
    memcpy(buf, ctx, (size_t)n * sizeof *buf);
    if (kind == DRAFT_LEFT) {
        for (int j = 0; j < gamma; j++) {
            s_dist(buf, n + j, SALT_Q, V, q + (size_t)j * V);
            x[j] = td_sample_probs(rng, q + (size_t)j * V, V);
            buf[n + j] = x[j];
        }
    } else {
        for (int j = gamma - 1; j >= 0; j--) {
            if (j == gamma - 1) {
                s_dist(buf, n, SALT_Q ^ 7, V, q + (size_t)j * V);
            } else {
                buf[n] = x[j + 1];
                s_dist(buf, n + 1, SALT_Q ^ 9, V, q + (size_t)j * V);
            }
            x[j] = td_sample_probs(rng, q + (size_t)j * V, V);
        }
    }
}

/* Wrong rules, for the power check. */
static void s_wrong(rule_t rule, const float *p, const float *q, const int32_t *x, int gamma, int V,
                    td_rng_t *rng, int32_t *out, int *na) {
    for (int j = 0; j < gamma; j++) {
        const float *pj = p + (size_t)j * V, *qj = q + (size_t)j * V;
        double u = td_rng_uniform(rng);
        int acc = rule == RULE_WRONG_RESAMPLE_P ? u * qj[x[j]] < pj[x[j]] : pj[x[j]] > 0.0f;
        if (acc) {
            out[j] = x[j];
            continue;
        }
        out[j] = rule == RULE_WRONG_RESAMPLE_P ? td_sample_probs(rng, pj, V)
                                               : td_accept_residual(pj, qj, V, rng);
        *na = j;
        return;
    }
    out[gamma] = td_sample_probs(rng, p + (size_t)gamma * V, V);
    *na = gamma;
}

/* Sparse form of q rows keeping the top-K entries (K chosen so that some rows are complete and
 * some are not), with rest = mass of the others. */
static void s_sparsify(const float *qrow, int V, int K, int32_t *ids, float *probs,
                       td_sparse_row_t *r) {
    int used[MAXV] = {0};
    int k = 0;
    for (; k < K; k++) {
        int best = -1;
        for (int t = 0; t < V; t++)
            if (!used[t] && qrow[t] > 0.0f && (best < 0 || qrow[t] > qrow[best])) best = t;
        if (best < 0) break;
        used[best] = 1;
        ids[k] = best;
        probs[k] = qrow[best];
    }
    float rest = 0.0f;
    for (int t = 0; t < V; t++)
        if (!used[t]) rest += qrow[t];
    r->k = k;
    r->ids = ids;
    r->probs = probs;
    r->rest = rest;
}

/* One generation until two tokens are out; returns a * V + b. */
static int s_generate2(rule_t rule, draft_kind_t kind, int gamma, int V, td_rng_t *rng,
                       long *fetches) {
    int32_t ctx[64];
    int n = 0;
    while (n < 2) {
        int32_t x[MAXG], out[MAXG + 1], buf[64];
        float q[MAXG * MAXV], p[(MAXG + 1) * MAXV];
        s_draft(ctx, n, gamma, V, kind, rng, x, q);
        memcpy(buf, ctx, (size_t)n * sizeof *buf);
        for (int j = 0; j <= gamma; j++) {
            s_dist(buf, n + j, SALT_P, V, p + (size_t)j * V);
            if (j < gamma) buf[n + j] = x[j];
        }
        int na = -1, rc = TD_OK;
        if (rule == RULE_REJ) {
            rc = td_accept_rejection(p, q, x, gamma, V, rng, out, &na);
        } else if (rule == RULE_REJ_SPARSE) {
            int32_t ids[MAXG][MAXV];
            float probs[MAXG][MAXV];
            td_sparse_row_t rows[MAXG];
            const float *full[MAXG] = {0};
            for (int j = 0; j < gamma; j++)
                s_sparsify(q + (size_t)j * V, V, 2 + j % 3, ids[j], probs[j], &rows[j]);
            for (;;) {
                int need = -1;
                rc = td_accept_rejection_sparse(p, rows, full, x, gamma, V, rng, out, &na, &need);
                if (rc != TD_OK || need < 0) break;
                full[need] = q + (size_t)need * V;
                (*fetches)++;
            }
        } else if (rule == RULE_MATCH) {
            rc = td_accept_match(p, x, gamma, V, rng, out, &na);
        } else {
            s_wrong(rule, p, q, x, gamma, V, rng, out, &na);
        }
        if (rc != TD_OK || na < 0) return -1;
        for (int i = 0; i <= na && n < 64; i++) ctx[n++] = out[i];
    }
    return ctx[0] * V + ctx[1];
}

/* Runs NSAMP generations and returns the chi-square p-value of the joint of the first two tokens
 * against p(a) p(b|a). */
static double s_run(rule_t rule, draft_kind_t kind, int gamma, int V, uint64_t seed,
                    long *fetches) {
    long obs[MAXV * MAXV] = {0};
    double expp[MAXV * MAXV];
    float p0[MAXV], p1[MAXV];
    s_dist(NULL, 0, SALT_P, V, p0);
    for (int a = 0; a < V; a++) {
        int32_t c = a;
        s_dist(&c, 1, SALT_P, V, p1);
        for (int b = 0; b < V; b++) expp[a * V + b] = (double)p0[a] * (double)p1[b];
    }
    td_rng_t rng;
    td_rng_seed(&rng, seed);
    long dummy = 0;
    for (long i = 0; i < NSAMP; i++) {
        int cell = s_generate2(rule, kind, gamma, V, &rng, fetches ? fetches : &dummy);
        if (cell < 0) return -1.0;
        obs[cell]++;
    }
    int df = 0;
    double pv = td_chisq_pvalue(obs, expp, V * V, NSAMP, &df);
    if (getenv("TD_TEST_VERBOSE"))
        fprintf(stderr, "    rule %d draft %d gamma %d V %d: df %d p-value %.3g\n", (int)rule,
                (int)kind, gamma, V, df, pv);
    return pv;
}

/* The synthetic q really has zeros where p is positive and the other way round (the cases the
 * residual has to handle). */
TD_TEST(synthetic_dists_have_mismatched_support) {
    int q0p = 0, p0q = 0;
    for (int a = 0; a < 6; a++) {
        int32_t c = a;
        float p[MAXV], q[MAXV];
        s_dist(&c, 1, SALT_P, 6, p);
        s_dist(&c, 1, SALT_Q, 6, q);
        for (int t = 0; t < 6; t++) {
            q0p += q[t] == 0.0f && p[t] > 0.0f;
            p0q += p[t] == 0.0f && q[t] > 0.0f;
        }
    }
    CHECK(q0p > 0);
    CHECK(p0q > 0);
}

TD_TEST(rejection_is_exact) {
    for (int V = 5; V <= 8; V += 3) {
        double pv = s_run(RULE_REJ, DRAFT_LEFT, 3, V, 1000 + V, NULL);
        CHECK_MSG(pv > ALPHA, "rejection V=%d gamma=3: p-value %g", V, pv);
        pv = s_run(RULE_REJ, DRAFT_LEFT, 1, V, 2000 + V, NULL);
        CHECK_MSG(pv > ALPHA, "rejection V=%d gamma=1: p-value %g", V, pv);
    }
}

TD_TEST(rejection_sparse_is_exact_and_fetches_rows) {
    long fetches = 0;
    double pv = s_run(RULE_REJ_SPARSE, DRAFT_LEFT, 3, 7, 3003, &fetches);
    CHECK_MSG(pv > ALPHA, "sparse rejection: p-value %g", pv);
    CHECK(fetches > 0);
}

TD_TEST(match_is_exact_for_any_draft) {
    double pv = s_run(RULE_MATCH, DRAFT_LEFT, 3, 6, 4004, NULL);
    CHECK_MSG(pv > ALPHA, "match, left drafts: p-value %g", pv);
    pv = s_run(RULE_MATCH, DRAFT_RIGHT_TO_LEFT, 3, 6, 5005, NULL);
    CHECK_MSG(pv > ALPHA, "match, right-to-left drafts: p-value %g", pv);
}

/* Power: rules that are wrong must be caught by the same test at the same alpha. */
TD_TEST(wrong_rules_are_rejected) {
    double pv = s_run(RULE_WRONG_RESAMPLE_P, DRAFT_LEFT, 3, 6, 6006, NULL);
    CHECK_MSG(pv < ALPHA, "resample-from-p rule passed: p-value %g", pv);
    pv = s_run(RULE_WRONG_NO_RATIO, DRAFT_LEFT, 3, 6, 7007, NULL);
    CHECK_MSG(pv < ALPHA, "accept-if-p>0 rule passed: p-value %g", pv);
}

/* What docs/methods.md says: Leviathan with a draft whose token j depends on later positions
 * (confidence-ordered unmasking) is NOT exact, even with q recorded at sampling time. */
TD_TEST(rejection_with_right_to_left_drafts_is_biased) {
    double pv = s_run(RULE_REJ, DRAFT_RIGHT_TO_LEFT, 3, 6, 8008, NULL);
    CHECK_MSG(pv < ALPHA, "right-to-left drafts under rejection looked exact: p-value %g", pv);
}

/* Sparse rejection gives exactly the dense result (tokens and rng state) after fetching the rows
 * it asks for, asks only for incomplete rows, and rewinds the rng when it asks. */
TD_TEST(rejection_sparse_equals_dense) {
    td_rng_t gen;
    td_rng_seed(&gen, 77);
    int asked = 0;
    for (int it = 0; it < 3000; it++) {
        int V = 5 + (int)(td_rng_next(&gen) % 4), gamma = 1 + (int)(td_rng_next(&gen) % MAXG);
        int32_t ctx[1] = {it}, x[MAXG], o1[MAXG + 1], o2[MAXG + 1];
        float p[(MAXG + 1) * MAXV], q[MAXG * MAXV];
        for (int j = 0; j <= gamma; j++) {
            int32_t c2[2] = {it, j};
            s_dist(c2, 2, SALT_P, V, p + (size_t)j * V);
            (void)ctx;
        }
        for (int j = 0; j < gamma; j++) {
            int32_t c2[2] = {it, j};
            s_dist(c2, 2, SALT_Q, V, q + (size_t)j * V);
            x[j] = td_sample_probs(&gen, q + (size_t)j * V, V);
        }
        if (it % 5 == 0) x[0] = (x[0] + 1) % V; /* sometimes a token q gives 0 or an unlisted one */
        int32_t ids[MAXG][MAXV];
        float probs[MAXG][MAXV];
        td_sparse_row_t rows[MAXG];
        const float *full[MAXG] = {0};
        for (int j = 0; j < gamma; j++)
            s_sparsify(q + (size_t)j * V, V, 1 + (int)(td_rng_next(&gen) % V), ids[j], probs[j],
                       &rows[j]);
        td_rng_t r1, r2;
        td_rng_seed(&r1, 1000 + it);
        r2 = r1;
        int na1 = -1, na2 = -1;
        REQUIRE(td_accept_rejection(p, q, x, gamma, V, &r1, o1, &na1) == TD_OK);
        for (int tries = 0;; tries++) {
            int need = -1;
            td_rng_t before = r2;
            REQUIRE(td_accept_rejection_sparse(p, rows, full, x, gamma, V, &r2, o2, &na2, &need) ==
                    TD_OK);
            if (need < 0) break;
            CHECK(memcmp(&before, &r2, sizeof r2) == 0);
            CHECK(rows[need].rest > 0.0f);
            CHECK(full[need] == NULL);
            REQUIRE(tries < gamma);
            full[need] = q + (size_t)need * V;
            asked++;
        }
        CHECK_EQ_INT(na1, na2);
        for (int i = 0; i <= na1; i++) CHECK_EQ_INT(o1[i], o2[i]);
        CHECK(memcmp(&r1, &r2, sizeof r1) == 0);
    }
    CHECK(asked > 0);
}

TD_TEST(rejection_edge_cases) {
    /* p == q: always accepted. q(x) = 0: rejected. p(x) = 0: rejected, residual excludes x. */
    float p[3 * 4] = {0.5f, 0.5f, 0, 0, 0.25f, 0.25f, 0.25f, 0.25f, 0, 0, 0, 1};
    float q[2 * 4] = {0.5f, 0.5f, 0, 0, 0.25f, 0.25f, 0.25f, 0.25f};
    int32_t x[2] = {1, 3}, out[3];
    int na = -1;
    td_rng_t rng;
    td_rng_seed(&rng, 5);
    for (int i = 0; i < 100; i++) {
        REQUIRE(td_accept_rejection(p, q, x, 2, 4, &rng, out, &na) == TD_OK);
        CHECK_EQ_INT(na, 2);
        CHECK_EQ_INT(out[2], 3);
    }
    float p2[2 * 3] = {0.0f, 0.5f, 0.5f, 1, 0, 0};
    float q2[1 * 3] = {1.0f, 0.0f, 0.0f};
    int32_t x2[1] = {0};
    for (int i = 0; i < 100; i++) {
        REQUIRE(td_accept_rejection(p2, q2, x2, 1, 3, &rng, out, &na) == TD_OK);
        CHECK_EQ_INT(na, 0);
        CHECK(out[0] == 1 || out[0] == 2);
    }
    x2[0] = 1; /* q(x) = 0 */
    REQUIRE(td_accept_rejection(p2, q2, x2, 1, 3, &rng, out, &na) == TD_OK);
    CHECK_EQ_INT(na, 0);
    x2[0] = 3;
    CHECK(td_accept_rejection(p2, q2, x2, 1, 3, &rng, out, &na) == TD_ERR_ARG);
    CHECK(td_accept_match(p2, x2, 1, 3, &rng, out, &na) == TD_ERR_ARG);
    /* gamma 0: just the bonus from p_0 */
    REQUIRE(td_accept_rejection(p2 + 3, NULL, NULL, 0, 3, &rng, out, &na) == TD_OK);
    CHECK_EQ_INT(na, 0);
    CHECK_EQ_INT(out[0], 0);
}

TD_TEST(greedy_rule) {
    float p[3 * 4] = {0.1f, 0.7f, 0.1f, 0.1f, 0.4f, 0.4f, 0.1f, 0.1f, 0, 0, 0, 1};
    int32_t x[2] = {1, 0}, out[3];
    int na = -1;
    REQUIRE(td_accept_greedy(p, x, 2, 4, out, &na) == TD_OK);
    CHECK_EQ_INT(na, 2); /* tie 0.4/0.4 goes to the lowest id, 0 */
    CHECK_EQ_INT(out[2], 3);
    x[1] = 1;
    REQUIRE(td_accept_greedy(p, x, 2, 4, out, &na) == TD_OK);
    CHECK_EQ_INT(na, 1);
    CHECK_EQ_INT(out[0], 1);
    CHECK_EQ_INT(out[1], 0);
    x[0] = 2;
    REQUIRE(td_accept_greedy(p, x, 2, 4, out, &na) == TD_OK);
    CHECK_EQ_INT(na, 0);
    CHECK_EQ_INT(out[0], 1);
}

/* ---- APD ---- */

static int s_apd_full(const float *D, const float *A, const int32_t *x, int n, int V, float R) {
    const float *rows[16];
    for (int j = 0; j < n; j++) rows[j] = D + (size_t)j * V;
    int k = -1, need = -2;
    if (td_apd_accept(NULL, rows, A, x, n, V, R, &k, &need) != TD_OK || need != -1) return -1;
    return k;
}

/* Reference decision by brute force: x_j accepted iff it is the lowest id reaching the max of
 * R*D + (1-R)*A (double). */
static int s_apd_brute(const float *D, const float *A, const int32_t *x, int n, int V, float R) {
    int k = 1;
    for (int j = 1; j < n; j++) {
        const float *d = D + (size_t)j * V, *a = A + (size_t)j * V;
        int best = 0;
        double bs = -INFINITY;
        for (int t = 0; t < V; t++) {
            double s = (double)R * d[t] + (double)(1.0f - R) * a[t];
            if (s > bs) {
                bs = s;
                best = t;
            }
        }
        if (best != x[j]) break;
        k++;
    }
    return k;
}

TD_TEST(apd_sparse_equals_full_and_flags_only_when_undecidable) {
    enum { N = 6, V = 8 };
    td_rng_t g;
    td_rng_seed(&g, 99);
    const float Rs[] = {0.0f, 0.3f, 0.5f, 0.7f, 1.0f};
    int flagged = 0, decided_sparse = 0;
    for (int it = 0; it < 20000; it++) {
        float R = Rs[td_rng_next(&g) % 5];
        int coarse = it % 2; /* integer-valued logits make ties common */
        float D[N * V], A[N * V];
        int32_t x[N];
        for (int i = 0; i < N * V; i++) {
            double u1 = td_rng_uniform(&g), u2 = td_rng_uniform(&g);
            D[i] = coarse ? (float)floor(u1 * 4) : (float)(u1 * 6 - 3);
            A[i] = coarse ? (float)floor(u2 * 4) : (float)(u2 * 6 - 3);
        }
        for (int j = 0; j < N; j++) {
            /* mostly the mixture argmax (long accepted runs), sometimes a random token */
            const float *d = D + j * V, *a = A + j * V;
            int best = 0;
            double bs = -INFINITY;
            for (int t = 0; t < V; t++) {
                double s = (double)R * d[t] + (double)(1.0f - R) * a[t];
                if (s > bs) bs = s, best = t;
            }
            x[j] = td_rng_uniform(&g) < 0.8 ? best : (int32_t)(td_rng_next(&g) % V);
        }
        /* sparse rows: top-K by logit (ties to lowest id), bound = largest logit left out */
        int32_t ids[N][V];
        float lg[N][V];
        td_apd_row_t rows[N];
        for (int j = 0; j < N; j++) {
            int K = 1 + (int)(td_rng_next(&g) % V), used[V] = {0};
            for (int i = 0; i < K; i++) {
                int b = -1;
                for (int t = 0; t < V; t++)
                    if (!used[t] && (b < 0 || D[j * V + t] > D[j * V + b])) b = t;
                used[b] = 1;
                ids[j][i] = b;
                lg[j][i] = D[j * V + b];
            }
            float bound = -INFINITY;
            for (int t = 0; t < V; t++)
                if (!used[t] && D[j * V + t] > bound) bound = D[j * V + t];
            rows[j] = (td_apd_row_t){.k = K, .ids = ids[j], .logits = lg[j], .bound = bound};
        }
        int kf = s_apd_full(D, A, x, N, V, R);
        REQUIRE(kf == s_apd_brute(D, A, x, N, V, R));
        const float *full[N] = {0};
        int k = -1, need = -1, rounds = 0;
        for (;;) {
            REQUIRE(td_apd_accept(rows, full, A, x, N, V, R, &k, &need) == TD_OK);
            if (need < 0) break;
            REQUIRE(need >= 1 && need < N && !full[need]);
            CHECK_EQ_INT(k, need); /* positions 1..need-1 accepted so far */
            /* Undecidable for real: two completions consistent with (top-K, bound) disagree.
             * Favourable to x: x (if unlisted) at the bound, every other unlisted very low.
             * Unfavourable: x (if unlisted) very low, every other unlisted at the bound. */
            int j = need, xj = x[j];
            float fav[V], unf[V];
            int listed[V] = {0};
            for (int i = 0; i < rows[j].k; i++) listed[rows[j].ids[i]] = 1;
            for (int t = 0; t < V; t++) {
                fav[t] = listed[t] ? D[j * V + t] : (t == xj ? rows[j].bound : -1e6f);
                unf[t] = listed[t] ? D[j * V + t] : (t == xj ? -1e6f : rows[j].bound);
            }
            int32_t xx[2] = {0, xj};
            float Df[2 * V], Du[2 * V], Aj[2 * V];
            memcpy(Df + V, fav, sizeof fav);
            memcpy(Du + V, unf, sizeof unf);
            memcpy(Aj + V, A + j * V, sizeof(float) * V);
            memset(Df, 0, sizeof(float) * V);
            memset(Du, 0, sizeof(float) * V);
            memset(Aj, 0, sizeof(float) * V);
            CHECK_MSG(s_apd_brute(Df, Aj, xx, 2, V, R) == 2 &&
                          s_apd_brute(Du, Aj, xx, 2, V, R) == 1,
                      "need_full at %d but the bound decides (R=%g)", j, (double)R);
            full[need] = D + (size_t)need * V;
            flagged++;
            REQUIRE(++rounds <= N);
        }
        if (rounds == 0) decided_sparse++;
        CHECK_EQ_INT(k, kf);
    }
    CHECK(flagged > 0);
    CHECK(decided_sparse > 0);
}

TD_TEST(apd_args) {
    float A[2 * 3] = {0}, D[2 * 3] = {0, 1, 2, 0, 1, 2};
    int32_t x[2] = {0, 2}, ids[1] = {2};
    float lg[1] = {-5.0f};
    td_apd_row_t rows[2] = {{0}, {.k = 1, .ids = ids, .logits = lg, .bound = 0.0f}};
    int k, need;
    CHECK(td_apd_accept(rows, NULL, A, x, 2, 3, 0.5f, &k, &need) == TD_ERR_ARG); /* logit < bound */
    CHECK(td_apd_accept(rows, NULL, A, x, 2, 3, 1.5f, &k, &need) == TD_ERR_ARG);
    lg[0] = 2.0f;
    REQUIRE(td_apd_accept(rows, NULL, A, x, 2, 3, 0.5f, &k, &need) == TD_OK);
    CHECK_EQ_INT(need, -1); /* 0.5*2 beats every 0.5*bound(0) */
    CHECK_EQ_INT(k, 2);
    const float *full[2] = {NULL, D + 3};
    REQUIRE(td_apd_accept(NULL, full, A, x, 2, 3, 0.5f, &k, &need) == TD_OK);
    CHECK_EQ_INT(k, 2);
    REQUIRE(td_apd_accept(rows, NULL, A, x, 1, 3, 0.5f, &k, &need) == TD_OK);
    CHECK_EQ_INT(k, 1); /* the first token is always accepted */
}

TD_TEST_MAIN()
