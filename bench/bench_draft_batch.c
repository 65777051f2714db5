/* bench_draft_batch.c - drafting for several sessions in one batched call against one call per
 * session (issue 14: the drafter drafts for all active requests in one batched call per round).
 *
 * Diffusion: the bundled diffusion drafter (models/tiny-diffusion-drafter), 4 sessions with their
 * prefixes cached (the service's mode), each round a draft of --gamma tokens in --steps steps
 * (confidence order) per session: 4 x td_diffusion_draft_ex vs one td_diffusion_draft_many.
 * DFlash: the SmolLM2 Q4_1 GGUF with models/dflash-smollm2 (skipped with a message when absent),
 * 4 contexts of --ctx feature rows, a block of the drafter's size per session: 4 x
 * td_dflash_draft vs one td_dflash_draft_many. Both variants run alternately --rounds times on
 * the same data (a change of machine load hits both alike); prints the median wall and process
 * CPU time per round of 4 drafts and the ratio solo / batched, and checks the drafts agree.
 * Options: --threads N (default 1), --rounds R (default 15), --gamma G (8), --steps S (4),
 * --ctx P (64). */
#include "bench/bench_opts.h"
#include "drafter/dflash.h"
#include "drafter/draft.h"
#include "model/checkpoint.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NS 4
#define RMAX 101

static double s_now(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct timing {
    double wall[2][RMAX], cpu[2][RMAX];
} timing_t;

/* Round r (r < 0: the warm-up, not kept) of variant v took since wall clock w and CPU clock c. */
static void s_record(timing_t *t, int v, int r, double w, double c) {
    if (r < 0) return;
    t->wall[v][r] = s_now(CLOCK_MONOTONIC) - w;
    t->cpu[v][r] = s_now(CLOCK_PROCESS_CPUTIME_ID) - c;
}

/* 1 with a message when the batched drafts (b) are not the solo ones (a), else 0. */
static int s_differ(const void *a, const void *b, size_t n, const char *what) {
    if (!memcmp(a, b, n)) return 0;
    fprintf(stderr, "bench_draft_batch: %s drafts differ batched vs solo\n", what);
    return 1;
}

static void s_report(const char *what, timing_t *t, int rounds) {
    double w0 = td_bench_median(t->wall[0], rounds), w1 = td_bench_median(t->wall[1], rounds);
    double c0 = td_bench_median(t->cpu[0], rounds), c1 = td_bench_median(t->cpu[1], rounds);
    printf("%-10s %d sessions: solo %.2f ms (cpu %.2f), batched %.2f ms (cpu %.2f) per round; "
           "solo/batched wall %.2fx, cpu %.2fx\n",
           what, NS, 1e3 * w0, 1e3 * c0, 1e3 * w1, 1e3 * c1, w0 / w1, c0 / c1);
}

static void s_rand_tokens(uint64_t seed, int V, int avoid, int n, int32_t *out) {
    td_rng_t r;
    td_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        do out[i] = (int32_t)(td_rng_next(&r) % (uint64_t)V);
        while (out[i] == avoid);
    }
}

static int s_diffusion(int threads, int rounds, int gamma, int steps, int ctx) {
    const char *dir = "models/tiny-diffusion-drafter";
    td_err_t err = {0};
    if (access(dir, R_OK)) {
        printf("diffusion: %s absent, skipped\n", dir);
        return 0;
    }
    td_backend_t *be = td_backend_cpu_new(threads, 0, &err);
    td_model_t *m = be ? td_model_load(dir, be, &err) : NULL;
    if (!m) {
        fprintf(stderr, "bench_draft_batch: %s: %s\n", dir, err.msg);
        return 1;
    }
    const int V = td_model_config(m)->n_vocab, mask = td_model_config(m)->mask_token_id;
    td_kv_cache_t *kv[2] = {td_kv_cache_new(m, NS, ctx + gamma, &err),
                            td_kv_cache_new(m, NS, ctx + gamma, &err)};
    int32_t *text = malloc((size_t)NS * ctx * sizeof *text), dr[2][NS][64];
    timing_t t;
    const td_sampling_t sp = {0.0f, 0, 1.0f};
    int rc = 0;
    memset(dr, 0, sizeof dr);
    for (int k = 0; k < NS; k++) s_rand_tokens(50 + (uint64_t)k, V, mask, ctx, text + k * ctx);
    for (int r = -1; r < rounds && !rc; r++) { /* round -1: fills both caches (not timed) */
        for (int v = 0; v < 2 && !rc; v++) {
            td_rng_t rng[NS];
            td_diffusion_job_t jobs[NS];
            for (int k = 0; k < NS; k++) {
                td_rng_seed(&rng[k], 9 + (uint64_t)k);
                jobs[k] = (td_diffusion_job_t){.seq = k,
                                               .prefix = text + k * ctx,
                                               .n_prefix = ctx,
                                               .gamma = gamma,
                                               .steps = steps,
                                               .order = TD_ORDER_CONFIDENCE,
                                               .sp = &sp,
                                               .rng = &rng[k],
                                               .draft = dr[v][k]};
            }
            double w = s_now(CLOCK_MONOTONIC), c = s_now(CLOCK_PROCESS_CPUTIME_ID);
            if (v == 0) {
                for (int k = 0; k < NS && !rc; k++)
                    rc = td_diffusion_draft_many(m, kv[0], &jobs[k], 1, NULL, &err);
            } else {
                rc = td_diffusion_draft_many(m, kv[1], jobs, NS, NULL, &err);
            }
            s_record(&t, v, r, w, c);
        }
        if (!rc) rc = s_differ(dr[0], dr[1], sizeof dr[0], "diffusion");
    }
    if (rc)
        fprintf(stderr, "bench_draft_batch: diffusion: %s\n", err.msg);
    else {
        char what[64];
        snprintf(what, sizeof what, "diffusion (prefix %d, gamma %d, %d steps)", ctx, gamma, steps);
        printf("%s\n", what);
        s_report("  diffusion", &t, rounds);
    }
    free(text);
    td_kv_cache_destroy(&kv[0]);
    td_kv_cache_destroy(&kv[1]);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc != 0;
}

static int s_dflash(int threads, int rounds, int ctx) {
    const char *gguf = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
               *dir = "models/dflash-smollm2";
    td_err_t err = {0};
    if (access(gguf, R_OK) || access(dir, R_OK)) {
        printf("dflash: %s or %s absent, skipped\n", gguf, dir);
        return 0;
    }
    uint64_t fp = 0;
    td_backend_t *be = td_backend_cpu_new(threads, 0, &err);
    td_model_t *m = be ? td_model_load(gguf, be, &err) : NULL;
    td_dflash_t *d = m && td_checkpoint_fingerprint(gguf, &fp, &err) == TD_OK
                         ? td_dflash_load(dir, m, fp, 0, &err)
                         : NULL;
    if (!d) {
        fprintf(stderr, "bench_draft_batch: dflash: %s\n", err.msg);
        td_model_destroy(&m);
        td_backend_destroy(&be);
        return 1;
    }
    const int FD = td_dflash_feature_dim(d), B = td_dflash_config(d)->block_size;
    float *feat = malloc((size_t)ctx * FD * sizeof *feat);
    td_dflash_ctx_t *cx[2][NS];
    int32_t dr[2][NS][64];
    int rc = 0;
    memset(dr, 0, sizeof dr);
    for (int k = 0; k < NS; k++) {
        td_rng_t r;
        td_rng_seed(&r, 70 + (uint64_t)k);
        for (size_t i = 0; i < (size_t)ctx * FD; i++)
            feat[i] = (float)((double)(td_rng_next(&r) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        for (int v = 0; v < 2; v++) {
            cx[v][k] = td_dflash_ctx_new(d, ctx + B, &err);
            if (!cx[v][k] || td_dflash_ctx_append(cx[v][k], feat, ctx, &err) != TD_OK) rc = 1;
        }
    }
    timing_t t;
    const td_sampling_t sp = {0.0f, 0, 1.0f};
    for (int r = -1; r < rounds && !rc; r++) {
        for (int v = 0; v < 2 && !rc; v++) {
            td_dflash_job_t jobs[NS];
            for (int k = 0; k < NS; k++)
                jobs[k] = (td_dflash_job_t){
                    .ctx = cx[v][k], .anchor = 100 + k, .block = B, .sp = &sp, .draft = dr[v][k]};
            double w = s_now(CLOCK_MONOTONIC), c = s_now(CLOCK_PROCESS_CPUTIME_ID);
            if (v == 0) {
                for (int k = 0; k < NS && !rc; k++) rc = td_dflash_draft_many(&jobs[k], 1, &err);
            } else {
                rc = td_dflash_draft_many(jobs, NS, &err);
            }
            s_record(&t, v, r, w, c);
        }
        if (!rc) rc = s_differ(dr[0], dr[1], sizeof dr[0], "dflash");
    }
    if (rc)
        fprintf(stderr, "bench_draft_batch: dflash: %s\n", err.msg);
    else {
        printf("dflash (SmolLM2 Q4_1, context %d rows, block %d)\n", ctx, B);
        s_report("  dflash", &t, rounds);
    }
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < NS; k++) td_dflash_ctx_destroy(&cx[v][k]);
    free(feat);
    td_dflash_destroy(&d);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc != 0;
}

int main(int argc, char **argv) {
    int threads = 1, rounds = 15, gamma = 8, steps = 4, ctx = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--threads"))
            threads = v;
        else if (!strcmp(argv[i], "--rounds"))
            rounds = v;
        else if (!strcmp(argv[i], "--gamma"))
            gamma = v;
        else if (!strcmp(argv[i], "--steps"))
            steps = v;
        else if (!strcmp(argv[i], "--ctx"))
            ctx = v;
        else {
            fprintf(stderr, "bench_draft_batch: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (threads < 1 || rounds < 1 || rounds > RMAX || gamma < 1 || gamma > 64 || steps < 1 ||
        ctx < 1 || ctx > 1024) {
        fprintf(stderr, "bench_draft_batch: bad option value\n");
        return 2;
    }
    printf("bench_draft_batch: %d thread(s), median of %d rounds\n", threads, rounds);
    int rc = s_diffusion(threads, rounds, gamma, steps, ctx);
    return rc | s_dflash(threads, rounds, ctx);
}
