/* bench_cuda.c - CUDA decode, scoring and diffusion-step speed at real model shapes, against the
 * HBM bound measured by this same program. Never part of `make test`; without a CUDA device it
 * says so and exits 0.
 *
 * Weights: a sparse safetensors checkpoint of the model's exact tensor names and shapes (BF16) is
 * written to a temporary directory (header only: the data section is a hole, so it costs no disk
 * and no time), loaded with td_model_load, and the backend's synthetic mode fills every tensor on
 * the device with pseudo-random values instead of reading the file. Model setup therefore costs
 * milliseconds even at 7B; the numbers computed are meaningless, the speed is real.
 *
 * Prints, per model: AR decode tokens/s at batch 1; the cost of scoring 8 and 16 tokens in one
 * pass relative to 1; for dream-7b, one diffusion step over a block of 32 masks (bidirectional,
 * rewriting the block in place, logits of all 32 rows); each with its fraction of the bandwidth
 * bound = (weight bytes read per forward / copy bandwidth) / measured time. Weight bytes read per
 * forward exclude an untied input embedding (one row of it is read per token). Last, per model:
 * the cost of sampling one row of logits on the backend (td_op_sample, greedy and T 0.8 top-p 0.9)
 * next to copying that row to the host, which host-side sampling needs first.
 * Options: --synthetic NAME or --model NAME (the same: qwen2.5-0.5b, qwen2.5-7b, dream-7b, tiny,
 * tiny-dream; repeatable; default the first three), --device N, --tokens N decode steps (64),
 * --prompt N (128), --matmul auto|cublas|gemv|both (both: decode and scoring with each path),
 * --dry-run (write and load the checkpoints on the CPU backend only, to check them without a GPU;
 * the tiny models also run every measurement there, on zero weights, to check the program itself).
 */
#include "bench/bench_opts.h"
#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/model.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct shape {
    const char *name;
    int vocab, embd, layers, heads, kv_heads, head_dim, ff, tied, diffusion;
} shape_t;

static const shape_t s_shapes[] = {
    {"qwen2.5-0.5b", 151936, 896, 24, 14, 2, 64, 4864, 1, 0},
    {"qwen2.5-7b", 152064, 3584, 28, 28, 4, 128, 18944, 0, 0},
    /* Dream-v0-Instruct-7B has Qwen2.5-7B's shapes; run as a Qwen2 stack with bidirectional batches
     */
    {"dream-7b", 152064, 3584, 28, 28, 4, 128, 18944, 0, 1},
    {"tiny", 4096, 256, 4, 8, 2, 32, 768, 1, 0},
    {"tiny-dream", 4096, 256, 4, 8, 2, 32, 768, 1, 1},
};

/* --- the sparse checkpoint ---------------------------------------------------------------------
 */

typedef struct hdr {
    char *buf;
    size_t len, cap;
    uint64_t off;
} hdr_t;

static void s_app(hdr_t *h, const char *s) {
    size_t n = strlen(s);
    if (h->len + n + 1 > h->cap) {
        h->cap = (h->len + n + 1) * 2;
        h->buf = realloc(h->buf, h->cap);
        if (!h->buf) abort();
    }
    memcpy(h->buf + h->len, s, n + 1);
    h->len += n;
}

static void s_tensor(hdr_t *h, const char *name, int64_t d0, int64_t d1) {
    char line[512];
    uint64_t bytes = (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1) * 2;
    if (d1)
        snprintf(line, sizeof line,
                 "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                 h->len > 1 ? "," : "", name, (long long)d0, (long long)d1,
                 (unsigned long long)h->off, (unsigned long long)(h->off + bytes));
    else
        snprintf(line, sizeof line,
                 "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                 h->len > 1 ? "," : "", name, (long long)d0, (unsigned long long)h->off,
                 (unsigned long long)(h->off + bytes));
    s_app(h, line);
    h->off += bytes;
}

/* Writes DIR/config.json and DIR/model.safetensors (header + a hole). 0 or -1. */
static int s_write_checkpoint(const char *dir, const shape_t *s) {
    char path[512], name[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\",\"vocab_size\":%d,"
            "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_"
            "heads\":%d,"
            "\"num_key_value_heads\":%d,\"max_position_embeddings\":32768,\"rope_theta\":1000000.0,"
            "\"rms_norm_eps\":1e-06,\"tie_word_embeddings\":%s,\"hidden_act\":\"silu\",\"torch_"
            "dtype\":\"bfloat16\"}\n",
            s->vocab, s->embd, s->ff, s->layers, s->heads, s->kv_heads, s->tied ? "true" : "false");
    fclose(f);
    const int64_t C = s->embd, Q = (int64_t)s->heads * s->head_dim,
                  KV = (int64_t)s->kv_heads * s->head_dim, F = s->ff, V = s->vocab;
    hdr_t h = {0};
    s_app(&h, "{");
    s_tensor(&h, "model.embed_tokens.weight", V, C);
    for (int i = 0; i < s->layers; i++) {
#define T(fmt, d0, d1) (snprintf(name, sizeof name, fmt, i), s_tensor(&h, name, d0, d1))
        T("model.layers.%d.input_layernorm.weight", C, 0);
        T("model.layers.%d.self_attn.q_proj.weight", Q, C);
        T("model.layers.%d.self_attn.k_proj.weight", KV, C);
        T("model.layers.%d.self_attn.v_proj.weight", KV, C);
        T("model.layers.%d.self_attn.q_proj.bias", Q, 0);
        T("model.layers.%d.self_attn.k_proj.bias", KV, 0);
        T("model.layers.%d.self_attn.v_proj.bias", KV, 0);
        T("model.layers.%d.self_attn.o_proj.weight", C, Q);
        T("model.layers.%d.post_attention_layernorm.weight", C, 0);
        T("model.layers.%d.mlp.gate_proj.weight", F, C);
        T("model.layers.%d.mlp.up_proj.weight", F, C);
        T("model.layers.%d.mlp.down_proj.weight", C, F);
#undef T
    }
    s_tensor(&h, "model.norm.weight", C, 0);
    if (!s->tied) s_tensor(&h, "lm_head.weight", V, C);
    s_app(&h, "}");
    while (h.len % 8) s_app(&h, " ");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    int rc = -1;
    if (fd >= 0) {
        uint64_t hl = h.len;
        if (write(fd, &hl, 8) == 8 && write(fd, h.buf, h.len) == (ssize_t)h.len &&
            ftruncate(fd, (off_t)(8 + h.len + h.off)) == 0)
            rc = 0;
        close(fd);
    }
    free(h.buf);
    return rc;
}

static void s_remove_checkpoint(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

/* --- timing ------------------------------------------------------------------------------------
 */

/* Median seconds of `reps` forwards of k tokens at the end of slot 0 (cropped back each time). */
static double s_time_block(td_model_t *m, td_kv_cache_t *kv, const int32_t *tok, int k,
                           td_attn_kind_t kind, int all_logits, float *logits, int reps) {
    td_err_t err = {0};
    int base = td_kv_cache_len(kv, 0);
    double *t = malloc(sizeof(double) * (size_t)reps);
    uint8_t sel[64] = {0};
    sel[k - 1] = 1;
    for (int r = -2; r < reps; r++) { /* two warm-ups */
        td_kv_cache_crop(kv, 0, base);
        td_batch_t b = {.n = k, .tokens = tok, .attn = kind, .logits_for = all_logits ? NULL : sel};
        double a = td_time_now();
        if (td_model_forward(m, kv, &b, logits, &err)) {
            fprintf(stderr, "forward: %s\n", err.msg);
            free(t);
            return -1;
        }
        if (r >= 0) t[r] = td_time_now() - a;
    }
    td_kv_cache_crop(kv, 0, base);
    double med = td_bench_median(t, reps);
    free(t);
    return med;
}

/* The cost of choosing a token from one row of logits already in backend memory: td_op_sample
 * (greedy, and temperature 0.8 + top-p 0.9), against copying the row to the host, which is what a
 * host-side sampler needs before it starts. Median of reps calls. Returns 0, or 1 on a failure. */
static int s_bench_sample(td_backend_t *be, int vocab) {
    const int reps = 200;
    td_err_t err = {0};
    float *host = malloc(sizeof(float) * (size_t)vocab);
    float *dev = td_backend_alloc(be, sizeof(float) * (size_t)vocab);
    double *t = malloc(sizeof(double) * reps);
    int rc = 1;
    if (!host || !dev || !t) goto out;
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < vocab; i++) { /* xorshift logits in [-8, 8) */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        host[i] = (float)((x >> 11) * (1.0 / 9007199254740992.0) * 16.0 - 8.0);
    }
    td_backend_set(be, dev, host, sizeof(float) * (size_t)vocab);
    td_backend_sync(be);
    const td_sample_desc_t modes[2] = {{0, 0, 1}, {0.8f, 0, 0.9f}};
    const char *names[2] = {"greedy", "T 0.8 top-p 0.9"};
    double med[3];
    for (int k = 0; k < 2; k++) {
        for (int r = -2; r < reps; r++) {
            td_sample_result_t res;
            uint64_t seed = (uint64_t)r + 7;
            double a = td_time_now();
            if (td_op_sample(be, dev, 1, vocab, &modes[k], &seed, &res, &err) != TD_OK) {
                fprintf(stderr, "bench_cuda: td_op_sample: %s\n", err.msg);
                goto out;
            }
            if (r >= 0) t[r] = td_time_now() - a;
        }
        med[k] = td_bench_median(t, reps);
    }
    for (int r = -2; r < reps; r++) {
        double a = td_time_now();
        td_backend_get(be, host, dev, sizeof(float) * (size_t)vocab);
        if (r >= 0) t[r] = td_time_now() - a;
    }
    med[2] = td_bench_median(t, reps);
    printf("   sampling one row of %d logits on %s: %s %.1f us, %s %.1f us; copying the row to the "
           "host instead: %.1f us\n",
           vocab, td_backend_name(be), names[0], med[0] * 1e6, names[1], med[1] * 1e6,
           med[2] * 1e6);
    rc = 0;
out:
    free(host);
    free(t);
    td_backend_free(be, dev);
    return rc;
}

static int s_bench_model(const shape_t *s, int device, int steps, int prompt, int matmul, int dry,
                         double bw) {
    char dir[] = "/tmp/tandem-bench-XXXXXX";
    if (!mkdtemp(dir) || s_write_checkpoint(dir, s)) {
        fprintf(stderr, "bench_cuda: cannot write a synthetic checkpoint under /tmp\n");
        return 1;
    }
    td_err_t err = {0};
    td_backend_t *be = dry ? td_backend_cpu_new(1, 0, &err) : td_backend_cuda_new(device, &err);
    if (!be) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        s_remove_checkpoint(dir);
        return 1;
    }
    if (!dry) td_backend_cuda_set_synthetic(be, 1, 42);
    double t0 = td_time_now();
    td_model_t *m = td_model_load(dir, be, &err);
    if (!dry) td_backend_cuda_set_synthetic(be, 0, 0);
    s_remove_checkpoint(dir);
    if (!m || (!dry && td_backend_cuda_error(be, &err))) {
        fprintf(stderr, "bench_cuda: %s: %s\n", s->name, err.msg);
        td_model_destroy(&m);
        td_backend_destroy(&be);
        return 1;
    }
    const double load_s = td_time_now() - t0;
    const uint64_t wbytes = td_model_weight_bytes(m);
    const uint64_t read = wbytes - (s->tied ? 0 : (uint64_t)s->vocab * s->embd * 2);
    printf("\n== %s (BF16 weights, synthetic): %.2fB params, %.2f GB of weights, %.2f GB read per "
           "forward; "
           "set up in %.2f s on %s\n",
           s->name, td_model_n_params(m) / 1e9, wbytes / 1e9, read / 1e9, load_s,
           td_backend_name(be));
    if (dry && strncmp(s->name, "tiny", 4) != 0) {
        td_model_destroy(&m);
        td_backend_destroy(&be);
        return 0;
    }
    const double bound = read / bw; /* seconds per forward if only the weight reads counted */
    printf("   bandwidth bound: %.3f ms per forward (%.1f forwards/s)\n", bound * 1e3, 1.0 / bound);
    const int ctx = prompt + steps + 64 + 32;
    int rc = 0;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, ctx, &err);
    float *logits = malloc(sizeof(float) * (size_t)s->vocab * 32);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(prompt + steps + 64));
    if (!kv || !logits || !tok) {
        fprintf(stderr, "bench_cuda: %s\n", kv ? "out of memory" : err.msg);
        rc = 1;
        goto out;
    }
    for (int i = 0; i < prompt + steps + 64; i++) tok[i] = (int32_t)((i * 7919 + 13) % s->vocab);
    const int modes[3] = {TD_CUDA_MATMUL_AUTO, TD_CUDA_MATMUL_CUBLAS, TD_CUDA_MATMUL_GEMV};
    const char *mname[3] = {"auto", "cublas", "gemv"};
    for (int mi = 0; mi < 3; mi++) {
        if (matmul != 3 && matmul != mi) continue; /* 3 = both: auto and cublas */
        if (matmul == 3 && mi == 2) continue;
        td_backend_cuda_set_matmul(be, modes[mi]);
        td_kv_cache_crop(kv, 0, 0);
        uint8_t last[4096] = {0};
        last[prompt - 1] = 1;
        td_batch_t pb = {.n = prompt,
                         .tokens = tok,
                         .attn = s->diffusion ? TD_ATTN_BIDIR : TD_ATTN_CAUSAL,
                         .logits_for = last};
        double a = td_time_now();
        if (td_model_forward(m, kv, &pb, logits, &err)) {
            fprintf(stderr, "prefill: %s\n", err.msg);
            rc = 1;
            goto out;
        }
        const double pf = td_time_now() - a;
        printf("   [matmul %s] prefill %d tokens: %.1f ms (%.0f tok/s)\n", mname[mi], prompt,
               pf * 1e3, prompt / pf);
        if (!s->diffusion) {
            double *t = malloc(sizeof(double) * (size_t)steps);
            for (int i = -3; i < steps; i++) {
                td_batch_t b = {
                    .n = 1, .tokens = &tok[prompt + (i < 0 ? 0 : i)], .attn = TD_ATTN_CAUSAL};
                if (i < 0) td_kv_cache_crop(kv, 0, prompt);
                a = td_time_now();
                if (td_model_forward(m, kv, &b, logits, &err)) {
                    fprintf(stderr, "decode: %s\n", err.msg);
                    free(t);
                    rc = 1;
                    goto out;
                }
                if (i >= 0) t[i] = td_time_now() - a;
                if (i == -1) td_kv_cache_crop(kv, 0, prompt);
            }
            double mean = 0;
            for (int i = 0; i < steps; i++) mean += t[i] / steps;
            const double med = td_bench_median(t, steps);
            printf("   [matmul %s] AR decode batch 1: %.1f tok/s (median %.3f ms/token, mean %.3f "
                   "ms), %.0f%% of "
                   "the bandwidth bound\n",
                   mname[mi], 1.0 / med, med * 1e3, mean * 1e3, 100.0 * bound / med);
            free(t);
            const double one = s_time_block(m, kv, tok + 7, 1, TD_ATTN_CAUSAL, 1, logits, 20);
            const double t8 = s_time_block(m, kv, tok + 7, 8, TD_ATTN_CAUSAL, 1, logits, 20);
            const double t16 = s_time_block(m, kv, tok + 7, 16, TD_ATTN_CAUSAL, 1, logits, 20);
            if (one < 0 || t8 < 0 || t16 < 0) {
                rc = 1;
                goto out;
            }
            printf("   [matmul %s] score 1 token: %.3f ms (%.0f%% of bound); 8 tokens in one pass: "
                   "%.3f ms = %.2fx; "
                   "16 tokens: %.3f ms = %.2fx (logits of every row returned)\n",
                   mname[mi], one * 1e3, 100.0 * bound / one, t8 * 1e3, t8 / one, t16 * 1e3,
                   t16 / one);
        } else {
            /* one denoising step: 32 masks after the prompt, bidirectional, rewritten in place */
            int32_t masks[32];
            for (int i = 0; i < 32; i++) masks[i] = s->vocab - 1 - (i % 3);
            const double st = s_time_block(m, kv, masks, 32, TD_ATTN_BIDIR, 1, logits, 20);
            const double st1 = s_time_block(m, kv, masks, 32, TD_ATTN_BIDIR, 0, logits, 20);
            if (st < 0 || st1 < 0) {
                rc = 1;
                goto out;
            }
            printf("   [matmul %s] diffusion step, block of 32 masks after %d prompt tokens: %.3f "
                   "ms with the "
                   "logits of all 32 rows, %.3f ms with one row (%.0f%% / %.0f%% of the bandwidth "
                   "bound)\n",
                   mname[mi], prompt, st * 1e3, st1 * 1e3, 100.0 * bound / st, 100.0 * bound / st1);
        }
        if (!dry && td_backend_cuda_error(be, &err)) {
            fprintf(stderr, "bench_cuda: %s: %s\n", s->name, err.msg);
            rc = 1;
            goto out;
        }
        fflush(stdout);
    }
    if (s_bench_sample(be, s->vocab)) {
        rc = 1;
        goto out;
    }
    size_t fr = 0, tot = 0;
    if (!dry && td_cuda_mem_info(be, &fr, &tot) == TD_OK)
        printf("   device memory in use: %.1f of %.1f GB\n", (tot - fr) / 1e9, tot / 1e9);
out:
    if (rc && !dry && td_backend_cuda_error(be, &err))
        fprintf(stderr, "bench_cuda: %s: CUDA error: %s\n", s->name, err.msg);
    free(logits);
    free(tok);
    td_kv_cache_destroy(&kv);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* tools/gpu-check.sh tees it under a time limit */
    int device = 0, steps = 64, prompt = 128, matmul = 0, dry = 0, nm = 0;
    const char *models[8];
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--model") || !strcmp(argv[i], "--synthetic")) && i + 1 < argc &&
            nm < 8)
            models[nm++] = argv[++i];
        else if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            prompt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--matmul") && i + 1 < argc) {
            const char *v = argv[++i];
            matmul = !strcmp(v, "auto")     ? 0
                     : !strcmp(v, "cublas") ? 1
                     : !strcmp(v, "gemv")   ? 2
                     : !strcmp(v, "both")   ? 3
                                            : -1;
            if (matmul < 0) {
                fprintf(stderr, "bench_cuda: --matmul %s: expected auto, cublas, gemv or both\n",
                        v);
                return 2;
            }
        } else if (!strcmp(argv[i], "--dry-run"))
            dry = 1;
        else {
            const int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr,
                    "usage: bench_cuda [--synthetic|--model "
                    "qwen2.5-0.5b|qwen2.5-7b|dream-7b|tiny|tiny-dream]... [--device N] "
                    "[--tokens N] [--prompt N] [--matmul auto|cublas|gemv|both] [--dry-run]\n"
                    "Every model is synthetic: random BF16 weights of the real shapes generated on "
                    "the device\n(--synthetic and --model are the same option). Default models: "
                    "qwen2.5-0.5b qwen2.5-7b dream-7b.\n");
            if (!help) fprintf(stderr, "bench_cuda: unknown option %s\n", argv[i]);
            return help ? 0 : 2;
        }
    }
    if (steps < 1) steps = 1;
    if (prompt < 1 || prompt > 4000) prompt = 128;
    if (nm == 0)
        models[nm++] = "qwen2.5-0.5b", models[nm++] = "qwen2.5-7b", models[nm++] = "dream-7b";
    double bw = 0;
    if (!dry) {
        int count = td_cuda_device_count();
        if (count == 0) {
            td_err_t err = {0};
            td_backend_t *be = td_backend_cuda_new(device, &err);
            td_backend_destroy(&be);
            printf("bench_cuda: skipped: %s\n", err.msg[0] ? err.msg : "no CUDA device");
            return 0;
        }
        char name[256];
        td_cuda_device_name(device, name, sizeof name);
        td_err_t err = {0};
        td_backend_t *be = td_backend_cuda_new(device, &err);
        if (!be) {
            fprintf(stderr, "bench_cuda: %s\n", err.msg);
            return 1;
        }
        bw = td_cuda_copy_bandwidth(be, (size_t)1 << 30);
        td_backend_destroy(&be);
        printf("device %d of %d: %s\n", device, count, name);
        printf("copy bandwidth (device-to-device cudaMemcpy of 1 GiB, read + write bytes): %.0f "
               "GB/s\n",
               bw / 1e9);
        if (bw <= 0) return 1;
    }
    int rc = 0;
    for (int i = 0; i < nm; i++) {
        const shape_t *s = NULL;
        for (size_t k = 0; k < sizeof s_shapes / sizeof s_shapes[0]; k++)
            if (!strcmp(models[i], s_shapes[k].name)) s = &s_shapes[k];
        if (!s) {
            fprintf(stderr, "bench_cuda: unknown --model %s\n", models[i]);
            return 2;
        }
        /* --dry-run: no device; the tiny models run the whole measurement on the CPU (the weights
         * read as the file's zero-filled hole) against a nominal 100 GB/s */
        rc |= s_bench_model(s, device, steps, prompt, matmul, dry, dry ? 1e11 : bw);
        fflush(stdout);
    }
    return rc;
}
