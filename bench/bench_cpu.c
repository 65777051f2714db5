/* bench_cpu.c - `make bench`: CPU decode speed at Qwen2.5-0.5B shape in BF16 (random weights made
 * in memory), against the memory-bandwidth bound measured by this same program.
 *
 * Prints: read bandwidth (GB/s), AR decode tokens/s at batch 1, the cost of scoring 8 tokens in one
 * pass relative to 1, the achieved fraction of the bandwidth bound (weight bytes per token /
 * bandwidth = the fastest a token can be), and the peak resident memory.
 * Options: --threads N (default all cores), --tokens N decode steps (default 32), --model NAME
 * (qwen2.5-0.5b, qwen2.5-1.5b, tiny), --dtype bf16|f16|f32. */
#include "model/model.h"

#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static double s_bandwidth(int threads) {
    const size_t n = (size_t)512 << 20; /* 512 MiB of reads, well past every cache */
    char *buf = NULL;
    if (posix_memalign((void **)&buf, 64, n)) return 0;
    memset(buf, 1, n);
    double best = 0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = td_time_now();
        uint64_t total = 0;
        /* 4 independent 256-bit load streams per thread: enough to saturate the memory system */
#pragma omp parallel for reduction(+ : total) num_threads(threads) schedule(static)
        for (size_t i = 0; i < n / 128; i++) {
            const __m256i *p = (const __m256i *)(buf + i * 128);
            __m256i a = _mm256_or_si256(_mm256_load_si256(p), _mm256_load_si256(p + 1));
            __m256i b = _mm256_or_si256(_mm256_load_si256(p + 2), _mm256_load_si256(p + 3));
            total += (uint64_t)_mm256_extract_epi64(_mm256_or_si256(a, b), 0);
        }
        double dt = td_time_now() - t0;
        sink += total;
        if (n / dt > best) best = n / dt;
    }
    free(buf);
    return best;
}

/* Peak resident set size in kB (Linux's ru_maxrss, the VmHWM of /proc/self/status). */
static long s_peak_rss_kb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

/* One timed forward of b: adds its seconds to *sum and keeps the fastest in *best. */
static void s_time_forward(td_model_t *m, td_kv_cache_t *kv, const td_batch_t *b, float *logits,
                           double *sum, double *best) {
    td_err_t err = {0};
    double a = td_time_now();
    td_model_forward(m, kv, b, logits, &err);
    double d = td_time_now() - a;
    *sum += d;
    if (d < *best) *best = d;
}

int main(int argc, char **argv) {
    int threads = 0, steps = 32;
    const char *name = "qwen2.5-0.5b", *dts = "bf16";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            name = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc)
            dts = argv[++i];
        else {
            fprintf(stderr, "usage: bench_cpu [--threads N] [--tokens N] [--model "
                            "qwen2.5-0.5b|qwen2.5-1.5b|tiny] [--dtype bf16|f16|f32]\n");
            return 2;
        }
    }
    td_config_t c = {.arch = TD_ARCH_QWEN2,
                     .n_vocab = 151936,
                     .n_embd = 896,
                     .n_layer = 24,
                     .n_head = 14,
                     .n_kv_head = 2,
                     .head_dim = 64,
                     .n_ff = 4864,
                     .n_ctx_train = 32768,
                     .rope_theta = 1e6f,
                     .norm_eps = 1e-6f,
                     .tie_embeddings = 1,
                     .qkv_bias = 1,
                     .causal = 1,
                     .mask_token_id = -1};
    if (!strcmp(name, "qwen2.5-1.5b")) {
        c.n_embd = 1536, c.n_layer = 28, c.n_head = 12, c.head_dim = 128, c.n_ff = 8960;
    } else if (!strcmp(name, "tiny")) {
        c.n_vocab = 4096, c.n_embd = 256, c.n_layer = 6, c.n_head = 8, c.head_dim = 32,
        c.n_ff = 768;
    } else if (strcmp(name, "qwen2.5-0.5b") != 0) {
        fprintf(stderr, "bench_cpu: unknown --model %s\n", name);
        return 2;
    }
    td_dtype_t dt = !strcmp(dts, "f32")   ? TD_DTYPE_F32
                    : !strcmp(dts, "f16") ? TD_DTYPE_F16
                                          : TD_DTYPE_BF16;
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(threads, 0, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    threads = td_backend_n_threads(be);
    printf("machine: %d threads\n", threads);
    double bw = s_bandwidth(threads);
    printf("read bandwidth (this program, %d threads): %.2f GB/s\n", threads, bw / 1e9);

    double t0 = td_time_now();
    td_model_t *m = td_model_new_synthetic(&c, dt, 42, be, &err);
    if (!m) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("model: %s shape, %s, %.1fM params, %.1f MB of weights (made in %.1f s)\n", name, dts,
           td_model_n_params(m) / 1e6, td_model_weight_bytes(m) / 1e6, td_time_now() - t0);
    const int prompt = 32, ctx = prompt + steps + 64;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, ctx, &err);
    float *logits = malloc((size_t)c.n_vocab * 16 * sizeof(float));
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = (i * 7919 + 13) % c.n_vocab;
    uint8_t last[64] = {0};
    last[prompt - 1] = 1;
    td_batch_t pb = {.n = prompt, .tokens = toks, .attn = TD_ATTN_CAUSAL, .logits_for = last};
    t0 = td_time_now();
    if (td_model_forward(m, kv, &pb, logits, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("prefill %d tokens: %.3f s (%.1f tok/s)\n", prompt, td_time_now() - t0,
           prompt / (td_time_now() - t0));

    /* decode at batch 1 */
    double best1 = 1e30, sum1 = 0;
    for (int s = 0; s < steps; s++) {
        td_batch_t b = {.n = 1, .tokens = &toks[s % 64], .attn = TD_ATTN_CAUSAL};
        s_time_forward(m, kv, &b, logits, &sum1, &best1);
    }
    double mean1 = sum1 / steps;
    /* scoring 8 tokens in one pass (a verification block), rewriting the same positions */
    int base = td_kv_cache_len(kv, 0);
    double sum8 = 0, best8 = 1e30;
    const int reps8 = steps / 4 > 4 ? steps / 4 : 4;
    for (int r = 0; r < reps8; r++) {
        td_kv_cache_crop(kv, 0, base);
        td_batch_t b = {.n = 8, .tokens = toks, .attn = TD_ATTN_CAUSAL};
        s_time_forward(m, kv, &b, logits, &sum8, &best8);
    }
    double mean8 = sum8 / reps8;
    double bound =
        td_model_weight_bytes(m) / bw; /* seconds per token if only weight reads counted */
    printf("decode batch 1: %.2f tok/s (mean %.1f ms/token, best %.1f ms)\n", 1.0 / mean1,
           mean1 * 1e3, best1 * 1e3);
    printf("bandwidth bound: %.1f ms/token (%.2f tok/s): achieved %.0f%% of the bound (best step "
           "%.0f%%)\n",
           bound * 1e3, 1.0 / bound, 100.0 * bound / mean1, 100.0 * bound / best1);
    printf("score 8 tokens in one pass: %.1f ms = %.2fx the cost of 1 token (best %.2fx)\n",
           mean8 * 1e3, mean8 / mean1, best8 / best1);
    printf("peak resident memory: %.0f MB\n", s_peak_rss_kb() / 1024.0);
    free(logits);
    td_kv_cache_destroy(&kv);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return 0;
}
