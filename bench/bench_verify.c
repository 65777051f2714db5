/* bench_verify.c - the cost of scoring n tokens in one forward pass of a real model, against one
 * decode step (issue 12: a verification block of 9 tokens should cost <= 1.5x one token).
 *
 * Loads a checkpoint (default: the shipped SmolLM2-135M-Instruct Q4_1 GGUF; exits 0 with a message
 * when it is absent), prefills a --ctx token prefix, then in each round, for each n of --n
 * (interleaved, so a change of machine load hits every n alike): crops the cache back to the
 * prefix and runs one forward of n tokens with logits for all n (what a verifier computes).
 * Prints per n the median wall time, the median process CPU time (on a shared machine the wall
 * time includes waiting for a core, CPU time mostly does not) and both relative to n = 1.
 * --profile 1: the CPU backend's ops are timed through a wrapped function table (process CPU
 * time per op, summed per kind and matmul shape) and printed per n, in ms per forward.
 * Options: --model PATH, --threads N (default 1), --n LIST (default 1,2,4,9,16,24), --rounds R
 * (default 9), --ctx P (default 64), --kernels NAME (quantized kernel path), --profile 0|1. */
#include "bench/bench_opts.h"
#include "kernels/backend_impl.h"
#include "kernels/quant.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NMAX 64
#define NPROF 32

static double s_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* --- op profile: a copy of the backend's table whose entries time the real ones --------------- */

static const struct td_backend_i *s_real;
static struct td_backend_i s_wrap;
static struct {
    char name[48];
    double sec;
} s_prof[NPROF];
static int s_nprof, s_profiling;

static void s_add_time(const char *name, double sec) {
    if (!s_profiling) return;
    int i = 0;
    while (i < s_nprof && strcmp(s_prof[i].name, name)) i++;
    if (i == s_nprof) {
        if (s_nprof == NPROF) return;
        snprintf(s_prof[s_nprof++].name, sizeof s_prof[0].name, "%s", name);
    }
    s_prof[i].sec += sec;
}

static void w_matmul(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                     const td_weight_t *bias, int n) {
    const double t0 = s_cpu_now();
    s_real->matmul(be, y, x, w, bias, n);
    char nm[48];
    snprintf(nm, sizeof nm, "matmul %s %lldx%lld", td_dtype_name(w->dtype), (long long)w->rows,
             (long long)w->cols);
    s_add_time(nm, s_cpu_now() - t0);
}
static void w_attention(td_backend_t *be, float *out, const float *q, const void *k,
                        const void *v, const td_attn_desc_t *d) {
    const double t0 = s_cpu_now();
    s_real->attention(be, out, q, k, v, d);
    s_add_time("attention", s_cpu_now() - t0);
}
static void w_rmsnorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w, int n,
                      int d, float eps) {
    const double t0 = s_cpu_now();
    s_real->rmsnorm(be, y, x, w, n, d, eps);
    s_add_time("rmsnorm", s_cpu_now() - t0);
}
static void w_rope(td_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                   int rot_dim, float theta, td_rope_layout_t layout) {
    const double t0 = s_cpu_now();
    s_real->rope(be, x, pos, n, n_head, head_dim, rot_dim, theta, layout);
    s_add_time("rope", s_cpu_now() - t0);
}
static void w_swiglu(td_backend_t *be, float *y, const float *g, const float *u, int64_t count) {
    const double t0 = s_cpu_now();
    s_real->swiglu(be, y, g, u, count);
    s_add_time("swiglu", s_cpu_now() - t0);
}
static void w_add(td_backend_t *be, float *y, const float *x, int64_t count) {
    const double t0 = s_cpu_now();
    s_real->add(be, y, x, count);
    s_add_time("add", s_cpu_now() - t0);
}
static void w_get_rows(td_backend_t *be, float *y, const td_weight_t *t, const int32_t *ids,
                       int n) {
    const double t0 = s_cpu_now();
    s_real->get_rows(be, y, t, ids, n);
    s_add_time("get_rows", s_cpu_now() - t0);
}

static int s_list(const char *s, int *out, int max) {
    int k = 0;
    for (const char *p = s; p && *p && k < max;) {
        out[k++] = atoi(p);
        p = strchr(p, ',');
        if (p) p++;
    }
    return k;
}

static int s_cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_median(double *v, int k) {
    qsort(v, (size_t)k, sizeof *v, s_cmp);
    return k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]);
}

int main(int argc, char **argv) {
    const char *path = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", *nlist = "1,2,4,9,16,24",
               *kern = NULL;
    int threads = 1, rounds = 9, ctx = 64, profile = 0;
    const td_bench_opt_t opts[] = {{"model", 's', &path},     {"threads", 'i', &threads},
                                   {"n", 's', &nlist},        {"rounds", 'i', &rounds},
                                   {"ctx", 'i', &ctx},        {"kernels", 's', &kern},
                                   {"profile", 'i', &profile}};
    if (td_bench_opts(argc, argv, opts, (int)(sizeof opts / sizeof *opts), "bench_verify", 1))
        return 2;
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("bench_verify: %s not present (make models): skipped\n", path);
        return 0;
    }
    fclose(f);
    int ns[16];
    const int nn = s_list(nlist, ns, 16);
    if (rounds < 1) rounds = 1;
    if (ctx < 1) ctx = 1;
    td_err_t err = {0};
    if (kern && td_cpu_kernels_select(kern, &err) != TD_OK) {
        fprintf(stderr, "bench_verify: %s\n", err.msg);
        return 1;
    }
    td_backend_t *be = td_backend_cpu_new(threads, 0, &err);
    if (!be) {
        fprintf(stderr, "bench_verify: %s\n", err.msg);
        return 1;
    }
    if (profile) {
        s_real = be->iface;
        s_wrap = *s_real;
        s_wrap.matmul = w_matmul, s_wrap.attention = w_attention, s_wrap.rmsnorm = w_rmsnorm;
        s_wrap.rope = w_rope, s_wrap.swiglu = w_swiglu, s_wrap.add = w_add;
        s_wrap.get_rows = w_get_rows;
        be->iface = &s_wrap;
    }
    td_model_t *m = td_model_load(path, be, &err);
    if (!m) {
        fprintf(stderr, "bench_verify: %s\n", err.msg);
        td_backend_destroy(&be);
        return 1;
    }
    const td_config_t *c = td_model_config(m);
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, ctx + NMAX + 8, &err);
    /* (the prefix's forward writes ctx rows of logits too) */
    float *logits = malloc((size_t)c->n_vocab * (size_t)(ctx > NMAX ? ctx : NMAX) * sizeof(float));
    int32_t toks[NMAX + 512];
    for (int i = 0; i < NMAX + 512; i++) toks[i] = (int32_t)((i * 7919 + 13) % c->n_vocab);
    if (!kv || !logits || ctx > 512) {
        fprintf(stderr, "bench_verify: cannot make the cache (ctx <= 512)\n");
        return 1;
    }
    td_batch_t pb = {.n = ctx, .tokens = toks, .attn = TD_ATTN_CAUSAL};
    if (td_model_forward(m, kv, &pb, logits, &err)) {
        fprintf(stderr, "bench_verify: %s\n", err.msg);
        return 1;
    }
    printf("# bench_verify %s: %d threads, %s kernels, prefix %d, %d rounds, logits for all n\n",
           path, td_backend_n_threads(be), td_cpu_kernels_name(), ctx, rounds);
    double *wall = calloc((size_t)(nn * rounds), sizeof(double)),
           *cpu = calloc((size_t)(nn * rounds), sizeof(double));
    double(*prof)[NPROF] = calloc((size_t)nn, sizeof *prof);
    for (int r = -1; r < rounds; r++) /* round -1: warm-up, not counted */
        for (int i = 0; i < nn; i++) {
            const int n = ns[i] < 1 ? 1 : ns[i] > NMAX ? NMAX : ns[i];
            td_kv_cache_crop(kv, 0, ctx);
            td_batch_t b = {.n = n, .tokens = toks + ctx, .attn = TD_ATTN_CAUSAL};
            for (int k = 0; k < s_nprof; k++) s_prof[k].sec = 0;
            s_profiling = r >= 0;
            const double t0 = td_time_now(), c0 = s_cpu_now();
            if (td_model_forward(m, kv, &b, logits, &err)) {
                fprintf(stderr, "bench_verify: %s\n", err.msg);
                return 1;
            }
            const double dt = td_time_now() - t0, dc = s_cpu_now() - c0;
            s_profiling = 0;
            if (r < 0) continue;
            wall[i * rounds + r] = dt, cpu[i * rounds + r] = dc;
            for (int k = 0; k < s_nprof; k++) prof[i][k] += s_prof[k].sec / rounds;
        }
    double w1 = 0, c1 = 0, mw[16], mc[16];
    for (int i = 0; i < nn; i++) {
        mw[i] = s_median(wall + i * rounds, rounds), mc[i] = s_median(cpu + i * rounds, rounds);
        if (ns[i] == 1) w1 = mw[i], c1 = mc[i];
    }
    printf("%4s %10s %8s %10s %8s\n", "n", "wall-ms", "/n=1", "cpu-ms", "/n=1");
    for (int i = 0; i < nn; i++)
        printf("%4d %10.2f %8.2f %10.2f %8.2f\n", ns[i], mw[i] * 1e3, w1 > 0 ? mw[i] / w1 : 0,
               mc[i] * 1e3, c1 > 0 ? mc[i] / c1 : 0);
    if (profile) {
        printf("\nprofile: CPU ms per forward (mean of %d rounds)\n%-28s", rounds, "op");
        for (int i = 0; i < nn; i++) printf(" %7s%-2d", "n=", ns[i]);
        printf("\n");
        for (int k = 0; k < s_nprof; k++) {
            printf("%-28s", s_prof[k].name);
            for (int i = 0; i < nn; i++) printf(" %9.2f", prof[i][k] * 1e3);
            printf("\n");
        }
    }
    free(wall), free(cpu), free(prof), free(logits);
    td_kv_cache_destroy(&kv);
    td_model_destroy(&m);
    if (profile) be->iface = s_real;
    td_backend_destroy(&be);
    return 0;
}
