/* bench_quant.c - the CPU backend's quantized skinny products at SmolLM2-135M's decode shapes.
 *
 * One "token" = the 7 products of each of 30 layers (q 576x576, k and v 192x576, o 576x576, gate
 * and up 1536x576, down 576x1536) plus the tied lm_head (49152x576), all in distinct memory (random
 * blocks, about the size of the model file, so nothing stays in cache). For each weight set, kernel
 * path, thread count and batch n (1: AR decode, 9: a verification block) it prints the time per
 * token, its rate, and the weight bytes read per second.
 * Weight sets: "q4_1-file" (layers Q4_1, lm_head Q8_0: the shipped GGUF), then every type alone
 * (K types need cols % 256 == 0: their 576-column matrices use 768 columns; GB/s stays comparable),
 * and "bf16" (the float kernels, for a ratio).
 * Options: --threads LIST (default 1,2), --reps N (default 15), --set NAME (only that set),
 * --n LIST (default 1,9), --kernels NAME (only that path), --hot 1 (one layer's weights reused:
 * cache-resident, measures the kernels' compute; lm_head replaced by a 576x576 matrix), --repack
 * 0|1 (default 1: Q4_1 and Q8_0 in the 16-row tile layout the CPU backend loads them in; 0: the
 * file's row layout). */
#include "bench/bench_opts.h"
#include "kernels/backend.h"
#include "kernels/cpu_quant.h"
#include "kernels/quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NL 30

typedef struct mat {
    td_weight_t w;
    void *mem;
    size_t bytes;
} mat_t;

static uint64_t s_rng = 0x1234567887654321ull;
static uint64_t s_next(void) {
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    return s_rng;
}

static void s_make(mat_t *m, td_dtype_t t, int64_t rows, int64_t cols) {
    const int be = td_dtype_block_elems(t);
    if (cols % be) cols = (cols + be - 1) / be * be;
    m->bytes = td_dtype_is_quantized(t) ? (size_t)td_dtype_row_bytes(t, cols) * (size_t)rows
                                        : (size_t)(rows * cols) * td_dtype_size(t);
    uint8_t *p = NULL;
    if (posix_memalign((void **)&p, 64, m->bytes)) abort();
    for (size_t i = 0; i < m->bytes; i += 8) {
        uint64_t v = s_next();
        memcpy(p + i, &v, m->bytes - i < 8 ? m->bytes - i : 8);
    }
    /* sane scales: rewrite every f16 scale field to a small value */
    const uint16_t h = td_f32_to_f16(0.01f);
    const size_t bb = td_dtype_block_bytes(t);
    if (td_dtype_is_quantized(t))
        for (size_t b = 0; b < m->bytes; b += bb) {
            if (t == TD_DTYPE_Q6_K)
                memcpy(p + b + 208, &h, 2);
            else {
                memcpy(p + b, &h, 2);
                if (t == TD_DTYPE_Q4_1 || t == TD_DTYPE_Q5_1 || t == TD_DTYPE_Q4_K ||
                    t == TD_DTYPE_Q5_K)
                    memcpy(p + b + 2, &h, 2);
            }
        }
    else if (t == TD_DTYPE_BF16)
        for (size_t i = 0; i < m->bytes; i += 2) {
            uint16_t v = td_f32_to_bf16((float)((int)(s_next() % 2001) - 1000) * 1e-4f);
            memcpy(p + i, &v, 2);
        }
    m->mem = p;
    m->w = (td_weight_t){.data = p, .dtype = t, .rows = rows, .cols = cols};
}

/* --repack 1: the 16-row tile layout the CPU backend gives Q4_1 / Q8_0 models at load */
static void s_repack(mat_t *m) {
    void *t = td_cpu_qrepack(&m->w);
    if (!t) return;
    free(m->mem);
    m->mem = t;
    m->w.data = t;
    m->w.layout = TD_WLAYOUT_TILE16;
}

static double s_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best wall time of reps runs; *cpu: the process CPU time of that run (all threads): on a busy
 * machine wall time includes time the threads waited for a core, CPU time does not. */
static double s_run(td_backend_t *be, mat_t *mats, int nm, float *x, float *y, int n, int reps,
                    double *cpu) {
    double best = 1e30, bcpu = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        const double t0 = td_time_now(), c0 = s_cpu_now();
        for (int i = 0; i < nm; i++) td_op_matmul(be, y, x, &mats[i].w, NULL, n);
        const double dt = td_time_now() - t0, dc = s_cpu_now() - c0;
        if (dt < best) best = dt;
        if (dc < bcpu) bcpu = dc;
    }
    if (cpu) *cpu = bcpu;
    return best;
}

static int s_in_list(const char *list, int v) {
    for (const char *p = list; p && *p;) {
        if (atoi(p) == v) return 1;
        p = strchr(p, ',');
        if (p) p++;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *threads = "1,2", *only = NULL, *nlist = "1,9", *konly = NULL;
    int reps = 15, hot = 0, repack = 1;
    const td_bench_opt_t opts[] = {{"threads", 's', &threads}, {"reps", 'i', &reps},
                                   {"set", 's', &only},        {"n", 's', &nlist},
                                   {"hot", 'i', &hot},         {"kernels", 's', &konly},
                                   {"repack", 'i', &repack}};
    td_bench_opts(argc, argv, opts, (int)(sizeof opts / sizeof *opts), "bench_quant", 0);
    static const struct {
        const char *name;
        td_dtype_t layer, head;
    } sets[] = {
        {"q4_1-file", TD_DTYPE_Q4_1, TD_DTYPE_Q8_0}, {"q8_0", TD_DTYPE_Q8_0, TD_DTYPE_Q8_0},
        {"q4_0", TD_DTYPE_Q4_0, TD_DTYPE_Q4_0},      {"q4_1", TD_DTYPE_Q4_1, TD_DTYPE_Q4_1},
        {"q5_0", TD_DTYPE_Q5_0, TD_DTYPE_Q5_0},      {"q5_1", TD_DTYPE_Q5_1, TD_DTYPE_Q5_1},
        {"q4_k", TD_DTYPE_Q4_K, TD_DTYPE_Q4_K},      {"q5_k", TD_DTYPE_Q5_K, TD_DTYPE_Q5_K},
        {"q6_k", TD_DTYPE_Q6_K, TD_DTYPE_Q6_K},      {"bf16", TD_DTYPE_BF16, TD_DTYPE_BF16},
    };
    static const char *const paths[] = {"scalar", "avx2", "avx512vnni"};
    const int64_t shp[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                               {1536, 576}, {1536, 576}, {576, 1536}};
    float *x = malloc(sizeof(float) * 24 * 1536), *y = malloc(sizeof(float) * 24 * 49152);
    for (int i = 0; i < 24 * 1536; i++) x[i] = (float)((int)(s_next() % 2001) - 1000) * 1e-3f;
    printf("# bench_quant: SmolLM2-135M decode products (30 layers x 7 + lm_head 49152x576), "
           "best of %d\n",
           reps);
    printf("%-10s %-11s %3s %3s %10s %10s %8s %12s\n", "set", "kernels", "thr", "n", "ms/token",
           "tok/s", "GB/s", "cpu-ms/token");
    for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
        if (only && strcmp(only, sets[s].name)) continue;
        const int nm = NL * 7 + 1;
        mat_t *mats = calloc((size_t)nm, sizeof *mats);
        size_t bytes = 0;
        for (int l = 0; l < NL; l++)
            for (int k = 0; k < 7; k++) {
                if (hot && l > 0) { /* --hot 1: one layer's weights (in cache) 30 times */
                    mats[l * 7 + k] = mats[k];
                    mats[l * 7 + k].mem = NULL;
                } else {
                    s_make(&mats[l * 7 + k], sets[s].layer, shp[k][0], shp[k][1]);
                    if (repack) s_repack(&mats[l * 7 + k]);
                }
            }
        if (hot)
            s_make(&mats[nm - 1], sets[s].layer, 576, 576);
        else
            s_make(&mats[nm - 1], sets[s].head, 49152, 576);
        if (repack) s_repack(&mats[nm - 1]);
        for (int i = 0; i < nm; i++) bytes += mats[i].bytes;
        const int quant = td_dtype_is_quantized(sets[s].layer);
        for (int p = 0; p < 3; p++) {
            if (!td_cpu_kernels_available(paths[p])) continue;
            if (konly && quant && strcmp(konly, paths[p])) continue;
            if (!quant && p != 2) continue; /* bf16: one row (its kernels do not switch) */
            td_cpu_kernels_select(paths[p], NULL);
            for (int th = 1; th <= 16; th++) {
                if (!s_in_list(threads, th)) continue;
                td_backend_t *be = td_backend_cpu_new(th, 0, NULL);
                for (int n = 1; n <= 24; n++) {
                    if (!s_in_list(nlist, n)) continue;
                    const int r = p == 0 ? (reps + 4) / 5 : reps; /* scalar is slow */
                    double cpu;
                    s_run(be, mats, nm, x, y, n, 1, NULL); /* warm-up */
                    const double dt = s_run(be, mats, nm, x, y, n, r, &cpu);
                    printf("%-10s %-11s %3d %3d %10.3f %10.1f %8.2f %12.3f\n", sets[s].name,
                           quant ? paths[p] : "float-avx2", th, n, dt * 1e3, 1.0 / dt,
                           (double)bytes / dt * 1e-9, cpu * 1e3);
                    fflush(stdout);
                }
                td_backend_destroy(&be);
            }
        }
        for (int i = 0; i < nm; i++) free(mats[i].mem);
        free(mats);
    }
    td_cpu_kernels_select("auto", NULL);
    free(x);
    free(y);
    return 0;
}
